/* test_spatial.c — df_upsample_nearest2d and df_avg_pool2d: gradient checks and forward checks
 * against direct indexing. Parity in test_ops_dnnl_parity.c. */
#include "tests/common/check.h"

static df_tensor *up_fn(df_tensor **in, void *user) {
    return df_upsample_nearest2d(in[0], *(int *)user);
}

static df_tensor *pool_fn(df_tensor **in, void *user) {
    int *ks = user;
    return df_avg_pool2d(in[0], ks[0], ks[1]);
}

Test(autograd_upsample_nearest2d, grad) {
    df_tensor *x = randn_tensor(71, DF_DIMS(2, 3, 3, 4));
    df_tensor_set_requires_grad(x, true);
    int k = 2;
    gradcheck("upsample x2", up_fn, &k, &x, 1, 1e-2, 1e-3, 1e-3);
    k = 3;
    gradcheck("upsample x3", up_fn, &k, &x, 1, 1e-2, 1e-3, 1e-3);
    df_tensor_free(x);
}

Test(autograd_upsample_nearest2d, forward) {
    df_tensor *x = randn_tensor(72, DF_DIMS(1, 2, 2, 3));
    df_tensor *y = df_upsample_nearest2d(x, 3);
    cr_assert(y->shape[2] == 6 && y->shape[3] == 9);
    float want[2 * 6 * 9];
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 9; j++) want[(c * 6 + i) * 9 + j] = df_f32(x)[(c * 2 + i / 3) * 3 + j / 3];
    check_close_f32("upsample vs indexing", df_f32(y), want, 108, 0, 0);
    df_tensor_free(x);
    df_tensor_free(y);
}

Test(autograd_avg_pool2d, grad) {
    df_tensor *x = randn_tensor(73, DF_DIMS(2, 2, 5, 6));
    df_tensor_set_requires_grad(x, true);
    int ks[2] = {2, 2};
    gradcheck("pool 2/2", pool_fn, ks, &x, 1, 1e-2, 1e-3, 1e-3);
    int ov[2] = {3, 1}; /* overlapping windows */
    gradcheck("pool 3/1", pool_fn, ov, &x, 1, 1e-2, 1e-3, 1e-3);
    df_tensor_free(x);
}

Test(autograd_avg_pool2d, forward) {
    df_tensor *x = randn_tensor(74, DF_DIMS(1, 1, 5, 5));
    df_tensor *y = df_avg_pool2d(x, 2, 2);
    cr_assert(y->shape[2] == 2 && y->shape[3] == 2);
    const float *a = df_f32(x);
    float want[4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            want[i * 2 + j] = (a[(2 * i) * 5 + 2 * j] + a[(2 * i) * 5 + 2 * j + 1] +
                               a[(2 * i + 1) * 5 + 2 * j] + a[(2 * i + 1) * 5 + 2 * j + 1]) /
                              4;
    check_close_f32("avg_pool vs sums", df_f32(y), want, 4, 1e-6, 1e-6);
    df_tensor_free(x);
    df_tensor_free(y);
}
