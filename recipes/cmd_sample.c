/* cmd_sample.c — `diffusion sample MODEL_DIR [--scheduler NAME] [--steps N] [--seed S] [--n N]
 * [--latents init.safetensors] [--out grid.png | --out-tensor out.safetensors]`: unconditional
 * generation from a diffusers pipeline folder. The initial noise is torch.randn((n, C, H, W))
 * of a torch CPU generator seeded with S (so diffusers with the same seed starts from the same
 * noise), or the tensor `latents` of --latents; the same generator feeds stochastic steps.
 * The grid PNG carries the generation parameters in a `parameters` tEXt chunk; --out-tensor
 * writes the loop's final `sample` before any clamping. Outputs are written atomically (a
 * temporary sibling renamed into place); one that is an input (--latents, a file of the model
 * folder) is refused, as is a grid name with another image format's extension (only PNG is
 * written). --n and --latents must agree on the count. Non-finite final latents warn. */
#include "datasets/datasets.h"
#include "infer/infer.h"
#include "recipes/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int usage(void) {
    fprintf(stderr, "usage: diffusion sample MODEL_DIR [--scheduler NAME] [--steps N] [--seed S] "
                    "[--n N] [--latents init.safetensors] [--out grid.png | --out-tensor "
                    "out.safetensors]\n");
    return 2;
}

/* A bad argument: "diffusion: sample: <why>", then the usage; exit code 2. */
static int bad_arg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad_arg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "diffusion: sample: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return usage();
}

/* The grid is written as PNG only: another image extension would get PNG bytes. */
static bool png_name(const char *path) {
    const char *base = strrchr(path, '/');
    const char *dot = strrchr(base ? base : path, '.');
    static const char *const other[] = {".jpg", ".jpeg", ".webp", ".gif", ".bmp",
                                        ".tif", ".tiff", ".avif", ".heic"};
    for (size_t i = 0; dot && i < sizeof other / sizeof *other; i++)
        if (strcasecmp(dot, other[i]) == 0) return false;
    return true;
}

static bool parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* The initial noise: --latents' `latents`, or randn from the seeded generator. An explicit
 * --n (n_given) must agree with the latents' N. */
static df_status initial_noise(const char *latents_path, const df_unet2d_config *c, int n,
                               bool n_given, df_torchgen *gen, df_tensor **out) {
    if (latents_path) {
        df_st_file *f;
        DF_TRY(df_st_open(latents_path, &f));
        df_status st = df_st_read(f, "latents", DF_DTYPE_F32, out);
        df_st_close(f);
        if (st != DF_OK) return st;
        if ((*out)->ndim != 4 || (*out)->shape[1] != c->in_channels)
            return df_error(DF_ERR_INVALID, "%s: 'latents' must be (N, %d, H, W)", latents_path,
                            c->in_channels);
        if (n_given && (*out)->shape[0] != n)
            return df_error(DF_ERR_INVALID,
                            "%s: 'latents' holds %lld images but --n asks for %d: drop --n or "
                            "make them agree",
                            latents_path, (long long)(*out)->shape[0], n);
        return df_unet2d_check_sample(c, *out);
    }
    if (c->sample_size <= 0)
        return df_error(DF_ERR_INVALID, "the UNet config has no sample_size: give --latents");
    int width = c->sample_width ? c->sample_width : c->sample_size;
    df_tensor shape = {
        .dtype = DF_DTYPE_F32, .ndim = 4, .shape = {n, c->in_channels, c->sample_size, width}};
    DF_TRY(df_unet2d_check_sample(c, &shape)); /* before allocating */
    *out = df_tensor_new(DF_DTYPE_F32, DF_DIMS(n, c->in_channels, c->sample_size, width));
    df_torchgen_randn(gen, df_f32(*out), (*out)->numel);
    return DF_OK;
}

