/* optim.h — the public interface of optim/: optimizers over parameter groups (SGD, Adam, AdamW,
 * Lion), diffusers' LR schedules, gradient utilities (global norm, clipping, non-finite check,
 * accumulation) and diffusers' EMA of the weights.
 *
 * References (semantics mirrored exactly, float32 operation order included):
 * torch.optim.SGD / Adam / AdamW at v1.13 (the single-tensor, foreach=False path), Lion as in
 * the paper (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2) and
 * lucidrains' lion-pytorch, diffusers v0.21 `optimization.py` (get_scheduler) and
 * `training_utils.py` (EMAModel), torch.nn.utils.clip_grad_norm_ at v1.13.
 *
 * Parameters: a parameter is an F32 tensor with a gradient (`t->grad`, same numel), typically a
 * slice of a df_flat buffer. Tensors are borrowed: they must outlive the optimizer / EMA that
 * names them, and their `data` / `grad->data` are re-read at every step (so a grad made later by
 * backward is fine). A parameter whose grad is NULL at a step is skipped, as torch skips
 * `p.grad is None`; unlike torch, step counts are per group (not per parameter), so a parameter
 * skipped at some steps then sees the group's bias correction. Parameters of a df_flat always
 * have a gradient, so this does not arise there.
 *
 * A training step with these pieces (what train/ is expected to do):
 *
 *     // per micro-batch: backward of (loss * df_grad_accum_loss_scale(&acc))
 *     if (df_grad_accum_tick(&acc)) {
 *         if (df_grad_all_finite(ps, n)) {            // else skip the step and count it
 *             df_clip_grad_norm(ps, n, max_grad_norm, &norm);
 *             df_lr_schedule_apply(&sched, opt, global_step); // lr of step global_step
 *             df_optim_step(opt);
 *             df_ema_step(ema);
 *             global_step++;
 *         }
 *         df_optim_zero_grad(opt);
 *     }
 *
 * and a checkpoint saves df_optim_state_save / df_ema_state_save plus global_step (the schedule
 * has no other state), which df_optim_state_load / df_ema_state_load restore exactly.
 *
 * Determinism: every update is elementwise, and the global gradient norm sums fixed chunks of
 * each gradient in double and combines them in order, so results do not depend on the number
 * of OpenMP threads.
 *
 * State as named tensors (what a checkpoint saves with df_st_save and restores with
 * df_st_read_into, one name per tensor, shapes fixed by the parameter shapes):
 *   optimizer, per parameter named P (its name in the group, default "group<g>.<i>"):
 *     SGD with momentum != 0:  "P.momentum_buffer"
 *     Adam / AdamW:            "P.exp_avg", "P.exp_avg_sq", and with amsgrad "P.max_exp_avg_sq"
 *     Lion:                    "P.exp_avg"
 *   and per group g:           "group<g>.step"   (I64, shape [1]: steps taken by the group)
 *   EMA:  the shadow of parameter P under the name P itself (default "shadow_params.<i>"), so the
 *         file doubles as a weights file, and "optimization_step" (I64, shape [1]).
 * Each moment is one flat F32 buffer over all parameters in group order, every parameter at a
 * 16-element boundary: when the groups list a df_flat's parameters in its order, a moment buffer
 * has exactly the flat parameter buffer's layout.
 * The state tensors are views of the live buffers: writing into them (df_st_read_into) restores
 * the state; reading them saves it. A restored state continues bit-identically.
 */
#ifndef DF_OPTIM_H
#define DF_OPTIM_H

#include "autograd/autograd.h"

/* ---------------------------------------------------------------- optimizers ------------------ */

typedef enum df_optim_kind {
    DF_OPTIM_SGD = 0,
    DF_OPTIM_ADAM,
    DF_OPTIM_ADAMW,
    DF_OPTIM_LION,
    DF_OPTIM_COUNT
} df_optim_kind;

/* "sgd", "adam", "adamw", "lion". Static string. */
DF_API const char *df_optim_kind_name(df_optim_kind kind);
/* Parses one of the names above; DF_ERR_INVALID naming the allowed values otherwise. */
DF_API df_status df_optim_kind_parse(const char *name, df_optim_kind *out);

