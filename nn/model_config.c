/* model_config.c — config.json of UNet2DModel, UNet2DConditionModel and AutoencoderKL: diffusers
 * v0.21's field names and class defaults, read through the typed getters of json_config.c.
 * Fields that select features we do not implement (class embeddings, addition embeddings,
 * Fourier time embeddings, ...) are refused with DF_ERR_UNSUPPORTED naming the field, never
 * silently ignored. */
#include "nn/nn.h"

#include <stdio.h>
#include <string.h>

static void set_strings(char (*dst)[DF_JSON_STR], const char *const *src, int n) {
    for (int i = 0; i < n; i++) snprintf(dst[i], DF_JSON_STR, "%s", src[i]);
}

df_unet2d_config df_unet2d_config_default(void) {
    df_unet2d_config c = {.in_channels = 3,
                          .out_channels = 3,
                          .flip_sin_to_cos = true,
                          .n_blocks = 4,
                          .block_out_channels = {224, 448, 672, 896},
                          .layers_per_block = 2,
                          .mid_block_scale_factor = 1,
                          .downsample_padding = 1,
                          .attention_head_dim = 8,
                          .norm_num_groups = 32,
                          .norm_eps = 1e-5f,
                          .add_attention = true};
    set_strings(
        c.down_block_types,
        (const char *[]){"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"},
        4);
    set_strings(c.up_block_types,
                (const char *[]){"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"},
                4);
    snprintf(c.act_fn, DF_JSON_STR, "silu");
    snprintf(c.resnet_time_scale_shift, DF_JSON_STR, "default");
    snprintf(c.time_embedding_type, DF_JSON_STR, "positional");
    return c;
}

df_unet2d_cond_config df_unet2d_cond_config_default(void) {
    df_unet2d_cond_config c = {.in_channels = 4,
                               .out_channels = 4,
                               .flip_sin_to_cos = true,
                               .n_blocks = 4,
                               .block_out_channels = {320, 640, 1280, 1280},
                               .downsample_padding = 1,
                               .mid_block_scale_factor = 1,
                               .norm_num_groups = 32,
                               .norm_eps = 1e-5f,
                               .conv_in_kernel = 3,
                               .conv_out_kernel = 3};
    set_strings(c.down_block_types,
                (const char *[]){"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D", "DownBlock2D"},
                4);
    set_strings(c.up_block_types,
                (const char *[]){"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                 "CrossAttnUpBlock2D"},
                4);
    snprintf(c.mid_block_type, DF_JSON_STR, "UNetMidBlock2DCrossAttn");
    for (int i = 0; i < DF_MAX_BLOCKS; i++) {
        c.layers_per_block[i] = 2;
        c.num_attention_heads[i] = 8;
        c.cross_attention_dim[i] = 1280;
        c.transformer_layers_per_block[i] = 1;
    }
    snprintf(c.act_fn, DF_JSON_STR, "silu");
    snprintf(c.resnet_time_scale_shift, DF_JSON_STR, "default");
    return c;
}

df_vae_config df_vae_config_default(void) {
    df_vae_config c = {.in_channels = 3,
                       .out_channels = 3,
                       .latent_channels = 4,
                       .sample_size = 32,
                       .n_blocks = 1,
                       .block_out_channels = {64},
                       .layers_per_block = 1,
                       .norm_num_groups = 32,
                       .scaling_factor = 0.18215f,
                       .force_upcast = true};
    snprintf(c.down_block_types[0], DF_JSON_STR, "DownEncoderBlock2D");
    snprintf(c.up_block_types[0], DF_JSON_STR, "UpDecoderBlock2D");
    snprintf(c.act_fn, DF_JSON_STR, "silu");
    return c;
}

/* Reads the three per-block lists and checks they have one entry per block. */
static df_status read_blocks(const df_json *j, int *n_blocks, char (*down)[DF_JSON_STR],
                             char (*up)[DF_JSON_STR], int *channels) {
    int nd = *n_blocks, nu = *n_blocks, nc = *n_blocks;
    DF_TRY(df_json_string_list(j, "down_block_types", DF_MAX_BLOCKS, down, &nd));
    DF_TRY(df_json_string_list(j, "up_block_types", DF_MAX_BLOCKS, up, &nu));
    DF_TRY(df_json_int_list(j, "block_out_channels", DF_MAX_BLOCKS, channels, &nc, false));
    if (nd != nc || nu != nc || nc < 1)
        return df_error(DF_ERR_FORMAT,
                        "%s: down_block_types (%d), up_block_types (%d) and block_out_channels "
                        "(%d) must have the same non-zero length",
                        j->path, nd, nu, nc);
    for (int i = 0; i < nc; i++)
        if (channels[i] <= 0)
            return df_error(DF_ERR_FORMAT, "%s: field 'block_out_channels': entry %d is %d",
                            j->path, i, channels[i]);
    *n_blocks = nc;
    return DF_OK;
}

/* An int-or-list field broadcast to n entries. */
static df_status read_per_block(const df_json *j, const char *key, int n, int *out) {
    int count = n;
    DF_TRY(df_json_int_list(j, key, DF_MAX_BLOCKS, out, &count, true));
    if (count == -1) {
        for (int i = 1; i < n; i++) out[i] = out[0];
    } else if (count != n) {
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %d entries for %d blocks", j->path, key,
                        count, n);
    }
    return DF_OK;
}

