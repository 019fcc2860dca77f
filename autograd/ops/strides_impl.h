/* strides_impl.h — index arithmetic for contiguous row-major tensors, shared by the op files.
 * Internal to autograd/.
 *
 * A contiguous tensor of shape (s0, ..., s{n-1}) stores element (i0, ..., i{n-1}) at
 * sum_k ik * stride[k] with stride[n-1] = 1 and stride[k] = stride[k+1] * s{k+1}. Seen around
 * one dim d it is a 3-D block (outer, s_d, inner): outer = s0 * ... * s{d-1} and
 * inner = s{d+1} * ... * s{n-1}, which is how concat, slice and reductions walk it.
 */
#ifndef DF_STRIDES_IMPL_H
#define DF_STRIDES_IMPL_H

#include <stdint.h>

/* Contiguous strides (in elements) of an ndim-dim shape. */
static inline void df_strides(int ndim, const int64_t *shape, int64_t *strides) {
    int64_t s = 1;
    for (int k = ndim - 1; k >= 0; k--) {
        strides[k] = s;
        s *= shape[k];
    }
}

/* Product of shape[0..d-1]: the number of (s_d, inner) blocks before dim d. */
static inline int64_t df_dims_outer(const int64_t *shape, int d) {
    int64_t p = 1;
    for (int k = 0; k < d; k++) p *= shape[k];
    return p;
}

/* Product of shape[d+1..ndim-1]: the elements one step along dim d skips. */
static inline int64_t df_dims_inner(int ndim, const int64_t *shape, int d) {
    int64_t p = 1;
    for (int k = d + 1; k < ndim; k++) p *= shape[k];
    return p;
}

/* Below this many elements an op runs single-threaded: a parallel region costs more than it
 * saves on tiny tensors. */
#define DF_PAR_MIN_ELEMS 32768

#endif
