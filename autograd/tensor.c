/* tensor.c — tensor and storage lifetimes, creation, views, dtype copies, and scopes.
 *
 * Invariants: a tensor is contiguous row-major over `numel` elements starting at `data`, inside
 * its storage. Reference counts are plain ints: a tensor is used by one thread at a time (the
 * loader hands batches over through a locked queue). Releasing is iterative (a thread-local
 * work list), so freeing the last reference to a deep graph cannot overflow the stack.
 */
#include "autograd/autograd_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ release work list -------- */

typedef struct pending_item {
    bool is_node;
    void *p;
} pending_item;

static _Thread_local pending_item *pending;
static _Thread_local size_t n_pending, cap_pending;
static _Thread_local bool draining;
static _Thread_local df_tensor **scope_stack;
static _Thread_local size_t scope_len, scope_cap;
static _Thread_local int scope_depth;

/* The per-thread lists above are freed when their thread exits (loader workers come and go). */
static pthread_key_t thread_lists_key;
static pthread_once_t thread_lists_once = PTHREAD_ONCE_INIT;

static void free_thread_lists(void *unused) {
    (void)unused;
    free(pending);
    pending = NULL;
    n_pending = cap_pending = 0;
    free(scope_stack);
    scope_stack = NULL;
    scope_len = scope_cap = 0;
}

static void make_thread_lists_key(void) {
    DF_ASSERT(pthread_key_create(&thread_lists_key, free_thread_lists) == 0,
              "pthread_key_create failed");
}

/* Called before a thread's first list allocation: arranges for the lists to be freed. */
static void register_thread_lists(void) {
    pthread_once(&thread_lists_once, make_thread_lists_key);
    if (!pthread_getspecific(thread_lists_key)) pthread_setspecific(thread_lists_key, (void *)1);
}

static void push_pending(bool is_node, void *p) {
    if (n_pending == cap_pending) {
        register_thread_lists();
        cap_pending = cap_pending ? 2 * cap_pending : 256;
        pending = realloc(pending, cap_pending * sizeof *pending);
        DF_ASSERT(pending, "out of memory growing the release list");
    }
    pending[n_pending++] = (pending_item){is_node, p};
}

void df_storage_release(df_storage *s) {
    if (!s || --s->refcount > 0) return; /* NULL: a gradient-routing header (tape.c) */
    if (!s->external) df_mem_free(s->data, s->bytes);
    df_mem_free(s, sizeof *s);
}

static void destroy_tensor(df_tensor *t) {
    df_storage_release(t->storage);
    if (t->grad) df_tensor_free(t->grad);
    if (t->node) df_node_release(t->node);
    df_mem_free(t, sizeof *t);
}

static void destroy_node(df_node *n) {
    for (int i = 0; i < n->n_inputs; i++) df_tensor_free(n->inputs[i]);
    for (int i = 0; i < DF_NODE_MAX_SAVED; i++) df_tensor_free(n->saved[i]);
    df_tensor_free(n->out_grad);
    if (n->op && n->op->free_state) n->op->free_state(n->state);
    df_mem_free(n, n->alloc_bytes);
}

static void drain(void) {
    if (draining) return;
    draining = true;
    while (n_pending > 0) {
        pending_item it = pending[--n_pending];
        if (it.is_node)
            destroy_node(it.p);
        else
            destroy_tensor(it.p);
    }
    draining = false;
}

/* Drops one reference (the shared path of df_tensor_free and df_scope_end). */
static void release(df_tensor *t) {
    DF_ASSERT(t->refcount > 0, "df_tensor_free: tensor already freed");
    if (--t->refcount > 0) return;
    push_pending(false, t);
    drain();
}

void df_tensor_free(df_tensor *t) {
    if (!t) return;
    /* freeing the reference a scope holds would free the tensor twice (here and at scope end) */
    DF_ASSERT(!(t->scoped && t->refcount == 1),
              "df_tensor_free: the tensor belongs to the open scope; make temporaries you free "
              "with df_tensor_new_owned (or retain before freeing)");
    release(t);
}

