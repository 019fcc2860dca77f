/* tape.c — recording nodes and running backward.
 *
 * Every op output with history points at its node; a node retains its inputs and keeps
 * detached aliases of what its backward needs. df_backward orders the nodes reachable from the
 * loss so that each runs only after every consumer of its output has added its gradient (Kahn's
 * algorithm on consumer counts: a tensor used twice receives both contributions before its own
 * node runs), then runs them, releasing each node's inputs, saved tensors and gradient as soon
 * as its backward is done. A consumed node cannot be run again.
 *
 * Re-entrant: a node's backward may itself run a forward with grad mode on and a backward of
 * that new graph (what gradient checkpointing does: recompute a segment, backpropagate through
 * it). Each backward has its own frame (work lists, visit epoch) on a per-thread stack; a nested
 * backward that reaches a node an enclosing backward is still walking stops with
 * DF_ERR_INVALID instead of corrupting its consumer counts (the rules: autograd.h, df_backward).
 *
 * Gradient-ready listener (df_flat_set_grad_ready): when one is set, the walk also counts the
 * uses of every leaf whose gradient lives in the watched flat buffer, and tells the listener
 * when a leaf's last use has run (its gradient is final for this backward). Nested backwards
 * add their uses to the same counts; a use found after the leaf was reported is an error.
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
    return df_node_new_always(op, out, n_inputs, inputs, state_size, keep_data);
}

df_node *df_node_new_always(const df_op *op, df_tensor *out, int n_inputs, df_tensor *const *inputs,
                            size_t state_size, unsigned keep_data) {
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

/* ---- the gradient-ready listener (data-parallel overlap: train/ddp.c) ---- */

static _Thread_local struct {
    const df_flat *flat; /* NULL: no listener */
    df_grad_ready_fn fn;
    void *ctx;
} ready_listener;

/* Per-thread counts of the watched leaves' pending uses in the running (outermost) backward:
 * an open-addressing table keyed by tensor. */
typedef struct leaf_use {
    const df_tensor *leaf; /* NULL: free */
    int pending;
    bool reported;
} leaf_use;

static _Thread_local struct {
    leaf_use *items;
    size_t cap, len; /* cap: a power of two */
} leaf_uses;

void df_flat_set_grad_ready(const df_flat *flat, df_grad_ready_fn fn, void *ctx) {
    ready_listener.flat = fn ? flat : NULL;
    ready_listener.fn = fn;
    ready_listener.ctx = ctx;
}

/* Whether leaf t's gradient is a slice of the watched flat buffer. */
static bool watched(const df_tensor *t) {
    return !t->node && t->requires_grad && t->grad && t->grad->storage == ready_listener.flat->grad;
}

static size_t leaf_hash(const df_tensor *t, size_t cap) {
    uint64_t h = (uint64_t)(uintptr_t)t * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 17) & (cap - 1);
}

/* The slot of leaf t in the table: its entry, or the free slot where it would go. */
static leaf_use *leaf_slot(const df_tensor *t) {
    size_t j = leaf_hash(t, leaf_uses.cap);
    while (leaf_uses.items[j].leaf && leaf_uses.items[j].leaf != t)
        j = (j + 1) & (leaf_uses.cap - 1);
    return &leaf_uses.items[j];
}

/* The entry of leaf t (inserted with no uses when new), or NULL when out of memory. */
static leaf_use *leaf_use_get(const df_tensor *t) {
    if (2 * (leaf_uses.len + 1) > leaf_uses.cap) {
        size_t cap = leaf_uses.cap ? 2 * leaf_uses.cap : 1024;
        leaf_use *items = calloc(cap, sizeof *items), *old = leaf_uses.items;
        if (!items) return NULL;
        size_t old_cap = leaf_uses.cap;
        leaf_uses.items = items;
        leaf_uses.cap = cap;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].leaf) *leaf_slot(old[i].leaf) = old[i];
        free(old);
    }
    leaf_use *u = leaf_slot(t);
    if (!u->leaf) {
        *u = (leaf_use){t, 0, false};
        leaf_uses.len++;
    }
    return u;
}

static void leaf_uses_clear(void) {
    if (leaf_uses.len) memset(leaf_uses.items, 0, leaf_uses.cap * sizeof *leaf_uses.items);
    leaf_uses.len = 0;
}

/* Counts one more pending use of watched leaf t. */
static df_status leaf_use_add(const df_tensor *t) {
    leaf_use *u = leaf_use_get(t);
    if (!u) return df_error(DF_ERR_NOMEM, "backward: out of memory counting parameter uses");
    if (u->reported)
        return df_error(DF_ERR_INVALID,
                        "backward: a parameter whose gradient was reported final (data-parallel "
                        "overlap) is used again by a nested backward (a parameter shared between "
                        "checkpointed segments); set ddp_bucket_mb to 0");
    u->pending++;
    return DF_OK;
}

