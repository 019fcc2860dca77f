/* test_sched_steps.c — step details the parity fixtures do not reach: DDPM's variance types and
 * dynamic thresholding (diffusers v0.21.4 _get_variance / _threshold_sample, recomputed here
 * from their formulas), Heun entered mid-schedule as img2img does (index_for_timestep takes
 * the second occurrence on a fresh counter), and saving a config file.
 */
#include "infer/infer.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static df_sched *make(const char *cls, const char *json, df_sched_config *c) {
    df_status s = df_sched_config_parse(json, strlen(json), "t.json", cls, c);
    cr_assert(s == DF_OK, "%s", df_last_error());
    df_sched *sc = NULL;
    cr_assert(df_sched_new(c, &sc) == DF_OK, "%s", df_last_error());
    return sc;
}

/* prev(noise = 1) - prev(noise = 0) is the noise scale of the variance type. */
static double ddpm_noise_scale(const char *variance_type, double *want) {
    char json[256];
    snprintf(json, sizeof json, "{\"variance_type\": \"%s\", \"clip_sample\": false}",
             variance_type);
    df_scope scope = df_scope_begin();
    double out[2];
    for (int pass = 0; pass < 2; pass++) {
        df_sched_config c;
        df_sched *s = make("DDPMScheduler", json, &c);
        cr_assert(df_sched_set_timesteps(s, 10) == DF_OK);
        double t = df_sched_timesteps(s)[2]; /* 700: prev 600 */
        df_tensor *x = df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 1, 4), 0.3);
        df_tensor *m = df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 1, 4), -0.2);
        const df_tensor *nz[1] = {df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 1, 4), pass)};
        df_noise_list list = {nz, 1, 0};
        df_noise_source src = df_noise_from_list(&list);
        df_sched_step_args args = {.noise = &src};
        df_tensor *prev = NULL;
        cr_assert(df_sched_step(s, m, t, x, &args, &prev, NULL) == DF_OK, "%s", df_last_error());
        cr_assert_eq(list.cursor, 1, "DDPM must draw once for t > 0");
        out[pass] = df_f32(prev)[0];
        const float *ac = df_sched_alphas_cumprod(s);
        double a = ac[700], ap = ac[600], beta = 1 - a / ap;
        double var = (1 - ap) / (1 - a) * beta;
        if (strcmp(variance_type, "fixed_large") == 0)
            *want = sqrt(beta);
        else if (strcmp(variance_type, "fixed_large_log") == 0)
            *want = NAN;
        else
            *want = sqrt(var);
        df_sched_free(s);
        df_sched_config_free(&c);
    }
    df_scope_end(scope);
    return out[1] - out[0];
}

Test(infer_sched_steps, ddpm_variance_types) {
    const char *types[] = {"fixed_small", "fixed_small_log", "fixed_large"};
    for (int i = 0; i < 3; i++) {
        double want, got = ddpm_noise_scale(types[i], &want);
        cr_expect(fabs(got - want) <= 1e-6 * want, "%s: noise scale %.9g, expected %.9g", types[i],
                  got, want);
    }
    /* upstream takes sqrt(log(beta)) for fixed_large_log: NaN; mirrored, not fixed */
    double want, got = ddpm_noise_scale("fixed_large_log", &want);
    cr_expect(isnan(got), "fixed_large_log: %.9g (diffusers gives NaN)", got);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

Test(infer_sched_steps, ddpm_dynamic_thresholding) {
    df_sched_config c;
    df_sched *s = make("DDPMScheduler",
                       "{\"thresholding\": true, \"sample_max_value\": 2.5, "
                       "\"dynamic_thresholding_ratio\": 0.9}",
                       &c);
    cr_assert(df_sched_set_timesteps(s, 10) == DF_OK);
    df_scope scope = df_scope_begin();
    df_tensor *x = randn_tensor(3, DF_DIMS(2, 4, 4, 4));
    df_tensor *m = randn_tensor(4, DF_DIMS(2, 4, 4, 4));
    for (int64_t i = 0; i < x->numel; i++) df_f32(x)[i] *= (i < 64 ? 0.3f : 1.2f);
    double t = df_sched_timesteps(s)[9]; /* t = 9: x0 close to x */
    const df_tensor *nz[1] = {df_zeros(DF_DTYPE_F32, DF_DIMS(2, 4, 4, 4))};
    df_noise_list list = {nz, 1, 0};
    df_noise_source src = df_noise_from_list(&list);
    df_sched_step_args args = {.noise = &src};
    df_tensor *prev = NULL, *x0 = NULL;
    cr_assert(df_sched_step(s, m, t, x, &args, &prev, &x0) == DF_OK, "%s", df_last_error());
    float a = df_sched_alphas_cumprod(s)[(int)t];
    float sa = sqrtf(a), sb = sqrtf(1 - a);
    float want[128];
    double scale[2];
    for (int b = 0; b < 2; b++) {
        double v[64];
        float raw[64];
        for (int i = 0; i < 64; i++) {
            raw[i] = (df_f32(x)[b * 64 + i] - sb * df_f32(m)[b * 64 + i]) / sa;
            v[i] = fabs(raw[i]);
        }
        qsort(v, 64, sizeof v[0], cmp_d);
        double rank = 0.9 * 63, w = rank - floor(rank);
        double q = v[(int)rank] + w * (v[(int)rank + 1] - v[(int)rank]);
        q = q < 1 ? 1 : q > 2.5 ? 2.5 : q;
        scale[b] = q;
        for (int i = 0; i < 64; i++) {
            double r = raw[i] < -q ? -q : raw[i] > q ? q : raw[i];
            want[b * 64 + i] = (float)(r / q);
        }
    }
    cr_assert(scale[0] == 1.0 && scale[1] > 1.0 && scale[1] <= 2.5,
              "test data should hit both "
              "the floor and the quantile: %g %g",
              scale[0], scale[1]);
    check_close_f32("thresholded x0", df_f32(x0), want, 128, 1e-6, 1e-5);
    df_scope_end(scope);
    df_sched_free(s);
    df_sched_config_free(&c);
}

/* img2img with Heun starts at t_start * 2, the second entry of a repeated timestep; the first
 * step there is a first-order (Euler) step from sigmas[i] to sigmas[i + 1]. */
Test(infer_sched_steps, heun_entered_mid_schedule) {
    df_sched_config c;
    df_sched *s = make("HeunDiscreteScheduler",
                       "{\"timestep_spacing\": \"leading\", "
                       "\"steps_offset\": 1}",
                       &c);
    cr_assert(df_sched_set_timesteps(s, 10) == DF_OK);
    int start = 0;
    cr_assert(df_sched_img2img_start(s, 0.75, &start) == DF_OK);
    cr_assert_eq(start, 6);
    const double *ts = df_sched_timesteps(s);
    cr_assert_eq(ts[5], ts[6], "index 6 repeats index 5's timestep");
    int n_sig = 0;
    const double *sig = df_sched_sigmas(s, &n_sig);
    df_scope scope = df_scope_begin();
    df_tensor *x = df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 2, 2), 1.5);
    df_tensor *xin = NULL;
    cr_assert(df_sched_scale_model_input(s, x, ts[start], &xin) == DF_OK);
    float s6 = (float)sig[6], s7 = (float)sig[7];
    cr_assert_float_eq(df_f32(xin)[0], 1.5f / sqrtf(s6 * s6 + 1), 1e-6);
    df_tensor *m = df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 2, 2), 0.25), *prev = NULL;
    cr_assert(df_sched_step(s, m, ts[start], x, NULL, &prev, NULL) == DF_OK, "%s", df_last_error());
    /* epsilon: x0 = x - s6 m, derivative = m, prev = x + m (s7 - s6) */
    cr_assert_float_eq(df_f32(prev)[0], 1.5f + 0.25f * (s7 - s6), 1e-6);
    /* the next entry (index 7) is the first of the next pair: the second-order correction */
    x = prev;
    cr_assert(df_sched_step(s, m, ts[7], x, NULL, &prev, NULL) == DF_OK, "%s", df_last_error());
    double d1 = 0.25, d2 = (df_f32(x)[0] - (df_f32(x)[0] - s7 * 0.25)) / s7;
    cr_assert_float_eq(df_f32(prev)[0], 1.5 + (d1 + d2) / 2 * (s7 - s6), 1e-5);
    df_scope_end(scope);
    df_sched_free(s);
    df_sched_config_free(&c);
}

