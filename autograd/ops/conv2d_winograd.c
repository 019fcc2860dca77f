/* conv2d_winograd.c — 3x3, stride 1, padding 1 convolutions on channel-blocked activations as
 * Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
 * 2016): 16 products where a direct 3x3 convolution makes 36 per 2x2 outputs, so 2.25x fewer
 * multiplications, done as 16 matrix products on oneDNN's GEMM. Called by conv2d.c.
 *
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
 *   A^T = [1 1 1 0; 0 1 -1 -1]
 *   The output is cut into 2x2 tiles t (n, i, j), each reading the 4x4 input window d_t at
 *   (2i - 1, 2j - 1) (zeros outside the image). For each of the 16 points xi of the 4x4
 *   transform domain:
 *   forward:         U[xi][c][o] = (G w[o, c] G^T)[xi]       V[xi][t][c] = (B^T d_t[c] B)[xi]
 *                    M[xi] = V[xi] U[xi]  (tiles x Cin) (Cin x Cout)
 *                    y_t[o] = A^T M[.][t][o] A + b[o]  (the 2x2 tile; rows and columns past the
 *                    image are dropped)
 *   backward-data:   the forward of G with w'[c, o] = w[o, c] rotated by 180 degrees (the
 *                    transposed convolution of a stride-1, padding-1 3x3 kernel).
 *   backward-weights: D[xi][t][o] = (A G_t[o] A^T)[xi] of the 2x2 gradient tile G_t (zeros past
 *                    the image), Z[xi] = sum_t D[xi][t]^T V[xi][t] (Cout x Cin),
 *                    dw[o, c] = G^T Z[.][o][c] G; db[o] = sum_{n, i, j} G[n, o, i, j].
 *   (The backward-weights form is the transposed algorithm F(3x3, 2x2) on the same points.)
 *
 * Tiles are processed in chunks sized so that a chunk's V and M stay in the caches; each chunk
 * is one batched oneDNN matmul over the 16 points (which runs with DF_DNNL_REDUCTION_THREADS
 * threads, so the sums do not follow the thread count; Z adds the chunks in order). The
 * transforms run in parallel over tiles, B lanes (channels) at a time. Activations are
 * (N, C / B, H, W, B) (df_tensor.block = B); weights are plain (O, C, 3, 3).
 * Rounding differs from a direct convolution by a few ulps of the sums (the transforms add
 * and subtract inputs before the products); tests/autograd/test_layout.c bounds it.
 */
#include "autograd/ops/conv2d_winograd_impl.h"

#include "autograd/dnnl_impl.h"
#include "autograd/ops/broadcast_impl.h"

#include <string.h>

typedef struct wino_dims {
    int64_t N, H, W, B;
    int64_t TH, TW, T; /* tiles per column, per row, in all */
} wino_dims;

static wino_dims dims_of(int64_t N, int64_t H, int64_t W, int64_t B) {
    wino_dims d = {N, H, W, B, (H + 1) / 2, (W + 1) / 2, 0};
    d.T = N * d.TH * d.TW;
    return d;
}

/* Tiles per chunk: V and M (or D) of a chunk, 16 (Cin + Cout) floats per tile, in ~2 MiB. */
static int64_t chunk_tiles(const wino_dims *d, int64_t cin, int64_t cout) {
    int64_t tc = ((int64_t)2 << 20) / (64 * (cin + cout));
    if (tc < 16) tc = 16;
    return tc < d->T ? tc : d->T;
}

static void *scratch(size_t floats) {
    void *p = df_mem_alloc(floats * sizeof(float));
    if (!p) df_mem_oom(floats * sizeof(float), "the scratch of conv2d (winograd)");
    return p;
}

/* ------------------------------------------------------------------ transforms -------------- */

/* dst[0..B) = src[0..B) when `inside`, else zeros (src is not read then: it may lie outside the
 * image). B is 8 or 16: copies of a constant size, which the compiler inlines as vector moves (a
 * loop of B would become a call to memcpy per lane group, 5% of a training step). */
static inline void load_lanes(float *dst, const float *src, int64_t B, bool inside) {
    if (inside && B == 8)
        memcpy(dst, src, 8 * sizeof(float));
    else if (inside)
        memcpy(dst, src, 16 * sizeof(float));
    else
        memset(dst, 0, 16 * sizeof(float));
}

/* Runs the statement block (the variadic argument) for every tile tt of the chunk
 * [t0, t0 + tc) and channel block cb in [0, blocks), in parallel, with n, i, j the tile's image,
 * tile row and tile column. */
