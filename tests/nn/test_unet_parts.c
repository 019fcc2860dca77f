/* test_unet_parts.c — the UNet body's parts (nn/blocks.c) and a ControlNet's residuals: the down
 * path, mid block and up path called one by one give the body's result bitwise; zero residuals
 * change nothing; residuals of the wrong count or shape are errors naming what they must be.
 * (Parity with diffusers' residual inputs: nn_models/unet2dcond_tiny_residuals.) */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <string.h>

static df_unet2d_cond *load(df_component *comp) {
    fixture_component("unet2dcond_tiny", comp);
    cr_assert(comp->unet2d_cond);
    return comp->unet2d_cond;
}

#define FIX "models/unet2dcond_tiny/inputs.safetensors"

Test(nn_unet_parts, parts_one_by_one_are_the_body) {
    df_component comp;
    df_unet2d_cond *m = load(&comp);
    df_scope s = df_scope_begin();
    int nb = m->config.n_blocks;
    df_tensor *h = df_conv_mod_forward(&m->body.conv_in, fixture_tensor(FIX, "sample"));
    df_tensor *emb = randn_tensor(5, DF_DIMS(2, m->body.time_embedding.linear_2.weight->shape[0]));
    df_tensor *ctx = fixture_tensor(FIX, "encoder_hidden_states");
    df_tensor *whole =
        df_unet_blocks_forward(m->body.down, &m->body.mid, m->body.up, nb, h, emb, ctx);
    df_tensor *skips[DF_UNET_MAX_SKIPS];
    int n_skips;
    df_tensor *x = df_unet_down_forward(m->body.down, nb, h, emb, ctx, skips, &n_skips);
    cr_assert_eq(n_skips, df_unet_skip_count(m->body.down, nb));
    cr_assert_eq(n_skips, 4, "conv_in, block 0's resnet and downsampler, block 1's resnet");
    df_tensor *mid_zero = df_zeros(DF_DTYPE_F32, 4, x->shape); /* the mid block keeps shapes */
    df_tensor *zeros[DF_UNET_MAX_SKIPS];
    for (int i = 0; i < n_skips; i++) zeros[i] = df_zeros(DF_DTYPE_F32, 4, skips[i]->shape);
    x = df_mid_block_forward(&m->body.mid, x, emb, ctx);
    x = df_unet_up_forward(m->body.up, nb, x, emb, ctx, skips, &n_skips);
    cr_assert_eq(n_skips, 0, "the up path takes every skip");
    check_close("parts = body", df_to_plain(x), df_to_plain(whole), 0, 0);

    /* zero residuals leave the result as it was */
    n_skips = df_unet_skip_count(m->body.down, nb);
    df_unet_residuals res = {zeros, n_skips, mid_zero};
    df_tensor *with;
    cr_assert_eq(df_unet_blocks_forward_res(m->body.down, &m->body.mid, m->body.up, nb, h, emb, ctx,
                                            &res, &with),
                 DF_OK, "%s", df_last_error());
    check_close("zero residuals", df_to_plain(with), df_to_plain(whole), 0, 0);

    /* a missing residual, a wrong shape, no mid residual */
    res.n_down = n_skips - 1;
    cr_assert_eq(df_unet_blocks_forward_res(m->body.down, &m->body.mid, m->body.up, nb, h, emb, ctx,
                                            &res, &with),
                 DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "takes 4"), "%s", df_last_error());
    res.n_down = n_skips;
    zeros[2] = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 32, 8, 8));
    cr_assert_eq(df_unet_blocks_forward_res(m->body.down, &m->body.mid, m->body.up, nb, h, emb, ctx,
                                            &res, &with),
                 DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "down_block_additional_residuals 2") &&
                  strstr(df_last_error(), "[2, 32, 4, 4]"),
              "%s", df_last_error());
    df_scope_end(s);
    df_component_free(&comp);
}

Test(nn_unet_parts, the_component_refuses_down_residuals_alone) {
    df_component comp;
    load(&comp);
    df_scope s = df_scope_begin();
    df_named in[4] = {
        {"sample", fixture_tensor(FIX, "sample")},
        {"timestep", fixture_tensor(FIX, "timestep")},
        {"encoder_hidden_states", fixture_tensor(FIX, "encoder_hidden_states")},
        {"down_block_additional_residuals.0", df_zeros(DF_DTYPE_F32, DF_DIMS(2, 32, 8, 8))}};
    df_named out[DF_COMPONENT_MAX_OUTPUTS];
    int n_out;
    cr_assert_eq(df_component_forward(&comp, in, 4, out, &n_out), DF_ERR_UNSUPPORTED);
    cr_assert(strstr(df_last_error(), "T2I-Adapter"), "%s", df_last_error());
    df_scope_end(s);
    df_component_free(&comp);
}
