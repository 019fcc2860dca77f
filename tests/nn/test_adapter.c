/* test_adapter.c — the module table and adapter hooks (nn/adapter.c) on the fixture models: every
 * linear and conv module is in the table under its diffusers name and points at live weights;
 * globs find modules; an adapter whose term is zero leaves the model's outputs unchanged; an
 * adapter's parameters get gradients (finite differences) while a frozen base gets none. The
 * test adapter adds a learned per-output-channel shift: s (out) to a linear's (..., out) output,
 * s viewed (1, out, 1, 1) to a conv's. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct shift_adapter {
    df_adapter base;
    df_tensor *shift; /* (out) */
} shift_adapter;

static df_tensor *shift_forward(df_adapter *a, const void *module, df_module_kind kind,
                                df_tensor *x, df_tensor *y) {
    (void)module, (void)x;
    df_tensor *s = ((shift_adapter *)a)->shift;
    if (kind == DF_MODULE_CONV) s = df_reshape(s, DF_DIMS(1, s->shape[0], 1, 1));
    return df_add(y, s);
}

static const char *const MODELS[] = {"unet2d_tiny", "unet2dcond_tiny", "unet2dcond_tiny_linear",
                                     "vae_tiny", "clip_text_tiny"};

Test(nn_adapter, every_module_is_in_the_table_with_its_weights) {
    for (size_t k = 0; k < sizeof MODELS / sizeof MODELS[0]; k++) {
        df_component comp;
        fixture_component(MODELS[k], &comp);
        const df_params *r = comp.params;
        int n_weights = 0;
        for (int i = 0; i < r->n; i++) {
            const char *name = r->items[i].name;
            size_t len = strlen(name);
            if (len > 7 && strcmp(name + len - 7, ".weight") == 0 && r->items[i].tensor->ndim >= 2)
                n_weights++;
        }
        for (int i = 0; i < r->n_modules; i++) {
            const df_module_ref *m = &r->modules[i];
            char key[DF_NAME_MAX];
            snprintf(key, sizeof key, "%s.weight", m->name);
            const df_tensor *w = m->kind == DF_MODULE_LINEAR
                                     ? ((const df_linear_mod *)m->module)->weight
                                     : ((const df_conv_mod *)m->module)->weight;
            cr_assert_eq(w, df_params_find(r, key), "%s: module %s does not point at %s", MODELS[k],
                         m->name, key);
            cr_assert_eq(df_module_find(r, m->name), m);
        }
        /* every 2-D+ weight but embedding tables belongs to a linear or conv module */
        int tables = 0;
        for (int i = 0; i < r->n; i++)
            if (strstr(r->items[i].name, "embedding.weight") && r->items[i].tensor->ndim == 2)
                tables++;
        cr_assert_eq(r->n_modules, n_weights - tables, "%s: %d modules for %d weights", MODELS[k],
                     r->n_modules, n_weights - tables);
        df_component_free(&comp);
    }
}

Test(nn_adapter, globs_find_modules_by_diffusers_name) {
    df_component comp;
    fixture_component("unet2dcond_tiny", &comp);
    const df_module_ref *hits[64];
    int n_q = df_modules_match(comp.params, "*attn1.to_q", hits, 64);
    cr_assert(n_q > 0);
    for (int i = 0; i < n_q; i++) {
        const char *name = hits[i]->name;
        cr_assert(strcmp(name + strlen(name) - 10, "attn1.to_q") == 0, "%s", name);
        cr_assert_eq(hits[i]->kind, DF_MODULE_LINEAR);
    }
    int n_ff = df_modules_match(comp.params, "*.ff.net.*", hits, 64);
    cr_assert_eq(n_ff, 2 * n_q, "ff.net.0.proj and ff.net.2 per transformer block");
    cr_assert_eq(df_modules_match(comp.params, "*resnets.*.conv1", hits, 64) > 0, true);
    cr_assert_eq(df_modules_match(comp.params, "no.such.module", hits, 64), 0);
    df_component_free(&comp);
}

Test(nn_adapter, a_zero_adapter_changes_nothing) {
    const char *name = "unet2dcond_tiny";
    df_component comp;
    fixture_component(name, &comp);
    df_scope s = df_scope_begin();
    df_tensor *before = df_tensor_clone(fixture_main_output(&comp, name));
    const df_module_ref *hits[256];
    int n = df_modules_match(comp.params, "*", hits, 256);
    cr_assert(n > 0 && n <= 256);
    shift_adapter *ads = calloc((size_t)n, sizeof *ads);
    for (int i = 0; i < n; i++) {
        const df_tensor *w = hits[i]->kind == DF_MODULE_LINEAR
                                 ? ((const df_linear_mod *)hits[i]->module)->weight
                                 : ((const df_conv_mod *)hits[i]->module)->weight;
        ads[i] = (shift_adapter){{shift_forward}, df_zeros(DF_DTYPE_F32, 1, w->shape)};
        df_module_attach(hits[i], &ads[i].base);
    }
    df_tensor *after = fixture_main_output(&comp, name);
    check_close("zero adapters on every module", after, before, 0, 0);
    /* a non-zero shift on one module changes the output */
    df_f32(ads[0].shift)[0] = 0.5f;
    cr_assert(rel_max_err(fixture_main_output(&comp, name), before) > 1e-4,
              "the adapter is applied");
    df_modules_detach_all(comp.params);
    check_close("detached", fixture_main_output(&comp, name), before, 0, 0);
    df_scope_end(s);
    free(ads);
    df_component_free(&comp);
}

