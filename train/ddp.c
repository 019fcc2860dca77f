/* ddp.c — the gradient sum over ranks in buckets, overlapped with backward (docs/clusters.md,
 * as PyTorch's DistributedDataParallel): the flat gradient buffer is cut at parameter
 * boundaries into buckets of about ddp_bucket_mb, from its end (backward finishes the last
 * registered parameters first). During the last backward of a step the tape reports each
 * parameter whose gradient is final (df_flat_set_grad_ready); when every parameter of a bucket
 * is, and every bucket before it has started, the bucket's sum starts with non-blocking MPI and
 * the next reports drive MPI's progress (MPI_Test). df_ddp_finish starts what is left and waits.
 *
 * Each bucket is summed as df_dist_sum_f32 sums (dist.c): rank r owns slice r of the bucket;
 * MPI_Ialltoall (in place) brings it every rank's slice r, r adds them in rank order, ((g0 +
 * g1) + g2) + ..., and MPI_Iallgather (in place) hands the sums to all. The elements past the
 * last whole slice (fewer than world size) are gathered from every rank and added in rank order
 * by each. So every element is the same rank-order sum whatever the buckets: the bits do not
 * depend on ddp_bucket_mb, on MPI's algorithms or on timing. Collectives on one communicator
 * must start in the same order on every rank: buckets start in bucket order on one duplicate of
 * MPI_COMM_WORLD (all-to-all and tail gather), their all-gathers in bucket order on another.
 * Without MPI (or with one rank) there is nothing to sum and df_ddp_new is refused.
 */
#include "train/train.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef DF_HAVE_MPI
#include <mpi.h>

enum { B_IDLE, B_EXCHANGE, B_GATHER, B_DONE };

typedef struct ddp_bucket {
    int64_t start, n; /* elements [start, start + n) of the flat gradient buffer */
    int slice;        /* n / world: each rank's share of the in-place exchange */
    int tail;         /* n - slice * world elements summed by gathering them */
    int pending;      /* its parameters not yet reported in this backward */
    int params;       /* its parameter count */
    int state;
    MPI_Request exchange, tail_gather, gather;
    float *tail_buf; /* tail + world x tail floats: this rank's tail, then every rank's */
} ddp_bucket;

typedef struct ddp_param {
    int64_t off;
    int bucket;
    bool ready;
} ddp_param;

