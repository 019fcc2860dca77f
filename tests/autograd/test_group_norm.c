/* test_group_norm.c — df_group_norm: gradient checks with and without affine parameters, a
 * forward check against a double loop, and thread-count independence. Parity in
 * test_ops_dnnl_parity.c. */
#include "tests/common/check.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#define EPS 1e-3
#define ATOL 5e-3
#define RTOL 5e-3

static df_tensor *gn_fn(df_tensor **in, void *user) {
    return df_group_norm(in[0], *(int *)user, in[1], in[2], 1e-5f);
}

Test(autograd_group_norm, grad_affine) {
    df_tensor *x = randn_tensor(51, DF_DIMS(2, 6, 3, 2));
    df_tensor *w = randn_tensor(52, DF_DIMS(6));
    df_tensor *b = randn_tensor(53, DF_DIMS(6));
    df_tensor_set_requires_grad(x, true);
    df_tensor_set_requires_grad(w, true);
    df_tensor_set_requires_grad(b, true);
    int groups = 3;
    gradcheck("group_norm affine", gn_fn, &groups, (df_tensor *[]){x, w, b}, 3, EPS, ATOL, RTOL);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
}

Test(autograd_group_norm, grad_no_affine_3d) {
    df_tensor *x = randn_tensor(54, DF_DIMS(3, 4, 5));
    df_tensor_set_requires_grad(x, true);
    int groups = 2;
    gradcheck("group_norm no affine", gn_fn, &groups, (df_tensor *[]){x, NULL, NULL}, 1, EPS,
              ATOL, RTOL);
    df_tensor_free(x);
}

Test(autograd_group_norm, grad_params_only) {
    df_tensor *x = randn_tensor(55, DF_DIMS(2, 4, 2, 3));
    df_tensor *w = randn_tensor(56, DF_DIMS(4));
    df_tensor *b = randn_tensor(57, DF_DIMS(4));
    df_tensor_set_requires_grad(w, true);
    df_tensor_set_requires_grad(b, true);
    int groups = 4;
    gradcheck("group_norm x frozen", gn_fn, &groups, (df_tensor *[]){x, w, b}, 3, EPS, ATOL, RTOL);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
}

Test(autograd_group_norm, forward_against_loops) {
    /* an offset mean checks the two-pass variance */
    df_tensor *x = randn_tensor(58, DF_DIMS(2, 4, 3, 3));
    for (int64_t i = 0; i < x->numel; i++) df_f32(x)[i] += 10.0f;
    df_tensor *w = randn_tensor(59, DF_DIMS(4));
    df_tensor *b = randn_tensor(60, DF_DIMS(4));
    df_tensor *y = df_group_norm(x, 2, w, b, 1e-5f);
    float want[72];
    for (int n = 0; n < 2; n++)
        for (int g = 0; g < 2; g++) {
            const float *xg = df_f32(x) + (n * 4 + g * 2) * 9;
            double mu = 0, var = 0;
            for (int i = 0; i < 18; i++) mu += xg[i];
            mu /= 18;
            for (int i = 0; i < 18; i++) var += (xg[i] - mu) * (xg[i] - mu);
            var /= 18;
            for (int i = 0; i < 18; i++) {
                int c = g * 2 + i / 9;
                want[(n * 4 + g * 2) * 9 + i] =
                    (float)((xg[i] - mu) / sqrt(var + 1e-5) * df_f32(w)[c] + df_f32(b)[c]);
            }
        }
    check_close_f32("group_norm vs loops", df_f32(y), want, 72, 1e-5, 1e-5);
    df_tensor_free(x);
    df_tensor_free(w);
    df_tensor_free(b);
    df_tensor_free(y);
}

/* forward and all gradients with 1 and 2 threads, bit for bit */
static void run_gn(int threads, float *out, float *gx, float *gw, float *gb) {
    omp_set_num_threads(threads);
    df_tensor *x = randn_tensor(61, DF_DIMS(3, 8, 5, 5));
    df_tensor *w = randn_tensor(62, DF_DIMS(8));
    df_tensor *b = randn_tensor(63, DF_DIMS(8));
    df_tensor_set_requires_grad(x, true);
    df_tensor_set_requires_grad(w, true);
    df_tensor_set_requires_grad(b, true);
    df_tensor *y = df_group_norm(x, 4, w, b, 1e-6f);
    df_tensor *r = randn_tensor(64, y->ndim, y->shape);
    cr_assert(df_backward_with(y, r) == DF_OK);
    memcpy(out, y->data, (size_t)y->numel * 4);
    memcpy(gx, x->grad->data, (size_t)x->numel * 4);
    memcpy(gw, w->grad->data, 8 * 4);
    memcpy(gb, b->grad->data, 8 * 4);
    df_tensor *ts[] = {x, w, b, y, r};
    for (int i = 0; i < 5; i++) df_tensor_free(ts[i]);
}

Test(autograd_group_norm, thread_count_independent) {
    static float o1[600], x1[600], w1[8], b1[8], o2[600], x2[600], w2[8], b2[8];
    run_gn(1, o1, x1, w1, b1);
    run_gn(2, o2, x2, w2, b2);
    check_close_f32("out 1 vs 2 threads", o2, o1, 600, 0, 0);
    check_close_f32("dx 1 vs 2 threads", x2, x1, 600, 0, 0);
    check_close_f32("dw 1 vs 2 threads", w2, w1, 8, 0, 0);
    check_close_f32("db 1 vs 2 threads", b2, b1, 8, 0, 0);
}
