/* buckets.c — aspect-ratio buckets (kohya sd-scripts' enable_bucket): the bucket list, which
 * bucket each image goes to, and the resize + crop that fits it, read from kohya's
 * library/model_util.py make_bucket_resolutions and library/train_util.py BucketManager
 * (select_bucket with upscaling allowed, trim_and_resize_if_required):
 *
 *   list:   A = resolution^2; the square (s, s), s = floor(sqrt(A) / steps) * steps; then for
 *           w = min_reso, min_reso + steps, ... <= max_reso: h = min(max_reso,
 *           floor(floor(A / w) / steps) * steps); when h >= min_reso, (w, h) and (h, w).
 *           Distinct (w, h), sorted by w then h.
 *   assign: an image of exactly a bucket's (w, h) goes there; else to the bucket of the closest
 *           aspect ratio w / h (the first of equals in list order, as numpy's argmin).
 *   fit:    scale = bucket_h / H when W / H > bucket w / h (wider: match the heights), else
 *           bucket_w / W; resize to (int(W * scale + 0.5), int(H * scale + 0.5)); crop the
 *           excess of each side at (excess / 2) floored, or at a random offset in
 *           [0, excess] (random crop).
 *
 * Our rule for an image with no bucket (kohya crops whatever comes): an aspect ratio outside
 * the list's range [min w / h, max w / h] would lose more than the most extreme bucket allows,
 * so it is an error naming the image, its size and the range.
 */
#include "datasets/datasets_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

df_bucket_opts df_bucket_opts_default(int resolution) {
    return (df_bucket_opts){
        .resolution = resolution, .min_reso = 256, .max_reso = 1024, .reso_steps = 64};
}

