/* recipe_controlnet.c — ControlNet training, as diffusers v0.21.4's
 * examples/controlnet/train_controlnet.py: a Stable Diffusion pipeline folder's UNet, VAE and
 * text encoder frozen (the text_to_image recipe builds and loads them: its keys apply, its
 * from-scratch and text-encoder-training keys do not), a ControlNetModel trained — made from the
 * UNet (ControlNetModel.from_unet: conv_in, time embedding, down and mid blocks copied, the rest
 * new, the zero convolutions zero) or loaded from `controlnet_model_name_or_path`.
 *
 * One step, as the script's: latents = scaling_factor * a posterior sample of the frozen VAE;
 * hidden = the frozen text encoder on the captions (proportion_empty_prompts as text_to_image);
 * noise and timesteps drawn (train/diffusion_loss.c); residuals = controlnet(noisy, t, hidden,
 * conditioning image); pred = unet(noisy, t, hidden, residuals); loss = the shared diffusion
 * loss (plain MSE with the defaults). Gradients reach the ControlNet through the frozen UNet.
 *
 * The conditioning image of each sample (`conditioning`): "file", the `conditioning_image_column`
 * of metadata.jsonl (a path relative to the data folder, as upstream's conditioning_image
 * column; every image needs one and every file must exist, checked at the start); or a
 * generator of the image itself: "canny[:LOW:HIGH]" or "silhouette[:T]" (datasets/canny.c,
 * silhouette.c). It goes through the image's transform (resize of the shorter side, center
 * crop, the sample's flip) into [0, 1], as the script's conditioning_image_transforms; a random
 * crop is refused (the crop would differ).
 *
 * Validation: every validation prompt with its validation_image (paths, one per prompt, as the
 * script's --validation_image; with a generator, images the generator makes the control image
 * of) through df_sd_generate with the ControlNet: a grid row each, the control image first. Export: a ControlNetModel folder (config.json and
 * diffusion_pytorch_model.safetensors) in the output folder, as the script's save_pretrained.
 */
#include "nn/controlnet.h"
#include "nn/tokenizer.h"
#include "recipes/recipe_text_to_image.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const df_cfg_field cn_fields[] = {
    {"controlnet_model_name_or_path", DF_CFG_STRING, NULL, 0, 0, NULL,
     "ControlNetModel folder to continue training (unset: ControlNetModel.from_unet of the base)"},
    {"conditioning_embedding_out_channels", DF_CFG_INT_LIST, "[16, 32, 96, 256]", 1, 16384, NULL,
     "widths of a new ControlNet's conditioning embedding (n widths: images 2^(n-1) times the "
     "latents' side)"},
    {"conditioning", DF_CFG_STRING, "file", 0, 0, NULL,
     "conditioning images: file (the conditioning_image_column), canny[:LOW:HIGH] (100, 200) or "
     "silhouette[:T] (alpha >= T, 128) of each image"},
    {"conditioning_image_column", DF_CFG_STRING, "conditioning_image", 0, 0, NULL,
     "metadata.jsonl column with each image's conditioning image (conditioning: file)"},
    {"validation_image", DF_CFG_STRING_LIST, NULL, 0, 0, NULL,
     "control images of the validation grid, one per validation prompt (with a generator: the "
     "images it makes them of)",
     true},
};

typedef struct cn_recipe {
    df_recipe inner; /* text_to_image: the frozen models, tokenizer, scheduler, data */
    t2i *t;
    df_controlnet own, *cn;
    df_component cn_comp;
    df_conditioning cond;
    char **cond_files; /* per dataset image: the conditioning file (file) or the image */
    int64_t n_files;
    char *val_images[T2I_MAX_PROMPTS];
    int n_val_images;
} cn_recipe;

static void cn_free(void *ctx) {
    cn_recipe *c = ctx;
    if (c->cn_comp.params)
        df_component_free(&c->cn_comp);
    else if (c->cn == &c->own)
        df_controlnet_free(&c->own);
    for (int64_t i = 0; i < c->n_files; i++) free(c->cond_files[i]);
    free(c->cond_files);
    for (int i = 0; i < c->n_val_images; i++) free(c->val_images[i]);
    if (c->inner.free) c->inner.free(c->inner.ctx);
    free(c);
}

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The conditioning file of every dataset image: the metadata.jsonl column (checked: every image
 * has one, every file exists), or the image itself for a generator. */