struct df_ddp {
    const df_flat *flat;
    float *grad;
    int rank, world;
    MPI_Comm comm_a, comm_b; /* exchanges and tail gathers; all-gathers */
    ddp_bucket *buckets;     /* buckets[0] ends the flat buffer */
    int n_buckets;
    ddp_param *params; /* by offset */
    int n_params;
    int next_start;  /* the first bucket not started */
    int next_gather; /* the first bucket whose exchange is not finished */
    double hook_secs;
    int early, exchanged; /* buckets started, and exchanged, while backward ran (this step) */
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int by_offset(const void *a, const void *b) {
    const ddp_param *x = a, *y = b;
    return (x->off > y->off) - (x->off < y->off);
}

df_status df_ddp_new(const df_flat *flat, df_tensor *const *params, int n, double bucket_mb,
                     df_ddp **out) {
    *out = NULL;
    int rank, world;
    DF_TRY(df_dist_init(&rank, &world));
    if (world < 2) return df_error(DF_ERR_INVALID, "ddp: one rank has nothing to sum");
    if (!(bucket_mb > 0)) return df_error(DF_ERR_INVALID, "ddp_bucket_mb must be positive");
    df_ddp *d = calloc(1, sizeof *d);
    if (!d) return df_error(DF_ERR_NOMEM, "ddp: out of memory");
    d->flat = flat;
    d->grad = df_flat_grad(flat);
    d->rank = rank;
    d->world = world;
    d->comm_a = d->comm_b = MPI_COMM_NULL;
    d->params = calloc((size_t)(n > 0 ? n : 1), sizeof *d->params);
    d->buckets = calloc((size_t)(n > 0 ? n : 1), sizeof *d->buckets); /* at most one each */
    if (!d->params || !d->buckets) goto nomem;
    for (int i = 0; i < n; i++) {
        const df_tensor *g = params[i]->grad;
        DF_ASSERT(g && g->storage == flat->grad, "ddp: parameter %d is not in the flat buffer", i);
        d->params[i].off = (const float *)g->data - d->grad;
    }
    d->n_params = n;
    qsort(d->params, (size_t)n, sizeof *d->params, by_offset);
    /* buckets from the end: whole parameters (their padding included) until the size is
     * reached; a bucket's elements are at most INT_MAX / 2 per rank share */
    int64_t target = (int64_t)(bucket_mb * 1048576.0 / sizeof(float));
    if (target < 1) target = 1;
    int64_t end = flat->numel;
    for (int i = n - 1; i >= 0;) {
        ddp_bucket *b = &d->buckets[d->n_buckets];
        int64_t start = end;
        int count = 0;
        while (i >= 0 && (count == 0 || end - d->params[i].off <= target)) {
            start = d->params[i].off;
            d->params[i--].bucket = d->n_buckets;
            count++;
        }
        if (i < 0) start = 0; /* the first bucket starts the buffer */
        b->start = start;
        b->n = end - start;
        if (b->n / world > (1 << 30)) {
            df_ddp_free(d);
            return df_error(DF_ERR_INVALID,
                            "ddp: a parameter of %lld floats is too large for one bucket's "
                            "exchange (at most 2^30 floats per rank)",
                            (long long)b->n);
        }
        b->slice = (int)(b->n / world);
        b->tail = (int)(b->n - (int64_t)b->slice * world);
        b->params = count;
        if (b->tail > 0) {
            b->tail_buf = malloc((size_t)b->tail * (size_t)(world + 1) * sizeof(float));
            if (!b->tail_buf) goto nomem;
        }
        d->n_buckets++;
        end = start;
    }
    if (MPI_Comm_dup(MPI_COMM_WORLD, &d->comm_a) != MPI_SUCCESS ||
        MPI_Comm_dup(MPI_COMM_WORLD, &d->comm_b) != MPI_SUCCESS) {
        df_ddp_free(d);
        return df_error(DF_ERR_IO, "ddp: MPI_Comm_dup failed");
    }
    *out = d;
    return DF_OK;
nomem:
    df_ddp_free(d);
    return df_error(DF_ERR_NOMEM, "ddp: out of memory for %d buckets", n);
}

void df_ddp_free(df_ddp *d) {
    if (!d) return;
    for (int i = 0; i < d->n_buckets; i++) free(d->buckets[i].tail_buf);
    if (d->comm_a != MPI_COMM_NULL) MPI_Comm_free(&d->comm_a);
    if (d->comm_b != MPI_COMM_NULL) MPI_Comm_free(&d->comm_b);
    free(d->buckets);
    free(d->params);
    free(d);
}

int df_ddp_bucket_count(const df_ddp *d) {
    return d->n_buckets;
}

int df_ddp_started_early(const df_ddp *d, int *exchanged) {
    if (exchanged) *exchanged = d->exchanged;
    return d->early;
}

/* Starts bucket b's exchange (and its tail's gather) on comm_a. */
static void bucket_start(df_ddp *d, ddp_bucket *b) {
    float *x = d->grad + b->start;
    b->exchange = b->tail_gather = b->gather = MPI_REQUEST_NULL;
    if (b->slice > 0)
        MPI_Ialltoall(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, b->slice, MPI_FLOAT, d->comm_a,
                      &b->exchange);
    if (b->tail > 0) {
        int64_t main_n = (int64_t)b->slice * d->world;
        memcpy(b->tail_buf, x + main_n, (size_t)b->tail * sizeof(float));
        MPI_Iallgather(b->tail_buf, b->tail, MPI_FLOAT, b->tail_buf + b->tail, b->tail, MPI_FLOAT,
                       d->comm_a, &b->tail_gather);
    }
    b->state = B_EXCHANGE;
}

/* Bucket b's exchange is done: this rank's slice summed in rank order, the all-gather started
 * on comm_b. */
static void bucket_exchanged(df_ddp *d, ddp_bucket *b) {
    if (b->slice > 0) {
        float *x = d->grad + b->start, *mine = x + (size_t)d->rank * (size_t)b->slice;
        int s = b->slice;
        for (int i = 0; i < s; i++) {
            float acc = x[i];
            for (int r = 1; r < d->world; r++) acc += x[(size_t)r * (size_t)s + (size_t)i];
            mine[i] = acc;
        }
        MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, s, MPI_FLOAT, d->comm_b, &b->gather);
    }
    b->state = B_GATHER;
}

/* Bucket b's all-gather and tail gather are done: the tail summed in rank order. */
static void bucket_finish(df_ddp *d, ddp_bucket *b) {
    if (b->tail > 0) {
        float *x = d->grad + b->start + (int64_t)b->slice * d->world;
        const float *all = b->tail_buf + b->tail;
        for (int i = 0; i < b->tail; i++) {
            float acc = all[i];
            for (int r = 1; r < d->world; r++) acc += all[(size_t)r * (size_t)b->tail + (size_t)i];
            x[i] = acc;
        }
    }
    b->state = B_DONE;
}