static df_status float_field(const df_json *j, const char *key, float *v) {
    double d;
    DF_TRY(df_json_double(j, key, *v, &d));
    *v = (float)d;
    return DF_OK;
}

static df_status require_null(const df_json *j, const char *key) {
    if (df_json_has(j, key))
        return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s' is not supported yet (must be null)",
                        j->path, key);
    return DF_OK;
}

static df_status require_string(const df_json *j, const char *key, const char *want,
                                const char *alt) {
    char v[DF_JSON_STR];
    DF_TRY(df_json_string(j, key, want, v, sizeof v));
    if (strcmp(v, want) != 0 && !(alt && strcmp(v, alt) == 0))
        return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s': only '%s' is supported, got '%s'",
                        j->path, key, want, v);
    return DF_OK;
}

static df_status check_groups(const df_json *j, int groups, const int *channels, int n) {
    for (int i = 0; i < n; i++)
        if (groups <= 0 || channels[i] % groups != 0)
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'norm_num_groups': %d does not divide block_out_channels "
                            "entry %d (%d)",
                            j->path, groups, i, channels[i]);
    return DF_OK;
}

static df_status unet2d_fields(const df_json *j, df_unet2d_config *c) {
    DF_TRY(df_json_int(j, "sample_size", c->sample_size, &c->sample_size));
    DF_TRY(df_json_int(j, "in_channels", c->in_channels, &c->in_channels));
    DF_TRY(df_json_int(j, "out_channels", c->out_channels, &c->out_channels));
    DF_TRY(df_json_bool(j, "center_input_sample", c->center_input_sample, &c->center_input_sample));
    DF_TRY(df_json_bool(j, "flip_sin_to_cos", c->flip_sin_to_cos, &c->flip_sin_to_cos));
    DF_TRY(df_json_int(j, "freq_shift", c->freq_shift, &c->freq_shift));
    DF_TRY(read_blocks(j, &c->n_blocks, c->down_block_types, c->up_block_types,
                       c->block_out_channels));
    DF_TRY(df_json_int(j, "layers_per_block", c->layers_per_block, &c->layers_per_block));
    DF_TRY(float_field(j, "mid_block_scale_factor", &c->mid_block_scale_factor));
    DF_TRY(df_json_int(j, "downsample_padding", c->downsample_padding, &c->downsample_padding));
    DF_TRY(float_field(j, "dropout", &c->dropout));
    DF_TRY(df_json_string(j, "act_fn", c->act_fn, c->act_fn, sizeof c->act_fn));
    /* attention_head_dim: absent keeps the default 8; null means None (one full-width head) */
    if (df_json_is_null(j, "attention_head_dim"))
        c->attention_head_dim = 0;
    else
        DF_TRY(df_json_int(j, "attention_head_dim", c->attention_head_dim, &c->attention_head_dim));
    DF_TRY(df_json_int(j, "norm_num_groups", c->norm_num_groups, &c->norm_num_groups));
    DF_TRY(float_field(j, "norm_eps", &c->norm_eps));
    DF_TRY(df_json_string(j, "resnet_time_scale_shift", c->resnet_time_scale_shift,
                          c->resnet_time_scale_shift, sizeof c->resnet_time_scale_shift));
    DF_TRY(df_json_bool(j, "add_attention", c->add_attention, &c->add_attention));
    DF_TRY(require_string(j, "time_embedding_type", "positional", NULL));
    DF_TRY(require_string(j, "act_fn", "silu", "swish"));
    DF_TRY(require_string(j, "downsample_type", "conv", NULL));
    DF_TRY(require_string(j, "upsample_type", "conv", NULL));
    DF_TRY(require_null(j, "class_embed_type"));
    DF_TRY(require_null(j, "num_class_embeds"));
    return check_groups(j, c->norm_num_groups, c->block_out_channels, c->n_blocks);
}

