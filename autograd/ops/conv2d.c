/* conv2d.c — 2-D convolution (torch.nn.functional.conv2d) on oneDNN.
 *
 *   x (N, C, H, W), w (O, C/groups, KH, KW), b (O) or NULL -> y (N, O, OH, OW),
 *   OH = floor((H + 2 ph - dh (KH - 1) - 1) / sh) + 1 (likewise OW).
 *   y[n, o, i, j] = b[o] + sum_{c in group(o), ki, kj} w[o, c, ki, kj]
 *                                                   x[n, c, i sh - ph + ki dh, j sw - pw + kj dw]
 *   forward:  oneDNN convolution (forward_training). Activations are either plain NCHW user
 *             memory, for which the primitive's own layout is chosen with format_tag_any and
 *             reorders run on mismatch, or channel-blocked tensors (df_tensor.block: nChw8c/16c,
 *             the kernels' own layout), which the primitive reads and writes as they are. y is
 *             blocked when x is (or params.blocked_out) and O divides into channel blocks.
 *   backward (G = dy):
 *     (1) dx += conv_backward_data(G, w)               (transposed convolution of G)
 *     (2) dw += conv_backward_weights(x, G)            (correlation of x with G)
 *     (3) db += sum_{n, i, j} G[n, o, i, j]            (from the same primitive as (2))
 *     both backward primitive descriptors are created with the forward one as hint; results are
 *     added into existing gradients by a reorder with a sum post-op, and written straight
 *     (plain reorder or none) into gradients this backward creates (df_node_grad_dest).
 *     (2) and (3) sum over the batch and pixels, which oneDNN splits across threads: that
 *     primitive runs with DF_DNNL_REDUCTION_THREADS threads (dnnl_impl.h) so the sums do not
 *     follow the thread count.
 *   saved: nothing (x, w are the node's inputs).
 *   Winograd: a 3x3, stride-1, padding-1 convolution of blocked tensors runs its backward-
 *   weights pass, and from 128 channels in and out all three passes, as Winograd F(2x2, 3x3)
 *   (conv2d_winograd.c; measurements at winograd_wide), over at least 256 output tiles
 *   (winograd_applies). DF_CONV_WINOGRAD=0 turns it off, =all takes it at every eligible shape.
 *
 * Dtypes: F32; or BF16 x and w (bias F32 or BF16) with an F32 or BF16 output, forward only
 * (docs/dtypes.md), in either activation layout, never Winograd (F32 only). Under mixed
 * precision (df_dnnl_cdt, recorded in the node) all three passes compute as the forward did:
 * DF_CDT_BF16 asks oneDNN for BF16 src, weights and diff_dst with F32 dst, diff_src,
 * diff_weights and diff_bias, the F32 tensors converted by the cache's reorders (x or w may be
 * BF16 then, when it needs no gradient); DF_CDT_BF16_EMU runs the F32 passes (Winograd
 * included) on copies of the operands rounded to BF16. The dtypes are part of every primitive
 * key.
 *
 * Layout: for plain tensors, DF_CONV_LAYOUT=any|nchw|nhwc picks the activation layout the
 * primitive is asked for (any = the primitive chooses, usually blocked nChw8c/16c; nchw/nhwc
 * force a plain layout, nhwc with reorders from and to our NCHW tensors). Weights are always
 * format_tag_any and reordered on every call (a cache per weight version would have to track
 * in-place optimizer updates; measured cost in docs/layout.md). The default is the fastest measured
 * end to end.
 */
#include "autograd/dnnl_impl.h"
#include "autograd/ops/conv2d_winograd_impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { LAYOUT_ANY = 0, LAYOUT_NCHW = 1, LAYOUT_NHWC = 2 };

static int layout_mode;
static bool winograd_off;
static int64_t winograd_min_tiles = 256; /* see winograd_applies */
static pthread_once_t layout_once = PTHREAD_ONCE_INIT;

