/* test_bf16.c — the ops that take BF16 (docs/dtypes.md): matmul, linear and conv2d forward with
 * BF16 operands and F32 or BF16 output, layout conversions of BF16 tensors, the support query
 * (df_op_supports_dtype) and the refusals. White-box (dnnl_impl.h): the primitive cache keys the
 * dtype, and the CPU's oneDNN ISA decides what must be supported.
 *
 * Tolerances. A BF16 product rounds its operands to 8 significant bits and accumulates in F32.
 * (1) Against the F32 op on the same rounded values (df_tensor_to BF16 -> F32) only the
 *     accumulation order differs: the conv/matmul tolerance, atol 1e-5 rtol 1e-4.
 * (2) A BF16 output is that result rounded once more: rtol 2^-8 (half a BF16 ulp is 2^-9 of the
 *     value; 2^-8 leaves room for the accumulation difference of (1)).
 * (3) Against the F32 op on the unrounded values: each operand moved by at most 2^-9 of itself,
 *     so each term a_k b_k by at most (2^-9 + 2^-9 + 2^-18) |a_k b_k|, and the two F32 sums of K
 *     terms round by at most K 2^-24 sum_k |a_k b_k| each: element i may differ by
 *     (2^-8 + 2^-14) sum_k |a_k| |b_k| for K <= 512 (the tests' K are at most 288), a bound
 *     computed per element from |a| and |b|.
 * Where this CPU's oneDNN has no BF16 kernel the tests skip with the reason, except the support
 * test, which checks that AVX-512 machines do take the BF16 path. */
#include "autograd/dnnl_impl.h"
#include "tests/common/check.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RTOL_BF16_OUT 0.00390625 /* 2^-8 */

static void bf16_or_skip(const char *op) {
    if (df_op_supports_dtype(op, DF_DTYPE_BF16) != DF_OK) cr_skip_test("%s", df_last_error());
}

/* t rounded to BF16 and back (the values a BF16 op sees), in t's layout. */
static df_tensor *rounded(const df_tensor *t) {
    return df_tensor_to(df_tensor_to(t, DF_DTYPE_BF16), DF_DTYPE_F32);
}

static df_tensor *abs_of(df_tensor *t) {
    df_tensor *r = df_tensor_clone(t);
    for (int64_t i = 0; i < r->numel; i++) df_f32(r)[i] = fabsf(df_f32(r)[i]);
    return r;
}

/* (3): |got - want| <= (2^-8 + 2^-14) bound + 1e-6 (bound = the product of |a| and |b|,
 * element i the sum of |a_k b_k| over its terms). */
static void check_within_bf16_bound(const char *label, const df_tensor *got, const df_tensor *want,
                                    const df_tensor *bound) {
    cr_assert_eq(got->numel, want->numel);
    for (int64_t i = 0; i < got->numel; i++) {
        double g = df_tensor_get(got, i), w = df_tensor_get(want, i);
        double lim = (RTOL_BF16_OUT + 0.00006103515625) * df_tensor_get(bound, i) + 1e-6;
        cr_assert(fabs(g - w) <= lim, "%s: element %lld: %.8g vs %.8g, |diff| %.3g > bound %.3g",
                  label, (long long)i, g, w, fabs(g - w), lim);
    }
}

/* What oneDNN runs at here, and whether that ISA has BF16 products (avx512_core and up). */
static bool isa_has_bf16(void) {
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core;
}

Test(autograd_bf16, support_query) {
    cr_assert_eq(df_op_supports_dtype("group_norm", DF_DTYPE_F32), DF_OK);
    cr_assert_eq(df_op_supports_dtype("matmul", DF_DTYPE_F32), DF_OK);
    cr_assert_eq(df_op_supports_dtype("group_norm", DF_DTYPE_BF16), DF_ERR_UNSUPPORTED);
    cr_assert(strstr(df_last_error(), "F32 only") != NULL, "%s", df_last_error());
    cr_assert_eq(df_op_supports_dtype("matmul", DF_DTYPE_F16), DF_ERR_UNSUPPORTED);
    cr_assert(strstr(df_last_error(), "storage only") != NULL, "%s", df_last_error());
    cr_assert_eq(df_op_supports_dtype("to_blocked", DF_DTYPE_BF16), DF_OK);
    cr_assert_eq(df_op_supports_dtype("to_plain", DF_DTYPE_BF16), DF_OK);
    const char *products[] = {"matmul", "linear", "conv2d"};
    for (int i = 0; i < 3; i++) {
        df_status st = df_op_supports_dtype(products[i], DF_DTYPE_BF16);
        if (isa_has_bf16()) { /* the BF16 path must run on AVX-512 machines, not be skipped */
            cr_assert_eq(st, DF_OK, "%s: %s", products[i], df_last_error());
        } else {
            cr_assert_eq(st, DF_ERR_UNSUPPORTED, "%s", products[i]);
            cr_assert(strstr(df_last_error(), "AVX-512") && strstr(df_last_error(), products[i]),
                      "the refusal names the op and the need: %s", df_last_error());
        }
    }
}

