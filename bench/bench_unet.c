/* bench_unet.c — whole-model benchmark of our UNets, for comparison with the PyTorch peer
 * bench/torch_unet.py (a plain-torch diffusers v0.21.4 UNet; run both with bench/run-unet.sh).
 *
 * Modes (one per process, so the peak RSS is the mode's own):
 *   train32  UNet2DModel {sample_size 32, block_out_channels [64, 128, 128], layers_per_block 2,
 *            down [DownBlock2D, AttnDownBlock2D, DownBlock2D], up [UpBlock2D, AttnUpBlock2D,
 *            UpBlock2D], other fields diffusers' defaults}, batch 32: one training step =
 *            zero the (flat) gradients, forward, MSE against a random target, backward;
 *            timesteps random integers in [0, 1000).
 *   infer32  the same model, forward only, grad mode off.
 *   sd15 CONFIG.json   UNet2DConditionModel from the config (SD 1.5), random weights, batch 1,
 *            64x64 latents, 77x768 context, forward only, grad mode off.
 * Usage: bench_unet MODE [CONFIG.json] [WARMUP ITERS]  (defaults 1 warm-up, 3 timed).
 * Output: one JSON line {"mode", "impl": "ours", "ms": median ms per step, "peak_rss_mib":
 * getrusage ru_maxrss in MiB, "iters", "params": the parameter count}. Inputs and targets are
 * drawn outside the timed region; ending the step's scope (freeing its tensors) is inside it.
 * Threads: OMP_NUM_THREADS (bench/run-unet.sh sets 2, and OMP_WAIT_POLICY passive).
 * DF_BENCH_MIXED=bf16 runs the step under mixed precision (df_set_compute_dtype BF16).
 * DF_BENCH_MEM=1 also prints, per step on stderr, our allocator's view (df_mem_get_stats): bytes
 * in use after the forward, after the backward (before the step's scope ends), and the peak.
 */
#include "nn/nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static void die(const char *what) {
    fprintf(stderr, "bench_unet: %s: %s\n", what, df_last_error());
    exit(1);
}

static df_tensor *randn(df_philox *g, int ndim, const int64_t *shape) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, ndim, shape);
    df_philox_fill_normal(g, df_f32(t), t->numel);
    return t;
}

static df_tensor *rand_timesteps(df_philox *g, int n) {
    df_tensor *t = df_tensor_new(DF_DTYPE_I64, 1, (int64_t[]){n});
    for (int i = 0; i < n; i++) ((int64_t *)t->data)[i] = df_philox_u32(g) % 1000;
    return t;
}

