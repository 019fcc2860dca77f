/* group_norm.c — group normalisation (torch.nn.functional.group_norm), our own kernel: oneDNN
 * 2.6 has none.
 *
 *   x (N, C, *) with S spatial elements per channel, G groups of Cg = C / G channels; for each
 *   (n, g) over its m = Cg S elements: mu = mean(x), var = mean((x - mu)^2) (biased, as torch),
 *   rstd = 1 / sqrt(var + eps), xhat = (x - mu) rstd, y = xhat w[c] + b[c]; w, b (C) optional.
 *   forward:  per channel, sum_s x, then per group the channel sums in channel order (the
 *             mean); then likewise sum_s (x - mu)^2 (the variance); y = x a[c] + k[c] with
 *             a = rstd w[c], k = b[c] - mu a. Sums in double.
 *   backward (G = dy, per (n, g); sums over the group's elements, c the element's channel):
 *     (1) per channel: ta = sum_s G, tb = sum_s G (x - mu)
 *     (2) a = sum_c w[c] ta / m, bq = sum_c w[c] tb rstd / m
 *     (3) dx (=/+=) rstd w[c] G - rstd a - rstd^2 bq (x - mu)
 *         (torch's native_group_norm_backward)
 *     (4) dw[c] += sum_n tb rstd
 *     (5) db[c] += sum_n ta
 *   saved: mean (N, G), rstd (N, G).
 * Layout: x is seen as (N, C / L, S, L) with L lanes: L = 1 for a plain x, L = B for a
 * channel-blocked one (df_tensor.block, nChw{B}c); y and dx take x's layout. The loops run
 * over (n, channel block) in parallel with the L lanes side by side; every sum has a fixed
 * order, so no result depends on the thread count.
 */
#include "autograd/autograd_impl.h"

#include <math.h>
#include <stdlib.h>

typedef struct gnorm_params {
    int64_t N, C, S, G;
    int64_t L; /* lanes: 1 (plain) or the channel block */
    float eps;
} gnorm_params;

/* The loops over one (n, channel block) take the lane count as a constant (DF_LANES). */

/* out[l] = sum_s xb[s L + l], or sum_s (xb[s L + l] - m[l])^2 when m is not NULL. */
DF_LANE_FN block_sums(const float *xb, int64_t S, const double *m, double *out, const int64_t L) {
    double acc[DF_LANES_MAX] = {0};
    for (int64_t s = 0; s < S; s++) {
        const float *v = xb + s * L;
        if (m) {
#pragma omp simd
            for (int64_t l = 0; l < L; l++) acc[l] += ((double)v[l] - m[l]) * ((double)v[l] - m[l]);
        } else {
#pragma omp simd
            for (int64_t l = 0; l < L; l++) acc[l] += v[l];
        }
    }
    for (int64_t l = 0; l < L; l++) out[l] = acc[l];
}

/* out[n C + c] = sum_s x over channel c's S elements when mu is NULL, else
 * sum_s (x - mu[n G + c / Cg])^2; in double. */
static void channel_sums(const float *x, const gnorm_params *p, const double *mu, double *out) {
    const int64_t C = p->C, S = p->S, L = p->L, CB = C / L, Cg = C / p->G;
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < p->N * CB; nb++) {
        int64_t n = nb / CB, c0 = (nb % CB) * L;
        double m[DF_LANES_MAX] = {0};
        if (mu)
            for (int64_t l = 0; l < L; l++) m[l] = mu[n * p->G + (c0 + l) / Cg];
        DF_LANES(L, block_sums, x + nb * S * L, S, mu ? m : NULL, out + n * C + c0);
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

static void *scratch(size_t bytes) {
    void *p = malloc(bytes);
    DF_ASSERT(p, "group_norm: out of memory for %zu bytes of channel sums", bytes);
    return p;
}

/* yb[s L + l] = xb[s L + l] a[l] + k[l]. */
DF_LANE_FN affine_block(const float *xb, float *yb, int64_t S, const float *a, const float *k,
                        const int64_t L) {
    for (int64_t s = 0; s < S; s++)
#pragma omp simd
        for (int64_t l = 0; l < L; l++) yb[s * L + l] = xb[s * L + l] * a[l] + k[l];
}

static void group_norm_forward(const float *x, float *y, const gnorm_params *p, const float *w,
                               const float *b, float *mean, float *rstd) {
    const int64_t N = p->N, C = p->C, S = p->S, G = p->G, L = p->L, Cg = C / G, CB = C / L;
    const double m = (double)Cg * S;
    double *cs = scratch(sizeof(double) * (size_t)(N * C));
    double *mu = scratch(sizeof(double) * (size_t)(N * G)),
           *sq = scratch(sizeof(double) * (size_t)(N * G));
    float *ak = scratch(sizeof(float) * 2 * (size_t)(N * C)); /* per (n, c): scale, then shift */
    channel_sums(x, p, NULL, cs);                             /* mean */
    group_sums(cs, p, mu);
    for (int64_t ng = 0; ng < N * G; ng++) mu[ng] = m > 0 ? mu[ng] / m : 0;
    channel_sums(x, p, mu, cs); /* centred squares */
    group_sums(cs, p, sq);
    float *a = ak, *k = ak + N * C;
    for (int64_t ng = 0; ng < N * G; ng++) {
        double var = m > 0 ? sq[ng] / m : 0, rs = 1.0 / sqrt(var + (double)p->eps);
        mean[ng] = (float)mu[ng];
        rstd[ng] = (float)rs;
        for (int64_t c = (ng % G) * Cg; c < (ng % G + 1) * Cg; c++) {
            double ac = rs * (w ? w[c] : 1.0), kc = (b ? b[c] : 0.0) - mu[ng] * ac;
            a[ng / G * C + c] = (float)ac;
            k[ng / G * C + c] = (float)kc;
        }
    }
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < N * CB; nb++)
        DF_LANES(L, affine_block, x + nb * S * L, y + nb * S * L, S, a + nb * L, k + nb * L);
    free(cs);
    free(mu);
    free(sq);
    free(ak);
}

