/* fuzz_model_config.c — libFuzzer target for the config.json readers (json_config.c,
 * model_config.c, clip_text.c, controlnet_config.c): any bytes must give DF_OK or a clean error, never a crash or a leak;
 * and every config a reader accepts must build (shapes only: no parameter memory) without an
 * abort, which exercises the size limits of the readers against the models' *_init.
 * Build and run: see tests/fuzz/README.md (target fuzz_model_config, corpus
 * tests/fuzz/corpus/model_config). */
#include "nn/controlnet.h"
#include "nn/nn.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_json j;
    if (df_json_parse((const char *)data, size, "fuzz.json", &j) != DF_OK) return 0;
    df_unet2d_config a;
    df_unet2d_cond_config b;
    df_vae_config c;
    df_clip_text_config d;
    df_controlnet_config e;
    df_init shapes = {.shapes_only = true};
    if (df_unet2d_config_from_json(&j, &a) == DF_OK) {
        df_unet2d m;
        if (df_unet2d_init(&m, &a, shapes) == DF_OK) df_unet2d_free(&m);
    }
    if (df_unet2d_cond_config_from_json(&j, &b) == DF_OK) {
        df_unet2d_cond m;
        if (df_unet2d_cond_init(&m, &b, shapes) == DF_OK) df_unet2d_cond_free(&m);
    }
    if (df_vae_config_from_json(&j, &c) == DF_OK) {
        df_vae m;
        if (df_vae_init(&m, &c, shapes) == DF_OK) df_vae_free(&m);
    }
    if (df_clip_text_config_from_json(&j, &d) == DF_OK) {
        df_clip_text m;
        if (df_clip_text_init(&m, &d, shapes) == DF_OK) df_clip_text_free(&m);
    }
    if (df_controlnet_config_from_json(&j, &e) == DF_OK) {
        df_controlnet m;
        if (df_controlnet_init(&m, &e, shapes) == DF_OK) df_controlnet_free(&m);
    }
    df_json_free(&j);
    return 0;
}
