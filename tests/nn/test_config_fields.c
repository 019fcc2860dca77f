/* test_config_fields.c — the config fields of issue 13 / 23 that diffusers v0.21.4 takes and we
 * used to refuse, misbuild or abort on: sample_size as [height, width]; JSON null meaning None
 * (no mid block) or refused where None has no meaning (norm_num_groups); the mid-block attention
 * without group_norm under resnet_time_scale_shift "scale_shift"; ada_group / spatial refused by
 * name; only_cross_attention as a list; absurd sizes refused before any allocation (and a
 * config whose shapes disagree with its weights file refused before the model is allocated);
 * spatial input sizes each model cannot take returned as errors by df_component_forward.
 * Every case must return an error, never abort. Parity of the honoured fields with diffusers
 * is in test_models.c. Widths here are multiples of 4 and 12, not of 8 or 16 where it matters
 * (the channel-block fallback runs too). */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void setup(void) {
    scratch_dir_new("test_fields");
}

static void teardown(void) {
    scratch_dir_remove();
}

TestSuite(nn_config_fields, .init = setup, .fini = teardown);

static df_status parse_unet2d(const char *text, df_unet2d_config *c) {
    df_json j;
    DF_TRY(df_json_parse(text, strlen(text), "unet/config.json", &j));
    df_status st = df_unet2d_config_from_json(&j, c);
    df_json_free(&j);
    return st;
}

static df_status parse_cond(const char *text, df_unet2d_cond_config *c) {
    df_json j;
    DF_TRY(df_json_parse(text, strlen(text), "unet/config.json", &j));
    df_status st = df_unet2d_cond_config_from_json(&j, c);
    df_json_free(&j);
    return st;
}

static df_status parse_vae(const char *text, df_vae_config *c) {
    df_json j;
    DF_TRY(df_json_parse(text, strlen(text), "vae/config.json", &j));
    df_status st = df_vae_config_from_json(&j, c);
    df_json_free(&j);
    return st;
}

#define TINY_UNET2D                                                                                \
    "\"block_out_channels\": [12, 24], \"layers_per_block\": 1, \"norm_num_groups\": 4, "          \
    "\"attention_head_dim\": 4, \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"], "    \
    "\"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"]"

#define TINY_COND                                                                                  \
    "\"block_out_channels\": [12, 24], \"layers_per_block\": 1, \"norm_num_groups\": 4, "          \
    "\"attention_head_dim\": 2, \"cross_attention_dim\": 12, "                                     \
    "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"DownBlock2D\"], "                          \
    "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"]"

Test(nn_config_fields, sample_size_int_list_or_null) {
    df_unet2d_config u;
    cr_assert_eq(parse_unet2d("{\"sample_size\": [8, 16]}", &u), DF_OK, "%s", df_last_error());
    cr_assert(u.sample_size == 8 && u.sample_width == 16);
    cr_assert_eq(parse_unet2d("{\"sample_size\": 32}", &u), DF_OK);
    cr_assert(u.sample_size == 32 && u.sample_width == 0);
    cr_assert_eq(parse_unet2d("{\"sample_size\": null}", &u), DF_OK);
    cr_assert(u.sample_size == 0);
    df_unet2d_cond_config c;
    cr_assert_eq(parse_cond("{\"sample_size\": [96, 64]}", &c), DF_OK, "%s", df_last_error());
    cr_assert(c.sample_size == 96 && c.sample_width == 64);
    df_vae_config v;
    cr_assert_eq(parse_vae("{\"sample_size\": [512, 768]}", &v), DF_OK, "%s", df_last_error());
    cr_assert(v.sample_size == 512 && v.sample_width == 768);
    expect_status(parse_unet2d("{\"sample_size\": [8, 16, 4]}", &u), DF_ERR_FORMAT, "sample_size");
    expect_status(parse_unet2d("{\"sample_size\": [8]}", &u), DF_ERR_FORMAT, "sample_size");
    expect_status(parse_cond("{\"sample_size\": -3}", &c), DF_ERR_FORMAT, "sample_size");

    /* the list form survives a save */
    cr_assert_eq(parse_unet2d("{\"sample_size\": [8, 16]}", &u), DF_OK);
    const char *path = scratch_write("saved.json", "");
    cr_assert_eq(df_unet2d_config_save(&u, path), DF_OK, "%s", df_last_error());
    df_unet2d_config back;
    cr_assert_eq(df_unet2d_config_load(path, &back), DF_OK, "%s", df_last_error());
    cr_assert(back.sample_size == 8 && back.sample_width == 16);
}

