/* model_config_write.c — writes a model config.json as diffusers' save_config does: every
 * __init__ argument of the class (keys sorted, 2-space indent), plus `_class_name` and
 * `_diffusers_version`, so diffusers' from_pretrained reads the folder back. */
#include "nn/config_write_impl.h"
#include "nn/nn.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIFFUSERS_VERSION "0.21.4"

static cJSON *string_array(char (*items)[DF_JSON_STR], int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(items[i]));
    return a;
}

static cJSON *int_array(const int *items, int n) {
    return cJSON_CreateIntArray(items, n);
}

double df_json_shortest(float v) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        double d = strtod(buf, NULL);
        if ((float)d == v) return d;
    }
    return (double)v;
}

/* Writes obj to path (pretty, trailing newline) and frees obj. */
static df_status write_json(cJSON *obj, const char *path) {
    char *text = obj ? cJSON_Print(obj) : NULL;
    cJSON_Delete(obj);
    if (!text) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(text);
        return df_error(DF_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    bool ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    free(text);
    return ok ? DF_OK : df_error(DF_ERR_IO, "%s: write failed", path);
}

df_status df_unet2d_config_save(const df_unet2d_config *c, const char *path) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    /* keys in sorted order, as json.dumps(sort_keys=True) */
    cJSON_AddStringToObject(o, "_class_name", "UNet2DModel");
    cJSON_AddStringToObject(o, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddStringToObject(o, "act_fn", c->act_fn);
    cJSON_AddBoolToObject(o, "add_attention", c->add_attention);
    if (c->attention_head_dim)
        cJSON_AddNumberToObject(o, "attention_head_dim", c->attention_head_dim);
    else
        cJSON_AddNullToObject(o, "attention_head_dim");
    cJSON_AddItemToObject(o, "block_out_channels", int_array(c->block_out_channels, c->n_blocks));
    cJSON_AddBoolToObject(o, "center_input_sample", c->center_input_sample);
    cJSON_AddNullToObject(o, "class_embed_type");
    cJSON_AddItemToObject(o, "down_block_types",
                          string_array((char(*)[DF_JSON_STR])c->down_block_types, c->n_blocks));
    cJSON_AddNumberToObject(o, "downsample_padding", c->downsample_padding);
    cJSON_AddStringToObject(o, "downsample_type", "conv");
    cJSON_AddNumberToObject(o, "dropout", df_json_shortest(c->dropout));
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", c->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", c->freq_shift);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddNumberToObject(o, "mid_block_scale_factor",
                            df_json_shortest(c->mid_block_scale_factor));
    cJSON_AddNumberToObject(o, "norm_eps", df_json_shortest(c->norm_eps));
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    cJSON_AddNullToObject(o, "num_class_embeds");
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    cJSON_AddStringToObject(o, "resnet_time_scale_shift", c->resnet_time_scale_shift);
    if (c->sample_size && c->sample_width)
        cJSON_AddItemToObject(o, "sample_size",
                              int_array((const int[]){c->sample_size, c->sample_width}, 2));
    else if (c->sample_size)
        cJSON_AddNumberToObject(o, "sample_size", c->sample_size);
    else
        cJSON_AddNullToObject(o, "sample_size");
    cJSON_AddStringToObject(o, "time_embedding_type", c->time_embedding_type);
    cJSON_AddItemToObject(o, "up_block_types",
                          string_array((char(*)[DF_JSON_STR])c->up_block_types, c->n_blocks));
    cJSON_AddStringToObject(o, "upsample_type", "conv");
    return write_json(o, path);
}

df_status df_vae_config_save(const df_vae_config *c, const char *path) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    /* keys in sorted order: AutoencoderKL.__init__'s arguments (v0.21.4) */
    cJSON_AddStringToObject(o, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(o, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddStringToObject(o, "act_fn", c->act_fn);
    cJSON_AddItemToObject(o, "block_out_channels", int_array(c->block_out_channels, c->n_blocks));
    cJSON_AddItemToObject(o, "down_block_types",
                          string_array((char(*)[DF_JSON_STR])c->down_block_types, c->n_blocks));
    cJSON_AddBoolToObject(o, "force_upcast", c->force_upcast);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "latent_channels", c->latent_channels);
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    if (c->sample_size && c->sample_width)
        cJSON_AddItemToObject(o, "sample_size",
                              int_array((const int[]){c->sample_size, c->sample_width}, 2));
    else
        cJSON_AddNumberToObject(o, "sample_size", c->sample_size);
    cJSON_AddNumberToObject(o, "scaling_factor", df_json_shortest(c->scaling_factor));
    cJSON_AddItemToObject(o, "up_block_types",
                          string_array((char(*)[DF_JSON_STR])c->up_block_types, c->n_blocks));
    return write_json(o, path);
}

df_status df_json_write_object(struct cJSON *obj, const char *path) {
    return write_json(obj, path);
}

cJSON *df_json_int_or_list(const int *v, int n) {
    for (int i = 1; i < n; i++)
        if (v[i] != v[0]) return int_array(v, n);
    return cJSON_CreateNumber(v[0]);
}

cJSON *df_json_bool_or_list(const bool *v, int n) {
    for (int i = 1; i < n; i++)
        if (v[i] != v[0]) {
            cJSON *a = cJSON_CreateArray();
            for (int k = 0; a && k < n; k++) cJSON_AddItemToArray(a, cJSON_CreateBool(v[k]));
            return a;
        }
    return cJSON_CreateBool(v[0]);
}

static void add_optional_string(cJSON *o, const char *key, const char *v) {
    if (v[0])
        cJSON_AddStringToObject(o, key, v);
    else
        cJSON_AddNullToObject(o, key);
}

