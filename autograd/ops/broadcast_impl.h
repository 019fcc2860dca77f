/* broadcast_impl.h — NumPy broadcasting and reductions shared by the elementwise ops (internal to
 * autograd/).
 *
 * Shapes are aligned at the trailing dim; a dim of size 1 (or a missing leading dim) is repeated.
 * A broadcast operand is described by element strides over the output shape with stride 0 on
 * repeated dims. Before looping, adjacent dims are merged when every operand is contiguous across
 * them (df_bcast_collapse), so a same-shape op becomes one dim, (N, C, H, W) + (1, C, 1, 1)
 * becomes (N, C, H*W) with strides (0, 1, 0), and a scalar becomes one dim of stride 0. Loops
 * then run over the outer dims with a tight innermost loop.
 *
 * Reductions (df_reduce_sum) accumulate in double with a blocking that depends only on the
 * shapes, never on the thread count, so results are identical for any OMP_NUM_THREADS.
 */
#ifndef DF_OPS_BROADCAST_IMPL_H
#define DF_OPS_BROADCAST_IMPL_H

#include "autograd/autograd_impl.h"

#define DF_BCAST_MAX_OPS 4

/* A collapsed iteration space over `ndim` dims of `shape`, with per-operand element strides. */
typedef struct df_bcast {
    int ndim;
    int n_ops;
    int64_t shape[DF_MAX_DIMS];
    int64_t stride[DF_BCAST_MAX_OPS][DF_MAX_DIMS];
    int64_t numel;
} df_bcast;

/* The broadcast shape of (na, sa) and (nb, sb) into (*nout, out); false when incompatible. */
bool df_bcast_shape(int na, const int64_t *sa, int nb, const int64_t *sb, int *nout,
                    int64_t *out);
/* True when (nin, in) broadcasts to (nout, out) (in is the smaller one). */
bool df_bcast_to_ok(int nin, const int64_t *in, int nout, const int64_t *out);
/* Element strides of a contiguous (nin, in) read over the output shape (nout, out): 0 on
 * broadcast dims. */
void df_bcast_strides(int nin, const int64_t *in, int nout, const int64_t *out, int64_t *strides);
/* Fills b for `n_ops` operands over the output shape (operand 0 is normally the output itself,
 * given as the output shape) and merges adjacent dims where possible. */
void df_bcast_init(df_bcast *b, int nout, const int64_t *out, int n_ops, const int *nins,
                   const int64_t *const *ins);

/* Element offsets of operand k at the flat row-major index `i` of the collapsed space. */
static inline int64_t df_bcast_offset(const df_bcast *b, int k, int64_t i) {
    int64_t off = 0;
    for (int d = b->ndim - 1; d >= 0; d--) {
        int64_t c = i % b->shape[d];
        i /= b->shape[d];
        off += c * b->stride[k][d];
    }
    return off;
}

/* Runs row(ctx, off, n) over the collapsed space in tasks of at most DF_PAR_GRAIN elements of the
 * innermost dim (parallel when large); off[k] is operand k's element offset at the task's first
 * element, and the innermost strides are b->stride[k][b->ndim - 1]. */
typedef void (*df_row_fn)(const void *ctx, const int64_t *off, int64_t n);
void df_bcast_run(const df_bcast *b, df_row_fn row, const void *ctx);

/* dst (dst_ndim, dst_shape) = sum of src (src_ndim, src_shape) over the dims where dst is 1 or
 * missing (dst broadcasts to src). Accumulates in double; deterministic blocking. If `accumulate`
 * dst += sum * scale, else dst = sum * scale. */
void df_reduce_sum(const float *src, int src_ndim, const int64_t *src_shape, float *dst,
                   int dst_ndim, const int64_t *dst_shape, double scale, bool accumulate);

/* Sum of n floats in double, fixed blocking independent of the thread count. */
double df_sum_f32(const float *x, int64_t n);

/* Elements per parallel task in elementwise loops (large enough to amortise a fork). */
#define DF_PAR_GRAIN 32768

#endif
