/* test_lora_file.c — the LoRA file formats of nn/lora_file.h: format names, write -> read round
 * trips of every layout (values bitwise, the key names each layout must use, the alpha rules),
 * the other names upstream writes (attn-procs, the older text-encoder names, unprefixed unet
 * files, base_model.model.), kohya's flattened names back to module names, and every refusal
 * (pickles, unknown layouts, unmapped keys, rank 0, NaN, non-scalar alpha, mismatched ranks,
 * a lone down, two names for one tensor), each naming the file and the tensor.
 */
#include "nn/lora_file.h"
#include "nn/lora_file_impl.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void setup(void) {
    scratch_dir_new("lora_file");
}
static void teardown(void) {
    scratch_dir_remove();
}
TestSuite(nn_lora_file, .init = setup, .fini = teardown);

static const char *spath(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", scratch_dir(), name);
    return p;
}

static df_tensor *owned_randn(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *r = randn_tensor(seed, ndim, shape);
    df_tensor *t = df_tensor_new_owned(DF_DTYPE_F32, ndim, shape);
    memcpy(t->data, r->data, (size_t)t->numel * sizeof(float));
    df_tensor_free(r);
    return t;
}

/* A set of four targets: a unet linear (alpha == rank), a unet LoCon conv (alpha 2), a text
 * encoder projection (alpha 1) and an ff linear (rank 3, alpha 3). */
static void sample_set(df_lora_set *s) {
    memset(s, 0, sizeof *s);
    cr_assert_eq(
        df_lora_set_add(s, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                        owned_randn(1, DF_DIMS(4, 8)), owned_randn(2, DF_DIMS(8, 4)), 4.0f),
        DF_OK);
    cr_assert_eq(df_lora_set_add(s, "unet.down_blocks.0.resnets.0.conv1",
                                 owned_randn(3, DF_DIMS(2, 8, 3, 3)),
                                 owned_randn(4, DF_DIMS(16, 2, 1, 1)), 1.0f),
                 DF_OK);
    cr_assert_eq(df_lora_set_add(s, "text_encoder.text_model.encoder.layers.0.self_attn.out_proj",
                                 owned_randn(5, DF_DIMS(2, 32)), owned_randn(6, DF_DIMS(32, 2)),
                                 1.0f),
                 DF_OK);
    cr_assert_eq(
        df_lora_set_add(s, "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
                        owned_randn(7, DF_DIMS(3, 8)), owned_randn(8, DF_DIMS(64, 3)), 3.0f),
        DF_OK);
}

static void expect_bitwise(const df_tensor *a, const df_tensor *b, const char *what) {
    cr_assert(df_tensor_same_shape(a, b), "%s: shapes differ", what);
    cr_assert(memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0, "%s: values differ",
              what);
}

/* Every entry equal (bitwise) and in the same order; alpha equal unless `alpha_is_rank`. */
static void expect_same_set(const df_lora_set *a, const df_lora_set *b) {
    cr_assert_eq(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        cr_assert_str_eq(a->entries[i].target, b->entries[i].target);
        expect_bitwise(a->entries[i].down, b->entries[i].down, a->entries[i].target);
        expect_bitwise(a->entries[i].up, b->entries[i].up, a->entries[i].target);
        cr_assert_eq(a->entries[i].alpha, b->entries[i].alpha, "%s: alpha %g vs %g",
                     a->entries[i].target, (double)a->entries[i].alpha,
                     (double)b->entries[i].alpha);
    }
}

static void expect_keys(const char *path, const char *const *keys, int n) {
    df_st_file *f = NULL;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_count(f), n, "%d keys, expected %d", df_st_count(f), n);
    for (int i = 0; i < n; i++) cr_assert(df_st_find(f, keys[i]), "no key %s", keys[i]);
    df_st_close(f);
}

Test(nn_lora_file, format_names) {
    df_lora_format f;
    for (int i = 0; i < DF_LORA_FORMAT_COUNT; i++) {
        cr_assert(df_lora_format_parse(df_lora_format_name((df_lora_format)i), &f));
        cr_assert_eq(f, i);
    }
    cr_assert_str_eq(df_lora_format_name(DF_LORA_KOHYA), "kohya");
    cr_assert_not(df_lora_format_parse("lycoris", &f));
    cr_assert_not(df_lora_format_parse(NULL, &f));
}

