/* sched.c — the common scheduler interface: construction, set_timesteps / step dispatch,
 * scale_model_input, the training side (add_noise, get_velocity, SNR), img2img's start index,
 * dynamic thresholding and the noise sources.
 *
 * Follows diffusers v0.21.4 SchedulerMixin and the per-class methods of the same names; the
 * family files hold the class-specific set_timesteps and step. Arithmetic mirrors diffusers'
 * float32 torch ops in the same order (0-d float32 tensors for scalar coefficients).
 */
#include "infer/sched_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ noise sources ------------ */

static void list_fill(void *state, float *out, int64_t n) {
    df_noise_list *l = state;
    DF_ASSERT(l->cursor < l->count, "noise list: draw %d requested, only %d tensors given",
              l->cursor, l->count);
    const df_tensor *t = l->tensors[l->cursor++];
    DF_ASSERT(t->dtype == DF_DTYPE_F32 && t->numel == n,
              "noise list: tensor %d has %lld elements, the step needs %lld", l->cursor - 1,
              (long long)t->numel, (long long)n);
    memcpy(out, t->data, (size_t)n * sizeof(float));
}

df_noise_source df_noise_from_list(df_noise_list *list) {
    return (df_noise_source){list_fill, list};
}

static void torchgen_fill(void *state, float *out, int64_t n) {
    df_torchgen_randn((df_torchgen *)state, out, n);
}

df_noise_source df_noise_from_torchgen(df_torchgen *g) {
    return (df_noise_source){torchgen_fill, g};
}

df_status sched_draw(const df_sched_step_args *a, float *out, int64_t n, const char *who) {
    if (!a || !a->noise || !a->noise->fill)
        return df_error(DF_ERR_INVALID, "%s: this step draws noise: pass a noise source", who);
    a->noise->fill(a->noise->state, out, n);
    return DF_OK;
}

/* ------------------------------------------------------------------ lifetime ----------------- */

static void update_init_noise_sigma(df_sched *s);

/* The schedule a fresh diffusers instance holds before set_timesteps (its __init__): every
 * training timestep T-1..0, and for the sigma schedulers the train sigmas reversed plus a final
 * 0 (Heun's __init__ calls set_timesteps(T) itself). add_noise works from it, as upstream. */
static df_status fresh_schedule(df_sched *s) {
    const int64_t T = s->T;
    if (s->cfg.kind == DF_SCHED_HEUN) {
        DF_TRY(sched_heun_set_timesteps(s, (int)T));
    } else {
        bool sigma = s->cfg.kind == DF_SCHED_EULER || s->cfg.kind == DF_SCHED_EULER_ANCESTRAL ||
                     s->cfg.kind == DF_SCHED_LMS;
        DF_TRY(sched_alloc_ts(s, (int)T, sigma ? (int)T + 1 : 0));
        for (int64_t i = 0; i < T; i++) s->ts[i] = (double)(T - 1 - i);
        s->ts_float = sigma;
        if (sigma) {
            for (int64_t i = 0; i < T; i++) s->sig[i] = s->train_sigmas[T - 1 - i];
            s->sig[T] = 0;
        }
    }
    update_init_noise_sigma(s);
    free(s->heun_count);
    s->heun_count = NULL;
    if (s->cfg.kind == DF_SCHED_HEUN) {
        s->heun_count = calloc((size_t)s->n_ts + 1, sizeof(int));
        if (!s->heun_count) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    }
    return DF_OK;
}

