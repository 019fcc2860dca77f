/* sched_ddim.c — DDIMScheduler step (its timesteps are DDPM's: sched_ddpm.c).
 *
 * Follows diffusers v0.21.4 scheduling_ddim.py: prev_t = t - T // n; alpha_prod_t_prev is
 * final_alpha_cumprod (1 with set_alpha_to_one, else alphas_cumprod[0]) when prev_t < 0;
 * pred_original_sample / pred_epsilon per prediction type; thresholding or clip_sample; the eta
 * variance sigma_t = eta * sqrt(variance) and its noise; use_clipped_model_output. float32
 * scalar arithmetic in diffusers' order.
 */
#include "infer/sched_impl.h"

#include <math.h>

df_status sched_ddim_step(df_sched *s, const float *mo, double t, const float *x, int64_t batch,
                          const df_sched_step_args *a, float *prev, float *x0) {
    const df_sched_config *c = &s->cfg;
    const int64_t n = s->numel;
    int64_t ti = (int64_t)t;
    if (ti < 0 || ti >= s->T || (double)ti != t)
        return df_error(DF_ERR_INVALID, "DDIMScheduler: timestep %g is outside [0, %lld)", t,
                        (long long)s->T);
    float eta = a ? (float)a->eta : 0.0f;
    int64_t prev_t = ti - s->T / s->num_inference_steps;
    float ac_t = s->alphas_cumprod[ti];
    float ac_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    float beta_prod_t = 1.0f - ac_t;
    float sq_a = sqrtf(ac_t), sq_b = sqrtf(beta_prod_t);
    float *eps = sched_slot(s, 8);
    switch (c->prediction_type) {
    case DF_PRED_EPSILON:
        for (int64_t i = 0; i < n; i++) {
            x0[i] = (x[i] - sq_b * mo[i]) / sq_a;
            eps[i] = mo[i];
        }
        break;
    case DF_PRED_SAMPLE:
        for (int64_t i = 0; i < n; i++) {
            x0[i] = mo[i];
            eps[i] = (x[i] - sq_a * x0[i]) / sq_b;
        }
        break;
    case DF_PRED_V_PREDICTION:
        for (int64_t i = 0; i < n; i++) {
            x0[i] = sq_a * x[i] - sq_b * mo[i];
            eps[i] = sq_a * mo[i] + sq_b * x[i];
        }
        break;
    }
    if (c->thresholding) {
        sched_threshold(s, x0, n, batch);
    } else if (c->clip_sample) {
        float r = (float)c->clip_sample_range;
        for (int64_t i = 0; i < n; i++) x0[i] = x0[i] < -r ? -r : x0[i] > r ? r : x0[i];
    }
    /* _get_variance(timestep, prev_timestep) */
    float beta_prod_t_prev = 1.0f - ac_prev;
    float variance = (beta_prod_t_prev / beta_prod_t) * (1.0f - ac_t / ac_prev);
    float std_dev_t = eta * sqrtf(variance);
    if (a && a->use_clipped_model_output)
        for (int64_t i = 0; i < n; i++) eps[i] = (x[i] - sq_a * x0[i]) / sq_b;
    float dir_coeff = sqrtf(1.0f - ac_prev - std_dev_t * std_dev_t);
    float sq_prev = sqrtf(ac_prev);
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t i = 0; i < n; i++) prev[i] = sq_prev * x0[i] + dir_coeff * eps[i];
    if (eta > 0) {
        float *z = sched_slot(s, 9);
        DF_TRY(sched_draw(a, z, n, "DDIMScheduler"));
        for (int64_t i = 0; i < n; i++) prev[i] = prev[i] + std_dev_t * z[i];
    }
    return DF_OK;
}
