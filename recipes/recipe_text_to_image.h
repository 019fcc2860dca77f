/* recipe_text_to_image.h — the text_to_image recipe's state, shared by its files:
 * recipe_text_to_image.c (config, models, loss) and t2i_output.c (validation grids, export). */
#ifndef DF_RECIPE_TEXT_TO_IMAGE_H
#define DF_RECIPE_TEXT_TO_IMAGE_H

#include "infer/infer.h"
#include "recipes/recipes.h"

#define T2I_MAX_PROMPTS DF_CFG_MAX_LIST

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

/* df_recipe.validate / export_model (t2i_output.c). */
df_status df_t2i_validate(void *ctx, int64_t step, df_tensor **grid);
df_status df_t2i_export(void *ctx, const char *dir);
/* The live models as a pipeline (borrowed parts, `validation_scheduler` on the training betas;
 * free with df_t2i_pipeline_release), and the base folder's safety checker loaded once into
 * t->safety when the base has one (also used by the controlnet recipe's validation). */
df_status df_t2i_live_pipeline(t2i *t, df_sd_pipeline *p);
void df_t2i_pipeline_release(df_sd_pipeline *p);
df_status df_t2i_base_checker(t2i *t);

#endif
