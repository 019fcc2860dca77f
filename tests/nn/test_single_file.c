/* test_single_file.c — single-file SD checkpoints (nn/sd_single_file.c) against diffusers
 * v0.21.4's converters.
 *
 * Fixtures (tests/fixtures/single_file/<case>.json, tests/ref/gen_single_file.py): the keys and
 * shapes of a tiny single file written by diffusers' convert_diffusers_to_original script, and
 * for every tensor of the folder that diffusers' download_from_original_stable_diffusion_ckpt
 * makes from it, its shape and a position-sensitive checksum of its float16 bits; plus the
 * configs. The values are synthetic (float16 bits from splitmix64 of the name's FNV-1a hash and
 * the element index), so the test rebuilds the very file the generator converted. Equal
 * checksums over every tensor = the same tensors, bit for bit.
 */
#include "nn/single_file.h"
#include "tests/common/check.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001B3ull;
    return h;
}

static uint64_t splitmix(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint16_t synth_bits(uint64_t seed, int64_t j) {
    uint64_t u = splitmix(seed + (uint64_t)j);
    return (uint16_t)(((u >> 63) << 15) | ((u >> 32) % 0x3C00));
}

static uint64_t checksum16(const uint16_t *b, int64_t n) {
    uint64_t s = 0;
    for (int64_t j = 0; j < n; j++) s += (uint64_t)b[j] * ((uint64_t)j * 0x9E3779B97F4A7C15ull + 1);
    return s;
}

static cJSON *load_spec(const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "single_file/%s.json", name);
    size_t len;
    char *text = read_whole_file(fixture_path(rel), &len);
    cr_assert(text, "cannot read %s", rel);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cr_assert(j, "bad JSON %s", rel);
    return j;
}

/* The single file of a spec, rebuilt: names and shapes from the fixture, float16 values from
 * the synthetic pattern. `drop` (may be NULL) leaves one tensor out; `reshape` changes the
 * first dim of tensor `reshape` by one; extra adds one tensor (1,) called extra. */
typedef struct synth_spec {
    cJSON *keys;
    df_st_entry *e;
    int n;
} synth_spec;

static df_status synth_fill(void *ctx, int i, void *buf, const void **bytes) {
    synth_spec *s = ctx;
    uint64_t seed = fnv1a64(s->e[i].name);
    int64_t n = 1;
    for (int d = 0; d < s->e[i].ndim; d++) n *= s->e[i].shape[d];
    uint16_t *b = buf;
    for (int64_t j = 0; j < n; j++) b[j] = synth_bits(seed, j);
    *bytes = buf;
    return DF_OK;
}

static void write_single(const char *path, cJSON *spec, const char *drop, const char *reshape,
                         const char *extra) {
    cJSON *keys = cJSON_GetObjectItem(spec, "single_file");
    int n = cJSON_GetArraySize(keys);
    synth_spec s = {keys, calloc((size_t)n + 1, sizeof(df_st_entry)), 0};
    for (int i = 0; i < n; i++) {
        cJSON *k = cJSON_GetArrayItem(keys, i);
        const char *name = cJSON_GetArrayItem(k, 0)->valuestring;
        if (drop && strcmp(name, drop) == 0) continue;
        df_st_entry *e = &s.e[s.n++];
        e->name = name;
        e->dtype = DF_DTYPE_F16;
        cJSON *shape = cJSON_GetArrayItem(k, 1);
        e->ndim = cJSON_GetArraySize(shape);
        for (int d = 0; d < e->ndim; d++) e->shape[d] = cJSON_GetArrayItem(shape, d)->valueint;
        if (reshape && strcmp(name, reshape) == 0) e->shape[0] += 1;
    }
    if (extra) {
        df_st_entry *e = &s.e[s.n++];
        e->name = extra;
        e->dtype = DF_DTYPE_F16;
        e->ndim = 1;
        e->shape[0] = 1;
    }
    cr_assert_eq(df_st_save_stream(path, s.n, s.e, 0, NULL, NULL, synth_fill, &s, true), DF_OK,
                 "%s", df_last_error());
    free(s.e);
}

