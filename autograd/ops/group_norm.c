/* group_norm.c — group normalisation (torch.nn.functional.group_norm), our own kernel: oneDNN
 * 2.6 has none.
 *
 *   x (N, C, *) with S spatial elements per channel, G groups of Cg = C / G channels; for each
 *   (n, g) over its m = Cg S elements: mu = mean(x), var = mean((x - mu)^2) (biased, as torch),
 *   rstd = 1 / sqrt(var + eps), xhat = (x - mu) rstd, y = xhat w[c] + b[c]; w, b (C) optional.
 *   forward:  parallel over (n, g); the sums of each (n, g) run sequentially in double
 *             (two passes: mean, then centred squares), so the result does not depend on the
 *             thread count.
 *   backward (G = dy, per (n, g); sums over the group's elements, c the element's channel):
 *     (1) gx = G w[c]                               (the gradient reaching xhat)
 *     (2) a = mean(gx), bq = mean(gx xhat)
 *     (3) dx += rstd (gx - a - xhat bq)              (torch's native_group_norm_backward)
 *     (4) dw[c] += sum_{n, s} G xhat                 (parallel over c, n and s in order)
 *     (5) db[c] += sum_{n, s} G
 *   saved: mean (N, G), rstd (N, G).
 */
#include "autograd/autograd_impl.h"

#include <math.h>

typedef struct gnorm_params {
    int64_t N, C, S, G;
    float eps;
} gnorm_params;

static void group_norm_backward(df_node *n, const df_tensor *gout) {
    const gnorm_params *p = n->state;
    const int64_t N = p->N, C = p->C, S = p->S, G = p->G, Cg = C / G;
    const float *x = df_f32(n->inputs[0]), *g = df_f32(gout);
    const float *w = n->inputs[1] ? df_f32(n->inputs[1]) : NULL;
    const float *mean = df_f32(n->saved[0]), *rstd = df_f32(n->saved[1]);
    df_tensor *gx_t = df_node_grad(n, 0);
    df_tensor *gw_t = n->inputs[1] ? df_node_grad(n, 1) : NULL;
    df_tensor *gb_t = n->inputs[2] ? df_node_grad(n, 2) : NULL;
    if (gx_t) {
        float *dx = df_f32(gx_t);
#pragma omp parallel for schedule(static)
        for (int64_t ng = 0; ng < N * G; ng++) {
            int64_t nn = ng / G, gg = ng % G;
            double mu = mean[ng], rs = rstd[ng], sa = 0, sb = 0;
            for (int64_t c = gg * Cg; c < (gg + 1) * Cg; c++) { /* (1), (2) */
                const float *xc = x + (nn * C + c) * S, *gc = g + (nn * C + c) * S;
                double wc = w ? w[c] : 1.0, ta = 0, tb = 0;
                for (int64_t s = 0; s < S; s++) {
                    ta += gc[s];
                    tb += (double)gc[s] * (xc[s] - mu);
                }
                sa += wc * ta;
                sb += wc * tb * rs;
            }
            double m = (double)Cg * S, a = sa / m, bq = sb / m;
            for (int64_t c = gg * Cg; c < (gg + 1) * Cg; c++) { /* (3) */
                const float *xc = x + (nn * C + c) * S, *gc = g + (nn * C + c) * S;
                float *dc = dx + (nn * C + c) * S;
                float wc = w ? w[c] : 1.0f;
                float k1 = (float)rs, k2 = (float)(rs * a), k3 = (float)(rs * bq * rs),
                      fmu = (float)mu;
#pragma omp simd
                for (int64_t s = 0; s < S; s++) dc[s] += k1 * wc * gc[s] - k2 - k3 * (xc[s] - fmu);
            }
        }
    }
    if (gw_t || gb_t) {
        float *dw = gw_t ? df_f32(gw_t) : NULL, *db = gb_t ? df_f32(gb_t) : NULL;
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < C; c++) { /* (4), (5) */
            double sw = 0, sb = 0;
            for (int64_t nn = 0; nn < N; nn++) {
                int64_t ng = nn * G + c / Cg;
                double mu = mean[ng], rs = rstd[ng], tw = 0, tb = 0;
                const float *xc = x + (nn * C + c) * S, *gc = g + (nn * C + c) * S;
                for (int64_t s = 0; s < S; s++) {
                    tb += gc[s];
                    tw += (double)gc[s] * (xc[s] - mu);
                }
                sw += tw * rs;
                sb += tb;
            }
            if (dw) dw[c] += (float)sw;
            if (db) db[c] += (float)sb;
        }
    }
}

