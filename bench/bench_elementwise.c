/* bench_elementwise.c — time of the elementwise ops at UNet activation sizes, forward and
 * forward+backward, in ms per call (median of a few runs). The PyTorch peer is
 * bench/bench_elementwise.py (same shapes, same thread count). Not a test. */
#include "autograd/autograd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static df_tensor *randn(uint64_t seed, int ndim, const int64_t *shape, bool rg) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, ndim, shape);
    df_philox g;
    df_philox_init(&g, seed, 0);
    df_philox_fill_normal(&g, df_f32(t), t->numel);
    if (rg) df_tensor_set_requires_grad(t, true);
    return t;
}

typedef df_tensor *(*op_fn)(df_tensor *x, df_tensor *c);
static df_tensor *op_add(df_tensor *x, df_tensor *c) {
    return df_add(x, c);
}
static df_tensor *op_mul_bias(df_tensor *x, df_tensor *c) {
    return df_mul(x, c);
}
static df_tensor *op_silu(df_tensor *x, df_tensor *c) {
    (void)c;
    return df_silu(x);
}
static df_tensor *op_gelu(df_tensor *x, df_tensor *c) {
    (void)c;
    return df_gelu(x);
}
static df_tensor *op_sum023(df_tensor *x, df_tensor *c) {
    (void)c;
    return df_sum(x, 3, (int[]){0, 2, 3}, false);
}
static df_tensor *op_mean(df_tensor *x, df_tensor *c) {
    (void)c;
    return df_mean(x, 0, NULL, false);
}
static df_tensor *op_softmax(df_tensor *x, df_tensor *c) {
    (void)c;
    return df_softmax(x);
}
static df_tensor *op_mse(df_tensor *x, df_tensor *c) {
    return df_mse_loss(x, c, true);
}

static double run(op_fn f, df_tensor *x, df_tensor *c, bool backward, int reps) {
    double best[9];
    int n = 0;
    for (int r = 0; r < reps; r++) {
        df_tensor_zero_grad(x);
        df_scope s = df_scope_begin();
        double t0 = now_ms();
        df_tensor *y = f(x, c);
        if (backward) df_backward_with(y, df_ones(DF_DTYPE_F32, y->ndim, y->shape));
        double t1 = now_ms();
        df_scope_end(s);
        if (r >= 2 && n < 9) best[n++] = t1 - t0;
    }
    /* median */
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (best[j] < best[i]) {
                double t = best[i];
                best[i] = best[j];
                best[j] = t;
            }
    return best[n / 2];
}

int main(void) {
    int64_t big[] = {8, 128, 32, 32};
    df_tensor *x = randn(1, 4, big, true), *y = randn(2, 4, big, false);
    df_tensor *bias = randn(3, DF_DIMS(1, 128, 1, 1), true);
    df_tensor *rows = randn(4, DF_DIMS(8, 4096, 32), true);
    struct {
        const char *name;
        op_fn f;
        df_tensor *x, *c;
    } cases[] = {
        {"add same (8,128,32,32)", op_add, x, y},
        {"mul by (1,128,1,1)", op_mul_bias, x, bias},
        {"silu", op_silu, x, NULL},
        {"gelu", op_gelu, x, NULL},
        {"sum over (0,2,3)", op_sum023, x, NULL},
        {"mean all", op_mean, x, NULL},
        {"softmax (8,4096,32)", op_softmax, rows, NULL},
        {"mse_loss mean", op_mse, x, y},
    };
    printf("%-26s %10s %12s\n", "op", "fwd ms", "fwd+bwd ms");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        double f = run(cases[k].f, cases[k].x, cases[k].c, false, 11);
        double fb = run(cases[k].f, cases[k].x, cases[k].c, true, 11);
        printf("%-26s %10.3f %12.3f\n", cases[k].name, f, fb);
    }
    return 0;
}
