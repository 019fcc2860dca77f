/* component.c — a diffusers component folder (`config.json` + `diffusion_pytorch_model.
 * safetensors`, or its sharded `.index.json`) loaded as whichever model its `_class_name`
 * names, with one forward over named inputs and outputs. It is what `diffusion forward` runs
 * and what the model parity tests drive, so both exercise the same path.
 *
 * Inputs (diffusers' forward argument names): `sample`; `timestep` (0-d or one per item, any
 * dtype) and `encoder_hidden_states` for the UNets; the VAE takes `noise` optionally;
 * CLIPTextModel takes `input_ids` and gives `last_hidden_state`, `pooler_output` and
 * `hidden_states.i` (i = 0 .. layers); CLIPTextModelWithProjection gives `text_embeds` (the
 * pooled output through text_projection) instead of `pooler_output`.
 * CLIPVisionModel takes `pixel_values` and gives `last_hidden_state`, `pooler_output`,
 * `hidden_states.i` (CLIPVisionModelWithProjection `image_embeds` instead of the pooler);
 * StableDiffusionSafetyChecker takes `clip_input` and optionally `images` (N, H, W, C) and gives
 * `image_embeds`, `special_cos_dist`, `cos_dist`, `has_nsfw_concepts` (U8) and `images_out`.
 * ControlNetModel takes `sample`, `timestep`, `encoder_hidden_states`, `controlnet_cond` and
 * optionally `conditioning_scale` (0-d, default 1) and `guess_mode` (0-d, non-zero: on), and gives
 * `down_block_res_samples.i` and `mid_block_res_sample`.
 * Outputs: UNets `sample`. AutoencoderKL: `latent_mean`, `latent_logvar`, `latent_std`,
 * `kl` (per item), `sample` (decode of the mean) and, given `noise`, `z` = mean + std * noise
 * and `decoded_z` = decode(z).
 */
