/* test_mixed_precision.c — products under df_set_compute_dtype(BF16) (docs/dtypes.md, "Mixed
 * precision"): conv2d, linear, matmul and softmax_attention forward and backward, with F32 and
 * frozen BF16 operands; the node keeps its forward's compute dtype; checkpoint recomputes in it.
 * Runs on every CPU: with oneDNN BF16 kernels (AVX-512) the primitives compute in BF16, without
 * (the *_avx2 CTest targets) the products are emulated, and the checks are the same.
 *
 * Tolerances. Each pass of a BF16 product multiplies operands rounded to BF16 and accumulates in
 * F32. Against the F32 op on the same rounded operands (the forward: x and w rounded; backward-
 * data: g and w; backward-weights: x and g) only the accumulation order differs: atol 1e-4
 * rtol 1e-3 for these sums of up to 288 terms of size ~1 (F32 rounding of such sums is ~1e-5 of
 * their sum of magnitudes, and values near 0 get the atol). Against the F32 op on unrounded
 * operands (attention, whose inner products see rounded probabilities): 2^-6 of the largest
 * magnitude, several BF16 ulps. */
#include "autograd/dnnl_impl.h"
#include "tests/common/check.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#define ATOL 1e-4
#define RTOL 1e-3

static df_tensor *rounded(const df_tensor *t) {
    return df_tensor_to(df_tensor_to(t, DF_DTYPE_BF16), DF_DTYPE_F32);
}

static df_tensor *leaf_of(const df_tensor *t, bool grad) {
    df_tensor *l = df_tensor_clone(t);
    df_tensor_set_requires_grad(l, grad);
    return l;
}

/* The gradients of one run of a product: out and the inputs' gradients (NULL when none). */
typedef struct run_out {
    df_tensor *y, *g[3];
} run_out;

typedef df_tensor *(*product_fn)(df_tensor *const *in, const void *user);

/* Runs fn on leaves copied from in[0..n) (`grad` says which need gradients) under compute dtype
 * cd, then backward with seed. */
static run_out run(product_fn fn, const void *user, df_dtype cd, int n, df_tensor *const *in,
                   const bool *grad, const df_tensor *seed) {
    df_tensor *l[3] = {0};
    for (int i = 0; i < n; i++) l[i] = in[i] ? leaf_of(in[i], grad[i]) : NULL;
    df_dtype prev = df_set_compute_dtype(cd);
    run_out r = {.y = fn(l, user)};
    df_set_compute_dtype(prev);
    cr_assert_eq(r.y->dtype, DF_DTYPE_F32, "mixed precision keeps F32 outputs");
    cr_assert_eq(df_backward_with(r.y, seed), DF_OK, "%s", df_last_error());
    for (int i = 0; i < n; i++) r.g[i] = l[i] && grad[i] ? df_to_plain(l[i]->grad) : NULL;
    r.y = df_to_plain(r.y);
    return r;
}

/* BF16 run vs F32 runs on rounded operands: the forward on rounded in, each gradient i on the
 * F32 run whose rounded operands are those its pass reads (rounded seed, and the others'). The
 * bias gradient (input 2) of conv2d comes from oneDNN's backward-weights pass, which reads the
 * BF16 diff_dst; linear sums its rows itself, in F32 (`bias_f32_sum`): unrounded seed. */
static void check_product_b(const char *label, product_fn fn, const void *user, int n,
                            df_tensor *const *in, const bool *grad, const df_tensor *seed,
                            bool bias_f32_sum) {
    run_out got = run(fn, user, DF_DTYPE_BF16, n, in, grad, seed);
    df_tensor *r[3] = {0};
    for (int i = 0; i < n; i++) r[i] = in[i] ? rounded(in[i]) : NULL;
    /* the bias is added in F32: it is not rounded */
    if (n == 3 && in[2]) r[2] = in[2];
    run_out want = run(fn, user, DF_DTYPE_F32, n, r, grad, rounded(seed));
    char name[160];
    snprintf(name, sizeof name, "%s: forward", label);
    check_close(name, got.y, want.y, ATOL, RTOL);
    for (int i = 0; i < n; i++) {
        if (!got.g[i]) continue;
        snprintf(name, sizeof name, "%s: gradient of input %d", label, i);
        if (i == 2 && bias_f32_sum)
            check_close(name, got.g[i], run(fn, user, DF_DTYPE_F32, n, r, grad, seed).g[i], 0, 0);
        else
            check_close(name, got.g[i], want.g[i], ATOL, RTOL);
    }
}

