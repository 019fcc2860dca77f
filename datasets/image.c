/* image.c — format dispatch by magic bytes, file reading, dimension guards, and the final
 * conversion of decoded samples: alpha composited onto a background colour and RGB/grey
 * conversion.
 *
 * Reference: Pillow 9.4. Compositing equals
 *   Image.alpha_composite(Image.new("RGBA", size, bg + (255,)), im.convert("RGBA"))
 * (libImaging/AlphaComposite.c with an opaque destination: coef1 = a * 128, coef2 =
 * (255 - a) * 128, the sum divided by 255 with its shift trick), grey -> RGB replicates, and
 * RGB -> grey is Pillow's "L" conversion (ITU-R 601-2 luma, 16-bit fixed point).
 */
#include "datasets/datasets_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

df_decode_opts df_decode_opts_default(void) {
    return (df_decode_opts){.channels = 3, .background = {255, 255, 255}};
}

df_status df__image_check_dims(const char *name, int64_t w, int64_t h) {
    if (w <= 0 || h <= 0)
        return df_error(DF_ERR_FORMAT, "%s: image has zero size (%lld x %lld)", name, (long long)w,
                        (long long)h);
    if (w > DF_IMAGE_MAX_SIDE || h > DF_IMAGE_MAX_SIDE || w * h > DF_IMAGE_MAX_PIXELS)
        return df_error(
            DF_ERR_FORMAT,
            "%s: image dimensions %lld x %lld exceed the limit (%d per side, %lld pixels)", name,
            (long long)w, (long long)h, DF_IMAGE_MAX_SIDE, (long long)DF_IMAGE_MAX_PIXELS);
    return DF_OK;
}

static bool is_png(const unsigned char *b, size_t n) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    return n >= 8 && memcmp(b, sig, 8) == 0;
}

static bool is_jpeg(const unsigned char *b, size_t n) {
    return n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff;
}

df_status df_image_decode(const void *bytes, size_t n, const char *name, const df_decode_opts *opts,
                          df_tensor **out) {
    df_decode_opts def = df_decode_opts_default();
    if (!opts) opts = &def;
    DF_ASSERT(opts->channels == 1 || opts->channels == 3, "df_image_decode: channels %d not 1 or 3",
              opts->channels);
    *out = NULL;
    if (!is_png(bytes, n) && !is_jpeg(bytes, n))
        return df_error(DF_ERR_FORMAT, "%s: not a PNG or JPEG file (unknown magic bytes)", name);
    /* the decoders free what they made on error: own everything until the result is handed over */
    df_scope_pause pause = df_scope_suspend();
    df_tensor *raw = NULL;
    df_status s = is_png(bytes, n) ? df__png_decode(bytes, n, name, &raw)
                                   : df__jpeg_decode(bytes, n, name, &raw);
    df_scope_resume(pause);
    if (s != DF_OK) return s;
    pause = df_scope_suspend();
    df_tensor *img = df__image_finish(raw, opts);
    df_scope_resume(pause);
    *out = df_tensor_adopt(img);
    return DF_OK;
}

df_status df_image_probe(const void *bytes, size_t n, const char *name, int *width, int *height) {
    if (is_png(bytes, n)) return df__png_probe(bytes, n, name, width, height);
    if (is_jpeg(bytes, n)) return df__jpeg_probe(bytes, n, name, width, height);
    return df_error(DF_ERR_FORMAT, "%s: not a PNG or JPEG file (unknown magic bytes)", name);
}

const char *df__file_kind(mode_t mode) {
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
    if (S_ISDIR(mode)) return "a directory";
    return "not a regular file";
}

df_status df__read_file(const char *path, char **buf, size_t *len) {
    *buf = NULL;
    *len = 0;
    /* O_NONBLOCK: opening a FIFO for reading must not wait for a writer; anything but a regular
     * file is refused before a byte is read (a FIFO or a device would block or never end) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return df_error(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: %s", path,
                        strerror(errno));
    struct stat st = {0};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return df_error(DF_ERR_IO, "%s: %s, not a regular file", path, df__file_kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return df_error(DF_ERR_NOMEM, "%s: %s", path, strerror(errno));
    }
    char *b = NULL;
    size_t n = 0, cap = 0, want = 4096;
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz > 0) want = (size_t)sz + 1;
        rewind(f);
    }
    for (;;) {
        if (n + 1 >= cap) {
            cap = cap ? cap * 2 : want;
            char *nb = realloc(b, cap + 1);
            if (!nb) {
                free(b);
                fclose(f);
                return df_error(DF_ERR_NOMEM, "%s: out of memory reading the file", path);
            }
            b = nb;
        }
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(b);
        return df_error(DF_ERR_IO, "%s: read error", path);
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return DF_OK;
}

df_status df_image_read(const char *path, const df_decode_opts *opts, df_tensor **out) {
    char *buf;
    size_t n;
    *out = NULL;
    DF_TRY(df__read_file(path, &buf, &n));
    df_status s = df_image_decode(buf, n, path, opts, out);
    free(buf);
    return s;
}

/* Pillow's alpha_composite onto an opaque background (AlphaComposite.c, PRECISION_BITS 7). */
static inline uint8_t composite(unsigned v, unsigned a, unsigned bg) {
    unsigned coef1 = a * 128, coef2 = 255 * 128 - coef1;
    unsigned t = v * coef1 + bg * coef2 + (0x80u << 7);
    return (uint8_t)((((t >> 8) + t) >> 8) >> 7);
}

/* Pillow's RGB -> L: (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16. */
static inline uint8_t luma(unsigned r, unsigned g, unsigned b) {
    return (uint8_t)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

df_tensor *df__image_finish(df_tensor *raw, const df_decode_opts *opts) {
    int h = (int)raw->shape[0], w = (int)raw->shape[1], cin = (int)raw->shape[2];
    int cout = opts->channels;
    if (cin == cout) return raw;
    df_tensor *o = df_tensor_new(DF_DTYPE_U8, DF_DIMS(h, w, cout));
    const uint8_t *s = raw->data;
    uint8_t *d = o->data;
    const uint8_t *bg = opts->background;
    int64_t np = (int64_t)h * w;
    for (int64_t i = 0; i < np; i++, s += cin, d += cout) {
        unsigned r, g, b;
        switch (cin) {
        case 1: r = g = b = s[0]; break;
        case 2:
            if (opts->drop_alpha) {
                r = g = b = s[0];
                break;
            }
            r = composite(s[0], s[1], bg[0]);
            g = composite(s[0], s[1], bg[1]);
            b = composite(s[0], s[1], bg[2]);
            break;
        case 3: r = s[0], g = s[1], b = s[2]; break;
        default:
            if (s[3] == 255 ||
                opts->drop_alpha) { /* exact shortcuts of the formula for opaque and clear pixels */
                r = s[0], g = s[1], b = s[2];
                break;
            }
            if (s[3] == 0) {
                r = bg[0], g = bg[1], b = bg[2];
                break;
            }
            r = composite(s[0], s[3], bg[0]);
            g = composite(s[1], s[3], bg[1]);
            b = composite(s[2], s[3], bg[2]);
            break;
        }
        if (cout == 3) {
            d[0] = (uint8_t)r, d[1] = (uint8_t)g, d[2] = (uint8_t)b;
        } else {
            /* grey without alpha stays exact; everything else goes through RGB as Pillow does */
            d[0] = cin == 1 ? s[0] : luma(r, g, b);
        }
    }
    df_tensor_free(raw);
    return o;
}
