/* sd_single_file.c — single-file Stable Diffusion checkpoints to and from diffusers folders
 * (nn/single_file.h), as diffusers v0.21.4's download_from_original_stable_diffusion_ckpt and
 * scripts/convert_diffusers_to_original_stable_diffusion.py do it.
 *
 * Original -> diffusers: the file's keys are sorted into the three models by prefix, the
 * layout is inferred from names and shapes (docs/single-file.md: block count from the
 * downsamplers, layers per block, widths, attention blocks, linear or conv projection, context
 * width, in_channels; the heads as diffusers' yaml assumes: 8 for SD 1.x, width / 64 for SD 2.x),
 * the configs are written as JSON and read back with the model config readers, and a
 * shapes-only instance of each diffusers model checks that every parameter gets exactly one
 * tensor of its shape. Only then is anything written: tensor by tensor, straight from the
 * mapping (1x1 conv <-> linear is a reshape, OpenCLIP's in_proj a row slice: the bytes are
 * unchanged unless a dtype is asked for).
 *
 * Diffusers -> original: the components' configs give the layout; every parameter of the
 * shapes-only models must be in the weight files with its shape; the same rules name it in the
 * original layout (q, k, v stacked back into in_proj).
 */
#include "nn/sd_single_file_impl.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef DF_SOURCE_DIR_NN
#define DF_SOURCE_DIR_NN ""
#endif

#define DIFFUSERS_VERSION "0.21.4"

df_sd_convert_opts df_sd_convert_opts_default(void) {
    return (df_sd_convert_opts){.dtype = DF_DTYPE_COUNT};
}

/* ------------------------------------------------------------------ the plan ------------------ */

typedef struct sf_src {
    const df_st_file *f;
    const df_st_info *info;
    int64_t row0, rows; /* rows of the first dim; rows < 0: all */
} sf_src;

typedef struct sf_item {
    char name[DF_NAME_MAX];
    int comp;
    int ndim;
    int64_t shape[DF_ST_MAX_DIMS];
    df_dtype dtype;
    int n_src;
    sf_src src[3];
} sf_item;

typedef struct sf_plan {
    sf_item *items;
    int n, cap;
    int written; /* items whose sources were handed to the writer (released on the next fill) */
} sf_plan;

/* The mapped pages of items[i]'s sources leave the resident set once written: a conversion
 * holds about one tensor, not the file (the pages stay in the page cache). */
static void plan_release(const sf_plan *p, int i) {
    for (int k = 0; k < p->items[i].n_src; k++)
        df_st_release(p->items[i].src[k].f, p->items[i].src[k].info);
}

static sf_item *plan_add(sf_plan *p) {
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 512;
        sf_item *x = realloc(p->items, (size_t)cap * sizeof *x);
        if (!x) return NULL;
        p->items = x;
        p->cap = cap;
    }
    sf_item *it = &p->items[p->n++];
    memset(it, 0, sizeof *it);
    return it;
}

static void plan_free(sf_plan *p) {
    free(p->items);
    memset(p, 0, sizeof *p);
}

static bool is_float(df_dtype d) {
    return d == DF_DTYPE_F32 || d == DF_DTYPE_F16 || d == DF_DTYPE_BF16 || d == DF_DTYPE_F64;
}

static double load_elem(const uint8_t *p, df_dtype dt) {
    switch (dt) {
    case DF_DTYPE_F32: {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    case DF_DTYPE_F64: {
        double v;
        memcpy(&v, p, 8);
        return v;
    }
    case DF_DTYPE_F16: return df_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
    default: return df_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
    }
}

static void store_elem(uint8_t *p, df_dtype dt, double v) {
    switch (dt) {
    case DF_DTYPE_F32: {
        float f = (float)v;
        memcpy(p, &f, 4);
        break;
    }
    case DF_DTYPE_F64: memcpy(p, &v, 8); break;
    case DF_DTYPE_F16: {
        uint16_t h = df_f32_to_f16((float)v);
        memcpy(p, &h, 2);
        break;
    }
    default: {
        uint16_t h = df_f32_to_bf16((float)v);
        memcpy(p, &h, 2);
        break;
    }
    }
}

/* The writer's producer: the item's sources, sliced, converted and concatenated. */
static df_status plan_fill(void *ctx, int i, void *buf, const void **bytes) {
    sf_plan *p = ctx;
    if (i > 0) plan_release(p, i - 1);
    p->written = i + 1;
    const sf_item *it = &p->items[i];
    size_t out_es = df_dtype_size(it->dtype);
    uint8_t *dst = buf;
    for (int k = 0; k < it->n_src; k++) {
        const sf_src *s = &it->src[k];
        const uint8_t *data = df_st_data(s->f, s->info);
        int64_t row = s->info->ndim ? s->info->numel / (s->info->shape[0] ? s->info->shape[0] : 1)
                                    : s->info->numel;
        int64_t first = s->rows < 0 ? 0 : s->row0;
        int64_t count = s->rows < 0 ? s->info->numel : s->rows * row;
        size_t in_es = df_dtype_size(s->info->dtype);
        const uint8_t *from = data + (size_t)(first * row) * in_es;
        if (s->info->dtype == it->dtype) {
            if (it->n_src == 1) {
                *bytes = from; /* straight from the mapping */
                return DF_OK;
            }
            memcpy(dst, from, (size_t)count * in_es);
        } else {
            for (int64_t e = 0; e < count; e++)
                store_elem(dst + e * out_es, it->dtype,
                           load_elem(from + e * in_es, s->info->dtype));
        }
        dst += (size_t)count * out_es;
    }
    *bytes = buf;
    return DF_OK;
}

static df_status plan_write(sf_plan *p, int comp, const char *path) {
    int n = 0;
    for (int i = 0; i < p->n; i++) n += comp < 0 || p->items[i].comp == comp;
    df_st_entry *e = calloc((size_t)(n ? n : 1), sizeof *e);
    sf_plan sub = {0};
    sub.items = calloc((size_t)(n ? n : 1), sizeof *sub.items);
    if (!e || !sub.items) {
        free(e);
        free(sub.items);
        return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < p->n; i++) {
        if (comp >= 0 && p->items[i].comp != comp) continue;
        const sf_item *it = &p->items[i];
        df_st_entry *x = &e[sub.n];
        sub.items[sub.n++] = *it;
        x->name = sub.items[sub.n - 1].name;
        x->dtype = it->dtype;
        x->ndim = it->ndim;
        memcpy(x->shape, it->shape, sizeof x->shape);
    }
    df_status s = df_st_save_stream(path, n, e, 0, NULL, NULL, plan_fill, &sub, true);
    if (sub.written > 0) plan_release(&sub, sub.written - 1);
    free(e);
    free(sub.items);
    return s;
}

/* ------------------------------------------------------------------ small helpers ------------ */

/* snprintf for names and paths that are cut at len (a longer one then fails to open or match,
 * which the caller reports). */
__attribute__((format(printf, 3, 4))) static void fmt(char *buf, size_t len, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, len, f, ap);
    va_end(ap);
}

