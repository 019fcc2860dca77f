/* test_cmd_lora.c — `diffusion lora inspect|convert|merge` end to end, and the parity of LoRA
 * files with diffusers v0.21.4 (tests/ref/gen_lora_formats.py): each file of
 * tests/fixtures/lora/ merged into the tiny SD 2 pipeline by our merge gives the UNet and text
 * encoder outputs upstream computes after load_lora_weights and after fuse_lora (max abs
 * difference <= 1e-5). The files our writer made (ours_*) were loaded by upstream in the
 * generator to the outputs of their sources; here convert must still write them byte for byte.
 */
#include "nn/lora_file.h"
#include "nn/nn.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int run(const char *args, char *out, size_t len) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s", DF_CLI, args);
    return run_command(cmd, out, len);
}

static void setup(void) {
    scratch_dir_new("cmd_lora");
}
static void teardown(void) {
    scratch_dir_remove();
}
TestSuite(recipes_cmd_lora, .init = setup, .fini = teardown);

static const char *spath(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", scratch_dir(), name);
    return p;
}

/* fixture_path in a buffer of its own (fixture_path's is static) */
static const char *fx(const char *rel) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s", fixture_path(rel));
    return p;
}

/* Max abs difference between tensor `name` of file a and `want_name` of file b. */
static double max_abs_diff(const char *a, const char *name, const char *b, const char *want_name) {
    df_st_file *fa = NULL, *fb = NULL;
    cr_assert_eq(df_st_open(a, &fa), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_open(b, &fb), DF_OK, "%s", df_last_error());
    df_tensor *x = NULL, *y = NULL;
    cr_assert_eq(df_st_read(fa, name, DF_DTYPE_F32, &x), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_read(fb, want_name, DF_DTYPE_F32, &y), DF_OK, "%s", df_last_error());
    cr_assert(df_tensor_same_shape(x, y), "%s: shapes differ", want_name);
    double m = 0;
    for (int64_t i = 0; i < x->numel; i++) {
        double d = fabs((double)df_f32(x)[i] - (double)df_f32(y)[i]);
        if (!(d <= m)) m = d; /* NaN wins */
    }
    df_tensor_free(x);
    df_tensor_free(y);
    df_st_close(fa);
    df_st_close(fb);
    return m;
}

/* Merges `lora_arg` into the SD 2 fixture with --float, runs the UNet and the text encoder on
 * the fixture inputs, and compares with upstream's outputs `<src>.unet<sfx>` / `.text<sfx>`. */
static void check_merge(const char *lora_arg, const char *src, const char *const *sfx, int n_sfx) {
    char args[4096], out[8192], merged[512];
    snprintf(merged, sizeof merged, "%s/merged_%s", scratch_dir(), src);
    snprintf(args, sizeof args, "lora merge %s %s %s --float", fx("pipelines/sd2"), lora_arg,
             merged);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    const char *want = fx("lora/outputs.safetensors");
    const char *comp[2] = {"unet", "text_encoder"}, *inputs[2] = {"inputs", "text_inputs"};
    const char *key[2] = {"unet", "text"}, *main_out[2] = {"sample", "last_hidden_state"};
    for (int c = 0; c < 2; c++) {
        char res[600], in[600];
        snprintf(res, sizeof res, "%s/%s_out.safetensors", merged, comp[c]);
        snprintf(in, sizeof in, "lora/%s.safetensors", inputs[c]);
        snprintf(in, sizeof in, "%s", fx(in));
        snprintf(args, sizeof args, "forward %s/%s --inputs %s --out %s", merged, comp[c], in, res);
        cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
        double base = max_abs_diff(res, main_out[c], want, c ? "base.text" : "base.unet");
        cr_assert_gt(base, 0.3, "%s %s: the LoRA barely changes the output (%g)", src, comp[c],
                     base);
        for (int k = 0; k < n_sfx; k++) {
            char name[128];
            snprintf(name, sizeof name, "%s.%s%s", src, key[c], sfx[k]);
            double d = max_abs_diff(res, main_out[c], want, name);
            cr_log_info("%s: max abs diff %g", name, d);
            cr_expect(d <= 1e-5, "%s: max abs diff %g", name, d);
        }
    }
}

static const char *const both[] = {"", "_fused"};

