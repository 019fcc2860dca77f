/* mem.c — the caching allocator behind tensors, nodes and storages.
 *
 * Sizes are rounded up to 64 bytes; a freed block goes to the free list of its exact rounded
 * size (a small open-addressing table), and the next request of that size takes it back. A
 * training step makes the same shapes every time, so after the first step every request is
 * served from the lists: the steady state never calls the system allocator (counted in
 * df_mem_stats.system_allocs, which the tests watch). A mutex guards the table: loader threads
 * allocate too.
 *
 * Out of memory (contract in autograd.h): a failed system allocation first returns every cached
 * block to the system and tries again; a request past the optional cap (DF_MEM_LIMIT,
 * df_mem_set_limit) fails like a system failure. df_mem_alloc then returns NULL with a message
 * naming the size and what the pool holds; df_mem_oom hands such a message to the installed
 * handler, for allocations that cannot return a status.
 */
#include "autograd/autograd.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN 64
#define TABLE_SIZE 8192 /* distinct block sizes kept; more sizes are freed to the system */

typedef struct free_block {
    struct free_block *next;
} free_block;

typedef struct size_class {
    size_t bytes; /* 0 = empty slot */
    free_block *head;
} size_class;

static size_class table[TABLE_SIZE];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static df_mem_stats stats;

static size_t limit; /* 0: no cap */
static pthread_once_t limit_once = PTHREAD_ONCE_INIT;
static bool limit_set; /* df_mem_set_limit was called: the environment is not read */

/* DF_MEM_LIMIT: bytes, with an optional K, M or G suffix (powers of 1024). */
static void read_limit_env(void) {
    const char *v = getenv("DF_MEM_LIMIT");
    if (!v || !*v) return;
    char *end;
    double x = strtod(v, &end);
    double mul = *end == 'K' || *end == 'k'   ? 1024.0
                 : *end == 'M' || *end == 'm' ? 1024.0 * 1024
                 : *end == 'G' || *end == 'g' ? 1024.0 * 1024 * 1024
                                              : 1.0;
    pthread_mutex_lock(&lock);
    if (!limit_set && x > 0) limit = (size_t)(x * mul);
    pthread_mutex_unlock(&lock);
}

void df_mem_set_limit(size_t bytes) {
    pthread_once(&limit_once, read_limit_env);
    pthread_mutex_lock(&lock);
    limit = bytes;
    limit_set = true;
    pthread_mutex_unlock(&lock);
}

const char *df_mem_format(size_t bytes, char *buf, size_t len) {
    static const char *units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) v /= 1024, u++;
    if (u == 0)
        snprintf(buf, len, "%zu bytes", bytes);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
    return buf;
}

/* Frees every cached block. Caller holds the lock. */
static void trim_locked(void) {
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        while (table[i].head) {
            free_block *b = table[i].head;
            table[i].head = b->next;
            free(b);
        }
    }
    stats.bytes_cached = 0;
}

static size_t round_up(size_t bytes) {
    if (bytes == 0) bytes = 1;
    return (bytes + ALIGN - 1) & ~(size_t)(ALIGN - 1);
}

/* The slot for `bytes`, or NULL when the table is full. Caller holds the lock. */
static size_class *find_class(size_t bytes, bool create) {
    size_t h = (bytes / ALIGN) * 0x9E3779B97F4A7C15ull;
    for (size_t probe = 0; probe < TABLE_SIZE; probe++) {
        size_class *c = &table[(h + probe) & (TABLE_SIZE - 1)];
        if (c->bytes == bytes) return c;
        if (c->bytes == 0) {
            if (!create) return NULL;
            c->bytes = bytes;
            return c;
        }
    }
    return NULL;
}

