/* trainer.c — the training loop every recipe shares (design §8):
 *
 *   for step in [start, max_train_steps):
 *       K = world_size x k micro-batches of the global order, k of them this rank's:
 *           loss_i = recipe.loss(batch_i) / K; backward (gradients add up)
 *       ranks: the gradients summed in rank order (train/dist.c), the decisions agreed
 *       non-finite loss or gradient -> skip: weights, optimizer and EMA untouched, counted;
 *                                      10 in a row abort the run
 *       otherwise: clip to max_grad_norm, lr = schedule(step), optimizer step, EMA step
 *       log (metrics.jsonl, TensorBoard, progress), validation grid, checkpoint, signals
 *
 * Exact resume: everything a step depends on is either in the checkpoint (weights, optimizer
 * and EMA state, the loader cursor, counters) or derived from (seed, step) (the per-step random
 * streams), so N steps + resume + M steps equals N + M steps bit for bit. A checkpoint holds
 * the exported diffusers folder (EMA weights when use_ema), plus `training/` with the raw
 * weights, optimizer and EMA state, trainer_state.json and the resolved config.
 */
#include "train/train.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_NONFINITE_IN_A_ROW 10

/* Stream purposes for df_step_rng (high bits of the Philox stream id). */
enum { STREAM_NOISE = 1, STREAM_TIMESTEPS = 2, STREAM_DROPOUT = 3 };

const df_cfg_field df_trainer_schema[] = {
    /* choices: the recipe table's names, filled in by recipes/recipe_table.c */
    {"recipe", DF_CFG_STRING, "unconditional", 0, 0, "unconditional", "which recipe trains"},
    {"output_dir", DF_CFG_STRING, "runs/default", 0, 0, NULL,
     "the run folder: config, metrics, samples, checkpoints, the exported model", true},
    {"seed", DF_CFG_INT, "0", 0, 9007199254740991.0, NULL,
     "seeds initialisation, data order and every per-step random stream"},
    {"train_data_dir", DF_CFG_STRING, NULL, 0, 0, NULL,
     "image folder (metadata.jsonl or .txt captions) or an HDF5 pack"},
    {"resolution", DF_CFG_INT, "32", 8, 4096, NULL, "training image side in pixels"},
    {"center_crop", DF_CFG_BOOL, "true", 0, 0, NULL, "center crop (else random crop)"},
    {"random_flip", DF_CFG_BOOL, "true", 0, 0, NULL, "flip images horizontally at random"},
    {"skip_bad_images", DF_CFG_BOOL, "false", 0, 0, NULL,
     "skip unreadable images (counted, reported) instead of stopping"},
    {"dataloader_num_workers", DF_CFG_INT, "2", 1, 64, NULL, "image decoding threads", true},
    {"train_batch_size", DF_CFG_INT, "16", 1, 65536, NULL, "images per micro-batch"},
    {"gradient_accumulation_steps", DF_CFG_INT, "1", 1, 4096, NULL,
     "micro-batches per optimizer step"},
    {"max_train_steps", DF_CFG_INT, "1000", 1, 1e12, NULL, "optimizer steps to train"},
    {"optimizer", DF_CFG_STRING, "adamw", 0, 0, "adamw|adam|sgd|lion", "update rule"},
    {"learning_rate", DF_CFG_FLOAT, "1e-4", 0, 10, NULL, "peak learning rate"},
    {"scale_lr", DF_CFG_BOOL, "false", 0, 0, NULL,
     "multiply the learning rate by batch x accumulation x processes"},
    {"lr_scheduler", DF_CFG_STRING, "cosine", 0, 0,
     "constant|constant_with_warmup|linear|cosine|cosine_with_restarts|polynomial",
     "learning-rate schedule (diffusers' get_scheduler names)"},
    {"lr_warmup_steps", DF_CFG_INT, "500", 0, 1e12, NULL, "linear warm-up steps"},
    {"lr_num_cycles", DF_CFG_FLOAT, "0.5", 0, 1e6, NULL, "cosine cycles (restarts: count)"},
    {"lr_power", DF_CFG_FLOAT, "1.0", 0, 100, NULL, "polynomial decay power"},
    {"adam_beta1", DF_CFG_FLOAT, "0.95", 0, 0.999999, NULL, "Adam beta1 (Lion beta1)"},
    {"adam_beta2", DF_CFG_FLOAT, "0.999", 0, 0.999999, NULL, "Adam beta2 (Lion beta2)"},
    {"adam_weight_decay", DF_CFG_FLOAT, "1e-6", 0, 10, NULL, "weight decay"},
    {"adam_epsilon", DF_CFG_FLOAT, "1e-8", 0, 1, NULL, "Adam epsilon"},
    {"max_grad_norm", DF_CFG_FLOAT, "1.0", 0, 1e9, NULL, "clip the global gradient norm (0: off)"},
    {"use_ema", DF_CFG_BOOL, "true", 0, 0, NULL, "keep an EMA of the weights; export it"},
    {"ema_max_decay", DF_CFG_FLOAT, "0.9999", 0, 1, NULL, "EMA decay upper bound"},
    {"ema_min_decay", DF_CFG_FLOAT, "0.0", 0, 1, NULL, "EMA decay lower bound"},
    {"ema_inv_gamma", DF_CFG_FLOAT, "1.0", 1e-9, 1e9, NULL, "EMA warm-up inverse gamma"},
    {"ema_power", DF_CFG_FLOAT, "0.75", 0, 100, NULL, "EMA warm-up power"},
    {"mixed_precision", DF_CFG_STRING, "no", 0, 0, "no", "float32 training only (for now)"},
    {"gradient_checkpointing", DF_CFG_BOOL, "false", 0, 0, NULL,
     "recompute the UNet's resnet and transformer blocks in backward: less memory, about one "
     "more forward of time, the same gradients bit for bit (so a resume may switch it)",
     true},
    {"checkpointing_steps", DF_CFG_INT, "500", 0, 1e12, NULL,
     "checkpoint every N steps (0: only at the end)", true},
    {"checkpoints_total_limit", DF_CFG_INT, "0", 0, 1e6, NULL,
     "keep this run's newest N checkpoints (0: all); others' and damaged ones are kept", true},
    {"logging_steps", DF_CFG_INT, "10", 1, 1e12, NULL, "a log line every N steps (off a terminal)",
     true},
    {"validation_steps", DF_CFG_INT, "0", 0, 1e12, NULL,
     "sample a validation grid every N steps (0: only at the end)", true},
    {"num_validation_images", DF_CFG_INT, "16", 0, 1024, NULL, "images in a validation grid", true},
    {"inject_nan_at_step", DF_CFG_INT, "-1", -1, 1e12, NULL,
     "testing aid: poison the gradients of this step (-1: never)"},
};
const int df_trainer_schema_len = (int)(sizeof df_trainer_schema / sizeof df_trainer_schema[0]);

/* ------------------------------------------------------------------ signals ------------------ */

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

/* ------------------------------------------------------------------ state -------------------- */

