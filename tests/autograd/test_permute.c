/* test_permute.c — df_permute and df_transpose: finite-difference gradients (negative entries,
 * 1-D to 5-D), and the planned/tiled copy tied to a plain index-by-index reference over the
 * layouts it special-cases (row copies, batched tiled transposes with partial tiles, size-1
 * dims, the threaded path) for forward, backward and every element size. */
#include "tests/common/check.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static df_tensor *leaf(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, true);
    return t;
}

/* The reference: out[i] = a[j] index by index, as F64 values (exact for every test dtype). */
static df_tensor *naive_permute(const df_tensor *a, const int *perm) {
    int n = a->ndim, p[DF_MAX_DIMS];
    int64_t shape[DF_MAX_DIMS], ast[DF_MAX_DIMS], idx[DF_MAX_DIMS] = {0};
    for (int k = 0; k < n; k++) p[k] = perm[k] < 0 ? perm[k] + n : perm[k];
    for (int k = 0; k < n; k++) shape[k] = a->shape[p[k]];
    int64_t s = 1;
    for (int k = n - 1; k >= 0; k--) {
        ast[k] = s;
        s *= a->shape[k];
    }
    df_tensor *out = df_tensor_new(DF_DTYPE_F64, n, shape);
    for (int64_t i = 0; i < out->numel; i++) {
        int64_t src = 0;
        for (int k = 0; k < n; k++) src += idx[k] * ast[p[k]];
        ((double *)out->data)[i] = df_tensor_get(a, src);
        for (int k = n - 1; k >= 0; k--) {
            if (++idx[k] < shape[k]) break;
            idx[k] = 0;
        }
    }
    return out;
}

typedef struct perm_case {
    int perm[DF_MAX_DIMS];
} perm_case;

static df_tensor *permute_fn(df_tensor **in, void *user) {
    return df_permute(in[0], ((perm_case *)user)->perm);
}

typedef struct tr_case {
    int d0, d1;
} tr_case;

static df_tensor *transpose_fn(df_tensor **in, void *user) {
    const tr_case *c = user;
    return df_transpose(in[0], c->d0, c->d1);
}

Test(autograd_permute, gradcheck_5d) {
    df_scope s = df_scope_begin();
    df_tensor *a = leaf(1, DF_DIMS(2, 3, 1, 2, 3));
    perm_case cases[] = {{{4, 0, 2, 3, 1}},
                         {{-1, -5, 2, -2, 1}},
                         {{0, 3, 1, 2, 4}},
                         {{1, 0, 2, 3, 4}},
                         {{0, 1, 2, 3, 4}}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char label[64];
        snprintf(label, sizeof label, "permute 5-D case %zu", i);
        gradcheck(label, permute_fn, &cases[i], &a, 1, 1e-2, 1e-4, 1e-3);
    }
    df_scope_end(s);
}

Test(autograd_permute, gradcheck_small_dims) {
    df_scope s = df_scope_begin();
    df_tensor *a1 = leaf(2, DF_DIMS(5));
    perm_case c1 = {{-1}};
    gradcheck("permute 1-D", permute_fn, &c1, &a1, 1, 1e-2, 1e-4, 1e-3);
    df_tensor *a2 = leaf(3, DF_DIMS(3, 4));
    tr_case t2 = {-1, 0};
    gradcheck("transpose 2-D", transpose_fn, &t2, &a2, 1, 1e-2, 1e-4, 1e-3);
    df_tensor *a4 = leaf(4, DF_DIMS(2, 3, 2, 4));
    perm_case heads = {{0, 2, 1, 3}};
    gradcheck("(B, T, H, D) -> (B, H, T, D)", permute_fn, &heads, &a4, 1, 1e-2, 1e-4, 1e-3);
    perm_case nhwc = {{0, 2, 3, 1}};
    gradcheck("(N, C, H, W) -> (N, H, W, C)", permute_fn, &nhwc, &a4, 1, 1e-2, 1e-4, 1e-3);
    tr_case t4 = {-1, -3};
    gradcheck("transpose -1, -3", transpose_fn, &t4, &a4, 1, 1e-2, 1e-4, 1e-3);
    df_tensor *a5 = leaf(5, DF_DIMS(2, 1, 3, 2, 2));
    tr_case t5 = {-4, 4};
    gradcheck("transpose 5-D", transpose_fn, &t5, &a5, 1, 1e-2, 1e-4, 1e-3);
    df_scope_end(s);
}