Test(nn_config_fields, scale_shift_mid_attention_has_no_group_norm) {
    df_unet2d_config c;
    cr_assert_eq(
        parse_unet2d("{" TINY_UNET2D ", \"resnet_time_scale_shift\": \"scale_shift\"}", &c), DF_OK,
        "%s", df_last_error());
    df_unet2d m;
    cr_assert_eq(df_unet2d_init(&m, &c, (df_init){.shapes_only = true}), DF_OK, "%s",
                 df_last_error());
    cr_assert_null(df_params_find(&m.params, "mid_block.attentions.0.group_norm.weight"));
    cr_assert_not_null(df_params_find(&m.params, "mid_block.attentions.0.to_q.weight"));
    /* AttnDownBlock2D keeps its group_norm whatever the time scale shift */
    cr_assert_not_null(df_params_find(&m.params, "down_blocks.1.attentions.0.group_norm.weight"));
    df_tensor *p = df_params_find(&m.params, "mid_block.resnets.0.time_emb_proj.weight");
    cr_assert(p && p->shape[0] == 2 * 24);
    df_unet2d_free(&m);

    cr_assert_eq(parse_unet2d("{" TINY_UNET2D "}", &c), DF_OK);
    cr_assert_eq(df_unet2d_init(&m, &c, (df_init){.shapes_only = true}), DF_OK);
    cr_assert_not_null(df_params_find(&m.params, "mid_block.attentions.0.group_norm.weight"));
    df_unet2d_free(&m);
}

Test(nn_config_fields, time_scale_shift_values_refused_by_name) {
    df_unet2d_config u;
    df_unet2d_cond_config c;
    expect_status(parse_unet2d("{\"resnet_time_scale_shift\": \"ada_group\"}", &u),
                  DF_ERR_UNSUPPORTED, "'ada_group'");
    expect_status(parse_cond("{\"resnet_time_scale_shift\": \"spatial\"}", &c), DF_ERR_UNSUPPORTED,
                  "'spatial'");
    expect_status(parse_cond("{\"resnet_time_scale_shift\": \"foo\"}", &c), DF_ERR_FORMAT,
                  "resnet_time_scale_shift");
}

Test(nn_config_fields, null_means_none_or_is_refused) {
    df_unet2d_cond_config c;
    cr_assert_eq(parse_cond("{" TINY_COND ", \"mid_block_type\": null}", &c), DF_OK, "%s",
                 df_last_error());
    cr_assert_str_eq(c.mid_block_type, "");
    df_unet2d_cond m;
    cr_assert_eq(df_unet2d_cond_init(&m, &c, (df_init){.shapes_only = true}), DF_OK);
    cr_assert(!m.body.has_mid);
    for (int i = 0; i < m.params.n; i++)
        cr_assert(strncmp(m.params.items[i].name, "mid_block.", 10) != 0, "%s",
                  m.params.items[i].name);
    df_unet2d_cond_free(&m);

    /* diffusers cannot build GroupNorm(None): refused, naming the field */
    df_unet2d_config u;
    df_vae_config v;
    expect_status(parse_cond("{\"norm_num_groups\": null}", &c), DF_ERR_FORMAT,
                  "'norm_num_groups'");
    expect_status(parse_unet2d("{\"norm_num_groups\": null}", &u), DF_ERR_FORMAT,
                  "'norm_num_groups'");
    expect_status(parse_vae("{\"norm_num_groups\": null}", &v), DF_ERR_FORMAT, "'norm_num_groups'");
    expect_status(parse_unet2d("{\"in_channels\": null}", &u), DF_ERR_FORMAT, "'in_channels'");
    expect_status(parse_cond("{\"layers_per_block\": null}", &c), DF_ERR_FORMAT,
                  "'layers_per_block'");
    /* fields whose None diffusers accepts */
    cr_assert_eq(parse_cond("{\"time_embedding_dim\": null, \"class_embed_type\": null, "
                            "\"cross_attention_norm\": null, \"num_attention_heads\": null}",
                            &c),
                 DF_OK, "%s", df_last_error());
    cr_assert_eq(parse_unet2d("{\"attention_head_dim\": null, \"class_embed_type\": null}", &u),
                 DF_OK);
    cr_assert_eq(u.attention_head_dim, 0);
    /* a flag's null is false: diffusers tests it as Python's falsy None */
    cr_assert_eq(parse_unet2d("{\"flip_sin_to_cos\": null, \"add_attention\": null}", &u), DF_OK);
    cr_assert(!u.flip_sin_to_cos && !u.add_attention);
    cr_assert_eq(
        parse_cond("{\"use_linear_projection\": null, \"dual_cross_attention\": null}", &c), DF_OK,
        "%s", df_last_error());
    cr_assert(!c.use_linear_projection);
}

