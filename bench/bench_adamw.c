/* bench_adamw.c — time of one AdamW step (df_optim_step) over N parameters split into T tensors
 * of a df_flat buffer, the peer of bench/torch_adamw.py (torch.optim.AdamW, default and foreach).
 * Prints the median of S timed steps after one warm-up step, in milliseconds, as
 * "ours_ms=<median>". Run through bench/run-adamw.sh, which sets the thread count.
 *
 * usage: bench_adamw [--params N] [--tensors T] [--steps S] */
#include "optim/optim.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A cheap deterministic value in [-0.5, 0.5) (no RNG cost at 100 M elements). */
static float hash_unit(uint64_t i, uint64_t salt) {
    uint64_t x = (i + salt) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 29;
    return (float)(x >> 40) * (1.0f / 16777216.0f) - 0.5f;
}

int main(int argc, char **argv) {
    int64_t n = 100000000;
    int n_tensors = 100, steps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--params") == 0)
            n = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--tensors") == 0)
            n_tensors = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--steps") == 0)
            steps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_adamw: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n_tensors < 1 || steps < 1 || n < n_tensors) {
        fprintf(stderr, "bench_adamw: need params >= tensors >= 1 and steps >= 1\n");
        return 2;
    }
    df_tensor **p = calloc((size_t)n_tensors, sizeof *p);
    int64_t per = n / n_tensors;
    for (int t = 0; t < n_tensors; t++) {
        int64_t len = t == n_tensors - 1 ? n - per * (n_tensors - 1) : per;
        p[t] = df_zeros(DF_DTYPE_F32, 1, &len);
    }
    df_flat flat;
    if (df_flat_init(&flat, p, n_tensors) != DF_OK) {
        fprintf(stderr, "bench_adamw: %s\n", df_last_error());
        return 1;
    }
    float *data = df_flat_data(&flat), *grad = df_flat_grad(&flat);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < flat.numel; i++) {
        data[i] = hash_unit((uint64_t)i, 1);
        grad[i] = hash_unit((uint64_t)i, 2) * 0.01f;
    }
    df_param_group g = {.params = p, .n = n_tensors, .h = df_optim_hparams_default(DF_OPTIM_ADAMW)};
    df_optim *o;
    if (df_optim_new(DF_OPTIM_ADAMW, &g, 1, &o) != DF_OK) {
        fprintf(stderr, "bench_adamw: %s\n", df_last_error());
        return 1;
    }
    df_optim_step(o); /* warm-up: first touch of the moments */
    double *ms = calloc((size_t)steps, sizeof *ms);
    for (int s = 0; s < steps; s++) {
        double t0 = now_ms();
        df_optim_step(o);
        ms[s] = now_ms() - t0;
    }
    qsort(ms, (size_t)steps, sizeof *ms, cmp_double);
    printf("params=%lld tensors=%d threads=%d steps=%d\n", (long long)n, n_tensors,
           omp_get_max_threads(), steps);
    printf("ours_ms=%.2f\n", ms[steps / 2]);
    df_optim_free(o);
    for (int t = 0; t < n_tensors; t++) df_tensor_free(p[t]);
    df_flat_free(&flat);
    free(p);
    free(ms);
    return 0;
}