typedef struct trainer {
    const df_config *cfg;
    df_recipe *recipe;
    char out_dir[DF_PATH_MAX];
    uint64_t seed;
    int rank, world_size;                          /* in the step streams and trainer_state.json */
    int n_groups, group_end[DF_MAX_RECIPE_GROUPS]; /* params[group_end[g-1] .. group_end[g]) */
    uint32_t base_crc; /* CRC-32C of the frozen parameters (names, shapes, values) */
    int n_frozen;
    int64_t step, max_steps;
    int accum;
    df_tensor **params; /* trainable parameters, in registry order */
    const char **names;
    int n_params;
    df_optim *optim;
    df_lr_schedule sched;
    df_ema *ema;
    /* the data sources (source 0: train_data_dir unless the recipe names its own) */
    int n_sources;
    df_dataset *data[DF_MAX_RECIPE_SOURCES];
    df_loader *loader[DF_MAX_RECIPE_SOURCES];
    df_buckets buckets[DF_MAX_RECIPE_SOURCES]; /* enable_bucket: each source's */
    df_loader_cursor cursor[DF_MAX_RECIPE_SOURCES];
    int64_t epoch;
    int64_t skipped_steps, nonfinite_in_a_row;
    df_metrics_log metrics;
    df_tb_writer tb;
    bool tb_failing; /* the last TensorBoard write failed (warned once until it recovers) */
    df_run_lock lock;
    df_run_identity identity;
    bool tty;
    double step_secs, mpi_secs; /* time in steps, and in the gradient sum and agreement */
    double started;             /* when this process's first step began */
    int64_t first_step; /* the step this process started from (resumed runs: the checkpoint's) */
} trainer;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The global batch: the micro-batches of one optimizer step over every rank. */
static int64_t global_batch(int world, int64_t batch, int64_t accum) {
    return (int64_t)world * batch * accum;
}

void df_step_rng_init(df_step_rng *r, uint64_t seed, int rank, int64_t step) {
    uint64_t s = ((uint64_t)rank & 0xffff) << 40 | ((uint64_t)step & ((1ull << 40) - 1));
    df_philox_init(&r->noise, seed, (uint64_t)STREAM_NOISE << 56 | s);
    df_philox_init(&r->timesteps, seed, (uint64_t)STREAM_TIMESTEPS << 56 | s);
    df_philox_init(&r->dropout, seed, (uint64_t)STREAM_DROPOUT << 56 | s);
}

static void step_rng(const trainer *t, int64_t step, df_step_rng *r) {
    df_step_rng_init(r, t->seed, t->rank, step);
}

/* ------------------------------------------------------------------ setup -------------------- */

/* The frozen base's fingerprint: CRC-32C over every frozen parameter's name, shape and values,
 * in registry order. Checkpoints hold only what training changes; this ties them to the base. */
static void fingerprint_base(trainer *t) {
    const df_params *reg = t->recipe->params;
    uint32_t crc = 0;
    t->n_frozen = 0;
    for (int i = 0; i < reg->n; i++) {
        const df_param *p = &reg->items[i];
        if (p->trainable) continue;
        t->n_frozen++;
        crc = df_crc32c_update(crc, p->name, strlen(p->name) + 1);
        crc = df_crc32c_update(crc, p->tensor->shape, sizeof(int64_t) * (size_t)p->tensor->ndim);
        crc = df_crc32c_update(crc, p->tensor->data, (size_t)p->tensor->numel * sizeof(float));
    }
    t->base_crc = crc;
}

/* t->params in the recipe's group order (registry order within a group), and where each group
 * ends in t->group_end. No groups: one group of every trainable parameter. */
static df_status collect_groups(trainer *t) {
    const df_recipe *r = t->recipe;
    const df_params *reg = r->params;
    int n_groups = r->n_groups > 0 ? r->n_groups : 1;
    if (n_groups > DF_MAX_RECIPE_GROUPS)
        return df_error(DF_ERR_INVALID, "recipe %s: %d parameter groups, at most %d", r->name,
                        n_groups, DF_MAX_RECIPE_GROUPS);
    bool *taken = calloc((size_t)(reg->n ? reg->n : 1), sizeof *taken);
    if (!taken) return df_error(DF_ERR_NOMEM, "parameter groups: out of memory");
    for (int g = 0; g < n_groups; g++) {
        const char *glob = r->n_groups > 0 ? r->groups[g].glob : NULL;
        for (int i = 0; i < reg->n; i++) {
            if (!reg->items[i].trainable || taken[i]) continue;
            if (glob && fnmatch(glob, reg->items[i].name, 0) != 0) continue;
            taken[i] = true;
            t->params[t->n_params] = reg->items[i].tensor;
            t->names[t->n_params++] = reg->items[i].name;
        }
        t->group_end[g] = t->n_params;
    }
    df_status st = DF_OK;
    for (int i = 0; st == DF_OK && i < reg->n; i++)
        if (reg->items[i].trainable && !taken[i])
            st = df_error(DF_ERR_INVALID, "recipe %s: trainable parameter %s is in no group",
                          r->name, reg->items[i].name);
    free(taken);
    t->n_groups = n_groups;
    return st;
}

static df_status build_optimizer(trainer *t) {
    const df_config *c = t->cfg;
    df_optim_kind kind;
    DF_TRY(df_optim_kind_parse(df_config_str(c, "optimizer"), &kind));
    df_optim_hparams h = df_optim_hparams_default(kind);
    double lr = df_config_float(c, "learning_rate");
    if (df_config_bool(c, "scale_lr"))
        lr = df_scale_lr(lr, (int)df_config_int(c, "train_batch_size"), t->accum, t->world_size);
    h.lr = lr;
    h.weight_decay = df_config_float(c, "adam_weight_decay");
    h.beta1 = df_config_float(c, "adam_beta1");
    h.beta2 = df_config_float(c, "adam_beta2");
    h.eps = df_config_float(c, "adam_epsilon");
    DF_TRY(df_optim_hparams_check(kind, &h));
    df_param_group groups[DF_MAX_RECIPE_GROUPS];
    for (int g = 0, start = 0; g < t->n_groups; start = t->group_end[g++]) {
        groups[g] = (df_param_group){.params = t->params + start,
                                     .names = t->names + start,
                                     .n = t->group_end[g] - start,
                                     .h = h};
        const df_recipe_group *rg = t->recipe->n_groups > 0 ? &t->recipe->groups[g] : NULL;
        if (rg && rg->lr > 0) groups[g].h.lr = rg->lr;
        if (rg && rg->weight_decay >= 0) groups[g].h.weight_decay = rg->weight_decay;
        DF_TRY(df_optim_hparams_check(kind, &groups[g].h));
    }
    DF_TRY(df_optim_new(kind, groups, t->n_groups, &t->optim));
    DF_TRY(df_lr_schedule_init(&t->sched, df_config_str(c, "lr_scheduler"),
                               df_config_int(c, "lr_warmup_steps"), t->max_steps, lr));
    t->sched.num_cycles = df_config_float(c, "lr_num_cycles");
    t->sched.power = df_config_float(c, "lr_power");
    DF_TRY(df_lr_schedule_check(&t->sched));
    if (df_config_bool(c, "use_ema")) {
        df_ema_config e = df_ema_config_default();
        e.decay = df_config_float(c, "ema_max_decay");
        e.min_decay = df_config_float(c, "ema_min_decay");
        e.use_ema_warmup = true;
        e.inv_gamma = df_config_float(c, "ema_inv_gamma");
        e.power = df_config_float(c, "ema_power");
        DF_TRY(df_ema_config_check(&e));
        DF_TRY(df_ema_new(&e, t->params, t->names, t->n_params, &t->ema));
    }
    return DF_OK;
}

/* The config key of source i's folder. */
static const char *source_key(const trainer *t, int i) {
    return t->recipe->n_sources > 0 ? t->recipe->sources[i].dir_key : "train_data_dir";
}

/* Opens every data source, each with its own loader from its cursor. Source 0 shuffles with
 * the run's seed (as a run with one source always did); source i with the seed plus i, so two
 * sources of one folder draw different orders. */
