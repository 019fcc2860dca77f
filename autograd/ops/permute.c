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

#include <omp.h>
#include <stdbool.h>
#include <string.h>
#ifdef __SSE2__
#include <xmmintrin.h>
#endif

#define TILE 32

typedef struct permute_params {
    int perm[DF_MAX_DIMS]; /* normalised */
} permute_params;

/* A copy of a permuted source into a contiguous output, after coalescing. */
typedef struct perm_plan {
    int k;                        /* dims after coalescing */
    int64_t shape[DF_MAX_DIMS];   /* output shape */
    int64_t istride[DF_MAX_DIMS]; /* source stride (elements) of each output dim */
    int64_t ostride[DF_MAX_DIMS]; /* output stride (contiguous) */
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
 * none), enumerated row-major: into the source (*si) and the output (*so); idx receives the
 * index itself (entries of skipped dims are 0). */
static void plan_offsets(const perm_plan *p, int64_t i, int skip0, int skip1, int64_t *idx,
                         int64_t *si, int64_t *so) {
    int64_t a = 0, b = 0;
    for (int k = p->k - 1; k >= 0; k--) {
        idx[k] = 0;
        if (k == skip0 || k == skip1) continue;
        idx[k] = i % p->shape[k];
        i /= p->shape[k];
        a += idx[k] * p->istride[k];
        b += idx[k] * p->ostride[k];
    }
    *si = a;
    *so = b;
}

/* The innermost source dim stays innermost: copy (or add) rows of `len` elements. Each thread
 * takes one contiguous range of rows and walks it with an odometer over the outer dims (no
 * divisions per row: rows can be as short as a head dim). */
static void rows_run(const perm_plan *p, const void *src, void *dst, size_t es, bool add) {
    int nd = p->k - 1;
    int64_t len = p->shape[nd], nrows = p->numel / len;
    bool par = p->numel >= DF_PAR_MIN_ELEMS;
#pragma omp parallel if (par)
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t r0 = nrows / nt * t + (t < nrows % nt ? t : nrows % nt);
        int64_t r1 = r0 + nrows / nt + (t < nrows % nt ? 1 : 0);
        int64_t idx[DF_MAX_DIMS], si, so;
        plan_offsets(p, r0, nd, -1, idx, &si, &so);
        for (int64_t r = r0; r < r1; r++) {
            if (add) {
                float *d = (float *)dst + so;
                const float *s = (const float *)src + si;
                for (int64_t j = 0; j < len; j++) d[j] += s[j];
            } else {
                memcpy((char *)dst + (size_t)so * es, (const char *)src + (size_t)si * es,
                       (size_t)len * es);
            }
            so += len;
            for (int k = nd - 1; k >= 0; k--) {
                si += p->istride[k];
                if (++idx[k] < p->shape[k]) break;
                si -= p->istride[k] * p->shape[k];
                idx[k] = 0;
            }
        }
    }
}

/* One na x nc block of the batched transpose: d[a * oq + c] OP s[a + c * sl]. */
#define DEFINE_BLOCK(NAME, T, OP)                                                                  \
    static inline void NAME(const T *s, int64_t sl, T *d, int64_t oq, int64_t na, int64_t nc) {    \
        for (int64_t a = 0; a < na; a++)                                                           \
            for (int64_t c = 0; c < nc; c++) d[a * oq + c] OP s[a + c * sl];                       \
    }

DEFINE_BLOCK(block_copy8, uint8_t, =)
DEFINE_BLOCK(block_copy16, uint16_t, =)
DEFINE_BLOCK(block_copy32, uint32_t, =)
DEFINE_BLOCK(block_copy64, uint64_t, =)
DEFINE_BLOCK(block_add_f32, float, +=)

#ifdef __SSE2__
/* One 4 x 4 sub-block through registers: four loads along the source's contiguous dim,
 * _MM_TRANSPOSE4_PS, four stores (or adds) along the output's. */
static inline void tr4_sse(const float *sp, int64_t sl, float *dp, int64_t oq, bool add) {
    __m128 r0 = _mm_loadu_ps(sp), r1 = _mm_loadu_ps(sp + sl);
    __m128 r2 = _mm_loadu_ps(sp + 2 * sl), r3 = _mm_loadu_ps(sp + 3 * sl);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    if (add) {
        r0 = _mm_add_ps(r0, _mm_loadu_ps(dp));
        r1 = _mm_add_ps(r1, _mm_loadu_ps(dp + oq));
        r2 = _mm_add_ps(r2, _mm_loadu_ps(dp + 2 * oq));
        r3 = _mm_add_ps(r3, _mm_loadu_ps(dp + 3 * oq));
    }
    _mm_storeu_ps(dp, r0);
    _mm_storeu_ps(dp + oq, r1);
    _mm_storeu_ps(dp + 2 * oq, r2);
    _mm_storeu_ps(dp + 3 * oq, r3);
}