int df_cmd_sample(int argc, char **argv) {
    const char *dir = NULL, *sched_name = NULL, *latents_path = NULL, *out_png = NULL,
               *out_tensor = NULL;
    long long steps = -1, seed = 0, n = 16;
    bool n_given = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = a[0] == '-';
        if (takes && !v) return bad_arg("%s needs a value", a);
        if (strcmp(a, "--scheduler") == 0)
            sched_name = v;
        else if (strcmp(a, "--latents") == 0)
            latents_path = v;
        else if (strcmp(a, "--out") == 0)
            out_png = v;
        else if (strcmp(a, "--out-tensor") == 0)
            out_tensor = v;
        else if (strcmp(a, "--steps") == 0) {
            if (!parse_long(v, 1, 100000, &steps))
                return bad_arg("--steps must be an integer in 1..100000, got '%s'", v);
        } else if (strcmp(a, "--seed") == 0) {
            if (!parse_long(v, 0, INT64_MAX, &seed))
                return bad_arg("--seed must be a non-negative integer, got '%s'", v);
        } else if (strcmp(a, "--n") == 0) {
            if (!parse_long(v, 1, 4096, &n))
                return bad_arg("--n must be an integer in 1..4096, got '%s'", v);
            n_given = true;
        } else if (takes)
            return bad_arg("unknown option '%s'", a);
        else if (!dir)
            dir = a;
        else
            return bad_arg("unexpected argument '%s' (MODEL_DIR is already '%s')", a, dir);
        if (takes) i++;
    }
    if (!dir) return bad_arg("missing MODEL_DIR (a diffusers pipeline folder)");
    if (out_png && out_tensor) return bad_arg("--out and --out-tensor exclude each other");
    if (!out_png && !out_tensor) out_png = "samples.png";
    if (out_png && !png_name(out_png))
        return bad_arg("--out %s: only PNG is written; name the grid .png", out_png);
    const char *out = out_png ? out_png : out_tensor;
    if (df_cli_check_output(out, &latents_path, 1, dir) != DF_OK) return df_cli_fail("sample");

    df_uncond_pipeline p;
    df_status st = df_uncond_pipeline_load(dir, sched_name, &p);
    if (st != DF_OK) {
        df_uncond_pipeline_free(&p);
        return df_cli_fail("sample");
    }
    const df_sched_config *sc = df_sched_config_of(p.sched);
    if (steps < 0) steps = sc->kind == DF_SCHED_DDPM ? sc->num_train_timesteps : 50;
    df_torchgen gen;
    df_torchgen_seed(&gen, (uint64_t)seed);
    df_scope scope = df_scope_begin();
    df_tensor *noise = NULL, *sample = NULL;
    st = initial_noise(latents_path, &p.unet.unet2d->config, (int)n, n_given, &gen, &noise);
    if (st == DF_OK && out_png && noise->shape[1] != 1 && noise->shape[1] != 3)
        st = df_error(DF_ERR_INVALID, "%s: a %lld-channel sample is no image: use --out-tensor",
                      out_png, (long long)noise->shape[1]);
    if (st == DF_OK)
        st = df_uncond_sample(df_unet2d_denoise, p.unet.unet2d, p.sched, (int)steps, noise, &gen,
                              &sample);
    int64_t bad = st == DF_OK ? df_images_nonfinite(sample) : 0;
    if (bad > 0)
        fprintf(stderr,
                "warning: sample: %lld of %lld values of the final latents are NaN or infinite "
                "(shown black): the model or the scheduler settings diverged\n",
                (long long)bad, (long long)sample->numel);
    if (st == DF_OK && out_tensor) {
        const char *name = "sample";
        st = df_st_save(out_tensor, 1, &name, (const df_tensor *const *)&sample, 0, NULL, NULL);
    }
    if (st == DF_OK && out_png) {
        char params[1024];
        snprintf(params, sizeof params,
                 "model: %s, scheduler: %s, steps: %lld, seed: %lld, n: %lld%s%s", dir,
                 df_sched_kind_name(sc->kind), steps, seed, (long long)sample->shape[0],
                 latents_path ? ", latents: " : "", latents_path ? latents_path : "");
        const char *key = "parameters", *val = params;
        st = df_png_write(out_png, df_images_to_grid(sample, 0), 1, &key, &val);
    }
    df_tensor_free(sample);
    df_scope_end(scope);
    df_uncond_pipeline_free(&p);
    if (st != DF_OK) return df_cli_fail("sample");
    fprintf(stderr, "sample: %s\n", out_png ? out_png : out_tensor);
    return 0;
}