static df_status open_data(trainer *t) {
    const df_config *c = t->cfg;
    for (int i = 0; i < t->n_sources; i++) {
        const char *key = source_key(t, i), *dir = df_config_str(c, key);
        if (!*dir) return df_error(DF_ERR_INVALID, "%s is not set (%s)", key, "config");
        df_dataset_opts o = df_dataset_opts_default();
        o.skip_bad_images = df_config_bool(c, "skip_bad_images");
        if (t->recipe->repeats > 0) o.repeats = t->recipe->repeats;
        if (t->recipe->needs_captions) {
            o.caption_column = df_config_str(c, "caption_column");
            o.caption_template = df_config_str(c, "caption_template");
            const char *def = df_config_str(c, "default_caption");
            o.default_caption = *def ? def : NULL;
            o.require_captions = true;
        }
        DF_TRY(df_dataset_open(dir, &o, &t->data[i]));
        if (df_dataset_len(t->data[i]) == 0)
            return df_error(DF_ERR_INVALID, "%s: the dataset is empty (%s)", dir, key);
        df_loader_opts lo = df_loader_opts_default((int)df_config_int(c, "train_batch_size"),
                                                   (int)df_config_int(c, "resolution"));
        lo.seed = t->seed + (uint64_t)i;
        lo.workers = (int)df_config_int(c, "dataloader_num_workers");
        lo.prefetch = 2 * lo.workers;
        lo.transform.center_crop = df_config_bool(c, "center_crop");
        lo.transform.random_flip = df_config_bool(c, "random_flip");
        lo.no_pixels = t->recipe->no_pixels;
        if (t->recipe->buckets && df_config_bool(c, "enable_bucket")) {
            df_bucket_opts bo = {.resolution = (int)df_config_int(c, "resolution"),
                                 .min_reso = (int)df_config_int(c, "min_bucket_reso"),
                                 .max_reso = (int)df_config_int(c, "max_bucket_reso"),
                                 .reso_steps = (int)df_config_int(c, "bucket_reso_steps")};
            DF_TRY(df_buckets_assign(t->data[i], &bo, &t->buckets[i]));
            lo.buckets = &t->buckets[i];
            const df_buckets *bk = &t->buckets[i];
            fprintf(stderr, "diffusion: %s: %d buckets, in use:", key, bk->n);
            for (int b = 0; b < bk->n; b++) {
                int64_t count = 0;
                for (int64_t k = 0; k < bk->n_images; k++) count += bk->bucket[k] == b;
                if (count)
                    fprintf(stderr, " %dx%d (%lld)", bk->resos[b][0], bk->resos[b][1],
                            (long long)count);
            }
            fprintf(stderr, "\n");
        }
        lo.start = t->cursor[i];
        DF_TRY(df_loader_new(t->data[i], &lo, &t->loader[i]));
    }
    return DF_OK;
}

/* ------------------------------------------------------------------ checkpoints -------------- */

static df_status write_state_json(const trainer *t, const char *path) {
    cJSON *o = cJSON_CreateObject();
    char hash[32];
    snprintf(hash, sizeof hash, "%016" PRIx64, df_config_hash(t->cfg));
    cJSON_AddNumberToObject(o, "step", (double)t->step);
    cJSON_AddNumberToObject(o, "epoch", (double)t->cursor[0].epoch);
    cJSON *cur = cJSON_AddObjectToObject(o, "loader_cursor"); /* source 0 */
    cJSON_AddNumberToObject(cur, "epoch", (double)t->cursor[0].epoch);
    cJSON_AddNumberToObject(cur, "position", (double)t->cursor[0].position);
    if (t->n_sources > 1) { /* every source's, in the recipe's order */
        cJSON *all = cJSON_AddArrayToObject(o, "loader_cursors");
        for (int i = 0; i < t->n_sources; i++) {
            cJSON *ci = cJSON_CreateObject();
            cJSON_AddNumberToObject(ci, "epoch", (double)t->cursor[i].epoch);
            cJSON_AddNumberToObject(ci, "position", (double)t->cursor[i].position);
            cJSON_AddItemToArray(all, ci);
        }
    }
    cJSON_AddNumberToObject(o, "seed", (double)t->seed);
    if (t->n_frozen > 0) {
        cJSON *base = cJSON_AddObjectToObject(o, "frozen_base");
        char crc[16];
        snprintf(crc, sizeof crc, "%08" PRIx32, t->base_crc);
        cJSON_AddStringToObject(base, "path", t->recipe->base_path ? t->recipe->base_path : "");
        cJSON_AddNumberToObject(base, "tensors", t->n_frozen);
        cJSON_AddStringToObject(base, "crc32c", crc);
    }
    /* the loader cursors above are the global order's (every rank reads all of it) */
    cJSON_AddNumberToObject(o, "world_size", t->world_size);
    cJSON_AddNumberToObject(o, "train_batch_size",
                            (double)df_config_int(t->cfg, "train_batch_size"));
    cJSON_AddNumberToObject(o, "gradient_accumulation_steps", t->accum);
    cJSON_AddNumberToObject(
        o, "global_batch",
        (double)global_batch(t->world_size, df_config_int(t->cfg, "train_batch_size"), t->accum));
    cJSON_AddStringToObject(o, "config_hash", hash);
    cJSON_AddNumberToObject(o, "skipped_steps", (double)t->skipped_steps);
    cJSON_AddNumberToObject(o, "nonfinite_in_a_row", (double)t->nonfinite_in_a_row);
    /* the streams the next step draws from: (key, stream, counter, buf_used) each */
    df_step_rng r;
    step_rng(t, t->step, &r);
    cJSON *rng = cJSON_AddObjectToObject(o, "rng");
    const df_philox *streams[] = {&r.noise, &r.timesteps, &r.dropout};
    const char *names[] = {"noise", "timesteps", "dropout"};
    for (int i = 0; i < 3; i++) {
        char buf[96];
        snprintf(buf, sizeof buf, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %d", streams[i]->key,
                 streams[i]->stream, streams[i]->counter, streams[i]->buf_used);
        cJSON_AddStringToObject(rng, names[i], buf);
    }
    return df_json_write_object(o, path);
}

/* Exports the model (EMA weights swapped in when use_ema) into dir. */
static df_status export_to(trainer *t, const char *dir) {
    DF_TRY(df_mkdirs(dir));
    if (t->ema) {
        df_ema_store(t->ema);
        df_ema_copy_to(t->ema);
    }
    df_status st = t->recipe->export_model(t->recipe->ctx, dir);
    if (t->ema) df_ema_restore(t->ema);
    if (st != DF_OK) return st;
    /* the model card: recipe, base, data, config, the base's licence passed on */
    const char *data[DF_MAX_RECIPE_SOURCES];
    int n = 0;
    for (int i = 0; i < t->recipe->n_sources || (i == 0 && t->recipe->n_sources == 0); i++)
        data[n++] = df_config_str(t->cfg, source_key(t, i));
    df_model_card card = {.recipe = t->recipe->name,
                          .base_model = t->recipe->base_path,
                          .datasets = data,
                          .n_datasets = n,
                          .config = t->cfg};
    return df_model_card_write(dir, &card);
}

/* Moves entry `name` of folder `from` into the run folder, replacing what is there (a folder
 * it replaces is first renamed into `old`, removed by the caller). */