df_status df_sched_new(const df_sched_config *cfg, df_sched **out) {
    *out = NULL;
    df_sched *s = calloc(1, sizeof *s);
    if (!s) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    df_status st = df_sched_config_copy(&s->cfg, cfg);
    if (st != DF_OK) {
        free(s);
        return st;
    }
    if (cfg->trained_betas && cfg->n_trained_betas != cfg->num_train_timesteps) {
        st = df_error(DF_ERR_INVALID,
                      "scheduler config: field 'trained_betas': %lld values for "
                      "num_train_timesteps %lld",
                      (long long)cfg->n_trained_betas, (long long)cfg->num_train_timesteps);
        goto fail;
    }
    if (cfg->num_train_timesteps < 2) {
        st = df_error(DF_ERR_INVALID,
                      "scheduler config: field 'num_train_timesteps': needs at "
                      "least 2; got %lld",
                      (long long)cfg->num_train_timesteps);
        goto fail;
    }
    if ((st = sched_build_tables(s)) != DF_OK) goto fail;
    s->init_noise_sigma = 1.0f;
    s->heun_first = true;
    if ((st = fresh_schedule(s)) != DF_OK) goto fail;
    *out = s;
    return DF_OK;
fail:
    df_sched_free(s);
    return st;
}

void df_sched_free(df_sched *s) {
    if (!s) return;
    df_sched_config_free(&s->cfg);
    free(s->betas);
    free(s->alphas_cumprod);
    free(s->alpha_t);
    free(s->sigma_t);
    free(s->lambda_t);
    free(s->train_sigmas);
    free(s->ts);
    free(s->sig);
    free(s->heun_count);
    for (int i = 0; i < SCHED_SLOTS; i++) free(s->slot[i]);
    free(s);
}

const df_sched_config *df_sched_config_of(const df_sched *s) {
    return &s->cfg;
}

float *sched_slot(df_sched *s, int i) {
    DF_ASSERT(i >= 0 && i < SCHED_SLOTS, "bad slot %d", i);
    if (!s->slot[i]) {
        s->slot[i] = malloc((size_t)s->numel * sizeof(float) + 64);
        DF_ASSERT(s->slot[i], "scheduler: out of memory for the step state");
    }
    return s->slot[i];
}

df_status sched_alloc_ts(df_sched *s, int n_ts, int n_sig) {
    free(s->ts);
    free(s->sig);
    s->ts = calloc((size_t)n_ts + 1, sizeof(double));
    s->sig = n_sig > 0 ? calloc((size_t)n_sig, sizeof(double)) : NULL;
    s->n_ts = n_ts;
    s->n_sig = n_sig;
    if (!s->ts || (n_sig > 0 && !s->sig)) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    return DF_OK;
}

int sched_index_of(const df_sched *s, double t) {
    for (int i = 0; i < s->n_ts; i++)
        if (s->ts[i] == t) return i;
    return -1;
}

/* ------------------------------------------------------------------ queries ------------------ */

int df_sched_num_timesteps(const df_sched *s) {
    return s->n_ts;
}
const double *df_sched_timesteps(const df_sched *s) {
    return s->ts;
}
bool df_sched_timesteps_are_float(const df_sched *s) {
    return s->ts_float;
}
const double *df_sched_sigmas(const df_sched *s, int *n) {
    if (n) *n = s->n_sig;
    return s->n_sig ? s->sig : NULL;
}
const float *df_sched_betas(const df_sched *s) {
    return s->betas;
}
const float *df_sched_alphas_cumprod(const df_sched *s) {
    return s->alphas_cumprod;
}
const float *df_sched_dpm_table(const df_sched *s, const char *name) {
    if (strcmp(name, "alpha_t") == 0) return s->alpha_t;
    if (strcmp(name, "sigma_t") == 0) return s->sigma_t;
    if (strcmp(name, "lambda_t") == 0) return s->lambda_t;
    return NULL;
}
double df_sched_init_noise_sigma(const df_sched *s) {
    return s->init_noise_sigma;
}
int df_sched_order(const df_sched *s) {
    return s->cfg.kind == DF_SCHED_HEUN ? 2 : 1;
}

