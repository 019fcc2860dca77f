/* adam.c — Adam and AdamW updates (torch.optim.Adam / AdamW at v1.13, `_single_tensor_adam(w)`).
 *
 * Per element, in torch's float32 order (Python scalars are doubles rounded to float where a
 * kernel takes them):
 *   Adam:   g = g + wd * p                      (grad.add(param, alpha=wd), only when wd != 0)
 *   AdamW:  p = p * (1 - lr * wd)               (param.mul_(1 - lr * wd), always)
 *   m = m * beta1;  m = m + (1 - beta1) * g     (exp_avg.mul_(beta1).add_(grad, alpha=1-beta1))
 *   v = v * beta2;  v = v + ((1 - beta2) * g) * g   (addcmul_)
 *   amsgrad: vmax = max(vmax, v) and v := vmax below (a NaN v propagates; torch.maximum also
 *            propagates a NaN vmax, which can only follow a NaN v, so the states agree)
 *   denom = sqrt(v) / sqrt(bias_correction2) + eps
 *   p = p + (-step_size * m) / denom            (addcdiv_(m, denom, value=-step_size))
 * with bias_correction_k = 1 - beta_k ** step and step_size = lr / bias_correction1 in double.
 * torch's AVX2 kernels fuse some multiply-adds (FMA); we do not (no FMA in the x86-64-v2 target,
 * and the result must not depend on the machine), so values agree to within float rounding.
 */
#include "optim/optim_impl.h"

#include <math.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

void df_adam_scalars(const df_optim_hparams *h, bool decoupled, int64_t step, optim_scalars *s) {
    double bc1 = 1.0 - pow(h->beta1, (double)step);
    double bc2 = 1.0 - pow(h->beta2, (double)step);
    s->wd = (float)h->weight_decay;
    s->has_wd = h->weight_decay != 0;
    s->decay_mul = (float)(1.0 - h->lr * h->weight_decay);
    (void)decoupled;
    s->beta1 = (float)h->beta1;
    s->one_minus_beta1 = (float)(1.0 - h->beta1);
    s->beta2 = (float)h->beta2;
    s->one_minus_beta2 = (float)(1.0 - h->beta2);
    s->step_size_neg = (float)(-(h->lr / bc1));
    s->bc2_sqrt = (float)sqrt(bc2);
    s->eps = (float)h->eps;
    s->amsgrad = h->amsgrad;
}

/* One element, the reference order above. The SSE path below performs the same IEEE operations
 * (mul, add, div, sqrt, max are exactly rounded in both), so the two agree bit for bit. */
static inline void adam_one(const optim_scalars *s, bool add_wd, bool decoupled, float *p,
                            const float *g, float *exp_avg, float *exp_avg_sq,
                            float *max_exp_avg_sq) {
    float pi = *p, gi = *g;
    if (add_wd) gi = gi + s->wd * pi;
    if (decoupled) pi = pi * s->decay_mul;
    float m = *exp_avg * s->beta1;
    m = m + s->one_minus_beta1 * gi;
    float v = *exp_avg_sq * s->beta2;
    v = v + (s->one_minus_beta2 * gi) * gi;
    *exp_avg = m;
    *exp_avg_sq = v;
    if (max_exp_avg_sq) {
        float vmax = *max_exp_avg_sq;
        v = vmax > v ? vmax : v; /* as _mm_max_ps(vmax, v) */
        *max_exp_avg_sq = v;
    }
    float denom = sqrtf(v) / s->bc2_sqrt + s->eps;
    *p = pi + (s->step_size_neg * m) / denom;
}

void df_adam_kernel(const optim_scalars *s, bool decoupled, float *restrict p,
                    const float *restrict g, float *restrict exp_avg, float *restrict exp_avg_sq,
                    float *restrict max_exp_avg_sq, int64_t n) {
    const bool add_wd = s->has_wd && !decoupled;
    int64_t i = 0;
#ifdef __SSE2__
    const __m128 wd = _mm_set1_ps(s->wd), dm = _mm_set1_ps(s->decay_mul);
    const __m128 b1 = _mm_set1_ps(s->beta1), omb1 = _mm_set1_ps(s->one_minus_beta1);
    const __m128 b2 = _mm_set1_ps(s->beta2), omb2 = _mm_set1_ps(s->one_minus_beta2);
    const __m128 ssn = _mm_set1_ps(s->step_size_neg), bc2s = _mm_set1_ps(s->bc2_sqrt);
    const __m128 eps = _mm_set1_ps(s->eps);
    for (; i + 4 <= n; i += 4) {
        __m128 pv = _mm_loadu_ps(p + i), gv = _mm_loadu_ps(g + i);
        if (add_wd) gv = _mm_add_ps(gv, _mm_mul_ps(wd, pv));
        if (decoupled) pv = _mm_mul_ps(pv, dm);
        __m128 m = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(exp_avg + i), b1), _mm_mul_ps(omb1, gv));
        __m128 v = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(exp_avg_sq + i), b2),
                              _mm_mul_ps(_mm_mul_ps(omb2, gv), gv));
        _mm_storeu_ps(exp_avg + i, m);
        _mm_storeu_ps(exp_avg_sq + i, v);
        if (max_exp_avg_sq) {
            v = _mm_max_ps(_mm_loadu_ps(max_exp_avg_sq + i), v);
            _mm_storeu_ps(max_exp_avg_sq + i, v);
        }
        __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(v), bc2s), eps);
        _mm_storeu_ps(p + i, _mm_add_ps(pv, _mm_div_ps(_mm_mul_ps(ssn, m), denom)));
    }
#endif
    for (; i < n; i++)
        adam_one(s, add_wd, decoupled, p + i, g + i, exp_avg + i, exp_avg_sq + i,
                 max_exp_avg_sq ? max_exp_avg_sq + i : NULL);
}