static df_status move_into_place(const trainer *t, const char *from, const char *old,
                                 const char *name) {
    char src[DF_PATH_MAX], dst[DF_PATH_MAX], aside[DF_PATH_MAX];
    struct stat sb;
    DF_TRY(df_pathf(src, sizeof src, "%s/%s", from, name));
    DF_TRY(df_pathf(dst, sizeof dst, "%s/%s", t->out_dir, name));
    if (lstat(dst, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        DF_TRY(df_mkdirs(old));
        DF_TRY(df_pathf(aside, sizeof aside, "%s/%s", old, name));
        if (rename(dst, aside) != 0)
            return df_error(DF_ERR_IO, "%s: cannot replace: %s", dst, strerror(errno));
    }
    if (rename(src, dst) != 0)
        return df_error(DF_ERR_IO, "%s: rename failed: %s", dst, strerror(errno));
    return DF_OK;
}

/* The final export into the run folder, atomic per entry: written whole into
 * OUTPUT/.export.tmp, then each entry renamed into place, model_index.json last (a folder
 * whose model_index.json names a component holds that component whole). A failed or
 * interrupted export leaves the earlier model_index.json and checkpoints as they were. */
static df_status export_final(trainer *t) {
    char tmp[DF_PATH_MAX], old[DF_PATH_MAX], names[64][256];
    int n = 0;
    DF_TRY(df_pathf(tmp, sizeof tmp, "%s/.export.tmp", t->out_dir));
    DF_TRY(df_pathf(old, sizeof old, "%s/.export.old", t->out_dir));
    DF_TRY(df_remove_tree(tmp));
    DF_TRY(df_remove_tree(old));
    df_status st = export_to(t, tmp);
    DIR *d = st == DF_OK ? opendir(tmp) : NULL;
    if (st == DF_OK && !d) st = df_error(DF_ERR_IO, "%s: cannot list: %s", tmp, strerror(errno));
    struct dirent *e;
    bool has_index = false;
    while (st == DF_OK && (e = readdir(d))) { /* the names first: the folder changes below */
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (strcmp(e->d_name, "model_index.json") == 0)
            has_index = true;
        else if (n < 64 && strlen(e->d_name) < sizeof names[0])
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
        else
            st = df_error(DF_ERR_INVALID, "%s: too many entries or a long name", tmp);
    }
    if (d) closedir(d);
    for (int i = 0; i < n && st == DF_OK; i++) st = move_into_place(t, tmp, old, names[i]);
    if (st == DF_OK && has_index) st = move_into_place(t, tmp, old, "model_index.json");
    if (st != DF_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", df_last_error());
        df_remove_tree(tmp);
        return df_error(DF_ERR_IO, "exporting the model into %s failed: %s", t->out_dir, msg);
    }
    df_remove_tree(tmp);
    df_remove_tree(old);
    return DF_OK;
}

static df_status write_checkpoint(trainer *t) {
    df_ckpt_writer w;
    char path[DF_PATH_MAX];
    DF_TRY(df_ckpt_begin(&w, t->out_dir, t->step, t->identity.run_id));
    df_status st = export_to(t, w.tmp_dir);
    if (st == DF_OK) st = df_ckpt_file(&w, "training/model.safetensors", path, sizeof path);
    if (st == DF_OK) /* what training changes; the frozen base is named in trainer_state.json */
        st = df_params_save_select(t->recipe->params, path,
                                   &(df_param_select){.trainable_only = true});
    if (st == DF_OK) st = df_ckpt_file(&w, "training/optimizer.safetensors", path, sizeof path);
    if (st == DF_OK) st = df_optim_state_save(t->optim, path);
    if (st == DF_OK && t->ema) st = df_ckpt_file(&w, "training/ema.safetensors", path, sizeof path);
    if (st == DF_OK && t->ema) st = df_ema_state_save(t->ema, path);
    if (st == DF_OK) st = df_ckpt_file(&w, "training/trainer_state.json", path, sizeof path);
    if (st == DF_OK) st = write_state_json(t, path);
    if (st == DF_OK) st = df_ckpt_file(&w, "training/config.yaml", path, sizeof path);
    if (st == DF_OK) st = df_config_save(t->cfg, path);
    if (st != DF_OK) {
        df_ckpt_abort(&w);
        return st;
    }
    return df_ckpt_commit(&w, (int)df_config_int(t->cfg, "checkpoints_total_limit"));
}

static df_status json_number(const cJSON *o, const char *key, const char *path, double *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(it))
        return df_error(DF_ERR_FORMAT, "%s: field '%s' missing or not a number", path, key);
    *out = it->valuedouble;
    return DF_OK;
}

/* The value of key i as YAML text ("[8, 16]", "3e-3", "\"path\""). */
static void value_text(const df_config *c, int i, char *out, size_t len) {
    if (c->schema[i].type == DF_CFG_FLOAT) { /* the shortest text that reads back the same */
        double v = c->values[i].num;
        for (int digits = 1; digits <= 17; digits++) {
            snprintf(out, len, "%.*g", digits, v);
            if (strtod(out, NULL) == v) return;
        }
        return;
    }
    df_config one = {.schema = &c->schema[i], .n = 1, .values = &c->values[i]};
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    out[0] = '\0';
    if (!f) return;
    df_config_write(&one, f, false);
    fclose(f);
    /* the last line is "<indent><last key segment>: <value>" */
    char *last = buf;
    for (char *p = buf; *p; p++)
        if (*p == '\n' && p[1]) last = p + 1;
    char *colon = strstr(last, ": ");
    snprintf(out, len, "%s", colon ? colon + 2 : last);
    out[strcspn(out, "\n")] = '\0';
    free(buf);
}

/* "key: old -> new, ..." for each non-operational key whose value differs between cfg and the
 * config saved in checkpoint `dir` (training/config.yaml); a note when that file is unreadable. */
static bool batch_key(const char *key) {
    return strcmp(key, "train_batch_size") == 0 || strcmp(key, "gradient_accumulation_steps") == 0;
}

/* ... and with skip_batch, leaving out the keys that split the global batch; returns the
 * number of keys that differ (-1: the saved config is unreadable). */
static int config_changes(const df_config *cfg, const char *dir, bool skip_batch, char *out,
                          size_t len) {
    char path[DF_PATH_MAX];
    df_config old;
    df_config_init(&old, cfg->schema, cfg->n);
    out[0] = '\0';
    if (df_pathf(path, sizeof path, "%s/training/config.yaml", dir) != DF_OK ||
        df_config_load_yaml(&old, path) != DF_OK) {
        snprintf(out, len, "its training/config.yaml cannot be compared (%s)", df_last_error());
        df_config_free(&old);
        return -1;
    }
    size_t used = 0;
    int count = 0;
    for (int i = 0; i < cfg->n && used < len; i++) {
        if (cfg->schema[i].operational || (skip_batch && batch_key(cfg->schema[i].key))) continue;
        char a[256], b[256];
        value_text(&old, i, a, sizeof a);
        value_text(cfg, i, b, sizeof b);
        if (strcmp(a, b) == 0) continue;
        count++;
        int w = snprintf(out + used, len - used, "%s%s: %s -> %s", used ? ", " : "",
                         cfg->schema[i].key, a, b);
        used += w > 0 ? (size_t)w : 0;
    }
    if (!out[0])
        snprintf(out, len, "its config hash differs but no key's value does (a new build?)");
    df_config_free(&old);
    return count;
}

/* A checkpoint's training/model.safetensors into the trainable parameters: every one must be
 * there (its frozen parameters, which older checkpoints also hold, are left as they are). */
static df_status load_trained(trainer *t, const char *path) {
    df_load_report rep;
    const df_param_select trainable = {.trainable_only = true};
    DF_TRY(df_params_load_partial(t->recipe->params, path, &trainable, &rep));
    df_status st = DF_OK;
    if (rep.n_missing > 0)
        st = df_error(DF_ERR_FORMAT, "%s: missing trainable tensor '%s' (%d missing)", path,
                      rep.missing[0], rep.n_missing);
    df_load_report_free(&rep);
    return st;
}

