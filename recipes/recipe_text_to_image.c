/* recipe_text_to_image.c — text-to-image training, as diffusers v0.21.4's
 * examples/text_to_image/train_text_to_image.py: a UNet2DConditionModel learns to denoise the
 * latents of a frozen AutoencoderKL (scaling_factor * a posterior sample), conditioned on a
 * CLIPTextModel's last_hidden_state of the captions (tokenized: bos, ids, eos, padded to the
 * tokenizer's 77, truncated). The loss is the shared diffusion loss (train/diffusion_loss.c)
 * with the script's v0.21.4 min-SNR form (min_snr_v_over_snr), noise offset and input
 * perturbation; `proportion_empty_prompts` replaces a caption by "" when a uniform draw of the
 * step's dropout stream falls below it (one draw per caption, always drawn).
 *
 * Models: from a Stable Diffusion pipeline folder (pretrained_model_name_or_path: unet/ trained,
 * vae/ and text_encoder/ mapped frozen, tokenizer/, the training scheduler DDPMScheduler read
 * from scheduler/), or from scratch (model.* and text_encoder.* keys, pretrained_vae required,
 * pretrained_text_encoder optional, tokenizer_name). `train_text_encoder: true` trains the text
 * encoder too: one registry joins both ("unet.*", "text_encoder.*", df_params_join) with a
 * parameter group each (text_encoder_lr). The random draws of a step, in order: the posterior
 * noise of the latents (noise stream), the empty-prompt draws (dropout stream), then
 * df_diffusion_draw_sample's noise and timesteps.
 *
 * With cache_latents the VAE posteriors come from train/latent_cache.c (OUTPUT/latent_cache):
 * the same posterior noise gives the same latents as encoding the batch.
 * Validation and export: recipes/t2i_output.c.
 */
#include "recipes/recipe_text_to_image.h"

#include "nn/single_file.h"
#include "nn/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const df_cfg_field t2i_fields[] = {DF_T2I_FIELDS, DF_CFG_CAPTION_FIELDS};

/* Philox stream id of this recipe's initialisation (keyed by the seed). */
enum { STREAM_INIT = 0x1417 };

/* The token ids (n, max_length) of captions, each "" when its draw from g falls below p. */
df_status df_t2i_tokenize(t2i *t, char *const *captions, int n, df_philox *g, df_tensor **out) {
    df_tensor *ids = df_tensor_new(DF_DTYPE_I64, DF_DIMS(n, t->max_length));
    for (int i = 0; i < n; i++) {
        bool empty = df_philox_uniform(g) < t->empty_prompts;
        DF_TRY(df_clip_tokenizer_call(t->tok, empty ? "" : captions[i], t->max_length,
                                      (int64_t *)ids->data + (int64_t)i * t->max_length, NULL));
    }
    *out = ids;
    return DF_OK;
}

df_status df_t2i_latents(t2i *t, const df_batch *b, df_step_rng *rng, df_tensor **out) {
    /* the latents: scaling_factor * a posterior sample of the frozen VAE, without a tape */
    bool grad = df_grad_set_enabled(false);
    df_tensor *mean = NULL, *logvar = NULL;
    df_status st = DF_OK;
    if (t->cache)
        st = df_latent_cache_batch(t->cache, b, &mean, &logvar);
    else if (!b->pixels)
        st = df_error(DF_ERR_INVALID, "text_to_image: a batch without pixels");
    else if ((st = df_vae_check_sample(&t->vae->config, b->pixels)) == DF_OK)
        df_vae_encode(t->vae, b->pixels, &mean, &logvar);
    df_tensor *latents = NULL;
    if (st == DF_OK)
        latents =
            df_mul_scalar(df_posterior_sample(mean, logvar, df_posterior_noise(mean, &rng->noise)),
                          t->vae->config.scaling_factor);
    df_grad_set_enabled(grad);
    DF_TRY(st);
    *out = latents;
    return DF_OK;
}

