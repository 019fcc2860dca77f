/* sched_unipc.c — UniPCMultistepScheduler: the UniP predictor and UniC corrector (bh1, bh2),
 * orders 1-3, data (predict_x0) or noise prediction form.
 *
 * Follows diffusers v0.21.4 scheduling_unipc_multistep.py (timesteps as DPM-Solver's, in
 * sched_dpmsolver.c). step: convert the model output; if a previous sample exists (and the
 * corrector is not disabled for the previous index), correct the current sample with UniC using
 * the converted output; push output and timestep; pick this_order (lower_order_final, warm-up);
 * predict with UniP. The coefficients rhos come from the small system R rho = b, R_ij = r_j^i,
 * b_i = h_phi_{i+1} i! / B(h); order 2 predictors use rho = 0.5, order 1 correctors too. The
 * linear solve (at most 3x3) is Gaussian elimination with partial pivoting in double, rounded to
 * float32 like upstream's float32 torch.linalg.solve result.
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <string.h>

enum { MO0 = 0, LAST = 3, CONV = 4, CORR = 5, D1S = 6 }; /* D1s use slots 6, 7 */

static float *mo_back(df_sched *s, int j) {
    return sched_slot(s, MO0 + (s->n_hist - j + 3) % 3);
}
static double t_back(const df_sched *s, int j) {
    return s->hist_t[(s->n_hist - j + 3) % 3];
}

/* Solves A x = b for n <= 3 (row-major A), in double; returns false when singular. */
static bool solve_small(int n, const float *A, const float *b, float *x) {
    double m[3][4];
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) m[i][j] = A[i * n + j];
        m[i][n] = b[i];
    }
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(m[r][c]) > fabs(m[p][c])) p = r;
        if (m[p][c] == 0) return false;
        if (p != c)
            for (int j = 0; j <= n; j++) {
                double tmp = m[c][j];
                m[c][j] = m[p][j];
                m[p][j] = tmp;
            }
        for (int r = c + 1; r < n; r++) {
            double f = m[r][c] / m[c][c];
            for (int j = c; j <= n; j++) m[r][j] -= f * m[c][j];
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        double v = m[i][n];
        for (int j = i + 1; j < n; j++) v -= m[i][j] * x[j];
        x[i] = (float)(v / m[i][i]);
    }
    return true;
}

typedef struct uni_coeffs {
    float h, hh, h_phi_1, B_h;
    float rks[3];
    float R[9], b[3];
    int order;
} uni_coeffs;

/* The shared part of the predictor and corrector: rks and the D1s (into slots), R and b. */
static void uni_setup(df_sched *s, int order, int64_t t, int64_t s0, const float *m0,
                      uni_coeffs *u) {
    const int64_t n = s->numel;
    const float *L = s->lambda_t;
    u->order = order;
    u->h = L[t] - L[s0];
    for (int i = 1; i < order; i++) {
        int64_t si = (int64_t)t_back(s, i + 1);
        const float *mi = mo_back(s, i + 1);
        float rk = (L[si] - L[s0]) / u->h;
        u->rks[i - 1] = rk;
        float *d = sched_slot(s, D1S + i - 1);
        for (int64_t k = 0; k < n; k++) d[k] = (mi[k] - m0[k]) / rk;
    }
    u->rks[order - 1] = 1.0f;
    u->hh = s->cfg.predict_x0 ? -u->h : u->h;
    u->h_phi_1 = expm1f(u->hh);
    float h_phi_k = u->h_phi_1 / u->hh - 1.0f;
    int factorial_i = 1;
    u->B_h = s->cfg.solver_type == DF_SOLVER_BH1 ? u->hh : expm1f(u->hh);
    for (int i = 1; i <= order; i++) {
        for (int j = 0; j < order; j++) {
            float r = u->rks[j], p = 1.0f;
            for (int e = 0; e < i - 1; e++) p = e == 0 ? r : p * r;
            u->R[(i - 1) * order + j] = p;
        }
        u->b[i - 1] = h_phi_k * (float)factorial_i / u->B_h;
        factorial_i *= i + 1;
        h_phi_k = h_phi_k / u->hh - (float)(1.0 / factorial_i);
    }
}

/* multistep_uni_p_bh_update: prediction of x at prev_t into out. */
static df_status uni_p(df_sched *s, int64_t pt, const float *x, int order, float *out) {
    const int64_t n = s->numel;
    int64_t s0 = (int64_t)t_back(s, 1);
    const float *m0 = mo_back(s, 1);
    uni_coeffs u;
    uni_setup(s, order, pt, s0, m0, &u);
    float rhos[3] = {0};
    int K = order - 1;
    if (K == 1) {
        rhos[0] = 0.5f;
    } else if (K == 2) {
        float Rs[4] = {u.R[0], u.R[1], u.R[3], u.R[4]};
        if (!solve_small(2, Rs, u.b, rhos))
            return df_error(DF_ERR_INVALID, "UniPCMultistepScheduler: singular predictor system");
    }
    const float *A = s->alpha_t, *S = s->sigma_t;
    float c1, c2, c3;
    if (s->cfg.predict_x0) {
        c1 = S[pt] / S[s0];
        c2 = A[pt] * u.h_phi_1;
        c3 = A[pt] * u.B_h;
    } else {
        c1 = A[pt] / A[s0];
        c2 = S[pt] * u.h_phi_1;
        c3 = S[pt] * u.B_h;
    }
    const float *d0 = K > 0 ? sched_slot(s, D1S) : NULL,
                *d1 = K > 1 ? sched_slot(s, D1S + 1) : NULL;
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t k = 0; k < n; k++) {
        float xt = c1 * x[k] - c2 * m0[k];
        if (K > 0) {
            float res = rhos[0] * d0[k];
            if (K > 1) res = res + rhos[1] * d1[k];
            xt = xt - c3 * res;
        }
        out[k] = xt;
    }
    return DF_OK;
}