static void layout_init(void) {
    const char *w = getenv("DF_CONV_WINOGRAD");
    winograd_off = w && strcmp(w, "0") == 0;
    if (w && strcmp(w, "all") == 0) winograd_min_tiles = 1; /* tests: every eligible shape */
    const char *s = getenv("DF_CONV_LAYOUT");
    layout_mode = LAYOUT_ANY;
    if (s && strcmp(s, "nchw") == 0) layout_mode = LAYOUT_NCHW;
    if (s && strcmp(s, "nhwc") == 0) layout_mode = LAYOUT_NHWC;
}

typedef struct conv_shape {
    int64_t N, C, H, W, O, KH, KW, OH, OW;
    df_conv2d_params p;
    bool bias; /* forward: has bias; backward weights: computes the bias gradient */
    int layout;
    int in_block, out_block; /* df_tensor.block of x and y (0: plain NCHW) */
    bool winograd;           /* Winograd applies (winograd_applies): conv2d_winograd.c */
    df_dtype in_dt, w_dt, bias_dt, out_dt; /* x; w; bias; y (docs/dtypes.md) */
    df_dnnl_cdt cdt;                       /* how the three passes compute */
} conv_shape;

df_conv2d_params df_conv2d_default(void) {
    return (df_conv2d_params){{1, 1}, {0, 0}, {1, 1}, 1, false};
}

static df_dnnl_key conv_key(int kind, const conv_shape *s) {
    df_dnnl_key k = {.kind = kind};
    int64_t v[] = {s->N,
                   s->C,
                   s->H,
                   s->W,
                   s->O,
                   s->KH,
                   s->KW,
                   s->p.stride[0],
                   s->p.stride[1],
                   s->p.padding[0],
                   s->p.padding[1],
                   s->p.dilation[0],
                   s->p.dilation[1],
                   s->p.groups,
                   s->bias,
                   s->layout,
                   s->in_block,
                   s->out_block,
                   s->in_dt,
                   s->w_dt,
                   s->bias_dt,
                   s->out_dt,
                   s->cdt};
    df_dnnl_key_push_n(&k, (int)(sizeof v / sizeof v[0]), v);
    return k;
}

typedef struct conv_mds {
    dnnl_memory_desc_t src_user, w_user, b_user, dst_user;     /* our tensors' layouts and dtypes */
    dnnl_memory_desc_t gsrc_user, gw_user, gb_user, gdst_user; /* their gradients (F32) */
    dnnl_memory_desc_t src, w, b, dst; /* what the primitives are asked for */
    dnnl_memory_desc_t gsrc, gw, gdst; /* backward: F32 results, diff_dst as src */
    dnnl_dims_t strides, dilates, pad_l, pad_r;
} conv_mds;

