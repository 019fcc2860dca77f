/* upsample_nearest2d.c — nearest-neighbour upsampling by an integer factor
 * (torch.nn.functional.interpolate(x, scale_factor=k, mode="nearest")).
 *
 *   x (N, C, H, W) -> y (N, C, kH, kW), y[n, c, i, j] = x[n, c, i / k, j / k] (integer division)
 *   forward:  own loops, parallel over (n, c) planes.
 *   backward: dx[n, c, i, j] += sum of the k x k block of G at (i k, j k), summed in a fixed
 *             order per element (deterministic).
 *   saved: nothing.
 * Channel-blocked x (df_tensor.block = B, stored (N, C / B, H, W, B)): the same loops over the
 * N C / B planes with an element of B lanes; y is blocked like x.
 */
#include "autograd/autograd_impl.h"

#include <string.h>

typedef struct upsample_params {
    int64_t P, H, W; /* planes (N C, or N C / B when blocked), input height, width */
    int64_t V;       /* floats per element: 1, or the channel block B */
    int k;
} upsample_params;

static void upsample_backward(df_node *n, const df_tensor *gout) {
    const upsample_params *p = n->state;
    df_tensor *gx = df_node_grad(n, 0);
    if (!gx) return;
    const int64_t H = p->H, W = p->W, k = p->k, OW = W * k, V = p->V;
    const float *g = df_f32(gout);
    float *dx = df_f32(gx);
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < p->P; pl++) {
        const float *gp = g + pl * H * k * OW * V;
        float *dp = dx + pl * H * W * V;
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < W; j++)
                for (int64_t v = 0; v < V; v++) {
                    float acc = 0;
                    for (int64_t a = 0; a < k; a++)
                        for (int64_t b = 0; b < k; b++)
                            acc += gp[((i * k + a) * OW + j * k + b) * V + v];
                    dp[(i * W + j) * V + v] += acc;
                }
    }
}

static const df_op upsample_op = {"upsample_nearest2d", upsample_backward, NULL};

df_tensor *df_upsample_nearest2d(df_tensor *x, int scale) {
    DF_ASSERT_F32_ANY_LAYOUT("upsample_nearest2d", x);
    char sx[64];
    DF_ASSERT(x->ndim == 4 && scale >= 1, "upsample_nearest2d: x %s, scale %d (expected 4-D, >= 1)",
              df_shape_str(x, sx, sizeof sx), scale);
    const int64_t V = x->block ? x->block : 1;
    upsample_params p = {
        .P = x->shape[0] * x->shape[1] / V, .H = x->shape[2], .W = x->shape[3], .V = V, .k = scale};
    const int64_t H = p.H, W = p.W, k = scale, OW = W * k;
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, DF_DIMS(x->shape[0], x->shape[1], H * k, W * k));
    out->block = x->block;
    const float *xd = df_f32(x);
    float *y = df_f32(out);
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < p.P; pl++) {
        const float *xp = xd + pl * H * W * V;
        float *yp = y + pl * H * k * OW * V;
        for (int64_t i = 0; i < H; i++) {
            float *row = yp + i * k * OW * V;
            for (int64_t j = 0; j < W; j++)
                for (int64_t b = 0; b < k; b++) {
                    float *dst = row + (j * k + b) * V;
                    const float *src = xp + (i * W + j) * V;
                    if (V == 1) /* constant sizes: inlined moves, not a memcpy call per element */
                        *dst = *src;
                    else if (V == 8)
                        memcpy(dst, src, 8 * sizeof(float));
                    else
                        memcpy(dst, src, 16 * sizeof(float));
                }
            for (int64_t a = 1; a < k; a++)
                memcpy(row + a * OW * V, row, sizeof(float) * (size_t)(OW * V));
        }
    }
    df_node *n = df_node_new_keep(&upsample_op, out, 1, &x, sizeof p, 0u);
    if (n) *(upsample_params *)n->state = p;
    return out;
}
