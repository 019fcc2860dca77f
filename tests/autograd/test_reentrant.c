/* test_reentrant.c — a backward run inside a backward (autograd/tape.c), the way gradient
 * checkpointing uses it: a test "checkpoint" op runs a segment without recording, and its
 * backward recomputes the segment with grad mode on and backpropagates through it. Checked:
 * gradients bitwise equal to the plain graph (one level, consecutive segments, nesting three
 * deep), the memory the checkpoint saves, a nested backward that reaches the enclosing graph
 * fails cleanly, and a steady loop of nested backwards stops calling the system allocator. */
#include "autograd/autograd_impl.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ the checkpoint op ------- */

#define CK_MAX_INPUTS 8

/* A segment: builds its output from inputs (user data alongside). */
typedef df_tensor *(*segment_fn)(df_tensor **in, void *user);

typedef struct ck_state {
    segment_fn fn;
    void *user;
    bool detach; /* false only in the test of the rule "detach inputs with history" */
} ck_state;

/* The rules of autograd.h (df_backward) in order: own scope (3), inputs with history detached
 * into fresh leaves (2), grad mode on for the recomputation (1), a failure reported (4). */
static void ck_backward(df_node *n, const df_tensor *g) {
    const ck_state *st = n->state;
    df_scope s = df_scope_begin();
    df_tensor *in[CK_MAX_INPUTS];
    for (int i = 0; i < n->n_inputs; i++) {
        df_tensor *t = n->inputs[i];
        in[i] = t;
        if (t && t->node && st->detach) {
            in[i] = df_detach(t);
            df_tensor_set_requires_grad(in[i], true);
        }
    }
    bool prev = df_grad_set_enabled(true);
    df_tensor *out = st->fn(in, st->user);
    df_grad_set_enabled(prev);
    df_status rc = df_backward_with(out, g);
    if (rc != DF_OK) {
        df_tape_fail(rc);
        df_scope_end(s);
        return;
    }
    for (int i = 0; i < n->n_inputs; i++) {
        if (in[i] == n->inputs[i]) continue; /* a leaf: the nested backward filled its .grad */
        bool acc;
        df_tensor *d = df_node_grad_dest(n, i, &acc);
        const df_tensor *got = in[i]->grad;
        if (!d) continue;
        if (!got) { /* the segment does not depend on this input */
            if (!acc) memset(d->data, 0, (size_t)d->numel * sizeof(float));
            continue;
        }
        for (int64_t k = 0; k < d->numel; k++)
            df_f32(d)[k] = (acc ? df_f32(d)[k] : 0.0f) + df_f32(got)[k];
    }
    df_scope_end(s);
}

static const df_op ck_op = {"test_checkpoint", ck_backward, NULL};

/* fn(in) computed without a graph: only the output (and the inputs) are kept for backward. */
static df_tensor *checkpoint_ex(segment_fn fn, void *user, int n, df_tensor **in, bool detach) {
    cr_assert(n <= CK_MAX_INPUTS);
    bool prev = df_grad_set_enabled(false);
    df_scope s = df_scope_begin();
    df_tensor *out = df_scope_end_keep(s, fn(in, user));
    df_grad_set_enabled(prev);
    df_node *node = df_node_new(&ck_op, out, n, in, sizeof(ck_state));
    if (node) *(ck_state *)node->state = (ck_state){fn, user, detach};
    return out;
}

static df_tensor *checkpoint(segment_fn fn, void *user, int n, df_tensor **in) {
    return checkpoint_ex(fn, user, n, in, true);
}

/* ------------------------------------------------------------------ the model --------------- */

/* One block: group_norm(silu(x w), 2 groups) on x (4, 8, 16), w (16, 16), norm params (8).
 * in = {x, w, gamma, beta}. */
static df_tensor *block_fn(df_tensor **in, void *user) {
    (void)user;
    return df_group_norm(df_silu(df_matmul(in[0], in[1], false, false)), 2, in[2], in[3], 1e-5f);
}

/* Two blocks: in = {x, w0, gamma0, beta0, w1, gamma1, beta1}. */
static df_tensor *two_blocks(df_tensor **in, void *user) {
    (void)user;
    df_tensor *h = block_fn(in, NULL);
    return block_fn((df_tensor *[]){h, in[4], in[5], in[6]}, NULL);
}

