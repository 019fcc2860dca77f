/* test_binary.c — add/sub/mul/div with broadcasting and the scalar forms: finite-difference
 * gradient checks (every input, broadcast shapes up to rank 5, inputs without requires_grad),
 * the broadcast fast paths against a plain index-by-index reference on a large shape, and
 * thread-count independence.
 *
 * Gradcheck tolerances: eps 1e-3 on float32 inputs; the loss is accumulated in double but each
 * output is rounded to float, so the central difference carries ~|out| * 6e-8 / 2e-3 ~ 3e-5 of
 * rounding noise per element plus O(eps^2) truncation; atol 5e-3 + rtol 1e-2 leaves margin. */
#include "tests/common/check.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

typedef df_tensor *(*bin_fn)(df_tensor *, df_tensor *);
typedef struct bin_case {
    bin_fn f;
} bin_case;

static df_tensor *call_bin(df_tensor **in, void *u) {
    return ((bin_case *)u)->f(in[0], in[1]);
}

/* Values away from 0 so that div's numeric derivative is well conditioned. */
static df_tensor *away_from_zero(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    float *p = df_f32(t);
    for (int64_t i = 0; i < t->numel; i++) p[i] = p[i] >= 0 ? p[i] + 0.5f : p[i] - 0.5f;
    return t;
}

typedef struct shape_pair {
    int na, nb;
    int64_t sa[5], sb[5];
} shape_pair;

static const shape_pair pairs[] = {
    {3, 2, {2, 3, 4}, {3, 1}},    {3, 3, {2, 1, 4}, {1, 3, 1}},
    {3, 3, {2, 3, 4}, {2, 3, 4}}, {1, 3, {4}, {2, 3, 4}},
    {0, 2, {0}, {2, 3}},          {4, 4, {2, 3, 2, 2}, {1, 3, 1, 1}},
    {4, 1, {2, 3, 2, 2}, {2}},    {5, 5, {2, 1, 2, 1, 3}, {1, 2, 1, 2, 1}},
};

static void check_all_pairs(const char *name, bin_fn f) {
    bin_case c = {f};
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        const shape_pair *p = &pairs[k];
        for (int mode = 0; mode < 3; mode++) { /* both, only a, only b require grad */
            df_scope s = df_scope_begin();
            df_tensor *in[2] = {away_from_zero(10 + k, p->na, p->sa),
                                away_from_zero(20 + k, p->nb, p->sb)};
            df_tensor_set_requires_grad(in[0], mode != 2);
            df_tensor_set_requires_grad(in[1], mode != 1);
            char label[128];
            snprintf(label, sizeof label, "%s pair %zu mode %d", name, k, mode);
            gradcheck(label, call_bin, &c, in, 2, 1e-3, 5e-3, 1e-2);
            df_tensor_free(in[0]->grad), in[0]->grad = NULL;
            df_tensor_free(in[1]->grad), in[1]->grad = NULL;
            df_scope_end(s);
        }
    }
}

Test(autograd_binary, gradcheck_add) {
    check_all_pairs("add", df_add);
}
Test(autograd_binary, gradcheck_sub) {
    check_all_pairs("sub", df_sub);
}
Test(autograd_binary, gradcheck_mul) {
    check_all_pairs("mul", df_mul);
}
Test(autograd_binary, gradcheck_div) {
    check_all_pairs("div", df_div);
}

typedef struct scal_case {
    int kind;
    float s;
} scal_case;

static df_tensor *call_scal(df_tensor **in, void *u) {
    scal_case *c = u;
    switch (c->kind) {
    case 0: return df_add_scalar(in[0], c->s);
    case 1: return df_mul_scalar(in[0], c->s);
    case 2: return df_rsub_scalar(c->s, in[0]);
    default: return df_rdiv_scalar(c->s, in[0]);
    }
}

Test(autograd_binary, gradcheck_scalar_forms) {
    for (int kind = 0; kind < 4; kind++) {
        df_scope s = df_scope_begin();
        scal_case c = {kind, -1.7f};
        df_tensor *x = away_from_zero(7, DF_DIMS(2, 3, 2));
        df_tensor_set_requires_grad(x, true);
        gradcheck("scalar form", call_scal, &c, &x, 1, 1e-3, 5e-3, 1e-2);
        df_tensor_free(x->grad), x->grad = NULL;
        df_tensor_set_requires_grad(x, false);
        df_tensor *y = call_scal(&x, &c);
        cr_assert(y->node == NULL && !y->requires_grad, "no input requires grad: no node");
        df_scope_end(s);
    }
}

Test(autograd_binary, scalar_form_values) {
    df_scope s = df_scope_begin();
    df_tensor *x = df_from_data(DF_DTYPE_F32, DF_DIMS(3), (float[]){1, -2, 4});
    float want_add[] = {3.5f, 0.5f, 6.5f}, want_mul[] = {2.5f, -5, 10},
          want_rsub[] = {1.5f, 4.5f, -1.5f}, want_rdiv[] = {2.5f, -1.25f, 0.625f};
    check_close_f32("add_scalar", df_f32(df_add_scalar(x, 2.5f)), want_add, 3, 0, 0);
    check_close_f32("mul_scalar", df_f32(df_mul_scalar(x, 2.5f)), want_mul, 3, 0, 0);
    check_close_f32("rsub_scalar", df_f32(df_rsub_scalar(2.5f, x)), want_rsub, 3, 0, 0);
    check_close_f32("rdiv_scalar", df_f32(df_rdiv_scalar(2.5f, x)), want_rdiv, 3, 0, 0);
    df_scope_end(s);
}

