/* autoencoder_kl.c — diffusers AutoencoderKL (models/autoencoder_kl.py, vae.py):
 *   Encoder: conv_in -> DownEncoderBlock2D* (eps 1e-6, downsample padding 0 = pad right/bottom)
 *            -> UNetMidBlock2D (one full-width attention head) -> GroupNorm(1e-6) -> SiLU
 *            -> conv_out (2 * latent channels)
 *   quant_conv (1x1) -> DiagonalGaussianDistribution: mean, logvar = chunk(moments, 2, dim=1);
 *            logvar = clamp(logvar, -30, 20)
 *   Decoder: post_quant_conv (1x1) -> conv_in -> UNetMidBlock2D -> UpDecoderBlock2D* (reversed
 *            widths, layers_per_block + 1 resnets) -> GroupNorm(1e-6) -> SiLU -> conv_out
 * No scaling_factor is applied here: pipelines multiply/divide by it outside the model.
 */
#include "nn/nn.h"

#include <string.h>

df_status df_vae_init(df_vae *m, const df_vae_config *c, df_init init) {
    memset(m, 0, sizeof *m);
    DF_TRY(df_model_check_widths("AutoencoderKL", c->n_blocks, c->block_out_channels,
                                 c->norm_num_groups, c->in_channels, c->out_channels));
    if (c->latent_channels < 1 || c->latent_channels > DF_MODEL_MAX_CHANNELS ||
        c->layers_per_block < 0 || c->layers_per_block > DF_MODEL_MAX_LAYERS)
        return df_error(
            DF_ERR_INVALID,
            "AutoencoderKL: latent_channels %d (1 to %d), layers_per_block %d (0 to %d)",
            c->latent_channels, DF_MODEL_MAX_CHANNELS, c->layers_per_block, DF_MODEL_MAX_LAYERS);
    int layers[DF_MAX_BLOCKS];
    for (int i = 0; i < c->n_blocks; i++) layers[i] = c->layers_per_block;
    DF_TRY(df_model_check_zero_layers("AutoencoderKL", c->n_blocks, c->block_out_channels, layers));
    m->config = *c;
    df_params *r = &m->params;
    df_params_init_with(r, init);
    char buf[DF_NAME_MAX];
    int nb = c->n_blocks, c0 = c->block_out_channels[0], clast = c->block_out_channels[nb - 1];
    int lat = c->latent_channels;
    df_block_config base = {.groups = c->norm_num_groups,
                            .eps = 1e-6f,
                            .output_scale_factor = 1.0f,
                            .downsample_padding = 0};

    df_conv_mod_init(&m->enc_conv_in, r, "encoder.conv_in", c->in_channels, c0, 3, 1, 1, true);
    int out_ch = c0;
    for (int i = 0; i < nb; i++) {
        df_block_config b = base;
        b.in_channels = out_ch;
        out_ch = c->block_out_channels[i];
        b.out_channels = out_ch;
        b.n_layers = c->layers_per_block;
        b.add_sample = i != nb - 1;
        df_down_block_init(&m->enc_down[i], r,
                           df_name_index(buf, sizeof buf, "encoder", "down_blocks", i), b);
    }
    df_block_config mid = base;
    mid.in_channels = mid.out_channels = clast;
    mid.n_layers = 1;
    mid.attn = DF_BLOCK_ATTN_SPATIAL;
    mid.attn_head_dim = clast;
    df_mid_block_init(&m->enc_mid, r, "encoder.mid_block", mid);
    df_groupnorm_mod_init(&m->enc_norm_out, r, "encoder.conv_norm_out", c->norm_num_groups, clast,
                          1e-6f);
    df_conv_mod_init(&m->enc_conv_out, r, "encoder.conv_out", clast, 2 * lat, 3, 1, 1, true);

    df_conv_mod_init(&m->dec_conv_in, r, "decoder.conv_in", lat, clast, 3, 1, 1, true);
    df_mid_block_init(&m->dec_mid, r, "decoder.mid_block", mid);
    out_ch = clast;
    for (int i = 0; i < nb; i++) {
        df_block_config b = base;
        b.in_channels = out_ch;
        out_ch = c->block_out_channels[nb - 1 - i];
        b.out_channels = out_ch;
        b.n_layers = c->layers_per_block + 1;
        b.add_sample = i != nb - 1;
        df_up_block_init(&m->dec_up[i], r,
                         df_name_index(buf, sizeof buf, "decoder", "up_blocks", i), b);
    }
    df_groupnorm_mod_init(&m->dec_norm_out, r, "decoder.conv_norm_out", c->norm_num_groups, c0,
                          1e-6f);
    df_conv_mod_init(&m->dec_conv_out, r, "decoder.conv_out", c0, c->out_channels, 3, 1, 1, true);

    df_conv_mod_init(&m->quant_conv, r, "quant_conv", 2 * lat, 2 * lat, 1, 1, 0, true);
    df_conv_mod_init(&m->post_quant_conv, r, "post_quant_conv", lat, lat, 1, 1, 0, true);
    return DF_OK;
}

