/* test_sched_config.c — scheduler_config.json reading and writing (infer/sched_config.c), the
 * bad-input errors of the scheduler API, and the training-side helpers (SNR, img2img start).
 *
 * The diffusers-written configs (SD 1.5's PNDMScheduler, DDPMScheduler's defaults, SD 2.1's
 * DDIMScheduler) must be written back byte for byte; every fixture's resolved config (metadata
 * `config`, what diffusers' from_config built) must come back as the same JSON value; every
 * class must round-trip its own output.
 */
#include "infer/infer.h"
#include "nn/nn.h"
#include "tests/common/check.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *slurp(const char *rel) {
    FILE *f = fopen(fixture_path(rel), "rb");
    cr_assert(f, "cannot open fixture %s", rel);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cr_assert(fread(b, 1, (size_t)n, f) == (size_t)n);
    b[n] = '\0';
    fclose(f);
    return b;
}

static void parse_ok(const char *json, const char *cls, df_sched_config *c) {
    df_status s = df_sched_config_parse(json, strlen(json), "test.json", cls, c);
    cr_assert(s == DF_OK, "parse failed: %s", df_last_error());
}

static void parse_err(const char *json, const char *cls, df_status code, const char *msg) {
    df_sched_config c;
    df_status s = df_sched_config_parse(json, strlen(json), "test.json", cls, &c);
    cr_assert(s == code, "expected %s for %s, got %s (%s)", df_status_name(code), json,
              df_status_name(s), df_last_error());
    cr_assert(strstr(df_last_error(), msg), "error '%s' lacks '%s'", df_last_error(), msg);
    df_sched_config_free(&c); /* safe after a failure */
}

static const char *const classes[] = {"DDPMScheduler",
                                      "DDIMScheduler",
                                      "PNDMScheduler",
                                      "EulerDiscreteScheduler",
                                      "EulerAncestralDiscreteScheduler",
                                      "HeunDiscreteScheduler",
                                      "LMSDiscreteScheduler",
                                      "DPMSolverMultistepScheduler",
                                      "UniPCMultistepScheduler"};

Test(infer_sched_config, diffusers_files_written_back_byte_for_byte) {
    const char *files[] = {"schedulers/sd15/scheduler_config.json",
                           "schedulers/ddpm_default/scheduler_config.json",
                           "schedulers/sd21/scheduler_config.json"};
    for (int i = 0; i < 3; i++) {
        char *text = slurp(files[i]);
        df_sched_config c;
        parse_ok(text, NULL, &c);
        char *out = df_sched_config_to_json(&c);
        cr_assert_str_eq(out, text, "%s written back differs", files[i]);
        free(out);
        free(text);
        df_sched_config_free(&c);
    }
}

Test(infer_sched_config, load_reads_the_class_and_unknown_keys) {
    df_sched_config c;
    cr_assert(df_sched_config_load(fixture_path("schedulers/sd21/scheduler_config.json"), NULL,
                                   &c) == DF_OK,
              "%s", df_last_error());
    cr_assert_eq(c.kind, DF_SCHED_DDIM);
    cr_assert_eq(c.prediction_type, DF_PRED_V_PREDICTION);
    cr_assert_eq(c.steps_offset, 1);
    cr_assert(!c.set_alpha_to_one);
    cr_assert(!c.clip_sample);
    /* skip_prk_steps is a PNDM field: kept for writing back, not read */
    char *out = df_sched_config_to_json(&c);
    cr_assert(strstr(out, "\"skip_prk_steps\": true"));
    free(out);
    df_sched_config_free(&c);
}

/* Every fixture's resolved config: parse it as the fixture's class, write it, and compare the
 * JSON value with what diffusers holds (minus _use_default_values, _class_name = the class). */
