/* unary.c — elementwise arithmetic of one input: neg, exp, log, sqrt, rsqrt, pow (scalar
 * exponent), clamp. Every op maps x (any shape) to out (same shape) and accumulates
 * ga += g * d out / d x. The forms follow torch's CPU kernels and derivatives.yaml term by term
 * so that parity holds to an ulp or two. The input x is retained by the node; "saved: out" is a
 * detached alias of the output. Per op, in this order: params, math, forward, backward, op
 * entry, constructor.
 */
#include "autograd/ops/unary_impl.h"
#include "autograd/vmath_impl.h"

static const df_no_params NONE = {0};

/* ------------------------------------------------------------------ neg ---------------------- */
/* out = -x; ga += -g. torch.neg. */

DF_UNARY_FORWARD(neg_forward, df_no_params, -x[i])
DF_UNARY_BACKWARD(neg_backward, df_no_params, -g[i])
static const df_op neg_op = {"neg", neg_backward, NULL};

df_tensor *df_neg(df_tensor *a) {
    return df_unary_apply(&neg_op, a, neg_forward, &NONE, sizeof NONE, false);
}

/* ------------------------------------------------------------------ exp ---------------------- */
/* out = e^x; ga += g * out (saved: out). torch.exp. */

DF_UNARY_FORWARD(exp_forward, df_no_params, df_expf(x[i]))
DF_UNARY_BACKWARD(exp_backward, df_no_params, g[i] * y[i])
static const df_op exp_op = {"exp", exp_backward, NULL};

df_tensor *df_exp(df_tensor *a) {
    return df_unary_apply(&exp_op, a, exp_forward, &NONE, sizeof NONE, true);
}

/* ------------------------------------------------------------------ log ---------------------- */
/* out = ln x; ga += g / x. torch.log. */

DF_UNARY_FORWARD(log_forward, df_no_params, logf(x[i]))
DF_UNARY_BACKWARD(log_backward, df_no_params, g[i] / x[i])
static const df_op log_op = {"log", log_backward, NULL};

df_tensor *df_log(df_tensor *a) {
    return df_unary_apply(&log_op, a, log_forward, &NONE, sizeof NONE, false);
}

/* ------------------------------------------------------------------ sqrt --------------------- */
/* out = sqrt x; ga += g / (2 out) (saved: out). torch.sqrt. */

DF_UNARY_FORWARD(sqrt_forward, df_no_params, sqrtf(x[i]))
DF_UNARY_BACKWARD(sqrt_backward, df_no_params, g[i] / (2.0f * y[i]))
static const df_op sqrt_op = {"sqrt", sqrt_backward, NULL};

df_tensor *df_sqrt(df_tensor *a) {
    return df_unary_apply(&sqrt_op, a, sqrt_forward, &NONE, sizeof NONE, true);
}

/* ------------------------------------------------------------------ rsqrt -------------------- */
/* out = 1 / sqrt x; ga += (-0.5 g) out^3 (saved: out). torch.rsqrt. */

DF_UNARY_FORWARD(rsqrt_forward, df_no_params, 1.0f / sqrtf(x[i]))
DF_UNARY_BACKWARD(rsqrt_backward, df_no_params, (-0.5f * g[i]) * (y[i] * y[i] * y[i]))
static const df_op rsqrt_op = {"rsqrt", rsqrt_backward, NULL};

df_tensor *df_rsqrt(df_tensor *a) {
    return df_unary_apply(&rsqrt_op, a, rsqrt_forward, &NONE, sizeof NONE, true);
}

/* ------------------------------------------------------------------ pow ---------------------- */

typedef struct pow_params {
    float e;
} pow_params;

/* out = x^e; ga += g (e x^(e-1)), 0 when e == 0. torch.pow(x, e). torch's special cases are
 * kept (aten pow_tensor_scalar_optimized_kernel): e = 2, 3 by products, 0.5 sqrt, -0.5 rsqrt,
 * -1 and -2 reciprocals, 0 ones, 1 a copy; powf otherwise. */
static inline float pow_torch(float x, float e) {
    if (e == 0.0f) return 1.0f;
    if (e == 1.0f) return x;
    if (e == 2.0f) return x * x;
    if (e == 3.0f) return x * x * x;
    if (e == 0.5f) return sqrtf(x);
    if (e == -0.5f) return 1.0f / sqrtf(x);
    if (e == -1.0f) return 1.0f / x;
    if (e == -2.0f) return 1.0f / (x * x);
    return powf(x, e);
}

DF_UNARY_FORWARD(pow_forward, pow_params, pow_torch(x[i], P.e))
DF_UNARY_BACKWARD(pow_backward, pow_params,
                  P.e == 0.0f ? 0.0f : g[i] * (P.e * pow_torch(x[i], P.e - 1.0f)))
static const df_op pow_op = {"pow", pow_backward, NULL};

df_tensor *df_pow(df_tensor *a, float exponent) {
    pow_params p = {exponent};
    return df_unary_apply(&pow_op, a, pow_forward, &p, sizeof p, false);
}

/* ------------------------------------------------------------------ clamp -------------------- */

typedef struct clamp_params {
    float lo, hi;
} clamp_params;

/* out = min(max(x, lo), hi) (NaN passes: comparisons with NaN are false; lo > hi gives hi, as
 * torch); ga += g where lo <= x <= hi, else 0 (the bounds included, as torch.clamp). */
static inline float clamp1(float x, float lo, float hi) {
    float t = x < lo ? lo : x;
    return t > hi ? hi : t;
}

DF_UNARY_FORWARD(clamp_forward, clamp_params, clamp1(x[i], P.lo, P.hi))
DF_UNARY_BACKWARD(clamp_backward, clamp_params, (x[i] >= P.lo && x[i] <= P.hi) ? g[i] : 0.0f)
static const df_op clamp_op = {"clamp", clamp_backward, NULL};

df_tensor *df_clamp(df_tensor *a, float lo, float hi) {
    clamp_params p = {lo, hi};
    return df_unary_apply(&clamp_op, a, clamp_forward, &p, sizeof p, false);
}
