/* mse_loss.c — squared error (torch.nn.functional.mse_loss, reduction 'mean' or 'none').
 *
 *   a, b (same shape)
 *   reduce_mean: out = (1/n) sum (a - b)^2  (scalar, ndim 0; sum in double, fixed blocking)
 *   otherwise:   out = (a - b)^2            (elementwise, a's shape)
 *   ga += (k (a - b)) g,  gb += (k (b - a)) g,  k = 2/n for the mean, 2 otherwise
 * (torch's mse_loss_backward, applied to (a, b) and to (b, a) for the target's gradient; g is
 * broadcast from the scalar for the mean). Nothing is saved beyond the retained inputs.
 */
#include "autograd/ops/unary_impl.h"

typedef struct mse_params {
    bool mean;
} mse_params;

static void mse_backward(df_node *n, const df_tensor *g_) {
    const mse_params *p = n->state;
    const float *a = df_f32(n->inputs[0]), *b = df_f32(n->inputs[1]), *g = df_f32(g_);
    int64_t len = n->inputs[0]->numel;
    const float k = p->mean ? (float)(2.0 / (double)len) : 2.0f;
    for (int which = 0; which < 2; which++) {
        df_tensor *gi = df_node_grad(n, which);
        if (!gi) continue;
        float *d = df_f32(gi);
        const float *u = which ? b : a, *v = which ? a : b;
        if (p->mean) {
            const float g0 = g[0];
            DF_EW_LOOP(len, d[i] += (k * (u[i] - v[i])) * g0);
        } else {
            DF_EW_LOOP(len, d[i] += (k * (u[i] - v[i])) * g[i]);
        }
    }
}

static const df_op mse_op = {"mse_loss", mse_backward, NULL};

#define MSE_BLOCK 4096

df_tensor *df_mse_loss(df_tensor *a, df_tensor *b, bool reduce_mean) {
    DF_ASSERT_F32("mse_loss", a);
    DF_ASSERT_F32("mse_loss", b);
    char sa[64], sb[64];
    DF_ASSERT(df_tensor_same_shape(a, b), "mse_loss: shapes %s and %s differ",
              df_shape_str(a, sa, sizeof sa), df_shape_str(b, sb, sizeof sb));
    const float *x = df_f32(a), *y = df_f32(b);
    int64_t len = a->numel;
    df_tensor *out;
    if (reduce_mean) {
        out = df_tensor_new(DF_DTYPE_F32, 0, NULL);
        /* fixed blocks of MSE_BLOCK, partial sums in double, added in block order */
        int64_t nb = (len + MSE_BLOCK - 1) / MSE_BLOCK;
        double total = 0;
#pragma omp parallel for schedule(static) ordered if (len > 4 * DF_PAR_GRAIN)
        for (int64_t j = 0; j < nb; j++) {
            int64_t s = j * MSE_BLOCK, e = s + MSE_BLOCK < len ? s + MSE_BLOCK : len;
            double acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = s; i < e; i++) {
                float d = x[i] - y[i];
                acc += (double)(d * d);
            }
#pragma omp ordered
            total += acc;
        }
        df_f32(out)[0] = (float)(total / (double)len);
    } else {
        out = df_tensor_new(DF_DTYPE_F32, a->ndim, a->shape);
        float *o = df_f32(out);
        DF_EW_LOOP(len, float d = x[i] - y[i]; o[i] = d * d);
    }
    df_node *n = df_node_new(&mse_op, out, 2, (df_tensor *[]){a, b}, sizeof(mse_params));
    if (n) *(mse_params *)n->state = (mse_params){reduce_mean};
    return out;
}
