/* test_config_write.c — the config.json writers of the text-to-image export
 * (nn/model_config_write.c): a UNet2DConditionModel or CLIPTextConfig config read from a fixture
 * (diffusers' / transformers' own files), written, read back and written again gives the same
 * file, so every field we hold survives the round trip; the values are the fixture's. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void setup(void) {
    scratch_dir_new("test_config_write");
}

static void teardown(void) {
    scratch_dir_remove();
}

TestSuite(nn_config_write, .init = setup, .fini = teardown);

static bool same_bytes(const char *a, const char *b) {
    size_t la, lb;
    char *x = read_whole_file(a, &la), *y = read_whole_file(b, &lb);
    bool same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

Test(nn_config_write, unet2d_condition_configs_read_back) {
    static const char *const fixtures[] = {
        "models/unet2dcond_tiny/config.json",     "models/unet2dcond_tiny_linear/config.json",
        "models/unet2dcond_fields_a/config.json", "models/unet2dcond_fields_b/config.json",
        "pipelines/sd1/unet/config.json",         "train/t2i_loss/unet/config.json"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        df_unet2d_cond_config c, back;
        cr_assert_eq(df_unet2d_cond_config_load(fixture_path(fixtures[i]), &c), DF_OK, "%s",
                     df_last_error());
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/a.json", scratch_dir());
        snprintf(b, sizeof b, "%s/b.json", scratch_dir());
        cr_assert_eq(df_unet2d_cond_config_save(&c, a), DF_OK, "%s", df_last_error());
        cr_assert_eq(df_unet2d_cond_config_load(a, &back), DF_OK, "%s: %s", fixtures[i],
                     df_last_error());
        cr_assert_eq(df_unet2d_cond_config_save(&back, b), DF_OK);
        cr_expect(same_bytes(a, b), "%s: the written config does not read back the same",
                  fixtures[i]);
        cr_expect_eq(back.n_blocks, c.n_blocks, "%s", fixtures[i]);
        for (int k = 0; k < c.n_blocks; k++) {
            cr_expect_eq(back.block_out_channels[k], c.block_out_channels[k]);
            cr_expect_eq(back.num_attention_heads[k], c.num_attention_heads[k]);
            cr_expect_eq(back.layers_per_block[k], c.layers_per_block[k]);
            cr_expect_eq(back.cross_attention_dim[k], c.cross_attention_dim[k]);
            cr_expect_str_eq(back.down_block_types[k], c.down_block_types[k]);
            cr_expect_str_eq(back.up_block_types[k], c.up_block_types[k]);
        }
        cr_expect_str_eq(back.mid_block_type, c.mid_block_type);
        cr_expect_eq(back.use_linear_projection, c.use_linear_projection);
        cr_expect_eq(back.sample_size, c.sample_size);
        cr_expect_eq(back.norm_num_groups, c.norm_num_groups);
    }
}

Test(nn_config_write, clip_text_configs_read_back) {
    static const char *const fixtures[] = {"models/clip_text_tiny/config.json",
                                           "models/clip_text_fields/config.json",
                                           "pipelines/sd1/text_encoder/config.json"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        df_json j;
        cr_assert_eq(df_json_load(fixture_path(fixtures[i]), &j), DF_OK, "%s", df_last_error());
        df_clip_text_config c, back;
        cr_assert_eq(df_clip_text_config_from_json(&j, &c), DF_OK, "%s", df_last_error());
        df_json_free(&j);
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/a.json", scratch_dir());
        snprintf(b, sizeof b, "%s/b.json", scratch_dir());
        cr_assert_eq(df_clip_text_config_save(&c, a), DF_OK, "%s", df_last_error());
        cr_assert_eq(df_json_load(a, &j), DF_OK, "%s", df_last_error());
        cr_assert_eq(df_clip_text_config_from_json(&j, &back), DF_OK, "%s", df_last_error());
        df_json_free(&j);
        cr_assert_eq(df_clip_text_config_save(&back, b), DF_OK);
        cr_expect(same_bytes(a, b), "%s: the written config does not read back the same",
                  fixtures[i]);
        cr_expect_eq(back.vocab_size, c.vocab_size);
        cr_expect_eq(back.hidden_size, c.hidden_size);
        cr_expect_eq(back.num_hidden_layers, c.num_hidden_layers);
        cr_expect_eq(back.eos_token_id, c.eos_token_id);
        cr_expect_str_eq(back.hidden_act, c.hidden_act);
        size_t len;
        char *text = read_whole_file(a, &len);
        cr_expect(strstr(text, "\"CLIPTextModel\""), "architectures");
        free(text);
    }
}
