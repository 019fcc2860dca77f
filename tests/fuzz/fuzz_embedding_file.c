/* fuzz_embedding_file.c — libFuzzer target for the textual-inversion embedding reader
 * (nn/embedding_file.c, over nn/safetensors.c): any bytes must either read as an embedding whose
 * vectors are F32 (k, D) within the limits and whose token is a terminated string, or fail with
 * a clean DF_ERR_* status and a message naming the buffer. Never a crash, leak or bad access.
 *
 * Build and run (clang with libFuzzer and ASan; from the repository root):
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_embedding_file
 *   build-fuzz/tests/fuzz/fuzz_embedding_file -max_total_time=60 \
 *       -dict=tests/fuzz/safetensors.dict tests/fuzz/corpus/embedding_file
 */
#include "nn/embedding_file.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_embed e;
    df_status s = df_embed_read_memory(data, size, "dir/fuzz-input.safetensors", &e);
    if (s != DF_OK) {
        DF_ASSERT(e.vectors == NULL, "failed read returned vectors");
        DF_ASSERT(strstr(df_last_error(), "fuzz-input") != NULL, "error without the label: %s",
                  df_last_error());
        return 0;
    }
    DF_ASSERT(e.vectors && e.vectors->dtype == DF_DTYPE_F32 && e.vectors->ndim == 2,
              "vectors are not F32 (k, D)");
    DF_ASSERT(e.vectors->shape[0] >= 1 && e.vectors->shape[0] <= DF_EMBED_MAX_VECTORS &&
                  e.vectors->shape[1] >= 1 && e.vectors->shape[1] <= DF_EMBED_MAX_WIDTH,
              "vectors outside the limits");
    DF_ASSERT(memchr(e.token, 0, sizeof e.token) != NULL, "token not terminated");
    double total = 0;
    for (int64_t i = 0; i < e.vectors->numel; i++) total += df_f32(e.vectors)[i];
    df_embed_free(&e);
    df_mem_trim();
    return total == 1.5 ? 1 : 0; /* keeps `total` alive; libFuzzer ignores values other than -1 */
}
