/* bench_frozen.c — what freezing a base saves: one training step of an SD 1.5-sized
 * UNet2DConditionModel (random weights from a config.json, e.g. tests/fixtures/configs/sd15/
 * unet/config.json) at batch 1 on 32x32 latents with a 77x768 context, AdamW, in two modes:
 *   full     every parameter trainable: gradients and two AdamW moments for all of them;
 *   adapter  the base loaded frozen (df_params_freeze: a data-only region, no gradient, no
 *            optimizer state, no tape records for its weights) with a rank-4 low-rank adapter
 *            (y + B A x, B zero at start, as LoRA) on every attention projection
 *            (*attn*.to_q/k/v, *attn*.to_out.0) through the module hooks; only the adapter
 *            is trained.
 * Usage: bench_frozen full|adapter CONFIG.json [STEPS]  (default 2; the last step is timed).
 * Output: one JSON line {"mode", "ms", "peak_rss_mib" (getrusage), "trainable" (parameters),
 * "frozen", "grad_mib" (gradient buffer), "peak_in_use_mib" (our allocator's peak)}.
 */
#define BENCH_NAME "bench_frozen"
#include "bench/bench_common.h"
#include "nn/nn.h"
#include "optim/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define RANK 4

typedef struct lowrank {
    df_adapter base;
    df_tensor *down, *up; /* A (r, in), B (out, r) */
} lowrank;

static df_tensor *lowrank_forward(df_adapter *a, const void *module, df_module_kind kind,
                                  df_tensor *x, df_tensor *y) {
    (void)module, (void)kind;
    lowrank *l = (lowrank *)a;
    return df_add(y, df_linear(df_linear(x, l->down, NULL), l->up, NULL));
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "full") != 0 && strcmp(argv[1], "adapter") != 0)) {
        fprintf(stderr, "usage: bench_frozen full|adapter CONFIG.json [STEPS]\n");
        return 2;
    }
    bool adapter = strcmp(argv[1], "adapter") == 0;
    int steps = argc > 3 ? atoi(argv[3]) : 2;
    if (steps < 1) steps = 1;
    df_philox init_gen, data_gen;
    df_philox_init(&init_gen, 0, 0);
    df_philox_init(&data_gen, 0, 1);
    df_unet2d_cond_config c;
    if (df_unet2d_cond_config_load(argv[2], &c) != DF_OK) die("config");
    df_unet2d_cond unet;
    if (df_unet2d_cond_init(&unet, &c, (df_init){.gen = &init_gen}) != DF_OK) die("init");

    df_params adapters; /* the adapter weights, named after their modules */
    df_params_init(&adapters, &init_gen);
    lowrank *lr = NULL;
    df_params *trained = &unet.params;
    if (adapter) {
        if (df_params_freeze(&unet.params) != DF_OK) die("freeze");
        const df_module_ref **hits = malloc(4096 * sizeof *hits);
        int n = df_modules_match(&unet.params, "*attn*.to_[qkv]", hits, 2048);
        n += df_modules_match(&unet.params, "*attn*.to_out.0", hits + n, 2048);
        lr = calloc((size_t)n, sizeof *lr);
        for (int i = 0; i < n; i++) {
            const df_linear_mod *m = hits[i]->module;
            int64_t out = m->weight->shape[0], in = m->weight->shape[1];
            lr[i].base.forward = lowrank_forward;
            lr[i].down =
                df_params_add(&adapters, hits[i]->name, "lora_down.weight", DF_DIMS(RANK, in));
            df_params_init_normal(&adapters, lr[i].down, 1.0f / RANK);
            lr[i].up =
                df_params_add(&adapters, hits[i]->name, "lora_up.weight", DF_DIMS(out, RANK));
            df_module_attach(hits[i], &lr[i].base);
        }
        free(hits);
        trained = &adapters;
    }
    if (df_params_flatten(trained) != DF_OK) die("flatten");
    df_tensor **ps = malloc((size_t)trained->n * sizeof *ps);
    for (int i = 0; i < trained->n; i++) ps[i] = trained->items[i].tensor;
    df_param_group g = {
        .params = ps, .n = trained->n, .h = df_optim_hparams_default(DF_OPTIM_ADAMW)};
    df_optim *opt;
    if (df_optim_new(DF_OPTIM_ADAMW, &g, 1, &opt) != DF_OK) die("optimizer");

    double ms = 0;
    int64_t shape[4] = {1, c.in_channels, 32, 32};
    for (int i = 0; i < steps; i++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn(&data_gen, 4, shape), *target = randn(&data_gen, 4, shape);
        df_tensor *ctx = randn(&data_gen, 3, (int64_t[]){1, 77, c.cross_attention_dim[0]});
        df_tensor *t = df_full(DF_DTYPE_I64, 1, (int64_t[]){1}, 500);
        double t0 = now_ms();
        df_optim_zero_grad(opt);
        df_tensor *loss = df_mse_loss(df_unet2d_cond_forward(&unet, x, t, ctx), target, true);
        if (df_backward(loss) != DF_OK) die("backward");
        if (df_optim_step(opt) != DF_OK) die("step");
        df_scope_end(s);
        ms = now_ms() - t0;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"mode\": \"%s\", \"ms\": %.0f, \"peak_rss_mib\": %.0f, \"trainable\": %lld, "
           "\"frozen\": %lld, \"grad_mib\": %.1f, \"peak_in_use_mib\": %.0f}\n",
           argv[1], ms, ru.ru_maxrss / 1024.0, (long long)df_params_count(trained),
           (long long)(adapter ? df_params_count(&unet.params) : 0),
           trained->flat.numel * 4 / 1048576.0, df_mem_get_stats().peak_in_use / 1048576.0);
    df_optim_free(opt);
    free(ps);
    free(lr);
    df_params_free(&adapters);
    df_unet2d_cond_free(&unet);
    return 0;
}
