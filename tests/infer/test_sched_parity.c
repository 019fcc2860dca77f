/* test_sched_parity.c — every scheduler against diffusers v0.21.4 (tests/fixtures/schedulers/,
 * copied from the reference set; see tests/fixtures/schedulers/README.md): timesteps, the
 * schedule tables, init_noise_sigma, and the standard sampling loop step by step
 *
 *   latents = init_noise * init_noise_sigma
 *   for t in timesteps: x_in = scale_model_input(latents, t)
 *                       model_output = 0.1 * x_in + sin(t)
 *                       latents = step(model_output, t, latents [, eta]).prev_sample
 *
 * with the stochastic steps fed the exact noise tensors diffusers drew (step_noise.j), then
 * add_noise and get_velocity on the fixture's training inputs.
 *
 * Tolerance: 1e-5 relative to the tensor's largest value (the parity measure of the reference
 * README) for float32 results; the float32-vs-float64 table there shows PyTorch's own float32
 * loops sit within 5e-7 of exact, so 1e-5 leaves room only for ordering differences.
 */
#include "infer/infer.h"
#include "nn/nn.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define REL_TOL 1e-5

static df_tensor *fx(const char *rel, const char *name) {
    return fixture_tensor(rel, name);
}

static bool fx_has(const char *rel, const char *name) {
    return df_st_find(fixture_open(rel), name) != NULL;
}

static df_tensor *fx64(const char *rel, const char *name) {
    df_tensor *t = NULL;
    df_status s = df_st_read(fixture_open(rel), name, DF_DTYPE_F64, &t);
    cr_assert(s == DF_OK, "%s: %s: %s", rel, name, df_last_error());
    return t;
}

static double max_abs(const df_tensor *t) {
    double m = 0;
    for (int64_t i = 0; i < t->numel; i++)
        if (fabs(df_tensor_get(t, i)) > m) m = fabs(df_tensor_get(t, i));
    return m;
}

static double worst; /* the largest rel_max_err of a case, logged for the record */

/* |got - want| <= 1e-5 * max|want| + 1e-6 |want| elementwise. */
static void check_rel(const char *label, const df_tensor *got, const df_tensor *want) {
    double e = rel_max_err(got, want);
    if (e > worst) worst = e;
    check_close(label, got, want, REL_TOL * max_abs(want), 1e-6);
}

static void check_f64(const char *label, const double *got, int n, const df_tensor *want,
                      double rtol) {
    cr_assert_eq(n, want->numel, "%s: %d values, expected %lld", label, n, (long long)want->numel);
    double m = max_abs(want);
    for (int i = 0; i < n; i++) {
        double w = df_tensor_get(want, i);
        cr_assert(fabs(got[i] - w) <= rtol * m, "%s[%d]: %.9g, expected %.9g (rtol %g)", label, i,
                  got[i], w, rtol);
    }
}

static void check_f32_table(const char *label, const float *got, const df_tensor *want,
                            double rtol) {
    df_tensor *g = df_from_data(DF_DTYPE_F32, 1, (int64_t[]){want->numel}, got);
    df_tensor *w32 = df_tensor_to(want, DF_DTYPE_F32);
    check_close(label, g, w32, rtol * max_abs(want), rtol);
}

/* Builds the scheduler the fixture ran: its class from metadata `scheduler`, the config from
 * metadata `config` (the resolved dict, as from_config saw it). */
static df_sched *build(const char *rel, df_sched_config *cfg) {
    df_st_file *f = fixture_open(rel);
    const char *cls = df_st_metadata(f, "scheduler");
    const char *json = df_st_metadata(f, "config");
    cr_assert(cls && json, "%s: metadata lacks scheduler/config", rel);
    df_status s = df_sched_config_parse(json, strlen(json), rel, cls, cfg);
    cr_assert(s == DF_OK, "%s: %s", rel, df_last_error());
    df_sched *sc = NULL;
    s = df_sched_new(cfg, &sc);
    cr_assert(s == DF_OK, "%s: %s", rel, df_last_error());
    return sc;
}

/* use_gen: draw the initial noise and every step's noise from df_torchgen seeded 0, as the
 * fixture loop did with torch.Generator().manual_seed(0); else feed the recorded draws. */
