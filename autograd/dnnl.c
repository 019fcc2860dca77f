/* dnnl.c — the process-wide oneDNN engine and stream, memory descriptor helpers, and the
 * primitive cache (see dnnl_impl.h for the contract).
 *
 * Cache invariants: entries live in a hash table of chains guarded by `cache_lock`; an entry's
 * refcount counts the table (1 while it is in the table) plus every caller holding it; eviction
 * unlinks the least recently used entry and drops the table's reference, so an entry is
 * destroyed only when nobody holds it. Builds run outside the lock: two threads missing the same
 * key both build, and the loser destroys its copy.
 *
 * Memory descriptors carry the tensor's dtype (F32 or BF16); keys carry every argument's dtype.
 *
 * Follows oneDNN v2.6.3 examples/cpu_cnn_training_f32.c (engine/stream once, reorder only on
 * layout mismatch).
 */
#include "autograd/dnnl_impl.h"

#include <oneapi/dnnl/dnnl_debug.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ engine and stream ------- */

static dnnl_engine_t engine;
static dnnl_stream_t stream;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void engine_init(void) {
    DF_DNNL_CHECK("dnnl", dnnl_engine_create(&engine, dnnl_cpu, 0));
    DF_DNNL_CHECK("dnnl", dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
}

dnnl_engine_t df_dnnl_engine(void) {
    pthread_once(&engine_once, engine_init);
    return engine;
}

dnnl_stream_t df_dnnl_stream(void) {
    pthread_once(&engine_once, engine_init);
    return stream;
}

void df_dnnl_fail(const char *opname, const char *call, dnnl_status_t s, const char *file,
                  int line) {
    /* memory oneDNN could not get is the user's out of memory, not our bug */
    if (s == dnnl_out_of_memory) df_mem_oom(0, "oneDNN memory for %s (%s)", opname, call);
    df_error(DF_ERR_DNNL, "%s: %s failed: %s", opname, call, dnnl_status2str(s));
    df_assert_fail(file, line, "%s", df_last_error());
}

dnnl_primitive_attr_t df_dnnl_attr_new(bool sum) {
    dnnl_primitive_attr_t attr;
    DF_DNNL_CHECK("dnnl", dnnl_primitive_attr_create(&attr));
    DF_DNNL_CHECK("dnnl", dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (sum) {
        dnnl_post_ops_t po;
        DF_DNNL_CHECK("dnnl", dnnl_post_ops_create(&po));
        DF_DNNL_CHECK("dnnl", dnnl_post_ops_append_sum(po, 1.0f));
        DF_DNNL_CHECK("dnnl", dnnl_primitive_attr_set_post_ops(attr, po));
        dnnl_post_ops_destroy(po);
    }
    return attr;
}

/* ------------------------------------------------------------------ memory descriptors ------ */

dnnl_data_type_t df_dnnl_dt(df_dtype dt) {
    switch (dt) {
    case DF_DTYPE_F32: return dnnl_f32;
    case DF_DTYPE_BF16: return dnnl_bf16;
    default: DF_ASSERT(0, "dnnl: no oneDNN op takes %s", df_dtype_name(dt));
    }
    return dnnl_f32;
}

dnnl_memory_desc_t df_dnnl_md_tag(df_dtype dt, int ndim, const int64_t *dims,
                                  dnnl_format_tag_t tag) {
    dnnl_memory_desc_t md;
    dnnl_dims_t d;
    for (int i = 0; i < ndim; i++) d[i] = dims[i];
    DF_DNNL_CHECK("dnnl", dnnl_memory_desc_init_by_tag(&md, ndim, d, df_dnnl_dt(dt), tag));
    return md;
}

dnnl_memory_desc_t df_dnnl_md_strides(df_dtype dt, int ndim, const int64_t *dims,
                                      const int64_t *strides) {
    dnnl_memory_desc_t md;
    dnnl_dims_t d, s;
    for (int i = 0; i < ndim; i++) {
        d[i] = dims[i];
        s[i] = strides[i];
    }
    DF_DNNL_CHECK("dnnl", dnnl_memory_desc_init_by_strides(&md, ndim, d, df_dnnl_dt(dt), s));
    return md;
}

dnnl_memory_desc_t df_dnnl_md_plain(df_dtype dt, int ndim, const int64_t *dims) {
    int64_t strides[DNNL_MAX_NDIMS];
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= dims[i];
    }
    return df_dnnl_md_strides(dt, ndim, dims, strides);
}

dnnl_memory_desc_t df_dnnl_md_act(df_dtype dt, const int64_t *dims, int block) {
    dnnl_format_tag_t tag = block == 16 ? dnnl_nChw16c : block == 8 ? dnnl_nChw8c : dnnl_nchw;
    DF_ASSERT(block == 0 || block == 8 || block == 16, "dnnl: channel block %d", block);
    return df_dnnl_md_tag(dt, 4, dims, tag);
}

/* ------------------------------------------------------------------ keys -------------------- */

void df_dnnl_key_push(df_dnnl_key *k, int64_t v) {
    DF_ASSERT(k->n < DF_DNNL_KEY_MAX, "dnnl: primitive key longer than %d", DF_DNNL_KEY_MAX);
    k->v[k->n++] = v;
}

void df_dnnl_key_push_n(df_dnnl_key *k, int n, const int64_t *v) {
    for (int i = 0; i < n; i++) df_dnnl_key_push(k, v[i]);
}

static bool key_equal(const df_dnnl_key *a, const df_dnnl_key *b) {
    return a->kind == b->kind && a->threads == b->threads && a->n == b->n &&
           memcmp(a->v, b->v, (size_t)a->n * 8) == 0;
}

static uint64_t key_hash(const df_dnnl_key *k) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)k->kind ^ ((uint64_t)k->threads << 32);
    for (int i = 0; i < k->n; i++) {
        h ^= (uint64_t)k->v[i];
        h *= 1099511628211ull;
        h ^= h >> 29;
    }
    return h;
}

