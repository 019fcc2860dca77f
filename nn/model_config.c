/* model_config.c — config.json of UNet2DModel, UNet2DConditionModel and AutoencoderKL: diffusers
 * v0.21's field names and class defaults, read through the typed getters of json_config.c.
 * docs/config-fields.md gives every field's status. The rules:
 *   - a field that selects a feature we do not implement (class embeddings, Fourier time
 *     embeddings, ada_group norms, ...) is refused with DF_ERR_UNSUPPORTED naming the file and
 *     the field when it is set to anything but the value that turns the feature off;
 *   - JSON null means what None means upstream: only the fields whose None diffusers accepts
 *     take it (sample_size, attention_head_dim of UNet2DModel, mid_block_type, ...); a null
 *     elsewhere (norm_num_groups: diffusers fails building GroupNorm(None)) is refused;
 *   - sizes are bounded (DF_MODEL_MAX_*) so that nothing absurd reaches an allocation;
 *   - a field unknown to the class gets a note, as diffusers warns and ignores it.
 */
#include "nn/nn.h"

#include <math.h>
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

/* True when name is one of the n strings. */
static bool in_list(const char *name, const char *const *list, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0) return true;
    return false;
}

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Refuses a null for any known field not in `nullable`; notes fields the class does not know. */
static df_status check_keys(const df_json *j, const char *const *known, int n_known,
                            const char *const *nullable, int n_nullable) {
    for (int i = 0; i < n_known; i++)
        if (df_json_is_null(j, known[i]) && !in_list(known[i], nullable, n_nullable))
            return df_error(DF_ERR_FORMAT,
                            "%s: field '%s' is null: the class has no meaning for None there "
                            "(give a value or leave the field out)",
                            j->path, known[i]);
    df_json_note_unknown(j, known, n_known);
    return DF_OK;
}

/* A bool field: null is false, as Python's None is falsy where diffusers tests the flag. */
static df_status bool_field(const df_json *j, const char *key, bool def, bool *v) {
    if (df_json_is_null(j, key)) {
        *v = false;
        return DF_OK;
    }
    return df_json_bool(j, key, def, v);
}

static df_status int_range(const df_json *j, const char *key, int v, int lo, int hi) {
    if (v < lo || v > hi)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %d outside [%d, %d]", j->path, key, v, lo,
                        hi);
    return DF_OK;
}

/* An int field read and bounded. */
static df_status int_field(const df_json *j, const char *key, int *v, int lo, int hi) {
    DF_TRY(df_json_int(j, key, *v, v));
    return int_range(j, key, *v, lo, hi);
}

/* sample_size: null (None), an int (square) or a [height, width] list. */
static df_status sample_size_field(const df_json *j, int *height, int *width) {
    if (df_json_is_null(j, "sample_size")) {
        *height = *width = 0;
        return DF_OK;
    }
    if (!df_json_has(j, "sample_size")) return DF_OK;
    int v[2] = {0, 0}, n = 0;
    DF_TRY(df_json_int_list(j, "sample_size", 2, v, &n, true));
    if (n != -1 && n != 2)
        return df_error(DF_ERR_FORMAT,
                        "%s: field 'sample_size': an integer or a [height, width] list", j->path);
    for (int i = 0; i < (n == 2 ? 2 : 1); i++)
        DF_TRY(int_range(j, "sample_size", v[i], 1, DF_MODEL_MAX_SIDE));
    *height = v[0];
    *width = n == 2 ? v[1] : 0;
    return DF_OK;
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
        if (channels[i] <= 0 || channels[i] > DF_MODEL_MAX_CHANNELS)
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'block_out_channels': entry %d is %d (outside [1, %d])",
                            j->path, i, channels[i], DF_MODEL_MAX_CHANNELS);
    *n_blocks = nc;
    return DF_OK;
}