static df_status read_state_json(trainer *t, const char *dir, const char *path,
                                 const df_train_opts *opts) {
    df_json j;
    DF_TRY(df_json_load(path, &j));
    double step = 0, ws = 0, ep = 0, pos = 0, skipped = 0, row = 0;
    const cJSON *cur = cJSON_GetObjectItemCaseSensitive(j.root, "loader_cursor");
    char hash[64] = "", want[32];
    double old_global = -1; /* checkpoints from before data parallelism: none (world size 1) */
    df_status st = json_number(j.root, "step", path, &step);
    if (st == DF_OK) st = json_number(j.root, "world_size", path, &ws);
    if (st == DF_OK && cJSON_GetObjectItemCaseSensitive(j.root, "global_batch"))
        st = json_number(j.root, "global_batch", path, &old_global);
    if (st == DF_OK)
        st = cur ? json_number(cur, "epoch", path, &ep)
                 : df_error(DF_ERR_FORMAT, "%s: no loader_cursor", path);
    if (st == DF_OK) st = json_number(cur, "position", path, &pos);
    if (st == DF_OK) st = json_number(j.root, "skipped_steps", path, &skipped);
    if (st == DF_OK) st = json_number(j.root, "nonfinite_in_a_row", path, &row);
    if (st == DF_OK) st = df_json_string(&j, "config_hash", "", hash, sizeof hash);
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(j.root, "loader_cursors");
    df_loader_cursor cursors[DF_MAX_RECIPE_SOURCES] = {{(int64_t)ep, (int64_t)pos}};
    int n_cursors = all ? cJSON_GetArraySize(all) : 1;
    if (st == DF_OK && n_cursors != t->n_sources)
        st = df_error(DF_ERR_INVALID, "%s: %d data sources' cursors, the recipe has %d", path,
                      n_cursors, t->n_sources);
    for (int i = 0; st == DF_OK && all && i < n_cursors; i++) {
        const cJSON *ci = cJSON_GetArrayItem(all, i);
        double e = 0, q = 0;
        st = json_number(ci, "epoch", path, &e);
        if (st == DF_OK) st = json_number(ci, "position", path, &q);
        if (st == DF_OK && (e < 0 || q < 0))
            st = df_error(DF_ERR_FORMAT, "%s: loader_cursors[%d] out of range", path, i);
        cursors[i] = (df_loader_cursor){(int64_t)e, (int64_t)q};
    }
    char base_crc[16] = "", base_path[DF_PATH_MAX] = "";
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(j.root, "frozen_base");
    if (st == DF_OK && base) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(base, "crc32c");
        const cJSON *bp = cJSON_GetObjectItemCaseSensitive(base, "path");
        if (!cJSON_IsString(c) || !cJSON_IsString(bp))
            st = df_error(DF_ERR_FORMAT, "%s: frozen_base needs the strings crc32c and path", path);
        else {
            snprintf(base_crc, sizeof base_crc, "%s", c->valuestring);
            snprintf(base_path, sizeof base_path, "%s", bp->valuestring);
        }
    }
    df_json_free(&j);
    if (st != DF_OK) return st;
    char crc_now[16] = "";
    if (t->n_frozen > 0) snprintf(crc_now, sizeof crc_now, "%08" PRIx32, t->base_crc);
    if (strcmp(base_crc, crc_now) != 0)
        return df_error(DF_ERR_INVALID,
                        "%s: the frozen base differs from the one this run trained on (%s, "
                        "crc32c %s; now %s, crc32c %s): resume with the same base model",
                        dir, base_path[0] ? base_path : "no frozen base",
                        base_crc[0] ? base_crc : "-",
                        t->recipe->base_path ? t->recipe->base_path : "this model",
                        crc_now[0] ? crc_now : "no frozen parameters");
    snprintf(want, sizeof want, "%016" PRIx64, df_config_hash(t->cfg));
    int64_t batch = df_config_int(t->cfg, "train_batch_size");
    int64_t now_global = global_batch(t->world_size, batch, t->accum);
    bool batch_split_only = false; /* the hash differs only by how the global batch is split */
    if (old_global < 0 && ws != t->world_size)
        return df_error(DF_ERR_INVALID, "%s: written by %g processes, resuming with %d", path, ws,
                        t->world_size);
    if (old_global >= 0 && old_global != (double)now_global)
        return df_error(
            DF_ERR_INVALID,
            "%s: written with a global batch of %g images (world size %g), resuming with %" PRId64
            " (%d processes x train_batch_size %" PRId64 " x gradient_accumulation_steps %d): "
            "a resume on another world size must keep world_size x train_batch_size x "
            "gradient_accumulation_steps; set gradient_accumulation_steps or train_batch_size "
            "so that the product is %g",
            dir, old_global, ws, now_global, t->world_size, batch, t->accum, old_global);
    if (strcmp(hash, want) != 0 && old_global >= 0) {
        char ignored[2048];
        batch_split_only = config_changes(t->cfg, dir, true, ignored, sizeof ignored) == 0 &&
                           config_changes(t->cfg, dir, false, ignored, sizeof ignored) > 0;
    }
    if (strcmp(hash, want) != 0 && !opts->allow_config_change && !batch_split_only) {
        char changes[2048];
        config_changes(t->cfg, dir, false, changes, sizeof changes);
        return df_error(DF_ERR_INVALID,
                        "%s: the config changed since this checkpoint: %s; undo the change, or "
                        "pass --allow-config-change to resume anyway",
                        dir, changes);
    }
    if (step < 0 || step > (double)t->max_steps || ep < 0 || pos < 0)
        return df_error(DF_ERR_FORMAT, "%s: step or cursor out of range", path);
    t->step = (int64_t)step;
    for (int i = 0; i < t->n_sources; i++) t->cursor[i] = cursors[i];
    t->skipped_steps = (int64_t)skipped;
    t->nonfinite_in_a_row = (int64_t)row;
    return DF_OK;
}

/* The --resume folder, when named, must exist (checked before anything is built). */
static df_status check_resume_dir(const df_train_opts *opts) {
    struct stat sb;
    if (!opts->resume || strcmp(opts->resume, "latest") == 0) return DF_OK;
    if (stat(opts->resume, &sb) != 0)
        return df_error(DF_ERR_NOTFOUND,
                        "--resume %s: the folder does not exist (give a checkpoint-<step> "
                        "folder, or `latest` for the newest checkpoint of output_dir)",
                        opts->resume);
    if (!S_ISDIR(sb.st_mode))
        return df_error(DF_ERR_INVALID,
                        "--resume %s: not a folder (give a checkpoint-<step> folder, or "
                        "`latest`)",
                        opts->resume);
    return DF_OK;
}

/* Resumes from opts->resume; *resumed_run gets the checkpoint's run id ("" when it has none,
 * or when `latest` found no checkpoint and the run starts at step 0). */
static df_status resume_from(trainer *t, const df_train_opts *opts, bool have_identity,
                             char *resumed_run, bool *resumed, char *dir) {
    int64_t steps[1];
    *resumed = false;
    resumed_run[0] = '\0';
    if (strcmp(opts->resume, "latest") == 0) {
        if (df_ckpt_list(t->out_dir, steps, 1) == 0) {
            fprintf(stderr, "diffusion: no checkpoint in %s yet: starting from step 0\n",
                    t->out_dir);
            return DF_OK;
        }
        /* only this folder's run (run.json); a folder from before run ids: any checkpoint */
        df_status st = df_ckpt_find_latest(t->out_dir, have_identity ? t->identity.run_id : NULL,
                                           dir, DF_PATH_MAX);
        if (st == DF_ERR_NOTFOUND)
            return df_error(DF_ERR_NOTFOUND,
                            "%s: none of its checkpoints belongs to the folder's run (run %s in "
                            "run.json); resume one of them explicitly with --resume "
                            "%s/checkpoint-<step>, or train into a new output_dir",
                            t->out_dir, t->identity.run_id, t->out_dir);
        DF_TRY(st);
    } else {
        DF_TRY(df_pathf(dir, DF_PATH_MAX, "%s", opts->resume));
        DF_TRY(check_resume_dir(opts));
        DF_TRY(df_ckpt_verify(dir));
    }
    DF_TRY(df_ckpt_run_id(dir, resumed_run, DF_RUN_ID_LEN));
    *resumed = true;
    return DF_OK;
}

