/* test_unary.c — gradient checks of the one-input elementwise ops and activations (unary.c,
 * activation.c), a few exact values, and clamp's boundary rule.
 *
 * Gradcheck tolerances: eps 1e-3 on float32 inputs, central differences with the loss summed in
 * double; float rounding of each output adds ~|out| * 3e-5 of noise and the truncation error is
 * O(eps^2 |f'''|), so atol 5e-3 + rtol 1e-2 (inputs of log/sqrt/rsqrt/pow kept >= 0.5 so that
 * their derivatives stay well conditioned). */
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>

typedef struct unary_case {
    const char *name;
    int kind;
    bool positive; /* needs x > 0 */
} unary_case;

static df_tensor *call_unary(df_tensor **in, void *u) {
    const unary_case *c = u;
    df_tensor *x = in[0];
    switch (c->kind) {
    case 0: return df_neg(x);
    case 1: return df_exp(x);
    case 2: return df_log(x);
    case 3: return df_sqrt(x);
    case 4: return df_rsqrt(x);
    case 5: return df_pow(x, 2.0f);
    case 6: return df_pow(x, 3.0f);
    case 7: return df_pow(x, 0.5f);
    case 8: return df_pow(x, -0.5f);
    case 9: return df_pow(x, -1.0f);
    case 10: return df_pow(x, -2.0f);
    case 11: return df_pow(x, 1.7f);
    case 12: return df_pow(x, 0.0f);
    case 13: return df_pow(x, 1.0f);
    case 14: return df_clamp(x, -0.55f, 0.65f);
    case 15: return df_sigmoid(x);
    case 16: return df_tanh(x);
    case 17: return df_silu(x);
    case 18: return df_gelu(x);
    case 19: return df_gelu_tanh(x);
    default: return df_quick_gelu(x);
    }
}

static const unary_case cases[] = {
    {"neg", 0, false},         {"exp", 1, false},    {"log", 2, true},     {"sqrt", 3, true},
    {"rsqrt", 4, true},        {"pow 2", 5, false},  {"pow 3", 6, false},  {"pow 0.5", 7, true},
    {"pow -0.5", 8, true},     {"pow -1", 9, true},  {"pow -2", 10, true}, {"pow 1.7", 11, true},
    {"pow 0", 12, false},      {"pow 1", 13, false}, {"clamp", 14, false}, {"sigmoid", 15, false},
    {"tanh", 16, false},       {"silu", 17, false},  {"gelu", 18, false},  {"gelu_tanh", 19, false},
    {"quick_gelu", 20, false},
};

Test(autograd_unary, gradcheck_every_op) {
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn_tensor(100 + k, DF_DIMS(2, 3, 5));
        float *p = df_f32(x);
        for (int64_t i = 0; i < x->numel; i++) {
            if (cases[k].positive) p[i] = fabsf(p[i]) + 0.5f;
            /* clamp: keep clear of the kinks at lo and hi, where the derivative jumps */
            if (cases[k].kind == 14 && (fabsf(p[i] + 0.55f) < 0.01f || fabsf(p[i] - 0.65f) < 0.01f))
                p[i] += 0.05f;
        }
        df_tensor_set_requires_grad(x, true);
        gradcheck(cases[k].name, call_unary, (void *)&cases[k], &x, 1, 1e-3, 5e-3, 1e-2);
        df_tensor_set_requires_grad(x, false);
        df_tensor_free(x->grad), x->grad = NULL;
        df_tensor *y = call_unary(&x, (void *)&cases[k]);
        cr_assert(y->node == NULL && x->grad == NULL, "%s: no input requires grad, no node",
                  cases[k].name);
        df_scope_end(s);
    }
}

Test(autograd_unary, exact_values) {
    df_scope s = df_scope_begin();
    df_tensor *x = df_from_data(DF_DTYPE_F32, DF_DIMS(4), (float[]){-2, 0, 1, 4});
    df_tensor *pos = df_from_data(DF_DTYPE_F32, DF_DIMS(3), (float[]){0.25f, 1, 4});
    check_close_f32("neg", df_f32(df_neg(x)), (float[]){2, 0, -1, -4}, 4, 0, 0);
    check_close_f32("sqrt", df_f32(df_sqrt(pos)), (float[]){0.5f, 1, 2}, 3, 0, 0);
    check_close_f32("rsqrt", df_f32(df_rsqrt(pos)), (float[]){2, 1, 0.5f}, 3, 0, 0);
    check_close_f32("pow 2", df_f32(df_pow(x, 2)), (float[]){4, 0, 1, 16}, 4, 0, 0);
    check_close_f32("pow 0", df_f32(df_pow(x, 0)), (float[]){1, 1, 1, 1}, 4, 0, 0);
    check_close_f32("clamp", df_f32(df_clamp(x, -1, 2)), (float[]){-1, 0, 1, 2}, 4, 0, 0);
    check_close_f32("sigmoid(0)", df_f32(df_sigmoid(x)) + 1, (float[]){0.5f}, 1, 0, 0);
    check_close_f32("gelu", df_f32(df_gelu(x)),
                    (float[]){-0.0455002642f, 0, 0.841344714f, 3.99987331f}, 4, 1e-7, 1e-6);
    check_close_f32("silu", df_f32(df_silu(x)),
                    (float[]){-0.238405844f, 0, 0.731058579f, 3.92805516f}, 4, 1e-7, 1e-6);
    df_scope_end(s);
}

/* torch.clamp's gradient passes where lo <= x <= hi, including exactly at the bounds. */
Test(autograd_unary, clamp_gradient_at_bounds) {
    df_scope s = df_scope_begin();
    df_tensor *x = df_from_data(DF_DTYPE_F32, DF_DIMS(5), (float[]){-2, -1, 0, 1, 2});
    df_tensor_set_requires_grad(x, true);
    df_tensor *y = df_clamp(x, -1, 1);
    cr_assert_eq(df_backward_with(y, df_ones(DF_DTYPE_F32, DF_DIMS(5))), DF_OK);
    check_close_f32("clamp grad", df_f32(x->grad), (float[]){0, 1, 1, 1, 0}, 5, 0, 0);
    df_scope_end(s);
}