/* Each block checkpointed on its own (the second one's input has history). */
static df_tensor *two_blocks_ck(df_tensor **in, void *user) {
    (void)user;
    df_tensor *h = checkpoint(block_fn, NULL, 4, in);
    return checkpoint(block_fn, NULL, 4, (df_tensor *[]){h, in[4], in[5], in[6]});
}

/* depth 0: the two blocks; depth d: a checkpoint of depth d - 1, so its backward runs d
 * backwards one inside the other. user: the depth (int). */
static df_tensor *nested(df_tensor **in, void *user) {
    int d = *(const int *)user;
    if (d == 0) return two_blocks(in, NULL);
    static const int depths[] = {0, 1, 2, 3, 4};
    return checkpoint(nested, (void *)&depths[d - 1], 7, in);
}

typedef struct model {
    df_tensor *x0, *r;
    df_tensor *p[6]; /* w0, gamma0, beta0, w1, gamma1, beta1 */
} model;

static df_tensor *leaf(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = randn_tensor(seed, ndim, shape);
    df_tensor_set_requires_grad(t, true);
    return t;
}

/* Made outside any scope (the caller frees with model_free). */
static model model_new(void) {
    model m;
    m.x0 = leaf(1, DF_DIMS(4, 8, 16));
    m.r = randn_tensor(2, DF_DIMS(4, 8, 16));
    for (int b = 0; b < 2; b++) {
        m.p[3 * b] = leaf(10 + b, DF_DIMS(16, 16));
        m.p[3 * b + 1] = leaf(20 + b, DF_DIMS(8));
        m.p[3 * b + 2] = leaf(30 + b, DF_DIMS(8));
    }
    return m;
}

static void model_free(model *m) {
    df_tensor_free(m->x0);
    df_tensor_free(m->r);
    for (int i = 0; i < 6; i++) df_tensor_free(m->p[i]);
}

static void model_zero_grad(model *m) {
    df_tensor_zero_grad(m->x0);
    for (int i = 0; i < 6; i++) df_tensor_zero_grad(m->p[i]);
}

/* loss = sum(body(tanh(x0), params) * r): the body's input has history (tanh). */
static df_status model_backward(model *m, segment_fn body, void *user) {
    df_scope s = df_scope_begin();
    df_tensor *in[7] = {df_tanh(m->x0), m->p[0], m->p[1], m->p[2], m->p[3], m->p[4], m->p[5]};
    df_tensor *y = body(in, user);
    df_status rc = df_backward(df_sum(df_mul(y, m->r), 0, NULL, false));
    df_scope_end(s);
    return rc;
}

/* Gradients of x0 and every parameter, copied (owned by the caller; free with grads_free). */
typedef struct grads {
    df_tensor *g[7];
} grads;

static grads grads_of(const model *m) {
    grads r;
    r.g[0] = df_tensor_clone(m->x0->grad);
    for (int i = 0; i < 6; i++) r.g[i + 1] = df_tensor_clone(m->p[i]->grad);
    return r;
}

static void grads_free(grads *g) {
    for (int i = 0; i < 7; i++) df_tensor_free(g->g[i]);
}

static const char *grad_names[7] = {"dx0", "dw0", "dgamma0", "dbeta0", "dw1", "dgamma1", "dbeta1"};

/* The body's gradients equal the plain graph's, bit for bit (two models from the same seeds,
 * so that every gradient is created the same way). */
static void check_bitwise(segment_fn body, void *user, const char *label) {
    model plain = model_new(), ck = model_new();
    cr_assert_eq(model_backward(&plain, two_blocks, NULL), DF_OK);
    cr_assert_eq(model_backward(&ck, body, user), DF_OK, "%s: %s", label, df_last_error());
    grads want = grads_of(&plain), got = grads_of(&ck);
    for (int i = 0; i < 7; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s %s", label, grad_names[i]);
        check_close(name, got.g[i], want.g[i], 0, 0);
    }
    grads_free(&want);
    grads_free(&got);
    model_free(&plain);
    model_free(&ck);
}

/* ------------------------------------------------------------------ tests ------------------- */

Test(autograd_reentrant, checkpoint_gives_the_plain_gradients_bitwise) {
    static const int depth1 = 1;
    check_bitwise(nested, (void *)&depth1, "one checkpoint of both blocks");
}