df_status df_vae_check_sample(const df_vae_config *c, const df_tensor *sample) {
    /* each DownEncoderBlock2D downsampler pads one row and needs 3: a side of at least 2 */
    return df_model_check_sides("AutoencoderKL", sample, c->in_channels, 1,
                                1LL << (c->n_blocks - 1));
}

df_status df_vae_check_latents(const df_vae_config *c, const df_tensor *z) {
    return df_model_check_sides("AutoencoderKL (latents)", z, c->latent_channels, 1, 1);
}

void df_vae_free(df_vae *m) {
    df_unet_blocks_free(m->enc_down, &m->enc_mid, NULL, m->config.n_blocks);
    df_unet_blocks_free(NULL, &m->dec_mid, m->dec_up, m->config.n_blocks);
    df_params_free(&m->params);
}

/* Each stage runs in its own scope: what it made dies at its end unless the tape needs it, so
 * without gradients only the current activation outlives a block (a 512x512 decode holds one
 * block's working set, not every block's output). */
void df_vae_encode(df_vae *m, df_tensor *x, df_tensor **mean, df_tensor **logvar) {
    df_tensor *h = df_conv_mod_forward(&m->enc_conv_in, x);
    for (int i = 0; i < m->config.n_blocks; i++) {
        df_scope scope = df_scope_begin();
        h = df_scope_end_keep(scope,
                              df_down_block_forward(&m->enc_down[i], h, NULL, NULL, NULL, NULL));
    }
    df_scope scope = df_scope_begin();
    h = df_mid_block_forward(&m->enc_mid, h, NULL, NULL);
    h = df_conv_mod_forward(&m->enc_conv_out, df_silu(df_norm_mod_forward(&m->enc_norm_out, h)));
    h = df_scope_end_keep(scope, h);
    df_tensor *moments = df_conv_mod_forward(&m->quant_conv, h);
    if (moments->block) moments = df_to_plain(moments);
    df_tensor *parts[2];
    df_chunk(moments, 2, 1, parts);
    *mean = parts[0];
    *logvar = df_clamp(parts[1], -30.0f, 20.0f);
}

df_tensor *df_vae_decode(df_vae *m, df_tensor *z) {
    df_scope scope = df_scope_begin();
    df_tensor *h =
        df_conv_mod_forward(&m->dec_conv_in, df_conv_mod_forward(&m->post_quant_conv, z));
    h = df_scope_end_keep(scope, df_mid_block_forward(&m->dec_mid, h, NULL, NULL));
    for (int i = 0; i < m->config.n_blocks; i++) {
        scope = df_scope_begin();
        h = df_scope_end_keep(scope, df_up_block_forward(&m->dec_up[i], h, NULL, NULL, NULL, NULL));
    }
    scope = df_scope_begin();
    h = df_silu(df_norm_mod_forward(&m->dec_norm_out, h));
    h = df_conv_mod_forward(&m->dec_conv_out, h);
    return df_scope_end_keep(scope, h->block ? df_to_plain(h) : h);
}