df_tensor *df_tensor_retain(df_tensor *t) {
    t->refcount++;
    return t;
}

void df_node_retain(df_node *n) {
    n->refcount++;
}

void df_node_release(df_node *n) {
    if (!n) return;
    if (--n->refcount > 0) return;
    push_pending(true, n);
    drain();
}

/* ------------------------------------------------------------------ scopes ------------------- */

df_scope df_scope_begin(void) {
    scope_depth++;
    return (df_scope){scope_len};
}

void df_scope_end(df_scope s) {
    DF_ASSERT(scope_depth > 0 && s.mark <= scope_len, "df_scope_end without a matching begin");
    while (scope_len > s.mark) {
        df_tensor *t = scope_stack[--scope_len];
        t->scoped = false;
        release(t);
    }
    scope_depth--;
}

static void scope_adopt(df_tensor *t) {
    if (scope_depth == 0) return;
    DF_ASSERT(!t->scoped, "a tensor was handed to a scope twice");
    t->scoped = true;
    if (scope_len == scope_cap) {
        register_thread_lists();
        scope_cap = scope_cap ? 2 * scope_cap : 1024;
        scope_stack = realloc(scope_stack, scope_cap * sizeof *scope_stack);
        DF_ASSERT(scope_stack, "out of memory growing a scope");
    }
    scope_stack[scope_len++] = t;
}

df_tensor *df_scope_end_keep(df_scope s, df_tensor *keep) {
    keep->refcount++; /* our own reference across the end of the scope */
    df_scope_end(s);
    if (keep->scoped || scope_depth == 0) {
        /* already owned by an enclosing scope (made before s began), or no scope is left and the
         * caller takes our reference */
        if (keep->scoped) release(keep);
        return keep;
    }
    scope_adopt(keep); /* our reference becomes the enclosing scope's */
    return keep;
}

df_scope_pause df_scope_suspend(void) {
    df_scope_pause p = {scope_depth};
    scope_depth = 0;
    return p;
}

void df_scope_resume(df_scope_pause p) {
    DF_ASSERT(scope_depth == 0, "df_scope_resume: a scope opened after suspend is still open");
    scope_depth = p.depth;
}

df_tensor *df_tensor_adopt(df_tensor *t) {
    scope_adopt(t);
    return t;
}

/* ------------------------------------------------------------------ creation ----------------- */

/* A header without storage, or NULL when memory is short (DF_ERR_NOMEM set). */
static df_tensor *tensor_header_try(df_dtype dt, int ndim, const int64_t *shape) {
    DF_ASSERT(ndim >= 0 && ndim <= DF_MAX_DIMS, "tensor: %d dims (at most %d)", ndim, DF_MAX_DIMS);
    df_tensor *t = df_mem_alloc(sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        DF_ASSERT(shape[i] >= 0, "tensor: negative dim %lld", (long long)shape[i]);
        t->shape[i] = shape[i];
        t->numel *= shape[i];
    }
    t->refcount = 1;
    return t;
}

static df_tensor *tensor_header(df_dtype dt, int ndim, const int64_t *shape) {
    df_tensor *t = tensor_header_try(dt, ndim, shape);
    if (!t) df_mem_oom(sizeof *t, "a tensor header");
    return t;
}

/* "tensor F32 (2, 3, 4)": what an allocation was for, in out-of-memory messages. */
static const char *tensor_desc(const df_tensor *t, char *buf, size_t len) {
    int k = snprintf(buf, len, "tensor %s (", df_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && k > 0 && (size_t)k < len; i++)
        k += snprintf(buf + k, len - (size_t)k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k > 0 && (size_t)k < len) snprintf(buf + k, len - (size_t)k, ")");
    return buf;
}

