/* test_layout.c — channel-blocked activations (df_tensor.block): the conversions, and every op
 * that accepts blocked tensors. Each op is checked twice: its blocked result (and gradients)
 * against the same op on plain tensors, whose PyTorch parity the op's own test holds, and by
 * finite differences through df_to_blocked / df_to_plain around it. Plain-only ops refuse a
 * blocked input. Skipped where this machine's convolutions have no channel-blocked layout. */
#include "autograd/autograd_impl.h"
#include "tests/common/check.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#define EPS 1e-2
#define ATOL 2e-3
#define RTOL 2e-3

static void need_blocks(void) {
    if (df_act_block() == 0) cr_skip_test("no channel-blocked convolution layout here");
}

/* The channel block B the shapes below are built from: this machine's (8 with AVX2, 16 with
 * AVX-512), or 8 where nothing is blocked (those cases then compare plain with plain). No test
 * assumes one width: channel counts are multiples of B, or B + B / 2 to miss the blocks. */
static int64_t blk(void) {
    int b = df_act_block();
    return b ? b : 8;
}

/* x plain -> f on blocked tensors -> plain: what a gradcheck and a plain comparison see. */
typedef df_tensor *(*blocked_fn)(df_tensor **blocked, df_tensor **plain, void *user);

typedef struct wrap {
    blocked_fn f;
    int n_act; /* inputs[0..n_act) are activations, given to f blocked */
    void *user;
} wrap;

/* f on in[0..n_act) converted to the current block (df_act_block; with block 0, df_to_blocked
 * is the identity: the plain reference). */
static df_tensor *wrapped(df_tensor **in, void *user) {
    wrap *w = user;
    df_tensor *b[4] = {0};
    for (int i = 0; i < w->n_act; i++) b[i] = df_to_blocked(in[i]);
    for (int i = 0; i < w->n_act; i++)
        cr_assert_eq(b[i]->block, df_act_block(), "input %d not blocked", i);
    return df_to_plain(w->f(b, in + w->n_act, w->user));
}

static double max_abs(const df_tensor *t) {
    double m = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = fabs(df_tensor_get(t, i));
        m = v > m ? v : m;
    }
    return m;
}

/* Runs f with blocking off (block 0: the plain reference) and on: forward values and every
 * input's gradient (for the seed r) within tol relative to each tensor's largest value (0:
 * bitwise). */
static void compare_blocked(const char *label, blocked_fn f, void *user, df_tensor **in, int n,
                            int n_act, double tol) {
    need_blocks();
    df_tensor *grads[2][8] = {{0}}, *outs[2];
    for (int mode = 0; mode < 2; mode++) {
        wrap w = {f, n_act, user};
        int machine_block = df_act_block_set(mode == 0 ? 0 : df_act_block());
        for (int i = 0; i < n; i++) df_tensor_zero_grad(in[i]);
        df_scope s = df_scope_begin();
        df_tensor *y = wrapped(in, &w);
        df_tensor *r = randn_tensor(99, y->ndim, y->shape);
        cr_assert_eq(df_backward_with(y, r), DF_OK, "%s: %s", label, df_last_error());
        outs[mode] = df_tensor_retain(df_detach(y));
        for (int i = 0; i < n; i++)
            grads[mode][i] = in[i]->grad ? df_tensor_clone(in[i]->grad) : NULL;
        for (int i = 0; i < n; i++)
            if (grads[mode][i]) df_tensor_retain(grads[mode][i]);
        df_scope_end(s);
        df_act_block_set(machine_block);
    }
    char buf[128];
    snprintf(buf, sizeof buf, "%s: forward", label);
    check_close(buf, outs[1], outs[0], tol * max_abs(outs[0]), tol);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(grads[0][i] != NULL, grads[1][i] != NULL, "%s: gradient %d presence", label,
                     i);
        if (!grads[0][i]) continue;
        snprintf(buf, sizeof buf, "%s: gradient of input %d", label, i);
        check_close(buf, grads[1][i], grads[0][i], tol * max_abs(grads[0][i]), tol);
        df_tensor_free(grads[0][i]);
        df_tensor_free(grads[1][i]);
    }
    df_tensor_free(outs[0]);
    df_tensor_free(outs[1]);
}

