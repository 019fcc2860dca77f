/* recipes.h — the training recipes: each declares its config keys (appended to the trainer's)
 * and builds a df_recipe from a resolved config. */
#ifndef DF_RECIPES_H
#define DF_RECIPES_H

#include "train/train.h"

typedef struct df_recipe_def {
    const char *name;
    const df_cfg_field *fields; /* the recipe's own keys */
    int n_fields;
    /* a recipe whose keys this one takes too, before its own (NULL: none) */
    const struct df_recipe_def *extends;
    /* Builds the model and what the trainer needs; errors name the config key. */
    df_status (*create)(const df_config *cfg, df_recipe *out);
} df_recipe_def;

extern const df_recipe_def df_recipe_unconditional;
extern const df_recipe_def df_recipe_vae;
extern const df_recipe_def df_recipe_text_to_image;
extern const df_recipe_def df_recipe_dreambooth;
extern const df_recipe_def df_recipe_textual_inversion;
extern const df_recipe_def df_recipe_lora;

/* The dreambooth loss's item weights (F32 (n + m), scope rule) of n instance items then m class
 * items: the mean over the n + m items of weight x item loss is mean(instance) + w x mean(class),
 * train_dreambooth.py's instance loss plus prior_loss_weight times the prior loss. */
df_tensor *df_dreambooth_item_weights(int n, int m, float w);
extern const df_recipe_def df_recipe_controlnet;

/* The model.block_out_channels, model.down_block_types and model.up_block_types keys
 * (recipes/recipe_blocks.c) into channels, down, up (DF_MAX_BLOCKS entries each) and their
 * common length into *n_blocks; DF_ERR_INVALID naming the keys when the lengths differ or are
 * outside 1..DF_MAX_BLOCKS, or when model.norm_num_groups does not divide a width. */
df_status df_recipe_model_blocks(const df_config *cfg, int *channels, char (*down)[DF_JSON_STR],
                                 char (*up)[DF_JSON_STR], int *n_blocks);

/* The recipe table (recipes/recipe_table.c): how many, the i-th (NULL out of range), the one
 * called name (NULL when none is). */
int df_recipe_count(void);
const df_recipe_def *df_recipe_at(int i);
const df_recipe_def *df_recipe_find(const char *name);
/* The full schema of a recipe (trainer keys, then the recipe's), malloc'd; *n its length. */
df_cfg_field *df_recipe_schema(const df_recipe_def *def, int *n);

#endif
