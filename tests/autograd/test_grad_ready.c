/* test_grad_ready.c — the gradient-ready listener (df_flat_set_grad_ready, autograd/tape.c), the
 * hook data-parallel overlap reduces buckets from. Checked: every flat parameter the graph
 * reaches is reported once, with its slice, and its gradient at that moment is already the
 * final one (a parameter used several times is reported after its last use); one the graph does
 * not reach is not reported; without a listener nothing is; a checkpointed segment's parameters
 * are reported from the nested backward; a parameter shared by two checkpointed segments (a use
 * found after the report) fails the backward. */
#include "autograd/autograd_impl.h"
#include "tests/common/check.h"

#include <string.h>

#define MAX_REPORTS 16
#define FLAT_MAX 256

typedef struct seen {
    const df_flat *flat;
    int n;
    int64_t off[MAX_REPORTS], numel[MAX_REPORTS];
    float snap[FLAT_MAX]; /* each reported slice's gradient when it was reported */
} seen;

static void on_ready(void *ctx, int64_t off, int64_t numel) {
    seen *s = ctx;
    cr_assert_lt(s->n, MAX_REPORTS);
    s->off[s->n] = off;
    s->numel[s->n++] = numel;
    memcpy(s->snap + off, df_flat_grad(s->flat) + off, (size_t)numel * sizeof(float));
}

static df_tensor *leaf(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, true);
    return t;
}

/* How often the slice at off was reported. */
static int times(const seen *s, int64_t off) {
    int k = 0;
    for (int i = 0; i < s->n; i++) k += s->off[i] == off;
    return k;
}

/* loss = sum(w * x) + sum(w * w) + sum(2 b); u is a parameter the loss does not use. */
Test(autograd_grad_ready, reports_each_parameter_once_when_final) {
    df_tensor *w = leaf(1, DF_DIMS(2, 3)), *b = leaf(2, DF_DIMS(5)), *u = leaf(3, DF_DIMS(4));
    df_flat flat;
    cr_assert_eq(df_flat_init(&flat, (df_tensor *[]){w, b, u}, 3), DF_OK);
    seen s = {.flat = &flat};
    for (int pass = 0; pass < 2; pass++) { /* the counts start afresh each backward */
        s.n = 0;
        df_flat_zero_grad(&flat);
        df_flat_set_grad_ready(&flat, on_ready, &s);
        df_scope sc = df_scope_begin();
        df_tensor *x = randn_tensor(7, DF_DIMS(3));
        df_tensor *l = df_add(
            df_add(df_sum(df_mul(w, x), 0, NULL, false), df_sum(df_mul(w, w), 0, NULL, false)),
            df_sum(df_mul_scalar(b, 2), 0, NULL, false));
        cr_assert_eq(df_backward(l), DF_OK);
        df_scope_end(sc);
        df_flat_set_grad_ready(NULL, NULL, NULL);
        cr_assert_eq(s.n, 2, "pass %d: %d reports (w and b)", pass, s.n);
        cr_assert_eq(times(&s, 0), 1, "w (offset 0) once");
        cr_assert_eq(times(&s, 16), 1, "b (offset 16) once");
        cr_assert_eq(times(&s, 32), 0, "u is not used: not reported");
        for (int i = 0; i < s.n; i++)
            cr_assert_eq(s.numel[i], s.off[i] == 0 ? 6 : 5, "the slice's size");
        check_close_f32("w's gradient was final when reported", s.snap, df_flat_grad(&flat), 6, 0,
                        0);
        check_close_f32("b's gradient was final when reported", s.snap + 16,
                        df_flat_grad(&flat) + 16, 5, 0, 0);
    }
    /* no listener: no reports */
    s.n = 0;
    df_scope sc = df_scope_begin();
    cr_assert_eq(df_backward(df_sum(df_mul(w, w), 0, NULL, false)), DF_OK);
    df_scope_end(sc);
    cr_assert_eq(s.n, 0);
    df_tensor_free(w);
    df_tensor_free(b);
    df_tensor_free(u);
    df_flat_free(&flat);
}

/* A checkpointed segment: silu(x w) + x, with its parameter w only inside. */
static df_tensor *segment(df_tensor *const *in, const void *user) {
    df_tensor *const *p = user;
    return df_add(df_silu(df_matmul(in[0], p[0], false, false)), in[0]);
}

/* loss = sum(seg2(seg1(tanh(x0) v)) * r): w1 in seg1, w2 in seg2 (or w1 in both: shared). */
static df_status run_segments(df_tensor *x0, df_tensor *v, df_tensor *w1, df_tensor *w2) {
    df_scope sc = df_scope_begin();
    df_tensor *x = df_matmul(df_tanh(x0), v, false, false);
    df_tensor *in[1] = {x};
    df_tensor *y = df_checkpoint(segment, (df_tensor *[]){w1}, 1, in);
    in[0] = y;
    y = df_checkpoint(segment, (df_tensor *[]){w2}, 1, in);
    df_tensor *r = randn_tensor(9, DF_DIMS(4, 8));
    df_status st = df_backward(df_sum(df_mul(y, r), 0, NULL, false));
    df_scope_end(sc);
    return st;
}

Test(autograd_grad_ready, checkpointed_segments_report_from_the_nested_backward) {
    df_tensor *x0 = leaf(1, DF_DIMS(4, 8)), *v = leaf(2, DF_DIMS(8, 8));
    df_tensor *w1 = leaf(3, DF_DIMS(8, 8)), *w2 = leaf(4, DF_DIMS(8, 8));
    df_tensor_set_requires_grad(x0, false);
    df_flat flat;
    cr_assert_eq(df_flat_init(&flat, (df_tensor *[]){v, w1, w2}, 3), DF_OK);
    seen s = {.flat = &flat};
    df_flat_set_grad_ready(&flat, on_ready, &s);
    cr_assert_eq(run_segments(x0, v, w1, w2), DF_OK);
    cr_assert_eq(s.n, 3, "%d reports", s.n);
    /* backward order: seg2's w2, then seg1's w1, then v */
    cr_assert(s.off[0] == 128 && s.off[1] == 64 && s.off[2] == 0, "order %lld %lld %lld",
              (long long)s.off[0], (long long)s.off[1], (long long)s.off[2]);
    check_close_f32("every gradient final when reported", s.snap, df_flat_grad(&flat), 192, 0, 0);
    /* w1 in both segments: seg2's nested backward reports it, seg1's uses it again */
    df_flat_zero_grad(&flat);
    s.n = 0;
    cr_assert_eq(run_segments(x0, v, w1, w1), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "used again by a nested backward"), "%s", df_last_error());
    df_flat_set_grad_ready(NULL, NULL, NULL);
    df_tensor_free(x0);
    df_tensor_free(v);
    df_tensor_free(w1);
    df_tensor_free(w2);
    df_flat_free(&flat);
}
