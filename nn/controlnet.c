/* controlnet.c — diffusers v0.21.4 ControlNetModel (models/controlnet.py), built on the UNet body
 * (nn/unet_body.c with down_only: conv_in, time_embedding, down_blocks, mid_block, and their
 * forwards from nn/blocks.c), plus what only a ControlNet has:
 *   controlnet_cond_embedding: conv_in (3x3), SiLU, then for each pair of widths a 3x3
 *     convolution (stride 1) and a 3x3 stride-2 convolution (padding 1), each followed by SiLU,
 *     then conv_out (3x3, zero at creation) to block_out_channels[0]; its output is added to
 *     conv_in(sample);
 *   controlnet_down_blocks.i: a 1x1 convolution (zero at creation) on each skip connection;
 *   controlnet_mid_block: a 1x1 convolution on the mid block's output;
 *   the residuals scaled by conditioning_scale, or in guess mode by conditioning_scale x
 *   torch.logspace(-1, 0, n + 1) (0.1 for the first skip up to 1 for the mid residual).
 * Time embedding: positional (flip_sin_to_cos, freq_shift), linear_1, SiLU, linear_2, as the
 * UNet without its optional post-activations (the ControlNet has none).
 */
#include "nn/controlnet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static df_transformer2d_config transformer_of(const df_controlnet_config *c, int i) {
    return (df_transformer2d_config){.norm_groups = c->norm_num_groups,
                                     .use_linear_projection = c->use_linear_projection,
                                     .heads = c->heads[i],
                                     .cross_dim = c->cross_attention_dim,
                                     .layers = c->transformer_layers_per_block[i],
                                     .only_cross_attention = c->only_cross_attention[i]};
}

static df_status check_config(const df_controlnet_config *c) {
    const char *cls = "ControlNetModel";
    DF_TRY(df_model_check_widths(cls, c->n_blocks, c->block_out_channels, c->norm_num_groups,
                                 c->in_channels, c->in_channels));
    int layers[DF_MAX_BLOCKS];
    for (int i = 0; i < c->n_blocks; i++) {
        layers[i] = c->layers_per_block;
        df_block_attn a;
        if (!df_block_type_attn(c->down_block_types[i], &a) || a == DF_BLOCK_ATTN_SPATIAL ||
            strstr(c->down_block_types[i], "Encoder") || strstr(c->down_block_types[i], "Up"))
            return df_error(DF_ERR_UNSUPPORTED, "%s: down block type '%s'", cls,
                            c->down_block_types[i]);
        if (c->heads[i] < 1 || c->block_out_channels[i] % c->heads[i] != 0 ||
            c->transformer_layers_per_block[i] < 0 ||
            c->transformer_layers_per_block[i] > DF_MODEL_MAX_LAYERS)
            return df_error(
                DF_ERR_INVALID, "%s: block %d: %d heads for %d channels, %d transformer layers",
                cls, i, c->heads[i], c->block_out_channels[i], c->transformer_layers_per_block[i]);
    }
    if (c->layers_per_block < 0 || c->layers_per_block > DF_MODEL_MAX_LAYERS ||
        c->cross_attention_dim < 1 || c->cross_attention_dim > DF_MODEL_MAX_CHANNELS ||
        c->downsample_padding < 0 || c->downsample_padding > 1 || c->conditioning_channels < 1 ||
        c->conditioning_channels > DF_MODEL_MAX_CHANNELS || c->n_cond_blocks < 1 ||
        c->n_cond_blocks > DF_MAX_BLOCKS)
        return df_error(DF_ERR_INVALID,
                        "%s: layers_per_block %d, cross_attention_dim %d, downsample_padding %d, "
                        "conditioning_channels %d, %d conditioning widths (1 to %d)",
                        cls, c->layers_per_block, c->cross_attention_dim, c->downsample_padding,
                        c->conditioning_channels, c->n_cond_blocks, DF_MAX_BLOCKS);
    for (int i = 0; i < c->n_cond_blocks; i++)
        if (c->conditioning_embedding_out_channels[i] < 1 ||
            c->conditioning_embedding_out_channels[i] > DF_MODEL_MAX_CHANNELS)
            return df_error(DF_ERR_INVALID, "%s: conditioning_embedding_out_channels[%d] is %d",
                            cls, i, c->conditioning_embedding_out_channels[i]);
    return df_model_check_zero_layers(cls, c->n_blocks, c->block_out_channels, layers);
}