/* Plain reference: out[i] with each operand indexed through its own broadcast coordinates. */
static int64_t bidx(const df_tensor *t, int ndim, const int64_t *shape, int64_t i) {
    int64_t coord[DF_MAX_DIMS], off = 0, st = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        coord[d] = i % shape[d];
        i /= shape[d];
    }
    for (int d = t->ndim - 1; d >= 0; d--) {
        int od = ndim - t->ndim + d;
        off += (t->shape[d] == 1 ? 0 : coord[od]) * st;
        st *= t->shape[d];
    }
    return off;
}

/* The fast paths (same shape, (N,C,1,1), (C), scalar) on a shape large enough to run in
 * parallel, against the plain reference, forward and backward. */
static void check_fast_paths(const int64_t *big) {
    const struct {
        int n;
        int64_t s[4];
    } others[] = {
        {4, {big[0], big[1], big[2], big[3]}}, {4, {1, big[1], 1, 1}},  {1, {big[3]}}, {0, {0}},
        {4, {big[0], big[1], 1, 1}},           {3, {big[1], big[2], 1}}};
    bin_fn fs[] = {df_add, df_sub, df_mul, df_div};
    for (size_t k = 0; k < sizeof others / sizeof others[0]; k++) {
        for (int op = 0; op < 4; op++) {
            df_scope s = df_scope_begin();
            df_tensor *a = away_from_zero(1, 4, big),
                      *b = away_from_zero(2, others[k].n, others[k].s);
            df_tensor_set_requires_grad(a, true);
            df_tensor_set_requires_grad(b, true);
            df_tensor *out = fs[op](a, b);
            df_tensor *g = randn_tensor(3, 4, big);
            cr_assert_eq(df_backward_with(out, g), DF_OK);
            df_tensor *want = df_zeros(DF_DTYPE_F32, 4, big);
            df_tensor *wga = df_zeros(DF_DTYPE_F32, 4, big);
            df_tensor *wgb = df_zeros(DF_DTYPE_F32, b->ndim, b->shape);
            double *gb_acc = calloc((size_t)b->numel, sizeof(double));
            for (int64_t i = 0; i < out->numel; i++) {
                float x = df_f32(a)[i], y = df_f32(b)[bidx(b, 4, big, i)], gv = df_f32(g)[i];
                float v = op == 0 ? x + y : op == 1 ? x - y : op == 2 ? x * y : x / y;
                float ga = op == 0 || op == 1 ? gv : op == 2 ? gv * y : gv / y;
                float gb = op == 0 ? gv : op == 1 ? -gv : op == 2 ? gv * x : -gv * ((x / y) / y);
                df_f32(want)[i] = v;
                df_f32(wga)[i] = ga;
                gb_acc[bidx(b, 4, big, i)] += gb;
            }
            for (int64_t j = 0; j < b->numel; j++) df_f32(wgb)[j] = (float)gb_acc[j];
            free(gb_acc);
            check_close("fast path forward", out, want, 0, 0);
            check_close("fast path grad a", a->grad, wga, 0, 0);
            /* both sides sum in double; only the final rounding and the order differ */
            check_close("fast path grad b", b->grad, wgb, 1e-5, 1e-6);
            df_scope_end(s);
        }
    }
}

Test(autograd_binary, fast_paths_match_reference) {
    check_fast_paths((int64_t[]){4, 16, 32, 32});  /* rows of 1024, a few rows per task */
    check_fast_paths((int64_t[]){128, 32, 4, 4});  /* rows of 16: many rows per task, odometer */
    check_fast_paths((int64_t[]){1, 2, 3, 40000}); /* rows longer than a task */
}

Test(autograd_binary, thread_count_does_not_change_results) {
    int64_t big[] = {8, 64, 32, 32};
    df_tensor *res[2][2];
    int saved = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        df_tensor *a = randn_tensor(1, 4, big), *b = randn_tensor(2, DF_DIMS(1, 64, 1, 1));
        df_tensor_set_requires_grad(b, true);
        df_tensor *out = df_mul(a, b);
        cr_assert_eq(df_backward_with(out, a), DF_OK);
        res[t][0] = out;
        res[t][1] = df_tensor_retain(b->grad);
        df_tensor_free(a);
        df_tensor_free(b);
    }
    omp_set_num_threads(saved);
    check_close("forward, 1 vs 2 threads", res[0][0], res[1][0], 0, 0);
    check_close("grad of the broadcast input, 1 vs 2 threads", res[0][1], res[1][1], 0, 0);
    for (int t = 0; t < 2; t++) df_tensor_free(res[t][0]), df_tensor_free(res[t][1]);
}
