/* unet2d.c — diffusers UNet2DModel (models/unet_2d.py), positional time embedding:
 *   emb = time_embedding(timestep_embedding(t, C0, flip_sin_to_cos, freq_shift))   (C0 -> 4 C0)
 *   h = conv_in(center ? 2x - 1 : x); skips = [h]
 *   down blocks (skips grow), mid block, up blocks (each takes layers_per_block + 1 skips)
 *   out = conv_out(silu(conv_norm_out(h)))
 * Block widths and head sizes follow UNet2DModel.__init__ exactly (attention_head_dim is the
 * head width; None means one head of the block width).
 */
#include "nn/nn.h"

#include <string.h>

static df_status check_blocks(const df_unet2d_config *c) {
    DF_TRY(df_model_check_widths("UNet2DModel", c->n_blocks, c->block_out_channels,
                                 c->norm_num_groups, c->in_channels, c->out_channels));
    if (c->layers_per_block < 0 || c->layers_per_block > DF_MODEL_MAX_LAYERS ||
        c->attention_head_dim < 0 || c->downsample_padding < 0 || c->downsample_padding > 1)
        return df_error(DF_ERR_INVALID,
                        "UNet2DModel: layers_per_block %d (0 to %d), attention_head_dim %d, "
                        "downsample_padding %d (0 or 1)",
                        c->layers_per_block, DF_MODEL_MAX_LAYERS, c->attention_head_dim,
                        c->downsample_padding);
    DF_TRY(
        df_unet_check_blocks("UNet2DModel", c->n_blocks, (char(*)[DF_JSON_STR])c->down_block_types,
                             (char(*)[DF_JSON_STR])c->up_block_types, DF_BLOCK_ATTN_TRANSFORMER));
    if (c->dropout != 0)
        return df_error(DF_ERR_UNSUPPORTED, "UNet2DModel: dropout %g (only 0)", c->dropout);
    int layers[DF_MAX_BLOCKS];
    for (int i = 0; i < c->n_blocks; i++) layers[i] = c->layers_per_block;
    DF_TRY(df_model_check_zero_layers("UNet2DModel", c->n_blocks, c->block_out_channels, layers));
    /* a spatial attention needs a head: width // attention_head_dim >= 1 */
    for (int i = 0; c->attention_head_dim && i < c->n_blocks; i++) {
        df_block_attn a = DF_BLOCK_ATTN_NONE, u = DF_BLOCK_ATTN_NONE;
        df_block_type_attn(c->down_block_types[i], &a);
        df_block_type_attn(c->up_block_types[c->n_blocks - 1 - i], &u);
        bool mid = i == c->n_blocks - 1 && c->add_attention;
        if ((a == DF_BLOCK_ATTN_SPATIAL || u == DF_BLOCK_ATTN_SPATIAL || mid) &&
            c->attention_head_dim > c->block_out_channels[i])
            return df_error(DF_ERR_INVALID,
                            "UNet2DModel: attention_head_dim %d is wider than block %d (%d "
                            "channels): no head left",
                            c->attention_head_dim, i, c->block_out_channels[i]);
    }
    return DF_OK;
}

df_status df_unet2d_init(df_unet2d *m, const df_unet2d_config *c, df_init init) {
    memset(m, 0, sizeof *m);
    DF_TRY(check_blocks(c));
    m->config = *c;
    df_params_init_with(&m->params, init);
    int c0 = c->block_out_channels[0], nb = c->n_blocks;
    df_unet_body_config bc = {.n_blocks = nb,
                              .in_channels = c->in_channels,
                              .out_channels = c->out_channels,
                              .conv_in_kernel = 3,
                              .conv_out_kernel = 3,
                              .temb_channels = 4 * c0,
                              .norm_groups = c->norm_num_groups,
                              .norm_eps = c->norm_eps,
                              .has_mid = true};
    df_block_config base = df_unet_base_block(4 * c0, c->norm_num_groups, c->norm_eps,
                                              c->resnet_time_scale_shift, c->downsample_padding);
    for (int i = 0; i < nb; i++) {
        int width = c->block_out_channels[i], ri = nb - 1 - i;
        bc.channels[i] = width;
        bc.down[i] = base;
        bc.down[i].n_layers = c->layers_per_block;
        df_block_type_attn(c->down_block_types[i], &bc.down[i].attn);
        bc.down[i].attn_head_dim = c->attention_head_dim ? c->attention_head_dim : width;
        bc.up[i] = base;
        bc.up[i].n_layers = c->layers_per_block + 1;
        df_block_type_attn(c->up_block_types[i], &bc.up[i].attn);
        bc.up[i].attn_head_dim =
            c->attention_head_dim ? c->attention_head_dim : c->block_out_channels[ri];
    }
    bc.mid = base;
    bc.mid.n_layers = 1;
    bc.mid.output_scale_factor = c->mid_block_scale_factor;
    bc.mid.attn = c->add_attention ? DF_BLOCK_ATTN_SPATIAL : DF_BLOCK_ATTN_NONE;
    bc.mid.attn_head_dim = c->attention_head_dim ? c->attention_head_dim : bc.channels[nb - 1];
    /* UNetMidBlock2D: norm_num_groups=resnet_groups if resnet_time_scale_shift == "default" */
    bc.mid.attn_without_norm = base.scale_shift;
    df_unet_body_init(&m->body, &m->params, &bc);
    return DF_OK;
}

