/* test_slice.c — df_slice and df_chunk: finite-difference gradients (negative dims and start,
 * 1-D and 5-D, chunks used out of order or not at all), exact forward values, bad ranges. */
#include "tests/common/check.h"

#include <signal.h>
#include <stdio.h>

static df_tensor *leaf(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, true);
    return t;
}

typedef struct slice_case {
    int dim;
    int64_t start, len;
} slice_case;

static df_tensor *slice_fn(df_tensor **in, void *user) {
    const slice_case *c = user;
    return df_slice(in[0], c->dim, c->start, c->len);
}

Test(autograd_slice, gradcheck_dims) {
    df_scope s = df_scope_begin();
    df_tensor *a = leaf(1, DF_DIMS(2, 5, 3));
    slice_case cases[] = {{1, 1, 3}, {0, 1, 1}, {-1, 0, 2}, {-2, -3, 2}, {2, 2, 1}, {1, 0, 5}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char label[64];
        snprintf(label, sizeof label, "slice case %zu", i);
        gradcheck(label, slice_fn, &cases[i], &a, 1, 1e-2, 1e-4, 1e-3);
    }
    df_scope_end(s);
}

Test(autograd_slice, gradcheck_1d_and_5d) {
    df_scope s = df_scope_begin();
    df_tensor *a = leaf(2, DF_DIMS(7));
    slice_case c1 = {0, 2, 4};
    gradcheck("slice 1-D", slice_fn, &c1, &a, 1, 1e-2, 1e-4, 1e-3);
    slice_case c1n = {-1, -2, 2};
    gradcheck("slice 1-D negative", slice_fn, &c1n, &a, 1, 1e-2, 1e-4, 1e-3);
    df_tensor *b = leaf(3, DF_DIMS(2, 3, 1, 4, 2));
    slice_case c5 = {3, 1, 2};
    gradcheck("slice 5-D", slice_fn, &c5, &b, 1, 1e-2, 1e-4, 1e-3);
    slice_case c5n = {-4, 1, 1};
    gradcheck("slice 5-D dim -4", slice_fn, &c5n, &b, 1, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

/* chunk into 3 along dim -2, then use the pieces as concat(c2, c0): c1 gets no gradient, so its
 * region of the input's gradient must stay zero. */
static df_tensor *chunk_fn(df_tensor **in, void *user) {
    (void)user;
    df_tensor *c[3];
    df_chunk(in[0], 3, -2, c);
    return df_concat((df_tensor *[]){c[2], c[0]}, 2, -1);
}

Test(autograd_slice, gradcheck_chunk) {
    df_scope s = df_scope_begin();
    df_tensor *a = leaf(4, DF_DIMS(2, 6, 3));
    gradcheck("chunk 3 along -2", chunk_fn, NULL, &a, 1, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

Test(autograd_slice, chunk_backward_regions) {
    df_scope s = df_scope_begin();
    df_tensor *a = leaf(5, DF_DIMS(4, 2));
    df_tensor *c[2];
    df_chunk(a, 2, 0, c);
    cr_assert(c[0]->shape[0] == 2 && c[1]->shape[0] == 2 && c[1]->shape[1] == 2);
    df_tensor *g = df_full(DF_DTYPE_F32, DF_DIMS(2, 2), 3.0);
    cr_assert(df_backward_with(c[1], g) == DF_OK);
    df_tensor *want = df_from_data(DF_DTYPE_F32, DF_DIMS(4, 2), (float[]){0, 0, 0, 0, 3, 3, 3, 3});
    check_close("grad of the second chunk only", a->grad, want, 0, 0);
    cr_assert(df_backward_with(c[0], g) == DF_OK);
    df_tensor *want2 = df_full(DF_DTYPE_F32, DF_DIMS(4, 2), 3.0);
    check_close("both chunks accumulate", a->grad, want2, 0, 0);
    df_scope_end(s);
}

Test(autograd_slice, forward_values) {
    df_scope s = df_scope_begin();
    df_tensor *a = df_arange(DF_DTYPE_F32, 0, 24, 1);
    df_tensor *a3 = df_reshape(a, DF_DIMS(2, 3, 4));
    df_tensor *out = df_slice(a3, -1, 1, 2);
    df_tensor *want = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 3, 2),
                                   (float[]){1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22});
    check_close("slice last dim", out, want, 0, 0);
    df_tensor *mid = df_slice(a3, 1, -1, 1);
    df_tensor *want_mid =
        df_from_data(DF_DTYPE_F32, DF_DIMS(2, 1, 4), (float[]){8, 9, 10, 11, 20, 21, 22, 23});
    check_close("slice start -1", mid, want_mid, 0, 0);
    df_tensor *empty = df_slice(a3, 0, 2, 0);
    cr_assert(empty->numel == 0 && empty->shape[0] == 0 && empty->shape[2] == 4);
    df_tensor *ids = df_from_data(DF_DTYPE_I32, DF_DIMS(5), (int32_t[]){4, 5, 6, 7, 8});
    df_tensor *ids2 = df_slice(ids, 0, 1, 3);
    df_tensor *want_ids = df_from_data(DF_DTYPE_I32, DF_DIMS(3), (int32_t[]){5, 6, 7});
    cr_assert(ids2->dtype == DF_DTYPE_I32);
    check_close("slice I32", ids2, want_ids, 0, 0);
    df_scope_end(s);
}

Test(autograd_slice, large_parallel_backward) {
    df_scope s = df_scope_begin();
    df_tensor *a = leaf(6, DF_DIMS(128, 50, 8));
    df_tensor *out = df_slice(a, 1, 10, 30);
    df_tensor *g = randn_tensor(7, DF_DIMS(128, 30, 8));
    cr_assert(df_backward_with(out, g) == DF_OK);
    df_tensor *want_out = df_tensor_new(DF_DTYPE_F32, DF_DIMS(128, 30, 8));
    df_tensor *want_g = df_zeros(DF_DTYPE_F32, DF_DIMS(128, 50, 8));
    for (int64_t o = 0; o < 128; o++)
        for (int64_t j = 0; j < 30; j++)
            for (int64_t r = 0; r < 8; r++) {
                df_f32(want_out)[(o * 30 + j) * 8 + r] = df_f32(a)[(o * 50 + 10 + j) * 8 + r];
                df_f32(want_g)[(o * 50 + 10 + j) * 8 + r] = df_f32(g)[(o * 30 + j) * 8 + r];
            }
    check_close("slice large forward", out, want_out, 0, 0);
    check_close("slice large backward", a->grad, want_g, 0, 0);
    df_scope_end(s);
}

Test(autograd_slice, out_of_range_asserts, .signal = SIGABRT) {
    df_tensor *a = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 3));
    df_slice(a, 1, 2, 2);
}

Test(autograd_slice, chunk_indivisible_asserts, .signal = SIGABRT) {
    df_tensor *a = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 5));
    df_tensor *c[2];
    df_chunk(a, 2, 1, c);
}
