/* checkpoint.c — gradient checkpointing on the re-entrant tape (autograd.h, df_checkpoint): a
 * segment runs once without keeping its graph, and its node's backward runs it again with
 * recording on and backpropagates through the recomputation. The inputs with history are
 * stood in for by detached leaves (the nested graph must not reach the enclosing one); an
 * input gradient the enclosing backward has already started is lent to its stand-in, so the
 * nested backward adds to it exactly where and in the order the plain graph would. The
 * recomputation runs under the compute dtype of the first run (mixed precision). */
#include "autograd/autograd_impl.h"

#include <string.h>

typedef struct ck_state {
    df_checkpoint_fn fn;
    const void *user;
    df_dtype compute; /* df_compute_dtype() of the first run */
} ck_state;

/* Leaves for in[0..n): an input with history becomes a detached leaf (under the open scope)
 * that requires grad when the input does; others are used as they are. */
static void stand_ins(int n, df_tensor *const *in, df_tensor **out) {
    for (int i = 0; i < n; i++) {
        df_tensor *t = in[i];
        out[i] = t;
        if (t && t->node) {
            out[i] = df_detach(t);
            df_tensor_set_requires_grad(out[i], true);
        }
    }
}

static void ck_backward(df_node *n, const df_tensor *g) {
    const ck_state *st = n->state;
    int k = n->n_inputs;
    df_scope scope = df_scope_begin();
    df_tensor *leaf[DF_CHECKPOINT_MAX_INPUTS], *dest[DF_CHECKPOINT_MAX_INPUTS];
    bool acc[DF_CHECKPOINT_MAX_INPUTS];
    stand_ins(k, n->inputs, leaf);
    for (int i = 0; i < k; i++) {
        dest[i] = NULL;
        acc[i] = false;
        if (leaf[i] == n->inputs[i]) continue; /* a leaf: the nested backward fills its .grad */
        dest[i] = df_node_grad_dest(n, i, &acc[i]);
        /* started: the stand-in's gradient is that very buffer (the nested backward adds) */
        if (dest[i] && acc[i]) leaf[i]->grad = df_tensor_retain(dest[i]);
    }
    bool prev = df_grad_set_enabled(true);
    df_dtype prev_dt = df_set_compute_dtype(st->compute);
    df_tensor *out = st->fn(leaf, st->user);
    df_set_compute_dtype(prev_dt);
    df_grad_set_enabled(prev);
    df_status rc = df_backward_with(out, g);
    if (rc != DF_OK) df_tape_fail(rc);
    for (int i = 0; i < k; i++) {
        if (!dest[i]) continue;
        const df_tensor *got = leaf[i]->grad;
        size_t bytes = (size_t)dest[i]->numel * sizeof(float);
        if (rc == DF_OK && !acc[i]) { /* new: the nested result is the gradient so far */
            if (got)
                memcpy(dest[i]->data, got->data, bytes);
            else /* the segment does not depend on this input */
                memset(dest[i]->data, 0, bytes);
        }
        df_tensor_free(leaf[i]->grad);
        leaf[i]->grad = NULL;
    }
    df_scope_end(scope);
}

static const df_op checkpoint_op = {"checkpoint", ck_backward, NULL};

df_tensor *df_checkpoint(df_checkpoint_fn fn, const void *user, int n, df_tensor *const *in) {
    DF_ASSERT(n >= 0 && n <= DF_CHECKPOINT_MAX_INPUTS, "checkpoint: %d inputs (at most %d)", n,
              DF_CHECKPOINT_MAX_INPUTS);
    if (!df_grad_enabled()) return fn(in, user);
    /* recorded as the plain graph records (an op may compute otherwise when nothing needs a
     * gradient), on stand-ins so that the enclosing graph is not touched; then dropped */
    df_scope scope = df_scope_begin();
    df_tensor *leaf[DF_CHECKPOINT_MAX_INPUTS];
    stand_ins(n, in, leaf);
    df_tensor *full = fn(leaf, user);
    bool needs = full->requires_grad;
    df_tensor *out = df_scope_end_keep(scope, df_detach(full));
    if (needs) {
        df_node *node = df_node_new_always(&checkpoint_op, out, n, in, sizeof(ck_state), ~0u);
        *(ck_state *)node->state = (ck_state){fn, user, df_compute_dtype()};
    }
    return out;
}