void df_unet2d_free(df_unet2d *m) {
    df_unet_body_free(&m->body);
    df_params_free(&m->params);
}

df_status df_model_check_zero_layers(const char *cls, int n_blocks, const int *channels,
                                     const int *layers) {
    for (int i = 1; i < n_blocks; i++)
        if (layers[i] == 0 && channels[i] != channels[i - 1])
            return df_error(DF_ERR_INVALID,
                            "%s: block %d has no resnet to take its input from %d to %d channels "
                            "(layers_per_block 0 needs equal widths; diffusers fails there too)",
                            cls, i, channels[i - 1], channels[i]);
    return DF_OK;
}

df_status df_model_check_widths(const char *cls, int n_blocks, const int *channels, int groups,
                                int in_channels, int out_channels) {
    if (n_blocks < 1 || n_blocks > DF_MAX_BLOCKS)
        return df_error(DF_ERR_INVALID, "%s: %d blocks (1 to %d)", cls, n_blocks, DF_MAX_BLOCKS);
    if (in_channels < 1 || in_channels > DF_MODEL_MAX_CHANNELS || out_channels < 1 ||
        out_channels > DF_MODEL_MAX_CHANNELS)
        return df_error(DF_ERR_INVALID, "%s: in/out channels %d, %d (1 to %d)", cls, in_channels,
                        out_channels, DF_MODEL_MAX_CHANNELS);
    for (int i = 0; i < n_blocks; i++)
        if (channels[i] < 1 || channels[i] > DF_MODEL_MAX_CHANNELS || groups < 1 ||
            channels[i] % groups != 0)
            return df_error(DF_ERR_INVALID,
                            "%s: block width %d (1 to %d, divisible by norm_num_groups %d)", cls,
                            channels[i], DF_MODEL_MAX_CHANNELS, groups);
    return DF_OK;
}

/* The sides the model takes, shared by the UNets and the VAE. */
df_status df_model_check_sides(const char *cls, const df_tensor *x, int channels, int64_t multiple,
                               int64_t at_least) {
    char s[64];
    if (x->dtype != DF_DTYPE_F32 || x->ndim != 4 || x->shape[1] != channels || x->shape[0] < 1)
        return df_error(DF_ERR_INVALID, "%s: input must be F32 (N, %d, H, W), got %s %s", cls,
                        channels, df_dtype_name(x->dtype), df_shape_str(x, s, sizeof s));
    for (int d = 2; d < 4; d++) {
        int64_t side = x->shape[d];
        if (side < at_least || side > DF_MODEL_MAX_SIDE)
            return df_error(DF_ERR_INVALID, "%s: input %s: %s %lld outside [%lld, %d]", cls,
                            df_shape_str(x, s, sizeof s), d == 2 ? "height" : "width",
                            (long long)side, (long long)at_least, DF_MODEL_MAX_SIDE);
        if (side % multiple != 0)
            return df_error(DF_ERR_INVALID,
                            "%s: input %s: %s %lld is not a multiple of %lld (2^(blocks - 1): "
                            "the up path could not meet the skip connections; diffusers fails "
                            "there too)",
                            cls, df_shape_str(x, s, sizeof s), d == 2 ? "height" : "width",
                            (long long)side, (long long)multiple);
    }
    return DF_OK;
}

df_status df_unet2d_check_sample(const df_unet2d_config *c, const df_tensor *sample) {
    return df_model_check_sides("UNet2DModel", sample, c->in_channels, 1LL << (c->n_blocks - 1), 1);
}

df_tensor *df_unet2d_forward(df_unet2d *m, df_tensor *sample, const df_tensor *timestep) {
    const df_unet2d_config *c = &m->config;
    int64_t batch = sample->shape[0];
    DF_ASSERT(sample->ndim == 4 && sample->shape[1] == c->in_channels,
              "UNet2DModel: sample must be (N, %d, H, W)", c->in_channels);
    if (c->center_input_sample) sample = df_add_scalar(df_mul_scalar(sample, 2.0f), -1.0f);
    df_tensor *t_emb = df_timestep_embedding(timestep, (int)batch, c->block_out_channels[0],
                                             c->flip_sin_to_cos, (float)c->freq_shift);
    df_tensor *emb = df_timestep_mlp_forward(&m->body.time_embedding, t_emb);
    df_tensor *h = df_unet_body_conv_in(&m->body, sample);
    h = df_unet_blocks_forward(m->body.down, &m->body.mid, m->body.up, c->n_blocks, h, emb, NULL);
    return df_unet_body_out(&m->body, h);
}