static void conv_mds_init(const conv_shape *s, conv_mds *m) {
    int64_t src[4] = {s->N, s->C, s->H, s->W}, dst[4] = {s->N, s->O, s->OH, s->OW};
    int64_t G = s->p.groups;
    int64_t w4[4] = {s->O, s->C / G, s->KH, s->KW};
    int64_t w5[5] = {G, s->O / G, s->C / G, s->KH, s->KW};
    const df_dtype f32 = DF_DTYPE_F32, out_dt = s->out_dt;
    const df_dtype pdt = df_dnnl_cdt_dtype(s->cdt); /* the primitives' src, weights, diff_dst */
    m->src_user = df_dnnl_md_act(s->in_dt, src, s->in_block);
    m->dst_user = df_dnnl_md_act(out_dt, dst, s->out_block);
    m->gsrc_user = df_dnnl_md_act(f32, src, s->in_block);
    m->gdst_user = df_dnnl_md_act(f32, dst, s->out_block);
    m->w_user = G > 1 ? df_dnnl_md_tag(s->w_dt, 5, w5, dnnl_goihw)
                      : df_dnnl_md_tag(s->w_dt, 4, w4, dnnl_oihw);
    m->gw_user =
        G > 1 ? df_dnnl_md_tag(f32, 5, w5, dnnl_goihw) : df_dnnl_md_tag(f32, 4, w4, dnnl_oihw);
    m->b_user = df_dnnl_md_tag(s->bias_dt, 1, &s->O, dnnl_x);
    m->gb_user = df_dnnl_md_tag(f32, 1, &s->O, dnnl_x);
    dnnl_format_tag_t act = s->layout == LAYOUT_NCHW   ? dnnl_nchw
                            : s->layout == LAYOUT_NHWC ? dnnl_nhwc
                                                       : dnnl_format_tag_any;
    /* a channel-blocked tensor is the primitive's own layout: no reorder (but for the dtype) */
    m->src = s->in_block ? df_dnnl_md_act(pdt, src, s->in_block) : df_dnnl_md_tag(pdt, 4, src, act);
    m->gsrc = s->in_block ? m->gsrc_user : df_dnnl_md_tag(f32, 4, src, act);
    m->dst = s->out_block ? m->dst_user : df_dnnl_md_tag(out_dt, 4, dst, act);
    m->gdst =
        s->out_block ? df_dnnl_md_act(pdt, dst, s->out_block) : df_dnnl_md_tag(pdt, 4, dst, act);
    m->w = G > 1 ? df_dnnl_md_tag(pdt, 5, w5, dnnl_format_tag_any)
                 : df_dnnl_md_tag(pdt, 4, w4, dnnl_format_tag_any);
    m->gw = G > 1 ? df_dnnl_md_tag(f32, 5, w5, dnnl_format_tag_any)
                  : df_dnnl_md_tag(f32, 4, w4, dnnl_format_tag_any);
    m->b = m->b_user;
    int64_t in[2] = {s->H, s->W}, k[2] = {s->KH, s->KW}, out[2] = {s->OH, s->OW};
    for (int i = 0; i < 2; i++) {
        m->strides[i] = s->p.stride[i];
        m->dilates[i] = s->p.dilation[i] - 1; /* oneDNN counts the gaps */
        m->pad_l[i] = s->p.padding[i];
        /* the right padding that makes oneDNN's output size equal torch's floor division */
        m->pad_r[i] = (out[i] - 1) * s->p.stride[i] + (k[i] - 1) * s->p.dilation[i] + 1 - in[i] -
                      s->p.padding[i];
    }
}

static void fwd_build(void *ctx, dnnl_primitive_desc_t *pd, int *n_args, df_dnnl_arg_spec *args) {
    const conv_shape *s = ctx;
    conv_mds m;
    conv_mds_init(s, &m);
    dnnl_convolution_desc_t d;
    DF_DNNL_CHECK("conv2d",
                  dnnl_dilated_convolution_forward_desc_init(
                      &d, dnnl_forward_training, dnnl_convolution_direct, &m.src, &m.w,
                      s->bias ? &m.b : NULL, &m.dst, m.strides, m.dilates, m.pad_l, m.pad_r));
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(false);
    DF_DNNL_CHECK("conv2d", dnnl_primitive_desc_create(pd, &d, attr, df_dnnl_engine(), NULL));
    dnnl_primitive_attr_destroy(attr);
    int n = 0;
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SRC, DF_DNNL_IN, m.src_user};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_WEIGHTS, DF_DNNL_IN, m.w_user};
    if (s->bias) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_BIAS, DF_DNNL_IN, m.b_user};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DST, DF_DNNL_OUT, m.dst_user};
    *n_args = n;
}

/* The forward primitive descriptor used as hint by the backward ones (bias as in forward). */
static df_dnnl_prim *fwd_hint(const conv_shape *s, bool fwd_bias) {
    conv_shape f = *s;
    f.bias = fwd_bias;
    df_dnnl_key k = conv_key(DF_DNNL_KIND_CONV_FWD, &f);
    return df_dnnl_prim_get(&k, fwd_build, &f);
}

