/* upsample_nearest2d.c — nearest-neighbour upsampling by an integer factor
 * (torch.nn.functional.interpolate(x, scale_factor=k, mode="nearest")).
 *
 *   x (N, C, H, W) -> y (N, C, kH, kW), y[n, c, i, j] = x[n, c, i / k, j / k] (integer division)
 *   forward:  own loops, parallel over (n, c) planes.
 *   backward: dx[n, c, i, j] += sum of the k x k block of G at (i k, j k), summed in a fixed
 *             order per element (deterministic).
 *   saved: nothing.
 */
#include "autograd/autograd_impl.h"

typedef struct upsample_params {
    int64_t P, H, W; /* planes N*C, input height, width */
    int k;
} upsample_params;

static void upsample_backward(df_node *n, const df_tensor *gout) {
    const upsample_params *p = n->state;
    df_tensor *gx = df_node_grad(n, 0);
    if (!gx) return;
    const int64_t H = p->H, W = p->W, k = p->k, OW = W * k;
    const float *g = df_f32(gout);
    float *dx = df_f32(gx);
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < p->P; pl++) {
        const float *gp = g + pl * H * k * OW;
        float *dp = dx + pl * H * W;
        for (int64_t i = 0; i < H; i++)
            for (int64_t j = 0; j < W; j++) {
                float acc = 0;
                for (int64_t a = 0; a < k; a++)
                    for (int64_t b = 0; b < k; b++) acc += gp[(i * k + a) * OW + j * k + b];
                dp[i * W + j] += acc;
            }
    }
}

static const df_op upsample_op = {"upsample_nearest2d", upsample_backward, NULL};

df_tensor *df_upsample_nearest2d(df_tensor *x, int scale) {
    DF_ASSERT_F32("upsample_nearest2d", x);
    char sx[64];
    DF_ASSERT(x->ndim == 4 && scale >= 1, "upsample_nearest2d: x %s, scale %d (expected 4-D, >= 1)",
              df_shape_str(x, sx, sizeof sx), scale);
    upsample_params p = {
        .P = x->shape[0] * x->shape[1], .H = x->shape[2], .W = x->shape[3], .k = scale};
    const int64_t H = p.H, W = p.W, k = scale, OW = W * k;
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, DF_DIMS(x->shape[0], x->shape[1], H * k, W * k));
    const float *xd = df_f32(x);
    float *y = df_f32(out);
#pragma omp parallel for schedule(static)
    for (int64_t pl = 0; pl < p.P; pl++) {
        const float *xp = xd + pl * H * W;
        float *yp = y + pl * H * k * OW;
        for (int64_t i = 0; i < H; i++) {
            float *row = yp + i * k * OW;
            for (int64_t j = 0; j < W; j++)
                for (int64_t b = 0; b < k; b++) row[j * k + b] = xp[i * W + j];
            for (int64_t a = 1; a < k; a++)
                for (int64_t j = 0; j < OW; j++) row[a * OW + j] = row[j];
        }
    }
    df_node *n = df_node_new_keep(&upsample_op, out, 1, &x, sizeof p, 0u);
    if (n) *(upsample_params *)n->state = p;
    return out;
}