/* Hyperparameters of one parameter group. Fields a kind does not use are ignored.
 *   SGD:   lr, weight_decay, momentum, dampening, nesterov
 *   Adam:  lr, weight_decay (L2, added to the gradient), beta1, beta2, eps, amsgrad
 *   AdamW: lr, weight_decay (decoupled: param *= 1 - lr * weight_decay), beta1, beta2, eps, amsgrad
 *   Lion:  lr, weight_decay (decoupled), beta1, beta2 */
typedef struct df_optim_hparams {
    double lr;
    double weight_decay;
    double momentum;
    double dampening;
    bool nesterov;
    double beta1, beta2;
    double eps;
    bool amsgrad;
} df_optim_hparams;

/* torch's defaults: SGD lr 1e-3 (torch requires one; we pick a value), momentum 0, dampening 0,
 * wd 0; Adam lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0; AdamW as Adam with wd 1e-2; Lion
 * lr 1e-4, betas (0.9, 0.99), wd 0. */
DF_API df_optim_hparams df_optim_hparams_default(df_optim_kind kind);
/* DF_OK, or DF_ERR_INVALID with a message naming the field and its allowed values (lr >= 0,
 * weight_decay >= 0, momentum >= 0, dampening in [0, 1], betas in [0, 1), eps >= 0, nesterov
 * needs momentum > 0 and dampening 0; NaN is never allowed). */
DF_API df_status df_optim_hparams_check(df_optim_kind kind, const df_optim_hparams *h);

/* One parameter group: n tensors (borrowed) with their hyperparameters. `names` is NULL (names
 * default to "group<g>.<i>") or n strings (copied), e.g. the registry's dotted names. */
typedef struct df_param_group {
    df_tensor *const *params;
    const char *const *names;
    int n;
    df_optim_hparams h;
} df_param_group;

typedef struct df_optim df_optim;

/* A new optimizer over n_groups groups. Every parameter must be an F32 tensor appearing once;
 * the moments start at zero and every group's step at 0. Errors: DF_ERR_INVALID (bad
 * hyperparameters, naming the group and field; a parameter that is not F32 or is repeated;
 * duplicate names). *out is owned: df_optim_free. */
DF_API df_status df_optim_new(df_optim_kind kind, const df_param_group *groups, int n_groups,
                              df_optim **out);
DF_API void df_optim_free(df_optim *o); /* NULL is a no-op */

/* One update of every parameter from its current gradient, with each group's current lr; then
 * every group's step count + 1. Runs the flat moment buffers in fixed chunks with OpenMP + SIMD.
 * Always DF_OK today (the status leaves room for checks). */
DF_API df_status df_optim_step(df_optim *o);
/* Zeroes the gradient of every parameter (set_to_none=False semantics). */
DF_API void df_optim_zero_grad(df_optim *o);

DF_API df_optim_kind df_optim_kind_of(const df_optim *o);
DF_API int df_optim_group_count(const df_optim *o);
/* Hyperparameters of group g as they are now (lr changes under a schedule). Borrowed. */
DF_API const df_optim_hparams *df_optim_group_hparams(const df_optim *o, int g);
/* The lr group g was created with (torch's `initial_lr`, the base of an LR schedule). */
DF_API double df_optim_initial_lr(const df_optim *o, int g);
/* Sets group g's lr; DF_ERR_INVALID when lr is negative or NaN. */
DF_API df_status df_optim_set_lr(df_optim *o, int g, double lr);
/* Steps taken by group g (the value of its "group<g>.step" state tensor). */
DF_API int64_t df_optim_step_count(const df_optim *o, int g);
/* Every parameter of every group, in group order: count and borrowed tensor i. */
DF_API int df_optim_param_count(const df_optim *o);
DF_API df_tensor *df_optim_param(const df_optim *o, int i);

/* The state as named tensors (see the top of this file). Names and tensors are borrowed, valid
 * until df_optim_free; the tensors are views of the live state. */
DF_API int df_optim_state_count(const df_optim *o);
DF_API const char *df_optim_state_name(const df_optim *o, int i);
DF_API df_tensor *df_optim_state_tensor(const df_optim *o, int i);
/* The state tensor called `name`, or NULL. */
DF_API df_tensor *df_optim_state_find(const df_optim *o, const char *name);

