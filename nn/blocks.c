/* blocks.c — the down, mid and up blocks of diffusers' unet_2d_blocks.py, one generic struct per
 * role (see df_block_config in nn.h for which diffusers class each configuration is):
 *   down: for each layer: h = resnet(h, temb); h = attn(h[, ctx]); skips += h
 *         then h = downsample(h) (3x3 stride-2 conv; padding 0 means pad right/bottom by one,
 *         as the VAE encoder); skips += h
 *   up:   for each layer: h = cat(h, skips.pop(), dim=1) (UNets only); h = resnet(h, temb);
 *         h = attn(h[, ctx]); then h = conv(nearest_x2(h))
 *   mid:  h = resnets[0](h, temb); for each layer: h = attn(h[, ctx]); h = resnets[i+1](h, temb)
 * Up-block resnet widths follow get_up_block: layer i takes (i == 0 ? prev : out) channels plus
 * the skip's (i == n-1 ? in : out).
 */
#include "nn/nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static df_resnet_config resnet_config(const df_block_config *c, int in, int out) {
    return (df_resnet_config){.in_channels = in,
                              .out_channels = out,
                              .temb_channels = c->temb_channels,
                              .groups = c->groups,
                              .eps = c->eps,
                              .output_scale_factor = c->output_scale_factor,
                              .scale_shift = c->scale_shift};
}

static void alloc_layers(df_block *b, const df_block_config *c, int n_resnets, int n_attn) {
    b->n_resnets = n_resnets;
    b->resnets = calloc((size_t)n_resnets, sizeof *b->resnets);
    b->attn = c->attn;
    b->n_attn = c->attn == DF_BLOCK_ATTN_NONE ? 0 : n_attn;
    if (c->attn == DF_BLOCK_ATTN_SPATIAL)
        b->attentions = calloc((size_t)n_attn, sizeof *b->attentions);
    if (c->attn == DF_BLOCK_ATTN_TRANSFORMER)
        b->transformers = calloc((size_t)n_attn, sizeof *b->transformers);
    DF_ASSERT((b->resnets || n_resnets == 0) &&
                  (b->n_attn == 0 || b->attentions || b->transformers),
              "out of memory");
}

/* Attention layer i of a block whose layers have `ch` channels. */
static void attn_init(df_block *b, df_params *r, const char *name, const df_block_config *c, int i,
                      int ch) {
    char buf[DF_NAME_MAX];
    df_name_index(buf, sizeof buf, name, "attentions", i);
    if (c->attn == DF_BLOCK_ATTN_SPATIAL) {
        int dim_head = c->attn_head_dim > 0 ? c->attn_head_dim : ch;
        df_attention_config a = {.query_dim = ch,
                                 .heads = ch / dim_head,
                                 .dim_head = dim_head,
                                 .qkv_bias = true,
                                 .norm_groups = c->attn_without_norm ? 0 : c->groups,
                                 .norm_eps = c->eps,
                                 .residual_connection = true,
                                 .rescale_output_factor = c->output_scale_factor};
        df_attention_init(&b->attentions[i], r, buf, a);
    } else if (c->attn == DF_BLOCK_ATTN_TRANSFORMER) {
        df_transformer2d_config t = c->transformer;
        t.channels = ch;
        df_transformer2d_init(&b->transformers[i], r, buf, t);
    }
}

static df_tensor *attn_forward(const df_block *b, int i, df_tensor *x, df_tensor *ctx) {
    if (b->attn == DF_BLOCK_ATTN_SPATIAL) return df_attention_forward(&b->attentions[i], x, NULL);
    if (b->attn == DF_BLOCK_ATTN_TRANSFORMER)
        return df_transformer2d_forward(&b->transformers[i], x, ctx);
    return x;
}

void df_down_block_init(df_block *b, df_params *r, const char *name, df_block_config c) {
    char buf[DF_NAME_MAX];
    alloc_layers(b, &c, c.n_layers, c.n_layers);
    for (int i = 0; i < c.n_layers; i++) {
        int in = i == 0 ? c.in_channels : c.out_channels;
        df_resnet_init(&b->resnets[i], r, df_name_index(buf, sizeof buf, name, "resnets", i),
                       resnet_config(&c, in, c.out_channels));
        if (b->n_attn) attn_init(b, r, name, &c, i, c.out_channels);
    }
    b->has_sampler = c.add_sample;
    b->downsample_padding = c.downsample_padding;
    if (c.add_sample)
        df_conv_mod_init(&b->sampler, r, df_name_join(buf, sizeof buf, name, "downsamplers.0.conv"),
                         c.out_channels, c.out_channels, 3, 2, c.downsample_padding, true);
}

