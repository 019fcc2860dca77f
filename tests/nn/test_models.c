/* test_models.c — forward and gradient parity of every model kind with diffusers v0.21.4 on the
 * tiny fixtures in tests/fixtures/models/ (computed by diffusers itself: see tests/ref/README.md).
 * Each case loads the component folder, runs the same inputs, forms loss = sum over probed
 * outputs of sum(output * probe), and compares outputs, loss, input gradients and every
 * parameter gradient by max |ours - torch| / max |torch| <= 1e-4 (the criterion; torch's
 * own float32 results sit ~1e-6 from float64, see the float32-vs-float64 table).
 * Attention key-bias gradients are exactly zero in exact arithmetic (softmax ignores a per-row
 * shift); their fixture values are float32 noise, so they are compared with an absolute
 * tolerance of 1e-6 x the largest gradient in the model. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REL_TOL 1e-4

/* The bounds in force: REL_TOL and 1e-6 of the largest gradient for key biases, except under
 * mixed precision (check_bf16), which also records the worst relative error it saw. */
static double rel_tol = REL_TOL, key_bias_tol = 1e-6, worst_rel;

static bool is_key_bias(const char *name) {
    return strstr(name, "to_k.bias") || strstr(name, "k_proj.bias");
}

static void expect_rel(const char *label, const df_tensor *got, const df_tensor *want) {
    char sg[64], sw[64];
    cr_assert(df_tensor_same_shape(got, want), "%s: shape %s, diffusers %s", label,
              df_shape_str(got, sg, sizeof sg), df_shape_str(want, sw, sizeof sw));
    double err = rel_max_err(got, want);
    worst_rel = fmax(worst_rel, err);
    cr_expect(err <= rel_tol, "%s: relative error %.3g > %g", label, err, rel_tol);
}

static double max_abs(const df_tensor *t) {
    double m = 0;
    for (int64_t i = 0; i < t->numel; i++) m = fmax(m, fabs(df_tensor_get(t, i)));
    return m;
}

/* What a run gives, kept for comparing runs: every output and every parameter gradient. */
typedef struct run_result {
    int n;
    df_tensor *t[DF_COMPONENT_MAX_OUTPUTS + 512];
    char name[DF_COMPONENT_MAX_OUTPUTS + 512][DF_NAME_MAX + 16];
} run_result;

static void keep(run_result *r, const char *name, const df_tensor *t) {
    if (!r) return;
    cr_assert(r->n < (int)(sizeof r->t / sizeof r->t[0]), "run_result: too many tensors");
    snprintf(r->name[r->n], sizeof r->name[0], "%s", name);
    r->t[r->n++] = df_tensor_retain(df_tensor_clone(df_detach((df_tensor *)t)));
}

/* Runs fixture `name` with channel block `block` (df_act_block_set), with gradient
 * checkpointing when `ck` (UNets), and checks it against diffusers; its outputs, input and
 * parameter gradients go to *r when r is not NULL. */
