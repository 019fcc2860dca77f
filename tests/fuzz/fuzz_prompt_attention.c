/* fuzz_prompt_attention.c — libFuzzer target for A1111's prompt attention syntax
 * (df_prompt_parse_attention in infer/prompt_weights.c): any text parses into segments whose
 * texts are no longer than the prompt altogether, BREAK segments exactly "BREAK" with weight
 * -1, and no two neighbouring text segments of equal weight.
 *
 * Build and run (clang; from the repository root), as in tests/fuzz/README.md:
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_prompt_attention
 *   build-fuzz/tests/fuzz/fuzz_prompt_attention -max_total_time=60 tests/fuzz/corpus/prompt_attention
 */
#include "infer/infer.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    df_prompt_segment *s;
    int n;
    DF_ASSERT(df_prompt_parse_attention(text, &s, &n) == DF_OK, "%s", df_last_error());
    DF_ASSERT(n >= 1, "no segment");
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        total += strlen(s[i].text);
        if (s[i].is_break)
            DF_ASSERT(strcmp(s[i].text, "BREAK") == 0 && s[i].weight == -1, "bad BREAK");
        if (i > 0 && !s[i].is_break && !s[i - 1].is_break)
            DF_ASSERT(s[i].weight != s[i - 1].weight, "unmerged neighbours");
    }
    DF_ASSERT(total <= strlen(text), "segments longer than the prompt");
    df_prompt_segments_free(s, n);
    free(text);
    return 0;
}
