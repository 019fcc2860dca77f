/* train.h — the public interface of train/: the YAML run configuration, files and checksums,
 * checkpoints, run-folder ownership (identity and lock), TensorBoard events and the trainer.
 *
 * Config: a recipe declares a schema — every key with its type, default, allowed range or
 * choices and a one-line doc. Values come from the defaults, then a YAML file (nested mappings
 * flatten to dotted keys: `model: {layers_per_block: 2}` is `model.layers_per_block`), then
 * `key.sub=value` overrides. An unknown key, a wrong type or an out-of-range value is an error
 * "<file>:<line>: <key>: <why>" (with the closest valid key for a misspelling). Only train/ and
 * recipes/ read YAML; library modules take plain structs.
 */
#ifndef DF_TRAIN_H
#define DF_TRAIN_H

#include "autograd/autograd.h"
#include "datasets/datasets.h"
#include "infer/infer.h"
#include "nn/nn.h"
#include "optim/optim.h"

#include <stdio.h>

typedef enum df_cfg_type {
    DF_CFG_INT = 0,
    DF_CFG_FLOAT,
    DF_CFG_BOOL,
    DF_CFG_STRING,
    DF_CFG_INT_LIST,
    DF_CFG_STRING_LIST,
} df_cfg_type;

/* One key of a schema. Numbers must lie in [min, max] (both 0: unbounded); strings with
 * `choices` ("a|b|c") must be one of them. `def` is the default written as YAML text (NULL: the
 * key has no default and is "unset" until given: a string "" / empty list). */
typedef struct df_cfg_field {
    const char *key;
    df_cfg_type type;
    const char *def;
    double min, max;
    const char *choices;
    const char *doc;
    bool operational; /* does not change what is computed (logging, cadence, workers): left out
                         of df_config_hash, so changing it does not block a resume */
} df_cfg_field;

#define DF_CFG_MAX_LIST 16
#define DF_CFG_ORIGIN 300

typedef struct df_cfg_value {
    double num;                   /* INT, FLOAT, BOOL (0/1) */
    char *str;                    /* STRING (owned) */
    int n;                        /* list length */
    double nums[DF_CFG_MAX_LIST]; /* INT_LIST */
    char *strs[DF_CFG_MAX_LIST];  /* STRING_LIST (owned) */
    char origin[DF_CFG_ORIGIN];   /* "default", "<file>:<line>" or "command line" */
} df_cfg_value;

typedef struct df_config {
    const df_cfg_field *schema; /* borrowed: static recipe tables */
    int n;
    df_cfg_value *values;
} df_config;

/* A config holding every field's default. The schema must be valid (asserted: defaults parse
 * and lie in range). Free with df_config_free. */
DF_API void df_config_init(df_config *c, const df_cfg_field *schema, int n);
DF_API void df_config_free(df_config *c);
/* Merges a YAML file (a mapping, nested mappings flattened with dots). Errors name file:line. */
DF_API df_status df_config_load_yaml(df_config *c, const char *path);
/* Merges YAML text (label names it in errors). */
DF_API df_status df_config_load_yaml_text(df_config *c, const char *text, size_t len,
                                          const char *label);
/* Applies one "key.sub=value" override (value parsed as YAML: `[1, 2]` for lists). */
DF_API df_status df_config_set(df_config *c, const char *assignment);
/* Typed reads of a key that must exist in the schema with that type (asserted). */
DF_API int64_t df_config_int(const df_config *c, const char *key);
DF_API double df_config_float(const df_config *c, const char *key);
DF_API bool df_config_bool(const df_config *c, const char *key);
DF_API const char *df_config_str(const df_config *c, const char *key); /* borrowed */
DF_API int df_config_list(const df_config *c, const char *key, int64_t *out, int max);
DF_API int df_config_str_list(const df_config *c, const char *key, const char **out, int max);
/* Writes the resolved config as YAML (nested by dots, schema order, one comment per key giving
 * its origin when `with_origin`). */
DF_API void df_config_write(const df_config *c, FILE *f, bool with_origin);
DF_API df_status df_config_save(const df_config *c, const char *path);
/* FNV-1a 64 of the resolved values of the non-operational keys (schema order), for checkpoint
 * compatibility. */
DF_API uint64_t df_config_hash(const df_config *c);
/* The schema as a Markdown table (key, type, default, allowed, doc), for the README. */
DF_API void df_config_write_docs(const df_cfg_field *schema, int n, FILE *f);

