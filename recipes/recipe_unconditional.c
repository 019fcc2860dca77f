/* recipe_unconditional.c — unconditional DDPM training, as diffusers'
 * examples/unconditional_image_generation/train_unconditional.py: the shared diffusion loss
 * (train/diffusion_loss.c: epsilon, v_prediction or sample targets, min-SNR, offset noise) of
 * a UNet2DModel on the images.
 * The model is a UNet2DModel built from the `model.*` keys with sample_size = resolution; the
 * export is a DDPMPipeline folder (model_index.json, unet/, scheduler/).
 */
#include "infer/infer.h"
#include "recipes/recipes.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const df_cfg_field uncond_fields[] = {
    {"model.block_out_channels", DF_CFG_INT_LIST, "[128, 128, 256, 256, 512, 512]", 1, 8192, NULL,
     "UNet2DModel block widths"},
    {"model.down_block_types", DF_CFG_STRING_LIST,
     "[DownBlock2D, DownBlock2D, DownBlock2D, DownBlock2D, AttnDownBlock2D, DownBlock2D]", 0, 0,
     NULL, "UNet2DModel down blocks (DownBlock2D, AttnDownBlock2D)"},
    {"model.up_block_types", DF_CFG_STRING_LIST,
     "[UpBlock2D, AttnUpBlock2D, UpBlock2D, UpBlock2D, UpBlock2D, UpBlock2D]", 0, 0, NULL,
     "UNet2DModel up blocks (UpBlock2D, AttnUpBlock2D)"},
    {"model.layers_per_block", DF_CFG_INT, "2", 1, 16, NULL, "resnets per down block"},
    {"model.attention_head_dim", DF_CFG_INT, "8", 0, 4096, NULL,
     "attention head width (0: one head)"},
    {"model.norm_num_groups", DF_CFG_INT, "32", 1, 1024, NULL, "GroupNorm groups"},
    {"prediction_type", DF_CFG_STRING, "epsilon", 0, 0, "epsilon|v_prediction|sample",
     "what the UNet predicts"},
    {"ddpm_num_steps", DF_CFG_INT, "1000", 1, 100000, NULL, "diffusion steps T"},
    {"ddpm_beta_schedule", DF_CFG_STRING, "linear", 0, 0,
     "linear|scaled_linear|squaredcos_cap_v2|sigmoid", "beta schedule"},
    {"ddpm_num_inference_steps", DF_CFG_INT, "1000", 1, 100000, NULL,
     "DDPM steps for validation grids", true},
    {"snr_gamma", DF_CFG_FLOAT, "0", 0, 1e6, NULL, "min-SNR weighting gamma (0: off; 5 is usual)"},
    {"noise_offset", DF_CFG_FLOAT, "0", 0, 10, NULL, "offset noise scale (0: off)"},
};

typedef struct uncond {
    df_unet2d unet;
    df_sched_config sched_config;
    df_sched *sched; /* training: add_noise, velocity, SNR */
    df_philox init;
    df_diffusion_loss_config loss;
    int64_t inference_steps, n_validation, seed;
} uncond;

static df_status uncond_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                             df_tensor **loss) {
    uncond *u = ctx;
    const df_batch *b = batches[0];
    df_diffusion_draw d;
    DF_TRY(df_diffusion_draw_sample(&u->loss, u->sched, b->pixels, rng, &d));
    DF_TRY(df_unet2d_check_sample(&u->unet.config, d.noisy));
    df_tensor *out = df_unet2d_forward(&u->unet, d.noisy, d.timesteps);
    return df_diffusion_loss(&u->loss, u->sched, out, &d, NULL, NULL, loss);
}

static df_status uncond_export(void *ctx, const char *dir) {
    uncond *u = ctx;
    char path[DF_PATH_MAX];
    cJSON *index = cJSON_CreateObject();
    cJSON_AddStringToObject(index, "_class_name", "DDPMPipeline");
    cJSON_AddStringToObject(index, "_diffusers_version", "0.21.4");
    const char *sched_pair[] = {"diffusers", "DDPMScheduler"},
               *unet_pair[] = {"diffusers", "UNet2DModel"};
    cJSON_AddItemToObject(index, "scheduler", cJSON_CreateStringArray(sched_pair, 2));
    cJSON_AddItemToObject(index, "unet", cJSON_CreateStringArray(unet_pair, 2));
    DF_TRY(df_pathf(path, sizeof path, "%s/model_index.json", dir));
    DF_TRY(df_json_write_object(index, path));
    DF_TRY(df_pathf(path, sizeof path, "%s/unet", dir));
    DF_TRY(df_mkdirs(path));
    DF_TRY(df_pathf(path, sizeof path, "%s/unet/config.json", dir));
    DF_TRY(df_unet2d_config_save(&u->unet.config, path));
    DF_TRY(df_pathf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir));
    DF_TRY(df_params_save(&u->unet.params, path));
    DF_TRY(df_pathf(path, sizeof path, "%s/scheduler", dir));
    DF_TRY(df_mkdirs(path));
    DF_TRY(df_pathf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir));
    return df_sched_config_save(&u->sched_config, path);
}

