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
    DF_TRY(
        df_unet_check_blocks("UNet2DModel", c->n_blocks, (char(*)[DF_JSON_STR])c->down_block_types,
                             (char(*)[DF_JSON_STR])c->up_block_types, DF_BLOCK_ATTN_TRANSFORMER));
    if (c->dropout != 0)
        return df_error(DF_ERR_UNSUPPORTED, "UNet2DModel: dropout %g (only 0)", c->dropout);
    return DF_OK;
}

df_status df_unet2d_init(df_unet2d *m, const df_unet2d_config *c, df_init init) {
    memset(m, 0, sizeof *m);
    DF_TRY(check_blocks(c));
    m->config = *c;
    df_params *r = &m->params;
    df_params_init_with(r, init);
    char buf[DF_NAME_MAX];
    int c0 = c->block_out_channels[0], temb = 4 * c0, nb = c->n_blocks;
    df_block_config base = df_unet_base_block(temb, c->norm_num_groups, c->norm_eps,
                                              c->resnet_time_scale_shift, c->downsample_padding);

    df_conv_mod_init(&m->conv_in, r, "conv_in", c->in_channels, c0, 3, 1, 1, true);
    df_timestep_mlp_init(&m->time_embedding, r, "time_embedding", c0, temb);

    int out_ch = c0;
    for (int i = 0; i < nb; i++) {
        df_block_config b = base;
        b.in_channels = out_ch;
        out_ch = c->block_out_channels[i];
        b.out_channels = out_ch;
        b.n_layers = c->layers_per_block;
        df_block_type_attn(c->down_block_types[i], &b.attn);
        b.attn_head_dim = c->attention_head_dim ? c->attention_head_dim : out_ch;
        b.add_sample = i != nb - 1;
        df_down_block_init(&m->down[i], r, df_name_index(buf, sizeof buf, "", "down_blocks", i), b);
    }

    df_block_config mid = base;
    mid.in_channels = mid.out_channels = c->block_out_channels[nb - 1];
    mid.n_layers = 1;
    mid.output_scale_factor = c->mid_block_scale_factor;
    mid.attn = c->add_attention ? DF_BLOCK_ATTN_SPATIAL : DF_BLOCK_ATTN_NONE;
    mid.attn_head_dim = c->attention_head_dim ? c->attention_head_dim : mid.in_channels;
    df_mid_block_init(&m->mid, r, "mid_block", mid);

    out_ch = c->block_out_channels[nb - 1];
    for (int i = 0; i < nb; i++) {
        df_block_config b = base;
        b.prev_channels = out_ch;
        out_ch = c->block_out_channels[nb - 1 - i];
        b.out_channels = out_ch;
        b.in_channels = c->block_out_channels[nb - 1 - (i + 1 < nb ? i + 1 : nb - 1)];
        b.n_layers = c->layers_per_block + 1;
        df_block_type_attn(c->up_block_types[i], &b.attn);
        b.attn_head_dim = c->attention_head_dim ? c->attention_head_dim : out_ch;
        b.add_sample = i != nb - 1;
        df_up_block_init(&m->up[i], r, df_name_index(buf, sizeof buf, "", "up_blocks", i), b);
    }

    df_groupnorm_mod_init(&m->conv_norm_out, r, "conv_norm_out", c->norm_num_groups, c0,
                          c->norm_eps);
    df_conv_mod_init(&m->conv_out, r, "conv_out", c0, c->out_channels, 3, 1, 1, true);
    return DF_OK;
}

void df_unet2d_free(df_unet2d *m) {
    df_unet_blocks_free(m->down, &m->mid, m->up, m->config.n_blocks);
    df_params_free(&m->params);
}

df_tensor *df_unet2d_forward(df_unet2d *m, df_tensor *sample, const df_tensor *timestep) {
    const df_unet2d_config *c = &m->config;
    int64_t batch = sample->shape[0];
    DF_ASSERT(sample->ndim == 4 && sample->shape[1] == c->in_channels,
              "UNet2DModel: sample must be (N, %d, H, W)", c->in_channels);
    if (c->center_input_sample) sample = df_add_scalar(df_mul_scalar(sample, 2.0f), -1.0f);
    df_tensor *t_emb = df_timestep_embedding(timestep, (int)batch, c->block_out_channels[0],
                                             c->flip_sin_to_cos, (float)c->freq_shift);
    df_tensor *emb = df_timestep_mlp_forward(&m->time_embedding, t_emb);

    df_conv_mod conv_in = m->conv_in;
    conv_in.p.blocked_out = true; /* activations stay channel-blocked up to conv_out */
    df_tensor *h = df_conv_mod_forward(&conv_in, sample);
    h = df_unet_blocks_forward(m->down, &m->mid, m->up, c->n_blocks, h, emb, NULL);
    h = df_silu(df_norm_mod_forward(&m->conv_norm_out, h));
    h = df_conv_mod_forward(&m->conv_out, h);
    return h->block ? df_to_plain(h) : h;
}
