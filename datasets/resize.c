/* resize.c — antialiased resampling of U8 (H, W, C) images, equal to Pillow's Image.resize
 * (libImaging/Resample.c, ImagingResample) for the bilinear, bicubic, box and Lanczos filters.
 *
 * Algorithm (as Pillow): for each axis, scale = in / out and filterscale = max(scale, 1); the
 * filter support grows to support * filterscale when downsampling (that is the antialiasing).
 * Output pixel i has centre (i + 0.5) * scale; its taps are input pixels
 * [int(centre - support + 0.5), int(centre + support + 0.5)) clipped to the image, weighted by
 * filter((x - centre + 0.5) / filterscale) and normalised to sum 1 (in double), then rounded to
 * 22-bit fixed point (away from zero). A pass sums taps * weights from 2^21 (rounding) and
 * clips (sum >> 22) to 0..255. The horizontal pass runs first, over only the rows the vertical
 * pass reads, and its 8-bit result feeds the vertical pass; an axis whose size does not change
 * is not resampled.
 */
#include "datasets/datasets_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS 22

typedef struct filter {
    double (*fn)(double x);
    double support;
} filter;

static double box_fn(double x) {
    return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0;
}

static double bilinear_fn(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double bicubic_fn(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Pillow's sinc and the Lanczos window of support 3 */
static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double lanczos_fn(double x) {
    return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0;
}

static const filter FILTERS[] = {
    [DF_RESAMPLE_BILINEAR] = {bilinear_fn, 1.0},
    [DF_RESAMPLE_BICUBIC] = {bicubic_fn, 2.0},
    [DF_RESAMPLE_AREA] = {box_fn, 0.5},
    [DF_RESAMPLE_LANCZOS] = {lanczos_fn, 3.0},
};

bool df_resample_parse(const char *name, df_resample *out) {
    if (strcmp(name, "bilinear") == 0)
        *out = DF_RESAMPLE_BILINEAR;
    else if (strcmp(name, "bicubic") == 0)
        *out = DF_RESAMPLE_BICUBIC;
    else if (strcmp(name, "area") == 0 || strcmp(name, "box") == 0)
        *out = DF_RESAMPLE_AREA;
    else if (strcmp(name, "lanczos") == 0)
        *out = DF_RESAMPLE_LANCZOS;
    else
        return false;
    return true;
}

/* Taps of one axis: bounds[2 i] = first input index, bounds[2 i + 1] = count; k[i * ksize + j]
 * the fixed-point weights. */
typedef struct taps {
    int ksize;
    int *bounds;
    int32_t *k;
} taps;

static void taps_free(taps *t) {
    free(t->bounds);
    free(t->k);
}

static void taps_init(taps *t, int in_size, int out_size, const filter *f) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = f->support * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    t->ksize = ksize;
    t->bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    t->k = malloc(sizeof(int32_t) * (size_t)ksize * (size_t)out_size);
    double *w = malloc(sizeof(double) * (size_t)ksize);
    DF_ASSERT(t->bounds && t->k && w, "resize: out of memory for %d x %d taps", out_size, ksize);
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ss = 1.0 / filterscale, ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            w[x] = f->fn((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = t->k + (size_t)xx * ksize;
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        t->bounds[2 * xx] = xmin;
        t->bounds[2 * xx + 1] = xmax;
    }
    free(w);
}

static inline uint8_t clip8(int32_t v) {
    v >>= PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Horizontal pass: rows [y0, y0 + rows) of src (W_in wide) into dst (W_out wide). */
static void pass_h(const uint8_t *src, int w_in, int y0, int rows, int c, uint8_t *dst, int w_out,
                   const taps *t) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *s = src + (size_t)(y0 + y) * w_in * c;
        uint8_t *d = dst + (size_t)y * w_out * c;
        for (int xx = 0; xx < w_out; xx++) {
            int xmin = t->bounds[2 * xx], xmax = t->bounds[2 * xx + 1];
            const int32_t *k = t->k + (size_t)xx * t->ksize;
            const uint8_t *p = s + (size_t)xmin * c;
            if (c == 3) {
                int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < xmax; x++, p += 3) {
                    s0 += p[0] * k[x];
                    s1 += p[1] * k[x];
                    s2 += p[2] * k[x];
                }
                d[3 * xx] = clip8(s0), d[3 * xx + 1] = clip8(s1), d[3 * xx + 2] = clip8(s2);
            } else {
                for (int ch = 0; ch < c; ch++) {
                    int32_t s0 = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < xmax; x++) s0 += p[x * c + ch] * k[x];
                    d[c * xx + ch] = clip8(s0);
                }
            }
        }
    }
}

