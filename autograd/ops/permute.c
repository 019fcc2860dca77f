/* permute.c — reorders dims, materialised (torch.permute(...).contiguous()), and transpose, the
 * swap of two dims built on it.
 *   shapes:   a (s_0, ..., s_{n-1}), perm a permutation of 0..n-1 (negative entries allowed)
 *             -> out (s_perm[0], ..., s_perm[n-1])
 *   forward:  out[i_0, ..., i_{n-1}] = a[j] with j_perm[k] = i_k
 *   backward: ga += permute(g, inv) with inv[perm[k]] = k   (the inverse permutation)
 *   saved:    the permutation (params).
 *
 * The copy is planned before it runs: dims of size 1 are dropped and source dims that stay
 * neighbours in the output are merged, so (N, C, H, W) -> (N, H, W, C) becomes the batched 2-D
 * transpose (N, C, HW) -> (N, HW, C), and (B, T, H, D) -> (B, H, T, D) keeps D innermost. Then:
 *   - the innermost source dim stays innermost: whole rows are copied (memcpy per row);
 *   - otherwise it is a batched transpose between the out dim holding the source's innermost
 *     dim and the out's innermost dim, done in TILE x TILE blocks so reads and writes both stay
 *     in cache.
 * OpenMP runs over rows or over (batch, tile-row) pairs; every output element is written by one
 * thread, so results do not depend on the thread count. Any dtype is copied; the gradient is F32.
 */
#include "autograd/autograd_impl.h"
#include "autograd/ops/strides_impl.h"

#include <stdbool.h>
#include <string.h>

#define TILE 32

typedef struct permute_params {
    int perm[DF_MAX_DIMS]; /* normalised */
} permute_params;

/* A copy of a permuted source into a contiguous output, after coalescing. */
typedef struct perm_plan {
    int k;                          /* dims after coalescing */
    int64_t shape[DF_MAX_DIMS];     /* output shape */
    int64_t istride[DF_MAX_DIMS];   /* source stride (elements) of each output dim */
    int64_t ostride[DF_MAX_DIMS];   /* output stride (contiguous) */
    int64_t numel;
} perm_plan;

static void plan_make(perm_plan *p, int ndim, const int64_t *src_shape, const int *perm) {
    /* 1. drop dims of size 1 (renumbering the rest) */
    int map[DF_MAX_DIMS], pr[DF_MAX_DIMS], m = 0, q = 0;
    int64_t s[DF_MAX_DIMS], st[DF_MAX_DIMS];
    p->numel = 1;
    for (int k = 0; k < ndim; k++) {
        p->numel *= src_shape[k];
        map[k] = src_shape[k] != 1 ? m : -1;
        if (src_shape[k] != 1) s[m++] = src_shape[k];
    }
    for (int j = 0; j < ndim; j++)
        if (map[perm[j]] >= 0) pr[q++] = map[perm[j]];
    df_strides(m, s, st);
    /* 2. merge runs of consecutive source dims that stay in order: a run behaves as one dim of
     * the product's size whose stride is that of its last (innermost) member */
    p->k = 0;
    for (int j = 0; j < m; j++) {
        if (j > 0 && pr[j] == pr[j - 1] + 1) {
            p->shape[p->k - 1] *= s[pr[j]];
            p->istride[p->k - 1] = st[pr[j]];
        } else {
            p->shape[p->k] = s[pr[j]];
            p->istride[p->k] = st[pr[j]];
            p->k++;
        }
    }
    df_strides(p->k, p->shape, p->ostride);
}

/* Offsets of the multi-index `i` over the plan's dims other than `skip0` and `skip1` (-1 for
 * none), enumerated row-major: into the source (*si) and the output (*so). */
static void plan_offsets(const perm_plan *p, int64_t i, int skip0, int skip1, int64_t *si,
                         int64_t *so) {
    int64_t a = 0, b = 0;
    for (int k = p->k - 1; k >= 0; k--) {
        if (k == skip0 || k == skip1) continue;
        int64_t ik = i % p->shape[k];
        i /= p->shape[k];
        a += ik * p->istride[k];
        b += ik * p->ostride[k];
    }
    *si = a;
    *so = b;
}

/* The innermost source dim stays innermost: copy (or add) rows of `len` elements. */
static void rows_run(const perm_plan *p, const void *src, void *dst, size_t es, bool add) {
    int64_t len = p->shape[p->k - 1], nrows = p->numel / len;
    bool par = p->numel >= DF_PAR_MIN_ELEMS;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < nrows; r++) {
        int64_t si, so;
        plan_offsets(p, r, p->k - 1, -1, &si, &so);
        if (add) {
            float *d = (float *)dst + so;
            const float *s = (const float *)src + si;
            for (int64_t j = 0; j < len; j++) d[j] += s[j];
        } else {
            memcpy((char *)dst + (size_t)so * es, (const char *)src + (size_t)si * es,
                   (size_t)len * es);
        }
    }
}