typedef struct bwd_ctx {
    conv_shape s;
    bool fwd_bias;
    bool acc_x, acc_w, acc_b; /* add into the gradient (+=) or write it (=): df_node_grad_dest */
} bwd_ctx;

static df_dnnl_dir out_dir(bool accumulate) {
    return accumulate ? DF_DNNL_OUT_ACC : DF_DNNL_OUT;
}

static void bwd_data_build(void *ctx, dnnl_primitive_desc_t *pd, int *n_args,
                           df_dnnl_arg_spec *args) {
    const bwd_ctx *c = ctx;
    conv_mds m;
    conv_mds_init(&c->s, &m);
    dnnl_convolution_desc_t d;
    DF_DNNL_CHECK("conv2d backward", dnnl_dilated_convolution_backward_data_desc_init(
                                         &d, dnnl_convolution_direct, &m.gsrc, &m.w, &m.gdst,
                                         m.strides, m.dilates, m.pad_l, m.pad_r));
    df_dnnl_prim *hint = fwd_hint(&c->s, c->fwd_bias);
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(false);
    DF_DNNL_CHECK("conv2d backward", dnnl_primitive_desc_create(pd, &d, attr, df_dnnl_engine(),
                                                                df_dnnl_prim_pd(hint)));
    dnnl_primitive_attr_destroy(attr);
    df_dnnl_prim_put(hint);
    args[0] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_DST, DF_DNNL_IN, m.gdst_user};
    args[1] = (df_dnnl_arg_spec){DNNL_ARG_WEIGHTS, DF_DNNL_IN, m.w_user};
    args[2] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_SRC, out_dir(c->acc_x), m.gsrc_user};
    *n_args = 3;
}

static void bwd_weights_build(void *ctx, dnnl_primitive_desc_t *pd, int *n_args,
                              df_dnnl_arg_spec *args) {
    const bwd_ctx *c = ctx;
    conv_mds m;
    conv_mds_init(&c->s, &m);
    dnnl_convolution_desc_t d;
    DF_DNNL_CHECK("conv2d backward",
                  dnnl_dilated_convolution_backward_weights_desc_init(
                      &d, dnnl_convolution_direct, &m.src, &m.gw, c->s.bias ? &m.gb_user : NULL,
                      &m.gdst, m.strides, m.dilates, m.pad_l, m.pad_r));
    df_dnnl_prim *hint = fwd_hint(&c->s, c->fwd_bias);
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(false);
    DF_DNNL_CHECK("conv2d backward", dnnl_primitive_desc_create(pd, &d, attr, df_dnnl_engine(),
                                                                df_dnnl_prim_pd(hint)));
    dnnl_primitive_attr_destroy(attr);
    df_dnnl_prim_put(hint);
    int n = 0;
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SRC, DF_DNNL_IN, m.src_user};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_DST, DF_DNNL_IN, m.gdst_user};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_WEIGHTS, out_dir(c->acc_w), m.gw_user};
    if (c->s.bias) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_BIAS, out_dir(c->acc_b), m.gb_user};
    *n_args = n;
}

/* winograd_min_tiles (256): Winograd pays for its weight transform (16 C O values per call)
 * only over enough 2x2 output tiles. Measured (bench_ops, AVX2, ms, Winograd / direct): 256
 * channels at 8x8, batch 1 (16 tiles): forward 2.4 / 0.6; batch 4 (64 tiles): 3.2 / 1.9; batch 16
 * (256 tiles): 6.6 / 6.6, backward-weights 6.7 / 8.4; batch 32: 9.6 / 13.3. The SD 1.5 UNet forward
 * at batch 1 was 24% slower with Winograd on its 16x16 and 8x8 levels. Tests lower it
 * (autograd_impl.h). */
int64_t df_conv2d_set_winograd_min_tiles(int64_t tiles) {
    int64_t old = winograd_min_tiles;
    winograd_min_tiles = tiles;
    return old;
}

