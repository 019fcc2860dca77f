/* silhouette.c — the alpha silhouette of an image with transparency (emoji), a conditioning
 * image for a ControlNet that makes generations follow an outline: 255 (white, in the three
 * channels) where alpha >= threshold (128 by default), 0 elsewhere. The alpha comes from the
 * file itself (grey + alpha, RGBA, or a palette's tRNS, as the PNG decoder expands them); a file
 * without transparency has no silhouette (an error naming it). And the conditioning generators
 * as one spec string (df_conditioning_parse / df_conditioning_make).
 */
#include "datasets/datasets_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

df_status df_image_read_alpha(const char *path, df_tensor **out) {
    char *buf;
    size_t n;
    *out = NULL;
    DF_TRY(df__read_file(path, &buf, &n));
    bool png = n >= 8 && memcmp(buf, "\x89PNG\r\n\x1a\n", 8) == 0;
    if (!png) {
        free(buf);
        return df_error(DF_ERR_INVALID, "%s: not a PNG: no alpha channel for a silhouette", path);
    }
    df_scope_pause pause = df_scope_suspend();
    df_tensor *raw = NULL;
    df_status st = df__png_decode(buf, n, path, &raw);
    df_scope_resume(pause);
    free(buf);
    if (st != DF_OK) return st;
    int64_t c = raw->shape[2];
    if (c != 2 && c != 4) {
        df_tensor_free(raw);
        return df_error(DF_ERR_INVALID, "%s: no alpha channel (a silhouette needs transparency)",
                        path);
    }
    int64_t np = raw->shape[0] * raw->shape[1];
    df_tensor *a = df_tensor_new(DF_DTYPE_U8, DF_DIMS(raw->shape[0], raw->shape[1], 1));
    const uint8_t *s = raw->data;
    for (int64_t i = 0; i < np; i++) ((uint8_t *)a->data)[i] = s[i * c + c - 1];
    df_tensor_free(raw);
    *out = a;
    return DF_OK;
}

df_tensor *df_silhouette(const df_tensor *alpha, int threshold) {
    DF_ASSERT(alpha->dtype == DF_DTYPE_U8 && alpha->ndim == 3 && alpha->shape[2] == 1,
              "df_silhouette: alpha must be U8 (H, W, 1)");
    int64_t np = alpha->shape[0] * alpha->shape[1];
    df_tensor *o = df_tensor_new(DF_DTYPE_U8, DF_DIMS(alpha->shape[0], alpha->shape[1], 3));
    const uint8_t *a = alpha->data;
    uint8_t *d = o->data;
    for (int64_t i = 0; i < np; i++)
        d[3 * i] = d[3 * i + 1] = d[3 * i + 2] = a[i] >= threshold ? 255 : 0;
    return o;
}

df_status df_conditioning_parse(const char *spec, df_conditioning *out) {
    memset(out, 0, sizeof *out);
    char tail[64] = "";
    int a = 0, b = 0, k = 0;
    if (strcmp(spec, "file") == 0) {
        out->kind = DF_COND_FILE;
        return DF_OK;
    }
    if (strncmp(spec, "canny", 5) == 0) {
        out->kind = DF_COND_CANNY;
        out->low = 100, out->high = 200;
        if (spec[5] == '\0') return DF_OK;
        if (sscanf(spec + 5, ":%d:%d%n%63s", &a, &b, &k, tail) == 2 && spec[5 + k] == '\0' &&
            a >= 0 && a <= b && b <= 4080) {
            out->low = a, out->high = b;
            return DF_OK;
        }
    } else if (strncmp(spec, "silhouette", 10) == 0) {
        out->kind = DF_COND_SILHOUETTE;
        out->threshold = 128;
        if (spec[10] == '\0') return DF_OK;
        if (sscanf(spec + 10, ":%d%n", &a, &k) == 1 && spec[10 + k] == '\0' && a >= 1 && a <= 255) {
            out->threshold = a;
            return DF_OK;
        }
    }
    return df_error(DF_ERR_INVALID,
                    "conditioning '%s': file, canny[:LOW:HIGH] (0 <= LOW <= HIGH <= 4080) or "
                    "silhouette[:T] (1 to 255)",
                    spec);
}

df_status df_conditioning_make(const df_conditioning *c, const char *path, df_tensor **out) {
    *out = NULL;
    df_scope scope = df_scope_begin(); /* the temporaries go with it; the result is retained */
    df_tensor *img = NULL, *res = NULL;
    df_status st = DF_OK;
    if (c->kind == DF_COND_SILHOUETTE) {
        st = df_image_read_alpha(path, &img);
        if (st == DF_OK) res = df_silhouette(img, c->threshold);
    } else {
        df_decode_opts o = df_decode_opts_default();
        st = df_image_read(path, &o, &img);
        if (st == DF_OK && c->kind == DF_COND_FILE)
            res = img;
        else if (st == DF_OK)
            st = df_canny(img, c->low, c->high, &res);
    }
    if (st == DF_OK) df_tensor_retain(res);
    df_scope_end(scope);
    *out = st == DF_OK ? res : NULL;
    return st;
}
