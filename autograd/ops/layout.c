/* layout.c — the activation layout (df_tensor.block): which channel block this machine's
 * convolutions compute in, and the conversions between plain NCHW and channel-blocked nChw{B}c.
 *
 *   df_act_block: asks oneDNN which source layout it picks (format_tag_any) for a 3x3
 *                 convolution of 64 channels; B is that layout's channel block (nChw8c with
 *                 AVX2, nChw16c with AVX-512), 0 when it is not a channel-blocked layout or the
 *                 environment sets DF_ACT_LAYOUT=plain. Decided once per process;
 *                 df_act_block_set changes it (tests: results must not depend on B).
 *   to_blocked:   y = reorder(x) nchw -> nChw{B}c        backward: gx (=/+=) reorder(G) back
 *   to_plain:     y = reorder(x) nChw{B}c -> nchw         backward: gx (=/+=) reorder(G) back
 *   A reorder only moves elements, so values are exact both ways. The reorders are oneDNN's
 *   (jit), cached like every primitive; accumulation into an existing gradient is the
 *   reorder's sum post-op.
 *   saved: nothing (the input's layout is in its header).
 *   dtypes: F32 or BF16 (a reorder takes either on every ISA; the output keeps x's dtype, the
 *   gradient is F32 as everywhere).
 */
#include "autograd/dnnl_impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static int act_block;
static pthread_once_t act_block_once = PTHREAD_ONCE_INIT;

static void act_block_init(void) {
    const char *env = getenv("DF_ACT_LAYOUT");
    act_block = 0;
    if (env && strcmp(env, "plain") == 0) return;
    int64_t dims[4] = {1, 64, 8, 8}, wdims[4] = {64, 64, 3, 3}, bdim = 64;
    dnnl_memory_desc_t src = df_dnnl_md_tag(DF_DTYPE_F32, 4, dims, dnnl_format_tag_any);
    dnnl_memory_desc_t w = df_dnnl_md_tag(DF_DTYPE_F32, 4, wdims, dnnl_format_tag_any);
    dnnl_memory_desc_t b = df_dnnl_md_tag(DF_DTYPE_F32, 1, &bdim, dnnl_x);
    dnnl_dims_t one = {1, 1}, zero = {0, 0};
    dnnl_convolution_desc_t d;
    DF_DNNL_CHECK("act_block", dnnl_dilated_convolution_forward_desc_init(
                                   &d, dnnl_forward_training, dnnl_convolution_direct, &src, &w, &b,
                                   &src, one, zero, one, one));
    dnnl_primitive_desc_t pd;
    DF_DNNL_CHECK("act_block", dnnl_primitive_desc_create(&pd, &d, NULL, df_dnnl_engine(), NULL));
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    if (md && md->format_kind == dnnl_blocked) {
        const dnnl_blocking_desc_t *bl = &md->format_desc.blocking;
        /* nChw{B}c: one inner block, over channels, of 8 or 16 */
        if (bl->inner_nblks == 1 && bl->inner_idxs[0] == 1 &&
            (bl->inner_blks[0] == 8 || bl->inner_blks[0] == 16) &&
            bl->strides[0] > bl->strides[1] && bl->strides[1] > bl->strides[2] &&
            bl->strides[2] > bl->strides[3])
            act_block = (int)bl->inner_blks[0];
    }
    dnnl_primitive_desc_destroy(pd);
}

int df_act_block(void) {
    pthread_once(&act_block_once, act_block_init);
    return act_block;
}

int df_act_block_set(int block) {
    DF_ASSERT(block == 0 || block == 8 || block == 16, "df_act_block_set: block %d", block);
    int old = df_act_block();
    act_block = block;
    return old;
}

typedef struct reorder_ctx {
    int64_t dims[4];
    int from, to; /* blocks: 0 = plain */
    df_dtype dt;
    bool accumulate;
} reorder_ctx;

static void reorder_build(void *ctx, dnnl_primitive_desc_t *pd, int *n_args,
                          df_dnnl_arg_spec *args) {
    const reorder_ctx *c = ctx;
    dnnl_memory_desc_t from = df_dnnl_md_act(c->dt, c->dims, c->from);
    dnnl_memory_desc_t to = df_dnnl_md_act(c->dt, c->dims, c->to);
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(c->accumulate);
    dnnl_engine_t e = df_dnnl_engine();
    DF_DNNL_CHECK("layout", dnnl_reorder_primitive_desc_create(pd, &from, e, &to, e, attr));
    dnnl_primitive_attr_destroy(attr);
    args[0] = (df_dnnl_arg_spec){DNNL_ARG_FROM, DF_DNNL_IN, from};
    args[1] = (df_dnnl_arg_spec){DNNL_ARG_TO, DF_DNNL_OUT, to};
    *n_args = 2;
}

/* dst (= or +=) src reordered from layout `from` to layout `to`, both of logical shape dims and
 * dtype dt. */
static void reorder(const int64_t *dims, df_dtype dt, int from, const void *src, int to, void *dst,
                    bool accumulate) {
    reorder_ctx c = {{dims[0], dims[1], dims[2], dims[3]}, from, to, dt, accumulate};
    df_dnnl_key k = {.kind = DF_DNNL_KIND_REORDER};
    df_dnnl_key_push_n(&k, 8,
                       (int64_t[]){dims[0], dims[1], dims[2], dims[3], from, to, accumulate, dt});
    df_dnnl_prim *p = df_dnnl_prim_get(&k, reorder_build, &c);
    df_dnnl_prim_run("layout", p, (void *[]){(void *)src, dst});
    df_dnnl_prim_put(p);
}

static void layout_backward(df_node *n, const df_tensor *g) {
    bool acc;
    df_tensor *gx = df_node_grad_dest(n, 0, &acc);
    if (!gx || g->numel == 0) return;
    reorder(g->shape, DF_DTYPE_F32, g->block, g->data, gx->block, gx->data, acc);
}

static const df_op to_blocked_op = {"to_blocked", layout_backward, NULL};
static const df_op to_plain_op = {"to_plain", layout_backward, NULL};

/* x in layout `block`: a reordered copy, or an alias of x (a reshape to its own shape: shared
 * storage, with history) when it already is in that layout. */
static df_tensor *convert(const df_op *op, df_tensor *x, int block) {
    if (x->block == block) return df_reshape(x, x->ndim, x->shape);
    df_tensor *out = df_tensor_new(x->dtype, x->ndim, x->shape);
    out->block = block;
    if (out->numel > 0) reorder(x->shape, x->dtype, x->block, x->data, block, out->data, false);
    df_node_new_keep(op, out, 1, &x, 0, 0u); /* the backward reads only the input's header */
    return out;
}

df_tensor *df_to_blocked(df_tensor *x) {
    DF_ASSERT_F32_BF16_ANY_LAYOUT("to_blocked", x);
    int b = df_act_block();
    bool fits = !x->block && b && x->ndim == 4 && x->shape[1] % b == 0;
    return convert(&to_blocked_op, x, fits ? b : x->block);
}

df_tensor *df_to_plain(df_tensor *x) {
    DF_ASSERT_F32_BF16_ANY_LAYOUT("to_plain", x);
    return convert(&to_plain_op, x, 0);
}