static df_status conditioning_files(cn_recipe *c, const char *data, const char *column) {
    df_dataset *ds = c->t->data;
    int64_t n = df_dataset_images(ds);
    if (!(c->cond_files = calloc((size_t)n, sizeof *c->cond_files)))
        return df_error(DF_ERR_NOMEM, "out of memory");
    c->n_files = n;
    if (c->cond.kind != DF_COND_FILE) {
        for (int64_t i = 0; i < n; i++)
            if (!(c->cond_files[i] = join(data, df_dataset_file(ds, i))))
                return df_error(DF_ERR_NOMEM, "out of memory");
        return DF_OK;
    }
    char *meta = join(data, "metadata.jsonl");
    if (!meta) return df_error(DF_ERR_NOMEM, "out of memory");
    FILE *f = fopen(meta, "r");
    if (!f) {
        df_status st = df_error(DF_ERR_NOTFOUND,
                                "%s: no metadata.jsonl: conditioning file needs its '%s' column",
                                meta, column);
        free(meta);
        return st;
    }
    static char line[1 << 16];
    int64_t ln = 0;
    df_status st = DF_OK;
    while (st == DF_OK && fgets(line, sizeof line, f)) {
        ln++;
        cJSON *j = cJSON_Parse(line);
        if (!j) continue; /* the dataset reader has judged the lines already */
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(j, "file_name");
        const cJSON *cv = cJSON_GetObjectItemCaseSensitive(j, column);
        for (int64_t i = 0; cJSON_IsString(fn) && i < n; i++) {
            if (strcmp(df_dataset_file(ds, i), fn->valuestring) != 0) continue;
            if (!cJSON_IsString(cv) || !cv->valuestring[0] || strstr(cv->valuestring, "..")) {
                st = df_error(DF_ERR_FORMAT, "%s:%lld: '%s' has no '%s' (a relative path, no '..')",
                              meta, (long long)ln, fn->valuestring, column);
                break;
            }
            free(c->cond_files[i]);
            if (!(c->cond_files[i] = join(data, cv->valuestring))) st = DF_ERR_NOMEM;
            break;
        }
        cJSON_Delete(j);
    }
    fclose(f);
    for (int64_t i = 0; st == DF_OK && i < n; i++) {
        if (!c->cond_files[i])
            st = df_error(DF_ERR_FORMAT, "%s: image '%s' has no '%s'", meta, df_dataset_file(ds, i),
                          column);
        else if (!is_file(c->cond_files[i]))
            st = df_error(DF_ERR_NOTFOUND, "%s: conditioning image of '%s' not found ('%s')",
                          c->cond_files[i], df_dataset_file(ds, i), column);
    }
    free(meta);
    return st;
}

/* Sample index -> its conditioning image through the image's transform (no randomness: center
 * crop; the batch's flip), into dst (3 R R floats) in [0, 1]. */
static df_status conditioning_sample(cn_recipe *c, int64_t index, bool flipped, float *dst) {
    int64_t i = index % c->n_files;
    df_tensor *img;
    DF_TRY(df_conditioning_make(&c->cond, c->cond_files[i], &img));
    int r = c->t->resolution;
    df_transform tr = df_transform_default(r);
    tr.center_crop = true;
    tr.random_flip = false;
    df_transform_apply(&tr, img, NULL, dst);
    df_tensor_free(img);
    size_t plane = (size_t)r * r;
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < r; y++) {
            float *row = dst + ch * plane + (size_t)y * r;
            if (flipped)
                for (int x = 0; x < r / 2; x++) {
                    float tmp = row[x];
                    row[x] = row[r - 1 - x];
                    row[r - 1 - x] = tmp;
                }
            for (int x = 0; x < r; x++) row[x] = (row[x] + 1.0f) * 0.5f; /* [-1, 1] -> [0, 1] */
        }
    return DF_OK;
}

static df_status cn_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                         df_tensor **loss) {
    cn_recipe *c = ctx;
    t2i *t = c->t;
    const df_batch *b = batches[0];
    if (!b->pixels) return df_error(DF_ERR_INVALID, "controlnet: a batch without pixels");
    bool grad = df_grad_set_enabled(false);
    df_status st = df_vae_check_sample(&t->vae->config, b->pixels);
    df_tensor *latents = NULL, *hidden = NULL, *ids = NULL;
    if (st == DF_OK) {
        df_tensor *mean, *logvar;
        df_vae_encode(t->vae, b->pixels, &mean, &logvar);
        latents =
            df_mul_scalar(df_posterior_sample(mean, logvar, df_posterior_noise(mean, &rng->noise)),
                          t->vae->config.scaling_factor);
        ids = df_tensor_new(DF_DTYPE_I64, DF_DIMS(b->n, t->max_length));
        for (int i = 0; st == DF_OK && i < b->n; i++) {
            bool empty = df_philox_uniform(&rng->dropout) < t->empty_prompts;
            st = df_clip_tokenizer_call(t->tok, empty ? "" : b->captions[i], t->max_length,
                                        (int64_t *)ids->data + (int64_t)i * t->max_length, NULL);
        }
    }
    if (st == DF_OK) hidden = df_clip_text_forward(t->text, ids, NULL, NULL);
    int r = t->resolution;
    df_tensor *cond = df_tensor_new(DF_DTYPE_F32, DF_DIMS(b->n, 3, r, r));
    for (int i = 0; st == DF_OK && i < b->n; i++)
        st = conditioning_sample(c, b->indices[i], b->flipped && b->flipped[i],
                                 df_f32(cond) + (int64_t)i * 3 * r * r);
    df_grad_set_enabled(grad);
    DF_TRY(st);
    df_diffusion_draw d;
    DF_TRY(df_diffusion_draw_sample(&t->loss, t->sched, latents, rng, &d));
    DF_TRY(df_controlnet_check_inputs(&c->cn->config, d.noisy, hidden, cond));
    df_tensor *down[DF_UNET_MAX_SKIPS], *mid, *pred;
    int n_down;
    df_controlnet_forward(c->cn, d.noisy, d.timesteps, hidden, cond, 1.0f, false, down, &n_down,
                          &mid);
    df_unet_residuals res = {down, n_down, mid};
    DF_TRY(df_unet2d_cond_forward_res(t->unet, d.noisy, d.timesteps, hidden, &res, &pred));
    return df_diffusion_loss(&t->loss, t->sched, pred, &d, NULL, NULL, loss);
}