static const char *tokenizer_dir(void) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/tok", scratch_dir());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    scratch_write("tok/vocab.json", "{\"!\": 0, \"<|endoftext|>\": 1}\n");
    scratch_write("tok/merges.txt", "#version: 0.2\n");
    scratch_write("tok/special_tokens_map.json",
                  "{\"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\", "
                  "\"pad_token\": \"<|endoftext|>\", \"unk_token\": \"<|endoftext|>\"}\n");
    scratch_write("tok/tokenizer_config.json",
                  "{\"model_max_length\": 77, \"pad_token\": \"<|endoftext|>\", "
                  "\"tokenizer_class\": \"CLIPTokenizer\"}\n");
    return dir;
}

static void setup(void) {
    scratch_dir_new("single_file");
}

static void teardown(void) {
    scratch_dir_remove();
}

static const char *spath(const char *name) {
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 512, "%s/%s", scratch_dir(), name);
    return b;
}

static cJSON *load_json_file(const char *path) {
    size_t len;
    char *text = read_whole_file(path, &len);
    cr_assert(text, "cannot read %s", path);
    cJSON *j = cJSON_Parse(text);
    free(text);
    cr_assert(j, "bad JSON %s", path);
    return j;
}

/* Every tensor of the component equals the expected one (shape, float16 checksum), no more. */
static void check_component(const char *dir, const char *comp, const char *file, cJSON *want) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s/%s", dir, comp, file);
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    cJSON *tensors = cJSON_GetObjectItem(want, "tensors");
    cr_assert_eq(df_st_count(f), cJSON_GetArraySize(tensors), "%s: %d tensors, expected %d", comp,
                 df_st_count(f), cJSON_GetArraySize(tensors));
    cJSON *t;
    cJSON_ArrayForEach(t, tensors) {
        const df_st_info *info = df_st_find(f, t->string);
        cr_assert(info, "%s: missing '%s'", comp, t->string);
        cr_assert_eq(info->dtype, DF_DTYPE_F16, "%s: '%s' dtype %s", comp, t->string,
                     info->dtype_name);
        cJSON *shape = cJSON_GetArrayItem(t, 0);
        cr_assert_eq(info->ndim, cJSON_GetArraySize(shape), "%s: '%s' ndim", comp, t->string);
        for (int d = 0; d < info->ndim; d++)
            cr_assert_eq(info->shape[d], cJSON_GetArrayItem(shape, d)->valueint, "%s: '%s' dim %d",
                         comp, t->string, d);
        uint16_t *b = malloc((size_t)info->numel * 2 + 2);
        memcpy(b, df_st_data(f, info), (size_t)info->numel * 2);
        char got[20];
        snprintf(got, sizeof got, "%016llx", (unsigned long long)checksum16(b, info->numel));
        free(b);
        cr_assert_str_eq(got, cJSON_GetArrayItem(t, 1)->valuestring, "%s: '%s' differs", comp,
                         t->string);
    }
    df_st_close(f);
}

/* The listed config fields equal the expected ones (all of them when fields is NULL). */
static void check_config(const char *path, cJSON *want, const char *const *fields, int n) {
    cJSON *got = load_json_file(path);
    if (!fields) {
        cJSON *w;
        cJSON_ArrayForEach(w, want) {
            if (w->string[0] == '_' && strcmp(w->string, "_class_name") != 0) continue;
            cJSON *g = cJSON_GetObjectItem(got, w->string);
            cr_assert(g && cJSON_Compare(g, w, true), "%s: field '%s' differs", path, w->string);
        }
    }
    for (int i = 0; i < n; i++) {
        cJSON *w = cJSON_GetObjectItem(want, fields[i]), *g = cJSON_GetObjectItem(got, fields[i]);
        cr_assert(w, "expected config lacks '%s'", fields[i]);
        char *ws = cJSON_PrintUnformatted(w), *gs = g ? cJSON_PrintUnformatted(g) : NULL;
        cr_assert(g && cJSON_Compare(g, w, true), "%s: field '%s' is %s, diffusers wrote %s", path,
                  fields[i], gs ? gs : "absent", ws);
        free(ws);
        free(gs);
    }
    cJSON_Delete(got);
}

