/* test_controlnet.c — ControlNetModel beyond the parity fixtures (nn_models/controlnet_tiny*):
 * from_unet writes the config diffusers' from_unet writes (field for field) and copies the
 * UNet's conv_in, time embedding, down and mid blocks, zeros the zero convolutions (so a fresh
 * ControlNet leaves the UNet's output as it is); the config round-trips; bad inputs are errors
 * naming what they must be: a control image of a size the embedding cannot bring to the
 * sample's, a ControlNet made for another UNet, config fields we do not implement. */
#include "nn/controlnet.h"
#include "tests/common/check.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void load_unet(df_component *c) {
    cr_assert_eq(df_component_load(fixture_path("models/unet2dcond_tiny"), c), DF_OK, "%s",
                 df_last_error());
    cr_assert(c->unet2d_cond);
}

static cJSON *read_json(const char *path) {
    size_t len;
    char *text = read_whole_file(path, &len);
    cr_assert(text, "%s: cannot read", path);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    cr_assert(j, "%s: not JSON", path);
    return j;
}

Test(nn_controlnet, from_unet_config_is_diffusers) {
    df_component unet;
    load_unet(&unet);
    df_controlnet_config c;
    cr_assert_eq(df_controlnet_config_from_unet(&unet.unet2d_cond->config, (int[]){8, 16}, 2, &c),
                 DF_OK, "%s", df_last_error());
    const char *dir = scratch_dir_new("controlnet_config");
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cr_assert_eq(df_controlnet_config_save(&c, path), DF_OK, "%s", df_last_error());
    cJSON *got = read_json(path),
          *want = read_json(fixture_path("models/controlnet_from_unet.json"));
    cr_expect(cJSON_Compare(got, want, true), "from_unet's config.json differs from diffusers'");
    for (cJSON *w = want->child; w; w = w->next) {
        cJSON *g = cJSON_GetObjectItemCaseSensitive(got, w->string);
        cr_expect(g && cJSON_Compare(g, w, true), "field %s differs", w->string);
    }
    cJSON_Delete(got);
    cJSON_Delete(want);
    /* read back: the same config */
    df_controlnet_config back;
    cr_assert_eq(df_controlnet_config_load(path, &back), DF_OK, "%s", df_last_error());
    cr_expect_eq(back.n_cond_blocks, 2);
    cr_expect_eq(back.layers_per_block, 1);
    cr_expect_eq(back.heads[1], 4);
    cr_expect_eq(back.cross_attention_dim, 32);
    scratch_dir_remove();
    df_component_free(&unet);
}

/* from_unet copies the shared parts and zeros the rest: the residuals are zero, and the UNet
 * with them gives what it gives alone */
Test(nn_controlnet, from_unet_copies_and_zeros) {
    df_component unet;
    load_unet(&unet);
    df_philox gen;
    df_philox_init(&gen, 3, 0);
    df_controlnet cn;
    cr_assert_eq(df_controlnet_from_unet(&cn, unet.unet2d_cond, (int[]){8, 16}, 2, &gen), DF_OK,
                 "%s", df_last_error());
    int copied = 0, zero = 0;
    for (int i = 0; i < cn.params.n; i++) {
        const df_param *p = &cn.params.items[i];
        df_tensor *u = df_params_find(&unet.unet2d_cond->params, p->name);
        if (u) {
            check_close(p->name, p->tensor, u, 0, 0);
            copied++;
        } else if (strncmp(p->name, "controlnet_down_blocks.", 23) == 0 ||
                   strncmp(p->name, "controlnet_mid_block.", 21) == 0 ||
                   strncmp(p->name, "controlnet_cond_embedding.conv_out.", 35) == 0) {
            for (int64_t k = 0; k < p->tensor->numel; k++)
                cr_assert_eq(df_f32(p->tensor)[k], 0.0f, "%s is not zero", p->name);
            zero++;
        }
    }
    cr_expect(copied > 20 && zero == 2 * 5 + 2, "%d copied, %d zero", copied, zero);
    /* 4 skips + mid, each weight and bias, plus conditioning conv_out: 12 zero tensors */

    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(2, 4, 8, 8)), *ctx = randn_tensor(2, DF_DIMS(2, 5, 32));
    df_tensor *cond = randn_tensor(3, DF_DIMS(2, 3, 16, 16));
    df_tensor *t = df_full(DF_DTYPE_I64, 0, NULL, 500);
    cr_assert_eq(df_controlnet_check_inputs(&cn.config, x, ctx, cond), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(df_controlnet_check_unet(&cn.config, &unet.unet2d_cond->config), DF_OK);
    df_tensor *down[DF_UNET_MAX_SKIPS], *mid, *with, *without;
    int nd;
    df_controlnet_forward(&cn, x, t, ctx, cond, 1.0f, false, down, &nd, &mid);
    cr_assert_eq(nd, 4);
    df_unet_residuals res = {down, nd, mid};
    cr_assert_eq(df_unet2d_cond_forward_res(unet.unet2d_cond, x, t, ctx, &res, &with), DF_OK, "%s",
                 df_last_error());
    without = df_unet2d_cond_forward(unet.unet2d_cond, x, t, ctx);
    check_close("zero ControlNet", with, without, 0, 0);
    df_scope_end(s);
    df_controlnet_free(&cn);
    df_component_free(&unet);
}