// clang-format off
#define FOR_TILE_BLOCKS(d, t0, tc, blocks, ...)                                                    \
    do {                                                                                           \
        const int64_t tiles_ = (d)->TH * (d)->TW;                                                  \
        _Pragma("omp parallel for collapse(2) schedule(static)")                                   \
        for (int64_t tt = 0; tt < (tc); tt++)                                                      \
            for (int64_t cb = 0; cb < (blocks); cb++) {                                            \
                int64_t t_ = (t0) + tt, n = t_ / tiles_, i = t_ % tiles_ / (d)->TW,               \
                        j = t_ % (d)->TW;                                                          \
                __VA_ARGS__                                                                        \
            }                                                                                      \
    } while (0)
// clang-format on

/* The tile bodies take the lane count B as a constant (DF_LANES, autograd_impl.h). */

/* One input tile: o[xi * s + l] = (B^T d B)[xi] of the 4x4 window at (2i - 1, 2j - 1) of the
 * channel block xb (H x W x B). */
DF_LANE_FN input_tile(const float *xb, const wino_dims *d, int64_t i, int64_t j, float *o,
                      int64_t s, const int64_t B) {
    float w[4][4][DF_LANES_MAX], r[4][4][DF_LANES_MAX];
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) {
            int64_t y = 2 * i - 1 + a, xx = 2 * j - 1 + b;
            load_lanes(w[a][b], xb + (y * d->W + xx) * B, B,
                       y >= 0 && y < d->H && xx >= 0 && xx < d->W);
        }
    for (int b = 0; b < 4; b++) /* B^T d: along rows */
#pragma omp simd
        for (int64_t l = 0; l < B; l++) {
            r[0][b][l] = w[0][b][l] - w[2][b][l];
            r[1][b][l] = w[1][b][l] + w[2][b][l];
            r[2][b][l] = w[2][b][l] - w[1][b][l];
            r[3][b][l] = w[1][b][l] - w[3][b][l];
        }
    for (int a = 0; a < 4; a++) { /* (B^T d) B: along columns */
        float *oa = o + (int64_t)(a * 4) * s;
#pragma omp simd
        for (int64_t l = 0; l < B; l++) {
            oa[l] = r[a][0][l] - r[a][2][l];
            oa[s + l] = r[a][1][l] + r[a][2][l];
            oa[2 * s + l] = r[a][2][l] - r[a][1][l];
            oa[3 * s + l] = r[a][1][l] - r[a][3][l];
        }
    }
}

/* One gradient tile: o[xi * s + l] = (A g A^T)[xi] of the 2x2 window at (2i, 2j) of the channel
 * block gb (zeros past the image). */
DF_LANE_FN grad_tile(const float *gb, const wino_dims *d, int64_t i, int64_t j, float *o, int64_t s,
                     const int64_t B) {
    float w[2][2][DF_LANES_MAX], r[4][2][DF_LANES_MAX];
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            int64_t y = 2 * i + a, xx = 2 * j + b;
            load_lanes(w[a][b], gb + (y * d->W + xx) * B, B, y < d->H && xx < d->W);
        }
    for (int b = 0; b < 2; b++) /* A g: rows (g0, g0 + g1, g0 - g1, -g1) */
#pragma omp simd
        for (int64_t l = 0; l < B; l++) {
            r[0][b][l] = w[0][b][l];
            r[1][b][l] = w[0][b][l] + w[1][b][l];
            r[2][b][l] = w[0][b][l] - w[1][b][l];
            r[3][b][l] = -w[1][b][l];
        }
    for (int a = 0; a < 4; a++) { /* (A g) A^T: columns */
        float *oa = o + (int64_t)(a * 4) * s;
#pragma omp simd
        for (int64_t l = 0; l < B; l++) {
            oa[l] = r[a][0][l];
            oa[s + l] = r[a][0][l] + r[a][1][l];
            oa[2 * s + l] = r[a][0][l] - r[a][1][l];
            oa[3 * s + l] = -r[a][1][l];
        }
    }
}

/* The transform of a chunk's tiles [t0, t0 + tc) of a blocked tensor src with ch channels into
 * out[xi][tt][c]: the input's V = B^T d B, or when `grad` the output gradient's D = A g A^T. */
DF_SIMD_CLONES static void tile_transform(const float *src, int64_t ch, const wino_dims *d,
                                          int64_t t0, int64_t tc, float *out, bool grad) {
    const int64_t B = d->B, CB = ch / B;
    FOR_TILE_BLOCKS(d, t0, tc, CB, {
        const float *sb = src + (n * CB + cb) * d->H * d->W * B;
        float *o = out + tt * ch + cb * B;
        if (grad)
            DF_LANES(B, grad_tile, sb, d, i, j, o, tc * ch);
        else
            DF_LANES(B, input_tile, sb, d, i, j, o, tc * ch);
    });
}