/* Forward and backward of one shape/permutation against the reference, exactly. */
static void check_layout(uint64_t seed, int ndim, const int64_t *shape, const int *perm) {
    df_scope s = df_scope_begin();
    char label[160], sa[64];
    df_tensor *a = leaf(seed, ndim, shape);
    int k = snprintf(label, sizeof label, "permute %s by (", df_shape_str(a, sa, sizeof sa));
    for (int i = 0; i < ndim; i++)
        k += snprintf(label + k, sizeof label - k, i ? ",%d" : "%d", perm[i]);
    snprintf(label + k, sizeof label - k, ")");
    df_tensor *out = df_permute(a, perm);
    check_close(label, out, naive_permute(a, perm), 0, 0);
    /* backward: the gradient is g permuted back; seed it twice to see it accumulate */
    int inv[DF_MAX_DIMS];
    for (int i = 0; i < ndim; i++) inv[perm[i] < 0 ? perm[i] + ndim : perm[i]] = i;
    df_tensor *g = randn_tensor(seed + 100, out->ndim, out->shape);
    df_tensor *want = df_tensor_to(naive_permute(g, inv), DF_DTYPE_F32);
    cr_assert(df_backward_with(out, g) == DF_OK);
    check_close(label, a->grad, want, 0, 0);
    df_tensor *out2 = df_permute(a, perm);
    cr_assert(df_backward_with(out2, g) == DF_OK);
    for (int64_t i = 0; i < want->numel; i++) df_f32(want)[i] *= 2;
    check_close(label, a->grad, want, 0, 0);
    df_scope_end(s);
}

Test(autograd_permute, planned_copy_matches_reference) {
    /* attention head split and merge, large enough to take the threaded path */
    check_layout(10, DF_DIMS(2, 77, 8, 40), (int[]){0, 2, 1, 3});
    check_layout(11, DF_DIMS(2, 8, 77, 40), (int[]){0, 2, 1, 3});
    /* row copies split unevenly between threads, and an odometer carrying over 4 outer dims */
    check_layout(23, DF_DIMS(3, 67, 5, 40), (int[]){0, 2, 1, 3});
    check_layout(24, DF_DIMS(5, 6, 7, 8, 30), (int[]){2, 0, 3, 1, 4});
    /* NCHW <-> NHWC with partial tiles (C = 35, HW = 9 * 11) */
    check_layout(12, DF_DIMS(3, 35, 9, 11), (int[]){0, 2, 3, 1});
    check_layout(13, DF_DIMS(3, 9, 11, 35), (int[]){0, 3, 1, 2});
    check_layout(14, DF_DIMS(2, 64, 32, 32), (int[]){0, 2, 3, 1});
    /* last-two-dims transpose, a matrix transpose, q.k^T style (B, H, T, D) -> (B, H, D, T) */
    check_layout(15, DF_DIMS(2, 4, 33, 70), (int[]){0, 1, 3, 2});
    check_layout(16, DF_DIMS(300, 170), (int[]){1, 0});
    /* size-1 dims, full reversal, 5-D shuffles, identity */
    check_layout(17, DF_DIMS(1, 5, 1, 7, 3), (int[]){4, 3, 2, 1, 0});
    check_layout(18, DF_DIMS(3, 4, 5, 6, 7), (int[]){2, 0, 4, 1, 3});
    check_layout(19, DF_DIMS(3, 4, 5, 6, 7), (int[]){1, 2, 0, 3, 4});
    check_layout(20, DF_DIMS(6, 5, 4, 3, 2), (int[]){0, 1, 2, 3, 4});
    check_layout(21, DF_DIMS(1, 1, 1), (int[]){2, 0, 1});
    check_layout(22, DF_DIMS(4, 0, 3), (int[]){2, 0, 1});
}

Test(autograd_permute, every_element_size) {
    df_scope s = df_scope_begin();
    const df_dtype dts[] = {DF_DTYPE_U8, DF_DTYPE_BF16, DF_DTYPE_I32, DF_DTYPE_I64, DF_DTYPE_F64};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        df_tensor *x = df_arange(dts[i], 0, 5 * 37 * 3, 1);
        if (dts[i] == DF_DTYPE_U8 || dts[i] == DF_DTYPE_BF16) /* keep values exact */
            for (int64_t j = 0; j < x->numel; j++) {
                df_tensor *one = df_tensor_view(x, DF_DIMS(1), j);
                df_tensor_fill_(one, (double)(j % 200));
            }
        df_tensor *x3 = df_reshape(x, DF_DIMS(5, 37, 3));
        int perm[3] = {2, 1, 0};
        df_tensor *out = df_permute(x3, perm);
        cr_assert(out->dtype == dts[i]);
        check_close(df_dtype_name(dts[i]), out, naive_permute(x3, perm), 0, 0);
        df_tensor *t = df_transpose(x3, 0, 1);
        check_close(df_dtype_name(dts[i]), t, naive_permute(x3, (int[]){1, 0, 2}), 0, 0);
    }
    df_scope_end(s);
}

/* A scalar takes dim 0 or -1 (torch.transpose(torch.tensor(2.), -1, 0) is the scalar). */
Test(autograd_permute, scalar_transpose) {
    df_scope s = df_scope_begin();
    df_tensor *a = df_full(DF_DTYPE_F32, 0, NULL, 2.5);
    df_tensor *t = df_transpose(a, -1, 0);
    cr_assert(t->ndim == 0 && t->numel == 1);
    check_close("scalar transpose", t, a, 0, 0);
    df_scope_end(s);
}

Test(autograd_permute, repeated_dim_asserts, .signal = SIGABRT) {
    df_tensor *a = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 3, 4));
    df_permute(a, (int[]){0, 2, -1});
}
