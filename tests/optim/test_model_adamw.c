/* test_model_adamw.c — a short training trajectory end to end: diffusers' and transformers'
 * own 3-step torch.optim.AdamW runs (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2;
 * zero_grad, forward, loss = sum(output * probe) over the probed outputs, backward, step) on
 * vae_tiny and clip_text_tiny. The loss before each step and every parameter after the third
 * agree within 1e-4 relative. Attention key biases are only bounded (10 lr): their gradient is
 * float32 noise around an exact zero, which AdamW normalises into lr-sized moves in directions
 * the noise decides, whatever the implementation. */
#include "nn/nn.h"
#include "optim/optim.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void trajectory(const char *name) {
    char dir[512], rel[256];
    snprintf(dir, sizeof dir, "%s/%s", fixture_path("models"), name);
    df_component comp;
    cr_assert_eq(df_component_load(dir, &comp), DF_OK, "%s", df_last_error());
    df_params *reg = &comp.params[0];
    cr_assert_eq(df_params_flatten(reg), DF_OK);
    df_tensor *params[1024];
    const char *names[1024];
    cr_assert_leq(reg->n, 1024);
    for (int i = 0; i < reg->n; i++)
        params[i] = reg->items[i].tensor, names[i] = reg->items[i].name;
    df_optim_hparams h = df_optim_hparams_default(DF_OPTIM_ADAMW);
    h.lr = 1e-3, h.beta1 = 0.9, h.beta2 = 0.999, h.eps = 1e-8, h.weight_decay = 1e-2;
    df_param_group g = {.params = params, .names = names, .n = reg->n, .h = h};
    df_optim *opt;
    cr_assert_eq(df_optim_new(DF_OPTIM_ADAMW, &g, 1, &opt), DF_OK, "%s", df_last_error());

    df_st_file *in, *want;
    snprintf(rel, sizeof rel, "models/%s/inputs.safetensors", name);
    cr_assert_eq(df_st_open(fixture_path(rel), &in), DF_OK);
    snprintf(rel, sizeof rel, "models/%s/adamw.safetensors", name);
    cr_assert_eq(df_st_open(fixture_path(rel), &want), DF_OK);
    df_scope outer = df_scope_begin();
    df_tensor *losses;
    cr_assert_eq(df_st_read(want, "adamw.losses", DF_DTYPE_F32, &losses), DF_OK);
    df_named inputs[8];
    int n_in = 0;
    for (int i = 0; i < df_st_count(in); i++) {
        const df_st_info *info = df_st_info_at(in, i);
        if (strncmp(info->name, "probe", 5) == 0) continue;
        df_tensor *t;
        bool is_float = df_dtype_is_float(info->dtype);
        cr_assert_eq(df_st_read(in, info->name, is_float ? DF_DTYPE_F32 : info->dtype, &t), DF_OK);
        inputs[n_in++] = (df_named){info->name, t};
    }
    for (int step = 0; step < 3; step++) {
        df_scope s = df_scope_begin();
        df_optim_zero_grad(opt);
        df_named out[DF_COMPONENT_MAX_OUTPUTS];
        int n_out;
        cr_assert_eq(df_component_forward(&comp, inputs, n_in, out, &n_out), DF_OK);
        df_tensor *loss = NULL;
        for (int i = 0; i < n_out; i++) {
            char probe[128];
            snprintf(probe, sizeof probe, "probe.%s", out[i].name);
            const char *pn = df_st_find(in, probe)                                       ? probe
                             : strcmp(out[i].name, df_component_main_output(&comp)) == 0 ? "probe"
                                                                                         : NULL;
            if (!pn) continue;
            df_tensor *p;
            cr_assert_eq(df_st_read(in, pn, DF_DTYPE_F32, &p), DF_OK);
            df_tensor *term = df_sum(df_mul(out[i].tensor, p), 0, NULL, false);
            loss = loss ? df_add(loss, term) : term;
        }
        double got = df_f32(loss)[0], exp = df_f32(losses)[step];
        cr_expect(fabs(got - exp) <= 1e-4 * fabs(exp), "%s: loss before step %d: %.9g, torch %.9g",
                  name, step, got, exp);
        cr_assert_eq(df_backward(loss), DF_OK);
        cr_assert_eq(df_optim_step(opt), DF_OK);
        df_scope_end(s);
    }
    for (int i = 0; i < reg->n; i++) {
        char key[DF_NAME_MAX + 16];
        snprintf(key, sizeof key, "adamw.param.%s", names[i]);
        df_tensor *w;
        cr_assert_eq(df_st_read(want, key, DF_DTYPE_F32, &w), DF_OK, "%s", key);
        if (strstr(names[i], "to_k.bias") || strstr(names[i], "k_proj.bias")) {
            /* noise-driven +-lr moves (Adam's step can reach ~3 lr when the noise flips sign):
             * only bounded, as the reference fixtures' README advises excluding them */
            check_close(key, params[i], w, 10 * 1e-3, 0);
            continue;
        }
        double err = rel_max_err(params[i], w);
        cr_expect(err <= 1e-4, "%s: relative error %.3g after 3 AdamW steps", key, err);
    }
    df_scope_end(outer);
    df_st_close(in);
    df_st_close(want);
    df_optim_free(opt);
    df_component_free(&comp);
}

Test(optim_model_adamw, clip_text_tiny) {
    trajectory("clip_text_tiny");
}

Test(optim_model_adamw, vae_tiny) {
    trajectory("vae_tiny");
}