/* compare_blocked, then a finite-difference check of the blocked form. */
static void check_blocked(const char *label, blocked_fn f, void *user, df_tensor **in, int n,
                          int n_act, double tol) {
    compare_blocked(label, f, user, in, n, n_act, tol);
    wrap w = {f, n_act, user};
    char buf[128];
    snprintf(buf, sizeof buf, "%s: gradcheck", label);
    gradcheck(buf, wrapped, &w, in, n, EPS, ATOL, RTOL);
}

static df_tensor *param(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, true);
    return t;
}

static void free_all(df_tensor **t, int n) {
    for (int i = 0; i < n; i++) df_tensor_free(t[i]);
}

/* ------------------------------------------------------------------ conversions ------------- */

Test(autograd_layout, block_is_the_convolution_layout) {
    int b = df_act_block();
    cr_assert(b == 0 || b == 8 || b == 16, "block %d", b);
}

Test(autograd_layout, round_trip_and_element_order) {
    need_blocks();
    int64_t B = df_act_block(), N = 2, C = 2 * B, H = 3, W = 2;
    df_tensor *x = randn_tensor(1, DF_DIMS(N, C, H, W));
    df_tensor *b = df_to_blocked(x);
    cr_assert_eq(b->block, B);
    const float *xp = df_f32(x), *bp = df_f32(b);
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t s = 0; s < H * W; s++)
                cr_assert_eq(bp[((n * (C / B) + c / B) * H * W + s) * B + c % B],
                             xp[(n * C + c) * H * W + s], "element (%lld, %lld, %lld)",
                             (long long)n, (long long)c, (long long)s);
    df_tensor *back = df_to_plain(b);
    cr_assert_eq(back->block, 0);
    cr_assert_eq(memcmp(df_f32(back), xp, sizeof(float) * (size_t)x->numel), 0);
    df_tensor *same = df_to_blocked(b);
    cr_assert(same->block == B && same->data == b->data, "an already blocked tensor is aliased");
    free_all((df_tensor *[]){x, b, back, same}, 4);
}

Test(autograd_layout, channels_not_divisible_stay_plain) {
    need_blocks();
    df_tensor *x = randn_tensor(1, DF_DIMS(1, df_act_block() + 4, 3, 3));
    df_tensor *y = df_to_blocked(x);
    cr_assert_eq(y->block, 0);
    cr_assert_eq(y->data, x->data);
    df_tensor *v = randn_tensor(1, DF_DIMS(16, 8));
    df_tensor *z = df_to_blocked(v);
    cr_assert_eq(z->block, 0, "only 4-D tensors are blocked");
    free_all((df_tensor *[]){x, y, v, z}, 4);
}

static df_tensor *identity_fn(df_tensor **b, df_tensor **p, void *u) {
    (void)p, (void)u;
    return df_to_blocked(b[0]); /* an alias */
}

Test(autograd_layout, conversion_gradients) {
    df_tensor *x = param(1, DF_DIMS(2, 16, 3, 2));
    check_blocked("to_blocked/to_plain", identity_fn, NULL, (df_tensor *[]){x}, 1, 1, 0);
    df_tensor_free(x);
}

/* ------------------------------------------------------------------ conv2d ------------------ */

static df_tensor *conv_fn(df_tensor **b, df_tensor **p, void *u) {
    return df_conv2d(b[0], p[0], p[1], *(df_conv2d_params *)u);
}

/* A 3x3, stride-1, padding-1 convolution of blocked tensors runs as Winograd F(2x2, 3x3)
 * (conv2d_winograd.c): against oneDNN's direct convolution of the plain tensors (whose PyTorch
 * parity test_conv2d.c holds), the sums round differently by a few ulps. */
#define WINOGRAD_TOL 3e-5

/* A 3x3, padding-1 convolution of in[0] with in[1] (and in[2] when n is 3): blocked against
 * plain within WINOGRAD_TOL, and finite differences. */
static void check_conv3x3(const char *label, df_tensor **in, int n) {
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    int64_t old = df_conv2d_set_winograd_min_tiles(1); /* these few tiles take Winograd too */
    check_blocked(label, conv_fn, &p, in, n, 1, WINOGRAD_TOL);
    df_conv2d_set_winograd_min_tiles(old);
    free_all(in, n);
}