static df_status uncond_validate(void *ctx, int64_t step, df_tensor **grid) {
    (void)step;
    uncond *u = ctx;
    df_sched *s;
    DF_TRY(df_sched_new(&u->sched_config, &s));
    df_torchgen gen;
    df_torchgen_seed(&gen, (uint64_t)u->seed);
    const df_unet2d_config *c = &u->unet.config;
    df_tensor *noise = df_tensor_new(
        DF_DTYPE_F32, DF_DIMS(u->n_validation, c->in_channels, c->sample_size, c->sample_size));
    df_torchgen_randn(&gen, df_f32(noise), noise->numel);
    df_tensor *sample = NULL;
    df_status st = df_uncond_sample(df_unet2d_denoise, &u->unet, s, (int)u->inference_steps, noise,
                                    &gen, &sample);
    df_sched_free(s);
    if (st != DF_OK) return st;
    *grid = df_images_to_grid(sample, 0);
    df_tensor_free(sample);
    return DF_OK;
}

static void uncond_free(void *ctx) {
    uncond *u = ctx;
    df_unet2d_free(&u->unet);
    df_sched_free(u->sched);
    df_sched_config_free(&u->sched_config);
    free(u);
}

static df_status uncond_create(const df_config *cfg, df_recipe *r) {
    uncond *u = calloc(1, sizeof *u);
    if (!u) return df_error(DF_ERR_NOMEM, "out of memory");
    df_unet2d_config mc = df_unet2d_config_default();
    int n = 0;
    df_status st = df_recipe_model_blocks(cfg, mc.block_out_channels, mc.down_block_types,
                                          mc.up_block_types, &n);
    mc.n_blocks = n;
    mc.sample_size = (int)df_config_int(cfg, "resolution");
    mc.layers_per_block = (int)df_config_int(cfg, "model.layers_per_block");
    mc.attention_head_dim = (int)df_config_int(cfg, "model.attention_head_dim");
    mc.norm_num_groups = (int)df_config_int(cfg, "model.norm_num_groups");
    if (st == DF_OK && mc.sample_size % (1 << (n - 1)) != 0)
        st = df_error(DF_ERR_INVALID, "resolution %d is not divisible by 2^%d (config)",
                      mc.sample_size, n - 1);
    u->seed = df_config_int(cfg, "seed");
    df_philox_init(&u->init, (uint64_t)u->seed, 0x1417); /* the initialisation stream */
    if (st == DF_OK) st = df_unet2d_init(&u->unet, &mc, (df_init){.gen = &u->init});

    /* DDPMScheduler as train_unconditional builds it */
    char json[512];
    snprintf(json, sizeof json,
             "{\"_class_name\": \"DDPMScheduler\", \"num_train_timesteps\": %lld, "
             "\"beta_schedule\": \"%s\", \"prediction_type\": \"%s\"}",
             (long long)df_config_int(cfg, "ddpm_num_steps"),
             df_config_str(cfg, "ddpm_beta_schedule"), df_config_str(cfg, "prediction_type"));
    if (st == DF_OK)
        st = df_sched_config_parse(json, strlen(json), "recipe", NULL, &u->sched_config);
    if (st == DF_OK) st = df_sched_new(&u->sched_config, &u->sched);
    if (st != DF_OK) { /* uncond_free takes what was built, NULL and zeroed parts too */
        uncond_free(u);
        return st;
    }
    u->loss =
        (df_diffusion_loss_config){.prediction = u->sched_config.prediction_type,
                                   .num_train_timesteps = df_config_int(cfg, "ddpm_num_steps"),
                                   .snr_gamma = (float)df_config_float(cfg, "snr_gamma"),
                                   .noise_offset = (float)df_config_float(cfg, "noise_offset"),
                                   /* v_prediction min-SNR: min(snr, gamma) / (snr + 1) */
                                   .min_snr_v_over_snr = false};
    u->inference_steps = df_config_int(cfg, "ddpm_num_inference_steps");
    u->n_validation = df_config_int(cfg, "num_validation_images");
    *r = (df_recipe){.name = "unconditional",
                     .ctx = u,
                     .params = &u->unet.params,
                     .unet_body = &u->unet.body,
                     .loss = uncond_loss,
                     .export_model = uncond_export,
                     .validate = uncond_validate,
                     .free = uncond_free};
    return DF_OK;
}

const df_recipe_def df_recipe_unconditional = {
    .name = "unconditional",
    .fields = uncond_fields,
    .n_fields = (int)(sizeof uncond_fields / sizeof uncond_fields[0]),
    .create = uncond_create,
};
