/* bench_ops.c — op throughput: conv2d forward, backward-data and backward-weights, and matmul,
 * at the UNet's shapes, for comparison with the PyTorch peer bench/torch_ops.py (run both with
 * bench/run-ops.sh).
 *
 * Shapes: batch N (32) with (C, H=W) in (64, 32), (128, 16), (256, 8); 3x3 pad 1 and 1x1
 * convolutions with C in and out channels and a bias; matmul (N H W, C) x (C, C).
 * Each case runs DF_BENCH_WARMUP (2) untimed iterations, then DF_BENCH_ITERS (10) timed ones,
 * and reports the median. The backward passes are timed as df_backward_with on a fresh forward
 * graph, with only x (bwd-data) or only w and b (bwd-weights) requiring a gradient, so the time
 * includes what a training step pays: the gradient buffer and the accumulation into it.
 *
 * Activations (x, the output gradient, and so the output and dx) are in the layout the models
 * keep between ops (channel-blocked, df_tensor.block, docs/layout.md): no reorder runs around
 * the convolution, as in a UNet; DF_BENCH_LAYOUT=plain gives plain NCHW tensors instead (the
 * convolution reorders them each call, as PyTorch does).
 *
 * Output: one tab-separated line per case: shape, op, median ms, GFLOP/s at the median (2 FLOPs
 * per multiply-add; bias and reorders are not counted), and the minimum ms (steadier than the
 * median on a loaded machine).
 * Env: DF_BENCH_ITERS, DF_BENCH_WARMUP, DF_BENCH_BATCH (default 32), DF_BENCH_LAYOUT,
 * DF_CONV_LAYOUT (see autograd/ops/conv2d.c), DF_BENCH_CLOCK=cpu to time process CPU time instead
 * of wall time (with OMP_NUM_THREADS=1 a comparison that survives a machine shared with other jobs:
 * a descheduled thread accrues no CPU time).
 */
#include "autograd/autograd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static clockid_t clock_id = CLOCK_MONOTONIC;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(clock_id, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int env_int(const char *name, int dflt) {
    const char *s = getenv(name);
    return s && *s ? atoi(s) : dflt;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int iters, warmup;
static double last_min; /* minimum ms of the last timed case */

typedef enum { CONV_FWD, CONV_BWD_DATA, CONV_BWD_WEIGHTS } conv_pass;

/* Median ms of one conv pass. */
static double time_conv(df_tensor *x, df_tensor *w, df_tensor *b, df_tensor *gy, df_conv2d_params p,
                        conv_pass pass) {
    double *t = malloc(sizeof(double) * (size_t)iters);
    df_tensor_set_requires_grad(x, pass == CONV_BWD_DATA);
    df_tensor_set_requires_grad(w, pass == CONV_BWD_WEIGHTS);
    df_tensor_set_requires_grad(b, pass == CONV_BWD_WEIGHTS);
    for (int i = -warmup; i < iters; i++) {
        df_scope s = df_scope_begin();
        double t0 = 0, t1 = 0;
        if (pass == CONV_FWD) {
            bool prev = df_grad_set_enabled(false);
            t0 = now_ms();
            df_conv2d(x, w, b, p);
            t1 = now_ms();
            df_grad_set_enabled(prev);
        } else {
            df_tensor *y = df_conv2d(x, w, b, p);
            t0 = now_ms();
            df_status st = df_backward_with(y, gy);
            t1 = now_ms();
            if (st != DF_OK) {
                fprintf(stderr, "bench_ops: backward failed: %s\n", df_last_error());
                exit(1);
            }
        }
        df_scope_end(s);
        if (i >= 0) t[i] = t1 - t0;
        df_tensor *ts[3] = {x, w, b};
        for (int k = 0; k < 3; k++) {
            df_tensor_free(ts[k]->grad);
            ts[k]->grad = NULL;
        }
    }
    qsort(t, (size_t)iters, sizeof *t, cmp_double);
    double med = t[iters / 2];
    last_min = t[0];
    free(t);
    return med;
}