/* ------------------------------------------------------------------ entries ----------------- */

/* A primitive with its user-managed scratchpad (size 0 = none). */
typedef struct scratch_prim {
    dnnl_primitive_t prim;
    dnnl_memory_desc_t scratch_md;
    size_t scratch_bytes;
} scratch_prim;

typedef struct prim_arg {
    df_dnnl_arg_spec spec;
    dnnl_memory_desc_t prim_md; /* the layout the primitive uses */
    scratch_prim reorder;       /* user <-> primitive layout, .prim NULL when none is needed */
    size_t prim_bytes;
} prim_arg;

struct df_dnnl_prim {
    df_dnnl_key key;
    uint64_t hash;
    int refcount;
    uint64_t last_use;
    struct df_dnnl_prim *next; /* hash chain */
    dnnl_primitive_desc_t pd;
    scratch_prim main;
    int n_args;
    prim_arg args[DF_DNNL_MAX_ARGS];
};

static void scratch_prim_create(scratch_prim *sp, const_dnnl_primitive_desc_t pd) {
    DF_DNNL_CHECK("dnnl", dnnl_primitive_create(&sp->prim, pd));
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    sp->scratch_bytes = md ? dnnl_memory_desc_get_size(md) : 0;
    if (sp->scratch_bytes) sp->scratch_md = *md;
}

static void reorder_create(scratch_prim *out, const dnnl_memory_desc_t *src,
                           const dnnl_memory_desc_t *dst, bool accumulate) {
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(accumulate);
    dnnl_engine_t e = df_dnnl_engine();
    dnnl_primitive_desc_t pd;
    DF_DNNL_CHECK("dnnl", dnnl_reorder_primitive_desc_create(&pd, src, e, dst, e, attr));
    scratch_prim_create(out, pd);
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
}

/* Builds the entry's arguments: the primitive's layout for each and the reorder between. */
static void entry_finish(df_dnnl_prim *p, const df_dnnl_arg_spec *specs) {
    scratch_prim_create(&p->main, p->pd);
    for (int i = 0; i < p->n_args; i++) {
        prim_arg *a = &p->args[i];
        a->spec = specs[i];
        const dnnl_memory_desc_t *md =
            dnnl_primitive_desc_query_md(p->pd, dnnl_query_exec_arg_md, specs[i].arg);
        DF_ASSERT(md && md->ndims > 0, "dnnl: primitive has no argument %d", specs[i].arg);
        a->prim_md = *md;
        a->prim_bytes = dnnl_memory_desc_get_size(md);
        bool same = dnnl_memory_desc_equal(&a->prim_md, &a->spec.user);
        switch (a->spec.dir) {
        case DF_DNNL_IN:
            if (!same) reorder_create(&a->reorder, &a->spec.user, &a->prim_md, false);
            break;
        case DF_DNNL_OUT:
            if (!same) reorder_create(&a->reorder, &a->prim_md, &a->spec.user, false);
            break;
        case DF_DNNL_OUT_ACC: reorder_create(&a->reorder, &a->prim_md, &a->spec.user, true); break;
        }
    }
}

