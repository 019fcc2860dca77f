/* image_util.h — helpers shared by the datasets tests: expected-pixel files written by
 * tests/ref/gen_images.py, exact image comparison, and temporary dataset folders. */
#ifndef DF_TEST_IMAGE_UTIL_H
#define DF_TEST_IMAGE_UTIL_H

#include "datasets/datasets.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads a "DFPX" file (uint32 h, w, c + bytes) into a new U8 (h, w, c) tensor. */
static inline df_tensor *load_pixels(const char *rel) {
    const char *p = fixture_path(rel);
    FILE *f = fopen(p, "rb");
    cr_assert(f, "missing fixture %s", p);
    char magic[4];
    uint32_t d[3];
    cr_assert(fread(magic, 1, 4, f) == 4 && memcmp(magic, "DFPX", 4) == 0, "%s: bad magic", p);
    cr_assert(fread(d, 4, 3, f) == 3);
    df_tensor *t = df_tensor_new(DF_DTYPE_U8, DF_DIMS(d[0], d[1], d[2]));
    cr_assert(fread(t->data, 1, (size_t)t->numel, f) == (size_t)t->numel, "%s: short", p);
    fclose(f);
    return t;
}

/* Pixel-exact comparison of two U8 images (shape first, then values with tolerance atol). */
static inline void check_image(const char *label, const df_tensor *got, const df_tensor *want,
                               double atol) {
    cr_assert_eq(got->ndim, 3, "%s: ndim %d", label, got->ndim);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(got->shape[i], want->shape[i], "%s: dim %d is %lld, want %lld", label, i,
                     (long long)got->shape[i], (long long)want->shape[i]);
    df_tensor *a = df_tensor_to(got, DF_DTYPE_F32), *b = df_tensor_to(want, DF_DTYPE_F32);
    check_close_f32(label, df_f32(a), df_f32(b), a->numel, atol, 0.0);
    df_tensor_free(a);
    df_tensor_free(b);
}

/* A fresh empty directory under $TMPDIR; returns a static buffer. */
static inline const char *temp_dir(const char *tag) {
    static char buf[512];
    const char *t = getenv("TMPDIR");
    snprintf(buf, sizeof buf, "%s/df_test_%s_XXXXXX", t ? t : "/tmp", tag);
    cr_assert(mkdtemp(buf), "mkdtemp failed");
    return buf;
}

static inline void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* An (h, w, 3) image whose pixels encode (id, y, x), so every sample is recognisable. */
static inline df_tensor *make_image(int id, int h, int w) {
    df_tensor *t = df_tensor_new(DF_DTYPE_U8, DF_DIMS(h, w, 3));
    uint8_t *p = t->data;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            p[(y * w + x) * 3 + 0] = (uint8_t)(id * 7);
            p[(y * w + x) * 3 + 1] = (uint8_t)(y * 9);
            p[(y * w + x) * 3 + 2] = (uint8_t)(x * 11);
        }
    return t;
}

/* A metadata.jsonl folder of n PNG images img<i>.png (h x w) captioned "caption <i>". */
static inline const char *make_folder(const char *tag, int n, int h, int w) {
    const char *d = temp_dir(tag);
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", d);
    char path[640];
    snprintf(path, sizeof path, "%s/metadata.jsonl", dir);
    FILE *meta = fopen(path, "wb");
    cr_assert(meta);
    for (int i = 0; i < n; i++) {
        df_tensor *img = make_image(i, h, w);
        snprintf(path, sizeof path, "%s/img%03d.png", dir, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
        fprintf(meta, "{\"file_name\": \"img%03d.png\", \"text\": \"caption %d\"}\n", i, i);
    }
    fclose(meta);
    return dir;
}

static inline void remove_tree(const char *dir) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

#endif