df_status df_t2i_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                      df_tensor **loss) {
    t2i *t = ctx;
    const df_batch *b = batches[0];
    df_tensor *latents, *ids;
    DF_TRY(df_t2i_latents(t, b, rng, &latents));
    DF_TRY(df_t2i_tokenize(t, b->captions, b->n, &rng->dropout, &ids));
    bool grad = df_grad_set_enabled(t->train_text && df_grad_enabled());
    df_tensor *hidden = df_clip_text_forward(t->text, ids, NULL, NULL);
    df_grad_set_enabled(grad);
    df_diffusion_draw d;
    DF_TRY(df_diffusion_draw_sample(&t->loss, t->sched, latents, rng, &d));
    DF_TRY(df_unet2d_cond_check_sample(&t->unet->config, d.noisy));
    df_tensor *pred = df_unet2d_cond_forward(t->unet, d.noisy, d.timesteps, hidden);
    return df_diffusion_loss(&t->loss, t->sched, pred, &d, NULL, NULL, loss);
}

void df_t2i_release(t2i *t) {
    if (t->has_joined) df_params_free(&t->joined);
    if (t->unet_comp.params)
        df_component_free(&t->unet_comp);
    else if (t->unet == &t->own_unet)
        df_unet2d_cond_free(&t->own_unet);
    if (t->text_comp.params)
        df_component_free(&t->text_comp);
    else if (t->text == &t->own_text)
        df_clip_text_free(&t->own_text);
    df_component_free(&t->vae_comp);
    df_latent_cache_free(t->cache);
    df_dataset_free(t->data);
    if (t->tok) df_clip_tokenizer_free(t->tok);
    df_sched_free(t->sched);
    df_sched_config_free(&t->sched_config);
    for (int i = 0; i < t->n_prompts; i++) free(t->prompts[i]);
    if (t->safety) df_safety_free(t->safety);
    free(t->safety);
}

