/* latent_cache.c — the VAE posteriors of a data set, computed once and kept in the run folder
 * (cache_latents): OUTPUT/latent_cache/latents.bin holds, for each image (and its horizontal
 * flip when random_flip), the posterior's mean and logvar (the clamped logvar df_vae_encode
 * gives). Not a latent sample: the sample is drawn at each step (df_posterior_sample with the
 * recipe's noise), as without a cache, so cached and uncached training see the same latents
 * and the same loss (diffusers' train_text_to_image encodes each step, sampling the posterior
 * anew; kohya's cache keeps one sample per image, which fixes the noise for the whole run).
 *
 * The transform is deterministic: center crop (a cache holds one crop), flip decided by the
 * loader (df_batch.flipped). The flipped entry is the crop flipped, exactly as the loader
 * flips it, then encoded (the VAE is not flip-equivariant).
 *
 * Key: the CRC-32C of the VAE's weights (names, shapes, values) and a hash of the settings that
 * change the pixels encoded (resolution, crop, flip, filter, per-image target sizes (buckets),
 * the data set's image count, file names and each file's size and modification time, or the
 * pack's). A file whose key differs, or that fails any check
 * (truncated, sizes out of range, checksum), is reported on stderr and rebuilt; it is never
 * read. The file is written through df_outfile: a killed build leaves the old file or none.
 *
 * Layout (little-endian): "DFLATC1\0", u32 version 1, u32 vae_crc, u64 settings_hash,
 * u64 images, u32 orientations (1 or 2), u32 channels; per entry (image-major, unflipped then
 * flipped) u32 height, u32 width; then per entry mean and logvar (channels * h * w F32 each);
 * then the u32 CRC-32C of every byte before it.
 */
#include "train/train.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAGIC "DFLATC1"
#define VERSION 1u
#define HEADER_BYTES 40

struct df_latent_cache {
    char path[DF_PATH_MAX];
    int64_t images;
    int orientations, channels;
    uint32_t *sizes;  /* (h, w) per entry */
    int64_t *offsets; /* float offset of each entry's mean in data */
    float *data;      /* the means and logvars */
    bool built;       /* this open built the file */
    char reason[512]; /* why it was built ("" when read) */
};

