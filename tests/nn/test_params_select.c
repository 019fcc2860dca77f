/* test_params_select.c — frozen and trainable parameters (nn/registry.c): flattening gives only
 * the trainable ones gradient memory and keeps every value; a frozen model records no tape and
 * gets no gradient; saving a selection (trainable only, a prefix, a glob) and loading a partial
 * file on top of a model with its applied / missing / unexpected report; shape mismatches. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t padded_numel(const df_params *r, bool trainable) {
    int64_t n = 0;
    for (int i = 0; i < r->n; i++)
        if (r->items[i].trainable == trainable) n += (r->items[i].tensor->numel + 15) / 16 * 16;
    return n;
}

Test(nn_params_select, flatten_gives_gradients_to_the_trainable_only) {
    df_component comp;
    fixture_component("unet2dcond_tiny", &comp);
    df_params *r = comp.params;
    df_tensor **before = malloc((size_t)r->n * sizeof *before);
    for (int i = 0; i < r->n; i++) before[i] = df_tensor_clone(r->items[i].tensor);
    cr_assert_eq(df_params_set_trainable(r, "*", false), r->n);
    int n_train = df_params_set_trainable(r, "*attn*.to_[qkv].weight", true);
    cr_assert(n_train > 0);
    cr_assert_eq(df_params_flatten(r), DF_OK, "%s", df_last_error());
    cr_assert_eq(r->flat.numel, padded_numel(r, true), "gradient memory for the trainable only");
    for (int i = 0; i < r->n; i++) {
        const df_param *p = &r->items[i];
        check_close(p->name, p->tensor, before[i], 0, 0);
        cr_assert_eq(p->tensor->requires_grad, p->trainable, "%s", p->name);
        cr_assert_eq(p->tensor->grad != NULL, p->trainable, "%s: gradient memory", p->name);
        df_tensor_free(before[i]);
    }
    free(before);

    df_scope s = df_scope_begin();
    df_tensor *y = fixture_main_output(&comp, "unet2dcond_tiny");
    cr_assert_eq(df_backward(df_sum(y, 0, NULL, false)), DF_OK, "%s", df_last_error());
    double trained = 0;
    for (int i = 0; i < r->n; i++)
        if (r->items[i].trainable) trained += fabs(df_tensor_get(r->items[i].tensor->grad, 0));
    cr_assert(trained > 0, "the trainable projections got gradients");
    df_scope_end(s);
    df_component_free(&comp);
}

Test(nn_params_select, a_frozen_model_records_no_tape) {
    df_component comp;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/unet2d_tiny", fixture_path("models"));
    cr_assert_eq(df_component_load_frozen(dir, &comp), DF_OK, "%s", df_last_error());
    cr_assert_eq(comp.params->flat.numel, 0);
    df_scope s = df_scope_begin();
    df_tensor *y = fixture_main_output(&comp, "unet2d_tiny");
    cr_assert(y->node == NULL && !y->requires_grad, "no history through a frozen model");
    df_scope_end(s);
    df_component_free(&comp);
}

static char *temp_file(const char *name) {
    static char path[256];
    snprintf(path, sizeof path, "/tmp/df_test_select_%d_%s", (int)getpid(), name);
    return path;
}

Test(nn_params_select, save_a_selection_and_load_it_on_top) {
    df_component a, b;
    fixture_component("unet2dcond_tiny", &a);
    fixture_component("unet2dcond_tiny", &b);
    /* a's attention projections differ from b's */
    const df_param_select proj = {.glob = "*attn*.to_[qkv].weight"};
    int n_sel = 0;
    for (int i = 0; i < a.params->n; i++) {
        df_param *p = &a.params->items[i];
        if (!df_param_selected(p, &proj)) continue;
        n_sel++;
        for (int64_t j = 0; j < p->tensor->numel; j++) df_f32(p->tensor)[j] += 1.0f;
    }
    cr_assert(n_sel > 0);
    const char *path = temp_file("proj.safetensors");
    cr_assert_eq(df_params_save_select(a.params, path, &proj), DF_OK, "%s", df_last_error());
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK);
    cr_assert_eq(df_st_count(f), n_sel, "only the selection is saved");
    df_st_close(f);

    df_load_report rep;
    cr_assert_eq(df_params_load_partial(b.params, path, NULL, &rep), DF_OK, "%s", df_last_error());
    cr_assert_eq(rep.applied, n_sel);
    cr_assert_eq(rep.n_unexpected, 0);
    cr_assert_eq(rep.n_missing, b.params->n - n_sel, "every other parameter is reported missing");
    df_load_report_free(&rep);
    for (int i = 0; i < a.params->n; i++)
        check_close(a.params->items[i].name, b.params->items[i].tensor, a.params->items[i].tensor,
                    0, 0);

    /* the same file under a narrower selection: the other projections are unexpected */
    const df_param_select q_only = {.prefix = "down_blocks.", .glob = "*.to_q.weight"};
    cr_assert_eq(df_params_load_partial(b.params, path, &q_only, &rep), DF_OK);
    cr_assert(rep.applied > 0 && rep.n_unexpected == n_sel - rep.applied, "%d + %d of %d",
              rep.applied, rep.n_unexpected, n_sel);
    for (int i = 0; i < rep.n_unexpected; i++)
        cr_assert(!strstr(rep.unexpected[i], "down_blocks.") || !strstr(rep.unexpected[i], "to_q"),
                  "%s", rep.unexpected[i]);
    df_load_report_free(&rep);

    /* trainable_only */
    df_params_set_trainable(a.params, "*", false);
    df_params_set_trainable(a.params, "conv_in.*", true);
    cr_assert_eq(df_params_save_select(a.params, path, &(df_param_select){.trainable_only = true}),
                 DF_OK);
    cr_assert_eq(df_st_open(path, &f), DF_OK);
    cr_assert_eq(df_st_count(f), 2, "conv_in.weight and conv_in.bias");
    df_st_close(f);
    unlink(path);
    df_component_free(&a);
    df_component_free(&b);
}