/* Loads checkpoint dir into the trainer (every rank: they all read the same folder). */
static df_status load_checkpoint(trainer *t, const df_train_opts *opts, const char *dir) {
    char path[DF_PATH_MAX];
    DF_TRY(df_pathf(path, sizeof path, "%s/training/trainer_state.json", dir));
    DF_TRY(read_state_json(t, dir, path, opts));
    DF_TRY(df_pathf(path, sizeof path, "%s/training/model.safetensors", dir));
    DF_TRY(load_trained(t, path));
    DF_TRY(df_pathf(path, sizeof path, "%s/training/optimizer.safetensors", dir));
    DF_TRY(df_optim_state_load(t->optim, path));
    if (t->ema) {
        DF_TRY(df_pathf(path, sizeof path, "%s/training/ema.safetensors", dir));
        DF_TRY(df_ema_state_load(t->ema, path));
    }
    if (t->rank == 0)
        fprintf(stderr, "diffusion: resuming from %s (step %" PRId64 ")\n", dir, t->step);
    return DF_OK;
}

/* ------------------------------------------------------------------ the run folder --------- */

/* Makes out_dir this process's: locked for the run; a fresh start (no --resume) in a folder
 * that holds checkpoints is refused, or with --overwrite the old run is moved aside. */
static df_status claim_run_dir(const char *out_dir, const df_train_opts *opts, df_run_lock *lock) {
    DF_TRY(check_resume_dir(opts));
    DF_TRY(df_run_lock_acquire(lock, out_dir));
    int64_t steps[4096];
    int n = df_ckpt_list(out_dir, steps, 4096);
    if (opts->resume || n == 0) return DF_OK;
    if (!opts->overwrite) {
        df_run_identity old;
        char who[256] = "";
        if (df_run_identity_load(out_dir, &old) == DF_OK)
            snprintf(who, sizeof who, "; run %s started %s on %s, seed %" PRIu64, old.run_id,
                     old.started, old.host, old.seed);
        df_run_lock_release(lock);
        return df_error(DF_ERR_INVALID,
                        "%s already holds a run (%d checkpoint%s, the newest checkpoint-%" PRId64
                        "%s). To continue it, add --resume latest; to start a new run, choose "
                        "another output_dir, or add --overwrite to move the old run aside to "
                        "%s.old-<n> (nothing is deleted)",
                        out_dir, n, n == 1 ? "" : "s", steps[n - 1], who, out_dir);
    }
    char moved[DF_PATH_MAX];
    df_status st = df_run_move_aside(out_dir, moved, sizeof moved);
    df_run_lock_release(lock);
    DF_TRY(st);
    fprintf(stderr, "diffusion: --overwrite: moved the previous run of %s to %s\n", out_dir, moved);
    return df_run_lock_acquire(lock, out_dir);
}

df_status df_train_claim(const df_config *cfg, const df_train_opts *opts, df_run_lock *lock) {
    lock->fd = -1;
    return claim_run_dir(df_config_str(cfg, "output_dir"), opts, lock);
}

/* The run's identity: resumed runs keep the checkpoint's run (run.json rewritten if it named
 * another), fresh starts get a new one. */
static df_status settle_identity(trainer *t, const df_train_opts *opts) {
    char dir[DF_PATH_MAX] = "";
    if (t->rank != 0) { /* rank 0 picks the checkpoint; the others load the same one */
        if (!opts->resume) return DF_OK;
        DF_TRY(df_dist_bcast_str(dir, sizeof dir));
        return dir[0] ? load_checkpoint(t, opts, dir) : DF_OK;
    }
    df_status loaded = df_run_identity_load(t->out_dir, &t->identity);
    if (loaded != DF_OK && loaded != DF_ERR_NOTFOUND && opts->resume) return loaded;
    bool have = loaded == DF_OK, resumed = false;
    char run_id[DF_RUN_ID_LEN] = "";
    if (opts->resume) {
        DF_TRY(resume_from(t, opts, have, run_id, &resumed, dir));
        if (!resumed) dir[0] = '\0';
        DF_TRY(df_dist_bcast_str(dir, sizeof dir));
        if (resumed) DF_TRY(load_checkpoint(t, opts, dir));
    }
    if (resumed && have && run_id[0] && strcmp(run_id, t->identity.run_id) == 0) return DF_OK;
    DF_TRY(df_run_identity_new(&t->identity, df_config_hash(t->cfg), t->seed));
    if (resumed && run_id[0]) snprintf(t->identity.run_id, sizeof t->identity.run_id, "%s", run_id);
    return df_run_identity_save(t->out_dir, &t->identity);
}

/* ------------------------------------------------------------------ the loop ----------------- */

/* A log write's outcome: the first failure of a series is a warning naming the file (the lines
 * stay queued in memory and are written by the next write that succeeds); the recovery is a
 * note. Logs never stop a run: the checkpoints hold its state. */
static void log_result(df_status st, bool *failing, const char *path) {
    if (st != DF_OK && !*failing)
        fprintf(stderr,
                "diffusion: warning: %s; training goes on, the missing records are kept in "
                "memory and written when %s can be written again\n",
                df_last_error(), path);
    else if (st == DF_OK && *failing)
        fprintf(stderr, "diffusion: note: %s is written again, nothing missing\n", path);
    *failing = st != DF_OK;
}

static df_status validation_grid(trainer *t, int64_t step) {
    if (!t->recipe->validate || df_config_int(t->cfg, "num_validation_images") == 0) return DF_OK;
    char path[DF_PATH_MAX], dir[DF_PATH_MAX];
    DF_TRY(df_pathf(dir, sizeof dir, "%s/samples", t->out_dir));
    DF_TRY(df_mkdirs(dir));
    DF_TRY(df_pathf(path, sizeof path, "%s/step-%" PRId64 ".png", dir, step));
    df_scope s = df_scope_begin();
    df_tensor *grid = NULL;
    if (t->ema) {
        df_ema_store(t->ema);
        df_ema_copy_to(t->ema);
    }
    df_status st = t->recipe->validate(t->recipe->ctx, step, &grid);
    if (t->ema) df_ema_restore(t->ema);
    char params[256];
    snprintf(params, sizeof params, "validation grid, step %" PRId64 "%s", step,
             t->ema ? ", EMA weights" : "");
    const char *key = "parameters", *val = params;
    if (st == DF_OK) st = df_png_write(path, grid, 1, &key, &val);
    if (st == DF_OK) {
        FILE *f = fopen(path, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            void *bytes = n > 0 ? malloc((size_t)n) : NULL;
            if (bytes && fread(bytes, 1, (size_t)n, f) == (size_t)n) {
                st = df_tb_image(&t->tb, "samples", step, (int)grid->shape[0], (int)grid->shape[1],
                                 (int)grid->shape[2], bytes, (size_t)n);
                if (st == DF_OK || st == DF_ERR_IO) {
                    log_result(st, &t->tb_failing, t->tb.path);
                    st = DF_OK;
                }
            }
            free(bytes);
            fclose(f);
        }
    }
    df_scope_end(s);
    return st;
}

/* The process's peak resident set in MiB (getrusage: KiB on Linux). */
static double peak_rss_mib(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss / 1024.0 : 0;
}

