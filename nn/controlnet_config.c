/* controlnet_config.c — ControlNetModel's config.json (diffusers v0.21.4 field names, defaults
 * and save_config layout) and the config ControlNetModel.from_unet derives from a UNet's.
 * The rules are model_config.c's: a field selecting a feature we do not implement is refused
 * (DF_ERR_UNSUPPORTED naming file and field) unless it turns the feature off; sizes are
 * bounded; null only where diffusers accepts None; unknown fields get a note.
 * Int-or-list fields (attention_head_dim, num_attention_heads, transformer_layers_per_block,
 * only_cross_attention) are written back as one value when every block has the same one.
 */
#include "nn/controlnet.h"
#include "nn/config_write_impl.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

df_controlnet_config df_controlnet_config_default(void) {
    df_controlnet_config c = {.in_channels = 4,
                              .conditioning_channels = 3,
                              .flip_sin_to_cos = true,
                              .n_blocks = 4,
                              .block_out_channels = {320, 640, 1280, 1280},
                              .layers_per_block = 2,
                              .downsample_padding = 1,
                              .mid_block_scale_factor = 1,
                              .norm_num_groups = 32,
                              .norm_eps = 1e-5f,
                              .cross_attention_dim = 1280,
                              .n_cond_blocks = 4,
                              .conditioning_embedding_out_channels = {16, 32, 96, 256}};
    static const char *const types[] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                        "CrossAttnDownBlock2D", "DownBlock2D"};
    for (int i = 0; i < 4; i++) snprintf(c.down_block_types[i], DF_JSON_STR, "%s", types[i]);
    for (int i = 0; i < DF_MAX_BLOCKS; i++) {
        c.transformer_layers_per_block[i] = 1;
        c.attention_head_dim[i] = 8;
        c.heads[i] = 8;
    }
    snprintf(c.act_fn, DF_JSON_STR, "silu");
    snprintf(c.resnet_time_scale_shift, DF_JSON_STR, "default");
    return c;
}

static const char *const known[] = {"in_channels",
                                    "conditioning_channels",
                                    "flip_sin_to_cos",
                                    "freq_shift",
                                    "down_block_types",
                                    "only_cross_attention",
                                    "block_out_channels",
                                    "layers_per_block",
                                    "downsample_padding",
                                    "mid_block_scale_factor",
                                    "act_fn",
                                    "norm_num_groups",
                                    "norm_eps",
                                    "cross_attention_dim",
                                    "transformer_layers_per_block",
                                    "encoder_hid_dim",
                                    "encoder_hid_dim_type",
                                    "attention_head_dim",
                                    "num_attention_heads",
                                    "use_linear_projection",
                                    "class_embed_type",
                                    "addition_embed_type",
                                    "addition_time_embed_dim",
                                    "num_class_embeds",
                                    "upcast_attention",
                                    "resnet_time_scale_shift",
                                    "projection_class_embeddings_input_dim",
                                    "controlnet_conditioning_channel_order",
                                    "conditioning_embedding_out_channels",
                                    "global_pool_conditions",
                                    "addition_embed_type_num_heads"};

static df_status int_field(const df_json *j, const char *key, int *v, int lo, int hi) {
    if (df_json_is_null(j, key))
        return df_error(DF_ERR_FORMAT, "%s: field '%s' is null (give a number)", j->path, key);
    DF_TRY(df_json_int(j, key, *v, v));
    if (*v < lo || *v > hi)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %d outside [%d, %d]", j->path, key, *v, lo,
                        hi);
    return DF_OK;
}

static df_status float_field(const df_json *j, const char *key, float *v) {
    double d;
    DF_TRY(df_json_double(j, key, *v, &d));
    if (!isfinite(d) || fabs(d) > 1e30)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %g is not a finite float", j->path, key, d);
    *v = (float)d;
    return DF_OK;
}

/* An int-or-list field broadcast to n entries in [lo, hi]. */
static df_status per_block(const df_json *j, const char *key, int n, int *out, int lo, int hi) {
    int count = n;
    DF_TRY(df_json_int_list(j, key, DF_MAX_BLOCKS, out, &count, true));
    if (count == -1)
        for (int i = 1; i < n; i++) out[i] = out[0];
    else if (count != n)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %d entries for %d blocks", j->path, key,
                        count, n);
    for (int i = 0; i < n; i++)
        if (out[i] < lo || out[i] > hi)
            return df_error(DF_ERR_FORMAT, "%s: field '%s': entry %d is %d (outside [%d, %d])",
                            j->path, key, i, out[i], lo, hi);
    return DF_OK;
}

