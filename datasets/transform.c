/* transform.c — crops, flip, normalisation and the per-sample training transform.
 *
 * Reference: torchvision's CenterCrop (offsets int(round((H - h) / 2.0)), Python's round half
 * to even), RandomCrop (uniform offsets), RandomHorizontalFlip(p = 0.5), ToTensor +
 * Normalize([0.5], [0.5]) = x / 127.5 - 1, in the order of diffusers' train_text_to_image.
 * All randomness comes from the df_philox passed in.
 */
#include "datasets/datasets_impl.h"

#include <math.h>
#include <string.h>

df_tensor *df_image_crop(const df_tensor *img, int top, int left, int h, int w) {
    int H = (int)img->shape[0], W = (int)img->shape[1], c = (int)img->shape[2];
    DF_ASSERT(top >= 0 && left >= 0 && h > 0 && w > 0 && top + h <= H && left + w <= W,
              "df_image_crop: window (%d, %d, %d, %d) outside %d x %d", top, left, h, w, H, W);
    df_tensor *o = df_tensor_new(DF_DTYPE_U8, DF_DIMS(h, w, c));
    const uint8_t *s = img->data;
    uint8_t *d = o->data;
    for (int y = 0; y < h; y++)
        memcpy(d + (size_t)y * w * c, s + ((size_t)(top + y) * W + left) * c, (size_t)w * c);
    return o;
}

/* Python's round(): half to even. */
static int round_half_even(double x) {
    return (int)nearbyint(x);
}

df_tensor *df_image_center_crop(const df_tensor *img, int h, int w) {
    int H = (int)img->shape[0], W = (int)img->shape[1];
    return df_image_crop(img, round_half_even((H - h) / 2.0), round_half_even((W - w) / 2.0), h, w);
}

/* Uniform integer in [0, n) from one 32-bit draw (multiply-shift; n < 2^31). */
static int uniform_int(df_philox *g, int n) {
    return (int)(((uint64_t)df_philox_u32(g) * (uint64_t)n) >> 32);
}

void df_random_crop_offsets(df_philox *g, int H, int W, int h, int w, int *top, int *left) {
    DF_ASSERT(h <= H && w <= W, "df_random_crop_offsets: crop %d x %d larger than %d x %d", h, w, H,
              W);
    *top = uniform_int(g, H - h + 1);
    *left = uniform_int(g, W - w + 1);
}

df_tensor *df_image_hflip(const df_tensor *img) {
    int H = (int)img->shape[0], W = (int)img->shape[1], c = (int)img->shape[2];
    df_tensor *o = df_tensor_new(DF_DTYPE_U8, DF_DIMS(H, W, c));
    const uint8_t *s = img->data;
    uint8_t *d = o->data;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            memcpy(d + ((size_t)y * W + x) * c, s + ((size_t)y * W + (W - 1 - x)) * c, (size_t)c);
    return o;
}

void df_image_to_chw(const df_tensor *img, float *dst) {
    int H = (int)img->shape[0], W = (int)img->shape[1], c = (int)img->shape[2];
    const uint8_t *s = img->data;
    size_t plane = (size_t)H * W;
    for (int ch = 0; ch < c; ch++)
        for (size_t i = 0; i < plane; i++) dst[ch * plane + i] = s[i * c + ch] / 127.5f - 1.0f;
}

df_transform df_transform_default(int resolution) {
    return (df_transform){.resolution = resolution,
                          .filter = DF_RESAMPLE_BILINEAR,
                          .center_crop = false,
                          .random_flip = true,
                          .decode = df_decode_opts_default()};
}

bool df_transform_draw_flip(const df_transform *t, df_philox *g) {
    return t->random_flip && df_philox_uniform(g) < 0.5f;
}

bool df_transform_apply(const df_transform *t, const df_tensor *img, df_philox *g, float *dst) {
    int R = t->resolution;
    int H = (int)img->shape[0], W = (int)img->shape[1], c = (int)img->shape[2];
    df_tensor *resized = NULL;
    const df_tensor *cur = img;
    if ((H < W ? H : W) != R) {
        df_scope_pause pause = df_scope_suspend(); /* the resized copy is ours to free */
        resized = df_image_resize_short(img, R, t->filter);
        df_scope_resume(pause);
        cur = resized;
        H = (int)cur->shape[0], W = (int)cur->shape[1];
    }
    int top, left;
    if (t->center_crop) {
        top = round_half_even((H - R) / 2.0);
        left = round_half_even((W - R) / 2.0);
    } else {
        df_random_crop_offsets(g, H, W, R, R, &top, &left);
    }
    bool flip = df_transform_draw_flip(t, g);
    /* crop, flip and normalise in one pass, straight into the batch */
    const uint8_t *s = cur->data;
    size_t plane = (size_t)R * R;
    for (int y = 0; y < R; y++) {
        const uint8_t *row = s + ((size_t)(top + y) * W + left) * c;
        for (int x = 0; x < R; x++) {
            const uint8_t *p = row + (size_t)(flip ? R - 1 - x : x) * c;
            for (int ch = 0; ch < c; ch++)
                dst[ch * plane + (size_t)y * R + x] = p[ch] / 127.5f - 1.0f;
        }
    }
    df_tensor_free(resized);
    return flip;
}
