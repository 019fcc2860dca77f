/* test_grad_dest.c — the two ways a backward meets a gradient (df_node_grad_dest): written
 * fresh when this backward creates it, added to when one exists. For each op that writes
 * whole gradients (conv2d, linear, matmul, the unary ops) a backward into leaves that already
 * hold a gradient G0 must give G0 + (the fresh gradient), and an input used twice in one graph
 * must get both contributions. */
#include "tests/common/check.h"

#include <stdio.h>

typedef df_tensor *(*op2_fn)(df_tensor *a, df_tensor *b);

static df_tensor *conv(df_tensor *a, df_tensor *b) {
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    return df_conv2d(a, b, NULL, p);
}

static df_tensor *conv_1x1(df_tensor *a, df_tensor *b) {
    return df_conv2d(a, b, NULL, df_conv2d_default());
}

static df_tensor *linear(df_tensor *a, df_tensor *b) {
    return df_linear(a, b, NULL);
}

static df_tensor *matmul(df_tensor *a, df_tensor *b) {
    return df_matmul(a, b, false, true);
}

static df_tensor *silu_then(df_tensor *a, df_tensor *b) {
    return df_mul(df_silu(a), b);
}

/* Gradients of sum(op(a, b) * r) into a and b, optionally starting from a0 / b0; returns
 * owned tensors. */
static void grads(op2_fn op, df_tensor *a, df_tensor *b, df_tensor *a0, df_tensor *b0,
                  df_tensor **ga, df_tensor **gb) {
    df_tensor_set_requires_grad(a, true);
    df_tensor_set_requires_grad(b, true);
    a->grad = a0 ? df_tensor_clone(a0) : NULL;
    b->grad = b0 ? df_tensor_clone(b0) : NULL;
    df_scope s = df_scope_begin();
    df_tensor *y = op(a, b);
    df_tensor *r = randn_tensor(99, y->ndim, y->shape);
    cr_assert_eq(df_backward_with(y, r), DF_OK, "%s", df_last_error());
    df_scope_end(s);
    *ga = a->grad, *gb = b->grad;
    a->grad = b->grad = NULL;
}

static df_tensor *sum_of(const df_tensor *x, const df_tensor *y) {
    df_tensor *t = df_tensor_clone(x);
    for (int64_t i = 0; i < t->numel; i++) df_f32(t)[i] += df_f32(y)[i];
    return t;
}

static void check_accumulates(const char *name, op2_fn op, int na, const int64_t *sa, int nb,
                              const int64_t *sb) {
    df_tensor *a = randn_tensor(1, na, sa), *b = randn_tensor(2, nb, sb);
    df_tensor *a0 = randn_tensor(3, na, sa), *b0 = randn_tensor(4, nb, sb);
    df_tensor *fa, *fb, *ca, *cb;
    grads(op, a, b, NULL, NULL, &fa, &fb);
    grads(op, a, b, a0, b0, &ca, &cb);
    df_tensor *wa = sum_of(a0, fa), *wb = sum_of(b0, fb);
    char label[96];
    snprintf(label, sizeof label, "%s: existing grad of a + fresh", name);
    check_close(label, ca, wa, 1e-6, 1e-6);
    snprintf(label, sizeof label, "%s: existing grad of b + fresh", name);
    check_close(label, cb, wb, 1e-6, 1e-6);
    df_tensor *ts[] = {a, b, a0, b0, fa, fb, ca, cb, wa, wb};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) df_tensor_free(ts[i]);
}

Test(autograd_grad_dest, existing_gradients_are_added_to) {
    check_accumulates("conv2d 3x3", conv, DF_DIMS(2, 3, 5, 4), DF_DIMS(4, 3, 3, 3));
    check_accumulates("conv2d 1x1", conv_1x1, DF_DIMS(2, 3, 5, 4), DF_DIMS(4, 3, 1, 1));
    check_accumulates("linear", linear, DF_DIMS(2, 5, 6), DF_DIMS(3, 6));
    check_accumulates("matmul", matmul, DF_DIMS(2, 5, 6), DF_DIMS(2, 4, 6));
    check_accumulates("silu", silu_then, DF_DIMS(3, 7), DF_DIMS(3, 7));
}

/* x feeds two convolutions: its gradient is the sum of both (the second backward into x's
 * producer gradient finds it existing). */
Test(autograd_grad_dest, input_used_twice) {
    df_tensor *x = randn_tensor(5, DF_DIMS(2, 3, 4, 4)), *w1 = randn_tensor(6, DF_DIMS(3, 3, 1, 1));
    df_tensor *w2 = randn_tensor(7, DF_DIMS(3, 3, 1, 1)), *g = randn_tensor(8, DF_DIMS(2, 3, 4, 4));
    df_tensor *parts[2];
    for (int i = 0; i < 3; i++) {
        df_tensor_set_requires_grad(x, true);
        df_scope s = df_scope_begin();
        df_tensor *h = df_mul_scalar(x, 1.0f); /* an intermediate: its gradient is a node's */
        df_tensor *y = i == 0   ? conv_1x1(h, w1)
                       : i == 1 ? conv_1x1(h, w2)
                                : df_add(conv_1x1(h, w1), conv_1x1(h, w2));
        cr_assert_eq(df_backward_with(y, g), DF_OK, "%s", df_last_error());
        df_scope_end(s);
        if (i < 2) {
            parts[i] = x->grad;
            x->grad = NULL;
        }
    }
    df_tensor *want = sum_of(parts[0], parts[1]);
    check_close("x through two convolutions", x->grad, want, 1e-6, 1e-6);
    df_tensor *ts[] = {x, w1, w2, g, parts[0], parts[1], want};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) df_tensor_free(ts[i]);
}