df_status df_sched_img2img_start(const df_sched *s, double strength, int *start_index) {
    if (!(strength >= 0 && strength <= 1))
        return df_error(DF_ERR_INVALID, "field 'strength': expected a value in [0, 1]; got %g",
                        strength);
    if (s->num_inference_steps <= 0)
        return df_error(DF_ERR_INVALID, "scheduler: set_timesteps was not called");
    int n = s->num_inference_steps;
    int init = (int)((double)n * strength);
    if (init > n) init = n;
    int t_start = n - init > 0 ? n - init : 0;
    *start_index = t_start * df_sched_order(s);
    return DF_OK;
}

/* ------------------------------------------------------------------ set_timesteps ------------ */

df_status df_sched_set_timesteps(df_sched *s, int n) {
    if (n < 1) return df_error(DF_ERR_INVALID, "field 'steps': expected at least 1; got %d", n);
    if (n > s->T)
        return df_error(DF_ERR_INVALID, "field 'steps': %d is larger than num_train_timesteps %lld",
                        n, (long long)s->T);
    df_status st;
    switch (s->cfg.kind) {
    case DF_SCHED_DDPM:
    case DF_SCHED_DDIM: st = sched_ddpm_set_timesteps(s, n); break;
    case DF_SCHED_PNDM: st = sched_pndm_set_timesteps(s, n); break;
    case DF_SCHED_EULER:
    case DF_SCHED_EULER_ANCESTRAL: st = sched_euler_set_timesteps(s, n); break;
    case DF_SCHED_HEUN: st = sched_heun_set_timesteps(s, n); break;
    case DF_SCHED_LMS: st = sched_lms_set_timesteps(s, n); break;
    case DF_SCHED_DPMSOLVER_MULTISTEP:
    case DF_SCHED_UNIPC_MULTISTEP: st = sched_multistep_set_timesteps(s, n); break;
    default: st = df_error(DF_ERR_INVALID, "bad scheduler kind");
    }
    if (st != DF_OK) return st;
    s->num_inference_steps = n;
    /* reset the multistep state */
    s->counter = 0;
    s->n_hist = 0;
    s->lower_order_nums = 0;
    s->this_order = 0;
    s->has_last_sample = false;
    s->cur_model_output_zero = true;
    s->has_cur_sample = false;
    s->heun_first = true;
    free(s->heun_count);
    s->heun_count = NULL;
    if (s->cfg.kind == DF_SCHED_HEUN) {
        s->heun_count = calloc((size_t)s->n_ts + 1, sizeof(int));
        if (!s->heun_count) return df_error(DF_ERR_NOMEM, "scheduler: out of memory");
    }
    update_init_noise_sigma(s);
    return DF_OK;
}

/* init_noise_sigma: the sigma schedulers' property (float32 tensor math): sigmas.max() for
 * linspace/trailing spacing, else sqrt(max^2 + 1). */
static void update_init_noise_sigma(df_sched *s) {
    df_sched_kind k = s->cfg.kind;
    if (k != DF_SCHED_EULER && k != DF_SCHED_EULER_ANCESTRAL && k != DF_SCHED_HEUN &&
        k != DF_SCHED_LMS) {
        s->init_noise_sigma = 1.0f;
        return;
    }
    float mx = 0;
    for (int i = 0; i < s->n_sig; i++)
        if ((float)s->sig[i] > mx) mx = (float)s->sig[i];
    if (s->cfg.timestep_spacing == DF_SPACING_LINSPACE ||
        s->cfg.timestep_spacing == DF_SPACING_TRAILING)
        s->init_noise_sigma = mx;
    else
        s->init_noise_sigma = sqrtf(mx * mx + 1.0f);
}

/* ------------------------------------------------------------------ scale_model_input -------- */

static bool is_sigma_kind(df_sched_kind k) {
    return k == DF_SCHED_EULER || k == DF_SCHED_EULER_ANCESTRAL || k == DF_SCHED_HEUN ||
           k == DF_SCHED_LMS;
}

static int sigma_index(const df_sched *s, double t) {
    return s->cfg.kind == DF_SCHED_HEUN ? sched_heun_index(s, t) : sched_index_of(s, t);
}