static void run_case_ck(const char *name, int block, bool ck, run_result *r) {
    int old_block = df_act_block_set(block);
    char dir[512], rel[512];
    snprintf(dir, sizeof dir, "%s", fixture_path("models"));
    /* a folder of inputs and outputs only runs the model of another fixture (CASE_SUFFIX) */
    char model[256];
    snprintf(model, sizeof model, "%s", name);
    snprintf(rel, sizeof rel, "models/%s/config.json", name);
    if (access(fixture_path(rel), F_OK) != 0 && strrchr(model, '_')) *strrchr(model, '_') = '\0';
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", model);
    df_component comp;
    cr_assert_eq(df_component_load(dir, &comp), DF_OK, "%s", df_last_error());
    df_params_requires_grad(comp.params);
    if (ck) {
        cr_assert(comp.unet2d || comp.unet2d_cond, "%s: checkpointing is for UNets", name);
        df_unet_body_set_gradient_checkpointing(
            comp.unet2d ? &comp.unet2d->body : &comp.unet2d_cond->body, true);
    }

    df_scope s = df_scope_begin();
    df_st_file *in, *want;
    snprintf(rel, sizeof rel, "models/%s/inputs.safetensors", name);
    cr_assert_eq(df_st_open(fixture_path(rel), &in), DF_OK, "%s", df_last_error());
    snprintf(rel, sizeof rel, "models/%s/outputs.safetensors", name);
    cr_assert_eq(df_st_open(fixture_path(rel), &want), DF_OK, "%s", df_last_error());

    df_named inputs[8], outputs[DF_COMPONENT_MAX_OUTPUTS];
    int n_in = 0, n_out = 0;
    for (int i = 0; i < df_st_count(in); i++) {
        const df_st_info *info = df_st_info_at(in, i);
        if (strncmp(info->name, "probe", 5) == 0) continue;
        bool is_float = df_dtype_is_float(info->dtype) && strcmp(info->name, "timestep") != 0;
        df_tensor *t;
        cr_assert_eq(df_st_read(in, info->name, is_float ? DF_DTYPE_F32 : info->dtype, &t), DF_OK);
        if (is_float) df_tensor_set_requires_grad(t, true);
        inputs[n_in++] = (df_named){info->name, t};
    }
    cr_assert_eq(df_component_forward(&comp, inputs, n_in, outputs, &n_out), DF_OK, "%s",
                 df_last_error());

    df_tensor *loss = NULL;
    for (int i = 0; i < n_out; i++) {
        char label[128];
        snprintf(label, sizeof label, "%s: output %s", name, outputs[i].name);
        df_tensor *w;
        if (df_st_find(want, outputs[i].name)) {
            cr_assert_eq(df_st_read(want, outputs[i].name, DF_DTYPE_F32, &w), DF_OK);
            expect_rel(label, outputs[i].tensor, w);
        }
        keep(r, outputs[i].name, outputs[i].tensor);
        char probe[128];
        snprintf(probe, sizeof probe, "probe.%s", outputs[i].name);
        const char *pn = df_st_find(in, probe)                                           ? probe
                         : strcmp(outputs[i].name, df_component_main_output(&comp)) == 0 ? "probe"
                                                                                         : NULL;
        if (!pn) continue;
        df_tensor *p;
        cr_assert_eq(df_st_read(in, pn, DF_DTYPE_F32, &p), DF_OK);
        df_tensor *term = df_sum(df_mul(outputs[i].tensor, p), 0, NULL, false);
        loss = loss ? df_add(loss, term) : term;
    }
    cr_assert(loss, "%s: no probed output", name);
    df_tensor *wl;
    cr_assert_eq(df_st_read(want, "loss", DF_DTYPE_F32, &wl), DF_OK);
    expect_rel("loss", loss, wl);
    cr_assert_eq(df_backward(loss), DF_OK, "%s", df_last_error());

    for (int i = 0; i < n_in; i++) {
        char key[128];
        snprintf(key, sizeof key, "grad.input.%s", inputs[i].name);
        if (!df_st_find(want, key)) continue;
        df_tensor *w;
        cr_assert_eq(df_st_read(want, key, DF_DTYPE_F32, &w), DF_OK);
        if (max_abs(w) == 0) { /* nothing flows back (the VAE's noise: z is not in the loss) */
            df_tensor *g = inputs[i].tensor->grad;
            cr_expect(!g || max_abs(g) == 0, "%s: expected no gradient", key);
        } else {
            cr_assert(inputs[i].tensor->grad, "%s: no gradient for input %s", name, inputs[i].name);
            expect_rel(key, inputs[i].tensor->grad, w);
            keep(r, key, inputs[i].tensor->grad);
        }
    }
    double gmax = 0;
    for (int i = 0; i < comp.params->n; i++) {
        char key[DF_NAME_MAX + 16];
        snprintf(key, sizeof key, "grad.param.%s", comp.params->items[i].name);
        df_tensor *w;
        cr_assert_eq(df_st_read(want, key, DF_DTYPE_F32, &w), DF_OK, "%s", df_last_error());
        gmax = fmax(gmax, max_abs(w));
    }
    for (int i = 0; i < comp.params->n; i++) {
        const char *pname = comp.params->items[i].name;
        df_tensor *g = comp.params->items[i].tensor->grad;
        char key[DF_NAME_MAX + 16];
        snprintf(key, sizeof key, "grad.param.%s", pname);
        cr_assert(g, "%s: parameter %s got no gradient", name, pname);
        df_tensor *w;
        cr_assert_eq(df_st_read(want, key, DF_DTYPE_F32, &w), DF_OK);
        if (is_key_bias(pname))
            check_close(key, g, w, key_bias_tol * gmax, 0);
        else
            expect_rel(key, g, w);
        keep(r, key, g);
    }
    df_st_close(in);
    df_st_close(want);
    df_scope_end(s);
    df_component_free(&comp);
    df_act_block_set(old_block);
}

