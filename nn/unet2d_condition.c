/* unet2d_condition.c — diffusers UNet2DConditionModel (models/unet_2d_condition.py) for SD 1.x /
 * 2.x configs: positional time embedding, cross-attention down/mid/up blocks built from
 * Transformer2DModel, per-block lists (heads, cross-attention width, layers) reversed for the up
 * path as in __init__. attention_head_dim is the number of heads when num_attention_heads is
 * absent (resolved in the config reader). Any sample side works: each upsampler's output
 * is cut to the size of the skip it meets (diffusers' upsample_size, df_unet_blocks_forward).
 * Time embedding: linear_1 (C0 -> T), SiLU, linear_2 (T -> T), then timestep_post_act inside
 * TimestepEmbedding and time_embedding_act_fn after it (both SiLU or none), T =
 * time_embedding_dim or 4 C0. mid_block_type null: no mid block.
 */
#include "nn/nn.h"

#include <string.h>

static df_status check_blocks(const df_unet2d_cond_config *c) {
    const char *cls = "UNet2DConditionModel";
    DF_TRY(df_model_check_widths(cls, c->n_blocks, c->block_out_channels, c->norm_num_groups,
                                 c->in_channels, c->out_channels));
    for (int i = 0; i < c->n_blocks; i++)
        if (c->layers_per_block[i] < 0 || c->layers_per_block[i] > DF_MODEL_MAX_LAYERS ||
            c->transformer_layers_per_block[i] < 0 ||
            c->transformer_layers_per_block[i] > DF_MODEL_MAX_LAYERS ||
            c->num_attention_heads[i] < 1 ||
            c->block_out_channels[i] % c->num_attention_heads[i] != 0 ||
            c->cross_attention_dim[i] < 1 || c->cross_attention_dim[i] > DF_MODEL_MAX_CHANNELS)
            return df_error(DF_ERR_INVALID,
                            "%s: block %d: layers %d, transformer layers %d (0 to %d), %d heads "
                            "for %d channels, cross-attention width %d",
                            cls, i, c->layers_per_block[i], c->transformer_layers_per_block[i],
                            DF_MODEL_MAX_LAYERS, c->num_attention_heads[i],
                            c->block_out_channels[i], c->cross_attention_dim[i]);
    DF_TRY(
        df_model_check_zero_layers(cls, c->n_blocks, c->block_out_channels, c->layers_per_block));
    if (c->conv_in_kernel < 1 || c->conv_in_kernel % 2 == 0 ||
        c->conv_in_kernel > DF_MODEL_MAX_KERNEL || c->conv_out_kernel < 1 ||
        c->conv_out_kernel % 2 == 0 || c->conv_out_kernel > DF_MODEL_MAX_KERNEL ||
        c->time_embedding_dim < 0 || c->time_embedding_dim > 4 * DF_MODEL_MAX_CHANNELS ||
        c->downsample_padding < 0 || c->downsample_padding > 1)
        return df_error(DF_ERR_INVALID,
                        "%s: conv kernels %d, %d (odd, at most %d), time_embedding_dim %d, "
                        "downsample_padding %d",
                        cls, c->conv_in_kernel, c->conv_out_kernel, DF_MODEL_MAX_KERNEL,
                        c->time_embedding_dim, c->downsample_padding);
    DF_TRY(df_unet_check_blocks("UNet2DConditionModel", c->n_blocks,
                                (char(*)[DF_JSON_STR])c->down_block_types,
                                (char(*)[DF_JSON_STR])c->up_block_types, DF_BLOCK_ATTN_SPATIAL));
    if (c->dropout != 0)
        return df_error(DF_ERR_UNSUPPORTED, "UNet2DConditionModel: dropout %g (only 0)",
                        c->dropout);
    return DF_OK;
}

/* The transformer settings of block i of the config's (down-order) lists. */
static df_transformer2d_config transformer_of(const df_unet2d_cond_config *c, int i) {
    return (df_transformer2d_config){.norm_groups = c->norm_num_groups,
                                     .use_linear_projection = c->use_linear_projection,
                                     .heads = c->num_attention_heads[i],
                                     .cross_dim = c->cross_attention_dim[i],
                                     .layers = c->transformer_layers_per_block[i],
                                     .only_cross_attention = c->only_cross_attention[i]};
}

