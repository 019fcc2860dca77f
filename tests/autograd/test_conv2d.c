/* test_conv2d.c — df_conv2d: finite-difference gradient checks over stride, padding, dilation,
 * groups and bias, and parity with torch.nn.functional.conv2d (tests/ref/gen_ops_dnnl.py). */
#include "tests/common/check.h"

/* conv and its gradients are bilinear, so central differences are exact up to f32 rounding of
 * the loss (about 1e-5 over a few hundred outputs, divided by 2 eps = 0.02) */
#define EPS 1e-2
#define ATOL 2e-3
#define RTOL 2e-3

static df_tensor *conv_fn(df_tensor **in, void *user) {
    return df_conv2d(in[0], in[1], in[2], *(df_conv2d_params *)user);
}

static void check_conv(const char *label, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                       int64_t K, df_conv2d_params p, bool bias, bool x_grad) {
    df_tensor *x = randn_tensor(1, DF_DIMS(N, C, H, W));
    df_tensor *w = randn_tensor(2, DF_DIMS(O, C / p.groups, K, K));
    df_tensor *b = bias ? randn_tensor(3, DF_DIMS(O)) : NULL;
    df_tensor_set_requires_grad(x, x_grad);
    df_tensor_set_requires_grad(w, true);
    if (b) df_tensor_set_requires_grad(b, true);
    df_tensor *in[3] = {x, w, b};
    gradcheck(label, conv_fn, &p, in, b ? 3 : 2, EPS, ATOL, RTOL);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
}

Test(autograd_conv2d, grad_3x3_pad1_bias) {
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    check_conv("3x3 pad 1", 2, 3, 5, 6, 4, 3, p, true, true);
}

Test(autograd_conv2d, grad_stride2_no_bias) {
    df_conv2d_params p = df_conv2d_default();
    p.stride[0] = p.stride[1] = 2;
    p.padding[0] = p.padding[1] = 1;
    check_conv("stride 2", 2, 3, 7, 6, 4, 3, p, false, true);
}

Test(autograd_conv2d, grad_stride2_uneven_no_pad) {
    /* floor division leaves a row unused: oneDNN's right padding is negative */
    df_conv2d_params p = df_conv2d_default();
    p.stride[0] = p.stride[1] = 2;
    check_conv("stride 2, no pad, even kernel", 1, 2, 5, 5, 3, 2, p, true, true);
}

Test(autograd_conv2d, grad_dilation2) {
    df_conv2d_params p = df_conv2d_default();
    p.dilation[0] = p.dilation[1] = 2;
    p.padding[0] = p.padding[1] = 2;
    check_conv("dilation 2", 1, 2, 6, 7, 3, 3, p, true, true);
}

Test(autograd_conv2d, grad_groups2) {
    df_conv2d_params p = df_conv2d_default();
    p.groups = 2;
    p.padding[0] = p.padding[1] = 1;
    check_conv("groups 2", 2, 4, 5, 5, 6, 3, p, true, true);
}

Test(autograd_conv2d, grad_1x1_weight_only) {
    /* x without requires_grad must receive nothing */
    check_conv("1x1, x no grad", 2, 5, 4, 4, 3, 1, df_conv2d_default(), true, false);
}

Test(autograd_conv2d, grad_1x1_all_inputs) {
    check_conv("1x1, x, w and b", 2, 5, 4, 3, 3, 1, df_conv2d_default(), true, true);
}

Test(autograd_conv2d, grad_bias_only) {
    df_conv2d_params p = df_conv2d_default();
    df_tensor *x = randn_tensor(1, DF_DIMS(2, 3, 4, 4));
    df_tensor *w = randn_tensor(2, DF_DIMS(2, 3, 3, 3));
    df_tensor *b = randn_tensor(3, DF_DIMS(2));
    df_tensor_set_requires_grad(b, true);
    df_tensor *in[3] = {x, w, b};
    gradcheck("bias only", conv_fn, &p, in, 3, EPS, ATOL, RTOL);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
}

Test(autograd_conv2d, value_against_direct_sum) {
    /* one output element computed by hand: a test of the forward independent of backward */
    df_conv2d_params p = df_conv2d_default();
    p.stride[0] = 2;
    p.padding[1] = 1;
    p.dilation[0] = 2;
    df_tensor *x = randn_tensor(5, DF_DIMS(1, 2, 7, 5));
    df_tensor *w = randn_tensor(6, DF_DIMS(3, 2, 2, 3));
    df_tensor *b = randn_tensor(7, DF_DIMS(3));
    df_tensor *y = df_conv2d(x, w, b, p);
    cr_assert(y->shape[2] == 3 && y->shape[3] == 5);
    float got[45], want[45];
    int k = 0;
    for (int o = 0; o < 3; o++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++) {
                double acc = df_f32(b)[o];
                for (int c = 0; c < 2; c++)
                    for (int ki = 0; ki < 2; ki++)
                        for (int kj = 0; kj < 3; kj++) {
                            int yy = i * 2 + ki * 2, xx = j - 1 + kj;
                            if (xx < 0 || xx >= 5) continue;
                            acc += df_f32(w)[((o * 2 + c) * 2 + ki) * 3 + kj] *
                                   df_f32(x)[(c * 7 + yy) * 5 + xx];
                        }
                want[k] = (float)acc;
                got[k] = df_f32(y)[(o * 3 + i) * 5 + j];
                k++;
            }
    check_close_f32("conv2d vs direct sum", got, want, 45, 1e-5, 1e-5);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
    df_tensor_free(y);
}