Test(recipes_cmd_lora, diffusers_file_matches_upstream) {
    check_merge(fx("lora/diffusers.safetensors"), "diffusers", both, 2);
}

Test(recipes_cmd_lora, kohya_file_matches_upstream) {
    check_merge(fx("lora/kohya.safetensors"), "kohya", both, 2);
}

Test(recipes_cmd_lora, kohya_scaled_matches_upstream_fuse) {
    char arg[600];
    snprintf(arg, sizeof arg, "%s:0.7", fx("lora/kohya.safetensors"));
    const char *sfx[] = {"_fused_0.7"};
    check_merge(arg, "kohya", sfx, 1);
}

Test(recipes_cmd_lora, our_files_match_upstream) {
    check_merge(fx("lora/ours_diffusers.safetensors"), "ours_diffusers", both, 2);
    check_merge(fx("lora/ours_kohya.safetensors"), "ours_kohya", both, 2);
    check_merge(fx("lora/ours_diffusers_rt.safetensors"), "ours_diffusers_rt", both, 2);
}

/* convert still writes the files upstream loaded in the generator, byte for byte */
Test(recipes_cmd_lora, convert_writes_the_checked_files) {
    static const char *const cases[][3] = {{"kohya", "ours_diffusers", "diffusers"},
                                           {"kohya", "ours_kohya", "kohya"},
                                           {"diffusers", "ours_diffusers_rt", "diffusers"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048], out[4096], src[512], want[512];
        snprintf(src, sizeof src, "lora/%s.safetensors", cases[i][0]);
        snprintf(want, sizeof want, "lora/%s.safetensors", cases[i][1]);
        const char *got = spath(cases[i][1]);
        snprintf(args, sizeof args, "lora convert %s %s --format %s", fx(src), got, cases[i][2]);
        cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
        size_t na, nb;
        char *a = read_whole_file(got, &na), *b = read_whole_file(fx(want), &nb);
        cr_assert(a && b);
        cr_assert(na == nb && memcmp(a, b, na) == 0, "%s differs from %s", got, want);
        free(a);
        free(b);
    }
}

static void expect_same_sets(const char *pa, const char *pb, bool alpha_too) {
    df_lora_set a, b;
    cr_assert_eq(df_lora_file_read(pa, &a), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_lora_file_read(pb, &b), DF_OK, "%s", df_last_error());
    cr_assert_eq(a.n, b.n);
    for (int i = 0; i < a.n; i++) {
        const df_lora_entry *x = &a.entries[i], *y = &b.entries[i];
        cr_assert_str_eq(x->target, y->target);
        cr_assert(df_tensor_same_shape(x->down, y->down) && df_tensor_same_shape(x->up, y->up));
        cr_assert(memcmp(x->down->data, y->down->data, (size_t)x->down->numel * 4) == 0, "%s",
                  x->target);
        cr_assert(memcmp(x->up->data, y->up->data, (size_t)x->up->numel * 4) == 0, "%s", x->target);
        if (alpha_too) cr_assert_eq(x->alpha, y->alpha, "%s", x->target);
    }
    df_lora_set_free(&a);
    df_lora_set_free(&b);
}

/* every direction: X -> Y -> X keeps the values bitwise (kohya -> diffusers folds alpha, so
 * kohya goes through peft, and diffusers files hold alpha == rank) */
Test(recipes_cmd_lora, convert_round_trips) {
    static const char *const chains[][3] = {{"kohya", "peft", "kohya"},
                                            {"diffusers", "kohya", "diffusers"},
                                            {"diffusers", "peft", "diffusers"},
                                            {"kohya", "kohya", "peft"}};
    for (size_t i = 0; i < sizeof chains / sizeof chains[0]; i++) {
        char args[2048], out[4096], src[512];
        snprintf(src, sizeof src, "lora/%s.safetensors", chains[i][0]);
        const char *mid = spath("mid.safetensors"), *back = spath("back.safetensors");
        snprintf(args, sizeof args, "lora convert %s %s --format %s", fx(src), mid, chains[i][1]);
        cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
        snprintf(args, sizeof args, "lora convert %s %s --format %s", mid, back, chains[i][2]);
        cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
        df_lora_set s;
        cr_assert_eq(df_lora_file_read(back, &s), DF_OK);
        cr_assert_str_eq(df_lora_format_name(s.format), chains[i][2]);
        df_lora_set_free(&s);
        expect_same_sets(fx(src), back, true);
        remove(mid);
        remove(back);
    }
}

