/* broadcast_impl.c — broadcast shapes and strides, dim merging, and deterministic sums (see
 * broadcast_impl.h). Reference: NumPy broadcasting rules; torch.sum semantics for reductions
 * (accumulated here in double, so results are at least as accurate as torch's float cascade). */
#include "autograd/ops/broadcast_impl.h"

#include <string.h>

bool df_bcast_shape(int na, const int64_t *sa, int nb, const int64_t *sb, int *nout,
                    int64_t *out) {
    int n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int ia = na - n + i, ib = nb - n + i;
        int64_t da = ia >= 0 ? sa[ia] : 1, db = ib >= 0 ? sb[ib] : 1;
        if (da != db && da != 1 && db != 1) return false;
        out[i] = da == 1 ? db : da;
    }
    *nout = n;
    return true;
}

bool df_bcast_to_ok(int nin, const int64_t *in, int nout, const int64_t *out) {
    if (nin > nout) return false;
    for (int i = 0; i < nin; i++) {
        int64_t d = in[i], o = out[nout - nin + i];
        if (d != o && d != 1) return false;
    }
    return true;
}

void df_bcast_strides(int nin, const int64_t *in, int nout, const int64_t *out, int64_t *strides) {
    int64_t s = 1;
    for (int i = nout - 1; i >= 0; i--) {
        int ii = nin - nout + i;
        int64_t d = ii >= 0 ? in[ii] : 1;
        strides[i] = (d == 1 && out[i] != 1) ? 0 : s;
        s *= d;
    }
}

void df_bcast_init(df_bcast *b, int nout, const int64_t *out, int n_ops, const int *nins,
                   const int64_t *const *ins) {
    DF_ASSERT(n_ops <= DF_BCAST_MAX_OPS, "broadcast: %d operands", n_ops);
    int64_t st[DF_BCAST_MAX_OPS][DF_MAX_DIMS];
    for (int k = 0; k < n_ops; k++) df_bcast_strides(nins[k], ins[k], nout, out, st[k]);
    memset(b, 0, sizeof *b);
    b->n_ops = n_ops;
    b->numel = 1;
    for (int i = 0; i < nout; i++) b->numel *= out[i];
    /* drop size-1 dims, then merge dim i into the previous kept one when every operand is
     * contiguous across the pair (stride[prev] == stride[i] * shape[i]) */
    int nd = 0;
    for (int i = 0; i < nout; i++) {
        if (out[i] == 1) continue;
        if (nd > 0) {
            bool merge = true;
            for (int k = 0; k < n_ops; k++)
                if (b->stride[k][nd - 1] != st[k][i] * out[i]) merge = false;
            if (merge) {
                b->shape[nd - 1] *= out[i];
                for (int k = 0; k < n_ops; k++) b->stride[k][nd - 1] = st[k][i];
                continue;
            }
        }
        b->shape[nd] = out[i];
        for (int k = 0; k < n_ops; k++) b->stride[k][nd] = st[k][i];
        nd++;
    }
    if (nd == 0) { /* a scalar (or all-ones shape): one dim of one element */
        b->shape[0] = 1;
        for (int k = 0; k < n_ops; k++) b->stride[k][0] = 1;
        nd = 1;
    }
    b->ndim = nd;
}

void df_bcast_run(const df_bcast *bc, df_row_fn row, const void *ctx) {
    int last = bc->ndim - 1;
    int64_t L = bc->shape[last];
    if (bc->numel == 0) return;
    int64_t rows = bc->numel / L, nch = (L + DF_PAR_GRAIN - 1) / DF_PAR_GRAIN;
#pragma omp parallel for schedule(static) if (bc->numel > DF_PAR_GRAIN)
    for (int64_t t = 0; t < rows * nch; t++) {
        int64_t r = t / nch, start = (t % nch) * DF_PAR_GRAIN;
        int64_t len = L - start < DF_PAR_GRAIN ? L - start : DF_PAR_GRAIN;
        int64_t off[DF_BCAST_MAX_OPS];
        for (int k = 0; k < bc->n_ops; k++)
            off[k] = df_bcast_offset(bc, k, r * L) + start * bc->stride[k][last];
        row(ctx, off, len);
    }
}

/* ------------------------------------------------------------------ sums ----------------------- */

#define SUM_BLOCK 4096
#define SUM_MAX_PARTIALS 4096

static double sum_run(const float *x, int64_t n) {
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += (double)x[i];
    return acc;
}

double df_sum_f32(const float *x, int64_t n) {
    if (n <= SUM_BLOCK) return sum_run(x, n);
    /* fixed blocks (a function of n only), partials added in order */
    int64_t block = SUM_BLOCK;
    if ((n + block - 1) / block > SUM_MAX_PARTIALS)
        block = ((n + SUM_MAX_PARTIALS - 1) / SUM_MAX_PARTIALS + 63) / 64 * 64;
    int64_t nb = (n + block - 1) / block;
    double partial[SUM_MAX_PARTIALS];
#pragma omp parallel for schedule(static) if (n > 4 * DF_PAR_GRAIN)
    for (int64_t j = 0; j < nb; j++) {
        int64_t s = j * block, e = s + block < n ? s + block : n;
        partial[j] = sum_run(x + s, e - s);
    }
    double acc = 0;
    for (int64_t j = 0; j < nb; j++) acc += partial[j];
    return acc;
}

