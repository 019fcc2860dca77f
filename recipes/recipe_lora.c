/* recipe_lora.c — LoRA fine-tuning, as diffusers v0.21.4's
 * examples/text_to_image/train_text_to_image_lora.py: a frozen Stable Diffusion pipeline folder
 * (pretrained_model_name_or_path: UNet, text encoder and VAE mapped frozen) with LoRA adapters
 * (nn/lora.h) on the UNet's attention projections (rank, network_alpha; the script's
 * LoRAAttnProcessor on to_q, to_k, to_v, to_out.0), trained on the text_to_image recipe's data,
 * loss and validation (recipe_text_to_image.h: captions, latent cache, the shared diffusion loss
 * with the v0.21.4 min-SNR form). Beyond the script: other UNet targets by glob (proj_in /
 * proj_out, feed-forward), LoCon on the ResNet convolutions (conv_dim / conv_alpha, kohya's
 * names), adapters on the text encoder (train_text_encoder, its own text_encoder_lr, as the
 * DreamBooth LoRA script), and lora_dropout on the adapters' inputs (PEFT's).
 *
 * One registry joins the frozen "unet.*" and "text_encoder.*" (so the checkpoint names and
 * fingerprints the base) and the adapters' "unet.<module>.lora.down.weight" ... (the only
 * trainable parameters: checkpoints hold just them, a few MB). The adapters start from the
 * seed's own stream (down N(0, 1/rank^2), up 0). The loss draws dropout masks from the step's
 * dropout stream after the empty-prompt draws, so a resumed run draws what the uninterrupted
 * one did. The export is pytorch_lora_weights.safetensors (lora_export_format: diffusers as
 * save_lora_weights writes it, peft or kohya). The validation grid shows the base's images
 * above the LoRA's (same prompts and seeds) unless validation_before_after is off.
 */
#include "nn/lora.h"
#include "recipes/recipe_text_to_image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LORA_MAX_GLOBS DF_CFG_MAX_LIST

static const df_cfg_field lora_fields[] = {
    DF_T2I_FIELDS,
    {"rank", DF_CFG_INT, "4", 1, 4096, NULL, "the LoRA update matrices' rank"},
    {"network_alpha", DF_CFG_FLOAT, "0", 0, 1e6, NULL,
     "scale = network_alpha / rank (kohya's --network_alpha; 0: rank, scale 1 as diffusers)"},
    {"lora_dropout", DF_CFG_FLOAT, "0", 0, 0.99, NULL,
     "dropout on the adapters' inputs while training (PEFT's lora_dropout)"},
    {"unet_targets", DF_CFG_STRING_LIST, "[\"*.to_q\", \"*.to_k\", \"*.to_v\", \"*.to_out.0\"]", 0,
     0, NULL,
     "UNet modules that get adapters: globs over diffusers names (e.g. \"*.proj_in\", "
     "\"*.ff.net.*\")"},
    {"conv_dim", DF_CFG_INT, "0", 0, 4096, NULL,
     "LoCon rank of the conv_targets convolutions (kohya's conv_dim; 0: none)"},
    {"conv_alpha", DF_CFG_FLOAT, "0", 0, 1e6, NULL, "LoCon alpha (0: conv_dim)"},
    {"conv_targets", DF_CFG_STRING_LIST, "[\"*resnets.*.conv1\", \"*resnets.*.conv2\"]", 0, 0, NULL,
     "the UNet convolutions of LoCon (with conv_dim)"},
    {"text_encoder_targets", DF_CFG_STRING_LIST,
     "[\"*.q_proj\", \"*.k_proj\", \"*.v_proj\", \"*.out_proj\"]", 0, 0, NULL,
     "with train_text_encoder (adapters on the text encoder; its weights stay frozen): its "
     "modules that get adapters (e.g. add \"*.fc1\", \"*.fc2\")"},
    {"lora_export_format", DF_CFG_STRING, "diffusers", 0, 0, "diffusers|peft|kohya",
     "layout of the exported pytorch_lora_weights.safetensors"},
    {"validation_before_after", DF_CFG_BOOL, "true", 0, 0, NULL,
     "the validation grid shows the base's images (top) above the LoRA's", true},
    DF_CFG_CAPTION_FIELDS,
};

