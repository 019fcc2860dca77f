/* image_jpeg.c — JPEG decoding through libjpeg-turbo (baseline, progressive, grey, CMYK/YCCK).
 *
 * Settings equal Pillow's JpegDecode (islow DCT, fancy upsampling), so pixels are identical
 * with the same library. CMYK is read as Pillow reads it ("CMYK;I": Adobe's inverted samples)
 * and converted with Pillow's cmyk2rgb: nk = 255 - k; channel = nk - nk * c / 255 (rounded
 * with the MULDIV255 shift trick).
 *
 * libjpeg reports fatal errors through error_exit, which we make longjmp back to the decoder;
 * the output tensor and the row buffer are `volatile` locals released on that path. A file
 * that ends early is an error (libjpeg only warns with JWRN_JPEG_EOF and pads with grey;
 * Pillow raises "image file is truncated"). Other warnings (corrupt data) are ignored, as Pillow.
 * libjpeg's own memory is capped at 512 MiB (progressive coefficient buffers of an 8K x 8K
 * 4:4:4 image fit; a decompression bomb fails with "Backing store not supported").
 */
#include "datasets/datasets_impl.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#define DF_JPEG_MAX_MEMORY (512L << 20)

typedef struct jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jerr;

static void on_error_exit(j_common_ptr cinfo) {
    jerr *e = (jerr *)cinfo->err;
    cinfo->err->format_message(cinfo, e->msg);
    longjmp(e->jmp, 1);
}

static void on_emit(j_common_ptr cinfo, int level) {
    jerr *e = (jerr *)cinfo->err;
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        snprintf(e->msg, sizeof e->msg, "file is truncated");
        longjmp(e->jmp, 1);
    }
    if (level < 0) cinfo->err->num_warnings++;
}

static void on_output(j_common_ptr cinfo) {
    (void)cinfo;
}

static void setup(struct jpeg_decompress_struct *ci, jerr *e) {
    ci->err = jpeg_std_error(&e->pub);
    e->pub.error_exit = on_error_exit;
    e->pub.emit_message = on_emit;
    e->pub.output_message = on_output;
    e->msg[0] = '\0';
}

df_status df__jpeg_probe(const void *bytes, size_t n, const char *name, int *w, int *h) {
    struct jpeg_decompress_struct ci;
    jerr e;
    setup(&ci, &e);
    if (setjmp(e.jmp)) {
        jpeg_destroy_decompress(&ci);
        return df_error(DF_ERR_FORMAT, "%s: JPEG: %s", name, e.msg);
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, bytes, (unsigned long)n);
    jpeg_read_header(&ci, TRUE);
    *w = (int)ci.image_width;
    *h = (int)ci.image_height;
    jpeg_destroy_decompress(&ci);
    return df__image_check_dims(name, *w, *h);
}

/* Pillow's MULDIV255: a * b / 255 rounded, without a division. */
static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

df_status df__jpeg_decode(const void *bytes, size_t n, const char *name, df_tensor **out) {
    struct jpeg_decompress_struct ci;
    jerr e;
    df_tensor *volatile img = NULL;
    uint8_t *volatile cmyk = NULL;
    setup(&ci, &e);
    if (setjmp(e.jmp)) {
        jpeg_destroy_decompress(&ci);
        free(cmyk);
        df_tensor_free(img);
        return df_error(DF_ERR_FORMAT, "%s: JPEG: %s", name, e.msg);
    }
    jpeg_create_decompress(&ci);
    jpeg_mem_src(&ci, bytes, (unsigned long)n);
    jpeg_read_header(&ci, TRUE);
    df_status s = df__image_check_dims(name, ci.image_width, ci.image_height);
    if (s != DF_OK) {
        jpeg_destroy_decompress(&ci);
        return s;
    }
    int channels;
    bool is_cmyk = false;
    switch (ci.jpeg_color_space) {
    case JCS_GRAYSCALE: ci.out_color_space = JCS_GRAYSCALE, channels = 1; break;
    case JCS_CMYK:
    case JCS_YCCK: ci.out_color_space = JCS_CMYK, channels = 3, is_cmyk = true; break;
    default: ci.out_color_space = JCS_RGB, channels = 3; break;
    }
    /* libjpeg-turbo has no backing store: past this budget it fails cleanly instead of
     * allocating, so a small progressive file claiming a huge image cannot take gigabytes for
     * its coefficient buffers */
    ci.mem->max_memory_to_use = DF_JPEG_MAX_MEMORY;
    ci.dct_method = JDCT_ISLOW;
    ci.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&ci);
    int w = (int)ci.output_width, h = (int)ci.output_height;
    if ((int)ci.output_components != (is_cmyk ? 4 : channels)) {
        snprintf(e.msg, sizeof e.msg, "unexpected component count %d", ci.output_components);
        longjmp(e.jmp, 1);
    }
    img = df_tensor_new(DF_DTYPE_U8, DF_DIMS(h, w, channels));
    if (is_cmyk) {
        cmyk = malloc((size_t)w * 4);
        if (!cmyk) {
            snprintf(e.msg, sizeof e.msg, "out of memory");
            longjmp(e.jmp, 1);
        }
    }
    uint8_t *base = img->data;
    while (ci.output_scanline < ci.output_height) {
        uint8_t *row = base + (size_t)ci.output_scanline * w * channels;
        JSAMPROW rp = is_cmyk ? cmyk : row;
        jpeg_read_scanlines(&ci, &rp, 1);
        if (is_cmyk) {
            for (int x = 0; x < w; x++) {
                /* Pillow's "CMYK;I" rawmode inverts Adobe's stored samples first */
                const uint8_t *p = cmyk + 4 * x;
                int nk = p[3];
                for (int c = 0; c < 3; c++) {
                    int v = nk - muldiv255(255 - p[c], nk);
                    row[3 * x + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
            }
        }
    }
    jpeg_finish_decompress(&ci);
    jpeg_destroy_decompress(&ci);
    free(cmyk);
    *out = img;
    return DF_OK;
}