/* A storage of `bytes`, or NULL (DF_ERR_NOMEM naming `t` when given) when memory is short. */
static df_storage *storage_try_new(size_t bytes, const df_tensor *t) {
    df_storage *s = df_mem_alloc(sizeof *s);
    if (!s) return NULL;
    s->refcount = 1;
    s->external = false;
    s->bytes = bytes;
    s->data = df_mem_alloc(bytes);
    if (!s->data) {
        df_mem_free(s, sizeof *s);
        if (t) {
            char what[160], msg[1024];
            snprintf(msg, sizeof msg, "%s", df_last_error());
            df_error(DF_ERR_NOMEM, "%s for a %s", msg, tensor_desc(t, what, sizeof what));
        }
        return NULL;
    }
    return s;
}

df_storage *df_storage_new(size_t bytes) {
    df_storage *s = storage_try_new(bytes, NULL);
    if (!s) df_mem_oom(bytes, "a storage");
    return s;
}

df_tensor *df_tensor_new_unscoped(df_dtype dt, int ndim, const int64_t *shape) {
    df_tensor *t = tensor_header(dt, ndim, shape);
    size_t bytes = (size_t)t->numel * df_dtype_size(dt);
    t->storage = storage_try_new(bytes, t);
    if (!t->storage) {
        char what[160];
        df_mem_oom(bytes, "%s", tensor_desc(t, what, sizeof what));
    }
    t->data = t->storage->data;
    return t;
}

df_storage *df_storage_try_new(size_t bytes) {
    return storage_try_new(bytes, NULL);
}

df_status df_tensor_try_new_owned(df_dtype dt, int ndim, const int64_t *shape, df_tensor **out) {
    *out = NULL;
    df_tensor *t = tensor_header_try(dt, ndim, shape);
    if (!t) return DF_ERR_NOMEM;
    t->storage = storage_try_new((size_t)t->numel * df_dtype_size(dt), t);
    if (!t->storage) {
        df_mem_free(t, sizeof *t);
        return DF_ERR_NOMEM;
    }
    t->data = t->storage->data;
    *out = t;
    return DF_OK;
}

void df_tensor_rebind(df_tensor *t, df_storage *s, int64_t offset) {
    DF_ASSERT((size_t)(offset + t->numel) * df_dtype_size(t->dtype) <= s->bytes,
              "rebind: %lld elements at %lld past a storage of %zu bytes", (long long)t->numel,
              (long long)offset, s->bytes);
    s->refcount++;
    df_storage_release(t->storage);
    t->storage = s;
    t->data = (char *)s->data + (size_t)offset * df_dtype_size(t->dtype);
}

df_tensor *df_tensor_new_owned(df_dtype dt, int ndim, const int64_t *shape) {
    return df_tensor_new_unscoped(dt, ndim, shape);
}

df_tensor *df_tensor_new(df_dtype dt, int ndim, const int64_t *shape) {
    df_tensor *t = df_tensor_new_unscoped(dt, ndim, shape);
    scope_adopt(t);
    return t;
}

df_tensor *df_zeros(df_dtype dt, int ndim, const int64_t *shape) {
    df_tensor *t = df_tensor_new(dt, ndim, shape);
    memset(t->data, 0, (size_t)t->numel * df_dtype_size(dt));
    return t;
}

df_tensor *df_full(df_dtype dt, int ndim, const int64_t *shape, double value) {
    df_tensor *t = df_tensor_new(dt, ndim, shape);
    df_tensor_fill_(t, value);
    return t;
}

df_tensor *df_ones(df_dtype dt, int ndim, const int64_t *shape) {
    return df_full(dt, ndim, shape, 1.0);
}