static void cond_embedding_init(df_controlnet *m, df_params *r) {
    const df_controlnet_config *c = &m->config;
    const int *w = c->conditioning_embedding_out_channels;
    char buf[DF_NAME_MAX];
    df_conv_mod_init(&m->cond_conv_in, r, "controlnet_cond_embedding.conv_in",
                     c->conditioning_channels, w[0], 3, 1, 1, true);
    for (int i = 0; i + 1 < c->n_cond_blocks; i++) {
        df_conv_mod_init(
            &m->cond_blocks[2 * i], r,
            df_name_index(buf, sizeof buf, "controlnet_cond_embedding", "blocks", 2 * i), w[i],
            w[i], 3, 1, 1, true);
        df_conv_mod_init(
            &m->cond_blocks[2 * i + 1], r,
            df_name_index(buf, sizeof buf, "controlnet_cond_embedding", "blocks", 2 * i + 1), w[i],
            w[i + 1], 3, 2, 1, true);
    }
    df_conv_mod_init(&m->cond_conv_out, r, "controlnet_cond_embedding.conv_out",
                     w[c->n_cond_blocks - 1], c->block_out_channels[0], 3, 1, 1, true);
    df_params_fill(r, m->cond_conv_out.weight, 0.0f); /* zero_module */
    df_params_fill(r, m->cond_conv_out.bias, 0.0f);
}

static void zero_conv_init(df_conv_mod *m, df_params *r, const char *name, int ch) {
    df_conv_mod_init(m, r, name, ch, ch, 1, 1, 0, true);
    df_params_fill(r, m->weight, 0.0f);
    df_params_fill(r, m->bias, 0.0f);
}

df_status df_controlnet_init(df_controlnet *m, const df_controlnet_config *c, df_init init) {
    memset(m, 0, sizeof *m);
    DF_TRY(check_config(c));
    m->config = *c;
    df_params_init_with(&m->params, init);
    int c0 = c->block_out_channels[0], nb = c->n_blocks, temb = 4 * c0;
    df_unet_body_config bc = {.n_blocks = nb,
                              .in_channels = c->in_channels,
                              .out_channels = c->in_channels,
                              .conv_in_kernel = 3,
                              .conv_out_kernel = 3,
                              .temb_channels = temb,
                              .norm_groups = c->norm_num_groups,
                              .norm_eps = c->norm_eps,
                              .has_mid = true,
                              .down_only = true};
    df_block_config base = df_unet_base_block(temb, c->norm_num_groups, c->norm_eps,
                                              c->resnet_time_scale_shift, c->downsample_padding);
    for (int i = 0; i < nb; i++) {
        bc.channels[i] = c->block_out_channels[i];
        bc.down[i] = base;
        bc.down[i].n_layers = c->layers_per_block;
        df_block_type_attn(c->down_block_types[i], &bc.down[i].attn);
        bc.down[i].transformer = transformer_of(c, i);
    }
    bc.mid = base;
    bc.mid.n_layers = 1;
    bc.mid.output_scale_factor = c->mid_block_scale_factor;
    bc.mid.attn = DF_BLOCK_ATTN_TRANSFORMER;
    bc.mid.transformer = transformer_of(c, nb - 1);
    bc.mid.transformer.only_cross_attention = false; /* UNetMidBlock2DCrossAttn: never */
    df_unet_body_init(&m->body, &m->params, &bc);
    cond_embedding_init(m, &m->params);

    m->n_zero_down = df_unet_skip_count(m->body.down, nb);
    m->zero_down = calloc((size_t)m->n_zero_down, sizeof *m->zero_down);
    if (!m->zero_down) return df_error(DF_ERR_NOMEM, "ControlNetModel: out of memory");
    char buf[DF_NAME_MAX];
    int k = 0, ch = c0;
    zero_conv_init(&m->zero_down[k], &m->params,
                   df_name_index(buf, sizeof buf, "", "controlnet_down_blocks", k), ch);
    k++;
    for (int i = 0; i < nb; i++) {
        ch = c->block_out_channels[i];
        int n = m->body.down[i].n_resnets + (m->body.down[i].has_sampler ? 1 : 0);
        for (int j = 0; j < n; j++, k++)
            zero_conv_init(&m->zero_down[k], &m->params,
                           df_name_index(buf, sizeof buf, "", "controlnet_down_blocks", k), ch);
    }
    zero_conv_init(&m->zero_mid, &m->params, "controlnet_mid_block", c->block_out_channels[nb - 1]);
    return DF_OK;
}

