/* test_attention.c — df_softmax_attention (autograd/ops/attention.c): gradient checks (self,
 * cross, causal), equality with the composite matmul-softmax-matmul it replaces, the row-block
 * path (one item's scores larger than the block budget) against the whole-item path, and PyTorch
 * parity against tests/fixtures/ops_dnnl/attention.safetensors (tests/ref/gen_ops_attention.py).
 * Gradcheck tolerances: eps 1e-3, atol 5e-3, rtol 1e-2 (see test_unary.c); parity: the style
 * guide's matmul atol 1e-5 rtol 1e-4. */
#include "autograd/autograd_impl.h"
#include "tests/common/check.h"

#include <float.h>
#include <signal.h>
#include <stdio.h>

static df_tensor *call_attention(df_tensor **in, void *u) {
    return df_softmax_attention(in[0], in[1], in[2], *(bool *)u);
}

/* The composite the op replaces: softmax(q k^T [masked]) v with the tape's own ops. */
static df_tensor *composite(df_tensor *q, df_tensor *k, df_tensor *v, bool causal) {
    df_tensor *s = df_matmul(q, k, false, true);
    if (causal) {
        int64_t t = s->shape[s->ndim - 2], n = s->shape[s->ndim - 1];
        df_tensor *mask = df_zeros(DF_DTYPE_U8, DF_DIMS(t, n));
        for (int64_t i = 0; i < t; i++)
            for (int64_t j = i + 1; j < n; j++) ((uint8_t *)mask->data)[i * n + j] = 1;
        s = df_masked_fill(s, mask, -FLT_MAX);
    }
    return df_matmul(df_softmax(s), v, false, false);
}

static void grad_case(const char *label, uint64_t seed, const int64_t *sq, const int64_t *sk,
                      const int64_t *sv, bool causal, bool need_k) {
    df_scope s = df_scope_begin();
    df_tensor *in[3] = {randn_tensor(seed, 4, sq), randn_tensor(seed + 1, 4, sk),
                        randn_tensor(seed + 2, 4, sv)};
    df_tensor_set_requires_grad(in[0], true);
    df_tensor_set_requires_grad(in[1], need_k);
    df_tensor_set_requires_grad(in[2], true);
    gradcheck(label, call_attention, &causal, in, 3, 1e-3, 5e-3, 1e-2);
    df_scope_end(s);
}

Test(autograd_attention, gradcheck) {
    grad_case("self", 11, (int64_t[]){2, 2, 5, 3}, (int64_t[]){2, 2, 5, 3}, (int64_t[]){2, 2, 5, 3},
              false, true);
    grad_case("cross", 21, (int64_t[]){1, 2, 4, 3}, (int64_t[]){1, 2, 6, 3},
              (int64_t[]){1, 2, 6, 2}, false, true);
    grad_case("causal", 31, (int64_t[]){2, 1, 5, 3}, (int64_t[]){2, 1, 5, 3},
              (int64_t[]){2, 1, 5, 3}, true, true);
    /* k without requires_grad receives nothing (gradcheck asserts it) */
    grad_case("k frozen", 41, (int64_t[]){1, 2, 4, 3}, (int64_t[]){1, 2, 4, 3},
              (int64_t[]){1, 2, 4, 3}, false, false);
}

/* Runs the op (or the composite) with a fixed upstream gradient and returns y, dq, dk, dv as
 * owned clones. */
static void run(bool fused, bool causal, df_tensor *const src[3], df_tensor *gy,
                df_tensor *out[4]) {
    df_scope s = df_scope_begin();
    df_tensor *in[3];
    for (int i = 0; i < 3; i++) {
        in[i] = df_tensor_clone(src[i]);
        df_tensor_set_requires_grad(in[i], true);
    }
    df_tensor *y = fused ? df_softmax_attention(in[0], in[1], in[2], causal)
                         : composite(in[0], in[1], in[2], causal);
    cr_assert(df_backward_with(y, gy) == DF_OK, "%s", df_last_error());
    df_scope_pause pause = df_scope_suspend();
    out[0] = df_tensor_clone(y);
    for (int i = 0; i < 3; i++) out[i + 1] = df_tensor_clone(in[i]->grad);
    df_scope_resume(pause);
    for (int i = 0; i < 3; i++) df_tensor_free(in[i]->grad), in[i]->grad = NULL;
    df_scope_end(s);
}

static void compare_runs(const char *label, df_tensor *const a[4], df_tensor *const b[4],
                         double atol, double rtol) {
    const char *names[4] = {"y", "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        char l[96];
        snprintf(l, sizeof l, "%s: %s", label, names[i]);
        check_close(l, a[i], b[i], atol, rtol);
    }
}

