/* cli_lora.h — the `--lora FILE[:scale]` (repeatable) and `--fuse-lora` options that
 * `diffusion generate` and `diffusion forward` share (recipes/cli_lora.c): the files read
 * (nn/lora_file.h, any layout), then applied on the fly as adapters or fused into the weights
 * (nn/lora.h). Several LoRAs stack: their updates add. */
#ifndef DF_RECIPES_CLI_LORA_H
#define DF_RECIPES_CLI_LORA_H

#include "nn/lora.h"

#define DF_CLI_MAX_LORAS 16

typedef struct df_cli_loras {
    char files[DF_CLI_MAX_LORAS][1024];
    float scales[DF_CLI_MAX_LORAS];
    int n;
    bool fuse;
    df_lora_set sets[DF_CLI_MAX_LORAS];
    df_lora lora; /* on the fly */
    df_lora_fused fused;
} df_cli_loras;

/* Splits "FILE[:scale]" in place: the scale after the last ':' unless the whole argument is an
 * existing file or that suffix holds a '/' (then 1). DF_ERR_INVALID "<label><arg>: the scale 'x'
 * is not a number" for a suffix that is not a finite number. */
df_status df_cli_split_scale(char *arg, const char *label, float *scale);

/* Adds one `--lora` value: "FILE[:scale]", the scale after the last ':' unless the whole value
 * is an existing file or that suffix holds a '/'. DF_ERR_INVALID "--lora FILE:x: the scale 'x'
 * is not a number" (one line), or too many LoRAs. */
df_status df_cli_lora_arg(df_cli_loras *l, const char *value);

/* Reads every file and applies it (l->fuse: fuses it) on `models`; entries whose target starts
 * with none of the models' prefixes are an error unless only_matching (`forward` runs one
 * component of the pipeline a file was made for: the other component's entries are skipped,
 * but at least one entry must concern it). */
df_status df_cli_loras_apply(df_cli_loras *l, const df_lora_model *models, int n_models,
                             bool only_matching);

/* Removes the adapters, unfuses, frees the sets. Call before freeing the models. */
void df_cli_loras_free(df_cli_loras *l);

#endif