Test(autograd_layout, conv2d_3x3_few_tiles_stays_direct) {
    /* below the tile threshold a blocked 3x3 convolution is oneDNN's direct one: bitwise the
     * plain result */
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    df_tensor *in[3] = {param(1, DF_DIMS(2, 16, 5, 4)), param(2, DF_DIMS(16, 16, 3, 3)),
                        param(3, DF_DIMS(16))};
    check_blocked("conv2d 3x3, 12 tiles", conv_fn, &p, in, 3, 1, 0);
    free_all(in, 3);
}

Test(autograd_layout, conv2d_3x3_winograd_same_as_plain) {
    df_tensor *in[3] = {param(1, DF_DIMS(2, 16, 5, 4)), param(2, DF_DIMS(16, 16, 3, 3)),
                        param(3, DF_DIMS(16))};
    check_conv3x3("conv2d 3x3", in, 3);
}

Test(autograd_layout, conv2d_3x3_winograd_odd_sizes_no_bias) {
    /* odd height and width: the last tiles reach past the image; more channels in than out */
    int64_t B = blk();
    df_tensor *in[3] = {param(1, DF_DIMS(3, 3 * B, 7, 5)), param(2, DF_DIMS(2 * B, 3 * B, 3, 3)),
                        NULL};
    check_conv3x3("conv2d 3x3, 7x5, no bias", in, 2);
}

/* A wide 3x3 convolution, 128 -> 136 channels, of x (N, 128, H, W): blocked against plain with
 * Winograd at any tile count (so all three passes take it). Leaves the inputs in in[0..3). */
static void compare_wide3x3(const char *label, int64_t N, int64_t H, int64_t W, df_tensor **in,
                            df_conv2d_params *p) {
    *p = df_conv2d_default();
    p->padding[0] = p->padding[1] = 1;
    in[0] = param(1, DF_DIMS(N, 128, H, W));
    in[1] = param(2, DF_DIMS(136, 128, 3, 3));
    in[2] = param(3, DF_DIMS(136));
    compare_blocked(label, conv_fn, p, in, 3, 1, WINOGRAD_TOL);
}

Test(autograd_layout, conv2d_3x3_winograd_wide_all_passes) {
    df_conv2d_set_winograd_min_tiles(1); /* this test's process only */
    df_tensor *in[3];
    df_conv2d_params p;
    compare_wide3x3("conv2d 3x3, 128 -> 136 channels", 2, 5, 3, in, &p);
    /* finite differences over x (the weights' 157 k elements would take minutes); the output
     * is linear in x, so a large step is exact and keeps the loss's rounding (outputs ~30 here)
     * small against it */
    df_tensor_set_requires_grad(in[1], false);
    df_tensor_set_requires_grad(in[2], false);
    wrap w = {conv_fn, 1, &p};
    gradcheck("conv2d 3x3 wide: gradcheck of x", wrapped, &w, in, 3, 1.0, ATOL, RTOL);
    free_all(in, 3);
}

Test(autograd_layout, conv2d_3x3_winograd_wide_many_chunks) {
    /* 240 tiles, chunks of about 124 at 128 + 136 channels: every pass over two chunks */
    df_conv2d_set_winograd_min_tiles(1);
    df_tensor *in[3];
    df_conv2d_params p;
    compare_wide3x3("conv2d 3x3 wide, two chunks", 2, 24, 20, in, &p);
    free_all(in, 3);
}