static df_status cn_export(void *ctx, const char *dir) {
    cn_recipe *c = ctx;
    char path[DF_PATH_MAX];
    DF_TRY(df_pathf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir));
    DF_TRY(df_params_save(&c->cn->params, path));
    DF_TRY(df_pathf(path, sizeof path, "%s/config.json", dir));
    return df_controlnet_config_save(&c->cn->config, path);
}

/* One grid row per validation prompt: its control image, then num_validation_images
 * generations with the ControlNet. */
static df_status cn_validate(void *ctx, int64_t step, df_tensor **grid) {
    (void)step;
    cn_recipe *c = ctx;
    t2i *t = c->t;
    int per = t->n_val_images, r = t->resolution, cols = per + 1;
    df_sd_pipeline p;
    bool grad = df_grad_set_enabled(false);
    df_status st = df_t2i_live_pipeline(t, t->val_sched, &p);
    if (st == DF_OK) st = df_t2i_base_checker(t);
    p.safety = t->safety && t->safety->loaded ? t->safety : NULL;
    df_tensor *all = df_tensor_new(DF_DTYPE_F32, DF_DIMS((int64_t)t->n_prompts * cols, 3, r, r));
    int64_t img = 3 * (int64_t)r * r;
    for (int i = 0; st == DF_OK && i < t->n_prompts; i++) {
        df_scope scope = df_scope_begin(); /* the control image, the embeddings */
        df_tensor *control = NULL;
        df_decode_opts o = df_decode_opts_default();
        o.drop_alpha = true;
        if (c->cond.kind == DF_COND_FILE) {
            st = df_image_read(c->val_images[i], &o, &control);
        } else if ((st = df_conditioning_make(&c->cond, c->val_images[i], &control)) == DF_OK) {
            df_tensor_adopt(control); /* owned: the scope's from here */
        }
        if (st != DF_OK) {
            df_scope_end(scope);
            break;
        }
        df_sd_control sc = {.net = c->cn, .image = control, .scale = 1, .start = 0, .end = 1};
        df_tensor *shown = df_sd_control_images(&sc, r, r, 1, false);
        memcpy(df_f32(all) + (int64_t)i * cols * img, df_f32(shown), sizeof(float) * (size_t)img);
        df_tensor_free(shown);
        bool guide = t->guidance > 1;
        df_tensor *cond, *uncond = NULL;
        st = df_sd_encode_prompt(&p, t->prompts[i], NULL, 0, guide, &cond, &uncond);
        df_sd_request q = {.cond = cond,
                           .uncond = uncond,
                           .steps = t->val_steps,
                           .guidance_scale = t->guidance,
                           .num_images = per,
                           .height = r,
                           .width = r,
                           .seed = t->seed,
                           .strength = -1,
                           .controls = &sc,
                           .n_controls = 1};
        df_sd_result res = {0};
        if (st == DF_OK) st = df_sd_generate(&p, &q, &res);
        if (st == DF_OK)
            memcpy(df_f32(all) + ((int64_t)i * cols + 1) * img, df_f32(res.image),
                   sizeof(float) * (size_t)res.image->numel);
        df_tensor_free(res.image);
        df_tensor_free(res.latents);
        free(res.safety);
        df_scope_end(scope);
    }
    if (st == DF_OK) *grid = df_unit_images_to_grid(all, cols);
    df_t2i_pipeline_release(&p);
    df_grad_set_enabled(grad);
    return st;
}

