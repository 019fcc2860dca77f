/* image_png.c — PNG decoding and encoding through libpng 1.6.
 *
 * Every PNG colour type and bit depth is normalised to 8-bit grey, grey+alpha, RGB or RGBA:
 * 16-bit samples keep their high byte (png_set_strip_16, as Pillow's ";16B" unpackers),
 * 1/2/4-bit grey is scaled to 0..255, palettes expand to RGB, tRNS becomes an alpha channel.
 * Interlaced images are read whole (png_read_image handles the passes).
 *
 * libpng reports errors by longjmp to the png_jmpbuf: every resource that may be live at that
 * point (png structs, the row pointer array, the output tensor) is held in a `volatile` local
 * and released on the error path, so no failure leaks. Dimensions are checked after the IHDR
 * and before any pixel allocation, and so is the file size: deflate cannot expand more than
 * 1032:1, so a file too small for its declared image is refused without allocating it.
 */
#include "datasets/datasets_impl.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct png_src {
    const unsigned char *data;
    size_t len, pos;
    const char *name;
    char msg[256];
} png_src;

static void on_error(png_structp png, png_const_charp msg) {
    png_src *src = png_get_error_ptr(png);
    snprintf(src->msg, sizeof src->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void read_mem(png_structp png, png_bytep out, png_size_t n) {
    png_src *src = png_get_io_ptr(png);
    if (n > src->len - src->pos) png_error(png, "file is truncated");
    memcpy(out, src->data + src->pos, n);
    src->pos += n;
}

/* Shared set-up and header read; returns false on a libpng failure (message in src->msg). */
static df_status png_fail(const char *name, const png_src *src) {
    return df_error(DF_ERR_FORMAT, "%s: PNG: %s", name, src->msg[0] ? src->msg : "decode failed");
}

df_status df__png_probe(const void *bytes, size_t n, const char *name, int *w, int *h) {
    png_src src = {.data = bytes, .len = n, .name = name};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, on_error, on_warning);
    if (!png) return df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", name);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", name);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        return png_fail(name, &src);
    }
    png_set_read_fn(png, &src, read_mem);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    *w = (int)png_get_image_width(png, info);
    *h = (int)png_get_image_height(png, info);
    png_destroy_read_struct(&png, &info, NULL);
    return df__image_check_dims(name, *w, *h);
}

df_status df__png_decode(const void *bytes, size_t n, const char *name, df_tensor **out) {
    png_src src = {.data = bytes, .len = n, .name = name};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, on_error, on_warning);
    if (!png) return df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", name);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", name);
    }
    png_bytep *volatile rows = NULL;
    df_tensor *volatile img = NULL;
    df_status status = DF_OK;
    if (setjmp(png_jmpbuf(png))) {
        status = png_fail(name, &src);
        goto done;
    }
    png_set_read_fn(png, &src, read_mem);
    /* the limit itself is ours (checked below, with a better message); libpng's default of
     * 1,000,000 per side would refuse valid images */
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if ((status = df__image_check_dims(name, w, h)) != DF_OK) goto done;
    /* deflate expands at most 1032:1, so the file bounds the raw scanline bytes: refusing what
     * cannot fit keeps a small file from making us allocate a huge image */
    uint64_t raw = (uint64_t)h * (1 + ((uint64_t)w * png_get_channels(png, info) * depth + 7) / 8);
    if (raw > (uint64_t)n * 1100) {
        status = df_error(
            DF_ERR_FORMAT,
            "%s: PNG: %u bytes are too few for a %u x %u image (truncated or a decompression bomb)",
            name, (unsigned)n, (unsigned)w, (unsigned)h);
        goto done;
    }

    if (depth == 16) png_set_strip_16(png);
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    if (png_get_bit_depth(png, info) != 8 || channels < 1 || channels > 4 ||
        png_get_rowbytes(png, info) != (size_t)w * (size_t)channels) {
        snprintf(src.msg, sizeof src.msg, "unsupported sample layout");
        status = png_fail(name, &src);
        goto done;
    }
    img = df_tensor_new(DF_DTYPE_U8, DF_DIMS(h, w, channels));
    rows = malloc(sizeof(png_bytep) * h);
    if (!rows) {
        status = df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", name);
        goto done;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = (uint8_t *)img->data + (size_t)y * w * channels;
    png_read_image(png, rows);
    png_read_end(png, NULL);
done:
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    if (status != DF_OK) {
        df_tensor_free(img);
        return status;
    }
    *out = img;
    return DF_OK;
}

df_status df_png_write(const char *path, const df_tensor *img, int n_text, const char *const *keys,
                       const char *const *values) {
    DF_ASSERT(img->dtype == DF_DTYPE_U8 && img->ndim == 3 && img->shape[2] >= 1 &&
                  img->shape[2] <= 4,
              "df_png_write: image must be U8 (H, W, C) with C in 1..4");
    int h = (int)img->shape[0], w = (int)img->shape[1], c = (int)img->shape[2];
    for (int i = 0; i < n_text; i++) {
        size_t kl = strlen(keys[i]);
        if (kl < 1 || kl > 79)
            return df_error(DF_ERR_INVALID, "%s: PNG tEXt key '%s' must have 1 to 79 characters",
                            path, keys[i]);
    }
    df_outfile of;
    DF_TRY(df_outfile_begin(&of, path));
    FILE *volatile f = fopen(df_outfile_name(&of), "wb");
    if (!f) {
        df_status e = df_error(DF_ERR_IO, "%s: cannot create: %m", path);
        df_outfile_abort(&of);
        return e;
    }
    png_src src = {.name = path};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &src, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_textp volatile text = NULL;
    png_bytep *volatile rows = NULL;
    df_status status = DF_OK;
    if (!info) {
        status = df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", path);
        goto done;
    }
    if (setjmp(png_jmpbuf(png))) {
        status = df_error(DF_ERR_IO, "%s: PNG: %s", path, src.msg);
        goto done;
    }
    png_init_io(png, f);
    static const int ctypes[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA,
                                  PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA};
    png_set_IHDR(png, info, w, h, 8, ctypes[c], PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0) {
        text = calloc((size_t)n_text, sizeof *text);
        if (!text) {
            status = df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", path);
            goto done;
        }
        for (int i = 0; i < n_text; i++) {
            text[i].compression = PNG_TEXT_COMPRESSION_NONE;
            text[i].key = (char *)keys[i];
            text[i].text = (char *)values[i];
            text[i].text_length = strlen(values[i]);
        }
        png_set_text(png, info, text, n_text);
    }
    rows = malloc(sizeof(png_bytep) * (size_t)h);
    if (!rows) {
        status = df_error(DF_ERR_NOMEM, "%s: PNG: out of memory", path);
        goto done;
    }
    for (int y = 0; y < h; y++) rows[y] = (uint8_t *)img->data + (size_t)y * w * c;
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
done:
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    free(text);
    free(rows);
    if (fclose(f) != 0 && status == DF_OK)
        status = df_error(DF_ERR_IO, "%s: write failed: %m", path);
    /* `path` is replaced only by a complete PNG: a failure leaves its previous bytes */
    if (status == DF_OK)
        status = df_outfile_commit(&of);
    else
        df_outfile_abort(&of);
    return status;
}