void df_controlnet_free(df_controlnet *m) {
    df_unet_body_free(&m->body);
    df_params_free(&m->params);
    free(m->zero_down);
    m->zero_down = NULL;
}

df_status df_controlnet_check_unet(const df_controlnet_config *c, const df_unet2d_cond_config *u) {
    bool ok = c->in_channels == u->in_channels && c->n_blocks == u->n_blocks;
    for (int i = 0; ok && i < c->n_blocks; i++)
        ok = c->block_out_channels[i] == u->block_out_channels[i] &&
             c->layers_per_block == u->layers_per_block[i];
    if (!ok) {
        char cw[128] = "", uw[128] = "";
        for (int i = 0; i < c->n_blocks; i++)
            snprintf(cw + strlen(cw), sizeof cw - strlen(cw), "%s%d", i ? ", " : "",
                     c->block_out_channels[i]);
        for (int i = 0; i < u->n_blocks; i++)
            snprintf(uw + strlen(uw), sizeof uw - strlen(uw), "%s%d", i ? ", " : "",
                     u->block_out_channels[i]);
        return df_error(DF_ERR_INVALID,
                        "ControlNetModel for another UNet: in_channels %d, block_out_channels "
                        "[%s], layers_per_block %d; the UNet has in_channels %d, "
                        "block_out_channels [%s], layers_per_block %d",
                        c->in_channels, cw, c->layers_per_block, u->in_channels, uw,
                        u->layers_per_block[0]);
    }
    if (!u->mid_block_type[0])
        return df_error(DF_ERR_INVALID, "ControlNetModel: the UNet has no mid block");
    return DF_OK;
}

/* The side the conditioning embedding gives for an input side: each stride-2 3x3 convolution
 * with padding 1 maps s to (s - 1) / 2 + 1. */
static int64_t embedded_side(const df_controlnet_config *c, int64_t s) {
    for (int i = 0; i + 1 < c->n_cond_blocks; i++) s = (s - 1) / 2 + 1;
    return s;
}

df_status df_controlnet_check_inputs(const df_controlnet_config *c, const df_tensor *sample,
                                     const df_tensor *ctx, const df_tensor *cond) {
    const char *cls = "ControlNetModel";
    DF_TRY(df_model_check_sides(cls, sample, c->in_channels, 1, 1));
    int64_t n = sample->shape[0], h = sample->shape[2], w = sample->shape[3];
    if (!ctx || ctx->dtype != DF_DTYPE_F32 || ctx->ndim != 3 || ctx->shape[0] != n ||
        ctx->shape[2] != c->cross_attention_dim)
        return df_error(DF_ERR_INVALID,
                        "%s: input 'encoder_hidden_states' must be F32 (%lld, S, %d)", cls,
                        (long long)n, c->cross_attention_dim);
    int64_t f = 1;
    for (int i = 0; i + 1 < c->n_cond_blocks; i++) f *= 2;
    if (!cond || cond->dtype != DF_DTYPE_F32 || cond->ndim != 4 || cond->shape[0] != n ||
        cond->shape[1] != c->conditioning_channels || cond->shape[2] < 1 || cond->shape[3] < 1 ||
        cond->shape[2] > DF_MODEL_MAX_SIDE || cond->shape[3] > DF_MODEL_MAX_SIDE ||
        embedded_side(c, cond->shape[2]) != h || embedded_side(c, cond->shape[3]) != w) {
        char s[64];
        return df_error(DF_ERR_INVALID,
                        "%s: input 'controlnet_cond' must be F32 (%lld, %d, %lld, %lld) (%lld "
                        "times the sample's sides), got %s",
                        cls, (long long)n, c->conditioning_channels, (long long)(f * h),
                        (long long)(f * w), (long long)f,
                        cond ? df_shape_str(cond, s, sizeof s) : "none");
    }
    return DF_OK;
}