static void run_case_at(const char *name, int block, run_result *r) {
    run_case_ck(name, block, false, r);
}

static void run_case(const char *name) {
    run_case_at(name, df_act_block(), NULL);
}

/* Results must not depend on the channel block: the fixture runs plain (block 0), with 8 and
 * with 16 lanes, whatever this machine's convolutions prefer, and every output and parameter
 * gradient agrees with the plain run within WINOGRAD_TOL of its largest value (the Winograd
 * rounding bound of tests/autograd/test_layout.c; the other blocked kernels sum in another
 * order too). Key-bias gradients are float noise around zero: against the model's largest
 * gradient, as above. */
#define WINOGRAD_TOL 3e-5
static void check_block_widths(const char *name) {
    run_result *ref = calloc(1, sizeof *ref), *got = calloc(1, sizeof *got);
    run_case_at(name, 0, ref);
    double gmax = 0;
    for (int i = 0; i < ref->n; i++)
        if (strncmp(ref->name[i], "grad.param.", 11) == 0) gmax = fmax(gmax, max_abs(ref->t[i]));
    const int blocks[2] = {8, 16};
    for (int b = 0; b < 2; b++) {
        run_case_at(name, blocks[b], got);
        cr_assert_eq(got->n, ref->n);
        for (int i = 0; i < ref->n; i++) {
            char label[DF_NAME_MAX + 64];
            snprintf(label, sizeof label, "%s, block %d: %s", name, blocks[b], ref->name[i]);
            double atol =
                is_key_bias(ref->name[i]) ? 1e-6 * gmax : WINOGRAD_TOL * max_abs(ref->t[i]);
            check_close(label, got->t[i], ref->t[i], atol, 0);
            df_tensor_free(got->t[i]);
        }
        got->n = 0;
    }
    for (int i = 0; i < ref->n; i++) df_tensor_free(ref->t[i]);
    free(ref);
    free(got);
}

Test(nn_models, block_widths_agree_unet2d) {
    check_block_widths("unet2d_tiny");
}

Test(nn_models, block_widths_agree_unet2dcond) {
    check_block_widths("unet2dcond_tiny");
}

Test(nn_models, block_widths_agree_controlnet) {
    check_block_widths("controlnet_tiny");
}

Test(nn_models, block_widths_agree_vae) {
    check_block_widths("vae_tiny");
}

/* Gradient checkpointing (df_unet_body_set_gradient_checkpointing: every ResnetBlock2D and
 * BasicTransformerBlock recomputed in backward) gives the same outputs, input gradients and
 * parameter gradients bit for bit, in plain layout (block 0) and in this machine's blocked
 * layout. */
static void check_checkpointing(const char *name) {
    run_result *ref = calloc(1, sizeof *ref), *got = calloc(1, sizeof *got);
    const int blocks[2] = {0, df_act_block()};
    for (int b = 0; b < 2; b++) {
        run_case_ck(name, blocks[b], false, ref);
        run_case_ck(name, blocks[b], true, got);
        cr_assert_eq(got->n, ref->n);
        for (int i = 0; i < ref->n; i++) {
            const df_tensor *g = got->t[i], *w = ref->t[i];
            cr_assert(df_tensor_same_shape(g, w) && g->block == w->block);
            cr_expect(memcmp(g->data, w->data, (size_t)w->numel * sizeof(float)) == 0,
                      "%s, block %d, checkpointed: %s differs", name, blocks[b], ref->name[i]);
            df_tensor_free(got->t[i]);
            df_tensor_free(ref->t[i]);
        }
        got->n = ref->n = 0;
    }
    free(ref);
    free(got);
}

Test(nn_models, checkpointing_bitwise_unet2d) {
    check_checkpointing("unet2d_tiny");
}

Test(nn_models, checkpointing_bitwise_unet2dcond) {
    check_checkpointing("unet2dcond_tiny");
}

Test(nn_models, checkpointing_bitwise_unet2dcond_linear) {
    check_checkpointing("unet2dcond_tiny_linear");
}

