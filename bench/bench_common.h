/* bench_common.h — the small helpers the benchmark programs share: a fatal error with the
 * library's last message, a monotonic clock in milliseconds, and a random normal tensor.
 * Header-only (each bench_*.c is its own program); BENCH_NAME names the program in messages.
 */
#ifndef DF_BENCH_COMMON_H
#define DF_BENCH_COMMON_H

#include "autograd/autograd.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef BENCH_NAME
#error "define BENCH_NAME (the program's name for messages) before including bench_common.h"
#endif

/* Prints "<program>: <what>: <last error>" and exits 1. */
static inline void die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", BENCH_NAME, what, df_last_error());
    exit(1);
}

/* Monotonic time in milliseconds. */
static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* A new F32 tensor of standard normal draws from g (scope rule). */
static inline df_tensor *randn(df_philox *g, int ndim, const int64_t *shape) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, ndim, shape);
    df_philox_fill_normal(g, df_f32(t), t->numel);
    return t;
}

#endif
