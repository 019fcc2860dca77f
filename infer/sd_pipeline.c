/* sd_pipeline.c — a Stable Diffusion 1.x / 2.x pipeline folder in diffusers' layout, loaded from
 * its model_index.json: `unet/` (UNet2DConditionModel), `vae/` (AutoencoderKL), `text_encoder/`
 * (CLIPTextModel), `tokenizer/` (CLIPTokenizer files), `scheduler/` (any scheduler of infer/),
 * and, when model_index.json names one, `safety_checker/` + `feature_extractor/` (safety.c; a
 * missing one is an error unless the caller turns safety off). model_index.json's entries are
 * [library, class] pairs, [null, null] for an absent component (as diffusers writes them). The
 * models are frozen (no gradients) and memory-mapped (df_component_map_frozen: F32 weights are
 * the file's pages, not copies), with the weights variant asked for ("fp16": the
 * `*.fp16.safetensors` files, converted to F32 as they load).
 */
#include "infer/infer.h"
#include "nn/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The class model_index.json names for `key` into cls ("" when absent or [null, null]). */
static df_status index_class(const cJSON *index, const char *file, const char *key, char *cls,
                             size_t len) {
    cls[0] = 0;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(index, key);
    if (!e || cJSON_IsNull(e)) return DF_OK;
    if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 2)
        return df_error(DF_ERR_FORMAT, "%s: '%s' must be a [library, class] pair", file, key);
    const cJSON *c = cJSON_GetArrayItem(e, 1);
    if (cJSON_IsNull(c)) return DF_OK;
    if (!cJSON_IsString(c) || strlen(c->valuestring) >= len)
        return df_error(DF_ERR_FORMAT, "%s: '%s': the class must be a short string", file, key);
    snprintf(cls, len, "%s", c->valuestring);
    return DF_OK;
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Reads model_index.json: the classes of the parts the pipeline needs, checked. */
static df_status read_index(const char *dir, bool *names_checker) {
    char path[1100];
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    df_json j;
    DF_TRY(df_json_load(path, &j));
    const cJSON *root = j.root;
    df_status st = DF_OK;
    static const struct {
        const char *key, *classes;
    } need[] = {
        {"unet", "UNet2DConditionModel"},
        {"vae", "AutoencoderKL"},
        {"text_encoder", "CLIPTextModel CLIPTextModelWithProjection"},
        {"tokenizer", "CLIPTokenizer CLIPTokenizerFast"},
        {"scheduler", NULL},
    };
    for (size_t i = 0; st == DF_OK && i < sizeof need / sizeof need[0]; i++) {
        char cls[DF_JSON_STR];
        st = index_class(root, path, need[i].key, cls, sizeof cls);
        if (st != DF_OK) break;
        if (!cls[0]) {
            st = df_error(DF_ERR_NOTFOUND,
                          "%s: no '%s' component (a Stable Diffusion pipeline needs unet, vae, "
                          "text_encoder, tokenizer and scheduler)",
                          path, need[i].key);
            break;
        }
        if (need[i].classes && !strstr(need[i].classes, cls))
            st = df_error(DF_ERR_UNSUPPORTED, "%s: '%s' is a %s (supported: %s)", path, need[i].key,
                          cls, need[i].classes);
        char sub[1100];
        snprintf(sub, sizeof sub, "%s/%s", dir, need[i].key);
        if (st == DF_OK && !is_dir(sub))
            st = df_error(DF_ERR_NOTFOUND,
                          "%s: model_index.json names a %s but the folder is "
                          "missing",
                          sub, cls);
    }
    char cls[DF_JSON_STR];
    if (st == DF_OK) st = index_class(root, path, "safety_checker", cls, sizeof cls);
    *names_checker = st == DF_OK && cls[0];
    df_json_free(&j);
    return st;
}