/* ControlNet residuals added to the skips of checkpointed blocks */
Test(nn_models, checkpointing_bitwise_unet2dcond_residuals) {
    check_checkpointing("unet2dcond_tiny_residuals");
}

Test(nn_models, unet2d_tiny) {
    run_case("unet2d_tiny");
}

Test(nn_models, unet2dcond_tiny) {
    run_case("unet2dcond_tiny");
}

/* with a ControlNet's down_block_additional_residuals and mid_block_additional_residual (their
 * gradients compared too): the model of unet2dcond_tiny */
Test(nn_models, unet2dcond_tiny_residuals) {
    run_case("unet2dcond_tiny_residuals");
}

/* ControlNetModel (tests/ref/gen_controlnet.py): residuals and every gradient, with
 * conditioning_scale, in guess mode, and with bgr channel order */
Test(nn_models, controlnet_tiny) {
    run_case("controlnet_tiny");
}

Test(nn_models, controlnet_tiny_guess) {
    run_case("controlnet_tiny_guess");
}

Test(nn_models, controlnet_tiny_bgr) {
    run_case("controlnet_tiny_bgr");
}

Test(nn_models, unet2dcond_tiny_linear) {
    run_case("unet2dcond_tiny_linear");
}

Test(nn_models, vae_tiny) {
    run_case("vae_tiny");
}

Test(nn_models, clip_text_tiny) {
    run_case("clip_text_tiny");
}

/* CLIPTextModelWithProjection (gelu): text_embeds = text_projection(pooled) */
Test(nn_models, clip_text_proj_tiny) {
    run_case("clip_text_proj_tiny");
}

/* The honoured non-default config fields (docs/config-fields.md), each fixture several at once:
 * tests/ref/gen_models_config_fields.py lists which. */
Test(nn_models, unet2d_fields_a) {
    run_case("unet2d_fields_a");
}

Test(nn_models, unet2d_fields_b) {
    run_case("unet2d_fields_b");
}

Test(nn_models, unet2dcond_fields_a) {
    run_case("unet2dcond_fields_a");
}

Test(nn_models, unet2dcond_fields_b) {
    run_case("unet2dcond_fields_b");
}

Test(nn_models, vae_fields) {
    run_case("vae_fields");
}

/* CLIPVisionModel (tests/ref/gen_safety_checker.py): the tower the safety checker runs */
Test(nn_models, clip_vision_tiny) {
    run_case("clip_vision_tiny");
}

Test(nn_models, clip_text_fields) {
    run_case("clip_text_fields");
}

/* Mixed precision (docs/dtypes.md): the fixture with every product in BF16 (df_set_compute_dtype;
 * emulated on AVX2) against diffusers' float32 outputs, loss, input and parameter gradients, by
 * the same max |ours - torch| / max |torch|, within `tol` per model: BF16 keeps 8 bits (2^-9
 * relative rounding per operand), and the errors of a few layers add up. Each tolerance is about
 * twice the worst error measured on AVX-512 (native) and AVX2 (emulated) — UNet2D 0.041,
 * UNet2DCondition 0.033, VAE 0.052 (a GroupNorm weight's gradient), CLIP text 0.013 — with
 * every output, input gradient and parameter gradient checked; key-bias gradients
 * (float noise around zero) against tol x the largest gradient. */
static void check_bf16(const char *name, double tol) {
    rel_tol = key_bias_tol = tol;
    worst_rel = 0;
    df_dtype prev = df_set_compute_dtype(DF_DTYPE_BF16);
    run_case(name);
    df_set_compute_dtype(prev);
    cr_log_info("%s in bf16: worst relative error %.3g (tolerance %g)", name, worst_rel, tol);
    cr_expect(worst_rel > REL_TOL / 100, "%s: bf16 gave the float32 results", name);
    rel_tol = REL_TOL;
    key_bias_tol = 1e-6;
}

Test(nn_models, bf16_unet2d) {
    check_bf16("unet2d_tiny", 0.08);
}

Test(nn_models, bf16_unet2dcond) {
    check_bf16("unet2dcond_tiny", 0.07);
}

Test(nn_models, bf16_vae) {
    check_bf16("vae_tiny", 0.1);
}

Test(nn_models, bf16_clip_text) {
    check_bf16("clip_text_tiny", 0.03);
}