void df_up_block_init(df_block *b, df_params *r, const char *name, df_block_config c) {
    char buf[DF_NAME_MAX];
    alloc_layers(b, &c, c.n_layers, c.n_layers);
    for (int i = 0; i < c.n_layers; i++) {
        int in;
        if (c.prev_channels > 0) { /* UNet up block: concatenated skip */
            int skip = i == c.n_layers - 1 ? c.in_channels : c.out_channels;
            in = (i == 0 ? c.prev_channels : c.out_channels) + skip;
        } else { /* UpDecoderBlock2D */
            in = i == 0 ? c.in_channels : c.out_channels;
        }
        df_resnet_init(&b->resnets[i], r, df_name_index(buf, sizeof buf, name, "resnets", i),
                       resnet_config(&c, in, c.out_channels));
        if (b->n_attn) attn_init(b, r, name, &c, i, c.out_channels);
    }
    b->has_sampler = c.add_sample;
    if (c.add_sample)
        df_conv_mod_init(&b->sampler, r, df_name_join(buf, sizeof buf, name, "upsamplers.0.conv"),
                         c.out_channels, c.out_channels, 3, 1, 1, true);
}

void df_mid_block_init(df_block *b, df_params *r, const char *name, df_block_config c) {
    char buf[DF_NAME_MAX];
    alloc_layers(b, &c, c.n_layers + 1, c.n_layers);
    df_resnet_init(&b->resnets[0], r, df_name_index(buf, sizeof buf, name, "resnets", 0),
                   resnet_config(&c, c.in_channels, c.in_channels));
    for (int i = 0; i < c.n_layers; i++) {
        if (b->n_attn) attn_init(b, r, name, &c, i, c.in_channels);
        df_resnet_init(&b->resnets[i + 1], r,
                       df_name_index(buf, sizeof buf, name, "resnets", i + 1),
                       resnet_config(&c, c.in_channels, c.in_channels));
    }
}

void df_block_free(df_block *b) {
    for (int i = 0; b->transformers && i < b->n_attn; i++)
        df_transformer2d_free(&b->transformers[i]);
    free(b->resnets);
    free(b->attentions);
    free(b->transformers);
    b->resnets = NULL;
    b->attentions = NULL;
    b->transformers = NULL;
}

/* F.pad(x, (0, 1, 0, 1)): one zero column on the right and one zero row at the bottom. */
static df_tensor *pad_right_bottom(df_tensor *x) {
    int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], w = x->shape[3];
    df_tensor *col = df_zeros(DF_DTYPE_F32, DF_DIMS(n, c, h, 1));
    x = df_concat((df_tensor *[]){x, col}, 2, 3);
    df_tensor *row = df_zeros(DF_DTYPE_F32, DF_DIMS(n, c, 1, w + 1));
    return df_concat((df_tensor *[]){x, row}, 2, 2);
}

df_tensor *df_down_block_forward(const df_block *b, df_tensor *x, df_tensor *temb,
                                 df_tensor *context, df_tensor **skips, int *n_skips) {
    for (int i = 0; i < b->n_resnets; i++) {
        x = df_resnet_forward(&b->resnets[i], x, temb);
        if (b->n_attn) x = attn_forward(b, i, x, context);
        if (skips) skips[(*n_skips)++] = x;
    }
    if (b->has_sampler) {
        if (b->downsample_padding == 0) x = pad_right_bottom(x);
        x = df_conv_mod_forward(&b->sampler, x);
        if (skips) skips[(*n_skips)++] = x;
    }
    return x;
}

/* torch's nearest source index (upsample_nearest2d with an output size, no scale given): the
 * float scale in / out, floor, clamped. */
static int64_t nearest_src(int64_t i, int64_t in, int64_t out) {
    if (out == 2 * in) return i >> 1;
    float scale = (float)in / (float)out;
    int64_t src = (int64_t)floorf((float)i * scale);
    return src < in - 1 ? src : in - 1;
}

/* F.interpolate(x, size=(oh, ow), mode="nearest") as two products with one-hot matrices
 * (R x C^T, each output element exactly one input element): differentiable through df_matmul,
 * and only on the rare upsample_size path. */