Test(infer_sched_config, fixture_configs_round_trip_as_diffusers) {
    const char *dirs[] = {"sd15", "ddpm_default"};
    const char *files[] = {
        "DDPMScheduler",          "DDIMScheduler",          "DDIMScheduler_eta0.5",
        "PNDMScheduler",          "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",  "LMSDiscreteScheduler",   "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler"};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 10; i++) {
            char rel[256];
            snprintf(rel, sizeof rel, "schedulers/%s/%s.safetensors", dirs[d], files[i]);
            df_st_file *f = fixture_open(rel);
            const char *cls = df_st_metadata(f, "scheduler");
            const char *meta = df_st_metadata(f, "config");
            df_sched_config c;
            parse_ok(meta, cls, &c);
            char *out = df_sched_config_to_json(&c);
            /* cJSON reads no Infinity (and inf never compares equal): a finite stand-in on both
             * sides */
            char *a = strdup(meta), *b = strdup(out), *p;
            while ((p = strstr(a, "-Infinity"))) memcpy(p, "-1.5e300 ", 9);
            while ((p = strstr(b, "-Infinity"))) memcpy(p, "-1.5e300 ", 9);
            cJSON *want = cJSON_Parse(a), *got = cJSON_Parse(b);
            cr_assert(want && got, "%s: JSON does not parse", rel);
            cJSON_DeleteItemFromObject(want, "_use_default_values");
            cJSON_ReplaceItemInObject(want, "_class_name", cJSON_CreateString(cls));
            cr_assert(cJSON_Compare(want, got, true), "%s: written config differs:\n%s\nwant %s",
                      rel, out, meta);
            cJSON_Delete(want);
            cJSON_Delete(got);
            free(a);
            free(b);
            free(out);
            df_sched_config_free(&c);
        }
}

Test(infer_sched_config, every_class_round_trips_its_config) {
    char *sd15 = slurp("schedulers/sd15/scheduler_config.json");
    for (int k = 0; k < 9; k++) {
        df_sched_config c, c2;
        parse_ok(sd15, classes[k], &c);
        char *out = df_sched_config_to_json(&c);
        cr_assert(strstr(out, classes[k]), "%s: _class_name missing", classes[k]);
        parse_ok(out, NULL, &c2);
        cr_assert_eq(c2.kind, c.kind);
        char *out2 = df_sched_config_to_json(&c2);
        cr_assert_str_eq(out, out2, "%s does not round-trip", classes[k]);
        /* and from the class defaults */
        df_sched_config d, d2;
        df_sched_config_default((df_sched_kind)k, &d);
        char *o3 = df_sched_config_to_json(&d);
        parse_ok(o3, NULL, &d2);
        char *o4 = df_sched_config_to_json(&d2);
        cr_assert_str_eq(o3, o4, "%s defaults do not round-trip", classes[k]);
        free(out), free(out2), free(o3), free(o4);
        df_sched_config_free(&c), df_sched_config_free(&c2);
        df_sched_config_free(&d), df_sched_config_free(&d2);
    }
    free(sd15);
}

Test(infer_sched_config, class_defaults) {
    df_sched_config c;
    parse_ok("{}", "HeunDiscreteScheduler", &c);
    cr_assert_eq(c.beta_start, 0.00085);
    cr_assert_eq(c.beta_end, 0.012);
    cr_assert_eq(c.timestep_spacing, DF_SPACING_LINSPACE);
    df_sched_config_free(&c);
    parse_ok("{}", "DDIMScheduler", &c);
    cr_assert(c.clip_sample && c.set_alpha_to_one);
    cr_assert_eq(c.timestep_spacing, DF_SPACING_LEADING);
    df_sched_config_free(&c);
    parse_ok("{}", "DPMSolverMultistepScheduler", &c);
    cr_assert(isinf(c.lambda_min_clipped) && c.lambda_min_clipped < 0);
    cr_assert_eq(c.variance_type, DF_VARIANCE_NONE);
    cr_assert_eq(c.solver_order, 2);
    df_sched_config_free(&c);
    parse_ok("{\"lambda_min_clipped\": -5.1, \"variance_type\": \"learned_range\"}",
             "DPMSolverMultistepScheduler", &c);
    cr_assert_eq(c.lambda_min_clipped, -5.1);
    cr_assert_eq(c.variance_type, DF_VARIANCE_LEARNED_RANGE);
    df_sched_config_free(&c);
    parse_ok("{\"_class_name\": \"UniPCMultistepScheduler\", \"disable_corrector\": [0, 3]}", NULL,
             &c);
    cr_assert_eq(c.solver_type, DF_SOLVER_BH2);
    cr_assert_eq(c.n_disable_corrector, 2);
    cr_assert_eq(c.disable_corrector[1], 3);
    df_sched_config_free(&c);
}

