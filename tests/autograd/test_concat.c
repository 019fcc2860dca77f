/* test_concat.c — df_concat: finite-difference gradients (several dims, negative dims, 1-D and
 * 5-D, only some inputs requiring grad, a repeated input), exact forward values, and bad
 * shapes. PyTorch parity lives in test_ops_shapes_parity.c. */
#include "tests/common/check.h"

#include <signal.h>

static df_tensor *leaf(uint64_t seed, int ndim, const int64_t *shape, bool rg) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, rg);
    return t;
}

typedef struct cat_case {
    int n, dim;
} cat_case;

static df_tensor *cat_fn(df_tensor **in, void *user) {
    const cat_case *c = user;
    return df_concat(in, c->n, c->dim);
}

Test(autograd_concat, gradcheck_three_inputs_dim1) {
    df_scope s = df_scope_begin();
    df_tensor *in[3] = {leaf(1, DF_DIMS(2, 3, 4), true), leaf(2, DF_DIMS(2, 1, 4), true),
                        leaf(3, DF_DIMS(2, 2, 4), true)};
    cat_case c = {3, 1};
    gradcheck("concat dim 1", cat_fn, &c, in, 3, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

Test(autograd_concat, gradcheck_only_some_require_grad) {
    df_scope s = df_scope_begin();
    df_tensor *in[3] = {leaf(4, DF_DIMS(3, 2), true), leaf(5, DF_DIMS(3, 4), false),
                        leaf(6, DF_DIMS(3, 1), true)};
    cat_case c = {3, -1};
    gradcheck("concat, middle input frozen", cat_fn, &c, in, 3, 1e-2, 1e-4, 1e-3);
    /* and when only the middle one requires grad */
    df_tensor_set_requires_grad(in[0], false);
    df_tensor_set_requires_grad(in[1], true);
    df_tensor_set_requires_grad(in[2], false);
    gradcheck("concat, only middle input", cat_fn, &c, in, 3, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

Test(autograd_concat, gradcheck_negative_dims) {
    df_scope s = df_scope_begin();
    df_tensor *in[2] = {leaf(7, DF_DIMS(2, 3, 2), true), leaf(8, DF_DIMS(1, 3, 2), true)};
    cat_case c = {2, -3};
    gradcheck("concat dim -3", cat_fn, &c, in, 2, 1e-2, 1e-4, 1e-3);
    df_tensor *in2[2] = {leaf(9, DF_DIMS(2, 3, 2), true), leaf(10, DF_DIMS(2, 3, 5), true)};
    c.dim = -1;
    gradcheck("concat dim -1", cat_fn, &c, in2, 2, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

Test(autograd_concat, gradcheck_1d_and_5d) {
    df_scope s = df_scope_begin();
    df_tensor *in1[3] = {leaf(11, DF_DIMS(3), true), leaf(12, DF_DIMS(1), true),
                         leaf(13, DF_DIMS(4), true)};
    cat_case c = {3, 0};
    gradcheck("concat 1-D", cat_fn, &c, in1, 3, 1e-2, 1e-4, 1e-3);
    df_tensor *in5[2] = {leaf(14, DF_DIMS(2, 1, 3, 2, 2), true),
                         leaf(15, DF_DIMS(2, 1, 2, 2, 2), true)};
    c = (cat_case){2, 2};
    gradcheck("concat 5-D dim 2", cat_fn, &c, in5, 2, 1e-2, 1e-4, 1e-3);
    df_tensor *in5b[2] = {leaf(16, DF_DIMS(1, 2, 2, 1, 3), true),
                          leaf(17, DF_DIMS(1, 2, 2, 1, 2), true)};
    c = (cat_case){2, -1};
    gradcheck("concat 5-D dim -1", cat_fn, &c, in5b, 2, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

/* concat(a, b, a): a receives both of its slices. */
static df_tensor *cat_repeat_fn(df_tensor **in, void *user) {
    (void)user;
    return df_concat((df_tensor *[]){in[0], in[1], in[0]}, 3, 0);
}

Test(autograd_concat, gradcheck_repeated_input) {
    df_scope s = df_scope_begin();
    df_tensor *in[2] = {leaf(18, DF_DIMS(2, 3), true), leaf(19, DF_DIMS(1, 3), true)};
    gradcheck("concat(a, b, a)", cat_repeat_fn, NULL, in, 2, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

/* concat of op outputs: the gradient flows on through the inputs' own nodes. */
static df_tensor *cat_chain_fn(df_tensor **in, void *user) {
    (void)user;
    df_tensor *a = df_transpose(in[0], 0, 1); /* (3, 2) */
    df_tensor *b = df_slice(in[1], 1, 1, 2);  /* (3, 2) */
    return df_concat((df_tensor *[]){a, b}, 2, 1);
}

Test(autograd_concat, gradcheck_through_other_ops) {
    df_scope s = df_scope_begin();
    df_tensor *in[2] = {leaf(20, DF_DIMS(2, 3), true), leaf(21, DF_DIMS(3, 4), true)};
    gradcheck("concat(transpose, slice)", cat_chain_fn, NULL, in, 2, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

Test(autograd_concat, forward_values) {
    df_scope s = df_scope_begin();
    df_tensor *a = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 2), (float[]){1, 2, 3, 4});
    df_tensor *b = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 1), (float[]){5, 6});
    df_tensor *e = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 0));
    df_tensor *out = df_concat((df_tensor *[]){a, e, b}, 3, 1);
    df_tensor *want = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 3), (float[]){1, 2, 5, 3, 4, 6});
    check_close("concat dim 1", out, want, 0, 0);
    cr_assert(!out->requires_grad && out->node == NULL, "no input requires grad: no node");
    df_tensor *out0 = df_concat((df_tensor *[]){a, b, b}, 3, -1);
    df_tensor *want0 = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 4), (float[]){1, 2, 5, 5, 3, 4, 6, 6});
    check_close("concat dim -1", out0, want0, 0, 0);
    df_scope_end(s);
}

Test(autograd_concat, integer_dtype_and_large_parallel) {
    df_scope s = df_scope_begin();
    /* I64 ids concatenate too (a byte copy) */
    df_tensor *a = df_from_data(DF_DTYPE_I64, DF_DIMS(1, 2), (int64_t[]){7, 8});
    df_tensor *b = df_from_data(DF_DTYPE_I64, DF_DIMS(1, 1), (int64_t[]){9});
    df_tensor *out = df_concat((df_tensor *[]){a, b}, 2, 1);
    cr_assert(out->dtype == DF_DTYPE_I64 && out->shape[1] == 3);
    df_tensor *want = df_from_data(DF_DTYPE_I64, DF_DIMS(1, 3), (int64_t[]){7, 8, 9});
    check_close("concat I64", out, want, 0, 0);
    /* a size that takes the threaded path, checked against the (outer, s, inner) formula */
    df_tensor *x = randn_tensor(30, DF_DIMS(64, 40, 16));
    df_tensor *y = randn_tensor(31, DF_DIMS(64, 24, 16));
    df_tensor *z = df_concat((df_tensor *[]){x, y}, 2, 1);
    df_tensor *ref = df_tensor_new(DF_DTYPE_F32, DF_DIMS(64, 64, 16));
    for (int64_t o = 0; o < 64; o++)
        for (int64_t j = 0; j < 64; j++)
            for (int64_t r = 0; r < 16; r++)
                df_f32(ref)[(o * 64 + j) * 16 + r] = j < 40 ? df_f32(x)[(o * 40 + j) * 16 + r]
                                                            : df_f32(y)[(o * 24 + j - 40) * 16 + r];
    check_close("concat large", z, ref, 0, 0);
    df_scope_end(s);
}

Test(autograd_concat, mismatched_shapes_assert, .signal = SIGABRT) {
    df_tensor *a = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 3));
    df_tensor *b = df_zeros(DF_DTYPE_F32, DF_DIMS(3, 3));
    df_concat((df_tensor *[]){a, b}, 2, 1);
}

Test(autograd_concat, dim_out_of_range_asserts, .signal = SIGABRT) {
    df_tensor *a = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 3));
    df_concat(&a, 1, -3);
}
