/* sched_euler.c — EulerDiscreteScheduler, and the timesteps/sigmas the sigma schedulers share.
 *
 * Follows diffusers v0.21.4 scheduling_euler_discrete.py: timesteps by spacing in numpy
 * (linspace in float64 cast to float32; leading arange(n) * (T // n) + steps_offset; trailing
 * round(arange(T, 0, -T/n)) - 1), sigmas = np.interp(timesteps, arange(T), train_sigmas) in
 * float64 from the float32 table ((1 - abar) / abar) ** 0.5, or log_linear
 * (torch.linspace(log s_min, log s_max, n + 1).exp(), as upstream), or Karras sigmas with
 * timesteps from _sigma_to_t; then [sigmas, 0] cast to float32. step (s_churn = 0: gamma = 0)
 * draws a noise tensor at every step as upstream does, although it is multiplied by zero.
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <stdlib.h>

int sched_sigma_timesteps(const df_sched *s, int n, double *out) {
    const df_sched_config *c = &s->cfg;
    const int64_t T = s->T;
    if (c->timestep_spacing == DF_SPACING_LINSPACE) {
        sched_np_linspace(0, (double)(T - 1), n, out);
        for (int i = 0; i < n / 2; i++) {
            double tmp = out[i];
            out[i] = out[n - 1 - i];
            out[n - 1 - i] = tmp;
        }
        for (int i = 0; i < n; i++) out[i] = (double)(float)out[i];
        return n;
    }
    if (c->timestep_spacing == DF_SPACING_LEADING) {
        int64_t ratio = T / n;
        for (int i = 0; i < n; i++)
            out[i] = (double)((float)((int64_t)(n - 1 - i) * ratio) + (float)c->steps_offset);
        return n;
    }
    double ratio = (double)T / (double)n;
    int64_t m = sched_np_arange((double)T, 0, -ratio, NULL);
    if (m > n + 1) m = n + 1; /* cannot happen for T / n >= 1; keeps `out` in bounds */
    /* arange(T, 0, -ratio)[i] = T + i * delta (numpy fills from the first two values) */
    double delta = ((double)T - ratio) - (double)T;
    for (int64_t i = 0; i < m; i++) {
        double v = i == 0 ? (double)T : (double)T + (double)i * delta;
        out[i] = (double)((float)sched_np_round(v) - 1.0f);
    }
    return (int)m;
}

/* Shared by Euler, Euler ancestral, LMS, Heun (Heun duplicates afterwards). */
static df_status sigma_schedule(df_sched *s, int n, bool log_linear, bool karras) {
    const int64_t T = s->T;
    double *ts = malloc(((size_t)n + 2) * sizeof(double));
    double *sg = malloc(((size_t)n + 3) * sizeof(double));
    float *log_sigmas = malloc((size_t)T * sizeof(float));
    if (!ts || !sg || !log_sigmas) {
        free(ts), free(sg), free(log_sigmas);
        return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    }
    int m = sched_sigma_timesteps(s, n, ts);
    int n_sig = m;
    for (int64_t i = 0; i < T; i++) log_sigmas[i] = logf(s->train_sigmas[i]);
    if (log_linear) {
        float *v = malloc(((size_t)n + 1) * sizeof(float));
        if (!v) {
            free(ts), free(sg), free(log_sigmas);
            return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        }
        sched_torch_linspace_f32(log_sigmas[T - 1], log_sigmas[0], n + 1, v);
        for (int i = 0; i <= n; i++) sg[i] = expf(v[i]);
        n_sig = n + 1;
        free(v);
    } else {
        for (int i = 0; i < m; i++) sg[i] = sched_np_interp(ts[i], s->train_sigmas, T);
    }
    if (karras) {
        double smin = sg[n_sig - 1], smax = sg[0];
        sched_karras(smin, smax, n, sg);
        n_sig = n;
        for (int i = 0; i < n; i++) ts[i] = sched_sigma_to_t(sg[i], log_sigmas, T);
        m = n;
    }
    df_status st = sched_alloc_ts(s, m, n_sig + 1);
    if (st == DF_OK) {
        for (int i = 0; i < m; i++) s->ts[i] = ts[i];
        for (int i = 0; i < n_sig; i++) s->sig[i] = (double)(float)sg[i];
        s->sig[n_sig] = 0.0;
        s->ts_float = true;
    }
    free(ts), free(sg), free(log_sigmas);
    return st;
}