/* Philox stream id of the adapters' initialisation (keyed by the seed). */
enum { STREAM_LORA_INIT = 0x10a4 };

typedef struct lora_recipe {
    t2i *t;
    df_lora lora;
    df_params joined; /* frozen "unet.*", "text_encoder.*" and the adapters */
    bool has_joined;
    df_recipe_group groups[2];
    df_lora_format format;
    bool before_after;
} lora_recipe;

static df_status lora_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                           df_tensor **loss) {
    lora_recipe *lr = ctx;
    lr->lora.dropout_rng = &rng->dropout;
    df_status st = df_t2i_loss(lr->t, batches, rng, loss);
    lr->lora.dropout_rng = NULL;
    return st;
}

static df_status lora_export(void *ctx, const char *dir) {
    lora_recipe *lr = ctx;
    df_lora_set set;
    char path[DF_PATH_MAX];
    df_status st = df_lora_export(&lr->lora, &set);
    if (st == DF_OK) st = df_pathf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", dir);
    if (st == DF_OK) st = df_lora_file_write(&set, path, lr->format, NULL);
    df_lora_set_free(&set);
    return st;
}

/* grid a (H1, W, C) above grid b (H2, W, C), as one U8 image (scope rule). */
static df_tensor *stack_grids(const df_tensor *a, const df_tensor *b) {
    DF_ASSERT(a->shape[1] == b->shape[1] && a->shape[2] == b->shape[2], "grids of other widths");
    df_tensor *g =
        df_tensor_new(DF_DTYPE_U8, DF_DIMS(a->shape[0] + b->shape[0], a->shape[1], a->shape[2]));
    memcpy(g->data, a->data, (size_t)a->numel);
    memcpy((uint8_t *)g->data + a->numel, b->data, (size_t)b->numel);
    return g;
}

static df_status lora_validate(void *ctx, int64_t step, df_tensor **grid) {
    lora_recipe *lr = ctx;
    if (!lr->before_after) return df_t2i_validate(lr->t, step, grid);
    df_tensor *before, *after;
    df_lora_enable(&lr->lora, false);
    df_status st = df_t2i_validate(lr->t, step, &before);
    df_lora_enable(&lr->lora, true);
    DF_TRY(st);
    DF_TRY(df_t2i_validate(lr->t, step, &after));
    *grid = stack_grids(before, after);
    return DF_OK;
}

static void lora_free(void *ctx) {
    lora_recipe *lr = ctx;
    if (lr->has_joined) df_params_free(&lr->joined);
    df_lora_free(&lr->lora); /* before the models its adapters sit on */
    if (lr->t) df_t2i_release(lr->t);
    free(lr->t);
    free(lr);
}

/* The config's globs of `key`, each prefixed "<prefix>." into storage, pointers into out. */
static int prefixed_globs(const df_config *cfg, const char *key, const char *prefix,
                          char (*storage)[DF_NAME_MAX], const char **out) {
    const char *g[LORA_MAX_GLOBS];
    int n = df_config_str_list(cfg, key, g, LORA_MAX_GLOBS);
    for (int i = 0; i < n && i < LORA_MAX_GLOBS; i++) {
        snprintf(storage[i], DF_NAME_MAX, "%s.%s", prefix, g[i]);
        out[i] = storage[i];
    }
    return n < LORA_MAX_GLOBS ? n : LORA_MAX_GLOBS;
}

/* The adapters: the UNet targets at rank / network_alpha (their 1x1 convs too, as diffusers'
 * LoRAConv2dLayer), LoCon on conv_targets at conv_dim, the text encoder's targets. */