/* ================================================================ files and checksums ====== */

#define DF_PATH_MAX 4096

/* CRC-32C (Castagnoli) of n bytes, and its running form (start with crc = 0). */
DF_API uint32_t df_crc32c(const void *data, size_t n);
DF_API uint32_t df_crc32c_update(uint32_t crc, const void *data, size_t n);
/* snprintf into a path buffer; DF_ERR_INVALID when it does not fit. */
DF_API df_status df_pathf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* mkdir -p. */
DF_API df_status df_mkdirs(const char *path);
/* rm -rf (no error when absent). */
DF_API df_status df_remove_tree(const char *path);

/* ================================================================ checkpoints ============== */

#define DF_CKPT_MAX_FILES 256
#define DF_RUN_ID_LEN 17 /* 16 hex digits and the NUL */

/* A checkpoint being written (see checkpoint.c for the protocol). */
typedef struct df_ckpt_writer {
    int64_t step;
    char run_id[DF_RUN_ID_LEN]; /* the run it belongs to ("" for none), recorded in DONE */
    char run_dir[DF_PATH_MAX], tmp_dir[DF_PATH_MAX], final_dir[DF_PATH_MAX];
    char files[DF_CKPT_MAX_FILES][256];
    int n_files;
} df_ckpt_writer;

/* Starts checkpoint `step` of run `run_id` (16 hex digits, or "" / NULL for none) of run_dir in
 * a fresh temporary folder. */
DF_API df_status df_ckpt_begin(df_ckpt_writer *w, const char *run_dir, int64_t step,
                               const char *run_id);
/* The path to write checkpoint file `rel` (a relative path, folders allowed) at, into path;
 * creates its folder. Every file under the temporary folder at commit time is part of the
 * checkpoint (writers may also write into w->tmp_dir directly). */
DF_API df_status df_ckpt_file(df_ckpt_writer *w, const char *rel, char *path, size_t len);
/* Makes the checkpoint durable and visible (fsync, DONE, rename, fsync), then rotates: with
 * keep_last > 0, removes checkpoints of the same run_id that are older than this one beyond the
 * newest keep_last (this one included). Never this checkpoint, never a newer one; a checkpoint
 * of another run or a damaged one is reported on stderr and neither counted nor removed. On
 * failure the temporary folder is removed and earlier checkpoints are untouched. */
DF_API df_status df_ckpt_commit(df_ckpt_writer *w, int keep_last);
/* Removes the temporary folder (keeps the thread's error message). */
DF_API void df_ckpt_abort(df_ckpt_writer *w);
/* DF_OK when dir has a DONE whose every file matches its size and checksum; otherwise
 * DF_ERR_FORMAT naming the first problem. */
DF_API df_status df_ckpt_verify(const char *dir);
/* The run_id recorded in dir's DONE into out ("" for a checkpoint written before run ids);
 * DF_ERR_FORMAT when DONE is missing or has no valid header. */
DF_API df_status df_ckpt_run_id(const char *dir, char *out, size_t len);
/* The steps of run_dir's checkpoint-<step> folders, ascending (at most max); returns the count. */
DF_API int df_ckpt_list(const char *run_dir, int64_t *steps, int max);
/* The newest checkpoint of run_dir that belongs to run_id (NULL: any run) and verifies; each
 * newer damaged one, or one of another run, is reported on stderr and skipped. Errors:
 * DF_ERR_NOTFOUND when run_dir has no checkpoint of the run; DF_ERR_FORMAT when it has some
 * and every one is damaged (the message names them). */
DF_API df_status df_ckpt_find_latest(const char *run_dir, const char *run_id, char *out,
                                     size_t len);

/* ================================================================ run folders ============== */

/* Who started the run in a folder (OUTPUT/run.json; see run_dir.c). */
typedef struct df_run_identity {
    char run_id[DF_RUN_ID_LEN]; /* 16 hex digits, unique per run */
    char config_hash[DF_RUN_ID_LEN];
    uint64_t seed;
    char started[32]; /* UTC, ISO 8601 */
    char host[64];
    long pid;
} df_run_identity;

/* The advisory lock a training holds on OUTPUT/run.lock for as long as it runs. */
typedef struct df_run_lock {
    int fd; /* -1: not held */
    char path[DF_PATH_MAX];
    bool stale;             /* the previous holder died without releasing it */
    char stale_holder[256]; /* what it had written ("pid P host H since T") */
} df_run_lock;

