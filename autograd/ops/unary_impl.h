/* unary_impl.h — the shared frame of the one-input elementwise ops (unary.c, activation.c):
 * a loop macro and the constructor that allocates the output and records the node. Internal. */
#ifndef DF_OPS_UNARY_IMPL_H
#define DF_OPS_UNARY_IMPL_H

#include "autograd/ops/broadcast_impl.h"

#include <math.h>
#include <string.h>

/* for (i in [0, n)) STMT — parallel above DF_PAR_GRAIN elements, static schedule, SIMD. */
#define DF_EW_LOOP(n, STMT)                                                                       \
    do {                                                                                          \
        int64_t n_ = (n);                                                                         \
        _Pragma("omp parallel for simd schedule(static) if (n_ > DF_PAR_GRAIN)")                  \
        for (int64_t i = 0; i < n_; i++) { STMT; }                                                \
    } while (0)

/* A backward of the form ga[i] += EXPR, where EXPR may use g[i], x[i] (the input), y[i] (saved
 * output, when the op saved it) and P (the op's params, type PT). */
#define DF_UNARY_BACKWARD(NAME, PT, EXPR)                                                         \
    static void NAME(df_node *nd, const df_tensor *g_) {                                          \
        df_tensor *ga = df_node_grad(nd, 0);                                                      \
        if (!ga) return;                                                                          \
        float *d = df_f32(ga);                                                                    \
        const float *g = df_f32(g_), *x = df_f32(nd->inputs[0]);                                  \
        const float *y = nd->saved[0] ? df_f32(nd->saved[0]) : NULL;                              \
        const PT P = *(const PT *)nd->state;                                                      \
        (void)x, (void)y, (void)P;                                                                \
        DF_EW_LOOP(ga->numel, d[i] += (EXPR));                                                    \
    }

/* The output of a unary op on a (F32, same shape). */
static inline df_tensor *df_unary_out(const char *name, df_tensor *a) {
    DF_ASSERT_F32(name, a);
    return df_tensor_new(DF_DTYPE_F32, a->ndim, a->shape);
}

/* Records the node of a unary op (when needed): params copied in, the output saved when asked. */
static inline void df_unary_record(const df_op *op, df_tensor *a, df_tensor *out, bool save_out,
                                   const void *params, size_t size) {
    df_node *n = df_node_new(op, out, 1, &a, size);
    if (!n) return;
    memcpy(n->state, params, size);
    if (save_out) df_node_save(n, 0, out);
}

#endif