df_status df_unet2d_cond_config_save(const df_unet2d_cond_config *c, const char *path) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    int n = c->n_blocks;
    /* keys in sorted order: UNet2DConditionModel.__init__'s arguments (v0.21.4); the heads go
     * in attention_head_dim, as v0.21 reads them (num_attention_heads must be null there) */
    cJSON_AddStringToObject(o, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(o, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddStringToObject(o, "act_fn", c->act_fn);
    cJSON_AddNullToObject(o, "addition_embed_type");
    cJSON_AddNumberToObject(o, "addition_embed_type_num_heads", 64);
    cJSON_AddNullToObject(o, "addition_time_embed_dim");
    cJSON_AddItemToObject(o, "attention_head_dim", df_json_int_or_list(c->num_attention_heads, n));
    cJSON_AddStringToObject(o, "attention_type", "default");
    cJSON_AddItemToObject(o, "block_out_channels", int_array(c->block_out_channels, n));
    cJSON_AddBoolToObject(o, "center_input_sample", c->center_input_sample);
    cJSON_AddNullToObject(o, "class_embed_type");
    cJSON_AddBoolToObject(o, "class_embeddings_concat", false);
    cJSON_AddNumberToObject(o, "conv_in_kernel", c->conv_in_kernel);
    cJSON_AddNumberToObject(o, "conv_out_kernel", c->conv_out_kernel);
    cJSON_AddItemToObject(o, "cross_attention_dim", df_json_int_or_list(c->cross_attention_dim, n));
    cJSON_AddNullToObject(o, "cross_attention_norm");
    cJSON_AddItemToObject(o, "down_block_types",
                          string_array((char(*)[DF_JSON_STR])c->down_block_types, n));
    cJSON_AddNumberToObject(o, "downsample_padding", c->downsample_padding);
    cJSON_AddNumberToObject(o, "dropout", df_json_shortest(c->dropout));
    cJSON_AddBoolToObject(o, "dual_cross_attention", false);
    cJSON_AddNullToObject(o, "encoder_hid_dim");
    cJSON_AddNullToObject(o, "encoder_hid_dim_type");
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", c->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", c->freq_shift);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddItemToObject(o, "layers_per_block", df_json_int_or_list(c->layers_per_block, n));
    cJSON_AddNullToObject(o, "mid_block_only_cross_attention");
    cJSON_AddNumberToObject(o, "mid_block_scale_factor",
                            df_json_shortest(c->mid_block_scale_factor));
    add_optional_string(o, "mid_block_type", c->mid_block_type);
    cJSON_AddNumberToObject(o, "norm_eps", df_json_shortest(c->norm_eps));
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    cJSON_AddNullToObject(o, "num_attention_heads");
    cJSON_AddNullToObject(o, "num_class_embeds");
    cJSON_AddItemToObject(o, "only_cross_attention",
                          df_json_bool_or_list(c->only_cross_attention, n));
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    cJSON_AddNullToObject(o, "projection_class_embeddings_input_dim");
    cJSON_AddNumberToObject(o, "resnet_out_scale_factor", 1.0);
    cJSON_AddBoolToObject(o, "resnet_skip_time_act", false);
    cJSON_AddStringToObject(o, "resnet_time_scale_shift", c->resnet_time_scale_shift);
    if (c->sample_size && c->sample_width)
        cJSON_AddItemToObject(o, "sample_size",
                              int_array((const int[]){c->sample_size, c->sample_width}, 2));
    else if (c->sample_size)
        cJSON_AddNumberToObject(o, "sample_size", c->sample_size);
    else
        cJSON_AddNullToObject(o, "sample_size");
    cJSON_AddNullToObject(o, "time_cond_proj_dim");
    add_optional_string(o, "time_embedding_act_fn", c->time_embedding_act_fn);
    if (c->time_embedding_dim)
        cJSON_AddNumberToObject(o, "time_embedding_dim", c->time_embedding_dim);
    else
        cJSON_AddNullToObject(o, "time_embedding_dim");
    cJSON_AddStringToObject(o, "time_embedding_type", "positional");
    add_optional_string(o, "timestep_post_act", c->timestep_post_act);
    cJSON_AddItemToObject(o, "transformer_layers_per_block",
                          df_json_int_or_list(c->transformer_layers_per_block, n));
    cJSON_AddItemToObject(o, "up_block_types",
                          string_array((char(*)[DF_JSON_STR])c->up_block_types, n));
    cJSON_AddBoolToObject(o, "upcast_attention", c->upcast_attention);
    cJSON_AddBoolToObject(o, "use_linear_projection", c->use_linear_projection);
    return write_json(o, path);
}

df_status df_clip_text_config_save(const df_clip_text_config *c, const char *path) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    /* as transformers' PretrainedConfig.save_pretrained writes a CLIPTextConfig (keys sorted):
     * the class's fields; the common PretrainedConfig ones keep their defaults on reading */
    const char *arch = c->with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel";
    cJSON_AddItemToObject(o, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(o, "bos_token_id", c->bos_token_id);
    cJSON_AddNumberToObject(o, "dropout", 0.0);
    cJSON_AddNumberToObject(o, "eos_token_id", c->eos_token_id);
    cJSON_AddStringToObject(o, "hidden_act", c->hidden_act);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "initializer_factor", 1.0);
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(o, "layer_norm_eps", df_json_shortest(c->layer_norm_eps));
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddStringToObject(o, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(o, "num_attention_heads", c->num_attention_heads);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->num_hidden_layers);
    cJSON_AddNumberToObject(o, "pad_token_id", c->pad_token_id);
    cJSON_AddNumberToObject(o, "projection_dim", c->projection_dim);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    cJSON_AddStringToObject(o, "transformers_version", "4.33.3");
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    return write_json(o, path);
}
