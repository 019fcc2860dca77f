/* test_keys.c — our registries reproduce the parameter names and shapes that diffusers v0.21.4
 * creates for the real SD 1.5 UNet, SD 2.1 UNet and SD VAE (the files in tests/fixtures/keys/, one line
 * "<name>\t<dtype>\t<shape>" per state_dict tensor). Order-insensitive: a safetensors file has
 * its own order. Shapes-only registries: nothing of the 3.4 GB is touched. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct key_line {
    char name[DF_NAME_MAX];
    char shape[64];
} key_line;

static int cmp_key(const void *a, const void *b) {
    return strcmp(((const key_line *)a)->name, ((const key_line *)b)->name);
}

static key_line *read_keys(const char *rel, int *n) {
    FILE *f = fopen(fixture_path(rel), "r");
    cr_assert(f, "cannot open %s", rel);
    key_line *keys = malloc(4096 * sizeof *keys);
    char line[512];
    *n = 0;
    while (fgets(line, sizeof line, f) && *n < 4096) {
        char dtype[16];
        if (sscanf(line, "%255s %15s %63s", keys[*n].name, dtype, keys[*n].shape) == 3) (*n)++;
    }
    fclose(f);
    qsort(keys, (size_t)*n, sizeof *keys, cmp_key);
    return keys;
}

static void check_registry(const df_params *r, const char *rel) {
    int n_want;
    key_line *want = read_keys(rel, &n_want);
    key_line *got = malloc((size_t)(r->n ? r->n : 1) * sizeof *got);
    for (int i = 0; i < r->n; i++) {
        snprintf(got[i].name, DF_NAME_MAX, "%s", r->items[i].name);
        const df_tensor *t = r->items[i].tensor;
        size_t k = 0;
        for (int d = 0; d < t->ndim; d++)
            k += (size_t)snprintf(got[i].shape + k, sizeof got[i].shape - k, d ? ",%lld" : "%lld",
                                  (long long)t->shape[d]);
    }
    qsort(got, (size_t)r->n, sizeof *got, cmp_key);
    int i = 0, j = 0, errors = 0;
    while ((i < r->n || j < n_want) && errors < 10) {
        int c = i >= r->n ? 1 : j >= n_want ? -1 : strcmp(got[i].name, want[j].name);
        if (c < 0) {
            cr_log_error("%s: extra parameter %s", rel, got[i++].name);
            errors++;
        } else if (c > 0) {
            cr_log_error("%s: missing parameter %s", rel, want[j++].name);
            errors++;
        } else {
            if (strcmp(got[i].shape, want[j].shape) != 0) {
                cr_log_error("%s: %s has shape %s, diffusers %s", rel, got[i].name, got[i].shape,
                             want[j].shape);
                errors++;
            }
            i++, j++;
        }
    }
    cr_expect_eq(r->n, n_want, "%s: %d parameters, diffusers has %d", rel, r->n, n_want);
    cr_assert_eq(errors, 0, "%s: key list differs (see log)", rel);
    free(got);
    free(want);
}

static void check_unet_cond(const char *config, const char *keys, int64_t want_count) {
    df_unet2d_cond_config c;
    cr_assert_eq(df_unet2d_cond_config_load(fixture_path(config), &c), DF_OK, "%s",
                 df_last_error());
    df_unet2d_cond m;
    cr_assert_eq(df_unet2d_cond_init(&m, &c, (df_init){.shapes_only = true}), DF_OK, "%s",
                 df_last_error());
    check_registry(&m.params, keys);
    cr_expect_eq(df_params_count(&m.params), want_count, "%s: %lld parameters", keys,
                 (long long)df_params_count(&m.params));
    df_unet2d_cond_free(&m);
}

Test(nn_keys, sd15_unet) {
    check_unet_cond("configs/sd15/unet/config.json", "keys/sd15_unet.txt", 859520964);
}

Test(nn_keys, sd21_unet) {
    check_unet_cond("configs/sd21/unet/config.json", "keys/sd21_unet.txt", 865910724);
}

Test(nn_keys, sd_vae) {
    df_vae_config c;
    cr_assert_eq(df_vae_config_load(fixture_path("configs/sd15/vae/config.json"), &c), DF_OK, "%s",
                 df_last_error());
    df_vae m;
    cr_assert_eq(df_vae_init(&m, &c, (df_init){.shapes_only = true}), DF_OK, "%s", df_last_error());
    check_registry(&m.params, "keys/sd_vae.txt");
    cr_expect_eq(df_params_count(&m.params), 83653863);
    df_vae_free(&m);
}

static void check_clip(const char *config, const char *keys, int64_t want_count) {
    df_json j;
    cr_assert_eq(df_json_load(fixture_path(config), &j), DF_OK, "%s", df_last_error());
    df_clip_text_config c;
    cr_assert_eq(df_clip_text_config_from_json(&j, &c), DF_OK, "%s", df_last_error());
    df_json_free(&j);
    df_clip_text m;
    cr_assert_eq(df_clip_text_init(&m, &c, (df_init){.shapes_only = true}), DF_OK);
    check_registry(&m.params, keys);
    cr_expect_eq(df_params_count(&m.params), want_count, "%s: %lld parameters", keys,
                 (long long)df_params_count(&m.params));
    df_clip_text_free(&m);
}

Test(nn_keys, sd15_text_encoder) {
    check_clip("configs/sd15/text_encoder/config.json", "keys/sd15_text_encoder.txt", 123060480);
}

Test(nn_keys, sd21_text_encoder) {
    check_clip("configs/sd21/text_encoder/config.json", "keys/sd21_text_encoder.txt", 340387840);
}
