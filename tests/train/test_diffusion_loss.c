/* test_diffusion_loss.c — the shared diffusion loss (train/diffusion_loss.c) against diffusers'
 * DDPMScheduler and the training scripts' formulas (tests/fixtures/train/diffusion_loss.
 * safetensors, from tests/ref/gen_diffusion_loss.py): noisy inputs, targets and losses for
 * epsilon, v_prediction and sample, min-SNR, input perturbation, masks and item weights; the
 * gradient of the loss by finite differences; draws that depend only on the step's streams. */
#include "tests/common/check.h"
#include "train/train.h"

#include <string.h>

#define FIX "train/diffusion_loss.safetensors"

static df_sched *ddpm(df_prediction_type prediction) {
    const char *names[] = {"epsilon", "v_prediction", "sample"};
    const char *name = prediction == DF_PRED_EPSILON        ? names[0]
                       : prediction == DF_PRED_V_PREDICTION ? names[1]
                                                            : names[2];
    char json[256];
    snprintf(json, sizeof json,
             "{\"_class_name\": \"DDPMScheduler\", \"num_train_timesteps\": 1000, "
             "\"beta_schedule\": \"squaredcos_cap_v2\", \"prediction_type\": \"%s\"}",
             name);
    df_sched_config cfg;
    cr_assert_eq(df_sched_config_parse(json, strlen(json), "test", NULL, &cfg), DF_OK, "%s",
                 df_last_error());
    df_sched *s;
    cr_assert_eq(df_sched_new(&cfg, &s), DF_OK, "%s", df_last_error());
    df_sched_config_free(&cfg);
    return s;
}

typedef struct loss_case {
    const char *name;
    df_diffusion_loss_config c;
    bool perturbed, masked, weighted;
} loss_case;

static void check_case(const loss_case *lc) {
    df_scope scope = df_scope_begin();
    df_sched *s = ddpm(lc->c.prediction);
    df_tensor *x0 = fixture_tensor(FIX, "x0"), *noise = fixture_tensor(FIX, "noise");
    df_tensor *t = fixture_tensor(FIX, "t"), *out = fixture_tensor(FIX, "out");
    df_tensor *input = NULL;
    if (lc->perturbed)
        input =
            df_add(noise, df_mul_scalar(fixture_tensor(FIX, "perturb"), lc->c.input_perturbation));
    df_diffusion_draw d;
    cr_assert_eq(df_diffusion_prepare(&lc->c, s, x0, noise, input, t, &d), DF_OK, "%s",
                 df_last_error());
    char key[64], label[96];
    snprintf(key, sizeof key, "%s.noisy", lc->name);
    snprintf(label, sizeof label, "%s: noisy input", lc->name);
    check_close(label, d.noisy, fixture_tensor(FIX, key), 1e-6, 1e-6);
    snprintf(key, sizeof key, "%s.target", lc->name);
    snprintf(label, sizeof label, "%s: target", lc->name);
    check_close(label, d.target, fixture_tensor(FIX, key), 1e-6, 1e-6);
    df_tensor *loss;
    cr_assert_eq(df_diffusion_loss(&lc->c, s, out, &d,
                                   lc->weighted ? fixture_tensor(FIX, "item_weights") : NULL,
                                   lc->masked ? fixture_tensor(FIX, "mask") : NULL, &loss),
                 DF_OK, "%s", df_last_error());
    snprintf(key, sizeof key, "%s.loss", lc->name);
    snprintf(label, sizeof label, "%s: loss", lc->name);
    df_tensor *want = fixture_tensor(FIX, key);
    cr_assert_eq(loss->numel, 1);
    check_close_f32(label, df_f32(loss), df_f32(want), 1, 0, 1e-6);
    df_sched_free(s);
    df_scope_end(scope);
}

