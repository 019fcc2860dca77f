/* model_config_write.c — writes a model config.json as diffusers' save_config does: every
 * __init__ argument of the class (keys sorted, 2-space indent), plus `_class_name` and
 * `_diffusers_version`, so diffusers' from_pretrained reads the folder back. */
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

/* The shortest decimal that reads back as the float v (1e-05, not 9.99999974738e-06), as
 * Python prints the value diffusers stored. */
static double shortest(float v) {
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
    cJSON_AddNumberToObject(o, "dropout", shortest(c->dropout));
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", c->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", c->freq_shift);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddNumberToObject(o, "mid_block_scale_factor", shortest(c->mid_block_scale_factor));
    cJSON_AddNumberToObject(o, "norm_eps", shortest(c->norm_eps));
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
    cJSON_AddNumberToObject(o, "scaling_factor", shortest(c->scaling_factor));
    cJSON_AddItemToObject(o, "up_block_types",
                          string_array((char(*)[DF_JSON_STR])c->up_block_types, c->n_blocks));
    return write_json(o, path);
}

df_status df_json_write_object(struct cJSON *obj, const char *path) {
    return write_json(obj, path);
}
