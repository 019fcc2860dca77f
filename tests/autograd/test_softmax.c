/* test_softmax.c — softmax and log_softmax over the last dim: gradient checks, rows summing to
 * one, stability on large logits.
 * Gradcheck tolerances: eps 1e-3, atol 5e-3, rtol 1e-2 (see test_unary.c for the reasoning). */
#include "tests/common/check.h"

#include <math.h>

static df_tensor *call_softmax(df_tensor **in, void *u) {
    return *(int *)u ? df_log_softmax(in[0]) : df_softmax(in[0]);
}

Test(autograd_softmax, gradcheck) {
    for (int log = 0; log < 2; log++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn_tensor(5, DF_DIMS(2, 3, 7));
        df_tensor_set_requires_grad(x, true);
        gradcheck(log ? "log_softmax" : "softmax", call_softmax, &log, &x, 1, 1e-3, 5e-3, 1e-2);
        df_tensor_free(x->grad), x->grad = NULL;
        df_scope_end(s);
    }
}

Test(autograd_softmax, rows_sum_to_one_and_large_logits_are_stable) {
    df_scope s = df_scope_begin();
    df_tensor *x = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 3),
                                (float[]){1000, 1001, 1002, -1000, -1000, -1000});
    df_tensor *y = df_softmax(x), *l = df_log_softmax(x);
    float third = 1.0f / 3.0f;
    /* e^0, e^1, e^2 over their sum */
    float want[] = {0.0900305733f, 0.244728476f, 0.665240943f, third, third, third};
    check_close_f32("softmax", df_f32(y), want, 6, 1e-7, 1e-6);
    float wl[6];
    for (int i = 0; i < 6; i++) wl[i] = logf(want[i]);
    check_close_f32("log_softmax", df_f32(l), wl, 6, 1e-6, 1e-6);
    df_scope_end(s);
}