Test(nn_config_fields, only_cross_attention_bool_or_list) {
    df_unet2d_cond_config c;
    cr_assert_eq(parse_cond("{" TINY_COND ", \"only_cross_attention\": [true, false]}", &c), DF_OK,
                 "%s", df_last_error());
    cr_assert(c.only_cross_attention[0] && !c.only_cross_attention[1]);
    cr_assert_eq(parse_cond("{" TINY_COND ", \"only_cross_attention\": true}", &c), DF_OK);
    cr_assert(c.only_cross_attention[0] && c.only_cross_attention[1]);
    expect_status(parse_cond("{" TINY_COND ", \"only_cross_attention\": [true]}", &c),
                  DF_ERR_FORMAT, "only_cross_attention");
    expect_status(parse_cond("{" TINY_COND ", \"only_cross_attention\": [1, 0]}", &c),
                  DF_ERR_FORMAT, "only_cross_attention");
}

Test(nn_config_fields, unsupported_values_refused_by_name) {
    df_unet2d_cond_config c;
    static const char *const cases[][2] = {
        {"{\"num_attention_heads\": 8}", "'num_attention_heads'"},
        {"{\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"}", "'mid_block_type'"},
        {"{\"attention_type\": \"gated\"}", "'attention_type'"},
        {"{\"class_embeddings_concat\": true}", "'class_embeddings_concat'"},
        {"{\"time_cond_proj_dim\": 256}", "'time_cond_proj_dim'"},
        {"{\"addition_embed_type\": \"text_time\"}", "'addition_embed_type'"},
        {"{\"time_embedding_act_fn\": \"mish\"}", "'time_embedding_act_fn'"},
        {"{\"time_embedding_type\": \"fourier\"}", "'time_embedding_type'"},
        {"{\"dual_cross_attention\": true}", "'dual_cross_attention'"},
        {"{\"dropout\": 0.1}", "'dropout'"},
        {"{\"act_fn\": \"mish\"}", "'act_fn'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        df_status st = parse_cond(cases[i][0], &c);
        cr_assert_eq(st, DF_ERR_UNSUPPORTED, "%s: %s", cases[i][0], df_last_error());
        cr_assert(strstr(df_last_error(), cases[i][1]), "%s: %s", cases[i][0], df_last_error());
        cr_assert(strstr(df_last_error(), "unet/config.json"), "%s", df_last_error());
    }
    df_unet2d_config u;
    expect_status(parse_unet2d("{\"down_block_types\": [\"SkipDownBlock2D\", \"DownBlock2D\", "
                               "\"DownBlock2D\", \"DownBlock2D\"]}",
                               &u),
                  DF_ERR_UNSUPPORTED,
                  "unet/config.json: field 'down_block_types' / "
                  "'up_block_types': UNet2DModel: down block type "
                  "'SkipDownBlock2D'");
    expect_status(parse_unet2d("{\"downsample_type\": \"resnet\"}", &u), DF_ERR_UNSUPPORTED,
                  "downsample_type");
    expect_status(parse_unet2d("{\"num_class_embeds\": 10}", &u), DF_ERR_UNSUPPORTED,
                  "num_class_embeds");
    /* fields that only refused blocks read: accepted, no effect (as upstream) */
    cr_assert_eq(parse_cond("{\"resnet_skip_time_act\": true, \"resnet_out_scale_factor\": 2.0, "
                            "\"cross_attention_norm\": \"group_norm\", "
                            "\"mid_block_only_cross_attention\": true, "
                            "\"projection_class_embeddings_input_dim\": 2816}",
                            &c),
                 DF_OK, "%s", df_last_error());
}

Test(nn_config_fields, absurd_sizes_refused_before_allocating) {
    static const char *const unet2d_cases[][2] = {
        {"{\"block_out_channels\": [1048576, 64], \"down_block_types\": [\"DownBlock2D\", "
         "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"]}",
         "block_out_channels"},
        {"{\"layers_per_block\": -1}", "layers_per_block"},
        {"{\"layers_per_block\": 1000000}", "layers_per_block"},
        {"{\"in_channels\": 0}", "in_channels"},
        {"{\"attention_head_dim\": 100000}", "attention_head_dim"},
        {"{\"downsample_padding\": 2}", "downsample_padding"},
        {"{\"norm_num_groups\": 0}", "norm_num_groups"},
        {"{\"sample_size\": [8, 1000000]}", "sample_size"},
        {"{\"mid_block_scale_factor\": 1e300}", "mid_block_scale_factor"},
    };
    df_unet2d_config u;
    for (size_t i = 0; i < sizeof unet2d_cases / sizeof unet2d_cases[0]; i++) {
        df_status st = parse_unet2d(unet2d_cases[i][0], &u);
        cr_assert_eq(st, DF_ERR_FORMAT, "%s: %s", unet2d_cases[i][0], df_last_error());
        cr_assert(strstr(df_last_error(), unet2d_cases[i][1]), "%s", df_last_error());
    }
    /* layers_per_block 0 passes a block's input on: only between equal widths (diffusers'
     * downsampler asserts otherwise); parity with 0 in models::unet2d_fields_b */
    expect_status(
        parse_unet2d("{\"layers_per_block\": 0, \"block_out_channels\": [8, 16], "
                     "\"norm_num_groups\": 4, \"down_block_types\": [\"DownBlock2D\", "
                     "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"]}",
                     &u),
        DF_ERR_FORMAT, "block 1 has no resnet");
    cr_assert_eq(
        parse_unet2d("{\"layers_per_block\": 0, \"block_out_channels\": [8, 8], "
                     "\"norm_num_groups\": 4, \"down_block_types\": [\"DownBlock2D\", "
                     "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"]}",
                     &u),
        DF_OK, "%s", df_last_error());
    df_unet2d_cond_config c;
    expect_status(parse_cond("{\"transformer_layers_per_block\": 100000}", &c), DF_ERR_FORMAT,
                  "transformer_layers_per_block");
    expect_status(parse_cond("{\"layers_per_block\": [2, 2, -1, 2]}", &c), DF_ERR_FORMAT,
                  "layers_per_block");
    expect_status(parse_cond("{\"cross_attention_dim\": 0}", &c), DF_ERR_FORMAT,
                  "cross_attention_dim");
    expect_status(parse_cond("{\"conv_in_kernel\": 1001}", &c), DF_ERR_FORMAT, "conv_in_kernel");
    df_vae_config v;
    expect_status(parse_vae("{\"latent_channels\": 100000000}", &v), DF_ERR_FORMAT,
                  "latent_channels");
    df_clip_text_config t;
    df_json j;
    const char *clip = "{\"vocab_size\": 2000000000, \"hidden_size\": 64}";
    cr_assert_eq(df_json_parse(clip, strlen(clip), "text_encoder/config.json", &j), DF_OK);
    expect_status(df_clip_text_config_from_json(&j, &t), DF_ERR_FORMAT, "vocab_size");
    df_json_free(&j);

    /* configs built in code reach the same limits through *_init */
    df_unet2d_config big = df_unet2d_config_default();
    big.layers_per_block = 1000000;
    df_unet2d m;
    expect_status(df_unet2d_init(&m, &big, (df_init){.shapes_only = true}), DF_ERR_INVALID,
                  "layers_per_block");
    big = df_unet2d_config_default();
    big.block_out_channels[0] = 1 << 20;
    expect_status(df_unet2d_init(&m, &big, (df_init){.shapes_only = true}), DF_ERR_INVALID,
                  "block width");
    big = df_unet2d_config_default();
    big.layers_per_block = 0; /* widths 224 -> 448 with no resnet between */
    expect_status(df_unet2d_init(&m, &big, (df_init){.shapes_only = true}), DF_ERR_INVALID,
                  "no resnet");
    big = df_unet2d_config_default();
    big.attention_head_dim = 4096;
    expect_status(df_unet2d_init(&m, &big, (df_init){.shapes_only = true}), DF_ERR_INVALID,
                  "attention_head_dim");
}

