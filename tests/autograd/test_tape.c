/* test_tape.c — the tape (autograd/tape.c), scopes and memory (tensor.c, mem.c) and flat
 * parameters (flat.c): accumulation rules, grad mode, consumed graphs, release of saved
 * tensors, and a steady training-like loop that stops calling the system allocator. */
#include "tests/common/check.h"

#include <math.h>

static df_tensor *leaf(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, true);
    return t;
}

/* y = x*x + x: x is used three times; d/dx = 2x + 1 */
Test(autograd_tape, tensor_used_twice_gets_both_contributions) {
    df_scope s = df_scope_begin();
    df_tensor *x = leaf(1, DF_DIMS(2, 3));
    df_tensor *y = df_sum(df_add(df_mul(x, x), x), 0, NULL, false);
    cr_assert_eq(df_backward(y), DF_OK);
    float want[6];
    for (int i = 0; i < 6; i++) want[i] = 2 * df_f32(x)[i] + 1;
    check_close_f32("d(x*x+x)/dx", df_f32(x->grad), want, 6, 1e-6, 1e-6);
    df_scope_end(s);
}

Test(autograd_tape, inputs_without_requires_grad_get_nothing) {
    df_scope s = df_scope_begin();
    df_tensor *x = leaf(1, DF_DIMS(4)), *c = randn_tensor(2, DF_DIMS(4));
    df_tensor *y = df_sum(df_mul(df_exp(c), x), 0, NULL, false);
    cr_assert_eq(df_backward(y), DF_OK);
    cr_assert(x->grad != NULL);
    cr_assert(c->grad == NULL, "a constant input received a gradient");
    df_tensor *z = df_mul(c, c);
    cr_assert(z->node == NULL && !z->requires_grad, "no input requires grad: nothing recorded");
    df_scope_end(s);
}

Test(autograd_tape, grad_mode_off_records_nothing) {
    df_scope s = df_scope_begin();
    df_tensor *x = leaf(1, DF_DIMS(4));
    bool prev = df_grad_set_enabled(false);
    cr_assert(prev, "grad mode is on by default");
    cr_assert(!df_grad_enabled());
    df_tensor *y = df_sum(df_mul(x, x), 0, NULL, false);
    cr_assert(y->node == NULL && !y->requires_grad, "grad mode off: no node");
    cr_assert_eq(df_backward(y), DF_ERR_INVALID, "nothing to backpropagate");
    cr_assert(x->grad == NULL);
    df_grad_set_enabled(prev);
    cr_assert(df_grad_enabled());
    df_scope_end(s);
}

Test(autograd_tape, gradient_accumulates_over_backward_calls) {
    df_scope s = df_scope_begin();
    df_tensor *x = leaf(3, DF_DIMS(5));
    for (int k = 0; k < 2; k++) {
        df_tensor *y = df_sum(df_mul_scalar(x, 3), 0, NULL, false);
        cr_assert_eq(df_backward(y), DF_OK);
    }
    check_close_f32("two backwards", df_f32(x->grad), (float[]){6, 6, 6, 6, 6}, 5, 0, 0);
    df_tensor_zero_grad(x);
    check_close_f32("zero_grad", df_f32(x->grad), (float[]){0, 0, 0, 0, 0}, 5, 0, 0);
    df_scope_end(s);
}

Test(autograd_tape, backward_on_consumed_graph_is_invalid) {
    df_scope s = df_scope_begin();
    df_tensor *x = leaf(3, DF_DIMS(5));
    df_tensor *y = df_sum(df_sigmoid(x), 0, NULL, false);
    cr_assert_eq(df_backward(y), DF_OK);
    df_tensor *before = df_tensor_clone(x->grad);
    cr_assert_eq(df_backward(y), DF_ERR_INVALID);
    cr_assert(df_last_error()[0] != 0, "the error has a message");
    check_close("a failed backward adds nothing", x->grad, before, 0, 0);
    df_scope_end(s);
}

/* Saved tensors (outputs of exp/sigmoid/softmax, dropout masks, log-softmax of cross_entropy)
 * and every node are gone after backward and the end of the scope. */
Test(autograd_tape, saved_tensors_released_after_backward) {
    df_tensor *x = leaf(4, DF_DIMS(8, 16));
    df_tensor *t = df_from_data(DF_DTYPE_I64, DF_DIMS(8), (int64_t[]){0, 1, 2, 3, 4, 5, 6, 7});
    df_philox g;
    df_philox_init(&g, 1, 2);
    for (int k = 0; k < 2; k++) { /* the first pass creates x->grad */
        size_t before = df_mem_get_stats().bytes_in_use;
        df_scope s = df_scope_begin();
        df_tensor *h = df_softmax(df_exp(df_sigmoid(x)));
        h = df_dropout(h, 0.1f, &g);
        df_tensor *l = df_add(df_cross_entropy(h, t), df_mean(df_sqrt(df_add_scalar(h, 1)), 0, NULL, false));
        cr_assert_eq(df_backward(l), DF_OK);
        df_scope_end(s);
        if (k == 1)
            cr_assert_eq(df_mem_get_stats().bytes_in_use, before,
                         "bytes in use %zu after backward + scope end, %zu before",
                         df_mem_get_stats().bytes_in_use, before);
    }
    df_tensor_free(t);
    df_tensor_free(x);
}