/* An int-or-list field broadcast to n entries, each in [lo, hi]. */
static df_status read_per_block(const df_json *j, const char *key, int n, int *out, int lo,
                                int hi) {
    int count = n;
    DF_TRY(df_json_int_list(j, key, DF_MAX_BLOCKS, out, &count, true));
    if (count == -1) {
        for (int i = 1; i < n; i++) out[i] = out[0];
    } else if (count != n) {
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %d entries for %d blocks", j->path, key,
                        count, n);
    }
    for (int i = 0; i < n; i++)
        if (out[i] < lo || out[i] > hi)
            return df_error(DF_ERR_FORMAT, "%s: field '%s': entry %d is %d (outside [%d, %d])",
                            j->path, key, i, out[i], lo, hi);
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

static df_status require_null(const df_json *j, const char *key, const char *why) {
    if (df_json_has(j, key))
        return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s' must be null: %s", j->path, key, why);
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

static df_status require_bool(const df_json *j, const char *key, bool want, const char *why) {
    bool v = want;
    DF_TRY(bool_field(j, key, want, &v));
    if (v != want)
        return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s' must be %s: %s", j->path, key,
                        want ? "true" : "false", why);
    return DF_OK;
}

/* A field that has no effect with the blocks we build (as upstream): only its type is checked. */
static df_status unused_int(const df_json *j, const char *key) {
    int v;
    return df_json_int(j, key, 0, &v);
}

/* act_fn: diffusers' get_activation names; we implement SiLU. */
static df_status act_field(const df_json *j, const char *key, char *out, size_t len) {
    char def[DF_JSON_STR];
    snprintf(def, sizeof def, "%s", out[0] ? out : "silu");
    DF_TRY(df_json_string(j, key, def, out, len));
    if (strcmp(out, "silu") != 0 && strcmp(out, "swish") != 0)
        return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s': '%s' (only silu / swish)", j->path,
                        key, out);
    return DF_OK;
}

/* resnet_time_scale_shift: ResnetBlock2D's time_embedding_norm. */
static df_status time_scale_shift_field(const df_json *j, char *out, size_t len) {
    char def[DF_JSON_STR];
    snprintf(def, sizeof def, "%s", out);
    DF_TRY(df_json_string(j, "resnet_time_scale_shift", def, out, len));
    if (strcmp(out, "default") == 0 || strcmp(out, "scale_shift") == 0) return DF_OK;
    if (strcmp(out, "ada_group") == 0 || strcmp(out, "spatial") == 0)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: field 'resnet_time_scale_shift': '%s' is not supported (it replaces "
                        "the resnets' GroupNorms by %s, which we do not implement)",
                        j->path, out, out[0] == 'a' ? "AdaGroupNorm" : "SpatialNorm");
    return df_error(DF_ERR_FORMAT,
                    "%s: field 'resnet_time_scale_shift': unknown value '%s' (default, "
                    "scale_shift, ada_group or spatial)",
                    j->path, out);
}

static df_status groups_field(const df_json *j, int *groups, const int *channels, int n) {
    DF_TRY(int_field(j, "norm_num_groups", groups, 1, DF_MODEL_MAX_CHANNELS));
    for (int i = 0; i < n; i++)
        if (channels[i] % *groups != 0)
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'norm_num_groups': %d does not divide block_out_channels "
                            "entry %d (%d)",
                            j->path, *groups, i, channels[i]);
    return DF_OK;
}

static df_status dropout_field(const df_json *j, float *v) {
    DF_TRY(float_field(j, "dropout", v));
    if (*v != 0)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: field 'dropout': %g (only 0: dropout is not implemented)", j->path,
                        *v);
    return DF_OK;
}

/* Block types of a UNet: each known to df_block_type_attn and not of kind `excluded`. */
static df_status unet_block_types(const df_json *j, const char *cls, int n,
                                  char (*down)[DF_JSON_STR], char (*up)[DF_JSON_STR],
                                  df_block_attn excluded) {
    if (df_unet_check_blocks(cls, n, down, up, excluded) == DF_OK) return DF_OK;
    char why[256];
    snprintf(why, sizeof why, "%s", df_last_error());
    return df_error(DF_ERR_UNSUPPORTED, "%s: field 'down_block_types' / 'up_block_types': %s",
                    j->path, why);
}

