/* t2i_output.c — what the text_to_image recipe makes besides the loss: validation grids
 * (validation_prompts through df_sd_generate on the live models: a df_sd_pipeline filled in
 * memory with the recipe's UNet, VAE, text encoder and tokenizer, `validation_scheduler` on the
 * training betas; one grid row a prompt, num_validation_images each, seed = the config's; through
 * the base folder's safety checker when it has one) and
 * the export, a StableDiffusionPipeline folder diffusers v0.21.4 loads: model_index.json (no
 * safety checker), unet/, vae/, text_encoder/ (transformers CLIPTextModel), tokenizer/ (the 4
 * files copied) and scheduler/ (`export_scheduler` on the training betas; PNDM as SD 1.5 ships
 * it). */
#include "recipes/recipe_text_to_image.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A scheduler config of class `cls` on the training scheduler's betas (and prediction type);
 * PNDM as Stable Diffusion 1.5 ships it (skip_prk_steps, steps_offset 1, set_alpha_to_one off). */
static df_status derived_sched(const t2i *t, const char *cls, df_sched_config *out) {
    const df_sched_config *s = &t->sched_config;
    cJSON *o = cJSON_CreateObject();
    if (!o) return df_error(DF_ERR_NOMEM, "out of memory");
    static const char *const schedules[] = {"linear", "scaled_linear", "squaredcos_cap_v2",
                                            "sigmoid"};
    cJSON_AddNumberToObject(o, "num_train_timesteps", (double)s->num_train_timesteps);
    cJSON_AddNumberToObject(o, "beta_start", s->beta_start);
    cJSON_AddNumberToObject(o, "beta_end", s->beta_end);
    cJSON_AddStringToObject(o, "beta_schedule", schedules[s->beta_schedule]);
    if (s->trained_betas)
        cJSON_AddItemToObject(o, "trained_betas",
                              cJSON_CreateDoubleArray(s->trained_betas, (int)s->n_trained_betas));
    cJSON_AddStringToObject(o, "prediction_type",
                            s->prediction_type == DF_PRED_V_PREDICTION ? "v_prediction"
                                                                       : "epsilon");
    if (strcmp(cls, "PNDMScheduler") == 0) {
        cJSON_AddBoolToObject(o, "skip_prk_steps", true);
        cJSON_AddNumberToObject(o, "steps_offset", 1);
        cJSON_AddBoolToObject(o, "set_alpha_to_one", false);
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status st = df_sched_config_parse(text, strlen(text), "text_to_image", cls, out);
    free(text);
    return st;
}

/* Copies file `from` to `to`. */
static df_status copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return df_error(DF_ERR_IO, "%s: cannot open: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return df_error(DF_ERR_IO, "%s: cannot create: %s", to, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in);
    fclose(in);
    ok = (fclose(out) == 0) && ok;
    return ok ? DF_OK : df_error(DF_ERR_IO, "%s: copying %s failed", to, from);
}

static cJSON *class_pair(const char *lib, const char *cls) {
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, lib ? cJSON_CreateString(lib) : cJSON_CreateNull());
    cJSON_AddItemToArray(a, cls ? cJSON_CreateString(cls) : cJSON_CreateNull());
    return a;
}

/* A component folder dir/name with its config written by `save` and its weights. */
static df_status export_component(const char *dir, const char *name, const char *weights,
                                  const df_params *params, char *path, size_t len) {
    DF_TRY(df_pathf(path, len, "%s/%s", dir, name));
    DF_TRY(df_mkdirs(path));
    DF_TRY(df_pathf(path, len, "%s/%s/%s", dir, name, weights));
    DF_TRY(df_params_save(params, path));
    return df_pathf(path, len, "%s/%s/config.json", dir, name);
}

df_status df_t2i_export(void *ctx, const char *dir) {
    t2i *t = ctx;
    char path[DF_PATH_MAX];
    cJSON *m = cJSON_CreateObject();
    if (!m) return df_error(DF_ERR_NOMEM, "out of memory");
    cJSON_AddStringToObject(m, "_class_name", "StableDiffusionPipeline");
    cJSON_AddStringToObject(m, "_diffusers_version", "0.21.4");
    cJSON_AddItemToObject(m, "feature_extractor", class_pair(NULL, NULL));
    cJSON_AddBoolToObject(m, "requires_safety_checker", false);
    cJSON_AddItemToObject(m, "safety_checker", class_pair(NULL, NULL));
    cJSON_AddItemToObject(m, "scheduler", class_pair("diffusers", t->export_sched));
    cJSON_AddItemToObject(m, "text_encoder", class_pair("transformers", "CLIPTextModel"));
    cJSON_AddItemToObject(m, "tokenizer", class_pair("transformers", "CLIPTokenizer"));
    cJSON_AddItemToObject(m, "unet", class_pair("diffusers", "UNet2DConditionModel"));
    cJSON_AddItemToObject(m, "vae", class_pair("diffusers", "AutoencoderKL"));
    DF_TRY(df_pathf(path, sizeof path, "%s/model_index.json", dir));
    DF_TRY(df_json_write_object(m, path));

    DF_TRY(export_component(dir, "unet", "diffusion_pytorch_model.safetensors", &t->unet->params,
                            path, sizeof path));
    DF_TRY(df_unet2d_cond_config_save(&t->unet->config, path));
    DF_TRY(export_component(dir, "vae", "diffusion_pytorch_model.safetensors", &t->vae->params,
                            path, sizeof path));
    DF_TRY(df_vae_config_save(&t->vae->config, path));
    DF_TRY(export_component(dir, "text_encoder", "model.safetensors", &t->text->params, path,
                            sizeof path));
    df_clip_text_config tc = t->text->config;
    tc.with_projection = false;
    DF_TRY(df_clip_text_config_save(&tc, path));

    DF_TRY(df_pathf(path, sizeof path, "%s/tokenizer", dir));
    DF_TRY(df_mkdirs(path));
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char from[DF_PATH_MAX];
        DF_TRY(df_pathf(from, sizeof from, "%s/%s", t->tokenizer_dir, files[i]));
        DF_TRY(df_pathf(path, sizeof path, "%s/tokenizer/%s", dir, files[i]));
        DF_TRY(copy_file(from, path));
    }

    DF_TRY(df_pathf(path, sizeof path, "%s/scheduler", dir));
    DF_TRY(df_mkdirs(path));
    DF_TRY(df_pathf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir));
    df_sched_config sc;
    DF_TRY(derived_sched(t, t->export_sched, &sc));
    df_status st = df_sched_config_save(&sc, path);
    df_sched_config_free(&sc);
    return st;
}