static void free_run(df_tensor *r[4]) {
    for (int i = 0; i < 4; i++) df_tensor_free(r[i]);
}

/* UNet-like shapes (64 tokens of 8x8, 4 heads) and CLIP-like causal ones. */
Test(autograd_attention, equals_composite) {
    for (int causal = 0; causal < 2; causal++) {
        df_scope s = df_scope_begin();
        int64_t T = causal ? 16 : 64, S = causal ? 16 : 40;
        df_tensor *src[3] = {randn_tensor(51, DF_DIMS(3, 4, T, 8)),
                             randn_tensor(52, DF_DIMS(3, 4, causal ? T : S, 8)),
                             randn_tensor(53, DF_DIMS(3, 4, causal ? T : S, 8))};
        df_tensor *gy = randn_tensor(54, DF_DIMS(3, 4, T, 8));
        df_tensor *a[4], *b[4];
        df_scope_pause pause = df_scope_suspend();
        run(true, causal, src, gy, a);
        run(false, causal, src, gy, b);
        df_scope_resume(pause);
        compare_runs(causal ? "fused vs composite (causal)" : "fused vs composite", a, b, 1e-6,
                     1e-5);
        free_run(a), free_run(b);
        df_scope_end(s);
    }
}

/* A budget smaller than one item's scores splits queries into row blocks (dk, dv summed over
 * blocks); a budget of two items' scores makes batch blocks with a short last block. */
Test(autograd_attention, blocks_agree) {
    for (int causal = 0; causal < 2; causal++) {
        df_scope s = df_scope_begin();
        df_tensor *src[3] = {randn_tensor(61, DF_DIMS(5, 24, 8)),
                             randn_tensor(62, DF_DIMS(5, 24, 8)),
                             randn_tensor(63, DF_DIMS(5, 24, 6))};
        df_tensor *gy = randn_tensor(64, DF_DIMS(5, 24, 6));
        df_tensor *whole[4], *rows[4], *items[4];
        df_scope_pause pause = df_scope_suspend();
        run(true, causal, src, gy, whole);
        size_t old = df_softmax_attention_set_chunk_bytes(7 * 24 * sizeof(float)); /* 7 rows */
        run(true, causal, src, gy, rows);
        df_softmax_attention_set_chunk_bytes(2 * 24 * 24 * sizeof(float)); /* 2 items */
        run(true, causal, src, gy, items);
        df_softmax_attention_set_chunk_bytes(old);
        df_scope_resume(pause);
        compare_runs("row blocks vs whole", rows, whole, 1e-6, 1e-5);
        compare_runs("item blocks vs whole", items, whole, 0, 0);
        free_run(whole), free_run(rows), free_run(items);
        df_scope_end(s);
    }
}

/* k's head width differs from q's: a DF_ASSERT naming the op and the shapes */
Test(autograd_attention, mismatched_shapes_assert, .signal = SIGABRT) {
    df_tensor *q = df_zeros(DF_DTYPE_F32, DF_DIMS(1, 4, 3));
    df_tensor *k = df_zeros(DF_DTYPE_F32, DF_DIMS(1, 4, 2));
    df_softmax_attention(q, k, k, false);
}

Test(autograd_attention, pytorch_parity) {
    struct {
        const char *name;
        bool causal;
    } cases[] = {{"self", false}, {"cross", false}, {"causal", true}, {"flat", false}};
    const char *file = "ops_dnnl/attention.safetensors";
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        df_scope s = df_scope_begin();
        char key[64];
        df_tensor *in[3];
        const char *names[3] = {"q", "k", "v"};
        for (int i = 0; i < 3; i++) {
            snprintf(key, sizeof key, "%s.%s", cases[c].name, names[i]);
            in[i] = fixture_tensor(file, key);
            df_tensor_set_requires_grad(in[i], true);
        }
        snprintf(key, sizeof key, "%s.gy", cases[c].name);
        df_tensor *gy = fixture_tensor(file, key);
        df_tensor *y = df_softmax_attention(in[0], in[1], in[2], cases[c].causal);
        snprintf(key, sizeof key, "%s.y", cases[c].name);
        check_close(key, y, fixture_tensor(file, key), 1e-5, 1e-4);
        cr_assert(df_backward_with(y, gy) == DF_OK, "%s", df_last_error());
        for (int i = 0; i < 3; i++) {
            snprintf(key, sizeof key, "%s.g%s", cases[c].name, names[i]);
            check_close(key, in[i]->grad, fixture_tensor(file, key), 1e-5, 1e-4);
            df_tensor_free(in[i]->grad), in[i]->grad = NULL;
        }
        df_scope_end(s);
    }
}
