/* test_component_load.c — how component folders load: weights variants (`*.fp16.safetensors`),
 * pickle files refused with how to convert them, and memory-mapped inference loading
 * (df_component_map_frozen), whose models must compute bit for bit what copied ones do while
 * taking every value from the file (no initialiser may overwrite a mapped weight). */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <string.h>

/* The UNet of a fixture pipeline folder. */
static const char *unet_dir(const char *pipeline) {
    static char path[256];
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/%s/unet", pipeline);
    snprintf(path, sizeof path, "%.250s", fixture_path(rel));
    return path;
}

/* Runs the model on fixed inputs; returns the output (owned). */
static df_tensor *run_unet(df_component *c) {
    df_tensor *x = randn_tensor(1, DF_DIMS(2, 4, 8, 8));
    df_tensor *ctx = randn_tensor(2, DF_DIMS(2, 5, 32));
    df_tensor *t = df_full(DF_DTYPE_I64, 0, NULL, 321);
    bool g = df_grad_set_enabled(false);
    df_tensor *y = df_unet2d_cond_forward(c->unet2d_cond, x, t, ctx);
    df_grad_set_enabled(g);
    df_tensor *out = df_tensor_clone(y);
    df_tensor_free(x);
    df_tensor_free(ctx);
    df_tensor_free(t);
    df_tensor_free(y);
    return out;
}

static void expect_equal(const df_tensor *a, const df_tensor *b, const char *what) {
    cr_assert(df_tensor_same_shape(a, b), "%s: shapes differ", what);
    cr_assert(memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0,
              "%s: not bitwise equal", what);
}

Test(nn_component_load, mapped_equals_copied_f32) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", fixture_path("models/unet2dcond_tiny"));
    df_component copied, mapped;
    cr_assert_eq(df_component_load(dir, &copied), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_component_map_frozen(dir, NULL, &mapped), DF_OK, "%s", df_last_error());
    cr_assert_eq(copied.params->n, mapped.params->n);
    for (int i = 0; i < mapped.params->n; i++) {
        const df_param *p = &mapped.params->items[i], *q = &copied.params->items[i];
        cr_assert(p->from_map, "%s did not come from the file", p->name);
        cr_assert(!p->trainable, "%s is not frozen", p->name);
        expect_equal(p->tensor, q->tensor, p->name);
    }
    df_tensor *a = run_unet(&copied), *b = run_unet(&mapped);
    expect_equal(a, b, "UNet output");
    df_tensor_free(a);
    df_tensor_free(b);
    df_component_free(&copied);
    df_component_free(&mapped);
}

/* F16 weights (the fp16 variant) are converted, not mapped, and equal the copied load. */
Test(nn_component_load, mapped_equals_copied_f16_variant) {
    df_component copied, mapped;
    cr_assert_eq(df_component_load_variant(unet_dir("sd1"), "fp16", &copied), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(df_component_map_frozen(unet_dir("sd1"), "fp16", &mapped), DF_OK, "%s",
                 df_last_error());
    for (int i = 0; i < mapped.params->n; i++)
        expect_equal(mapped.params->items[i].tensor, copied.params->items[i].tensor,
                     mapped.params->items[i].name);
    df_tensor *a = run_unet(&copied), *b = run_unet(&mapped);
    expect_equal(a, b, "UNet output");
    df_tensor_free(a);
    df_tensor_free(b);
    df_component_free(&copied);
    df_component_free(&mapped);
}

Test(nn_component_load, variants) {
    df_component c;
    /* no variant asked for, no plain file: the fp16 one is taken */
    cr_assert_eq(df_component_load_variant(unet_dir("sd1"), NULL, &c), DF_OK, "%s",
                 df_last_error());
    df_component_free(&c);
    expect_status(df_component_load_variant(unet_dir("sd1"), "bf16", &c), DF_ERR_NOTFOUND,
                  "diffusion_pytorch_model.bf16.safetensors");
    df_component_free(&c);
    /* sd2 has plain files only */
    expect_status(df_component_load_variant(unet_dir("sd2"), "fp16", &c), DF_ERR_NOTFOUND,
                  ".fp16.safetensors");
    df_component_free(&c);
}

Test(nn_component_load, pickle_is_refused) {
    const char *dir = scratch_dir_new("pickle");
    char src[1024];
    snprintf(src, sizeof src, "%s/config.json", unet_dir("sd2"));
    size_t n;
    char *cfg = read_whole_file(src, &n);
    scratch_write("config.json", cfg);
    free(cfg);
    scratch_write("diffusion_pytorch_model.bin", "PK\x03\x04 not really a zip");
    df_component c;
    expect_status(df_component_load(dir, &c), DF_ERR_UNSUPPORTED, "pickle");
    df_component_free(&c);
    expect_status(df_component_map_frozen(dir, NULL, &c), DF_ERR_UNSUPPORTED, "save_file");
    df_component_free(&c);
    scratch_dir_remove();
}
