/* optim_impl.h — what the optimizer files share inside optim/: the optimizer struct, the chunk
 * plan the update loop runs over, and the per-kind kernels. Internal to optim/.
 *
 * Layout: the moments of every parameter sit in flat F32 buffers (one per moment slot) in
 * parameter order, each parameter starting at a multiple of OPTIM_ALIGN elements, the same
 * rule as df_flat, so moment i of a parameter is at moment_off + i. The update loop runs over
 * chunks of at most OPTIM_CHUNK elements of one parameter (fixed at creation); chunks are
 * independent, so OpenMP can split them any way without changing a bit of the result.
 */
#ifndef DF_OPTIM_IMPL_H
#define DF_OPTIM_IMPL_H

#include "optim/optim.h"

#define OPTIM_ALIGN 16
#define OPTIM_CHUNK 32768
/* Below this many elements the update runs on one thread (thread start-up costs more). */
#define OPTIM_PARALLEL_MIN 65536

enum { OPTIM_SLOTS = 3 }; /* moment buffers: Adam exp_avg, exp_avg_sq, max_exp_avg_sq */

typedef struct optim_param {
    df_tensor *t; /* borrowed */
    char *name;   /* owned */
    int group;
    int64_t moment_off; /* first element in each moment buffer */
} optim_param;

typedef struct optim_group {
    df_optim_hparams h;
    double initial_lr;
    df_tensor *step; /* I64 [1], owned */
} optim_group;

typedef struct optim_chunk {
    int param;
    int64_t start, len;
} optim_chunk;

/* Per-group scalars of one step, computed in double as torch computes them (Python floats)
 * and rounded to float where torch hands them to a float32 kernel. */
typedef struct optim_scalars {
    bool skip_first; /* SGD: momentum buffer starts as a copy of d_p (first step) */
    float lr_neg;    /* -lr */
    float wd;        /* weight_decay (Adam / SGD: added to the gradient) */
    float decay_mul; /* AdamW / Lion: 1 - lr * weight_decay */
    bool has_wd;
    float momentum, one_minus_damp;
    bool has_momentum, nesterov;
    float beta1, one_minus_beta1, beta2, one_minus_beta2;
    float step_size_neg; /* Adam: -lr / bias_correction1 */
    float bc2_sqrt;      /* Adam: sqrt(bias_correction2) */
    float eps;
    bool amsgrad;
} optim_scalars;

struct df_optim {
    df_optim_kind kind;
    int n_groups;
    optim_group *groups;
    int n_params;
    optim_param *params;
    int64_t total;                  /* elements of each moment buffer */
    df_tensor *moment[OPTIM_SLOTS]; /* F32 [total] or NULL, owned */
    int n_chunks;
    optim_chunk *chunks;
    int n_state;
    char **state_names; /* owned */
    df_tensor **state;  /* owned views */
};

/* Elementwise kernels over n elements of one parameter. p: values (updated), g: gradient,
 * m0..m2: the parameter's slice of moment slots 0..2 (NULL when unused). */
void df_sgd_kernel(const optim_scalars *s, float *p, const float *g, float *buf, int64_t n);
void df_adam_kernel(const optim_scalars *s, bool decoupled, float *p, const float *g,
                    float *exp_avg, float *exp_avg_sq, float *max_exp_avg_sq, int64_t n);
void df_lion_kernel(const optim_scalars *s, float *p, const float *g, float *exp_avg, int64_t n);

/* Fills the per-kind scalars of group h at the step number `step` (1-based, after increment). */
void df_sgd_scalars(const df_optim_hparams *h, int64_t step, optim_scalars *s);
void df_adam_scalars(const df_optim_hparams *h, bool decoupled, int64_t step, optim_scalars *s);
void df_lion_scalars(const df_optim_hparams *h, optim_scalars *s);

/* Zero-filled tensor / view owned by the caller alone, even inside an open scope. */
df_tensor *df_optim_zeros_owned(df_dtype dt, int ndim, const int64_t *shape);
df_tensor *df_optim_view_owned(const df_tensor *t, int ndim, const int64_t *shape, int64_t off);
/* strdup that asserts on out of memory. */
char *df_optim_strdup(const char *s);

#endif