/* Creates run_dir if needed and locks it for this process. DF_ERR_INVALID naming the holder
 * when another process holds it; a lock left by a process that died is reported on stderr and
 * taken over (l->stale). Release with df_run_lock_release. */
DF_API df_status df_run_lock_acquire(df_run_lock *l, const char *run_dir);
DF_API void df_run_lock_release(df_run_lock *l);
/* A new identity: a fresh run_id, this host, pid and time. */
DF_API df_status df_run_identity_new(df_run_identity *id, uint64_t config_hash, uint64_t seed);
/* OUTPUT/run.json: written atomically; DF_ERR_NOTFOUND when absent on load. */
DF_API df_status df_run_identity_save(const char *run_dir, const df_run_identity *id);
DF_API df_status df_run_identity_load(const char *run_dir, df_run_identity *id);
/* Renames run_dir to the first free "<run_dir>.old-<n>" (the name into moved); never deletes. */
DF_API df_status df_run_move_aside(const char *run_dir, char *moved, size_t len);

/* ================================================================ TensorBoard ============== */

/* An events.out.tfevents.* file (see tensorboard.c for the format). Records are written
 * whole: a failed write cuts the file back to its last whole record and keeps the record
 * queued; the next write that succeeds writes every queued one, in order. */
typedef struct df_tb_writer {
    int fd; /* -1: closed */
    char path[DF_PATH_MAX];
    int64_t good; /* bytes of whole records on disk */
    unsigned char *pending;
    size_t pending_len, pending_cap;
} df_tb_writer;

/* Creates logdir and a new event file in it (with the file_version event). */
DF_API df_status df_tb_open(df_tb_writer *w, const char *logdir);
/* Appends a scalar summary. DF_ERR_IO naming the file when it cannot be written now (the
 * record stays queued, see above). */
DF_API df_status df_tb_scalar(df_tb_writer *w, const char *tag, int64_t step, double value);
/* Appends an image summary: PNG bytes of a height x width image with `channels` channels. */
DF_API df_status df_tb_image(df_tb_writer *w, const char *tag, int64_t step, int height, int width,
                             int channels, const void *png, size_t png_len);
DF_API void df_tb_close(df_tb_writer *w);

/* ================================================================ metrics.jsonl ============ */

/* A line log that a failed write never damages (see metrics_log.c). */
typedef struct df_metrics_log {
    int fd; /* -1: closed */
    char path[DF_PATH_MAX];
    int64_t good;  /* bytes of whole lines on disk */
    char *pending; /* lines not yet written, each ending in '\n' */
    size_t pending_len, pending_cap;
    int64_t pending_lines;
    bool failing; /* for the caller: the last write failed (warn once, note the recovery) */
} df_metrics_log;

/* Opens (creates) path, keeping only its lines whose "step" is <= keep_through. */
DF_API df_status df_metrics_open(df_metrics_log *m, const char *path, int64_t keep_through);
/* Queues `line` (no newline) and writes every queued line. DF_ERR_IO naming the file when the
 * write fails: the file keeps only whole lines and the lines stay queued for the next call. */
DF_API df_status df_metrics_append(df_metrics_log *m, const char *line);
/* Writes the queued lines (DF_OK when none). */
DF_API df_status df_metrics_flush(df_metrics_log *m);
DF_API void df_metrics_close(df_metrics_log *m);

/* ================================================================ the trainer ============== */

/* Random streams a recipe draws from, derived per step from (seed, purpose, rank, step): a
 * resumed run draws exactly what the uninterrupted one did, whatever happened before. */
typedef struct df_step_rng {
    df_philox noise;     /* the diffusion noise */
    df_philox timesteps; /* the training timesteps */
    df_philox dropout;   /* dropout and other per-step randomness */
} df_step_rng;

/* The streams of one micro-batch at one step: Philox keyed by the seed, stream id = purpose
 * (bits 56..63) | `rank` (bits 40..55) | step (bits 0..39). The trainer passes the micro-batch's
 * index in the step's global batch (0 .. world_size x gradient_accumulation_steps - 1) as
 * `rank`, so a micro-batch draws the same whichever process computes it; a step of one
 * micro-batch draws what a run without ranks drew. */
DF_API void df_step_rng_init(df_step_rng *r, uint64_t seed, int rank, int64_t step);

