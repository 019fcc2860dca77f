/* test_linear.c — df_linear: gradient checks for x, W, b (with and without bias, 3-D x) and a
 * forward check against loops. Parity with F.linear in test_ops_dnnl_parity.c. */
#include "tests/common/check.h"

static df_tensor *linear_fn(df_tensor **in, void *user) {
    (void)user;
    return df_linear(in[0], in[1], in[2]);
}

Test(autograd_linear, grad_with_bias) {
    df_tensor *x = randn_tensor(31, DF_DIMS(2, 3, 5));
    df_tensor *w = randn_tensor(32, DF_DIMS(4, 5));
    df_tensor *b = randn_tensor(33, DF_DIMS(4));
    df_tensor_set_requires_grad(x, true);
    df_tensor_set_requires_grad(w, true);
    df_tensor_set_requires_grad(b, true);
    gradcheck("linear", linear_fn, NULL, (df_tensor *[]){x, w, b}, 3, 1e-2, 2e-3, 2e-3);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
}

Test(autograd_linear, grad_no_bias_x_frozen) {
    df_tensor *x = randn_tensor(34, DF_DIMS(6, 3));
    df_tensor *w = randn_tensor(35, DF_DIMS(2, 3));
    df_tensor_set_requires_grad(w, true);
    gradcheck("linear no bias", linear_fn, NULL, (df_tensor *[]){x, w, NULL}, 2, 1e-2, 2e-3,
              2e-3);
    df_tensor_free(x);
    df_tensor_free(w);
}

Test(autograd_linear, forward_against_loops) {
    df_tensor *x = randn_tensor(36, DF_DIMS(3, 70));
    df_tensor *w = randn_tensor(37, DF_DIMS(66, 70));
    df_tensor *b = randn_tensor(38, DF_DIMS(66));
    df_tensor *y = df_linear(x, w, b);
    float want[3 * 66];
    for (int i = 0; i < 3; i++)
        for (int o = 0; o < 66; o++) {
            double acc = df_f32(b)[o];
            for (int k = 0; k < 70; k++) acc += df_f32(x)[i * 70 + k] * df_f32(w)[o * 70 + k];
            want[i * 66 + o] = (float)acc;
        }
    check_close_f32("linear vs loops", df_f32(y), want, 3 * 66, 1e-5, 1e-4);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
    df_tensor_free(y);
}