/* a (.., M, K) x b (.., K, N) with transposes, BF16 -> F32 and BF16 -> BF16, against (1)-(3). */
static void check_matmul(const char *label, df_tensor *a, df_tensor *b, bool ta, bool tb) {
    df_scope s = df_scope_begin();
    df_tensor *ab = df_tensor_to(a, DF_DTYPE_BF16), *bb = df_tensor_to(b, DF_DTYPE_BF16);
    df_tensor *got = df_matmul_to(ab, bb, ta, tb, DF_DTYPE_F32);
    df_tensor *got16 = df_matmul(ab, bb, ta, tb);
    cr_assert_eq(got->dtype, DF_DTYPE_F32);
    cr_assert_eq(got16->dtype, DF_DTYPE_BF16, "the output follows the operands by default");
    df_tensor *same = df_matmul(rounded(a), rounded(b), ta, tb);
    char name[128];
    snprintf(name, sizeof name, "%s: BF16 -> F32 vs F32 on rounded inputs", label);
    check_close(name, got, same, 1e-5, 1e-4);
    snprintf(name, sizeof name, "%s: BF16 -> BF16", label);
    check_close(name, got16, same, 1e-5, RTOL_BF16_OUT);
    snprintf(name, sizeof name, "%s: BF16 -> F32 vs F32", label);
    check_within_bf16_bound(name, got, df_matmul(a, b, ta, tb),
                            df_matmul(abs_of(a), abs_of(b), ta, tb));
    df_scope_end(s);
}

Test(autograd_bf16, matmul_forward) {
    bf16_or_skip("matmul");
    df_scope s = df_scope_begin();
    check_matmul("2-D", randn_tensor(1, DF_DIMS(17, 40)), randn_tensor(2, DF_DIMS(40, 24)), false,
                 false);
    check_matmul("batched, b broadcast, a^T", randn_tensor(3, DF_DIMS(3, 40, 17)),
                 randn_tensor(4, DF_DIMS(40, 24)), true, false);
    check_matmul("batched b^T", randn_tensor(5, DF_DIMS(2, 3, 9, 33)),
                 randn_tensor(6, DF_DIMS(2, 3, 12, 33)), false, true);
    df_scope_end(s);
}

Test(autograd_bf16, linear_forward) {
    bf16_or_skip("linear");
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(2, 7, 48)), *w = randn_tensor(2, DF_DIMS(20, 48));
    df_tensor *b = randn_tensor(3, DF_DIMS(20));
    df_tensor *xb = df_tensor_to(x, DF_DTYPE_BF16), *wb = df_tensor_to(w, DF_DTYPE_BF16);
    df_tensor *want = df_linear(rounded(x), rounded(w), b);
    check_close("linear BF16, F32 bias -> F32", df_linear_to(xb, wb, b, DF_DTYPE_F32), want, 1e-5,
                1e-4);
    df_tensor *out16 = df_linear(xb, wb, b);
    cr_assert_eq(out16->dtype, DF_DTYPE_BF16);
    check_close("linear BF16, F32 bias -> BF16", out16, want, 1e-5, RTOL_BF16_OUT);
    /* a BF16 bias is the F32 bias rounded */
    check_close("linear BF16, BF16 bias -> F32",
                df_linear_to(xb, wb, df_tensor_to(b, DF_DTYPE_BF16), DF_DTYPE_F32),
                df_linear(rounded(x), rounded(w), rounded(b)), 1e-5, 1e-4);
    check_close("linear BF16, no bias", df_linear_to(xb, wb, NULL, DF_DTYPE_F32),
                df_linear(rounded(x), rounded(w), NULL), 1e-5, 1e-4);
    /* (3), the bias exact in both */
    check_within_bf16_bound("linear BF16 vs F32", df_linear_to(xb, wb, NULL, DF_DTYPE_F32),
                            df_linear(x, w, NULL), df_linear(abs_of(x), abs_of(w), NULL));
    df_scope_end(s);
}

