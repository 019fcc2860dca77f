/* loader.c — the data loader: a global permutation per epoch, a data-parallel shard, worker
 * threads that assemble whole batches, a bounded prefetch queue and a resumable cursor.
 *
 * Order: epoch e shuffles the N dataset samples with Fisher-Yates driven by Philox
 * (seed, stream mix(PERM, e)); the sequence is padded by wrapping to a multiple of world_size
 * (torch DistributedSampler) and rank r takes positions r, r + W, r + 2W, ... Batches cut the
 * rank's share in order; with drop_last the final partial batch is left out.
 *
 * Determinism: batch k of the run is always the same samples with the same random crop / flip /
 * caption dropout, because each sample draws from Philox (seed, stream mix(SAMPLE, e, p)) with
 * p its position in the padded permutation — not from a worker's stream. Workers claim batches
 * in sequence under the lock and deliver into slot seq % prefetch; the consumer takes slot
 * next_seq only, so the delivery order is the claim order whatever the thread timing.
 * A worker never claims more than `prefetch` batches past the consumer (bounded memory).
 *
 * Resume: the cursor (epoch, position) of the next batch is what a checkpoint stores; a loader
 * created with that cursor as `start` yields the same batches as an uninterrupted run.
 *
 * Bad samples: without skip_bad_images, a batch with an unreadable sample carries the error,
 * which df_loader_next returns (naming the file). With it, the sample is left out of its batch,
 * the batch records the message, and the epoch's count is reported on stderr when the epoch's
 * last batch is delivered. The epoch length never changes. A batch left with no sample is an
 * error naming the skipped count (an empty batch would train on nothing), and a dataset with
 * no readable image at all is refused by df_loader_new.
 *
 * No pixels (cached latents): a batch carries the indices, captions and flip decisions the
 * pixel path would have drawn (same streams, same order: caption dropout, then the flip; the
 * crop is centred, so it draws nothing), and no image is decoded.
 *
 * Tensors: a worker creates the batch's pixel tensor outside any scope, so it is owned by the
 * df_batch and handed to the consumer with it (the allocator is thread-safe).
 */
#include "datasets/datasets_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STREAM_PERM = 1, STREAM_SAMPLE = 2, STREAM_BUCKET = 3, STREAM_BATCHES = 4 };

static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t stream_id(uint64_t tag, uint64_t epoch, uint64_t pos) {
    return mix64(mix64(mix64(tag) ^ epoch) ^ pos);
}

typedef struct slot {
    int64_t seq;
    bool ready;
    df_batch *batch;
    df_status status;
    char err[1024];
} slot;

typedef struct skip_count {
    int64_t epoch, count;
} skip_count;

struct df_loader {
    const df_dataset *ds;
    df_loader_opts o;
    int64_t N, per_rank, used, bpe;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_ready;
    pthread_t *threads;
    int n_threads;
    bool stop;
    /* claim state (under mu) */
    int64_t claim_seq, claim_epoch, claim_pos, perm_epoch;
    int64_t *perm; /* the epoch's order (buckets: the samples batch by batch) */
    /* buckets: where each batch of the epoch's order ends, and the next batch to claim */
    int64_t *plan_ends, plan_batches, claim_batch;
    /* consumer state (under mu) */
    int64_t next_seq;
    df_loader_cursor cursor;
    slot *slots;
    df_status failed;
    char fail_msg[1024];
    skip_count *skips;
    int n_skips;
};

df_loader_opts df_loader_opts_default(int batch_size, int resolution) {
    return (df_loader_opts){.batch_size = batch_size,
                            .seed = 0,
                            .rank = 0,
                            .world_size = 1,
                            .workers = 2,
                            .prefetch = 0,
                            .shuffle = true,
                            .drop_last = false,
                            .transform = df_transform_default(resolution)};
}

void df_batch_free(df_batch *b) {
    if (!b) return;
    df_tensor_free(b->pixels);
    for (int i = 0; i < b->n; i++) free(b->captions[i]);
    for (int i = 0; i < b->n_skipped; i++) free(b->skipped[i]);
    free(b->captions);
    free(b->skipped);
    free(b->indices);
    free(b->flipped);
    free(b);
}