/* The whole state to / from a safetensors file (df_st_save; metadata "optimizer" = the kind).
 * Load: every state tensor must be in the file with its exact shape (DF_ERR_NOTFOUND /
 * DF_ERR_INVALID naming it), the file must hold no other tensor and, when it says, the same kind
 * (DF_ERR_INVALID); DF_ERR_IO / DF_ERR_FORMAT from the reader. A failed load may have restored
 * some tensors: rebuild the optimizer before retrying. */
DF_API df_status df_optim_state_save(const df_optim *o, const char *path);
DF_API df_status df_optim_state_load(df_optim *o, const char *path);

/* ---------------------------------------------------------------- LR schedules ---------------- */

typedef enum df_lr_kind {
    DF_LR_CONSTANT = 0,
    DF_LR_CONSTANT_WITH_WARMUP,
    DF_LR_LINEAR,
    DF_LR_COSINE,
    DF_LR_COSINE_WITH_RESTARTS,
    DF_LR_POLYNOMIAL,
    DF_LR_COUNT
} df_lr_kind;

/* A diffusers LR schedule: lr(step) = initial_lr * factor(step), as torch's LambdaLR with
 * diffusers' lambdas. `step` counts optimizer steps from 0 (LambdaLR's last_epoch). */
typedef struct df_lr_schedule {
    df_lr_kind kind;
    int64_t num_warmup_steps;   /* linear warmup from 0 over these steps (all but `constant`) */
    int64_t num_training_steps; /* decay horizon (linear, cosine*, polynomial) */
    double num_cycles;          /* cosine: 0.5 (half a wave); cosine_with_restarts: 1 */
    double power;               /* polynomial: 1.0 */
    double lr_end;              /* polynomial: 1e-7 */
    double lr_init;             /* polynomial: diffusers' optimizer.defaults["lr"] */
} df_lr_schedule;

/* "constant", "constant_with_warmup", ... (diffusers' SchedulerType values). Static string. */
DF_API const char *df_lr_kind_name(df_lr_kind kind);
/* As diffusers' get_scheduler: parses `name`, sets the warmup and training steps and the
 * defaults of the other fields (num_cycles 0.5 for cosine, 1 for cosine_with_restarts, power 1,
 * lr_end 1e-7, lr_init = `lr_init`), then checks. Errors: DF_ERR_INVALID for an unknown name
 * (listing the allowed ones) or a bad field (df_lr_schedule_check). */
DF_API df_status df_lr_schedule_init(df_lr_schedule *s, const char *name, int64_t num_warmup_steps,
                                     int64_t num_training_steps, double lr_init);
/* DF_ERR_INVALID naming the field: warmup < 0; training steps < 1 for the decaying kinds;
 * polynomial with training <= warmup, power < 0 or lr_init <= lr_end (diffusers' check);
 * num_cycles < 0; any NaN. */
DF_API df_status df_lr_schedule_check(const df_lr_schedule *s);
/* The multiplier at `step` (double, diffusers' formula verbatim). */
DF_API double df_lr_schedule_factor(const df_lr_schedule *s, int64_t step);
/* Sets every group's lr to its initial lr * factor(step). */
DF_API void df_lr_schedule_apply(const df_lr_schedule *s, df_optim *o, int64_t step);
/* diffusers' --scale_lr: lr * gradient_accumulation_steps * train_batch_size * num_processes. */
DF_API double df_scale_lr(double lr, int train_batch_size, int gradient_accumulation_steps,
                          int num_processes);

/* ---------------------------------------------------------------- gradients ------------------- */

/* Global L2 norm of the gradients of n tensors (NULL grads skipped): squares summed in double
 * over fixed 16384-element chunks, chunk sums added in order, so the value does not depend on
 * the thread count. Inf or NaN when a gradient holds one. */
DF_API double df_grad_norm(df_tensor *const *params, int n);
/* torch.nn.utils.clip_grad_norm_(params, max_norm) (norm_type 2): total = the global norm
 * rounded to float; coef = min(1, max_norm / (total + 1e-6)) in float as torch computes it;
 * every gradient *= coef when coef < 1. Stores the pre-clip norm (the float value torch returns)
 * in *total_norm (may be NULL). Errors: DF_ERR_INVALID when max_norm is not > 0. As torch, an
 * infinite norm multiplies the gradients by 0 and a NaN norm by NaN: check df_grad_all_finite
 * first and skip the step instead. */