static void log_step(trainer *t, double loss, double lr, double norm, double secs, bool skipped) {
    double it_s = secs > 0 ? 1.0 / secs : 0;
    /* memory: the allocator's bytes in use between steps (weights, gradients, optimizer state,
     * EMA), its peak (plus the step's activations), the process's peak RSS */
    df_mem_stats ms = df_mem_get_stats();
    double mem = (double)ms.bytes_in_use / 1048576.0, mem_peak = (double)ms.peak_in_use / 1048576.0;
    double rss = peak_rss_mib();
    char line[512];
    snprintf(line, sizeof line,
             "{\"step\": %" PRId64 ", \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, "
             "\"it_s\": %.4g, \"skipped\": %" PRId64 ", \"epoch\": %" PRId64
             ", \"mem_mib\": %.1f, \"mem_peak_mib\": %.1f, \"rss_peak_mib\": %.1f}",
             t->step, loss, lr, isfinite(norm) ? norm : -1.0, it_s, t->skipped_steps, t->epoch, mem,
             mem_peak, rss);
    log_result(df_metrics_append(&t->metrics, line), &t->metrics.failing, t->metrics.path);
    df_status st = df_tb_scalar(&t->tb, "train/loss", t->step, loss);
    if (st == DF_OK || st == DF_ERR_IO) log_result(st, &t->tb_failing, t->tb.path);
    st = df_tb_scalar(&t->tb, "train/lr", t->step, lr);
    if (st == DF_OK || st == DF_ERR_IO) log_result(st, &t->tb_failing, t->tb.path);
    double elapsed = now() - t->started;
    int64_t done = t->step, total = t->max_steps, ran = t->step - t->first_step;
    double eta = ran > 0 ? elapsed / (double)ran * (double)(total - done) : 0;
    if (t->tty) {
        int width = 30, filled = (int)(width * done / (total ? total : 1));
        fprintf(stderr,
                "\r[%.*s%*s] %" PRId64 "/%" PRId64
                " %.2f it/s loss %.4f lr %.2e mem %.0f MiB RSS %.0f MiB ETA %02d:%02d:%02d%s",
                filled, "##############################", width - filled, "", done, total, it_s,
                loss, lr, mem, rss, (int)(eta / 3600), (int)fmod(eta / 60, 60), (int)fmod(eta, 60),
                done == total ? "\n" : "");
    } else if (done % df_config_int(t->cfg, "logging_steps") == 0 || done == total) {
        fprintf(stderr,
                "step %" PRId64 "/%" PRId64
                " loss %.6f lr %.3e grad_norm %.4f %.2f it/s mem %.0f MiB (peak %.0f) RSS peak "
                "%.0f MiB ETA %.0fs%s\n",
                done, total, loss, lr, norm, it_s, mem, mem_peak, rss, eta,
                skipped ? " (skipped: non-finite)" : "");
    }
}

/* Every rank's (loss sum, non-finite loss) in rank order: the step's decisions are taken from
 * the same numbers on every rank. */
static df_status agree(trainer *t, double loss_sum, bool finite, double *global_loss,
                       bool *all_finite) {
    double mine[2] = {loss_sum, finite ? 0 : 1};
    double *all = malloc((size_t)t->world_size * sizeof mine);
    if (!all) return df_error(DF_ERR_NOMEM, "out of memory");
    DF_TRY(df_dist_gather_f64(mine, 2, all));
    *global_loss = 0;
    *all_finite = true;
    for (int r = 0; r < t->world_size; r++) {
        *global_loss += all[2 * r];
        if (all[2 * r + 1] != 0) *all_finite = false;
    }
    free(all);
    return DF_OK;
}

/* One optimizer step: the global batch's K = world_size x accum micro-batches, guard, update.
 * Every rank reads every micro-batch of the global order (one loader of world size 1 each) and
 * computes the `accum` that are its own, micro-batches rank * accum ... (rank + 1) * accum - 1;
 * micro-batch k draws from the step streams of "rank" k (df_step_rng_init), whichever process
 * computes it. Each backward adds loss / K to the gradients; the ranks' gradients are then
 * summed in rank order, so one process with accumulation K and K processes with accumulation 1
 * compute the same sum in the same order. */
static df_status train_step(trainer *t) {
    double t0 = now(), loss_sum = 0;
    int K = t->accum * t->world_size;
    df_optim_zero_grad(t->optim);
    bool finite = true;
    df_grad_accum acc;
    DF_TRY(df_grad_accum_init(&acc, K));
    for (int k = 0; k < K; k++) {
        df_batch *b[DF_MAX_RECIPE_SOURCES] = {0};
        df_status st = DF_OK;
        bool mine = k / t->accum == t->rank;
        for (int i = 0; st == DF_OK && i < t->n_sources; i++) {
            st = df_loader_next(t->loader[i], &b[i]);
            if (st != DF_OK) break;
            for (int j = 0; mine && j < b[i]->n_skipped; j++)
                fprintf(stderr, "diffusion: warning: skipped %s\n", b[i]->skipped[j]);
            t->cursor[i] = b[i]->next;
        }
        if (st == DF_OK) t->epoch = b[0]->epoch;
        df_scope s = df_scope_begin();
        df_tensor *loss = NULL;
        df_step_rng rng;
        df_step_rng_init(&rng, t->seed, k, t->step);
        if (st == DF_OK && mine)
            st = t->recipe->loss(t->recipe->ctx, (const df_batch *const *)b, &rng, &loss);
        if (st == DF_OK && mine) {
            float value = df_f32(loss)[0];
            loss_sum += value;
            if (!isfinite(value)) finite = false;
            float scale = df_grad_accum_loss_scale(&acc); /* the gradients sum to the mean's */
            st = df_backward(K > 1 ? df_mul_scalar(loss, scale) : loss);
        }
        df_scope_end(s);
        for (int i = 0; i < t->n_sources; i++) df_batch_free(b[i]);
        DF_TRY(st);
    }
    /* the last rank's gradients: the others see the poison only through the sum */
    if (t->step == df_config_int(t->cfg, "inject_nan_at_step") && t->rank == t->world_size - 1)
        df_f32(t->params[0]->grad)[0] = NAN;
    const df_flat *flat = &t->recipe->params->flat;
    double c0 = now(); /* waiting for the slowest rank included */
    if (t->world_size > 1) DF_TRY(df_dist_sum_f32(df_flat_grad(flat), flat->numel));
    DF_TRY(agree(t, loss_sum, finite, &loss_sum, &finite));
    t->mpi_secs += now() - c0;
    double norm = NAN, lr = df_config_float(t->cfg, "learning_rate") *
                            df_lr_schedule_factor(&t->sched, t->step);
    if (finite) finite = df_grad_all_finite(t->params, t->n_params);
    if (finite) {
        double max_norm = df_config_float(t->cfg, "max_grad_norm");
        if (max_norm > 0)
            DF_TRY(df_clip_grad_norm(t->params, t->n_params, max_norm, &norm));
        else
            norm = df_grad_norm(t->params, t->n_params);
        df_lr_schedule_apply(&t->sched, t->optim, t->step);
        lr = df_optim_group_hparams(t->optim, 0)->lr;
        DF_TRY(df_optim_step(t->optim));
        if (t->ema) df_ema_step(t->ema);
        t->nonfinite_in_a_row = 0;
    } else {
        t->skipped_steps++;
        if (++t->nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW)
            return df_error(
                DF_ERR_INVALID,
                "%d steps in a row had a non-finite loss or gradient (last: step %" PRId64
                "); lower learning_rate or check the data",
                MAX_NONFINITE_IN_A_ROW, t->step);
    }
    df_optim_zero_grad(t->optim);
    t->step++;
    t->step_secs += now() - t0;
    if (t->rank == 0) log_step(t, loss_sum / K, lr, norm, now() - t0, !finite);
    return DF_OK;
}

/* Whether SIGTERM or SIGUSR1 reached any rank by now (the same answer on every rank). */
static df_status stop_asked(trainer *t, bool *out) {
    *out = stop_requested != 0;
    if (t->world_size == 1) return DF_OK;
    double mine = *out ? 1 : 0, *all = malloc((size_t)t->world_size * sizeof *all);
    if (!all) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status st = df_dist_gather_f64(&mine, 1, all);
    for (int r = 0; st == DF_OK && r < t->world_size; r++)
        if (all[r] != 0) *out = true;
    free(all);
    return st;
}

/* The trainable weights' CRC-32C on every rank, compared: they must be identical after every
 * step. Rank 0 reports it (the MPI tests read it). */
