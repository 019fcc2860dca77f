/* recipe_textual_inversion.c — textual inversion, as diffusers v0.21.4's
 * examples/textual_inversion/textual_inversion.py: a Stable Diffusion pipeline folder stays
 * frozen and only new token embeddings learn a concept from a few images. Built on the
 * text_to_image recipe's parts (recipe_text_to_image.h: keys, models, latents, tokenizing,
 * validation grids).
 *
 * The placeholder token and, with num_vectors k > 1, "<tok>_1" .. "<tok>_{k-1}" are added to
 * the tokenizer (each must be new: an error otherwise); their k vectors, each initialised to the
 * embedding of initializer_token (which must tokenize to exactly one token), are the only
 * trainable parameters ("textual_inversion.vectors", F32 (k, D)): rows after the text
 * encoder's frozen token table (df_clip_text.added_embedding), so every other row stays bitwise
 * what the base holds, what the script's restore of `orig_embeds_params` after each step
 * achieves; AdamW on these rows alone is, row for row, the script's AdamW over the whole table
 * (adam_weight_decay applies to them as there). The UNet and VAE are mapped frozen.
 *
 * Captions: each image's is a template of learnable_property (object: imagenet_templates_small,
 * style: imagenet_style_templates_small, the script's lists) drawn from the step's dropout
 * stream, with "{}" the placeholder tokens joined by spaces; `repeats` repeats the images in an
 * epoch. The step's draws, in order: the posterior noise, the template draws, the empty-prompt
 * draws, the diffusion draw. The export is learned_embeds.safetensors (the script's file: one
 * tensor (k, D) named by the placeholder token) in the run folder, for `diffusion generate
 * --embedding` and diffusers' load_textual_inversion; validation prompts may use the token.
 *
 * upstream differences: the export is the embedding file only (the script also saves a whole
 * pipeline unless told not to); the template draws come from our streams, not Python's random.
 */
#include "recipes/recipe_text_to_image.h"

#include "nn/embedding_file.h"
#include "nn/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const df_cfg_field ti_fields[] = {
    DF_T2I_FIELDS,
    {"placeholder_token", DF_CFG_STRING, NULL, 0, 0, NULL,
     "the new token that names the concept, e.g. \"<twemoji>\" (must not be a token yet)"},
    {"num_vectors", DF_CFG_INT, "1", 1, DF_EMBED_MAX_VECTORS, NULL,
     "vectors of the concept: the token and <token>_1 .. <token>_{n-1}"},
    {"initializer_token", DF_CFG_STRING, NULL, 0, 0, NULL,
     "a word of one token whose embedding every new vector starts from, e.g. \"emoji\""},
    {"learnable_property", DF_CFG_STRING, "object", 0, 0, "object|style",
     "the caption templates: an object (\"a photo of a {}\") or a style (\"a painting in the "
     "style of {}\")"},
    {"repeats", DF_CFG_INT, "100", 1, 100000, NULL, "times each image appears in an epoch"},
};

/* The script's imagenet_templates_small and imagenet_style_templates_small. */
static const char *const object_templates[] = {
    "a photo of a {}",           "a rendering of a {}",
    "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}",     "a photo of a dirty {}",
    "a dark photo of the {}",    "a photo of my {}",
    "a photo of the cool {}",    "a close-up photo of a {}",
    "a bright photo of the {}",  "a cropped photo of a {}",
    "a photo of the {}",         "a good photo of the {}",
    "a photo of one {}",         "a close-up photo of the {}",
    "a rendition of the {}",     "a photo of the clean {}",
    "a rendition of a {}",       "a photo of a nice {}",
    "a good photo of a {}",      "a photo of the nice {}",
    "a photo of the small {}",   "a photo of the weird {}",
    "a photo of the large {}",   "a photo of a cool {}",
    "a photo of a small {}",
};
static const char *const style_templates[] = {
    "a painting in the style of {}",         "a rendering in the style of {}",
    "a cropped painting in the style of {}", "the painting in the style of {}",
    "a clean painting in the style of {}",   "a dirty painting in the style of {}",
    "a dark painting in the style of {}",    "a picture in the style of {}",
    "a cool painting in the style of {}",    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",  "a cropped painting in the style of {}",
    "a good painting in the style of {}",    "a close-up painting in the style of {}",
    "a rendition in the style of {}",        "a nice painting in the style of {}",
    "a small painting in the style of {}",   "a weird painting in the style of {}",
    "a large painting in the style of {}",
};

