/* sched_dpmsolver.c — DPMSolverMultistepScheduler (DPM-Solver and DPM-Solver++, orders 1-3,
 * midpoint/heun second-order forms), and the timesteps it shares with UniPC.
 *
 * Follows diffusers v0.21.4 scheduling_dpmsolver_multistep.py. Timesteps: spacing over
 * n + 1 points dropping the last (leading: arange(n + 1) * (T // (n + 1)) + steps_offset), or
 * Karras sigmas mapped back to rounded timesteps, de-duplicated keeping the first occurrence;
 * `sigmas` is the float32 train table ((1 - abar) / abar) ** 0.5, or the float64 Karras sigmas.
 * Tables alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar), lambda_t = log alpha_t - log sigma_t
 * (float32, indexed by integer timestep). step: convert_model_output (x0 for ++, epsilon for the
 * plain solver; thresholding), then the first/second/third-order update with the 0-d float32
 * coefficient arithmetic of upstream, lower_order_final for fewer than 15 steps.
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MO0 = 0, CONV = 3 }; /* model outputs queue in slots 0..2 */

df_status sched_multistep_set_timesteps(df_sched *s, int n) {
    const df_sched_config *c = &s->cfg;
    const int64_t T = s->T;
    int64_t last = T;
    if (c->kind == DF_SCHED_DPMSOLVER_MULTISTEP) {
        /* searchsorted(flip(lambda_t), lambda_min_clipped): values below the clip */
        int64_t clipped = 0;
        for (int64_t i = T - 1; i >= 0; i--)
            if ((double)s->lambda_t[i] < c->lambda_min_clipped)
                clipped++;
            else
                break;
        last = T - clipped;
    }
    double *ts = malloc(((size_t)n + 2 + (size_t)T) * sizeof(double));
    if (!ts) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    int m = n;
    if (c->timestep_spacing == DF_SPACING_LINSPACE) {
        double *v = ts + n + 1;
        sched_np_linspace(0, (double)(last - 1), n + 1, v);
        for (int i = 0; i < n; i++) ts[i] = sched_np_round(v[n - i]);
    } else if (c->timestep_spacing == DF_SPACING_LEADING) {
        int64_t ratio = last / (n + 1);
        for (int i = 0; i < n; i++) ts[i] = (double)((int64_t)(n - i) * ratio + c->steps_offset);
    } else {
        double ratio = (double)T / (double)n;
        int64_t k = sched_np_arange((double)last, 0, -ratio, NULL);
        double *v = malloc(((size_t)k + 1) * sizeof(double));
        if (!v) {
            free(ts);
            return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        }
        sched_np_arange((double)last, 0, -ratio, v);
        m = (int)(k < n + 1 ? k : n + 1);
        for (int i = 0; i < m; i++) ts[i] = sched_np_round(v[i]) - 1;
        free(v);
    }
    int n_sig = (int)T;
    double *sig = NULL;
    if (c->use_karras_sigmas) {
        float *log_sigmas = malloc((size_t)T * sizeof(float));
        sig = malloc((size_t)n * sizeof(double));
        if (!log_sigmas || !sig) {
            free(ts), free(log_sigmas), free(sig);
            return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        }
        for (int64_t i = 0; i < T; i++) log_sigmas[i] = logf(s->train_sigmas[i]);
        /* in_sigmas is the ascending train table: sigma_min = in[-1], sigma_max = in[0] */
        sched_karras(s->train_sigmas[T - 1], s->train_sigmas[0], n, sig);
        for (int i = 0; i < n; i++)
            ts[n - 1 - i] = sched_np_round(sched_sigma_to_t(sig[i], log_sigmas, T));
        m = n;
        n_sig = n;
        free(log_sigmas);
    }
    /* np.unique(return_index) then sort: keep the first occurrence of each value, in order */
    int u = 0;
    for (int i = 0; i < m; i++) {
        bool seen = false;
        for (int j = 0; j < u; j++)
            if (ts[j] == ts[i]) seen = true;
        if (!seen) ts[u++] = ts[i];
    }
    df_status st = sched_alloc_ts(s, u, n_sig);
    if (st == DF_OK) {
        for (int i = 0; i < u; i++) s->ts[i] = ts[i];
        for (int i = 0; i < n_sig; i++) s->sig[i] = sig ? sig[i] : (double)s->train_sigmas[i];
        s->ts_float = false;
        for (int i = 0; i < u; i++)
            if (s->ts[i] < 0 || s->ts[i] >= (double)T)
                st = df_error(DF_ERR_INVALID,
                              "%s: timestep %g outside [0, %lld) (check steps_offset)",
                              df_sched_kind_name(c->kind), s->ts[i], (long long)T);
    }
    free(ts);
    free(sig);
    return st;
}