static double time_matmul(df_tensor *a, df_tensor *bm) {
    double *t = malloc(sizeof(double) * (size_t)iters);
    bool prev = df_grad_set_enabled(false);
    for (int i = -warmup; i < iters; i++) {
        df_scope s = df_scope_begin();
        double t0 = now_ms();
        df_matmul(a, bm, false, false);
        double t1 = now_ms();
        df_scope_end(s);
        if (i >= 0) t[i] = t1 - t0;
    }
    df_grad_set_enabled(prev);
    qsort(t, (size_t)iters, sizeof *t, cmp_double);
    double med = t[iters / 2];
    last_min = t[0];
    free(t);
    return med;
}

static bool plain_layout; /* DF_BENCH_LAYOUT=plain */

/* An activation in the layout the models keep between ops (df_tensor.block): channel-blocked
 * unless DF_BENCH_LAYOUT=plain. Takes t; the result is a leaf the caller owns. */
static df_tensor *activation(df_tensor *t) {
    if (plain_layout) return t;
    df_tensor *b = df_to_blocked(t);
    df_tensor_free(t);
    df_tensor *leaf = df_detach(b); /* no history: the benchmark's input */
    df_tensor_free(b);
    return leaf;
}

static df_tensor *randn(uint64_t seed, int ndim, const int64_t *shape, float scale) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, ndim, shape);
    df_philox g;
    df_philox_init(&g, seed, 0);
    df_philox_fill_normal(&g, df_f32(t), t->numel);
    for (int64_t i = 0; i < t->numel; i++) df_f32(t)[i] *= scale;
    return t;
}

int main(void) {
    const char *clk = getenv("DF_BENCH_CLOCK");
    if (clk && strcmp(clk, "cpu") == 0) clock_id = CLOCK_PROCESS_CPUTIME_ID;
    const char *lay = getenv("DF_BENCH_LAYOUT");
    plain_layout = lay && strcmp(lay, "plain") == 0;
    iters = env_int("DF_BENCH_ITERS", 10);
    warmup = env_int("DF_BENCH_WARMUP", 2);
    if (iters < 1) iters = 1;
    if (warmup < 0) warmup = 0;
    const int64_t N = env_int("DF_BENCH_BATCH", 32);
    const int64_t chans[3] = {64, 128, 256}, sizes[3] = {32, 16, 8};
    const char *pass_names[3] = {"conv_fwd", "conv_bwd_data", "conv_bwd_weights"};
    for (int s = 0; s < 3; s++) {
        int64_t C = chans[s], H = sizes[s];
        for (int k = 3; k >= 1; k -= 2) {
            df_conv2d_params p = df_conv2d_default();
            p.padding[0] = p.padding[1] = k / 2;
            df_tensor *x = activation(randn(1, DF_DIMS(N, C, H, H), 1.0f));
            df_tensor *w = randn(2, DF_DIMS(C, C, k, k), 0.05f);
            df_tensor *b = randn(3, DF_DIMS(C), 0.1f);
            df_tensor *gy = activation(randn(4, DF_DIMS(N, C, H, H), 1.0f));
            double flops = 2.0 * N * C * H * H * C * k * k;
            for (int pass = 0; pass < 3; pass++) {
                double ms = time_conv(x, w, b, gy, p, (conv_pass)pass);
                printf("%lldx%lldx%lldx%lld k%d\t%s\t%.3f\t%.1f\t%.3f\n", (long long)N,
                       (long long)C, (long long)H, (long long)H, k, pass_names[pass], ms,
                       flops / ms * 1e-6, last_min);
                fflush(stdout);
            }
            df_tensor *ts[4] = {x, w, b, gy};
            for (int i = 0; i < 4; i++) df_tensor_free(ts[i]);
        }
        int64_t M = N * H * H;
        df_tensor *a = randn(5, DF_DIMS(M, C), 1.0f);
        df_tensor *bm = randn(6, DF_DIMS(C, C), 0.05f);
        double ms = time_matmul(a, bm);
        printf("%lldx%lld * %lldx%lld\tmatmul\t%.3f\t%.1f\t%.3f\n", (long long)M, (long long)C,
               (long long)C, (long long)C, ms, 2.0 * M * C * C / ms * 1e-6, last_min);
        fflush(stdout);
        df_tensor_free(a);
        df_tensor_free(bm);
    }
    return 0;
}