void *df_mem_alloc(size_t bytes) {
    /* a size near SIZE_MAX would wrap to 0 in round_up and hand out an empty block */
    if (bytes > SIZE_MAX / 2) {
        df_error(DF_ERR_NOMEM, "out of memory allocating %zu bytes (mem.c: size too large)", bytes);
        return NULL;
    }
    pthread_once(&limit_once, read_limit_env);
    size_t n = round_up(bytes);
    pthread_mutex_lock(&lock);
    size_class *c = find_class(n, false);
    void *p = NULL;
    if (c && c->head) {
        p = c->head;
        c->head = c->head->next;
        stats.bytes_cached -= n;
    } else if (limit && stats.bytes_in_use + n > limit) {
        /* past the cap: fail as the system would (the cached blocks are not in use) */
    } else {
        stats.system_allocs++;
        p = aligned_alloc(ALIGN, n);
        if (!p && stats.bytes_cached > 0) { /* give the cache back to the system and retry */
            trim_locked();
            p = aligned_alloc(ALIGN, n);
        }
    }
    if (!p) {
        char want[32], used[32], cached[32];
        df_mem_format(n, want, sizeof want);
        df_mem_format(stats.bytes_in_use, used, sizeof used);
        df_mem_format(stats.bytes_cached, cached, sizeof cached);
        bool capped = limit && stats.bytes_in_use + n > limit;
        char cap[32] = "";
        if (capped) df_mem_format(limit, cap, sizeof cap);
        pthread_mutex_unlock(&lock);
        df_error(DF_ERR_NOMEM, "out of memory allocating %s (%s in use, %s cached%s%s)", want, used,
                 cached, capped ? ", limit " : "", cap);
        return NULL;
    }
    stats.bytes_in_use += n;
    if (stats.bytes_in_use > stats.peak_in_use) stats.peak_in_use = stats.bytes_in_use;
    pthread_mutex_unlock(&lock);
    return p;
}

static void default_oom(const char *msg) {
    fprintf(stderr, "%s\n", msg);
    fflush(stderr);
    abort();
}

static df_oom_handler oom_handler = default_oom;

df_oom_handler df_set_oom_handler(df_oom_handler h) {
    df_oom_handler prev = __atomic_exchange_n(&oom_handler, h ? h : default_oom, __ATOMIC_SEQ_CST);
    return prev == default_oom ? NULL : prev;
}

void df_mem_oom(size_t bytes, const char *what, ...) {
    char name[256], msg[1024], want[32], used[32], cached[32];
    va_list ap;
    va_start(ap, what);
    vsnprintf(name, sizeof name, what, ap);
    va_end(ap);
    df_mem_stats s = df_mem_get_stats();
    if (bytes)
        snprintf(want, sizeof want, ": ");
    else
        want[0] = '\0'; /* the size is not known (memory oneDNN asked the system for) */
    if (bytes) df_mem_format(bytes, want + 2, sizeof want - 2);
    snprintf(msg, sizeof msg, "out of memory allocating %s%s (%s in use, %s cached)", name, want,
             df_mem_format(s.bytes_in_use, used, sizeof used),
             df_mem_format(s.bytes_cached, cached, sizeof cached));
    df_error(DF_ERR_NOMEM, "%s", msg);
    __atomic_load_n(&oom_handler, __ATOMIC_SEQ_CST)(msg);
    abort(); /* a handler must not return */
}

void df_mem_free(void *p, size_t bytes) {
    if (!p) return;
    size_t n = round_up(bytes);
    pthread_mutex_lock(&lock);
    stats.bytes_in_use -= n;
    size_class *c = find_class(n, true);
    if (c) {
        free_block *b = p;
        b->next = c->head;
        c->head = b;
        stats.bytes_cached += n;
        p = NULL;
    }
    pthread_mutex_unlock(&lock);
    free(p);
}

void df_mem_trim(void) {
    pthread_mutex_lock(&lock);
    trim_locked();
    pthread_mutex_unlock(&lock);
}

df_mem_stats df_mem_get_stats(void) {
    pthread_mutex_lock(&lock);
    df_mem_stats s = stats;
    pthread_mutex_unlock(&lock);
    return s;
}