static void entry_destroy(df_dnnl_prim *p) {
    for (int i = 0; i < p->n_args; i++)
        if (p->args[i].reorder.prim) dnnl_primitive_destroy(p->args[i].reorder.prim);
    if (p->main.prim) dnnl_primitive_destroy(p->main.prim);
    if (p->pd) dnnl_primitive_desc_destroy(p->pd);
    free(p);
}

/* ------------------------------------------------------------------ the cache --------------- */

#define CACHE_BUCKETS 256

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static df_dnnl_prim *buckets[CACHE_BUCKETS];
static int n_entries;
static uint64_t use_clock, n_hits, n_misses;

static df_dnnl_prim *lookup_locked(const df_dnnl_key *key, uint64_t h) {
    for (df_dnnl_prim *p = buckets[h % CACHE_BUCKETS]; p; p = p->next)
        if (p->hash == h && key_equal(&p->key, key)) return p;
    return NULL;
}

/* Unlinks the least recently used entry and drops the table's reference to it. */
static void evict_one_locked(void) {
    df_dnnl_prim **victim = NULL;
    for (int b = 0; b < CACHE_BUCKETS; b++)
        for (df_dnnl_prim **pp = &buckets[b]; *pp; pp = &(*pp)->next)
            if (!victim || (*pp)->last_use < (*victim)->last_use) victim = pp;
    if (!victim) return;
    df_dnnl_prim *p = *victim;
    *victim = p->next;
    n_entries--;
    if (--p->refcount == 0) entry_destroy(p);
}

df_dnnl_prim *df_dnnl_prim_get(const df_dnnl_key *user_key, df_dnnl_build_fn build, void *ctx) {
    /* oneDNN fixes a primitive's thread count when it is created: the key includes it, so a
     * change of omp_set_num_threads gets new primitives instead of silently keeping the old
     * count */
    df_dnnl_key k = *user_key;
    df_dnnl_key_push(&k, k.threads ? k.threads : omp_get_max_threads());
    const df_dnnl_key *key = &k;
    uint64_t h = key_hash(key);
    pthread_mutex_lock(&cache_lock);
    df_dnnl_prim *p = lookup_locked(key, h);
    if (p) {
        p->refcount++;
        p->last_use = ++use_clock;
        n_hits++;
        pthread_mutex_unlock(&cache_lock);
        return p;
    }
    n_misses++;
    pthread_mutex_unlock(&cache_lock);

    df_dnnl_prim *fresh = calloc(1, sizeof *fresh);
    if (!fresh) df_mem_oom(sizeof *fresh, "a oneDNN primitive cache entry");
    fresh->key = *key;
    fresh->hash = h;
    df_dnnl_arg_spec specs[DF_DNNL_MAX_ARGS];
    memset(specs, 0, sizeof specs);
    /* oneDNN reads the thread count when it creates the primitive descriptor */
    int prev_threads = omp_get_max_threads();
    if (key->threads) omp_set_num_threads(key->threads);
    build(ctx, &fresh->pd, &fresh->n_args, specs);
    DF_ASSERT(fresh->n_args >= 0 && fresh->n_args <= DF_DNNL_MAX_ARGS, "dnnl: %d arguments",
              fresh->n_args);
    entry_finish(fresh, specs);
    if (key->threads) omp_set_num_threads(prev_threads);

    pthread_mutex_lock(&cache_lock);
    p = lookup_locked(key, h);
    if (p) { /* another thread built it meanwhile */
        p->refcount++;
        p->last_use = ++use_clock;
        pthread_mutex_unlock(&cache_lock);
        entry_destroy(fresh);
        return p;
    }
    while (n_entries >= DF_DNNL_CACHE_CAPACITY) evict_one_locked();
    fresh->refcount = 2; /* the table and the caller */
    fresh->last_use = ++use_clock;
    fresh->next = buckets[h % CACHE_BUCKETS];
    buckets[h % CACHE_BUCKETS] = fresh;
    n_entries++;
    pthread_mutex_unlock(&cache_lock);
    return fresh;
}

