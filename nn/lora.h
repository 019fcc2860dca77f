/* lora.h — LoRA (linear) and LoCon (conv) adapters on the module hooks (nn/adapter.c), as
 * diffusers v0.21.4's LoRALinearLayer / LoRAConv2dLayer on LoRACompatibleLinear / Conv:
 *
 *     y = op(x) + scale * up(down(dropout(x))),   scale = multiplier * alpha / rank
 *
 * linear: down (rank, in), up (out, rank); conv: down (rank, in, kh, kw) with the module's
 * stride and padding, up (out, rank, 1, 1). A new adapter starts as upstream: down ~ N(0, 1/rank^2)
 * (std 1 / rank), up = 0, so a fresh adapter leaves the model unchanged. Dropout (PEFT's
 * lora_dropout; diffusers v0.21.4 has none) acts on the adapter's input, only while the caller
 * hands the adapters a random stream (training).
 *
 * Models are named by prefix ("unet", "text_encoder"): targets are "<prefix>.<module name>",
 * the names of a df_lora_set (nn/lora_file.h). Three uses:
 *   - training: df_lora_create puts new trainable adapters on the modules that match globs,
 *     their parameters in df_lora.params ("<prefix>.<module>.lora.down.weight", ".up.weight",
 *     all trainable; the base stays frozen), df_lora_export turns them into a df_lora_set;
 *   - on the fly: df_lora_apply attaches a set's entries with a multiplier (several sets stack:
 *     each is one more adapter on the module's chain, their terms add up);
 *   - fused: df_lora_fuse replaces each target weight by W + scale * up @ down (a new tensor, so
 *     memory-mapped weights are never written; the original is kept) and df_lora_unfuse puts
 *     the originals back (bitwise).
 * Set entries whose target names no module are an error listing them; shape mismatches name
 * the target and both shapes. */
#ifndef DF_NN_LORA_H
#define DF_NN_LORA_H

#include "nn/lora_file.h"

/* A model adapters go on: its registry (modules and parameters) under a prefix. */
typedef struct df_lora_model {
    const char *prefix; /* "unet", "text_encoder" (borrowed) */
    df_params *params;  /* borrowed */
} df_lora_model;

/* Which modules get new adapters and how. */
typedef struct df_lora_config {
    int rank;         /* linear modules' rank (> 0) */
    float alpha;      /* network_alpha: scale = alpha / rank; 0: rank (scale 1, diffusers' None) */
    float dropout;    /* probability in [0, 1) on the adapter input while training */
    int conv_rank;    /* conv modules' rank (kohya's conv_dim); 0: convolutions get no adapter */
    float conv_alpha; /* 0: conv_rank */
    /* fnmatch globs over "<prefix>.<module>" (`*` spans dots); a module matching any gets one
     * adapter. Each glob must match at least one module (else DF_ERR_INVALID naming it). */
    const char *const *globs;
    int n_globs;
} df_lora_config;

/* The defaults: rank 4, alpha 0 (= rank), no dropout, no conv adapters, no globs. */
DF_API df_lora_config df_lora_config_default(void);
/* diffusers' default targets: the UNet attention projections ("unet.*.to_q", ".to_k", ".to_v",
 * ".to_out.0"), and the text encoder's ("text_encoder.*.q_proj", k_proj, v_proj, out_proj). */
DF_API extern const char *const df_lora_unet_default_globs[4];
DF_API extern const char *const df_lora_text_default_globs[4];

typedef struct df_lora_adapter df_lora_adapter;

/* Adapters attached to models. Zero it (or df_lora_init) before use; free with df_lora_free. */
typedef struct df_lora {
    df_lora_adapter **ads; /* owned, in creation order */
    int n, cap;
    /* the trainable adapters' parameters (df_lora_create), named as above */
    df_params params;
    /* dropout's random stream: set by the training loss around its forward (borrowed), NULL
     * otherwise (no dropout) */
    df_philox *dropout_rng;
} df_lora;

DF_API void df_lora_init(df_lora *l);
/* Detaches every adapter of l from its module and frees them and l->params. NULL-safe. Call it
 * before freeing the models. */
DF_API void df_lora_free(df_lora *l);

/* Detaches (on false) or re-attaches (on true) every adapter of l, keeping them: the base model
 * alone, e.g. the "before" half of a validation grid. Other adapters on the modules stay. */
DF_API void df_lora_enable(df_lora *l, bool on);

/* Puts a new trainable adapter on every linear (and, with conv_rank, conv) module of `models`
 * matching one of c->globs, initialised from `init` as upstream (down N(0, 1/rank^2), up 0;
 * NULL: down zero too). Their parameters go into l->params, marked trainable (not flattened:
 * the caller joins / flattens). Errors: a bad rank, alpha or dropout, a glob matching nothing,
 * a module matched twice by globs counts once. */
DF_API df_status df_lora_create(df_lora *l, const df_lora_model *models, int n_models,
                                const df_lora_config *c, df_philox *init);

/* Attaches every entry of s (its tensors referenced, not copied: s must outlive the adapters)
 * with scale = multiplier * alpha / rank. A target naming no module of `models`, a conv entry
 * on a linear module (or the reverse) and a shape mismatch are errors (nothing is attached
 * then). */
DF_API df_status df_lora_apply(df_lora *l, const df_lora_set *s, float multiplier,
                               const df_lora_model *models, int n_models);

/* What df_lora_fuse changed: the modules and their original weights. */
typedef struct df_lora_fused {
    struct df_lora_fused_item *items; /* owned */
    int n, cap;
} df_lora_fused;

/* Fuses s into the weights of `models`: each target module's weight becomes a new F32 tensor
 * W + multiplier * alpha / rank * up @ down (computed in F32 as diffusers' _fuse_lora; stored
 * in the weight's dtype) in the module and its registry; the originals go to *undo (appended:
 * several sets may be fused one after another). Checks as df_lora_apply, all before anything
 * changes; a weight in a training's flat buffer is refused. */
DF_API df_status df_lora_fuse(const df_lora_set *s, float multiplier, const df_lora_model *models,
                              int n_models, df_lora_fused *undo);
/* Puts back every original weight of undo (last fused first) and frees it. NULL-safe. */
DF_API void df_lora_unfuse(df_lora_fused *undo);

/* The trainable adapters of l as a set (zeroed first): targets "<prefix>.<module>", down and up
 * copied (F32), alpha the config's (rank when 0). */
DF_API df_status df_lora_export(const df_lora *l, df_lora_set *out);

#endif