static void shape_str(char *buf, size_t len, int ndim, const int64_t *shape) {
    size_t o = (size_t)snprintf(buf, len, "(");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (o < len) snprintf(buf + o, len - o, ndim == 1 ? ",)" : ")");
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool starts(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

/* The tensor `name` with `ndim` dims, or an error naming the file and the tensor. */
static df_status need(const df_st_file *f, const char *name, int ndim, const df_st_info **out) {
    const df_st_info *t = df_st_find(f, name);
    *out = NULL;
    if (!t) return df_error(DF_ERR_FORMAT, "%s: missing tensor '%s'", df_st_path(f), name);
    if (t->ndim != ndim) {
        char s[96];
        shape_str(s, sizeof s, t->ndim, t->shape);
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %d dims",
                        df_st_path(f), name, s, ndim);
    }
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] < 1 || t->shape[d] > (1 << 24))
            return df_error(DF_ERR_FORMAT, "%s: tensor '%s' has a dim of %lld", df_st_path(f), name,
                            (long long)t->shape[d]);
    *out = t;
    return DF_OK;
}

/* 1 + the largest integer following `prefix` in a tensor name ("<int>."), 0 when none. */
static int count_index(const df_st_file *f, const char *prefix) {
    int best = 0;
    size_t n = strlen(prefix);
    for (int i = 0; i < df_st_count(f); i++) {
        const char *s = df_st_info_at(f, i)->name;
        if (strncmp(s, prefix, n) != 0) continue;
        char *end;
        long v = strtol(s + n, &end, 10);
        if (end == s + n || *end != '.' || v < 0 || v > 100000) continue;
        if (v + 1 > best) best = (int)v + 1;
    }
    return best;
}

static bool has(const df_st_file *f, const char *name) {
    return df_st_find(f, name) != NULL;
}

static df_status mkdir_one(const char *path) {
    if (mkdir(path, 0755) == 0 || errno == EEXIST) return DF_OK;
    return df_error(DF_ERR_IO, "%s: mkdir failed: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------ recognition -------------- */

/* What the original file holds (orig -> diffusers). */
typedef struct sf_detect {
    sf_layout lay;
    df_sd_info info;
    int unet_ch[DF_MAX_BLOCKS], unet_in, unet_out, ctx_dim, tdepth;
    bool linear;
    int vae_ch[DF_MAX_BLOCKS], vae_layers, vae_in, vae_out, vae_latent;
    int t_vocab, t_hidden, t_inter, t_pos, t_file_layers;
    bool t_proj; /* OpenCLIP text_projection present: the last block is dropped with it */
} sf_detect;

static df_status detect_unet(const df_st_file *f, sf_detect *d) {
    const char *path = df_st_path(f);
    const df_st_info *t;
    char name[DF_NAME_MAX];
    DF_TRY(need(f, SF_UNET_PREFIX "input_blocks.0.0.weight", 4, &t));
    d->unet_in = (int)t->shape[1];
    int n_in = count_index(f, SF_UNET_PREFIX "input_blocks.");
    int n_out = count_index(f, SF_UNET_PREFIX "output_blocks.");
    int n_down = 0;
    for (int i = 1; i < n_in; i++) {
        snprintf(name, sizeof name, SF_UNET_PREFIX "input_blocks.%d.0.op.weight", i);
        n_down += has(f, name);
    }
    int n = n_down + 1;
    if (n > DF_MAX_BLOCKS || (n_in - 1 - n_down) % n != 0 || (n_in - 1 - n_down) / n < 1)
        return df_error(DF_ERR_FORMAT,
                        "%s: %d input blocks with %d downsamplers do not make a UNet of equal "
                        "blocks (tensor 'model.diffusion_model.input_blocks.*')",
                        path, n_in, n_down);
    int L = (n_in - 1 - n_down) / n;
    if (n_out != n * (L + 1))
        return df_error(DF_ERR_FORMAT,
                        "%s: %d output blocks, expected %d for %d blocks of %d layers "
                        "(tensor 'model.diffusion_model.output_blocks.*')",
                        path, n_out, n * (L + 1), n, L);
    d->lay.unet_blocks = n;
    d->lay.unet_layers = L;
    int first_attn = -1;
    for (int b = 0; b < n; b++) {
        int i = 1 + b * (L + 1);
        snprintf(name, sizeof name, SF_UNET_PREFIX "input_blocks.%d.0.out_layers.3.weight", i);
        DF_TRY(need(f, name, 4, &t));
        d->unet_ch[b] = (int)t->shape[0];
        snprintf(name, sizeof name, SF_UNET_PREFIX "input_blocks.%d.1.norm.weight", i);
        d->lay.down_attn[b] = has(f, name);
        if (d->lay.down_attn[b] && first_attn < 0) first_attn = i;
    }
    char base[DF_NAME_MAX];
    if (first_attn >= 0)
        snprintf(base, sizeof base, SF_UNET_PREFIX "input_blocks.%d.1.", first_attn);
    else
        snprintf(base, sizeof base, SF_UNET_PREFIX "middle_block.1.");
    fmt(name, sizeof name, "%sproj_in.weight", base);
    t = df_st_find(f, name);
    if (!t)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: no cross-attention transformer ('%s' missing): not a Stable "
                        "Diffusion UNet",
                        path, name);
    d->linear = t->ndim == 2;
    fmt(name, sizeof name, "%stransformer_blocks.0.attn2.to_k.weight", base);
    DF_TRY(need(f, name, 2, &t));
    d->ctx_dim = (int)t->shape[1];
    fmt(name, sizeof name, "%stransformer_blocks.", base);
    d->tdepth = count_index(f, name);
    DF_TRY(need(f, SF_UNET_PREFIX "out.2.weight", 4, &t));
    d->unet_out = (int)t->shape[0];
    return DF_OK;
}

static df_status detect_vae(const df_st_file *f, sf_detect *d) {
    const char *path = df_st_path(f);
    const df_st_info *t;
    char name[DF_NAME_MAX];
    DF_TRY(need(f, SF_VAE_PREFIX "encoder.conv_in.weight", 4, &t));
    d->vae_in = (int)t->shape[1];
    int n = count_index(f, SF_VAE_PREFIX "encoder.down.");
    if (n < 1 || n > DF_MAX_BLOCKS)
        return df_error(DF_ERR_FORMAT, "%s: %d VAE encoder blocks (tensor '%sencoder.down.*')",
                        path, n, SF_VAE_PREFIX);
    d->lay.vae_blocks = n;
    d->vae_layers = count_index(f, SF_VAE_PREFIX "encoder.down.0.block.");
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, SF_VAE_PREFIX "encoder.down.%d.block.0.conv2.weight", i);
        DF_TRY(need(f, name, 4, &t));
        d->vae_ch[i] = (int)t->shape[0];
    }
    DF_TRY(need(f, SF_VAE_PREFIX "decoder.conv_in.weight", 4, &t));
    d->vae_latent = (int)t->shape[1];
    DF_TRY(need(f, SF_VAE_PREFIX "decoder.conv_out.weight", 4, &t));
    d->vae_out = (int)t->shape[0];
    return DF_OK;
}