Test(nn_lora_file, set_free_is_null_safe) {
    df_lora_set_free(NULL);
    df_lora_set s;
    sample_set(&s);
    cr_assert_eq(s.n, 4);
    df_lora_set_free(&s);
    cr_assert_eq(s.n, 0);
    cr_assert_null(s.entries);
}

Test(nn_lora_file, diffusers_round_trip_and_names) {
    df_lora_set s, r;
    sample_set(&s);
    /* alpha == rank everywhere: nothing is folded */
    s.entries[1].alpha = 2.0f;
    s.entries[2].alpha = 2.0f;
    const char *p = spath("d.safetensors");
    const char *meta[] = {"producer", "test", NULL};
    cr_assert_eq(df_lora_file_write(&s, p, DF_LORA_DIFFUSERS, meta), DF_OK, "%s", df_last_error());
    const char *keys[] = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight",
        "unet.down_blocks.0.resnets.0.conv1.lora.down.weight",
        "unet.down_blocks.0.resnets.0.conv1.lora.up.weight",
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.lora_linear_layer.down.weight",
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.lora_linear_layer.up.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.lora.down.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.lora.up.weight",
    };
    expect_keys(p, keys, 8);
    df_st_file *f = NULL;
    cr_assert_eq(df_st_open(p, &f), DF_OK);
    cr_assert_str_eq(df_st_metadata(f, "producer"), "test");
    df_st_close(f);
    cr_assert_eq(df_lora_file_read(p, &r), DF_OK, "%s", df_last_error());
    cr_assert_eq(r.format, DF_LORA_DIFFUSERS);
    expect_same_set(&s, &r);
    df_lora_set_free(&s);
    df_lora_set_free(&r);
}

Test(nn_lora_file, diffusers_folds_alpha_into_up) {
    df_lora_set s, r;
    sample_set(&s); /* entry 1: rank 2, alpha 1; entry 2: rank 2, alpha 1 */
    const char *p = spath("fold.safetensors");
    cr_assert_eq(df_lora_file_write(&s, p, DF_LORA_DIFFUSERS, NULL), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_lora_file_read(p, &r), DF_OK, "%s", df_last_error());
    cr_assert_eq(r.n, 4);
    for (int i = 0; i < 4; i++) {
        const df_lora_entry *a = &s.entries[i], *b = &r.entries[i];
        float rank = (float)a->down->shape[0], scale = a->alpha / rank;
        cr_assert_eq(b->alpha, rank, "%s: alpha %g, expected the rank", b->target,
                     (double)b->alpha);
        expect_bitwise(a->down, b->down, a->target);
        for (int64_t k = 0; k < a->up->numel; k++)
            cr_assert_eq(df_f32(b->up)[k], df_f32(a->up)[k] * scale, "%s up[%lld]", a->target,
                         (long long)k);
    }
    df_lora_set_free(&s);
    df_lora_set_free(&r);
}

Test(nn_lora_file, kohya_round_trip_and_names) {
    df_lora_set s, r;
    sample_set(&s);
    const char *p = spath("k.safetensors");
    cr_assert_eq(df_lora_file_write(&s, p, DF_LORA_KOHYA, NULL), DF_OK, "%s", df_last_error());
    const char *keys[] = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha",
        "lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_up.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_out_proj.alpha",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_down.weight",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_up.weight",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.alpha",
    };
    expect_keys(p, keys, 12);
    cr_assert_eq(df_lora_file_read(p, &r), DF_OK, "%s", df_last_error());
    cr_assert_eq(r.format, DF_LORA_KOHYA);
    expect_same_set(&s, &r);
    df_lora_set_free(&s);
    df_lora_set_free(&r);
}

Test(nn_lora_file, peft_round_trip_and_names) {
    df_lora_set s, r;
    sample_set(&s);
    const char *p = spath("p.safetensors");
    cr_assert_eq(df_lora_file_write(&s, p, DF_LORA_PEFT, NULL), DF_OK, "%s", df_last_error());
    /* alpha only where it is not the rank (entries 1 and 2) */
    const char *keys[] = {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
        "unet.down_blocks.0.resnets.0.conv1.lora_A.weight",
        "unet.down_blocks.0.resnets.0.conv1.lora_B.weight",
        "unet.down_blocks.0.resnets.0.conv1.alpha",
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.lora_A.weight",
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.lora_B.weight",
        "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.alpha",
        "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.lora_A.weight",
        "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.lora_B.weight",
    };
    expect_keys(p, keys, 10);
    cr_assert_eq(df_lora_file_read(p, &r), DF_OK, "%s", df_last_error());
    cr_assert_eq(r.format, DF_LORA_PEFT);
    expect_same_set(&s, &r);
    df_lora_set_free(&s);
    df_lora_set_free(&r);
}