static void run_case(const char *rel, double eta, bool use_gen) {
    df_scope scope = df_scope_begin();
    worst = 0;
    df_sched_config cfg;
    df_sched *s = build(rel, &cfg);
    char label[256];

    /* the training tables */
    df_tensor *betas = fx64(rel, "schedule.betas");
    check_f32_table("betas", df_sched_betas(s), betas, 1e-6);
    check_f32_table("alphas_cumprod", df_sched_alphas_cumprod(s),
                    fx64(rel, "schedule.alphas_cumprod"), 1e-6);
    const char *tables[] = {"alpha_t", "sigma_t", "lambda_t"};
    for (int i = 0; i < 3; i++) {
        snprintf(label, sizeof label, "schedule.%s", tables[i]);
        if (fx_has(rel, label)) {
            const float *t = df_sched_dpm_table(s, tables[i]);
            cr_assert(t, "%s: no %s table", rel, tables[i]);
            check_f32_table(label, t, fx64(rel, label), 1e-6);
        }
    }

    /* timesteps and sigmas */
    cr_assert(df_sched_set_timesteps(s, 10) == DF_OK, "%s", df_last_error());
    df_tensor *ts = fx64(rel, "timesteps");
    check_f64("timesteps", df_sched_timesteps(s), df_sched_num_timesteps(s), ts, 0);
    int n_sig = 0;
    const double *sig = df_sched_sigmas(s, &n_sig);
    if (fx_has(rel, "schedule.sigmas"))
        check_f64("sigmas", sig, n_sig, fx64(rel, "schedule.sigmas"), 1e-6);
    else
        cr_assert(sig == NULL, "%s: unexpected sigmas", rel);
    double ins = df_tensor_get(fx64(rel, "init_noise_sigma"), 0);
    cr_assert(fabs(df_sched_init_noise_sigma(s) - ins) <= 1e-6 * ins,
              "init_noise_sigma %.9g, "
              "expected %.9g",
              df_sched_init_noise_sigma(s), ins);

    /* the loop */
    int n_noise = 0;
    df_tensor *noise[32];
    for (;; n_noise++) {
        snprintf(label, sizeof label, "step_noise.%d", n_noise);
        if (!fx_has(rel, label)) break;
        noise[n_noise] = fx(rel, label);
    }
    df_noise_list list = {(const df_tensor *const *)noise, n_noise, 0};
    df_noise_source src = df_noise_from_list(&list);
    df_torchgen gen;
    df_torchgen_seed(&gen, 0);
    df_noise_source gsrc = df_noise_from_torchgen(&gen);
    df_sched_step_args args = {.eta = eta, .noise = use_gen ? &gsrc : &src};

    df_tensor *init = fx(rel, "init_noise");
    if (use_gen) {
        df_tensor *g0 = df_tensor_new(DF_DTYPE_F32, init->ndim, init->shape);
        gsrc.fill(gsrc.state, df_f32(g0), g0->numel);
        check_close("init_noise from the torch generator", g0, init, 0, 0);
        init = g0;
    }
    df_tensor *lat = df_tensor_new(DF_DTYPE_F32, init->ndim, init->shape);
    float insf = (float)df_sched_init_noise_sigma(s);
    for (int64_t i = 0; i < init->numel; i++) df_f32(lat)[i] = df_f32(init)[i] * insf;
    check_rel("latents.0", lat, fx(rel, "latents.0"));
    for (int i = 0; i < df_sched_num_timesteps(s); i++) {
        double t = df_sched_timesteps(s)[i];
        df_tensor *xin = NULL;
        cr_assert(df_sched_scale_model_input(s, lat, t, &xin) == DF_OK, "%s", df_last_error());
        snprintf(label, sizeof label, "%s scaled_input.%d", rel, i);
        check_rel(label, xin, fx(rel, label + strlen(rel) + 1));
        df_tensor *mo = df_tensor_new(DF_DTYPE_F32, xin->ndim, xin->shape);
        float st = (float)sin(t);
        for (int64_t k = 0; k < xin->numel; k++) df_f32(mo)[k] = 0.1f * df_f32(xin)[k] + st;
        snprintf(label, sizeof label, "%s model_output.%d", rel, i);
        check_rel(label, mo, fx(rel, label + strlen(rel) + 1));
        df_tensor *prev = NULL, *x0 = NULL;
        df_status stt = df_sched_step(s, mo, t, lat, &args, &prev, &x0);
        cr_assert(stt == DF_OK, "%s step %d: %s", rel, i, df_last_error());
        snprintf(label, sizeof label, "%s latents.%d", rel, i + 1);
        check_rel(label, prev, fx(rel, label + strlen(rel) + 1));
        snprintf(label, sizeof label, "%s pred_original_sample.%d", rel, i);
        if (fx_has(rel, label + strlen(rel) + 1)) {
            cr_assert(x0, "%s: step gave no pred_original_sample", rel);
            check_rel(label, x0, fx(rel, label + strlen(rel) + 1));
        }
        lat = prev;
    }
    check_rel("final", lat, fx(rel, "final"));
    if (!use_gen)
        cr_assert_eq(list.cursor, n_noise, "%s: %d noise draws, diffusers made %d", rel,
                     list.cursor, n_noise);

    /* training side on a fresh instance */
    df_sched *f = NULL;
    cr_assert(df_sched_new(&cfg, &f) == DF_OK);
    cr_assert(df_sched_set_timesteps(f, 10) == DF_OK);
    df_tensor *at = fx(rel, "add_noise.timesteps"), *x0 = fx(rel, "add_noise.x0");
    df_tensor *nz = fx(rel, "add_noise.noise"), *noisy = NULL;
    cr_assert(df_sched_add_noise(f, x0, nz, at, &noisy) == DF_OK, "%s", df_last_error());
    check_rel("add_noise", noisy, fx(rel, "add_noise.noisy"));
    if (fx_has(rel, "get_velocity.velocity")) {
        df_tensor *v = NULL;
        cr_assert(df_sched_get_velocity(f, x0, nz, at, &v) == DF_OK, "%s", df_last_error());
        check_rel("get_velocity", v, fx(rel, "get_velocity.velocity"));
    }
    cr_log_info("%s%s: worst max|got - want| / max|want| = %.2e", rel, use_gen ? " (torchgen)" : "",
                worst);
    df_sched_free(f);
    df_sched_free(s);
    df_sched_config_free(&cfg);
    df_scope_end(scope);
}