/* 3x3, stride 1, padding 1, one group, on channel-blocked tensors, over at least
 * winograd_min_tiles output tiles: Winograd F(2x2, 3x3) (conv2d_winograd.c), unless
 * DF_CONV_WINOGRAD=0. */
static bool winograd_applies(const conv_shape *s) {
    const df_conv2d_params *p = &s->p;
    int64_t tiles = s->N * ((s->OH + 1) / 2) * ((s->OW + 1) / 2);
    return !winograd_off && s->cdt == DF_CDT_F32 && s->in_dt == DF_DTYPE_F32 &&
           s->w_dt == DF_DTYPE_F32 && s->out_dt == DF_DTYPE_F32 && s->KH == 3 && s->KW == 3 &&
           p->stride[0] == 1 && p->stride[1] == 1 && p->padding[0] == 1 && p->padding[1] == 1 &&
           p->dilation[0] == 1 && p->dilation[1] == 1 && p->groups == 1 && s->in_block &&
           s->out_block == s->in_block && tiles >= winograd_min_tiles;
}

/* Whether the forward and backward-data passes take Winograd too: its 16 products per tile are
 * (Cin x Cout) GEMMs, thin below 128 channels. Measured (bench_ops, AVX2, batch 32, ms):
 * 64 channels at 32x32: forward 14.0 Winograd vs 12.8 direct, backward-data 14.0 vs 12.9,
 * backward-weights 14.9 vs 17.5; 128 at 16x16: 9.9 vs 13.2, 10.0 vs 12.3, 11.4 vs 16.9; 256 at
 * 8x8: 9.6 vs 13.3, 9.8 vs 12.6, 12.0 vs 16.9. Backward-weights always takes it. */
static bool winograd_wide(const conv_shape *s) {
    return s->winograd && s->C >= 128 && s->O >= 128;
}

/* The primitive shape of an emulated BF16 convolution: F32 passes on rounded copies. */
static conv_shape emulated_shape(const conv_shape *s) {
    conv_shape f = *s;
    f.in_dt = f.w_dt = f.bias_dt = DF_DTYPE_F32;
    f.cdt = DF_CDT_F32;
    f.winograd = winograd_applies(&f);
    return f;
}

/* The backward of shape s (the primitives'), with x, w, g the data the passes read. */
static void backward_run(df_node *n, const conv_shape *s, const void *x, const void *w,
                         const float *g) {
    const df_tensor *wt = n->inputs[1];
    bwd_ctx c = {*s, s->bias};
    /* a gradient seen for the first time is written (=), saving its zero fill and a read */
    df_tensor *gx = df_node_grad_dest(n, 0, &c.acc_x);
    df_tensor *gw = df_node_grad_dest(n, 1, &c.acc_w);
    df_tensor *gb = n->inputs[2] ? df_node_grad_dest(n, 2, &c.acc_b) : NULL;
    if (gx && winograd_wide(s)) {
        df_winograd_backward_data(g, w, df_f32(gx), c.acc_x, s->N, s->C, s->H, s->W, s->O,
                                  s->in_block);
    } else if (gx) { /* (1) */
        c.s.bias = false;
        df_dnnl_key k = conv_key(DF_DNNL_KIND_CONV_BWD_DATA, &c.s);
        df_dnnl_key_push_n(&k, 2, (int64_t[]){c.fwd_bias, c.acc_x});
        df_dnnl_prim *p = df_dnnl_prim_get(&k, bwd_data_build, &c);
        df_dnnl_prim_run("conv2d backward", p, (void *[]){(void *)g, (void *)w, df_f32(gx)});
        df_dnnl_prim_put(p);
    }
    if ((gw || gb) && s->winograd) {
        df_tensor *dw = gw ? gw : df_tensor_new_unscoped(DF_DTYPE_F32, wt->ndim, wt->shape);
        df_winograd_backward_weights(x, g, df_f32(dw), gw && c.acc_w, gb ? df_f32(gb) : NULL,
                                     gb && c.acc_b, s->N, s->C, s->H, s->W, s->O, s->in_block);
        if (!gw) df_tensor_free(dw);
    } else if (gw || gb) { /* (2), (3) */
        c.s.bias = gb != NULL;
        /* the primitive always makes dw: without a weight gradient it goes to a scratch tensor */
        df_tensor *dw = gw ? gw : df_tensor_new_unscoped(DF_DTYPE_F32, wt->ndim, wt->shape);
        if (!gw) c.acc_w = false;
        df_dnnl_key k = conv_key(DF_DNNL_KIND_CONV_BWD_WEIGHTS, &c.s);
        k.threads = DF_DNNL_REDUCTION_THREADS; /* a split of the batch sum fixed by us */
        df_dnnl_key_push_n(&k, 3, (int64_t[]){c.fwd_bias, c.acc_w, gb && c.acc_b});
        df_dnnl_prim *p = df_dnnl_prim_get(&k, bwd_weights_build, &c);
        df_dnnl_prim_run("conv2d backward", p,
                         (void *[]){(void *)x, (void *)g, df_f32(dw), gb ? df_f32(gb) : NULL});
        df_dnnl_prim_put(p);
        if (!gw) df_tensor_free(dw);
    }
}