void df_dnnl_prim_put(df_dnnl_prim *p) {
    if (!p) return;
    pthread_mutex_lock(&cache_lock);
    bool dead = --p->refcount == 0;
    pthread_mutex_unlock(&cache_lock);
    if (dead) entry_destroy(p);
}

const_dnnl_primitive_desc_t df_dnnl_prim_pd(const df_dnnl_prim *p) {
    return p->pd;
}

df_dnnl_cache_stats df_dnnl_cache_get_stats(void) {
    pthread_mutex_lock(&cache_lock);
    df_dnnl_cache_stats s = {n_entries, n_hits, n_misses};
    pthread_mutex_unlock(&cache_lock);
    return s;
}

/* ------------------------------------------------------------------ execution --------------- */

/* Executes sp with n arguments plus its scratchpad (allocated from the pool for this call). */
static void run_scratch(const char *opname, const scratch_prim *sp, int n, dnnl_exec_arg_t *args) {
    void *buf = NULL;
    dnnl_memory_t mem = NULL;
    if (sp->scratch_bytes) {
        buf = df_mem_alloc(sp->scratch_bytes);
        if (!buf) df_mem_oom(sp->scratch_bytes, "the scratchpad of %s", opname);
        DF_DNNL_CHECK(opname, dnnl_memory_create(&mem, &sp->scratch_md, df_dnnl_engine(), buf));
        args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mem};
    }
    DF_DNNL_CHECK(opname, dnnl_primitive_execute(sp->prim, df_dnnl_stream(), n, args));
    if (mem) {
        /* the stream is in-order and CPU execution synchronous, but wait before freeing anyway */
        DF_DNNL_CHECK(opname, dnnl_stream_wait(df_dnnl_stream()));
        dnnl_memory_destroy(mem);
        df_mem_free(buf, sp->scratch_bytes);
    }
}

static void run_reorder(const char *opname, const scratch_prim *r, dnnl_memory_t from,
                        dnnl_memory_t to) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    run_scratch(opname, r, 2, args);
}

void df_dnnl_prim_run(const char *opname, df_dnnl_prim *p, void *const *ptrs) {
    /* ... and some implementations read it again when they execute */
    int prev_threads = omp_get_max_threads();
    if (p->key.threads) omp_set_num_threads(p->key.threads);
    dnnl_engine_t e = df_dnnl_engine();
    dnnl_memory_t user[DF_DNNL_MAX_ARGS] = {0}, prim[DF_DNNL_MAX_ARGS] = {0};
    void *tmp[DF_DNNL_MAX_ARGS] = {0};
    dnnl_exec_arg_t exec[DF_DNNL_MAX_ARGS + 1];
    for (int i = 0; i < p->n_args; i++) {
        prim_arg *a = &p->args[i];
        DF_DNNL_CHECK(opname, dnnl_memory_create(&user[i], &a->spec.user, e, ptrs[i]));
        if (a->reorder.prim) {
            tmp[i] = df_mem_alloc(a->prim_bytes);
            if (!tmp[i]) df_mem_oom(a->prim_bytes, "a reordered argument of %s", opname);
            DF_DNNL_CHECK(opname, dnnl_memory_create(&prim[i], &a->prim_md, e, tmp[i]));
            if (a->spec.dir == DF_DNNL_IN) run_reorder(opname, &a->reorder, user[i], prim[i]);
        }
        exec[i] = (dnnl_exec_arg_t){a->spec.arg, a->reorder.prim ? prim[i] : user[i]};
    }
    run_scratch(opname, &p->main, p->n_args, exec);
    for (int i = 0; i < p->n_args; i++) {
        prim_arg *a = &p->args[i];
        if (a->reorder.prim && a->spec.dir != DF_DNNL_IN)
            run_reorder(opname, &a->reorder, prim[i], user[i]);
    }
    DF_DNNL_CHECK(opname, dnnl_stream_wait(df_dnnl_stream()));
    for (int i = 0; i < p->n_args; i++) {
        dnnl_memory_destroy(user[i]);
        if (prim[i]) dnnl_memory_destroy(prim[i]);
        if (tmp[i]) df_mem_free(tmp[i], p->args[i].prim_bytes);
    }
    if (p->key.threads) omp_set_num_threads(prev_threads);
}
