/* test_vae_loss.c — the `vae` recipe's loss (train/vae_loss.c) on a fixed batch with given
 * posterior noise, against the formula computed from diffusers' own AutoencoderKL outputs
 * (tests/fixtures/train/vae_loss/, from tests/ref/gen_vae_loss.py through the oracle's vae
 * mode): the posterior sample, the decoding, the KL and the L1 / MSE losses within 1e-5; the
 * L1 gradient by finite differences; shape errors as statuses. */
#include "tests/common/check.h"
#include "train/train.h"

#include <string.h>

#define DIR "train/vae_loss"
#define IN DIR "/inputs.safetensors"
#define OUT DIR "/outputs.safetensors"
#define LOSSES DIR "/losses.safetensors"

static void load_vae(df_component *c) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", fixture_path(DIR));
    cr_assert_eq(df_component_load(dir, c), DF_OK, "%s", df_last_error());
    cr_assert(c->vae);
}

Test(train_vae_loss, matches_diffusers_autoencoder_kl) {
    df_scope scope = df_scope_begin();
    df_component comp = {0};
    load_vae(&comp);
    df_tensor *x = fixture_tensor(IN, "sample"), *noise = fixture_tensor(IN, "noise");
    const struct {
        const char *name;
        df_recon_kind kind;
    } cases[] = {{"l1", DF_RECON_L1}, {"mse", DF_RECON_MSE}};
    for (int i = 0; i < 2; i++) {
        df_vae_loss_config c = {.recon = cases[i].kind, .kl_weight = 0.01f};
        df_vae_loss_parts p;
        cr_assert_eq(df_vae_loss(comp.vae, &c, x, noise, &p), DF_OK, "%s", df_last_error());
        check_close("z", p.z, fixture_tensor(OUT, "z"), 1e-5, 1e-5);
        check_close("decoded_z", p.decoded, fixture_tensor(OUT, "decoded_z"), 1e-5, 1e-5);
        check_close_f32("kl", df_f32(p.kl), df_f32(fixture_tensor(LOSSES, "kl")), 1, 0, 1e-5);
        char key[64];
        snprintf(key, sizeof key, "%s.recon", cases[i].name);
        check_close_f32(key, df_f32(p.recon), df_f32(fixture_tensor(LOSSES, key)), 1, 0, 1e-5);
        snprintf(key, sizeof key, "%s.loss", cases[i].name);
        check_close_f32(key, df_f32(p.loss), df_f32(fixture_tensor(LOSSES, key)), 1, 0, 1e-5);
    }
    df_component_free(&comp);
    df_scope_end(scope);
}

/* d loss / d x through the whole VAE, for the L1 form (its sign mask) and the KL. */
typedef struct grad_ctx {
    df_vae *vae;
    df_tensor *noise;
    df_recon_kind kind;
} grad_ctx;

static df_tensor *loss_of_x(df_tensor **in, void *user) {
    grad_ctx *g = user;
    df_vae_loss_config c = {.recon = g->kind, .kl_weight = 0.5f};
    df_vae_loss_parts p;
    cr_assert_eq(df_vae_loss(g->vae, &c, in[0], g->noise, &p), DF_OK, "%s", df_last_error());
    return p.loss;
}

Test(train_vae_loss, gradient_by_finite_differences) {
    df_component comp = {0};
    load_vae(&comp);
    grad_ctx g = {.vae = comp.vae, .noise = fixture_tensor(IN, "noise"), .kind = DF_RECON_L1};
    df_tensor *x = df_tensor_retain(df_tensor_clone(fixture_tensor(IN, "sample")));
    df_tensor_set_requires_grad(x, true);
    gradcheck("vae l1 loss", loss_of_x, &g, &x, 1, 1e-2, 1e-3, 2e-2);
    df_tensor_free(x);
    df_component_free(&comp);
}

Test(train_vae_loss, shape_errors_are_statuses) {
    df_scope scope = df_scope_begin();
    df_component comp = {0};
    load_vae(&comp);
    df_vae_loss_config c = {.recon = DF_RECON_MSE, .kl_weight = 1e-6f};
    df_vae_loss_parts p;
    df_tensor *bad_noise = df_tensor_new(DF_DTYPE_F32, DF_DIMS(2, 4, 3, 4));
    expect_status(df_vae_loss(comp.vae, &c, fixture_tensor(IN, "sample"), bad_noise, &p),
                  DF_ERR_INVALID, "noise");
    df_tensor *grey = df_tensor_new(DF_DTYPE_F32, DF_DIMS(2, 1, 16, 16));
    expect_status(df_vae_loss(comp.vae, &c, grey, fixture_tensor(IN, "noise"), &p), DF_ERR_INVALID,
                  "");
    df_component_free(&comp);
    df_scope_end(scope);
}
