/* activation.c — elementwise activations: sigmoid, tanh, silu, gelu (erf), gelu_tanh,
 * quick_gelu. x (any shape) -> out (same shape); ga += g * d out / d x. Forms follow torch's CPU
 * kernels (aten/src/ATen/native/cpu/Activation.cpp, UnaryOpsKernel.cpp) term by term:
 *
 *   sigmoid    y = 1 / (1 + e^-x)          ga += (g (1 - y)) y              saved: y
 *   tanh       y = tanh x                  ga += g (1 - y^2)                saved: y
 *   silu       y = x / (1 + e^-x)          ga += (g s)(1 + x (1 - s)), s = sigmoid(x)
 *   gelu       y = x Phi(x)                ga += g (Phi(x) + x phi(x)),
 *              Phi = erfc(-x/sqrt2)/2, phi = e^(-x^2/2) / sqrt(2 pi)
 *              (torch writes Phi = (1 + erf(x/sqrt2))/2, which cancels for x < -3 and loses
 *              up to 1e-3 relative there; erfc is the same function without the cancellation)
 *   gelu_tanh  y = (x/2)(1 + tanh(u)), u = b (x + k x^3), b = sqrt(2/pi), k = 0.044715
 *              ga += g ((1 + tanh u)/2 + (x/2)(1 - tanh^2 u) b (1 + 3 k x^2))
 *   quick_gelu y = x s, s = sigmoid(1.702 x)  (CLIP's QuickGELUActivation)
 *              ga += g s + 1.702 ((g x)(1 - s)) s        (the autograd of the composite)
 * e^ is df_expf (vmath_impl.h: vectorised, within 1 ulp of expf).
 * torch equivalents: torch.sigmoid, torch.tanh, F.silu, F.gelu, F.gelu(approximate='tanh'),
 * x * torch.sigmoid(1.702 * x). Only the input (retained by the node) and, where noted, the
 * output (a detached alias) are kept for backward.
 */
#include "autograd/ops/unary_impl.h"
#include "autograd/vmath_impl.h"

static const df_no_params NONE = {0};

#define SQRT1_2F 0.70710678118654752440f
#define GELU_PDF_C ((float)(M_2_SQRTPI * M_SQRT1_2 * 0.5)) /* 1 / sqrt(2 pi) */
#define GELU_TANH_B ((float)(M_SQRT2 * M_2_SQRTPI * 0.5))  /* sqrt(2 / pi) */
#define GELU_TANH_K 0.044715f
#define QUICK_GELU_A 1.702f

static inline float sigmoidf(float x) {
    return 1.0f / (1.0f + df_expf(-x));
}

/* ------------------------------------------------------------------ sigmoid ------------------ */

DF_UNARY_FORWARD(sigmoid_forward, df_no_params, sigmoidf(x[i]))
DF_UNARY_BACKWARD(sigmoid_backward, df_no_params, (g[i] * (1.0f - y[i])) * y[i])
static const df_op sigmoid_op = {"sigmoid", sigmoid_backward, NULL};

df_tensor *df_sigmoid(df_tensor *a) {
    return df_unary_apply(&sigmoid_op, a, sigmoid_forward, &NONE, sizeof NONE, true);
}

/* ------------------------------------------------------------------ tanh --------------------- */

DF_UNARY_FORWARD(tanh_forward, df_no_params, tanhf(x[i]))
DF_UNARY_BACKWARD(tanh_backward, df_no_params, g[i] * (1.0f - y[i] * y[i]))
static const df_op tanh_op = {"tanh", tanh_backward, NULL};

df_tensor *df_tanh(df_tensor *a) {
    return df_unary_apply(&tanh_op, a, tanh_forward, &NONE, sizeof NONE, true);
}

/* ------------------------------------------------------------------ silu --------------------- */

static inline float silu_grad(float g, float x) {
    float s = sigmoidf(x);
    return (g * s) * (1.0f + x * (1.0f - s));
}

DF_UNARY_FORWARD(silu_forward, df_no_params, x[i] / (1.0f + df_expf(-x[i])))
DF_UNARY_BACKWARD(silu_backward, df_no_params, silu_grad(g[i], x[i]))
static const df_op silu_op = {"silu", silu_backward, NULL};

df_tensor *df_silu(df_tensor *a) {
    return df_unary_apply(&silu_op, a, silu_forward, &NONE, sizeof NONE, false);
}

/* ------------------------------------------------------------------ gelu (erf) --------------- */

static inline float gelu_grad(float g, float x) {
    float cdf = 0.5f * erfcf(-x * SQRT1_2F);
    float pdf = GELU_PDF_C * df_expf(x * x * -0.5f);
    return g * (cdf + x * pdf);
}

DF_UNARY_FORWARD(gelu_forward, df_no_params, x[i] * 0.5f * erfcf(-x[i] * SQRT1_2F))
DF_UNARY_BACKWARD(gelu_backward, df_no_params, gelu_grad(g[i], x[i]))
static const df_op gelu_op = {"gelu", gelu_backward, NULL};

df_tensor *df_gelu(df_tensor *a) {
    return df_unary_apply(&gelu_op, a, gelu_forward, &NONE, sizeof NONE, false);
}

/* ------------------------------------------------------------------ gelu (tanh) -------------- */

static inline float gelu_tanh_fwd(float x) {
    float inner = GELU_TANH_B * (x + GELU_TANH_K * (x * x * x));
    return 0.5f * x * (1.0f + tanhf(inner));
}

static inline float gelu_tanh_grad(float g, float x) {
    float x2 = x * x, x3 = x2 * x;
    float t = tanhf(GELU_TANH_B * (x + GELU_TANH_K * x3));
    float left = 0.5f * x, right = 1.0f + t;
    float dleft = 0.5f * right;                                /* 1. d(x/2)/dx * (1 + tanh u) */
    float dtanh = 1.0f - t * t;                                /* 2. tanh' (u) */
    float du = GELU_TANH_B * (1.0f + 3.0f * GELU_TANH_K * x2); /* 3. du/dx */
    return g * (dleft + left * dtanh * du);
}

DF_UNARY_FORWARD(gelu_tanh_forward, df_no_params, gelu_tanh_fwd(x[i]))
DF_UNARY_BACKWARD(gelu_tanh_backward, df_no_params, gelu_tanh_grad(g[i], x[i]))
static const df_op gelu_tanh_op = {"gelu_tanh", gelu_tanh_backward, NULL};

df_tensor *df_gelu_tanh(df_tensor *a) {
    return df_unary_apply(&gelu_tanh_op, a, gelu_tanh_forward, &NONE, sizeof NONE, false);
}

/* ------------------------------------------------------------------ quick_gelu --------------- */

static inline float quick_gelu_grad(float g, float x) {
    float s = sigmoidf(QUICK_GELU_A * x);
    return g * s + (((g * x) * (1.0f - s)) * s) * QUICK_GELU_A;
}

DF_UNARY_FORWARD(quick_gelu_forward, df_no_params, x[i] * sigmoidf(QUICK_GELU_A * x[i]))
DF_UNARY_BACKWARD(quick_gelu_backward, df_no_params, quick_gelu_grad(g[i], x[i]))
static const df_op quick_gelu_op = {"quick_gelu", quick_gelu_backward, NULL};

df_tensor *df_quick_gelu(df_tensor *a) {
    return df_unary_apply(&quick_gelu_op, a, quick_gelu_forward, &NONE, sizeof NONE, false);
}