/* Case (a): diffusers' UNet2DModel defaults with the overrides. */
static df_unet2d_config case_a_config(void) {
    df_unet2d_config c = df_unet2d_config_default();
    const char *down[] = {"DownBlock2D", "AttnDownBlock2D", "DownBlock2D"};
    const char *up[] = {"UpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
    const int boc[] = {64, 128, 128};
    c.sample_size = 32;
    c.n_blocks = 3;
    c.layers_per_block = 2;
    memset(c.block_out_channels, 0, sizeof c.block_out_channels);
    memset(c.down_block_types, 0, sizeof c.down_block_types);
    memset(c.up_block_types, 0, sizeof c.up_block_types);
    for (int i = 0; i < 3; i++) {
        c.block_out_channels[i] = boc[i];
        snprintf(c.down_block_types[i], DF_JSON_STR, "%s", down[i]);
        snprintf(c.up_block_types[i], DF_JSON_STR, "%s", up[i]);
    }
    return c;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_unet train32|infer32|sd15 CONFIG.json [WARMUP ITERS]\n");
        return 2;
    }
    const char *mode = argv[1];
    bool sd15 = strcmp(mode, "sd15") == 0, train = strcmp(mode, "train32") == 0;
    if (!sd15 && !train && strcmp(mode, "infer32") != 0) {
        fprintf(stderr, "bench_unet: unknown mode %s\n", mode);
        return 2;
    }
    int arg = 2;
    const char *config_path = NULL;
    if (sd15) {
        if (argc < 3) {
            fprintf(stderr, "bench_unet: sd15 needs the UNet config.json\n");
            return 2;
        }
        config_path = argv[arg++];
    }
    int warmup = argc > arg ? atoi(argv[arg]) : 1;
    int iters = argc > arg + 1 ? atoi(argv[arg + 1]) : 3;
    if (iters < 1) iters = 1;

    df_philox init_gen, data_gen;
    df_philox_init(&init_gen, 0, 0);
    df_philox_init(&data_gen, 0, 1);
    df_unet2d unet;
    df_unet2d_cond cond;
    df_params *params;
    if (sd15) {
        df_unet2d_cond_config c;
        if (df_unet2d_cond_config_load(config_path, &c) != DF_OK) die("config");
        if (df_unet2d_cond_init(&cond, &c, (df_init){.gen = &init_gen}) != DF_OK) die("init");
        params = &cond.params;
    } else {
        df_unet2d_config c = case_a_config();
        if (df_unet2d_init(&unet, &c, (df_init){.gen = &init_gen}) != DF_OK) die("init");
        params = &unet.params;
    }
    if (train && df_params_flatten(params) != DF_OK) die("flatten");
    /* DF_BENCH_MIXED=bf16: the products compute in BF16 (mixed precision, docs/dtypes.md) */
    const char *mixed = getenv("DF_BENCH_MIXED");
    if (mixed && strcmp(mixed, "bf16") == 0) df_set_compute_dtype(DF_DTYPE_BF16);
    if (!train) df_grad_set_enabled(false);

    int n = sd15 ? 1 : 32;
    int64_t shape[4] = {n, sd15 ? 4 : 3, sd15 ? 64 : 32, sd15 ? 64 : 32};
    const char *mem_env = getenv("DF_BENCH_MEM");
    bool mem_report = mem_env && *mem_env && strcmp(mem_env, "0") != 0;
    double *t = malloc(sizeof(double) * (size_t)iters);
    for (int i = -warmup; i < iters; i++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn(&data_gen, 4, shape);
        df_tensor *ts = rand_timesteps(&data_gen, n);
        df_tensor *target = train ? randn(&data_gen, 4, shape) : NULL;
        df_tensor *ctx = sd15 ? randn(&data_gen, 3, (int64_t[]){1, 77, 768}) : NULL;
        double t0 = now_ms();
        size_t fwd_bytes = 0, bwd_bytes = 0;
        if (train) {
            df_flat_zero_grad(&params->flat);
            df_tensor *loss = df_mse_loss(df_unet2d_forward(&unet, x, ts), target, true);
            fwd_bytes = df_mem_get_stats().bytes_in_use;
            if (df_backward(loss) != DF_OK) die("backward");
            bwd_bytes = df_mem_get_stats().bytes_in_use;
        } else if (sd15) {
            df_unet2d_cond_forward(&cond, x, ts, ctx);
            fwd_bytes = df_mem_get_stats().bytes_in_use;
        } else {
            df_unet2d_forward(&unet, x, ts);
            fwd_bytes = df_mem_get_stats().bytes_in_use;
        }
        df_scope_end(s); /* freeing the step's tensors is part of the step */
        double t1 = now_ms();
        if (mem_report) {
            df_mem_stats ms = df_mem_get_stats();
            fprintf(stderr,
                    "bench_unet: step %d: MiB in use after forward %.0f, after backward %.0f, "
                    "after the scope %.0f; peak in use %.0f, cached %.0f\n",
                    i, fwd_bytes / 1048576.0, bwd_bytes / 1048576.0, ms.bytes_in_use / 1048576.0,
                    ms.peak_in_use / 1048576.0, ms.bytes_cached / 1048576.0);
        }
        if (i >= 0) t[i] = t1 - t0;
    }
    qsort(t, (size_t)iters, sizeof *t, cmp_double);
    printf("{\"mode\": \"%s\", \"impl\": \"ours\", \"ms\": %.2f, \"peak_rss_mib\": %.1f, "
           "\"iters\": %d, \"params\": %lld, \"compute\": \"%s\"}\n",
           mode, t[iters / 2], peak_rss_mib(), iters, (long long)df_params_count(params),
           df_dtype_name(df_compute_dtype()));
    free(t);
    if (sd15)
        df_unet2d_cond_free(&cond);
    else
        df_unet2d_free(&unet);
    return 0;
}