static void check_product(const char *label, product_fn fn, const void *user, int n,
                          df_tensor *const *in, const bool *grad, const df_tensor *seed) {
    check_product_b(label, fn, user, n, in, grad, seed, false);
}

static df_tensor *conv_fn(df_tensor *const *in, const void *user) {
    const df_conv2d_params *p = user;
    df_tensor *x = p->blocked_out ? df_to_blocked(in[0]) : in[0];
    return df_to_plain(df_conv2d(x, in[1], in[2], *p));
}

static void check_conv(const char *label, int64_t C, int64_t O, df_conv2d_params p, bool blocked,
                       bool bias) {
    df_scope s = df_scope_begin();
    p.blocked_out = blocked;
    df_tensor *x = randn_tensor(1, DF_DIMS(2, C, 9, 11));
    df_tensor *w = randn_tensor(2, DF_DIMS(O, C / p.groups, 3, 3));
    df_tensor *b = bias ? randn_tensor(3, DF_DIMS(O)) : NULL;
    df_tensor *y = df_conv2d(x, w, b, p);
    df_tensor *seed = randn_tensor(4, y->ndim, y->shape);
    check_product(label, conv_fn, &p, 3, (df_tensor *[]){x, w, b}, (bool[]){true, true, true},
                  seed);
    df_scope_end(s);
}

Test(autograd_mixed, conv2d_forward_and_backward) {
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    check_conv("3x3 pad 1, plain, bias", 16, 32, p, false, true);
    int B = df_act_block() ? df_act_block() : 8;
    check_conv("3x3 pad 1, channel-blocked, bias", 2 * B, 2 * B, p, true, true);
    check_conv("3x3 pad 1, channel-blocked, no bias", 2 * B, 4 * B, p, true, false);
    df_conv2d_params q = df_conv2d_default();
    q.stride[0] = q.stride[1] = 2;
    q.groups = 2;
    check_conv("3x3 stride 2, 2 groups, plain", 8, 12, q, false, true);
}

/* Winograd is F32: under BF16 the wide blocked 3x3 convolutions that take it in F32 (128
 * channels) compute as the others (emulated: Winograd on rounded operands). */
Test(autograd_mixed, conv2d_wide_channels) {
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    int64_t old = df_conv2d_set_winograd_min_tiles(1);
    check_conv("3x3 pad 1, 128 channels, blocked", 128, 128, p, df_act_block() != 0, true);
    df_conv2d_set_winograd_min_tiles(old);
}

static df_tensor *linear_fn(df_tensor *const *in, const void *user) {
    (void)user;
    return df_linear(in[0], in[1], in[2]);
}

Test(autograd_mixed, linear_forward_and_backward) {
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(2, 7, 48)), *w = randn_tensor(2, DF_DIMS(20, 48));
    df_tensor *b = randn_tensor(3, DF_DIMS(20)), *seed = randn_tensor(4, DF_DIMS(2, 7, 20));
    check_product_b("linear", linear_fn, NULL, 3, (df_tensor *[]){x, w, b},
                    (bool[]){true, true, true}, seed, true);
    check_product("linear, no bias, x without gradient", linear_fn, NULL, 3,
                  (df_tensor *[]){x, w, NULL}, (bool[]){false, true, false}, seed);
    df_scope_end(s);
}

typedef struct mm_case {
    bool ta, tb;
} mm_case;

static df_tensor *matmul_fn(df_tensor *const *in, const void *user) {
    const mm_case *c = user;
    return df_matmul(in[0], in[1], c->ta, c->tb);
}

