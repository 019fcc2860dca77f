/* bench_lora.c — one LoRA training step of a UNet2DConditionModel (random weights from a
 * config.json, e.g. tests/fixtures/configs/sd15/unet/config.json), as the step of diffusers
 * v0.21.4's train_text_to_image_lora.py on the UNet: the base frozen, nn/lora.c adapters of rank
 * 4 (scale 1) on every attention projection (to_q, to_k, to_v, to_out.0; the script's
 * LoRAAttnProcessor), batch 1 of SIDE x SIDE latents with a 77 x cross_attention_dim context,
 * loss = mse(unet(noisy, t, context), noise), backward, AdamW on the adapters only. The peer is
 * bench/torch_lora_step.py; bench/run-lora.sh runs both.
 * Usage: bench_lora CONFIG.json [STEPS [SIDE]]  (defaults 3 and 64; the best of the steps after
 * the first is reported). Output: one JSON line {"impl": "ours", "ms", "first_ms",
 * "peak_rss_mib" (getrusage), "trainable", "frozen", "threads"}.
 */
#define BENCH_NAME "bench_lora"
#include "bench/bench_common.h"
#include "nn/lora.h"
#include "optim/optim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_lora CONFIG.json [STEPS [SIDE]]\n");
        return 2;
    }
    int steps = argc > 2 ? atoi(argv[2]) : 3, side = argc > 3 ? atoi(argv[3]) : 64;
    if (steps < 1) steps = 1;
    if (side < 8) side = 8;
    df_philox init_gen, lora_gen, data_gen;
    df_philox_init(&init_gen, 0, 0);
    df_philox_init(&lora_gen, 0, 2);
    df_philox_init(&data_gen, 0, 1);
    df_unet2d_cond_config c;
    if (df_unet2d_cond_config_load(argv[1], &c) != DF_OK) die("config");
    df_unet2d_cond unet;
    if (df_unet2d_cond_init(&unet, &c, (df_init){.gen = &init_gen}) != DF_OK) die("init");
    if (df_params_freeze(&unet.params) != DF_OK) die("freeze");
    df_lora lora;
    df_lora_init(&lora);
    df_lora_config lc = df_lora_config_default();
    lc.globs = df_lora_unet_default_globs;
    lc.n_globs = 4;
    df_lora_model m = {"unet", &unet.params};
    if (df_lora_create(&lora, &m, 1, &lc, &lora_gen) != DF_OK) die("lora");
    if (df_params_flatten(&lora.params) != DF_OK) die("flatten");
    df_tensor **ps = malloc((size_t)lora.params.n * sizeof *ps);
    for (int i = 0; i < lora.params.n; i++) ps[i] = lora.params.items[i].tensor;
    df_param_group g = {
        .params = ps, .n = lora.params.n, .h = df_optim_hparams_default(DF_OPTIM_ADAMW)};
    g.h.lr = 1e-4;
    df_optim *opt;
    if (df_optim_new(DF_OPTIM_ADAMW, &g, 1, &opt) != DF_OK) die("optimizer");

    double best = 0, first = 0;
    int64_t shape[4] = {1, c.in_channels, side, side};
    for (int i = 0; i < steps; i++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn(&data_gen, 4, shape), *noise = randn(&data_gen, 4, shape);
        df_tensor *ctx = randn(&data_gen, 3, (int64_t[]){1, 77, c.cross_attention_dim[0]});
        df_tensor *t = df_full(DF_DTYPE_I64, 1, (int64_t[]){1}, 500);
        double t0 = now_ms();
        df_optim_zero_grad(opt);
        df_tensor *loss = df_mse_loss(df_unet2d_cond_forward(&unet, x, t, ctx), noise, true);
        if (df_backward(loss) != DF_OK) die("backward");
        if (df_optim_step(opt) != DF_OK) die("step");
        df_scope_end(s);
        double ms = now_ms() - t0;
        if (i == 0)
            first = ms;
        else if (best == 0 || ms < best)
            best = ms;
    }
    if (steps == 1) best = first;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const char *threads = getenv("OMP_NUM_THREADS");
    printf("{\"impl\": \"ours\", \"ms\": %.0f, \"first_ms\": %.0f, \"peak_rss_mib\": %.0f, "
           "\"trainable\": %lld, \"frozen\": %lld, \"threads\": %s}\n",
           best, first, ru.ru_maxrss / 1024.0, (long long)df_params_count(&lora.params),
           (long long)df_params_count(&unet.params), threads ? threads : "null");
    df_optim_free(opt);
    free(ps);
    df_lora_free(&lora);
    df_unet2d_cond_free(&unet);
    return 0;
}