static const char *const unet_fields[] = {"act_fn",
                                          "attention_head_dim",
                                          "block_out_channels",
                                          "center_input_sample",
                                          "class_embed_type",
                                          "cross_attention_dim",
                                          "down_block_types",
                                          "downsample_padding",
                                          "flip_sin_to_cos",
                                          "freq_shift",
                                          "in_channels",
                                          "layers_per_block",
                                          "mid_block_scale_factor",
                                          "mid_block_type",
                                          "norm_eps",
                                          "norm_num_groups",
                                          "num_attention_heads",
                                          "out_channels",
                                          "resnet_time_scale_shift",
                                          "sample_size",
                                          "transformer_layers_per_block",
                                          "up_block_types",
                                          "use_linear_projection"};
static const char *const text_fields[] = {"hidden_act",
                                          "hidden_size",
                                          "intermediate_size",
                                          "layer_norm_eps",
                                          "max_position_embeddings",
                                          "num_attention_heads",
                                          "num_hidden_layers",
                                          "vocab_size"};

/* Original -> diffusers against diffusers' converter, then back against the original file. */
static void parity(const char *name) {
    cJSON *spec = load_spec(name);
    const char *single = spath("model.safetensors"), *out = spath("out");
    write_single(single, spec, NULL, NULL, NULL);
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    df_sd_info info;
    o.info = &info;
    cr_assert_eq(df_sd_single_file_convert(single, out, &o), DF_OK, "%s", df_last_error());
    bool sd2 = strcmp(name, "sd2") == 0;
    cr_assert_eq(info.version, sd2 ? 2 : 1);
    cr_assert_eq(info.inpainting, strcmp(name, "sd1_inpaint") == 0);
    check_component(out, "unet", "diffusion_pytorch_model.safetensors",
                    cJSON_GetObjectItem(spec, "unet"));
    check_component(out, "vae", "diffusion_pytorch_model.safetensors",
                    cJSON_GetObjectItem(spec, "vae"));
    check_component(out, "text_encoder", "model.safetensors",
                    cJSON_GetObjectItem(spec, "text_encoder"));
    char path[600];
    snprintf(path, sizeof path, "%s/unet/config.json", out);
    check_config(path, cJSON_GetObjectItem(cJSON_GetObjectItem(spec, "unet"), "config"),
                 unet_fields, (int)(sizeof unet_fields / sizeof *unet_fields));
    snprintf(path, sizeof path, "%s/vae/config.json", out);
    check_config(path, cJSON_GetObjectItem(cJSON_GetObjectItem(spec, "vae"), "config"), NULL, 0);
    snprintf(path, sizeof path, "%s/text_encoder/config.json", out);
    check_config(path, cJSON_GetObjectItem(cJSON_GetObjectItem(spec, "text_encoder"), "config"),
                 text_fields, (int)(sizeof text_fields / sizeof *text_fields));
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", out);
    check_config(path, cJSON_GetObjectItem(spec, "scheduler"), NULL, 0);
    snprintf(path, sizeof path, "%s/model_index.json", out);
    cJSON *mi = load_json_file(path);
    cr_assert_str_eq(cJSON_GetObjectItem(mi, "_class_name")->valuestring,
                     cJSON_GetObjectItem(spec, "pipeline_class")->valuestring);
    cJSON_Delete(mi);
    snprintf(path, sizeof path, "%s/tokenizer/special_tokens_map.json", out);
    cJSON *tok = load_json_file(path);
    cr_assert_str_eq(cJSON_GetObjectItem(tok, "pad_token")->valuestring,
                     sd2 ? "!" : "<|endoftext|>");
    cJSON_Delete(tok);

    /* the folder loads as diffusers components (float16 weights read into float32) */
    static const char *const comps[] = {"unet", "vae", "text_encoder"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", out, comps[i]);
        df_component c;
        cr_assert_eq(df_component_load(path, &c), DF_OK, "%s", df_last_error());
        df_component_free(&c);
    }

    /* and back: the original tensors, bit for bit (SD 2.x: less the unused last block and
     * text_projection, which diffusers drops too) */
    const char *back = spath("back.safetensors");
    cr_assert_eq(df_sd_folder_to_single_file(out, back, NULL), DF_OK, "%s", df_last_error());
    df_st_file *f;
    cr_assert_eq(df_st_open(back, &f), DF_OK, "%s", df_last_error());
    cJSON *keys = cJSON_GetObjectItem(spec, "single_file"), *k;
    int n_want = 0;
    cJSON_ArrayForEach(k, keys) {
        const char *kn = cJSON_GetArrayItem(k, 0)->valuestring;
        if (sd2 && (strstr(kn, "resblocks.2.") || strstr(kn, "text_projection"))) {
            cr_assert(!df_st_find(f, kn), "'%s' should be dropped", kn);
            continue;
        }
        n_want++;
        const df_st_info *info = df_st_find(f, kn);
        cr_assert(info, "back: missing '%s'", kn);
        cr_assert_eq(info->dtype, DF_DTYPE_F16);
        char got[20];
        snprintf(got, sizeof got, "%016llx",
                 (unsigned long long)checksum16(df_st_data(f, info), info->numel));
        cr_assert_str_eq(got, cJSON_GetArrayItem(k, 2)->valuestring, "back: '%s' differs", kn);
    }
    cr_assert_eq(df_st_count(f), n_want);
    df_st_close(f);
    cJSON_Delete(spec);
}