Test(autograd_reentrant, consecutive_checkpoints_inside_a_checkpoint) {
    /* the outer recomputation records two checkpoint nodes, the second fed by the first: its
     * nested backward (depth 1) detaches a tensor with history and runs depth-2 backwards */
    check_bitwise(two_blocks_ck, NULL, "each block checkpointed");
}

Test(autograd_reentrant, nested_three_deep) {
    static const int depth3 = 3;
    check_bitwise(nested, (void *)&depth3, "checkpoint of a checkpoint of a checkpoint");
}

/* The point of checkpointing: the segment's intermediates are not kept until backward. */
Test(autograd_reentrant, checkpoint_keeps_less_for_backward) {
    model m = model_new();
    size_t held[2];
    for (int k = 0; k < 2; k++) {
        size_t before = df_mem_get_stats().bytes_in_use;
        df_scope s = df_scope_begin();
        df_tensor *in[7] = {df_tanh(m.x0), m.p[0], m.p[1], m.p[2], m.p[3], m.p[4], m.p[5]};
        static const int depth1 = 1;
        df_tensor *y = k == 0 ? two_blocks(in, NULL) : nested(in, (void *)&depth1);
        held[k] = df_mem_get_stats().bytes_in_use - before;
        cr_assert_eq(df_backward(df_sum(df_mul(y, m.r), 0, NULL, false)), DF_OK);
        df_scope_end(s);
    }
    /* plain: the matmul, silu and norm outputs of both blocks and the norm statistics;
     * checkpointed: tanh's output and the segment's output */
    cr_assert(held[1] < held[0] / 2, "checkpointed forward holds %zu bytes, plain %zu", held[1],
              held[0]);
    model_free(&m);
}

Test(autograd_reentrant, nested_backward_reaching_the_enclosing_graph_fails) {
    model m = model_new();
    df_scope s = df_scope_begin();
    df_tensor *in[7] = {df_tanh(m.x0), m.p[0], m.p[1], m.p[2], m.p[3], m.p[4], m.p[5]};
    /* the recomputation uses tanh's output as it is: its nested backward reaches tanh's node,
     * which the enclosing backward has collected and not yet run */
    df_tensor *y = checkpoint_ex(two_blocks, NULL, 7, in, false);
    df_error_clear();
    df_status rc = df_backward(df_sum(df_mul(y, m.r), 0, NULL, false));
    cr_assert_eq(rc, DF_ERR_INVALID, "got %s", df_status_name(rc));
    cr_assert(strstr(df_last_error(), "enclosing") != NULL, "message: %s", df_last_error());
    cr_assert(m.x0->grad == NULL, "the enclosing walk stopped before tanh's node");
    df_scope_end(s);
    /* the tape is usable afterwards: the frame stack unwound */
    static const int depth2 = 2;
    model_zero_grad(&m);
    cr_assert_eq(model_backward(&m, nested, (void *)&depth2), DF_OK, "%s", df_last_error());
    cr_assert(m.x0->grad != NULL);
    model_free(&m);
}

/* Each depth keeps its work lists: after warm-up, nested backwards allocate nothing new. */
Test(autograd_reentrant, steady_nested_loop_makes_no_system_allocations) {
    model m = model_new();
    static const int depth2 = 2;
    uint64_t allocs_after_2 = 0;
    size_t in_use_after_2 = 0;
    for (int step = 0; step < 10; step++) {
        cr_assert_eq(model_backward(&m, nested, (void *)&depth2), DF_OK);
        model_zero_grad(&m);
        if (step == 1) {
            allocs_after_2 = df_mem_get_stats().system_allocs;
            in_use_after_2 = df_mem_get_stats().bytes_in_use;
        }
    }
    df_mem_stats st = df_mem_get_stats();
    cr_assert_eq(st.system_allocs, allocs_after_2, "%llu system allocations after step 2, %llu now",
                 (unsigned long long)allocs_after_2, (unsigned long long)st.system_allocs);
    cr_assert_eq(st.bytes_in_use, in_use_after_2, "nothing accumulates: %zu bytes, %zu at step 2",
                 st.bytes_in_use, in_use_after_2);
    model_free(&m);
}
