/* sched_betas.c — beta schedules and the tables every scheduler builds in __init__, plus the
 * numpy/torch helpers the set_timesteps code needs, in the exact arithmetic of the reference.
 *
 * Follows diffusers v0.21.4: betas are float32 torch tensors (torch.linspace in float32, squared
 * for scaled_linear; squaredcos_cap_v2 from betas_for_alpha_bar in Python floats then cast;
 * sigmoid from torch.linspace(-6, 6)), alphas_cumprod = torch.cumprod(1 - betas) — which on CPU
 * accumulates in double and rounds each prefix to float32 — and rescale_zero_terminal_snr in
 * float32. torch.linspace on CPU (ATen RangeFactoriesKernel, torch 1.13) fills the first half
 * as start + step*i and the second half as end - step*(steps-1-i) (each a fused multiply-add
 * in the AVX2 build), vectorised in blocks of 2 x 8 floats where lane k of a block adds k*step
 * (rounded separately) to the block's base; we reproduce that rounding exactly (bit-equal to
 * the fixtures' betas).
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ numpy helpers ------------ */

void sched_np_linspace(double start, double stop, int64_t num, double *out) {
    if (num <= 0) return;
    if (num == 1) {
        out[0] = start;
        return;
    }
    double step = (stop - start) / (double)(num - 1);
    for (int64_t i = 0; i < num; i++) out[i] = (double)i * step + start;
    out[num - 1] = stop;
}

int64_t sched_np_arange(double start, double stop, double step, double *out) {
    double len = ceil((stop - start) / step);
    if (!(len > 0)) return 0;
    int64_t n = (int64_t)len;
    if (out) {
        double delta = (start + step) - start;
        for (int64_t i = 0; i < n; i++) out[i] = i == 0 ? start : start + (double)i * delta;
    }
    return n;
}