/* the same bytes read from memory give the same set; a pickle in memory is refused */
Test(nn_lora_file, read_memory) {
    df_lora_set s, a, b;
    sample_set(&s);
    const char *p = spath("mem.safetensors");
    cr_assert_eq(df_lora_file_write(&s, p, DF_LORA_KOHYA, NULL), DF_OK);
    size_t n;
    char *bytes = read_whole_file(p, &n);
    cr_assert(bytes);
    cr_assert_eq(df_lora_file_read(p, &a), DF_OK);
    cr_assert_eq(df_lora_file_read_memory(bytes, n, "in-memory", &b), DF_OK, "%s", df_last_error());
    expect_same_set(&a, &b);
    cr_assert_eq(b.format, DF_LORA_KOHYA);
    df_lora_set_free(&a);
    df_lora_set_free(&b);
    expect_status(df_lora_file_read_memory("\x80\x04\x95\x00", 4, "mem.pt", &b), DF_ERR_UNSUPPORTED,
                  "mem.pt: is a PyTorch pickle");
    expect_status(df_lora_file_read_memory(bytes, 20, "cut", &b), DF_ERR_FORMAT, "cut");
    cr_assert_eq(b.n, 0);
    free(bytes);
    df_lora_set_free(&s);
}

/* kohya -> peft -> kohya and peft -> diffusers -> peft (alpha == rank) stay bitwise. */
Test(nn_lora_file, conversions_chain_bitwise) {
    df_lora_set s, a, b;
    sample_set(&s);
    cr_assert_eq(df_lora_file_write(&s, spath("1.safetensors"), DF_LORA_KOHYA, NULL), DF_OK);
    cr_assert_eq(df_lora_file_read(spath("1.safetensors"), &a), DF_OK);
    cr_assert_eq(df_lora_file_write(&a, spath("2.safetensors"), DF_LORA_PEFT, NULL), DF_OK);
    cr_assert_eq(df_lora_file_read(spath("2.safetensors"), &b), DF_OK);
    expect_same_set(&s, &b);
    df_lora_set_free(&a);
    df_lora_set_free(&b);
    for (int i = 0; i < s.n; i++) s.entries[i].alpha = (float)s.entries[i].down->shape[0];
    cr_assert_eq(df_lora_file_write(&s, spath("3.safetensors"), DF_LORA_DIFFUSERS, NULL), DF_OK);
    cr_assert_eq(df_lora_file_read(spath("3.safetensors"), &a), DF_OK);
    cr_assert_eq(df_lora_file_write(&a, spath("4.safetensors"), DF_LORA_KOHYA, NULL), DF_OK);
    cr_assert_eq(df_lora_file_read(spath("4.safetensors"), &b), DF_OK);
    expect_same_set(&s, &b);
    df_lora_set_free(&a);
    df_lora_set_free(&b);
    df_lora_set_free(&s);
}

/* ------------------------------------------------------------------ files built by name ------ */

/* Writes tensors named names[i] with shapes shapes[i] (ndim in nd[i]; values counting 0.01,
 * 0.02, ...) to the scratch file `file`. */
static const char *write_named(const char *file, int n, const char *const *names, const int *nd,
                               const int64_t (*shapes)[4]) {
    df_tensor *ts[16];
    for (int i = 0; i < n; i++) {
        ts[i] = df_tensor_new_owned(DF_DTYPE_F32, nd[i], shapes[i]);
        for (int64_t k = 0; k < ts[i]->numel; k++) df_f32(ts[i])[k] = 0.01f * (float)(k + 1);
    }
    const char *p = spath(file);
    cr_assert_eq(df_st_save(p, n, names, (const df_tensor *const *)ts, 0, NULL, NULL), DF_OK, "%s",
                 df_last_error());
    for (int i = 0; i < n; i++) df_tensor_free(ts[i]);
    return p;
}

