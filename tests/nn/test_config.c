/* test_config.c — config.json readers and the registry's loading rules: bad configs and bad
 * weight files are one clean error naming the file and the field or tensor; legacy attention
 * names and unexpected keys are handled as diffusers does. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void setup(void) {
    scratch_dir_new("test_config");
}

static void teardown(void) {
    scratch_dir_remove();
}

TestSuite(nn_config, .init = setup, .fini = teardown);

Test(nn_config, defaults_when_fields_absent) {
    df_unet2d_config c;
    cr_assert_eq(df_unet2d_config_load(scratch_write("config.json", "{}"), &c), DF_OK);
    cr_assert_eq(c.n_blocks, 4);
    cr_assert_eq(c.block_out_channels[3], 896);
    cr_assert_eq(c.attention_head_dim, 8);
    cr_assert_str_eq(c.down_block_types[1], "AttnDownBlock2D");
    /* null attention_head_dim means one full-width head */
    cr_assert_eq(
        df_unet2d_config_load(scratch_write("c2.json", "{\"attention_head_dim\": null}"), &c),
        DF_OK);
    cr_assert_eq(c.attention_head_dim, 0);
}

Test(nn_config, heads_from_attention_head_dim) {
    df_unet2d_cond_config c;
    const char *p = scratch_write(
        "config.json", "{\"attention_head_dim\": [5, 10, 20, 20], \"cross_attention_dim\": 1024}");
    cr_assert_eq(df_unet2d_cond_config_load(p, &c), DF_OK, "%s", df_last_error());
    cr_assert_eq(c.num_attention_heads[0], 5);
    cr_assert_eq(c.num_attention_heads[3], 20);
    cr_assert_eq(c.cross_attention_dim[2], 1024);
}

Test(nn_config, wrong_type_names_file_and_field) {
    df_unet2d_config c;
    expect_status(
        df_unet2d_config_load(scratch_write("config.json", "{\"layers_per_block\": \"two\"}"), &c),
        DF_ERR_FORMAT, "'layers_per_block'");
    cr_assert(strstr(df_last_error(), "config.json"));
    expect_status(
        df_unet2d_config_load(scratch_write("c.json", "{\"block_out_channels\": [32, 1.5]}"), &c),
        DF_ERR_FORMAT, "'block_out_channels'");
    expect_status(df_unet2d_config_load(scratch_write("c.json", "{\"norm_eps\": true}"), &c),
                  DF_ERR_FORMAT, "'norm_eps'");
}

Test(nn_config, inconsistent_lists) {
    df_unet2d_config c;
    expect_status(
        df_unet2d_config_load(scratch_write("c.json", "{\"block_out_channels\": [32, 64]}"), &c),
        DF_ERR_FORMAT, "same non-zero length");
    expect_status(
        df_unet2d_config_load(scratch_write("c.json", "{\"block_out_channels\": [30, 60, 90, 120], "
                                                      "\"norm_num_groups\": 32}"),
                              &c),
        DF_ERR_FORMAT, "'norm_num_groups'");
}

Test(nn_config, unsupported_features_refused) {
    df_unet2d_cond_config c;
    expect_status(df_unet2d_cond_config_load(
                      scratch_write("c.json", "{\"class_embed_type\": \"timestep\"}"), &c),
                  DF_ERR_UNSUPPORTED, "'class_embed_type'");
    df_vae_config v;
    expect_status(df_vae_config_load(scratch_write("c.json", "{\"act_fn\": \"relu\"}"), &v),
                  DF_ERR_UNSUPPORTED, "'act_fn'");
}

Test(nn_config, malformed_json_gives_line) {
    df_vae_config v;
    expect_status(df_vae_config_load(scratch_write("c.json", "{\n\"a\": 1,\n\"b\": }"), &v),
                  DF_ERR_FORMAT, "c.json:3");
    expect_status(df_vae_config_load(scratch_write("c.json", "[1, 2]"), &v), DF_ERR_FORMAT,
                  "not a JSON object");
    char missing[300];
    snprintf(missing, sizeof missing, "%s/absent.json", scratch_dir());
    expect_status(df_vae_config_load(missing, &v), DF_ERR_IO, "absent.json");
}

/* A two-parameter registry and files that differ from it in one way each. */
static void build_registry(df_params *r) {
    df_params_init(r, NULL);
    df_params_add(r, "mid_block.attentions.0", "to_q.weight", DF_DIMS(2, 2));
    df_params_add(r, "conv_in", "weight", DF_DIMS(3));
}

static const char *save(const char *file, int n, const char **names, df_tensor **ts) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", scratch_dir(), file);
    cr_assert_eq(df_st_save(path, n, names, (const df_tensor *const *)ts, 0, NULL, NULL), DF_OK);
    return path;
}

Test(nn_config, load_rules) {
    df_params r;
    build_registry(&r);
    df_tensor *a = df_full(DF_DTYPE_F32, DF_DIMS(2, 2), 3.0),
              *b = df_full(DF_DTYPE_F32, DF_DIMS(3), 4.0);
    df_tensor *wrong = df_zeros(DF_DTYPE_F32, DF_DIMS(4));

    /* legacy name `query` maps to `to_q`; an extra key is counted, not fatal */
    df_tensor *extra = df_zeros(DF_DTYPE_F32, DF_DIMS(1));
    int unexpected = -1;
    const char *ok = save(
        "legacy.safetensors", 3,
        (const char *[]){"mid_block.attentions.0.query.weight", "conv_in.weight", "something.else"},
        (df_tensor *[]){a, b, extra});
    cr_assert_eq(df_params_load(&r, ok, &unexpected), DF_OK, "%s", df_last_error());
    cr_assert_eq(unexpected, 1);
    cr_assert_eq(df_tensor_get(df_params_find(&r, "mid_block.attentions.0.to_q.weight"), 3), 3.0);

    const char *missing =
        save("missing.safetensors", 1, (const char *[]){"conv_in.weight"}, (df_tensor *[]){b});
    expect_status(df_params_load(&r, missing, NULL), DF_ERR_NOTFOUND,
                  "mid_block.attentions.0.to_q.weight");
    cr_assert(strstr(df_last_error(), "missing.safetensors"));

    const char *shape =
        save("shape.safetensors", 2,
             (const char *[]){"mid_block.attentions.0.to_q.weight", "conv_in.weight"},
             (df_tensor *[]){a, wrong});
    expect_status(df_params_load(&r, shape, NULL), DF_ERR_FORMAT, "'conv_in.weight' has shape [4]");
    df_tensor_free(a);
    df_tensor_free(b);
    df_tensor_free(wrong);
    df_tensor_free(extra);
    df_params_free(&r);
}

Test(nn_config, unet2d_config_round_trip) {
    df_unet2d_config c, back;
    cr_assert_eq(df_unet2d_config_load(fixture_path("models/unet2d_tiny/config.json"), &c), DF_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", scratch_dir());
    cr_assert_eq(df_unet2d_config_save(&c, path), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_unet2d_config_load(path, &back), DF_OK, "%s", df_last_error());
    cr_assert_eq(memcmp(&c, &back, sizeof c), 0, "config changed in a save/load round trip");
    /* the written file has the same keys and values as the one diffusers wrote */
    df_json a, b;
    cr_assert_eq(df_json_load(fixture_path("models/unet2d_tiny/config.json"), &a), DF_OK);
    cr_assert_eq(df_json_load(path, &b), DF_OK);
    cr_assert(cJSON_Compare((const cJSON *)a.root, (const cJSON *)b.root, true),
              "written config.json differs from diffusers'");
    df_json_free(&a);
    df_json_free(&b);
}
