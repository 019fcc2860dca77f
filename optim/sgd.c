/* sgd.c — SGD with momentum, dampening, Nesterov and weight decay (torch.optim.SGD at v1.13,
 * `_single_tensor_sgd`).
 *
 * Per element, in torch's float32 order:
 *   d = g + wd * p                         (only when wd != 0)
 *   momentum != 0:
 *     first step:  buf = d                 (torch.clone(d_p): the buffer starts as d)
 *     later:       buf = buf * momentum; buf = buf + (1 - dampening) * d
 *     nesterov:    d = d + momentum * buf;   else d = buf
 *   p = p + (-lr) * d
 * The "first step" is the group's step count being 0, which is what torch's
 * `momentum_buffer is None` means for a parameter that has always had a gradient.
 */
#include "optim/optim_impl.h"

void df_sgd_scalars(const df_optim_hparams *h, int64_t step, optim_scalars *s) {
    s->skip_first = step == 1;
    s->lr_neg = (float)(-h->lr);
    s->wd = (float)h->weight_decay;
    s->has_wd = h->weight_decay != 0;
    s->momentum = (float)h->momentum;
    s->one_minus_damp = (float)(1.0 - h->dampening);
    s->has_momentum = h->momentum != 0;
    s->nesterov = h->nesterov;
}

/* The loop for one combination of the flags; always inlined with constant flags so that each
 * combination compiles to its own branch-free SIMD loop. */
static inline __attribute__((always_inline)) void
sgd_loop(const optim_scalars *s, float *restrict p, const float *restrict g, float *restrict buf,
         int64_t n, const bool has_wd, const bool momentum, const bool first, const bool nesterov) {
    const float lr_neg = s->lr_neg, wd = s->wd, mom = s->momentum, omd = s->one_minus_damp;
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float d = g[i];
        if (has_wd) d = d + wd * p[i];
        if (momentum) {
            float b = d;
            if (!first) {
                b = buf[i] * mom;
                b = b + omd * d;
            }
            buf[i] = b;
            d = nesterov ? d + mom * b : b;
        }
        p[i] = p[i] + lr_neg * d;
    }
}

void df_sgd_kernel(const optim_scalars *s, float *restrict p, const float *restrict g,
                   float *restrict buf, int64_t n) {
    const bool wd = s->has_wd;
    if (!s->has_momentum) {
        if (wd)
            sgd_loop(s, p, g, buf, n, true, false, false, false);
        else
            sgd_loop(s, p, g, buf, n, false, false, false, false);
        return;
    }
    const int which = (wd ? 4 : 0) | (s->skip_first ? 2 : 0) | (s->nesterov ? 1 : 0);
    switch (which) {
    case 0: sgd_loop(s, p, g, buf, n, false, true, false, false); break;
    case 1: sgd_loop(s, p, g, buf, n, false, true, false, true); break;
    case 2: sgd_loop(s, p, g, buf, n, false, true, true, false); break;
    case 3: sgd_loop(s, p, g, buf, n, false, true, true, true); break;
    case 4: sgd_loop(s, p, g, buf, n, true, true, false, false); break;
    case 5: sgd_loop(s, p, g, buf, n, true, true, false, true); break;
    case 6: sgd_loop(s, p, g, buf, n, true, true, true, false); break;
    default: sgd_loop(s, p, g, buf, n, true, true, true, true); break;
    }
}
