/* clip_text.c — transformers v4.33 CLIPTextModel (models/clip/modeling_clip.py), the text
 * encoder of Stable Diffusion:
 *   h_0 = token_embedding(ids) + position_embedding(0 .. L-1)            hidden_states.0
 *   layer i: clip_encoder.c's CLIPEncoderLayer, causal self-attention   hidden_states.i
 *   last_hidden_state = final_layer_norm(h_L)
 * The causal mask is finfo(float32).min above the diagonal. act: quick_gelu (SD 1.x) or
 * gelu (exact; SD 2.x). Pooling: with eos_token_id == 2 (SD's configs) the row's argmax(ids)
 * position (the first EOS when EOS is the largest id), else the first position equal to
 * eos_token_id.
 */
#include "nn/nn.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

df_clip_text_config df_clip_text_config_default(void) {
    df_clip_text_config c = {.vocab_size = 49408,
                             .hidden_size = 512,
                             .intermediate_size = 2048,
                             .num_hidden_layers = 12,
                             .num_attention_heads = 8,
                             .max_position_embeddings = 77,
                             .layer_norm_eps = 1e-5f,
                             .bos_token_id = 49406,
                             .eos_token_id = 49407,
                             .pad_token_id = 1,
                             .projection_dim = 512};
    snprintf(c.hidden_act, DF_JSON_STR, "quick_gelu");
    return c;
}

df_status df_clip_text_config_from_json(const df_json *j, df_clip_text_config *c) {
    *c = df_clip_text_config_default();
    /* CLIPTextConfig fields whose None the model cannot run with (pad / bos ids are unused by
     * CLIPTextModel's forward, so their null is accepted as upstream does) */
    static const char *const not_null[] = {"vocab_size",          "hidden_size",
                                           "intermediate_size",   "num_hidden_layers",
                                           "num_attention_heads", "max_position_embeddings",
                                           "hidden_act",          "layer_norm_eps",
                                           "attention_dropout",   "eos_token_id"};
    for (size_t i = 0; i < sizeof not_null / sizeof not_null[0]; i++)
        if (df_json_is_null(j, not_null[i]))
            return df_error(DF_ERR_FORMAT, "%s: field '%s' is null (CLIPTextModel needs a value)",
                            j->path, not_null[i]);
    DF_TRY(df_clip_encoder_fields_read(
        j, (df_clip_encoder_fields){&c->hidden_size, &c->intermediate_size, &c->num_hidden_layers,
                                    &c->num_attention_heads, &c->projection_dim, &c->layer_norm_eps,
                                    c->hidden_act}));
    DF_TRY(df_json_int(j, "vocab_size", c->vocab_size, &c->vocab_size));
    DF_TRY(df_json_int(j, "max_position_embeddings", c->max_position_embeddings,
                       &c->max_position_embeddings));
    DF_TRY(df_json_int(j, "bos_token_id", c->bos_token_id, &c->bos_token_id));
    DF_TRY(df_json_int(j, "eos_token_id", c->eos_token_id, &c->eos_token_id));
    DF_TRY(df_json_int(j, "pad_token_id", c->pad_token_id, &c->pad_token_id));
    const struct {
        const char *key;
        int v, hi;
    } sizes[] = {{"vocab_size", c->vocab_size, DF_CLIP_MAX_VOCAB},
                 {"max_position_embeddings", c->max_position_embeddings, DF_CLIP_MAX_POSITIONS}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v < 1 || sizes[i].v > sizes[i].hi)
            return df_error(DF_ERR_FORMAT, "%s: field '%s': %d outside [1, %d]", j->path,
                            sizes[i].key, sizes[i].v, sizes[i].hi);
    return DF_OK;
}