Test(autograd_layout, conv2d_3x3_winograd_many_chunks) {
    /* more tiles than one chunk holds (chunks of 2 MiB: 8192 tiles at 16 + 16 channels) */
    need_blocks();
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    df_tensor *x = param(1, DF_DIMS(3, 16, 130, 90)), *w = param(2, DF_DIMS(16, 16, 3, 3)),
              *b = param(3, DF_DIMS(16));
    df_tensor *in[3] = {x, w, b};
    df_tensor *grads[2][3], *outs[2];
    for (int mode = 0; mode < 2; mode++) { /* no gradcheck: 35 k inputs */
        wrap wr = {conv_fn, 1, &p};
        int machine_block = df_act_block_set(mode == 0 ? 0 : df_act_block());
        for (int i = 0; i < 3; i++) df_tensor_zero_grad(in[i]);
        df_scope s = df_scope_begin();
        df_tensor *y = wrapped(in, &wr);
        df_tensor *r = randn_tensor(99, y->ndim, y->shape);
        cr_assert_eq(df_backward_with(y, r), DF_OK);
        outs[mode] = df_tensor_retain(df_detach(y));
        for (int i = 0; i < 3; i++) grads[mode][i] = df_tensor_retain(df_tensor_clone(in[i]->grad));
        df_scope_end(s);
        df_act_block_set(machine_block);
    }
    check_close("many chunks: forward", outs[1], outs[0], WINOGRAD_TOL, WINOGRAD_TOL);
    /* the weight and bias gradients sum 35 k products: relative to their size */
    for (int i = 0; i < 3; i++) {
        double err = rel_max_err(grads[1][i], grads[0][i]);
        cr_assert(err < 1e-5, "many chunks: gradient %d, max error / max value %g", i, err);
    }
    free_all(outs, 2);
    free_all(grads[0], 3);
    free_all(grads[1], 3);
    free_all(in, 3);
}

Test(autograd_layout, conv2d_stride2_1x1_and_plain_output) {
    df_conv2d_params p = df_conv2d_default();
    p.stride[0] = p.stride[1] = 2;
    p.padding[0] = p.padding[1] = 1;
    df_tensor *in[3] = {param(1, DF_DIMS(2, 16, 5, 5)), param(2, DF_DIMS(24, 16, 3, 3)),
                        param(3, DF_DIMS(24))};
    check_blocked("conv2d stride 2", conv_fn, &p, in, 3, 1, 0); /* oneDNN's, both ways */
    df_conv2d_params q = df_conv2d_default();
    df_tensor *w4 = param(4, DF_DIMS(4, 16, 1, 1)); /* 4 output channels: a plain output */
    check_blocked("conv2d 1x1 to 4 channels", conv_fn, &q, (df_tensor *[]){in[0], w4, NULL}, 2, 1,
                  0);
    need_blocks();
    df_tensor *xb = df_to_blocked(in[0]);
    df_tensor *y = df_conv2d(xb, w4, NULL, q);
    cr_assert_eq(y->block, 0, "4 channels do not divide into blocks");
    free_all(in, 3);
    free_all((df_tensor *[]){w4, xb, y}, 3);
}

Test(autograd_layout, conv2d_blocked_out_from_plain_input) {
    need_blocks();
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    p.blocked_out = true;
    df_tensor *x = param(1, DF_DIMS(2, 3, 6, 5)), *w = param(2, DF_DIMS(16, 3, 3, 3)),
              *b = param(3, DF_DIMS(16));
    df_tensor *y = df_conv2d(x, w, b, p);
    cr_assert_eq(y->block, df_act_block());
    p.blocked_out = false;
    df_tensor *ref = df_conv2d(x, w, b, p);
    df_tensor *yp = df_to_plain(y);
    check_close("conv_in blocked output", yp, ref, 0, 0);
    free_all((df_tensor *[]){x, w, b, y, ref, yp}, 6);
}

/* ------------------------------------------------------------------ group_norm -------------- */

typedef struct gn_case {
    int groups;
} gn_case;

static df_tensor *gn_fn(df_tensor **b, df_tensor **p, void *u) {
    return df_group_norm(b[0], ((gn_case *)u)->groups, p[0], p[1], 1e-5f);
}

Test(autograd_layout, group_norm_groups_inside_across_and_over_blocks) {
    /* with B = 8 and C = 24: 6 groups of 4 lie inside blocks, 2 of 12 straddle them, 3 of 8
     * are whole blocks (B = 16 gives other mixes of the same cases) */
    int groups[3] = {6, 2, 3};
    for (int i = 0; i < 3; i++) {
        gn_case c = {groups[i]};
        df_tensor *in[3] = {param(1, DF_DIMS(2, 48, 3, 4)), param(2, DF_DIMS(48)),
                            param(3, DF_DIMS(48))};
        char label[64];
        snprintf(label, sizeof label, "group_norm, %d groups", groups[i]);
        check_blocked(label, gn_fn, &c, in, 3, 1, 2e-6);
        free_all(in, 3);
    }
}