Test(nn_params_select, a_partial_file_of_another_shape_is_an_error) {
    df_component a, b;
    fixture_component("unet2dcond_tiny", &a);
    fixture_component("unet2d_tiny", &b);
    const char *path = temp_file("conv_in.safetensors");
    cr_assert_eq(df_params_save_select(b.params, path, &(df_param_select){.prefix = "conv_in."}),
                 DF_OK);
    df_load_report rep;
    df_status st = df_params_load_partial(a.params, path, NULL, &rep);
    cr_assert_eq(st, DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "conv_in.weight") && strstr(df_last_error(), "shape"), "%s",
              df_last_error());
    unlink(path);
    df_component_free(&a);
    df_component_free(&b);
}

/* df_params_join: one registry over two models; its flat buffer is what the models compute
 * with, its free leaves the parts intact. */
Test(nn_params_select, a_joined_registry_trains_both_parts) {
    df_component unet, text;
    fixture_component("unet2dcond_tiny", &unet);
    fixture_component("clip_text_tiny", &text);
    df_params_set_trainable(text.params, "*position_embedding*", false);
    df_params joined;
    df_params_init(&joined, NULL);
    cr_assert_eq(df_params_join(&joined, "unet", unet.params), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_params_join(&joined, "text_encoder", text.params), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(joined.n, unet.params->n + text.params->n);
    cr_assert_eq(joined.n_modules, unet.params->n_modules + text.params->n_modules);
    char name[DF_NAME_MAX];
    snprintf(name, sizeof name, "text_encoder.%s", text.params->items[0].name);
    cr_assert_eq(df_params_find(&joined, name), text.params->items[0].tensor);
    snprintf(name, sizeof name, "unet.%s", unet.params->modules[0].name);
    cr_assert_not_null(df_module_find(&joined, name));
    cr_assert_eq(df_module_find(&joined, name)->module, unet.params->modules[0].module);
    for (int i = 0; i < text.params->n; i++)
        cr_assert_eq(joined.items[unet.params->n + i].trainable, text.params->items[i].trainable);
    /* the same prefix twice is refused */
    cr_assert_eq(df_params_join(&joined, "unet", unet.params), DF_ERR_INVALID);
    cr_assert_eq(joined.n, unet.params->n + text.params->n);

    df_tensor *w = text.params->items[0].tensor;
    df_tensor *before = df_tensor_clone(w);
    cr_assert_eq(df_params_flatten(&joined), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_params_join(&joined, "x", text.params), DF_ERR_INVALID, "flattened");
    check_close("values kept", w, before, 0, 0);
    /* the model's tensor is a view of the joined flat buffer */
    float *flat = df_flat_data(&joined.flat);
    cr_assert(df_f32(w) >= flat && df_f32(w) < flat + joined.flat.numel);
    df_tensor *pos = df_params_find(&joined, "text_encoder.text_model.embeddings.position_embedding"
                                             ".weight");
    cr_assert_not_null(pos);
    cr_assert(!pos->requires_grad && !pos->grad, "frozen rows stay frozen");
    df_f32(w)[0] += 1.0f; /* a change through the flat buffer is the model's */
    cr_assert_eq(df_f32(text.params->items[0].tensor)[0], df_f32(before)[0] + 1.0f);
    df_params_free(&joined);
    /* the parts still hold their tensors, values included */
    cr_assert_eq(df_f32(text.params->items[0].tensor)[0], df_f32(before)[0] + 1.0f);
    df_tensor_free(before);
    df_component_free(&unet);
    df_component_free(&text);
}
