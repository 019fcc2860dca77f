/* cross_entropy.c — mean negative log-likelihood of integer targets under a softmax
 * (torch.nn.functional.cross_entropy(logits, target), reduction 'mean', no weights).
 *
 *   logits x (N, C), target t (N) I32/I64 with 0 <= t < C -> loss (scalar, ndim 0)
 *   l = log_softmax(x) (stable: row max subtracted, row sums in double)
 *   loss = -(1/N) sum_n l[n, t_n]
 *   backward (torch's nll_loss then log_softmax backward): w = -(g / N);
 *   gx[n, c] += (c == t_n ? w : 0) - e^(l[n, c]) w
 * Saved: l (N, C). The target is retained as the node's second input (it takes no gradient).
 */
#include "autograd/ops/broadcast_impl.h"

#include <math.h>

typedef struct ce_params {
    char unused;
} ce_params;

static inline int64_t target_at(const df_tensor *t, int64_t i) {
    return t->dtype == DF_DTYPE_I32 ? ((const int32_t *)t->data)[i] : ((const int64_t *)t->data)[i];
}

static void ce_backward(df_node *n, const df_tensor *g) {
    df_tensor *gx = df_node_grad(n, 0);
    if (!gx) return;
    const df_tensor *t = n->inputs[1];
    const float *l = df_f32(n->saved[0]);
    float *d = df_f32(gx);
    int64_t N = gx->shape[0], C = gx->shape[1];
    const float w = -(df_f32(g)[0] / (float)N);
#pragma omp parallel for schedule(static) if (N * C > DF_PAR_GRAIN)
    for (int64_t r = 0; r < N; r++) {
        int64_t tr = target_at(t, r);
        for (int64_t c = 0; c < C; c++)
            d[r * C + c] += (c == tr ? w : 0.0f) - expf(l[r * C + c]) * w;
    }
}

static const df_op ce_op = {"cross_entropy", ce_backward, NULL};

df_tensor *df_cross_entropy(df_tensor *logits, df_tensor *target) {
    DF_ASSERT_F32("cross_entropy", logits);
    char sl[64], st[64];
    DF_ASSERT(logits->ndim == 2 && target->ndim == 1 && target->shape[0] == logits->shape[0],
              "cross_entropy: logits %s and target %s (expected (N, C) and (N))",
              df_shape_str(logits, sl, sizeof sl), df_shape_str(target, st, sizeof st));
    DF_ASSERT(target->dtype == DF_DTYPE_I32 || target->dtype == DF_DTYPE_I64,
              "cross_entropy: target must be I32 or I64, got %s", df_dtype_name(target->dtype));
    int64_t N = logits->shape[0], C = logits->shape[1];
    for (int64_t r = 0; r < N; r++) {
        int64_t tr = target_at(target, r);
        DF_ASSERT(tr >= 0 && tr < C, "cross_entropy: target[%lld] = %lld outside [0, %lld)",
                  (long long)r, (long long)tr, (long long)C);
    }
    df_tensor *lsm = df_tensor_new_unscoped(DF_DTYPE_F32, 2, logits->shape);
    const float *x = df_f32(logits);
    float *l = df_f32(lsm);
#pragma omp parallel for schedule(static) if (N * C > DF_PAR_GRAIN)
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * C;
        float m = -INFINITY;
        for (int64_t c = 0; c < C; c++) m = xr[c] > m ? xr[c] : m;
        double s = 0;
        for (int64_t c = 0; c < C; c++) s += (double)expf(xr[c] - m);
        float ls = logf((float)s);
        for (int64_t c = 0; c < C; c++) l[r * C + c] = (xr[c] - m) - ls;
    }
    double acc = 0;
    for (int64_t r = 0; r < N; r++) acc += (double)l[r * C + target_at(target, r)];
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, 0, NULL);
    df_f32(out)[0] = (float)(-acc / (double)N);
    df_node *n = df_node_new(&ce_op, out, 2, (df_tensor *[]){logits, target}, sizeof(ce_params));
    if (n) df_node_save(n, 0, lsm);
    df_tensor_free(lsm);
    return out;
}