/* diffusers' __init__ rewrites the other solvers' settings (register_to_config), so a DPM-Solver
 * config read by UniPC, or a DEIS config read by DPM-Solver, works and writes back rewritten. */
Test(infer_sched_config, solver_settings_of_other_classes_are_rewritten) {
    df_sched_config c;
    parse_ok("{\"solver_type\": \"midpoint\", \"algorithm_type\": \"dpmsolver++\"}",
             "UniPCMultistepScheduler", &c);
    cr_assert_eq(c.solver_type, DF_SOLVER_BH2);
    char *out = df_sched_config_to_json(&c);
    cr_assert(strstr(out, "\"solver_type\": \"bh2\""), "%s", out);
    cr_assert(strstr(out, "\"algorithm_type\": \"dpmsolver++\""), "kept unknown key: %s", out);
    free(out);
    df_sched_config_free(&c);
    parse_ok("{\"solver_type\": \"logrho\", \"algorithm_type\": \"deis\"}",
             "DPMSolverMultistepScheduler", &c);
    cr_assert_eq(c.solver_type, DF_SOLVER_MIDPOINT);
    cr_assert_eq(c.algorithm_type, DF_ALGO_DPMSOLVERPP);
    df_sched_config_free(&c);
    parse_ok("{\"solver_type\": \"bh1\"}", "DPMSolverMultistepScheduler", &c);
    cr_assert_eq(c.solver_type, DF_SOLVER_MIDPOINT);
    df_sched_config_free(&c);
    parse_ok("{\"solver_type\": \"heun\"}", "UniPCMultistepScheduler", &c);
    cr_assert_eq(c.solver_type, DF_SOLVER_BH2);
    df_sched_config_free(&c);
}

/* A config dict that records which values were its class's defaults (_use_default_values, as an
 * in-memory diffusers config does) gives the reading class its own defaults for those. */
Test(infer_sched_config, defaults_of_the_source_class_are_not_carried_over) {
    df_sched_config c;
    parse_ok("{\"_class_name\": \"DPMSolverMultistepScheduler\", \"timestep_spacing\": "
             "\"linspace\", \"steps_offset\": 1, \"lambda_min_clipped\": -5.0, "
             "\"_use_default_values\": [\"timestep_spacing\", \"lambda_min_clipped\"]}",
             "DDIMScheduler", &c);
    cr_assert_eq(c.timestep_spacing, DF_SPACING_LEADING, "DDIM's own default");
    cr_assert_eq(c.steps_offset, 1);
    char *out = df_sched_config_to_json(&c);
    cr_assert(!strstr(out, "lambda_min_clipped"), "a defaulted unknown key is dropped: %s", out);
    free(out);
    df_sched_config_free(&c);
}

Test(infer_sched_config, unknown_keys_are_kept_verbatim) {
    const char *in = "{\"_class_name\": \"EulerDiscreteScheduler\", \"zeta\": {\"b\": [1, 2.5, "
                     "null], \"a\": \"\\u00e9\\n\"}, \"_use_default_values\": [\"x\"], "
                     "\"trained_betas\": null, \"alpha\": 1e-05}";
    df_sched_config c;
    parse_ok(in, NULL, &c);
    char *out = df_sched_config_to_json(&c);
    cr_assert(strstr(out, "  \"zeta\": {\n    \"a\": \"\\u00e9\\n\",\n    \"b\": [\n      1,\n"
                          "      2.5,\n      null\n    ]\n  }\n"),
              "got:\n%s", out);
    cr_assert(strstr(out, "\"alpha\": 1e-05,"), "got:\n%s", out);
    cr_assert(!strstr(out, "_use_default_values"));
    free(out);
    df_sched_config_free(&c);
}

