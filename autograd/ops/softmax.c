/* softmax.c — softmax and log_softmax over the last dim (torch.softmax(x, -1),
 * torch.log_softmax(x, -1)), numerically stable: the row maximum is subtracted first.
 *
 *   x (..., D) -> y (..., D); per row m = max x, S = sum_j e^(x_j - m) (accumulated in double,
 *   in SIMD lanes: e^ is the vectorised df_expf of vmath_impl.h)
 *   softmax:     y = e^(x - m) * (1 / S)          gx += y (g - sum_j g_j y_j)     saved: y
 *   log_softmax: y = (x - m) - ln S               gx += g - e^y sum_j g_j         saved: y
 * Rows run in parallel; each row is reduced by one thread in a fixed order, so results do not
 * depend on the thread count.
 */
#include "autograd/ops/broadcast_impl.h"
#include "autograd/vmath_impl.h"

#include <math.h>

typedef struct softmax_params {
    bool log;
} softmax_params;

DF_SIMD_CLONES void df_softmax_row(const float *x, float *y, int64_t D, bool log) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < D; j++) m = x[j] > m ? x[j] : m;
    double s = 0;
    if (log) {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < D; j++) s += (double)df_expf(x[j] - m);
        float ls = logf((float)s);
        for (int64_t j = 0; j < D; j++) y[j] = (x[j] - m) - ls;
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < D; j++) {
            y[j] = df_expf(x[j] - m);
            s += (double)y[j];
        }
        float inv = 1.0f / (float)s;
#pragma omp simd
        for (int64_t j = 0; j < D; j++) y[j] *= inv;
    }
}

void df_softmax_row_grad(const float *y, const float *g, float *d, int64_t D, bool accumulate) {
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < D; j++) acc += (double)g[j] * (double)y[j];
    float dot = (float)acc;
    if (accumulate) {
#pragma omp simd
        for (int64_t j = 0; j < D; j++) d[j] += y[j] * (g[j] - dot);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < D; j++) d[j] = y[j] * (g[j] - dot);
    }
}

static void softmax_backward(df_node *n, const df_tensor *g_) {
    const softmax_params *p = n->state;
    df_tensor *gx = df_node_grad(n, 0);
    if (!gx) return;
    const float *y = df_f32(n->saved[0]), *g = df_f32(g_);
    float *d = df_f32(gx);
    int64_t D = n->out_ndim ? n->out_shape[n->out_ndim - 1] : 1, rows = gx->numel / (D ? D : 1);
    bool log = p->log;
#pragma omp parallel for schedule(static) if (gx->numel > DF_PAR_GRAIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * D, *gr = g + r * D;
        float *dr = d + r * D;
        double acc = 0;
        if (log) {
#pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < D; j++) acc += (double)gr[j];
            float s = (float)acc;
            for (int64_t j = 0; j < D; j++) dr[j] += gr[j] - df_expf(yr[j]) * s;
        } else {
            df_softmax_row_grad(yr, gr, dr, D, true);
        }
    }
}

static const df_op softmax_op = {"softmax", softmax_backward, NULL};
static const df_op log_softmax_op = {"log_softmax", softmax_backward, NULL};

static df_tensor *softmax(const df_op *op, df_tensor *a, bool log) {
    DF_ASSERT_F32(op->name, a);
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, a->ndim, a->shape);
    int64_t D = a->ndim ? a->shape[a->ndim - 1] : 1, rows = D ? a->numel / D : 0;
    const float *x = df_f32(a);
    float *y = df_f32(out);
#pragma omp parallel for schedule(static) if (a->numel > DF_PAR_GRAIN)
    for (int64_t r = 0; r < rows; r++) df_softmax_row(x + r * D, y + r * D, D, log);
    df_node *n = df_node_new_keep(op, out, 1, &a, sizeof(softmax_params), 0u); /* uses its output */
    if (n) {
        *(softmax_params *)n->state = (softmax_params){log};
        df_node_save(n, 0, out);
    }
    return out;
}

df_tensor *df_softmax(df_tensor *a) {
    return softmax(&softmax_op, a, false);
}

df_tensor *df_log_softmax(df_tensor *a) {
    return softmax(&log_softmax_op, a, true);
}