df_status sched_euler_set_timesteps(df_sched *s, int n) {
    bool euler = s->cfg.kind == DF_SCHED_EULER;
    return sigma_schedule(s, n, euler && s->cfg.interpolation_type == DF_INTERP_LOG_LINEAR,
                          euler && s->cfg.use_karras_sigmas);
}

df_status sched_lms_set_timesteps(df_sched *s, int n) {
    return sigma_schedule(s, n, false, s->cfg.use_karras_sigmas);
}

df_status sched_heun_set_timesteps(df_sched *s, int n) {
    DF_TRY(sigma_schedule(s, n, false, s->cfg.use_karras_sigmas));
    /* sigmas = [s0, s1, s1, ..., s_{m-1}, s_{m-1}, 0]; timesteps = [t0, t1, t1, ...] */
    int m = s->n_ts, k = s->n_sig; /* k = m + 1 */
    double *ts = malloc((size_t)m * sizeof(double)), *sg = malloc((size_t)k * sizeof(double));
    if (!ts || !sg) {
        free(ts), free(sg);
        return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    }
    for (int i = 0; i < m; i++) ts[i] = s->ts[i];
    for (int i = 0; i < k; i++) sg[i] = s->sig[i];
    df_status st = sched_alloc_ts(s, 2 * m - 1, 2 * k - 2);
    if (st == DF_OK) {
        int a = 0, b = 0;
        s->ts[a++] = ts[0];
        for (int i = 1; i < m; i++) s->ts[a++] = ts[i], s->ts[a++] = ts[i];
        s->sig[b++] = sg[0];
        for (int i = 1; i < k - 1; i++) s->sig[b++] = sg[i], s->sig[b++] = sg[i];
        s->sig[b++] = sg[k - 1];
        s->n_ts = a;
        s->n_sig = b;
        s->ts_float = true;
    }
    free(ts), free(sg);
    return st;
}

df_status sched_euler_step(df_sched *s, const float *mo, double t, const float *x,
                           const df_sched_step_args *a, float *prev, float *x0) {
    const int64_t n = s->numel;
    int i = sched_index_of(s, t);
    if (i < 0)
        return df_error(DF_ERR_INVALID,
                        "EulerDiscreteScheduler: timestep %g is not in the "
                        "schedule",
                        t);
    float sigma = (float)s->sig[i];
    /* the draw advances the generator even though s_churn = 0 multiplies it by zero */
    float *z = sched_slot(s, 9);
    DF_TRY(sched_draw(a, z, n, "EulerDiscreteScheduler"));
    float sigma_hat = sigma * 1.0f;
    switch (s->cfg.prediction_type) {
    case DF_PRED_SAMPLE:
        for (int64_t k = 0; k < n; k++) x0[k] = mo[k];
        break;
    case DF_PRED_EPSILON:
        for (int64_t k = 0; k < n; k++) x0[k] = x[k] - sigma_hat * mo[k];
        break;
    case DF_PRED_V_PREDICTION: {
        float s2 = sigma * sigma + 1.0f;
        float c_out = -sigma / sqrtf(s2);
        for (int64_t k = 0; k < n; k++) x0[k] = mo[k] * c_out + x[k] / s2;
        break;
    }
    }
    float dt = (float)s->sig[i + 1] - sigma_hat;
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t k = 0; k < n; k++) {
        float d = (x[k] - x0[k]) / sigma_hat;
        prev[k] = x[k] + d * dt;
    }
    return DF_OK;
}
