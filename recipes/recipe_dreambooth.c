/* recipe_dreambooth.c — DreamBooth, as diffusers v0.21.4's examples/dreambooth/
 * train_dreambooth.py: a Stable Diffusion pipeline folder learns one subject from a few instance
 * images, all captioned with `instance_prompt` ("a photo of sks emoji"). Built on the
 * text_to_image recipe's parts (recipe_text_to_image.h: the same keys, models, latents,
 * tokenizing, validation grids and pipeline export), full fine-tune of the UNet and, with
 * train_text_encoder, of the text encoder.
 *
 * Prior preservation (with_prior_preservation): class images of `class_prompt` ("an emoji
 * face") in class_data_dir keep the model's idea of the class. Missing ones (fewer than
 * num_class_images) are generated first by our own pipeline on the base's live models
 * (validation_scheduler on the training betas, class_inference_steps, class_guidance), image k
 * with seed + k, each written atomically (a temporary file renamed) as class-<k>.png, so an
 * interrupted generation resumes where it stopped and the images already there are counted and
 * reused. Every image in the folder (ours or the user's) must be resolution x resolution. The
 * two folders are the recipe's two data sources (train/train.h df_recipe_source), each read by
 * its own loader; a micro-batch is the instance batch then the class batch, in one UNet call as
 * upstream's collate_fn, and the loss is upstream's
 *     mse(instance half) + prior_loss_weight * mse(class half)
 * through the shared diffusion loss's per-item weights: (n + m) / n for the n instance items,
 * prior_loss_weight * (n + m) / m for the m class items (the mean over the n + m items is then
 * exactly that sum). Without prior preservation the loss is text_to_image's. The step's random
 * draws, in order: the posterior noise of both halves' latents, the empty-prompt draws, then the
 * diffusion draw.
 *
 * upstream differences: the class folder is read whole (upstream takes the first
 * num_class_images it lists); class images are generated from seed + k (upstream: the
 * pipeline's default generator) and written as PNG. use_lora is refused until the LoRA adapters
 * exist (issue 18).
 */
#include "recipes/recipe_text_to_image.h"

#include "nn/tokenizer.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const df_cfg_field db_fields[] = {
    DF_T2I_FIELDS,
    {"instance_data_dir", DF_CFG_STRING, NULL, 0, 0, NULL,
     "folder of the subject's images (3 to 20 are usual)"},
    {"instance_prompt", DF_CFG_STRING, NULL, 0, 0, NULL,
     "the caption of every instance image, with the subject's rare token: \"a photo of sks "
     "dog\""},
    {"with_prior_preservation", DF_CFG_BOOL, "false", 0, 0, NULL,
     "train on generated class images too (the prior preservation loss)"},
    {"class_data_dir", DF_CFG_STRING, NULL, 0, 0, NULL,
     "folder of the class images (created; missing ones are generated into it)"},
    {"class_prompt", DF_CFG_STRING, NULL, 0, 0, NULL,
     "the caption of the class images and the prompt that generates them: \"a photo of dog\""},
    {"num_class_images", DF_CFG_INT, "100", 1, 1000000, NULL,
     "class images wanted in class_data_dir; missing ones are generated"},
    {"prior_loss_weight", DF_CFG_FLOAT, "1", 0, 1000, NULL, "weight of the class images' loss"},
    {"class_inference_steps", DF_CFG_INT, "50", 1, 10000, NULL,
     "denoising steps of each generated class image"},
    {"class_guidance", DF_CFG_FLOAT, "7.5", 0, 100, NULL,
     "classifier-free guidance of the generated class images"},
    {"use_lora", DF_CFG_BOOL, "false", 0, 0, NULL,
     "train LoRA adapters instead of the full model (needs the LoRA adapters, issue 18)"},
};

typedef struct dreambooth {
    t2i t; /* first: df_t2i_export / df_t2i_validate take the context as a t2i */
    char *instance_prompt, *class_prompt;
    bool prior;
    float prior_weight;
    df_recipe_source sources[2];
} dreambooth;

static void db_free(void *ctx) {
    dreambooth *d = ctx;
    df_t2i_release(&d->t);
    free(d->instance_prompt);
    free(d->class_prompt);
    free(d);
}

df_tensor *df_dreambooth_item_weights(int n, int m, float w) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, DF_DIMS(n + m));
    for (int i = 0; i < n + m; i++)
        df_f32(t)[i] = i < n ? (float)(n + m) / (float)n : w * (float)(n + m) / (float)m;
    return t;
}