/* The diffusion loss (train/diffusion_loss.c: the formulas), shared by every recipe. */
typedef struct df_diffusion_loss_config {
    df_prediction_type prediction; /* what the model predicts: the target */
    int64_t num_train_timesteps;   /* T: timesteps are drawn from 0 .. T-1 */
    float snr_gamma;               /* min-SNR gamma; 0: off */
    float noise_offset;            /* offset noise scale; 0: off */
    float input_perturbation;      /* extra noise on the model input only; 0: off */
    /* v_prediction's min-SNR weight: false (the unconditional recipe): min(snr, gamma) /
     * (snr + 1), the paper's and diffusers' scripts after v0.21.4; true (text_to_image, as
     * v0.21.4's train_text_to_image.py): min(snr, gamma) / snr. Epsilon is / snr either way. */
    bool min_snr_v_over_snr;
} df_diffusion_loss_config;

/* One draw: noise, timesteps (N, I64), the noisy input x_t and the target (scope rule). */
typedef struct df_diffusion_draw {
    df_tensor *noise, *timesteps, *noisy, *target;
} df_diffusion_draw;

/* Draws noise and timesteps for x0 (N, C, H, W) from the step's streams and forms x_t and the
 * target with sched's add_noise / get_velocity. */
DF_API df_status df_diffusion_draw_sample(const df_diffusion_loss_config *c, df_sched *sched,
                                          const df_tensor *x0, df_step_rng *rng,
                                          df_diffusion_draw *out);
/* As df_diffusion_draw_sample with given noise, timesteps and (optional, NULL: noise) the noise
 * that forms x_t (input perturbation): for parity tests and recipes with their own draws. */
DF_API df_status df_diffusion_prepare(const df_diffusion_loss_config *c, df_sched *sched,
                                      const df_tensor *x0, df_tensor *noise, df_tensor *input_noise,
                                      df_tensor *timesteps, df_diffusion_draw *out);
/* The scalar loss of model_out against the draw's target: per-item means (over mask, an F32
 * (N, 1 or C, H, W) of 0..1, when given) weighted by min-SNR and item_weights (N, optional),
 * then the mean over items. Errors name the mismatched shape. */
DF_API df_status df_diffusion_loss(const df_diffusion_loss_config *c, df_sched *sched,
                                   const df_tensor *model_out, const df_diffusion_draw *d,
                                   const df_tensor *item_weights, const df_tensor *mask,
                                   df_tensor **loss);

/* ================================================================ the VAE loss ============= */

/* The posterior sample of a VAE's latents (train/vae_loss.c): z = mean + exp(logvar / 2) *
 * noise, as diffusers' DiagonalGaussianDistribution.sample(); df_posterior_noise draws the
 * noise (N(0, 1) of mean's shape, in storage order) from g. Every user of latents draws them
 * so: the latent cache keeps (mean, logvar) and gives the same z as encoding. Scope rule. */
DF_API df_tensor *df_posterior_noise(const df_tensor *mean, df_philox *g);
DF_API df_tensor *df_posterior_sample(df_tensor *mean, df_tensor *logvar, df_tensor *noise);

typedef enum df_recon_kind { DF_RECON_L1 = 0, DF_RECON_MSE } df_recon_kind;

typedef struct df_vae_loss_config {
    df_recon_kind recon; /* the reconstruction term: element mean of |d| or d^2 */
    float kl_weight;     /* weight of the batch mean of the per-item KL sums */
} df_vae_loss_config;

/* The loss and its parts (scalars, then the sample and its decoding), scope rule. */
typedef struct df_vae_loss_parts {
    df_tensor *loss, *recon, *kl, *z, *decoded;
} df_vae_loss_parts;

/* The AutoencoderKL loss of pixels (N, C, H, W) in [-1, 1] with the posterior noise given
 * (shape of the latents): recon(decode(z), x) + kl_weight * mean_i KL_i (see vae_loss.c for
 * the formula and how it compares with ldm's). DF_ERR_INVALID naming a size the model refuses
 * or a noise of the wrong shape. */
DF_API df_status df_vae_loss(df_vae *m, const df_vae_loss_config *c, df_tensor *pixels,
                             df_tensor *noise, df_vae_loss_parts *out);

/* ================================================================ the latent cache ========= */

