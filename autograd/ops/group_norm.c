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
#include <stdlib.h>

typedef struct gnorm_params {
    int64_t N, C, S, G;
    float eps;
} gnorm_params;

/* ------------------------------------------------------------------ channel-blocked x -------- */

/* Per-channel sums over the S pixels of a blocked x (N, C / B, S, B), lanes side by side, in
 * double: out[n C + c] = sum_s x when mu is NULL, else sum_s (x - mu[n G + c / Cg])^2. */
static void blocked_channel_sums(const float *x, const gnorm_params *p, int64_t B, const double *mu,
                                 double *out) {
    const int64_t C = p->C, S = p->S, CB = C / B, Cg = C / p->G;
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < p->N * CB; nb++) {
        const float *xb = x + nb * S * B;
        int64_t n = nb / CB, c0 = (nb % CB) * B;
        double acc[16] = {0}, m[16] = {0};
        if (mu)
            for (int64_t l = 0; l < B; l++) m[l] = mu[n * p->G + (c0 + l) / Cg];
        for (int64_t sp = 0; sp < S; sp++) {
            const float *v = xb + sp * B;
            if (mu) {
#pragma omp simd
                for (int64_t l = 0; l < B; l++)
                    acc[l] += ((double)v[l] - m[l]) * ((double)v[l] - m[l]);
            } else {
#pragma omp simd
                for (int64_t l = 0; l < B; l++) acc[l] += v[l];
            }
        }
        for (int64_t l = 0; l < B; l++) out[n * C + c0 + l] = acc[l];
    }
}

/* out[n G + g] = the sum of cs[n C + c] over the group's channels, in channel order. */
static void group_sums(const double *cs, const gnorm_params *p, double *out) {
    const int64_t Cg = p->C / p->G;
    for (int64_t ng = 0; ng < p->N * p->G; ng++) {
        double t = 0;
        for (int64_t c = 0; c < Cg; c++) t += cs[ng * Cg + c];
        out[ng] = t;
    }
}