/* Batched transpose between output dim Q (source stride 1) and the innermost output dim L:
 * each task is one batch index and one band of TILE rows along Q, walked in TILE x TILE
 * blocks. OP is `=` or `+=`. */
#define DEFINE_TILES(NAME, T, OP)                                                                 \
    static void NAME(const perm_plan *p, int Q, const T *src, T *dst) {                          \
        int L = p->k - 1;                                                                         \
        int64_t nq = p->shape[Q], nl = p->shape[L], sl = p->istride[L], oq = p->ostride[Q];      \
        int64_t nbands = (nq + TILE - 1) / TILE, nbatch = p->numel / (nq * nl);                   \
        bool par = p->numel >= DF_PAR_MIN_ELEMS;                                                  \
        _Pragma("omp parallel for schedule(static) if (par)")                                     \
        for (int64_t t = 0; t < nbatch * nbands; t++) {                                          \
            int64_t si, so, a0 = (t % nbands) * TILE;                                            \
            int64_t a1 = a0 + TILE < nq ? a0 + TILE : nq;                                         \
            plan_offsets(p, t / nbands, Q, L, &si, &so);                                          \
            for (int64_t c0 = 0; c0 < nl; c0 += TILE) {                                          \
                int64_t c1 = c0 + TILE < nl ? c0 + TILE : nl;                                     \
                for (int64_t a = a0; a < a1; a++) {                                               \
                    T *d = dst + so + a * oq;                                                     \
                    const T *s = src + si + a;                                                    \
                    for (int64_t c = c0; c < c1; c++) d[c] OP s[c * sl];                          \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_TILES(tiles_copy8, uint8_t, =)
DEFINE_TILES(tiles_copy16, uint16_t, =)
DEFINE_TILES(tiles_copy32, uint32_t, =)
DEFINE_TILES(tiles_copy64, uint64_t, =)
DEFINE_TILES(tiles_add_f32, float, +=)

/* dst (contiguous, the permuted shape) = (or +=, F32 only) src permuted by perm. */
static void permute_run(const void *src, void *dst, size_t es, int ndim, const int64_t *shape,
                        const int *perm, bool add) {
    perm_plan p;
    plan_make(&p, ndim, shape, perm);
    if (p.numel == 0) return;
    if (p.k == 0) { /* all dims of size 1: one element */
        if (add) *(float *)dst += *(const float *)src;
        else memcpy(dst, src, es);
        return;
    }
    if (p.istride[p.k - 1] == 1) {
        rows_run(&p, src, dst, es, add);
        return;
    }
    int Q = 0;
    while (p.istride[Q] != 1) Q++;
    if (add) tiles_add_f32(&p, Q, src, dst);
    else if (es == 4) tiles_copy32(&p, Q, src, dst);
    else if (es == 2) tiles_copy16(&p, Q, src, dst);
    else if (es == 8) tiles_copy64(&p, Q, src, dst);
    else tiles_copy8(&p, Q, src, dst);
}

static void permute_backward(df_node *n, const df_tensor *g) {
    df_tensor *ga = df_node_grad(n, 0);
    if (!ga) return;
    const int *perm = ((const permute_params *)n->state)->perm;
    int inv[DF_MAX_DIMS];
    for (int k = 0; k < g->ndim; k++) inv[perm[k]] = k;
    permute_run(g->data, ga->data, sizeof(float), g->ndim, g->shape, inv, true);
}

static const df_op permute_op = {"permute", permute_backward, NULL};

df_tensor *df_permute(df_tensor *a, const int *perm) {
    int p[DF_MAX_DIMS] = {0};
    bool seen[DF_MAX_DIMS] = {false};
    int64_t shape[DF_MAX_DIMS];
    char sa[64];
    for (int k = 0; k < a->ndim; k++) {
        p[k] = df_dim_norm("permute", perm[k], a->ndim);
        DF_ASSERT(!seen[p[k]], "permute: dim %d repeated in the permutation of %s", perm[k],
                  df_shape_str(a, sa, sizeof sa));
        seen[p[k]] = true;
        shape[k] = a->shape[p[k]];
    }
    df_tensor *out = df_tensor_new(a->dtype, a->ndim, shape);
    permute_run(a->data, out->data, df_dtype_size(a->dtype), a->ndim, a->shape, p, false);
    df_node *node = df_node_new(&permute_op, out, 1, &a, sizeof(permute_params));
    if (node) memcpy(((permute_params *)node->state)->perm, p, sizeof p);
    return out;
}

df_tensor *df_transpose(df_tensor *a, int d0, int d1) {
    int p[DF_MAX_DIMS] = {0};
    for (int k = 0; k < a->ndim; k++) p[k] = k;
    int i = df_dim_norm("transpose", d0, a->ndim), j = df_dim_norm("transpose", d1, a->ndim);
    p[i] = j;
    p[j] = i;
    return df_permute(a, p);
}