static void conv2d_backward(df_node *n, const df_tensor *g) {
    const conv_shape *s = n->state;
    if (g->numel == 0 || s->C == 0) return;
    df_tensor *x = n->inputs[0], *w = n->inputs[1];
    if (s->cdt != DF_CDT_BF16_EMU) {
        backward_run(n, s, x->data, w->data, df_f32(g));
        return;
    }
    /* emulated BF16: the F32 passes on x, w and g rounded (each pass reads two of them) */
    conv_shape f = emulated_shape(s);
    df_tensor *xr = df_bf16_rounded(x), *wr = df_bf16_rounded(w), *gr = df_bf16_rounded(g);
    backward_run(n, &f, xr->data, wr->data, df_f32(gr));
    df_tensor_free(xr);
    df_tensor_free(wr);
    df_tensor_free(gr);
}

static const df_op conv2d_op = {"conv2d", conv2d_backward, NULL};

/* The forward of shape s (the primitive's) on data x, w, bias (NULL: none) into out. */
static void forward_run(const conv_shape *s, const void *x, const void *w, const void *bias,
                        df_tensor *out) {
    if (winograd_wide(s)) {
        df_winograd_forward(x, w, bias, df_f32(out), s->N, s->C, s->H, s->W, s->O, s->in_block);
        return;
    }
    df_dnnl_key k = conv_key(DF_DNNL_KIND_CONV_FWD, s);
    df_dnnl_prim *prim = df_dnnl_prim_get(&k, fwd_build, (void *)s);
    void *ptrs[4] = {(void *)x, (void *)w};
    int i = 2;
    if (bias) ptrs[i++] = (void *)bias;
    ptrs[i] = out->data;
    df_dnnl_prim_run("conv2d", prim, ptrs);
    df_dnnl_prim_put(prim);
}

