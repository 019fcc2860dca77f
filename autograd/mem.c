/* mem.c — the caching allocator behind tensors, nodes and storages.
 *
 * Sizes are rounded up to 64 bytes; a freed block goes to the free list of its exact rounded
 * size (a small open-addressing table), and the next request of that size takes it back. A
 * training step makes the same shapes every time, so after the first step every request is
 * served from the lists: the steady state never calls the system allocator (counted in
 * df_mem_stats.system_allocs, which the tests watch). A mutex guards the table: loader threads
 * allocate too.
 */
#include "autograd/autograd.h"

#include <pthread.h>
#include <stdint.h>
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
    size_t n = round_up(bytes);
    pthread_mutex_lock(&lock);
    size_class *c = find_class(n, false);
    void *p = NULL;
    if (c && c->head) {
        p = c->head;
        c->head = c->head->next;
        stats.bytes_cached -= n;
    }
    if (!p) {
        stats.system_allocs++;
        p = aligned_alloc(ALIGN, n);
        if (!p) {
            pthread_mutex_unlock(&lock);
            df_error(DF_ERR_NOMEM, "out of memory allocating %zu bytes", n);
            return NULL;
        }
    }
    stats.bytes_in_use += n;
    if (stats.bytes_in_use > stats.peak_in_use) stats.peak_in_use = stats.bytes_in_use;
    pthread_mutex_unlock(&lock);
    return p;
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
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        while (table[i].head) {
            free_block *b = table[i].head;
            table[i].head = b->next;
            free(b);
        }
    }
    stats.bytes_cached = 0;
    pthread_mutex_unlock(&lock);
}

df_mem_stats df_mem_get_stats(void) {
    pthread_mutex_lock(&lock);
    df_mem_stats s = stats;
    pthread_mutex_unlock(&lock);
    return s;
}