Test(train_diffusion_loss, matches_diffusers_formulas) {
    const loss_case cases[] = {
        {"epsilon", {DF_PRED_EPSILON, 1000}},
        {"epsilon_snr", {DF_PRED_EPSILON, 1000, .snr_gamma = 5}},
        {"v", {DF_PRED_V_PREDICTION, 1000}},
        {"v_snr", {DF_PRED_V_PREDICTION, 1000, .snr_gamma = 5}},
        {"sample", {DF_PRED_SAMPLE, 1000}},
        {"perturbed", {DF_PRED_EPSILON, 1000, .input_perturbation = 0.1f}, .perturbed = true},
        {"masked", {DF_PRED_EPSILON, 1000}, .masked = true},
        {"weighted_v_snr", {DF_PRED_V_PREDICTION, 1000, .snr_gamma = 5}, .weighted = true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
}

/* d loss / d out by finite differences, for the weighted and masked form (the plain one is
 * df_mse_loss, checked in tests/autograd). */
typedef struct grad_ctx {
    df_sched *s;
    df_diffusion_loss_config c;
    df_diffusion_draw d;
    df_tensor *weights, *mask;
} grad_ctx;

static df_tensor *loss_of_out(df_tensor **in, void *user) {
    grad_ctx *g = user;
    df_tensor *loss;
    cr_assert_eq(df_diffusion_loss(&g->c, g->s, in[0], &g->d, g->weights, g->mask, &loss), DF_OK);
    return loss;
}

Test(train_diffusion_loss, gradient_of_weighted_masked_loss) {
    grad_ctx g = {.s = ddpm(DF_PRED_V_PREDICTION), .c = {DF_PRED_V_PREDICTION, 1000, 5}};
    df_tensor *x0 = fixture_tensor(FIX, "x0"), *noise = fixture_tensor(FIX, "noise");
    df_tensor *t = fixture_tensor(FIX, "t");
    cr_assert_eq(df_diffusion_prepare(&g.c, g.s, x0, noise, NULL, t, &g.d), DF_OK);
    g.weights = fixture_tensor(FIX, "item_weights");
    g.mask = fixture_tensor(FIX, "mask");
    df_tensor *out = df_tensor_retain(df_tensor_clone(fixture_tensor(FIX, "out")));
    df_tensor_set_requires_grad(out, true);
    gradcheck("weighted masked loss", loss_of_out, &g, &out, 1, 1e-2, 1e-4, 1e-3);
    df_tensor_free(out);
    df_sched_free(g.s);
}

/* A draw is a function of the step's streams: the same streams give the same tensors; the
 * timesteps lie in 0 .. T-1; offset noise and input perturbation change the noisy input. */
static void draw(const df_diffusion_loss_config *c, df_sched *s, const df_tensor *x0,
                 df_diffusion_draw *d) {
    df_step_rng rng;
    df_philox_init(&rng.noise, 7, 1);
    df_philox_init(&rng.timesteps, 7, 2);
    df_philox_init(&rng.dropout, 7, 3);
    cr_assert_eq(df_diffusion_draw_sample(c, s, x0, &rng, d), DF_OK, "%s", df_last_error());
}

Test(train_diffusion_loss, draws_depend_only_on_the_streams) {
    df_scope scope = df_scope_begin();
    df_sched *s = ddpm(DF_PRED_EPSILON);
    df_tensor *x0 = fixture_tensor(FIX, "x0");
    df_diffusion_loss_config c = {DF_PRED_EPSILON, 1000};
    df_diffusion_draw a, b, off, pert;
    draw(&c, s, x0, &a);
    draw(&c, s, x0, &b);
    check_close("same streams: noise", b.noise, a.noise, 0, 0);
    check_close("same streams: noisy", b.noisy, a.noisy, 0, 0);
    for (int64_t i = 0; i < a.timesteps->numel; i++) {
        int64_t v = ((int64_t *)a.timesteps->data)[i];
        cr_assert(v >= 0 && v < 1000, "timestep %lld", (long long)v);
        cr_assert_eq(v, ((int64_t *)b.timesteps->data)[i]);
    }
    cr_assert(a.target == a.noise, "epsilon: the target is the noise");
    df_diffusion_loss_config co = c, cp = c;
    co.noise_offset = 0.1f;
    cp.input_perturbation = 0.1f;
    draw(&co, s, x0, &off);
    draw(&cp, s, x0, &pert);
    cr_assert(rel_max_err(off.noise, a.noise) > 0, "offset noise changes the noise");
    check_close("perturbation: the target noise is unchanged", pert.noise, a.noise, 0, 0);
    cr_assert(rel_max_err(pert.noisy, a.noisy) > 0, "perturbation changes the noisy input");
    df_sched_free(s);
    df_scope_end(scope);
}

Test(train_diffusion_loss, shape_errors_are_statuses) {
    df_scope scope = df_scope_begin();
    df_sched *s = ddpm(DF_PRED_EPSILON);
    df_diffusion_loss_config c = {DF_PRED_EPSILON, 1000};
    df_diffusion_draw d;
    df_tensor *x0 = fixture_tensor(FIX, "x0");
    cr_assert_eq(df_diffusion_prepare(&c, s, x0, fixture_tensor(FIX, "noise"), NULL,
                                      fixture_tensor(FIX, "t"), &d),
                 DF_OK);
    df_tensor *wrong = df_tensor_new(DF_DTYPE_F32, DF_DIMS(4, 3, 5, 5)), *loss;
    cr_assert_eq(df_diffusion_loss(&c, s, wrong, &d, NULL, NULL, &loss), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "shape"), "%s", df_last_error());
    df_tensor *w3 = df_tensor_new(DF_DTYPE_F32, 1, (int64_t[]){3});
    cr_assert_eq(df_diffusion_loss(&c, s, fixture_tensor(FIX, "out"), &d, w3, NULL, &loss),
                 DF_ERR_INVALID);
    df_tensor *m = df_tensor_new(DF_DTYPE_F32, DF_DIMS(4, 2, 5, 6));
    cr_assert_eq(df_diffusion_loss(&c, s, fixture_tensor(FIX, "out"), &d, NULL, m, &loss),
                 DF_ERR_INVALID);
    df_sched_free(s);
    df_scope_end(scope);
}
