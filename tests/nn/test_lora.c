/* test_lora.c — LoRA / LoCon adapters (nn/lora.c) on the fixture models: new adapters start as
 * upstream (up zero, so the model is unchanged; down with std 1/rank) on the default targets
 * only, with trainable parameters that get gradients (finite differences) while the frozen base
 * gets none; a set applied on the fly gives what it gives fused (1e-5), unfusing restores the
 * weights bitwise, sets stack; the export of trained adapters applied to a fresh model gives
 * the trained outputs; dropout acts only with a stream; bad sets are refused by name. */
#include "nn/lora.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_free(df_lora_set *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->entries[i].target);
        df_tensor_free(s->entries[i].down);
        df_tensor_free(s->entries[i].up);
    }
    free(s->entries);
    memset(s, 0, sizeof *s);
}

/* An owned N(0, std^2) tensor. */
static df_tensor *owned_randn(uint64_t seed, int ndim, const int64_t *shape, float std) {
    df_tensor *t = df_tensor_new_owned(DF_DTYPE_F32, ndim, shape);
    df_scope s = df_scope_begin();
    df_tensor_copy_(t, randn_tensor(seed, ndim, shape));
    df_scope_end(s);
    for (int64_t i = 0; i < t->numel; i++) df_f32(t)[i] *= std;
    return t;
}

static const df_tensor *weight_of(const df_module_ref *m) {
    return m->kind == DF_MODULE_LINEAR ? ((const df_linear_mod *)m->module)->weight
                                       : ((const df_conv_mod *)m->module)->weight;
}

/* A random set on the modules of `comp` matching glob (prefix "unet"), rank r, alpha a; 2-D
 * pairs on every module when `flat` (a linear pair on a 1x1 conv). */
static void random_set_as(df_component *comp, const char *glob, int r, float a, uint64_t seed,
                          bool flat, df_lora_set *s) {
    memset(s, 0, sizeof *s);
    const df_module_ref *hits[256];
    int n = df_modules_match(comp->params, glob, hits, 256);
    cr_assert(n > 0 && n <= 256, "%s: %d modules", glob, n);
    s->entries = calloc((size_t)n, sizeof *s->entries);
    s->cap = n;
    for (int i = 0; i < n; i++) {
        const df_tensor *w = weight_of(hits[i]);
        char target[DF_NAME_MAX];
        snprintf(target, sizeof target, "unet.%s", hits[i]->name);
        df_tensor *down, *up;
        if (hits[i]->kind == DF_MODULE_LINEAR || flat) {
            down = owned_randn(seed + 2 * (uint64_t)i, DF_DIMS(r, w->shape[1]), 0.3f);
            up = owned_randn(seed + 2 * (uint64_t)i + 1, DF_DIMS(w->shape[0], r), 0.3f);
        } else {
            down = owned_randn(seed + 2 * (uint64_t)i,
                               DF_DIMS(r, w->shape[1], w->shape[2], w->shape[3]), 0.3f);
            up = owned_randn(seed + 2 * (uint64_t)i + 1, DF_DIMS(w->shape[0], r, 1, 1), 0.3f);
        }
        s->entries[s->n++] =
            (df_lora_entry){.target = strdup(target), .down = down, .up = up, .alpha = a};
    }
}

static void random_set(df_component *comp, const char *glob, int r, float a, uint64_t seed,
                       df_lora_set *s) {
    random_set_as(comp, glob, r, a, seed, false, s);
}

#define UNET "unet2dcond_tiny"