static df_status db_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                         df_tensor **loss) {
    dreambooth *d = ctx;
    t2i *t = &d->t;
    const df_batch *inst = batches[0], *cls = d->prior ? batches[1] : NULL;
    int n = inst->n, m = cls ? cls->n : 0;
    if (!inst->pixels || (cls && !cls->pixels))
        return df_error(DF_ERR_INVALID, "dreambooth: a batch without pixels");
    /* one batch of both halves, instance first, as upstream's collate_fn */
    df_batch both = {.n = n + m, .pixels = inst->pixels};
    if (cls) {
        df_tensor *parts[2] = {inst->pixels, cls->pixels};
        both.pixels = df_concat(parts, 2, 0);
    }
    char **captions = calloc((size_t)(n + m), sizeof *captions);
    if (!captions) return df_error(DF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n + m; i++) captions[i] = i < n ? d->instance_prompt : d->class_prompt;
    df_tensor *latents, *ids;
    df_status st = df_t2i_latents(t, &both, rng, &latents);
    if (st == DF_OK) st = df_t2i_tokenize(t, captions, n + m, &rng->dropout, &ids);
    free(captions);
    DF_TRY(st);
    bool grad = df_grad_set_enabled(t->train_text && df_grad_enabled());
    df_tensor *hidden = df_clip_text_forward(t->text, ids, NULL, NULL);
    df_grad_set_enabled(grad);
    df_diffusion_draw draw;
    DF_TRY(df_diffusion_draw_sample(&t->loss, t->sched, latents, rng, &draw));
    DF_TRY(df_unet2d_cond_check_sample(&t->unet->config, draw.noisy));
    df_tensor *pred = df_unet2d_cond_forward(t->unet, draw.noisy, draw.timesteps, hidden);
    return df_diffusion_loss(&t->loss, t->sched, pred, &draw,
                             cls ? df_dreambooth_item_weights(n, m, d->prior_weight) : NULL, NULL,
                             loss);
}

static bool is_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot || name[0] == '.') return false;
    static const char *const exts[] = {".png", ".jpg", ".jpeg", ".webp",
                                       ".bmp", ".PNG", ".JPG",  ".JPEG"};
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
        if (strcmp(dot, exts[i]) == 0) return true;
    return false;
}

/* Counts the images of dir, each checked to be side x side (one-line error naming it). */
static df_status count_class_images(const char *dir, int side, int64_t *count) {
    *count = 0;
    DIR *dp = opendir(dir);
    if (!dp)
        return df_error(DF_ERR_IO, "%s: cannot open: %s (class_data_dir)", dir, strerror(errno));
    df_status st = DF_OK;
    struct dirent *e;
    while (st == DF_OK && (e = readdir(dp)) != NULL) {
        if (!is_image_name(e->d_name)) continue;
        char path[DF_PATH_MAX];
        st = df_pathf(path, sizeof path, "%s/%s", dir, e->d_name);
        df_tensor *img = NULL;
        if (st == DF_OK) st = df_image_read(path, NULL, &img);
        if (st == DF_OK && (img->shape[0] != side || img->shape[1] != side))
            st = df_error(DF_ERR_INVALID,
                          "%s: %lldx%lld, the class images must be %dx%d (the resolution; "
                          "class_data_dir)",
                          path, (long long)img->shape[1], (long long)img->shape[0], side, side);
        df_tensor_free(img);
        (*count)++;
    }
    closedir(dp);
    return st;
}

/* Generates class image k into path (written to a temporary file, then renamed). */
static df_status generate_class_image(dreambooth *d, df_sd_pipeline *p, const df_config *cfg,
                                      int64_t k, const char *path) {
    t2i *t = &d->t;
    double guidance = df_config_float(cfg, "class_guidance");
    df_scope s = df_scope_begin();
    df_tensor *cond, *uncond = NULL;
    df_status st = df_sd_encode_prompt(p, d->class_prompt, NULL, 0, guidance > 1, &cond, &uncond);
    df_sd_result res = {0};
    if (st == DF_OK) {
        df_sd_request q = {.cond = cond,
                           .uncond = uncond,
                           .steps = (int)df_config_int(cfg, "class_inference_steps"),
                           .guidance_scale = guidance,
                           .num_images = 1,
                           .height = t->resolution,
                           .width = t->resolution,
                           .seed = t->seed + (uint64_t)k,
                           .strength = -1};
        st = df_sd_generate(p, &q, &res);
    }
    char tmp[DF_PATH_MAX];
    if (st == DF_OK) st = df_pathf(tmp, sizeof tmp, "%s.tmp", path);
    if (st == DF_OK) st = df_png_write(tmp, df_unit_images_to_grid(res.image, 1), 0, NULL, NULL);
    if (st == DF_OK && rename(tmp, path) != 0)
        st = df_error(DF_ERR_IO, "%s: cannot rename into place: %s", path, strerror(errno));
    df_tensor_free(res.image);
    df_tensor_free(res.latents);
    free(res.safety);
    df_scope_end(s);
    return st;
}