df_status df_sched_scale_model_input(df_sched *s, const df_tensor *sample, double t,
                                     df_tensor **out) {
    DF_ASSERT(sample->dtype == DF_DTYPE_F32, "scale_model_input: sample must be F32");
    *out = NULL;
    if (!is_sigma_kind(s->cfg.kind)) {
        *out = df_tensor_clone(sample);
        return DF_OK;
    }
    int i = sigma_index(s, t);
    if (i < 0)
        return df_error(DF_ERR_INVALID, "%s: timestep %g is not in the schedule",
                        df_sched_kind_name(s->cfg.kind), t);
    float sigma = (float)s->sig[i];
    float d = sqrtf(sigma * sigma + 1.0f);
    df_tensor *o = df_tensor_new(DF_DTYPE_F32, sample->ndim, sample->shape);
    const float *x = df_f32(sample);
    float *y = df_f32(o);
    const int64_t n = sample->numel;
#pragma omp parallel for if (n > SCHED_OMP_MIN)
    for (int64_t k = 0; k < n; k++) y[k] = x[k] / d;
    *out = o;
    return DF_OK;
}

/* ------------------------------------------------------------------ thresholding ------------- */

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* _threshold_sample: per batch item, s = clamp(quantile(|x|, ratio), 1, sample_max_value);
 * x = clamp(x, -s, s) / s. torch.quantile interpolates linearly with a float32 rank. */
void sched_threshold(const df_sched *s, float *x, int64_t numel, int64_t batch) {
    int64_t m = numel / batch;
    if (m == 0) return;
    float *tmp = malloc((size_t)m * sizeof(float) + 16);
    DF_ASSERT(tmp, "threshold: out of memory");
    for (int64_t b = 0; b < batch; b++) {
        float *xb = x + b * m;
        for (int64_t i = 0; i < m; i++) tmp[i] = fabsf(xb[i]);
        qsort(tmp, (size_t)m, sizeof(float), cmp_float);
        float rank = (float)s->cfg.dynamic_thresholding_ratio * (float)(m - 1);
        int64_t lo = (int64_t)rank;
        if (lo > m - 1) lo = m - 1;
        int64_t hi = lo + 1 < m ? lo + 1 : m - 1;
        float w = rank - (float)lo;
        float a = tmp[lo], c = tmp[hi];
        float q = w < 0.5f ? a + w * (c - a) : c - (c - a) * (1.0f - w);
        float smax = (float)s->cfg.sample_max_value;
        if (q < 1.0f) q = 1.0f;
        if (q > smax) q = smax;
        for (int64_t i = 0; i < m; i++) {
            float v = xb[i] < -q ? -q : xb[i] > q ? q : xb[i];
            xb[i] = v / q;
        }
    }
    free(tmp);
}

/* ------------------------------------------------------------------ step --------------------- */