Test(infer_sched_config, trained_betas_are_read_and_written) {
    char json[20000];
    int k = snprintf(json, sizeof json, "{\"num_train_timesteps\": 10, \"trained_betas\": [");
    for (int i = 0; i < 10; i++)
        k += snprintf(json + k, sizeof json - k, "%s%g", i ? ", " : "", 0.01 * (i + 1));
    snprintf(json + k, sizeof json - k, "]}");
    df_sched_config c;
    parse_ok(json, "DDIMScheduler", &c);
    cr_assert_eq(c.n_trained_betas, 10);
    df_sched *s = NULL;
    cr_assert(df_sched_new(&c, &s) == DF_OK, "%s", df_last_error());
    cr_assert_float_eq(df_sched_betas(s)[9], 0.1f, 1e-9);
    cr_assert_float_eq(df_sched_alphas_cumprod(s)[1], (float)(0.99 * 0.98), 1e-7);
    char *out = df_sched_config_to_json(&c);
    cr_assert(strstr(out, "\"trained_betas\": [\n    0.01,\n    0.02,"), "got:\n%s", out);
    free(out);
    df_sched_free(s);
    df_sched_config_free(&c);
}

Test(infer_sched_config, bad_values_name_the_field) {
    parse_err("{\"beta_schedule\": \"foo\"}", "DDPMScheduler", DF_ERR_INVALID,
              "test.json: field 'beta_schedule': expected one of linear, scaled_linear, "
              "squaredcos_cap_v2, sigmoid; got 'foo'");
    parse_err("{\"beta_schedule\": \"sigmoid\"}", "DDIMScheduler", DF_ERR_INVALID,
              "field 'beta_schedule': expected one of linear, scaled_linear, squaredcos_cap_v2; "
              "got 'sigmoid'");
    parse_err("{\"prediction_type\": \"x0\"}", "EulerDiscreteScheduler", DF_ERR_INVALID,
              "field 'prediction_type': expected one of epsilon, v_prediction, sample; got 'x0'");
    parse_err("{\"prediction_type\": \"sample\"}", "PNDMScheduler", DF_ERR_INVALID,
              "field 'prediction_type'");
    parse_err("{\"prediction_type\": \"sample\"}", "EulerAncestralDiscreteScheduler",
              DF_ERR_INVALID, "field 'prediction_type'");
    parse_err("{\"timestep_spacing\": \"even\"}", "DDIMScheduler", DF_ERR_INVALID,
              "field 'timestep_spacing'");
    parse_err("{\"algorithm_type\": \"sde-dpmsolver++\"}", "DPMSolverMultistepScheduler",
              DF_ERR_INVALID, "field 'algorithm_type'");
    parse_err("{\"solver_type\": \"rk4\"}", "DPMSolverMultistepScheduler", DF_ERR_INVALID,
              "field 'solver_type': expected one of midpoint, heun; got 'rk4'");
    parse_err("{\"solver_type\": \"rk4\"}", "UniPCMultistepScheduler", DF_ERR_INVALID,
              "field 'solver_type': expected one of bh1, bh2; got 'rk4'");
    parse_err("{\"solver_order\": 4}", "UniPCMultistepScheduler", DF_ERR_INVALID,
              "field 'solver_order'");
    parse_err("{\"beta_start\": \"0.1\"}", "DDIMScheduler", DF_ERR_FORMAT,
              "field 'beta_start': expected a number; got a string");
    parse_err("{\"num_train_timesteps\": 10.5}", "DDIMScheduler", DF_ERR_FORMAT,
              "field 'num_train_timesteps': expected an integer");
    parse_err("{\"num_train_timesteps\": 0}", "DDIMScheduler", DF_ERR_INVALID,
              "field 'num_train_timesteps'");
    parse_err("{\"clip_sample\": 1}", "DDIMScheduler", DF_ERR_FORMAT,
              "field 'clip_sample': expected true or false; got a number");
    parse_err("{\"trained_betas\": [0.1, \"a\"]}", "DDIMScheduler", DF_ERR_FORMAT,
              "field 'trained_betas': item 1");
    parse_err("{\"trained_betas\": [0.1, 0.2]}", "DDIMScheduler", DF_ERR_INVALID,
              "field 'trained_betas': 2 values for num_train_timesteps 1000");
    parse_err("{\"variance_type\": null}", "DDPMScheduler", DF_ERR_FORMAT, "field 'variance_type'");
    parse_err("{\"solver_p\": {}}", "UniPCMultistepScheduler", DF_ERR_UNSUPPORTED,
              "field 'solver_p'");
    parse_err("{\"steps_offset\": -1}", "DDIMScheduler", DF_ERR_INVALID, "field 'steps_offset'");
}