DF_API df_status df_clip_grad_norm(df_tensor *const *params, int n, double max_norm,
                                   double *total_norm);
/* True when every gradient element of the n tensors is finite. */
DF_API bool df_grad_all_finite(df_tensor *const *params, int n);

/* Gradient accumulation over k micro-batches: scale each micro-batch loss by 1/k (as
 * accelerate divides it) so that the k accumulated gradients sum to the gradient of the mean,
 * and step the optimizer when df_grad_accum_tick says the k-th micro-batch is in. */
typedef struct df_grad_accum {
    int k;     /* micro-batches per optimizer step */
    int micro; /* micro-batches accumulated since the last step, in [0, k) */
} df_grad_accum;
/* DF_ERR_INVALID when k < 1. */
DF_API df_status df_grad_accum_init(df_grad_accum *a, int k);
/* 1/k as float: the factor on each micro-batch loss. */
DF_API float df_grad_accum_loss_scale(const df_grad_accum *a);
/* Call after each micro-batch's backward. True when k micro-batches have accumulated: step the
 * optimizer and zero the gradients now (the counter restarts). */
DF_API bool df_grad_accum_tick(df_grad_accum *a);

/* ---------------------------------------------------------------- EMA ------------------------- */

/* diffusers' EMAModel arguments and defaults. */
typedef struct df_ema_config {
    double decay;              /* 0.9999: the upper bound of the decay */
    double min_decay;          /* 0.0 */
    int64_t update_after_step; /* 0 */
    bool use_ema_warmup;       /* false: decay = (1 + s) / (10 + s) */
    double inv_gamma;          /* 1.0 (warmup: 1 - (1 + s / inv_gamma) ^ -power) */
    double power;              /* 2/3 */
} df_ema_config;
DF_API df_ema_config df_ema_config_default(void);
/* DF_ERR_INVALID naming the field: decay and min_decay in [0, 1] with min_decay <= decay,
 * update_after_step >= 0, inv_gamma > 0, power >= 0, no NaN. */
DF_API df_status df_ema_config_check(const df_ema_config *c);

typedef struct df_ema df_ema;

/* Shadows of n F32 parameters (borrowed; they must outlive the EMA), initialised to copies of
 * their current values, in one flat buffer; optimization_step 0. `names` is NULL or n strings
 * (copied). *out is owned: df_ema_free. */
DF_API df_status df_ema_new(const df_ema_config *cfg, df_tensor *const *params,
                            const char *const *names, int n, df_ema **out);
DF_API void df_ema_free(df_ema *e); /* NULL is a no-op */
/* diffusers' get_decay(optimization_step): s = max(0, step - update_after_step - 1); 0 when
 * s <= 0; else the warmup or (1+s)/(10+s) value clamped to [min_decay, decay]. */
DF_API double df_ema_get_decay(const df_ema *e, int64_t optimization_step);
/* optimization_step += 1; d = get_decay(step); for each parameter that requires grad:
 * shadow -= (1 - d) * (shadow - param) (float32, torch's order); otherwise shadow = param.
 * Returns d (diffusers' cur_decay_value). */
DF_API double df_ema_step(df_ema *e);
DF_API int64_t df_ema_optimization_step(const df_ema *e);
/* Copies the shadows into the parameters (validate with EMA weights). */
DF_API void df_ema_copy_to(const df_ema *e);
/* Saves a copy of the parameters' current values (before copy_to) ... */
DF_API void df_ema_store(df_ema *e);
/* ... and puts them back (after validation). Asserts a matching store. */
DF_API void df_ema_restore(df_ema *e);
/* State as named tensors (see the top of this file); borrowed views of the live state. */
DF_API int df_ema_state_count(const df_ema *e);
DF_API const char *df_ema_state_name(const df_ema *e, int i);
DF_API df_tensor *df_ema_state_tensor(const df_ema *e, int i);
DF_API df_tensor *df_ema_state_find(const df_ema *e, const char *name);
/* The state to / from a safetensors file, with the rules of df_optim_state_save / _load. */
DF_API df_status df_ema_state_save(const df_ema *e, const char *path);
DF_API df_status df_ema_state_load(df_ema *e, const char *path);

#endif
