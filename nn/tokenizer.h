/* tokenizer.h — the CLIP tokenizer: transformers v4.33.3 `CLIPTokenizer` (the slow, Python one)
 * as it runs without ftfy, which is how the Stable Diffusion pipelines' oracle runs it.
 *
 * The steps, in order (nn/clip_tokenizer.c, nn/unicode_text.c, nn/clip_bpe.c):
 *   1. added tokens (df_clip_tokenizer_add_token) are cut out of the raw text first, leftmost
 *      then longest, case-sensitively (CLIPTokenizer has no `do_lower_case` attribute, so
 *      transformers neither lower-cases added tokens nor the text around them); every piece
 *      between them is tokenized on its own;
 *   2. BERT's BasicTokenizer cleanup (strip_accents=False, no punctuation split): NUL, U+FFFD and
 *      every control / format / unassigned / private-use code point dropped (tab, LF, CR kept as
 *      spaces), Zs spaces to ' ', a space around each CJK ideograph, NFC, split at white space,
 *      each word lower-cased as Python's str.lower (full mapping: 'İ' -> "i̇"; final sigma);
 *   3. the pre-tokenizer pattern, case-insensitive: <|startoftext|>, <|endoftext|>, 's 't 're
 *      've 'm 'll 'd, a run of letters (\p{L}+), one number (\p{N}), a run of anything else that
 *      is not a space;
 *   4. each piece's UTF-8 bytes through GPT-2's bytes_to_unicode, then BPE by merge rank (the
 *      last symbol ends in "</w>"), cached per piece; unknown symbols become unk.
 *
 * Unicode data comes from utf8proc (Unicode 15); Python 3.11's unicodedata, which the oracle uses,
 * is Unicode 14, so the 4,489 code points new in Unicode 15 are treated as unassigned (dropped),
 * as Python does. The regex module's case-insensitive classes differ from the plain categories
 * at one code point, U+0345, which no alternative of the pattern matches (it is skipped like a
 * space). Every code point, in two contexts, gives transformers' ids
 * (tests/ref/gen_tokenizer_corpus.py --check-all-codepoints). Text is NUL-terminated, so a NUL
 * ends it (transformers drops NUL characters).
 *
 * A tokenizer is not thread-safe (encode fills the BPE cache): one thread at a time.
 */
#ifndef DF_NN_TOKENIZER_H
#define DF_NN_TOKENIZER_H

#include "nn/nn.h"

typedef struct df_clip_tokenizer df_clip_tokenizer;

/* Largest vocab.json / merges.txt / config file read, and the most tokens a vocab may hold. */
#define DF_TOKENIZER_MAX_FILE_BYTES (64u << 20)
#define DF_TOKENIZER_MAX_VOCAB (1 << 22)

/* Reads DIR/vocab.json (an object token -> id; the ids must be 0..N-1, each once),
 * DIR/merges.txt (transformers skips the first line, "#version: ...", whether or not it is a
 * header, and reads at most 48,894 merges after it; each a line "A B" where A, B and AB are
 * vocab tokens), DIR/tokenizer_config.json (optional) and DIR/special_tokens_map.json (optional):
 * bos/eos/unk/pad tokens (strings or {"content": ...} objects; the special map wins over the
 * config), model_max_length (default 77), do_lower_case (a bool; it changes nothing, as in
 * transformers' CLIPTokenizer). *out is owned: free with df_clip_tokenizer_free. Errors
 * (DF_ERR_IO, DF_ERR_FORMAT, DF_ERR_NOMEM) name the file, the line where there is one, and the
 * reason. */
DF_API df_status df_clip_tokenizer_load(const char *dir, df_clip_tokenizer **out);
/* The four files' bytes (config and special may be NULL: absent), each with the name errors
 * give it. */
typedef struct df_tokenizer_files {
    const char *vocab;
    size_t vocab_len;
    const char *vocab_label;
    const char *merges;
    size_t merges_len;
    const char *merges_label;
    const char *config;
    size_t config_len;
    const char *config_label;
    const char *special;
    size_t special_len;
    const char *special_label;
} df_tokenizer_files;
/* df_clip_tokenizer_load from bytes in memory (the fuzz targets' entry). */
DF_API df_status df_clip_tokenizer_load_memory(const df_tokenizer_files *f,
                                               df_clip_tokenizer **out);
/* NULL is a no-op. */
DF_API void df_clip_tokenizer_free(df_clip_tokenizer *t);

/* The BPE ids of text (NUL-terminated UTF-8): no bos/eos, no truncation (what
 * tokenizer(text).input_ids[1:-1] is before truncation). *ids is malloc'd (caller frees; NULL
 * when *n is 0). DF_ERR_INVALID "text: invalid UTF-8 at byte K" for invalid UTF-8 (overlong
 * forms and surrogates included). */
DF_API df_status df_clip_tokenizer_encode(df_clip_tokenizer *t, const char *text, int32_t **ids,
                                          int *n);

/* tokenizer(text, padding="max_length", max_length=max_length, truncation=True): bos + ids +
 * eos, the ids cut to max_length - 2 (eos stays last, as transformers' truncation does), padded
 * with the pad id; mask 1 for the real tokens, 0 for padding. ids and mask (mask may be NULL)
 * hold max_length entries. max_length <= 0 means model_max_length; 1 is DF_ERR_INVALID. */
DF_API df_status df_clip_tokenizer_call(df_clip_tokenizer *t, const char *text, int max_length,
                                        int64_t *ids, int64_t *mask);

DF_API int df_clip_tokenizer_bos(const df_clip_tokenizer *t);
DF_API int df_clip_tokenizer_eos(const df_clip_tokenizer *t);
DF_API int df_clip_tokenizer_pad(const df_clip_tokenizer *t);
DF_API int df_clip_tokenizer_unk(const df_clip_tokenizer *t);
DF_API int df_clip_tokenizer_max_length(const df_clip_tokenizer *t);
/* Tokens in vocab.json (transformers' vocab_size: without added tokens). */
DF_API int df_clip_tokenizer_vocab_size(const df_clip_tokenizer *t);
/* vocab_size + the added tokens (transformers' len(tokenizer)). */
DF_API int df_clip_tokenizer_len(const df_clip_tokenizer *t);

/* Adds a token as tokenizer.add_tokens([token]) does (textual inversion's placeholder): matched
 * as a whole in the raw text before anything else, case-sensitively; its id is the current
 * df_clip_tokenizer_len (returned in *id when id is not NULL). DF_ERR_INVALID when token is
 * empty, not UTF-8, or already a vocab or added token. */
DF_API df_status df_clip_tokenizer_add_token(df_clip_tokenizer *t, const char *token, int *id);

/* The added token of id `id` (borrowed), NULL when id is not an added token's. */
DF_API const char *df_clip_tokenizer_added_token(const df_clip_tokenizer *t, int id);

/* The id of a vocab or added token, -1 when absent. */
DF_API int df_clip_tokenizer_token_id(const df_clip_tokenizer *t, const char *token);

#endif
