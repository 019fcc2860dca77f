/* fuzz_clip_tokenizer_encode.c — libFuzzer target for CLIP tokenization of any text
 * (df_clip_tokenizer_encode / _call: nn/unicode_text.c's cleanup and lower-casing, the
 * pre-tokenizer pattern and the BPE of nn/clip_bpe.c), on a small byte-level vocabulary built
 * here (the 512 byte symbols, a few merges, the two specials). Invalid UTF-8 must fail with
 * DF_ERR_INVALID; everything else encodes into ids below the tokenizer's length, and the padded
 * call agrees with encode. An input starting with byte 0x01 first adds its first line (after
 * that byte) as an added token.
 *
 * Build and run (clang; from the repository root), as in tests/fuzz/README.md:
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_clip_tokenizer_encode
 *   build-fuzz/tests/fuzz/fuzz_clip_tokenizer_encode -max_total_time=60 \
 *       tests/fuzz/corpus/clip_tokenizer_encode
 */
#include "nn/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
}

/* GPT-2's bytes_to_unicode of byte b, as JSON-escaped UTF-8. */
static int byte_symbol(int b, char *out) {
    int cp = b;
    if (!printable(b)) {
        cp = 256;
        for (int c = 0; c < b; c++) cp += !printable(c);
    }
    if (cp == '"' || cp == '\\') return sprintf(out, "\\%c", cp);
    if (cp < 0x80) return sprintf(out, "%c", cp);
    return sprintf(out, "%c%c", 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F));
}

static df_clip_tokenizer *small_tokenizer(void) {
    static const char *const merged[] = {"th",      "the</w>", "an",   "and</w>", "in",
                                         "ing</w>", "aa",      "aaaa", "aa</w>"};
    static const char merges[] = "#version: 0.2\nt h\nth e</w>\na n\nan d</w>\ni n\nin g</w>\n"
                                 "a a\naa aa\na a</w>\n";
    char *vocab = malloc(1 << 16);
    size_t n = 0;
    int id = 0;
    n += (size_t)sprintf(vocab + n, "{");
    for (int end = 0; end < 2; end++)
        for (int b = 0; b < 256; b++) {
            n += (size_t)sprintf(vocab + n, "%s\"", id ? ", " : "");
            n += (size_t)byte_symbol(b, vocab + n);
            n += (size_t)sprintf(vocab + n, "%s\": %d", end ? "</w>" : "", id++);
        }
    for (size_t i = 0; i < sizeof merged / sizeof merged[0]; i++)
        n += (size_t)sprintf(vocab + n, ", \"%s\": %d", merged[i], id++);
    n +=
        (size_t)sprintf(vocab + n, ", \"<|startoftext|>\": %d, \"<|endoftext|>\": %d}", id, id + 1);
    df_tokenizer_files f = {
        vocab, n, "vocab.json", merges, sizeof merges - 1, "merges.txt", NULL, 0, NULL,
        NULL,  0, NULL};
    df_clip_tokenizer *t = NULL;
    DF_ASSERT(df_clip_tokenizer_load_memory(&f, &t) == DF_OK, "%s", df_last_error());
    free(vocab);
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_clip_tokenizer *t = small_tokenizer();
    size_t off = 0;
    if (size && data[0] == 1) {
        const uint8_t *nl = memchr(data, '\n', size);
        size_t l = nl ? (size_t)(nl - data) : size;
        char *tok = malloc(l);
        memcpy(tok, data + 1, l - 1);
        tok[l - 1] = 0;
        (void)df_clip_tokenizer_add_token(t, tok, NULL); /* may fail: empty, exists, not UTF-8 */
        free(tok);
        off = l;
    }
    char *text = malloc(size - off + 1);
    memcpy(text, data + off, size - off);
    text[size - off] = 0;
    int32_t *ids;
    int n;
    df_status s = df_clip_tokenizer_encode(t, text, &ids, &n);
    if (s != DF_OK) {
        DF_ASSERT(s == DF_ERR_INVALID && strstr(df_last_error(), "UTF-8"), "%s", df_last_error());
    } else {
        for (int j = 0; j < n; j++)
            DF_ASSERT(ids[j] >= 0 && ids[j] < df_clip_tokenizer_len(t), "id %d", ids[j]);
        int64_t call[16], mask[16];
        DF_ASSERT(df_clip_tokenizer_call(t, text, 16, call, mask) == DF_OK, "call");
        int real = n < 14 ? n : 14;
        for (int j = 0; j < real; j++) DF_ASSERT(call[1 + j] == ids[j], "call != encode");
        DF_ASSERT(call[real + 1] == df_clip_tokenizer_eos(t) && mask[real + 1] == 1, "eos");
        free(ids);
    }
    free(text);
    df_clip_tokenizer_free(t);
    return 0;
}