df_tensor *df_conv2d_to(df_tensor *x, df_tensor *w, df_tensor *bias, df_conv2d_params p,
                        df_dtype out_dt) {
    DF_ASSERT_PLAIN("conv2d", w);
    if (bias) DF_ASSERT_PLAIN("conv2d", bias);
    df_dnnl_cdt cdt = df_dnnl_product_dtype("conv2d", 2, (df_tensor *[]){x, w}, bias, out_dt);
    char sx[64], sw[64], sb[64];
    df_shape_str(x, sx, sizeof sx);
    df_shape_str(w, sw, sizeof sw);
    DF_ASSERT(x->ndim == 4 && w->ndim == 4, "conv2d: x %s, weight %s (expected 4-D)", sx, sw);
    DF_ASSERT(p.groups >= 1 && p.stride[0] >= 1 && p.stride[1] >= 1 && p.dilation[0] >= 1 &&
                  p.dilation[1] >= 1 && p.padding[0] >= 0 && p.padding[1] >= 0,
              "conv2d: bad params stride (%d, %d) padding (%d, %d) dilation (%d, %d) groups %d",
              p.stride[0], p.stride[1], p.padding[0], p.padding[1], p.dilation[0], p.dilation[1],
              p.groups);
    conv_shape s = {.N = x->shape[0],
                    .C = x->shape[1],
                    .H = x->shape[2],
                    .W = x->shape[3],
                    .O = w->shape[0],
                    .KH = w->shape[2],
                    .KW = w->shape[3],
                    .p = p,
                    .bias = bias != NULL,
                    .in_dt = x->dtype,
                    .w_dt = w->dtype,
                    .bias_dt = bias ? bias->dtype : DF_DTYPE_F32,
                    .out_dt = out_dt,
                    .cdt = cdt};
    DF_ASSERT(s.C % p.groups == 0 && s.O % p.groups == 0 && w->shape[1] == s.C / p.groups,
              "conv2d: x %s, weight %s, groups %d", sx, sw, p.groups);
    s.OH = (s.H + 2 * p.padding[0] - p.dilation[0] * (s.KH - 1) - 1) / p.stride[0] + 1;
    s.OW = (s.W + 2 * p.padding[1] - p.dilation[1] * (s.KW - 1) - 1) / p.stride[1] + 1;
    DF_ASSERT(s.OH >= 1 && s.OW >= 1 && s.H + 2 * p.padding[0] >= p.dilation[0] * (s.KH - 1) + 1 &&
                  s.W + 2 * p.padding[1] >= p.dilation[1] * (s.KW - 1) + 1,
              "conv2d: kernel of weight %s larger than padded input %s", sw, sx);
    if (bias) {
        DF_ASSERT(bias->ndim == 1 && bias->numel == s.O, "conv2d: bias %s for weight %s",
                  df_shape_str(bias, sb, sizeof sb), sw);
    }
    pthread_once(&layout_once, layout_init);
    s.layout = layout_mode;
    int block = df_act_block();
    s.in_block = x->block;
    s.out_block = (x->block || p.blocked_out) && block && s.O % block == 0 ? block : 0;
    s.winograd = winograd_applies(&s);
    df_tensor *out = df_tensor_new(out_dt, DF_DIMS(s.N, s.O, s.OH, s.OW));
    out->block = s.out_block;
    if (out->numel > 0 && s.C > 0) {
        if (cdt == DF_CDT_BF16_EMU) { /* the F32 forward on rounded copies */
            conv_shape f = emulated_shape(&s);
            df_tensor *xr = df_bf16_rounded(x), *wr = df_bf16_rounded(w);
            df_tensor *br = bias && bias->dtype != DF_DTYPE_F32 ? df_bf16_rounded(bias) : NULL;
            forward_run(&f, xr->data, wr->data, br ? br->data : bias ? bias->data : NULL, out);
            df_tensor_free(xr);
            df_tensor_free(wr);
            df_tensor_free(br);
        } else {
            forward_run(&s, x->data, w->data, bias ? bias->data : NULL, out);
        }
    }
    df_node *n = df_node_new_keep(&conv2d_op, out, 3, (df_tensor *[]){x, w, bias}, sizeof s, 3u);
    if (n) *(conv_shape *)n->state = s;
    return out;
}

df_tensor *df_conv2d(df_tensor *x, df_tensor *w, df_tensor *bias, df_conv2d_params p) {
    /* under mixed precision the output is F32 whatever the operands (frozen BF16 weights) */
    df_dtype out_dt = df_compute_dtype() == DF_DTYPE_BF16 ? DF_DTYPE_F32 : x->dtype;
    return df_conv2d_to(x, w, bias, p, out_dt);
}
