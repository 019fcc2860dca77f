/* clip_vision.c — transformers v4.33 CLIPVisionModel / CLIPVisionModelWithProjection
 * (models/clip/modeling_clip.py), the image tower of CLIP and of the SD safety checker:
 *   patches = patch_embedding(x)      conv, kernel = stride = patch_size, no bias: (N, D, g, g)
 *   h_0 = pre_layrnorm([class_embedding; patches^T] + position_embedding(0 .. g*g))  hidden_states.0
 *   layer i: clip_encoder.c's CLIPEncoderLayer, no mask                      hidden_states.i
 *   last_hidden_state = h_L; pooler_output = post_layernorm(h_L[:, 0])
 *   image_embeds = visual_projection(pooler_output)                          (no bias)
 */
#include "nn/nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

df_clip_vision_config df_clip_vision_config_default(void) {
    df_clip_vision_config c = {.hidden_size = 768,
                               .intermediate_size = 3072,
                               .num_hidden_layers = 12,
                               .num_attention_heads = 12,
                               .num_channels = 3,
                               .image_size = 224,
                               .patch_size = 32,
                               .layer_norm_eps = 1e-5f,
                               .projection_dim = 512};
    snprintf(c.hidden_act, DF_JSON_STR, "quick_gelu");
    return c;
}

#define MAX_IMAGE_SIZE 4096

df_status df_clip_vision_config_from_json(const df_json *j, df_clip_vision_config *c) {
    *c = df_clip_vision_config_default();
    static const char *const not_null[] = {
        "hidden_size",         "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_channels",      "image_size",
        "patch_size",          "hidden_act",        "layer_norm_eps"};
    for (size_t i = 0; i < sizeof not_null / sizeof not_null[0]; i++)
        if (df_json_is_null(j, not_null[i]))
            return df_error(DF_ERR_FORMAT, "%s: field '%s' is null (CLIPVisionModel needs a value)",
                            j->path, not_null[i]);
    DF_TRY(df_clip_encoder_fields_read(
        j, (df_clip_encoder_fields){&c->hidden_size, &c->intermediate_size, &c->num_hidden_layers,
                                    &c->num_attention_heads, &c->projection_dim, &c->layer_norm_eps,
                                    c->hidden_act}));
    DF_TRY(df_json_int(j, "num_channels", c->num_channels, &c->num_channels));
    DF_TRY(df_json_int(j, "image_size", c->image_size, &c->image_size));
    DF_TRY(df_json_int(j, "patch_size", c->patch_size, &c->patch_size));
    const struct {
        const char *key;
        int v, hi;
    } sizes[] = {{"num_channels", c->num_channels, 64},
                 {"image_size", c->image_size, MAX_IMAGE_SIZE},
                 {"patch_size", c->patch_size, MAX_IMAGE_SIZE}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v < 1 || sizes[i].v > sizes[i].hi)
            return df_error(DF_ERR_FORMAT, "%s: field '%s': %d outside [1, %d]", j->path,
                            sizes[i].key, sizes[i].v, sizes[i].hi);
    if (c->image_size < c->patch_size)
        return df_error(DF_ERR_FORMAT, "%s: image_size %d is smaller than patch_size %d", j->path,
                        c->image_size, c->patch_size);
    int g = c->image_size / c->patch_size;
    if (g * g + 1 > DF_CLIP_MAX_POSITIONS)
        return df_error(DF_ERR_FORMAT, "%s: %d patches (at most %d)", j->path, g * g,
                        DF_CLIP_MAX_POSITIONS - 1);
    return DF_OK;
}