Test(autograd_mixed, matmul_forward_and_backward) {
    df_scope s = df_scope_begin();
    bool both[2] = {true, true};
    mm_case plain = {false, false}, ta = {true, false}, tb = {false, true};
    check_product(
        "2-D", matmul_fn, &plain, 2,
        (df_tensor *[]){randn_tensor(1, DF_DIMS(17, 40)), randn_tensor(2, DF_DIMS(40, 24))}, both,
        randn_tensor(3, DF_DIMS(17, 24)));
    check_product(
        "batched, b broadcast, a^T", matmul_fn, &ta, 2,
        (df_tensor *[]){randn_tensor(4, DF_DIMS(3, 40, 17)), randn_tensor(5, DF_DIMS(40, 24))},
        both, randn_tensor(6, DF_DIMS(3, 17, 24)));
    check_product("batched b^T", matmul_fn, &tb, 2,
                  (df_tensor *[]){randn_tensor(7, DF_DIMS(2, 3, 9, 33)),
                                  randn_tensor(8, DF_DIMS(2, 3, 12, 33))},
                  both, randn_tensor(9, DF_DIMS(2, 3, 9, 12)));
    df_scope_end(s);
}

/* Frozen weights stored in BF16: the same values as F32 weights holding the rounded values. */
Test(autograd_mixed, frozen_bf16_weights) {
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(3, 8, 6, 6)), *w = randn_tensor(2, DF_DIMS(16, 8, 3, 3));
    df_tensor *b = randn_tensor(3, DF_DIMS(16)), *wb = df_tensor_to(w, DF_DTYPE_BF16);
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    df_tensor *seed = randn_tensor(4, DF_DIMS(3, 16, 6, 6));
    run_out got = run(conv_fn, &p, DF_DTYPE_BF16, 3, (df_tensor *[]){x, wb, b},
                      (bool[]){true, false, false}, seed);
    run_out want = run(conv_fn, &p, DF_DTYPE_BF16, 3, (df_tensor *[]){x, rounded(w), b},
                       (bool[]){true, false, false}, seed);
    check_close("conv2d, BF16 weight: forward", got.y, want.y, 0, 0);
    check_close("conv2d, BF16 weight: dx", got.g[0], want.g[0], 0, 0);
    df_tensor *lx = randn_tensor(5, DF_DIMS(4, 24)), *lw = randn_tensor(6, DF_DIMS(10, 24));
    df_tensor *lseed = randn_tensor(7, DF_DIMS(4, 10));
    got = run(linear_fn, NULL, DF_DTYPE_BF16, 3,
              (df_tensor *[]){lx, df_tensor_to(lw, DF_DTYPE_BF16), NULL},
              (bool[]){true, false, false}, lseed);
    want = run(linear_fn, NULL, DF_DTYPE_BF16, 3, (df_tensor *[]){lx, rounded(lw), NULL},
               (bool[]){true, false, false}, lseed);
    check_close("linear, BF16 weight: forward", got.y, want.y, 0, 0);
    check_close("linear, BF16 weight: dx", got.g[0], want.g[0], 0, 0);
    df_scope_end(s);
}

static df_tensor *attention_fn(df_tensor *const *in, const void *user) {
    (void)user;
    return df_softmax_attention(in[0], in[1], in[2], false);
}

Test(autograd_mixed, attention_close_to_f32) {
    df_scope s = df_scope_begin();
    df_tensor *q = df_mul_scalar(randn_tensor(1, DF_DIMS(2, 2, 16, 8)), 0.35f);
    df_tensor *k = randn_tensor(2, DF_DIMS(2, 2, 12, 8)),
              *v = randn_tensor(3, DF_DIMS(2, 2, 12, 8));
    df_tensor *seed = randn_tensor(4, DF_DIMS(2, 2, 16, 8));
    bool all[3] = {true, true, true};
    run_out got = run(attention_fn, NULL, DF_DTYPE_BF16, 3, (df_tensor *[]){q, k, v}, all, seed);
    run_out want = run(attention_fn, NULL, DF_DTYPE_F32, 3, (df_tensor *[]){q, k, v}, all, seed);
    const df_tensor *pairs[4][2] = {
        {got.y, want.y}, {got.g[0], want.g[0]}, {got.g[1], want.g[1]}, {got.g[2], want.g[2]}};
    const char *names[4] = {"forward", "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        double scale = 0;
        for (int64_t j = 0; j < pairs[i][1]->numel; j++)
            scale = fmax(scale, fabs(df_tensor_get(pairs[i][1], j)));
        char name[64];
        snprintf(name, sizeof name, "attention BF16 vs F32: %s", names[i]);
        check_close(name, pairs[i][0], pairs[i][1], scale / 64, 0);
        cr_assert(rel_max_err(pairs[i][0], pairs[i][1]) > 0, "%s: BF16 differs from F32", name);
    }
    df_scope_end(s);
}

