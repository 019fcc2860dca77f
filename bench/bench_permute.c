/* bench_permute.c — time of df_permute forward (and its backward kernel, via backward_with) on
 * the layouts models use, in ms per call and GB/s moved (read + write). The PyTorch peer is
 * bench/bench_permute.py (x.permute(...).contiguous() on the same shapes); run both with the
 * same OMP_NUM_THREADS. Usage: build/bench/bench_permute [reps] */
#include "autograd/autograd.h"

#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct bench_case {
    const char *name;
    int ndim;
    int64_t shape[DF_MAX_DIMS];
    int perm[DF_MAX_DIMS];
} bench_case;

static const bench_case cases[] = {
    {"attn heads (B,T,H,D)->(B,H,T,D)", 4, {2, 4096, 8, 40}, {0, 2, 1, 3}},
    {"attn merge (B,H,T,D)->(B,T,H,D)", 4, {2, 8, 4096, 40}, {0, 2, 1, 3}},
    {"NCHW->NHWC (2,320,64,64)", 4, {2, 320, 64, 64}, {0, 2, 3, 1}},
    {"NHWC->NCHW (2,64,64,320)", 4, {2, 64, 64, 320}, {0, 3, 1, 2}},
    {"k^T (B,H,T,D)->(B,H,D,T)", 4, {2, 8, 4096, 40}, {0, 1, 3, 2}},
    {"5-D (2,16,8,32,32) perm 0,3,4,1,2", 5, {2, 16, 8, 32, 32}, {0, 3, 4, 1, 2}},
};

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    printf("threads %d, reps %d\n", omp_get_max_threads(), reps);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const bench_case *b = &cases[c];
        df_scope s = df_scope_begin();
        df_tensor *x = df_full(DF_DTYPE_F32, b->ndim, b->shape, 1.0);
        df_tensor_set_requires_grad(x, true);
        double best_f = 1e30, best_b = 1e30;
        /* forward alone (no history), as the PyTorch peer measures it */
        bool prev = df_grad_set_enabled(false);
        for (int r = 0; r < reps; r++) {
            df_scope si = df_scope_begin();
            double t0 = omp_get_wtime();
            df_permute(x, b->perm);
            double t1 = omp_get_wtime();
            if (t1 - t0 < best_f) best_f = t1 - t0;
            df_scope_end(si);
        }
        df_grad_set_enabled(prev);
        /* backward: the inverse permutation added into x's gradient */
        for (int r = 0; r < reps; r++) {
            df_scope si = df_scope_begin();
            df_tensor *y = df_permute(x, b->perm);
            df_tensor *g = df_detach(y); /* any gradient of the right shape */
            double t2 = omp_get_wtime();
            if (df_backward_with(y, g) != DF_OK) return 1;
            double t3 = omp_get_wtime();
            if (t3 - t2 < best_b) best_b = t3 - t2;
            df_scope_end(si);
        }
        double gb = 2.0 * (double)x->numel * sizeof(float) / 1e9;
        printf("%-38s forward %7.3f ms (%5.1f GB/s)  backward(+=) %7.3f ms\n", b->name,
               best_f * 1e3, gb / best_f, best_b * 1e3);
        df_scope_end(s);
    }
    return 0;
}