Test(infer_sched_config, bad_files_and_names) {
    parse_err("{\"_class_name\": \"FooScheduler\"}", NULL, DF_ERR_INVALID,
              "test.json: field '_class_name': unknown scheduler 'FooScheduler'");
    parse_err("{}", NULL, DF_ERR_INVALID, "field '_class_name': missing");
    parse_err("{\"_class_name\": 3}", NULL, DF_ERR_FORMAT,
              "field '_class_name': expected a string");
    parse_err("{}", "KarrasVeScheduler", DF_ERR_INVALID, "unknown scheduler 'KarrasVeScheduler'");
    parse_err("{\"beta_start\": 0.1,", "DDIMScheduler", DF_ERR_FORMAT, "test.json: not valid JSON");
    parse_err("", "DDIMScheduler", DF_ERR_FORMAT, "not valid JSON");
    parse_err("[1, 2]", "DDIMScheduler", DF_ERR_FORMAT, "expected a JSON object");
    parse_err("{\"a\xff\": 1}", "DDIMScheduler", DF_ERR_FORMAT,
              "test.json: not valid UTF-8 (byte 3)");
    parse_err("{\"a\": \"\xed\xa0\x80\"}", "DDIMScheduler", DF_ERR_FORMAT, "not valid UTF-8");
    parse_err("{\"a\": \"\\udc00\"}", "DDIMScheduler", DF_ERR_FORMAT, "not valid JSON");
    parse_err("{} trailing", "DDIMScheduler", DF_ERR_FORMAT, "not valid JSON");
    df_sched_config c;
    cr_assert_eq(df_sched_config_load("/nonexistent/scheduler_config.json", NULL, &c), DF_ERR_IO);
    cr_assert(strstr(df_last_error(), "/nonexistent/scheduler_config.json"));
}

