/* recipe_text_to_image.h — the text_to_image recipe's state, shared by its files:
 * recipe_text_to_image.c (config, models, loss) and t2i_output.c (validation grids, export), and
 * by the recipes built on its parts (recipe_dreambooth.c, recipe_textual_inversion.c): the same
 * keys (DF_T2I_FIELDS), models, latents, tokenizing, validation and export. */
#ifndef DF_RECIPE_TEXT_TO_IMAGE_H
#define DF_RECIPE_TEXT_TO_IMAGE_H

#include "infer/infer.h"
#include "recipes/recipes.h"

#define T2I_MAX_PROMPTS DF_CFG_MAX_LIST

/* Every key of text_to_image but the caption keys, in its schema order: the schema of a recipe
 * built on it starts with these (dreambooth, textual_inversion). */
// clang-format off
#define DF_T2I_FIELDS \
    {"pretrained_model_name_or_path", DF_CFG_STRING, NULL, 0, 0, NULL, \
     "fine-tune this Stable Diffusion pipeline folder; unset: build from model.* / " \
     "text_encoder.*"}, \
    {"pretrained_vae", DF_CFG_STRING, NULL, 0, 0, NULL, \
     "AutoencoderKL folder (e.g. the vae recipe's OUTPUT/vae); required from scratch, overrides " \
     "the base's vae/"}, \
    {"pretrained_text_encoder", DF_CFG_STRING, NULL, 0, 0, NULL, \
     "CLIPTextModel folder used from scratch instead of text_encoder.* (unset: a new one)"}, \
    {"tokenizer_name", DF_CFG_STRING, NULL, 0, 0, NULL, \
     "CLIP tokenizer folder (unset: the base's tokenizer/, else the shipped CLIP tokenizer)"}, \
    {"train_text_encoder", DF_CFG_BOOL, "false", 0, 0, NULL, \
     "train the text encoder with the UNet (else it is frozen)"}, \
    {"text_encoder_lr", DF_CFG_FLOAT, "0", 0, 10, NULL, \
     "the text encoder's learning rate (0: learning_rate)"}, \
    {"model.block_out_channels", DF_CFG_INT_LIST, "[320, 640, 1280, 1280]", 1, 8192, NULL, \
     "UNet2DConditionModel block widths (from scratch)"}, \
    {"model.down_block_types", DF_CFG_STRING_LIST, \
     "[CrossAttnDownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D, DownBlock2D]", 0, 0, \
     NULL, \
     "UNet down blocks (CrossAttnDownBlock2D, DownBlock2D)"}, \
    {"model.up_block_types", DF_CFG_STRING_LIST, \
     "[UpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D]", 0, 0, NULL, \
     "UNet up blocks (UpBlock2D, CrossAttnUpBlock2D)"}, \
    {"model.layers_per_block", DF_CFG_INT, "2", 1, 16, NULL, "resnets per down block"}, \
    {"model.attention_head_dim", DF_CFG_INT, "8", 1, 4096, NULL, \
     "attention heads per block (v0.21's attention_head_dim is the number of heads)"}, \
    {"model.cross_attention_dim", DF_CFG_INT, "0", 0, 16384, NULL, \
     "cross-attention width (0: the text encoder's hidden_size)"}, \
    {"model.norm_num_groups", DF_CFG_INT, "32", 1, 1024, NULL, "GroupNorm groups"}, \
    {"model.use_linear_projection", DF_CFG_BOOL, "false", 0, 0, NULL, \
     "linear (SD 2.x) instead of 1x1 conv projections in the transformers"}, \
    {"text_encoder.hidden_size", DF_CFG_INT, "512", 1, 16384, NULL, "CLIP width (from scratch)"}, \
    {"text_encoder.intermediate_size", DF_CFG_INT, "2048", 1, 65536, NULL, "CLIP MLP width"}, \
    {"text_encoder.num_hidden_layers", DF_CFG_INT, "12", 1, 64, NULL, "CLIP layers"}, \
    {"text_encoder.num_attention_heads", DF_CFG_INT, "8", 1, 1024, NULL, "CLIP heads"}, \
    {"text_encoder.hidden_act", DF_CFG_STRING, "quick_gelu", 0, 0, "quick_gelu|gelu", \
     "CLIP activation"}, \
    {"text_encoder.max_position_embeddings", DF_CFG_INT, "77", 2, 65536, NULL, \
     "CLIP positions (at least the tokenizer's 77)"}, \
    {"prediction_type", DF_CFG_STRING, NULL, 0, 0, "epsilon|v_prediction", \
     "what the UNet predicts (unset: the base's scheduler, epsilon from scratch)"}, \
    {"ddpm_num_steps", DF_CFG_INT, "1000", 1, 100000, NULL, "diffusion steps T (from scratch)"}, \
    {"ddpm_beta_schedule", DF_CFG_STRING, "scaled_linear", 0, 0, \
     "linear|scaled_linear|squaredcos_cap_v2", "beta schedule (from scratch)"}, \
    {"ddpm_beta_start", DF_CFG_FLOAT, "0.00085", 0, 1, NULL, "first beta (from scratch)"}, \
    {"ddpm_beta_end", DF_CFG_FLOAT, "0.012", 0, 1, NULL, "last beta (from scratch)"}, \
    {"snr_gamma", DF_CFG_FLOAT, "0", 0, 1e6, NULL, \
     "min-SNR weighting gamma (0: off; 5 is usual)"}, \
    {"noise_offset", DF_CFG_FLOAT, "0", 0, 10, NULL, "offset noise scale (0: off)"}, \
    {"input_perturbation", DF_CFG_FLOAT, "0", 0, 10, NULL, \
     "extra noise on the UNet input only (0: off; 0.1 is usual)"}, \
    {"proportion_empty_prompts", DF_CFG_FLOAT, "0", 0, 1, NULL, \
     "share of captions replaced by \"\" (classifier-free guidance training)"}, \
    {"cache_latents", DF_CFG_BOOL, "false", 0, 0, NULL, \
     "encode each image once into OUTPUT/latent_cache (needs center_crop)"}, \
    {"validation_prompts", DF_CFG_STRING_LIST, NULL, 0, 0, NULL, \
     "prompts of the validation grid, one row each (unset: no grid)", true}, \
    {"validation_scheduler", DF_CFG_STRING, "DPMSolverMultistepScheduler", 0, 0, NULL, \
     "scheduler class of the validation grid (training betas)", true}, \
    {"validation_inference_steps", DF_CFG_INT, "20", 1, 10000, NULL, \
     "denoising steps of the validation grid", true}, \
    {"validation_guidance", DF_CFG_FLOAT, "7.5", 0, 100, NULL, \
     "classifier-free guidance of the validation grid", true}, \
    {"export_scheduler", DF_CFG_STRING, "PNDMScheduler", 0, 0, NULL, \
     "scheduler class written to the exported scheduler/ (training betas; SD 1.5 ships PNDM)"}