/* FNV-1a 64. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint32_t vae_checksum(const df_vae *vae) {
    uint32_t crc = 0;
    for (int i = 0; i < vae->params.n; i++) {
        const df_param *p = &vae->params.items[i];
        crc = df_crc32c_update(crc, p->name, strlen(p->name) + 1);
        crc = df_crc32c_update(crc, p->tensor->shape, sizeof(int64_t) * (size_t)p->tensor->ndim);
        crc = df_crc32c_update(crc, p->tensor->data, (size_t)p->tensor->numel * sizeof(float));
    }
    return crc;
}

/* Folds the size and modification time of `path` into h (a missing file: nothing). */
static uint64_t fnv_file(uint64_t h, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return h;
    int64_t v[3] = {(int64_t)st.st_size, (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec};
    return fnv(h, v, sizeof v);
}

/* The (h, w) image i is encoded at. */
static void target_size(const df_latent_cache_opts *o, int64_t i, int *h, int *w) {
    if (o->buckets) {
        const int *r = o->buckets->resos[o->buckets->bucket[i]];
        *w = r[0];
        *h = r[1];
    } else {
        *h = *w = o->transform.resolution;
    }
}

static uint64_t settings_hash(const df_latent_cache_opts *o) {
    uint64_t h = 0xcbf29ce484222325ull;
    const df_transform *t = &o->transform;
    int32_t v[5] = {t->resolution, t->center_crop, t->random_flip, (int32_t)t->filter,
                    t->decode.channels};
    h = fnv(h, v, sizeof v);
    h = fnv(h, t->decode.background, sizeof t->decode.background);
    int64_t n = df_dataset_images(o->ds);
    h = fnv(h, &n, sizeof n);
    const char *root = df_dataset_root(o->ds);
    bool pack = df_dataset_kind_of(o->ds) == DF_DATASET_HDF5;
    if (pack) h = fnv_file(h, root);
    char path[DF_PATH_MAX];
    for (int64_t i = 0; i < n; i++) {
        const char *f = df_dataset_file(o->ds, i);
        h = fnv(h, f, strlen(f) + 1);
        if (!pack && df_pathf(path, sizeof path, "%s/%s", root, f) == DF_OK) h = fnv_file(h, path);
        int32_t s[2];
        target_size(o, i, &s[0], &s[1]);
        h = fnv(h, s, sizeof s);
    }
    return h;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static void cache_release(df_latent_cache *c) {
    free(c->sizes);
    free(c->offsets);
    free(c->data);
    c->sizes = NULL;
    c->offsets = NULL;
    c->data = NULL;
}

/* Reads and checks the file against the expected key; DF_OK and filled, or a status with the
 * reason in df_last_error() (DF_ERR_NOTFOUND when there is no file). */
static df_status cache_read(df_latent_cache *c, uint32_t want_crc, uint64_t want_hash,
                            int64_t want_images, int want_orient, int want_channels) {
    FILE *f = fopen(c->path, "rb");
    if (!f) {
        if (errno == ENOENT) return df_error(DF_ERR_NOTFOUND, "%s: no cache yet", c->path);
        return df_error(DF_ERR_IO, "%s: cannot open: %s", c->path, strerror(errno));
    }
    struct stat st;
    unsigned char *buf = NULL;
    df_status s = DF_OK;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        s = df_error(DF_ERR_FORMAT, "%s: not a regular file", c->path);
        goto done;
    }
    size_t len = (size_t)st.st_size;
    if (len < HEADER_BYTES + 4) {
        s = df_error(DF_ERR_FORMAT, "%s: truncated (%zu bytes)", c->path, len);
        goto done;
    }
    buf = malloc(len);
    if (!buf) {
        s = df_error(DF_ERR_NOMEM, "%s: out of memory (%zu bytes)", c->path, len);
        goto done;
    }
    if (fread(buf, 1, len, f) != len) {
        s = df_error(DF_ERR_IO, "%s: read failed", c->path);
        goto done;
    }
    if (memcmp(buf, MAGIC, 8) != 0 || get_u32(buf + 8) != VERSION) {
        s = df_error(DF_ERR_FORMAT, "%s: not a latent cache of this version", c->path);
        goto done;
    }
    if (df_crc32c(buf, len - 4) != get_u32(buf + len - 4)) {
        s = df_error(DF_ERR_FORMAT, "%s: checksum mismatch (damaged or incomplete)", c->path);
        goto done;
    }
    uint32_t crc = get_u32(buf + 12);
    uint64_t hash = get_u64(buf + 16), images = get_u64(buf + 24);
    uint32_t orient = get_u32(buf + 32), channels = get_u32(buf + 36);
    if (crc != want_crc) {
        s = df_error(DF_ERR_INVALID,
                     "%s: written by another VAE (weights checksum %08x, this "
                     "VAE's %08x)",
                     c->path, crc, want_crc);
        goto done;
    }
    if (hash != want_hash || images != (uint64_t)want_images || orient != (uint32_t)want_orient ||
        channels != (uint32_t)want_channels) {
        s = df_error(DF_ERR_INVALID,
                     "%s: written for other images or transform settings "
                     "(the files, their sizes and times, resolution, crop, flip, filter, buckets)",
                     c->path);
        goto done;
    }
    uint64_t entries = images * orient;
    if (entries > (len - HEADER_BYTES - 4) / 8) {
        s = df_error(DF_ERR_FORMAT, "%s: %llu entries do not fit in %zu bytes", c->path,
                     (unsigned long long)entries, len);
        goto done;
    }
    c->sizes = malloc(sizeof(uint32_t) * 2 * entries + 1);
    c->offsets = malloc(sizeof(int64_t) * entries + 1);
    if (!c->sizes || !c->offsets) {
        s = df_error(DF_ERR_NOMEM, "%s: out of memory", c->path);
        goto done;
    }
    uint64_t floats = 0, room = (len - HEADER_BYTES - 4 - 8 * entries) / 4;
    for (uint64_t e = 0; e < entries; e++) {
        uint32_t h = get_u32(buf + HEADER_BYTES + 8 * e),
                 w = get_u32(buf + HEADER_BYTES + 8 * e + 4);
        if (h < 1 || w < 1 || h > DF_MODEL_MAX_SIDE || w > DF_MODEL_MAX_SIDE) {
            s = df_error(DF_ERR_FORMAT, "%s: entry %llu has size %ux%u", c->path,
                         (unsigned long long)e, h, w);
            goto done;
        }
        c->sizes[2 * e] = h;
        c->sizes[2 * e + 1] = w;
        c->offsets[e] = (int64_t)floats;
        floats += 2ull * channels * h * w;
        if (floats > room) {
            s = df_error(DF_ERR_FORMAT, "%s: truncated at entry %llu", c->path,
                         (unsigned long long)e);
            goto done;
        }
    }
    if (floats != room) {
        s = df_error(DF_ERR_FORMAT, "%s: %llu bytes of data, %llu expected", c->path,
                     (unsigned long long)room * 4, (unsigned long long)floats * 4);
        goto done;
    }
    c->data = malloc(sizeof(float) * floats + 1);
    if (!c->data) {
        s = df_error(DF_ERR_NOMEM, "%s: out of memory", c->path);
        goto done;
    }
    memcpy(c->data, buf + HEADER_BYTES + 8 * entries, sizeof(float) * floats);
    c->images = (int64_t)images;
    c->orientations = (int)orient;
    c->channels = (int)channels;
done:
    free(buf);
    fclose(f);
    if (s != DF_OK) cache_release(c);
    return s;
}

/* The pixels of entry (image i, flipped) into dst (C * h * w floats): the loader's transform
 * with the crop centred, then the crop mirrored as the loader mirrors it. Runs in a scope. */
static df_status entry_pixels(const df_latent_cache_opts *o, int64_t i, bool flip, int h, int w,
                              float *dst) {
    df_tensor *img;
    DF_TRY(df_dataset_image(o->ds, i, &o->transform.decode, &img)); /* the scope frees it */
    df_transform t = o->transform;
    t.random_flip = false;
    t.center_crop = true;
    if (o->buckets) /* the loader's bucket path: kohya's resize and floor-centred crop */
        df_buckets_apply(o->buckets, &t, i, img, NULL, dst);
    else
        df_transform_apply(&t, img, NULL, dst);
    if (!flip) return DF_OK;
    int c = o->transform.decode.channels;
    for (int ch = 0; ch < c; ch++)
        for (int y = 0; y < h; y++) {
            float *row = dst + ((size_t)ch * h + y) * w;
            for (int x = 0; x < w / 2; x++) {
                float tmp = row[x];
                row[x] = row[w - 1 - x];
                row[w - 1 - x] = tmp;
            }
        }
    return DF_OK;
}

/* Encodes every entry (batches of o->batch entries of one size) and writes the file. */
static df_status cache_build(df_latent_cache *c, const df_latent_cache_opts *o, uint32_t crc,
                             uint64_t hash) {
    int64_t n = df_dataset_images(o->ds), orient = o->transform.random_flip ? 2 : 1;
    int64_t entries = n * orient;
    int C = o->transform.decode.channels, L = o->vae->config.latent_channels;
    int down = 1 << (o->vae->config.n_blocks - 1);
    c->sizes = malloc(sizeof(uint32_t) * 2 * (size_t)entries + 1);
    c->offsets = malloc(sizeof(int64_t) * (size_t)entries + 1);
    DF_ASSERT(c->sizes && c->offsets, "out of memory");
    int64_t floats = 0;
    for (int64_t e = 0; e < entries; e++) {
        int h, w;
        target_size(o, e / orient, &h, &w);
        if (h % down || w % down)
            return df_error(DF_ERR_INVALID,
                            "latent cache: %s: size %dx%d is not a multiple of "
                            "the VAE's downsampling %d",
                            df_dataset_file(o->ds, e / orient), h, w, down);
        c->sizes[2 * e] = (uint32_t)(h / down);
        c->sizes[2 * e + 1] = (uint32_t)(w / down);
        c->offsets[e] = floats;
        floats += 2ll * L * (h / down) * (w / down);
    }
    c->data = malloc(sizeof(float) * (size_t)floats + 1);
    if (!c->data)
        return df_error(DF_ERR_NOMEM, "latent cache: out of memory for %lld latents",
                        (long long)entries);
    c->images = n;
    c->orientations = (int)orient;
    c->channels = L;
    int batch = o->batch > 0 ? o->batch : 1;
    bool grad = df_grad_set_enabled(false);
    df_status s = DF_OK;
    for (int64_t e0 = 0; e0 < entries && s == DF_OK;) {
        /* a run of up to `batch` entries of the same size */
        int h, w;
        target_size(o, e0 / orient, &h, &w);
        int64_t e1 = e0 + 1;
        while (e1 < entries && e1 - e0 < batch) {
            int h2, w2;
            target_size(o, e1 / orient, &h2, &w2);
            if (h2 != h || w2 != w) break;
            e1++;
        }
        df_scope scope = df_scope_begin();
        df_tensor *x = df_tensor_new(DF_DTYPE_F32, DF_DIMS(e1 - e0, C, h, w));
        for (int64_t e = e0; e < e1 && s == DF_OK; e++)
            s = entry_pixels(o, e / orient, e % orient == 1, h, w,
                             df_f32(x) + (e - e0) * C * h * w);
        if (s == DF_OK) {
            df_tensor *mean, *logvar;
            df_vae_encode(o->vae, x, &mean, &logvar);
            int64_t per = mean->numel / (e1 - e0);
            for (int64_t e = e0; e < e1; e++) {
                float *dst = c->data + c->offsets[e];
                memcpy(dst, df_f32(mean) + (e - e0) * per, sizeof(float) * (size_t)per);
                memcpy(dst + per, df_f32(logvar) + (e - e0) * per, sizeof(float) * (size_t)per);
            }
        }
        df_scope_end(scope);
        e0 = e1;
    }
    df_grad_set_enabled(grad);
    if (s != DF_OK) return s;

    /* the file, atomically */
    size_t head = HEADER_BYTES + 8 * (size_t)entries, len = head + 4 * (size_t)floats + 4;
    unsigned char *buf = malloc(len);
    if (!buf) return df_error(DF_ERR_NOMEM, "%s: out of memory", c->path);
    memcpy(buf, MAGIC, 8);
    put_u32(buf + 8, VERSION);
    put_u32(buf + 12, crc);
    put_u64(buf + 16, hash);
    put_u64(buf + 24, (uint64_t)n);
    put_u32(buf + 32, (uint32_t)orient);
    put_u32(buf + 36, (uint32_t)L);
    for (int64_t e = 0; e < entries; e++) {
        put_u32(buf + HEADER_BYTES + 8 * e, c->sizes[2 * e]);
        put_u32(buf + HEADER_BYTES + 8 * e + 4, c->sizes[2 * e + 1]);
    }
    memcpy(buf + head, c->data, 4 * (size_t)floats);
    put_u32(buf + len - 4, df_crc32c(buf, len - 4));
    df_outfile of;
    s = df_outfile_begin(&of, c->path);
    if (s != DF_OK) {
        free(buf);
        return s;
    }
    FILE *f = fopen(df_outfile_name(&of), "wb");
    bool ok = f && fwrite(buf, 1, len, f) == len;
    ok = (f && fclose(f) == 0) && ok;
    free(buf);
    if (!ok) {
        df_outfile_abort(&of);
        return df_error(DF_ERR_IO, "%s: cannot write the latent cache: %s", c->path,
                        strerror(errno));
    }
    return df_outfile_commit(&of);
}

df_status df_latent_cache_open(const df_latent_cache_opts *o, df_latent_cache **out) {
    *out = NULL;
    if (!o->transform.center_crop)
        return df_error(DF_ERR_INVALID, "cache_latents needs center_crop: a cache holds one crop "
                                        "of each image");
    if (df_dataset_images(o->ds) < 1)
        return df_error(DF_ERR_INVALID, "latent cache: the data set has no image");
    if (o->buckets && o->buckets->n_images != df_dataset_images(o->ds))
        return df_error(DF_ERR_INVALID,
                        "latent cache: buckets of %lld images for a data set of "
                        "%lld",
                        (long long)o->buckets->n_images, (long long)df_dataset_images(o->ds));
    DF_TRY(df_mkdirs(o->dir));
    df_latent_cache *c = calloc(1, sizeof *c);
    if (!c) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status s = df_pathf(c->path, sizeof c->path, "%s/latents.bin", o->dir);
    if (s != DF_OK) {
        free(c);
        return s;
    }
    uint32_t crc = vae_checksum(o->vae);
    uint64_t hash = settings_hash(o);
    int orient = o->transform.random_flip ? 2 : 1;
    s = cache_read(c, crc, hash, df_dataset_images(o->ds), orient, o->vae->config.latent_channels);
    if (s == DF_OK) {
        *out = c;
        return DF_OK;
    }
    if (s == DF_ERR_NOMEM || s == DF_ERR_IO) {
        free(c);
        return s;
    }
    snprintf(c->reason, sizeof c->reason, "%s", df_last_error());
    if (s != DF_ERR_NOTFOUND)
        fprintf(stderr, "diffusion: latent cache: %s: rebuilding it\n", c->reason);
    df_error_clear();
    c->built = true;
    s = cache_build(c, o, crc, hash);
    if (s != DF_OK) {
        df_latent_cache_free(c);
        return s;
    }
    *out = c;
    return DF_OK;
}

bool df_latent_cache_built(const df_latent_cache *c, const char **reason) {
    if (reason) *reason = c->reason;
    return c->built;
}

df_status df_latent_cache_get(const df_latent_cache *c, int64_t image, bool flipped,
                              df_tensor **mean, df_tensor **logvar) {
    if (image < 0 || image >= c->images)
        return df_error(DF_ERR_INVALID, "latent cache: image %lld out of %lld", (long long)image,
                        (long long)c->images);
    if (flipped && c->orientations < 2)
        return df_error(DF_ERR_INVALID, "latent cache: no flipped latents (random_flip was off "
                                        "when it was built)");
    int64_t e = image * c->orientations + (flipped ? 1 : 0);
    int64_t h = c->sizes[2 * e], w = c->sizes[2 * e + 1], per = (int64_t)c->channels * h * w;
    *mean = df_tensor_new(DF_DTYPE_F32, DF_DIMS(1, c->channels, h, w));
    *logvar = df_tensor_new(DF_DTYPE_F32, DF_DIMS(1, c->channels, h, w));
    memcpy(df_f32(*mean), c->data + c->offsets[e], sizeof(float) * (size_t)per);
    memcpy(df_f32(*logvar), c->data + c->offsets[e] + per, sizeof(float) * (size_t)per);
    return DF_OK;
}

df_status df_latent_cache_batch(const df_latent_cache *c, const df_batch *b, df_tensor **mean,
                                df_tensor **logvar) {
    int64_t h = 0, w = 0, per = 0;
    for (int i = 0; i < b->n; i++) {
        int64_t image = b->indices[i] % c->images;
        bool flip = b->flipped && b->flipped[i];
        if (flip && c->orientations < 2)
            return df_error(DF_ERR_INVALID, "latent cache: no flipped latents (random_flip was "
                                            "off when it was built)");
        int64_t e = image * c->orientations + (flip ? 1 : 0);
        if (i == 0) {
            h = c->sizes[2 * e];
            w = c->sizes[2 * e + 1];
            per = (int64_t)c->channels * h * w;
            *mean = df_tensor_new(DF_DTYPE_F32, DF_DIMS(b->n, c->channels, h, w));
            *logvar = df_tensor_new(DF_DTYPE_F32, DF_DIMS(b->n, c->channels, h, w));
        } else if (c->sizes[2 * e] != h || c->sizes[2 * e + 1] != w) {
            return df_error(DF_ERR_INVALID,
                            "latent cache: a batch mixes latent sizes %lldx%lld "
                            "and %ux%u",
                            (long long)h, (long long)w, c->sizes[2 * e], c->sizes[2 * e + 1]);
        }
        memcpy(df_f32(*mean) + i * per, c->data + c->offsets[e], sizeof(float) * (size_t)per);
        memcpy(df_f32(*logvar) + i * per, c->data + c->offsets[e] + per,
               sizeof(float) * (size_t)per);
    }
    if (b->n < 1) return df_error(DF_ERR_INVALID, "latent cache: an empty batch");
    return DF_OK;
}

df_status df_batch_latents(df_vae *vae, const df_latent_cache *cache, const df_batch *b,
                           df_philox *g, float scaling_factor, df_tensor **out) {
    df_tensor *mean, *logvar;
    if (cache) {
        DF_TRY(df_latent_cache_batch(cache, b, &mean, &logvar));
    } else {
        if (!b->pixels)
            return df_error(DF_ERR_INVALID, "latents: a batch without pixels and no latent cache");
        DF_TRY(df_vae_check_sample(&vae->config, b->pixels));
        bool grad = df_grad_set_enabled(false);
        df_vae_encode(vae, b->pixels, &mean, &logvar);
        df_grad_set_enabled(grad);
    }
    df_tensor *z = df_posterior_sample(mean, logvar, df_posterior_noise(mean, g));
    *out = scaling_factor != 1.0f ? df_mul_scalar(z, scaling_factor) : z;
    return DF_OK;
}

void df_latent_cache_free(df_latent_cache *c) {
    if (!c) return;
    cache_release(c);
    free(c);
}
