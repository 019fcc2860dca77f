/* resnet.c — diffusers ResnetBlock2D (models/resnet.py, pre-norm, SiLU, no up/down inside):
 *   h = conv1(silu(norm1(x)))
 *   h = h + time_emb_proj(silu(temb))[:, :, None, None]        (time_embedding_norm "default")
 *   h = norm2(h);  scale_shift: h = h * (1 + scale) + shift    (scale, shift = chunk(temb', 2))
 *   h = conv2(silu(h))                                         (dropout 0)
 *   out = (shortcut(x) + h) / output_scale_factor              (shortcut: 1x1 conv when Cin != Cout)
 * With gradient_checkpointing the block is one df_checkpoint segment (recomputed in backward).
 */
#include "nn/nn.h"

void df_resnet_init(df_resnet *m, df_params *r, const char *name, df_resnet_config c) {
    char buf[DF_NAME_MAX];
    df_groupnorm_mod_init(&m->norm1, r, df_name_join(buf, sizeof buf, name, "norm1"), c.groups,
                          c.in_channels, c.eps);
    df_conv_mod_init(&m->conv1, r, df_name_join(buf, sizeof buf, name, "conv1"), c.in_channels,
                     c.out_channels, 3, 1, 1, true);
    m->has_temb = c.temb_channels > 0;
    m->scale_shift = c.scale_shift;
    if (m->has_temb)
        df_linear_mod_init(&m->time_emb_proj, r,
                           df_name_join(buf, sizeof buf, name, "time_emb_proj"), c.temb_channels,
                           c.scale_shift ? 2 * c.out_channels : c.out_channels, true);
    df_groupnorm_mod_init(&m->norm2, r, df_name_join(buf, sizeof buf, name, "norm2"), c.groups,
                          c.out_channels, c.eps);
    df_conv_mod_init(&m->conv2, r, df_name_join(buf, sizeof buf, name, "conv2"), c.out_channels,
                     c.out_channels, 3, 1, 1, true);
    m->has_shortcut = c.in_channels != c.out_channels;
    if (m->has_shortcut)
        df_conv_mod_init(&m->conv_shortcut, r, df_name_join(buf, sizeof buf, name, "conv_shortcut"),
                         c.in_channels, c.out_channels, 1, 1, 0, true);
    m->output_scale_factor = c.output_scale_factor;
    m->gradient_checkpointing = false;
}

/* The block on in = {x, temb (or NULL)}, user = the df_resnet. */
static df_tensor *resnet_run(df_tensor *const *in, const void *user) {
    const df_resnet *m = user;
    df_tensor *x = in[0], *temb = in[1];
    df_scope scope = df_scope_begin();   /* intermediates die here unless the tape needs them */
    if (!x->block) x = df_to_blocked(x); /* the convolutions' layout, kept through the block */
    df_tensor *h = df_conv_mod_forward(&m->conv1, df_silu(df_norm_mod_forward(&m->norm1, x)));
    int64_t n = h->shape[0];
    df_tensor *t = NULL;
    if (m->has_temb && temb) {
        t = df_linear_mod_forward(&m->time_emb_proj, df_silu(temb));
        t = df_reshape(t, DF_DIMS(n, t->shape[1], 1, 1));
        if (!m->scale_shift) h = df_add(h, t);
    }
    h = df_norm_mod_forward(&m->norm2, h);
    if (t && m->scale_shift) {
        df_tensor *parts[2];
        df_chunk(t, 2, 1, parts);
        h = df_add(df_mul(h, df_add_scalar(parts[0], 1.0f)), parts[1]);
    }
    h = df_conv_mod_forward(&m->conv2, df_silu(h));
    df_tensor *skip = m->has_shortcut ? df_conv_mod_forward(&m->conv_shortcut, x) : x;
    df_tensor *out = df_add(skip, h);
    if (m->output_scale_factor != 1.0f) out = df_mul_scalar(out, 1.0f / m->output_scale_factor);
    return df_scope_end_keep(scope, out);
}

df_tensor *df_resnet_forward(const df_resnet *m, df_tensor *x, df_tensor *temb) {
    df_tensor *in[2] = {x, temb};
    return m->gradient_checkpointing ? df_checkpoint(resnet_run, m, 2, in) : resnet_run(in, m);
}