typedef struct ti {
    t2i t;          /* first: df_t2i_validate takes the context as a t2i */
    df_params rows; /* "vectors" (k, D): the trainable embedding rows */
    df_params all;  /* "unet.*", "text_encoder.*" frozen, "textual_inversion.vectors" */
    bool has_all;
    df_tensor *vectors;
    char token[DF_EMBED_MAX_TOKEN];
    char *placeholders; /* "<tok> <tok>_1 ..." */
    const char *const *templates;
    int n_templates;
} ti;

static void ti_free(void *ctx) {
    ti *d = ctx;
    if (d->t.text) d->t.text->added_embedding = NULL;
    if (d->has_all) df_params_free(&d->all);
    df_params_free(&d->rows);
    df_t2i_release(&d->t);
    free(d->placeholders);
    free(d);
}

/* A caption of one template drawn from g, "{}" replaced by the placeholder tokens. */
static char *caption(const ti *d, df_philox *g) {
    int k = (int)(df_philox_uniform(g) * d->n_templates);
    if (k >= d->n_templates) k = d->n_templates - 1;
    const char *tpl = d->templates[k], *at = strstr(tpl, "{}");
    size_t n = strlen(tpl) - 2 + strlen(d->placeholders) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%.*s%s%s", (int)(at - tpl), tpl, d->placeholders, at + 2);
    return s;
}

static df_status ti_loss(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                         df_tensor **loss) {
    ti *d = ctx;
    t2i *t = &d->t;
    const df_batch *b = batches[0];
    df_tensor *latents, *ids;
    DF_TRY(df_t2i_latents(t, b, rng, &latents));
    char **caps = calloc((size_t)b->n, sizeof *caps);
    df_status st = caps ? DF_OK : df_error(DF_ERR_NOMEM, "out of memory");
    for (int i = 0; st == DF_OK && i < b->n; i++)
        if (!(caps[i] = caption(d, &rng->dropout))) st = df_error(DF_ERR_NOMEM, "out of memory");
    if (st == DF_OK) st = df_t2i_tokenize(t, caps, b->n, &rng->dropout, &ids);
    for (int i = 0; caps && i < b->n; i++) free(caps[i]);
    free(caps);
    DF_TRY(st);
    /* the gradient reaches the added rows only: every other parameter is frozen */
    df_tensor *hidden = df_clip_text_forward(t->text, ids, NULL, NULL);
    df_diffusion_draw draw;
    DF_TRY(df_diffusion_draw_sample(&t->loss, t->sched, latents, rng, &draw));
    DF_TRY(df_unet2d_cond_check_sample(&t->unet->config, draw.noisy));
    df_tensor *pred = df_unet2d_cond_forward(t->unet, draw.noisy, draw.timesteps, hidden);
    return df_diffusion_loss(&t->loss, t->sched, pred, &draw, NULL, NULL, loss);
}

static df_status ti_export(void *ctx, const char *dir) {
    ti *d = ctx;
    char path[DF_PATH_MAX];
    DF_TRY(df_pathf(path, sizeof path, "%s/learned_embeds.safetensors", dir));
    return df_embed_save(path, d->token, d->vectors);
}

