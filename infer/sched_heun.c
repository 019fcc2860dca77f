/* sched_heun.c — HeunDiscreteScheduler: Heun's second-order method on the Karras ODE, one model
 * evaluation per entry of the doubled schedule (timesteps [t0, t1, t1, ..., t_{n-1}, t_{n-1}]).
 *
 * Follows diffusers v0.21.4 scheduling_heun_discrete.py: index_for_timestep with the
 * _index_counter (the very first lookup takes the second match, later ones the count of steps
 * already taken at that timestep), the first-order Euler predictor that stores derivative, dt
 * and sample, and the corrector that averages the two derivatives; clip_sample on x0.
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <string.h>

enum { PREV_DERIV = 0, SAVED_SAMPLE = 1, X0 = 2 };

static int first_index(const df_sched *s, double t) {
    return sched_index_of(s, t);
}

int sched_heun_index(const df_sched *s, double t) {
    int matches[2] = {-1, -1}, nm = 0;
    for (int j = 0; j < s->n_ts && nm < 2; j++)
        if (s->ts[j] == t) matches[nm++] = j;
    if (nm == 0) return -1;
    bool counter_empty = true;
    for (int j = 0; j < s->n_ts; j++)
        if (s->heun_count && s->heun_count[j]) counter_empty = false;
    int pos = counter_empty ? (nm > 1 ? 1 : 0) : s->heun_count[first_index(s, t)];
    if (pos >= nm) return -1;
    return matches[pos];
}

df_status sched_heun_step(df_sched *s, const float *mo, double t, const float *x, float *prev) {
    const int64_t n = s->numel;
    int i = sched_heun_index(s, t);
    if (i < 0)
        return df_error(DF_ERR_INVALID,
                        "HeunDiscreteScheduler: timestep %g is not in the "
                        "schedule (or already stepped twice)",
                        t);
    s->heun_count[first_index(s, t)]++;
    bool first = s->heun_first;
    float sigma, sigma_next;
    if (first) {
        sigma = (float)s->sig[i];
        sigma_next = (float)s->sig[i + 1];
    } else {
        sigma = (float)s->sig[i - 1];
        sigma_next = (float)s->sig[i];
    }
    float sigma_hat = sigma * 1.0f;
    float sigma_input = first ? sigma_hat : sigma_next;
    float *x0 = sched_slot(s, X0);
    switch (s->cfg.prediction_type) {
    case DF_PRED_EPSILON:
        for (int64_t k = 0; k < n; k++) x0[k] = x[k] - sigma_input * mo[k];
        break;
    case DF_PRED_V_PREDICTION: {
        float s2 = sigma_input * sigma_input + 1.0f;
        float c_out = -sigma_input / sqrtf(s2);
        for (int64_t k = 0; k < n; k++) x0[k] = mo[k] * c_out + x[k] / s2;
        break;
    }
    case DF_PRED_SAMPLE:
        for (int64_t k = 0; k < n; k++) x0[k] = mo[k];
        break;
    }
    if (s->cfg.clip_sample) {
        float r = (float)s->cfg.clip_sample_range;
        for (int64_t k = 0; k < n; k++) x0[k] = x0[k] < -r ? -r : x0[k] > r ? r : x0[k];
    }
    float *pd = sched_slot(s, PREV_DERIV), *ss = sched_slot(s, SAVED_SAMPLE);
    if (first) {
        float dt = sigma_next - sigma_hat;
        for (int64_t k = 0; k < n; k++) {
            float d = (x[k] - x0[k]) / sigma_hat;
            pd[k] = d;
            prev[k] = x[k] + d * dt;
        }
        memcpy(ss, x, (size_t)n * sizeof(float));
        s->heun_dt = dt;
        s->heun_first = false;
    } else {
        float dt = s->heun_dt;
        for (int64_t k = 0; k < n; k++) {
            float d = (x[k] - x0[k]) / sigma_next;
            d = (pd[k] + d) / 2.0f;
            prev[k] = ss[k] + d * dt;
        }
        s->heun_first = true;
    }
    return DF_OK;
}
