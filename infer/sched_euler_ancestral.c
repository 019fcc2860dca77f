/* sched_euler_ancestral.c — EulerAncestralDiscreteScheduler step (timesteps and sigmas are the
 * Euler ones: sched_euler.c, without Karras or log-linear sigmas).
 *
 * Follows diffusers v0.21.4 scheduling_euler_ancestral_discrete.py: x0 from epsilon or v;
 * sigma_up = sqrt(s_to^2 (s_from^2 - s_to^2) / s_from^2), sigma_down = sqrt(s_to^2 - sigma_up^2);
 * an Euler step to sigma_down, then noise * sigma_up drawn after the step (one draw per step).
 */
#include "infer/sched_impl.h"

#include <math.h>

df_status sched_euler_ancestral_step(df_sched *s, const float *mo, double t, const float *x,
                                     const df_sched_step_args *a, float *prev, float *x0) {
    const int64_t n = s->numel;
    int i = sched_index_of(s, t);
    if (i < 0)
        return df_error(DF_ERR_INVALID,
                        "EulerAncestralDiscreteScheduler: timestep %g is not in "
                        "the schedule",
                        t);
    float sigma = (float)s->sig[i];
    if (s->cfg.prediction_type == DF_PRED_EPSILON) {
        for (int64_t k = 0; k < n; k++) x0[k] = x[k] - sigma * mo[k];
    } else {
        float s2 = sigma * sigma + 1.0f;
        float c_out = -sigma / sqrtf(s2);
        for (int64_t k = 0; k < n; k++) x0[k] = mo[k] * c_out + x[k] / s2;
    }
    float sf = sigma, st = (float)s->sig[i + 1];
    float sigma_up = sqrtf(st * st * (sf * sf - st * st) / (sf * sf));
    float sigma_down = sqrtf(st * st - sigma_up * sigma_up);
    float dt = sigma_down - sigma;
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t k = 0; k < n; k++) {
        float d = (x[k] - x0[k]) / sigma;
        prev[k] = x[k] + d * dt;
    }
    float *z = sched_slot(s, 9);
    DF_TRY(sched_draw(a, z, n, "EulerAncestralDiscreteScheduler"));
    for (int64_t k = 0; k < n; k++) prev[k] = prev[k] + z[k] * sigma_up;
    return DF_OK;
}