Test(nn_controlnet, bad_inputs_are_named) {
    df_component comp;
    cr_assert_eq(df_component_load(fixture_path("models/controlnet_tiny"), &comp), DF_OK, "%s",
                 df_last_error());
    cr_assert(comp.controlnet);
    const df_controlnet_config *c = &comp.controlnet->config;
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(2, 4, 8, 8)), *ctx = randn_tensor(2, DF_DIMS(2, 5, 32));
    /* a control image of another size: 8x8 embeds to 4x4, not the sample's 8x8 */
    expect_status(df_controlnet_check_inputs(c, x, ctx, randn_tensor(3, DF_DIMS(2, 3, 8, 8))),
                  DF_ERR_INVALID, "'controlnet_cond' must be F32 (2, 3, 16, 16)");
    expect_status(df_controlnet_check_inputs(c, x, ctx, randn_tensor(3, DF_DIMS(2, 1, 16, 16))),
                  DF_ERR_INVALID, "controlnet_cond");
    expect_status(df_controlnet_check_inputs(c, x, randn_tensor(2, DF_DIMS(2, 5, 16)),
                                             randn_tensor(3, DF_DIMS(2, 3, 16, 16))),
                  DF_ERR_INVALID, "encoder_hidden_states");
    /* a ControlNet for another UNet: the sd1 pipeline's UNet has widths 16, 32 */
    df_unet2d_cond_config other = df_unet2d_cond_config_default();
    cr_assert_eq(df_unet2d_cond_config_load(fixture_path("pipelines/sd1/unet/config.json"), &other),
                 DF_OK, "%s", df_last_error());
    expect_status(df_controlnet_check_unet(c, &other), DF_ERR_INVALID,
                  "block_out_channels [32, 64]");
    expect_status(df_controlnet_check_unet(c, &other), DF_ERR_INVALID,
                  "the UNet has in_channels 4, block_out_channels [16, 32]");
    /* the component names a missing input */
    df_named in[] = {{"sample", x},
                     {"timestep", df_full(DF_DTYPE_I64, 0, NULL, 3)},
                     {"encoder_hidden_states", ctx}};
    df_named out[DF_COMPONENT_MAX_OUTPUTS];
    int n_out;
    expect_status(df_component_forward(&comp, in, 3, out, &n_out), DF_ERR_NOTFOUND,
                  "'controlnet_cond' is missing");
    df_scope_end(s);
    df_component_free(&comp);
}

Test(nn_controlnet, config_fields_refused) {
    static const struct {
        const char *json, *needle;
    } cases[] = {
        {"{\"global_pool_conditions\": true}", "global_pool_conditions"},
        {"{\"class_embed_type\": \"timestep\"}", "class_embed_type"},
        {"{\"addition_embed_type\": \"text_time\"}", "addition_embed_type"},
        {"{\"controlnet_conditioning_channel_order\": \"rbg\"}",
         "controlnet_conditioning_channel_order"},
        {"{\"layers_per_block\": [1, 2]}", "layers_per_block"},
        {"{\"conditioning_embedding_out_channels\": []}", "conditioning_embedding_out_channels"},
        {"{\"block_out_channels\": [32, 64]}", "down_block_types (4) and block_out_channels (2)"},
        {"{\"attention_head_dim\": [1, 2, 3]}", "attention_head_dim"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        df_json j;
        cr_assert_eq(df_json_parse(cases[i].json, strlen(cases[i].json), "cn.json", &j), DF_OK);
        df_controlnet_config c;
        df_status st = df_controlnet_config_from_json(&j, &c);
        df_json_free(&j);
        cr_expect(st != DF_OK && strstr(df_last_error(), cases[i].needle) &&
                      strstr(df_last_error(), "cn.json"),
                  "%s: %s", cases[i].json, df_last_error());
    }
}

/* a UNet a ControlNet cannot copy: per-block layer counts */
Test(nn_controlnet, from_unet_refuses_per_block_layers) {
    df_unet2d_cond_config u = df_unet2d_cond_config_default();
    u.layers_per_block[1] = 3;
    df_controlnet_config c;
    expect_status(df_controlnet_config_from_unet(&u, NULL, 0, &c), DF_ERR_UNSUPPORTED,
                  "layers_per_block");
}