df_status df_sched_step(df_sched *s, const df_tensor *model_output, double t,
                        const df_tensor *sample, const df_sched_step_args *args,
                        df_tensor **prev_sample, df_tensor **pred_original_sample) {
    char sa[64], sb[64];
    DF_ASSERT(model_output->dtype == DF_DTYPE_F32 && sample->dtype == DF_DTYPE_F32,
              "scheduler step: tensors must be F32");
    DF_ASSERT(df_tensor_same_shape(model_output, sample),
              "scheduler step: model_output %s and sample %s differ in shape",
              df_shape_str(model_output, sa, sizeof sa), df_shape_str(sample, sb, sizeof sb));
    *prev_sample = NULL;
    if (pred_original_sample) *pred_original_sample = NULL;
    const char *who = df_sched_kind_name(s->cfg.kind);
    if (!(fabs(t) < 1e15)) return df_error(DF_ERR_INVALID, "%s: timestep %g is not finite", who, t);
    if (s->num_inference_steps <= 0)
        return df_error(DF_ERR_INVALID, "%s: set_timesteps was not called before step", who);
    if (s->numel != sample->numel) {
        for (int i = 0; i < SCHED_SLOTS; i++) {
            free(s->slot[i]);
            s->slot[i] = NULL;
        }
        s->numel = sample->numel;
    }
    int64_t batch = sample->ndim > 0 ? sample->shape[0] : 1;
    if (batch < 1) batch = 1;
    /* results go to scratch slots and are copied out only on success: a tensor made inside the
     * caller's scope must not be freed here (the scope owns it) */
    df_sched_kind k = s->cfg.kind;
    bool has_x0 = k == DF_SCHED_DDPM || k == DF_SCHED_DDIM || k == DF_SCHED_EULER ||
                  k == DF_SCHED_EULER_ANCESTRAL || k == DF_SCHED_LMS;
    const float *mo = df_f32(model_output), *x = df_f32(sample);
    float *p = sched_slot(s, SLOT_PREV), *o = sched_slot(s, SLOT_X0);
    df_status st;
    switch (k) {
    case DF_SCHED_DDPM: st = sched_ddpm_step(s, mo, t, x, batch, args, p, o); break;
    case DF_SCHED_DDIM: st = sched_ddim_step(s, mo, t, x, batch, args, p, o); break;
    case DF_SCHED_PNDM: st = sched_pndm_step(s, mo, t, x, p); break;
    case DF_SCHED_EULER: st = sched_euler_step(s, mo, t, x, args, p, o); break;
    case DF_SCHED_EULER_ANCESTRAL: st = sched_euler_ancestral_step(s, mo, t, x, args, p, o); break;
    case DF_SCHED_HEUN: st = sched_heun_step(s, mo, t, x, p); break;
    case DF_SCHED_LMS: st = sched_lms_step(s, mo, t, x, p, o); break;
    case DF_SCHED_DPMSOLVER_MULTISTEP: st = sched_dpmsolver_step(s, mo, t, x, batch, p); break;
    case DF_SCHED_UNIPC_MULTISTEP: st = sched_unipc_step(s, mo, t, x, batch, p); break;
    default: st = df_error(DF_ERR_INVALID, "bad scheduler kind");
    }
    if (st != DF_OK) return st;
    df_tensor *prev = df_tensor_new(DF_DTYPE_F32, sample->ndim, sample->shape);
    memcpy(prev->data, p, (size_t)s->numel * sizeof(float));
    *prev_sample = prev;
    if (pred_original_sample && has_x0) {
        df_tensor *x0 = df_tensor_new(DF_DTYPE_F32, sample->ndim, sample->shape);
        memcpy(x0->data, o, (size_t)s->numel * sizeof(float));
        *pred_original_sample = x0;
    }
    return DF_OK;
}

/* ------------------------------------------------------------------ training side ------------ */

/* Row b's timestep as an index into the alpha tables, or its sigma for the sigma schedulers. */
static df_status timestep_at(const df_sched *s, const df_tensor *ts, int64_t b, int64_t *idx,
                             float *sigma) {
    double t = df_tensor_get(ts, b);
    if (is_sigma_kind(s->cfg.kind)) {
        int i = -1;
        if (s->cfg.kind == DF_SCHED_HEUN) {
            /* index_for_timestep on a fresh counter: the second match when there are two */
            int first = -1, second = -1;
            for (int j = 0; j < s->n_ts; j++)
                if (s->ts[j] == t) {
                    if (first < 0)
                        first = j;
                    else if (second < 0)
                        second = j;
                }
            i = second >= 0 ? second : first;
        } else {
            i = sched_index_of(s, t);
        }
        if (i < 0)
            return df_error(DF_ERR_INVALID, "%s: timestep %g is not in the schedule",
                            df_sched_kind_name(s->cfg.kind), t);
        *sigma = (float)s->sig[i];
        return DF_OK;
    }
    if (!(t >= 0 && t < (double)s->T))
        return df_error(DF_ERR_INVALID, "timestep %g is outside [0, %lld)", t, (long long)s->T);
    *idx = (int64_t)t;
    return DF_OK;
}

