/* sched_impl.h — what the scheduler files share inside infer/: the df_sched struct, numpy and
 * torch emulation helpers (linspace, arange, interp, round half to even), and the per-family
 * entry points. Never included outside infer/.
 *
 * Invariant: tables hold the values diffusers holds, in its dtypes (float32 tables as float,
 * float64 numpy arrays as double); timesteps are kept as double (exact for int64 and float32).
 */
#ifndef DF_INFER_SCHED_IMPL_H
#define DF_INFER_SCHED_IMPL_H

#include "infer/infer.h"

#define SCHED_SLOTS 12
#define SLOT_PREV 10 /* step results are computed here, then copied into new tensors */
#define SLOT_X0 11

struct df_sched {
    df_sched_config cfg;
    int64_t T;                           /* num_train_timesteps */
    float *betas;                        /* (T) float32 */
    float *alphas_cumprod;               /* (T) float32 */
    float *alpha_t, *sigma_t, *lambda_t; /* (T) DPM-Solver / UniPC */
    float *train_sigmas;                 /* (T) ((1 - abar) / abar) ** 0.5 in float32 */
    float final_alpha_cumprod;

    int num_inference_steps; /* n given to set_timesteps (0 before) */
    int n_ts;
    double *ts;
    bool ts_float;
    int n_sig;
    double *sig;
    float init_noise_sigma;

    /* step state, sized on the first step (numel of the sample) */
    int64_t numel;
    float *slot[SCHED_SLOTS];
    int counter;                /* PNDM */
    int n_hist;                 /* PNDM ets / LMS derivatives / multistep outputs held */
    int lower_order_nums;       /* DPM-Solver, UniPC */
    int this_order;             /* UniPC */
    bool has_last_sample;       /* UniPC */
    bool cur_model_output_zero; /* PNDM */
    bool has_cur_sample;        /* PNDM */
    double hist_t[4];           /* UniPC timestep_list */
    bool heun_first;            /* Heun: dt is None */
    float heun_dt;
    int *heun_count; /* Heun: _index_counter per timestep (by first index) */
};

/* numpy / torch emulation (sched_betas.c). */
void sched_np_linspace(double start, double stop, int64_t num, double *out);
int64_t sched_np_arange(double start, double stop, double step, double *out); /* out may be NULL */
double sched_np_interp(double x, const float *fp, int64_t n);                 /* xp = 0..n-1 */
double sched_np_round(double x);
/* torch.linspace(start, end, steps, dtype=float32) on CPU, bit for bit. */
void sched_torch_linspace_f32(double start, double end, int64_t steps, float *out);
/* The sigma schedulers' timesteps by spacing (float32 values, descending), n of them; returns
 * the count (trailing may differ from n). out has room for n + 1. */
int sched_sigma_timesteps(const df_sched *s, int n, double *out);
/* Builds betas / alphas_cumprod / train_sigmas for s->cfg; DF_ERR_INVALID naming fields. */
df_status sched_build_tables(df_sched *s);
/* Karras sigmas (float64) from in_sigmas[0] = sigma_max-side and in_sigmas[n-1], diffusers'
 * _convert_to_karras: sigma_min = in[-1], sigma_max = in[0]. */
void sched_karras(double sigma_min, double sigma_max, int n, double *out);
/* diffusers' _sigma_to_t against log_sigmas (float32 log of the train sigmas). */
double sched_sigma_to_t(double sigma, const float *log_sigmas, int64_t n);

/* Common helpers (sched.c). */
float *sched_slot(df_sched *s, int i);
int sched_index_of(const df_sched *s, double t);
df_status sched_draw(const df_sched_step_args *a, float *out, int64_t n, const char *who);
void sched_threshold(const df_sched *s, float *x, int64_t numel, int64_t batch);
df_status sched_alloc_ts(df_sched *s, int n_ts, int n_sig);

/* Per-family set_timesteps and step. Buffers: model output mo, sample x, outputs prev and x0
 * (x0 always written when the family has it), all numel floats; batch = first dim. */
df_status sched_ddpm_set_timesteps(df_sched *s, int n);
df_status sched_ddpm_step(df_sched *s, const float *mo, double t, const float *x, int64_t batch,
                          const df_sched_step_args *a, float *prev, float *x0);
df_status sched_ddim_step(df_sched *s, const float *mo, double t, const float *x, int64_t batch,
                          const df_sched_step_args *a, float *prev, float *x0);
df_status sched_pndm_set_timesteps(df_sched *s, int n);
df_status sched_pndm_step(df_sched *s, const float *mo, double t, const float *x, float *prev);
df_status sched_euler_set_timesteps(df_sched *s, int n);
df_status sched_euler_step(df_sched *s, const float *mo, double t, const float *x,
                           const df_sched_step_args *a, float *prev, float *x0);
df_status sched_euler_ancestral_step(df_sched *s, const float *mo, double t, const float *x,
                                     const df_sched_step_args *a, float *prev, float *x0);
df_status sched_heun_set_timesteps(df_sched *s, int n);
int sched_heun_index(const df_sched *s, double t);
df_status sched_heun_step(df_sched *s, const float *mo, double t, const float *x, float *prev);
df_status sched_lms_set_timesteps(df_sched *s, int n);
df_status sched_lms_step(df_sched *s, const float *mo, double t, const float *x, float *prev,
                         float *x0);
df_status sched_multistep_set_timesteps(df_sched *s, int n); /* DPM-Solver and UniPC */
df_status sched_dpmsolver_step(df_sched *s, const float *mo, double t, const float *x,
                               int64_t batch, float *prev);
df_status sched_unipc_step(df_sched *s, const float *mo, double t, const float *x, int64_t batch,
                           float *prev);

#define SCHED_OMP_MIN 65536

#endif