df_status df_clip_text_init(df_clip_text *m, const df_clip_text_config *c, df_init init) {
    memset(m, 0, sizeof *m);
    m->config = *c;
    df_params *r = &m->params;
    df_params_init_with(r, init);
    int d = c->hidden_size;
    char layer[DF_NAME_MAX];
    m->token_embedding = df_params_add(r, "text_model.embeddings.token_embedding", "weight",
                                       DF_DIMS(c->vocab_size, d));
    df_params_init_normal(r, m->token_embedding, 0.02f);
    m->position_embedding = df_params_add(r, "text_model.embeddings.position_embedding", "weight",
                                          DF_DIMS(c->max_position_embeddings, d));
    df_params_init_normal(r, m->position_embedding, 0.02f);
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return df_error(DF_ERR_NOMEM, "CLIPTextModel: out of memory");
    for (int i = 0; i < c->num_hidden_layers; i++) {
        df_name_index(layer, sizeof layer, "text_model.encoder", "layers", i);
        df_clip_layer_init(&m->layers[i], r, layer, d, c->intermediate_size, c->layer_norm_eps);
    }
    df_layernorm_mod_init(&m->final_layer_norm, r, "text_model.final_layer_norm", d,
                          c->layer_norm_eps);
    if (c->with_projection)
        df_linear_mod_init(&m->text_projection, r, "text_projection", d, c->projection_dim, false);
    return DF_OK;
}

void df_clip_text_free(df_clip_text *m) {
    free(m->layers);
    m->layers = NULL;
    df_params_free(&m->params);
}

df_tensor *df_clip_text_forward(df_clip_text *m, const df_tensor *input_ids,
                                df_tensor **hidden_states, df_tensor **pooled) {
    const df_clip_text_config *c = &m->config;
    DF_ASSERT(input_ids->ndim == 2 &&
                  (input_ids->dtype == DF_DTYPE_I64 || input_ids->dtype == DF_DTYPE_I32),
              "CLIPTextModel: input_ids must be integer (N, L)");
    int64_t n = input_ids->shape[0], len = input_ids->shape[1];
    DF_ASSERT(len >= 1 && len <= c->max_position_embeddings,
              "CLIPTextModel: %lld tokens (at most %d)", (long long)len,
              c->max_position_embeddings);
    df_tensor *pos_ids = df_arange(DF_DTYPE_I64, 0, (double)len, 1);
    df_tensor *table = m->token_embedding;
    if (m->added_embedding) { /* the grown table: the vocabulary's rows, then the added ones */
        DF_ASSERT(m->added_embedding->ndim == 2 && m->added_embedding->shape[1] == c->hidden_size,
                  "CLIPTextModel: added embeddings must be (k, %d)", c->hidden_size);
        df_tensor *parts[2] = {m->token_embedding, m->added_embedding};
        table = df_concat(parts, 2, 0);
    }
    df_tensor *h = df_add(df_embedding((df_tensor *)input_ids, table),
                          df_embedding(pos_ids, m->position_embedding));
    if (hidden_states) hidden_states[0] = h;
    bool quick = strcmp(c->hidden_act, "quick_gelu") == 0;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        h = df_clip_layer_forward(&m->layers[i], h, c->num_attention_heads, quick, true);
        if (hidden_states) hidden_states[i + 1] = h;
    }
    df_tensor *last = df_norm_mod_forward(&m->final_layer_norm, h);
    if (pooled) {
        /* one row of `last` per item, at the pooling position */
        df_tensor *rows[DF_CLIP_MAX_BATCH];
        DF_ASSERT(n <= DF_CLIP_MAX_BATCH, "CLIPTextModel: batch %lld (at most %d)", (long long)n,
                  DF_CLIP_MAX_BATCH);
        for (int64_t b = 0; b < n; b++) {
            int64_t at = 0;
            double best = -1;
            for (int64_t k = 0; k < len; k++) {
                double id = df_tensor_get(input_ids, b * len + k);
                if (c->eos_token_id == 2) {
                    if (id > best) best = id, at = k; /* argmax: the first maximum */
                } else if ((int64_t)id == c->eos_token_id) {
                    at = k;
                    break;
                }
            }
            df_tensor *item = df_slice(last, 0, b, 1);
            rows[b] = df_reshape(df_slice(item, 1, at, 1), DF_DIMS(1, c->hidden_size));
        }
        *pooled = df_concat(rows, (int)n, 0);
    }
    return last;
}
