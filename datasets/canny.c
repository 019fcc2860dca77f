/* canny.c — Canny edge maps, the conditioning images of a Canny ControlNet, computed as OpenCV's
 * cv2.Canny(grey, low, high) (apertureSize 3, L2gradient false; the call of diffusers' ControlNet
 * examples, with thresholds 100 and 200 by default there and here):
 *   dx, dy: 3x3 Sobel of each channel with replicated borders (OpenCV's BORDER_REPLICATE in
 *     Canny); an RGB image (the examples pass np.array(image), RGB) takes, per pixel, the
 *     channel with the largest |dx| + |dy| (the first on ties), as OpenCV does for several
 *     channels; a grey image its one channel;
 *   m = |dx| + |dy| (integers), zero outside the image;
 *   non-maximum suppression along the gradient direction, OpenCV's integer sectors
 *     (tan 22.5 deg = 13573 / 2^15): with xs = |dx|, ys = |dy| 2^15, t22 = xs 13573,
 *     t67 = t22 + xs 2^16: ys < t22 horizontal (m > left and m >= right), ys > t67 vertical
 *     (m > up and m >= down), else diagonal (m > both neighbours along the sign of dx dy);
 *   a surviving pixel with m > high is an edge; one with m > low is a candidate;
 *   hysteresis: candidates 8-connected to an edge become edges.
 * Output: U8 (H, W, 3), 255 on edges and 0 elsewhere (the example stacks the map to RGB).
 * No blur is applied first (cv2.Canny does none). tests/ref/gen_conditioning.py holds a numpy
 * version of the same algorithm (OpenCV is not installed here) that the tests compare with.
 */
#include "datasets/datasets_impl.h"

#include <stdlib.h>
#include <string.h>

#define TG22 13573 /* tan(22.5 deg) * 2^15, OpenCV's CANNY_SHIFT 15 */

df_status df_canny(const df_tensor *img, int low, int high, df_tensor **out) {
    *out = NULL;
    if (img->dtype != DF_DTYPE_U8 || img->ndim != 3 || (img->shape[2] != 1 && img->shape[2] != 3))
        return df_error(DF_ERR_INVALID, "canny: the image must be U8 (H, W, 1 or 3)");
    if (low < 0 || high < low || high > 4 * 255 * 4)
        return df_error(DF_ERR_INVALID,
                        "canny: thresholds %d and %d (0 <= low <= high <= 4080, the largest "
                        "|dx| + |dy|)",
                        low, high);
    int h = (int)img->shape[0], w = (int)img->shape[1], c = (int)img->shape[2];
    int64_t np = (int64_t)h * w;
    uint8_t *g = malloc((size_t)np); /* one channel at a time */
    int *dx = malloc(sizeof(int) * (size_t)np), *dy = malloc(sizeof(int) * (size_t)np);
    int *m = calloc((size_t)(h + 2) * (size_t)(w + 2), sizeof(int)); /* zero border */
    uint8_t *map = calloc((size_t)np, 1);                            /* 0, 1 candidate, 2 edge */
    int64_t *stack = malloc(sizeof(int64_t) * (size_t)np);
    if (!g || !dx || !dy || !m || !map || !stack) {
        free(g), free(dx), free(dy), free(m), free(map), free(stack);
        return df_error(DF_ERR_NOMEM, "canny: out of memory for %dx%d", w, h);
    }
    const uint8_t *s = img->data;
#define G(y, x)                                                                                    \
    g[(int64_t)((y) < 0 ? 0 : (y) >= h ? h - 1 : (y)) * w + ((x) < 0 ? 0 : (x) >= w ? w - 1 : (x))]
    int mw = w + 2;
    for (int ch = 0; ch < c; ch++) {
        for (int64_t i = 0; i < np; i++) g[i] = s[i * c + ch];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int gx = (G(y - 1, x + 1) + 2 * G(y, x + 1) + G(y + 1, x + 1)) -
                         (G(y - 1, x - 1) + 2 * G(y, x - 1) + G(y + 1, x - 1));
                int gy = (G(y + 1, x - 1) + 2 * G(y + 1, x) + G(y + 1, x + 1)) -
                         (G(y - 1, x - 1) + 2 * G(y - 1, x) + G(y - 1, x + 1));
                int *mp = &m[(int64_t)(y + 1) * mw + x + 1];
                if (ch > 0 && abs(gx) + abs(gy) <= *mp) continue; /* the first largest */
                dx[(int64_t)y * w + x] = gx;
                dy[(int64_t)y * w + x] = gy;
                *mp = abs(gx) + abs(gy);
            }
    }
#undef G
    int64_t top = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const int *mp = m + (int64_t)(y + 1) * mw + x + 1;
            int v = mp[0];
            if (v <= low) continue;
            int gx = dx[(int64_t)y * w + x], gy = dy[(int64_t)y * w + x];
            int64_t xs = abs(gx), ys = (int64_t)abs(gy) << 15;
            int64_t t22 = xs * TG22;
            bool max;
            if (ys < t22) {
                max = v > mp[-1] && v >= mp[1];
            } else {
                int64_t t67 = t22 + (xs << 16);
                if (ys > t67) {
                    max = v > mp[-mw] && v >= mp[mw];
                } else {
                    int sgn = (gx ^ gy) < 0 ? -1 : 1;
                    max = v > mp[-mw - sgn] && v > mp[mw + sgn];
                }
            }
            if (!max) continue;
            int64_t i = (int64_t)y * w + x;
            if (v > high) {
                map[i] = 2;
                stack[top++] = i;
            } else {
                map[i] = 1;
            }
        }
    while (top > 0) { /* hysteresis: grow the edges through 8-connected candidates */
        int64_t i = stack[--top];
        int y = (int)(i / w), x = (int)(i % w);
        for (int oy = -1; oy <= 1; oy++)
            for (int ox = -1; ox <= 1; ox++) {
                int ny = y + oy, nx = x + ox;
                if (ny < 0 || ny >= h || nx < 0 || nx >= w) continue;
                int64_t j = (int64_t)ny * w + nx;
                if (map[j] == 1) {
                    map[j] = 2;
                    stack[top++] = j;
                }
            }
    }
    df_tensor *o = df_tensor_new(DF_DTYPE_U8, DF_DIMS(h, w, 3));
    uint8_t *d = o->data;
    for (int64_t i = 0; i < np; i++) d[3 * i] = d[3 * i + 1] = d[3 * i + 2] = map[i] == 2 ? 255 : 0;
    free(g), free(dx), free(dy), free(m), free(map), free(stack);
    *out = o;
    return DF_OK;
}