/* Starts the ready buckets in order; moves finished exchanges on to their all-gathers, in
 * order (MPI_Test also drives the progress of every pending request). */
static void advance(df_ddp *d) {
    while (d->next_start < d->n_buckets && d->buckets[d->next_start].pending == 0)
        bucket_start(d, &d->buckets[d->next_start++]);
    while (d->next_gather < d->next_start) {
        ddp_bucket *b = &d->buckets[d->next_gather];
        int done = 0;
        MPI_Test(&b->exchange, &done, MPI_STATUS_IGNORE);
        if (!done) break;
        bucket_exchanged(d, b);
        d->next_gather++;
    }
}

static void on_ready(void *ctx, int64_t off, int64_t numel) {
    (void)numel;
    df_ddp *d = ctx;
    if (d->n_params == 0) return;
    double t0 = now();
    int lo = 0, hi = d->n_params - 1;
    while (lo < hi) { /* the last parameter at off (zero-sized ones share an offset) */
        int mid = (lo + hi + 1) / 2;
        if (d->params[mid].off <= off)
            lo = mid;
        else
            hi = mid - 1;
    }
    while (lo >= 0 && d->params[lo].off == off && d->params[lo].ready) lo--;
    if (lo >= 0 && d->params[lo].off == off) {
        d->params[lo].ready = true;
        d->buckets[d->params[lo].bucket].pending--;
    }
    advance(d);
    d->hook_secs += now() - t0;
}

void df_ddp_begin(df_ddp *d) {
    for (int i = 0; i < d->n_params; i++) d->params[i].ready = false;
    for (int i = 0; i < d->n_buckets; i++) {
        d->buckets[i].pending = d->buckets[i].params;
        d->buckets[i].state = B_IDLE;
    }
    d->next_start = d->next_gather = 0;
    d->hook_secs = 0;
    df_flat_set_grad_ready(d->flat, on_ready, d);
}

void df_ddp_progress(df_ddp *d) {
    double t0 = now();
    advance(d);
    d->hook_secs += now() - t0;
}

df_status df_ddp_finish(df_ddp *d, double *hook_secs) {
    df_flat_set_grad_ready(NULL, NULL, NULL);
    d->early = d->next_start;
    d->exchanged = d->next_gather;
    /* the parameters backward did not reach are final as they are (zero, or earlier
     * micro-batches' sums) */
    for (int i = 0; i < d->n_buckets; i++) d->buckets[i].pending = 0;
    advance(d);
    for (int i = d->next_gather; i < d->n_buckets; i++) {
        MPI_Wait(&d->buckets[i].exchange, MPI_STATUS_IGNORE);
        bucket_exchanged(d, &d->buckets[i]);
    }
    for (int i = 0; i < d->n_buckets; i++) {
        ddp_bucket *b = &d->buckets[i];
        MPI_Wait(&b->gather, MPI_STATUS_IGNORE);
        MPI_Wait(&b->tail_gather, MPI_STATUS_IGNORE);
        bucket_finish(d, b);
    }
    d->next_gather = d->n_buckets;
    if (hook_secs) *hook_secs = d->hook_secs;
    return DF_OK;
}

void df_ddp_cancel(df_ddp *d) {
    (void)d;
    df_flat_set_grad_ready(NULL, NULL, NULL);
}

#else /* no MPI */

df_status df_ddp_new(const df_flat *flat, df_tensor *const *params, int n, double bucket_mb,
                     df_ddp **out) {
    (void)flat, (void)params, (void)n, (void)bucket_mb;
    *out = NULL;
    return df_error(DF_ERR_UNSUPPORTED, "ddp: built without MPI");
}
void df_ddp_free(df_ddp *d) {
    (void)d;
}
int df_ddp_bucket_count(const df_ddp *d) {
    (void)d;
    return 0;
}
int df_ddp_started_early(const df_ddp *d, int *exchanged) {
    (void)d;
    if (exchanged) *exchanged = 0;
    return 0;
}
void df_ddp_begin(df_ddp *d) {
    (void)d;
}
void df_ddp_progress(df_ddp *d) {
    (void)d;
}
df_status df_ddp_finish(df_ddp *d, double *hook_secs) {
    (void)d;
    if (hook_secs) *hook_secs = 0;
    return DF_OK;
}
void df_ddp_cancel(df_ddp *d) {
    (void)d;
}

#endif