/* One use of watched leaf t has run: at the last, the listener hears of it. */
static void leaf_use_done(const df_tensor *t) {
    if (!leaf_uses.cap) return; /* the listener came after collect: nothing counted */
    leaf_use *u = leaf_slot(t); /* present: counted in collect */
    if (!u->leaf || --u->pending > 0) return;
    u->reported = true;
    const df_flat *flat = ready_listener.flat;
    int64_t off = (const float *)t->grad->data - (const float *)flat->grad->data;
    ready_listener.fn(ready_listener.ctx, off, t->numel);
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

/* One running backward: its work lists, its visit epoch and the first failure a node reported.
 * Frames form a per-thread stack (a backward run from inside a node's backward pushes one);
 * a frame and its lists are kept for the next backward at the same depth, so a steady loop of
 * backwards, nested or not, does not call malloc. */
typedef struct backward_frame {
    node_list all, ready;
    uint64_t epoch;
    df_status failed;                    /* df_tape_fail; DF_OK while every node succeeds */
    struct backward_frame *outer, *next; /* the enclosing frame; the cached deeper frame */
} backward_frame;

static _Thread_local backward_frame base_frame;
static _Thread_local backward_frame *frame_top; /* the innermost running backward; NULL: none */

static _Atomic uint64_t visit_epoch; /* shared by threads: each backward takes a fresh epoch */

/* Pushes a frame for a new backward (NULL when a deeper frame cannot be allocated). */
static backward_frame *frame_push(void) {
    backward_frame *f = frame_top ? frame_top->next : &base_frame;
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f) {
            df_error(DF_ERR_NOMEM, "backward: out of memory for a nested backward");
            return NULL;
        }
        frame_top->next = f;
    }
    f->outer = frame_top;
    f->all.len = f->ready.len = 0;
    f->failed = DF_OK;
    f->epoch = atomic_fetch_add(&visit_epoch, 1) + 1;
    frame_top = f;
    return f;
}

static void frame_pop(backward_frame *f) {
    f->all.len = f->ready.len = 0;
    frame_top = f->outer;
}

void df_tape_fail(df_status st) {
    DF_ASSERT(frame_top, "df_tape_fail: no backward is running");
    DF_ASSERT(st != DF_OK, "df_tape_fail: DF_OK is not a failure");
    if (frame_top->failed == DF_OK) frame_top->failed = st;
}

/* True when an enclosing (still running) backward collected n and has not consumed it: a nested
 * backward must not touch it (its pending count belongs to the enclosing walk). */
static bool in_enclosing_backward(const df_node *n, const backward_frame *f) {
    for (const backward_frame *o = f->outer; o; o = o->outer)
        if (n->visit == o->epoch) return true;
    return false;
}

/* Takes node p into the walk of frame f (once), retained, with no consumers counted yet. */
static df_status collect_one(df_node *p, backward_frame *f) {
    if (in_enclosing_backward(p, f))
        return df_error(DF_ERR_INVALID,
                        "backward: a backward run inside a backward reached a node (%s) of the "
                        "enclosing backward's graph; detach the inputs of the recomputed segment "
                        "(df_detach) and route their gradients by hand",
                        p->op->name);
    p->visit = f->epoch;
    p->pending = 0;
    df_node_retain(p);
    return list_push(&f->all, p);
}

/* Every node reachable from root, each once, retained; n->pending = how many reachable nodes
 * consume its output. */
static df_status collect(df_node *root, backward_frame *f) {
    size_t head = 0;
    DF_TRY(collect_one(root, f));
    while (head < f->all.len) {
        df_node *n = f->all.items[head++];
        if (node_consumed(n))
            return df_error(DF_ERR_INVALID,
                            "backward: the graph was already consumed by an earlier backward");
        for (int i = 0; i < n->n_inputs; i++) {
            df_tensor *t = n->inputs[i];
            if (t && !t->node && ready_listener.flat && watched(t)) DF_TRY(leaf_use_add(t));
            if (!t || !t->node) continue;
            df_node *p = t->node;
            if (p->visit != f->epoch) DF_TRY(collect_one(p, f));
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
    backward_frame *f = frame_push();
    if (!f) return DF_ERR_NOMEM;
    if (!f->outer) leaf_uses_clear(); /* nested backwards add to the outermost's counts */
    df_status st = collect(out->node, f);
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
        st = list_push(&f->ready, root);
    }
    bool prev = df_grad_set_enabled(false);
    while (st == DF_OK && f->ready.len > 0) {
        df_node *n = f->ready.items[--f->ready.len];
        if (n->out_grad) n->op->backward(n, n->out_grad);
        st = f->failed; /* a node that failed (df_tape_fail) stops the walk after itself */
        for (int i = 0; i < n->n_inputs && st == DF_OK; i++) {
            df_tensor *t = n->inputs[i];
            if (t && t->node && --t->node->pending == 0) st = list_push(&f->ready, t->node);
        }
        for (int i = 0; ready_listener.flat && st == DF_OK && i < n->n_inputs; i++) {
            df_tensor *t = n->inputs[i];
            if (t && !t->node && watched(t)) leaf_use_done(t);
        }
        node_consume(n);
    }
    df_grad_set_enabled(prev);
    for (size_t i = 0; i < f->all.len; i++) df_node_release(f->all.items[i]);
    frame_pop(f);
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
