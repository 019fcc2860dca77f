/* slice.c — a contiguous range along one dim, copied (torch.narrow(a, dim, start, len) followed
 * by .contiguous()), and chunk, its n-way equal split (torch.chunk when the size divides).
 *   shapes:   a (..., s, ...) -> out (..., len, ...)
 *   forward:  out[o, j, r] = a[o, start + j, r]    as (outer, s, inner) blocks around dim
 *   backward: ga[o, start + j, r] += g[o, j, r]    (the rest of ga is untouched)
 *   saved:    dim and start (params); the input's shape comes from the retained input.
 * start may be negative (counted from the end, as narrow); any dtype is copied, the gradient is
 * F32 as everywhere. chunk makes n slice nodes, each adding into its own region.
 */
#include "autograd/autograd_impl.h"
#include "autograd/ops/strides_impl.h"

#include <string.h>

typedef struct slice_params {
    int dim;       /* normalised */
    int64_t start; /* normalised */
} slice_params;

/* out = a[..., start : start + out.shape[d], ...] along dim d, one memcpy per outer row. */
static void slice_forward(df_tensor *out, const df_tensor *a, int d, int64_t start) {
    size_t es = df_dtype_size(a->dtype);
    int64_t outer = df_dims_outer(a->shape, d), inner = df_dims_inner(a->ndim, a->shape, d);
    size_t orow = (size_t)(out->shape[d] * inner) * es, arow = (size_t)(a->shape[d] * inner) * es;
    size_t skip = (size_t)(start * inner) * es;
    const char *src = a->data;
    char *dst = out->data;
#pragma omp parallel for schedule(static) if (out->numel >= DF_PAR_MIN_ELEMS)
    for (int64_t o = 0; o < outer; o++)
        memcpy(dst + (size_t)o * orow, src + (size_t)o * arow + skip, orow);
}

static void slice_backward(df_node *n, const df_tensor *g) {
    df_tensor *ga = df_node_grad(n, 0);
    if (!ga) return;
    const slice_params *p = n->state;
    int d = p->dim;
    int64_t outer = df_dims_outer(g->shape, d), inner = df_dims_inner(g->ndim, g->shape, d);
    int64_t grow = g->shape[d] * inner, arow = ga->shape[d] * inner, skip = p->start * inner;
    const float *src = df_f32(g);
    float *dst = df_f32(ga);
#pragma omp parallel for schedule(static) if (g->numel >= DF_PAR_MIN_ELEMS)
    for (int64_t o = 0; o < outer; o++) {
        float *dr = dst + o * arow + skip;
        const float *sr = src + o * grow;
        for (int64_t j = 0; j < grow; j++) dr[j] += sr[j];
    }
}

static const df_op slice_op = {"slice", slice_backward, NULL};

df_tensor *df_slice(df_tensor *a, int dim, int64_t start, int64_t len) {
    DF_ASSERT_PLAIN("slice", a);
    DF_ASSERT(a->ndim >= 1, "slice: a zero-dimensional tensor cannot be sliced");
    int d = df_dim_norm("slice", dim, a->ndim);
    int64_t size = a->shape[d];
    if (start < 0) start += size;
    char sa[64];
    DF_ASSERT(start >= 0 && len >= 0 && start <= size && len <= size - start,
              "slice: [%lld, %lld + %lld) out of range for dim %d of %s", (long long)start,
              (long long)start, (long long)len, dim, df_shape_str(a, sa, sizeof sa));
    int64_t shape[DF_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[d] = len;
    df_tensor *out = df_tensor_new(a->dtype, a->ndim, shape);
    slice_forward(out, a, d, start);
    df_node *node = df_node_new_keep(&slice_op, out, 1, &a, sizeof(slice_params), 0u);
    if (node) *(slice_params *)node->state = (slice_params){d, start};
    return out;
}

void df_chunk(df_tensor *a, int n, int dim, df_tensor **out) {
    DF_ASSERT(a->ndim >= 1, "chunk: a zero-dimensional tensor cannot be chunked");
    int d = df_dim_norm("chunk", dim, a->ndim);
    char sa[64];
    DF_ASSERT(n >= 1 && a->shape[d] % n == 0, "chunk: dim %d of %s does not split into %d", dim,
              df_shape_str(a, sa, sizeof sa), n);
    int64_t len = a->shape[d] / n;
    for (int i = 0; i < n; i++) out[i] = df_slice(a, d, i * len, len);
}
