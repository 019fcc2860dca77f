/* recipe_text_to_image.h — the text_to_image recipe's parts, shared by its files
 * (recipe_text_to_image.c: config, models, loss; t2i_output.c: validation grids, export) and by
 * the recipes built on them (recipe_lora.c: the same data, loss and grids on a frozen base). */
#ifndef DF_RECIPE_TEXT_TO_IMAGE_H
#define DF_RECIPE_TEXT_TO_IMAGE_H

#include "infer/infer.h"
#include "recipes/recipes.h"

#define T2I_MAX_PROMPTS DF_CFG_MAX_LIST

/* Config keys of the parts (a recipe built on them lists these in its fields). */
#define T2I_FIELDS_PARTS                                                                           \
    {"pretrained_vae",                                                                             \
     DF_CFG_STRING,                                                                                \
     NULL,                                                                                         \
     0,                                                                                            \
     0,                                                                                            \
     NULL,                                                                                         \
     "AutoencoderKL folder (e.g. the vae recipe's OUTPUT/vae); required from scratch, overrides "  \
     "the base's vae/"},                                                                           \
        {"pretrained_text_encoder",                                                                \
         DF_CFG_STRING,                                                                            \
         NULL,                                                                                     \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         "CLIPTextModel folder used from scratch instead of text_encoder.* (unset: a new one)"},   \
    {                                                                                              \
        "tokenizer_name", DF_CFG_STRING, NULL, 0, 0, NULL,                                         \
            "CLIP tokenizer folder (unset: the base's tokenizer/, else the shipped CLIP "          \
            "tokenizer)"                                                                           \
    }
#define T2I_FIELD_PREDICTION                                                                       \
    {                                                                                              \
        "prediction_type", DF_CFG_STRING, NULL, 0, 0, "epsilon|v_prediction",                      \
            "what the UNet predicts (unset: the base's scheduler, epsilon from scratch)"           \
    }
#define T2I_FIELDS_LOSS                                                                            \
    {                                                                                              \
        "snr_gamma",                                                                               \
        DF_CFG_FLOAT,                                                                              \
        "0",                                                                                       \
        0,                                                                                         \
        1e6,                                                                                       \
        NULL,                                                                                      \
        "min-SNR weighting gamma (0: off; 5 is usual)"},                                           \
        {"noise_offset", DF_CFG_FLOAT, "0", 0, 10, NULL, "offset noise scale (0: off)"},           \
        {"input_perturbation",                                                                     \
         DF_CFG_FLOAT,                                                                             \
         "0",                                                                                      \
         0,                                                                                        \
         10,                                                                                       \
         NULL,                                                                                     \
         "extra noise on the UNet input only (0: off; 0.1 is usual)"},                             \
        {"proportion_empty_prompts",                                                               \
         DF_CFG_FLOAT,                                                                             \
         "0",                                                                                      \
         0,                                                                                        \
         1,                                                                                        \
         NULL,                                                                                     \
         "share of captions replaced by \"\" (classifier-free guidance training)"},                \
    {                                                                                              \
        "cache_latents", DF_CFG_BOOL, "false", 0, 0, NULL,                                         \
            "encode each image once into OUTPUT/latent_cache (needs center_crop)"                  \
    }
#define T2I_FIELDS_VALIDATION                                                                      \
    {"validation_prompts",                                                                         \
     DF_CFG_STRING_LIST,                                                                           \
     NULL,                                                                                         \
     0,                                                                                            \
     0,                                                                                            \
     NULL,                                                                                         \
     "prompts of the validation grid, one row each (unset: no grid)",                              \
     true},                                                                                        \
        {"validation_scheduler",                                                                   \
         DF_CFG_STRING,                                                                            \
         "DPMSolverMultistepScheduler",                                                            \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         "scheduler class of the validation grid (training betas)",                                \
         true},                                                                                    \
        {"validation_inference_steps",                                                             \
         DF_CFG_INT,                                                                               \
         "20",                                                                                     \
         1,                                                                                        \
         10000,                                                                                    \
         NULL,                                                                                     \
         "denoising steps of the validation grid",                                                 \
         true},                                                                                    \
    {                                                                                              \
        "validation_guidance", DF_CFG_FLOAT, "7.5", 0, 100, NULL,                                  \
            "classifier-free guidance of the validation grid", true                                \
    }

typedef struct t2i {
    df_component unet_comp, vae_comp, text_comp; /* loaded from folders */
    df_unet2d_cond own_unet;                     /* built here */
    df_clip_text own_text;
    df_unet2d_cond *unet;
    df_vae *vae;
    df_clip_text *text;
    df_params joined; /* train_text_encoder: "unet.*" + "text_encoder.*" */
    bool has_joined;
    df_recipe_group groups[2];
    struct df_clip_tokenizer *tok;
    char tokenizer_dir[DF_PATH_MAX], base[DF_PATH_MAX];
    df_sched_config sched_config; /* the training DDPMScheduler */
    df_sched *sched;
    df_diffusion_loss_config loss;
    double empty_prompts;
    bool train_text;
    /* the UNet and text encoder stay frozen (mapped) whatever train_text says: the caller trains
     * adapters on them (base folder required) */
    bool frozen_base;
    int max_length;
    df_dataset *data; /* the latent cache's images, the caption check */
    df_latent_cache *cache;
    df_philox init;
    /* validation */
    char *prompts[T2I_MAX_PROMPTS];
    int n_prompts, val_steps, n_val_images, resolution;
    double guidance;
    char val_sched[DF_JSON_STR], export_sched[DF_JSON_STR];
    uint64_t seed;
    /* the base folder's safety checker, which the validation images go through (loaded at the
     * first validation when the base has safety_checker/) */
    struct df_safety *safety;
    bool safety_tried;
} t2i;

/* Reads the keys above, loads the models and opens the data (*out owned: df_t2i_free). With
 * frozen_base, pretrained_model_name_or_path is required and nothing of the models trains. */
df_status df_t2i_new(const df_config *cfg, bool frozen_base, t2i **out);
/* df_recipe.loss and .free of the text_to_image recipe (ctx a t2i). */
df_status df_t2i_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                      df_tensor **loss);
void df_t2i_free(void *ctx);

/* df_recipe.validate / export_model (t2i_output.c). */
df_status df_t2i_validate(void *ctx, int64_t step, df_tensor **grid);
df_status df_t2i_export(void *ctx, const char *dir);

#endif