df_status df_sd_pipeline_load(const char *dir, const df_sd_load_opts *opts, df_sd_pipeline *p) {
    memset(p, 0, sizeof *p);
    df_sd_load_opts o = opts ? *opts : (df_sd_load_opts){0};
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    bool names_checker = false;
    DF_TRY(read_index(dir, &names_checker));
    char path[1100];
    const struct {
        const char *sub, *what;
        df_component *c;
    } parts[] = {{"unet", "a UNet2DConditionModel", &p->unet},
                 {"vae", "an AutoencoderKL", &p->vae},
                 {"text_encoder", "a CLIP text model", &p->text_encoder}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, parts[i].sub);
        DF_TRY(df_component_map_frozen(path, o.variant, parts[i].c));
        const df_component *c = parts[i].c;
        bool right = i == 0   ? c->unet2d_cond != NULL
                     : i == 1 ? c->vae != NULL
                              : c->clip_text != NULL;
        if (!right)
            return df_error(DF_ERR_UNSUPPORTED, "%s: a %s, not %s", path, c->class_name,
                            parts[i].what);
    }
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    DF_TRY(df_clip_tokenizer_load(path, &p->tokenizer));
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    DF_TRY(df_sched_config_load(path, o.scheduler, &p->sched_config));
    p->has_sched_config = true;
    if (o.timestep_spacing) {
        if (strcmp(o.timestep_spacing, "leading") == 0)
            p->sched_config.timestep_spacing = DF_SPACING_LEADING;
        else if (strcmp(o.timestep_spacing, "trailing") == 0)
            p->sched_config.timestep_spacing = DF_SPACING_TRAILING;
        else if (strcmp(o.timestep_spacing, "linspace") == 0)
            p->sched_config.timestep_spacing = DF_SPACING_LINSPACE;
        else
            return df_error(DF_ERR_INVALID,
                            "timestep spacing '%s' (one of leading, trailing, linspace)",
                            o.timestep_spacing);
    }
    if (o.rescale_betas_zero_snr) {
        if (p->sched_config.kind != DF_SCHED_DDIM)
            return df_error(DF_ERR_UNSUPPORTED,
                            "rescale_betas_zero_snr: only DDIMScheduler has it in diffusers "
                            "v0.21.4 (the scheduler is %s)",
                            df_sched_kind_name(p->sched_config.kind));
        p->sched_config.rescale_betas_zero_snr = true;
    }
    if (o.use_karras_sigmas) {
        df_sched_kind k = p->sched_config.kind;
        if (k != DF_SCHED_EULER && k != DF_SCHED_HEUN && k != DF_SCHED_LMS &&
            k != DF_SCHED_DPMSOLVER_MULTISTEP && k != DF_SCHED_UNIPC_MULTISTEP)
            return df_error(DF_ERR_UNSUPPORTED, "Karras sigmas: %s has none",
                            df_sched_kind_name(k));
        p->sched_config.use_karras_sigmas = true;
    }
    DF_TRY(df_sched_new(&p->sched_config, &p->sched));
    const df_vae_config *vc = &p->vae.vae->config;
    p->vae_scale_factor = 1 << (vc->n_blocks - 1);
    if (names_checker && !o.safety_off) {
        if (!(p->safety = calloc(1, sizeof *p->safety)))
            return df_error(DF_ERR_NOMEM, "%s: out of memory", dir);
        DF_TRY(df_safety_load(dir, p->safety));
        p->has_safety_checker = true;
    }
    p->release_weights = true;
    return DF_OK;
}

void df_sd_pipeline_free(df_sd_pipeline *p) {
    df_component_free(&p->unet);
    df_component_free(&p->vae);
    df_component_free(&p->text_encoder);
    df_clip_tokenizer_free(p->tokenizer);
    if (p->safety) df_safety_free(p->safety);
    free(p->safety);
    df_sched_free(p->sched);
    if (p->has_sched_config) df_sched_config_free(&p->sched_config);
    df_tensor_free(p->added_embedding);
    memset(p, 0, sizeof *p);
}