static void t2i_free(void *ctx) {
    df_t2i_release(ctx);
    free(ctx);
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The UNet2DConditionModel of the model.* keys on latents of `side` with `channels`. */
static df_status unet_from_keys(const df_config *cfg, int side, int channels, int context,
                                df_unet2d_cond_config *mc) {
    *mc = df_unet2d_cond_config_default();
    int ch[DF_MAX_BLOCKS];
    int n;
    DF_TRY(df_recipe_model_blocks(cfg, ch, mc->down_block_types, mc->up_block_types, &n));
    mc->n_blocks = n;
    int cross = (int)df_config_int(cfg, "model.cross_attention_dim");
    for (int i = 0; i < DF_MAX_BLOCKS; i++) {
        mc->block_out_channels[i] = i < n ? ch[i] : 0;
        mc->layers_per_block[i] = (int)df_config_int(cfg, "model.layers_per_block");
        mc->num_attention_heads[i] = (int)df_config_int(cfg, "model.attention_head_dim");
        mc->cross_attention_dim[i] = cross ? cross : context;
    }
    if (cross && cross != context)
        return df_error(DF_ERR_INVALID,
                        "model.cross_attention_dim %d differs from the text encoder's width %d "
                        "(config)",
                        cross, context);
    mc->norm_num_groups = (int)df_config_int(cfg, "model.norm_num_groups");
    mc->use_linear_projection = df_config_bool(cfg, "model.use_linear_projection");
    mc->in_channels = mc->out_channels = channels;
    mc->sample_size = side;
    for (int i = 0; i < n; i++) {
        if (mc->block_out_channels[i] % mc->num_attention_heads[i] != 0)
            return df_error(DF_ERR_INVALID,
                            "model.attention_head_dim (%d heads) must divide every block width "
                            "(%d) (config)",
                            mc->num_attention_heads[i], mc->block_out_channels[i]);
    }
    return DF_OK;
}

/* The training DDPMScheduler: the base's scheduler/ read as DDPMScheduler, or the ddpm_* keys. */
static df_status training_scheduler(t2i *t, const df_config *cfg, const char *base) {
    const char *pred = df_config_str(cfg, "prediction_type");
    if (*base) {
        char path[DF_PATH_MAX];
        DF_TRY(df_pathf(path, sizeof path, "%s/scheduler/scheduler_config.json", base));
        DF_TRY(df_sched_config_load(path, "DDPMScheduler", &t->sched_config));
    } else {
        char json[512];
        snprintf(json, sizeof json,
                 "{\"num_train_timesteps\": %lld, \"beta_schedule\": \"%s\", "
                 "\"beta_start\": %.17g, \"beta_end\": %.17g}",
                 (long long)df_config_int(cfg, "ddpm_num_steps"),
                 df_config_str(cfg, "ddpm_beta_schedule"), df_config_float(cfg, "ddpm_beta_start"),
                 df_config_float(cfg, "ddpm_beta_end"));
        DF_TRY(
            df_sched_config_parse(json, strlen(json), "config", "DDPMScheduler", &t->sched_config));
    }
    if (*pred)
        t->sched_config.prediction_type =
            strcmp(pred, "v_prediction") == 0 ? DF_PRED_V_PREDICTION : DF_PRED_EPSILON;
    if (t->sched_config.prediction_type != DF_PRED_EPSILON &&
        t->sched_config.prediction_type != DF_PRED_V_PREDICTION)
        return df_error(DF_ERR_INVALID,
                        "text_to_image trains epsilon or v_prediction (the scheduler says "
                        "otherwise; set prediction_type)");
    return df_sched_new(&t->sched_config, &t->sched);
}

/* The text encoder: the base's text_encoder/, pretrained_text_encoder, or new from the keys. */
static df_status load_text_encoder(t2i *t, const df_config *cfg, const char *base) {
    char dir[DF_PATH_MAX];
    const char *pre = df_config_str(cfg, "pretrained_text_encoder");
    if (*pre || *base) {
        if (*pre)
            DF_TRY(df_pathf(dir, sizeof dir, "%s", pre));
        else
            DF_TRY(df_pathf(dir, sizeof dir, "%s/text_encoder", base));
        DF_TRY(t->train_text ? df_component_load(dir, &t->text_comp)
                             : df_component_map_frozen(dir, NULL, &t->text_comp));
        if (!t->text_comp.clip_text || t->text_comp.clip_text->config.with_projection)
            return df_error(DF_ERR_INVALID, "%s: is a %s, not a CLIPTextModel", dir,
                            t->text_comp.class_name);
        t->text = t->text_comp.clip_text;
        return DF_OK;
    }
    df_clip_text_config c = df_clip_text_config_default();
    c.vocab_size = df_clip_tokenizer_len(t->tok);
    c.hidden_size = (int)df_config_int(cfg, "text_encoder.hidden_size");
    c.intermediate_size = (int)df_config_int(cfg, "text_encoder.intermediate_size");
    c.num_hidden_layers = (int)df_config_int(cfg, "text_encoder.num_hidden_layers");
    c.num_attention_heads = (int)df_config_int(cfg, "text_encoder.num_attention_heads");
    c.max_position_embeddings = (int)df_config_int(cfg, "text_encoder.max_position_embeddings");
    snprintf(c.hidden_act, sizeof c.hidden_act, "%s",
             df_config_str(cfg, "text_encoder.hidden_act"));
    c.bos_token_id = df_clip_tokenizer_bos(t->tok);
    c.eos_token_id = df_clip_tokenizer_eos(t->tok);
    c.pad_token_id = df_clip_tokenizer_pad(t->tok);
    c.projection_dim = c.hidden_size;
    if (c.hidden_size % c.num_attention_heads != 0)
        return df_error(DF_ERR_INVALID,
                        "text_encoder.num_attention_heads (%d) must divide "
                        "text_encoder.hidden_size (%d) (config)",
                        c.num_attention_heads, c.hidden_size);
    DF_TRY(df_clip_text_init(&t->own_text, &c, (df_init){.gen = &t->init}));
    t->text = &t->own_text;
    if (!t->train_text) DF_TRY(df_params_freeze(&t->text->params));
    return DF_OK;
}

/* Counts the captions longer than the tokenizer's window, once, and warns with the count. */
static df_status warn_long_captions(t2i *t) {
    int64_t n = df_dataset_images(t->data), longer = 0;
    for (int64_t i = 0; i < n; i++) {
        char *cap = df_dataset_sample_caption(t->data, i);
        if (!cap) return df_error(DF_ERR_NOMEM, "out of memory");
        int32_t *ids = NULL;
        int k = 0;
        df_status st = df_clip_tokenizer_encode(t->tok, cap, &ids, &k);
        free(ids);
        if (st != DF_OK) {
            df_status err = df_error(st, "%s: caption of image %lld: %s",
                                     df_dataset_file(t->data, i), (long long)i, df_last_error());
            free(cap);
            return err;
        }
        free(cap);
        if (k > t->max_length - 2) longer++;
    }
    if (longer)
        fprintf(stderr,
                "diffusion: warning: %lld of %lld captions are longer than the tokenizer's %d "
                "tokens and are truncated\n",
                (long long)longer, (long long)n, t->max_length);
    return DF_OK;
}

/* The models of the config: tokenizer, frozen VAE, text encoder, UNet, training scheduler. */
static df_status build_models(t2i *t, const df_config *cfg) {
    const char *base = df_config_str(cfg, "pretrained_model_name_or_path");
    const char *vae_dir = df_config_str(cfg, "pretrained_vae");
    char dir[DF_PATH_MAX];
    if (*base && !is_dir(base))
        return df_error(DF_ERR_NOTFOUND, "%s: no such folder (pretrained_model_name_or_path)",
                        base);
    if (!*base && !*vae_dir)
        return df_error(DF_ERR_INVALID,
                        "pretrained_vae is not set: training from scratch needs a trained VAE "
                        "(config)");
    /* the tokenizer */
    const char *tok = df_config_str(cfg, "tokenizer_name");
    if (*tok)
        DF_TRY(df_pathf(t->tokenizer_dir, sizeof t->tokenizer_dir, "%s", tok));
    else if (*base)
        DF_TRY(df_pathf(t->tokenizer_dir, sizeof t->tokenizer_dir, "%s/tokenizer", base));
    else
        DF_TRY(df_sd_default_tokenizer_dir(t->tokenizer_dir, sizeof t->tokenizer_dir));
    DF_TRY(df_clip_tokenizer_load(t->tokenizer_dir, &t->tok));
    t->max_length = df_clip_tokenizer_max_length(t->tok);
    /* the frozen VAE */
    if (*vae_dir)
        DF_TRY(df_pathf(dir, sizeof dir, "%s", vae_dir));
    else
        DF_TRY(df_pathf(dir, sizeof dir, "%s/vae", base));
    DF_TRY(df_component_map_frozen(dir, NULL, &t->vae_comp));
    if (!t->vae_comp.vae)
        return df_error(DF_ERR_INVALID, "%s: is a %s, not an AutoencoderKL", dir,
                        t->vae_comp.class_name);
    t->vae = t->vae_comp.vae;
    if (t->vae->config.in_channels != 3)
        return df_error(DF_ERR_INVALID, "%s: the VAE takes %d channels, not RGB", dir,
                        t->vae->config.in_channels);
    int res = (int)df_config_int(cfg, "resolution"), down = 1 << (t->vae->config.n_blocks - 1);
    if (res % down != 0)
        return df_error(DF_ERR_INVALID,
                        "resolution %d is not divisible by %d, the VAE's downsampling (config)",
                        res, down);
    t->resolution = res;
    /* the text encoder, then the UNet */
    DF_TRY(load_text_encoder(t, cfg, base));
    if (t->text->config.max_position_embeddings < t->max_length)
        return df_error(DF_ERR_INVALID,
                        "the text encoder has %d positions, fewer than the tokenizer's %d",
                        t->text->config.max_position_embeddings, t->max_length);
    if (*base) {
        DF_TRY(df_pathf(dir, sizeof dir, "%s/unet", base));
        DF_TRY(t->frozen_unet ? df_component_map_frozen(dir, NULL, &t->unet_comp)
                              : df_component_load(dir, &t->unet_comp));
        if (!t->unet_comp.unet2d_cond)
            return df_error(DF_ERR_INVALID, "%s: is a %s, not a UNet2DConditionModel", dir,
                            t->unet_comp.class_name);
        t->unet = t->unet_comp.unet2d_cond;
        snprintf(t->base, sizeof t->base, "%s", base);
    } else {
        df_unet2d_cond_config mc;
        DF_TRY(unet_from_keys(cfg, res / down, t->vae->config.latent_channels,
                              t->text->config.hidden_size, &mc));
        DF_TRY(df_unet2d_cond_init(&t->own_unet, &mc, (df_init){.gen = &t->init}));
        t->unet = &t->own_unet;
    }
    if (t->unet->config.in_channels != t->vae->config.latent_channels)
        return df_error(DF_ERR_INVALID, "the UNet takes %d channels, the VAE's latents have %d",
                        t->unet->config.in_channels, t->vae->config.latent_channels);
    if (t->unet->config.cross_attention_dim[0] != t->text->config.hidden_size)
        return df_error(DF_ERR_INVALID,
                        "the UNet's cross_attention_dim %d differs from the text encoder's "
                        "width %d",
                        t->unet->config.cross_attention_dim[0], t->text->config.hidden_size);
    return training_scheduler(t, cfg, base);
}

/* The text_to_image data: train_data_dir's captions checked, latents cached. */
df_status df_t2i_open_data(t2i *t, const df_config *cfg) {
    int res = t->resolution;
    const char *data = df_config_str(cfg, "train_data_dir");
    if (!*data) return df_error(DF_ERR_INVALID, "train_data_dir is not set (config)");
    df_dataset_opts o = df_dataset_opts_default();
    o.skip_bad_images = df_config_bool(cfg, "skip_bad_images");
    o.caption_column = df_config_str(cfg, "caption_column");
    o.caption_template = df_config_str(cfg, "caption_template");
    const char *def = df_config_str(cfg, "default_caption");
    o.default_caption = *def ? def : NULL;
    o.require_captions = true;
    DF_TRY(df_dataset_open(data, &o, &t->data));
    if (df_dataset_images(t->data) == 0)
        return df_error(DF_ERR_INVALID, "%s: the dataset is empty (train_data_dir)", data);
    DF_TRY(warn_long_captions(t));
    if (df_config_bool(cfg, "cache_latents")) {
        char cache_dir[DF_PATH_MAX];
        DF_TRY(df_pathf(cache_dir, sizeof cache_dir, "%s/latent_cache",
                        df_config_str(cfg, "output_dir")));
        df_latent_cache_opts co = {.dir = cache_dir,
                                   .ds = t->data,
                                   .vae = t->vae,
                                   .transform = df_transform_default(res),
                                   .batch = (int)df_config_int(cfg, "train_batch_size")};
        co.transform.center_crop = df_config_bool(cfg, "center_crop");
        co.transform.random_flip = df_config_bool(cfg, "random_flip");
        DF_TRY(df_latent_cache_open(&co, &t->cache));
    }
    return DF_OK;
}

df_status df_t2i_join_text(t2i *t) {
    if (!t->train_text) return DF_OK;
    df_params_init(&t->joined, NULL);
    t->has_joined = true;
    DF_TRY(df_params_join(&t->joined, "unet", &t->unet->params));
    return df_params_join(&t->joined, "text_encoder", &t->text->params);
}

df_status df_t2i_build(t2i *t, const df_config *cfg) {
    t->seed = (uint64_t)df_config_int(cfg, "seed");
    df_philox_init(&t->init, t->seed, STREAM_INIT);
    t->train_text = df_config_bool(cfg, "train_text_encoder");
    t->empty_prompts = df_config_float(cfg, "proportion_empty_prompts");
    t->n_val_images = (int)df_config_int(cfg, "num_validation_images");
    t->val_steps = (int)df_config_int(cfg, "validation_inference_steps");
    t->guidance = df_config_float(cfg, "validation_guidance");
    snprintf(t->val_sched, sizeof t->val_sched, "%s", df_config_str(cfg, "validation_scheduler"));
    snprintf(t->export_sched, sizeof t->export_sched, "%s", df_config_str(cfg, "export_scheduler"));
    const char *prompts[T2I_MAX_PROMPTS];
    int np = df_config_str_list(cfg, "validation_prompts", prompts, T2I_MAX_PROMPTS);
    for (int i = 0; i < np && i < T2I_MAX_PROMPTS; i++) {
        if (!(t->prompts[i] = strdup(prompts[i]))) return df_error(DF_ERR_NOMEM, "out of memory");
        t->n_prompts++;
    }
    df_sched_kind kind;
    DF_TRY(df_sched_kind_parse(t->val_sched, "validation_scheduler", &kind));
    DF_TRY(df_sched_kind_parse(t->export_sched, "export_scheduler", &kind));
    DF_TRY(build_models(t, cfg));
    t->loss = (df_diffusion_loss_config){
        .prediction = t->sched_config.prediction_type,
        .num_train_timesteps = t->sched_config.num_train_timesteps,
        .snr_gamma = (float)df_config_float(cfg, "snr_gamma"),
        .noise_offset = (float)df_config_float(cfg, "noise_offset"),
        .input_perturbation = (float)df_config_float(cfg, "input_perturbation"),
        .min_snr_v_over_snr = true /* v0.21.4's train_text_to_image.py */};
    return DF_OK;
}

void df_t2i_recipe(t2i *t, const df_config *cfg, const char *name, df_recipe *r) {
    *r = (df_recipe){.name = name,
                     .ctx = t,
                     .params = t->has_joined ? &t->joined : &t->unet->params,
                     .base_path = t->base[0] ? t->base : NULL,
                     .unet_body = &t->unet->body,
                     .export_model = df_t2i_export,
                     .validate = t->n_prompts ? df_t2i_validate : NULL};
    if (t->has_joined) {
        t->groups[0] = (df_recipe_group){.name = "unet", .glob = "unet.*", .weight_decay = -1};
        t->groups[1] = (df_recipe_group){.name = "text_encoder",
                                         .glob = "text_encoder.*",
                                         .lr = df_config_float(cfg, "text_encoder_lr"),
                                         .weight_decay = -1};
        r->groups = t->groups;
        r->n_groups = 2;
    }
}

static df_status t2i_create(const df_config *cfg, df_recipe *r) {
    t2i *t = calloc(1, sizeof *t);
    if (!t) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status st = df_t2i_build(t, cfg);
    if (st == DF_OK) st = df_t2i_open_data(t, cfg);
    if (st == DF_OK) st = df_t2i_join_text(t);
    if (st != DF_OK) {
        t2i_free(t);
        return st;
    }
    df_t2i_recipe(t, cfg, "text_to_image", r);
    r->needs_captions = true;
    r->no_pixels = t->cache != NULL;
    r->loss = df_t2i_loss;
    r->free = t2i_free;
    return DF_OK;
}

const df_recipe_def df_recipe_text_to_image = {
    .name = "text_to_image",
    .fields = t2i_fields,
    .n_fields = (int)(sizeof t2i_fields / sizeof t2i_fields[0]),
    .create = t2i_create,
};
