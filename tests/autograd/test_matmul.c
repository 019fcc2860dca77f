/* test_matmul.c — df_matmul: gradient checks for both transposes and batch broadcasting, and a
 * forward check against a direct triple loop. Parity with torch.matmul in test_ops_dnnl_parity.c. */
#include "tests/common/check.h"

#define EPS 1e-2
#define ATOL 2e-3
#define RTOL 2e-3

typedef struct mm_case {
    bool ta, tb;
} mm_case;

static df_tensor *mm_fn(df_tensor **in, void *user) {
    mm_case *c = user;
    return df_matmul(in[0], in[1], c->ta, c->tb);
}

static void check_mm(const char *label, int an, const int64_t *as, int bn, const int64_t *bs,
                     bool ta, bool tb, bool a_grad) {
    df_tensor *a = randn_tensor(11, an, as);
    df_tensor *b = randn_tensor(12, bn, bs);
    df_tensor_set_requires_grad(a, a_grad);
    df_tensor_set_requires_grad(b, true);
    mm_case c = {ta, tb};
    gradcheck(label, mm_fn, &c, (df_tensor *[]){a, b}, 2, EPS, ATOL, RTOL);
    df_tensor_free(a);
    df_tensor_free(b);
}

Test(autograd_matmul, grad_2d_all_transposes) {
    check_mm("nn", DF_DIMS(3, 4), DF_DIMS(4, 5), false, false, true);
    check_mm("tn", DF_DIMS(4, 3), DF_DIMS(4, 5), true, false, true);
    check_mm("nt", DF_DIMS(3, 4), DF_DIMS(5, 4), false, true, true);
    check_mm("tt", DF_DIMS(4, 3), DF_DIMS(5, 4), true, true, true);
}

Test(autograd_matmul, grad_batched) {
    check_mm("batched", DF_DIMS(2, 3, 4), DF_DIMS(2, 4, 2), false, false, true);
    check_mm("batched tt", DF_DIMS(2, 4, 3), DF_DIMS(2, 2, 4), true, true, true);
}

Test(autograd_matmul, grad_broadcast_batch) {
    /* a's batch (2, 1) against b's (3): output batch (2, 3); b of rank 2 against batched a */
    check_mm("broadcast a", DF_DIMS(2, 1, 3, 4), DF_DIMS(3, 4, 2), false, false, true);
    check_mm("broadcast b rank 2", DF_DIMS(2, 3, 3, 4), DF_DIMS(2, 4), false, true, true);
    check_mm("broadcast both ways", DF_DIMS(1, 3, 2, 4), DF_DIMS(2, 1, 2, 3), true, false, true);
}

Test(autograd_matmul, grad_a_without_requires_grad) {
    check_mm("a no grad", DF_DIMS(3, 4), DF_DIMS(4, 2), false, false, false);
}

Test(autograd_matmul, forward_against_loops) {
    /* a^T b with a (2, 1, 4, 3) and b (3, 4, 2): out (2, 3, 3, 2) */
    df_tensor *a = randn_tensor(21, DF_DIMS(2, 1, 4, 3));
    df_tensor *b = randn_tensor(22, DF_DIMS(3, 4, 2));
    df_tensor *c = df_matmul(a, b, true, false);
    cr_assert(c->ndim == 4 && c->shape[0] == 2 && c->shape[1] == 3 && c->shape[2] == 3 &&
              c->shape[3] == 2);
    float want[36];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int m = 0; m < 3; m++)
                for (int n = 0; n < 2; n++) {
                    double acc = 0;
                    for (int k = 0; k < 4; k++)
                        acc += df_f32(a)[(i * 4 + k) * 3 + m] * df_f32(b)[(j * 4 + k) * 2 + n];
                    want[((i * 3 + j) * 3 + m) * 2 + n] = (float)acc;
                }
    check_close_f32("matmul vs loops", df_f32(c), want, 36, 1e-5, 1e-5);
    df_tensor_free(a);
    df_tensor_free(b);
    df_tensor_free(c);
}