/* conv2d BF16 against the F32 convolution of the rounded values, x plain or channel-blocked. */
static void check_conv(const char *label, int64_t C, int64_t O, df_conv2d_params p, bool blocked) {
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(1, DF_DIMS(2, C, 9, 11));
    df_tensor *w = randn_tensor(2, DF_DIMS(O, C / p.groups, 3, 3));
    df_tensor *b = randn_tensor(3, DF_DIMS(O));
    df_tensor *xb = df_tensor_to(x, DF_DTYPE_BF16), *wb = df_tensor_to(w, DF_DTYPE_BF16);
    df_tensor *xr = rounded(x);
    if (blocked) {
        xb = df_to_blocked(xb);
        xr = df_to_blocked(xr);
        cr_assert_eq(xb->block, xr->block);
    }
    df_tensor *want = df_to_plain(df_conv2d(xr, rounded(w), b, p));
    df_tensor *got = df_conv2d_to(xb, wb, b, p, DF_DTYPE_F32);
    cr_assert_eq(got->block, df_conv2d(xr, rounded(w), b, p)->block, "same layout rule as F32");
    char name[128];
    snprintf(name, sizeof name, "%s: BF16 -> F32", label);
    check_close(name, df_to_plain(got), want, 1e-5, 1e-4);
    df_tensor *got16 = df_conv2d(xb, wb, df_tensor_to(b, DF_DTYPE_BF16), p);
    cr_assert_eq(got16->dtype, DF_DTYPE_BF16);
    snprintf(name, sizeof name, "%s: BF16 bias -> BF16", label);
    check_close(name, df_to_plain(got16), df_to_plain(df_conv2d(xr, rounded(w), rounded(b), p)),
                1e-5, RTOL_BF16_OUT);
    /* (3): bias left out so that |x| * |w| bounds every term */
    snprintf(name, sizeof name, "%s: BF16 -> F32 vs F32", label);
    check_within_bf16_bound(name, df_to_plain(df_conv2d_to(xb, wb, NULL, p, DF_DTYPE_F32)),
                            df_conv2d(x, w, NULL, p), df_conv2d(abs_of(x), abs_of(w), NULL, p));
    df_scope_end(s);
}

Test(autograd_bf16, conv2d_forward) {
    bf16_or_skip("conv2d");
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    check_conv("3x3 pad 1, plain", 16, 32, p, false);
    int B = df_act_block() ? df_act_block() : 8;
    check_conv("3x3 pad 1, channel-blocked", 2 * B, 2 * B, p, true);
    df_conv2d_params q = df_conv2d_default();
    q.stride[0] = q.stride[1] = 2;
    q.groups = 2;
    check_conv("3x3 stride 2, 2 groups, plain", 8, 12, q, false);
}

/* Reorders only move elements: BF16 bits survive both conversions. */
Test(autograd_bf16, layout_round_trip_is_exact) {
    if (df_act_block() == 0) cr_skip_test("no channel-blocked convolution layout here");
    df_scope s = df_scope_begin();
    int B = df_act_block();
    df_tensor *x = df_tensor_to(randn_tensor(1, DF_DIMS(2, 2 * B, 5, 3)), DF_DTYPE_BF16);
    df_tensor *y = df_to_blocked(x);
    cr_assert_eq(y->block, B);
    cr_assert_eq(y->dtype, DF_DTYPE_BF16);
    df_tensor *z = df_to_plain(y);
    cr_assert_eq(z->block, 0);
    cr_assert(memcmp(z->data, x->data, (size_t)x->numel * 2) == 0, "BF16 bits changed");
    /* and the blocked BF16 values are the blocked F32 values rounded */
    check_close("blocked BF16", df_tensor_to(y, DF_DTYPE_F32),
                df_to_blocked(df_tensor_to(x, DF_DTYPE_F32)), 0, 0);
    df_scope_end(s);
}

/* The primitive cache keys the dtype: an F32 product of a shape already run in BF16 gets its own
 * primitive and the F32 result stays bitwise what it was. */