/* One output tile: the 2x2 outputs A^T m A (+ bias bb) of the transform-domain values
 * m[xi * s + l], written (or added) into the channel block yb at (2i, 2j), rows and columns
 * past the image dropped. */
DF_LANE_FN output_tile(const float *m, int64_t s, const float *bb, const wino_dims *d, int64_t i,
                       int64_t j, float *yb, bool accumulate, const int64_t B) {
    float r[2][4][DF_LANES_MAX];
    for (int b = 0; b < 4; b++) /* A^T M: rows */
#pragma omp simd
        for (int64_t l = 0; l < B; l++) {
            float m0 = m[b * s + l], m1 = m[(4 + b) * s + l], m2 = m[(8 + b) * s + l],
                  m3 = m[(12 + b) * s + l];
            r[0][b][l] = m0 + m1 + m2;
            r[1][b][l] = m1 - m2 - m3;
        }
    for (int a = 0; a < 2; a++) {
        int64_t row = 2 * i + a;
        if (row >= d->H) continue;
        for (int c = 0; c < 2; c++) {
            int64_t col = 2 * j + c;
            if (col >= d->W) continue;
            float *o = yb + (row * d->W + col) * B;
#pragma omp simd
            for (int64_t l = 0; l < B; l++) {
                float v = c == 0 ? r[a][0][l] + r[a][1][l] + r[a][2][l]
                                 : r[a][1][l] - r[a][2][l] - r[a][3][l];
                if (bb) v += bb[l];
                o[l] = accumulate ? o[l] + v : v;
            }
        }
    }
}

/* y (=, or += when accumulate) A^T M A (+ bias) for the tiles [t0, t0 + tc) of a blocked output
 * with cout channels. */
DF_SIMD_CLONES static void output_transform(const float *M, const float *bias, int64_t cout,
                                            const wino_dims *d, int64_t t0, int64_t tc, float *y,
                                            bool accumulate) {
    const int64_t B = d->B, OB = cout / B;
    FOR_TILE_BLOCKS(d, t0, tc, OB, {
        float *yb = y + (n * OB + cb) * d->H * d->W * B;
        DF_LANES(B, output_tile, M + tt * cout + cb * B, tc * cout, bias ? bias + cb * B : NULL, d,
                 i, j, yb, accumulate);
    });
}

/* U[xi][ci][co] = (G k G^T)[xi] with k = w[co, ci] (forward: ci = c, co = o) or, when
 * `transposed`, k = w[ci, co] rotated by 180 degrees (backward-data: ci = o, co = c). */
DF_SIMD_CLONES static void weight_transform(const float *w, int64_t O, int64_t C, bool transposed,
                                            float *U) {
    const int64_t CI = transposed ? O : C, CO = transposed ? C : O;
#pragma omp parallel for schedule(static)
    for (int64_t ci = 0; ci < CI; ci++)
        for (int64_t co = 0; co < CO; co++) {
            const float *k = transposed ? w + (ci * C + co) * 9 : w + (co * C + ci) * 9;
            float g[3][3], t[4][3];
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    g[a][b] = transposed ? k[(2 - a) * 3 + 2 - b] : k[a * 3 + b];
            for (int b = 0; b < 3; b++) { /* G g */
                t[0][b] = g[0][b];
                t[1][b] = 0.5f * (g[0][b] + g[1][b] + g[2][b]);
                t[2][b] = 0.5f * (g[0][b] - g[1][b] + g[2][b]);
                t[3][b] = g[2][b];
            }
            for (int a = 0; a < 4; a++) { /* (G g) G^T */
                float *u = U + (int64_t)(a * 4) * CI * CO + ci * CO + co;
                u[0] = t[a][0];
                u[CI * CO] = 0.5f * (t[a][0] + t[a][1] + t[a][2]);
                u[2 * CI * CO] = 0.5f * (t[a][0] - t[a][1] + t[a][2]);
                u[3 * CI * CO] = t[a][2];
            }
        }
}

/* ------------------------------------------------------------------ passes ------------------ */

/* out (cout channels) = the Winograd convolution of in (cin channels) with transformed weights
 * U (16, cin, cout), + bias; accumulate adds into out. */