Test(autograd_tape, scope_frees_its_tensors_and_retain_keeps_one) {
    size_t before = df_mem_get_stats().bytes_in_use;
    df_tensor *kept;
    df_scope outer = df_scope_begin();
    {
        df_scope s = df_scope_begin();
        df_tensor *a = df_ones(DF_DTYPE_F32, DF_DIMS(100));
        df_tensor *b = df_mul_scalar(a, 2);
        kept = df_tensor_retain(df_add_scalar(b, 1));
        df_scope_end(s);
    }
    check_close_f32("a retained tensor outlives its scope", df_f32(kept), (float[]){3, 3}, 2, 0, 0);
    df_tensor_free(kept);
    df_scope_end(outer);
    cr_assert_eq(df_mem_get_stats().bytes_in_use, before, "every tensor of the scope freed");
}

Test(autograd_tape, flat_parameters) {
    df_tensor *w = randn_tensor(5, DF_DIMS(2, 3)), *b = randn_tensor(6, DF_DIMS(5));
    float w0[6], b0[5];
    for (int i = 0; i < 6; i++) w0[i] = df_f32(w)[i];
    for (int i = 0; i < 5; i++) b0[i] = df_f32(b)[i];
    df_flat flat;
    cr_assert_eq(df_flat_init(&flat, (df_tensor *[]){w, b}, 2), DF_OK);
    cr_assert(w->requires_grad && b->requires_grad);
    cr_assert(df_f32(w) == df_flat_data(&flat), "w is a view at offset 0");
    cr_assert(df_f32(b) == df_flat_data(&flat) + 16, "b starts at the next 16-element boundary");
    check_close_f32("w values kept", df_f32(w), w0, 6, 0, 0);
    check_close_f32("b values kept", df_f32(b), b0, 5, 0, 0);
    df_scope s = df_scope_begin();
    df_tensor *x = randn_tensor(7, DF_DIMS(3));
    /* loss = sum(w * x) + sum(2 b): dw = x broadcast, db = 2 */
    df_tensor *l = df_add(df_sum(df_mul(w, x), 0, NULL, false),
                          df_sum(df_mul_scalar(b, 2), 0, NULL, false));
    cr_assert_eq(df_backward(l), DF_OK);
    float *g = df_flat_grad(&flat);
    cr_assert(df_f32(w->grad) == g && df_f32(b->grad) == g + 16, "grads live in the flat buffer");
    float wantw[6], wantb[5] = {2, 2, 2, 2, 2};
    for (int i = 0; i < 6; i++) wantw[i] = df_f32(x)[i % 3];
    check_close_f32("dw in flat grad", g, wantw, 6, 0, 0);
    check_close_f32("db in flat grad", g + 16, wantb, 5, 0, 0);
    df_scope_end(s);
    df_flat_zero_grad(&flat);
    float zeros[21] = {0};
    check_close_f32("zero_grad zeroes the flat buffer", g, zeros, 21, 0, 0);
    df_tensor_free(w);
    df_tensor_free(b);
    df_flat_free(&flat);
}

/* A small training-like loop: after two steps the pool serves every request. */
Test(autograd_tape, steady_loop_makes_no_system_allocations) {
    df_tensor *w = randn_tensor(8, DF_DIMS(1, 16, 1, 1)), *bias = randn_tensor(9, DF_DIMS(16));
    df_tensor *params[] = {w, bias};
    df_flat flat;
    cr_assert_eq(df_flat_init(&flat, params, 2), DF_OK);
    df_philox gen;
    df_philox_init(&gen, 3, 4);
    uint64_t allocs_after_2 = 0;
    for (int step = 0; step < 50; step++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn_tensor(100 + step, DF_DIMS(2, 16, 8, 8));
        df_tensor *target = randn_tensor(200 + step, DF_DIMS(2, 16, 8, 8));
        df_tensor *h = df_silu(df_add(df_mul(x, w), df_reshape(bias, DF_DIMS(16, 1, 1))));
        h = df_dropout(df_gelu(h), 0.1f, &gen);
        df_tensor *loss = df_mse_loss(h, target, true);
        cr_assert_eq(df_backward(loss), DF_OK);
        df_scope_end(s);
        float *p = df_flat_data(&flat), *g = df_flat_grad(&flat);
        for (int64_t i = 0; i < flat.numel; i++) p[i] -= 0.01f * g[i];
        df_flat_zero_grad(&flat);
        if (step == 1) allocs_after_2 = df_mem_get_stats().system_allocs;
    }
    cr_assert_eq(df_mem_get_stats().system_allocs, allocs_after_2,
                 "steady state: %llu system allocations after step 2, %llu at step 50",
                 (unsigned long long)allocs_after_2,
                 (unsigned long long)df_mem_get_stats().system_allocs);
    df_tensor_free(w);
    df_tensor_free(bias);
    df_flat_free(&flat);
}