/* cache_latents (train/latent_cache.c): each image's VAE posterior (mean, logvar), and its
 * flip's when random_flip, kept in a folder of the run (OUTPUT/latent_cache) and keyed by the
 * VAE's weights checksum and the transform settings; a cache of another VAE or other settings,
 * or a damaged one, is reported and rebuilt. Draw the latents with df_posterior_sample from
 * the cached (mean, logvar) exactly as from df_vae_encode's: the same noise gives the same z. */
typedef struct df_latent_cache df_latent_cache;

typedef struct df_latent_cache_opts {
    const char *dir;           /* the cache folder (created) */
    const df_dataset *ds;      /* the images (borrowed) */
    df_vae *vae;               /* the frozen VAE (borrowed) */
    df_transform transform;    /* the loader's: center_crop required; random_flip caches flips */
    const df_buckets *buckets; /* the loader's buckets (borrowed), or NULL: resolution square */
    int batch;                 /* entries encoded at once (<= 0: 1) */
} df_latent_cache_opts;

/* Reads the cache of o->dir when its key matches, else (re)builds it: encodes every entry and
 * writes it atomically. Errors: the VAE's, an image's, a size the VAE cannot take, I/O. Free
 * with df_latent_cache_free. */
DF_API df_status df_latent_cache_open(const df_latent_cache_opts *o, df_latent_cache **out);
DF_API void df_latent_cache_free(df_latent_cache *c);
/* Whether this open built the file, and why ("" for a first build; the rejected file's
 * problem otherwise, e.g. "written by another VAE"). */
DF_API bool df_latent_cache_built(const df_latent_cache *c, const char **reason);
/* The posterior of image `image` (flipped or not) as (1, L, h, w) mean and logvar (scope rule). */
DF_API df_status df_latent_cache_get(const df_latent_cache *c, int64_t image, bool flipped,
                                     df_tensor **mean, df_tensor **logvar);
/* The posteriors of a batch's samples (indices modulo the images, batch->flipped), stacked
 * (n, L, h, w). DF_ERR_INVALID when the batch mixes latent sizes or asks for a flip that was
 * not cached. */
DF_API df_status df_latent_cache_batch(const df_latent_cache *c, const df_batch *b,
                                       df_tensor **mean, df_tensor **logvar);
/* The latents a text-to-image step trains on, cached or not: the batch's posterior from the
 * cache when `cache` is given, else from encoding its pixels (no tape: the VAE is frozen);
 * z = df_posterior_sample with noise from g (df_posterior_noise), times scaling_factor. The
 * same batch and g give the same latents either way (within float noise). Scope rule. */
DF_API df_status df_batch_latents(df_vae *vae, const df_latent_cache *cache, const df_batch *b,
                                  df_philox *g, float scaling_factor, df_tensor **out);

/* A parameter group a recipe declares (e.g. the UNet and the text encoder at their own rates):
 * the trainable parameters whose names match glob (fnmatch; NULL: every trainable parameter no
 * earlier group took), with their own learning rate and weight decay. */
/* A data source a recipe trains on (DreamBooth: instance and class images): a folder or pack
 * named by config key dir_key, read by its own loader in its own order; every micro-batch takes
 * one batch from each source. */
#define DF_MAX_RECIPE_SOURCES 4
typedef struct df_recipe_source {
    const char *name;    /* for messages */
    const char *dir_key; /* the config key holding its folder, e.g. "class_data_dir" */
} df_recipe_source;

#define DF_MAX_RECIPE_GROUPS 8
typedef struct df_recipe_group {
    const char *name;    /* for messages */
    const char *glob;    /* which parameters; NULL: the rest */
    double lr;           /* > 0: this group's base learning rate; 0: the config's learning_rate */
    double weight_decay; /* >= 0: this group's; < 0: the config's adam_weight_decay */
} df_recipe_group;

/* What a recipe gives the trainer: the model's registry (the trainer flattens it and trains the
 * parameters marked trainable: the recipe marks them with df_params_set_trainable, e.g. only an
 * adapter's), its parameter groups, a loss for one micro-batch, and an exporter. */