static void make_perm(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    if (!shuffle) return;
    df_philox g;
    df_philox_init(&g, seed, stream_id(STREAM_PERM, (uint64_t)epoch, 0));
    for (int64_t i = n - 1; i > 0; i--) {
        uint64_t r = ((uint64_t)df_philox_u32(&g) << 32) | df_philox_u32(&g);
        int64_t j = (int64_t)(r % (uint64_t)(i + 1));
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static void shuffle(int64_t *v, int64_t n, uint64_t seed, uint64_t stream) {
    df_philox g;
    df_philox_init(&g, seed, stream);
    for (int64_t i = n - 1; i > 0; i--) {
        uint64_t r = ((uint64_t)df_philox_u32(&g) << 32) | df_philox_u32(&g);
        int64_t j = (int64_t)(r % (uint64_t)(i + 1));
        int64_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* The bucketed epoch: each bucket's samples (index order) shuffled by (seed, epoch, bucket),
 * cut into batches (drop_last drops each bucket's partial one), the batches shuffled by
 * (seed, epoch); into order (the samples batch after batch) and ends (each batch's end). */
static int64_t make_bucket_plan(const df_loader *l, int64_t epoch, int64_t *order, int64_t *ends) {
    const df_buckets *bk = l->o.buckets;
    int64_t N = l->N, images = bk->n_images, B = l->o.batch_size, k = 0, nb = 0;
    int64_t *grouped = malloc(sizeof(int64_t) * (size_t)N + 1);
    int64_t(*batches)[2] = malloc(sizeof *batches * (size_t)N + 1); /* (start, length) */
    DF_ASSERT(grouped && batches, "out of memory");
    for (int b = 0; b < bk->n; b++) {
        int64_t start = k;
        for (int64_t s = 0; s < N; s++)
            if (bk->bucket[s % images] == b) grouped[k++] = s;
        int64_t count = k - start;
        if (l->o.shuffle)
            shuffle(grouped + start, count, l->o.seed,
                    stream_id(STREAM_BUCKET, (uint64_t)epoch, (uint64_t)b));
        for (int64_t p = 0; p < count; p += B) {
            int64_t len = count - p < B ? count - p : B;
            if (len < B && l->o.drop_last) break;
            batches[nb][0] = start + p;
            batches[nb++][1] = len;
        }
    }
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)nb + 1);
    DF_ASSERT(idx, "out of memory");
    for (int64_t i = 0; i < nb; i++) idx[i] = i;
    if (l->o.shuffle) shuffle(idx, nb, l->o.seed, stream_id(STREAM_BATCHES, (uint64_t)epoch, 0));
    int64_t pos = 0;
    for (int64_t i = 0; i < nb; i++) {
        memcpy(order + pos, grouped + batches[idx[i]][0],
               sizeof(int64_t) * (size_t)batches[idx[i]][1]);
        pos += batches[idx[i]][1];
        ends[i] = pos;
    }
    free(idx);
    free(batches);
    free(grouped);
    return nb;
}

/* Position in the padded permutation of the rank's `position`-th sample. */
static int64_t perm_pos(const df_loader *l, int64_t position) {
    return (position * l->o.world_size + l->o.rank) % l->N;
}

int64_t df_loader_sample_at(const df_loader *l, int64_t epoch, int64_t position) {
    int64_t *perm = malloc(sizeof(int64_t) * (size_t)l->N);
    DF_ASSERT(perm, "out of memory");
    int64_t v;
    if (l->o.buckets) {
        int64_t *ends = malloc(sizeof(int64_t) * (size_t)l->N + 1);
        DF_ASSERT(ends, "out of memory");
        make_bucket_plan(l, epoch, perm, ends);
        free(ends);
        v = perm[position];
    } else {
        make_perm(perm, l->N, l->o.seed, epoch, l->o.shuffle);
        v = perm[perm_pos(l, position)];
    }
    free(perm);
    return v;
}

typedef struct job {
    int64_t seq, epoch, pos;
    int n;
    bool epoch_end;
    int64_t *samples, *keys;
} job;

/* Loads and transforms the job's samples into a new batch. */
static df_status build(df_loader *l, const job *j, df_batch **out, char *err, size_t err_len) {
    const df_transform *t = &l->o.transform;
    const df_buckets *bk = l->o.buckets;
    int R = t->resolution, C = t->decode.channels, RW = R, bucket = -1;
    if (bk && j->n > 0) { /* one bucket per batch */
        bucket = bk->bucket[j->samples[0] % bk->n_images];
        RW = bk->resos[bucket][0];
        R = bk->resos[bucket][1];
    }
    df_batch *b = calloc(1, sizeof *b);
    DF_ASSERT(b, "out of memory");
    b->captions = calloc((size_t)j->n, sizeof(char *));
    b->indices = calloc((size_t)j->n, sizeof(int64_t));
    b->flipped = calloc((size_t)j->n + 1, sizeof(bool));
    b->skipped = calloc((size_t)j->n, sizeof(char *));
    DF_ASSERT(b->captions && b->indices && b->flipped && b->skipped, "out of memory");
    b->epoch = j->epoch;
    b->epoch_end = j->epoch_end;
    b->bucket = bucket;
    b->next = j->epoch_end ? (df_loader_cursor){j->epoch + 1, 0}
                           : (df_loader_cursor){j->epoch, j->pos + j->n};
    if (l->o.no_pixels) { /* the draws of the pixel path, in its order: caption, flip */
        for (int i = 0; i < j->n; i++) {
            df_philox g;
            df_philox_init(&g, l->o.seed,
                           stream_id(STREAM_SAMPLE, (uint64_t)j->epoch, (uint64_t)j->keys[i]));
            b->captions[i] = df_dataset_draw_caption(l->ds, j->samples[i], &g);
            b->flipped[i] = df_transform_draw_flip(t, &g);
            b->indices[i] = j->samples[i];
        }
        b->n = j->n;
        *out = b;
        return DF_OK;
    }
    size_t per = (size_t)C * R * RW;
    float *buf = malloc(sizeof(float) * per * (size_t)j->n);
    if (!buf) {
        char mb[32];
        df_mem_format(sizeof(float) * per * (size_t)j->n, mb, sizeof mb);
        snprintf(err, err_len,
                 "loader: out of memory for a batch of %d images at %dx%d (%s): lower "
                 "train_batch_size or the resolution",
                 j->n, R, R, mb);
        df_batch_free(b);
        return df_error(DF_ERR_NOMEM, "%s", err);
    }
    for (int i = 0; i < j->n; i++) {
        df_philox g;
        df_philox_init(&g, l->o.seed,
                       stream_id(STREAM_SAMPLE, (uint64_t)j->epoch, (uint64_t)j->keys[i]));
        df_tensor *img;
        char *cap;
        df_status s = df_dataset_get(l->ds, j->samples[i], &t->decode, &g, &img, &cap);
        if (s != DF_OK) {
            if (!l->ds->opts.skip_bad_images) {
                snprintf(err, err_len, "%s", df_last_error());
                free(buf);
                df_batch_free(b);
                return s;
            }
            b->skipped[b->n_skipped] = strdup(df_last_error());
            DF_ASSERT(b->skipped[b->n_skipped], "out of memory");
            b->n_skipped++;
            continue;
        }
        b->flipped[b->n] = bk ? df_buckets_apply(bk, t, j->samples[i] % bk->n_images, img, &g,
                                                 buf + per * (size_t)b->n)
                              : df_transform_apply(t, img, &g, buf + per * (size_t)b->n);
        df_tensor_free(img);
        b->captions[b->n] = cap;
        b->indices[b->n] = j->samples[i];
        b->n++;
    }
    if (b->n == 0 && j->n > 0) {
        /* an empty batch would train on nothing (and NaN the loss): say what happened */
        snprintf(err, err_len,
                 "no readable image in a batch of %d: %d skipped (skip_bad_images), the first: "
                 "%s",
                 j->n, b->n_skipped, b->skipped[0]);
        free(buf);
        df_batch_free(b);
        return df_error(DF_ERR_FORMAT, "%s", err);
    }
    if (df_tensor_try_new_owned(DF_DTYPE_F32, DF_DIMS(b->n, C, R, RW), &b->pixels) != DF_OK) {
        snprintf(err, err_len, "loader: %s (a batch of %d images at %dx%d)", df_last_error(), b->n,
                 R, R);
        free(buf);
        df_batch_free(b);
        return df_error(DF_ERR_NOMEM, "%s", err);
    }
    memcpy(b->pixels->data, buf, sizeof(float) * per * (size_t)b->n);
    free(buf);
    *out = b;
    return DF_OK;
}

static void *worker(void *arg) {
    df_loader *l = arg;
    int B = l->o.batch_size;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        if (l->claim_seq >= l->next_seq + l->o.prefetch) {
            pthread_cond_wait(&l->cv_work, &l->mu);
            continue;
        }
        job j = {.seq = l->claim_seq++, .epoch = l->claim_epoch, .pos = l->claim_pos};
        if (l->perm_epoch != j.epoch) {
            if (l->o.buckets)
                l->plan_batches = make_bucket_plan(l, j.epoch, l->perm, l->plan_ends);
            else
                make_perm(l->perm, l->N, l->o.seed, j.epoch, l->o.shuffle);
            l->perm_epoch = j.epoch;
        }
        int64_t left = l->used - l->claim_pos;
        if (l->o.buckets) left = l->plan_ends[l->claim_batch++] - l->claim_pos;
        j.n = (int)(left < B ? left : B);
        j.samples = malloc(sizeof(int64_t) * (size_t)j.n);
        j.keys = malloc(sizeof(int64_t) * (size_t)j.n);
        DF_ASSERT(j.samples && j.keys, "out of memory");
        for (int i = 0; i < j.n; i++) {
            j.keys[i] = l->o.buckets ? j.pos + i : perm_pos(l, j.pos + i);
            j.samples[i] = l->perm[j.keys[i]];
        }
        l->claim_pos += j.n;
        if (l->claim_pos >= l->used) {
            j.epoch_end = true;
            l->claim_epoch++;
            l->claim_pos = 0;
            l->claim_batch = 0;
        }
        pthread_mutex_unlock(&l->mu);

        df_batch *b = NULL;
        char err[1024] = "";
        df_status s = build(l, &j, &b, err, sizeof err);
        free(j.samples);
        free(j.keys);

        pthread_mutex_lock(&l->mu);
        slot *sl = &l->slots[j.seq % l->o.prefetch];
        sl->seq = j.seq;
        sl->batch = b;
        sl->status = s;
        snprintf(sl->err, sizeof sl->err, "%s", err);
        sl->ready = true;
        pthread_cond_broadcast(&l->cv_ready);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* With skip_bad_images, a dataset none of whose images decodes would train on empty batches:
 * refuse it at the start. Stops at the first readable image, so a sound dataset costs one
 * decode. */
static df_status check_some_readable(const df_dataset *ds, const df_decode_opts *dec) {
    int64_t n = df_dataset_images(ds);
    char first[512] = "";
    df_scope_pause pause = df_scope_suspend();
    int64_t i = 0;
    for (; i < n; i++) {
        df_tensor *img;
        if (df_dataset_image(ds, i, dec, &img) == DF_OK) {
            df_tensor_free(img);
            break;
        }
        if (!first[0]) snprintf(first, sizeof first, "%s", df_last_error());
    }
    df_scope_resume(pause);
    if (i < n) return DF_OK;
    return df_error(DF_ERR_FORMAT,
                    "%s: none of the %lld images is readable (all skipped by skip_bad_images); "
                    "the first: %s",
                    ds->root, (long long)n, first);
}

df_status df_loader_new(const df_dataset *ds, const df_loader_opts *opts, df_loader **out) {
    *out = NULL;
    df_loader_opts o = *opts;
    if (o.batch_size < 1) return df_error(DF_ERR_INVALID, "loader: batch_size must be >= 1");
    if (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size)
        return df_error(DF_ERR_INVALID, "loader: rank %d of world size %d", o.rank, o.world_size);
    if (o.workers < 1) o.workers = 1;
    if (o.prefetch < 1) o.prefetch = 2 * o.workers;
    if (o.transform.resolution < 1 || o.transform.resolution > DF_IMAGE_MAX_SIDE)
        return df_error(DF_ERR_INVALID, "loader: resolution %d out of range",
                        o.transform.resolution);
    if (o.transform.decode.channels != 1 && o.transform.decode.channels != 3)
        return df_error(DF_ERR_INVALID, "loader: channels must be 1 or 3");
    int64_t N = df_dataset_len(ds);
    if (N < 1) return df_error(DF_ERR_INVALID, "loader: the dataset is empty");
    int64_t per_rank = (N + o.world_size - 1) / o.world_size;
    int64_t used = o.drop_last ? per_rank / o.batch_size * o.batch_size : per_rank, bpe = 0;
    if (o.buckets) {
        if (o.world_size != 1)
            return df_error(DF_ERR_UNSUPPORTED,
                            "loader: buckets with %d ranks: bucketed "
                            "batches are not sharded yet",
                            o.world_size);
        if (o.buckets->n_images != df_dataset_images(ds))
            return df_error(DF_ERR_INVALID,
                            "loader: the buckets are of %lld images, the data "
                            "set has %lld",
                            (long long)o.buckets->n_images, (long long)df_dataset_images(ds));
        used = 0;
        for (int b = 0; b < o.buckets->n; b++) {
            int64_t count = 0;
            for (int64_t s = 0; s < N; s++)
                count += o.buckets->bucket[s % o.buckets->n_images] == b;
            int64_t full = count / o.batch_size, part = count % o.batch_size;
            used += full * o.batch_size + (o.drop_last ? 0 : part);
            bpe += full + (!o.drop_last && part > 0);
        }
    }
    if (used < 1)
        return df_error(DF_ERR_INVALID,
                        "loader: %lld samples per rank is fewer than one batch of %d (drop_last)",
                        (long long)per_rank, o.batch_size);
    if (o.start.epoch < 0 || o.start.position < 0 || o.start.position >= used)
        return df_error(DF_ERR_INVALID,
                        "loader: cursor (%lld, %lld) outside an epoch of %lld samples",
                        (long long)o.start.epoch, (long long)o.start.position, (long long)used);
    if (o.no_pixels && !o.transform.center_crop)
        return df_error(DF_ERR_INVALID, "loader: no_pixels (cached latents) needs center_crop: a "
                                        "cache holds one crop of each image");
    if (ds->opts.skip_bad_images && !o.no_pixels)
        DF_TRY(check_some_readable(ds, &o.transform.decode));
    df_loader *l = calloc(1, sizeof *l);
    DF_ASSERT(l, "out of memory");
    l->ds = ds;
    l->o = o;
    l->N = N;
    l->per_rank = per_rank;
    l->used = used;
    l->bpe = o.buckets ? bpe : (used + o.batch_size - 1) / o.batch_size;
    l->perm = malloc(sizeof(int64_t) * (size_t)N);
    if (o.buckets) {
        l->plan_ends = malloc(sizeof(int64_t) * (size_t)N + 1);
        DF_ASSERT(l->perm && l->plan_ends, "out of memory");
        /* the cursor must be a batch boundary of its epoch */
        l->plan_batches = make_bucket_plan(l, o.start.epoch, l->perm, l->plan_ends);
        l->perm_epoch = o.start.epoch;
        int64_t k = 0;
        while (k < l->plan_batches && (k == 0 ? 0 : l->plan_ends[k - 1]) < o.start.position) k++;
        if ((k == 0 ? 0 : l->plan_ends[k - 1]) != o.start.position) {
            free(l->perm);
            free(l->plan_ends);
            free(l);
            return df_error(DF_ERR_INVALID,
                            "loader: cursor (%lld, %lld) is not at a batch of the "
                            "bucketed epoch",
                            (long long)o.start.epoch, (long long)o.start.position);
        }
        l->claim_batch = k;
    }
    l->slots = calloc((size_t)o.prefetch, sizeof(slot));
    l->threads = calloc((size_t)o.workers, sizeof(pthread_t));
    DF_ASSERT(l->perm && l->slots && l->threads, "out of memory");
    if (!o.buckets) l->perm_epoch = -1;
    l->claim_epoch = o.start.epoch;
    l->claim_pos = o.start.position;
    l->cursor = o.start;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_work, NULL);
    pthread_cond_init(&l->cv_ready, NULL);
    for (int i = 0; i < o.workers; i++) {
        if (pthread_create(&l->threads[i], NULL, worker, l) != 0) {
            df_loader_free(l);
            return df_error(DF_ERR_NOMEM, "loader: cannot start worker thread %d", i);
        }
        l->n_threads++;
    }
    *out = l;
    return DF_OK;
}

void df_loader_free(df_loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv_work);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->n_threads; i++) pthread_join(l->threads[i], NULL);
    for (int i = 0; i < l->o.prefetch; i++)
        if (l->slots[i].ready) df_batch_free(l->slots[i].batch);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv_work);
    pthread_cond_destroy(&l->cv_ready);
    free(l->threads);
    free(l->slots);
    free(l->perm);
    free(l->plan_ends);
    free(l->skips);
    free(l);
}

static int64_t *skip_slot(df_loader *l, int64_t epoch) {
    for (int i = 0; i < l->n_skips; i++)
        if (l->skips[i].epoch == epoch) return &l->skips[i].count;
    l->skips = realloc(l->skips, sizeof *l->skips * (size_t)(l->n_skips + 1));
    DF_ASSERT(l->skips, "out of memory");
    l->skips[l->n_skips] = (skip_count){epoch, 0};
    return &l->skips[l->n_skips++].count;
}

df_status df_loader_next(df_loader *l, df_batch **out) {
    *out = NULL;
    pthread_mutex_lock(&l->mu);
    if (l->failed != DF_OK) {
        pthread_mutex_unlock(&l->mu);
        return df_error(l->failed, "%s", l->fail_msg);
    }
    slot *sl = &l->slots[l->next_seq % l->o.prefetch];
    while (!(sl->ready && sl->seq == l->next_seq)) pthread_cond_wait(&l->cv_ready, &l->mu);
    df_batch *b = sl->batch;
    df_status s = sl->status;
    if (s != DF_OK) {
        l->failed = s;
        snprintf(l->fail_msg, sizeof l->fail_msg, "%s", sl->err);
    }
    sl->ready = false;
    sl->batch = NULL;
    l->next_seq++;
    if (b) {
        l->cursor = b->next;
        if (b->n_skipped) *skip_slot(l, b->epoch) += b->n_skipped;
    }
    int64_t skipped = b && b->epoch_end ? *skip_slot(l, b->epoch) : 0;
    pthread_cond_broadcast(&l->cv_work);
    pthread_mutex_unlock(&l->mu);
    if (s != DF_OK) return df_error(s, "%s", l->fail_msg);
    if (skipped > 0)
        fprintf(stderr, "warning: epoch %lld: skipped %lld unreadable sample%s (skip_bad_images)\n",
                (long long)b->epoch, (long long)skipped, skipped == 1 ? "" : "s");
    *out = b;
    return DF_OK;
}

df_loader_cursor df_loader_get_cursor(const df_loader *l) {
    pthread_mutex_lock((pthread_mutex_t *)&l->mu);
    df_loader_cursor c = l->cursor;
    pthread_mutex_unlock((pthread_mutex_t *)&l->mu);
    return c;
}

int64_t df_loader_samples_per_epoch(const df_loader *l) {
    return l->used;
}

int64_t df_loader_batches_per_epoch(const df_loader *l) {
    return l->bpe;
}

int64_t df_loader_skipped(const df_loader *l, int64_t epoch) {
    pthread_mutex_lock((pthread_mutex_t *)&l->mu);
    int64_t v = 0;
    for (int i = 0; i < l->n_skips; i++)
        if (l->skips[i].epoch == epoch) v = l->skips[i].count;
    pthread_mutex_unlock((pthread_mutex_t *)&l->mu);
    return v;
}
