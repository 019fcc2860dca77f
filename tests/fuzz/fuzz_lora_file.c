/* fuzz_lora_file.c — libFuzzer target for the LoRA file reader (nn/lora_file.c,
 * nn/lora_keys_*.c): any bytes must either read as a set whose every entry keeps the promises of
 * df_lora_file_read (rank > 0, down / up ranks agree, a conv up of 1x1, finite values and
 * alpha), or fail with a clean DF_ERR_* status and a message naming the buffer. Each target
 * read is then named in every layout: a name the writer makes must read back as a key of that
 * layout (as the same target, except that kohya may only fail to, which the writer refuses).
 *
 * Build and run (clang with libFuzzer and ASan; from the repository root):
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_lora_file
 *   build-fuzz/tests/fuzz/fuzz_lora_file -max_total_time=60 -dict=tests/fuzz/lora.dict \
 *       tests/fuzz/corpus/lora_file
 */
#include "nn/lora_file.h"
#include "nn/lora_file_impl.h"

#include <math.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_lora_set s;
    df_status st = df_lora_file_read_memory(data, size, "fuzz-input", &s);
    if (st != DF_OK) {
        DF_ASSERT(s.n == 0 && s.entries == NULL, "failed read left entries");
        DF_ASSERT(strstr(df_last_error(), "fuzz-input") != NULL, "error without the label: %s",
                  df_last_error());
        return 0;
    }
    DF_ASSERT(s.n > 0 && (unsigned)s.format < DF_LORA_FORMAT_COUNT, "empty set or bad format");
    for (int i = 0; i < s.n; i++) {
        const df_lora_entry *e = &s.entries[i];
        int64_t r = e->down->shape[0];
        DF_ASSERT(r > 0 && e->up->shape[1] == r && e->up->ndim == e->down->ndim, "%s: ranks",
                  e->target);
        DF_ASSERT(e->down->ndim == 2 ||
                      (e->down->ndim == 4 && e->up->shape[2] == 1 && e->up->shape[3] == 1),
                  "%s: shapes", e->target);
        DF_ASSERT(isfinite(e->alpha), "%s: alpha", e->target);
        for (int64_t k = 0; k < e->down->numel; k++) DF_ASSERT(isfinite(df_f32(e->down)[k]), "nan");
        for (int64_t k = 0; k < e->up->numel; k++) DF_ASSERT(isfinite(df_f32(e->up)[k]), "nan");
        for (int j = 0; j < i; j++)
            DF_ASSERT(strcmp(s.entries[j].target, e->target) != 0, "%s twice", e->target);
        for (int f = 0; f < DF_LORA_FORMAT_COUNT; f++)
            for (int role = 0; role < 3; role++) {
                char key[DF_LORA_NAME_MAX], back[DF_LORA_NAME_MAX];
                df_lora_role got;
                if (!df_lora_key_format((df_lora_format)f, e->target, (df_lora_role)role, key))
                    continue;
                bool ok = df_lora_key_parse((df_lora_format)f, key, back, &got);
                if (f == DF_LORA_KOHYA && (!ok || strcmp(back, e->target) != 0)) continue;
                DF_ASSERT(ok && got == (df_lora_role)role && strcmp(back, e->target) == 0,
                          "%s: %s name '%s' reads back as '%s'", e->target,
                          df_lora_format_name((df_lora_format)f), key, ok ? back : "nothing");
            }
    }
    df_lora_set_free(&s);
    return 0;
}
