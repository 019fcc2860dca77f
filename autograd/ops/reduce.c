/* reduce.c — sum and mean over a set of dims (torch.sum / torch.mean with dim, keepdim).
 *
 *   a (d0, ..., dk) -> out: the listed dims removed (or kept as 1 with keepdim); ndims 0 = all
 *   sum:  out = sum over the dims          ga += g broadcast back
 *   mean: out = sum / count                ga += (g / count) broadcast back, count = prod(dims)
 * Sums accumulate in double with a blocking fixed by the shapes (df_reduce_sum), so results
 * never depend on the thread count. Nothing is saved: backward needs only the shapes.
 */
#include "autograd/ops/broadcast_impl.h"

typedef struct reduce_params {
    bool mean;
    float count;
    int in_ndim;
    int64_t kshape[DF_MAX_DIMS]; /* the keepdim shape of the output */
} reduce_params;

typedef struct expand_ctx {
    float *d;
    const float *g;
    int64_t sg;
    float count;
    bool mean;
} expand_ctx;

static void expand_row(const void *c_, const int64_t *off, int64_t n) {
    const expand_ctx *c = c_;
    float *d = c->d + off[0];
    const float *g = c->g + off[1];
    if (c->sg == 0) {
        const float v = c->mean ? g[0] / c->count : g[0];
#pragma omp simd
        for (int64_t i = 0; i < n; i++) d[i] += v;
    } else if (c->mean) {
        const float cnt = c->count;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) d[i] += g[i * c->sg] / cnt;
    } else {
        for (int64_t i = 0; i < n; i++) d[i] += g[i * c->sg];
    }
}

static void reduce_backward(df_node *n, const df_tensor *g) {
    const reduce_params *p = n->state;
    df_tensor *ga = df_node_grad(n, 0);
    if (!ga) return;
    df_bcast bc;
    df_bcast_init(&bc, ga->ndim, ga->shape, 2, (int[]){ga->ndim, p->in_ndim},
                  (const int64_t *[]){ga->shape, p->kshape});
    expand_ctx c = {df_f32(ga), df_f32(g), bc.stride[1][bc.ndim - 1], p->count, p->mean};
    df_bcast_run(&bc, expand_row, &c);
}

static const df_op sum_op = {"sum", reduce_backward, NULL};
static const df_op mean_op = {"mean", reduce_backward, NULL};

static df_tensor *reduce(const df_op *op, df_tensor *a, int ndims, const int *dims, bool keepdim,
                         bool mean) {
    DF_ASSERT_F32(op->name, a);
    bool red[DF_MAX_DIMS] = {false};
    if (ndims == 0) {
        for (int i = 0; i < a->ndim; i++) red[i] = true;
    } else {
        for (int i = 0; i < ndims; i++) {
            int d = df_dim_norm(op->name, dims[i], a->ndim);
            DF_ASSERT(a->ndim > 0, "%s: dims given for a 0-dim tensor", op->name);
            DF_ASSERT(!red[d], "%s: dim %d listed twice", op->name, d);
            red[d] = true;
        }
    }
    reduce_params p = {.mean = mean, .in_ndim = a->ndim};
    int64_t oshape[DF_MAX_DIMS], count = 1;
    int ond = 0;
    for (int i = 0; i < a->ndim; i++) {
        p.kshape[i] = red[i] ? 1 : a->shape[i];
        if (red[i]) count *= a->shape[i];
        if (!red[i] || keepdim) oshape[ond++] = p.kshape[i];
    }
    p.count = (float)count;
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, ond, oshape);
    df_reduce_sum(df_f32(a), a->ndim, a->shape, df_f32(out), a->ndim, p.kshape,
                  mean ? 1.0 / (double)count : 1.0, false);
    df_node *n = df_node_new_keep(op, out, 1, &a, sizeof p, 0u);
    if (n) *(reduce_params *)n->state = p;
    return out;
}

df_tensor *df_sum(df_tensor *a, int ndims, const int *dims, bool keepdim) {
    return reduce(&sum_op, a, ndims, dims, keepdim, false);
}

df_tensor *df_mean(df_tensor *a, int ndims, const int *dims, bool keepdim) {
    return reduce(&mean_op, a, ndims, dims, keepdim, true);
}
