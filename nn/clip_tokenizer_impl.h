/* clip_tokenizer_impl.h — internals of the CLIP tokenizer shared by nn/clip_tokenizer.c,
 * nn/clip_bpe.c and nn/unicode_text.c. Not part of the public interface (nn/tokenizer.h). */
#ifndef DF_NN_CLIP_TOKENIZER_IMPL_H
#define DF_NN_CLIP_TOKENIZER_IMPL_H

#include "nn/tokenizer.h"

#include <stddef.h>
#include <stdint.h>

/* ---- unicode_text.c ---- */

/* Strict UTF-8 (no overlong forms, no surrogates, <= U+10FFFF) to code points. *cps is
 * malloc'd (n + 1 entries). DF_ERR_INVALID "<label>: invalid UTF-8 at byte K". */
df_status df_utf8_decode(const char *s, size_t len, const char *label, uint32_t **cps, size_t *n);
/* Appends the UTF-8 of cp to out (room for 4 bytes); returns the bytes written. */
int df_utf8_put(uint32_t cp, char *out);

/* BERT's BasicTokenizer as CLIPTokenizer runs it without ftfy, then " ".join: the cleaned,
 * NFC-normalised, lower-cased words of cps[0..n) separated by one space (code points). *out is
 * malloc'd; *n_out may be 0. */
df_status df_clip_normalize(const uint32_t *cps, size_t n, uint32_t **out, size_t *n_out);

/* The pre-tokenizer pattern's classes (regex module: \p{L}, \p{N}, \s). */
bool df_unicode_is_letter(uint32_t cp);
bool df_unicode_is_number(uint32_t cp);
bool df_unicode_is_space(uint32_t cp);

/* ---- clip_bpe.c ---- */

/* A string -> int hash map (open addressing; keys copied into the map). */
typedef struct df_strmap {
    char **keys;
    uint32_t *lens;
    int32_t *vals;
    size_t cap, count;
} df_strmap;
df_status df_strmap_put(df_strmap *m, const char *key, size_t len, int32_t val, bool *existed);
/* The value of key, or -1. */
int32_t df_strmap_get(const df_strmap *m, const char *key, size_t len);
void df_strmap_free(df_strmap *m);

/* The BPE model: vocab, merges by rank, byte symbols and the per-piece cache. */
typedef struct df_clip_bpe {
    df_strmap vocab; /* token -> id */
    char **id_token; /* id -> token (borrowed from vocab's keys) */
    int n_vocab;
    uint64_t *m_keys; /* (a << 32 | b) + 1; 0 = empty */
    int32_t *m_rank, *m_merged;
    size_t m_cap;
    int n_merges;
    int32_t byte_id[256], byte_end_id[256]; /* bytes_to_unicode(b) and the same + "</w>" */
    /* cache: piece bytes -> ids (offset into cache_ids, count) */
    df_strmap cache;
    int32_t *cache_ids;
    size_t cache_n, cache_cap;
    int32_t *cache_span; /* 2 per cache entry: offset, count */
    size_t cache_span_cap;
} df_clip_bpe;

/* Parses vocab.json and merges.txt (their bytes; the labels name them in errors) into b. */
df_status df_clip_bpe_load(df_clip_bpe *b, const char *vocab, size_t vocab_len,
                           const char *vocab_label, const char *merges, size_t merges_len,
                           const char *merges_label);
void df_clip_bpe_free(df_clip_bpe *b);
/* Appends the ids of one pre-tokenized piece (its UTF-8 bytes) to the growing array *ids
 * (*n used, *cap allocated). */
df_status df_clip_bpe_piece(df_clip_bpe *b, const char *piece, size_t len, int32_t **ids, int *n,
                            int *cap);

/* Reads a whole file (at most max bytes) into a malloc'd NUL-terminated buffer. */
df_status df_read_small_file(const char *path, size_t max, char **buf, size_t *len);

#endif