// clang-format on

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
    bool frozen_unet; /* set before df_t2i_build: the base's UNet mapped frozen */
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

/* Reads the DF_T2I_FIELDS keys into t (zeroed, frozen_unet set) and builds the models: the
 * tokenizer, the frozen VAE, the text encoder, the UNet, the training scheduler and the loss
 * config; not the data. On failure the caller still calls df_t2i_release. */
df_status df_t2i_build(t2i *t, const df_config *cfg);
/* train_data_dir's images and captions (checked), and with cache_latents their latent cache. */
df_status df_t2i_open_data(t2i *t, const df_config *cfg);
/* text_to_image's loss (ctx a t2i): the latents, the tokens, the text encoder (with a tape when
 * train_text_encoder), the diffusion draw, the UNet, the shared diffusion loss. */
df_status df_t2i_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                      df_tensor **loss);
/* train_text_encoder: joins the UNet's and the text encoder's registries ("unet.*",
 * "text_encoder.*"); a no-op otherwise. */
df_status df_t2i_join_text(t2i *t);
/* Frees what t holds (not t). */
void df_t2i_release(t2i *t);
/* The df_recipe fields text_to_image and the recipes on it share (name, ctx, params, base,
 * UNet body, groups, export, validation); the caller sets the loss, data and free. */
void df_t2i_recipe(t2i *t, const df_config *cfg, const char *name, df_recipe *r);
/* The latents of batch b: scaling_factor * a posterior sample of the frozen VAE (its noise from
 * rng->noise), from the latent cache when there is one; no tape. Scope rule. */
df_status df_t2i_latents(t2i *t, const df_batch *b, df_step_rng *rng, df_tensor **out);
/* The token ids (n, max_length) of captions, each "" when its draw from g falls below
 * proportion_empty_prompts (one draw a caption, always drawn). Scope rule. */
df_status df_t2i_tokenize(t2i *t, char *const *captions, int n, df_philox *g, df_tensor **out);

/* df_recipe.validate / export_model (t2i_output.c). */
df_status df_t2i_validate(void *ctx, int64_t step, df_tensor **grid);
df_status df_t2i_export(void *ctx, const char *dir);
/* The live models as a pipeline with scheduler class sched_class on the training betas
 * (borrowed parts; release with df_t2i_pipeline_release), for validation and generated data,
 * and the base folder's safety checker loaded once into t->safety when the base has one (also
 * used by the controlnet recipe's validation). */
df_status df_t2i_live_pipeline(t2i *t, const char *sched_class, df_sd_pipeline *p);
void df_t2i_pipeline_release(df_sd_pipeline *p);
df_status df_t2i_base_checker(t2i *t);

#endif