static df_status must_be_null(const df_json *j, const char *key, const char *why) {
    if (df_json_has(j, key))
        return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s' must be null: %s", j->path, key, why);
    return DF_OK;
}

static df_status string_choice(const df_json *j, const char *key, const char *a, const char *b,
                               char *out, size_t len) {
    DF_TRY(df_json_string(j, key, a, out, len));
    if (strcmp(out, a) != 0 && !(b && strcmp(out, b) == 0))
        return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s': '%s' (only '%s'%s%s)", j->path, key,
                        out, a, b ? " or '" : "", b ? b : "");
    return DF_OK;
}

df_status df_controlnet_config_from_json(const df_json *j, df_controlnet_config *c) {
    *c = df_controlnet_config_default();
    df_json_note_unknown(j, known, COUNT(known));
    DF_TRY(int_field(j, "in_channels", &c->in_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(
        int_field(j, "conditioning_channels", &c->conditioning_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(df_json_bool(j, "flip_sin_to_cos", true, &c->flip_sin_to_cos));
    DF_TRY(df_json_int(j, "freq_shift", 0, &c->freq_shift));
    int nd = c->n_blocks, nc = c->n_blocks;
    DF_TRY(df_json_string_list(j, "down_block_types", DF_MAX_BLOCKS, c->down_block_types, &nd));
    DF_TRY(df_json_int_list(j, "block_out_channels", DF_MAX_BLOCKS, c->block_out_channels, &nc,
                            false));
    if (nd != nc || nc < 1)
        return df_error(DF_ERR_FORMAT,
                        "%s: down_block_types (%d) and block_out_channels (%d) must have the same "
                        "non-zero length",
                        j->path, nd, nc);
    int n = c->n_blocks = nc;
    for (int i = 0; i < n; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] > DF_MODEL_MAX_CHANNELS)
            return df_error(DF_ERR_FORMAT, "%s: field 'block_out_channels': entry %d is %d",
                            j->path, i, c->block_out_channels[i]);
    int count = n;
    DF_TRY(df_json_bool_list(j, "only_cross_attention", DF_MAX_BLOCKS, c->only_cross_attention,
                             &count, true));
    if (count == -1)
        for (int i = 1; i < n; i++) c->only_cross_attention[i] = c->only_cross_attention[0];
    else if (count != n)
        return df_error(DF_ERR_FORMAT, "%s: field 'only_cross_attention': %d entries for %d blocks",
                        j->path, count, n);
    /* layers_per_block and cross_attention_dim are one int in ControlNetModel (a list breaks
     * its zero-convolution loop and its blocks) */
    DF_TRY(int_field(j, "layers_per_block", &c->layers_per_block, 0, DF_MODEL_MAX_LAYERS));
    DF_TRY(int_field(j, "cross_attention_dim", &c->cross_attention_dim, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(int_field(j, "downsample_padding", &c->downsample_padding, 0, 1));
    DF_TRY(float_field(j, "mid_block_scale_factor", &c->mid_block_scale_factor));
    DF_TRY(string_choice(j, "act_fn", "silu", "swish", c->act_fn, sizeof c->act_fn));
    DF_TRY(int_field(j, "norm_num_groups", &c->norm_num_groups, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(float_field(j, "norm_eps", &c->norm_eps));
    DF_TRY(per_block(j, "transformer_layers_per_block", n, c->transformer_layers_per_block, 0,
                     DF_MODEL_MAX_LAYERS));
    DF_TRY(per_block(j, "attention_head_dim", n, c->attention_head_dim, 1, DF_MODEL_MAX_CHANNELS));
    for (int i = 0; i < n; i++) c->heads[i] = c->attention_head_dim[i];
    c->heads_given = df_json_has(j, "num_attention_heads");
    if (c->heads_given)
        DF_TRY(per_block(j, "num_attention_heads", n, c->heads, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(df_json_bool(j, "use_linear_projection", false, &c->use_linear_projection));
    DF_TRY(df_json_bool(j, "upcast_attention", false, &c->upcast_attention));
    DF_TRY(string_choice(j, "resnet_time_scale_shift", "default", "scale_shift",
                         c->resnet_time_scale_shift, sizeof c->resnet_time_scale_shift));
    char order[DF_JSON_STR];
    DF_TRY(string_choice(j, "controlnet_conditioning_channel_order", "rgb", "bgr", order,
                         sizeof order));
    c->bgr = strcmp(order, "bgr") == 0;
    if (c->bgr && c->conditioning_channels > DF_CONTROLNET_MAX_BGR)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: field 'conditioning_channels': %d with bgr order "
                        "(at most %d)",
                        j->path, c->conditioning_channels, DF_CONTROLNET_MAX_BGR);
    int ncb = c->n_cond_blocks;
    DF_TRY(df_json_int_list(j, "conditioning_embedding_out_channels", DF_MAX_BLOCKS,
                            c->conditioning_embedding_out_channels, &ncb, false));
    if (ncb < 1)
        return df_error(DF_ERR_FORMAT,
                        "%s: field 'conditioning_embedding_out_channels': at least one width",
                        j->path);
    c->n_cond_blocks = ncb;
    for (int i = 0; i < ncb; i++)
        if (c->conditioning_embedding_out_channels[i] < 1 ||
            c->conditioning_embedding_out_channels[i] > DF_MODEL_MAX_CHANNELS)
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'conditioning_embedding_out_channels': entry %d is %d",
                            j->path, i, c->conditioning_embedding_out_channels[i]);
    bool pool = false;
    DF_TRY(df_json_bool(j, "global_pool_conditions", false, &pool));
    if (pool)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: field 'global_pool_conditions' must be false: pooled residuals "
                        "(1x1 sides) are not implemented",
                        j->path);
    static const struct {
        const char *key, *why;
    } off[] = {
        {"class_embed_type", "class embeddings are not implemented"},
        {"num_class_embeds", "class embeddings are not implemented"},
        {"addition_embed_type", "addition embeddings (SDXL) are not implemented"},
        {"encoder_hid_dim", "encoder_hid_proj is not implemented"},
        {"encoder_hid_dim_type", "encoder_hid_proj is not implemented"},
    };
    for (int i = 0; i < COUNT(off); i++) DF_TRY(must_be_null(j, off[i].key, off[i].why));
    int unused;
    DF_TRY(df_json_int(j, "addition_time_embed_dim", 0, &unused));
    DF_TRY(df_json_int(j, "addition_embed_type_num_heads", 64, &unused));
    DF_TRY(df_json_int(j, "projection_class_embeddings_input_dim", 0, &unused));
    for (int i = 0; i < n; i++)
        if (c->block_out_channels[i] % c->norm_num_groups != 0)
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'norm_num_groups': %d groups do not divide %d channels",
                            j->path, c->norm_num_groups, c->block_out_channels[i]);
    return DF_OK;
}

df_status df_controlnet_config_load(const char *path, df_controlnet_config *c) {
    df_json j;
    DF_TRY(df_json_load(path, &j));
    df_status st = df_controlnet_config_from_json(&j, c);
    df_json_free(&j);
    return st;
}

df_status df_controlnet_config_save(const df_controlnet_config *c, const char *path) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    int n = c->n_blocks;
    cJSON_AddStringToObject(o, "_class_name", "ControlNetModel");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.21.4");
    cJSON_AddStringToObject(o, "act_fn", c->act_fn);
    cJSON_AddNullToObject(o, "addition_embed_type");
    cJSON_AddNumberToObject(o, "addition_embed_type_num_heads", 64);
    cJSON_AddNullToObject(o, "addition_time_embed_dim");
    cJSON_AddItemToObject(o, "attention_head_dim", df_json_int_or_list(c->attention_head_dim, n));
    cJSON_AddItemToObject(o, "block_out_channels", cJSON_CreateIntArray(c->block_out_channels, n));
    cJSON_AddNullToObject(o, "class_embed_type");
    cJSON_AddNumberToObject(o, "conditioning_channels", c->conditioning_channels);
    cJSON_AddItemToObject(
        o, "conditioning_embedding_out_channels",
        cJSON_CreateIntArray(c->conditioning_embedding_out_channels, c->n_cond_blocks));
    cJSON_AddStringToObject(o, "controlnet_conditioning_channel_order", c->bgr ? "bgr" : "rgb");
    cJSON_AddNumberToObject(o, "cross_attention_dim", c->cross_attention_dim);
    cJSON *types = cJSON_CreateArray();
    for (int i = 0; types && i < n; i++)
        cJSON_AddItemToArray(types, cJSON_CreateString(c->down_block_types[i]));
    cJSON_AddItemToObject(o, "down_block_types", types);
    cJSON_AddNumberToObject(o, "downsample_padding", c->downsample_padding);
    cJSON_AddNullToObject(o, "encoder_hid_dim");
    cJSON_AddNullToObject(o, "encoder_hid_dim_type");
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", c->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", c->freq_shift);
    cJSON_AddBoolToObject(o, "global_pool_conditions", false);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddNumberToObject(o, "mid_block_scale_factor",
                            df_json_shortest(c->mid_block_scale_factor));
    cJSON_AddNumberToObject(o, "norm_eps", df_json_shortest(c->norm_eps));
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    if (c->heads_given)
        cJSON_AddItemToObject(o, "num_attention_heads", df_json_int_or_list(c->heads, n));
    else
        cJSON_AddNullToObject(o, "num_attention_heads");
    cJSON_AddNullToObject(o, "num_class_embeds");
    cJSON_AddItemToObject(o, "only_cross_attention",
                          df_json_bool_or_list(c->only_cross_attention, n));
    cJSON_AddNullToObject(o, "projection_class_embeddings_input_dim");
    cJSON_AddStringToObject(o, "resnet_time_scale_shift", c->resnet_time_scale_shift);
    cJSON_AddItemToObject(o, "transformer_layers_per_block",
                          df_json_int_or_list(c->transformer_layers_per_block, n));
    cJSON_AddBoolToObject(o, "upcast_attention", c->upcast_attention);
    cJSON_AddBoolToObject(o, "use_linear_projection", c->use_linear_projection);
    return df_json_write_object(o, path);
}

df_status df_controlnet_config_from_unet(const df_unet2d_cond_config *u, const int *cond_channels,
                                         int n, df_controlnet_config *c) {
    const char *cls = "ControlNetModel.from_unet";
    *c = df_controlnet_config_default();
    int nb = u->n_blocks;
    for (int i = 1; i < nb; i++)
        if (u->layers_per_block[i] != u->layers_per_block[0] ||
            u->cross_attention_dim[i] != u->cross_attention_dim[0])
            return df_error(DF_ERR_UNSUPPORTED,
                            "%s: the UNet's layers_per_block or cross_attention_dim differ per "
                            "block (a ControlNet takes one of each)",
                            cls);
    if (!u->mid_block_type[0] || u->conv_in_kernel != 3 || u->time_embedding_dim != 0 ||
        u->time_embedding_act_fn[0] || u->timestep_post_act[0] || u->center_input_sample)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: the UNet has no mid block, a conv_in_kernel other than 3, or a "
                        "non-default time embedding (time_embedding_dim, time_embedding_act_fn, "
                        "timestep_post_act, center_input_sample), which a ControlNet cannot copy",
                        cls);
    if (n < 0 || n > DF_MAX_BLOCKS)
        return df_error(DF_ERR_INVALID, "%s: %d conditioning widths (1 to %d)", cls, n,
                        DF_MAX_BLOCKS);
    c->in_channels = u->in_channels;
    c->flip_sin_to_cos = u->flip_sin_to_cos;
    c->freq_shift = u->freq_shift;
    c->n_blocks = nb;
    memcpy(c->down_block_types, u->down_block_types, sizeof c->down_block_types);
    memcpy(c->only_cross_attention, u->only_cross_attention, sizeof c->only_cross_attention);
    memcpy(c->block_out_channels, u->block_out_channels, sizeof c->block_out_channels);
    c->layers_per_block = u->layers_per_block[0];
    c->downsample_padding = u->downsample_padding;
    c->mid_block_scale_factor = u->mid_block_scale_factor;
    snprintf(c->act_fn, sizeof c->act_fn, "%s", u->act_fn);
    c->norm_num_groups = u->norm_num_groups;
    c->norm_eps = u->norm_eps;
    c->cross_attention_dim = u->cross_attention_dim[0];
    memcpy(c->transformer_layers_per_block, u->transformer_layers_per_block,
           sizeof c->transformer_layers_per_block);
    /* diffusers v0.21 UNet configs give the heads in attention_head_dim (num_attention_heads
     * null, refused by our reader otherwise) */
    memcpy(c->attention_head_dim, u->num_attention_heads, sizeof c->attention_head_dim);
    memcpy(c->heads, u->num_attention_heads, sizeof c->heads);
    c->heads_given = false;
    c->use_linear_projection = u->use_linear_projection;
    c->upcast_attention = u->upcast_attention;
    snprintf(c->resnet_time_scale_shift, sizeof c->resnet_time_scale_shift, "%s",
             u->resnet_time_scale_shift);
    if (cond_channels && n > 0) {
        c->n_cond_blocks = n;
        memcpy(c->conditioning_embedding_out_channels, cond_channels, (size_t)n * sizeof(int));
    }
    return DF_OK;
}
