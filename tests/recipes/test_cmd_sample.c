/* test_cmd_sample.c — `diffusion sample` on a pipeline folder built from diffusers' own
 * UNet2DModel fixture: a grid PNG with the generation parameters in a tEXt chunk; the same
 * seed or the same --latents give the same tensor; a different scheduler runs; bad input is a
 * one-line error. */
#include "nn/nn.h"
#include "tests/common/check.h"
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static char dir[256];

static int run(const char *args, char *out, size_t len) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s sample %s", DF_CLI, args);
    return run_command(cmd, out, len);
}

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/df_sample_XXXXXX");
    cr_assert(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/pipe", dir);
    fixture_ddpm_pipeline(path);
}

static void teardown(void) {
    df_remove_tree(dir);
}

TestSuite(recipes_cmd_sample, .init = setup, .fini = teardown);

static df_tensor *read_sample(const char *file) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    df_tensor *t;
    cr_assert_eq(df_st_read(f, "sample", DF_DTYPE_F32, &t), DF_OK);
    df_st_close(f);
    return t;
}

Test(recipes_cmd_sample, grid_and_determinism) {
    char out[8192], args[2048];
    snprintf(args, sizeof args,
             "%s/pipe --scheduler DDIMScheduler --steps 4 --n 3 --seed 7 --out %s/g.png", dir, dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    char path[512];
    snprintf(path, sizeof path, "%s/g.png", dir);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "no grid written");
    static char png[1 << 16];
    size_t n = fread(png, 1, sizeof png, f);
    fclose(f);
    cr_assert_gt(n, 8);
    cr_assert(memmem(png, n, "tEXtparameters", 14), "no parameters tEXt chunk");
    cr_assert(memmem(png, n, "scheduler: DDIMScheduler, steps: 4, seed: 7, n: 3", 49),
              "parameters chunk lacks the settings");

    df_scope s = df_scope_begin();
    snprintf(
        args, sizeof args,
        "%s/pipe --scheduler DDIMScheduler --steps 4 --n 2 --seed 7 --out-tensor %s/a.safetensors",
        dir, dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    snprintf(
        args, sizeof args,
        "%s/pipe --scheduler DDIMScheduler --steps 4 --n 2 --seed 7 --out-tensor %s/b.safetensors",
        dir, dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    df_tensor *a = read_sample("a.safetensors"), *b = read_sample("b.safetensors");
    check_close("same seed", a, b, 0, 0);
    cr_assert_eq(a->shape[0], 2);
    cr_assert_eq(a->shape[2], 16);
    /* --latents with torch.randn(2,3,16,16) of seed 7 equals --seed 7 */
    df_torchgen g;
    df_torchgen_seed(&g, 7);
    df_tensor *lat = df_tensor_new(DF_DTYPE_F32, DF_DIMS(2, 3, 16, 16));
    df_torchgen_randn(&g, df_f32(lat), lat->numel);
    const char *name = "latents";
    snprintf(path, sizeof path, "%s/lat.safetensors", dir);
    cr_assert_eq(df_st_save(path, 1, &name, (const df_tensor *const *)&lat, 0, NULL, NULL), DF_OK);
    snprintf(args, sizeof args,
             "%s/pipe --scheduler DDIMScheduler --steps 4 --latents %s --seed 7 --out-tensor "
             "%s/c.safetensors",
             dir, path, dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    check_close("--latents", read_sample("c.safetensors"), a, 0, 0);
    /* the folder's own scheduler (PNDM) runs too, and differs */
    snprintf(args, sizeof args, "%s/pipe --steps 4 --n 2 --seed 7 --out-tensor %s/d.safetensors",
             dir, dir);
    cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
    cr_assert_gt(rel_max_err(read_sample("d.safetensors"), a), 1e-3);
    df_scope_end(s);
}

Test(recipes_cmd_sample, errors) {
    char out[8192], args[2048];
    cr_assert_eq(run("/nonexistent", out, sizeof out), 1);
    cr_assert(strstr(out, "diffusion: sample: /nonexistent/model_index.json"), "%s", out);
    snprintf(args, sizeof args, "%s/pipe --scheduler NoSuchScheduler", dir);
    cr_assert_eq(run(args, out, sizeof out), 1);
    cr_assert(strstr(out, "NoSuchScheduler"), "%s", out);
    cr_assert_eq(run("", out, sizeof out), 2);
    cr_assert(strstr(out, "usage: diffusion sample"), "%s", out);
}