static float *mo_back(df_sched *s, int j) { /* j = 1: model_outputs[-1] */
    return sched_slot(s, MO0 + (s->n_hist - j + 3) % 3);
}

/* convert_model_output: x0 (dpmsolver++) or epsilon (dpmsolver) into out. */
static void convert(df_sched *s, const float *mo, int64_t t, const float *x, int64_t batch,
                    float *out) {
    const df_sched_config *c = &s->cfg;
    const int64_t n = s->numel;
    float a = s->alpha_t[t], sg = s->sigma_t[t];
    if (c->algorithm_type == DF_ALGO_DPMSOLVERPP) {
        switch (c->prediction_type) {
        case DF_PRED_EPSILON:
            for (int64_t k = 0; k < n; k++) out[k] = (x[k] - sg * mo[k]) / a;
            break;
        case DF_PRED_SAMPLE: memcpy(out, mo, (size_t)n * sizeof(float)); break;
        case DF_PRED_V_PREDICTION:
            for (int64_t k = 0; k < n; k++) out[k] = a * x[k] - sg * mo[k];
            break;
        }
        if (c->thresholding) sched_threshold(s, out, n, batch);
        return;
    }
    switch (c->prediction_type) {
    case DF_PRED_EPSILON: memcpy(out, mo, (size_t)n * sizeof(float)); break;
    case DF_PRED_SAMPLE:
        for (int64_t k = 0; k < n; k++) out[k] = (x[k] - a * mo[k]) / sg;
        break;
    case DF_PRED_V_PREDICTION:
        for (int64_t k = 0; k < n; k++) out[k] = a * mo[k] + sg * x[k];
        break;
    }
    if (c->thresholding) {
        for (int64_t k = 0; k < n; k++) out[k] = (x[k] - sg * out[k]) / a;
        sched_threshold(s, out, n, batch);
        for (int64_t k = 0; k < n; k++) out[k] = (x[k] - a * out[k]) / sg;
    }
}

