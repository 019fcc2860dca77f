/* unary.c — elementwise arithmetic of one input: neg, exp, log, sqrt, rsqrt, pow (scalar
 * exponent), clamp. Every op maps x (any shape) to out (same shape) and accumulates
 * ga += g * d out / d x. The forms follow torch's CPU kernels and derivatives.yaml term by term
 * so that parity holds to an ulp or two:
 *
 *   neg    out = -x                 ga += -g                                 torch.neg
 *   exp    out = e^x                ga += g * out           saved: out       torch.exp
 *   log    out = ln x               ga += g / x                              torch.log
 *   sqrt   out = sqrt x             ga += g / (2 out)       saved: out       torch.sqrt
 *   rsqrt  out = 1 / sqrt x         ga += (-0.5 g) out^3    saved: out       torch.rsqrt
 *   pow    out = x^e                ga += g (e x^(e-1)); 0 when e == 0       torch.pow(x, e)
 *   clamp  out = min(max(x,lo),hi)  ga += g where lo <= x <= hi, else 0      torch.clamp
 * The input x is retained by the node; "saved: out" is a detached alias of the output.
 * pow takes torch's special cases (e = 2, 3, 0.5, -0.5, -1, -2 computed by products, sqrt and
 * reciprocals; e = 0 gives ones, e = 1 a copy) and powf otherwise.
 */
#include "autograd/ops/unary_impl.h"

typedef struct no_params {
    char unused;
} no_params;
static const no_params NONE = {0};

/* ------------------------------------------------------------------ neg ---------------------- */

DF_UNARY_BACKWARD(neg_backward, no_params, -g[i])
static const df_op neg_op = {"neg", neg_backward, NULL};

df_tensor *df_neg(df_tensor *a) {
    df_tensor *out = df_unary_out("neg", a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    DF_EW_LOOP(a->numel, o[i] = -x[i]);
    df_unary_record(&neg_op, a, out, false, &NONE, sizeof NONE);
    return out;
}

/* ------------------------------------------------------------------ exp ---------------------- */

DF_UNARY_BACKWARD(exp_backward, no_params, g[i] * y[i])
static const df_op exp_op = {"exp", exp_backward, NULL};

df_tensor *df_exp(df_tensor *a) {
    df_tensor *out = df_unary_out("exp", a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    DF_EW_LOOP(a->numel, o[i] = expf(x[i]));
    df_unary_record(&exp_op, a, out, true, &NONE, sizeof NONE);
    return out;
}

/* ------------------------------------------------------------------ log ---------------------- */

DF_UNARY_BACKWARD(log_backward, no_params, g[i] / x[i])
static const df_op log_op = {"log", log_backward, NULL};

df_tensor *df_log(df_tensor *a) {
    df_tensor *out = df_unary_out("log", a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    DF_EW_LOOP(a->numel, o[i] = logf(x[i]));
    df_unary_record(&log_op, a, out, false, &NONE, sizeof NONE);
    return out;
}

/* ------------------------------------------------------------------ sqrt / rsqrt ------------- */

DF_UNARY_BACKWARD(sqrt_backward, no_params, g[i] / (2.0f * y[i]))
static const df_op sqrt_op = {"sqrt", sqrt_backward, NULL};

df_tensor *df_sqrt(df_tensor *a) {
    df_tensor *out = df_unary_out("sqrt", a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    DF_EW_LOOP(a->numel, o[i] = sqrtf(x[i]));
    df_unary_record(&sqrt_op, a, out, true, &NONE, sizeof NONE);
    return out;
}

DF_UNARY_BACKWARD(rsqrt_backward, no_params, (-0.5f * g[i]) * (y[i] * y[i] * y[i]))
static const df_op rsqrt_op = {"rsqrt", rsqrt_backward, NULL};

df_tensor *df_rsqrt(df_tensor *a) {
    df_tensor *out = df_unary_out("rsqrt", a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    DF_EW_LOOP(a->numel, o[i] = 1.0f / sqrtf(x[i]));
    df_unary_record(&rsqrt_op, a, out, true, &NONE, sizeof NONE);
    return out;
}

/* ------------------------------------------------------------------ pow ---------------------- */

typedef struct pow_params {
    float e;
} pow_params;

/* x^e with torch's special cases (aten pow_tensor_scalar_optimized_kernel). */
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

DF_UNARY_BACKWARD(pow_backward, pow_params, P.e == 0.0f ? 0.0f : g[i] * (P.e * pow_torch(x[i], P.e - 1.0f)))
static const df_op pow_op = {"pow", pow_backward, NULL};

df_tensor *df_pow(df_tensor *a, float exponent) {
    df_tensor *out = df_unary_out("pow", a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    const float e = exponent;
    DF_EW_LOOP(a->numel, o[i] = pow_torch(x[i], e));
    pow_params p = {exponent};
    df_unary_record(&pow_op, a, out, false, &p, sizeof p);
    return out;
}

/* ------------------------------------------------------------------ clamp -------------------- */

typedef struct clamp_params {
    float lo, hi;
} clamp_params;

DF_UNARY_BACKWARD(clamp_backward, clamp_params, (x[i] >= P.lo && x[i] <= P.hi) ? g[i] : 0.0f)
static const df_op clamp_op = {"clamp", clamp_backward, NULL};

df_tensor *df_clamp(df_tensor *a, float lo, float hi) {
    df_tensor *out = df_unary_out("clamp", a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    /* min(max(x, lo), hi) with NaN passing through (comparisons with NaN are false) */
    DF_EW_LOOP(a->numel, float t = x[i] < lo ? lo : x[i]; o[i] = t > hi ? hi : t);
    clamp_params p = {lo, hi};
    df_unary_record(&clamp_op, a, out, false, &p, sizeof p);
    return out;
}
