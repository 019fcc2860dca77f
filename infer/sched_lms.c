/* sched_lms.c — LMSDiscreteScheduler: linear multistep on the Karras ODE, order 4.
 *
 * Follows diffusers v0.21.4 scheduling_lms_discrete.py: derivative (x - x0) / sigma is queued
 * (at most 4), the coefficient of the j-th newest is the integral over [sigma_i, sigma_{i+1}] of
 * the Lagrange basis polynomial through the last `order` sigmas. Upstream integrates with
 * scipy.integrate.quad (epsrel 1e-4); the integrand is a polynomial of degree <= 3, so a 4-point
 * Gauss-Legendre rule in double is exact (upstream's quad agrees to float32 rounding of the
 * integrand). prev = x + sum_j coeff_j * derivative_j, summed newest first as Python's sum.
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <string.h>

#define LMS_ORDER 4

static double lms_coefficient(const df_sched *s, int order, int t, int cur) {
    static const double gx[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563,
                                 0.8611363115940526};
    static const double gw[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461,
                                 0.3478548451374538};
    double a = (double)(float)s->sig[t], b = (double)(float)s->sig[t + 1];
    double mid = 0.5 * (a + b), half = 0.5 * (b - a), sum = 0;
    for (int q = 0; q < 4; q++) {
        double tau = mid + half * gx[q], prod = 1.0;
        for (int k = 0; k < order; k++) {
            if (k == cur) continue;
            prod *= (tau - s->sig[t - k]) / (s->sig[t - cur] - s->sig[t - k]);
        }
        sum += gw[q] * prod;
    }
    return sum * half;
}

df_status sched_lms_step(df_sched *s, const float *mo, double t, const float *x, float *prev,
                         float *x0) {
    const int64_t n = s->numel;
    int i = sched_index_of(s, t);
    if (i < 0)
        return df_error(DF_ERR_INVALID, "LMSDiscreteScheduler: timestep %g is not in the schedule",
                        t);
    float sigma = (float)s->sig[i];
    switch (s->cfg.prediction_type) {
    case DF_PRED_EPSILON:
        for (int64_t k = 0; k < n; k++) x0[k] = x[k] - sigma * mo[k];
        break;
    case DF_PRED_V_PREDICTION: {
        float s2 = sigma * sigma + 1.0f;
        float c_out = -sigma / sqrtf(s2);
        for (int64_t k = 0; k < n; k++) x0[k] = mo[k] * c_out + x[k] / s2;
        break;
    }
    case DF_PRED_SAMPLE:
        for (int64_t k = 0; k < n; k++) x0[k] = mo[k];
        break;
    }
    /* derivatives: a queue of LMS_ORDER in slots 0..3, n_hist pushes so far */
    float *d = sched_slot(s, s->n_hist % LMS_ORDER);
    for (int64_t k = 0; k < n; k++) d[k] = (x[k] - x0[k]) / sigma;
    s->n_hist++;
    int order = i + 1 < LMS_ORDER ? i + 1 : LMS_ORDER;
    int held = s->n_hist < LMS_ORDER ? s->n_hist : LMS_ORDER;
    int use = order < held ? order : held; /* zip() stops at the shorter list */
    float coeff[LMS_ORDER];
    const float *der[LMS_ORDER];
    for (int j = 0; j < use; j++) {
        coeff[j] = (float)lms_coefficient(s, order, i, j);
        der[j] = sched_slot(s, (s->n_hist - 1 - j) % LMS_ORDER);
    }
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t k = 0; k < n; k++) {
        float acc = coeff[0] * der[0][k];
        for (int j = 1; j < use; j++) acc = acc + coeff[j] * der[j][k];
        prev[k] = x[k] + acc;
    }
    return DF_OK;
}