Test(autograd_bf16, cache_keys_the_dtype) {
    bf16_or_skip("matmul");
    df_scope s = df_scope_begin();
    df_tensor *a = randn_tensor(1, DF_DIMS(13, 29)), *b = randn_tensor(2, DF_DIMS(29, 7));
    df_tensor *before = df_matmul(a, b, false, false);
    df_dnnl_cache_stats s0 = df_dnnl_cache_get_stats();
    df_matmul_to(df_tensor_to(a, DF_DTYPE_BF16), df_tensor_to(b, DF_DTYPE_BF16), false, false,
                 DF_DTYPE_F32);
    df_dnnl_cache_stats s1 = df_dnnl_cache_get_stats();
    cr_assert_eq(s1.misses, s0.misses + 1, "the BF16 product has its own primitive");
    df_tensor *after = df_matmul(a, b, false, false);
    cr_assert_eq(df_dnnl_cache_get_stats().misses, s1.misses, "the F32 primitive was reused");
    check_close("F32 after BF16", after, before, 0, 0);
    df_scope_end(s);
}

/* Refusals: programmer errors stop with a message (DF_ASSERT). */
Test(autograd_bf16, mixed_operands_abort, .signal = SIGABRT) {
    df_tensor *a = randn_tensor(1, DF_DIMS(4, 4));
    df_tensor *b = df_tensor_to(a, DF_DTYPE_BF16);
    df_matmul(a, b, false, false);
}

Test(autograd_bf16, f16_operands_abort, .signal = SIGABRT) {
    df_tensor *a = df_tensor_to(randn_tensor(1, DF_DIMS(4, 4)), DF_DTYPE_F16);
    df_matmul(a, a, false, false);
}

Test(autograd_bf16, bf16_with_a_gradient_aborts, .signal = SIGABRT) {
    if (df_op_supports_dtype("linear", DF_DTYPE_BF16) != DF_OK) abort(); /* refused anyway */
    df_tensor *x = df_tensor_to(randn_tensor(1, DF_DIMS(3, 8)), DF_DTYPE_BF16);
    df_tensor *w = df_tensor_to(randn_tensor(2, DF_DIMS(4, 8)), DF_DTYPE_BF16);
    df_tensor_set_requires_grad(w, true);
    df_linear(x, w, NULL); /* no BF16 backward yet */
}

Test(autograd_bf16, f32_only_op_refuses_bf16, .signal = SIGABRT) {
    df_tensor *x = df_tensor_to(randn_tensor(1, DF_DIMS(2, 4, 3, 3)), DF_DTYPE_BF16);
    df_group_norm(x, 2, NULL, NULL, 1e-5f);
}

/* Where oneDNN has no BF16 kernel (AVX2, DNNL_MAX_CPU_ISA=AVX2) a BF16 product stops with the
 * support query's message instead of a bare "unimplemented" from oneDNN. Run by
 * refusal_names_the_isa (below) in a child with DNNL_MAX_CPU_ISA=AVX2, whatever this CPU has;
 * on its own (no DF_TEST_BF16_CHILD) it only aborts. */
Test(autograd_bf16_child, unsupported_cpu_aborts, .signal = SIGABRT) {
    if (!getenv("DF_TEST_BF16_CHILD")) abort();
    df_tensor *x = df_tensor_to(randn_tensor(1, DF_DIMS(1, 4, 5, 5)), DF_DTYPE_BF16);
    df_tensor *w = df_tensor_to(randn_tensor(2, DF_DIMS(4, 4, 3, 3)), DF_DTYPE_BF16);
    df_conv2d_to(x, w, NULL, df_conv2d_default(), DF_DTYPE_F32);
}

Test(autograd_bf16, refusal_names_the_isa) {
    /* BXFI_MAP: Criterion's sandbox marks its workers with it; a child that inherits it takes
     * itself for one */
    char self[4096], cmd[4400], out[8192];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert(n > 0);
    self[n] = 0;
    snprintf(cmd, sizeof cmd,
             "env -u BXFI_MAP DF_TEST_BF16_CHILD=1 DNNL_MAX_CPU_ISA=AVX2 '%s' "
             "--filter 'autograd_bf16_child/*'",
             self);
    int rc = run_command(cmd, out, sizeof out);
    cr_assert_eq(rc, 0, "the child test failed:\n%s", out);
    cr_assert(strstr(out, "Tested: 1 | Passing: 1 |"), "%s", out);
    cr_assert(strstr(out, "conv2d: BF16 is not available on this CPU") && strstr(out, "avx2"),
              "the abort names the op and the ISA:\n%s", out);
}
