/* test_cmd_generate.c — `diffusion generate` on the tiny pipeline folders of
 * tests/fixtures/pipelines/: the command's tensors equal the real diffusers runs of
 * tests/ref/gen_sd_pipelines.py (text-to-image with our tokenizer on the prompt text, inpainting
 * from PNG files), PNGs carry A1111's parameters, --out-dir writes one PNG an image; and bad
 * input (a 10,000-character prompt, invalid UTF-8, images with alpha or 16 bits or of an odd
 * size, a mask of another size, missing components, pickles, bad sizes and latents) is a
 * documented behaviour or a one-line error, never a crash. */
#include "datasets/datasets.h"
#include "tests/common/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char out[1 << 16];

/* Runs `diffusion generate ARGS`; returns the exit code, output in `out`. */
static int gen(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int gen(const char *fmt, ...) {
    static char args[32768], cmd[33000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s generate %s", DF_CLI, args);
    return run_command(cmd, out, sizeof out);
}

/* A fixture path (rotating static buffers: several may be live in one call). */
static const char *fixture_at(const char *prefix, const char *name) {
    static char path[4][512];
    static int k;
    char rel[128];
    snprintf(rel, sizeof rel, "%s%s", prefix, name);
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s", fixture_path(rel));
    return path[k];
}

static const char *pipe_dir(const char *name) {
    return fixture_at("pipelines/", name);
}

static const char *image_path(const char *name) {
    return fixture_at("", name);
}

static df_tensor *read_tensor(const char *path, const char *name) {
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    df_tensor *t;
    cr_assert_eq(df_st_read(f, name, DF_DTYPE_F32, &t), DF_OK, "%s", df_last_error());
    df_st_close(f);
    return t;
}

/* The command's --out-tensor against a fixture run. */
static void expect_run(const char *tensor_file, const char *run) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/runs/%s.safetensors", run);
    const char *names[] = {"latents", "image"};
    const double tol[] = {1e-4, 1e-3};
    for (int i = 0; i < 2; i++) {
        df_tensor *got = read_tensor(tensor_file, names[i]);
        df_tensor *want = fixture_tensor(rel, names[i]);
        check_close(names[i], got, want, tol[i], i == 0 ? 1e-4 : 0);
        df_tensor_free(got);
        df_tensor_free(want);
    }
}

TestSuite(recipes_cmd_generate, .init = NULL);

Test(recipes_cmd_generate, text_to_image_equals_diffusers) {
    const char *d = scratch_dir_new("generate");
    char t[600], png[700];
    snprintf(t, sizeof t, "%s/t.safetensors", d);
    snprintf(png, sizeof png, "%s/grid.png", d);
    cr_assert_eq(gen("%s --prompt 'a red apple on a table' --negative-prompt blurry --n 2 "
                     "--steps 6 --height 32 --width 32 --seed 0 --out %s --out-tensor %s",
                     pipe_dir("sd1"), png, t),
                 0, "%s", out);
    expect_run(t, "sd1_txt2img_pndm");
    size_t n;
    char *bytes = read_whole_file(png, &n);
    cr_assert(bytes, "no PNG written");
    cr_assert(memmem(bytes, n, "tEXtparameters", 14), "no parameters chunk");
    static const char *const want[] = {"a red apple on a table\nNegative prompt: blurry\n",
                                       "Steps: 6, Sampler: PLMS, CFG scale: 7.5, Seed: 0",
                                       "Size: 32x32, Model hash: ", "Model: sd1"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert(memmem(bytes, n, want[i], strlen(want[i])), "parameters lack '%s'", want[i]);
    free(bytes);
    df_tensor *grid;
    cr_assert_eq(df_image_read(png, NULL, &grid), DF_OK, "%s", df_last_error());
    cr_assert(grid->shape[0] == 32 && grid->shape[1] == 64, "a 2-image grid of 32x32");
    df_tensor_free(grid);
    /* v-prediction, another scheduler by its short name, one PNG an image */
    char dir_out[560];
    snprintf(dir_out, sizeof dir_out, "%s/each", d);
    cr_assert_eq(gen("%s --prompt 'red heart' --scheduler dpm++2m --steps 4 --height 32 "
                     "--width 32 --out-dir %s --out-tensor %s",
                     pipe_dir("sd2"), dir_out, t),
                 0, "%s", out);
    expect_run(t, "sd2_txt2img_dpm");
    snprintf(png, sizeof png, "%s/00000-0.png", dir_out);
    cr_assert(read_whole_file(png, &n), "no %s", png);
    scratch_dir_remove();
}

Test(recipes_cmd_generate, inpainting_equals_diffusers) {
    const char *d = scratch_dir_new("generate");
    char t[512];
    snprintf(t, sizeof t, "%s/t.safetensors", d);
    cr_assert_eq(gen("%s --prompt 'a cat face' --scheduler DDIMScheduler --steps 4 --height 32 "
                     "--width 32 --image %s --mask %s --strength 0.7 --out-tensor %s",
                     pipe_dir("sd1_inpaint"), image_path("pipelines/images/init.png"),
                     image_path("pipelines/images/mask.png"), t),
                 0, "%s", out);
    expect_run(t, "sd1_inpaint9_ddim_half");
    scratch_dir_remove();
}

/* Accepted input with a documented behaviour: each run must succeed. */
Test(recipes_cmd_generate, odd_inputs_work) {
    const char *d = scratch_dir_new("generate");
    char t[512];
    snprintf(t, sizeof t, "%s/t.safetensors", d);
    /* 10,000 characters (2,501 tokens): 34 chunks of 75 */
    static char prompt[10001];
    for (int i = 0; i < 10000; i++) prompt[i] = "ab c"[i % 4];
    prompt[10000] = 0;
    cr_assert_eq(gen("%s --prompt '%s' --steps 2 --height 32 --width 32 --out-tensor %s",
                     pipe_dir("sd1"), prompt, t),
                 0, "%s", out);
    cr_assert(strstr(out, "the prompt takes 34 chunks of 75 tokens"), "%s", out);
    /* 37x45: resized to 32x40 (a note); RGBA: alpha over white; 16-bit: the high bytes */
    cr_assert_eq(gen("%s --prompt x --steps 2 --image %s --out-tensor %s", pipe_dir("sd1"),
                     image_path("pipelines/images/odd.png"), t),
                 0, "%s", out);
    cr_assert(strstr(out, "resized to 32x40"), "%s", out);
    df_tensor *img = read_tensor(t, "image");
    cr_assert(img->shape[2] == 40 && img->shape[3] == 32);
    df_tensor_free(img);
    const char *odd[] = {"images/rgba16.png", "images/rgb16.png"};
    for (int i = 0; i < 2; i++)
        cr_assert_eq(gen("%s --prompt x --steps 2 --strength 0.5 --height 16 --width 16 "
                         "--image %s --out-tensor %s",
                         pipe_dir("sd1"), image_path(odd[i]), t),
                     0, "%s: %s", odd[i], out);
    scratch_dir_remove();
}

/* Refused input: a one-line error (exit 1 or 2), no crash, nothing written. */
Test(recipes_cmd_generate, bad_input_is_one_line) {
    const char *d = scratch_dir_new("generate");
    char t[512];
    snprintf(t, sizeof t, "%s/t.safetensors", d);
    struct {
        const char *args, *must;
    } cases[] = {
        {"%s --prompt $'\\xff\\xfe bad' --steps 2 --out-tensor %s", "UTF-8"},
        {"%s --prompt x --steps 2 --height 36 --width 32 --out-tensor %s", "multiples of 8"},
        {"%s --prompt x --steps 2 --mask pipelines/images/mask.png --out-tensor %s", "--image"},
        {"%s --prompt x --steps 2 --guidance 1 --strength 0.01 --image "
         "pipelines/images/init.png --out-tensor %s",
         "no denoising step"},
        {"%s/../sd1_missing --prompt x --out-tensor %s", "model_index.json"},
        {"%s --prompt x --steps 2 --scheduler NoSuchScheduler --out-tensor %s", "NoSuchScheduler"},
        {"%s --prompt x --steps 2 --clip-skip 5 --out-tensor %s", "clip skip"},
        {"%s --prompt x --steps 2 --variant bf16 --out-tensor %s", "bf16"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[2048];
        snprintf(args, sizeof args, cases[i].args, pipe_dir("sd1"), t);
        /* relative image paths are fixture paths */
        char fixed[4096];
        const char *p = strstr(args, "pipelines/images/");
        if (p)
            snprintf(fixed, sizeof fixed, "%.*s%s%s", (int)(p - args), args, fixture_path(""), p);
        else
            snprintf(fixed, sizeof fixed, "%s", args);
        char cmd[8192];
        snprintf(cmd, sizeof cmd, "bash -c \"%s generate %s\"", DF_CLI, fixed);
        int rc = run_command(cmd, out, sizeof out);
        cr_expect(rc == 1 || rc == 2, "case %zu (%s): exit %d: %s", i, fixed, rc, out);
        cr_expect(strstr(out, cases[i].must), "case %zu: '%s' not in: %s", i, cases[i].must, out);
        cr_expect(strstr(out, "diffusion: generate: "), "case %zu: not our error line: %s", i, out);
    }
    /* a mask of another size than the image */
    cr_assert_neq(gen("%s --prompt x --steps 2 --image %s --mask %s --out-tensor %s",
                      pipe_dir("sd1_inpaint"), image_path("pipelines/images/odd.png"),
                      image_path("pipelines/images/mask.png"), t),
                  0);
    cr_assert(strstr(out, "the mask is 32x32 but the image is 37x45"), "%s", out);
    /* pickles, as a folder's weights or as the model */
    remove(t);
    const char *ckpt = scratch_write("model.ckpt", "PK\x03\x04");
    cr_assert_neq(gen("%s --prompt x --out-tensor %s", ckpt, t), 0);
    cr_assert(strstr(out, "pickle"), "%s", out);
    cr_assert(!read_whole_file(t, &(size_t){0}), "an output was written");
    scratch_dir_remove();
}