static int cmp_reso(const void *a, const void *b) {
    const int *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

df_status df_bucket_resolutions(const df_bucket_opts *o, int (**out)[2], int *n) {
    *out = NULL;
    *n = 0;
    if (o->reso_steps < 1 || o->min_reso < 1 || o->max_reso < o->min_reso || o->resolution < 1 ||
        o->max_reso > DF_IMAGE_MAX_SIDE)
        return df_error(DF_ERR_INVALID,
                        "buckets: need 1 <= min_bucket_reso (%d) <= max_bucket_reso (%d) <= %d, "
                        "bucket_reso_steps (%d) >= 1 and resolution (%d) >= 1",
                        o->min_reso, o->max_reso, DF_IMAGE_MAX_SIDE, o->reso_steps, o->resolution);
    if (o->max_reso < o->resolution)
        return df_error(DF_ERR_INVALID,
                        "buckets: max_bucket_reso (%d) must be at least the "
                        "resolution (%d), as kohya asserts",
                        o->max_reso, o->resolution);
    int64_t area = (int64_t)o->resolution * o->resolution, steps = o->reso_steps;
    int cap = 2 * ((o->max_reso - o->min_reso) / o->reso_steps + 1) + 1, k = 0;
    int(*r)[2] = malloc(sizeof *r * (size_t)cap);
    DF_ASSERT(r, "out of memory");
    int64_t side = (int64_t)(sqrt((double)area) / (double)steps) * steps;
    r[k][0] = r[k][1] = (int)side;
    k++;
    for (int64_t w = o->min_reso; w <= o->max_reso; w += steps) {
        int64_t h = area / w / steps * steps;
        if (h > o->max_reso) h = o->max_reso;
        if (h < o->min_reso) continue;
        r[k][0] = (int)w, r[k][1] = (int)h, k++;
        r[k][0] = (int)h, r[k][1] = (int)w, k++;
    }
    qsort(r, (size_t)k, sizeof *r, cmp_reso);
    int m = 0;
    for (int i = 0; i < k; i++)
        if (m == 0 || r[i][0] != r[m - 1][0] || r[i][1] != r[m - 1][1]) {
            r[m][0] = r[i][0];
            r[m][1] = r[i][1];
            m++;
        }
    if (m < 1 || r[0][0] < 1 || r[0][1] < 1) {
        free(r);
        return df_error(DF_ERR_INVALID,
                        "buckets: the settings give no bucket (resolution %d, "
                        "bucket_reso_steps %d)",
                        o->resolution, o->reso_steps);
    }
    *out = r;
    *n = m;
    return DF_OK;
}

int df_bucket_select(const int (*resos)[2], int n, int width, int height, int *resized_w,
                     int *resized_h) {
    double ar = (double)width / height;
    int best = -1;
    for (int i = 0; i < n && best < 0; i++)
        if (resos[i][0] == width && resos[i][1] == height) best = i;
    if (best < 0) {
        double err = INFINITY;
        for (int i = 0; i < n; i++) {
            double e = fabs((double)resos[i][0] / resos[i][1] - ar);
            if (e < err) err = e, best = i;
        }
    }
    double bar = (double)resos[best][0] / resos[best][1];
    double scale = ar > bar ? (double)resos[best][1] / height : (double)resos[best][0] / width;
    *resized_w = (int)(width * scale + 0.5);
    *resized_h = (int)(height * scale + 0.5);
    return best;
}

/* Width and height of image i: the file's header (no decode), or the decoded pack image. */
static df_status image_size(const df_dataset *ds, int64_t i, int *w, int *h) {
    if (ds->kind == DF_DATASET_HDF5) {
        df_tensor *img;
        df_scope_pause pause = df_scope_suspend();
        df_status s = df_dataset_image(ds, i, NULL, &img);
        if (s == DF_OK) {
            *h = (int)img->shape[0];
            *w = (int)img->shape[1];
            df_tensor_free(img);
        }
        df_scope_resume(pause);
        return s;
    }
    size_t len = strlen(ds->root) + strlen(ds->files[i]) + 2;
    char *p = malloc(len);
    DF_ASSERT(p, "out of memory");
    snprintf(p, len, "%s/%s", ds->root, ds->files[i]);
    char *buf;
    size_t n;
    df_status s = df__read_file(p, &buf, &n);
    if (s == DF_OK) {
        s = df_image_probe(buf, n, p, w, h);
        free(buf);
    }
    free(p);
    return s;
}

df_status df_buckets_assign(const df_dataset *ds, const df_bucket_opts *o, df_buckets *out) {
    memset(out, 0, sizeof *out);
    DF_TRY(df_bucket_resolutions(o, &out->resos, &out->n));
    int64_t n = df_dataset_images(ds);
    out->n_images = n;
    out->bucket = calloc((size_t)n + 1, sizeof(int));
    out->resized = calloc((size_t)n + 1, sizeof *out->resized);
    DF_ASSERT(out->bucket && out->resized, "out of memory");
    double lo = INFINITY, hi = 0;
    for (int b = 0; b < out->n; b++) {
        double ar = (double)out->resos[b][0] / out->resos[b][1];
        lo = ar < lo ? ar : lo;
        hi = ar > hi ? ar : hi;
    }
    for (int64_t i = 0; i < n; i++) {
        int w, h;
        df_status s = image_size(ds, i, &w, &h);
        if (s != DF_OK) {
            df_buckets_free(out);
            return s;
        }
        double ar = (double)w / h;
        if (ar < lo * (1 - 1e-9) || ar > hi * (1 + 1e-9)) {
            df_buckets_free(out);
            return df_error(DF_ERR_INVALID,
                            "%s/%s: %dx%d (aspect ratio %.3g) fits no bucket: the buckets' "
                            "aspect ratios span %.3g to %.3g (min_bucket_reso %d, "
                            "max_bucket_reso %d, resolution %d)",
                            ds->root, ds->files[i], w, h, ar, lo, hi, o->min_reso, o->max_reso,
                            o->resolution);
        }
        out->bucket[i] = df_bucket_select((const int(*)[2])out->resos, out->n, w, h,
                                          &out->resized[i][0], &out->resized[i][1]);
    }
    return DF_OK;
}

void df_buckets_free(df_buckets *b) {
    free(b->resos);
    free(b->bucket);
    free(b->resized);
    memset(b, 0, sizeof *b);
}

bool df_buckets_apply(const df_buckets *b, const df_transform *t, int64_t image,
                      const df_tensor *img, df_philox *g, float *dst) {
    DF_ASSERT(image >= 0 && image < b->n_images, "df_buckets_apply: image %lld out of %lld",
              (long long)image, (long long)b->n_images);
    const int *reso = b->resos[b->bucket[image]];
    int bw = reso[0], bh = reso[1];
    int rw = b->resized[image][0] < bw ? bw : b->resized[image][0];
    int rh = b->resized[image][1] < bh ? bh : b->resized[image][1];
    df_tensor *resized = NULL;
    const df_tensor *cur = img;
    if (img->shape[0] != rh || img->shape[1] != rw) {
        df_scope_pause pause = df_scope_suspend(); /* the resized copy is ours to free */
        resized = df_image_resize(img, rh, rw, t->filter);
        df_scope_resume(pause);
        cur = resized;
    }
    int top, left;
    if (t->center_crop) {
        top = (rh - bh) / 2;
        left = (rw - bw) / 2;
    } else {
        df_random_crop_offsets(g, rh, rw, bh, bw, &top, &left);
    }
    bool flip = df_transform_draw_flip(t, g);
    int c = (int)cur->shape[2];
    const uint8_t *s = cur->data;
    size_t plane = (size_t)bh * bw;
    for (int y = 0; y < bh; y++) {
        const uint8_t *row = s + ((size_t)(top + y) * rw + left) * c;
        for (int x = 0; x < bw; x++) {
            const uint8_t *p = row + (size_t)(flip ? bw - 1 - x : x) * c;
            for (int ch = 0; ch < c; ch++)
                dst[ch * plane + (size_t)y * bw + x] = p[ch] / 127.5f - 1.0f;
        }
    }
    df_tensor_free(resized);
    return flip;
}