TestSuite(nn_single_file, .init = setup, .fini = teardown);

Test(nn_single_file, sd1_equals_diffusers_converter_both_ways) {
    parity("sd1");
}

Test(nn_single_file, sd2_equals_diffusers_converter_both_ways) {
    parity("sd2");
}

Test(nn_single_file, inpainting_equals_diffusers_converter_both_ways) {
    parity("sd1_inpaint");
}

/* file -> folder -> file -> folder -> file: the second file equals the first byte for byte. */
Test(nn_single_file, round_trip_is_bitwise) {
    cJSON *spec = load_spec("sd2");
    const char *single = spath("model.safetensors");
    write_single(single, spec, NULL, NULL, NULL);
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    cr_assert_eq(df_sd_single_file_convert(single, spath("a"), &o), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_sd_folder_to_single_file(spath("a"), spath("a.safetensors"), NULL), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(df_sd_single_file_convert(spath("a.safetensors"), spath("b"), &o), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(df_sd_folder_to_single_file(spath("b"), spath("b.safetensors"), NULL), DF_OK, "%s",
                 df_last_error());
    size_t na, nb;
    char *a = read_whole_file(spath("a.safetensors"), &na);
    char *b = read_whole_file(spath("b.safetensors"), &nb);
    cr_assert(a && b && na == nb && memcmp(a, b, na) == 0, "the two files differ");
    free(a);
    free(b);
    /* and the two folders' weight files (written in the models' registration order) */
    static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors",
                                        "vae/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char pa[600], pb[600];
        snprintf(pa, sizeof pa, "%s/%s", spath("a"), files[i]);
        snprintf(pb, sizeof pb, "%s/%s", spath("b"), files[i]);
        a = read_whole_file(pa, &na);
        b = read_whole_file(pb, &nb);
        cr_assert(a && b && na == nb && memcmp(a, b, na) == 0, "%s differs", files[i]);
        free(a);
        free(b);
    }
    cJSON_Delete(spec);
}

/* --float widens every value exactly; --half of those is the original bits again. */
Test(nn_single_file, dtype_options) {
    cJSON *spec = load_spec("sd1");
    const char *single = spath("model.safetensors");
    write_single(single, spec, NULL, NULL, NULL);
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    o.dtype = DF_DTYPE_F32;
    cr_assert_eq(df_sd_single_file_convert(single, spath("f32"), &o), DF_OK, "%s", df_last_error());
    char path[600];
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", spath("f32"));
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK);
    const df_st_info *info = df_st_find(f, "conv_in.weight");
    cr_assert_eq(info->dtype, DF_DTYPE_F32);
    const float *v = df_st_data(f, info);
    uint64_t seed = fnv1a64("model.diffusion_model.input_blocks.0.0.weight");
    for (int64_t j = 0; j < info->numel; j++)
        cr_assert_eq(v[j], df_f16_to_f32(synth_bits(seed, j)), "element %lld", (long long)j);
    df_st_close(f);
    snprintf(path, sizeof path, "%s/text_encoder/config.json", spath("f32"));
    cJSON *tc = load_json_file(path);
    cr_assert_str_eq(cJSON_GetObjectItem(tc, "torch_dtype")->valuestring, "float32");
    cJSON_Delete(tc);
    df_sd_convert_opts h = {.dtype = DF_DTYPE_F16};
    cr_assert_eq(df_sd_folder_to_single_file(spath("f32"), spath("h.safetensors"), &h), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(df_st_open(spath("h.safetensors"), &f), DF_OK);
    info = df_st_find(f, "model.diffusion_model.input_blocks.0.0.weight");
    cr_assert_eq(info->dtype, DF_DTYPE_F16);
    const uint16_t *hb = df_st_data(f, info);
    for (int64_t j = 0; j < info->numel; j++) cr_assert_eq(hb[j], synth_bits(seed, j));
    df_st_close(f);
    cJSON_Delete(spec);
}

Test(nn_single_file, detection_and_defaults) {
    cJSON *spec = load_spec("sd2");
    const char *single = spath("model.safetensors");
    write_single(single, spec, NULL, NULL, NULL);
    cr_assert(df_sd_single_file_is(single));
    cr_assert(
        !df_sd_single_file_is(fixture_path("models/vae_tiny/diffusion_pytorch_model.safetensors")));
    cr_assert(!df_sd_single_file_is(spath("nope.safetensors")));
    df_st_file *f;
    cr_assert_eq(df_st_open(single, &f), DF_OK);
    df_sd_info info;
    cr_assert_eq(df_sd_single_file_detect(f, &info), DF_OK, "%s", df_last_error());
    cr_assert_eq(info.version, 2);
    cr_assert(info.linear_proj);
    cr_assert_eq(info.text_layers, 2);
    cr_assert_eq(info.in_channels, 4);
    df_st_close(f);
    /* --prediction-type epsilon on SD 2.x: 512 (the 2-base rule) and an epsilon scheduler */
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    o.prediction_type = "epsilon";
    cr_assert_eq(df_sd_single_file_convert(single, spath("eps"), &o), DF_OK, "%s", df_last_error());
    char path[600];
    snprintf(path, sizeof path, "%s/unet/config.json", spath("eps"));
    cJSON *u = load_json_file(path);
    cr_assert_eq(cJSON_GetObjectItem(u, "sample_size")->valueint, 64);
    cJSON_Delete(u);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", spath("eps"));
    cJSON *s = load_json_file(path);
    cr_assert_str_eq(cJSON_GetObjectItem(s, "prediction_type")->valuestring, "epsilon");
    cJSON_Delete(s);
    cJSON_Delete(spec);
}

/* ------------------------------------------------------------------ bad input ---------------- */

static void expect_convert_error(const char *file, df_status want, const char *must) {
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    expect_status(df_sd_single_file_convert(file, spath("bad_out"), &o), want, must);
    expect_status(df_sd_single_file_convert(file, spath("bad_out"), &o), want, file);
}

Test(nn_single_file, missing_tensor_is_named) {
    cJSON *spec = load_spec("sd1");
    const char *k =
        "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_k.weight";
    write_single(spath("m.safetensors"), spec, k, NULL, NULL);
    expect_convert_error(spath("m.safetensors"), DF_ERR_FORMAT, k);
    const char *v = "first_stage_model.decoder.mid.attn_1.q.weight";
    write_single(spath("v.safetensors"), spec, v, NULL, NULL);
    expect_convert_error(spath("v.safetensors"), DF_ERR_FORMAT, v);
    cJSON_Delete(spec);
}

Test(nn_single_file, wrong_shape_is_named) {
    cJSON *spec = load_spec("sd1");
    const char *k = "model.diffusion_model.input_blocks.4.0.skip_connection.weight";
    write_single(spath("s.safetensors"), spec, NULL, k, NULL);
    expect_convert_error(spath("s.safetensors"), DF_ERR_FORMAT, k);
    cJSON_Delete(spec);
}

Test(nn_single_file, unexpected_tensor_is_named) {
    cJSON *spec = load_spec("sd2");
    const char *k = "model.diffusion_model.input_blocks.1.1.extra.weight";
    write_single(spath("x.safetensors"), spec, NULL, NULL, k);
    expect_convert_error(spath("x.safetensors"), DF_ERR_FORMAT, k);
    cJSON_Delete(spec);
}

Test(nn_single_file, other_layouts_are_refused_by_name) {
    cJSON *spec = load_spec("sd1");
    write_single(spath("xl.safetensors"), spec, NULL, NULL,
                 "conditioner.embedders.1.model.ln_final.weight");
    expect_convert_error(spath("xl.safetensors"), DF_ERR_UNSUPPORTED, "SDXL base");
    write_single(spath("refiner.safetensors"), spec, NULL, NULL,
                 "conditioner.embedders.0.model.ln_final.weight");
    expect_convert_error(spath("refiner.safetensors"), DF_ERR_UNSUPPORTED, "SDXL refiner");
    write_single(spath("mixed.safetensors"), spec, NULL, NULL,
                 "cond_stage_model.model.ln_final.weight");
    expect_convert_error(spath("mixed.safetensors"), DF_ERR_UNSUPPORTED, "two kinds of");
    write_single(spath("cn.safetensors"), spec, NULL, NULL, "control_model.zero_convs.0.0.bias");
    expect_convert_error(spath("cn.safetensors"), DF_ERR_UNSUPPORTED, "ControlNet");
    /* a VAE alone: no UNet */
    const df_st_entry vae = {.name = "first_stage_model.encoder.conv_in.weight",
                             .dtype = DF_DTYPE_F16,
                             .ndim = 1,
                             .shape = {4}};
    synth_spec s = {NULL, (df_st_entry *)&vae, 1};
    cr_assert_eq(
        df_st_save_stream(spath("vae.safetensors"), 1, &vae, 0, NULL, NULL, synth_fill, &s, true),
        DF_OK);
    expect_convert_error(spath("vae.safetensors"), DF_ERR_UNSUPPORTED, "no model.diffusion_model");
    cJSON_Delete(spec);
}

Test(nn_single_file, pickles_and_broken_files_are_refused) {
    scratch_write("model.ckpt", "PK\x03\x04 not really a zip");
    expect_convert_error(spath("model.ckpt"), DF_ERR_UNSUPPORTED, "save_file");
    scratch_write("pickle.safetensors", "\x80\x02}q\x00.");
    expect_convert_error(spath("pickle.safetensors"), DF_ERR_UNSUPPORTED, "never unpickled");
    scratch_write("garbage.safetensors", "garbage garbage garbage");
    expect_convert_error(spath("garbage.safetensors"), DF_ERR_FORMAT, "garbage.safetensors");
    /* truncated: the first half of a valid file */
    cJSON *spec = load_spec("sd1");
    write_single(spath("full.safetensors"), spec, NULL, NULL, NULL);
    size_t n;
    char *bytes = read_whole_file(spath("full.safetensors"), &n);
    FILE *fp = fopen(spath("cut.safetensors"), "wb");
    fwrite(bytes, 1, n / 2, fp);
    fclose(fp);
    free(bytes);
    expect_convert_error(spath("cut.safetensors"), DF_ERR_FORMAT, "cut.safetensors");
    /* the output folder must be new or empty */
    cr_assert_eq(mkdir(spath("busy"), 0755), 0);
    scratch_write("busy/file", "x");
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    expect_status(df_sd_single_file_convert(spath("full.safetensors"), spath("busy"), &o),
                  DF_ERR_INVALID, "not empty");
    cJSON_Delete(spec);
}

Test(nn_single_file, folder_with_missing_tensor_is_refused) {
    cJSON *spec = load_spec("sd1");
    write_single(spath("model.safetensors"), spec, NULL, NULL, NULL);
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    cr_assert_eq(df_sd_single_file_convert(spath("model.safetensors"), spath("d"), &o), DF_OK, "%s",
                 df_last_error());
    /* replace the VAE weights by a file without one tensor */
    char path[600];
    snprintf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", spath("d"));
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK);
    int n = df_st_count(f) - 1;
    const char **names = calloc((size_t)n, sizeof *names);
    df_tensor **ts = calloc((size_t)n, sizeof *ts);
    int k = 0;
    for (int i = 0; i < df_st_count(f); i++) {
        const df_st_info *info = df_st_info_at(f, i);
        if (strcmp(info->name, "decoder.conv_out.bias") == 0) continue;
        names[k] = info->name;
        cr_assert_eq(df_st_read(f, info->name, info->dtype, &ts[k]), DF_OK);
        k++;
    }
    char tmp[620];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    cr_assert_eq(df_st_save(tmp, n, names, (const df_tensor *const *)ts, 0, NULL, NULL), DF_OK);
    for (int i = 0; i < n; i++) df_tensor_free(ts[i]);
    free(ts);
    free(names);
    df_st_close(f);
    cr_assert_eq(rename(tmp, path), 0);
    expect_status(df_sd_folder_to_single_file(spath("d"), spath("o.safetensors"), NULL),
                  DF_ERR_FORMAT, "decoder.conv_out.bias");
    cJSON_Delete(spec);
}