/* Stores v as element i of a tensor of dtype dt. */
static void store_double(void *data, df_dtype dt, int64_t i, double v) {
    switch (dt) {
    case DF_DTYPE_F32: ((float *)data)[i] = (float)v; break;
    case DF_DTYPE_BF16: ((uint16_t *)data)[i] = df_f32_to_bf16((float)v); break;
    case DF_DTYPE_F16: ((uint16_t *)data)[i] = df_f32_to_f16((float)v); break;
    case DF_DTYPE_F64: ((double *)data)[i] = v; break;
    case DF_DTYPE_I32: ((int32_t *)data)[i] = (int32_t)v; break;
    case DF_DTYPE_I64: ((int64_t *)data)[i] = (int64_t)v; break;
    /* through int64: a double outside 0..255 converted straight to uint8_t is undefined
     * behaviour (UBSan flags it); int64 -> uint8 wraps modulo 256, as x86 has always done */
    case DF_DTYPE_U8: ((uint8_t *)data)[i] = (uint8_t)(int64_t)v; break;
    default: DF_ASSERT(0, "bad dtype");
    }
}

static double load_double(const void *data, df_dtype dt, int64_t i) {
    switch (dt) {
    case DF_DTYPE_F32: return ((const float *)data)[i];
    case DF_DTYPE_BF16: return df_bf16_to_f32(((const uint16_t *)data)[i]);
    case DF_DTYPE_F16: return df_f16_to_f32(((const uint16_t *)data)[i]);
    case DF_DTYPE_F64: return ((const double *)data)[i];
    case DF_DTYPE_I32: return ((const int32_t *)data)[i];
    case DF_DTYPE_I64: return (double)((const int64_t *)data)[i];
    case DF_DTYPE_U8: return ((const uint8_t *)data)[i];
    default: DF_ASSERT(0, "bad dtype");
    }
    return 0;
}

void df_tensor_fill_(df_tensor *t, double value) {
    if (t->dtype == DF_DTYPE_F32) {
        float v = (float)value, *p = t->data;
        for (int64_t i = 0; i < t->numel; i++) p[i] = v;
        return;
    }
    for (int64_t i = 0; i < t->numel; i++) store_double(t->data, t->dtype, i, value);
}

df_tensor *df_arange(df_dtype dt, double start, double end, double step) {
    DF_ASSERT(step != 0, "arange: step is 0");
    double span = ceil((end - start) / step);
    int64_t n = span > 0 ? (int64_t)span : 0;
    df_tensor *t = df_tensor_new(dt, 1, &n);
    for (int64_t i = 0; i < n; i++) store_double(t->data, dt, i, start + (double)i * step);
    return t;
}

df_tensor *df_from_data(df_dtype dt, int ndim, const int64_t *shape, const void *src) {
    df_tensor *t = df_tensor_new(dt, ndim, shape);
    memcpy(t->data, src, (size_t)t->numel * df_dtype_size(dt));
    return t;
}

df_tensor *df_tensor_wrap(df_dtype dt, int ndim, const int64_t *shape, void *data) {
    df_tensor *t = tensor_header(dt, ndim, shape);
    df_storage *s = df_mem_alloc(sizeof *s);
    if (!s) df_mem_oom(sizeof *s, "a storage header");
    *s = (df_storage){.refcount = 1,
                      .external = true,
                      .data = data,
                      .bytes = (size_t)t->numel * df_dtype_size(dt)};
    t->storage = s;
    t->data = data;
    scope_adopt(t);
    return t;
}

static void convert(void *dst, df_dtype ddt, const void *src, df_dtype sdt, int64_t n) {
    if (ddt == sdt) {
        memcpy(dst, src, (size_t)n * df_dtype_size(ddt));
    } else if (sdt == DF_DTYPE_F32 && ddt == DF_DTYPE_BF16) {
        const float *s = src;
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = df_f32_to_bf16(s[i]);
    } else if (sdt == DF_DTYPE_BF16 && ddt == DF_DTYPE_F32) {
        const uint16_t *s = src;
        float *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = df_bf16_to_f32(s[i]);
    } else if (sdt == DF_DTYPE_I64 && ddt == DF_DTYPE_I32) {
        const int64_t *s = src;
        int32_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = (int32_t)s[i];
    } else {
        for (int64_t i = 0; i < n; i++) store_double(dst, ddt, i, load_double(src, sdt, i));
    }
}

