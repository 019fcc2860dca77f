/* grad_clip.c — global gradient norm, clip_grad_norm_ (torch.nn.utils at v1.13, norm_type 2)
 * and the non-finite check.
 *
 * Determinism: the norm splits every gradient into fixed GRAD_CHUNK-element chunks (a property
 * of the tensor sizes only), sums each chunk's squares in double, then adds the chunk sums in
 * order on one thread. The result is the same for any thread count.
 *
 * torch computes the per-tensor norms and their norm in float32; we sum in double and round the
 * result to float, so the norm agrees to float rounding. The clip coefficient then follows
 * torch's float32 ops: max_norm / (total + 1e-6) is Tensor.__rtruediv__, i.e.
 * reciprocal(total + 1e-6) * max_norm, clamped to at most 1. As in torch, an infinite norm
 * scales every gradient by 0 and a NaN norm by NaN (clamp keeps NaN).
 */
#include "optim/optim_impl.h"

#include <math.h>
#include <stdlib.h>

#define GRAD_CHUNK 16384

typedef struct grad_chunk {
    const float *g;
    int64_t len;
} grad_chunk;

/* The chunks of every non-NULL gradient, in order; *count set. Owned (free). */
static grad_chunk *make_chunks(df_tensor *const *params, int n, int64_t *count, int64_t *total) {
    int64_t c = 0, t = 0;
    for (int i = 0; i < n; i++)
        if (params[i]->grad) c += (params[i]->grad->numel + GRAD_CHUNK - 1) / GRAD_CHUNK;
    grad_chunk *ch = malloc((size_t)(c ? c : 1) * sizeof *ch);
    DF_ASSERT(ch, "out of memory");
    c = 0;
    for (int i = 0; i < n; i++) {
        const df_tensor *g = params[i]->grad;
        if (!g) continue;
        DF_ASSERT(g->dtype == DF_DTYPE_F32, "grad norm: parameter %d has a %s gradient", i,
                  df_dtype_name(g->dtype));
        for (int64_t s = 0; s < g->numel; s += GRAD_CHUNK) {
            ch[c++] =
                (grad_chunk){df_f32(g) + s, g->numel - s < GRAD_CHUNK ? g->numel - s : GRAD_CHUNK};
            t += ch[c - 1].len;
        }
    }
    *count = c;
    *total = t;
    return ch;
}

double df_grad_norm(df_tensor *const *params, int n) {
    int64_t nc, total;
    grad_chunk *ch = make_chunks(params, n, &nc, &total);
    double *part = malloc((size_t)(nc ? nc : 1) * sizeof *part);
    DF_ASSERT(part, "out of memory");
#pragma omp parallel for schedule(static) if (total >= 65536)
    for (int64_t c = 0; c < nc; c++) {
        const float *g = ch[c].g;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < ch[c].len; i++) s += (double)g[i] * (double)g[i];
        part[c] = s;
    }
    double sum = 0;
    for (int64_t c = 0; c < nc; c++) sum += part[c];
    free(part);
    free(ch);
    return sqrt(sum);
}

df_status df_clip_grad_norm(df_tensor *const *params, int n, double max_norm, double *total_norm) {
    if (!(max_norm > 0) || isinf(max_norm))
        return df_error(DF_ERR_INVALID,
                        "clip_grad_norm: invalid max_norm %g (allowed: finite, > 0)", max_norm);
    float total = (float)df_grad_norm(params, n);
    if (total_norm) *total_norm = total;
    float coef = (1.0f / (total + 1e-6f)) * (float)max_norm;
    if (coef >= 1.0f) return DF_OK; /* clamped to 1: scaling by 1 changes nothing */
    for (int i = 0; i < n; i++) {
        df_tensor *g = params[i]->grad;
        if (!g) continue;
        float *d = df_f32(g);
        const int64_t len = g->numel;
#pragma omp parallel for simd schedule(static) if (len >= 65536)
        for (int64_t k = 0; k < len; k++) d[k] = d[k] * coef;
    }
    return DF_OK;
}

bool df_grad_all_finite(df_tensor *const *params, int n) {
    for (int i = 0; i < n; i++) {
        const df_tensor *g = params[i]->grad;
        if (!g) continue;
        const float *d = df_f32(g);
        const int64_t len = g->numel;
        int bad = 0;
#pragma omp parallel for simd schedule(static) reduction(| : bad) if (len >= 65536)
        for (int64_t k = 0; k < len; k++) bad |= !isfinite(d[k]);
        if (bad) return false;
    }
    return true;
}