typedef struct df_recipe {
    const char *name;
    void *ctx;
    df_params *params;
    /* Where the frozen parameters came from (a model folder or file; NULL: built here), named
     * with their fingerprint in each checkpoint's trainer_state.json. */
    const char *base_path;
    /* The optimizer's groups, in order; every trainable parameter must fall in one. NULL (0):
     * one group of every trainable parameter at the config's learning rate and decay. */
    const df_recipe_group *groups;
    int n_groups;
    /* The trained UNet's body, to which the trainer applies gradient_checkpointing
     * (df_unet_body_set_gradient_checkpointing); NULL: the recipe has none (the key is then
     * refused when on). */
    df_unet_body *unet_body;
    /* Every image of the data appears this many times per epoch (df_dataset_opts.repeats:
     * textual_inversion's `repeats`); 0: once. */
    int repeats;
    /* The data sources, in order; NULL (0): one, from train_data_dir. */
    const df_recipe_source *sources;
    int n_sources;
    /* The loss reads the batches' captions: every image must have one (or default_caption);
     * the recipe's schema holds DF_CFG_CAPTION_FIELDS. */
    bool needs_captions;
    /* The loss takes batches of any size of a bucket: the recipe's schema holds
     * DF_CFG_BUCKET_FIELDS and the trainer buckets the sources when enable_bucket is on. */
    bool buckets;
    /* The loss takes latents from a df_latent_cache, not pixels: the loaders decode no image
     * (df_loader_opts.no_pixels; batches carry indices, captions and flips). */
    bool no_pixels;
    /* The scalar loss of one micro-batch into *loss (scope rule; the trainer owns the scope):
     * batches[i] from source i. An error (a bad batch, a shape the model refuses) stops the run
     * with its message. */
    df_status (*loss)(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                      df_tensor **loss);
    /* Writes the trained model as a diffusers folder into dir (which exists). The parameters
     * hold the weights to export (the trainer swaps EMA weights in around the call). */
    df_status (*export_model)(void *ctx, const char *dir);
    /* Generates validation samples as a U8 (H, W, C) grid (scope rule); may be NULL. */
    df_status (*validate)(void *ctx, int64_t step, df_tensor **grid);
    void (*free)(void *ctx);
} df_recipe;

/* The caption keys of a recipe that trains on captions (df_recipe.needs_captions): put
 * DF_CFG_CAPTION_FIELDS in its field list; the trainer reads them into each source's
 * df_dataset_opts (datasets.h: which images have no caption, what the template does). */
#define DF_CFG_CAPTION_FIELDS                                                                      \
    {"caption_column",                                                                             \
     DF_CFG_STRING,                                                                                \
     "text",                                                                                       \
     0,                                                                                            \
     0,                                                                                            \
     NULL,                                                                                         \
     "metadata.jsonl column holding the captions (diffusers' default: text)"},                     \
        {"caption_template",                                                                       \
         DF_CFG_STRING,                                                                            \
         NULL,                                                                                     \
         0,                                                                                        \
         0,                                                                                        \
         NULL,                                                                                     \
         "e.g. \"an emoji of {}\": {} is each image's caption (unset: the caption as is)"},        \
    {                                                                                              \
        "default_caption", DF_CFG_STRING, NULL, 0, 0, NULL,                                        \
            "caption of images without one (unset: such images are an error naming their count)"   \
    }

/* The aspect-ratio bucket keys (kohya's names; datasets.h df_bucket_opts) of a recipe that
 * trains on buckets (df_recipe.buckets): put DF_CFG_BUCKET_FIELDS in its field list. With
 * enable_bucket, `resolution` is the buckets' area side and every batch is one bucket's. */
#define DF_CFG_BUCKET_FIELDS                                                                       \
    {"enable_bucket",                                                                              \
     DF_CFG_BOOL,                                                                                  \
     "false",                                                                                      \
     0,                                                                                            \
     0,                                                                                            \
     NULL,                                                                                         \
     "aspect-ratio buckets: each image to the bucket of the closest aspect ratio"},                \
        {"min_bucket_reso", DF_CFG_INT, "256", 8, 16384, NULL, "smallest bucket side"},            \
        {"max_bucket_reso", DF_CFG_INT, "1024", 8, 16384, NULL, "largest bucket side"}, {          \
        "bucket_reso_steps", DF_CFG_INT, "64", 1, 4096, NULL, "bucket sides are multiples of this" \
    }

/* The trainer's own config keys (diffusers' training flag names); recipes append theirs. */
extern const df_cfg_field df_trainer_schema[];
extern const int df_trainer_schema_len;