df_status df_unet2d_cond_init(df_unet2d_cond *m, const df_unet2d_cond_config *c, df_init init) {
    memset(m, 0, sizeof *m);
    DF_TRY(check_blocks(c));
    m->config = *c;
    df_params_init_with(&m->params, init);
    int c0 = c->block_out_channels[0], nb = c->n_blocks;
    int temb = c->time_embedding_dim ? c->time_embedding_dim : 4 * c0;
    df_unet_body_config bc = {.n_blocks = nb,
                              .in_channels = c->in_channels,
                              .out_channels = c->out_channels,
                              .conv_in_kernel = c->conv_in_kernel,
                              .conv_out_kernel = c->conv_out_kernel,
                              .temb_channels = temb,
                              .norm_groups = c->norm_num_groups,
                              .norm_eps = c->norm_eps,
                              .has_mid = c->mid_block_type[0] != '\0'};
    df_block_config base = df_unet_base_block(temb, c->norm_num_groups, c->norm_eps,
                                              c->resnet_time_scale_shift, c->downsample_padding);
    for (int i = 0; i < nb; i++) {
        int ri = nb - 1 - i; /* the up blocks read the lists reversed */
        bc.channels[i] = c->block_out_channels[i];
        bc.down[i] = base;
        bc.down[i].n_layers = c->layers_per_block[i];
        df_block_type_attn(c->down_block_types[i], &bc.down[i].attn);
        bc.down[i].transformer = transformer_of(c, i);
        bc.up[i] = base;
        bc.up[i].n_layers = c->layers_per_block[ri] + 1;
        df_block_type_attn(c->up_block_types[i], &bc.up[i].attn);
        bc.up[i].transformer = transformer_of(c, ri);
    }
    bc.mid = base;
    bc.mid.n_layers = 1;
    bc.mid.output_scale_factor = c->mid_block_scale_factor;
    bc.mid.attn = DF_BLOCK_ATTN_TRANSFORMER;
    bc.mid.transformer = transformer_of(c, nb - 1);
    bc.mid.transformer.only_cross_attention = false; /* UNetMidBlock2DCrossAttn: never */
    df_unet_body_init(&m->body, &m->params, &bc);
    return DF_OK;
}

void df_unet2d_cond_free(df_unet2d_cond *m) {
    df_unet_body_free(&m->body);
    df_params_free(&m->params);
}

df_status df_unet2d_cond_check_sample(const df_unet2d_cond_config *c, const df_tensor *sample) {
    return df_model_check_sides("UNet2DConditionModel", sample, c->in_channels, 1, 1);
}

df_status df_unet2d_cond_forward_res(df_unet2d_cond *m, df_tensor *sample,
                                     const df_tensor *timestep, df_tensor *encoder_hidden_states,
                                     const df_unet_residuals *res, df_tensor **out) {
    const df_unet2d_cond_config *c = &m->config;
    int64_t batch = sample->shape[0];
    DF_ASSERT(sample->ndim == 4 && sample->shape[1] == c->in_channels,
              "UNet2DConditionModel: sample must be (N, %d, H, W)", c->in_channels);
    if (c->center_input_sample) sample = df_add_scalar(df_mul_scalar(sample, 2.0f), -1.0f);
    df_tensor *t_emb = df_timestep_embedding(timestep, (int)batch, c->block_out_channels[0],
                                             c->flip_sin_to_cos, (float)c->freq_shift);
    df_tensor *emb = df_timestep_mlp_forward(&m->body.time_embedding, t_emb);
    if (c->timestep_post_act[0]) emb = df_silu(emb);
    if (c->time_embedding_act_fn[0]) emb = df_silu(emb);
    df_tensor *h = df_unet_body_conv_in(&m->body, sample);
    DF_TRY(df_unet_body_blocks(&m->body, h, emb, encoder_hidden_states, res, &h));
    *out = df_unet_body_out(&m->body, h);
    return DF_OK;
}

df_tensor *df_unet2d_cond_forward(df_unet2d_cond *m, df_tensor *sample, const df_tensor *timestep,
                                  df_tensor *encoder_hidden_states) {
    df_tensor *out;
    df_status st =
        df_unet2d_cond_forward_res(m, sample, timestep, encoder_hidden_states, NULL, &out);
    DF_ASSERT(st == DF_OK, "UNet2DConditionModel: %s", df_last_error()); /* cannot fail */
    return out;
}