Test(nn_single_file, cli_converts_and_refuses) {
    cJSON *spec = load_spec("sd1");
    write_single(spath("model.safetensors"), spec, NULL, NULL, NULL);
    char cmd[2048], out[4096];
    snprintf(cmd, sizeof cmd, "%s convert '%s' '%s' --tokenizer '%s'", DF_CLI,
             spath("model.safetensors"), spath("cli"), tokenizer_dir());
    cr_assert_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "SD 1.x"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s convert '%s' '%s' --half", DF_CLI, spath("cli"),
             spath("cli.safetensors"));
    cr_assert_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(df_sd_single_file_is(spath("cli.safetensors")));
    scratch_write("x.ckpt", "PK\x03\x04");
    snprintf(cmd, sizeof cmd, "%s convert '%s' '%s'", DF_CLI, spath("x.ckpt"), spath("cli2"));
    cr_assert_eq(run_command(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "diffusion: convert: ") && strstr(out, "safetensors"), "%s", out);
    cJSON_Delete(spec);
}

/* --extract-ema converts the UNet's model_ema.* copy (diffusers' flattened names), the default
 * the trained weights; a file without EMA weights refuses the option. */
Test(nn_single_file, extract_ema) {
    cJSON *spec = load_spec("sd1");
    cJSON *keys = cJSON_GetObjectItem(spec, "single_file");
    int n = cJSON_GetArraySize(keys);
    synth_spec s = {keys, calloc(2 * (size_t)n, sizeof(df_st_entry)), 0};
    char(*ema)[DF_NAME_MAX] = calloc((size_t)n, DF_NAME_MAX);
    for (int i = 0; i < n; i++) {
        cJSON *k = cJSON_GetArrayItem(keys, i);
        const char *name = cJSON_GetArrayItem(k, 0)->valuestring;
        cJSON *shape = cJSON_GetArrayItem(k, 1);
        df_st_entry e = {.name = name, .dtype = DF_DTYPE_F16, .ndim = cJSON_GetArraySize(shape)};
        for (int d = 0; d < e.ndim; d++) e.shape[d] = cJSON_GetArrayItem(shape, d)->valueint;
        s.e[s.n++] = e;
        if (strncmp(name, "model.diffusion_model.", 22) != 0) continue;
        size_t o = (size_t)snprintf(ema[i], DF_NAME_MAX, "model_ema.");
        for (const char *c = name + 6; *c; c++)
            if (*c != '.') ema[i][o++] = *c;
        e.name = ema[i];
        s.e[s.n++] = e;
    }
    cr_assert_eq(
        df_st_save_stream(spath("ema.safetensors"), s.n, s.e, 0, NULL, NULL, synth_fill, &s, true),
        DF_OK, "%s", df_last_error());
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.tokenizer_dir = tokenizer_dir();
    o.quiet = true;
    df_sd_info info;
    o.info = &info;
    o.extract_ema = true;
    cr_assert_eq(df_sd_single_file_convert(spath("ema.safetensors"), spath("e"), &o), DF_OK, "%s",
                 df_last_error());
    cr_assert(info.has_ema);
    cr_assert_eq(info.n_ignored, s.n - n);
    o.extract_ema = false;
    cr_assert_eq(df_sd_single_file_convert(spath("ema.safetensors"), spath("t"), &o), DF_OK, "%s",
                 df_last_error());
    const char *which[2] = {"model_ema.diffusion_modelinput_blocks00weight",
                            "model.diffusion_model.input_blocks.0.0.weight"};
    const char *dirs[2] = {spath("e"), spath("t")};
    for (int k = 0; k < 2; k++) {
        char path[600];
        snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dirs[k]);
        df_st_file *f;
        cr_assert_eq(df_st_open(path, &f), DF_OK);
        const df_st_info *t = df_st_find(f, "conv_in.weight");
        const uint16_t *b = df_st_data(f, t);
        uint64_t seed = fnv1a64(which[k]);
        for (int64_t j = 0; j < t->numel; j++) cr_assert_eq(b[j], synth_bits(seed, j));
        df_st_close(f);
    }
    write_single(spath("plain.safetensors"), spec, NULL, NULL, NULL);
    o.extract_ema = true;
    expect_status(df_sd_single_file_convert(spath("plain.safetensors"), spath("p"), &o),
                  DF_ERR_INVALID, "no EMA weights");
    free(ema);
    free(s.e);
    cJSON_Delete(spec);
}