/* loss = sum(r * unet(...)) as a function of two adapters' shifts, the base frozen */
typedef struct grad_ctx {
    df_component *comp;
    shift_adapter *ads;
} grad_ctx;

static df_tensor *model_of_shifts(df_tensor **in, void *user) {
    grad_ctx *g = user;
    g->ads[0].shift = in[0];
    g->ads[1].shift = in[1];
    return fixture_main_output(g->comp, "unet2dcond_tiny");
}

Test(nn_adapter, adapter_gradients_by_finite_differences) {
    df_component comp;
    fixture_component("unet2dcond_tiny", &comp);
    const df_module_ref *q[1], *c[1];
    cr_assert(df_modules_match(comp.params, "*attn1.to_q", q, 1) > 0);
    cr_assert(df_modules_match(comp.params, "conv_in", c, 1) == 1);
    const df_tensor *wq = ((const df_linear_mod *)q[0]->module)->weight;
    const df_tensor *wc = ((const df_conv_mod *)c[0]->module)->weight;
    df_tensor *in[2] = {randn_tensor(3, 1, wq->shape), randn_tensor(4, 1, wc->shape)};
    for (int i = 0; i < 2; i++) {
        df_tensor_set_requires_grad(in[i], true);
        for (int64_t j = 0; j < in[i]->numel; j++) df_f32(in[i])[j] *= 0.1f;
    }
    shift_adapter ads[2] = {{{shift_forward}}, {{shift_forward}}};
    df_module_attach(q[0], &ads[0].base);
    df_module_attach(c[0], &ads[1].base);
    grad_ctx g = {&comp, ads};
    gradcheck("adapter shifts on to_q and conv_in", model_of_shifts, &g, in, 2, 1e-2, 2e-3, 2e-3);
    for (int i = 0; i < comp.params->n; i++)
        cr_assert(!comp.params->items[i].tensor->grad, "the frozen base got a gradient: %s",
                  comp.params->items[i].name);
    df_tensor_free(in[0]);
    df_tensor_free(in[1]);
    df_component_free(&comp);
}

/* Gradient checkpointing with adapters on every module of a frozen base (LoRA's situation: the
 * trained leaves are reached inside the recomputed blocks, not through their inputs): the
 * adapters' gradients are bitwise those of the plain run. */
static void shift_grads(df_component *comp, bool ck, shift_adapter *ads, int n, df_tensor **out) {
    df_unet_body_set_gradient_checkpointing(&comp->unet2d_cond->body, ck);
    for (int i = 0; i < n; i++) df_tensor_zero_grad(ads[i].shift);
    df_scope s = df_scope_begin();
    df_tensor *y = fixture_main_output(comp, "unet2dcond_tiny");
    df_tensor *r = randn_tensor(9, y->ndim, y->shape);
    cr_assert_eq(df_backward(df_sum(df_mul(y, r), 0, NULL, false)), DF_OK, "%s", df_last_error());
    df_scope_end(s);
    for (int i = 0; i < n; i++) {
        cr_assert(ads[i].shift->grad, "adapter %d got no gradient", i);
        out[i] = df_tensor_clone(ads[i].shift->grad);
    }
}

Test(nn_adapter, checkpointing_with_adapters_is_bitwise) {
    df_component comp;
    fixture_component("unet2dcond_tiny", &comp);
    const df_module_ref *hits[256];
    int n = df_modules_match(comp.params, "*", hits, 256);
    cr_assert(n > 0 && n <= 256);
    shift_adapter *ads = calloc((size_t)n, sizeof *ads);
    df_tensor **plain = calloc((size_t)n, sizeof *plain), **ck = calloc((size_t)n, sizeof *ck);
    for (int i = 0; i < n; i++) {
        const df_tensor *w = hits[i]->kind == DF_MODULE_LINEAR
                                 ? ((const df_linear_mod *)hits[i]->module)->weight
                                 : ((const df_conv_mod *)hits[i]->module)->weight;
        ads[i] = (shift_adapter){{shift_forward}, randn_tensor(100 + (uint64_t)i, 1, w->shape)};
        for (int64_t j = 0; j < ads[i].shift->numel; j++) df_f32(ads[i].shift)[j] *= 0.01f;
        df_tensor_set_requires_grad(ads[i].shift, true);
        df_module_attach(hits[i], &ads[i].base);
    }
    shift_grads(&comp, false, ads, n, plain);
    shift_grads(&comp, true, ads, n, ck);
    for (int i = 0; i < n; i++) {
        cr_expect(memcmp(ck[i]->data, plain[i]->data, (size_t)plain[i]->numel * sizeof(float)) == 0,
                  "the adapter on %s: gradient differs with checkpointing", hits[i]->name);
        df_tensor_free(plain[i]);
        df_tensor_free(ck[i]);
        df_tensor_free(ads[i].shift);
    }
    for (int j = 0; j < comp.params->n; j++)
        cr_assert(!comp.params->items[j].tensor->grad, "the frozen base got a gradient");
    df_modules_detach_all(comp.params);
    free(plain);
    free(ck);
    free(ads);
    df_component_free(&comp);
}