static df_status check_replicas(trainer *t) {
    const df_flat *flat = &t->recipe->params->flat;
    double mine = df_crc32c(df_flat_data(flat), (size_t)flat->numel * sizeof(float));
    double *all = malloc((size_t)t->world_size * sizeof *all);
    if (!all) return df_error(DF_ERR_NOMEM, "out of memory");
    DF_TRY(df_dist_gather_f64(&mine, 1, all));
    df_status st = DF_OK;
    for (int r = 1; st == DF_OK && r < t->world_size; r++)
        if (all[r] != all[0])
            st = df_error(DF_ERR_INVALID,
                          "after step %" PRId64 " the weights of rank %d (crc32c %08x) differ "
                          "from rank 0's (%08x)",
                          t->step, r, (unsigned)all[r], (unsigned)all[0]);
    if (st == DF_OK && t->rank == 0 && t->world_size > 1)
        fprintf(stderr, "diffusion: step %" PRId64 ": weights crc32c %08x on all %d ranks\n",
                t->step, (unsigned)mine, t->world_size);
    free(all);
    return st;
}

static void trainer_free(trainer *t) {
    for (int i = 0; i < t->n_sources; i++) {
        df_loader_free(t->loader[i]);
        df_buckets_free(&t->buckets[i]);
        df_dataset_free(t->data[i]);
    }
    df_optim_free(t->optim);
    df_ema_free(t->ema);
    df_metrics_close(&t->metrics);
    df_tb_close(&t->tb);
    df_run_lock_release(&t->lock);
    free(t->params);
    free(t->names);
}

static df_status run(trainer *t, const df_train_opts *opts) {
    const df_config *c = t->cfg;
    bool main_rank = t->rank == 0; /* writes the run folder; the others write nothing there */
    if (!opts->lock && main_rank) DF_TRY(claim_run_dir(t->out_dir, opts, &t->lock));
    df_params *reg = t->recipe->params;
    DF_TRY(df_params_flatten(reg));
    if (df_config_bool(c, "gradient_checkpointing")) {
        if (!t->recipe->unet_body)
            return df_error(DF_ERR_UNSUPPORTED,
                            "gradient_checkpointing: the %s recipe trains no UNet to checkpoint",
                            t->recipe->name);
        df_unet_body_set_gradient_checkpointing(t->recipe->unet_body, true);
    }
    t->params = malloc((size_t)(reg->n ? reg->n : 1) * sizeof *t->params);
    t->names = malloc((size_t)(reg->n ? reg->n : 1) * sizeof *t->names);
    if (!t->params || !t->names) return df_error(DF_ERR_NOMEM, "out of memory");
    DF_TRY(collect_groups(t));
    fingerprint_base(t);
    DF_TRY(build_optimizer(t));
    DF_TRY(settle_identity(t, opts));
    char path[DF_PATH_MAX];
    if (main_rank) {
        DF_TRY(df_pathf(path, sizeof path, "%s/config.yaml", t->out_dir));
        DF_TRY(df_config_save(c, path));
    }
    DF_TRY(open_data(t));
    if (main_rank) {
        DF_TRY(df_pathf(path, sizeof path, "%s/metrics.jsonl", t->out_dir));
        DF_TRY(df_metrics_open(&t->metrics, path, t->step));
        DF_TRY(df_pathf(path, sizeof path, "%s/logs", t->out_dir));
        DF_TRY(df_tb_open(&t->tb, path));
    }
    if (t->world_size > 1 && main_rank)
        fprintf(stderr,
                "diffusion: %d ranks; global batch %" PRId64 " = %d x train_batch_size %" PRId64
                " x gradient_accumulation_steps %d\n",
                t->world_size,
                global_batch(t->world_size, df_config_int(c, "train_batch_size"), t->accum),
                t->world_size, df_config_int(c, "train_batch_size"), t->accum);
    if (main_rank)
        fprintf(stderr,
                "diffusion: training %s: %lld parameters (%d tensors), %lld images, steps %" PRId64
                " -> %" PRId64 ", run folder %s\n",
                t->recipe->name, (long long)df_params_count(reg), t->n_params,
                (long long)df_dataset_len(t->data[0]), t->step, t->max_steps, t->out_dir);

    int64_t ckpt_every = df_config_int(c, "checkpointing_steps");
    int64_t val_every = df_config_int(c, "validation_steps");
    t->started = now();
    t->first_step = t->step;
    while (t->step < t->max_steps) {
        DF_TRY(train_step(t));
        bool last = t->step == t->max_steps;
        if (val_every > 0 && t->step % val_every == 0 && !last && main_rank)
            DF_TRY(validation_grid(t, t->step));
        /* a signal on any rank stops every rank after this step */
        bool signalled = false;
        DF_TRY(stop_asked(t, &signalled));
        bool stop =
            signalled || (opts->stop_after_steps > 0 && t->step == opts->stop_after_steps && !last);
        if ((ckpt_every > 0 && t->step % ckpt_every == 0) || stop || last) {
            DF_TRY(check_replicas(t));
            /* the lines up to the checkpoint are on disk before it (a resume keeps them) */
            if (main_rank) {
                log_result(df_metrics_flush(&t->metrics), &t->metrics.failing, t->metrics.path);
                DF_TRY(write_checkpoint(t));
            }
        }
        if (stop) {
            df_dist_barrier(); /* no rank leaves before the checkpoint is written */
            if (!main_rank) return DF_OK;
            fprintf(stderr,
                    "\ndiffusion: stopped %s after step %" PRId64
                    "; checkpoint written. To continue, rerun the same command with --resume "
                    "latest\n",
                    signalled ? "by a signal" : "by --stop-after-steps", t->step);
            return DF_OK;
        }
    }
    if (!main_rank) {
        df_dist_barrier(); /* rank 0 exports; the job ends when it has */
        return DF_OK;
    }
    DF_TRY(validation_grid(t, t->step));
    DF_TRY(export_final(t));
    df_dist_barrier();
    log_result(df_metrics_flush(&t->metrics), &t->metrics.failing, t->metrics.path);
    if (t->metrics.failing || t->tb_failing)
        fprintf(stderr, "diffusion: warning: the run is complete but its logs are not (see the "
                        "warnings above); the model and checkpoints are\n");
    if (t->world_size > 1)
        fprintf(stderr,
                "diffusion: rank 0 spent %.3f s of %.3f s of steps (%.1f%%) in the gradient sum "
                "and the step's agreement (MPI, waiting for the slowest rank included)\n",
                t->mpi_secs, t->step_secs,
                t->step_secs > 0 ? 100 * t->mpi_secs / t->step_secs : 0.0);
    fprintf(stderr, "diffusion: done: %" PRId64 " steps (%" PRId64 " skipped); model in %s\n",
            t->step, t->skipped_steps, t->out_dir);
    return DF_OK;
}

df_status df_train_run(const df_config *cfg, df_recipe *recipe, const df_train_opts *opts) {
    trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = cfg;
    t.recipe = recipe;
    t.seed = (uint64_t)df_config_int(cfg, "seed");
    t.rank = opts->rank;
    t.n_sources = recipe->n_sources > 0 ? recipe->n_sources : 1;
    if (t.n_sources > DF_MAX_RECIPE_SOURCES)
        return df_error(DF_ERR_INVALID, "recipe %s: %d data sources, at most %d", recipe->name,
                        t.n_sources, DF_MAX_RECIPE_SOURCES);
    t.world_size = opts->world_size > 0 ? opts->world_size : 1;
    if (t.rank < 0 || t.rank >= t.world_size || t.world_size > 0xffff)
        return df_error(DF_ERR_INVALID, "rank %d of world size %d", t.rank, t.world_size);
    t.max_steps = df_config_int(cfg, "max_train_steps");
    t.accum = (int)df_config_int(cfg, "gradient_accumulation_steps");
    t.tty = isatty(STDERR_FILENO);
    t.lock.fd = -1;
    t.metrics.fd = -1;
    t.tb.fd = -1;
    DF_TRY(df_pathf(t.out_dir, sizeof t.out_dir, "%s", df_config_str(cfg, "output_dir")));
    stop_requested = 0;
    install_signals();
    df_status st = run(&t, opts);
    trainer_free(&t);
    return st;
}