static df_status detect_text(const df_st_file *f, sf_detect *d) {
    const df_st_info *t;
    char name[DF_NAME_MAX];
    if (!d->lay.openclip) {
        const char *P = SF_CLIP_PREFIX "text_model.";
        snprintf(name, sizeof name, "%sembeddings.token_embedding.weight", P);
        DF_TRY(need(f, name, 2, &t));
        d->t_vocab = (int)t->shape[0];
        d->t_hidden = (int)t->shape[1];
        snprintf(name, sizeof name, "%sembeddings.position_embedding.weight", P);
        DF_TRY(need(f, name, 2, &t));
        d->t_pos = (int)t->shape[0];
        snprintf(name, sizeof name, "%sencoder.layers.", P);
        d->t_file_layers = d->lay.text_layers = count_index(f, name);
        snprintf(name, sizeof name, "%sencoder.layers.0.mlp.fc1.weight", P);
        DF_TRY(need(f, name, 2, &t));
        d->t_inter = (int)t->shape[0];
    } else {
        const char *P = SF_OPENCLIP_PREFIX;
        snprintf(name, sizeof name, "%stoken_embedding.weight", P);
        DF_TRY(need(f, name, 2, &t));
        d->t_vocab = (int)t->shape[0];
        d->t_hidden = (int)t->shape[1];
        snprintf(name, sizeof name, "%spositional_embedding", P);
        DF_TRY(need(f, name, 2, &t));
        d->t_pos = (int)t->shape[0];
        snprintf(name, sizeof name, "%stransformer.resblocks.", P);
        d->t_file_layers = count_index(f, name);
        snprintf(name, sizeof name, "%stext_projection", P);
        d->t_proj = has(f, name);
        d->lay.text_layers = d->t_file_layers - (d->t_proj ? 1 : 0);
        snprintf(name, sizeof name, "%stransformer.resblocks.0.mlp.c_fc.weight", P);
        DF_TRY(need(f, name, 2, &t));
        d->t_inter = (int)t->shape[0];
    }
    if (d->lay.text_layers < 1)
        return df_error(DF_ERR_FORMAT, "%s: the text encoder has no layers", df_st_path(f));
    if (d->t_hidden % 64 != 0)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: text encoder width %d is not a multiple of 64 (the 64-wide heads of "
                        "CLIP / OpenCLIP are assumed)",
                        df_st_path(f), d->t_hidden);
    return DF_OK;
}

/* Sorts the file's tensors into the models and refuses what is not SD 1.x / 2.x. */
static df_status detect_sections(const df_st_file *f, sf_detect *d) {
    const char *path = df_st_path(f);
    int unet = 0, vae = 0, clip = 0, openclip = 0, sdxl = 0, control = 0, label = 0;
    for (int i = 0; i < df_st_count(f); i++) {
        const char *s = df_st_info_at(f, i)->name;
        if (starts(s, SF_UNET_PREFIX)) {
            unet++;
            label += starts(s, SF_UNET_PREFIX "label_emb.");
        } else if (starts(s, SF_VAE_PREFIX))
            vae++;
        else if (starts(s, SF_CLIP_PREFIX))
            clip++;
        else if (starts(s, SF_OPENCLIP_PREFIX))
            openclip++;
        else if (starts(s, "conditioner.embedders."))
            sdxl++;
        else if (starts(s, "control_model."))
            control++;
    }
    if (sdxl)
        return df_error(
            DF_ERR_UNSUPPORTED,
            "%s: recognised an SDXL %s (conditioner.embedders.*): only SD 1.x and "
            "2.x single files are supported",
            path, has(f, "conditioner.embedders.1.model.ln_final.weight") ? "base" : "refiner");
    if (control)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: recognised a ControlNet (control_model.*): only SD 1.x and 2.x "
                        "pipelines are supported",
                        path);
    if (!unet)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: no model.diffusion_model.* tensors (found %d VAE, %d text-encoder "
                        "tensors): not an original-layout Stable Diffusion checkpoint",
                        path, vae, clip + openclip);
    if (label)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: recognised a UNet with a label embedding "
                        "(model.diffusion_model.label_emb.*: unCLIP or SDXL): not supported",
                        path);
    if (!vae)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: recognised a UNet only (no first_stage_model.* VAE tensors): a "
                        "single file must hold the whole pipeline",
                        path);
    if (!clip == !openclip)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: recognised a UNet and a VAE but %s text encoder "
                        "(cond_stage_model.transformer.* CLIP or cond_stage_model.model.* "
                        "OpenCLIP)",
                        path, clip ? "two kinds of" : "no");
    d->lay.openclip = openclip > 0;
    return DF_OK;
}