static df_status create_adapters(lora_recipe *lr, const df_config *cfg) {
    t2i *t = lr->t;
    df_philox init;
    df_philox_init(&init, t->seed, STREAM_LORA_INIT);
    char storage[LORA_MAX_GLOBS][DF_NAME_MAX];
    const char *globs[LORA_MAX_GLOBS];
    df_lora_model unet = {"unet", &t->unet->params}, text = {"text_encoder", &t->text->params};
    df_lora_config c = df_lora_config_default();
    c.rank = c.conv_rank = (int)df_config_int(cfg, "rank");
    c.alpha = c.conv_alpha = (float)df_config_float(cfg, "network_alpha");
    c.dropout = (float)df_config_float(cfg, "lora_dropout");
    c.globs = globs;
    c.n_globs = prefixed_globs(cfg, "unet_targets", "unet", storage, globs);
    if (c.n_globs) DF_TRY(df_lora_create(&lr->lora, &unet, 1, &c, &init));
    int conv_dim = (int)df_config_int(cfg, "conv_dim");
    if (conv_dim > 0) {
        df_lora_config cc = c;
        cc.rank = cc.conv_rank = conv_dim;
        cc.alpha = cc.conv_alpha = (float)df_config_float(cfg, "conv_alpha");
        cc.n_globs = prefixed_globs(cfg, "conv_targets", "unet", storage, globs);
        if (cc.n_globs) DF_TRY(df_lora_create(&lr->lora, &unet, 1, &cc, &init));
    }
    if (t->train_text) {
        c.n_globs = prefixed_globs(cfg, "text_encoder_targets", "text_encoder", storage, globs);
        if (c.n_globs) DF_TRY(df_lora_create(&lr->lora, &text, 1, &c, &init));
    }
    if (lr->lora.n == 0)
        return df_error(DF_ERR_INVALID, "lora: no module gets an adapter (unet_targets, config)");
    return DF_OK;
}

static df_status lora_setup(lora_recipe *lr, const df_config *cfg) {
    if (!df_lora_format_parse(df_config_str(cfg, "lora_export_format"), &lr->format))
        return df_error(DF_ERR_INVALID, "lora_export_format: unknown format (config)");
    if (!*df_config_str(cfg, "pretrained_model_name_or_path"))
        return df_error(DF_ERR_INVALID,
                        "pretrained_model_name_or_path is not set: the adapters train on a frozen "
                        "Stable Diffusion pipeline folder (config)");
    lr->before_after = df_config_bool(cfg, "validation_before_after");
    if (!(lr->t = calloc(1, sizeof *lr->t))) return df_error(DF_ERR_NOMEM, "out of memory");
    t2i *t = lr->t;
    t->frozen_unet = true;
    DF_TRY(df_t2i_build(t, cfg));
    /* train_text_encoder trains the text encoder's adapters, not its weights */
    if (t->train_text) DF_TRY(df_params_freeze(&t->text->params));
    DF_TRY(df_t2i_open_data(t, cfg));
    df_lora_init(&lr->lora);
    DF_TRY(create_adapters(lr, cfg));
    df_params_init(&lr->joined, NULL);
    lr->has_joined = true;
    DF_TRY(df_params_join(&lr->joined, "unet", &t->unet->params));
    DF_TRY(df_params_join(&lr->joined, "text_encoder", &t->text->params));
    return df_params_join(&lr->joined, "", &lr->lora.params);
}

static df_status lora_create(const df_config *cfg, df_recipe *r) {
    lora_recipe *lr = calloc(1, sizeof *lr);
    if (!lr) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status st = lora_setup(lr, cfg);
    if (st != DF_OK) {
        lora_free(lr);
        return st;
    }
    t2i *t = lr->t;
    df_t2i_recipe(t, cfg, "lora", r);
    r->ctx = lr;
    r->params = &lr->joined;
    r->needs_captions = true;
    r->no_pixels = t->cache != NULL;
    r->loss = lora_loss;
    r->export_model = lora_export;
    r->validate = t->n_prompts ? lora_validate : NULL;
    r->free = lora_free;
    r->groups = NULL;
    r->n_groups = 0;
    if (t->train_text) {
        lr->groups[0] = (df_recipe_group){.name = "unet", .glob = "unet.*", .weight_decay = -1};
        lr->groups[1] = (df_recipe_group){.name = "text_encoder",
                                          .glob = "text_encoder.*",
                                          .lr = df_config_float(cfg, "text_encoder_lr"),
                                          .weight_decay = -1};
        r->groups = lr->groups;
        r->n_groups = 2;
    }
    return DF_OK;
}

const df_recipe_def df_recipe_lora = {
    .name = "lora",
    .fields = lora_fields,
    .n_fields = (int)(sizeof lora_fields / sizeof lora_fields[0]),
    .create = lora_create,
};
