/* unary_impl.h — the shared frame of the one-input elementwise ops (unary.c, activation.c):
 * a loop macro and the constructor that allocates the output and records the node. Internal. */
#ifndef DF_OPS_UNARY_IMPL_H
#define DF_OPS_UNARY_IMPL_H

#include "autograd/ops/broadcast_impl.h"

#include <math.h>
#include <string.h>

/* for (i in [0, n)) STMT — parallel above DF_PAR_GRAIN elements, static schedule, SIMD. */
// clang-format off
#define DF_EW_LOOP(n, STMT)                                                                        \
    do {                                                                                           \
        int64_t n_ = (n);                                                                          \
        _Pragma("omp parallel for simd schedule(static) if (n_ > DF_PAR_GRAIN)")                   \
        for (int64_t i = 0; i < n_; i++) { STMT; }                                                 \
    } while (0)
// clang-format on

/* A backward of the form ga[i] += EXPR, where EXPR may use g[i], x[i] (the input), y[i] (saved
 * output, when the op saved it) and P (the op's params, type PT). */
#define DF_UNARY_BACKWARD(NAME, PT, EXPR)                                                          \
    /* the loop on its own, compiled per x86-64 level (DF_SIMD_CLONES) as the forwards are */      \
    DF_SIMD_CLONES static void NAME##_loop(float *d, const float *g, const float *x,               \
                                           const float *y, const PT *pp, int64_t n, bool acc_) {   \
        const PT P = *pp;                                                                          \
        (void)x, (void)y, (void)P;                                                                 \
        if (acc_)                                                                                  \
            DF_EW_LOOP(n, d[i] += (EXPR));                                                         \
        else /* a fresh gradient: written, not zero-filled then added to */                        \
            DF_EW_LOOP(n, d[i] = (EXPR));                                                          \
    }                                                                                              \
    static void NAME(df_node *nd, const df_tensor *g_) {                                           \
        bool acc_;                                                                                 \
        df_tensor *ga = df_node_grad_dest(nd, 0, &acc_);                                           \
        if (!ga) return;                                                                           \
        const float *y = nd->saved[0] ? df_f32(nd->saved[0]) : NULL;                               \
        NAME##_loop(df_f32(ga), df_f32(g_), df_f32(nd->inputs[0]), y, (const PT *)nd->state,       \
                    ga->numel, acc_);                                                              \
    }

/* A forward of the form out[i] = EXPR, where EXPR may use x[i] and P (params of type PT). */
#define DF_UNARY_FORWARD(NAME, PT, EXPR)                                                           \
    DF_SIMD_CLONES static void NAME(const float *x, float *o, int64_t n, const void *params) {     \
        const PT P = *(const PT *)params;                                                          \
        (void)P;                                                                                   \
        DF_EW_LOOP(n, o[i] = (EXPR));                                                              \
    }

typedef void (*df_unary_fwd)(const float *x, float *o, int64_t n, const void *params);

/* The constructor of a unary op: out = fwd(a) (F32, a's shape), then a node when needed, holding
 * a copy of the params and, when `save_out`, a detached alias of the output. */
static inline df_tensor *df_unary_apply(const df_op *op, df_tensor *a, df_unary_fwd fwd,
                                        const void *params, size_t size, bool save_out) {
    DF_ASSERT_F32_ANY_LAYOUT(op->name, a); /* elementwise: any layout, kept */
    df_tensor *out = df_tensor_new_like(DF_DTYPE_F32, a);
    fwd(df_f32(a), df_f32(out), a->numel, params);
    df_node *n = df_node_new(op, out, 1, &a, size);
    if (n) {
        memcpy(n->state, params, size);
        if (save_out) df_node_save(n, 0, out);
    }
    return out;
}

/* Ops without parameters. */
typedef struct df_no_params {
    char unused;
} df_no_params;

#endif