static df_tensor *nearest_resize(df_tensor *x, int64_t oh, int64_t ow) {
    if (x->block) x = df_to_plain(x);
    int64_t h = x->shape[2], w = x->shape[3];
    df_tensor *cols = df_zeros(DF_DTYPE_F32, DF_DIMS(w, ow)); /* (W, OW) */
    for (int64_t j = 0; j < ow; j++) df_f32(cols)[nearest_src(j, w, ow) * ow + j] = 1.0f;
    df_tensor *rows = df_zeros(DF_DTYPE_F32, DF_DIMS(oh, h)); /* (OH, H) */
    for (int64_t i = 0; i < oh; i++) df_f32(rows)[i * h + nearest_src(i, h, oh)] = 1.0f;
    return df_matmul(rows, df_matmul(x, cols, false, false), false, false);
}

df_tensor *df_up_block_forward(const df_block *b, df_tensor *x, df_tensor *temb, df_tensor *context,
                               df_tensor **skips, int *n_skips) {
    for (int i = 0; i < b->n_resnets; i++) {
        if (skips) {
            DF_ASSERT(*n_skips > 0, "up block: no skip connection left for layer %d", i);
            x = df_concat((df_tensor *[]){x, skips[--(*n_skips)]}, 2, 1);
        }
        x = df_resnet_forward(&b->resnets[i], x, temb);
        if (b->n_attn) x = attn_forward(b, i, x, context);
    }
    if (b->has_sampler) {
        /* Upsample2D: nearest x2, or F.interpolate(size=the next skip's size) when that is not
         * twice this size (diffusers' upsample_size, for sides that do not divide) */
        const df_tensor *next = skips && *n_skips > 0 ? skips[*n_skips - 1] : NULL;
        if (next && (next->shape[2] != 2 * x->shape[2] || next->shape[3] != 2 * x->shape[3]))
            x = nearest_resize(x, next->shape[2], next->shape[3]);
        else
            x = df_upsample_nearest2d(x, 2);
        x = df_conv_mod_forward(&b->sampler, x);
    }
    return x;
}

df_tensor *df_mid_block_forward(const df_block *b, df_tensor *x, df_tensor *temb,
                                df_tensor *context) {
    x = df_resnet_forward(&b->resnets[0], x, temb);
    for (int i = 0; i + 1 < b->n_resnets; i++) {
        if (b->n_attn) x = attn_forward(b, i, x, context);
        x = df_resnet_forward(&b->resnets[i + 1], x, temb);
    }
    return x;
}

bool df_block_type_attn(const char *type, df_block_attn *out) {
    static const struct {
        const char *name;
        df_block_attn attn;
    } types[] = {{"DownBlock2D", DF_BLOCK_ATTN_NONE},
                 {"UpBlock2D", DF_BLOCK_ATTN_NONE},
                 {"AttnDownBlock2D", DF_BLOCK_ATTN_SPATIAL},
                 {"AttnUpBlock2D", DF_BLOCK_ATTN_SPATIAL},
                 {"CrossAttnDownBlock2D", DF_BLOCK_ATTN_TRANSFORMER},
                 {"CrossAttnUpBlock2D", DF_BLOCK_ATTN_TRANSFORMER},
                 {"DownEncoderBlock2D", DF_BLOCK_ATTN_NONE},
                 {"UpDecoderBlock2D", DF_BLOCK_ATTN_NONE}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        if (strcmp(type, types[i].name) == 0) {
            *out = types[i].attn;
            return true;
        }
    }
    return false;
}

df_block_config df_unet_base_block(int temb_channels, int groups, float eps,
                                   const char *resnet_time_scale_shift, int downsample_padding) {
    return (df_block_config){.temb_channels = temb_channels,
                             .groups = groups,
                             .eps = eps,
                             .output_scale_factor = 1.0f,
                             .scale_shift = strcmp(resnet_time_scale_shift, "scale_shift") == 0,
                             .downsample_padding = downsample_padding};
}

df_status df_unet_check_blocks(const char *cls, int n, char (*down)[DF_JSON_STR],
                               char (*up)[DF_JSON_STR], df_block_attn excluded) {
    for (int i = 0; i < n; i++) {
        df_block_attn a;
        if (!df_block_type_attn(down[i], &a) || a == excluded || strstr(down[i], "Encoder"))
            return df_error(DF_ERR_UNSUPPORTED, "%s: down block type '%s'", cls, down[i]);
        if (!df_block_type_attn(up[i], &a) || a == excluded || strstr(up[i], "Decoder"))
            return df_error(DF_ERR_UNSUPPORTED, "%s: up block type '%s'", cls, up[i]);
    }
    return DF_OK;
}

