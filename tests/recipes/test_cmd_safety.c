/* test_cmd_safety.c — the safety checker in `diffusion generate` (--safety on|flag|off) and
 * `diffusion safety-check`: the tiny sd1 pipeline with the checker of
 * tests/fixtures/models/safety_checker_tiny added (its concept thresholds set so that it flags
 * every image, or none) and a feature extractor. on: flagged images black with a warning naming
 * them; flag: the images kept, the verdicts in a JSON file and the PNG's text; off: a notice, and
 * the only way to run a pipeline whose named checker folder is missing. */
#include "datasets/datasets.h"
#include "tests/common/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char out[1 << 16];

static int cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli(const char *fmt, ...) {
    static char args[8192], cmd[9000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s", DF_CLI, args);
    return run_command(cmd, out, sizeof out);
}

static const char *const INDEX =
    "{\"_class_name\": \"StableDiffusionPipeline\", \"_diffusers_version\": \"0.21.4\",\n"
    " \"feature_extractor\": [\"transformers\", \"CLIPImageProcessor\"],\n"
    " \"requires_safety_checker\": true,\n"
    " \"safety_checker\": [\"stable_diffusion\", \"StableDiffusionSafetyChecker\"],\n"
    " \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
    " \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
    " \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
    " \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
    " \"vae\": [\"diffusers\", \"AutoencoderKL\"]}\n";

/* A scratch pipeline: sd1's models (symbolic links) with a checker whose every concept
 * threshold is `threshold` (-1: every image flagged; 2: none). Returns its folder. */
static const char *pipeline_with_checker(float threshold) {
    const char *d = scratch_dir_new("safety");
    static char dir[600];
    snprintf(dir, sizeof dir, "%s/pipe", d);
    cr_assert_eq(mkdir(dir, 0777), 0);
    const char *parts[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};
    char src[700], dst[700];
    for (int i = 0; i < 5; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "pipelines/sd1/%s", parts[i]);
        snprintf(src, sizeof src, "%s", fixture_path(rel));
        snprintf(dst, sizeof dst, "%s/%s", dir, parts[i]);
        cr_assert_eq(symlink(src, dst), 0);
    }
    scratch_write("pipe/model_index.json", INDEX);
    snprintf(dst, sizeof dst, "%s/feature_extractor", dir);
    cr_assert_eq(mkdir(dst, 0777), 0);
    scratch_write("pipe/feature_extractor/preprocessor_config.json",
                  "{\"size\": 32, \"crop_size\": 32}\n");
    snprintf(dst, sizeof dst, "%s/safety_checker", dir);
    cr_assert_eq(mkdir(dst, 0777), 0);
    size_t len;
    char *cfg = read_whole_file(fixture_path("models/safety_checker_tiny/config.json"), &len);
    scratch_write("pipe/safety_checker/config.json", cfg);
    free(cfg);
    df_st_file *f;
    cr_assert_eq(df_st_open(fixture_path("models/safety_checker_tiny/model.safetensors"), &f),
                 DF_OK);
    int n = df_st_count(f);
    const char **names = calloc((size_t)n, sizeof *names);
    const df_tensor **ts = calloc((size_t)n, sizeof *ts);
    df_scope s = df_scope_begin();
    for (int i = 0; i < n; i++) {
        names[i] = df_st_info_at(f, i)->name;
        df_tensor *t;
        cr_assert_eq(df_st_read(f, names[i], DF_DTYPE_F32, &t), DF_OK);
        if (strcmp(names[i], "concept_embeds_weights") == 0) df_tensor_fill_(t, threshold);
        ts[i] = t;
    }
    snprintf(dst, sizeof dst, "%s/safety_checker/model.safetensors", dir);
    cr_assert_eq(df_st_save(dst, n, names, ts, 0, NULL, NULL), DF_OK, "%s", df_last_error());
    df_scope_end(s);
    df_st_close(f);
    free(names);
    free(ts);
    return dir;
}