static df_status cn_setup(cn_recipe *c, const df_config *cfg) {
    if (!*df_config_str(cfg, "pretrained_model_name_or_path"))
        return df_error(DF_ERR_INVALID, "controlnet needs pretrained_model_name_or_path (a "
                                        "Stable Diffusion pipeline folder) (config)");
    if (df_config_bool(cfg, "train_text_encoder") || df_config_bool(cfg, "cache_latents"))
        return df_error(DF_ERR_INVALID, "controlnet: train_text_encoder and cache_latents must be "
                                        "false (the text encoder is frozen; the conditioning "
                                        "images need the pixels' transform) (config)");
    if (!df_config_bool(cfg, "center_crop"))
        return df_error(DF_ERR_INVALID, "controlnet needs center_crop: true (a random crop would "
                                        "cut the conditioning image elsewhere) (config)");
    DF_TRY(df_conditioning_parse(df_config_str(cfg, "conditioning"), &c->cond));
    DF_TRY(df_recipe_text_to_image.create(cfg, &c->inner));
    c->t = c->inner.ctx;
    t2i *t = c->t;
    DF_TRY(df_params_freeze(&t->unet->params));
    const char *from = df_config_str(cfg, "controlnet_model_name_or_path");
    if (*from) {
        DF_TRY(df_component_load(from, &c->cn_comp));
        if (!c->cn_comp.controlnet)
            return df_error(DF_ERR_INVALID,
                            "%s: a %s, not a ControlNetModel "
                            "(controlnet_model_name_or_path)",
                            from, c->cn_comp.class_name);
        c->cn = c->cn_comp.controlnet;
        DF_TRY(df_controlnet_check_unet(&c->cn->config, &t->unet->config));
    } else {
        int w[DF_MAX_BLOCKS];
        int64_t wl[DF_CFG_MAX_LIST];
        int n = df_config_list(cfg, "conditioning_embedding_out_channels", wl, DF_CFG_MAX_LIST);
        if (n < 1 || n > DF_MAX_BLOCKS)
            return df_error(DF_ERR_INVALID,
                            "conditioning_embedding_out_channels: %d widths (1 to %d) (config)", n,
                            DF_MAX_BLOCKS);
        for (int i = 0; i < n; i++) w[i] = (int)wl[i];
        DF_TRY(df_controlnet_from_unet(&c->own, t->unet, w, n, &t->init));
        c->cn = &c->own;
    }
    /* the conditioning image must reach the latents' side */
    int64_t side = t->resolution;
    for (int i = 0; i + 1 < c->cn->config.n_cond_blocks; i++) side = (side - 1) / 2 + 1;
    int down = 1 << (t->vae->config.n_blocks - 1);
    if (side != t->resolution / down)
        return df_error(DF_ERR_INVALID,
                        "the ControlNet's %d conditioning widths bring %d pixels to %lld, the "
                        "latents are %d (conditioning_embedding_out_channels: %d widths for this "
                        "VAE) (config)",
                        c->cn->config.n_cond_blocks, t->resolution, (long long)side,
                        t->resolution / down, __builtin_ctz((unsigned)down) + 1);
    DF_TRY(conditioning_files(c, df_config_str(cfg, "train_data_dir"),
                              df_config_str(cfg, "conditioning_image_column")));
    const char *vals[T2I_MAX_PROMPTS];
    int nv = df_config_str_list(cfg, "validation_image", vals, T2I_MAX_PROMPTS);
    if (t->n_prompts && nv != t->n_prompts)
        return df_error(DF_ERR_INVALID,
                        "validation_image: %d images for %d validation_prompts (one each) "
                        "(config)",
                        nv, t->n_prompts);
    for (int i = 0; i < nv && t->n_prompts; i++) {
        if (!is_file(vals[i]))
            return df_error(DF_ERR_NOTFOUND, "%s: no such file (validation_image)", vals[i]);
        if (!(c->val_images[i] = strdup(vals[i]))) return df_error(DF_ERR_NOMEM, "out of memory");
        c->n_val_images++;
    }
    return DF_OK;
}

static df_status cn_create(const df_config *cfg, df_recipe *r) {
    cn_recipe *c = calloc(1, sizeof *c);
    if (!c) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status st = cn_setup(c, cfg);
    if (st != DF_OK) {
        cn_free(c);
        return st;
    }
    *r = (df_recipe){.name = "controlnet",
                     .ctx = c,
                     .params = &c->cn->params,
                     .base_path = c->t->base,
                     .unet_body = &c->cn->body,
                     .needs_captions = true,
                     .loss = cn_loss,
                     .export_model = cn_export,
                     .validate = c->t->n_prompts ? cn_validate : NULL,
                     .free = cn_free};
    return DF_OK;
}

const df_recipe_def df_recipe_controlnet = {
    .name = "controlnet",
    .fields = cn_fields,
    .n_fields = (int)(sizeof cn_fields / sizeof cn_fields[0]),
    .extends = &df_recipe_text_to_image,
    .create = cn_create,
};