double sched_np_interp(double x, const float *fp, int64_t n) {
    /* np.interp with xp = arange(n): clamps outside, exact at grid points */
    if (x <= 0) return fp[0];
    if (x >= (double)(n - 1)) return fp[n - 1];
    int64_t j = (int64_t)floor(x);
    if ((double)j == x) return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

double sched_np_round(double x) {
    return nearbyint(x); /* round half to even, as numpy */
}

/* ------------------------------------------------------------------ torch emulation ---------- */

/* One element (or a vector's base): ATen's AVX2 kernels are compiled with -mfma and GCC
 * contracts start + step * idx into one fused multiply-add; the fixtures confirm it. */
static float linspace_elem(float start, float end, float step, int64_t steps, int64_t idx) {
    int64_t halfway = steps / 2;
    return idx < halfway ? fmaf(step, (float)idx, start)
                         : fmaf(-step, (float)(steps - idx - 1), end);
}

/* torch.linspace(start, end, steps, dtype=float32) on CPU. */
void sched_torch_linspace_f32(double start_d, double end_d, int64_t steps, float *out) {
    if (steps == 1) {
        out[0] = (float)start_d;
        return;
    }
    const float start = (float)start_d, end = (float)end_d;
    const float step = (end - start) / (float)(steps - 1);
    const int64_t V = 8;
    int64_t i = 0;
    for (; i + 2 * V <= steps; i += 2 * V) {
        for (int64_t v = i; v < i + 2 * V; v += V) {
            float base = linspace_elem(start, end, step, steps, v);
            for (int64_t k = 0; k < V; k++) out[v + k] = base + (float)k * step;
        }
    }
    for (; i < steps; i++) out[i] = linspace_elem(start, end, step, steps, i);
}

static double alpha_bar_cos(double t) {
    double c = cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

df_status sched_build_tables(df_sched *s) {
    const df_sched_config *c = &s->cfg;
    const int64_t T = c->num_train_timesteps;
    s->T = T;
    s->betas = malloc((size_t)T * sizeof(float));
    s->alphas_cumprod = malloc((size_t)T * sizeof(float));
    s->train_sigmas = malloc((size_t)T * sizeof(float));
    if (!s->betas || !s->alphas_cumprod || !s->train_sigmas)
        return df_error(DF_ERR_NOMEM, "scheduler: out of memory for %lld timesteps", (long long)T);
    float *b = s->betas;
    if (c->trained_betas) {
        for (int64_t i = 0; i < T; i++) b[i] = (float)c->trained_betas[i];
    } else {
        switch (c->beta_schedule) {
        case DF_BETA_LINEAR: sched_torch_linspace_f32(c->beta_start, c->beta_end, T, b); break;
        case DF_BETA_SCALED_LINEAR:
            sched_torch_linspace_f32(sqrt(c->beta_start), sqrt(c->beta_end), T, b);
            for (int64_t i = 0; i < T; i++) b[i] = b[i] * b[i];
            break;
        case DF_BETA_SQUAREDCOS_CAP_V2:
            for (int64_t i = 0; i < T; i++) {
                double t1 = (double)i / (double)T, t2 = (double)(i + 1) / (double)T;
                double v = 1 - alpha_bar_cos(t2) / alpha_bar_cos(t1);
                b[i] = (float)(v < 0.999 ? v : 0.999);
            }
            break;
        case DF_BETA_SIGMOID: {
            float range = (float)(c->beta_end - c->beta_start), lo = (float)c->beta_start;
            sched_torch_linspace_f32(-6, 6, T, b);
            for (int64_t i = 0; i < T; i++) b[i] = (1.0f / (1.0f + expf(-b[i]))) * range + lo;
            break;
        }
        }
    }
    float *ac = s->alphas_cumprod;
    double acc = 1.0;
    for (int64_t i = 0; i < T; i++) {
        acc *= (double)(1.0f - b[i]);
        ac[i] = (float)acc;
    }
    if (c->kind == DF_SCHED_DDIM && c->rescale_betas_zero_snr) {
        /* rescale_zero_terminal_snr(betas), float32 throughout */
        float *sq = calloc((size_t)T + 1, sizeof(float));
        if (!sq) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        for (int64_t i = 0; i < T; i++) sq[i] = sqrtf(ac[i]);
        float a0 = sq[0], aT = sq[T - 1];
        float scale = a0 / (a0 - aT);
        for (int64_t i = 0; i < T; i++) sq[i] = (sq[i] - aT) * scale;
        for (int64_t i = 0; i < T; i++) sq[i] = sq[i] * sq[i]; /* alphas_bar */
        for (int64_t i = T - 1; i >= 1; i--) b[i] = 1.0f - sq[i] / sq[i - 1];
        b[0] = 1.0f - sq[0];
        free(sq);
        acc = 1.0;
        for (int64_t i = 0; i < T; i++) {
            acc *= (double)(1.0f - b[i]);
            ac[i] = (float)acc;
        }
    }
    for (int64_t i = 0; i < T; i++) s->train_sigmas[i] = sqrtf((1.0f - ac[i]) / ac[i]);
    if (c->kind == DF_SCHED_DPMSOLVER_MULTISTEP || c->kind == DF_SCHED_UNIPC_MULTISTEP) {
        s->alpha_t = malloc((size_t)T * sizeof(float));
        s->sigma_t = malloc((size_t)T * sizeof(float));
        s->lambda_t = malloc((size_t)T * sizeof(float));
        if (!s->alpha_t || !s->sigma_t || !s->lambda_t)
            return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
        for (int64_t i = 0; i < T; i++) {
            s->alpha_t[i] = sqrtf(ac[i]);
            s->sigma_t[i] = sqrtf(1.0f - ac[i]);
            s->lambda_t[i] = logf(s->alpha_t[i]) - logf(s->sigma_t[i]);
        }
    }
    s->final_alpha_cumprod = c->set_alpha_to_one ? 1.0f : ac[0];
    return DF_OK;
}

/* ------------------------------------------------------------------ Karras sigmas ------------ */

void sched_karras(double sigma_min, double sigma_max, int n, double *out) {
    const double rho = 7.0;
    /* ramp = np.linspace(0, 1, n), written into out first */
    sched_np_linspace(0, 1, n, out);
    double min_inv_rho = pow(sigma_min, 1 / rho), max_inv_rho = pow(sigma_max, 1 / rho);
    for (int i = 0; i < n; i++)
        out[i] = pow(max_inv_rho + out[i] * (min_inv_rho - max_inv_rho), rho);
}

double sched_sigma_to_t(double sigma, const float *log_sigmas, int64_t n) {
    double log_sigma = log(sigma);
    /* low = argmax(cumsum(log_sigma - log_sigmas >= 0)): the last index where the condition
     * holds (0 when none). log_sigmas rises with t whenever 0 <= beta < 1, so the condition
     * holds on a prefix and a binary search finds its end. */
    int64_t lo = 0, hi = n; /* first index where the condition fails is in [lo, hi] */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (log_sigma - (double)log_sigmas[mid] >= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    int64_t low = lo > 0 ? lo - 1 : 0;
    if (low > n - 2) low = n - 2;
    int64_t high = low + 1;
    float lo_s = log_sigmas[low], hi_s = log_sigmas[high];
    double w = ((double)lo_s - log_sigma) / (double)(float)(lo_s - hi_s);
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1 - w) * (double)low + w * (double)high;
}