df_status df_clip_vision_init(df_clip_vision *m, const df_clip_vision_config *c, df_init init,
                              const char *prefix) {
    memset(m, 0, sizeof *m);
    m->config = *c;
    df_params *r = &m->params;
    df_params_init_with(r, init);
    int d = c->hidden_size, g = c->image_size / c->patch_size;
    char buf[DF_NAME_MAX], layer[DF_NAME_MAX];
    df_name_join(buf, sizeof buf, prefix, "embeddings");
    m->class_embedding = df_params_add(r, buf, "class_embedding", DF_DIMS(d));
    df_params_init_normal(r, m->class_embedding, 0.02f);
    df_name_join(layer, sizeof layer, buf, "patch_embedding");
    m->patch_embedding = df_params_add(r, layer, "weight",
                                       DF_DIMS(d, c->num_channels, c->patch_size, c->patch_size));
    df_params_init_normal(r, m->patch_embedding, 0.02f);
    df_name_join(layer, sizeof layer, buf, "position_embedding");
    m->position_embedding = df_params_add(r, layer, "weight", DF_DIMS(g * g + 1, d));
    df_params_init_normal(r, m->position_embedding, 0.02f);
    df_layernorm_mod_init(&m->pre_layrnorm, r,
                          df_name_join(buf, sizeof buf, prefix, "pre_layrnorm"), d,
                          c->layer_norm_eps);
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return df_error(DF_ERR_NOMEM, "CLIPVisionModel: out of memory");
    for (int i = 0; i < c->num_hidden_layers; i++) {
        df_name_index(layer, sizeof layer, df_name_join(buf, sizeof buf, prefix, "encoder"),
                      "layers", i);
        df_clip_layer_init(&m->layers[i], r, layer, d, c->intermediate_size, c->layer_norm_eps);
    }
    df_layernorm_mod_init(&m->post_layernorm, r,
                          df_name_join(buf, sizeof buf, prefix, "post_layernorm"), d,
                          c->layer_norm_eps);
    if (c->with_projection)
        df_linear_mod_init(&m->visual_projection, r, "visual_projection", d, c->projection_dim,
                           false);
    return DF_OK;
}

void df_clip_vision_free(df_clip_vision *m) {
    free(m->layers);
    m->layers = NULL;
    df_params_free(&m->params);
}

df_status df_clip_vision_check_pixels(const df_clip_vision_config *c, const df_tensor *x,
                                      const char *what) {
    if (x->dtype != DF_DTYPE_F32 || x->ndim != 4 || x->shape[0] < 1 ||
        x->shape[0] > DF_CLIP_MAX_BATCH || x->shape[1] != c->num_channels ||
        x->shape[2] != c->image_size || x->shape[3] != c->image_size) {
        char s[64];
        return df_error(DF_ERR_INVALID,
                        "%s: shape %s, expected F32 (N, %d, %d, %d) with 1 <= N <= %d", what,
                        df_shape_str(x, s, sizeof s), c->num_channels, c->image_size, c->image_size,
                        DF_CLIP_MAX_BATCH);
    }
    return DF_OK;
}

df_tensor *df_clip_vision_forward(df_clip_vision *m, df_tensor *pixel_values,
                                  df_tensor **hidden_states, df_tensor **pooled) {
    const df_clip_vision_config *c = &m->config;
    DF_ASSERT(df_clip_vision_check_pixels(c, pixel_values, "CLIPVisionModel") == DF_OK, "%s",
              df_last_error());
    int64_t n = pixel_values->shape[0], d = c->hidden_size;
    int64_t g = c->image_size / c->patch_size, t = g * g + 1;
    df_conv2d_params p = df_conv2d_default();
    p.stride[0] = p.stride[1] = c->patch_size;
    df_tensor *patches = df_conv2d(pixel_values, m->patch_embedding, NULL, p);
    patches = df_permute(df_reshape(patches, DF_DIMS(n, d, g * g)), (int[]){0, 2, 1});
    df_tensor *cls = df_reshape(m->class_embedding, DF_DIMS(1, 1, d));
    df_tensor *parts[DF_CLIP_MAX_BATCH + 1];
    for (int64_t b = 0; b < n; b++) parts[b] = cls;
    parts[0] = df_concat(parts, (int)n, 0); /* class_embedding.expand(N, 1, D) */
    parts[1] = patches;
    df_tensor *h = df_add(df_concat(parts, 2, 1), m->position_embedding);
    DF_ASSERT(h->shape[1] == t, "CLIPVisionModel: %lld tokens", (long long)h->shape[1]);
    h = df_norm_mod_forward(&m->pre_layrnorm, h);
    if (hidden_states) hidden_states[0] = h;
    bool quick = strcmp(c->hidden_act, "quick_gelu") == 0;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        h = df_clip_layer_forward(&m->layers[i], h, c->num_attention_heads, quick, false);
        if (hidden_states) hidden_states[i + 1] = h;
    }
    if (pooled)
        *pooled = df_norm_mod_forward(&m->post_layernorm,
                                      df_reshape(df_slice(h, 1, 0, 1), DF_DIMS(n, d)));
    return h;
}