static const df_op group_norm_op = {"group_norm", group_norm_backward, NULL};

df_tensor *df_group_norm(df_tensor *x, int groups, df_tensor *weight, df_tensor *bias, float eps) {
    DF_ASSERT_F32("group_norm", x);
    char sx[64], sp[64];
    df_shape_str(x, sx, sizeof sx);
    DF_ASSERT(x->ndim >= 2 && groups >= 1 && x->shape[1] % groups == 0,
              "group_norm: x %s with %d groups (expected (N, C, ...), C divisible)", sx, groups);
    gnorm_params p = {.N = x->shape[0], .C = x->shape[1], .G = groups, .eps = eps};
    p.S = 1;
    for (int i = 2; i < x->ndim; i++) p.S *= x->shape[i];
    df_tensor *params[2] = {weight, bias};
    for (int i = 0; i < 2; i++)
        if (params[i]) {
            DF_ASSERT_F32("group_norm", params[i]);
            DF_ASSERT(params[i]->ndim == 1 && params[i]->numel == p.C, "group_norm: %s %s for x %s",
                      i ? "bias" : "weight", df_shape_str(params[i], sp, sizeof sp), sx);
        }
    const int64_t N = p.N, C = p.C, S = p.S, G = p.G, Cg = C / G;
    int64_t ng_dims[2] = {N, G};
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, x->ndim, x->shape);
    df_tensor *mean_t = df_tensor_new_unscoped(DF_DTYPE_F32, 2, ng_dims);
    df_tensor *rstd_t = df_tensor_new_unscoped(DF_DTYPE_F32, 2, ng_dims);
    const float *xd = df_f32(x), *w = weight ? df_f32(weight) : NULL,
                *b = bias ? df_f32(bias) : NULL;
    float *y = df_f32(out), *mean = df_f32(mean_t), *rstd = df_f32(rstd_t);
#pragma omp parallel for schedule(static)
    for (int64_t ng = 0; ng < N * G; ng++) {
        const float *xg = xd + ng * Cg * S; /* a group's channels are contiguous */
        int64_t m = Cg * S;
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < m; i++) sum += xg[i];
        double mu = m > 0 ? sum / (double)m : 0;
        for (int64_t i = 0; i < m; i++) sq += ((double)xg[i] - mu) * ((double)xg[i] - mu);
        double var = m > 0 ? sq / (double)m : 0;
        double rs = 1.0 / sqrt(var + (double)eps);
        mean[ng] = (float)mu;
        rstd[ng] = (float)rs;
        int64_t gg = ng % G;
        for (int64_t c = gg * Cg; c < (gg + 1) * Cg; c++) {
            /* y = x a + k with a = rstd w[c], k = b[c] - mu a */
            double a = rs * (w ? w[c] : 1.0), k = (b ? b[c] : 0.0) - mu * a;
            float fa = (float)a, fk = (float)k;
            const float *xc = xg + (c - gg * Cg) * S;
            float *yc = y + (ng * Cg + (c - gg * Cg)) * S;
#pragma omp simd
            for (int64_t s = 0; s < S; s++) yc[s] = xc[s] * fa + fk;
        }
    }
    df_node *n = df_node_new_keep(&group_norm_op, out, 3, (df_tensor *[]){x, weight, bias}, sizeof p, 3u);
    if (n) {
        *(gnorm_params *)n->state = p;
        df_node_save(n, 0, mean_t);
        df_node_save(n, 1, rstd_t);
    }
    df_tensor_free(mean_t);
    df_tensor_free(rstd_t);
    return out;
}
