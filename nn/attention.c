/* attention.c — diffusers Attention with the classic AttnProcessor (torch < 2.0):
 *   x (N, C, H, W) -> [group_norm] -> (N, HW, C);   ctx = context or x
 *   q = to_q(x), k = to_k(ctx), v = to_v(ctx)           split into heads (N, heads, T, d)
 *   p = softmax((q d^-1/2) k^T)  (diffusers: baddbmm with alpha = d^-1/2 on q k^T; scaling the
 *                                 (T, d) q instead of the (T, S) scores saves a score-sized tensor
 *                                 and a pass; the rounding differs by an ulp)
 *   o = to_out.0(merge_heads(p v))                      (to_out.1 is dropout 0)
 *   p v is one fused op (df_softmax_attention): the (T, S) probabilities are never stored for
 *   backward, which recomputes them; that is most of a UNet's activation memory otherwise.
 *   4-D input: back to (N, C, H, W); + residual when residual_connection; / rescale_output_factor
 * upcast_attention / upcast_softmax are no-ops for float32. The group norm of UNet2DModel and the
 * VAE normalises (N, C, HW), the same as normalising (N, C, H, W).
 */
#include "nn/nn.h"

#include <math.h>

void df_attention_init(df_attention *m, df_params *r, const char *name, df_attention_config c) {
    char buf[DF_NAME_MAX];
    int inner = c.heads * c.dim_head;
    int kv_dim = c.cross_dim > 0 ? c.cross_dim : c.query_dim;
    m->has_group_norm = c.norm_groups > 0;
    if (m->has_group_norm)
        df_groupnorm_mod_init(&m->group_norm, r, df_name_join(buf, sizeof buf, name, "group_norm"),
                              c.norm_groups, c.query_dim, c.norm_eps);
    df_linear_mod_init(&m->to_q, r, df_name_join(buf, sizeof buf, name, "to_q"), c.query_dim, inner,
                       c.qkv_bias);
    df_linear_mod_init(&m->to_k, r, df_name_join(buf, sizeof buf, name, "to_k"), kv_dim, inner,
                       c.qkv_bias);
    df_linear_mod_init(&m->to_v, r, df_name_join(buf, sizeof buf, name, "to_v"), kv_dim, inner,
                       c.qkv_bias);
    df_linear_mod_init(&m->to_out, r, df_name_join(buf, sizeof buf, name, "to_out.0"), inner,
                       c.query_dim, true);
    m->heads = c.heads;
    m->dim_head = c.dim_head;
    m->scale = 1.0f / sqrtf((float)c.dim_head);
    m->residual_connection = c.residual_connection;
    m->rescale_output_factor = c.rescale_output_factor;
}

/* (N, T, heads*d) -> (N, heads, T, d) */
static df_tensor *split_heads(df_tensor *x, int heads) {
    int64_t n = x->shape[0], t = x->shape[1], d = x->shape[2] / heads;
    df_tensor *r = df_reshape(x, DF_DIMS(n, t, heads, d));
    return df_permute(r, (int[]){0, 2, 1, 3});
}

df_tensor *df_attention_forward(const df_attention *m, df_tensor *x, df_tensor *context) {
    df_scope scope = df_scope_begin();
    if (x->block) x = df_to_plain(x); /* tokens are rows of a plain layout */
    df_tensor *residual = x;
    int64_t n = x->shape[0], c = x->shape[1], h = 0, w = 0;
    df_tensor *hs = x;
    if (x->ndim == 4) {
        h = x->shape[2], w = x->shape[3];
        if (m->has_group_norm) hs = df_norm_mod_forward(&m->group_norm, hs);
        hs = df_transpose(df_reshape(hs, DF_DIMS(n, c, h * w)), 1, 2);
    } else if (m->has_group_norm) {
        hs = df_transpose(df_norm_mod_forward(&m->group_norm, df_transpose(hs, 1, 2)), 1, 2);
    }
    df_tensor *ctx = context ? context : hs;
    df_tensor *q =
        split_heads(df_mul_scalar(df_linear_mod_forward(&m->to_q, hs), m->scale), m->heads);
    df_tensor *k = split_heads(df_linear_mod_forward(&m->to_k, ctx), m->heads);
    df_tensor *v = split_heads(df_linear_mod_forward(&m->to_v, ctx), m->heads);
    df_tensor *o = df_softmax_attention(q, k, v, false); /* (N, heads, T, d) */
    int64_t t = o->shape[2];
    o = df_reshape(df_permute(o, (int[]){0, 2, 1, 3}), DF_DIMS(n, t, m->heads * m->dim_head));
    o = df_linear_mod_forward(&m->to_out, o);
    if (x->ndim == 4) o = df_reshape(df_transpose(o, 1, 2), DF_DIMS(n, c, h, w));
    if (m->residual_connection) o = df_add(o, residual);
    if (m->rescale_output_factor != 1.0f) o = df_mul_scalar(o, 1.0f / m->rescale_output_factor);
    return df_scope_end_keep(scope, o);
}