Test(nn_lora, new_adapters_change_nothing_and_sit_on_the_default_targets) {
    df_component comp;
    fixture_component(UNET, &comp);
    df_scope s = df_scope_begin();
    df_tensor *before = df_tensor_clone(fixture_main_output(&comp, UNET));
    df_lora l;
    df_lora_init(&l);
    df_lora_config c = df_lora_config_default();
    c.rank = 3;
    c.globs = df_lora_unet_default_globs;
    c.n_globs = 4;
    df_philox g;
    df_philox_init(&g, 7, 1);
    df_lora_model m = {"unet", comp.params};
    cr_assert_eq(df_lora_create(&l, &m, 1, &c, &g), DF_OK, "%s", df_last_error());
    const df_module_ref *hits[256];
    int n = df_modules_match(comp.params, "*.to_[qkv]", hits, 256) +
            df_modules_match(comp.params, "*.to_out.0", hits, 256);
    cr_assert_eq(l.n, n, "%d adapters for %d attention projections", l.n, n);
    cr_assert_eq(l.params.n, 2 * n);
    double sum2 = 0;
    int64_t cnt = 0;
    for (int i = 0; i < l.params.n; i++) {
        const df_param *p = &l.params.items[i];
        cr_assert(p->trainable, "%s", p->name);
        cr_assert(strncmp(p->name, "unet.", 5) == 0 && strstr(p->name, ".lora."), "%s", p->name);
        bool up = strstr(p->name, ".lora.up.weight") != NULL;
        for (int64_t j = 0; j < p->tensor->numel; j++) {
            if (up)
                cr_assert_eq(df_f32(p->tensor)[j], 0.0f, "%s starts at zero", p->name);
            else
                sum2 += (double)df_f32(p->tensor)[j] * df_f32(p->tensor)[j], cnt++;
        }
    }
    double std = sqrt(sum2 / (double)cnt);
    cr_assert(fabs(std - 1.0 / 3) < 0.03, "down's std %g, want 1/rank", std);
    check_close("fresh adapters", fixture_main_output(&comp, UNET), before, 0, 0);
    /* a glob matching nothing is refused by name */
    df_lora l2;
    df_lora_init(&l2);
    const char *bad[] = {"unet.*.no_such"};
    c.globs = bad;
    c.n_globs = 1;
    expect_status(df_lora_create(&l2, &m, 1, &c, &g), DF_ERR_INVALID, "unet.*.no_such");
    c.rank = 0;
    expect_status(df_lora_create(&l2, &m, 1, &c, &g), DF_ERR_INVALID, "rank 0");
    df_lora_free(&l2);
    df_lora_free(&l);
    check_close("freed", fixture_main_output(&comp, UNET), before, 0, 0);
    df_scope_end(s);
    df_component_free(&comp);
}

/* On the fly == fused (1e-5); unfuse is bitwise; a multiplier scales; stacking adds. */
static void fly_vs_fused(const char *glob, bool flat) {
    df_component comp;
    fixture_component(UNET, &comp);
    df_scope s = df_scope_begin();
    df_tensor *before = df_tensor_clone(fixture_main_output(&comp, UNET));
    df_lora_set set;
    random_set_as(&comp, glob, 2, 3.0f, 11, flat, &set);
    df_lora_model m = {"unet", comp.params};
    df_lora l;
    df_lora_init(&l);
    cr_assert_eq(df_lora_apply(&l, &set, 0.7f, &m, 1), DF_OK, "%s", df_last_error());
    df_tensor *fly = df_tensor_clone(fixture_main_output(&comp, UNET));
    cr_assert(rel_max_err(fly, before) > 1e-3, "%s: the LoRA changes the output", glob);
    /* stacking: the same set twice at 0.35 each */
    df_lora l2;
    df_lora_init(&l2);
    cr_assert_eq(df_lora_apply(&l2, &set, 0.35f, &m, 1), DF_OK);
    cr_assert_eq(df_lora_apply(&l2, &set, 0.35f, &m, 1), DF_OK);
    df_lora_free(&l);
    check_close("two stacked halves", fixture_main_output(&comp, UNET), fly, 1e-5, 1e-4);
    df_lora_free(&l2);
    check_close("detached", fixture_main_output(&comp, UNET), before, 0, 0);
    /* fused */
    df_tensor **orig = calloc((size_t)comp.params->n, sizeof *orig);
    for (int i = 0; i < comp.params->n; i++)
        orig[i] = df_tensor_clone(comp.params->items[i].tensor);
    df_lora_fused undo = {0};
    cr_assert_eq(df_lora_fuse(&set, 0.7f, &m, 1, &undo), DF_OK, "%s", df_last_error());
    cr_assert_eq(undo.n, set.n);
    check_close("fused vs on the fly", fixture_main_output(&comp, UNET), fly, 1e-5, 1e-5);
    df_lora_unfuse(&undo);
    for (int i = 0; i < comp.params->n; i++)
        cr_assert(memcmp(orig[i]->data, comp.params->items[i].tensor->data,
                         (size_t)orig[i]->numel * sizeof(float)) == 0,
                  "%s differs after unfuse", comp.params->items[i].name);
    check_close("unfused", fixture_main_output(&comp, UNET), before, 0, 0);
    df_scope_end(s);
    free(orig);
    set_free(&set);
    df_component_free(&comp);
}

