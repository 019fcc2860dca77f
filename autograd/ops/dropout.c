/* dropout.c — inverted dropout (torch.nn.functional.dropout with training=True).
 *
 *   keep_i = (u_i >= p), u_i the i-th df_philox_uniform draw of `gen`, in element order
 *   out_i = a_i * (keep_i ? 1/(1-p) : 0)          ga_i += g_i * (keep_i ? 1/(1-p) : 0)
 * Active whenever p > 0: the caller decides between training and evaluation (grad mode is not a
 * reason to skip it). p == 0 is the identity and draws nothing. Exactly numel draws are taken
 * when p > 0, so the stream position after the call is a function of the shape alone.
 * Saved: the keep mask (U8, one byte per element).
 */
#include "autograd/ops/unary_impl.h"

typedef struct dropout_params {
    float scale; /* 1 / (1 - p) */
} dropout_params;

static void dropout_backward(df_node *n, const df_tensor *g_) {
    const dropout_params *p = n->state;
    df_tensor *ga = df_node_grad(n, 0);
    if (!ga) return;
    float *d = df_f32(ga);
    const float *g = df_f32(g_);
    const float s = p->scale;
    if (!n->saved[0]) {
        DF_EW_LOOP(ga->numel, d[i] += g[i]);
        return;
    }
    const uint8_t *keep = n->saved[0]->data;
    DF_EW_LOOP(ga->numel, d[i] += g[i] * (keep[i] ? s : 0.0f));
}

static const df_op dropout_op = {"dropout", dropout_backward, NULL};

df_tensor *df_dropout(df_tensor *a, float p, df_philox *gen) {
    DF_ASSERT_F32_ANY_LAYOUT("dropout", a); /* elementwise: any layout, kept */
    DF_ASSERT(p >= 0.0f && p < 1.0f, "dropout: p = %g outside [0, 1)", (double)p);
    df_tensor *out = df_tensor_new_like(DF_DTYPE_F32, a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    if (p == 0.0f) {
        DF_EW_LOOP(a->numel, o[i] = x[i]);
        df_node *n = df_node_new(&dropout_op, out, 1, &a, sizeof(dropout_params));
        if (n) *(dropout_params *)n->state = (dropout_params){1.0f};
        return out;
    }
    DF_ASSERT(gen, "dropout: p > 0 needs a generator");
    const float scale = 1.0f / (1.0f - p);
    df_tensor *mask = df_tensor_new_unscoped(DF_DTYPE_U8, a->ndim, a->shape);
    uint8_t *keep = mask->data;
    for (int64_t i = 0; i < a->numel; i++) keep[i] = df_philox_uniform(gen) >= p;
    DF_EW_LOOP(a->numel, o[i] = x[i] * (keep[i] ? scale : 0.0f));
    df_node *n = df_node_new(&dropout_op, out, 1, &a, sizeof(dropout_params));
    if (n) {
        *(dropout_params *)n->state = (dropout_params){scale};
        df_node_save(n, 0, mask);
    }
    df_tensor_free(mask);
    return out;
}