/* The placeholder tokens added, their rows initialised from initializer_token's embedding. */
static df_status add_tokens(ti *d, const df_config *cfg) {
    t2i *t = &d->t;
    const char *token = df_config_str(cfg, "placeholder_token");
    const char *init = df_config_str(cfg, "initializer_token");
    int k = (int)df_config_int(cfg, "num_vectors");
    if (!*token) return df_error(DF_ERR_INVALID, "placeholder_token is not set (config)");
    if (!*init) return df_error(DF_ERR_INVALID, "initializer_token is not set (config)");
    if (strlen(token) >= sizeof d->token - 8)
        return df_error(DF_ERR_INVALID, "placeholder_token: %zu bytes (at most %zu) (config)",
                        strlen(token), sizeof d->token - 9);
    snprintf(d->token, sizeof d->token, "%s", token);
    int32_t *ids = NULL;
    int n = 0;
    DF_TRY(df_clip_tokenizer_encode(t->tok, init, &ids, &n));
    int init_id = n == 1 ? ids[0] : -1;
    free(ids);
    if (n != 1)
        return df_error(DF_ERR_INVALID,
                        "initializer_token '%s' is %d tokens; it must be one token (config)", init,
                        n);
    int d_model = t->text->config.hidden_size;
    if (df_clip_tokenizer_len(t->tok) != t->text->config.vocab_size)
        return df_error(DF_ERR_INVALID,
                        "the tokenizer has %d tokens, the text encoder %d rows: cannot add the "
                        "placeholder tokens",
                        df_clip_tokenizer_len(t->tok), t->text->config.vocab_size);
    size_t len = 0, cap = (size_t)k * (strlen(token) + 8) + 1;
    if (!(d->placeholders = malloc(cap))) return df_error(DF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < k; i++) {
        char name[DF_EMBED_MAX_TOKEN + 16];
        if (i == 0)
            snprintf(name, sizeof name, "%s", token);
        else
            snprintf(name, sizeof name, "%s_%d", token, i);
        if (df_clip_tokenizer_token_id(t->tok, name) >= 0)
            return df_error(DF_ERR_INVALID,
                            "placeholder_token: '%s' is already in the tokenizer; choose another "
                            "(config)",
                            name);
        DF_TRY(df_clip_tokenizer_add_token(t->tok, name, NULL));
        len += (size_t)snprintf(d->placeholders + len, cap - len, "%s%s", i ? " " : "", name);
    }
    d->vectors = df_params_add(&d->rows, "", "vectors", DF_DIMS(k, d_model));
    for (int i = 0; i < k; i++)
        for (int j = 0; j < d_model; j++)
            df_f32(d->vectors)[(int64_t)i * d_model + j] =
                (float)df_tensor_get(t->text->token_embedding, (int64_t)init_id * d_model + j);
    t->text->added_embedding = d->vectors;
    return DF_OK;
}

static df_status ti_setup(ti *d, const df_config *cfg) {
    if (!*df_config_str(cfg, "pretrained_model_name_or_path"))
        return df_error(DF_ERR_INVALID,
                        "pretrained_model_name_or_path is not set: textual_inversion learns "
                        "tokens for a pipeline folder (config)");
    if (df_config_bool(cfg, "train_text_encoder"))
        return df_error(DF_ERR_INVALID, "train_text_encoder: textual_inversion trains only the "
                                        "new token vectors (config)");
    bool style = strcmp(df_config_str(cfg, "learnable_property"), "style") == 0;
    d->templates = style ? style_templates : object_templates;
    d->n_templates = style ? (int)(sizeof style_templates / sizeof style_templates[0])
                           : (int)(sizeof object_templates / sizeof object_templates[0]);
    d->t.frozen_unet = true;
    DF_TRY(df_t2i_build(&d->t, cfg));
    if (df_config_bool(cfg, "cache_latents"))
        return df_error(DF_ERR_INVALID, "cache_latents: textual_inversion encodes its images each "
                                        "step (config)");
    DF_TRY(add_tokens(d, cfg));
    df_params_init(&d->all, NULL);
    d->has_all = true;
    DF_TRY(df_params_join(&d->all, "unet", &d->t.unet->params));
    DF_TRY(df_params_join(&d->all, "text_encoder", &d->t.text->params));
    return df_params_join(&d->all, "textual_inversion", &d->rows);
}

static df_status ti_create(const df_config *cfg, df_recipe *r) {
    ti *d = calloc(1, sizeof *d);
    if (!d) return df_error(DF_ERR_NOMEM, "out of memory");
    df_params_init(&d->rows, NULL);
    df_status st = ti_setup(d, cfg);
    if (st != DF_OK) {
        ti_free(d);
        return st;
    }
    df_t2i_recipe(&d->t, cfg, "textual_inversion", r);
    r->params = &d->all;
    r->repeats = (int)df_config_int(cfg, "repeats");
    r->loss = ti_loss;
    r->export_model = ti_export;
    r->free = ti_free;
    return DF_OK;
}

const df_recipe_def df_recipe_textual_inversion = {
    .name = "textual_inversion",
    .fields = ti_fields,
    .n_fields = (int)(sizeof ti_fields / sizeof ti_fields[0]),
    .create = ti_create,
};
