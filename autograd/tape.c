/* tape.c — recording nodes and running backward.
 *
 * Every op output with history points at its node; a node retains its inputs and keeps
 * detached aliases of what its backward needs. df_backward orders the nodes reachable from the
 * loss so that each runs only after every consumer of its output has added its gradient (Kahn's
 * algorithm on consumer counts: a tensor used twice receives both contributions before its own
 * node runs), then runs them, releasing each node's inputs, saved tensors and gradient as soon
 * as its backward is done. A consumed node cannot be run again.
 */
#include "autograd/autograd_impl.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local bool grad_disabled;

bool df_grad_set_enabled(bool on) {
    bool prev = !grad_disabled;
    grad_disabled = !on;
    return prev;
}

bool df_grad_enabled(void) {
    return !grad_disabled;
}

bool df_needs_grad(int n, df_tensor *const *inputs) {
    if (grad_disabled) return false;
    for (int i = 0; i < n; i++)
        if (inputs[i] && inputs[i]->requires_grad) return true;
    return false;
}

/* A storage-less stand-in for an intermediate input: its shape and producer node only. */
static df_tensor *grad_route(const df_tensor *t) {
    df_tensor *h = df_mem_alloc(sizeof *h);
    if (!h) df_mem_oom(sizeof *h, "a gradient route");
    memset(h, 0, sizeof *h);
    h->dtype = t->dtype;
    h->ndim = t->ndim;
    memcpy(h->shape, t->shape, sizeof h->shape);
    h->numel = t->numel;
    h->block = t->block;
    h->node = t->node;
    df_node_retain(t->node);
    h->requires_grad = true;
    h->refcount = 1;
    return h;
}

df_node *df_node_new(const df_op *op, df_tensor *out, int n_inputs, df_tensor *const *inputs,
                     size_t state_size) {
    return df_node_new_keep(op, out, n_inputs, inputs, state_size, ~0u);
}

df_node *df_node_new_keep(const df_op *op, df_tensor *out, int n_inputs, df_tensor *const *inputs,
                          size_t state_size, unsigned keep_data) {
    if (!df_needs_grad(n_inputs, inputs)) return NULL;
    DF_ASSERT(out->node == NULL, "%s: output already has a node", op->name);
    size_t head = sizeof(df_node) + (size_t)n_inputs * sizeof(df_tensor *);
    head = (head + 15) & ~(size_t)15;
    size_t bytes = head + state_size;
    df_node *n = df_mem_alloc(bytes);
    if (!n) df_mem_oom(bytes, "the tape node of %s", op->name);
    memset(n, 0, bytes);
    n->op = op;
    n->refcount = 1;
    n->n_inputs = n_inputs;
    n->alloc_bytes = bytes;
    n->state = state_size ? (char *)n + head : NULL;
    n->out_ndim = out->ndim;
    memcpy(n->out_shape, out->shape, sizeof n->out_shape);
    n->out_block = out->block;
    for (int i = 0; i < n_inputs; i++) {
        df_tensor *t = inputs[i];
        bool keep = i >= 32 || (keep_data >> i) & 1u;
        n->inputs[i] = !t ? NULL : (keep || !t->node) ? df_tensor_retain(t) : grad_route(t);
    }
    out->node = n;
    out->requires_grad = true;
    return n;
}

void df_node_save(df_node *n, int slot, const df_tensor *t) {
    DF_ASSERT(slot >= 0 && slot < DF_NODE_MAX_SAVED, "%s: save slot %d", n->op->name, slot);
    df_tensor_free(n->saved[slot]);
    n->saved[slot] = df_detach_unscoped(t);
}

/* The gradient slot of input i (the producer's out_grad or the leaf's grad), or NULL when the
 * input needs none. */
static df_tensor **grad_slot(df_node *n, int i) {
    DF_ASSERT(i >= 0 && i < n->n_inputs, "%s: input %d of %d", n->op->name, i, n->n_inputs);
    df_tensor *t = n->inputs[i];
    if (!t) return NULL;
    if (t->node) return &t->node->out_grad;
    return t->requires_grad ? &t->grad : NULL;
}

/* A new gradient for input i: its shape and layout. */
static df_tensor *grad_new(df_node *n, int i) {
    df_tensor *t = n->inputs[i];
    df_tensor *g = t->node
                       ? df_tensor_new_unscoped(DF_DTYPE_F32, t->node->out_ndim, t->node->out_shape)
                       : df_tensor_new_unscoped(DF_DTYPE_F32, t->ndim, t->shape);
    g->block = t->node ? t->node->out_block : t->block;
    return g;
}

df_tensor *df_node_grad(df_node *n, int i) {
    df_tensor **slot = grad_slot(n, i);
    if (!slot) return NULL;
    if (!*slot) {
        *slot = grad_new(n, i);
        memset((*slot)->data, 0, (size_t)(*slot)->numel * sizeof(float));
    }
    return *slot;
}

df_tensor *df_node_grad_dest(df_node *n, int i, bool *accumulate) {
    df_tensor **slot = grad_slot(n, i);
    *accumulate = slot && *slot;
    if (!slot) return NULL;
    if (!*slot) *slot = grad_new(n, i);
    return *slot;
}

