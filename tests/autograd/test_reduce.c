/* test_reduce.c — sum and mean over dims: gradient checks over dim sets (all, single, negative,
 * several, keepdim), values against double sums, and thread-count independence.
 * Gradcheck tolerances: eps 1e-3, atol 5e-3, rtol 1e-2 (see test_unary.c). */
#include "tests/common/check.h"

#include <omp.h>
#include <stdio.h>

typedef struct red_case {
    int ndims;
    int dims[4];
    bool keepdim, mean;
} red_case;

static df_tensor *call_red(df_tensor **in, void *u) {
    const red_case *c = u;
    return c->mean ? df_mean(in[0], c->ndims, c->dims, c->keepdim)
                   : df_sum(in[0], c->ndims, c->dims, c->keepdim);
}

static const red_case cases[] = {
    {0, {0}, false, false}, {0, {0}, true, false},     {1, {1}, false, false},
    {1, {-1}, true, false}, {2, {0, 2}, false, false}, {2, {-3, -1}, true, false},
    {1, {0}, false, false}, {3, {0, 1, 2}, false, false},
};

Test(autograd_reduce, gradcheck_sum_and_mean) {
    for (int mean = 0; mean < 2; mean++) {
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            df_scope s = df_scope_begin();
            red_case c = cases[k];
            c.mean = mean;
            df_tensor *x = randn_tensor(30 + k, DF_DIMS(2, 3, 4));
            df_tensor_set_requires_grad(x, true);
            char label[64];
            snprintf(label, sizeof label, "%s case %zu", mean ? "mean" : "sum", k);
            gradcheck(label, call_red, &c, &x, 1, 1e-3, 5e-3, 1e-2);
            df_tensor_free(x->grad), x->grad = NULL;
            df_scope_end(s);
        }
    }
}

Test(autograd_reduce, shapes_and_values) {
    df_scope s = df_scope_begin();
    df_tensor *x = df_arange(DF_DTYPE_F32, 0, 24, 1);
    df_tensor *x3 = df_reshape(x, DF_DIMS(2, 3, 4));
    df_tensor *a = df_sum(x3, 0, NULL, false);
    cr_assert_eq(a->ndim, 0);
    check_close_f32("sum all", df_f32(a), (float[]){276}, 1, 0, 0);
    df_tensor *b = df_sum(x3, 1, (int[]){1}, true);
    cr_assert(b->ndim == 3 && b->shape[0] == 2 && b->shape[1] == 1 && b->shape[2] == 4);
    check_close_f32("sum dim 1", df_f32(b), (float[]){12, 15, 18, 21, 48, 51, 54, 57}, 8, 0, 0);
    df_tensor *c = df_mean(x3, 2, (int[]){0, -1}, false);
    cr_assert(c->ndim == 1 && c->shape[0] == 3);
    check_close_f32("mean dims 0,-1", df_f32(c), (float[]){7.5f, 11.5f, 15.5f}, 3, 0, 0);
    df_scope_end(s);
}

/* Long sums are accumulated in double with a fixed blocking: equal for 1 and 2 threads, and
 * close to the exact sum. */
Test(autograd_reduce, thread_count_does_not_change_results) {
    int saved = omp_get_max_threads();
    df_tensor *r[2][3];
    df_tensor *x = randn_tensor(9, DF_DIMS(4, 64, 48, 48));
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        r[t][0] = df_sum(x, 0, NULL, false);
        r[t][1] = df_mean(x, 3, (int[]){0, 2, 3}, false);
        r[t][2] = df_mean(x, 3, (int[]){1, 2, 3}, true);
    }
    omp_set_num_threads(saved);
    for (int k = 0; k < 3; k++) check_close("1 vs 2 threads", r[0][k], r[1][k], 0, 0);
    double exact = 0;
    for (int64_t i = 0; i < x->numel; i++) exact += df_f32(x)[i];
    float want = (float)exact;
    check_close_f32("sum all vs double", df_f32(r[0][0]), &want, 1, 1e-3, 1e-6);
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 3; k++) df_tensor_free(r[t][k]);
    df_tensor_free(x);
}