int df_unet_skip_count(const df_block *down, int n_blocks) {
    int n = 1; /* conv_in's output */
    for (int i = 0; i < n_blocks; i++) n += down[i].n_resnets + (down[i].has_sampler ? 1 : 0);
    return n;
}

df_tensor *df_unet_down_forward(const df_block *down, int n_blocks, df_tensor *h, df_tensor *temb,
                                df_tensor *context, df_tensor **skips, int *n_skips) {
    int needed = df_unet_skip_count(down, n_blocks);
    DF_ASSERT(needed <= DF_UNET_MAX_SKIPS, "UNet: %d skip connections (at most %d)", needed,
              DF_UNET_MAX_SKIPS); /* the config readers bound layers_per_block */
    *n_skips = 0;
    skips[(*n_skips)++] = h;
    for (int i = 0; i < n_blocks; i++)
        h = df_down_block_forward(&down[i], h, temb, context, skips, n_skips);
    return h;
}

df_tensor *df_unet_up_forward(const df_block *up, int n_blocks, df_tensor *h, df_tensor *temb,
                              df_tensor *context, df_tensor **skips, int *n_skips) {
    for (int i = 0; i < n_blocks; i++)
        h = df_up_block_forward(&up[i], h, temb, context, skips, n_skips);
    return h;
}

/* r has the shape of t: an error naming the residual otherwise. */
static df_status check_residual(const df_tensor *r, const df_tensor *t, const char *what, int i) {
    char sr[64], st[64];
    bool same = r && r->dtype == DF_DTYPE_F32 && r->ndim == 4;
    for (int d = 0; same && d < 4; d++) same = r->shape[d] == t->shape[d];
    if (same) return DF_OK;
    return df_error(DF_ERR_INVALID, "UNet: %s %d must be F32 %s (the skip it is added to), got %s",
                    what, i, df_shape_str(t, st, sizeof st),
                    r ? df_shape_str(r, sr, sizeof sr) : "none");
}

df_status df_unet_blocks_forward_res(const df_block *down, const df_block *mid, const df_block *up,
                                     int n_blocks, df_tensor *h, df_tensor *temb,
                                     df_tensor *context, const df_unet_residuals *res,
                                     df_tensor **out) {
    df_tensor *skips[DF_UNET_MAX_SKIPS];
    int n_skips;
    h = df_unet_down_forward(down, n_blocks, h, temb, context, skips, &n_skips);
    if (res) {
        if (res->n_down != n_skips || !res->mid)
            return df_error(DF_ERR_INVALID,
                            "UNet: %d down-block residuals and %s mid-block residual given; this "
                            "UNet takes %d and one (a ControlNet of the same layout)",
                            res->n_down, res->mid ? "a" : "no", n_skips);
        for (int i = 0; i < n_skips; i++) {
            DF_TRY(check_residual(res->down[i], skips[i], "down_block_additional_residuals", i));
            skips[i] = df_add(skips[i], res->down[i]);
        }
    }
    if (mid) h = df_mid_block_forward(mid, h, temb, context);
    if (res) {
        DF_TRY(check_residual(res->mid, h, "mid_block_additional_residual", 0));
        h = df_add(h, res->mid);
    }
    *out = df_unet_up_forward(up, n_blocks, h, temb, context, skips, &n_skips);
    return DF_OK;
}

df_tensor *df_unet_blocks_forward(const df_block *down, const df_block *mid, const df_block *up,
                                  int n_blocks, df_tensor *h, df_tensor *temb, df_tensor *context) {
    df_tensor *out;
    df_status st =
        df_unet_blocks_forward_res(down, mid, up, n_blocks, h, temb, context, NULL, &out);
    DF_ASSERT(st == DF_OK, "UNet body: %s", df_last_error()); /* no residuals: cannot fail */
    return out;
}

void df_unet_blocks_free(df_block *down, df_block *mid, df_block *up, int n_blocks) {
    for (int i = 0; i < n_blocks; i++) {
        if (down) df_block_free(&down[i]);
        if (up) df_block_free(&up[i]);
    }
    if (mid) df_block_free(mid);
}
