/* unet_body.c — the one UNet body that UNet2DModel and UNet2DConditionModel (and the coming
 * ControlNetModel's down half) are made of, as diffusers' modules name it: conv_in,
 * time_embedding, down_blocks.i, mid_block, up_blocks.i, conv_norm_out, conv_out. A ControlNet's
 * body is the down half only (df_unet_body_config.down_only: no up blocks and no head).
 *
 * The model decides each block's kind and layer count (df_unet_body_config: the per-block
 * df_block_config with n_layers, attention and transformer settings); the body wires the widths
 * as diffusers' UNets do: down block i takes the previous width to block_out_channels[i] (a
 * downsampler after every block but the last); the mid block keeps the last width; up block i
 * (reversed widths) takes the previous up block's output plus the skips and ends at
 * block_out_channels[n - 1 - i] (an upsampler after every block but the last). Parameters are
 * registered in diffusers' module order, so random initialisation and saved files keep it.
 * The forward's parts: conv_in (activations channel-blocked from there), the blocks
 * (nn/blocks.c: down path, mid, up path, with a ControlNet's residuals), and the out head.
 */
#include "nn/nn.h"

#include <string.h>

void df_unet_body_init(df_unet_body *b, df_params *r, const df_unet_body_config *c) {
    char buf[DF_NAME_MAX];
    int nb = c->n_blocks, c0 = c->channels[0];
    b->n_blocks = nb;
    df_conv_mod_init(&b->conv_in, r, "conv_in", c->in_channels, c0, c->conv_in_kernel, 1,
                     (c->conv_in_kernel - 1) / 2, true);
    df_timestep_mlp_init(&b->time_embedding, r, "time_embedding", c0, c->temb_channels);

    int out_ch = c0;
    for (int i = 0; i < nb; i++) {
        df_block_config d = c->down[i];
        d.in_channels = out_ch;
        out_ch = d.out_channels = c->channels[i];
        d.add_sample = i != nb - 1;
        df_down_block_init(&b->down[i], r, df_name_index(buf, sizeof buf, "", "down_blocks", i), d);
    }

    b->has_mid = c->has_mid;
    if (b->has_mid) {
        df_block_config m = c->mid;
        m.in_channels = m.out_channels = c->channels[nb - 1];
        df_mid_block_init(&b->mid, r, "mid_block", m);
    }

    if (c->down_only) return;
    out_ch = c->channels[nb - 1];
    for (int i = 0; i < nb; i++) {
        df_block_config u = c->up[i];
        u.prev_channels = out_ch;
        out_ch = u.out_channels = c->channels[nb - 1 - i];
        u.in_channels = c->channels[nb - 1 - (i + 1 < nb ? i + 1 : nb - 1)];
        u.add_sample = i != nb - 1;
        df_up_block_init(&b->up[i], r, df_name_index(buf, sizeof buf, "", "up_blocks", i), u);
    }

    df_groupnorm_mod_init(&b->conv_norm_out, r, "conv_norm_out", c->norm_groups, c0, c->norm_eps);
    df_conv_mod_init(&b->conv_out, r, "conv_out", c0, c->out_channels, c->conv_out_kernel, 1,
                     (c->conv_out_kernel - 1) / 2, true);
}

void df_unet_body_free(df_unet_body *b) {
    df_unet_blocks_free(b->down, b->has_mid ? &b->mid : NULL, b->up, b->n_blocks);
}

static void block_set_checkpointing(df_block *b, bool on) {
    for (int i = 0; i < b->n_resnets; i++) b->resnets[i].gradient_checkpointing = on;
    if (b->attn == DF_BLOCK_ATTN_TRANSFORMER)
        for (int i = 0; i < b->n_attn; i++) b->transformers[i].gradient_checkpointing = on;
}

void df_unet_body_set_gradient_checkpointing(df_unet_body *b, bool on) {
    for (int i = 0; i < b->n_blocks; i++) {
        block_set_checkpointing(&b->down[i], on);
        block_set_checkpointing(&b->up[i], on);
    }
    if (b->has_mid) block_set_checkpointing(&b->mid, on);
}

df_tensor *df_unet_body_conv_in(const df_unet_body *b, df_tensor *sample) {
    df_conv_mod conv_in = b->conv_in;
    conv_in.p.blocked_out = true; /* activations stay channel-blocked up to conv_out */
    return df_conv_mod_forward(&conv_in, sample);
}

df_status df_unet_body_blocks(const df_unet_body *b, df_tensor *h, df_tensor *emb,
                              df_tensor *context, const df_unet_residuals *res, df_tensor **out) {
    return df_unet_blocks_forward_res(b->down, b->has_mid ? &b->mid : NULL, b->up, b->n_blocks, h,
                                      emb, context, res, out);
}

df_tensor *df_unet_body_out(const df_unet_body *b, df_tensor *h) {
    h = df_silu(df_norm_mod_forward(&b->conv_norm_out, h));
    h = df_conv_mod_forward(&b->conv_out, h);
    return h->block ? df_to_plain(h) : h;
}
