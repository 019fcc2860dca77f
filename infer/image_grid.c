/* image_grid.c — samples in [-1, 1] (or images in [0, 1]) to an 8-bit image grid, as diffusers' pipelines convert
 * (`(x / 2 + 0.5).clamp(0, 1)`, then numpy_to_pil's `(x * 255).round()`), tiled row-major in
 * `cols` columns (black where the last row is short). A NaN becomes 0 (black), as numpy's cast
 * gives on x86; df_images_nonfinite counts them so that callers can warn. */
#include "infer/infer.h"

#include <math.h>
#include <string.h>

/* The grid of x in [-1, 1] (unit false) or in [0, 1] (unit true). */
static df_tensor *grid(const df_tensor *x, int cols, bool unit) {
    DF_ASSERT(x->dtype == DF_DTYPE_F32 && x->ndim == 4 && (x->shape[1] == 1 || x->shape[1] == 3),
              "image grid: expected F32 (N, 1 or 3, H, W)");
    int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], w = x->shape[3];
    if (cols <= 0) cols = (int)ceil(sqrt((double)n));
    int64_t rows = (n + cols - 1) / cols;
    df_tensor *g = df_zeros(DF_DTYPE_U8, DF_DIMS(rows * h, cols * w, c));
    uint8_t *o = g->data;
    const float *p = df_f32(x);
    for (int64_t i = 0; i < n; i++) {
        int64_t r0 = (i / cols) * h, c0 = (i % cols) * w;
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t y = 0; y < h; y++)
                for (int64_t xx = 0; xx < w; xx++) {
                    float v = p[((i * c + ch) * h + y) * w + xx];
                    if (!unit) v = v / 2.0f + 0.5f;
                    v = v > 0 ? (v < 1 ? v : 1) : 0; /* NaN -> 0: a float-to-int cast of NaN
                                                        is undefined behaviour in C */
                    o[((r0 + y) * cols * w + c0 + xx) * c + ch] = (uint8_t)nearbyintf(v * 255.0f);
                }
    }
    return g;
}

df_tensor *df_images_to_grid(const df_tensor *x, int cols) {
    return grid(x, cols, false);
}

df_tensor *df_unit_images_to_grid(const df_tensor *x, int cols) {
    return grid(x, cols, true);
}

int64_t df_images_nonfinite(const df_tensor *x) {
    DF_ASSERT(x->dtype == DF_DTYPE_F32, "df_images_nonfinite: expected F32");
    const float *p = df_f32(x);
    int64_t bad = 0;
    for (int64_t i = 0; i < x->numel; i++) bad += !isfinite(p[i]);
    return bad;
}