/* Reduced groups after merging: shape, src stride, and whether summed over. */
typedef struct red_space {
    int ndim;
    int64_t shape[DF_MAX_DIMS], sstride[DF_MAX_DIMS];
    bool red[DF_MAX_DIMS];
} red_space;

static void red_space_init(red_space *r, int src_ndim, const int64_t *src_shape, int dst_ndim,
                           const int64_t *dst_shape) {
    memset(r, 0, sizeof *r);
    int64_t s = 1, st[DF_MAX_DIMS];
    for (int i = src_ndim - 1; i >= 0; i--) {
        st[i] = s;
        s *= src_shape[i];
    }
    int nd = 0;
    for (int i = 0; i < src_ndim; i++) {
        if (src_shape[i] == 1) continue;
        int di = dst_ndim - src_ndim + i;
        bool red = di < 0 || dst_shape[di] == 1;
        if (nd > 0 && r->red[nd - 1] == red) { /* contiguous source: always mergeable */
            r->shape[nd - 1] *= src_shape[i];
            r->sstride[nd - 1] = st[i];
            continue;
        }
        r->shape[nd] = src_shape[i];
        r->sstride[nd] = st[i];
        r->red[nd] = red;
        nd++;
    }
    r->ndim = nd;
}

/* Source offset of the reduced coordinates numbered `k` (row-major over the reduced groups in
 * [0, upto)). */
static int64_t red_offset(const red_space *r, int upto, int64_t k) {
    int64_t off = 0;
    for (int d = upto - 1; d >= 0; d--) {
        if (!r->red[d]) continue;
        off += (k % r->shape[d]) * r->sstride[d];
        k /= r->shape[d];
    }
    return off;
}

/* Source offset of kept coordinates numbered `j` (row-major over the kept groups in [0, upto)). */
static int64_t kept_offset(const red_space *r, int upto, int64_t j) {
    int64_t off = 0;
    for (int d = upto - 1; d >= 0; d--) {
        if (r->red[d]) continue;
        off += (j % r->shape[d]) * r->sstride[d];
        j /= r->shape[d];
    }
    return off;
}

static inline void put(float *dst, int64_t j, double v, double scale, bool accumulate) {
    float f = (float)(v * scale);
    if (accumulate) dst[j] += f;
    else dst[j] = f;
}

void df_reduce_sum(const float *src, int src_ndim, const int64_t *src_shape, float *dst,
                   int dst_ndim, const int64_t *dst_shape, double scale, bool accumulate) {
    DF_ASSERT(df_bcast_to_ok(dst_ndim, dst_shape, src_ndim, src_shape),
              "reduce_sum: shapes do not broadcast");
    red_space r;
    red_space_init(&r, src_ndim, src_shape, dst_ndim, dst_shape);
    int64_t m = 1, rn = 1;
    for (int d = 0; d < r.ndim; d++) {
        if (r.red[d]) rn *= r.shape[d];
        else m *= r.shape[d];
    }
    if (r.ndim == 0 || rn == 1) { /* nothing summed: a (scaled) copy */
        int64_t n = m;
#pragma omp parallel for simd schedule(static) if (n > DF_PAR_GRAIN)
        for (int64_t j = 0; j < n; j++) {
            float f = (float)((double)src[j] * scale);
            if (accumulate) dst[j] += f;
            else dst[j] = f;
        }
        return;
    }
    if (m == 1 && r.ndim == 1) { /* everything: one contiguous run */
        put(dst, 0, df_sum_f32(src, rn), scale, accumulate);
        return;
    }
    int last = r.ndim - 1;
    if (r.red[last]) {
        /* each output sums (rn / L) contiguous runs of L elements */
        int64_t L = r.shape[last], outer = rn / L;
#pragma omp parallel for schedule(static) if (m > 1 && m * rn > DF_PAR_GRAIN)
        for (int64_t j = 0; j < m; j++) {
            const float *base = src + kept_offset(&r, last, j);
            double acc = 0;
            for (int64_t k = 0; k < outer; k++) acc += df_sum_f32(base + red_offset(&r, last, k), L);
            put(dst, j, acc, scale, accumulate);
        }
        return;
    }
    /* innermost group kept (K contiguous in src and dst): rows of K accumulated over the reduced
     * coordinates, in chunks of KC columns */
    enum { KC = 512 };
    int64_t K = r.shape[last], rows = m / K, nkc = (K + KC - 1) / KC;
#pragma omp parallel for schedule(static) if (m * rn > DF_PAR_GRAIN)
    for (int64_t t = 0; t < rows * nkc; t++) {
        int64_t row = t / nkc, k0 = (t % nkc) * KC, kn = K - k0 < KC ? K - k0 : KC;
        double acc[KC];
        for (int64_t k = 0; k < kn; k++) acc[k] = 0;
        const float *base = src + kept_offset(&r, last, row) + k0;
        for (int64_t q = 0; q < rn; q++) {
            const float *p = base + red_offset(&r, last, q);
#pragma omp simd
            for (int64_t k = 0; k < kn; k++) acc[k] += (double)p[k];
        }
        for (int64_t k = 0; k < kn; k++) put(dst, row * K + k0 + k, acc[k], scale, accumulate);
    }
}
