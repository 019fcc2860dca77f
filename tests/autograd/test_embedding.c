/* test_embedding.c — df_embedding: finite-difference gradient of the table (I32 and I64 ids,
 * repeated ids, 0-D to 4-D ids), exact forward rows, gradient accumulation for repeated ids,
 * the threaded scatter-add against a sequential sum (bit for bit), and out-of-range ids. */
#include "tests/common/check.h"

#include <signal.h>

static df_tensor *emb_fn(df_tensor **in, void *user) {
    (void)user;
    return df_embedding(in[0], in[1]);
}

Test(autograd_embedding, gradcheck_repeated_ids) {
    df_scope s = df_scope_begin();
    df_tensor *table = randn_tensor(1, DF_DIMS(5, 3));
    df_tensor_set_requires_grad(table, true);
    df_tensor *ids64 = df_from_data(DF_DTYPE_I64, DF_DIMS(2, 3), (int64_t[]){1, 4, 1, 0, 1, 4});
    gradcheck("embedding I64 ids", emb_fn, NULL, (df_tensor *[]){ids64, table}, 2, 1e-2, 1e-4,
              1e-3);
    df_tensor *ids32 = df_from_data(DF_DTYPE_I32, DF_DIMS(4), (int32_t[]){3, 3, 2, 3});
    gradcheck("embedding I32 ids", emb_fn, NULL, (df_tensor *[]){ids32, table}, 2, 1e-2, 1e-4,
              1e-3);
    df_tensor *ids0 = df_from_data(DF_DTYPE_I64, 0, NULL, (int64_t[]){2});
    gradcheck("embedding 0-D ids", emb_fn, NULL, (df_tensor *[]){ids0, table}, 2, 1e-2, 1e-4, 1e-3);
    df_tensor *ids4 =
        df_from_data(DF_DTYPE_I32, DF_DIMS(2, 1, 2, 2), (int32_t[]){0, 1, 2, 3, 4, 4, 4, 0});
    gradcheck("embedding 4-D ids", emb_fn, NULL, (df_tensor *[]){ids4, table}, 2, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

Test(autograd_embedding, forward_rows_and_accumulation) {
    df_scope s = df_scope_begin();
    df_tensor *table = df_from_data(DF_DTYPE_F32, DF_DIMS(3, 2), (float[]){0, 1, 10, 11, 20, 21});
    df_tensor_set_requires_grad(table, true);
    df_tensor *ids = df_from_data(DF_DTYPE_I64, DF_DIMS(2, 2), (int64_t[]){2, 0, 2, 2});
    df_tensor *out = df_embedding(ids, table);
    cr_assert(out->ndim == 3 && out->shape[0] == 2 && out->shape[1] == 2 && out->shape[2] == 2);
    df_tensor *want =
        df_from_data(DF_DTYPE_F32, DF_DIMS(2, 2, 2), (float[]){20, 21, 0, 1, 20, 21, 20, 21});
    check_close("embedding rows", out, want, 0, 0);
    df_tensor *g = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 2, 2), (float[]){1, 2, 3, 4, 5, 6, 7, 8});
    cr_assert(df_backward_with(out, g) == DF_OK);
    /* row 2 is used three times: 1+5+7, 2+6+8; row 0 once; row 1 never */
    df_tensor *want_g = df_from_data(DF_DTYPE_F32, DF_DIMS(3, 2), (float[]){3, 4, 0, 0, 13, 16});
    check_close("embedding grad accumulates", table->grad, want_g, 0, 0);
    cr_assert(ids->grad == NULL, "ids receive no gradient");
    df_scope_end(s);
}

Test(autograd_embedding, threaded_backward_is_sequential_sum) {
    df_scope s = df_scope_begin();
    const int64_t V = 50, D = 96, M = 1000;
    df_tensor *table = randn_tensor(2, DF_DIMS(V, D));
    df_tensor_set_requires_grad(table, true);
    df_tensor *ids = df_tensor_new(DF_DTYPE_I32, DF_DIMS(M));
    for (int64_t i = 0; i < M; i++) ((int32_t *)ids->data)[i] = (int32_t)((i * 7919) % V);
    df_tensor *out = df_embedding(ids, table);
    df_tensor *g = randn_tensor(3, DF_DIMS(M, D));
    cr_assert(df_backward_with(out, g) == DF_OK);
    df_tensor *want = df_zeros(DF_DTYPE_F32, DF_DIMS(V, D));
    for (int64_t i = 0; i < M; i++) {
        int32_t id = ((int32_t *)ids->data)[i];
        for (int64_t c = 0; c < D; c++) df_f32(want)[id * D + c] += df_f32(g)[i * D + c];
    }
    check_close("embedding scatter-add in id order", table->grad, want, 0, 0);
    df_scope_end(s);
}

Test(autograd_embedding, id_out_of_range_asserts, .signal = SIGABRT) {
    df_tensor *table = df_zeros(DF_DTYPE_F32, DF_DIMS(4, 2));
    df_tensor *ids = df_from_data(DF_DTYPE_I64, DF_DIMS(2), (int64_t[]){1, 4});
    df_embedding(ids, table);
}

Test(autograd_embedding, negative_id_asserts, .signal = SIGABRT) {
    df_tensor *table = df_zeros(DF_DTYPE_F32, DF_DIMS(4, 2));
    df_tensor *ids = df_from_data(DF_DTYPE_I32, DF_DIMS(1), (int32_t[]){-1});
    df_embedding(ids, table);
}