/* A component folder: config.json with `config` and the weights of a tiny fixture. */
static const char *folder(const char *name, const char *config, const char *weights_fixture) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", scratch_dir(), name);
    cr_assert_eq(mkdir(dir, 0700), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/%s/config.json", scratch_dir(), name);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(config, f);
    fclose(f);
    if (weights_fixture) {
        snprintf(path, sizeof path, "%s/%s/diffusion_pytorch_model.safetensors", scratch_dir(),
                 name);
        cr_assert_eq(symlink(fixture_path(weights_fixture), path), 0);
    }
    return dir;
}

Test(nn_config_fields, config_disagreeing_with_weights_refused_before_allocating) {
    /* 4096 / 8192 channels: ~8.5 GB of parameters if built; the file holds the 32 / 64 of
     * unet2d_tiny, so the shapes-only pass refuses it before any parameter memory exists */
    const char *dir = folder("big",
                             "{\"_class_name\": \"UNet2DModel\", \"block_out_channels\": [4096, "
                             "8192], \"layers_per_block\": 1, \"norm_num_groups\": 8, "
                             "\"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"], "
                             "\"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"]}",
                             "models/unet2d_tiny/diffusion_pytorch_model.safetensors");
    df_component comp;
    expect_status(df_component_load(dir, &comp), DF_ERR_FORMAT, "in the file but");
    df_component_free(&comp);
    /* a config with more layers than the file: the first disagreeing tensor, named */
    dir = folder("deep",
                 "{\"_class_name\": \"UNet2DModel\", \"block_out_channels\": [32, 64], "
                 "\"layers_per_block\": 3, \"norm_num_groups\": 8, \"sample_size\": 16, "
                 "\"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"], "
                 "\"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"]}",
                 "models/unet2d_tiny/diffusion_pytorch_model.safetensors");
    expect_status(df_component_load(dir, &comp), DF_ERR_FORMAT, "up_blocks.0.resnets.1");
    df_component_free(&comp);
    /* no weights at all */
    dir = folder("empty", "{\"_class_name\": \"UNet2DModel\"}", NULL);
    expect_status(df_component_load(dir, &comp), DF_ERR_NOTFOUND, "diffusion_pytorch_model");
    df_component_free(&comp);
}