/* A pair [r, 4] / [4, r] under names down and up (+ alpha [] when alpha is not NULL). */
static const char *write_pair(const char *file, const char *down, const char *up,
                              const char *alpha) {
    const char *names[3] = {down, up, alpha};
    const int nd[3] = {2, 2, 0};
    const int64_t shapes[3][4] = {{2, 4}, {4, 2}, {0}};
    return write_named(file, alpha ? 3 : 2, names, nd, shapes);
}

static void expect_single_target(const char *path, df_lora_format fmt, const char *target,
                                 float alpha) {
    df_lora_set s;
    cr_assert_eq(df_lora_file_read(path, &s), DF_OK, "%s", df_last_error());
    cr_assert_eq(s.format, fmt, "format %s", df_lora_format_name(s.format));
    cr_assert_eq(s.n, 1);
    cr_assert_str_eq(s.entries[0].target, target);
    cr_assert_eq(s.entries[0].alpha, alpha);
    df_lora_set_free(&s);
}

Test(nn_lora_file, upstream_names_read) {
    const char *attn = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2";
    char d[256], u[256];
    /* attn-procs layout (train_text_to_image_lora.py's save_lora_weights) */
    snprintf(d, sizeof d, "%s.processor.to_out_lora.down.weight", attn);
    snprintf(u, sizeof u, "%s.processor.to_out_lora.up.weight", attn);
    expect_single_target(write_pair("a.safetensors", d, u, NULL), DF_LORA_DIFFUSERS,
                         "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
                         2.0f);
    /* unprefixed (unet.save_attn_procs) */
    expect_single_target(write_pair("b.safetensors", d + 5, u + 5, NULL), DF_LORA_DIFFUSERS,
                         "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
                         2.0f);
    /* the older text-encoder names */
    expect_single_target(
        write_pair("c.safetensors",
                   "text_encoder.text_model.encoder.layers.1.self_attn.to_k_lora.down.weight",
                   "text_encoder.text_model.encoder.layers.1.self_attn.to_k_lora.up.weight", NULL),
        DF_LORA_DIFFUSERS, "text_encoder.text_model.encoder.layers.1.self_attn.k_proj", 2.0f);
    /* peft's own names */
    expect_single_target(
        write_pair("d.safetensors",
                   "base_model.model.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                   "base_model.model.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
                   "base_model.model.text_model.encoder.layers.0.mlp.fc1.alpha"),
        DF_LORA_PEFT, "text_encoder.text_model.encoder.layers.0.mlp.fc1", 0.01f);
    expect_single_target(write_pair("e.safetensors", "base_model.model.conv_in.lora_A.weight",
                                    "base_model.model.conv_in.lora_B.weight", NULL),
                         DF_LORA_PEFT, "unet.conv_in", 2.0f);
    /* kohya without alpha: scale 1; lora_te2_ */
    expect_single_target(
        write_pair("f.safetensors",
                   "lora_te2_text_model_encoder_layers_3_self_attn_v_proj.lora_down.weight",
                   "lora_te2_text_model_encoder_layers_3_self_attn_v_proj.lora_up.weight", NULL),
        DF_LORA_KOHYA, "text_encoder_2.text_model.encoder.layers.3.self_attn.v_proj", 2.0f);
}

Test(nn_lora_file, kohya_unflatten) {
    static const char *const cases[][2] = {
        {"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"},
        {"up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
         "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"},
        {"mid_block_attentions_0_proj_in", "mid_block.attentions.0.proj_in"},
        {"down_blocks_1_resnets_0_conv_shortcut", "down_blocks.1.resnets.0.conv_shortcut"},
        {"down_blocks_0_resnets_1_time_emb_proj", "down_blocks.0.resnets.1.time_emb_proj"},
        {"down_blocks_0_downsamplers_0_conv", "down_blocks.0.downsamplers.0.conv"},
        {"up_blocks_0_upsamplers_0_conv", "up_blocks.0.upsamplers.0.conv"},
        {"down_blocks_2_attentions_1_transformer_blocks_0_ff_net_2",
         "down_blocks.2.attentions.1.transformer_blocks.0.ff.net.2"},
        {"conv_in", "conv_in"},
        {"time_embedding_linear_1", "time_embedding.linear_1"},
        {"text_model_encoder_layers_11_self_attn_out_proj",
         "text_model.encoder.layers.11.self_attn.out_proj"},
        {"text_model_encoder_layers_0_mlp_fc2", "text_model.encoder.layers.0.mlp.fc2"},
    };
    char out[DF_LORA_NAME_MAX];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert(df_lora_kohya_unflatten(cases[i][0], out), "%s", cases[i][0]);
        cr_assert_str_eq(out, cases[i][1]);
    }
    cr_assert_not(df_lora_kohya_unflatten("", out));
    cr_assert_not(df_lora_kohya_unflatten("a__b", out));
    cr_assert_not(df_lora_kohya_unflatten("_a", out));
    cr_assert_not(df_lora_kohya_unflatten("a_", out));
}

