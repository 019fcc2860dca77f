/* sched_pndm.c — PNDMScheduler: pseudo Runge-Kutta warm-up steps then linear multistep (PLMS),
 * or PLMS only with skip_prk_steps (Stable Diffusion's config).
 *
 * Follows diffusers v0.21.4 scheduling_pndm.py: set_timesteps builds _timesteps by the spacing,
 * then prk_timesteps (the last pndm_order=4 timesteps, each with a half-step, repeated) and
 * plms_timesteps, or with skip_prk_steps [t0..t_{n-2}, t_{n-2}, t_{n-1}] reversed; step_prk
 * (1/6, 1/3, 1/3, 1/6 RK weights) and step_plms (Adams-Bashforth 1..4 with the first-step
 * correction), both through _get_prev_sample (formula (9) of the PNDM paper). float32 order as
 * the torch ops there. State: ets (the last 4 model outputs), cur_sample, cur_model_output.
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { ETS0 = 0, CUR_SAMPLE = 4, CUR_MO = 5, TMP = 6 }; /* ets use slots 0..3 as a queue */

df_status sched_pndm_set_timesteps(df_sched *s, int n) {
    const df_sched_config *c = &s->cfg;
    const int64_t T = s->T;
    double *base = malloc(((size_t)n + (size_t)T) * sizeof(double) + 64);
    if (!base) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    int nb = n;
    if (c->timestep_spacing == DF_SPACING_LINSPACE) {
        sched_np_linspace(0, (double)(T - 1), n, base);
        for (int i = 0; i < n; i++) base[i] = sched_np_round(base[i]);
    } else if (c->timestep_spacing == DF_SPACING_LEADING) {
        int64_t ratio = T / n;
        for (int i = 0; i < n; i++) base[i] = (double)((int64_t)i * ratio + c->steps_offset);
    } else {
        double ratio = (double)T / (double)n;
        double *v =
            malloc(((size_t)sched_np_arange((double)T, 0, -ratio, NULL) + 1) * sizeof(double));
        if (!v) {
            free(base);
            return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        }
        nb = (int)sched_np_arange((double)T, 0, -ratio, v);
        for (int i = 0; i < nb; i++) base[i] = sched_np_round(v[nb - 1 - i]) - 1;
        free(v);
    }
    /* base is ascending */
    df_status st;
    if (c->skip_prk_steps) {
        /* concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1]: the second-to-last timestep twice (PLMS'
         * first step is evaluated twice); with one step _t[-2:-1] is empty */
        int m = 0;
        if ((st = sched_alloc_ts(s, nb + 1, 0)) != DF_OK) goto out;
        for (int i = 0; i < nb - 1; i++) s->ts[m++] = base[i];
        if (nb >= 2) s->ts[m++] = base[nb - 2];
        s->ts[m++] = base[nb - 1];
        s->n_ts = m;
        for (int i = 0; i < m / 2; i++) { /* reverse into descending order */
            double tmp = s->ts[i];
            s->ts[i] = s->ts[m - 1 - i];
            s->ts[m - 1 - i] = tmp;
        }
        s->counter = 0;
    } else {
        const int order = 4;
        if (nb < order) {
            st = df_error(DF_ERR_INVALID,
                          "PNDMScheduler: field 'steps': PRK warm-up needs at "
                          "least 4 steps; got %d (set skip_prk_steps)",
                          nb);
            goto out;
        }
        int64_t half = T / n / 2;
        /* prk = repeat(_t[-4:], 2) + tile([0, half], 4); prk = prk[:-1].repeat(2)[1:-1] reversed */
        double prk0[8], prk1[14];
        for (int i = 0; i < order; i++) {
            prk0[2 * i] = base[nb - order + i];
            prk0[2 * i + 1] = base[nb - order + i] + (double)half;
        }
        int k = 0;
        double rep[14];
        for (int i = 0; i < 7; i++) rep[k++] = prk0[i], rep[k++] = prk0[i];
        for (int i = 0; i < 12; i++) prk1[i] = rep[1 + i];
        int n_plms = nb - 3;
        if ((st = sched_alloc_ts(s, 12 + n_plms, 0)) != DF_OK) goto out;
        for (int i = 0; i < 12; i++) s->ts[i] = prk1[11 - i];
        for (int i = 0; i < n_plms; i++) s->ts[12 + i] = base[n_plms - 1 - i];
    }
    s->ts_float = false;
    st = DF_OK;
out:
    free(base);
    return st;
}

/* _get_prev_sample(sample, t, prev_t, model_output) */
static void prev_sample(const df_sched *s, const float *x, int64_t t, int64_t prev_t,
                        const float *mo, float *out, int64_t n, float *tmp) {
    float ac_t = s->alphas_cumprod[t];
    float ac_prev = prev_t >= 0 ? s->alphas_cumprod[prev_t] : s->final_alpha_cumprod;
    float beta_prod_t = 1.0f - ac_t, beta_prod_t_prev = 1.0f - ac_prev;
    if (s->cfg.prediction_type == DF_PRED_V_PREDICTION) {
        float sa = sqrtf(ac_t), sb = sqrtf(beta_prod_t);
        for (int64_t i = 0; i < n; i++) tmp[i] = sa * mo[i] + sb * x[i];
        mo = tmp;
    }
    float sample_coeff = sqrtf(ac_prev / ac_t);
    float denom = ac_t * sqrtf(beta_prod_t_prev) + sqrtf(ac_t * beta_prod_t * ac_prev);
    float diff = ac_prev - ac_t;
    for (int64_t i = 0; i < n; i++) out[i] = sample_coeff * x[i] - (diff * mo[i]) / denom;
}

