/* lion.c — Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2; the
 * op order of lucidrains' lion-pytorch `update_fn`). torch 1.13 has no Lion; the fixture
 * generator implements the same formula with torch ops.
 *
 * Per element, float32:
 *   p = p * (1 - lr * wd)                       (decoupled decay, only when wd != 0)
 *   c = m * beta1;  c = c + (1 - beta1) * g     (the interpolation that is signed)
 *   p = p + (-lr) * sign(c)                     (sign(+-0) = +0 as torch.sign; NaN stays NaN)
 *   m = m * beta2;  m = m + (1 - beta2) * g     (the momentum uses beta2)
 */
#include "optim/optim_impl.h"

#ifdef __SSE2__
#include <immintrin.h>
#endif

void df_lion_scalars(const df_optim_hparams *h, optim_scalars *s) {
    s->lr_neg = (float)(-h->lr);
    s->has_wd = h->weight_decay != 0;
    s->decay_mul = (float)(1.0 - h->lr * h->weight_decay);
    s->beta1 = (float)h->beta1;
    s->one_minus_beta1 = (float)(1.0 - h->beta1);
    s->beta2 = (float)h->beta2;
    s->one_minus_beta2 = (float)(1.0 - h->beta2);
}

static inline float sign_nan(float c) {
    float sg = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);
    return c != c ? c : sg; /* NaN stays NaN */
}

void df_lion_kernel(const optim_scalars *s, float *restrict p, const float *restrict g,
                    float *restrict exp_avg, int64_t n) {
    const float lr_neg = s->lr_neg, decay_mul = s->decay_mul, b1 = s->beta1;
    const float omb1 = s->one_minus_beta1, b2 = s->beta2, omb2 = s->one_minus_beta2;
    const bool has_wd = s->has_wd;
    int64_t i = 0;
#ifdef __SSE2__
    /* The same IEEE operations as the scalar loop, four lanes at a time. */
    const __m128 vlr = _mm_set1_ps(lr_neg), vdm = _mm_set1_ps(decay_mul);
    const __m128 vb1 = _mm_set1_ps(b1), vomb1 = _mm_set1_ps(omb1);
    const __m128 vb2 = _mm_set1_ps(b2), vomb2 = _mm_set1_ps(omb2);
    const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
    for (; i + 4 <= n; i += 4) {
        __m128 pv = _mm_loadu_ps(p + i), gv = _mm_loadu_ps(g + i), m = _mm_loadu_ps(exp_avg + i);
        if (has_wd) pv = _mm_mul_ps(pv, vdm);
        __m128 c = _mm_add_ps(_mm_mul_ps(m, vb1), _mm_mul_ps(vomb1, gv));
        __m128 sg = _mm_sub_ps(_mm_and_ps(_mm_cmpgt_ps(c, zero), one),
                               _mm_and_ps(_mm_cmplt_ps(c, zero), one));
        __m128 nan = _mm_cmpunord_ps(c, c);
        sg = _mm_or_ps(_mm_and_ps(nan, c), _mm_andnot_ps(nan, sg));
        _mm_storeu_ps(p + i, _mm_add_ps(pv, _mm_mul_ps(vlr, sg)));
        _mm_storeu_ps(exp_avg + i, _mm_add_ps(_mm_mul_ps(m, vb2), _mm_mul_ps(vomb2, gv)));
    }
#endif
    for (; i < n; i++) {
        float pi = p[i], gi = g[i], m = exp_avg[i];
        if (has_wd) pi = pi * decay_mul;
        float c = m * b1;
        c = c + omb1 * gi;
        p[i] = pi + lr_neg * sign_nan(c);
        m = m * b2;
        exp_avg[i] = m + omb2 * gi;
    }
}