/* torch.flip(x, dims=[1]): the channels in reverse order. */
static df_tensor *flip_channels(df_tensor *x) {
    int64_t ch = x->shape[1];
    df_tensor *parts[DF_CONTROLNET_MAX_BGR];
    DF_ASSERT(ch <= DF_CONTROLNET_MAX_BGR, "ControlNetModel: bgr order with %lld channels",
              (long long)ch); /* the config reader bounds it */
    for (int64_t i = 0; i < ch; i++) parts[i] = df_slice(x, 1, ch - 1 - i, 1);
    return df_concat(parts, (int)ch, 1);
}

static df_tensor *cond_embedding_forward(const df_controlnet *m, df_tensor *x) {
    x = df_silu(df_conv_mod_forward(&m->cond_conv_in, x));
    for (int i = 0; i < 2 * (m->config.n_cond_blocks - 1); i++)
        x = df_silu(df_conv_mod_forward(&m->cond_blocks[i], x));
    df_conv_mod out = m->cond_conv_out;
    out.p.blocked_out = true; /* the layout of conv_in's output it is added to */
    return df_conv_mod_forward(&out, x);
}

void df_controlnet_forward(df_controlnet *m, df_tensor *sample, const df_tensor *timestep,
                           df_tensor *encoder_hidden_states, df_tensor *controlnet_cond,
                           float conditioning_scale, bool guess_mode, df_tensor **down, int *n_down,
                           df_tensor **mid) {
    const df_controlnet_config *c = &m->config;
    int64_t batch = sample->shape[0];
    if (c->bgr) controlnet_cond = flip_channels(controlnet_cond);
    df_tensor *t_emb = df_timestep_embedding(timestep, (int)batch, c->block_out_channels[0],
                                             c->flip_sin_to_cos, (float)c->freq_shift);
    df_tensor *emb = df_timestep_mlp_forward(&m->body.time_embedding, t_emb);
    df_tensor *h = df_unet_body_conv_in(&m->body, sample);
    h = df_add(h, cond_embedding_forward(m, controlnet_cond));
    df_tensor *skips[DF_UNET_MAX_SKIPS];
    int n_skips;
    h = df_unet_down_forward(m->body.down, c->n_blocks, h, emb, encoder_hidden_states, skips,
                             &n_skips);
    h = df_mid_block_forward(&m->body.mid, h, emb, encoder_hidden_states);
    DF_ASSERT(n_skips == m->n_zero_down, "ControlNetModel: %d skips for %d zero convolutions",
              n_skips, m->n_zero_down);
    /* torch.logspace(-1, 0, n + 1): 10^(-1 + i / n) */
    for (int i = 0; i < n_skips; i++) {
        float s = conditioning_scale;
        if (guess_mode) s *= powf(10.0f, -1.0f + (float)i / (float)n_skips);
        down[i] = df_mul_scalar(df_conv_mod_forward(&m->zero_down[i], skips[i]), s);
    }
    *n_down = n_skips;
    *mid = df_mul_scalar(df_conv_mod_forward(&m->zero_mid, h), conditioning_scale);
}

df_status df_controlnet_from_unet(df_controlnet *m, const df_unet2d_cond *unet,
                                  const int *cond_channels, int n, df_philox *gen) {
    df_controlnet_config c;
    DF_TRY(df_controlnet_config_from_unet(&unet->config, cond_channels, n, &c));
    DF_TRY(df_controlnet_init(m, &c, (df_init){.gen = gen}));
    static const char *const copied[] = {"conv_in.", "time_embedding.", "down_blocks.",
                                         "mid_block."};
    for (int i = 0; i < m->params.n; i++) {
        const df_param *p = &m->params.items[i];
        bool copy = false;
        for (size_t k = 0; k < sizeof copied / sizeof copied[0]; k++)
            copy = copy || strncmp(p->name, copied[k], strlen(copied[k])) == 0;
        if (!copy) continue;
        df_tensor *src = df_params_find(&unet->params, p->name);
        if (!src || !df_tensor_same_shape(src, p->tensor))
            return df_error(DF_ERR_INVALID,
                            "ControlNetModel.from_unet: the UNet has no %s of the "
                            "same shape",
                            p->name);
        memcpy(p->tensor->data, src->data, (size_t)src->numel * sizeof(float));
    }
    return DF_OK;
}
