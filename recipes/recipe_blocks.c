/* recipe_blocks.c — the block layout every recipe that builds a model from scratch reads: the
 * `model.block_out_channels`, `model.down_block_types` and `model.up_block_types` keys, checked
 * against `model.norm_num_groups`. */
#include "recipes/recipes.h"

#include <stdio.h>

/* Copies a string-list key into a block-type array; returns its length. */
static int block_types(const df_config *cfg, const char *key, char (*out)[DF_JSON_STR]) {
    const char *items[DF_MAX_BLOCKS];
    int n = df_config_str_list(cfg, key, items, DF_MAX_BLOCKS);
    for (int i = 0; i < n && i < DF_MAX_BLOCKS; i++) snprintf(out[i], DF_JSON_STR, "%s", items[i]);
    return n;
}

df_status df_recipe_model_blocks(const df_config *cfg, int *channels, char (*down)[DF_JSON_STR],
                                 char (*up)[DF_JSON_STR], int *n_blocks) {
    int64_t ch[DF_MAX_BLOCKS];
    int n = df_config_list(cfg, "model.block_out_channels", ch, DF_MAX_BLOCKS);
    int nd = block_types(cfg, "model.down_block_types", down);
    int nu = block_types(cfg, "model.up_block_types", up);
    if (n < 1 || n > DF_MAX_BLOCKS || nd != n || nu != n)
        return df_error(DF_ERR_INVALID,
                        "model.block_out_channels (%d), model.down_block_types (%d) and "
                        "model.up_block_types (%d) must have the same length, 1 to %d (config)",
                        n, nd, nu, DF_MAX_BLOCKS);
    int groups = (int)df_config_int(cfg, "model.norm_num_groups");
    for (int i = 0; i < n; i++) {
        channels[i] = (int)ch[i];
        if (groups < 1 || channels[i] % groups != 0)
            return df_error(DF_ERR_INVALID,
                            "model.norm_num_groups (%d) must divide every block width (%d) "
                            "(config)",
                            groups, channels[i]);
    }
    *n_blocks = n;
    return DF_OK;
}