static float *ets(df_sched *s, int back) { /* back = 1 is ets[-1] */
    return sched_slot(s, ETS0 + (s->n_hist - back) % 4);
}

static void ets_push(df_sched *s, const float *mo) {
    /* ets = ets[-3:] + [mo]: a queue of 4 in slots 0..3 indexed by the push count */
    float *dst = sched_slot(s, ETS0 + s->n_hist % 4);
    memcpy(dst, mo, (size_t)s->numel * sizeof(float));
    s->n_hist++;
}

static int ets_len(const df_sched *s) {
    return s->n_hist < 4 ? s->n_hist : 4;
}

static df_status step_prk(df_sched *s, const float *mo, int64_t t, const float *x, float *prev) {
    const int64_t n = s->numel;
    int64_t diff_to_prev = s->counter % 2 ? 0 : s->T / s->num_inference_steps / 2;
    int64_t prev_t = t - diff_to_prev;
    int64_t tt = (int64_t)s->ts[s->counter / 4 * 4];
    float *cmo = sched_slot(s, CUR_MO), *cs = sched_slot(s, CUR_SAMPLE);
    float *m = sched_slot(s, TMP);
    const float sixth = (float)(1.0 / 6), third = (float)(1.0 / 3);
    int r = s->counter % 4;
    const float *use = mo;
    if (r == 0) {
        for (int64_t i = 0; i < n; i++)
            cmo[i] = (s->cur_model_output_zero ? 0.0f : cmo[i]) + sixth * mo[i];
        s->cur_model_output_zero = false;
        ets_push(s, mo);
        memcpy(cs, x, (size_t)n * sizeof(float));
        s->has_cur_sample = true;
    } else if (r == 1 || r == 2) {
        for (int64_t i = 0; i < n; i++) cmo[i] = cmo[i] + third * mo[i];
    } else {
        for (int64_t i = 0; i < n; i++) m[i] = cmo[i] + sixth * mo[i];
        use = m;
        s->cur_model_output_zero = true;
    }
    const float *cur = s->has_cur_sample ? cs : x;
    prev_sample(s, cur, tt, prev_t, use, prev, n, sched_slot(s, TMP + 1));
    s->counter++;
    return DF_OK;
}

static df_status step_plms(df_sched *s, const float *mo, int64_t t, const float *x, float *prev) {
    const int64_t n = s->numel;
    int64_t prev_t = t - s->T / s->num_inference_steps;
    if (s->counter != 1) {
        ets_push(s, mo);
    } else {
        prev_t = t;
        t = t + s->T / s->num_inference_steps;
    }
    float *m = sched_slot(s, TMP), *cs = sched_slot(s, CUR_SAMPLE);
    int len = ets_len(s);
    const float *use = m;
    if (len == 1 && s->counter == 0) {
        use = mo;
        memcpy(cs, x, (size_t)n * sizeof(float));
        s->has_cur_sample = true;
    } else if (len == 1 && s->counter == 1) {
        const float *e1 = ets(s, 1);
        for (int64_t i = 0; i < n; i++) m[i] = (mo[i] + e1[i]) / 2.0f;
        x = cs;
        s->has_cur_sample = false;
    } else if (len == 2) {
        const float *e1 = ets(s, 1), *e2 = ets(s, 2);
        for (int64_t i = 0; i < n; i++) m[i] = (3.0f * e1[i] - e2[i]) / 2.0f;
    } else if (len == 3) {
        const float *e1 = ets(s, 1), *e2 = ets(s, 2), *e3 = ets(s, 3);
        for (int64_t i = 0; i < n; i++)
            m[i] = (23.0f * e1[i] - 16.0f * e2[i] + 5.0f * e3[i]) / 12.0f;
    } else {
        const float *e1 = ets(s, 1), *e2 = ets(s, 2), *e3 = ets(s, 3), *e4 = ets(s, 4);
        const float c = (float)(1.0 / 24);
        for (int64_t i = 0; i < n; i++)
            m[i] = c * (55.0f * e1[i] - 59.0f * e2[i] + 37.0f * e3[i] - 9.0f * e4[i]);
    }
    /* x may alias cs, and prev_sample only reads x before writing prev */
    prev_sample(s, x, t, prev_t, use, prev, n, sched_slot(s, TMP + 1));
    s->counter++;
    return DF_OK;
}

df_status sched_pndm_step(df_sched *s, const float *mo, double t, const float *x, float *prev) {
    int64_t ti = (int64_t)t;
    if (ti < 0 || ti >= s->T || (double)ti != t)
        return df_error(DF_ERR_INVALID, "PNDMScheduler: timestep %g is outside [0, %lld)", t,
                        (long long)s->T);
    if (s->counter < 12 && !s->cfg.skip_prk_steps) return step_prk(s, mo, ti, x, prev);
    if (!s->cfg.skip_prk_steps && ets_len(s) < 3)
        return df_error(DF_ERR_INVALID, "PNDMScheduler: PLMS needs 3 previous model outputs");
    return step_plms(s, mo, ti, x, prev);
}