/* ------------------------------------------------------------------ refusals ----------------- */

static void expect_read_fails(const char *path, df_status want, const char *must_contain) {
    df_lora_set s;
    memset(&s, 0x5a, sizeof s);
    df_status st = df_lora_file_read(path, &s);
    expect_status(st, want, must_contain);
    cr_assert(strstr(df_last_error(), path), "message does not name the file: %s", df_last_error());
    cr_assert_eq(s.n, 0);
    cr_assert_null(s.entries);
}

Test(nn_lora_file, refuses_pickles) {
    expect_read_fails(scratch_write("zip.bin", "PK\003\004rest of a torch.save zip"),
                      DF_ERR_UNSUPPORTED, "pickle");
    expect_read_fails(scratch_write("p.ckpt", "\x80\x02}q\x00."), DF_ERR_UNSUPPORTED, "pickle");
    expect_read_fails(scratch_write("junk.safetensors", "not a safetensors file at all"),
                      DF_ERR_FORMAT, "");
    expect_read_fails(spath("missing.safetensors"), DF_ERR_IO, "cannot open");
}

Test(nn_lora_file, refuses_unknown_layout_naming_a_key) {
    const char *p = write_pair("u.safetensors", "model.diffusion_model.input_blocks.1.weight",
                               "model.diffusion_model.input_blocks.2.weight", NULL);
    expect_read_fails(p, DF_ERR_FORMAT, "unknown LoRA layout: key 'model.diffusion_model.input");
    const char *none[] = {NULL};
    (void)none;
}

Test(nn_lora_file, reports_unmapped_keys) {
    const char *names[4] = {"lora_unet_conv_in.lora_down.weight",
                            "lora_unet_conv_in.lora_up.weight", "lora_unet_conv_in.hada_w1_a",
                            "lora_unet_conv_in.dora_scale"};
    const int nd[4] = {2, 2, 2, 2};
    const int64_t shapes[4][4] = {{2, 4}, {4, 2}, {2, 2}, {2, 2}};
    const char *p = write_named("m.safetensors", 4, names, nd, shapes);
    expect_read_fails(p, DF_ERR_FORMAT, "2 of 4 keys are not kohya LoRA names");
    cr_assert(strstr(df_last_error(), "lora_unet_conv_in.hada_w1_a"), "%s", df_last_error());
    cr_assert(strstr(df_last_error(), "lora_unet_conv_in.dora_scale"), "%s", df_last_error());
}

