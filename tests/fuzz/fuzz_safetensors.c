/* fuzz_safetensors.c — libFuzzer target for the safetensors reader (nn/safetensors.c): any bytes
 * must either open as a valid file whose every tensor then reads without a fault, or fail with
 * a clean DF_ERR_* status and a message naming the buffer. Never a crash, leak or bad access.
 *
 * Build and run (clang with libFuzzer and ASan; from the repository root):
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_safetensors
 *   build-fuzz/tests/fuzz/fuzz_safetensors -max_total_time=60 \
 *       -dict=tests/fuzz/safetensors.dict tests/fuzz/corpus/safetensors
 * (libFuzzer adds new inputs to the corpus folder; commit only small, interesting ones.)
 */
#include "nn/nn.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_st_file *f = NULL;
    df_status s = df_st_open_memory(data, size, "fuzz-input", &f);
    if (s != DF_OK) {
        DF_ASSERT(f == NULL, "failed open returned a file");
        DF_ASSERT(strstr(df_last_error(), "fuzz-input") != NULL, "error without the label: %s",
                  df_last_error());
        return 0;
    }
    /* Every accepted file must read back entirely: the invariants promised by a successful open
     * (ranges inside the data, sizes consistent) are exercised here. */
    uint64_t total = 0;
    for (int i = 0; i < df_st_count(f); i++) {
        const df_st_info *info = df_st_info_at(f, i);
        DF_ASSERT(df_st_find(f, info->name) == info, "find disagrees with info_at");
        const uint8_t *p = df_st_data(f, info);
        uint64_t n = info->end - info->begin;
        DF_ASSERT(p >= data && p + n <= data + size, "tensor bytes outside the buffer");
        for (uint64_t k = 0; k < n; k++) total += p[k];
        if (!info->supported || info->ndim > DF_MAX_DIMS) continue;
        df_dtype as = df_dtype_is_float(info->dtype) ? DF_DTYPE_F32 : DF_DTYPE_I64;
        df_tensor *t = NULL;
        s = df_st_read(f, info->name, as, &t);
        DF_ASSERT(s == DF_OK && t && t->numel == info->numel, "read failed: %s", df_last_error());
        s = df_st_read_into(f, info->name, t);
        DF_ASSERT(s == DF_OK, "read_into failed: %s", df_last_error());
        df_tensor_free(t);
    }
    for (int i = 0; i < df_st_metadata_count(f); i++) {
        const char *k, *v;
        df_st_metadata_at(f, i, &k, &v);
        DF_ASSERT(df_st_metadata(f, k) != NULL, "metadata key not found");
        total += strlen(v);
    }
    df_st_close(f);
    df_mem_trim();             /* random sizes would otherwise fill the tensor pool's free lists */
    return total == 1 ? 1 : 0; /* keeps `total` alive; libFuzzer ignores values other than -1 */
}