Test(autograd_layout, group_norm_without_affine) {
    gn_case c = {4};
    df_tensor *x = param(5, DF_DIMS(3, 16, 2, 5));
    check_blocked("group_norm, no affine", gn_fn, &c, (df_tensor *[]){x, NULL, NULL}, 1, 1, 2e-6);
    df_tensor_free(x);
}

/* ------------------------------------------------------------------ elementwise ------------- */

static df_tensor *silu_scale_fn(df_tensor **b, df_tensor **p, void *u) {
    (void)p, (void)u;
    return df_mul_scalar(df_add_scalar(df_silu(b[0]), 0.5f), 0.7f);
}

Test(autograd_layout, unary_and_scalar_ops_keep_the_layout) {
    df_tensor *x = param(1, DF_DIMS(2, 16, 3, 3));
    check_blocked("silu, add_scalar, mul_scalar", silu_scale_fn, NULL, (df_tensor *[]){x}, 1, 1, 0);
    df_tensor_free(x);
}

static df_tensor *bin_fn(df_tensor **b, df_tensor **p, void *u) {
    int kind = *(int *)u;
    df_tensor *other = p[0];
    return kind == 0   ? df_add(b[0], other)
           : kind == 1 ? df_mul(b[0], other)
           : kind == 2 ? df_sub(other, b[0])
                       : df_div(b[0], df_add_scalar(df_mul(other, other), 1.0f));
}

Test(autograd_layout, binary_ops_with_every_broadcast_a_unet_uses) {
    const int64_t shapes[][4] = {
        {2, 16, 1, 1}, /* a time embedding per image and channel */
        {1, 16, 1, 1}, /* a per-channel scale */
        {2, 1, 3, 4},  /* per pixel, over channels */
        {1, 1, 1, 1},  /* a scalar tensor */
        {2, 16, 3, 4}, /* full shape, plain: converted to blocked */
    };
    for (int s = 0; s < 5; s++)
        for (int kind = 0; kind < 4; kind++) {
            df_tensor *in[2] = {param(1, DF_DIMS(2, 16, 3, 4)), param(2, 4, shapes[s])};
            char label[64];
            snprintf(label, sizeof label, "binary kind %d, operand shape %d", kind, s);
            check_blocked(label, bin_fn, &kind, in, 2, 1, 0);
            free_all(in, 2);
        }
}

static df_tensor *both_blocked_fn(df_tensor **b, df_tensor **p, void *u) {
    (void)p, (void)u;
    return df_add(df_mul(b[0], b[1]), b[1]);
}

Test(autograd_layout, binary_ops_on_two_blocked_tensors) {
    df_tensor *in[2] = {param(1, DF_DIMS(2, 16, 3, 4)), param(2, DF_DIMS(2, 16, 3, 4))};
    check_blocked("mul, add of two blocked", both_blocked_fn, NULL, in, 2, 2, 0);
    free_all(in, 2);
}

/* ------------------------------------------------------------------ structure --------------- */

static df_tensor *concat_fn(df_tensor **b, df_tensor **p, void *u) {
    (void)u;
    /* blocked, plain, blocked again: the plain one joins in blocked layout */
    return df_concat((df_tensor *[]){b[0], p[0], b[0]}, 3, 1);
}

Test(autograd_layout, concat_along_channels) {
    int64_t B = blk();
    df_tensor *in[2] = {param(1, DF_DIMS(2, 2 * B, 3, 2)), param(2, DF_DIMS(2, 3 * B, 3, 2))};
    check_blocked("concat", concat_fn, NULL, in, 2, 1, 0);
    need_blocks();
    df_tensor *b = df_to_blocked(in[0]);
    df_tensor *y = df_concat((df_tensor *[]){b, in[1]}, 2, 1);
    cr_assert_eq(y->block, df_act_block());
    df_tensor *z = df_concat((df_tensor *[]){b, b}, 2, 3); /* along width: plain */
    cr_assert_eq(z->block, 0);
    free_all(in, 2);
    free_all((df_tensor *[]){b, y, z}, 3);
}