Test(nn_lora_file, refuses_bad_tensors) {
    /* rank 0 */
    {
        const char *names[2] = {"unet.conv_in.lora.down.weight", "unet.conv_in.lora.up.weight"};
        const int nd[2] = {2, 2};
        const int64_t shapes[2][4] = {{0, 4}, {4, 0}};
        expect_read_fails(write_named("r0.safetensors", 2, names, nd, shapes), DF_ERR_FORMAT,
                          "'unet.conv_in.lora.down.weight' [0, 4] has rank 0");
    }
    /* mismatched ranks */
    {
        const char *names[2] = {"unet.conv_in.lora.down.weight", "unet.conv_in.lora.up.weight"};
        const int nd[2] = {2, 2};
        const int64_t shapes[2][4] = {{2, 4}, {4, 3}};
        expect_read_fails(write_named("rk.safetensors", 2, names, nd, shapes), DF_ERR_FORMAT,
                          "the ranks disagree");
    }
    /* non-scalar alpha */
    {
        const char *names[3] = {"lora_unet_conv_in.lora_down.weight",
                                "lora_unet_conv_in.lora_up.weight", "lora_unet_conv_in.alpha"};
        const int nd[3] = {2, 2, 1};
        const int64_t shapes[3][4] = {{2, 4}, {4, 2}, {2}};
        expect_read_fails(write_named("al.safetensors", 3, names, nd, shapes), DF_ERR_FORMAT,
                          "'lora_unet_conv_in.alpha' [2]: an alpha must be a scalar");
    }
    /* conv up not 1x1; lone down */
    {
        const char *names[2] = {"unet.conv_in.lora.down.weight", "unet.conv_in.lora.up.weight"};
        const int nd[2] = {4, 4};
        const int64_t shapes[2][4] = {{2, 4, 3, 3}, {4, 2, 3, 3}};
        expect_read_fails(write_named("c3.safetensors", 2, names, nd, shapes), DF_ERR_FORMAT,
                          "must be [out, rank, 1, 1]");
        expect_read_fails(write_named("lone.safetensors", 1, names, nd, shapes), DF_ERR_FORMAT,
                          "has 'unet.conv_in.lora.down.weight' but no up");
    }
    /* two names for one tensor (LoRACompatible and attn-procs) */
    {
        const char *names[3] = {"unet.a.attn1.to_q.lora.down.weight",
                                "unet.a.attn1.processor.to_q_lora.down.weight",
                                "unet.a.attn1.to_q.lora.up.weight"};
        const int nd[3] = {2, 2, 2};
        const int64_t shapes[3][4] = {{2, 4}, {2, 4}, {4, 2}};
        expect_read_fails(write_named("two.safetensors", 3, names, nd, shapes), DF_ERR_FORMAT,
                          "are both the down tensor of unet.a.attn1.to_q");
    }
}

Test(nn_lora_file, refuses_nan_and_int) {
    df_lora_set s;
    sample_set(&s);
    df_f32(s.entries[2].up)[5] = NAN;
    const char *p = spath("nan.safetensors");
    /* the writer checks shapes only; the reader finds the NaN */
    cr_assert_eq(df_lora_file_write(&s, p, DF_LORA_KOHYA, NULL), DF_OK, "%s", df_last_error());
    expect_read_fails(p, DF_ERR_FORMAT,
                      "'lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_up.weight' "
                      "holds NaN at element 5");
    df_lora_set_free(&s);

    df_tensor *ts[2] = {df_tensor_new_owned(DF_DTYPE_I32, DF_DIMS(2, 4)),
                        df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(4, 2))};
    df_tensor_fill_(ts[0], 1);
    df_tensor_fill_(ts[1], 1);
    const char *names[2] = {"unet.x.lora.down.weight", "unet.x.lora.up.weight"};
    p = spath("int.safetensors");
    cr_assert_eq(df_st_save(p, 2, names, (const df_tensor *const *)ts, 0, NULL, NULL), DF_OK);
    expect_read_fails(p, DF_ERR_FORMAT, "'unet.x.lora.down.weight' has dtype I32");
    df_tensor_free(ts[0]);
    df_tensor_free(ts[1]);
}

Test(nn_lora_file, writer_refusals) {
    df_lora_set s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(df_lora_set_add(&s, "vae.decoder.conv_in", owned_randn(1, DF_DIMS(2, 4)),
                                 owned_randn(2, DF_DIMS(4, 2)), 2.0f),
                 DF_OK);
    expect_status(df_lora_file_write(&s, spath("w.safetensors"), DF_LORA_KOHYA, NULL),
                  DF_ERR_UNSUPPORTED, "vae.decoder.conv_in has no kohya name");
    free(s.entries[0].target);
    s.entries[0].target = strdup("unet.my_module.to_q");
    expect_status(df_lora_file_write(&s, spath("w.safetensors"), DF_LORA_KOHYA, NULL),
                  DF_ERR_UNSUPPORTED, "reads back as unet.my.module.to_q");
    cr_assert_eq(df_lora_file_write(&s, spath("w.safetensors"), DF_LORA_PEFT, NULL), DF_OK);
    cr_assert_eq(df_lora_set_add(&s, "unet.my_module.to_q", owned_randn(1, DF_DIMS(2, 4)),
                                 owned_randn(2, DF_DIMS(4, 2)), 2.0f),
                 DF_OK);
    expect_status(df_lora_file_write(&s, spath("w.safetensors"), DF_LORA_PEFT, NULL),
                  DF_ERR_INVALID, "appears twice");
    df_lora_set_free(&s);
}