/* A valid CLIP tokenizer folder of 514 tokens (the 256 byte symbols, the same with </w>, start
 * and end): every id fits the fixtures' 1000-token text encoders. */
static const char *byte_tokenizer_dir(void) {
    static char dir[600];
    snprintf(dir, sizeof dir, "%s/bytetok", scratch_dir());
    char cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the others to
     * U+0100 + k in byte order */
    static char vocab[40000];
    size_t k = (size_t)snprintf(vocab, sizeof vocab, "{");
    int extra = 0, id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++) {
            bool keep = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
            unsigned cp = keep ? (unsigned)b : 0x100u + (unsigned)(pass ? 0 : extra++);
            if (pass && !keep) { /* the same code point as in pass 0 */
                int j = 0;
                for (int c = 0; c < b; c++)
                    j += !((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || c >= 0xae);
                cp = 0x100u + (unsigned)j;
            }
            char u[8];
            if (cp < 0x80)
                snprintf(u, sizeof u, "%s",
                         cp == '"'    ? "\\\""
                         : cp == '\\' ? "\\\\"
                                      : (char[]){(char)cp, 0});
            else
                snprintf(u, sizeof u, "%c%c", (char)(0xc0 | (cp >> 6)), (char)(0x80 | (cp & 0x3f)));
            k += (size_t)snprintf(vocab + k, sizeof vocab - k, "%s\"%s%s\": %d", id ? ", " : "", u,
                                  pass ? "</w>" : "", id);
            id++;
        }
    snprintf(vocab + k, sizeof vocab - k, ", \"<|startoftext|>\": %d, \"<|endoftext|>\": %d}\n", id,
             id + 1);
    scratch_write("bytetok/vocab.json", vocab);
    scratch_write("bytetok/merges.txt", "#version: 0.2\n");
    scratch_write("bytetok/special_tokens_map.json",
                  "{\"bos_token\": \"<|startoftext|>\", \"eos_token\": \"<|endoftext|>\", "
                  "\"pad_token\": \"<|endoftext|>\", \"unk_token\": \"<|endoftext|>\"}\n");
    scratch_write("bytetok/tokenizer_config.json", "{\"model_max_length\": 77}\n");
    return dir;
}