#define CASE(dir, name, file, eta)                                                                 \
    Test(infer_sched_parity, dir##_##name) {                                                       \
        run_case("schedulers/" #dir "/" file ".safetensors", eta, false);                          \
    }
/* The stochastic loops again with df_torchgen as the generator: diffusers' noise for seed 0. */
#define GEN_CASE(dir, name, file, eta)                                                             \
    Test(infer_sched_parity, dir##_##name##_torchgen) {                                            \
        run_case("schedulers/" #dir "/" file ".safetensors", eta, true);                           \
    }

CASE(sd15, ddpm, "DDPMScheduler", 0)
CASE(sd15, ddim, "DDIMScheduler", 0)
CASE(sd15, ddim_eta05, "DDIMScheduler_eta0.5", 0.5)
CASE(sd15, ddim_vpred_zsnr, "DDIMScheduler_vpred_zsnr", 0)
CASE(sd15, pndm, "PNDMScheduler", 0)
CASE(sd15, euler, "EulerDiscreteScheduler", 0)
CASE(sd15, euler_trailing, "EulerDiscreteScheduler_trailing", 0)
CASE(sd15, euler_ancestral, "EulerAncestralDiscreteScheduler", 0)
CASE(sd15, heun, "HeunDiscreteScheduler", 0)
CASE(sd15, lms, "LMSDiscreteScheduler", 0)
CASE(sd15, dpmsolver, "DPMSolverMultistepScheduler", 0)
CASE(sd15, dpmsolver_karras, "DPMSolverMultistepScheduler_karras", 0)
CASE(sd15, unipc, "UniPCMultistepScheduler", 0)
CASE(ddpm_default, ddpm, "DDPMScheduler", 0)
CASE(ddpm_default, ddim, "DDIMScheduler", 0)
CASE(ddpm_default, ddim_eta05, "DDIMScheduler_eta0.5", 0.5)
CASE(ddpm_default, pndm, "PNDMScheduler", 0)
CASE(ddpm_default, euler, "EulerDiscreteScheduler", 0)
CASE(ddpm_default, euler_ancestral, "EulerAncestralDiscreteScheduler", 0)
CASE(ddpm_default, heun, "HeunDiscreteScheduler", 0)
CASE(ddpm_default, lms, "LMSDiscreteScheduler", 0)
CASE(ddpm_default, dpmsolver, "DPMSolverMultistepScheduler", 0)
CASE(ddpm_default, unipc, "UniPCMultistepScheduler", 0)

GEN_CASE(sd15, ddpm, "DDPMScheduler", 0)
GEN_CASE(sd15, ddim_eta05, "DDIMScheduler_eta0.5", 0.5)
GEN_CASE(sd15, euler, "EulerDiscreteScheduler", 0)
GEN_CASE(sd15, euler_ancestral, "EulerAncestralDiscreteScheduler", 0)
GEN_CASE(ddpm_default, ddpm, "DDPMScheduler", 0)
GEN_CASE(ddpm_default, ddim_eta05, "DDIMScheduler_eta0.5", 0.5)
GEN_CASE(ddpm_default, euler_ancestral, "EulerAncestralDiscreteScheduler", 0)
GEN_CASE(sd15, unipc, "UniPCMultistepScheduler", 0)