df_tensor *df_tensor_new_like(df_dtype dt, const df_tensor *t) {
    df_tensor *r = df_tensor_new(dt, t->ndim, t->shape);
    r->block = t->block;
    return r;
}

df_tensor *df_tensor_to(const df_tensor *t, df_dtype dt) {
    df_tensor *r = df_tensor_new_like(dt, t);
    convert(r->data, dt, t->data, t->dtype, t->numel);
    return r;
}

df_tensor *df_tensor_clone(const df_tensor *t) {
    return df_tensor_to(t, t->dtype);
}

void df_tensor_copy_(df_tensor *dst, const df_tensor *src) {
    DF_ASSERT(dst->numel == src->numel, "copy_: %lld elements into %lld", (long long)src->numel,
              (long long)dst->numel);
    DF_ASSERT(dst->block == src->block, "copy_: layout nChw%dc into nChw%dc (0: plain)", src->block,
              dst->block);
    convert(dst->data, dst->dtype, src->data, src->dtype, src->numel);
}

static df_tensor *view_unscoped(const df_tensor *t, int ndim, const int64_t *shape,
                                int64_t offset) {
    df_tensor *v = tensor_header(t->dtype, ndim, shape);
    /* a channel-blocked tensor has aliases, not views of another shape */
    if (t->block) {
        DF_ASSERT(offset == 0 && df_tensor_same_shape(v, t),
                  "view: a channel-blocked (nChw%dc) tensor cannot be viewed with another shape; "
                  "convert it with df_to_plain first",
                  t->block);
        v->block = t->block;
    }
    DF_ASSERT(offset >= 0 && offset + v->numel <= t->numel,
              "view: %lld elements at offset %lld of a tensor of %lld", (long long)v->numel,
              (long long)offset, (long long)t->numel);
    v->storage = t->storage;
    v->storage->refcount++;
    v->data = (char *)t->data + (size_t)offset * df_dtype_size(t->dtype);
    return v;
}

df_tensor *df_tensor_view(const df_tensor *t, int ndim, const int64_t *shape, int64_t offset) {
    df_tensor *v = view_unscoped(t, ndim, shape, offset);
    scope_adopt(v);
    return v;
}

df_tensor *df_detach(const df_tensor *t) {
    return df_tensor_view(t, t->ndim, t->shape, 0);
}

/* A detached alias owned by the caller only (for node internals). */
df_tensor *df_detach_unscoped(const df_tensor *t) {
    return view_unscoped(t, t->ndim, t->shape, 0);
}

void df_tensor_set_requires_grad(df_tensor *t, bool on) {
    DF_ASSERT(t->node == NULL, "set_requires_grad: only leaves (tensors no op made)");
    DF_ASSERT(!on || df_dtype_is_float(t->dtype), "set_requires_grad: %s tensor",
              df_dtype_name(t->dtype));
    t->requires_grad = on;
}

void df_tensor_zero_grad(df_tensor *t) {
    if (t->grad) memset(t->grad->data, 0, (size_t)t->grad->numel * df_dtype_size(t->grad->dtype));
}

double df_tensor_get(const df_tensor *t, int64_t i) {
    DF_ASSERT(i >= 0 && i < t->numel, "get: index %lld of %lld", (long long)i, (long long)t->numel);
    return load_double(t->data, t->dtype, i);
}

bool df_tensor_same_shape(const df_tensor *a, const df_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

char *df_shape_str(const df_tensor *t, char *buf, size_t len) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, len - k, "[");
    for (int i = 0; i < t->ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < len) snprintf(buf + k, len - k, "]");
    return buf;
}

int df_dim_norm(const char *opname, int dim, int ndim) {
    int n = ndim > 0 ? ndim : 1; /* a scalar takes dim 0 or -1, as torch's maybe_wrap_dim */
    int d = dim < 0 ? dim + n : dim;
    DF_ASSERT(d >= 0 && d < n, "%s: dim %d out of range for %d dims", opname, dim, ndim);
    return d;
}