df_status sched_dpmsolver_step(df_sched *s, const float *mo, double t, const float *x,
                               int64_t batch, float *prev) {
    const df_sched_config *c = &s->cfg;
    const int64_t n = s->numel;
    if (c->variance_type == DF_VARIANCE_LEARNED || c->variance_type == DF_VARIANCE_LEARNED_RANGE)
        return df_error(DF_ERR_UNSUPPORTED, "DPMSolverMultistepScheduler: field 'variance_type': "
                                            "learned variances are not supported");
    int i = sched_index_of(s, t);
    if (i < 0) i = s->n_ts - 1;
    int64_t ti = (int64_t)t;
    if (ti < 0 || ti >= s->T || (double)ti != t)
        return df_error(DF_ERR_INVALID,
                        "DPMSolverMultistepScheduler: timestep %g is outside "
                        "[0, %lld)",
                        t, (long long)s->T);
    int len = s->n_ts;
    int64_t pt = i == len - 1 ? 0 : (int64_t)s->ts[i + 1];
    bool lof = i == len - 1 && c->lower_order_final && len < 15;
    bool los = i == len - 2 && c->lower_order_final && len < 15;
    /* push the converted output */
    convert(s, mo, ti, x, batch, sched_slot(s, MO0 + s->n_hist % 3));
    s->n_hist++;
    const float *m0 = mo_back(s, 1);
    const float *L = s->lambda_t, *A = s->alpha_t, *S = s->sigma_t;
    bool pp = c->algorithm_type == DF_ALGO_DPMSOLVERPP;
    if (c->solver_order == 1 || s->lower_order_nums < 1 || lof || i < 1) {
        float h = L[pt] - L[ti];
        float c1, c2;
        if (pp) {
            c1 = S[pt] / S[ti];
            c2 = A[pt] * (expf(-h) - 1.0f);
        } else {
            c1 = A[pt] / A[ti];
            c2 = S[pt] * (expf(h) - 1.0f);
        }
#pragma omp parallel for if (n > SCHED_OMP_MIN)
        for (int64_t k = 0; k < n; k++) prev[k] = c1 * x[k] - c2 * m0[k];
    } else if (c->solver_order == 2 || s->lower_order_nums < 2 || los || i < 2) {
        int64_t s0 = ti, s1 = (int64_t)s->ts[i - 1];
        const float *m1 = mo_back(s, 2);
        float h = L[pt] - L[s0], h0 = L[s0] - L[s1];
        float r0 = h0 / h;
        float inv_r0 = 1.0f / r0;
        float c1, c2, c3;
        if (pp) {
            c1 = S[pt] / S[s0];
            float em = expf(-h) - 1.0f;
            c2 = A[pt] * em;
            c3 = c->solver_type == DF_SOLVER_MIDPOINT ? 0.5f * (A[pt] * em)
                                                      : -(A[pt] * (em / h + 1.0f));
        } else {
            c1 = A[pt] / A[s0];
            float ep = expf(h) - 1.0f;
            c2 = S[pt] * ep;
            c3 = c->solver_type == DF_SOLVER_MIDPOINT ? 0.5f * (S[pt] * ep)
                                                      : S[pt] * (ep / h - 1.0f);
        }
#pragma omp parallel for if (n > SCHED_OMP_MIN)
        for (int64_t k = 0; k < n; k++) {
            float d1 = inv_r0 * (m0[k] - m1[k]);
            prev[k] = (c1 * x[k] - c2 * m0[k]) - c3 * d1;
        }
    } else {
        int64_t s0 = ti, s1 = (int64_t)s->ts[i - 1], s2 = (int64_t)s->ts[i - 2];
        const float *m1 = mo_back(s, 2), *m2 = mo_back(s, 3);
        float h = L[pt] - L[s0], h0 = L[s0] - L[s1], h1 = L[s1] - L[s2];
        float r0 = h0 / h, r1 = h1 / h;
        float i0 = 1.0f / r0, i1 = 1.0f / r1, w = r0 / (r0 + r1), iw = 1.0f / (r0 + r1);
        float c1, c2, c3, c4;
        if (pp) {
            c1 = S[pt] / S[s0];
            float em = expf(-h) - 1.0f;
            c2 = A[pt] * em;
            c3 = A[pt] * (em / h + 1.0f);
            c4 = A[pt] * ((expf(-h) - 1.0f + h) / (h * h) - 0.5f);
        } else {
            c1 = A[pt] / A[s0];
            float ep = expf(h) - 1.0f;
            c2 = S[pt] * ep;
            c3 = -(S[pt] * (ep / h - 1.0f));
            c4 = S[pt] * ((expf(h) - 1.0f - h) / (h * h) - 0.5f);
        }
#pragma omp parallel for if (n > SCHED_OMP_MIN)
        for (int64_t k = 0; k < n; k++) {
            float d10 = i0 * (m0[k] - m1[k]), d11 = i1 * (m1[k] - m2[k]);
            float d1 = d10 + w * (d10 - d11);
            float d2 = iw * (d10 - d11);
            prev[k] = ((c1 * x[k] - c2 * m0[k]) + c3 * d1) - c4 * d2;
        }
    }
    if (s->lower_order_nums < c->solver_order) s->lower_order_nums++;
    return DF_OK;
}