/* class_data_dir holds num_class_images images: the missing ones generated (resumable). */
static df_status class_images(dreambooth *d, const df_config *cfg) {
    const char *dir = df_config_str(cfg, "class_data_dir");
    if (!*dir)
        return df_error(DF_ERR_INVALID,
                        "class_data_dir is not set: with_prior_preservation needs it (config)");
    if (!*d->class_prompt)
        return df_error(DF_ERR_INVALID,
                        "class_prompt is not set: with_prior_preservation needs it (config)");
    DF_TRY(df_mkdirs(dir));
    int64_t have, want = df_config_int(cfg, "num_class_images");
    DF_TRY(count_class_images(dir, d->t.resolution, &have));
    if (have >= want) return DF_OK;
    fprintf(stderr, "diffusion: dreambooth: generating %lld class images of \"%s\" into %s\n",
            (long long)(want - have), d->class_prompt, dir);
    df_sd_pipeline p;
    bool grad = df_grad_set_enabled(false);
    df_status st = df_t2i_live_pipeline(&d->t, d->t.val_sched, &p);
    for (int64_t k = 0; st == DF_OK && have < want; k++) {
        char path[DF_PATH_MAX];
        struct stat sb;
        st = df_pathf(path, sizeof path, "%s/class-%05lld.png", dir, (long long)k);
        if (st != DF_OK || stat(path, &sb) == 0) continue; /* there already: counted */
        st = generate_class_image(d, &p, cfg, k, path);
        have++;
    }
    df_t2i_pipeline_release(&p);
    df_grad_set_enabled(grad);
    return st;
}

/* The instance folder holds images (checked here, before any class image is generated). */
static df_status check_instances(const df_config *cfg) {
    const char *dir = df_config_str(cfg, "instance_data_dir");
    if (!*dir) return df_error(DF_ERR_INVALID, "instance_data_dir is not set (config)");
    df_dataset *ds;
    df_dataset_opts o = df_dataset_opts_default();
    o.skip_bad_images = df_config_bool(cfg, "skip_bad_images");
    DF_TRY(df_dataset_open(dir, &o, &ds));
    int64_t n = df_dataset_images(ds);
    df_dataset_free(ds);
    if (n == 0) return df_error(DF_ERR_INVALID, "%s: no instance images (instance_data_dir)", dir);
    return DF_OK;
}

static df_status db_setup(dreambooth *d, const df_config *cfg) {
    if (df_config_bool(cfg, "use_lora"))
        return df_error(DF_ERR_INVALID,
                        "use_lora needs the LoRA adapters, which this build does not have yet "
                        "(issue 18; config)");
    if (!*df_config_str(cfg, "pretrained_model_name_or_path"))
        return df_error(DF_ERR_INVALID,
                        "pretrained_model_name_or_path is not set: dreambooth fine-tunes a "
                        "pipeline folder (config)");
    if (df_config_bool(cfg, "cache_latents"))
        return df_error(DF_ERR_INVALID, "cache_latents: dreambooth encodes its images each step "
                                        "(config)");
    d->prior = df_config_bool(cfg, "with_prior_preservation");
    d->prior_weight = (float)df_config_float(cfg, "prior_loss_weight");
    d->instance_prompt = strdup(df_config_str(cfg, "instance_prompt"));
    d->class_prompt = strdup(df_config_str(cfg, "class_prompt"));
    if (!d->instance_prompt || !d->class_prompt) return df_error(DF_ERR_NOMEM, "out of memory");
    if (!*d->instance_prompt)
        return df_error(DF_ERR_INVALID, "instance_prompt is not set (config)");
    DF_TRY(check_instances(cfg));
    DF_TRY(df_t2i_build(&d->t, cfg));
    if (d->prior) DF_TRY(class_images(d, cfg));
    return df_t2i_join_text(&d->t);
}

static df_status db_create(const df_config *cfg, df_recipe *r) {
    dreambooth *d = calloc(1, sizeof *d);
    if (!d) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status st = db_setup(d, cfg);
    if (st != DF_OK) {
        db_free(d);
        return st;
    }
    df_t2i_recipe(&d->t, cfg, "dreambooth", r);
    d->sources[0] = (df_recipe_source){.name = "instance", .dir_key = "instance_data_dir"};
    d->sources[1] = (df_recipe_source){.name = "class", .dir_key = "class_data_dir"};
    r->sources = d->sources;
    r->n_sources = d->prior ? 2 : 1;
    r->loss = db_loss;
    r->free = db_free;
    return DF_OK;
}

const df_recipe_def df_recipe_dreambooth = {
    .name = "dreambooth",
    .fields = db_fields,
    .n_fields = (int)(sizeof db_fields / sizeof db_fields[0]),
    .create = db_create,
};
