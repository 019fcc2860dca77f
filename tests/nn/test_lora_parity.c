/* test_lora_parity.c — a LoRA training step against the real diffusers v0.21.4
 * (tests/ref/gen_lora_model.py, fixture tests/fixtures/lora/model_step.safetensors): the tiny
 * SD 1.x UNet and CLIP text encoder of tests/fixtures/pipelines/sd1, frozen, with upstream's
 * LoRA layers (LoRALinearLayer with network_alpha on the attention projections, LoRAConv2dLayer
 * on two ResNet convs, PatchedLoraProjection on the text encoder's q/k/v/out_proj; nonzero up
 * weights) reproduced by nn/lora.c: the text encoder's output, the UNet's prediction, the
 * script's min-SNR loss and the gradients of every LoRA parameter agree within 1e-5. */
#include "nn/lora.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <string.h>

#define FIX "lora/model_step.safetensors"

static void load_frozen(const char *part, df_component *c) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", fixture_path("pipelines/sd1"), part);
    cr_assert_eq(df_component_map_frozen(dir, NULL, c), DF_OK, "%s", df_last_error());
}

Test(nn_lora_parity, training_step_equals_diffusers, .timeout = 120) {
    df_component unet, text;
    load_frozen("unet", &unet);
    load_frozen("text_encoder", &text);
    df_lora l;
    df_lora_init(&l);
    df_lora_model mu = {"unet", unet.params}, mt = {"text_encoder", text.params};
    /* the generator's adapters: attention (rank 4, alpha 2), LoCon on two convs (rank 2), the
     * text encoder's attention (rank 2) */
    df_lora_config c = df_lora_config_default();
    c.rank = 4;
    c.alpha = 2;
    c.globs = df_lora_unet_default_globs;
    c.n_globs = 4;
    cr_assert_eq(df_lora_create(&l, &mu, 1, &c, NULL), DF_OK, "%s", df_last_error());
    const char *convs[] = {"unet.down_blocks.0.resnets.0.conv1",
                           "unet.up_blocks.1.resnets.0.conv2"};
    df_lora_config cc = df_lora_config_default();
    cc.rank = cc.conv_rank = 2;
    cc.globs = convs;
    cc.n_globs = 2;
    cr_assert_eq(df_lora_create(&l, &mu, 1, &cc, NULL), DF_OK, "%s", df_last_error());
    df_lora_config ct = df_lora_config_default();
    ct.rank = 2;
    ct.globs = df_lora_text_default_globs;
    ct.n_globs = 4;
    cr_assert_eq(df_lora_create(&l, &mt, 1, &ct, NULL), DF_OK, "%s", df_last_error());

    /* the upstream adapters' values, every one of ours covered */
    df_st_file *f = fixture_open(FIX);
    int n_fix = 0;
    df_scope s = df_scope_begin();
    for (int i = 0; i < df_st_count(f); i++) {
        const char *name = df_st_info_at(f, i)->name;
        size_t len = strlen(name);
        if (strncmp(name, "lora.", 5) != 0 || strcmp(name + len - 5, ".down") != 0) continue;
        char target[DF_NAME_MAX], key[DF_NAME_MAX + 32];
        snprintf(target, sizeof target, "%.*s", (int)(len - 10), name + 5);
        static const char *const parts[2] = {"down", "up"};
        for (int k = 0; k < 2; k++) {
            snprintf(key, sizeof key, "%s.lora.%s.weight", target, parts[k]);
            df_tensor *dst = df_params_find(&l.params, key);
            cr_assert(dst, "no adapter for %s", key);
            char fk[DF_NAME_MAX + 32];
            snprintf(fk, sizeof fk, "lora.%s.%s", target, parts[k]);
            df_tensor_copy_(dst, fixture_tensor(FIX, fk));
        }
        n_fix++;
    }
    cr_assert_eq(n_fix, l.n, "%d upstream adapters, %d of ours", n_fix, l.n);
    cr_assert_eq(df_params_flatten(&l.params), DF_OK, "%s", df_last_error());

    /* the step */
    df_tensor *ids = fixture_tensor(FIX, "input_ids"), *noisy = fixture_tensor(FIX, "noisy"),
              *noise = fixture_tensor(FIX, "noise"), *t = fixture_tensor(FIX, "timesteps"),
              *w = fixture_tensor(FIX, "snr_weights");
    df_tensor *hidden = df_clip_text_forward(text.clip_text, ids, NULL, NULL);
    df_tensor *pred = df_unet2d_cond_forward(unet.unet2d_cond, noisy, t, hidden);
    df_tensor *per = df_mean(df_mse_loss(pred, noise, false), 3, (int[]){1, 2, 3}, false);
    df_tensor *loss = df_mean(df_mul(per, w), 0, NULL, false);
    check_close("encoder_hidden_states", hidden, fixture_tensor(FIX, "encoder_hidden_states"), 1e-5,
                1e-5);
    check_close("model_pred", pred, fixture_tensor(FIX, "model_pred"), 1e-5, 1e-5);
    check_close("loss", loss, fixture_tensor(FIX, "loss"), 1e-6, 1e-5);
    cr_assert_eq(df_backward(loss), DF_OK, "%s", df_last_error());
    double worst = 0;
    for (int i = 0; i < l.params.n; i++) {
        const char *name = l.params.items[i].name; /* <target>.lora.<down|up>.weight */
        size_t len = strlen(name);
        bool up = strcmp(name + len - 15, ".lora.up.weight") == 0;
        char fk[DF_NAME_MAX + 32];
        snprintf(fk, sizeof fk, "grad.%.*s.%s", (int)(len - (up ? 15 : 17)), name,
                 up ? "up" : "down");
        df_tensor *want = fixture_tensor(FIX, fk);
        const df_tensor *got = l.params.items[i].tensor->grad;
        cr_assert(got, "%s: no gradient", name);
        check_close(fk, got, want, 1e-5, 1e-4);
        double e = rel_max_err(got, want);
        if (e > worst) worst = e;
    }
    cr_log_info("LoRA gradients: worst max|diff| / max|want| %.2e over %d tensors", worst,
                l.params.n);
    cr_assert(worst < 1e-5, "worst relative gradient error %.2e", worst);
    for (int i = 0; i < unet.params->n; i++)
        cr_assert(!unet.params->items[i].tensor->grad, "the frozen UNet got a gradient");
    df_scope_end(s);
    df_lora_free(&l);
    df_component_free(&unet);
    df_component_free(&text);
}