static df_tensor *read_image_tensor(const char *path) {
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    df_tensor *t;
    cr_assert_eq(df_st_read(f, "image", DF_DTYPE_F32, &t), DF_OK);
    df_st_close(f);
    return t;
}

static double max_abs(const df_tensor *t) {
    double m = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = df_tensor_get(t, i);
        m = v > m ? v : -v > m ? -v : m;
    }
    return m;
}

#define GEN "generate %s --prompt 'a red apple' --n 2 --steps 2 --height 32 --width 32 --seed 3 "

Test(recipes_cmd_safety, on_blackens_flagged_images) {
    const char *p = pipeline_with_checker(-1);
    char t[700], t_off[700];
    snprintf(t, sizeof t, "%s/../on.safetensors", p);
    snprintf(t_off, sizeof t_off, "%s/../off.safetensors", p);
    cr_assert_eq(cli(GEN "--out-tensor %s", p, t), 0, "%s", out);
    cr_expect(strstr(out, "potential NSFW content was detected in images 0, 1 of 2"), "%s", out);
    df_tensor *on = read_image_tensor(t);
    cr_expect_eq(max_abs(on), 0, "flagged images must be black");
    cr_assert_eq(cli(GEN "--safety off --out-tensor %s", p, t_off), 0, "%s", out);
    cr_expect(strstr(out, "notice: generate: --safety off"), "%s", out);
    cr_expect(!strstr(out, "NSFW"), "%s", out);
    df_tensor *off = read_image_tensor(t_off);
    cr_expect_gt(max_abs(off), 0.01);
    df_tensor_free(on);
    df_tensor_free(off);
    scratch_dir_remove();
}

Test(recipes_cmd_safety, flag_keeps_images_and_writes_verdicts) {
    const char *p = pipeline_with_checker(-1);
    char t[700], t_off[700], png[700], js[700];
    snprintf(t, sizeof t, "%s/../flag.safetensors", p);
    snprintf(t_off, sizeof t_off, "%s/../off.safetensors", p);
    snprintf(png, sizeof png, "%s/../grid.png", p);
    snprintf(js, sizeof js, "%s/../grid.safety.json", p);
    cr_assert_eq(cli(GEN "--safety flag --out %s --out-tensor %s", p, png, t), 0, "%s", out);
    cr_expect(strstr(out, "the safety checker flags image(s) 0, 1"), "%s", out);
    cr_assert_eq(cli(GEN "--safety off --out-tensor %s", p, t_off), 0, "%s", out);
    df_tensor *a = read_image_tensor(t), *b = read_image_tensor(t_off);
    check_close("flag keeps the images", a, b, 0, 0);
    df_tensor_free(a);
    df_tensor_free(b);
    size_t n;
    char *text = read_whole_file(js, &n);
    cr_assert(text, "no %s", js);
    cr_expect(strstr(text, "{\"image\": 0, \"file\": ") && strstr(text, "{\"image\": 1, "), "%s",
              text);
    cr_expect(strstr(text, "\"nsfw\": true, \"special_scores\": ["), "%s", text);
    free(text);
    char *bytes = read_whole_file(png, &n);
    cr_assert(bytes);
    cr_expect(memmem(bytes, n, "tEXtsafety", 10), "no safety text chunk");
    cr_expect(memmem(bytes, n, "\"concept_scores\": [", 19), "no scores in the PNG");
    free(bytes);
    scratch_dir_remove();
}

Test(recipes_cmd_safety, unflagged_images_pass) {
    const char *p = pipeline_with_checker(2);
    char t[700];
    snprintf(t, sizeof t, "%s/../on.safetensors", p);
    cr_assert_eq(cli(GEN "--out-tensor %s", p, t), 0, "%s", out);
    cr_expect(!strstr(out, "NSFW"), "%s", out);
    df_tensor *on = read_image_tensor(t);
    cr_expect_gt(max_abs(on), 0.01);
    df_tensor_free(on);
    scratch_dir_remove();
}

