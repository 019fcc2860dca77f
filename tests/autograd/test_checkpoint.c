/* test_checkpoint.c — df_checkpoint (autograd/checkpoint.c), the library's gradient
 * checkpointing op. Checked: gradients bitwise equal to the plain graph when a segment's input
 * is also used outside it (the input's gradient is lent to the recomputation, so additions
 * happen in the plain order), when the input needs no gradient but the segment's parameters do,
 * with a NULL input; grad mode off records nothing; the forward keeps less than the plain
 * graph; a steady loop returns every byte. */
#include "autograd/autograd_impl.h"
#include "tests/common/check.h"

#include <string.h>

/* A segment: group_norm(silu(x w) + x + t) with t a (4, 8, 1) per-channel shift or NULL (x is
 * used twice inside, so the order of its gradient's additions matters).
 * in = {x (4, 8, 16), t or NULL}; user = params {w (16, 16), gamma (8), beta (8)}. */
static df_tensor *segment(df_tensor *const *in, const void *user) {
    df_tensor *const *p = user;
    df_tensor *h = df_add(df_silu(df_matmul(in[0], p[0], false, false)), in[0]);
    if (in[1]) h = df_add(h, in[1]);
    return df_group_norm(h, 2, p[1], p[2], 1e-5f);
}

typedef struct case_ {
    df_tensor *x0, *t0, *r, *p[3];
} case_;

static df_tensor *leaf(uint64_t seed, int ndim, const int64_t *shape, bool grad) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, grad);
    return t;
}

static case_ case_new(bool x_grad) {
    case_ c;
    c.x0 = leaf(1, DF_DIMS(4, 8, 16), x_grad);
    c.t0 = leaf(2, DF_DIMS(4, 8, 1), true);
    c.r = randn_tensor(3, DF_DIMS(4, 8, 16));
    c.p[0] = leaf(4, DF_DIMS(16, 16), true);
    c.p[1] = leaf(5, DF_DIMS(8), true);
    c.p[2] = leaf(6, DF_DIMS(8), true);
    return c;
}

static void case_free(case_ *c) {
    df_tensor_free(c->x0);
    df_tensor_free(c->t0);
    df_tensor_free(c->r);
    for (int i = 0; i < 3; i++) df_tensor_free(c->p[i]);
}

/* loss = sum((seg(x, t) + x) * r) with x = tanh(x0) used inside and outside the segment, twice
 * in a row (the second segment fed by the first); t = sigmoid(t0) or NULL. */
static df_status run(case_ *c, bool ck, bool with_t) {
    df_scope s = df_scope_begin();
    df_tensor *x = df_tanh(c->x0);
    df_tensor *t = with_t ? df_sigmoid(c->t0) : NULL;
    df_tensor *y = x;
    for (int k = 0; k < 2; k++) {
        df_tensor *in[2] = {y, t};
        df_tensor *seg = ck ? df_checkpoint(segment, c->p, 2, in) : segment(in, c->p);
        y = df_add(seg, y);
    }
    df_status rc = df_backward(df_sum(df_mul(y, c->r), 0, NULL, false));
    df_scope_end(s);
    return rc;
}

static void expect_same_grad(const char *label, const df_tensor *got, const df_tensor *want) {
    cr_assert((got == NULL) == (want == NULL), "%s: gradient presence differs", label);
    if (!want) return;
    cr_assert(df_tensor_same_shape(got, want));
    cr_expect(memcmp(got->data, want->data, (size_t)want->numel * sizeof(float)) == 0, "%s differs",
              label);
}

static void check_bitwise(bool x_grad, bool with_t) {
    case_ plain = case_new(x_grad), ck = case_new(x_grad);
    cr_assert_eq(run(&plain, false, with_t), DF_OK, "%s", df_last_error());
    cr_assert_eq(run(&ck, true, with_t), DF_OK, "%s", df_last_error());
    expect_same_grad("dx0", ck.x0->grad, plain.x0->grad);
    expect_same_grad("dt0", ck.t0->grad, plain.t0->grad);
    static const char *names[3] = {"dw", "dgamma", "dbeta"};
    for (int i = 0; i < 3; i++) expect_same_grad(names[i], ck.p[i]->grad, plain.p[i]->grad);
    case_free(&plain);
    case_free(&ck);
}

Test(autograd_checkpoint, input_used_outside_the_segment_bitwise) {
    check_bitwise(true, true);
}

Test(autograd_checkpoint, a_null_input_bitwise) {
    check_bitwise(true, false);
}

/* x0 needs no gradient: only the parameters reach the segment's node, which is made anyway */
Test(autograd_checkpoint, parameters_only_bitwise) {
    check_bitwise(false, false);
}

Test(autograd_checkpoint, grad_mode_off_records_nothing) {
    case_ c = case_new(true);
    bool prev = df_grad_set_enabled(false);
    df_scope s = df_scope_begin();
    df_tensor *in[2] = {c.x0, NULL};
    df_tensor *y = df_checkpoint(segment, c.p, 2, in);
    df_tensor *want = segment(in, c.p);
    cr_assert(y->node == NULL && !y->requires_grad);
    expect_same_grad("output", y, want);
    df_scope_end(s);
    df_grad_set_enabled(prev);
    case_free(&c);
}

/* The forward keeps the inputs and the output only; the plain graph keeps every intermediate. */
Test(autograd_checkpoint, keeps_less_until_backward) {
    case_ c = case_new(true);
    size_t held[2];
    for (int k = 0; k < 2; k++) {
        size_t before = df_mem_get_stats().bytes_in_use;
        df_scope s = df_scope_begin();
        df_tensor *in[2] = {df_tanh(c.x0), NULL};
        df_tensor *y = k ? df_checkpoint(segment, c.p, 2, in) : segment(in, c.p);
        held[k] = df_mem_get_stats().bytes_in_use - before;
        cr_assert_eq(df_backward(df_sum(df_mul(y, c.r), 0, NULL, false)), DF_OK);
        df_scope_end(s);
    }
    cr_assert(held[1] < held[0] * 2 / 3, "checkpointed forward holds %zu bytes, plain %zu", held[1],
              held[0]);
    case_free(&c);
}

Test(autograd_checkpoint, steady_loop_returns_every_byte) {
    case_ c = case_new(true);
    size_t in_use = 0;
    for (int step = 0; step < 6; step++) {
        cr_assert_eq(run(&c, true, true), DF_OK);
        df_tensor_zero_grad(c.x0);
        df_tensor_zero_grad(c.t0);
        for (int i = 0; i < 3; i++) df_tensor_zero_grad(c.p[i]);
        if (step == 1) in_use = df_mem_get_stats().bytes_in_use;
    }
    cr_assert_eq(df_mem_get_stats().bytes_in_use, in_use, "bytes in use grow: %zu, %zu at step 2",
                 df_mem_get_stats().bytes_in_use, in_use);
    case_free(&c);
}