Test(recipes_cmd_lora, inspect_prints_format_ranks_targets) {
    char args[1024], out[8192];
    snprintf(args, sizeof args, "lora inspect %s", fx("lora/kohya.safetensors"));
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    static const char *const want[] = {"format: kohya",
                                       "targets: 78",
                                       "rank: 2, 3, 4",
                                       "alpha: 1, 1.5, 2, 3",
                                       "unet: 66 targets",
                                       "text_encoder: 12 targets",
                                       "attn2.to_out.0                   4  linear",
                                       "conv1                            8  conv 3x3",
                                       "mlp.fc2                          2  linear"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(strstr(out, want[i]), "no '%s' in:\n%s", want[i], out);
}

/* two LoRAs in one merge = one merged after the other (the updates add up, in order) */
Test(recipes_cmd_lora, stacking_adds_up) {
    char args[4096], out[8192];
    const char *sd2 = fx("pipelines/sd2");
    char d[512], k[512];
    snprintf(d, sizeof d, "%s", fx("lora/diffusers.safetensors"));
    snprintf(k, sizeof k, "%s", fx("lora/kohya.safetensors"));
    snprintf(args, sizeof args, "lora merge %s %s:0.5 %s:-1.25 %s --float", sd2, d, k,
             spath("both"));
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    snprintf(args, sizeof args, "lora merge %s %s:0.5 %s --float", sd2, d, spath("first"));
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    snprintf(args, sizeof args, "lora merge %s %s:-1.25 %s", spath("first"), k, spath("second"));
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    const char *files[] = {
        "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors", "model_index.json", "tokenizer/vocab.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char a[700], b[700];
        snprintf(a, sizeof a, "%s/%s", spath("both"), files[i]);
        snprintf(b, sizeof b, "%s/%s", spath("second"), files[i]);
        size_t na, nb;
        char *x = read_whole_file(a, &na), *y = read_whole_file(b, &nb);
        cr_assert(x && y, "%s", files[i]);
        cr_assert(na == nb && memcmp(x, y, na) == 0, "%s differs", files[i]);
        free(x);
        free(y);
    }
}

/* A set written by hand: target `target` with down [r, in] / up [out, r]. */
static const char *write_lora(const char *file, const char *target, int64_t in, int64_t out) {
    df_lora_set s;
    memset(&s, 0, sizeof s);
    df_tensor *down = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(2, in));
    df_tensor *up = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(out, 2));
    df_tensor_fill_(down, 0.5);
    df_tensor_fill_(up, 0.5);
    cr_assert_eq(df_lora_set_add(&s, target, down, up, 2.0f), DF_OK);
    const char *p = spath(file);
    cr_assert_eq(df_lora_file_write(&s, p, DF_LORA_KOHYA, NULL), DF_OK, "%s", df_last_error());
    df_lora_set_free(&s);
    return p;
}

static void expect_fail(const char *args, const char *must_contain) {
    char out[8192];
    int rc = run(args, out, sizeof out);
    cr_assert_neq(rc, 0, "'%s' succeeded:\n%s", args, out);
    cr_assert(strstr(out, must_contain), "'%s': no '%s' in:\n%s", args, must_contain, out);
    cr_assert(strchr(out, '\n') == out + strlen(out) - 1 || rc == 2, "not one line:\n%s", out);
}