static df_status noise_mix(df_sched *s, const df_tensor *a, const df_tensor *b,
                           const df_tensor *timesteps, bool velocity, df_tensor **out) {
    char sa[64], sb[64];
    DF_ASSERT(a->dtype == DF_DTYPE_F32 && b->dtype == DF_DTYPE_F32, "add_noise: F32 tensors");
    DF_ASSERT(df_tensor_same_shape(a, b), "add_noise: shapes %s and %s differ",
              df_shape_str(a, sa, sizeof sa), df_shape_str(b, sb, sizeof sb));
    int64_t N = a->ndim > 0 ? a->shape[0] : 1;
    DF_ASSERT(timesteps->numel == N, "add_noise: %lld timesteps for batch %lld",
              (long long)timesteps->numel, (long long)N);
    *out = NULL;
    for (int64_t r = 0; r < N; r++) { /* check every timestep before making the result */
        int64_t ti = 0;
        float sigma = 0;
        DF_TRY(timestep_at(s, timesteps, r, &ti, &sigma));
    }
    df_tensor *o = df_tensor_new(DF_DTYPE_F32, a->ndim, a->shape);
    int64_t m = a->numel / (N ? N : 1);
    const float *x = df_f32(a), *e = df_f32(b);
    float *y = df_f32(o);
    for (int64_t r = 0; r < N; r++) {
        int64_t ti = 0;
        float sigma = 0;
        timestep_at(s, timesteps, r, &ti, &sigma);
        const float *xr = x + r * m, *er = e + r * m;
        float *yr = y + r * m;
        if (is_sigma_kind(s->cfg.kind)) {
            DF_ASSERT(!velocity, "get_velocity: not defined for %s",
                      df_sched_kind_name(s->cfg.kind));
            for (int64_t i = 0; i < m; i++) yr[i] = xr[i] + er[i] * sigma;
            continue;
        }
        float ac = s->alphas_cumprod[ti];
        float sa_ = sqrtf(ac), so = sqrtf(1.0f - ac);
        if (velocity)
            for (int64_t i = 0; i < m; i++) yr[i] = sa_ * er[i] - so * xr[i]; /* a = sample */
        else
            for (int64_t i = 0; i < m; i++) yr[i] = sa_ * xr[i] + so * er[i];
    }
    *out = o;
    return DF_OK;
}

df_status df_sched_add_noise(df_sched *s, const df_tensor *x0, const df_tensor *noise,
                             const df_tensor *timesteps, df_tensor **out) {
    return noise_mix(s, x0, noise, timesteps, false, out);
}

df_status df_sched_get_velocity(df_sched *s, const df_tensor *sample, const df_tensor *noise,
                                const df_tensor *timesteps, df_tensor **out) {
    if (is_sigma_kind(s->cfg.kind))
        return df_error(DF_ERR_UNSUPPORTED, "%s has no get_velocity (diffusers neither)",
                        df_sched_kind_name(s->cfg.kind));
    return noise_mix(s, sample, noise, timesteps, true, out);
}

df_status df_sched_snr(df_sched *s, const df_tensor *timesteps, df_tensor **out) {
    *out = NULL;
    for (int64_t i = 0; i < timesteps->numel; i++) {
        double t = df_tensor_get(timesteps, i);
        if (!(t >= 0 && t < (double)s->T))
            return df_error(DF_ERR_INVALID, "snr: timestep %g is outside [0, %lld)", t,
                            (long long)s->T);
    }
    df_tensor *o = df_tensor_new(DF_DTYPE_F32, timesteps->ndim, timesteps->shape);
    for (int64_t i = 0; i < timesteps->numel; i++) {
        int64_t ti = (int64_t)df_tensor_get(timesteps, i);
        float ac = s->alphas_cumprod[ti];
        float q = sqrtf(ac) / sqrtf(1.0f - ac);
        df_f32(o)[i] = q * q;
    }
    *out = o;
    return DF_OK;
}