static void group_norm_forward_blocked(const float *x, float *y, const gnorm_params *p, int64_t B,
                                       const float *w, const float *b, float *mean, float *rstd) {
    const int64_t N = p->N, C = p->C, S = p->S, G = p->G, Cg = C / G, CB = C / B;
    const double m = (double)Cg * S;
    double *cs = malloc(sizeof(double) * (size_t)(N * C));
    double *mu = malloc(sizeof(double) * (size_t)(N * G)),
           *sq = malloc(sizeof(double) * (size_t)(N * G));
    float *ak = malloc(sizeof(float) * 2 * (size_t)(N * C)); /* per (n, c): scale, then shift */
    DF_ASSERT(cs && mu && sq && ak, "group_norm: out of memory for %lld channels",
              (long long)(N * C));
    blocked_channel_sums(x, p, B, NULL, cs); /* mean */
    group_sums(cs, p, mu);
    for (int64_t ng = 0; ng < N * G; ng++) mu[ng] = m > 0 ? mu[ng] / m : 0;
    blocked_channel_sums(x, p, B, mu, cs); /* centred squares */
    group_sums(cs, p, sq);
    float *a = ak, *k = ak + N * C;
    for (int64_t ng = 0; ng < N * G; ng++) {
        double var = m > 0 ? sq[ng] / m : 0, rs = 1.0 / sqrt(var + (double)p->eps);
        mean[ng] = (float)mu[ng];
        rstd[ng] = (float)rs;
        for (int64_t c = (ng % G) * Cg; c < (ng % G + 1) * Cg; c++) {
            /* y = x a + k with a = rstd w[c], k = b[c] - mu a */
            double ac = rs * (w ? w[c] : 1.0), kc = (b ? b[c] : 0.0) - mu[ng] * ac;
            a[ng / G * C + c] = (float)ac;
            k[ng / G * C + c] = (float)kc;
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < N * CB; nb++) {
        const float *xb = x + nb * S * B, *ab = a + nb * B, *kb = k + nb * B;
        float *yb = y + nb * S * B;
        for (int64_t sp = 0; sp < S; sp++)
#pragma omp simd
            for (int64_t l = 0; l < B; l++) yb[sp * B + l] = xb[sp * B + l] * ab[l] + kb[l];
    }
    free(cs);
    free(mu);
    free(sq);
    free(ak);
}

/* Backward (1)-(5) of the header for a blocked x; dx, the gradient of x, is blocked too. */
static void group_norm_backward_blocked(df_node *n, const df_tensor *gout) {
    const gnorm_params *p = n->state;
    const int64_t N = p->N, C = p->C, S = p->S, G = p->G, Cg = C / G, B = n->inputs[0]->block,
                  CB = C / B;
    const float *x = df_f32(n->inputs[0]), *g = df_f32(gout);
    const float *w = n->inputs[1] ? df_f32(n->inputs[1]) : NULL;
    const float *mean = df_f32(n->saved[0]), *rstd = df_f32(n->saved[1]);
    double *ta = malloc(sizeof(double) * 2 * (size_t)(N * C)), *tb = ta + N * C;
    DF_ASSERT(ta, "group_norm backward: out of memory for %lld channels", (long long)(N * C));
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < N * CB; nb++) { /* per channel: sum G, sum G (x - mu) */
        const float *xb = x + nb * S * B, *gb = g + nb * S * B;
        int64_t nn = nb / CB, c0 = (nb % CB) * B;
        double sa[16] = {0}, sb[16] = {0}, mu[16] = {0};
        for (int64_t l = 0; l < B; l++) mu[l] = mean[nn * G + (c0 + l) / Cg];
        for (int64_t sp = 0; sp < S; sp++)
#pragma omp simd
            for (int64_t l = 0; l < B; l++) {
                sa[l] += gb[sp * B + l];
                sb[l] += (double)gb[sp * B + l] * (xb[sp * B + l] - mu[l]);
            }
        for (int64_t l = 0; l < B; l++) {
            ta[nn * C + c0 + l] = sa[l];
            tb[nn * C + c0 + l] = sb[l];
        }
    }
    bool acc;
    df_tensor *gx_t = df_node_grad_dest(n, 0, &acc);
    if (gx_t) {
        /* per (n, c): dx = k1[c] G - k2[c] - k3[c] (x - mu), the constants of (3) */
        float *kk = malloc(sizeof(float) * 4 * (size_t)(N * C));
        DF_ASSERT(kk, "group_norm backward: out of memory for %lld channels", (long long)(N * C));
        float *k1 = kk, *k2 = kk + N * C, *k3 = kk + 2 * N * C, *km = kk + 3 * N * C;
        for (int64_t ng = 0; ng < N * G; ng++) { /* (1), (2) */
            int64_t nn = ng / G, c0 = (ng % G) * Cg;
            double rs = rstd[ng], sa = 0, sb = 0;
            for (int64_t c = c0; c < c0 + Cg; c++) {
                double wc = w ? w[c] : 1.0;
                sa += wc * ta[nn * C + c];
                sb += wc * tb[nn * C + c] * rs;
            }
            double m = (double)Cg * S, a = sa / m, bq = sb / m;
            for (int64_t c = c0; c < c0 + Cg; c++) {
                k1[nn * C + c] = (float)rs * (w ? w[c] : 1.0f);
                k2[nn * C + c] = (float)(rs * a);
                k3[nn * C + c] = (float)(rs * bq * rs);
                km[nn * C + c] = mean[ng];
            }
        }
        float *dx = df_f32(gx_t);
#pragma omp parallel for schedule(static)
        for (int64_t nb = 0; nb < N * CB; nb++) { /* (3) */
            const float *xb = x + nb * S * B, *gb = g + nb * S * B;
            const float *a1 = k1 + nb * B, *a2 = k2 + nb * B, *a3 = k3 + nb * B, *am = km + nb * B;
            float *db = dx + nb * S * B;
            for (int64_t sp = 0; sp < S; sp++) {
                float *d = db + sp * B;
                const float *gv = gb + sp * B, *xv = xb + sp * B;
                if (acc) {
#pragma omp simd
                    for (int64_t l = 0; l < B; l++)
                        d[l] += a1[l] * gv[l] - a2[l] - a3[l] * (xv[l] - am[l]);
                } else {
#pragma omp simd
                    for (int64_t l = 0; l < B; l++)
                        d[l] = a1[l] * gv[l] - a2[l] - a3[l] * (xv[l] - am[l]);
                }
            }
        }
        free(kk);
    }
    df_tensor *gw_t = n->inputs[1] ? df_node_grad(n, 1) : NULL;
    df_tensor *gb_t = n->inputs[2] ? df_node_grad(n, 2) : NULL;
    for (int64_t c = 0; c < C && (gw_t || gb_t); c++) { /* (4), (5) */
        double sw = 0, sb = 0;
        for (int64_t nn = 0; nn < N; nn++) {
            sw += tb[nn * C + c] * (double)rstd[nn * G + c / Cg];
            sb += ta[nn * C + c];
        }
        if (gw_t) df_f32(gw_t)[c] += (float)sw;
        if (gb_t) df_f32(gb_t)[c] += (float)sb;
    }
    free(ta);
}

static void group_norm_backward(df_node *n, const df_tensor *gout) {
    if (n->inputs[0]->block) {
        group_norm_backward_blocked(n, gout);
        return;
    }
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
    DF_ASSERT_F32_ANY_LAYOUT("group_norm", x);
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
    df_tensor *out = df_tensor_new_like(DF_DTYPE_F32, x);
    df_tensor *mean_t = df_tensor_new_unscoped(DF_DTYPE_F32, 2, ng_dims);
    df_tensor *rstd_t = df_tensor_new_unscoped(DF_DTYPE_F32, 2, ng_dims);
    const float *xd = df_f32(x), *w = weight ? df_f32(weight) : NULL,
                *b = bias ? df_f32(bias) : NULL;
    float *y = df_f32(out), *mean = df_f32(mean_t), *rstd = df_f32(rstd_t);
    if (x->block) {
        group_norm_forward_blocked(xd, y, &p, x->block, w, b, mean, rstd);
    } else {
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
    }
    df_node *n =
        df_node_new_keep(&group_norm_op, out, 3, (df_tensor *[]){x, weight, bias}, sizeof p, 3u);
    if (n) {
        *(gnorm_params *)n->state = p;
        df_node_save(n, 0, mean_t);
        df_node_save(n, 1, rstd_t);
    }
    df_tensor_free(mean_t);
    df_tensor_free(rstd_t);
    return out;
}