df_status df_unet2d_config_from_json(const df_json *j, df_unet2d_config *c) {
    *c = df_unet2d_config_default();
    return unet2d_fields(j, c);
}

df_status df_unet2d_config_load(const char *path, df_unet2d_config *c) {
    df_json j;
    DF_TRY(df_json_load(path, &j));
    df_status st = df_unet2d_config_from_json(&j, c);
    df_json_free(&j);
    return st;
}

static df_status unet2d_cond_fields(const df_json *j, df_unet2d_cond_config *c) {
    DF_TRY(df_json_int(j, "sample_size", c->sample_size, &c->sample_size));
    DF_TRY(df_json_int(j, "in_channels", c->in_channels, &c->in_channels));
    DF_TRY(df_json_int(j, "out_channels", c->out_channels, &c->out_channels));
    DF_TRY(df_json_bool(j, "center_input_sample", c->center_input_sample, &c->center_input_sample));
    DF_TRY(df_json_bool(j, "flip_sin_to_cos", c->flip_sin_to_cos, &c->flip_sin_to_cos));
    DF_TRY(df_json_int(j, "freq_shift", c->freq_shift, &c->freq_shift));
    DF_TRY(read_blocks(j, &c->n_blocks, c->down_block_types, c->up_block_types,
                       c->block_out_channels));
    int n = c->n_blocks;
    DF_TRY(df_json_string(j, "mid_block_type", c->mid_block_type, c->mid_block_type,
                          sizeof c->mid_block_type));
    DF_TRY(read_per_block(j, "layers_per_block", n, c->layers_per_block));
    /* diffusers: num_attention_heads = num_attention_heads or attention_head_dim */
    int head_dim[DF_MAX_BLOCKS];
    for (int i = 0; i < DF_MAX_BLOCKS; i++) head_dim[i] = 8;
    DF_TRY(read_per_block(j, "attention_head_dim", n, head_dim));
    if (df_json_has(j, "num_attention_heads")) {
        DF_TRY(read_per_block(j, "num_attention_heads", n, c->num_attention_heads));
    } else {
        for (int i = 0; i < n; i++) c->num_attention_heads[i] = head_dim[i];
    }
    DF_TRY(read_per_block(j, "cross_attention_dim", n, c->cross_attention_dim));
    DF_TRY(read_per_block(j, "transformer_layers_per_block", n, c->transformer_layers_per_block));
    bool only_cross = false;
    DF_TRY(df_json_bool(j, "only_cross_attention", false, &only_cross));
    for (int i = 0; i < n; i++) c->only_cross_attention[i] = only_cross;
    DF_TRY(df_json_int(j, "downsample_padding", c->downsample_padding, &c->downsample_padding));
    DF_TRY(float_field(j, "mid_block_scale_factor", &c->mid_block_scale_factor));
    DF_TRY(float_field(j, "dropout", &c->dropout));
    DF_TRY(df_json_string(j, "act_fn", c->act_fn, c->act_fn, sizeof c->act_fn));
    DF_TRY(df_json_int(j, "norm_num_groups", c->norm_num_groups, &c->norm_num_groups));
    DF_TRY(float_field(j, "norm_eps", &c->norm_eps));
    DF_TRY(df_json_bool(j, "use_linear_projection", false, &c->use_linear_projection));
    DF_TRY(df_json_bool(j, "upcast_attention", false, &c->upcast_attention));
    DF_TRY(df_json_string(j, "resnet_time_scale_shift", c->resnet_time_scale_shift,
                          c->resnet_time_scale_shift, sizeof c->resnet_time_scale_shift));
    DF_TRY(df_json_int(j, "conv_in_kernel", c->conv_in_kernel, &c->conv_in_kernel));
    DF_TRY(df_json_int(j, "conv_out_kernel", c->conv_out_kernel, &c->conv_out_kernel));
    DF_TRY(require_string(j, "act_fn", "silu", "swish"));
    DF_TRY(require_string(j, "mid_block_type", "UNetMidBlock2DCrossAttn", NULL));
    DF_TRY(require_string(j, "time_embedding_type", "positional", NULL));
    static const char *const unsupported[] = {
        "class_embed_type",      "addition_embed_type",
        "num_class_embeds",      "encoder_hid_dim",
        "encoder_hid_dim_type",  "time_embedding_dim",
        "time_embedding_act_fn", "timestep_post_act",
        "time_cond_proj_dim",    "projection_class_embeddings_input_dim",
        "cross_attention_norm"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
        DF_TRY(require_null(j, unsupported[i]));
    bool flag = false;
    DF_TRY(df_json_bool(j, "dual_cross_attention", false, &flag));
    if (flag)
        return df_error(DF_ERR_UNSUPPORTED, "%s: field 'dual_cross_attention' must be false",
                        j->path);
    DF_TRY(df_json_bool(j, "resnet_skip_time_act", false, &flag));
    if (flag)
        return df_error(DF_ERR_UNSUPPORTED, "%s: field 'resnet_skip_time_act' must be false",
                        j->path);
    if (c->conv_in_kernel % 2 == 0 || c->conv_out_kernel % 2 == 0)
        return df_error(DF_ERR_FORMAT, "%s: conv_in_kernel / conv_out_kernel must be odd", j->path);
    for (int i = 0; i < n; i++)
        if (c->num_attention_heads[i] <= 0 || c->block_out_channels[i] % c->num_attention_heads[i])
            return df_error(DF_ERR_FORMAT,
                            "%s: %d attention heads do not divide %d channels (block %d)", j->path,
                            c->num_attention_heads[i], c->block_out_channels[i], i);
    return check_groups(j, c->norm_num_groups, c->block_out_channels, n);
}

df_status df_unet2d_cond_config_from_json(const df_json *j, df_unet2d_cond_config *c) {
    *c = df_unet2d_cond_config_default();
    return unet2d_cond_fields(j, c);
}

df_status df_unet2d_cond_config_load(const char *path, df_unet2d_cond_config *c) {
    df_json j;
    DF_TRY(df_json_load(path, &j));
    df_status st = df_unet2d_cond_config_from_json(&j, c);
    df_json_free(&j);
    return st;
}

static df_status vae_fields(const df_json *j, df_vae_config *c) {
    DF_TRY(df_json_int(j, "in_channels", c->in_channels, &c->in_channels));
    DF_TRY(df_json_int(j, "out_channels", c->out_channels, &c->out_channels));
    DF_TRY(df_json_int(j, "latent_channels", c->latent_channels, &c->latent_channels));
    DF_TRY(df_json_int(j, "sample_size", c->sample_size, &c->sample_size));
    DF_TRY(read_blocks(j, &c->n_blocks, c->down_block_types, c->up_block_types,
                       c->block_out_channels));
    DF_TRY(df_json_int(j, "layers_per_block", c->layers_per_block, &c->layers_per_block));
    DF_TRY(df_json_int(j, "norm_num_groups", c->norm_num_groups, &c->norm_num_groups));
    DF_TRY(df_json_string(j, "act_fn", c->act_fn, c->act_fn, sizeof c->act_fn));
    DF_TRY(float_field(j, "scaling_factor", &c->scaling_factor));
    DF_TRY(df_json_bool(j, "force_upcast", c->force_upcast, &c->force_upcast));
    DF_TRY(require_string(j, "act_fn", "silu", "swish"));
    for (int i = 0; i < c->n_blocks; i++) {
        if (strcmp(c->down_block_types[i], "DownEncoderBlock2D") != 0)
            return df_error(DF_ERR_UNSUPPORTED,
                            "%s: down_block_types[%d]: '%s' (only DownEncoderBlock2D)", j->path, i,
                            c->down_block_types[i]);
        if (strcmp(c->up_block_types[i], "UpDecoderBlock2D") != 0)
            return df_error(DF_ERR_UNSUPPORTED,
                            "%s: up_block_types[%d]: '%s' (only UpDecoderBlock2D)", j->path, i,
                            c->up_block_types[i]);
    }
    return check_groups(j, c->norm_num_groups, c->block_out_channels, c->n_blocks);
}

df_status df_vae_config_from_json(const df_json *j, df_vae_config *c) {
    *c = df_vae_config_default();
    return vae_fields(j, c);
}

df_status df_vae_config_load(const char *path, df_vae_config *c) {
    df_json j;
    DF_TRY(df_json_load(path, &j));
    df_status st = df_vae_config_from_json(&j, c);
    df_json_free(&j);
    return st;
}
