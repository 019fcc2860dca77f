/* fuzz_model_config.c — libFuzzer target for the config.json readers (json_config.c,
 * model_config.c, clip_text.c): any bytes must give DF_OK or a clean error, never a crash or a leak.
 * Build and run: see tests/fuzz/README.md (target fuzz_model_config, corpus
 * tests/fuzz/corpus/model_config). */
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
    (void)df_unet2d_config_from_json(&j, &a);
    (void)df_unet2d_cond_config_from_json(&j, &b);
    (void)df_vae_config_from_json(&j, &c);
    (void)df_clip_text_config_from_json(&j, &d);
    df_json_free(&j);
    return 0;
}