Test(infer_sched_config, steps_and_strength_are_checked) {
    df_sched_config c;
    parse_ok("{}", "DDIMScheduler", &c);
    df_sched *s = NULL;
    cr_assert(df_sched_new(&c, &s) == DF_OK);
    cr_assert_eq(df_sched_set_timesteps(s, 1001), DF_ERR_INVALID);
    cr_assert(
        strstr(df_last_error(), "field 'steps': 1001 is larger than num_train_timesteps 1000"),
        "%s", df_last_error());
    cr_assert_eq(df_sched_set_timesteps(s, 0), DF_ERR_INVALID);
    int start = -1;
    cr_assert_eq(df_sched_img2img_start(s, 0.5, &start), DF_ERR_INVALID); /* no set_timesteps */
    cr_assert(df_sched_set_timesteps(s, 10) == DF_OK);
    cr_assert_eq(df_sched_img2img_start(s, 1.5, &start), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "field 'strength'"), "%s", df_last_error());
    cr_assert_eq(df_sched_img2img_start(s, -0.1, &start), DF_ERR_INVALID);
    cr_assert(df_sched_img2img_start(s, 0.75, &start) == DF_OK);
    cr_assert_eq(start, 3); /* int(10 * 0.75) = 7 steps of noise: start at index 3 */
    cr_assert(df_sched_img2img_start(s, 1.0, &start) == DF_OK);
    cr_assert_eq(start, 0);
    cr_assert(df_sched_img2img_start(s, 0.0, &start) == DF_OK);
    cr_assert_eq(start, 10);
    cr_assert(df_sched_img2img_start(s, 0.3, &start) == DF_OK);
    cr_assert_eq(start, 7); /* int(10 * 0.3) = int(3.0000000000000004) = 3 noised steps */
    cr_assert(df_sched_img2img_start(s, 0.29, &start) == DF_OK);
    cr_assert_eq(start, 8); /* int(2.9) = 2 */
    df_sched_free(s);
    df_sched_config_free(&c);

    parse_ok("{}", "HeunDiscreteScheduler", &c);
    cr_assert(df_sched_new(&c, &s) == DF_OK);
    cr_assert(df_sched_set_timesteps(s, 10) == DF_OK);
    cr_assert_eq(df_sched_order(s), 2);
    cr_assert(df_sched_img2img_start(s, 0.75, &start) == DF_OK);
    cr_assert_eq(start, 6);
    df_sched_free(s);
    df_sched_config_free(&c);
}

Test(infer_sched_config, stochastic_step_without_noise_is_an_error) {
    df_sched_config c;
    parse_ok("{}", "EulerAncestralDiscreteScheduler", &c);
    df_sched *s = NULL;
    cr_assert(df_sched_new(&c, &s) == DF_OK);
    cr_assert(df_sched_set_timesteps(s, 5) == DF_OK);
    df_tensor *x = df_zeros(DF_DTYPE_F32, DF_DIMS(1, 1, 2, 2)), *prev = NULL;
    cr_assert_eq(df_sched_step(s, x, df_sched_timesteps(s)[0], x, NULL, &prev, NULL),
                 DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "noise"), "%s", df_last_error());
    cr_assert_eq(df_sched_step(s, x, 12345.5, x, NULL, &prev, NULL), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "not in the schedule"), "%s", df_last_error());
    df_tensor_free(x);
    df_sched_free(s);
    df_sched_config_free(&c);
}

/* min-SNR weighting needs SNR(t) = abar / (1 - abar); diffusers computes it in float32 as
 * (sqrt(abar) / sqrt(1 - abar))^2. */
Test(infer_sched_config, snr_per_timestep) {
    df_sched_config c;
    char *sd15 = slurp("schedulers/sd15/scheduler_config.json");
    parse_ok(sd15, "DDPMScheduler", &c);
    free(sd15);
    df_sched *s = NULL;
    cr_assert(df_sched_new(&c, &s) == DF_OK);
    df_tensor *t = df_from_data(DF_DTYPE_I64, 1, (int64_t[]){4}, (int64_t[]){0, 1, 500, 999});
    df_tensor *snr = NULL;
    cr_assert(df_sched_snr(s, t, &snr) == DF_OK);
    float want[4];
    for (int i = 0; i < 4; i++) {
        double ac = df_sched_alphas_cumprod(s)[(int)df_tensor_get(t, i)];
        want[i] = (float)(ac / (1 - ac));
    }
    check_close_f32("snr", df_f32(snr), want, 4, 0, 1e-5);
    cr_assert(df_f32(snr)[0] > df_f32(snr)[1] && df_f32(snr)[2] > df_f32(snr)[3]);
    df_tensor *bad = df_from_data(DF_DTYPE_I64, 1, (int64_t[]){1}, (int64_t[]){1000});
    cr_assert_eq(df_sched_snr(s, bad, &snr), DF_ERR_INVALID);
    df_tensor_free(t);
    df_tensor_free(bad);
    df_sched_free(s);
    df_sched_config_free(&c);
}