#include "nn/controlnet.h"
#include "nn/nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The weights file of a component folder: `<stem>[.<variant>].safetensors`, else its sharded
 * index (`<stem>.safetensors.index[.<variant>].json`, diffusers' _add_variant names). With no
 * variant asked for and no plain file, the first of the fp16, bf16, fp32 variant files is taken
 * (a folder saved with variant="fp16" only). Pickle files (.bin, .ckpt, .pt) are refused with how
 * to convert them. */
df_status df_component_weights_path(const char *dir, const char *stem, const char *variant,
                                    char *out, size_t len) {
    char v[DF_JSON_STR + 1] = "";
    if (variant && variant[0]) snprintf(v, sizeof v, ".%s", variant);
    snprintf(out, len, "%s/%s%s.safetensors", dir, stem, v);
    if (file_exists(out)) return DF_OK;
    snprintf(out, len, "%s/%s.safetensors.index%s.json", dir, stem, v);
    if (file_exists(out)) return DF_OK;
    if (!v[0]) {
        static const char *const guesses[] = {"fp16", "bf16", "fp32"};
        for (size_t i = 0; i < sizeof guesses / sizeof guesses[0]; i++) {
            snprintf(out, len, "%s/%s.%s.safetensors", dir, stem, guesses[i]);
            if (file_exists(out)) return DF_OK;
        }
    }
    static const char *const pickles[] = {"bin", "ckpt", "pt"};
    for (size_t i = 0; i < sizeof pickles / sizeof pickles[0]; i++) {
        snprintf(out, len, "%s/%s%s.%s", dir, stem, v, pickles[i]);
        if (!file_exists(out)) snprintf(out, len, "%s/pytorch_model%s.%s", dir, v, pickles[i]);
        if (file_exists(out))
            return df_error(DF_ERR_UNSUPPORTED,
                            "%s: a pickle file, which diffusion.c never loads (it can run code); "
                            "convert it to safetensors first, e.g. python3 -c \"import torch; from "
                            "safetensors.torch import save_file; save_file(torch.load('%s', "
                            "map_location='cpu'), '%s/%s%s.safetensors')\"",
                            out, out, dir, stem, v);
    }
    return df_error(DF_ERR_NOTFOUND, "%s: no %s%s.safetensors (or .index%s.json)", dir, stem, v, v);
}

/* transformers configs name the class in "architectures": ["CLIPTextModel"] */
static df_status class_of(const df_json *j, char *out, size_t len) {
    DF_TRY(df_json_string(j, "_class_name", "", out, len));
    if (out[0]) return DF_OK;
    char archs[1][DF_JSON_STR];
    int n = 0;
    if (df_json_string_list(j, "architectures", 1, archs, &n) == DF_OK && n == 1)
        snprintf(out, len, "%s", archs[0]);
    return DF_OK;
}

/* A parsed config of any of the four classes. */
typedef union any_config {
    df_unet2d_config unet2d;
    df_unet2d_cond_config unet2d_cond;
    df_vae_config vae;
    df_clip_text_config clip_text;
    df_clip_vision_config clip_vision; /* also the safety checker's */
    df_controlnet_config controlnet;
} any_config;

/* Reads the config of the class c->class_name names; *stem is its weights file's stem. */
static df_status read_config(const df_component *c, const df_json *j, any_config *cfg,
                             const char **stem) {
    *stem = "diffusion_pytorch_model";
    const char *cls = c->class_name;
    if (strcmp(cls, "UNet2DModel") == 0) return df_unet2d_config_from_json(j, &cfg->unet2d);
    if (strcmp(cls, "UNet2DConditionModel") == 0)
        return df_unet2d_cond_config_from_json(j, &cfg->unet2d_cond);
    if (strcmp(cls, "AutoencoderKL") == 0) return df_vae_config_from_json(j, &cfg->vae);
    if (strcmp(cls, "ControlNetModel") == 0)
        return df_controlnet_config_from_json(j, &cfg->controlnet);
    bool proj = strcmp(cls, "CLIPTextModelWithProjection") == 0;
    if (strcmp(cls, "CLIPTextModel") == 0 || proj) {
        *stem = "model";
        DF_TRY(df_clip_text_config_from_json(j, &cfg->clip_text));
        cfg->clip_text.with_projection = proj;
        return DF_OK;
    }
    bool vproj = strcmp(cls, "CLIPVisionModelWithProjection") == 0;
    if (strcmp(cls, "CLIPVisionModel") == 0 || vproj) {
        *stem = "model";
        DF_TRY(df_clip_vision_config_from_json(j, &cfg->clip_vision));
        cfg->clip_vision.with_projection = vproj;
        return DF_OK;
    }
    if (strcmp(cls, "StableDiffusionSafetyChecker") == 0) {
        *stem = "model";
        return df_safety_checker_config_from_json(j, &cfg->clip_vision);
    }
    return df_error(DF_ERR_UNSUPPORTED,
                    "%s: class '%s' (supported: UNet2DModel, UNet2DConditionModel, "
                    "ControlNetModel, AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection, "
                    "CLIPVisionModel, "
                    "CLIPVisionModelWithProjection, StableDiffusionSafetyChecker)",
                    j->path, cls);
}

/* Builds the model (zero weights, or shapes only) from the config read_config gave. */
static df_status build(df_component *c, const any_config *cfg, df_init init) {
    const char *cls = c->class_name;
    if (strcmp(cls, "UNet2DModel") == 0) {
        if (!(c->unet2d = calloc(1, sizeof *c->unet2d)))
            return df_error(DF_ERR_NOMEM, "out of memory");
        DF_TRY(df_unet2d_init(c->unet2d, &cfg->unet2d, init));
        c->params = &c->unet2d->params;
    } else if (strcmp(cls, "UNet2DConditionModel") == 0) {
        if (!(c->unet2d_cond = calloc(1, sizeof *c->unet2d_cond)))
            return df_error(DF_ERR_NOMEM, "out of memory");
        DF_TRY(df_unet2d_cond_init(c->unet2d_cond, &cfg->unet2d_cond, init));
        c->params = &c->unet2d_cond->params;
    } else if (strcmp(cls, "ControlNetModel") == 0) {
        if (!(c->controlnet = calloc(1, sizeof *c->controlnet)))
            return df_error(DF_ERR_NOMEM, "out of memory");
        DF_TRY(df_controlnet_init(c->controlnet, &cfg->controlnet, init));
        c->params = &c->controlnet->params;
    } else if (strcmp(cls, "AutoencoderKL") == 0) {
        if (!(c->vae = calloc(1, sizeof *c->vae))) return df_error(DF_ERR_NOMEM, "out of memory");
        DF_TRY(df_vae_init(c->vae, &cfg->vae, init));
        c->params = &c->vae->params;
    } else if (strcmp(cls, "StableDiffusionSafetyChecker") == 0) {
        if (!(c->safety_checker = calloc(1, sizeof *c->safety_checker)))
            return df_error(DF_ERR_NOMEM, "out of memory");
        DF_TRY(df_safety_checker_init(c->safety_checker, &cfg->clip_vision, init));
        c->params = &c->safety_checker->vision.params;
    } else if (strncmp(cls, "CLIPVisionModel", 15) == 0) {
        if (!(c->clip_vision = calloc(1, sizeof *c->clip_vision)))
            return df_error(DF_ERR_NOMEM, "out of memory");
        DF_TRY(df_clip_vision_init(c->clip_vision, &cfg->clip_vision, init, "vision_model"));
        c->params = &c->clip_vision->params;
    } else {
        if (!(c->clip_text = calloc(1, sizeof *c->clip_text)))
            return df_error(DF_ERR_NOMEM, "out of memory");
        DF_TRY(df_clip_text_init(c->clip_text, &cfg->clip_text, init));
        c->params = &c->clip_text->params;
    }
    return DF_OK;
}

/* Frees the model (the class name stays). */
static void free_model(df_component *c) {
    char cls[DF_JSON_STR];
    memcpy(cls, c->class_name, sizeof cls);
    df_component_free(c);
    memcpy(c->class_name, cls, sizeof cls);
}

/* The model is built twice: first shapes only (no parameter memory), whose names and shapes are
 * checked against the weights file's header, so a config that disagrees with its file (or
 * implies gigabytes the file does not hold) is refused before anything is allocated; then for
 * real, and loaded. */
df_status df_component_load(const char *dir, df_component *c) {
    return df_component_load_variant(dir, NULL, c);
}

/* The load of df_component_load_variant; with `mapped` the second build takes its parameters
 * from the weights file itself (df_init.map) and the registry keeps the file open. */
static df_status load(const char *dir, const char *variant, bool mapped, df_component *c) {
    memset(c, 0, sizeof *c);
    char path[1024], weights[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    df_json j;
    DF_TRY(df_json_load(path, &j));
    const char *stem = NULL;
    any_config cfg;
    df_status st = class_of(&j, c->class_name, sizeof c->class_name);
    if (st == DF_OK) st = read_config(c, &j, &cfg, &stem);
    df_json_free(&j);
    if (st == DF_OK) st = build(c, &cfg, (df_init){.shapes_only = true});
    if (st == DF_OK) st = df_component_weights_path(dir, stem, variant, weights, sizeof weights);
    if (st == DF_OK) st = df_params_load(c->params, weights, NULL);
    if (st == DF_OK) free_model(c);
    if (st != DF_OK) return st;
    if (!mapped) {
        DF_TRY(build(c, &cfg, (df_init){0}));
        return df_params_load(c->params, weights, NULL);
    }
    df_st_set *set;
    DF_TRY(df_st_set_open(weights, &set));
    st = build(c, &cfg, (df_init){.map = set});
    if (c->params)
        c->params->map_owned = set;
    else
        df_st_set_close(set);
    return st;
}

df_status df_component_load_variant(const char *dir, const char *variant, df_component *c) {
    return load(dir, variant, false, c);
}

df_status df_component_map_frozen(const char *dir, const char *variant, df_component *c) {
    DF_TRY(load(dir, variant, true, c));
    return df_params_freeze(c->params);
}

df_status df_component_load_frozen(const char *dir, df_component *c) {
    DF_TRY(df_component_load(dir, c));
    return df_params_freeze(c->params);
}

void df_component_free(df_component *c) {
    if (c->unet2d) df_unet2d_free(c->unet2d);
    if (c->unet2d_cond) df_unet2d_cond_free(c->unet2d_cond);
    if (c->vae) df_vae_free(c->vae);
    if (c->controlnet) df_controlnet_free(c->controlnet);
    if (c->clip_text) df_clip_text_free(c->clip_text);
    if (c->clip_vision) df_clip_vision_free(c->clip_vision);
    if (c->safety_checker) df_safety_checker_free(c->safety_checker);
    free(c->clip_text);
    free(c->clip_vision);
    free(c->safety_checker);
    free(c->unet2d);
    free(c->unet2d_cond);
    free(c->vae);
    free(c->controlnet);
    memset(c, 0, sizeof *c);
}

static df_tensor *find_input(const df_named *inputs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(inputs[i].name, name) == 0) return inputs[i].tensor;
    return NULL;
}

static df_status need(df_tensor *t, const char *cls, const char *name) {
    if (!t) return df_error(DF_ERR_NOTFOUND, "%s: input '%s' is missing", cls, name);
    return DF_OK;
}

static df_status check_timestep(const df_tensor *t, const df_tensor *x, const char *cls) {
    if (t->numel != 1 && !(t->ndim == 1 && t->shape[0] == x->shape[0]))
        return df_error(DF_ERR_INVALID,
                        "%s: input 'timestep' must be 0-d or have one entry per batch item (%lld)",
                        cls, (long long)x->shape[0]);
    return DF_OK;
}

/* The VAE's outputs: the posterior, its sample with the given noise, and the decodes. */
static df_status vae_forward(df_vae *m, df_tensor *x, df_tensor *noise, df_named *out, int *n) {
    df_tensor *mean, *logvar;
    df_vae_encode(m, x, &mean, &logvar);
    if (noise && !df_tensor_same_shape(noise, mean))
        return df_error(DF_ERR_INVALID, "AutoencoderKL: input 'noise' must match the latent shape");
    df_tensor *std = df_exp(df_mul_scalar(logvar, 0.5f));
    /* kl = 0.5 * sum_{C,H,W}(mean^2 + var - 1 - logvar) */
    df_tensor *terms =
        df_sub(df_add_scalar(df_add(df_mul(mean, mean), df_exp(logvar)), -1.0f), logvar);
    df_tensor *kl = df_mul_scalar(df_sum(terms, 3, (int[]){1, 2, 3}, false), 0.5f);
    out[(*n)++] = (df_named){"latent_mean", mean};
    out[(*n)++] = (df_named){"latent_logvar", logvar};
    out[(*n)++] = (df_named){"latent_std", std};
    out[(*n)++] = (df_named){"kl", kl};
    out[(*n)++] = (df_named){"sample", df_vae_decode(m, mean)};
    if (noise) {
        df_tensor *z = df_add(mean, df_mul(std, noise));
        out[(*n)++] = (df_named){"z", z};
        out[(*n)++] = (df_named){"decoded_z", df_vae_decode(m, z)};
    }
    return DF_OK;
}

/* CLIP's outputs; hidden_states.i names live in a static table. */
static df_status clip_forward(df_clip_text *m, df_tensor *ids, df_named *out, int *n) {
    static char names[DF_CLIP_MAX_LAYERS + 1][24];
    DF_TRY(need(ids, "CLIPTextModel", "input_ids"));
    if (ids->ndim != 2 || (ids->dtype != DF_DTYPE_I64 && ids->dtype != DF_DTYPE_I32))
        return df_error(DF_ERR_INVALID,
                        "CLIPTextModel: input 'input_ids' must be I64 or I32 (N, L)");
    if (ids->shape[0] < 1 || ids->shape[0] > DF_CLIP_MAX_BATCH)
        return df_error(DF_ERR_INVALID, "CLIPTextModel: batch of %lld (1 to %d)",
                        (long long)ids->shape[0], DF_CLIP_MAX_BATCH);
    if (ids->shape[1] < 1 || ids->shape[1] > m->config.max_position_embeddings)
        return df_error(DF_ERR_INVALID, "CLIPTextModel: %lld tokens (at most %d)",
                        (long long)ids->shape[1], m->config.max_position_embeddings);
    for (int64_t i = 0; i < ids->numel; i++) {
        double id = df_tensor_get(ids, i);
        if (id < 0 || id >= m->config.vocab_size)
            return df_error(DF_ERR_INVALID,
                            "CLIPTextModel: token id %.0f outside the vocabulary (%d)", id,
                            m->config.vocab_size);
    }
    df_tensor *hidden[DF_CLIP_MAX_LAYERS + 1], *pooled;
    df_tensor *last = df_clip_text_forward(m, ids, hidden, &pooled);
    if (m->config.with_projection) /* CLIPTextModelWithProjection's outputs have no pooler */
        out[(*n)++] = (df_named){"text_embeds", df_linear_mod_forward(&m->text_projection, pooled)};
    out[(*n)++] = (df_named){"last_hidden_state", last};
    if (!m->config.with_projection) out[(*n)++] = (df_named){"pooler_output", pooled};
    for (int i = 0; i <= m->config.num_hidden_layers; i++) {
        snprintf(names[i], sizeof names[i], "hidden_states.%d", i);
        out[(*n)++] = (df_named){names[i], hidden[i]};
    }
    return DF_OK;
}

/* CLIPVisionModel's outputs (with projection: image_embeds instead of pooler_output). */
static df_status clip_vision_forward(df_clip_vision *m, df_tensor *x, df_named *out, int *n) {
    static char names[DF_CLIP_MAX_LAYERS + 1][24];
    const char *cls =
        m->config.with_projection ? "CLIPVisionModelWithProjection" : "CLIPVisionModel";
    DF_TRY(need(x, cls, "pixel_values"));
    DF_TRY(df_clip_vision_check_pixels(&m->config, x, "input 'pixel_values'"));
    df_tensor *hidden[DF_CLIP_MAX_LAYERS + 1], *pooled;
    df_tensor *last = df_clip_vision_forward(m, x, hidden, &pooled);
    if (m->config.with_projection)
        out[(*n)++] =
            (df_named){"image_embeds", df_linear_mod_forward(&m->visual_projection, pooled)};
    out[(*n)++] = (df_named){"last_hidden_state", last};
    if (!m->config.with_projection) out[(*n)++] = (df_named){"pooler_output", pooled};
    for (int i = 0; i <= m->config.num_hidden_layers; i++) {
        snprintf(names[i], sizeof names[i], "hidden_states.%d", i);
        out[(*n)++] = (df_named){names[i], hidden[i]};
    }
    return DF_OK;
}

/* The safety checker's outputs: image_embeds, special_cos_dist, cos_dist, has_nsfw_concepts
 * (U8, one per image) and, given `images` (N, H, W, C) in [0, 1], images_out with the flagged
 * ones black. */
static df_status safety_forward(df_safety_checker *m, df_tensor *x, df_tensor *images,
                                df_named *out, int *n) {
    const char *cls = "StableDiffusionSafetyChecker";
    DF_TRY(need(x, cls, "clip_input"));
    DF_TRY(df_clip_vision_check_pixels(&m->vision.config, x, "input 'clip_input'"));
    int64_t b = x->shape[0];
    if (images && (images->ndim != 4 || images->shape[0] != b || images->dtype != DF_DTYPE_F32))
        return df_error(DF_ERR_INVALID, "%s: input 'images' must be F32 (%lld, H, W, C)", cls,
                        (long long)b);
    df_safety_result *res = calloc((size_t)b, sizeof *res);
    if (!res) return df_error(DF_ERR_NOMEM, "%s: out of memory", cls);
    df_tensor *emb, *cd, *sd;
    df_safety_checker_forward(m, x, &emb, &cd, &sd, res);
    df_tensor *flags = df_tensor_new(DF_DTYPE_U8, DF_DIMS(b));
    for (int64_t i = 0; i < b; i++) ((uint8_t *)flags->data)[i] = res[i].nsfw;
    out[(*n)++] = (df_named){"image_embeds", emb};
    out[(*n)++] = (df_named){"special_cos_dist", sd};
    out[(*n)++] = (df_named){"cos_dist", cd};
    out[(*n)++] = (df_named){"has_nsfw_concepts", flags};
    if (images) {
        df_tensor *im = df_tensor_clone(images);
        int64_t per = im->numel / b;
        for (int64_t i = 0; i < b; i++)
            if (res[i].nsfw) memset(df_f32(im) + i * per, 0, (size_t)per * sizeof(float));
        out[(*n)++] = (df_named){"images_out", im};
    }
    free(res);
    return DF_OK;
}

/* ControlNetModel's outputs; down_block_res_samples.i names live in a static table. */
static df_status controlnet_forward(df_controlnet *m, const df_named *inputs, int n_inputs,
                                    df_named *out, int *n) {
    static char names[DF_UNET_MAX_SKIPS][40];
    const char *cls = "ControlNetModel";
    df_tensor *x = find_input(inputs, n_inputs, "sample");
    df_tensor *t = find_input(inputs, n_inputs, "timestep");
    df_tensor *ctx = find_input(inputs, n_inputs, "encoder_hidden_states");
    df_tensor *cond = find_input(inputs, n_inputs, "controlnet_cond");
    df_tensor *scale = find_input(inputs, n_inputs, "conditioning_scale");
    df_tensor *guess = find_input(inputs, n_inputs, "guess_mode");
    DF_TRY(need(x, cls, "sample"));
    DF_TRY(need(t, cls, "timestep"));
    DF_TRY(need(ctx, cls, "encoder_hidden_states"));
    DF_TRY(need(cond, cls, "controlnet_cond"));
    DF_TRY(check_timestep(t, x, cls));
    DF_TRY(df_controlnet_check_inputs(&m->config, x, ctx, cond));
    if ((scale && scale->numel != 1) || (guess && guess->numel != 1))
        return df_error(DF_ERR_INVALID,
                        "%s: inputs 'conditioning_scale' and 'guess_mode' are "
                        "single values",
                        cls);
    df_tensor *down[DF_UNET_MAX_SKIPS], *mid;
    int n_down;
    df_controlnet_forward(m, x, t, ctx, cond, scale ? (float)df_tensor_get(scale, 0) : 1.0f,
                          guess && df_tensor_get(guess, 0) != 0, down, &n_down, &mid);
    if (n_down + 1 > DF_COMPONENT_MAX_OUTPUTS)
        return df_error(DF_ERR_UNSUPPORTED, "%s: %d outputs (at most %d)", cls, n_down + 1,
                        DF_COMPONENT_MAX_OUTPUTS);
    for (int i = 0; i < n_down; i++) {
        snprintf(names[i], sizeof names[i], "down_block_res_samples.%d", i);
        out[(*n)++] = (df_named){names[i], down[i]->block ? df_to_plain(down[i]) : down[i]};
    }
    out[(*n)++] = (df_named){"mid_block_res_sample", mid->block ? df_to_plain(mid) : mid};
    return DF_OK;
}

/* The encoder_hidden_states width: that of any block with cross-attention (the config reader
 * checked they agree); 0 when no block has any. */
static int cross_width(const df_unet2d_cond *m) {
    const df_unet2d_cond_config *c = &m->config;
    int n = c->n_blocks;
    if (m->body.has_mid) return c->cross_attention_dim[n - 1];
    for (int i = 0; i < n; i++) {
        if (m->body.down[i].attn == DF_BLOCK_ATTN_TRANSFORMER) return c->cross_attention_dim[i];
        if (m->body.up[i].attn == DF_BLOCK_ATTN_TRANSFORMER)
            return c->cross_attention_dim[n - 1 - i];
    }
    return 0;
}

df_status df_component_forward(df_component *c, const df_named *inputs, int n_inputs,
                               df_named *outputs, int *n_outputs) {
    *n_outputs = 0;
    const char *cls = c->class_name;
    if (c->clip_text)
        return clip_forward(c->clip_text, find_input(inputs, n_inputs, "input_ids"), outputs,
                            n_outputs);
    if (c->clip_vision)
        return clip_vision_forward(c->clip_vision, find_input(inputs, n_inputs, "pixel_values"),
                                   outputs, n_outputs);
    if (c->safety_checker)
        return safety_forward(c->safety_checker, find_input(inputs, n_inputs, "clip_input"),
                              find_input(inputs, n_inputs, "images"), outputs, n_outputs);
    if (c->controlnet)
        return controlnet_forward(c->controlnet, inputs, n_inputs, outputs, n_outputs);
    df_tensor *x = find_input(inputs, n_inputs, "sample");
    DF_TRY(need(x, cls, "sample"));
    if (c->vae) {
        DF_TRY(df_vae_check_sample(&c->vae->config, x));
        return vae_forward(c->vae, x, find_input(inputs, n_inputs, "noise"), outputs, n_outputs);
    }
    df_tensor *t = find_input(inputs, n_inputs, "timestep");
    DF_TRY(need(t, cls, "timestep"));
    DF_TRY(check_timestep(t, x, cls));
    if (c->unet2d) {
        DF_TRY(df_unet2d_check_sample(&c->unet2d->config, x));
        outputs[(*n_outputs)++] = (df_named){"sample", df_unet2d_forward(c->unet2d, x, t)};
        return DF_OK;
    }
    df_tensor *ctx = find_input(inputs, n_inputs, "encoder_hidden_states");
    DF_TRY(need(ctx, cls, "encoder_hidden_states"));
    DF_TRY(df_unet2d_cond_check_sample(&c->unet2d_cond->config, x));
    int cross = cross_width(c->unet2d_cond);
    if (ctx->dtype != DF_DTYPE_F32 || ctx->ndim != 3 || ctx->shape[0] != x->shape[0] ||
        (cross && ctx->shape[2] != cross))
        return df_error(DF_ERR_INVALID,
                        "%s: input 'encoder_hidden_states' must be F32 (N, S, %d) with N = %lld",
                        cls, cross, (long long)x->shape[0]);
    /* a ControlNet's residuals: down_block_additional_residuals.<i>, mid_block_additional_... */
    df_tensor *down[DF_UNET_MAX_SKIPS];
    int n_down = 0;
    for (; n_down < DF_UNET_MAX_SKIPS; n_down++) {
        char name[64];
        snprintf(name, sizeof name, "down_block_additional_residuals.%d", n_down);
        if (!(down[n_down] = find_input(inputs, n_inputs, name))) break;
    }
    df_tensor *mid = find_input(inputs, n_inputs, "mid_block_additional_residual");
    df_unet_residuals res = {down, n_down, mid};
    if (n_down > 0 && !mid)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: down_block_additional_residuals without "
                        "mid_block_additional_residual (a T2I-Adapter) are not supported",
                        cls);
    df_tensor *y;
    DF_TRY(df_unet2d_cond_forward_res(c->unet2d_cond, x, t, ctx, n_down || mid ? &res : NULL, &y));
    outputs[(*n_outputs)++] = (df_named){"sample", y};
    return DF_OK;
}

const char *df_component_main_output(const df_component *c) {
    if (c->clip_text)
        return c->clip_text->config.with_projection ? "text_embeds" : "last_hidden_state";
    if (c->clip_vision)
        return c->clip_vision->config.with_projection ? "image_embeds" : "last_hidden_state";
    if (c->safety_checker) return "image_embeds";
    if (c->controlnet) return "mid_block_res_sample";
    return "sample";
}