/* multistep_uni_c_bh_update: corrects this_sample at timestep t with model_t. */
static df_status uni_c(df_sched *s, const float *model_t, int64_t t, const float *last,
                       const float *this_sample, int order, float *out) {
    const int64_t n = s->numel;
    int64_t s0 = (int64_t)t_back(s, 1);
    const float *m0 = mo_back(s, 1);
    (void)this_sample;
    uni_coeffs u;
    uni_setup(s, order, t, s0, m0, &u);
    float rhos[3] = {0};
    if (order == 1) {
        rhos[0] = 0.5f;
    } else if (!solve_small(order, u.R, u.b, rhos)) {
        return df_error(DF_ERR_INVALID, "UniPCMultistepScheduler: singular corrector system");
    }
    int K = order - 1;
    const float *A = s->alpha_t, *S = s->sigma_t;
    float c1, c2, c3;
    if (s->cfg.predict_x0) {
        c1 = S[t] / S[s0];
        c2 = A[t] * u.h_phi_1;
        c3 = A[t] * u.B_h;
    } else {
        c1 = A[t] / A[s0];
        c2 = S[t] * u.h_phi_1;
        c3 = S[t] * u.B_h;
    }
    float rl = rhos[order - 1];
    const float *d0 = K > 0 ? sched_slot(s, D1S) : NULL,
                *d1 = K > 1 ? sched_slot(s, D1S + 1) : NULL;
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t k = 0; k < n; k++) {
        float xt = c1 * last[k] - c2 * m0[k];
        float corr = 0.0f;
        if (K > 0) {
            corr = rhos[0] * d0[k];
            if (K > 1) corr = corr + rhos[1] * d1[k];
        }
        float d1t = model_t[k] - m0[k];
        float tot = K > 0 ? corr + rl * d1t : rl * d1t;
        out[k] = xt - c3 * tot;
    }
    return DF_OK;
}

df_status sched_unipc_step(df_sched *s, const float *mo, double t, const float *x, int64_t batch,
                           float *prev) {
    const df_sched_config *c = &s->cfg;
    const int64_t n = s->numel;
    int i = sched_index_of(s, t);
    if (i < 0) i = s->n_ts - 1;
    int64_t ti = (int64_t)t;
    if (ti < 0 || ti >= s->T || (double)ti != t)
        return df_error(DF_ERR_INVALID,
                        "UniPCMultistepScheduler: timestep %g is outside "
                        "[0, %lld)",
                        t, (long long)s->T);
    bool use_corrector = i > 0 && s->has_last_sample;
    for (int j = 0; j < c->n_disable_corrector; j++)
        if (c->disable_corrector[j] == i - 1) use_corrector = false;
    /* convert_model_output */
    float *conv = sched_slot(s, CONV);
    float a = s->alpha_t[ti], sg = s->sigma_t[ti];
    if (c->predict_x0) {
        switch (c->prediction_type) {
        case DF_PRED_EPSILON:
            for (int64_t k = 0; k < n; k++) conv[k] = (x[k] - sg * mo[k]) / a;
            break;
        case DF_PRED_SAMPLE: memcpy(conv, mo, (size_t)n * sizeof(float)); break;
        case DF_PRED_V_PREDICTION:
            for (int64_t k = 0; k < n; k++) conv[k] = a * x[k] - sg * mo[k];
            break;
        }
        if (c->thresholding) sched_threshold(s, conv, n, batch);
    } else {
        switch (c->prediction_type) {
        case DF_PRED_EPSILON: memcpy(conv, mo, (size_t)n * sizeof(float)); break;
        case DF_PRED_SAMPLE:
            for (int64_t k = 0; k < n; k++) conv[k] = (x[k] - a * mo[k]) / sg;
            break;
        case DF_PRED_V_PREDICTION:
            for (int64_t k = 0; k < n; k++) conv[k] = a * mo[k] + sg * x[k];
            break;
        }
    }
    const float *sample = x;
    float *corr = sched_slot(s, CORR);
    if (use_corrector) {
        DF_TRY(uni_c(s, conv, ti, sched_slot(s, LAST), x, s->this_order, corr));
        sample = corr;
    }
    int64_t pt = i == s->n_ts - 1 ? 0 : (int64_t)s->ts[i + 1];
    /* push */
    memcpy(sched_slot(s, MO0 + s->n_hist % 3), conv, (size_t)n * sizeof(float));
    s->hist_t[s->n_hist % 3] = (double)ti;
    s->n_hist++;
    int this_order = (int)c->solver_order;
    if (c->lower_order_final && s->n_ts - i < this_order) this_order = s->n_ts - i;
    if (this_order > s->lower_order_nums + 1) this_order = s->lower_order_nums + 1;
    s->this_order = this_order;
    memcpy(sched_slot(s, LAST), sample, (size_t)n * sizeof(float));
    s->has_last_sample = true;
    DF_TRY(uni_p(s, pt, sched_slot(s, LAST), this_order, prev));
    if (s->lower_order_nums < c->solver_order) s->lower_order_nums++;
    return DF_OK;
}