/* Releases what a node held for its backward: it cannot run again. */
static void node_consume(df_node *n) {
    for (int i = 0; i < n->n_inputs; i++) {
        df_tensor_free(n->inputs[i]);
        n->inputs[i] = NULL;
    }
    for (int i = 0; i < DF_NODE_MAX_SAVED; i++) {
        df_tensor_free(n->saved[i]);
        n->saved[i] = NULL;
    }
    df_tensor_free(n->out_grad);
    n->out_grad = NULL;
    if (n->op->free_state) n->op->free_state(n->state);
    static const df_op consumed = {"consumed", NULL, NULL};
    n->op = &consumed;
}

static bool node_consumed(const df_node *n) {
    return n->op->backward == NULL;
}

typedef struct node_list {
    df_node **items;
    size_t len, cap;
} node_list;

static df_status list_push(node_list *l, df_node *n) {
    if (l->len == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        df_node **items = realloc(l->items, cap * sizeof *items);
        if (!items) return df_error(DF_ERR_NOMEM, "backward: out of memory for %zu nodes", cap);
        l->items = items;
        l->cap = cap;
    }
    l->items[l->len++] = n;
    return DF_OK;
}

static _Atomic uint64_t visit_epoch; /* shared by threads: each backward takes a fresh epoch */

/* Every node reachable from root, each once, retained; n->pending = how many reachable nodes
 * consume its output. */
static df_status collect(df_node *root, node_list *all, uint64_t epoch) {
    size_t head = 0;
    root->visit = epoch;
    root->pending = 0;
    df_node_retain(root);
    DF_TRY(list_push(all, root));
    while (head < all->len) {
        df_node *n = all->items[head++];
        if (node_consumed(n))
            return df_error(DF_ERR_INVALID,
                            "backward: the graph was already consumed by an earlier backward");
        for (int i = 0; i < n->n_inputs; i++) {
            df_tensor *t = n->inputs[i];
            if (!t || !t->node) continue;
            df_node *p = t->node;
            if (p->visit != epoch) {
                p->visit = epoch;
                p->pending = 0;
                df_node_retain(p);
                DF_TRY(list_push(all, p));
            }
            p->pending++;
        }
    }
    return DF_OK;
}

static df_status run_backward(df_tensor *out, const df_tensor *seed) {
    if (!out->node) {
        if (!out->requires_grad)
            return df_error(DF_ERR_INVALID, "backward: the tensor does not require grad");
        if (!out->grad) {
            out->grad = df_tensor_new_unscoped(DF_DTYPE_F32, out->ndim, out->shape);
            out->grad->block = out->block;
            memset(out->grad->data, 0, (size_t)out->numel * sizeof(float));
        }
        float *g = out->grad->data;
        for (int64_t i = 0; i < out->numel; i++) g[i] += seed ? df_f32(seed)[i] : 1.0f;
        return DF_OK;
    }
    /* the work lists are kept per thread and reused, so a steady loop of backwards does not
     * call malloc (backward never runs inside a backward) */
    static _Thread_local node_list all, ready;
    all.len = ready.len = 0;
    uint64_t epoch = atomic_fetch_add(&visit_epoch, 1) + 1;
    df_status st = collect(out->node, &all, epoch);
    if (st == DF_OK) {
        df_node *root = out->node;
        /* a given seed is aliased, not copied: nothing writes a node's own out_grad (only the
         * gradients of its inputs), and the root's output feeds no node of this graph */
        if (seed) {
            root->out_grad = df_detach_unscoped(seed);
        } else {
            root->out_grad = df_tensor_new_unscoped(DF_DTYPE_F32, out->ndim, out->shape);
            df_f32(root->out_grad)[0] = 1.0f;
        }
        st = list_push(&ready, root);
    }
    bool prev = df_grad_set_enabled(false);
    while (st == DF_OK && ready.len > 0) {
        df_node *n = ready.items[--ready.len];
        if (n->out_grad) n->op->backward(n, n->out_grad);
        for (int i = 0; i < n->n_inputs && st == DF_OK; i++) {
            df_tensor *t = n->inputs[i];
            if (t && t->node && --t->node->pending == 0) st = list_push(&ready, t->node);
        }
        node_consume(n);
    }
    df_grad_set_enabled(prev);
    for (size_t i = 0; i < all.len; i++) df_node_release(all.items[i]);
    all.len = ready.len = 0;
    return st;
}

df_status df_backward(df_tensor *loss) {
    DF_ASSERT(loss->numel == 1, "backward: loss has %lld elements (expected a scalar)",
              (long long)loss->numel);
    return run_backward(loss, NULL);
}

df_status df_backward_with(df_tensor *out, const df_tensor *grad_out) {
    DF_ASSERT(df_tensor_same_shape(out, grad_out) && grad_out->dtype == DF_DTYPE_F32 &&
                  grad_out->block == out->block,
              "backward_with: gradient shape, dtype or layout differs from the output");
    return run_backward(out, grad_out);
}