Test(nn_lora, linear_on_the_fly_equals_fused) {
    fly_vs_fused("*attn*.to_*", false);
}

Test(nn_lora, locon_on_the_fly_equals_fused) {
    fly_vs_fused("*resnets.*.conv*", false);
}

/* SD 1.x's proj_in / proj_out are 1x1 convs: a linear pair (SD 2.x's layout) fits them. */
Test(nn_lora, linear_pairs_on_1x1_convs) {
    fly_vs_fused("*.proj_[io]*", true);
}

Test(nn_lora, bad_sets_are_refused_by_name) {
    df_component comp;
    fixture_component(UNET, &comp);
    df_lora_set set;
    random_set(&comp, "*attn1.to_q", 2, 2.0f, 5, &set);
    df_lora_model m = {"unet", comp.params};
    df_lora l;
    df_lora_init(&l);
    /* a target naming no module */
    free(set.entries[0].target);
    set.entries[0].target = strdup("unet.down_blocks.9.attentions.0.to_q");
    expect_status(df_lora_apply(&l, &set, 1, &m, 1), DF_ERR_NOTFOUND,
                  "unet.down_blocks.9.attentions.0.to_q");
    cr_assert_eq(l.n, 0, "nothing attached");
    df_lora_fused undo = {0};
    expect_status(df_lora_fuse(&set, 1, &m, 1, &undo), DF_ERR_NOTFOUND, "match no module");
    cr_assert_eq(undo.n, 0);
    /* another architecture: the shapes named */
    free(set.entries[0].target);
    set.entries[0].target = strdup("text_encoder.x");
    set_free(&set);
    random_set(&comp, "*attn1.to_q", 2, 2.0f, 5, &set);
    df_tensor_free(set.entries[0].down);
    set.entries[0].down = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(2, 7));
    char want[128];
    snprintf(want, sizeof want, "%s: down [2, 7]", set.entries[0].target);
    expect_status(df_lora_apply(&l, &set, 1, &m, 1), DF_ERR_INVALID, want);
    expect_status(df_lora_apply(&l, &set, NAN, &m, 1), DF_ERR_INVALID, "multiplier");
    df_lora_free(&l);
    set_free(&set);
    df_component_free(&comp);
}

/* The checked inputs of the gradient check are the adapter's own down and up tensors: the
 * function only runs the model (the tiny CLIP text encoder: a cheap forward). */
static df_tensor *model_output(df_tensor **in, void *user) {
    (void)in;
    return fixture_main_output(user, "clip_text_tiny");
}

Test(nn_lora, only_the_adapters_get_gradients) {
    df_component comp;
    fixture_component(UNET, &comp);
    cr_assert_eq(df_params_freeze(comp.params), DF_OK);
    df_lora l;
    df_lora_init(&l);
    df_lora_config c = df_lora_config_default();
    c.rank = 2;
    c.alpha = 4;
    const char *glob[] = {"unet.*attn2.to_k", "unet.*resnets.0.conv1"};
    c.globs = glob;
    c.n_globs = 2;
    c.conv_rank = 2;
    df_philox g;
    df_philox_init(&g, 3, 1);
    df_lora_model m = {"unet", comp.params};
    cr_assert_eq(df_lora_create(&l, &m, 1, &c, &g), DF_OK, "%s", df_last_error());
    /* nonzero up weights, then the flat buffer (what the trainer does) */
    for (int i = 0; i < l.params.n; i++)
        if (strstr(l.params.items[i].name, ".up."))
            for (int64_t j = 0; j < l.params.items[i].tensor->numel; j++)
                df_f32(l.params.items[i].tensor)[j] = 0.05f * (float)((j % 7) - 3);
    cr_assert_eq(df_params_flatten(&l.params), DF_OK);
    df_scope s = df_scope_begin();
    df_tensor *y = fixture_main_output(&comp, UNET);
    df_tensor *r = randn_tensor(9, y->ndim, y->shape);
    cr_assert_eq(df_backward(df_sum(df_mul(y, r), 0, NULL, false)), DF_OK, "%s", df_last_error());
    df_scope_end(s);
    for (int i = 0; i < l.params.n; i++) {
        const df_tensor *gr = l.params.items[i].tensor->grad;
        double norm = 0;
        for (int64_t j = 0; j < gr->numel; j++) norm += fabs(df_f32(gr)[j]);
        cr_assert(norm > 0, "%s got no gradient", l.params.items[i].name);
    }
    for (int i = 0; i < comp.params->n; i++)
        cr_assert(!comp.params->items[i].tensor->grad, "the frozen base got a gradient: %s",
                  comp.params->items[i].name);
    df_lora_free(&l);
    df_component_free(&comp);
}

