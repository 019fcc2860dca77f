/* sched_ddpm.c — DDPMScheduler (and the timesteps DDIMScheduler shares with it).
 *
 * Follows diffusers v0.21.4 scheduling_ddpm.py: set_timesteps (leading: arange(n) * (T // n)
 * + steps_offset; linspace: linspace(0, T-1, n).round(); trailing: round(arange(T, 0, -T/n)) - 1),
 * step with the variance types fixed_small(_log), fixed_large(_log), learned(_range), clip_sample
 * or thresholding, noise drawn for t > 0. Scalars are 0-d float32 tensors there, so coefficient
 * arithmetic is float32 here, in the same order.
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <stdlib.h>

df_status sched_ddpm_set_timesteps(df_sched *s, int n) {
    const df_sched_config *c = &s->cfg;
    const int64_t T = s->T;
    DF_TRY(sched_alloc_ts(s, n, 0));
    s->ts_float = false;
    if (c->timestep_spacing == DF_SPACING_LINSPACE) {
        double *v = malloc((size_t)n * sizeof(double));
        if (!v) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        sched_np_linspace(0, (double)(T - 1), n, v);
        for (int i = 0; i < n; i++) s->ts[i] = sched_np_round(v[n - 1 - i]);
        free(v);
    } else if (c->timestep_spacing == DF_SPACING_LEADING) {
        int64_t ratio = T / n;
        for (int i = 0; i < n; i++)
            s->ts[i] = (double)((int64_t)(n - 1 - i) * ratio + c->steps_offset);
    } else {
        double ratio = (double)T / (double)n;
        double *v =
            malloc(((size_t)sched_np_arange((double)T, 0, -ratio, NULL) + 1) * sizeof(double));
        if (!v) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        int64_t m = sched_np_arange((double)T, 0, -ratio, v);
        DF_TRY(sched_alloc_ts(s, (int)m, 0));
        for (int64_t i = 0; i < m; i++) s->ts[i] = sched_np_round(v[i]) - 1;
        free(v);
    }
    return DF_OK;
}

/* _get_variance(t) for DDPM (predicted_variance = model's second half for learned types) */
static float ddpm_variance(const df_sched *s, float ac_t, float ac_prev) {
    float current_beta_t = 1.0f - ac_t / ac_prev;
    float variance = (1.0f - ac_prev) / (1.0f - ac_t) * current_beta_t;
    if (variance < 1e-20f) variance = 1e-20f;
    switch (s->cfg.variance_type) {
    case DF_VARIANCE_FIXED_SMALL_LOG: return expf(0.5f * logf(variance));
    case DF_VARIANCE_FIXED_LARGE: return current_beta_t;
    case DF_VARIANCE_FIXED_LARGE_LOG: return logf(current_beta_t);
    default: return variance;
    }
}

df_status sched_ddpm_step(df_sched *s, const float *mo, double t, const float *x, int64_t batch,
                          const df_sched_step_args *a, float *prev, float *x0) {
    const df_sched_config *c = &s->cfg;
    const int64_t n = s->numel;
    int64_t ti = (int64_t)t;
    if (ti < 0 || ti >= s->T || (double)ti != t)
        return df_error(DF_ERR_INVALID, "DDPMScheduler: timestep %g is outside [0, %lld)", t,
                        (long long)s->T);
    if (c->variance_type == DF_VARIANCE_LEARNED || c->variance_type == DF_VARIANCE_LEARNED_RANGE)
        return df_error(DF_ERR_UNSUPPORTED,
                        "DDPMScheduler: field 'variance_type': learned "
                        "variances need a model with twice the channels (not supported)");
    int64_t prev_t = ti - s->T / s->num_inference_steps;
    float ac_t = s->alphas_cumprod[ti];
    float ac_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : 1.0f;
    float beta_prod_t = 1.0f - ac_t, beta_prod_t_prev = 1.0f - ac_prev;
    float current_alpha_t = ac_t / ac_prev;
    float current_beta_t = 1.0f - current_alpha_t;
    float sq_a = sqrtf(ac_t), sq_b = sqrtf(beta_prod_t);
    switch (c->prediction_type) {
    case DF_PRED_EPSILON:
        for (int64_t i = 0; i < n; i++) x0[i] = (x[i] - sq_b * mo[i]) / sq_a;
        break;
    case DF_PRED_SAMPLE:
        for (int64_t i = 0; i < n; i++) x0[i] = mo[i];
        break;
    case DF_PRED_V_PREDICTION:
        for (int64_t i = 0; i < n; i++) x0[i] = sq_a * x[i] - sq_b * mo[i];
        break;
    }
    if (c->thresholding) {
        sched_threshold(s, x0, n, batch);
    } else if (c->clip_sample) {
        float r = (float)c->clip_sample_range;
        for (int64_t i = 0; i < n; i++) x0[i] = x0[i] < -r ? -r : x0[i] > r ? r : x0[i];
    }
    float x0_coeff = (sqrtf(ac_prev) * current_beta_t) / beta_prod_t;
    float cur_coeff = sqrtf(current_alpha_t) * beta_prod_t_prev / beta_prod_t;
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t i = 0; i < n; i++) prev[i] = x0_coeff * x0[i] + cur_coeff * x[i];
    if (ti > 0) {
        float *z = sched_slot(s, 9);
        DF_TRY(sched_draw(a, z, n, "DDPMScheduler"));
        float v = ddpm_variance(s, ac_t, ac_prev);
        float scale = c->variance_type == DF_VARIANCE_FIXED_SMALL_LOG ? v : sqrtf(v);
        for (int64_t i = 0; i < n; i++) prev[i] = prev[i] + scale * z[i];
    }
    return DF_OK;
}