/* A ResNet-like chain over channels that do not divide into blocks, as a model with 24
 * channels meets at B = 16: x (N, B + B / 2, H, W) cannot be blocked and stays plain; conv1
 * writes 2B channels blocked (blocked_out); group norm and SiLU keep them blocked; the concat
 * with x and conv2 (back to B + B / 2 channels) give plain results; the residual adds plain.
 * The activations are p[0] (not given blocked: f checks each layout itself). */
static df_tensor *odd_channels_fn(df_tensor **b, df_tensor **p, void *u) {
    (void)b, (void)u;
    int B = df_act_block();
    df_tensor *x = df_to_blocked(p[0]);
    cr_assert_eq(x->block, 0, "B + B / 2 channels do not block");
    df_conv2d_params c = df_conv2d_default();
    c.padding[0] = c.padding[1] = 1;
    c.blocked_out = true;
    /* weights scaled to unit output variance: finite differences stay accurate */
    df_tensor *w1 = df_mul_scalar(p[1], 1.0f / sqrtf(9.0f * p[1]->shape[1]));
    df_tensor *w2 = df_mul_scalar(p[2], 1.0f / sqrtf(9.0f * p[2]->shape[1]));
    df_tensor *h = df_silu(df_group_norm(df_conv2d(x, w1, NULL, c), 4, NULL, NULL, 1e-5f));
    cr_assert_eq(h->block, B, "2B channels out of conv1 are blocked");
    df_tensor *cat = df_concat((df_tensor *[]){h, x}, 2, 1);
    cr_assert_eq(cat->block, 0, "3.5B channels do not block");
    df_tensor *y = df_add(df_conv2d(h, w2, NULL, c), x);
    cr_assert_eq(y->block, 0, "B + B / 2 channels out of conv2 are plain");
    return df_concat((df_tensor *[]){y, cat}, 2, 1);
}

Test(autograd_layout, channels_that_do_not_divide_into_blocks) {
    int64_t B = blk(), C = B + B / 2;
    df_tensor *in[3] = {param(1, DF_DIMS(2, C, 4, 3)), param(2, DF_DIMS(2 * B, C, 3, 3)),
                        param(3, DF_DIMS(C, 2 * B, 3, 3))};
    /* the tiles are few: every convolution is oneDNN's direct one, bitwise the plain result */
    check_blocked("odd channel chain", odd_channels_fn, NULL, in, 3, 0, 0);
    free_all(in, 3);
}

static df_tensor *upsample_fn(df_tensor **b, df_tensor **p, void *u) {
    (void)p, (void)u;
    return df_upsample_nearest2d(b[0], 2);
}

Test(autograd_layout, upsample_nearest2d) {
    df_tensor *x = param(1, DF_DIMS(2, 16, 3, 2));
    check_blocked("upsample", upsample_fn, NULL, (df_tensor *[]){x}, 1, 1, 0);
    df_tensor_free(x);
}

static df_tensor *dropout_fn(df_tensor **b, df_tensor **p, void *u) {
    (void)p, (void)u;
    return df_dropout(b[0], 0.0f, NULL);
}

Test(autograd_layout, dropout_identity) {
    df_tensor *x = param(1, DF_DIMS(2, 16, 2, 2));
    check_blocked("dropout p = 0", dropout_fn, NULL, (df_tensor *[]){x}, 1, 1, 0);
    df_tensor_free(x);
}

/* ------------------------------------------------------------------ refusals ---------------- */

Test(autograd_layout, plain_only_op_refuses_blocked, .signal = SIGABRT) {
    if (df_act_block() == 0) raise(SIGABRT); /* nothing to refuse: pass */
    df_tensor *x = df_to_blocked(randn_tensor(1, DF_DIMS(1, 16, 2, 2)));
    df_softmax(x);
}

Test(autograd_layout, reshape_refuses_blocked, .signal = SIGABRT) {
    if (df_act_block() == 0) raise(SIGABRT);
    df_tensor *x = df_to_blocked(randn_tensor(1, DF_DIMS(1, 16, 2, 2)));
    df_reshape(x, DF_DIMS(16, 4));
}
