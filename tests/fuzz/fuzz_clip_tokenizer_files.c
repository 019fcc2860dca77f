/* fuzz_clip_tokenizer_files.c — libFuzzer target for the CLIP tokenizer's file readers
 * (df_clip_tokenizer_load_memory: vocab.json, merges.txt, tokenizer_config.json and
 * special_tokens_map.json in nn/clip_bpe.c and nn/clip_tokenizer.c). The input is the four files
 * separated by the line "#####" (missing trailing parts: absent configs); any bytes either load
 * into a tokenizer that then encodes a few texts into ids below its length, or fail cleanly with
 * a message naming one of the files.
 *
 * Build and run (clang; from the repository root), as in tests/fuzz/README.md:
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_clip_tokenizer_files
 *   build-fuzz/tests/fuzz/fuzz_clip_tokenizer_files -max_total_time=60 \
 *       tests/fuzz/corpus/clip_tokenizer_files
 */
#include "nn/tokenizer.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char sep[] = "\n#####\n";
    const char *part[4] = {NULL, NULL, NULL, NULL};
    size_t len[4] = {0};
    const char *p = (const char *)data, *end = p + size;
    int k = 0;
    while (k < 4) {
        const char *s = memmem(p, (size_t)(end - p), sep, sizeof sep - 1);
        part[k] = p;
        len[k] = s ? (size_t)(s - p) : (size_t)(end - p);
        k++;
        if (!s) break;
        p = s + sizeof sep - 1;
    }
    if (k < 2) return 0;
    /* copies, so that reading past a part is caught */
    char *copy[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < k; i++) {
        copy[i] = malloc(len[i] ? len[i] : 1);
        if (len[i]) memcpy(copy[i], part[i], len[i]);
    }
    df_tokenizer_files f = {copy[0], len[0], "v/vocab.json",
                            copy[1], len[1], "v/merges.txt",
                            copy[2], len[2], "v/tokenizer_config.json",
                            copy[3], len[3], "v/special_tokens_map.json"};
    df_clip_tokenizer *t = NULL;
    df_status s = df_clip_tokenizer_load_memory(&f, &t);
    if (s != DF_OK) {
        DF_ASSERT(t == NULL, "failed load returned a tokenizer");
        DF_ASSERT(strstr(df_last_error(), "v/"), "error without the file: %s", df_last_error());
    } else {
        static const char *const texts[] = {"a photo of a cat", "the <|endoftext|> 's 'll",
                                            "Ünïcödé ΣΑΣ 中文 😀", ""};
        for (int i = 0; i < 4; i++) {
            int32_t *ids;
            int n;
            DF_ASSERT(df_clip_tokenizer_encode(t, texts[i], &ids, &n) == DF_OK, "encode: %s",
                      df_last_error());
            for (int j = 0; j < n; j++)
                DF_ASSERT(ids[j] >= 0 && ids[j] < df_clip_tokenizer_len(t), "id %d", ids[j]);
            free(ids);
            int64_t call[8], mask[8];
            DF_ASSERT(df_clip_tokenizer_call(t, texts[i], 8, call, mask) == DF_OK, "call");
            DF_ASSERT(call[0] == df_clip_tokenizer_bos(t) && mask[0] == 1, "bos");
        }
        df_clip_tokenizer_free(t);
    }
    for (int i = 0; i < 4; i++) free(copy[i]);
    return 0;
}