typedef struct df_train_opts {
    const char *resume;       /* NULL, "latest" or a checkpoint folder */
    bool overwrite;           /* a run folder holding checkpoints is moved aside, not refused */
    bool allow_config_change; /* resume even when the config hash differs */
    const char *config_path;  /* for messages */
    int64_t stop_after_steps; /* > 0: behave as if SIGTERM arrived after this step */
    df_run_lock *lock;        /* output_dir already claimed by df_train_claim (borrowed; the
                                 caller releases it), or NULL: df_train_run claims it */
    int rank, world_size;     /* this process among world_size (0 and 1 without MPI); 0 for
                                 world_size means 1 */
} df_train_opts;

/* ================================================================ data parallelism ========= */

/* train/dist.c. Joins MPI when a launcher (mpirun, srun) started this process (Open MPI's, PMI's
 * or PMIx's variables in the environment) into *rank of *world; otherwise 0 of 1 and MPI is
 * never touched. Call once, before any thread starts; df_dist_finalize at exit. */
DF_API df_status df_dist_init(int *rank, int *world);
DF_API void df_dist_finalize(void);
/* Whether this process is one of several ranks. */
DF_API bool df_dist_active(void);
/* Replaces x (n floats, the same n on every rank) by the sum over ranks, added in rank order:
 * bitwise the same on every rank and equal to a single process adding the ranks' buffers
 * in turn. A no-op for one process. */
DF_API df_status df_dist_sum_f32(float *x, int64_t n);
/* Every rank's n doubles, in rank order, into out (world * n). */
DF_API df_status df_dist_gather_f64(const double *x, int n, double *out);
/* Rank 0's string s (len bytes) on every rank. */
DF_API df_status df_dist_bcast_str(char *s, size_t len);
DF_API void df_dist_barrier(void);
/* Prints "rank R of W: msg" and ends the whole job (MPI_Abort; _exit without MPI). */
DF_API void df_dist_abort(const char *msg) __attribute__((noreturn));

/* Claims the config's output_dir for a training with these options, cheaply, before the model
 * is built: takes the folder's lock (refused when another process holds it); refuses a fresh
 * start (no resume) in a folder that holds checkpoints, or with opts->overwrite moves the old
 * run aside; refuses `--resume DIR` when DIR does not exist. Release with df_run_lock_release. */
DF_API df_status df_train_claim(const df_config *cfg, const df_train_opts *opts, df_run_lock *lock);

/* Runs the training loop of the config's recipe to max_train_steps (or until SIGTERM/SIGUSR1,
 * which finish the step, write a checkpoint and return DF_OK). Claims output_dir first (see
 * df_train_claim) unless opts->lock holds it. Writes OUTPUT/run.json, config.yaml,
 * metrics.jsonl, TensorBoard events, samples/, checkpoint-<step>/ folders and, at the end, the
 * exported model in OUTPUT. */
DF_API df_status df_train_run(const df_config *cfg, df_recipe *recipe, const df_train_opts *opts);
/* `diffusion train --dry-run` (train/memory_plan.c): prints to f what the run will hold before
 * the trainer allocates it: trainable and frozen weights, gradients, optimizer state, EMA, their
 * total, and the resident set with the model built. Activations are measured per step
 * (metrics.jsonl), not estimated. DF_ERR_INVALID for an unknown optimizer. */
DF_API df_status df_train_memory_plan(const df_config *cfg, const df_recipe *r, FILE *f);

/* The top-level string `key` of a YAML file (e.g. `recipe`), "" when absent. */
DF_API df_status df_config_peek(const char *path, const char *key, char *out, size_t len);

/* ================================================================ model card ================= */

/* What an export's README.md says (train/model_card.c). */
typedef struct df_model_card {
    const char *recipe;     /* the recipe's name */
    const char *base_model; /* the base folder or file; NULL: trained from scratch */
    const char *const *datasets;
    int n_datasets;
    const df_config *config; /* written as YAML; may be NULL */
} df_model_card;

/* The licence a base model names: *name from its README.md front matter (`license:`) or the first
 * line of a LICENSE[.md|.txt] file in its folder (beside a single file), whose path goes to
 * *file; both "" when it names none. */
DF_API df_status df_model_card_license(const char *base, char *name, size_t name_len, char *file,
                                       size_t file_len);
/* Writes DIR/README.md (front matter with `license:` and `base_model:`, the recipe, the data sets,
 * the licence, the config) and copies the base's licence file into DIR. A base naming no licence
 * is a warning on stderr ("unknown" in the card). */
DF_API df_status df_model_card_write(const char *dir, const df_model_card *card);

#endif