/* The backward computes as the forward did, whatever the switch says when it runs. */
Test(autograd_mixed, backward_follows_the_forward) {
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(5, 32)), *w = randn_tensor(2, DF_DIMS(16, 32));
    df_tensor *seed = randn_tensor(3, DF_DIMS(5, 16));
    run_out ref = run(linear_fn, NULL, DF_DTYPE_BF16, 3, (df_tensor *[]){x, w, NULL},
                      (bool[]){true, true, false}, seed);
    df_tensor *lx = leaf_of(x, true), *lw = leaf_of(w, true);
    df_dtype prev = df_set_compute_dtype(DF_DTYPE_BF16);
    df_tensor *y = df_linear(lx, lw, NULL);
    df_set_compute_dtype(prev);
    cr_assert_eq(df_compute_dtype(), DF_DTYPE_F32);
    cr_assert_eq(df_backward_with(y, seed), DF_OK);
    check_close("y", y, ref.y, 0, 0);
    check_close("dx", lx->grad, ref.g[0], 0, 0);
    check_close("dw", lw->grad, ref.g[1], 0, 0);
    df_scope_end(s);
}

static df_tensor *segment(df_tensor *const *in, const void *user) {
    df_tensor *const *p = user;
    return df_gelu(df_linear(df_silu(df_linear(in[0], p[0], NULL)), p[1], NULL));
}

/* A checkpointed segment recomputes in its forward's compute dtype: bitwise the plain graph. */
Test(autograd_mixed, checkpoint_recomputes_in_bf16) {
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(6, 32)), *seed = randn_tensor(4, DF_DIMS(6, 32));
    df_tensor *grads[2][3];
    for (int ck = 0; ck < 2; ck++) {
        df_tensor *p[2] = {leaf_of(randn_tensor(2, DF_DIMS(48, 32)), true),
                           leaf_of(randn_tensor(3, DF_DIMS(32, 48)), true)};
        df_tensor *lx = leaf_of(x, true);
        df_dtype prev = df_set_compute_dtype(DF_DTYPE_BF16);
        df_tensor *y = ck ? df_checkpoint(segment, p, 1, &lx) : segment(&lx, p);
        df_set_compute_dtype(prev); /* backward (and the recomputation) under F32 */
        cr_assert_eq(df_backward_with(y, seed), DF_OK);
        grads[ck][0] = lx->grad, grads[ck][1] = p[0]->grad, grads[ck][2] = p[1]->grad;
    }
    for (int i = 0; i < 3; i++)
        check_close("checkpointed vs plain", grads[1][i], grads[0][i], 0, 0);
    df_scope_end(s);
}

Test(autograd_mixed, native_or_emulated_says_why) {
    const char *why = NULL;
    bool native = df_bf16_native(&why);
    cr_assert(why && *why);
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    if (isa == dnnl_cpu_isa_avx2) cr_assert(!native, "AVX2 has no BF16 kernels: %s", why);
    cr_assert_eq(df_compute_dtype(), DF_DTYPE_F32, "the switch is off by default");
    df_set_compute_dtype(DF_DTYPE_BF16);
    cr_assert_eq(df_dnnl_compute_cdt(),
                 native || isa != dnnl_cpu_isa_avx2 ? DF_CDT_BF16 : DF_CDT_BF16_EMU);
    df_set_compute_dtype(DF_DTYPE_F32);
}

Test(autograd_mixed, f16_compute_aborts, .signal = SIGABRT) {
    df_set_compute_dtype(DF_DTYPE_F16);
}

Test(autograd_mixed, bf16_input_with_a_gradient_aborts, .signal = SIGABRT) {
    df_tensor *x = randn_tensor(1, DF_DIMS(3, 8));
    df_tensor *w = df_tensor_to(randn_tensor(2, DF_DIMS(4, 8)), DF_DTYPE_BF16);
    df_tensor_set_requires_grad(w, true);
    df_set_compute_dtype(DF_DTYPE_BF16);
    df_linear(x, w, NULL);
}
