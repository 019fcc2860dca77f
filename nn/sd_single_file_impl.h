/* sd_single_file_impl.h — internal to nn/: the structure of an SD checkpoint and the name
 * mapping between the original layout and diffusers' (sd_single_file_keys.c), shared by both
 * conversion directions (sd_single_file.c). */
#ifndef DF_NN_SD_SINGLE_FILE_IMPL_H
#define DF_NN_SD_SINGLE_FILE_IMPL_H

#include "nn/single_file.h"

enum { SF_UNET = 0, SF_VAE = 1, SF_TEXT = 2, SF_N_COMP = 3 };

#define SF_UNET_PREFIX "model.diffusion_model."
#define SF_VAE_PREFIX "first_stage_model."
#define SF_CLIP_PREFIX "cond_stage_model.transformer."
#define SF_OPENCLIP_PREFIX "cond_stage_model.model."

/* What the mapping depends on. */
typedef struct sf_layout {
    int unet_blocks, unet_layers;  /* block count, layers_per_block */
    bool down_attn[DF_MAX_BLOCKS]; /* down block b has transformers (up block n-1-b too) */
    int vae_blocks;
    bool openclip;   /* SD 2.x text encoder names */
    int text_layers; /* layers of the diffusers text encoder */
} sf_layout;

typedef enum sf_rule_kind {
    SF_R_PLAIN,          /* the rest of the name is the same in both layouts */
    SF_R_EXACT,          /* whole names */
    SF_R_UNET_RESNET,    /* in_layers.0 <-> norm1, ... */
    SF_R_VAE_RESNET,     /* nin_shortcut <-> conv_shortcut */
    SF_R_VAE_RESNETS,    /* "<j>." then as SF_R_VAE_RESNET: a block's resnet list */
    SF_R_VAE_ATTN,       /* q <-> to_q, proj_out <-> to_out.0; 1x1 conv <-> linear weights */
    SF_R_OPENCLIP_BLOCK, /* ln_1 <-> layer_norm1, in_proj <-> q/k/v_proj, ... */
} sf_rule_kind;

typedef struct sf_rule {
    char orig[96], diff[96];
    int comp;
    sf_rule_kind kind;
} sf_rule;

typedef struct sf_rules {
    sf_rule *items;
    int n, cap;
} sf_rules;

/* One name translated. */
typedef struct sf_target {
    char name[DF_NAME_MAX];
    int comp;     /* the diffusers component (for orig -> diff) */
    int part;     /* -1, or 0/1/2: the q/k/v third of an OpenCLIP in_proj tensor */
    bool conv1x1; /* original (C, C, 1, 1) <-> diffusers (C, C) */
} sf_target;

/* The rules for a layout (DF_ERR_NOMEM). Free with sf_rules_free. */
df_status sf_rules_build(const sf_layout *l, sf_rules *r);
void sf_rules_free(sf_rules *r);
/* `pattern` with its '@' replaced by "q", "k" or "v" (part 0, 1, 2) into out. */
void sf_qkv_name(const char *pattern, int part, char *out, size_t len);
/* Original name -> diffusers (component, name); false when no rule covers it. An OpenCLIP
 * in_proj tensor gives part 0 and a name with '@' where q, k or v goes (sf_qkv_name). */
bool sf_to_diff(const sf_rules *r, const char *orig, sf_target *t);
/* Diffusers (component, name) -> original name (part: which third of in_proj); false when no
 * rule covers it. */
bool sf_to_orig(const sf_rules *r, int comp, const char *diff, sf_target *t);

#endif