df_status df_t2i_live_pipeline(t2i *t, const char *sched_class, df_sd_pipeline *p) {
    memset(p, 0, sizeof *p);
    snprintf(p->unet.class_name, sizeof p->unet.class_name, "UNet2DConditionModel");
    p->unet.unet2d_cond = t->unet;
    p->unet.params = &t->unet->params;
    snprintf(p->vae.class_name, sizeof p->vae.class_name, "AutoencoderKL");
    p->vae.vae = t->vae;
    p->vae.params = &t->vae->params;
    snprintf(p->text_encoder.class_name, sizeof p->text_encoder.class_name, "CLIPTextModel");
    p->text_encoder.clip_text = t->text;
    p->text_encoder.params = &t->text->params;
    p->tokenizer = t->tok;
    p->vae_scale_factor = 1 << (t->vae->config.n_blocks - 1);
    DF_TRY(derived_sched(t, sched_class, &p->sched_config));
    p->has_sched_config = true;
    return df_sched_new(&p->sched_config, &p->sched);
}

void df_t2i_pipeline_release(df_sd_pipeline *p) {
    df_sched_free(p->sched);
    df_sched_config_free(&p->sched_config);
}

/* Every prompt's images (num_validation_images each), one grid row a prompt. */
static df_status render_prompts(t2i *t, df_sd_pipeline *p, df_tensor **grid) {
    int per = t->n_val_images, r = t->resolution;
    df_tensor *all = df_tensor_new(DF_DTYPE_F32, DF_DIMS((int64_t)t->n_prompts * per, 3, r, r));
    for (int i = 0; i < t->n_prompts; i++) {
        bool guide = t->guidance > 1;
        df_tensor *cond, *uncond = NULL;
        DF_TRY(df_sd_encode_prompt(p, t->prompts[i], NULL, 0, guide, &cond, &uncond));
        df_sd_request q = {.cond = cond,
                           .uncond = uncond,
                           .steps = t->val_steps,
                           .guidance_scale = t->guidance,
                           .num_images = per,
                           .height = r,
                           .width = r,
                           .seed = t->seed,
                           .strength = -1};
        df_sd_result res;
        DF_TRY(df_sd_generate(p, &q, &res));
        memcpy(df_f32(all) + (int64_t)i * per * 3 * r * r, df_f32(res.image),
               sizeof(float) * (size_t)res.image->numel);
        df_tensor_free(res.image);
        df_tensor_free(res.latents);
        free(res.safety);
    }
    *grid = df_unit_images_to_grid(all, per);
    return DF_OK;
}

/* The base's safety checker (once): validation images go through it as a pipeline's would
 * (flagged ones black, with the warning naming them). A base without safety_checker/ has none. */
static df_status base_checker(t2i *t) {
    if (t->safety_tried) return DF_OK;
    t->safety_tried = true;
    char path[DF_PATH_MAX + 32];
    struct stat sb;
    snprintf(path, sizeof path, "%s/safety_checker", t->base);
    if (!t->base[0] || stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)) return DF_OK;
    if (!(t->safety = calloc(1, sizeof *t->safety)))
        return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    return df_safety_load(t->base, t->safety);
}

df_status df_t2i_validate(void *ctx, int64_t step, df_tensor **grid) {
    (void)step;
    t2i *t = ctx;
    df_sd_pipeline p;
    bool grad = df_grad_set_enabled(false);
    df_status st = df_t2i_live_pipeline(t, t->val_sched, &p);
    if (st == DF_OK) st = base_checker(t);
    p.safety = t->safety && t->safety->loaded ? t->safety : NULL;
    if (st == DF_OK) st = render_prompts(t, &p, grid);
    df_t2i_pipeline_release(&p);
    df_grad_set_enabled(grad);
    return st;
}
