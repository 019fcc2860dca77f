/* test_t2i_loss.c — the text-to-image training loss through our modules against one training
 * step of diffusers v0.21.4's examples/text_to_image/train_text_to_image.py run by diffusers'
 * and transformers' own classes (tests/fixtures/train/t2i_loss/, from tests/ref/gen_t2i_loss.py):
 * CLIP text forward on the ids -> encoder_hidden_states -> the conditional UNet on the noisy
 * latents -> df_diffusion_loss with the script's v0.21.4 min-SNR form (min_snr_v_over_snr), for
 * epsilon and v_prediction, with and without min-SNR, with offset noise; and the one case where
 * the two min-SNR forms differ. */
#include "tests/common/check.h"
#include "train/train.h"

#include <math.h>
#include <string.h>

#define FIX "train/t2i_loss/t2i_loss.safetensors"

typedef struct t2i_case {
    const char *name;
    df_prediction_type prediction;
    float snr_gamma, noise_offset;
} t2i_case;

static df_tensor *case_loss(df_component *unet, df_tensor *hidden, df_sched *sched,
                            const t2i_case *tc, bool v_over_snr) {
    df_diffusion_loss_config c = {.prediction = tc->prediction,
                                  .num_train_timesteps = 1000,
                                  .snr_gamma = tc->snr_gamma,
                                  .noise_offset = tc->noise_offset,
                                  .min_snr_v_over_snr = v_over_snr};
    df_tensor *latents = fixture_tensor(FIX, "latents"), *noise = fixture_tensor(FIX, "noise");
    df_tensor *t = fixture_tensor(FIX, "timesteps");
    if (tc->noise_offset > 0) /* the script: noise += noise_offset * randn(N, C, 1, 1) */
        noise = df_add(noise, df_mul_scalar(fixture_tensor(FIX, "offset_noise"), tc->noise_offset));
    df_diffusion_draw d;
    cr_assert_eq(df_diffusion_prepare(&c, sched, latents, noise, NULL, t, &d), DF_OK, "%s",
                 df_last_error());
    df_tensor *pred = df_unet2d_cond_forward(unet->unet2d_cond, d.noisy, t, hidden);
    df_tensor *loss;
    cr_assert_eq(df_diffusion_loss(&c, sched, pred, &d, NULL, NULL, &loss), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(loss->numel, 1);
    return loss;
}

Test(train_t2i_loss, matches_train_text_to_image_v0_21_4) {
    df_scope scope = df_scope_begin();
    char dir[1024];
    df_component unet = {0}, text = {0};
    snprintf(dir, sizeof dir, "%s", fixture_path("train/t2i_loss/unet"));
    cr_assert_eq(df_component_load_frozen(dir, &unet), DF_OK, "%s", df_last_error());
    snprintf(dir, sizeof dir, "%s", fixture_path("train/t2i_loss/text_encoder"));
    cr_assert_eq(df_component_load_frozen(dir, &text), DF_OK, "%s", df_last_error());
    cr_assert(unet.unet2d_cond && text.clip_text);
    snprintf(dir, sizeof dir, "%s", fixture_path("train/t2i_loss/scheduler/scheduler_config.json"));
    df_sched_config sc;
    cr_assert_eq(df_sched_config_load(dir, NULL, &sc), DF_OK, "%s", df_last_error());

    df_tensor *hidden =
        df_clip_text_forward(text.clip_text, fixture_tensor(FIX, "input_ids"), NULL, NULL);
    check_close("encoder_hidden_states", hidden, fixture_tensor(FIX, "encoder_hidden_states"), 1e-5,
                1e-5);

    const t2i_case cases[] = {
        {"epsilon", DF_PRED_EPSILON, 0, 0},
        {"epsilon_snr", DF_PRED_EPSILON, 5, 0},
        {"v", DF_PRED_V_PREDICTION, 0, 0},
        {"v_snr", DF_PRED_V_PREDICTION, 5, 0},
        {"epsilon_offset", DF_PRED_EPSILON, 0, 0.1f},
        {"v_snr_offset", DF_PRED_V_PREDICTION, 5, 0.1f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sc.prediction_type = cases[i].prediction;
        df_sched *sched;
        cr_assert_eq(df_sched_new(&sc, &sched), DF_OK, "%s", df_last_error());
        df_tensor *loss = case_loss(&unet, hidden, sched, &cases[i], true);
        char key[64];
        snprintf(key, sizeof key, "%s.loss", cases[i].name);
        check_close_f32(key, df_f32(loss), df_f32(fixture_tensor(FIX, key)), 1, 0, 1e-5);
        if (cases[i].prediction == DF_PRED_V_PREDICTION && cases[i].snr_gamma > 0) {
            /* the unconditional recipe's form (/ (snr + 1)) is a different loss here */
            df_tensor *other = case_loss(&unet, hidden, sched, &cases[i], false);
            cr_assert(fabsf(df_f32(other)[0] - df_f32(loss)[0]) > 1e-3f,
                      "%s: / snr and / (snr + 1) should differ (%g, %g)", cases[i].name,
                      df_f32(other)[0], df_f32(loss)[0]);
        } else {
            df_tensor *same = case_loss(&unet, hidden, sched, &cases[i], false);
            cr_assert_eq(df_f32(same)[0], df_f32(loss)[0],
                         "%s: the option changes only v_prediction with min-SNR", cases[i].name);
        }
        df_sched_free(sched);
    }
    df_sched_config_free(&sc);
    df_component_free(&unet);
    df_component_free(&text);
    df_scope_end(scope);
}