/* Tensors of the file that belong to no model and are skipped (diffusers skips them too). */
static bool ignored(const sf_detect *d, const char *s) {
    if (!starts(s, SF_UNET_PREFIX) && !starts(s, SF_VAE_PREFIX) && !starts(s, SF_CLIP_PREFIX) &&
        !starts(s, SF_OPENCLIP_PREFIX))
        return true; /* model_ema.*, the schedule's buffers (betas, alphas_cumprod, ...) */
    if (starts(s, SF_CLIP_PREFIX) && ends_with(s, ".position_ids")) return true;
    if (starts(s, SF_OPENCLIP_PREFIX)) {
        const char *r = s + strlen(SF_OPENCLIP_PREFIX);
        if (strcmp(r, "logit_scale") == 0 || strcmp(r, "attn_mask") == 0) return true;
        if (d->t_proj) {
            char last[64];
            snprintf(last, sizeof last, "transformer.resblocks.%d.", d->t_file_layers - 1);
            if (strcmp(r, "text_projection") == 0 || starts(r, last)) return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------ configs ------------------ */

static cJSON *int_list(const int *v, int n) {
    return cJSON_CreateIntArray(v, n);
}

static cJSON *str_list(const char *const *v, int n) {
    return cJSON_CreateStringArray(v, n);
}

typedef struct sf_configs {
    cJSON *unet, *vae, *text;
} sf_configs;

static void configs_free(sf_configs *c) {
    cJSON_Delete(c->unet);
    cJSON_Delete(c->vae);
    cJSON_Delete(c->text);
    memset(c, 0, sizeof *c);
}

/* The three configs as diffusers' converter writes them (create_unet_diffusers_config,
 * create_vae_diffusers_config, and the hub's CLIP-L / SD 2 text encoder configs). */
static df_status make_configs(const sf_detect *d, int image_size, bool f16, sf_configs *c) {
    int n = d->lay.unet_blocks, nv = d->lay.vae_blocks;
    const char *down[DF_MAX_BLOCKS], *up[DF_MAX_BLOCKS], *vdown[DF_MAX_BLOCKS], *vup[DF_MAX_BLOCKS];
    int heads[DF_MAX_BLOCKS];
    for (int b = 0; b < n; b++) {
        down[b] = d->lay.down_attn[b] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[b] = d->lay.down_attn[n - 1 - b] ? "CrossAttnUpBlock2D" : "UpBlock2D";
        heads[b] = d->unet_ch[b] / 64;
    }
    for (int b = 0; b < nv; b++) vdown[b] = "DownEncoderBlock2D", vup[b] = "UpDecoderBlock2D";
    cJSON *u = c->unet = cJSON_CreateObject();
    cJSON_AddStringToObject(u, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(u, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddStringToObject(u, "act_fn", "silu");
    if (d->lay.openclip)
        cJSON_AddItemToObject(u, "attention_head_dim", int_list(heads, n));
    else
        cJSON_AddNumberToObject(u, "attention_head_dim", 8);
    cJSON_AddItemToObject(u, "block_out_channels", int_list(d->unet_ch, n));
    cJSON_AddBoolToObject(u, "center_input_sample", false);
    cJSON_AddNullToObject(u, "class_embed_type");
    cJSON_AddNumberToObject(u, "cross_attention_dim", d->ctx_dim);
    cJSON_AddItemToObject(u, "down_block_types", str_list(down, n));
    cJSON_AddNumberToObject(u, "downsample_padding", 1);
    cJSON_AddBoolToObject(u, "flip_sin_to_cos", true);
    cJSON_AddNumberToObject(u, "freq_shift", 0);
    cJSON_AddNumberToObject(u, "in_channels", d->unet_in);
    cJSON_AddNumberToObject(u, "layers_per_block", d->lay.unet_layers);
    cJSON_AddNumberToObject(u, "mid_block_scale_factor", 1);
    cJSON_AddStringToObject(u, "mid_block_type", "UNetMidBlock2DCrossAttn");
    cJSON_AddNumberToObject(u, "norm_eps", 1e-05);
    cJSON_AddNumberToObject(u, "norm_num_groups", 32);
    cJSON_AddNullToObject(u, "num_attention_heads");
    cJSON_AddNumberToObject(u, "out_channels", d->unet_out);
    cJSON_AddStringToObject(u, "resnet_time_scale_shift", "default");
    cJSON_AddNumberToObject(u, "sample_size", image_size / (1 << (nv - 1)));
    cJSON_AddNumberToObject(u, "transformer_layers_per_block", d->tdepth > 0 ? d->tdepth : 1);
    cJSON_AddItemToObject(u, "up_block_types", str_list(up, n));
    cJSON_AddBoolToObject(u, "upcast_attention", false);
    cJSON_AddBoolToObject(u, "use_linear_projection", d->linear);

    cJSON *v = c->vae = cJSON_CreateObject();
    cJSON_AddStringToObject(v, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(v, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddStringToObject(v, "act_fn", "silu");
    cJSON_AddItemToObject(v, "block_out_channels", int_list(d->vae_ch, nv));
    cJSON_AddItemToObject(v, "down_block_types", str_list(vdown, nv));
    cJSON_AddBoolToObject(v, "force_upcast", true);
    cJSON_AddNumberToObject(v, "in_channels", d->vae_in);
    cJSON_AddNumberToObject(v, "latent_channels", d->vae_latent);
    cJSON_AddNumberToObject(v, "layers_per_block", d->vae_layers);
    cJSON_AddNumberToObject(v, "norm_num_groups", 32);
    cJSON_AddNumberToObject(v, "out_channels", d->vae_out);
    cJSON_AddNumberToObject(v, "sample_size", image_size);
    cJSON_AddNumberToObject(v, "scaling_factor", 0.18215);
    cJSON_AddItemToObject(v, "up_block_types", str_list(vup, nv));

    cJSON *t = c->text = cJSON_CreateObject();
    cJSON_AddItemToObject(t, "architectures", str_list((const char *[]){"CLIPTextModel"}, 1));
    cJSON_AddNumberToObject(t, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(t, "bos_token_id", 0);
    cJSON_AddNumberToObject(t, "dropout", 0.0);
    cJSON_AddNumberToObject(t, "eos_token_id", 2);
    cJSON_AddStringToObject(t, "hidden_act", d->lay.openclip ? "gelu" : "quick_gelu");
    cJSON_AddNumberToObject(t, "hidden_size", d->t_hidden);
    cJSON_AddNumberToObject(t, "initializer_factor", 1.0);
    cJSON_AddNumberToObject(t, "initializer_range", 0.02);
    cJSON_AddNumberToObject(t, "intermediate_size", d->t_inter);
    cJSON_AddNumberToObject(t, "layer_norm_eps", 1e-05);
    cJSON_AddNumberToObject(t, "max_position_embeddings", d->t_pos);
    cJSON_AddStringToObject(t, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(t, "num_attention_heads", d->t_hidden / 64);
    cJSON_AddNumberToObject(t, "num_hidden_layers", d->lay.text_layers);
    cJSON_AddNumberToObject(t, "pad_token_id", 1);
    cJSON_AddNumberToObject(t, "projection_dim", d->lay.openclip ? 512 : d->t_hidden);
    cJSON_AddStringToObject(t, "torch_dtype", f16 ? "float16" : "float32");
    cJSON_AddStringToObject(t, "transformers_version", "4.33.3");
    cJSON_AddNumberToObject(t, "vocab_size", d->t_vocab);
    if (!u || !v || !t) return df_error(DF_ERR_NOMEM, "single file: out of memory");
    return DF_OK;
}

/* ------------------------------------------------------------------ the diffusers models ----- */

/* Shapes-only instances of the three models (names and shapes of every parameter). */
typedef struct sf_models {
    df_unet2d_cond unet;
    df_vae vae;
    df_clip_text text;
    bool has_unet, has_vae, has_text;
} sf_models;

static void models_free(sf_models *m) {
    if (m->has_unet) df_unet2d_cond_free(&m->unet);
    if (m->has_vae) df_vae_free(&m->vae);
    if (m->has_text) df_clip_text_free(&m->text);
    memset(m, 0, sizeof *m);
}

static df_params *models_params(sf_models *m, int comp) {
    return comp == SF_UNET ? &m->unet.params : comp == SF_VAE ? &m->vae.params : &m->text.params;
}

static const char *const comp_dir[SF_N_COMP] = {"unet", "vae", "text_encoder"};

/* Builds the models from parsed JSON configs (labelled `label`/<component>/config.json). */
static df_status models_build(sf_models *m, cJSON *unet, cJSON *vae, cJSON *text,
                              const char *label) {
    memset(m, 0, sizeof *m);
    df_json j = {0};
    df_init shapes = {.shapes_only = true};
    df_unet2d_cond_config uc;
    df_vae_config vc;
    df_clip_text_config tc;
    j.root = unet;
    snprintf(j.path, sizeof j.path, "%s/unet/config.json", label);
    DF_TRY(df_unet2d_cond_config_from_json(&j, &uc));
    j.root = vae;
    snprintf(j.path, sizeof j.path, "%s/vae/config.json", label);
    DF_TRY(df_vae_config_from_json(&j, &vc));
    j.root = text;
    snprintf(j.path, sizeof j.path, "%s/text_encoder/config.json", label);
    DF_TRY(df_clip_text_config_from_json(&j, &tc));
    m->has_unet = true;
    DF_TRY(df_unet2d_cond_init(&m->unet, &uc, shapes));
    m->has_vae = true;
    DF_TRY(df_vae_init(&m->vae, &vc, shapes));
    m->has_text = true;
    DF_TRY(df_clip_text_init(&m->text, &tc, shapes));
    return DF_OK;
}

/* ------------------------------------------------------------------ original -> diffusers ---- */

/* The dtypes a conversion may be asked for (DF_DTYPE_COUNT: keep). */
static df_status check_dtype(df_dtype d) {
    if (d == DF_DTYPE_COUNT || d == DF_DTYPE_F32 || d == DF_DTYPE_F16 || d == DF_DTYPE_BF16)
        return DF_OK;
    return df_error(DF_ERR_INVALID, "single file: convert to %s: use float32, float16 or bfloat16",
                    df_dtype_name(d));
}

static df_dtype out_dtype(df_dtype want, df_dtype have) {
    return want == DF_DTYPE_COUNT || !is_float(have) ? have : want;
}

/* Maps every model tensor of the file onto the shapes-only models: each parameter exactly once,
 * with its shape; anything else is an error naming the tensor. */
static df_status plan_to_diffusers(const df_st_file *f, const sf_detect *d, sf_models *m,
                                   df_dtype want, bool ema, sf_plan *p, int *n_ignored) {
    const char *path = df_st_path(f);
    sf_rules rules;
    DF_TRY(sf_rules_build(&d->lay, &rules));
    df_status s = DF_OK;
    sf_item *order = NULL;
    int n_order = 0;
    *n_ignored = 0;
    for (int i = 0; i < df_st_count(f); i++) {
        const df_st_info *info = df_st_info_at(f, i);
        if (ignored(d, info->name)) {
            ++*n_ignored;
            continue;
        }
        sf_target t;
        if (!sf_to_diff(&rules, info->name, &t)) {
            s = df_error(DF_ERR_FORMAT,
                         "%s: unexpected tensor '%s' for an SD %d.x checkpoint of this layout "
                         "(%d blocks of %d layers)",
                         path, info->name, d->lay.openclip ? 2 : 1, d->lay.unet_blocks,
                         d->lay.unet_layers);
            goto done;
        }
        const df_st_info *src = info;
        if (ema && starts(info->name, SF_UNET_PREFIX)) {
            /* diffusers' --extract_ema: model_ema. + the name after "model." without its dots */
            char flat[DF_NAME_MAX];
            size_t o = (size_t)snprintf(flat, sizeof flat, "model_ema.");
            for (const char *c = info->name + strlen("model."); *c && o + 1 < sizeof flat; c++)
                if (*c != '.') flat[o++] = *c;
            flat[o] = '\0';
            src = df_st_find(f, flat);
            bool same = src && src->ndim == info->ndim && src->dtype == info->dtype;
            for (int dd = 0; same && dd < info->ndim; dd++)
                same = src->shape[dd] == info->shape[dd];
            if (!same) {
                s = df_error(DF_ERR_FORMAT, "%s: EMA tensor '%s' of '%s' is %s", path, flat,
                             info->name, src ? "of another shape or dtype" : "missing");
                goto done;
            }
        }
        if (!is_float(info->dtype) && want != DF_DTYPE_COUNT) {
            s = df_error(DF_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected a float", path,
                         info->name, info->dtype_name);
            goto done;
        }
        for (int part = 0; part < (t.part >= 0 ? 3 : 1); part++) {
            sf_item *it = plan_add(p);
            if (!it) {
                s = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
                goto done;
            }
            it->comp = t.comp;
            if (t.part >= 0)
                sf_qkv_name(t.name, part, it->name, sizeof it->name);
            else
                snprintf(it->name, sizeof it->name, "%s", t.name);
            it->dtype = out_dtype(want, info->dtype);
            it->n_src = 1;
            it->src[0] = (sf_src){f, src, 0, -1};
            it->ndim = info->ndim;
            memcpy(it->shape, info->shape, sizeof it->shape);
            if (t.conv1x1 && info->ndim == 4 && info->shape[2] == 1 && info->shape[3] == 1)
                it->ndim = 2;
            if (t.part >= 0) {
                if (info->ndim < 1 || info->shape[0] % 3 != 0) {
                    s = df_error(DF_ERR_FORMAT,
                                 "%s: tensor '%s': first dim %lld is not 3 x the "
                                 "width",
                                 path, info->name, (long long)(info->ndim ? info->shape[0] : 0));
                    goto done;
                }
                it->shape[0] = info->shape[0] / 3;
                it->src[0].row0 = part * it->shape[0];
                it->src[0].rows = it->shape[0];
            }
        }
    }
    /* every parameter exactly once, with its shape; the items then go in the models'
     * registration order (diffusers' state_dict order), whatever the file's order */
    order = calloc((size_t)(p->n ? p->n : 1), sizeof *order);
    if (!order) {
        s = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int comp = 0; comp < SF_N_COMP; comp++) {
        const df_params *r = models_params(m, comp);
        for (int k = 0; k < r->n; k++) {
            const df_param *prm = &r->items[k];
            int found = -1, count = 0;
            for (int i = 0; i < p->n; i++)
                if (p->items[i].comp == comp && strcmp(p->items[i].name, prm->name) == 0)
                    found = i, count++;
            if (count == 0) {
                sf_target o;
                bool named = sf_to_orig(&rules, comp, prm->name, &o);
                s = df_error(DF_ERR_FORMAT, "%s: missing tensor '%s' (%s '%s')", path,
                             named ? o.name : "?", comp_dir[comp], prm->name);
                goto done;
            }
            if (count > 1) {
                s = df_error(DF_ERR_FORMAT, "%s: two tensors map to %s '%s'", path, comp_dir[comp],
                             prm->name);
                goto done;
            }
            const sf_item *it = &p->items[found];
            if (n_order < p->n) order[n_order++] = *it;
            bool same = it->ndim == prm->tensor->ndim;
            for (int dd = 0; same && dd < it->ndim; dd++)
                same = it->shape[dd] == prm->tensor->shape[dd];
            if (!same) {
                char a[96], b[96];
                shape_str(a, sizeof a, it->src[0].info->ndim, it->src[0].info->shape);
                shape_str(b, sizeof b, prm->tensor->ndim, prm->tensor->shape);
                s = df_error(DF_ERR_FORMAT,
                             "%s: tensor '%s' has shape %s, which does not give %s '%s' %s", path,
                             it->src[0].info->name, a, comp_dir[comp], prm->name, b);
                goto done;
            }
        }
        int in_comp = 0;
        for (int i = 0; i < p->n; i++) in_comp += p->items[i].comp == comp;
        if (in_comp != r->n) {
            for (int i = 0; i < p->n; i++) {
                if (p->items[i].comp != comp || df_params_find(r, p->items[i].name)) continue;
                s = df_error(DF_ERR_FORMAT, "%s: unexpected tensor '%s' (would be %s '%s')", path,
                             p->items[i].src[0].info->name, comp_dir[comp], p->items[i].name);
                goto done;
            }
        }
    }
    DF_ASSERT(n_order == p->n, "single file: %d items ordered of %d", n_order, p->n);
    memcpy(p->items, order, (size_t)p->n * sizeof *order);
done:
    free(order);
    sf_rules_free(&rules);
    return s;
}

static df_status detect_all(const df_st_file *f, const df_sd_convert_opts *o, sf_detect *d,
                            sf_configs *cfg, sf_models *m, sf_plan *p) {
    memset(d, 0, sizeof *d);
    DF_TRY(detect_sections(f, d));
    DF_TRY(detect_unet(f, d));
    DF_TRY(detect_vae(f, d));
    DF_TRY(detect_text(f, d));
    const char *path = df_st_path(f);
    if (d->unet_in != 4 && d->unet_in != 9)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: recognised an SD %d.x UNet with %d input channels: only 4 "
                        "(text-to-image) and 9 (inpainting) are supported",
                        path, d->lay.openclip ? 2 : 1, d->unet_in);
    if (d->lay.openclip)
        for (int b = 0; b < d->lay.unet_blocks; b++)
            if (d->unet_ch[b] % 64 != 0)
                return df_error(DF_ERR_UNSUPPORTED,
                                "%s: recognised SD 2.x, but UNet block %d is %d wide: the "
                                "64-wide heads of SD 2.x need a multiple of 64",
                                path, b, d->unet_ch[b]);
    bool vpred =
        o->prediction_type ? strcmp(o->prediction_type, "v_prediction") == 0 : d->lay.openclip;
    int image = o->image_size ? o->image_size : d->lay.openclip && vpred ? 768 : 512;
    bool f16 = o->dtype == DF_DTYPE_F16 ||
               (o->dtype == DF_DTYPE_COUNT &&
                df_st_find(f, SF_UNET_PREFIX "input_blocks.0.0.weight")->dtype == DF_DTYPE_F16);
    DF_TRY(make_configs(d, image, f16, cfg));
    DF_TRY(models_build(m, cfg->unet, cfg->vae, cfg->text, path));
    int n_ema = 0;
    for (int i = 0; i < df_st_count(f); i++)
        n_ema += starts(df_st_info_at(f, i)->name, "model_ema.");
    d->info.has_ema = n_ema > 100; /* diffusers' threshold */
    if (o->extract_ema && !d->info.has_ema)
        return df_error(DF_ERR_INVALID,
                        "%s: --extract-ema, but the file holds no EMA weights "
                        "(model_ema.*)",
                        path);
    DF_TRY(plan_to_diffusers(f, d, m, o->dtype, o->extract_ema, p, &d->info.n_ignored));
    d->info.version = d->lay.openclip ? 2 : 1;
    d->info.inpainting = d->unet_in == 9;
    d->info.linear_proj = d->linear;
    d->info.in_channels = d->unet_in;
    d->info.text_layers = d->lay.text_layers;
    d->info.n_tensors = df_st_count(f);
    return DF_OK;
}

df_status df_sd_single_file_detect(const df_st_file *f, df_sd_info *info) {
    sf_detect d;
    sf_configs cfg = {0};
    sf_models m = {0};
    sf_plan p = {0};
    df_sd_convert_opts o = df_sd_convert_opts_default();
    df_status s = detect_all(f, &o, &d, &cfg, &m, &p);
    if (s == DF_OK && info) *info = d.info;
    plan_free(&p);
    models_free(&m);
    configs_free(&cfg);
    return s;
}

bool df_sd_single_file_is(const char *path) {
    if (!path || !ends_with(path, ".safetensors")) return false;
    df_st_file *f = NULL;
    df_status s = df_st_open(path, &f);
    bool yes = s == DF_OK && df_st_find(f, SF_UNET_PREFIX "input_blocks.0.0.weight") != NULL;
    df_st_close(f);
    return yes;
}

df_status df_sd_refuse_pickle(const char *path) {
    static const char *const ext[] = {".ckpt", ".bin", ".pt", ".pth"};
    bool pickle = false;
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++) pickle |= ends_with(path, ext[i]);
    FILE *fp = fopen(path, "rb");
    if (fp) {
        unsigned char b[4] = {0};
        size_t n = fread(b, 1, 4, fp);
        fclose(fp);
        /* torch.save's zip archive, or a bare pickle (protocol 2+ starts with 0x80 <proto>) */
        if (n == 4 && ((b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) ||
                       (b[0] == 0x80 && b[1] >= 2 && b[1] <= 5)))
            pickle = true;
    }
    if (!pickle) return DF_OK;
    return df_error(DF_ERR_UNSUPPORTED,
                    "%s: a pickle checkpoint (.ckpt/.bin/.pt) is never unpickled here; make a "
                    ".safetensors file first, e.g. python3 -c \"import torch; from "
                    "safetensors.torch import save_file; sd = torch.load('%s', "
                    "map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
                    "save_file({k: v.contiguous() for k, v in sd.items() if "
                    "isinstance(v, torch.Tensor)}, 'model.safetensors')\"",
                    path, path);
}

/* ------------------------------------------------------------------ the folder --------------- */

static df_status write_json_to(cJSON *obj, const char *dir, const char *sub, const char *file) {
    char path[PATH_MAX];
    fmt(path, sizeof path, "%s/%s/%s", dir, sub, file);
    return df_json_write_object(obj, path);
}

/* The scheduler diffusers' converter writes: PNDM (skip_prk_steps) for SD 1.x as SD 1.5's
 * scheduler_config, DDIM for SD 2.x as the SD 2 folders; both from the yaml's linear schedule. */
static cJSON *scheduler_config(bool sd2, const char *prediction) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "_class_name", sd2 ? "DDIMScheduler" : "PNDMScheduler");
    cJSON_AddStringToObject(s, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddNumberToObject(s, "beta_end", 0.012);
    cJSON_AddStringToObject(s, "beta_schedule", "scaled_linear");
    cJSON_AddNumberToObject(s, "beta_start", 0.00085);
    cJSON_AddBoolToObject(s, "clip_sample", false);
    if (sd2) {
        cJSON_AddNumberToObject(s, "clip_sample_range", 1.0);
        cJSON_AddNumberToObject(s, "dynamic_thresholding_ratio", 0.995);
    }
    cJSON_AddNumberToObject(s, "num_train_timesteps", 1000);
    cJSON_AddStringToObject(s, "prediction_type", prediction);
    if (sd2) {
        cJSON_AddBoolToObject(s, "rescale_betas_zero_snr", false);
        cJSON_AddNumberToObject(s, "sample_max_value", 1.0);
    }
    cJSON_AddBoolToObject(s, "set_alpha_to_one", false);
    if (!sd2) cJSON_AddBoolToObject(s, "skip_prk_steps", true);
    cJSON_AddNumberToObject(s, "steps_offset", 1);
    if (sd2) cJSON_AddBoolToObject(s, "thresholding", false);
    cJSON_AddStringToObject(s, "timestep_spacing", "leading");
    cJSON_AddNullToObject(s, "trained_betas");
    return s;
}

static cJSON *pair(const char *lib, const char *cls) {
    return cJSON_CreateStringArray((const char *[]){lib, cls}, 2);
}

static cJSON *null_pair(void) {
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, cJSON_CreateNull());
    cJSON_AddItemToArray(a, cJSON_CreateNull());
    return a;
}

static cJSON *model_index(bool sd2, bool inpaint) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "_class_name",
                            inpaint ? "StableDiffusionInpaintPipeline" : "StableDiffusionPipeline");
    cJSON_AddStringToObject(m, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddItemToObject(m, "feature_extractor", null_pair());
    cJSON_AddBoolToObject(m, "requires_safety_checker", false);
    cJSON_AddItemToObject(m, "safety_checker", null_pair());
    cJSON_AddItemToObject(m, "scheduler",
                          pair("diffusers", sd2 ? "DDIMScheduler" : "PNDMScheduler"));
    cJSON_AddItemToObject(m, "text_encoder", pair("transformers", "CLIPTextModel"));
    cJSON_AddItemToObject(m, "tokenizer", pair("transformers", "CLIPTokenizer"));
    cJSON_AddItemToObject(m, "unet", pair("diffusers", "UNet2DConditionModel"));
    cJSON_AddItemToObject(m, "vae", pair("diffusers", "AutoencoderKL"));
    return m;
}

static df_status read_file(const char *path, char **out, size_t *len) {
    FILE *fp = fopen(path, "rb");
    *out = NULL;
    if (!fp) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            char *b = cap > (256u << 20) ? NULL : realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(fp);
                return df_error(DF_ERR_NOMEM, "%s: too large or out of memory", path);
            }
            buf = b;
        }
        size_t r = fread(buf + n, 1, cap - n, fp);
        n += r;
        if (r == 0) break;
    }
    bool err = ferror(fp);
    fclose(fp);
    if (err) {
        free(buf);
        return df_error(DF_ERR_IO, "%s: read failed", path);
    }
    *out = buf;
    *len = n;
    return DF_OK;
}

static df_status write_bytes(const char *path, const char *buf, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return df_error(DF_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    bool ok = fwrite(buf, 1, n, fp) == n;
    ok &= fclose(fp) == 0;
    return ok ? DF_OK : df_error(DF_ERR_IO, "%s: write failed", path);
}

/* tokenizer/: the four files of `src`; for SD 2.x pad_token "!" in both JSON files. */
static df_status copy_tokenizer(const char *src, const char *out_dir, bool sd2) {
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char from[PATH_MAX], to[PATH_MAX];
        fmt(from, sizeof from, "%s/%s", src, files[i]);
        fmt(to, sizeof to, "%s/tokenizer/%s", out_dir, files[i]);
        char *buf = NULL;
        size_t n = 0;
        DF_TRY(read_file(from, &buf, &n));
        df_status s;
        if (sd2 && i >= 2) {
            df_json j;
            s = df_json_parse(buf, n, from, &j);
            if (s == DF_OK) {
                cJSON *root = j.root;
                j.root = NULL;
                df_json_free(&j);
                if (!cJSON_IsObject(root)) {
                    cJSON_Delete(root);
                    s = df_error(DF_ERR_FORMAT, "%s: not a JSON object", from);
                } else {
                    cJSON_DeleteItemFromObjectCaseSensitive(root, "pad_token");
                    cJSON_AddStringToObject(root, "pad_token", "!");
                    s = df_json_write_object(root, to);
                }
            }
        } else {
            s = write_bytes(to, buf, n);
        }
        free(buf);
        DF_TRY(s);
    }
    return DF_OK;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

df_status df_sd_default_tokenizer_dir(char *buf, size_t len) {
    const char *env = getenv("DIFFUSION_TOKENIZER");
    if (env && *env) {
        snprintf(buf, len, "%s", env);
        return DF_OK;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char cand[4][PATH_MAX];
    int k = 0;
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        fmt(cand[k++], PATH_MAX, "%s/../models/clip-tokenizer", exe);
        fmt(cand[k++], PATH_MAX, "%s/../../models/clip-tokenizer", exe);
        fmt(cand[k++], PATH_MAX, "%s/../share/diffusion/clip-tokenizer", exe);
    }
    if (DF_SOURCE_DIR_NN[0]) fmt(cand[k++], PATH_MAX, "%s/models/clip-tokenizer", DF_SOURCE_DIR_NN);
    for (int i = 0; i < k; i++) {
        char vocab[PATH_MAX + 16];
        fmt(vocab, sizeof vocab, "%s/vocab.json", cand[i]);
        if (file_exists(vocab)) {
            char *r = realpath(cand[i], NULL);
            fmt(buf, len, "%s", r ? r : cand[i]);
            free(r);
            return DF_OK;
        }
    }
    return df_error(DF_ERR_NOTFOUND,
                    "no CLIP tokenizer folder found (models/clip-tokenizer next to the program "
                    "or in the source tree, or $DIFFUSION_TOKENIZER): pass --tokenizer DIR");
}

static df_status check_out_dir(const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp) {
        if (errno == ENOENT) return mkdir_one(dir);
        return df_error(DF_ERR_IO, "%s: %s", dir, strerror(errno));
    }
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(dp)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = false;
    closedir(dp);
    if (!empty)
        return df_error(DF_ERR_INVALID, "%s: exists and is not empty: choose a new folder", dir);
    return DF_OK;
}

df_status df_sd_single_file_convert(const char *in_file, const char *out_dir,
                                    const df_sd_convert_opts *opts) {
    df_sd_convert_opts o = opts ? *opts : df_sd_convert_opts_default();
    if (o.prediction_type && strcmp(o.prediction_type, "epsilon") != 0 &&
        strcmp(o.prediction_type, "v_prediction") != 0)
        return df_error(DF_ERR_INVALID, "prediction type '%s': use epsilon or v_prediction",
                        o.prediction_type);
    if (o.image_size < 0 || o.image_size % 8 != 0 || o.image_size > DF_MODEL_MAX_SIDE)
        return df_error(DF_ERR_INVALID, "image size %d: use a positive multiple of 8",
                        o.image_size);
    DF_TRY(check_dtype(o.dtype));
    DF_TRY(df_sd_refuse_pickle(in_file));
    char tok[PATH_MAX];
    if (o.tokenizer_dir)
        snprintf(tok, sizeof tok, "%s", o.tokenizer_dir);
    else
        DF_TRY(df_sd_default_tokenizer_dir(tok, sizeof tok));

    df_st_file *f = NULL;
    sf_detect d;
    sf_configs cfg = {0};
    sf_models m = {0};
    sf_plan p = {0};
    df_status s = df_st_open(in_file, &f);
    if (s != DF_OK) goto done;
    s = detect_all(f, &o, &d, &cfg, &m, &p);
    if (s != DF_OK) goto done;
    bool sd2 = d.lay.openclip;
    const char *pred = o.prediction_type ? o.prediction_type : sd2 ? "v_prediction" : "epsilon";
    s = check_out_dir(out_dir);
    for (int c = 0; s == DF_OK && c < SF_N_COMP; c++) {
        char sub[PATH_MAX];
        fmt(sub, sizeof sub, "%s/%s", out_dir, comp_dir[c]);
        s = mkdir_one(sub);
    }
    char sub[PATH_MAX];
    if (s == DF_OK) fmt(sub, sizeof sub, "%s/tokenizer", out_dir), s = mkdir_one(sub);
    if (s == DF_OK) fmt(sub, sizeof sub, "%s/scheduler", out_dir), s = mkdir_one(sub);
    if (s == DF_OK) s = copy_tokenizer(tok, out_dir, sd2);
    for (int c = 0; s == DF_OK && c < SF_N_COMP; c++) {
        char path[PATH_MAX];
        fmt(path, sizeof path, "%s/%s/%s.safetensors", out_dir, comp_dir[c],
            c == SF_TEXT ? "model" : "diffusion_pytorch_model");
        s = plan_write(&p, c, path);
    }
    if (s == DF_OK) s = write_json_to(cfg.unet, out_dir, "unet", "config.json"), cfg.unet = NULL;
    if (s == DF_OK) s = write_json_to(cfg.vae, out_dir, "vae", "config.json"), cfg.vae = NULL;
    if (s == DF_OK)
        s = write_json_to(cfg.text, out_dir, "text_encoder", "config.json"), cfg.text = NULL;
    if (s == DF_OK)
        s = write_json_to(scheduler_config(sd2, pred), out_dir, "scheduler",
                          "scheduler_config.json");
    if (s == DF_OK) {
        char path[PATH_MAX];
        fmt(path, sizeof path, "%s/model_index.json", out_dir);
        s = df_json_write_object(model_index(sd2, d.unet_in == 9), path);
    }
    if (s == DF_OK && o.info) *o.info = d.info;
    if (s == DF_OK && !o.quiet)
        fprintf(stderr,
                "%s: SD %d.x%s (%s, %s projection), %d tensors converted, %d skipped -> %s\n",
                in_file, d.info.version, d.info.inpainting ? " inpainting" : "", pred,
                d.linear ? "linear" : "conv", p.n, d.info.n_ignored, out_dir);
done:
    plan_free(&p);
    models_free(&m);
    configs_free(&cfg);
    df_st_close(f);
    return s;
}

/* ------------------------------------------------------------------ diffusers -> original ---- */

static df_status load_json_obj(const char *path, cJSON **out) {
    df_json j;
    *out = NULL;
    DF_TRY(df_json_load(path, &j));
    if (!cJSON_IsObject(j.root)) {
        df_json_free(&j);
        return df_error(DF_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = j.root;
    j.root = NULL;
    df_json_free(&j);
    return DF_OK;
}

static df_status open_weights(const char *dir, const char *sub, const char *stem, df_st_set **out) {
    char comp[PATH_MAX], path[PATH_MAX];
    fmt(comp, sizeof comp, "%s/%s", dir, sub);
    DF_TRY(df_component_weights_path(comp, stem, NULL, path, sizeof path));
    return df_st_set_open(path, out);
}

df_status df_sd_folder_to_single_file(const char *dir, const char *out_file,
                                      const df_sd_convert_opts *opts) {
    df_dtype want = opts ? opts->dtype : DF_DTYPE_COUNT;
    DF_TRY(check_dtype(want));
    cJSON *cu = NULL, *cv = NULL, *ct = NULL;
    df_st_set *sets[SF_N_COMP] = {0};
    sf_models m = {0};
    sf_plan p = {0};
    sf_rules rules = {0};
    char path[PATH_MAX];
    df_status s;
    fmt(path, sizeof path, "%s/unet/config.json", dir);
    if ((s = load_json_obj(path, &cu)) != DF_OK) goto done;
    fmt(path, sizeof path, "%s/vae/config.json", dir);
    if ((s = load_json_obj(path, &cv)) != DF_OK) goto done;
    fmt(path, sizeof path, "%s/text_encoder/config.json", dir);
    if ((s = load_json_obj(path, &ct)) != DF_OK) goto done;
    if ((s = models_build(&m, cu, cv, ct, dir)) != DF_OK) goto done;

    /* the layout the original names need */
    const df_unet2d_cond_config *uc = &m.unet.config;
    sf_layout lay = {0};
    lay.unet_blocks = uc->n_blocks;
    lay.unet_layers = uc->layers_per_block[0];
    for (int b = 0; b < uc->n_blocks; b++) {
        df_block_attn kind;
        df_block_type_attn(uc->down_block_types[b], &kind);
        lay.down_attn[b] = kind == DF_BLOCK_ATTN_TRANSFORMER;
        df_block_attn up_kind;
        df_block_type_attn(uc->up_block_types[uc->n_blocks - 1 - b], &up_kind);
        if (uc->layers_per_block[b] != lay.unet_layers || up_kind != kind ||
            strcmp(uc->mid_block_type, "UNetMidBlock2DCrossAttn") != 0) {
            s = df_error(DF_ERR_UNSUPPORTED,
                         "%s/unet/config.json: the original layout needs equal layers per "
                         "block, mirrored up blocks and a UNetMidBlock2DCrossAttn",
                         dir);
            goto done;
        }
    }
    lay.vae_blocks = m.vae.config.n_blocks;
    lay.openclip = strcmp(m.text.config.hidden_act, "gelu") == 0;
    lay.text_layers = m.text.config.num_hidden_layers;
    if ((s = sf_rules_build(&lay, &rules)) != DF_OK) goto done;

    static const char *const stems[SF_N_COMP] = {"diffusion_pytorch_model",
                                                 "diffusion_pytorch_model", "model"};
    for (int c = 0; c < SF_N_COMP; c++)
        if ((s = open_weights(dir, comp_dir[c], stems[c], &sets[c])) != DF_OK) goto done;

    for (int c = 0; c < SF_N_COMP; c++) {
        const df_params *r = models_params(&m, c);
        for (int k = 0; k < r->n; k++) {
            const df_param *prm = &r->items[k];
            const df_st_file *f;
            const df_st_info *info = df_st_set_find(sets[c], prm->name, &f);
            if (!info) {
                s = df_error(DF_ERR_FORMAT, "%s/%s: missing tensor '%s'", dir, comp_dir[c],
                             prm->name);
                goto done;
            }
            bool same = info->ndim == prm->tensor->ndim;
            for (int dd = 0; same && dd < info->ndim; dd++)
                same = info->shape[dd] == prm->tensor->shape[dd];
            if (!same) {
                char a[96], b[96];
                shape_str(a, sizeof a, info->ndim, info->shape);
                shape_str(b, sizeof b, prm->tensor->ndim, prm->tensor->shape);
                s = df_error(DF_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %s",
                             df_st_path(f), prm->name, a, b);
                goto done;
            }
            if (!is_float(info->dtype)) {
                s = df_error(DF_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected a float",
                             df_st_path(f), prm->name, info->dtype_name);
                goto done;
            }
            sf_target t;
            if (!sf_to_orig(&rules, c, prm->name, &t)) {
                s = df_error(DF_ERR_UNSUPPORTED, "%s/%s: tensor '%s' has no original-layout name",
                             dir, comp_dir[c], prm->name);
                goto done;
            }
            sf_item *it = NULL;
            if (t.part >= 0)
                for (int i = 0; i < p.n && !it; i++)
                    if (strcmp(p.items[i].name, t.name) == 0) it = &p.items[i];
            if (!it) {
                if (!(it = plan_add(&p))) {
                    s = df_error(DF_ERR_NOMEM, "%s: out of memory", out_file);
                    goto done;
                }
                snprintf(it->name, sizeof it->name, "%s", t.name);
                it->comp = c;
                it->dtype = out_dtype(want, info->dtype);
                it->ndim = info->ndim;
                memcpy(it->shape, info->shape, sizeof it->shape);
                if (t.conv1x1 && info->ndim == 2) {
                    it->ndim = 4;
                    it->shape[2] = it->shape[3] = 1;
                }
                if (t.part >= 0)
                    it->shape[0] = 3 * info->shape[0], it->n_src = 3;
                else
                    it->n_src = 1;
            }
            int slot = t.part >= 0 ? t.part : 0;
            it->src[slot] = (sf_src){f, info, 0, -1};
        }
    }
    for (int i = 0; i < p.n; i++)
        for (int k = 0; k < p.items[i].n_src; k++)
            if (!p.items[i].src[k].info) {
                s = df_error(DF_ERR_FORMAT, "%s: '%s' lacks its %s part", dir, p.items[i].name,
                             k == 0   ? "q"
                             : k == 1 ? "k"
                                      : "v");
                goto done;
            }
    s = plan_write(&p, -1, out_file);
done:
    sf_rules_free(&rules);
    plan_free(&p);
    models_free(&m);
    for (int c = 0; c < SF_N_COMP; c++) df_st_set_close(sets[c]);
    cJSON_Delete(cu);
    cJSON_Delete(cv);
    cJSON_Delete(ct);
    return s;
}