/* `diffusion generate` on a single file (converted on the fly) gives bit for bit what it gives
 * on the folder `diffusion convert` makes of the file. */
Test(nn_single_file, generate_on_a_single_file) {
    cJSON *spec = load_spec("sd1");
    write_single(spath("model.safetensors"), spec, NULL, NULL, NULL);
    const char *tok = byte_tokenizer_dir();
    char cmd[4096], out[8192];
    const char *gen = "generate %s --prompt 'a red apple' --steps 2 --height 32 --width 32 "
                      "--scheduler ddim --out-tensor %s";
    char args[2048];
    snprintf(args, sizeof args, gen, spath("model.safetensors"), spath("from_file.safetensors"));
    snprintf(cmd, sizeof cmd, "DIFFUSION_TOKENIZER='%s' %s %s", tok, DF_CLI, args);
    cr_assert_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "converting the single file"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s convert '%s' '%s' --tokenizer '%s'", DF_CLI,
             spath("model.safetensors"), spath("folder"), tok);
    cr_assert_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    snprintf(args, sizeof args, gen, spath("folder"), spath("from_folder.safetensors"));
    snprintf(cmd, sizeof cmd, "%s %s", DF_CLI, args);
    cr_assert_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    size_t na, nb;
    char *a = read_whole_file(spath("from_file.safetensors"), &na);
    char *b = read_whole_file(spath("from_folder.safetensors"), &nb);
    cr_assert(a && b && na == nb && memcmp(a, b, na) == 0,
              "generate on the file and on its converted folder differ");
    free(a);
    free(b);
    cJSON_Delete(spec);
}
