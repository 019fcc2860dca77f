/* concat.c — joins n tensors along one dim (torch.cat).
 *   shapes:   ts[i] (..., s_i, ...) with equal dims except `dim` -> out (..., sum_i s_i, ...)
 *   forward:  out[o, off_i + j, r] = ts[i][o, j, r]   seen as (outer, s, inner) blocks around
 *             dim, off_i = s_0 + ... + s_{i-1}; a row of s_i * inner elements is one memcpy.
 *   backward: g_i += g[o, off_i : off_i + s_i, r] for every input that needs a gradient.
 *   saved:    nothing but the dim: the node retains its inputs, whose shapes give the offsets.
 * Any number of inputs (the node holds all n), any dtype (all equal); a dim may be negative and
 * an input may have size 0 along dim. The same tensor may appear twice: both slices of the
 * gradient add into its one accumulator (each output row is handled by one thread, in input
 * order, so the sum does not depend on the thread count).
 * Layout: along channels (dim 1 of 4-D F32 tensors) an input in channel-blocked layout
 * (df_tensor.block) makes the output blocked: plain inputs are converted to it (df_to_blocked),
 * and with (N, C_i / B, H, W, B) inputs an image's part is still one contiguous row of C_i H W
 * elements, so the loops above are unchanged. Along any other dim blocked inputs are converted
 * to plain (df_to_plain).
 */
#include "autograd/autograd_impl.h"
#include "autograd/ops/strides_impl.h"

#include <stdlib.h>
#include <string.h>

typedef struct concat_params {
    int dim; /* normalised */
} concat_params;

/* out = the inputs laid side by side along dim d, one memcpy per (input, outer row). */
static void concat_forward(df_tensor *out, df_tensor *const *ts, int n, int d) {
    size_t es = df_dtype_size(out->dtype);
    int64_t outer = df_dims_outer(out->shape, d), inner = df_dims_inner(out->ndim, out->shape, d);
    size_t orow = (size_t)(out->shape[d] * inner) * es; /* bytes of one output row */
    char *dst = out->data;
#pragma omp parallel for schedule(static) if (out->numel >= DF_PAR_MIN_ELEMS)
    for (int64_t o = 0; o < outer; o++) {
        size_t off = (size_t)o * orow;
        for (int i = 0; i < n; i++) {
            size_t row = (size_t)(ts[i]->shape[d] * inner) * es;
            memcpy(dst + off, (const char *)ts[i]->data + (size_t)o * row, row);
            off += row;
        }
    }
}

static void concat_backward(df_node *n, const df_tensor *g) {
    int d = ((const concat_params *)n->state)->dim;
    int64_t outer = df_dims_outer(g->shape, d), inner = df_dims_inner(g->ndim, g->shape, d);
    int64_t grow = g->shape[d] * inner; /* elements of one output row */
    df_tensor *small[8], **gs = n->n_inputs <= 8 ? small : malloc(n->n_inputs * sizeof *gs);
    DF_ASSERT(gs, "concat backward: out of memory for %d inputs", n->n_inputs);
    for (int i = 0; i < n->n_inputs; i++) gs[i] = df_node_grad(n, i);
    const float *src = df_f32(g);
#pragma omp parallel for schedule(static) if (g->numel >= DF_PAR_MIN_ELEMS)
    for (int64_t o = 0; o < outer; o++) {
        int64_t off = o * grow;
        for (int i = 0; i < n->n_inputs; i++) {
            int64_t row = n->inputs[i]->shape[d] * inner;
            if (gs[i]) {
                float *dst = df_f32(gs[i]) + o * row;
                const float *s = src + off;
                for (int64_t j = 0; j < row; j++) dst[j] += s[j];
            }
            off += row;
        }
    }
    if (gs != small) free(gs);
}

static const df_op concat_op = {"concat", concat_backward, NULL};

/* The common layout of a concat along d: the channel block when some input is blocked, d is
 * the channel dim and every input's channels divide into blocks; else plain (0). */
static int concat_block(df_tensor *const *ts, int n, int d) {
    int block = 0;
    for (int i = 0; i < n; i++) block = ts[i]->block ? ts[i]->block : block;
    for (int i = 0; i < n && block; i++)
        if (d != 1 || ts[i]->ndim != 4 || ts[i]->dtype != DF_DTYPE_F32 ||
            ts[i]->shape[1] % block != 0 || (ts[i]->block && ts[i]->block != block))
            block = 0;
    return block;
}

df_tensor *df_concat(df_tensor **ts_in, int n, int dim) {
    DF_ASSERT(n >= 1, "concat: %d inputs", n);
    DF_ASSERT(ts_in[0]->ndim >= 1, "concat: a zero-dimensional tensor cannot be concatenated");
    int d = df_dim_norm("concat", dim, ts_in[0]->ndim);
    /* channel-blocked inputs: joined as they are along channels (an image's blocks are one
     * contiguous row, as its channels are in plain layout); every input is brought to the
     * common layout first */
    df_tensor *small[8], **ts = ts_in;
    int block = concat_block(ts_in, n, d);
    bool convert = false;
    for (int i = 0; i < n; i++) convert |= ts_in[i]->block != block;
    if (convert) {
        ts = n <= 8 ? small : malloc((size_t)n * sizeof *ts);
        DF_ASSERT(ts, "concat: out of memory for %d inputs", n);
        for (int i = 0; i < n; i++)
            ts[i] = ts_in[i]->block == block ? ts_in[i]
                    : block                  ? df_to_blocked(ts_in[i])
                                             : df_to_plain(ts_in[i]);
    }
    const df_tensor *a = ts[0];
    int64_t shape[DF_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[d] = 0;
    for (int i = 0; i < n; i++) {
        const df_tensor *t = ts[i];
        char s0[64], si[64];
        bool ok = t->ndim == a->ndim && t->dtype == a->dtype;
        for (int k = 0; ok && k < a->ndim; k++) ok = k == d || t->shape[k] == a->shape[k];
        DF_ASSERT(ok, "concat: input %d is %s %s, input 0 is %s %s (dim %d)", i,
                  df_dtype_name(t->dtype), df_shape_str(t, si, sizeof si), df_dtype_name(a->dtype),
                  df_shape_str(a, s0, sizeof s0), dim);
        shape[d] += t->shape[d];
    }
    df_tensor *out = df_tensor_new(a->dtype, a->ndim, shape);
    out->block = block;
    concat_forward(out, ts, n, d);
    df_node *node =
        df_node_new_keep(&concat_op, out, n, ts, sizeof(concat_params), 0u); /* shapes only */
    if (node) ((concat_params *)node->state)->dim = d;
    if (ts != ts_in && ts != small) free(ts);
    return out;
}