/* Runs the component on a random sample of (1, C, h, w) (plus the other inputs it needs). */
static df_status forward_size(df_component *comp, int64_t c, int64_t h, int64_t w) {
    df_scope s = df_scope_begin();
    df_named in[3];
    int n = 0;
    df_tensor *x = df_zeros(DF_DTYPE_F32, DF_DIMS(1, c, h, w));
    in[n++] = (df_named){"sample", x};
    in[n++] = (df_named){"timestep", df_full(DF_DTYPE_I64, 0, NULL, 10)};
    in[n++] = (df_named){"encoder_hidden_states", df_zeros(DF_DTYPE_F32, DF_DIMS(1, 3, 32))};
    df_named out[DF_COMPONENT_MAX_OUTPUTS];
    int n_out = 0;
    bool prev = df_grad_set_enabled(false);
    df_status st = df_component_forward(comp, in, n, out, &n_out);
    df_grad_set_enabled(prev);
    if (st == DF_OK) {
        const df_tensor *y = out[0].tensor;
        if (strcmp(out[0].name, "sample") == 0 && comp->vae == NULL &&
            (y->shape[2] != h || y->shape[3] != w))
            st = df_error(DF_ERR_INVALID, "output of the wrong size");
    }
    df_scope_end(s);
    return st;
}

Test(nn_config_fields, spatial_sizes_handled_or_refused) {
    char dir[512];
    df_component comp;
    /* UNet2DModel: diffusers fails on sides that do not divide by 2^(blocks-1); so do we,
     * with an error */
    snprintf(dir, sizeof dir, "%s", fixture_path("models/unet2d_tiny"));
    cr_assert_eq(df_component_load(dir, &comp), DF_OK, "%s", df_last_error());
    cr_assert_eq(forward_size(&comp, 3, 16, 8), DF_OK, "%s", df_last_error());
    expect_status(forward_size(&comp, 3, 9, 9), DF_ERR_INVALID, "not a multiple of 2");
    expect_status(forward_size(&comp, 3, 16, 0), DF_ERR_INVALID, "width 0");
    expect_status(forward_size(&comp, 3, 100000, 2), DF_ERR_INVALID, "height 100000");
    expect_status(forward_size(&comp, 5, 8, 8), DF_ERR_INVALID, "(N, 3, H, W)");
    df_component_free(&comp);
    /* UNet2DConditionModel: any side (upsample_size); parity at 9 x 7 is in test_models.c */
    snprintf(dir, sizeof dir, "%s", fixture_path("models/unet2dcond_tiny"));
    cr_assert_eq(df_component_load(dir, &comp), DF_OK, "%s", df_last_error());
    cr_assert_eq(forward_size(&comp, 4, 9, 7), DF_OK, "%s", df_last_error());
    cr_assert_eq(forward_size(&comp, 4, 1, 3), DF_OK, "%s", df_last_error());
    expect_status(forward_size(&comp, 4, 0, 3), DF_ERR_INVALID, "height 0");
    df_component_free(&comp);
    /* AutoencoderKL: each encoder downsampler needs a side of 2 */
    snprintf(dir, sizeof dir, "%s", fixture_path("models/vae_tiny"));
    cr_assert_eq(df_component_load(dir, &comp), DF_OK, "%s", df_last_error());
    cr_assert_eq(forward_size(&comp, 3, 9, 7), DF_OK, "%s", df_last_error());
    expect_status(forward_size(&comp, 3, 1, 8), DF_ERR_INVALID, "height 1");
    df_component_free(&comp);
}
