/* clip_encoder.c — one transformers v4.33 CLIPEncoderLayer (models/clip/modeling_clip.py), the
 * layer the CLIP text tower (clip_text.c) and the vision tower (clip_vision.c) share:
 *   h = h + out_proj(attn(layer_norm1(h)))
 *   h = h + fc2(act(fc1(layer_norm2(h))))
 * Attention: q = q_proj(x) * head_dim^-0.5 (scaled before q k^T), softmax (with the causal mask
 * of the text tower, none for the vision tower), v, out_proj. act: quick_gelu or gelu (exact).
 * Also the config fields both towers' configs read the same way.
 */
#include "nn/nn.h"

#include <math.h>
#include <string.h>

df_status df_clip_encoder_fields_read(const df_json *j, df_clip_encoder_fields f) {
    double eps = *f.layer_norm_eps, dropout = 0, unused_f;
    DF_TRY(df_json_double(j, "attention_dropout", 0, &dropout));
    if (dropout != 0)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: field 'attention_dropout': %g (only 0: dropout is not implemented)",
                        j->path, dropout);
    /* no effect: the initialisers' scales (loaded weights replace them); only their types are
     * checked. projection_dim is the *WithProjection classes'. */
    DF_TRY(df_json_double(j, "initializer_range", 0, &unused_f));
    DF_TRY(df_json_double(j, "initializer_factor", 0, &unused_f));
    DF_TRY(df_json_int(j, "projection_dim", *f.projection_dim, f.projection_dim));
    DF_TRY(df_json_int(j, "hidden_size", *f.hidden_size, f.hidden_size));
    DF_TRY(df_json_int(j, "intermediate_size", *f.intermediate_size, f.intermediate_size));
    DF_TRY(df_json_int(j, "num_hidden_layers", *f.num_hidden_layers, f.num_hidden_layers));
    DF_TRY(df_json_int(j, "num_attention_heads", *f.num_attention_heads, f.num_attention_heads));
    DF_TRY(df_json_double(j, "layer_norm_eps", eps, &eps));
    *f.layer_norm_eps = (float)eps;
    DF_TRY(df_json_string(j, "hidden_act", "quick_gelu", f.hidden_act, DF_JSON_STR));
    if (strcmp(f.hidden_act, "quick_gelu") != 0 && strcmp(f.hidden_act, "gelu") != 0)
        return df_error(DF_ERR_UNSUPPORTED, "%s: field 'hidden_act': '%s' (quick_gelu or gelu)",
                        j->path, f.hidden_act);
    const struct {
        const char *key;
        int v, hi;
    } sizes[] = {{"hidden_size", *f.hidden_size, DF_MODEL_MAX_CHANNELS},
                 {"intermediate_size", *f.intermediate_size, 4 * DF_MODEL_MAX_CHANNELS},
                 {"num_hidden_layers", *f.num_hidden_layers, DF_CLIP_MAX_LAYERS},
                 {"projection_dim", *f.projection_dim, DF_MODEL_MAX_CHANNELS}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v < 1 || sizes[i].v > sizes[i].hi)
            return df_error(DF_ERR_FORMAT, "%s: field '%s': %d outside [1, %d]", j->path,
                            sizes[i].key, sizes[i].v, sizes[i].hi);
    if (!(eps >= 0 && eps < 1e30))
        return df_error(DF_ERR_FORMAT, "%s: field 'layer_norm_eps': %g", j->path, eps);
    if (*f.num_attention_heads < 1 || *f.hidden_size % *f.num_attention_heads != 0)
        return df_error(DF_ERR_FORMAT, "%s: %d attention heads do not divide hidden_size %d",
                        j->path, *f.num_attention_heads, *f.hidden_size);
    return DF_OK;
}

void df_clip_layer_init(df_clip_layer *l, df_params *r, const char *prefix, int d, int inter,
                        float eps) {
    char buf[DF_NAME_MAX];
    /* registration order of CLIPAttention: k, v, q, out */
    df_linear_mod_init(&l->k_proj, r, df_name_join(buf, sizeof buf, prefix, "self_attn.k_proj"), d,
                       d, true);
    df_linear_mod_init(&l->v_proj, r, df_name_join(buf, sizeof buf, prefix, "self_attn.v_proj"), d,
                       d, true);
    df_linear_mod_init(&l->q_proj, r, df_name_join(buf, sizeof buf, prefix, "self_attn.q_proj"), d,
                       d, true);
    df_linear_mod_init(&l->out_proj, r, df_name_join(buf, sizeof buf, prefix, "self_attn.out_proj"),
                       d, d, true);
    df_layernorm_mod_init(&l->layer_norm1, r, df_name_join(buf, sizeof buf, prefix, "layer_norm1"),
                          d, eps);
    df_linear_mod_init(&l->fc1, r, df_name_join(buf, sizeof buf, prefix, "mlp.fc1"), d, inter,
                       true);
    df_linear_mod_init(&l->fc2, r, df_name_join(buf, sizeof buf, prefix, "mlp.fc2"), inter, d,
                       true);
    df_layernorm_mod_init(&l->layer_norm2, r, df_name_join(buf, sizeof buf, prefix, "layer_norm2"),
                          d, eps);
}

/* (N, T, heads*d) -> (N, heads, T, d) */
static df_tensor *heads_of(df_tensor *x, int heads) {
    int64_t n = x->shape[0], t = x->shape[1], d = x->shape[2] / heads;
    return df_permute(df_reshape(x, DF_DIMS(n, t, heads, d)), (int[]){0, 2, 1, 3});
}

static df_tensor *attention(const df_clip_layer *l, df_tensor *x, int heads, bool causal) {
    int64_t n = x->shape[0], t = x->shape[1], d = x->shape[2];
    float scale = powf((float)(d / heads), -0.5f);
    df_tensor *q = heads_of(df_mul_scalar(df_linear_mod_forward(&l->q_proj, x), scale), heads);
    df_tensor *k = heads_of(df_linear_mod_forward(&l->k_proj, x), heads);
    df_tensor *v = heads_of(df_linear_mod_forward(&l->v_proj, x), heads);
    df_tensor *o = df_softmax_attention(q, k, v, causal); /* causal: key j > query i out */
    o = df_reshape(df_permute(o, (int[]){0, 2, 1, 3}), DF_DIMS(n, t, d));
    return df_linear_mod_forward(&l->out_proj, o);
}

df_tensor *df_clip_layer_forward(const df_clip_layer *l, df_tensor *h, int heads, bool quick_gelu,
                                 bool causal) {
    df_scope scope = df_scope_begin();
    h = df_add(h, attention(l, df_norm_mod_forward(&l->layer_norm1, h), heads, causal));
    df_tensor *f = df_linear_mod_forward(&l->fc1, df_norm_mod_forward(&l->layer_norm2, h));
    f = quick_gelu ? df_quick_gelu(f) : df_gelu(f);
    return df_scope_end_keep(scope, df_add(h, df_linear_mod_forward(&l->fc2, f)));
}
