/* bench_controlnet.c — one ControlNet training step as examples/controlnet/train_controlnet.py
 * takes it, past the frozen encoders: a UNet2DConditionModel of a config.json (random weights,
 * e.g. tests/fixtures/configs/sd15/unet/config.json) loaded frozen, a ControlNetModel made from
 * it (from_unet, default conditioning widths 16, 32, 96, 256) trained with AdamW; batch 1,
 * SIDE x SIDE latents (64: SD 1.5's 512 pixels), a conditioning image 8 SIDE a side, a 77 x
 * cross_attention_dim context; loss = MSE(unet(x, t, ctx, controlnet residuals), target).
 * The VAE encode and the text encoder (frozen, forward only) are left out, as in the peer
 * (bench/torch_controlnet_step.py).
 * Usage: bench_controlnet CONFIG.json [STEPS [SIDE]]  (default 2 steps, side 64; the last step is
 * timed). Output: one JSON line {"impl": "ours", "ms", "peak_rss_mib" (getrusage),
 * "trainable", "frozen"}.
 */
#define BENCH_NAME "bench_controlnet"
#include "bench/bench_common.h"
#include "nn/controlnet.h"
#include "optim/optim.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_controlnet CONFIG.json [STEPS [SIDE]]\n");
        return 2;
    }
    int steps = argc > 2 ? atoi(argv[2]) : 2, side = argc > 3 ? atoi(argv[3]) : 64;
    if (steps < 1) steps = 1;
    df_philox init_gen, data_gen;
    df_philox_init(&init_gen, 0, 0);
    df_philox_init(&data_gen, 0, 1);
    df_unet2d_cond_config c;
    if (df_unet2d_cond_config_load(argv[1], &c) != DF_OK) die("config");
    df_unet2d_cond unet;
    if (df_unet2d_cond_init(&unet, &c, (df_init){.gen = &init_gen}) != DF_OK) die("init");
    df_controlnet cn;
    if (df_controlnet_from_unet(&cn, &unet, NULL, 0, &init_gen) != DF_OK) die("from_unet");
    if (df_params_freeze(&unet.params) != DF_OK) die("freeze");
    if (df_params_flatten(&cn.params) != DF_OK) die("flatten");
    df_tensor **ps = malloc((size_t)cn.params.n * sizeof *ps);
    for (int i = 0; i < cn.params.n; i++) ps[i] = cn.params.items[i].tensor;
    df_param_group g = {
        .params = ps, .n = cn.params.n, .h = df_optim_hparams_default(DF_OPTIM_ADAMW)};
    df_optim *opt;
    if (df_optim_new(DF_OPTIM_ADAMW, &g, 1, &opt) != DF_OK) die("optimizer");

    double ms = 0;
    int64_t shape[4] = {1, c.in_channels, side, side};
    int64_t cshape[4] = {1, cn.config.conditioning_channels, 8 * side, 8 * side};
    for (int i = 0; i < steps; i++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn(&data_gen, 4, shape), *target = randn(&data_gen, 4, shape);
        df_tensor *cond = randn(&data_gen, 4, cshape);
        df_tensor *ctx = randn(&data_gen, 3, (int64_t[]){1, 77, c.cross_attention_dim[0]});
        df_tensor *t = df_full(DF_DTYPE_I64, 1, (int64_t[]){1}, 500);
        double t0 = now_ms();
        df_optim_zero_grad(opt);
        df_tensor *down[DF_UNET_MAX_SKIPS], *mid, *pred;
        int nd;
        df_controlnet_forward(&cn, x, t, ctx, cond, 1.0f, false, down, &nd, &mid);
        df_unet_residuals res = {down, nd, mid};
        if (df_unet2d_cond_forward_res(&unet, x, t, ctx, &res, &pred) != DF_OK) die("unet");
        df_tensor *loss = df_mse_loss(pred, target, true);
        if (df_backward(loss) != DF_OK) die("backward");
        if (df_optim_step(opt) != DF_OK) die("step");
        df_scope_end(s);
        ms = now_ms() - t0;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"impl\": \"ours\", \"ms\": %.0f, \"peak_rss_mib\": %.0f, \"trainable\": %lld, "
           "\"frozen\": %lld}\n",
           ms, ru.ru_maxrss / 1024.0, (long long)df_params_count(&cn.params),
           (long long)df_params_count(&unet.params));
    df_optim_free(opt);
    free(ps);
    df_controlnet_free(&cn);
    df_unet2d_cond_free(&unet);
    return 0;
}