Test(recipes_cmd_lora, errors) {
    char args[4096];
    const char *sd2 = fx("pipelines/sd2"), *k = fx("lora/kohya.safetensors");
    snprintf(args, sizeof args, "lora merge %s %s:abc %s", sd2, k, spath("o1"));
    expect_fail(args, "the scale 'abc' is not a number");
    snprintf(args, sizeof args, "lora merge %s %s:nan %s", sd2, k, spath("o1"));
    expect_fail(args, "the scale 'nan' is not a number");
    snprintf(args, sizeof args, "lora convert %s %s --format lycoris", k, spath("c.safetensors"));
    expect_fail(args, "--format 'lycoris': expected diffusers, kohya or peft");
    snprintf(args, sizeof args, "lora convert %s %s --format kohya", k, k);
    expect_fail(args, "kohya.safetensors");
    /* a target the pipeline does not have */
    const char *p =
        write_lora("missing.safetensors", "unet.down_blocks.7.attentions.0.proj_in", 16, 16);
    snprintf(args, sizeof args, "lora merge %s %s %s", sd2, p, spath("o2"));
    expect_fail(args, "1 of 1 LoRA targets match no weight of the pipeline: "
                      "unet.down_blocks.7.attentions.0.proj_in");
    /* another model's LoRA: the shapes name the target */
    p = write_lora("shape.safetensors", "unet.down_blocks.0.attentions.0.proj_in", 40, 16);
    snprintf(args, sizeof args, "lora merge %s %s %s", sd2, p, spath("o3"));
    expect_fail(args, "LoRA target unet.down_blocks.0.attentions.0.proj_in does not fit: weight "
                      "[16, 16], down [2, 40], up [16, 2]");
    /* nothing was written for the failed merges */
    FILE *f = fopen(spath("o3/model_index.json"), "r");
    cr_assert_null(f);
    /* an existing, non-empty output folder */
    snprintf(args, sizeof args, "lora merge %s %s %s", sd2, k, scratch_dir());
    expect_fail(args, "exists and is not empty");
    snprintf(args, sizeof args, "lora merge %s %s %s/unet/merged", sd2, k, sd2);
    expect_fail(args, "is inside the base folder");
    expect_fail("lora frobnicate x", "unknown verb 'frobnicate'");
}

/* SD 1.x (fp16 variant files, 1x1 conv proj_in) with an SD 2.x LoRA (linear proj_in): the file
 * keeps its name and dtype, and a merged weight is F16(W + scale * alpha / rank * up @ down) */
Test(recipes_cmd_lora, merge_keeps_dtype_and_fits_1x1_conv) {
    char args[4096], out[8192];
    const char *k = fx("lora/kohya.safetensors");
    snprintf(args, sizeof args, "lora merge %s %s:0.5 %s", fx("pipelines/sd1"), k, spath("m"));
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    char merged[700];
    snprintf(merged, sizeof merged, "%s/unet/diffusion_pytorch_model.fp16.safetensors", spath("m"));
    df_st_file *fm = NULL, *fb = NULL;
    cr_assert_eq(df_st_open(merged, &fm), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_open(fx("pipelines/sd1/unet/diffusion_pytorch_model.fp16.safetensors"), &fb),
                 DF_OK);
    df_lora_set s;
    cr_assert_eq(df_lora_file_read(k, &s), DF_OK);
    const char *target = "unet.down_blocks.0.attentions.0.proj_in";
    const df_lora_entry *e = NULL;
    for (int i = 0; i < s.n; i++)
        if (strcmp(s.entries[i].target, target) == 0) e = &s.entries[i];
    cr_assert(e && e->down->ndim == 2);
    const char *name = "down_blocks.0.attentions.0.proj_in.weight";
    cr_assert_eq(df_st_find(fm, name)->dtype, DF_DTYPE_F16);
    cr_assert_eq(df_st_find(fm, name)->ndim, 4);
    df_tensor *w = NULL, *got = NULL;
    cr_assert_eq(df_st_read(fb, name, DF_DTYPE_F32, &w), DF_OK);
    cr_assert_eq(df_lora_entry_add_to(e, 0.5f, w, "test"), DF_OK, "%s", df_last_error());
    df_tensor *want = df_tensor_to(w, DF_DTYPE_F16);
    cr_assert_eq(df_st_read(fm, name, DF_DTYPE_F16, &got), DF_OK);
    cr_assert(memcmp(got->data, want->data, (size_t)got->numel * 2) == 0, "merged proj_in differs");
    double moved = 0;
    for (int64_t i = 0; i < got->numel; i++)
        moved = fmax(moved, fabs(df_tensor_get(got, i) - df_tensor_get(w, i)));
    cr_assert_lt(moved, 0.01, "rounding only");
    df_tensor_free(w);
    df_tensor_free(want);
    df_tensor_free(got);
    df_lora_set_free(&s);
    df_st_close(fm);
    df_st_close(fb);
}