/* A block of 4-byte elements: 4 x 4 sub-blocks through registers, the edges element by element.
 * Copies move bits (floats or ints alike); `add` adds floats. */
static inline void block_sse(const float *s, int64_t sl, float *d, int64_t oq, int64_t na,
                             int64_t nc, bool add) {
    int64_t na4 = na & ~(int64_t)3, nc4 = nc & ~(int64_t)3;
    /* output rows outermost: each written line is completed before the next is started (the
     * other order, measured with bench_permute, is up to 2x slower: revisited lines written at
     * power-of-two strides are evicted in between) */
    for (int64_t a = 0; a < na4; a += 4)
        for (int64_t c = 0; c < nc4; c += 4) tr4_sse(s + a + c * sl, sl, d + a * oq + c, oq, add);
    /* edges: the last na % 4 rows of the first nc4 columns, then the last nc % 4 columns */
    if (add) {
        block_add_f32(s + na4, sl, d + na4 * oq, oq, na - na4, nc4);
        block_add_f32(s + nc4 * sl, sl, d + nc4, oq, na, nc - nc4);
    } else {
        block_copy32((const uint32_t *)s + na4, sl, (uint32_t *)d + na4 * oq, oq, na - na4, nc4);
        block_copy32((const uint32_t *)s + nc4 * sl, sl, (uint32_t *)d + nc4, oq, na, nc - nc4);
    }
}
#endif

/* Batched transpose between output dim Q (source stride 1) and the innermost output dim L:
 * each task is one batch index and one band of TILE rows along Q, walked in TILE x TILE blocks
 * so that both the rows read and the rows written stay in L1. */
static void tiles_run(const perm_plan *p, int Q, const void *src, void *dst, size_t es, bool add) {
    int L = p->k - 1;
    int64_t nq = p->shape[Q], nl = p->shape[L], sl = p->istride[L], oq = p->ostride[Q];
    int64_t nbands = (nq + TILE - 1) / TILE, nbatch = p->numel / (nq * nl);
    bool par = p->numel >= DF_PAR_MIN_ELEMS;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t t = 0; t < nbatch * nbands; t++) {
        int64_t idx[DF_MAX_DIMS], si, so, a0 = (t % nbands) * TILE;
        int64_t na = a0 + TILE < nq ? TILE : nq - a0;
        plan_offsets(p, t / nbands, Q, L, idx, &si, &so);
        si += a0;
        so += a0 * oq;
        for (int64_t c0 = 0; c0 < nl; c0 += TILE) {
            int64_t nc = c0 + TILE < nl ? TILE : nl - c0, s0 = si + c0 * sl, d0 = so + c0;
            switch (add ? 0 : es) {
#ifdef __SSE2__
            case 0:
                block_sse((const float *)src + s0, sl, (float *)dst + d0, oq, na, nc, true);
                break;
            case 4:
                block_sse((const float *)src + s0, sl, (float *)dst + d0, oq, na, nc, false);
                break;
#else
            case 0:
                block_add_f32((const float *)src + s0, sl, (float *)dst + d0, oq, na, nc);
                break;
            case 4:
                block_copy32((const uint32_t *)src + s0, sl, (uint32_t *)dst + d0, oq, na, nc);
                break;
#endif
            case 2:
                block_copy16((const uint16_t *)src + s0, sl, (uint16_t *)dst + d0, oq, na, nc);
                break;
            case 8:
                block_copy64((const uint64_t *)src + s0, sl, (uint64_t *)dst + d0, oq, na, nc);
                break;
            default:
                block_copy8((const uint8_t *)src + s0, sl, (uint8_t *)dst + d0, oq, na, nc);
                break;
            }
        }
    }
}

/* dst (contiguous, the permuted shape) = (or +=, F32 only) src permuted by perm. */
static void permute_run(const void *src, void *dst, size_t es, int ndim, const int64_t *shape,
                        const int *perm, bool add) {
    perm_plan p;
    plan_make(&p, ndim, shape, perm);
    if (p.numel == 0) return;
    if (p.k == 0) { /* all dims of size 1: one element */
        if (add)
            *(float *)dst += *(const float *)src;
        else
            memcpy(dst, src, es);
        return;
    }
    if (p.istride[p.k - 1] == 1) {
        rows_run(&p, src, dst, es, add);
        return;
    }
    int Q = 0;
    while (p.istride[Q] != 1) Q++;
    tiles_run(&p, Q, src, dst, es, add);
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
    DF_ASSERT_PLAIN("permute", a);
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
    df_node *node = df_node_new_keep(&permute_op, out, 1, &a, sizeof(permute_params), 0u);
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