/* Vertical pass: src has rows indexed by the (shifted) bounds; dst is h_out x w rows. */
static void pass_v(const uint8_t *src, int w, int c, uint8_t *dst, int h_out, const taps *t) {
    size_t stride = (size_t)w * c;
    int32_t *acc = malloc(sizeof(int32_t) * stride);
    DF_ASSERT(acc, "resize: out of memory");
    for (int yy = 0; yy < h_out; yy++) {
        int ymin = t->bounds[2 * yy], ymax = t->bounds[2 * yy + 1];
        const int32_t *k = t->k + (size_t)yy * t->ksize;
        for (size_t i = 0; i < stride; i++) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ymax; y++) {
            const uint8_t *s = src + (size_t)(ymin + y) * stride;
            int32_t ky = k[y];
            for (size_t i = 0; i < stride; i++) acc[i] += s[i] * ky;
        }
        uint8_t *d = dst + (size_t)yy * stride;
        for (size_t i = 0; i < stride; i++) d[i] = clip8(acc[i]);
    }
    free(acc);
}

df_tensor *df_image_resize(const df_tensor *img, int out_h, int out_w, df_resample f) {
    DF_ASSERT(img->dtype == DF_DTYPE_U8 && img->ndim == 3,
              "df_image_resize: image must be U8 (H, W, C)");
    DF_ASSERT(out_h > 0 && out_w > 0, "df_image_resize: output size %d x %d", out_h, out_w);
    DF_ASSERT((unsigned)f <= DF_RESAMPLE_LANCZOS, "df_image_resize: bad filter %d", (int)f);
    int h = (int)img->shape[0], w = (int)img->shape[1], c = (int)img->shape[2];
    const filter *flt = &FILTERS[f];
    bool need_h = out_w != w, need_v = out_h != h;
    if (!need_h && !need_v) return df_tensor_clone(img);
    df_tensor *out = df_tensor_new(DF_DTYPE_U8, DF_DIMS(out_h, out_w, c));
    if (!need_v) {
        taps th;
        taps_init(&th, w, out_w, flt);
        pass_h(img->data, w, 0, h, c, out->data, out_w, &th);
        taps_free(&th);
        return out;
    }
    taps tv;
    taps_init(&tv, h, out_h, flt);
    if (!need_h) {
        pass_v(img->data, w, c, out->data, out_h, &tv);
        taps_free(&tv);
        return out;
    }
    int first = tv.bounds[0], last = tv.bounds[2 * out_h - 2] + tv.bounds[2 * out_h - 1];
    for (int i = 0; i < out_h; i++) tv.bounds[2 * i] -= first;
    taps th;
    taps_init(&th, w, out_w, flt);
    uint8_t *tmp = malloc((size_t)(last - first) * out_w * c);
    DF_ASSERT(tmp, "resize: out of memory");
    pass_h(img->data, w, first, last - first, c, tmp, out_w, &th);
    pass_v(tmp, out_w, c, out->data, out_h, &tv);
    free(tmp);
    taps_free(&th);
    taps_free(&tv);
    return out;
}

df_tensor *df_image_resize_short(const df_tensor *img, int size, df_resample f) {
    int h = (int)img->shape[0], w = (int)img->shape[1];
    int oh, ow;
    /* torchvision: the shorter side becomes size, the longer int(size * long / short) */
    if (w <= h)
        ow = size, oh = (int)((int64_t)size * h / w);
    else
        oh = size, ow = (int)((int64_t)size * w / h);
    return df_image_resize(img, oh, ow, f);
}