Test(infer_sched_steps, save_writes_what_load_reads) {
    df_sched_config c, c2;
    df_sched *s = make("UniPCMultistepScheduler", "{\"solver_order\": 3, \"foo\": [1, 2]}", &c);
    char path[] = "/tmp/df_sched_saveXXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert(df_sched_config_save(&c, path) == DF_OK, "%s", df_last_error());
    cr_assert(df_sched_config_load(path, NULL, &c2) == DF_OK, "%s", df_last_error());
    remove(path);
    cr_assert_eq(c2.kind, DF_SCHED_UNIPC_MULTISTEP);
    cr_assert_eq(c2.solver_order, 3);
    char *a = df_sched_config_to_json(&c), *b = df_sched_config_to_json(&c2);
    cr_assert_str_eq(a, b);
    cr_assert(strstr(b, "\"foo\": [\n    1,\n    2\n  ],"), "%s", b);
    cr_assert_eq(df_sched_config_save(&c, "/nonexistent-dir/x.json"), DF_ERR_IO);
    free(a);
    free(b);
    df_sched_free(s);
    df_sched_config_free(&c);
    df_sched_config_free(&c2);
}

/* A fresh instance holds diffusers' __init__ schedule (every training timestep; the sigma
 * schedulers with the train sigmas), so training's add_noise needs no set_timesteps. */
Test(infer_sched_steps, fresh_instance_schedule) {
    const char *cls[] = {"EulerDiscreteScheduler", "LMSDiscreteScheduler", "DDIMScheduler",
                         "HeunDiscreteScheduler"};
    for (int k = 0; k < 4; k++) {
        df_sched_config c;
        df_sched *s = make(cls[k], "{\"timestep_spacing\": \"linspace\"}", &c);
        cr_assert_eq(df_sched_timesteps(s)[0], 999, "%s", cls[k]);
        df_scope scope = df_scope_begin();
        df_tensor *x0 = df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 1, 2), 0.5);
        df_tensor *nz = df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 1, 2), 1.0);
        df_tensor *t = df_from_data(DF_DTYPE_F32, 1, (int64_t[]){1}, (float[]){500});
        df_tensor *out = NULL;
        cr_assert(df_sched_add_noise(s, x0, nz, t, &out) == DF_OK, "%s: %s", cls[k],
                  df_last_error());
        float ac = df_sched_alphas_cumprod(s)[500];
        float want = k == 2 ? sqrtf(ac) * 0.5f + sqrtf(1 - ac) : 0.5f + sqrtf((1 - ac) / ac);
        cr_assert_float_eq(df_f32(out)[0], want, 1e-6 * fabs(want), "%s", cls[k]);
        df_scope_end(scope);
        df_sched_free(s);
        df_sched_config_free(&c);
    }
}
