/* fuzz_yaml_config.c — libFuzzer target for the YAML run configuration (train/config.c): any
 * bytes give DF_OK or a clean error, never a crash or leak. See tests/fuzz/README.md. */
#include "train/train.h"

#include <stddef.h>
#include <stdint.h>

static const df_cfg_field schema[] = {
    {"train_batch_size", DF_CFG_INT, "16", 1, 1 << 20, NULL, ""},
    {"learning_rate", DF_CFG_FLOAT, "1e-4", 0, 1e3, NULL, ""},
    {"lr_scheduler", DF_CFG_STRING, "constant", 0, 0, "constant|cosine", ""},
    {"use_ema", DF_CFG_BOOL, "false", 0, 0, NULL, ""},
    {"model.block_out_channels", DF_CFG_INT_LIST, "[32, 64]", 1, 4096, NULL, ""},
    {"model.down_block_types", DF_CFG_STRING_LIST, "[A, B]", 0, 0, NULL, ""},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_config c;
    df_config_init(&c, schema, (int)(sizeof schema / sizeof schema[0]));
    (void)df_config_load_yaml_text(&c, (const char *)data, size, "fuzz.yaml");
    df_config_free(&c);
    return 0;
}