static void wino_conv(const float *in, int64_t cin, const float *U, int64_t cout, const float *bias,
                      float *out, bool accumulate, const wino_dims *d) {
    int64_t tcm = chunk_tiles(d, cin, cout);
    float *V = scratch((size_t)(16 * tcm * cin)), *M = scratch((size_t)(16 * tcm * cout));
    int64_t u_dims[3] = {16, cin, cout};
    df_dnnl_mat Um = df_dnnl_mat_of(U, 3, u_dims, false);
    for (int64_t t0 = 0; t0 < d->T; t0 += tcm) {
        int64_t tc = d->T - t0 < tcm ? d->T - t0 : tcm;
        tile_transform(in, cin, d, t0, tc, V, false);
        int64_t v_dims[3] = {16, tc, cin}, m_dims[3] = {16, tc, cout};
        df_dnnl_mat Vm = df_dnnl_mat_of(V, 3, v_dims, false);
        df_dnnl_matmul("conv2d (winograd)", &Vm, &Um, NULL, M, m_dims, false);
        output_transform(M, bias, cout, d, t0, tc, out, accumulate);
    }
    df_mem_free(V, sizeof(float) * (size_t)(16 * tcm * cin));
    df_mem_free(M, sizeof(float) * (size_t)(16 * tcm * cout));
}

void df_winograd_forward(const float *x, const float *w, const float *bias, float *y, int64_t N,
                         int64_t C, int64_t H, int64_t W, int64_t O, int64_t B) {
    wino_dims d = dims_of(N, H, W, B);
    float *U = scratch((size_t)(16 * C * O));
    weight_transform(w, O, C, false, U);
    wino_conv(x, C, U, O, bias, y, false, &d);
    df_mem_free(U, sizeof(float) * (size_t)(16 * C * O));
}

void df_winograd_backward_data(const float *g, const float *w, float *dx, bool accumulate,
                               int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t B) {
    wino_dims d = dims_of(N, H, W, B);
    float *U = scratch((size_t)(16 * C * O));
    weight_transform(w, O, C, true, U);
    wino_conv(g, O, U, C, NULL, dx, accumulate, &d);
    df_mem_free(U, sizeof(float) * (size_t)(16 * C * O));
}

void df_winograd_backward_weights(const float *x, const float *g, float *dw, bool acc_w, float *db,
                                  bool acc_b, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                                  int64_t B) {
    wino_dims d = dims_of(N, H, W, B);
    int64_t tcm = chunk_tiles(&d, C, O);
    float *V = scratch((size_t)(16 * tcm * C)), *D = scratch((size_t)(16 * tcm * O));
    float *Z = scratch((size_t)(16 * O * C));
    int64_t z_dims[3] = {16, O, C};
    for (int64_t t0 = 0; t0 < d.T; t0 += tcm) {
        int64_t tc = d.T - t0 < tcm ? d.T - t0 : tcm;
        tile_transform(x, C, &d, t0, tc, V, false);
        tile_transform(g, O, &d, t0, tc, D, true);
        int64_t v_dims[3] = {16, tc, C}, d_dims[3] = {16, tc, O};
        df_dnnl_mat Dm = df_dnnl_mat_of(D, 3, d_dims, true),
                    Vm = df_dnnl_mat_of(V, 3, v_dims, false);
        df_dnnl_matmul("conv2d (winograd) backward", &Dm, &Vm, NULL, Z, z_dims, t0 > 0);
    }
    /* dw[o, c] = G^T Z[.][o][c] G */
    const int64_t OC = O * C;
#pragma omp parallel for schedule(static)
    for (int64_t oc = 0; oc < OC; oc++) {
        float z[4][4], t[3][4];
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++) z[a][b] = Z[(int64_t)(a * 4 + b) * OC + oc];
        for (int b = 0; b < 4; b++) { /* G^T z: rows */
            t[0][b] = z[0][b] + 0.5f * (z[1][b] + z[2][b]);
            t[1][b] = 0.5f * (z[1][b] - z[2][b]);
            t[2][b] = 0.5f * (z[1][b] + z[2][b]) + z[3][b];
        }
        float *o = dw + oc * 9;
        for (int a = 0; a < 3; a++) { /* (G^T z) G: columns */
            float v[3] = {t[a][0] + 0.5f * (t[a][1] + t[a][2]), 0.5f * (t[a][1] - t[a][2]),
                          0.5f * (t[a][1] + t[a][2]) + t[a][3]};
            for (int b = 0; b < 3; b++) o[a * 3 + b] = acc_w ? o[a * 3 + b] + v[b] : v[b];
        }
    }
    if (db) { /* db[o] (=/+=) the sum of g over n, i, j: g seen as (N, O / B, H W, B) */
        int64_t gs[4] = {N, O / B, H * W, B}, bs[4] = {1, O / B, 1, B};
        df_reduce_sum(g, 4, gs, db, 4, bs, 1.0, acc_b);
    }
    df_mem_free(V, sizeof(float) * (size_t)(16 * tcm * C));
    df_mem_free(D, sizeof(float) * (size_t)(16 * tcm * O));
    df_mem_free(Z, sizeof(float) * (size_t)(16 * O * C));
}