static const char *const unet2d_known[] = {"sample_size",
                                           "in_channels",
                                           "out_channels",
                                           "center_input_sample",
                                           "time_embedding_type",
                                           "freq_shift",
                                           "flip_sin_to_cos",
                                           "down_block_types",
                                           "up_block_types",
                                           "block_out_channels",
                                           "layers_per_block",
                                           "mid_block_scale_factor",
                                           "downsample_padding",
                                           "downsample_type",
                                           "upsample_type",
                                           "dropout",
                                           "act_fn",
                                           "attention_head_dim",
                                           "norm_num_groups",
                                           "norm_eps",
                                           "resnet_time_scale_shift",
                                           "add_attention",
                                           "class_embed_type",
                                           "num_class_embeds"};
static const char *const unet2d_nullable[] = {
    "sample_size",         "attention_head_dim", "class_embed_type", "num_class_embeds",
    "center_input_sample", "flip_sin_to_cos",    "add_attention"}; /* the bools: false */

/* layers_per_block 0 with a width change: diffusers' downsampler asserts; refused here. */
static df_status zero_layers(const df_json *j, int n, const int *channels, const int *layers) {
    if (df_model_check_zero_layers("", n, channels, layers) == DF_OK) return DF_OK;
    char why[256];
    snprintf(why, sizeof why, "%s", df_last_error() + 1); /* after the empty class name's ':' */
    return df_error(DF_ERR_FORMAT, "%s: field 'layers_per_block':%s", j->path, why);
}

