/* test_layer_norm.c — df_layer_norm: gradient checks with and without affine parameters, and a
 * forward check against a double-precision loop. Parity in test_ops_dnnl_parity.c. */
#include "tests/common/check.h"

#include <math.h>

/* normalisation is nonlinear: eps 1e-3 keeps the central-difference truncation error small;
 * f32 rounding of the loss then dominates (~1e-6 / 2e-3) */
#define EPS 1e-3
#define ATOL 5e-3
#define RTOL 5e-3

static df_tensor *ln_fn(df_tensor **in, void *user) {
    (void)user;
    return df_layer_norm(in[0], in[1], in[2], 1e-5f);
}

static void check_ln(const char *label, bool w, bool b, bool x_grad) {
    df_tensor *x = randn_tensor(41, DF_DIMS(2, 3, 7));
    df_tensor *wt = w ? randn_tensor(42, DF_DIMS(7)) : NULL;
    df_tensor *bt = b ? randn_tensor(43, DF_DIMS(7)) : NULL;
    df_tensor_set_requires_grad(x, x_grad);
    if (wt) df_tensor_set_requires_grad(wt, true);
    if (bt) df_tensor_set_requires_grad(bt, true);
    df_tensor *in[3] = {x, wt, bt};
    /* gradcheck checks the non-NULL prefix of in; the callback reads all three slots */
    gradcheck(label, ln_fn, NULL, in, wt ? (bt ? 3 : 2) : 1, EPS, ATOL, RTOL);
    df_tensor_free(x);
    df_tensor_free(wt);
    df_tensor_free(bt);
}

Test(autograd_layer_norm, grad_affine) {
    check_ln("affine", true, true, true);
}

Test(autograd_layer_norm, grad_no_affine) {
    check_ln("no affine", false, false, true);
}

Test(autograd_layer_norm, grad_weight_only_x_frozen) {
    check_ln("weight only, x frozen", true, false, false);
}

static df_tensor *ln_shift_fn(df_tensor **in, void *user) {
    (void)user;
    return df_layer_norm(in[0], NULL, in[1], 1e-5f);
}

Test(autograd_layer_norm, grad_bias_only) {
    df_tensor *x = randn_tensor(44, DF_DIMS(4, 5));
    df_tensor *b = randn_tensor(45, DF_DIMS(5));
    df_tensor_set_requires_grad(x, true);
    df_tensor_set_requires_grad(b, true);
    gradcheck("bias only", ln_shift_fn, NULL, (df_tensor *[]){x, b}, 2, EPS, ATOL, RTOL);
    df_tensor_free(x);
    df_tensor_free(b);
}

Test(autograd_layer_norm, forward_against_loops) {
    df_tensor *x = randn_tensor(46, DF_DIMS(3, 33));
    df_tensor *w = randn_tensor(47, DF_DIMS(33));
    df_tensor *b = randn_tensor(48, DF_DIMS(33));
    df_tensor *y = df_layer_norm(x, w, b, 1e-5f);
    float want[99];
    for (int r = 0; r < 3; r++) {
        double mu = 0, var = 0;
        for (int i = 0; i < 33; i++) mu += df_f32(x)[r * 33 + i];
        mu /= 33;
        for (int i = 0; i < 33; i++) var += pow(df_f32(x)[r * 33 + i] - mu, 2);
        var /= 33;
        for (int i = 0; i < 33; i++)
            want[r * 33 + i] = (float)((df_f32(x)[r * 33 + i] - mu) / sqrt(var + 1e-5) *
                                           df_f32(w)[i] +
                                       df_f32(b)[i]);
    }
    check_close_f32("layer_norm vs loops", df_f32(y), want, 99, 1e-5, 1e-5);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
    df_tensor_free(y);
}
