/* fuzz_st_index.c — libFuzzer target for the sharded-safetensors index parser
 * (df_st_index_parse in nn/safetensors_index.c): any bytes either parse into an index whose
 * every name maps to a plain shard file name, or fail cleanly with a message naming the file.
 *
 * Build and run (clang; from the repository root), as in tests/fuzz/README.md:
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_st_index
 *   build-fuzz/tests/fuzz/fuzz_st_index -max_total_time=60 tests/fuzz/corpus/st_index
 */
#include "nn/nn.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_st_index *idx = NULL;
    df_status s = df_st_index_parse((const char *)data, size, "dir/m.safetensors.index.json", &idx);
    if (s != DF_OK) {
        DF_ASSERT(idx == NULL, "failed parse returned an index");
        DF_ASSERT(strstr(df_last_error(), "m.safetensors.index.json"), "error without the file: %s",
                  df_last_error());
        return 0;
    }
    for (int i = 0; i < df_st_index_count(idx); i++) {
        const char *name, *shard;
        df_st_index_at(idx, i, &name, &shard);
        DF_ASSERT(df_st_index_shard(idx, name) == shard, "lookup disagrees with the list");
        DF_ASSERT(shard[0] && !strchr(shard, '/') && strcmp(shard, "..") != 0, "bad shard name");
    }
    for (int i = 0; i < df_st_index_shard_count(idx); i++) (void)df_st_index_shard_at(idx, i);
    DF_ASSERT(strcmp(df_st_index_dir(idx), "dir") == 0, "dir");
    df_st_index_close(idx);
    return 0;
}
