/* fixture_models.c — test helpers around the committed model fixtures (tests/fixtures/models/):
 * loading a component folder, running it on its committed inputs, a DDPM pipeline folder made
 * of the tiny UNet2DModel for CLI tests, and reading a whole file. Failures fail the test. */
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>

void fixture_component(const char *name, df_component *comp) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", fixture_path("models"), name);
    cr_assert_eq(df_component_load(dir, comp), DF_OK, "%s: %s", name, df_last_error());
}

df_tensor *fixture_main_output(df_component *comp, const char *name) {
    char rel[512];
    snprintf(rel, sizeof rel, "models/%s/inputs.safetensors", name);
    df_st_file *in = fixture_open(rel);
    df_named inputs[16], outputs[DF_COMPONENT_MAX_OUTPUTS];
    int n_in = 0, n_out = 0;
    for (int i = 0; i < df_st_count(in) && n_in < 16; i++) {
        const df_st_info *info = df_st_info_at(in, i);
        if (strncmp(info->name, "probe", 5) == 0) continue;
        inputs[n_in++] = (df_named){info->name, fixture_tensor(rel, info->name)};
    }
    cr_assert_eq(df_component_forward(comp, inputs, n_in, outputs, &n_out), DF_OK, "%s: %s", name,
                 df_last_error());
    for (int i = 0; i < n_out; i++)
        if (strcmp(outputs[i].name, df_component_main_output(comp)) == 0) return outputs[i].tensor;
    cr_assert_fail("%s: no main output", name);
    return NULL;
}

static void copy_fixture(const char *rel, const char *to) {
    size_t len;
    char *bytes = read_whole_file(fixture_path(rel), &len);
    cr_assert(bytes, "fixture %s unreadable", rel);
    FILE *f = fopen(to, "wb");
    cr_assert(f && fwrite(bytes, 1, len, f) == len && fclose(f) == 0, "writing %s", to);
    free(bytes);
}

void fixture_ddpm_pipeline(const char *dir) {
    char path[1024];
    const char *subdirs[] = {"", "/unet", "/scheduler"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s%s", dir, subdirs[i]);
        cr_assert(mkdir(path, 0755) == 0 || errno == EEXIST, "mkdir %s", path);
    }
    const char *files[][2] = {
        {"models/unet2d_tiny/config.json", "unet/config.json"},
        {"models/unet2d_tiny/diffusion_pytorch_model.safetensors",
         "unet/diffusion_pytorch_model.safetensors"},
        {"models/unet2d_tiny/inputs.safetensors", "unet/inputs.safetensors"},
        {"schedulers/sd15/scheduler_config.json", "scheduler/scheduler_config.json"}};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i][1]);
        copy_fixture(files[i][0], path);
    }
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs("{\"_class_name\": \"DDPMPipeline\", \"_diffusers_version\": \"0.21.4\", "
          "\"scheduler\": [\"diffusers\", \"PNDMScheduler\"], \"unet\": [\"diffusers\", "
          "\"UNet2DModel\"]}\n",
          f);
    fclose(f);
}

char *read_whole_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)n + 1))) {
            *len = fread(b, 1, (size_t)n, f);
            b[*len] = '\0';
        }
    }
    fclose(f);
    return b;
}