static df_status unet2d_fields(const df_json *j, df_unet2d_config *c) {
    DF_TRY(
        check_keys(j, unet2d_known, COUNT(unet2d_known), unet2d_nullable, COUNT(unet2d_nullable)));
    DF_TRY(sample_size_field(j, &c->sample_size, &c->sample_width));
    DF_TRY(int_field(j, "in_channels", &c->in_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(int_field(j, "out_channels", &c->out_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(bool_field(j, "center_input_sample", c->center_input_sample, &c->center_input_sample));
    DF_TRY(bool_field(j, "flip_sin_to_cos", c->flip_sin_to_cos, &c->flip_sin_to_cos));
    DF_TRY(df_json_int(j, "freq_shift", c->freq_shift, &c->freq_shift));
    DF_TRY(read_blocks(j, &c->n_blocks, c->down_block_types, c->up_block_types,
                       c->block_out_channels));
    DF_TRY(unet_block_types(j, "UNet2DModel", c->n_blocks, c->down_block_types, c->up_block_types,
                            DF_BLOCK_ATTN_TRANSFORMER));
    DF_TRY(int_field(j, "layers_per_block", &c->layers_per_block, 0, DF_MODEL_MAX_LAYERS));
    int layers[DF_MAX_BLOCKS];
    for (int i = 0; i < c->n_blocks; i++) layers[i] = c->layers_per_block;
    DF_TRY(zero_layers(j, c->n_blocks, c->block_out_channels, layers));
    DF_TRY(float_field(j, "mid_block_scale_factor", &c->mid_block_scale_factor));
    DF_TRY(int_field(j, "downsample_padding", &c->downsample_padding, 0, 1));
    DF_TRY(dropout_field(j, &c->dropout));
    DF_TRY(act_field(j, "act_fn", c->act_fn, sizeof c->act_fn));
    /* attention_head_dim: absent keeps the default 8; null means None (one full-width head) */
    if (df_json_is_null(j, "attention_head_dim"))
        c->attention_head_dim = 0;
    else
        DF_TRY(
            int_field(j, "attention_head_dim", &c->attention_head_dim, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(groups_field(j, &c->norm_num_groups, c->block_out_channels, c->n_blocks));
    DF_TRY(float_field(j, "norm_eps", &c->norm_eps));
    DF_TRY(
        time_scale_shift_field(j, c->resnet_time_scale_shift, sizeof c->resnet_time_scale_shift));
    DF_TRY(bool_field(j, "add_attention", c->add_attention, &c->add_attention));
    DF_TRY(require_string(j, "time_embedding_type", "positional", NULL));
    DF_TRY(require_string(j, "downsample_type", "conv", NULL));
    DF_TRY(require_string(j, "upsample_type", "conv", NULL));
    DF_TRY(require_null(j, "class_embed_type", "class embeddings are not implemented"));
    DF_TRY(require_null(j, "num_class_embeds", "class embeddings are not implemented"));
    /* a spatial attention's heads: width // attention_head_dim, at least one */
    int nb = c->n_blocks, hd = c->attention_head_dim;
    for (int i = 0; hd && i <= nb; i++) {
        df_block_attn a = DF_BLOCK_ATTN_NONE;
        if (i < nb) df_block_type_attn(c->down_block_types[i], &a);
        if (i == nb) a = c->add_attention ? DF_BLOCK_ATTN_SPATIAL : DF_BLOCK_ATTN_NONE;
        int ch = c->block_out_channels[i < nb ? i : nb - 1];
        df_block_attn u = DF_BLOCK_ATTN_NONE;
        if (i < nb) df_block_type_attn(c->up_block_types[nb - 1 - i], &u);
        if ((a == DF_BLOCK_ATTN_SPATIAL || u == DF_BLOCK_ATTN_SPATIAL) && hd > ch)
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'attention_head_dim': %d is wider than a block with "
                            "attention (%d channels): no head left",
                            j->path, hd, ch);
    }
    return DF_OK;
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

static const char *const cond_known[] = {"sample_size",
                                         "in_channels",
                                         "out_channels",
                                         "center_input_sample",
                                         "flip_sin_to_cos",
                                         "freq_shift",
                                         "down_block_types",
                                         "mid_block_type",
                                         "up_block_types",
                                         "only_cross_attention",
                                         "block_out_channels",
                                         "layers_per_block",
                                         "downsample_padding",
                                         "mid_block_scale_factor",
                                         "dropout",
                                         "act_fn",
                                         "norm_num_groups",
                                         "norm_eps",
                                         "cross_attention_dim",
                                         "transformer_layers_per_block",
                                         "encoder_hid_dim",
                                         "encoder_hid_dim_type",
                                         "attention_head_dim",
                                         "num_attention_heads",
                                         "dual_cross_attention",
                                         "use_linear_projection",
                                         "class_embed_type",
                                         "addition_embed_type",
                                         "addition_time_embed_dim",
                                         "num_class_embeds",
                                         "upcast_attention",
                                         "resnet_time_scale_shift",
                                         "resnet_skip_time_act",
                                         "resnet_out_scale_factor",
                                         "time_embedding_type",
                                         "time_embedding_dim",
                                         "time_embedding_act_fn",
                                         "timestep_post_act",
                                         "time_cond_proj_dim",
                                         "conv_in_kernel",
                                         "conv_out_kernel",
                                         "projection_class_embeddings_input_dim",
                                         "attention_type",
                                         "class_embeddings_concat",
                                         "mid_block_only_cross_attention",
                                         "cross_attention_norm",
                                         "addition_embed_type_num_heads"};
static const char *const cond_nullable[] = {
    "sample_size", "mid_block_type", "encoder_hid_dim", "encoder_hid_dim_type",
    "num_attention_heads", "class_embed_type", "addition_embed_type", "addition_time_embed_dim",
    "num_class_embeds", "time_embedding_dim", "time_embedding_act_fn", "timestep_post_act",
    "time_cond_proj_dim", "projection_class_embeddings_input_dim", "mid_block_only_cross_attention",
    "cross_attention_norm",
    /* the bools: null is false */
    "center_input_sample", "flip_sin_to_cos", "dual_cross_attention", "use_linear_projection",
    "upcast_attention", "resnet_skip_time_act", "class_embeddings_concat"};

/* only_cross_attention: a bool for every block or a list of one per block. */
static df_status only_cross_field(const df_json *j, int n, bool *out) {
    int count = n;
    DF_TRY(df_json_bool_list(j, "only_cross_attention", DF_MAX_BLOCKS, out, &count, true));
    if (count == -1) {
        for (int i = 1; i < n; i++) out[i] = out[0];
    } else if (count != n) {
        return df_error(DF_ERR_FORMAT, "%s: field 'only_cross_attention': %d entries for %d blocks",
                        j->path, count, n);
    }
    return DF_OK;
}

/* An optional activation (None or SiLU). */
static df_status optional_act(const df_json *j, const char *key, char *out, size_t len) {
    out[0] = '\0';
    if (!df_json_has(j, key)) return DF_OK;
    return act_field(j, key, out, len);
}

static df_status unet2d_cond_fields(const df_json *j, df_unet2d_cond_config *c) {
    DF_TRY(check_keys(j, cond_known, COUNT(cond_known), cond_nullable, COUNT(cond_nullable)));
    DF_TRY(sample_size_field(j, &c->sample_size, &c->sample_width));
    DF_TRY(int_field(j, "in_channels", &c->in_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(int_field(j, "out_channels", &c->out_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(bool_field(j, "center_input_sample", c->center_input_sample, &c->center_input_sample));
    DF_TRY(bool_field(j, "flip_sin_to_cos", c->flip_sin_to_cos, &c->flip_sin_to_cos));
    DF_TRY(df_json_int(j, "freq_shift", c->freq_shift, &c->freq_shift));
    DF_TRY(read_blocks(j, &c->n_blocks, c->down_block_types, c->up_block_types,
                       c->block_out_channels));
    int n = c->n_blocks;
    DF_TRY(unet_block_types(j, "UNet2DConditionModel", n, c->down_block_types, c->up_block_types,
                            DF_BLOCK_ATTN_SPATIAL));
    /* mid_block_type: null is no mid block */
    if (df_json_is_null(j, "mid_block_type")) {
        c->mid_block_type[0] = '\0';
    } else {
        DF_TRY(require_string(j, "mid_block_type", "UNetMidBlock2DCrossAttn", NULL));
        snprintf(c->mid_block_type, sizeof c->mid_block_type, "UNetMidBlock2DCrossAttn");
    }
    DF_TRY(read_per_block(j, "layers_per_block", n, c->layers_per_block, 0, DF_MODEL_MAX_LAYERS));
    DF_TRY(zero_layers(j, n, c->block_out_channels, c->layers_per_block));
    /* diffusers v0.21: num_attention_heads = num_attention_heads or attention_head_dim, and a
     * num_attention_heads that is set raises (the naming issue of diffusers#2011) */
    if (df_json_has(j, "num_attention_heads"))
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: field 'num_attention_heads' must be null: diffusers v0.21 refuses it "
                        "(attention_head_dim gives the number of heads)",
                        j->path);
    int heads[DF_MAX_BLOCKS];
    for (int i = 0; i < DF_MAX_BLOCKS; i++) heads[i] = 8;
    DF_TRY(read_per_block(j, "attention_head_dim", n, heads, 1, DF_MODEL_MAX_CHANNELS));
    for (int i = 0; i < n; i++) c->num_attention_heads[i] = heads[i];
    DF_TRY(read_per_block(j, "cross_attention_dim", n, c->cross_attention_dim, 1,
                          DF_MODEL_MAX_CHANNELS));
    DF_TRY(read_per_block(j, "transformer_layers_per_block", n, c->transformer_layers_per_block, 0,
                          DF_MODEL_MAX_LAYERS));
    DF_TRY(only_cross_field(j, n, c->only_cross_attention));
    bool mid_only_cross = false; /* only UNetMidBlock2DSimpleCrossAttn reads it */
    DF_TRY(bool_field(j, "mid_block_only_cross_attention", false, &mid_only_cross));
    DF_TRY(int_field(j, "downsample_padding", &c->downsample_padding, 0, 1));
    DF_TRY(float_field(j, "mid_block_scale_factor", &c->mid_block_scale_factor));
    DF_TRY(dropout_field(j, &c->dropout));
    DF_TRY(act_field(j, "act_fn", c->act_fn, sizeof c->act_fn));
    DF_TRY(groups_field(j, &c->norm_num_groups, c->block_out_channels, n));
    DF_TRY(float_field(j, "norm_eps", &c->norm_eps));
    DF_TRY(bool_field(j, "use_linear_projection", false, &c->use_linear_projection));
    DF_TRY(bool_field(j, "upcast_attention", false, &c->upcast_attention));
    DF_TRY(
        time_scale_shift_field(j, c->resnet_time_scale_shift, sizeof c->resnet_time_scale_shift));
    DF_TRY(int_field(j, "conv_in_kernel", &c->conv_in_kernel, 1, DF_MODEL_MAX_KERNEL));
    DF_TRY(int_field(j, "conv_out_kernel", &c->conv_out_kernel, 1, DF_MODEL_MAX_KERNEL));
    if (c->conv_in_kernel % 2 == 0 || c->conv_out_kernel % 2 == 0)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: conv_in_kernel / conv_out_kernel must be odd (an even kernel changes "
                        "the sample size)",
                        j->path);
    c->time_embedding_dim = 0;
    if (df_json_has(j, "time_embedding_dim"))
        DF_TRY(int_field(j, "time_embedding_dim", &c->time_embedding_dim, 1,
                         4 * DF_MODEL_MAX_CHANNELS));
    DF_TRY(optional_act(j, "time_embedding_act_fn", c->time_embedding_act_fn,
                        sizeof c->time_embedding_act_fn));
    DF_TRY(optional_act(j, "timestep_post_act", c->timestep_post_act, sizeof c->timestep_post_act));
    DF_TRY(require_string(j, "time_embedding_type", "positional", NULL));
    DF_TRY(require_string(j, "attention_type", "default", NULL));
    static const struct {
        const char *key, *why;
    } off[] = {
        {"class_embed_type", "class embeddings are not implemented"},
        {"num_class_embeds", "class embeddings are not implemented"},
        {"addition_embed_type", "addition embeddings (SDXL, Kandinsky) are not implemented"},
        {"encoder_hid_dim", "encoder_hid_proj is not implemented"},
        {"encoder_hid_dim_type", "encoder_hid_proj is not implemented"},
        {"time_cond_proj_dim", "timestep_cond (LCM) is not implemented"},
    };
    for (int i = 0; i < COUNT(off); i++) DF_TRY(require_null(j, off[i].key, off[i].why));
    DF_TRY(require_bool(j, "dual_cross_attention", false,
                        "DualTransformer2DModel is not implemented"));
    DF_TRY(require_bool(j, "class_embeddings_concat", false,
                        "it doubles the blocks' time embedding width for a class embedding"));
    /* fields that only the blocks or embeddings we refuse read: type-checked, no effect */
    bool skip_time_act;
    DF_TRY(bool_field(j, "resnet_skip_time_act", false, &skip_time_act));
    float out_scale = 1.0f;
    DF_TRY(float_field(j, "resnet_out_scale_factor", &out_scale));
    char norm[DF_JSON_STR];
    DF_TRY(df_json_string(j, "cross_attention_norm", "", norm, sizeof norm));
    DF_TRY(unused_int(j, "addition_time_embed_dim"));
    DF_TRY(unused_int(j, "addition_embed_type_num_heads"));
    DF_TRY(unused_int(j, "projection_class_embeddings_input_dim"));
    /* a Transformer2DModel's heads must divide its width (inner_dim = heads * (width // heads)
     * is added to the input) */
    int cross = -1;
    for (int i = 0; i <= n; i++) {
        df_block_attn a = DF_BLOCK_ATTN_NONE, u = DF_BLOCK_ATTN_NONE;
        int b = i < n ? i : n - 1;
        if (i < n) {
            df_block_type_attn(c->down_block_types[i], &a);
            df_block_type_attn(c->up_block_types[n - 1 - i], &u);
        } else if (c->mid_block_type[0]) {
            a = DF_BLOCK_ATTN_TRANSFORMER;
        }
        int h = c->num_attention_heads[b], ch = c->block_out_channels[b];
        bool uses = a == DF_BLOCK_ATTN_TRANSFORMER || u == DF_BLOCK_ATTN_TRANSFORMER;
        if (uses && cross < 0) cross = c->cross_attention_dim[b];
        if (uses && c->cross_attention_dim[b] != cross)
            return df_error(DF_ERR_UNSUPPORTED,
                            "%s: field 'cross_attention_dim': blocks with cross-attention need "
                            "one width (%d and %d): one encoder_hidden_states feeds them all",
                            j->path, c->cross_attention_dim[b], cross);
        if ((a == DF_BLOCK_ATTN_TRANSFORMER || u == DF_BLOCK_ATTN_TRANSFORMER) && ch % h != 0)
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'attention_head_dim': %d attention heads do not divide %d "
                            "channels (block %d)",
                            j->path, h, ch, b);
    }
    return DF_OK;
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

static const char *const vae_known[] = {"in_channels",    "out_channels",       "down_block_types",
                                        "up_block_types", "block_out_channels", "layers_per_block",
                                        "act_fn",         "latent_channels",    "norm_num_groups",
                                        "sample_size",    "scaling_factor",     "force_upcast"};
static const char *const vae_nullable[] = {"sample_size", "force_upcast"};

static df_status vae_fields(const df_json *j, df_vae_config *c) {
    DF_TRY(check_keys(j, vae_known, COUNT(vae_known), vae_nullable, COUNT(vae_nullable)));
    DF_TRY(int_field(j, "in_channels", &c->in_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(int_field(j, "out_channels", &c->out_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(int_field(j, "latent_channels", &c->latent_channels, 1, DF_MODEL_MAX_CHANNELS));
    DF_TRY(sample_size_field(j, &c->sample_size, &c->sample_width));
    DF_TRY(read_blocks(j, &c->n_blocks, c->down_block_types, c->up_block_types,
                       c->block_out_channels));
    DF_TRY(int_field(j, "layers_per_block", &c->layers_per_block, 0, DF_MODEL_MAX_LAYERS));
    int layers[DF_MAX_BLOCKS];
    for (int i = 0; i < c->n_blocks; i++) layers[i] = c->layers_per_block;
    DF_TRY(zero_layers(j, c->n_blocks, c->block_out_channels, layers));
    DF_TRY(act_field(j, "act_fn", c->act_fn, sizeof c->act_fn));
    DF_TRY(float_field(j, "scaling_factor", &c->scaling_factor));
    /* force_upcast (annotated float upstream, used as a bool): no effect in float32 */
    double upcast = c->force_upcast;
    bool b;
    if (bool_field(j, "force_upcast", c->force_upcast, &b) == DF_OK)
        c->force_upcast = b;
    else if (df_json_double(j, "force_upcast", upcast, &upcast) == DF_OK)
        c->force_upcast = upcast != 0;
    else
        return df_error(DF_ERR_FORMAT, "%s: field 'force_upcast': expected true or false", j->path);
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
    return groups_field(j, &c->norm_num_groups, c->block_out_channels, c->n_blocks);
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