Test(recipes_cmd_safety, missing_checker_needs_safety_off) {
    const char *p = pipeline_with_checker(2);
    char sc[700], t[700];
    snprintf(sc, sizeof sc, "%s/safety_checker", p);
    snprintf(t, sizeof t, "%s/../t.safetensors", p);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "rm -r '%s'", sc);
    cr_assert_eq(system(cmd), 0);
    cr_expect_eq(cli(GEN "--out-tensor %s", p, t), 1, "%s", out);
    cr_expect(strstr(out, "safety_checker: no safety checker folder") &&
                  strstr(out, "--safety off"),
              "%s", out);
    cr_expect_eq(cli(GEN "--safety off --out-tensor %s", p, t), 0, "%s", out);
    cr_expect_eq(cli(GEN "--safety maybe --out-tensor %s", p, t), 2, "%s", out);
    cr_expect(strstr(out, "--safety: 'maybe' (on, flag or off)"), "%s", out);
    scratch_dir_remove();
}

Test(recipes_cmd_safety, safety_check_scores_files) {
    const char *p = pipeline_with_checker(-1);
    char photo[600], emoji[600], wide[700];
    snprintf(photo, sizeof photo, "%s", fixture_path("images/clip_processor/photo.png"));
    snprintf(emoji, sizeof emoji, "%s", fixture_path("images/clip_processor/emoji_1f600.png"));
    cr_assert_eq(cli("safety-check %s %s %s", p, photo, emoji), 0, "%s", out);
    cr_expect(strstr(out, "photo.png\", \"nsfw\": true, \"special_scores\": ["), "%s", out);
    cr_expect(strstr(out, "emoji_1f600.png\", \"nsfw\": true"), "%s", out);
    /* 10000 x 10: a clear error, not a crash */
    snprintf(wide, sizeof wide, "%s/../wide.png", p);
    df_scope s = df_scope_begin();
    cr_assert_eq(df_png_write(wide, df_zeros(DF_DTYPE_U8, DF_DIMS(10, 10000, 3)), 0, NULL, NULL),
                 DF_OK);
    df_scope_end(s);
    cr_expect_eq(cli("safety-check %s %s", p, wide), 1, "%s", out);
    cr_expect(strstr(out, "a 10000 x 10 image") && strstr(out, "aspect ratio"), "%s", out);
    cr_expect_eq(cli("safety-check %s", p), 2, "%s", out);
    scratch_dir_remove();
}

/* --sld max: the latents of diffusers' StableDiffusionPipelineSafe with SafetyConfig.MAX
 * (tests/fixtures/pipelines/runs/sd1_safe_max_ddim, tests/ref/gen_sd_pipelines.py) */
Test(recipes_cmd_safety, sld_preset_equals_diffusers) {
    const char *d = scratch_dir_new("sld");
    char t[600];
    snprintf(t, sizeof t, "%s/t.safetensors", d);
    cr_assert_eq(cli("generate %s --prompt 'grinning face' --scheduler ddim --steps 4 --height 32 "
                     "--width 32 --sld max --out-tensor %s",
                     fixture_path("pipelines/sd1"), t),
                 0, "%s", out);
    df_st_file *f;
    cr_assert_eq(df_st_open(t, &f), DF_OK);
    df_tensor *got;
    cr_assert_eq(df_st_read(f, "latents", DF_DTYPE_F32, &got), DF_OK);
    df_st_close(f);
    df_tensor *want = fixture_tensor("pipelines/runs/sd1_safe_max_ddim.safetensors", "latents");
    check_close("--sld max latents", got, want, 1e-4, 1e-4);
    df_tensor_free(got);
    df_tensor_free(want);
    cr_expect_eq(cli("generate %s --prompt x --sld extreme --out-tensor %s",
                     fixture_path("pipelines/sd1"), t),
                 2, "%s", out);
    cr_expect(strstr(out, "--sld: 'extreme' (weak, medium, strong or max)"), "%s", out);
    scratch_dir_remove();
}