/* Finite differences on one adapter's down and up (linear, alpha != rank). */
Test(nn_lora, adapter_gradients_by_finite_differences) {
    df_component comp;
    fixture_component("clip_text_tiny", &comp);
    cr_assert_eq(df_params_freeze(comp.params), DF_OK);
    df_lora l;
    df_lora_init(&l);
    df_lora_config c = df_lora_config_default();
    c.rank = 2;
    c.alpha = 3;
    const char *glob[] = {"text_encoder.*layers.0.self_attn.v_proj"};
    c.globs = glob;
    c.n_globs = 1;
    df_philox g;
    df_philox_init(&g, 3, 1);
    df_lora_model m = {"text_encoder", comp.params};
    cr_assert_eq(df_lora_create(&l, &m, 1, &c, &g), DF_OK, "%s", df_last_error());
    cr_assert_eq(l.n, 1);
    df_tensor *d = l.params.items[0].tensor, *u = l.params.items[1].tensor;
    for (int64_t j = 0; j < u->numel; j++) df_f32(u)[j] = 0.1f * (float)((j % 5) - 2);
    /* the checked inputs are the adapter's own tensors */
    df_tensor_set_requires_grad(d, true);
    df_tensor_set_requires_grad(u, true);
    df_tensor *in[2] = {d, u};
    gradcheck("lora down and up", model_output, &comp, in, 2, 1e-2, 2e-3, 2e-3);
    df_lora_free(&l);
    df_component_free(&comp);
}

Test(nn_lora, exported_adapters_give_the_trained_outputs) {
    df_component comp;
    fixture_component(UNET, &comp);
    df_lora l;
    df_lora_init(&l);
    df_lora_config c = df_lora_config_default();
    c.rank = 2;
    c.alpha = 1;
    c.conv_rank = 3;
    c.dropout = 0.5f;
    const char *glob[] = {"unet.*attn*.to_*", "unet.*resnets.*.conv2"};
    c.globs = glob;
    c.n_globs = 2;
    df_philox g;
    df_philox_init(&g, 3, 1);
    df_lora_model m = {"unet", comp.params};
    cr_assert_eq(df_lora_create(&l, &m, 1, &c, &g), DF_OK, "%s", df_last_error());
    for (int i = 0; i < l.params.n; i++) {
        df_tensor *t = l.params.items[i].tensor;
        for (int64_t j = 0; j < t->numel; j++) df_f32(t)[j] = 0.02f * (float)(((j + i) % 9) - 4);
    }
    df_scope s = df_scope_begin();
    df_tensor *trained = df_tensor_clone(fixture_main_output(&comp, UNET));
    /* dropout only with a stream */
    df_philox drop;
    df_philox_init(&drop, 5, 2);
    l.dropout_rng = &drop;
    cr_assert(rel_max_err(fixture_main_output(&comp, UNET), trained) > 1e-4, "dropout acts");
    l.dropout_rng = NULL;
    check_close("no stream, no dropout", fixture_main_output(&comp, UNET), trained, 0, 0);
    df_lora_set set;
    cr_assert_eq(df_lora_export(&l, &set), DF_OK, "%s", df_last_error());
    cr_assert_eq(set.n, l.n);
    bool conv = false;
    for (int i = 0; i < set.n; i++) {
        cr_assert(strncmp(set.entries[i].target, "unet.", 5) == 0);
        bool is_conv = set.entries[i].down->ndim == 4;
        conv = conv || is_conv;
        cr_assert_float_eq(set.entries[i].alpha, is_conv ? 3.0f : 1.0f, 0, "%s",
                           set.entries[i].target);
    }
    cr_assert(conv, "LoCon entries exported");
    df_lora_free(&l);
    df_lora_init(&l);
    cr_assert_eq(df_lora_apply(&l, &set, 1, &m, 1), DF_OK, "%s", df_last_error());
    check_close("the exported set applied", fixture_main_output(&comp, UNET), trained, 1e-6, 1e-6);
    df_scope_end(s);
    df_lora_free(&l);
    set_free(&set);
    df_component_free(&comp);
}