/* ta[l] = sum_s G, tb[l] = sum_s G (x - mu[l]) over one channel block. */
DF_LANE_FN grad_block_sums(const float *xb, const float *gb, int64_t S, const double *mu,
                           double *ta, double *tb, const int64_t L) {
    double sa[DF_LANES_MAX] = {0}, sb[DF_LANES_MAX] = {0};
    for (int64_t s = 0; s < S; s++)
#pragma omp simd
        for (int64_t l = 0; l < L; l++) {
            sa[l] += gb[s * L + l];
            sb[l] += (double)gb[s * L + l] * (xb[s * L + l] - mu[l]);
        }
    for (int64_t l = 0; l < L; l++) {
        ta[l] = sa[l];
        tb[l] = sb[l];
    }
}

/* db (= or +=) k1 G - k2 - k3 (x - km) over one channel block, ks = {k1, k2, k3, km}. */
DF_LANE_FN dx_block(const float *xb, const float *gb, float *db, int64_t S, const float *const *ks,
                    bool acc, const int64_t L) {
    const float *a1 = ks[0], *a2 = ks[1], *a3 = ks[2], *am = ks[3];
    for (int64_t s = 0; s < S; s++) {
        float *d = db + s * L;
        const float *gv = gb + s * L, *xv = xb + s * L;
        if (acc) {
#pragma omp simd
            for (int64_t l = 0; l < L; l++) d[l] += a1[l] * gv[l] - a2[l] - a3[l] * (xv[l] - am[l]);
        } else {
#pragma omp simd
            for (int64_t l = 0; l < L; l++) d[l] = a1[l] * gv[l] - a2[l] - a3[l] * (xv[l] - am[l]);
        }
    }
}

static void group_norm_backward(df_node *n, const df_tensor *gout) {
    const gnorm_params *p = n->state;
    const int64_t N = p->N, C = p->C, S = p->S, G = p->G, L = p->L, Cg = C / G, CB = C / L;
    const float *x = df_f32(n->inputs[0]), *g = df_f32(gout);
    const float *w = n->inputs[1] ? df_f32(n->inputs[1]) : NULL;
    const float *mean = df_f32(n->saved[0]), *rstd = df_f32(n->saved[1]);
    double *ta = scratch(sizeof(double) * 2 * (size_t)(N * C)), *tb = ta + N * C;
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < N * CB; nb++) { /* (1) */
        int64_t nn = nb / CB, c0 = (nb % CB) * L;
        double mu[DF_LANES_MAX] = {0};
        for (int64_t l = 0; l < L; l++) mu[l] = mean[nn * G + (c0 + l) / Cg];
        DF_LANES(L, grad_block_sums, x + nb * S * L, g + nb * S * L, S, mu, ta + nn * C + c0,
                 tb + nn * C + c0);
    }
    bool acc;
    df_tensor *gx_t = df_node_grad_dest(n, 0, &acc);
    if (gx_t) {
        /* per (n, c): dx = k1 G - k2 - k3 (x - mu) */
        float *kk = scratch(sizeof(float) * 4 * (size_t)(N * C));
        float *k1 = kk, *k2 = kk + N * C, *k3 = kk + 2 * N * C, *km = kk + 3 * N * C;
        for (int64_t ng = 0; ng < N * G; ng++) { /* (2) */
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
            const float *ks[4] = {k1 + nb * L, k2 + nb * L, k3 + nb * L, km + nb * L};
            DF_LANES(L, dx_block, x + nb * S * L, g + nb * S * L, dx + nb * S * L, S, ks, acc);
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
    p.L = x->block ? x->block : 1;
    df_tensor *params[2] = {weight, bias};
    for (int i = 0; i < 2; i++)
        if (params[i]) {
            DF_ASSERT_F32("group_norm", params[i]);
            DF_ASSERT(params[i]->ndim == 1 && params[i]->numel == p.C, "group_norm: %s %s for x %s",
                      i ? "bias" : "weight", df_shape_str(params[i], sp, sizeof sp), sx);
        }
    int64_t ng_dims[2] = {p.N, p.G};
    df_tensor *out = df_tensor_new_like(DF_DTYPE_F32, x);
    df_tensor *mean_t = df_tensor_new_unscoped(DF_DTYPE_F32, 2, ng_dims);
    df_tensor *rstd_t = df_tensor_new_unscoped(DF_DTYPE_F32, 2, ng_dims);
    group_norm_forward(df_f32(x), df_f32(out), &p, weight ? df_f32(weight) : NULL,
                       bias ? df_f32(bias) : NULL, df_f32(mean_t), df_f32(rstd_t));
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
