/* avg_pool2d.c — average pooling without padding
 * (torch.nn.functional.avg_pool2d(x, kernel, stride), padding 0, ceil_mode False).
 *
 *   x (N, C, H, W) -> y (N, C, OH, OW), OH = (H - k) / s + 1 (floor), likewise OW;
 *   y[n, c, i, j] = (1 / k^2) sum_{a, b < k} x[n, c, i s + a, j s + b]
 *   (no padding, so every window holds k^2 elements and count_include_pad does not matter).
 *   forward:  own loops, parallel over (n, c) planes.
 *   backward: dx[n, c, i s + a, j s + b] += G[n, c, i, j] / k^2 for every window; windows are
 *             visited in a fixed order within a plane (deterministic with overlapping windows).
 *   saved: nothing.
 */
#include "autograd/autograd_impl.h"

typedef struct pool_params {
    int64_t P, H, W, OH, OW;
    int k, s;
} pool_params;

static void avg_pool_backward(df_node *n, const df_tensor *gout) {
    const pool_params *p = n->state;
    df_tensor *gx = df_node_grad(n, 0);
    if (!gx) return;
    const int64_t H = p->H, W = p->W, OH = p->OH, OW = p->OW, k = p->k, s = p->s;
    const float div = (float)(k * k); /* torch divides (not multiplies by 1/k^2) */
    const float *g = df_f32(gout);
    float *dx = df_f32(gx);
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < p->P; pl++) {
        const float *gp = g + pl * OH * OW;
        float *dp = dx + pl * H * W;
        for (int64_t i = 0; i < OH; i++)
            for (int64_t j = 0; j < OW; j++) {
                float v = gp[i * OW + j] / div;
                for (int64_t a = 0; a < k; a++)
                    for (int64_t b = 0; b < k; b++) dp[(i * s + a) * W + j * s + b] += v;
            }
    }
}

static const df_op avg_pool_op = {"avg_pool2d", avg_pool_backward, NULL};

df_tensor *df_avg_pool2d(df_tensor *x, int kernel, int stride) {
    DF_ASSERT_F32("avg_pool2d", x);
    char sx[64];
    df_shape_str(x, sx, sizeof sx);
    DF_ASSERT(x->ndim == 4 && kernel >= 1 && stride >= 1 && x->shape[2] >= kernel &&
                  x->shape[3] >= kernel,
              "avg_pool2d: x %s, kernel %d, stride %d", sx, kernel, stride);
    pool_params p = {.P = x->shape[0] * x->shape[1],
                     .H = x->shape[2],
                     .W = x->shape[3],
                     .k = kernel,
                     .s = stride};
    p.OH = (p.H - kernel) / stride + 1;
    p.OW = (p.W - kernel) / stride + 1;
    const int64_t H = p.H, W = p.W, OH = p.OH, OW = p.OW, k = kernel, s = stride;
    const float div = (float)(k * k); /* torch divides (not multiplies by 1/k^2) */
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, DF_DIMS(x->shape[0], x->shape[1], OH, OW));
    const float *xd = df_f32(x);
    float *y = df_f32(out);
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < p.P; pl++) {
        const float *xp = xd + pl * H * W;
        float *yp = y + pl * OH * OW;
        for (int64_t i = 0; i < OH; i++)
            for (int64_t j = 0; j < OW; j++) {
                float acc = 0;
                for (int64_t a = 0; a < k; a++)
                    for (int64_t b = 0; b < k; b++) acc += xp[(i * s + a) * W + j * s + b];
                yp[i * OW + j] = acc / div;
            }
    }
    df_node *n = df_node_new_keep(&avg_pool_op, out, 1, &x, sizeof p, 0u);
    if (n) *(pool_params *)n->state = p;
    return out;
}
