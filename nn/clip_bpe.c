/* clip_bpe.c — the byte-level BPE model of transformers v4.33.3's CLIPTokenizer: vocab.json,
 * merges.txt, bytes_to_unicode and `bpe()` with its cache.
 *
 * BPE semantics (CLIPTokenizer.bpe): the piece's byte symbols, the last one with "</w>"
 * appended; while some adjacent pair has a merge rank, take the pair of lowest rank and merge
 * every occurrence of it, left to right without overlap; stop at one symbol. Here that runs in
 * O(n log n) with a heap of (rank, position) and a linked list of symbols, in rounds: a round
 * pops every occurrence of the lowest rank in position order (an occurrence whose symbols were
 * consumed by the previous one is stale and skipped) and only then adds the pairs the round
 * created, so a created pair of lower rank (possible with a hand-made merges.txt) waits for the
 * next round as in transformers. A merge never recreates its own pair, so a round sees exactly
 * the occurrences transformers' scan merges. A 10,000-byte piece takes milliseconds.
 *
 * Symbols are vocab ids: loading checks that all 512 byte symbols and every merge's two sides
 * and result are in the vocab, so the BPE never meets an unknown string.
 */
#include "nn/clip_tokenizer_impl.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* transformers reads merges.txt lines [1, 49152 - 256 - 2 + 1): at most 48,894 merges. */
#define MAX_MERGES (49152 - 256 - 2)
/* The cache is dropped when it grows past this many pieces or ids (transformers' never
 * shrinks; a service tokenizing arbitrary prompts should not grow without bound). */
#define CACHE_MAX_PIECES (1 << 16)
#define CACHE_MAX_IDS (1 << 22)

/* ---------------------------------------------------------------- files and maps */

df_status df_read_small_file(const char *path, size_t max, char **buf, size_t *len) {
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return df_error(errno == ENOENT ? DF_ERR_NOTFOUND : DF_ERR_IO, "%s: cannot open: %s", path,
                        strerror(errno));
    char *b = malloc(max + 2);
    size_t n = b ? fread(b, 1, max + 1, f) : 0;
    bool err = ferror(f);
    fclose(f);
    if (!b) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    if (err) {
        free(b);
        return df_error(DF_ERR_IO, "%s: read failed", path);
    }
    if (n > max) {
        free(b);
        return df_error(DF_ERR_FORMAT, "%s: larger than %zu bytes", path, max);
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return DF_OK;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static df_status strmap_grow(df_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    char **keys = calloc(cap, sizeof *keys);
    uint32_t *lens = calloc(cap, sizeof *lens);
    int32_t *vals = calloc(cap, sizeof *vals);
    if (!keys || !lens || !vals) {
        free(keys), free(lens), free(vals);
        return df_error(DF_ERR_NOMEM, "out of memory (token map of %zu)", cap);
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t h = hash_bytes(m->keys[i], m->lens[i]) & (cap - 1);
        while (keys[h]) h = (h + 1) & (cap - 1);
        keys[h] = m->keys[i], lens[h] = m->lens[i], vals[h] = m->vals[i];
    }
    free(m->keys), free(m->lens), free(m->vals);
    m->keys = keys, m->lens = lens, m->vals = vals, m->cap = cap;
    return DF_OK;
}

df_status df_strmap_put(df_strmap *m, const char *key, size_t len, int32_t val, bool *existed) {
    if (existed) *existed = false;
    if (len > UINT32_MAX) return df_error(DF_ERR_INVALID, "token of %zu bytes", len);
    if ((m->count + 1) * 2 > m->cap) DF_TRY(strmap_grow(m));
    size_t h = hash_bytes(key, len) & (m->cap - 1);
    while (m->keys[h]) {
        if (m->lens[h] == len && memcmp(m->keys[h], key, len) == 0) {
            if (existed) *existed = true;
            m->vals[h] = val;
            return DF_OK;
        }
        h = (h + 1) & (m->cap - 1);
    }
    char *k = malloc(len + 1);
    if (!k) return df_error(DF_ERR_NOMEM, "out of memory");
    memcpy(k, key, len);
    k[len] = 0;
    m->keys[h] = k, m->lens[h] = (uint32_t)len, m->vals[h] = val;
    m->count++;
    return DF_OK;
}

/* The slot of key, or -1. */
static ptrdiff_t strmap_slot(const df_strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t h = hash_bytes(key, len) & (m->cap - 1);
    while (m->keys[h]) {
        if (m->lens[h] == len && memcmp(m->keys[h], key, len) == 0) return (ptrdiff_t)h;
        h = (h + 1) & (m->cap - 1);
    }
    return -1;
}

int32_t df_strmap_get(const df_strmap *m, const char *key, size_t len) {
    ptrdiff_t s = strmap_slot(m, key, len);
    return s < 0 ? -1 : m->vals[s];
}

void df_strmap_free(df_strmap *m) {
    for (size_t i = 0; i < m->cap; i++) free(m->keys[i]);
    free(m->keys), free(m->lens), free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- merges table */

static size_t merge_slot(const df_clip_bpe *b, int32_t a, int32_t c) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)c) + 1;
    size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (b->m_cap - 1);
    while (b->m_keys[h] && b->m_keys[h] != key) h = (h + 1) & (b->m_cap - 1);
    return h;
}

/* The rank of the pair (a, c) and its merged id, or -1. */
static int32_t merge_rank(const df_clip_bpe *b, int32_t a, int32_t c, int32_t *merged) {
    if (!b->m_cap) return -1;
    size_t h = merge_slot(b, a, c);
    if (!b->m_keys[h]) return -1;
    *merged = b->m_merged[h];
    return b->m_rank[h];
}

/* ---------------------------------------------------------------- loading */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * for U+0100 onwards in byte order. */
static uint32_t byte_to_unicode(int byte) {
    if ((byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE)
        return (uint32_t)byte;
    int n = 0;
    for (int c = 0; c < byte; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) n++;
    return 256u + (uint32_t)n;
}

static df_status load_vocab(df_clip_bpe *b, const char *text, size_t len, const char *path) {
    df_json j = {0};
    bool *seen = NULL;
    df_status st;
    if (len > DF_TOKENIZER_MAX_FILE_BYTES) {
        st = df_error(DF_ERR_FORMAT, "%s: larger than %u bytes", path, DF_TOKENIZER_MAX_FILE_BYTES);
        goto fail;
    }
    if (df_json_has_nul_escape(text, len)) {
        st = df_error(DF_ERR_FORMAT, "%s: a token holds a \\u0000 escape", path);
        goto fail;
    }
    st = df_json_parse(text, len, path, &j);
    if (st != DF_OK) goto fail;
    int n = cJSON_GetArraySize(j.root);
    if (n <= 0 || n > DF_TOKENIZER_MAX_VOCAB) {
        st = df_error(DF_ERR_FORMAT, "%s: %d tokens; expected 1 to %d", path, n,
                      DF_TOKENIZER_MAX_VOCAB);
        goto fail;
    }
    b->id_token = calloc((size_t)n, sizeof *b->id_token);
    seen = calloc((size_t)n, 1);
    if (!b->id_token || !seen) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory for %d tokens", path, n);
        goto fail;
    }
    b->n_vocab = n;
    for (const cJSON *it = j.root->child; it; it = it->next) {
        const char *tok = it->string;
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!cJSON_IsNumber(it) || !(v >= 0 && v < n) || v != (double)(int)v) {
            st = df_error(DF_ERR_FORMAT,
                          "%s: token '%.60s': the id must be an integer in [0, %d) (ids are 0..N-1 "
                          "for N tokens)",
                          path, tok, n);
            goto fail;
        }
        int id = (int)v;
        if (seen[id]) {
            st = df_error(DF_ERR_FORMAT, "%s: id %d is given to two tokens ('%.60s' and '%.60s')",
                          path, id, b->id_token[id], tok);
            goto fail;
        }
        bool existed;
        size_t tl = strlen(tok);
        if (tl == 0) {
            st = df_error(DF_ERR_FORMAT, "%s: an empty token (id %d)", path, id);
            goto fail;
        }
        st = df_strmap_put(&b->vocab, tok, tl, id, &existed);
        if (st != DF_OK) goto fail;
        if (existed) {
            st = df_error(DF_ERR_FORMAT, "%s: token '%.60s' appears twice", path, tok);
            goto fail;
        }
        seen[id] = true;
        b->id_token[id] = b->vocab.keys[strmap_slot(&b->vocab, tok, tl)];
    }
    /* the map's keys move when it grows: take the final pointers */
    for (size_t i = 0; i < b->vocab.cap; i++)
        if (b->vocab.keys[i]) b->id_token[b->vocab.vals[i]] = b->vocab.keys[i];
    for (int byte = 0; byte < 256; byte++) {
        char sym[16];
        int l = df_utf8_put(byte_to_unicode(byte), sym);
        b->byte_id[byte] = df_strmap_get(&b->vocab, sym, (size_t)l);
        memcpy(sym + l, "</w>", 4);
        b->byte_end_id[byte] = df_strmap_get(&b->vocab, sym, (size_t)l + 4);
        if (b->byte_id[byte] < 0 || b->byte_end_id[byte] < 0) {
            sym[l] = 0;
            st = df_error(DF_ERR_FORMAT,
                          "%s: the byte symbol '%s' (byte 0x%02X) or its '</w>' form is missing: "
                          "not a byte-level BPE vocabulary",
                          path, sym, byte);
            goto fail;
        }
    }
    st = DF_OK;
fail:
    df_json_free(&j);
    free(seen);
    return st;
}

/* A field of a merges line: code points [s, e) of cps, as UTF-8 in buf (4 bytes each). */
static size_t field_utf8(const uint32_t *cps, size_t s, size_t e, char *buf) {
    size_t l = 0;
    for (size_t i = s; i < e; i++) l += (size_t)df_utf8_put(cps[i], buf + l);
    return l;
}

static df_status load_merges(df_clip_bpe *b, const char *text, size_t len, const char *path) {
    char *buf = NULL;
    uint32_t *cps = NULL;
    size_t n = 0;
    df_status st;
    if (len > DF_TOKENIZER_MAX_FILE_BYTES) {
        st = df_error(DF_ERR_FORMAT, "%s: larger than %u bytes", path, DF_TOKENIZER_MAX_FILE_BYTES);
        goto fail;
    }
    st = df_utf8_decode(text, len, path, &cps, &n);
    if (st == DF_ERR_INVALID) st = DF_ERR_FORMAT; /* the message stands: a bad file */
    if (st != DF_OK) goto fail;
    buf = malloc(8 * (n + 1));
    b->m_cap = 1 << 17;
    b->m_keys = calloc(b->m_cap, sizeof *b->m_keys);
    b->m_rank = malloc(b->m_cap * sizeof *b->m_rank);
    b->m_merged = malloc(b->m_cap * sizeof *b->m_merged);
    if (!buf || !b->m_keys || !b->m_rank || !b->m_merged) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    /* read().strip().split("\n")[1:MAX_MERGES + 1] */
    size_t s = 0, e = n;
    while (s < e && df_unicode_is_space(cps[s])) s++;
    while (e > s && df_unicode_is_space(cps[e - 1])) e--;
    int base = 1; /* the file's line number of the stripped text's first line */
    for (size_t q = 0; q < s; q++) base += cps[q] == '\n';
    size_t i = s;
    int line = 0; /* 0-based index in the stripped text */
    while (i < e && b->n_merges < MAX_MERGES) {
        size_t ls = i;
        while (i < e && cps[i] != '\n') i++;
        size_t le = i++;
        if (line++ == 0) continue; /* the "#version" header, skipped whatever it holds */
        /* line.split(): exactly two fields */
        size_t f[4][2];
        int nf = 0;
        size_t k = ls;
        while (k < le) {
            while (k < le && df_unicode_is_space(cps[k])) k++;
            if (k == le) break;
            size_t fs = k;
            while (k < le && !df_unicode_is_space(cps[k])) k++;
            if (nf < 4) f[nf][0] = fs, f[nf][1] = k;
            nf++;
        }
        int lineno = base + line - 1;
        if (nf != 2) {
            st = df_error(DF_ERR_FORMAT, "%s:%d: expected two symbols separated by a space, got %d",
                          path, lineno, nf);
            goto fail;
        }
        size_t la = field_utf8(cps, f[0][0], f[0][1], buf);
        size_t lb = field_utf8(cps, f[1][0], f[1][1], buf + la);
        int32_t a = df_strmap_get(&b->vocab, buf, la);
        int32_t c = df_strmap_get(&b->vocab, buf + la, lb);
        int32_t m = df_strmap_get(&b->vocab, buf, la + lb);
        if (a < 0 || c < 0 || m < 0) {
            buf[la + lb] = 0;
            st = df_error(DF_ERR_FORMAT, "%s:%d: '%.*s' %s not in vocab.json", path, lineno,
                          (int)(a < 0   ? la
                                : c < 0 ? lb
                                        : la + lb),
                          a < 0   ? buf
                          : c < 0 ? buf + la
                                  : buf,
                          a < 0 || c < 0 ? "(a symbol of the merge) is" : "(the merged symbol) is");
            goto fail;
        }
        size_t h = merge_slot(b, a, c);
        if (!b->m_keys[h]) b->m_keys[h] = (((uint64_t)(uint32_t)a << 32) | (uint32_t)c) + 1;
        b->m_rank[h] = b->n_merges++; /* a repeated pair keeps its last rank, as dict(zip) */
        b->m_merged[h] = m;
    }
    st = DF_OK;
fail:
    free(cps);
    free(buf);
    return st;
}

df_status df_clip_bpe_load(df_clip_bpe *b, const char *vocab, size_t vocab_len,
                           const char *vocab_label, const char *merges, size_t merges_len,
                           const char *merges_label) {
    memset(b, 0, sizeof *b);
    df_status st = load_vocab(b, vocab, vocab_len, vocab_label);
    if (st == DF_OK) st = load_merges(b, merges, merges_len, merges_label);
    if (st != DF_OK) df_clip_bpe_free(b);
    return st;
}

static void cache_clear(df_clip_bpe *b) {
    df_strmap_free(&b->cache);
    b->cache_n = 0;
}

void df_clip_bpe_free(df_clip_bpe *b) {
    if (!b) return;
    df_strmap_free(&b->vocab);
    free(b->id_token);
    free(b->m_keys), free(b->m_rank), free(b->m_merged);
    cache_clear(b);
    free(b->cache_ids);
    free(b->cache_span);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- BPE */

typedef struct pair_entry {
    int32_t rank, left, right, a, c;
} pair_entry;

typedef struct heap {
    pair_entry *v;
    size_t n, cap;
} heap;

static bool entry_less(const pair_entry *x, const pair_entry *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static bool heap_push(heap *h, pair_entry e) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        pair_entry *v = realloc(h->v, cap * sizeof *v);
        if (!v) return false;
        h->v = v, h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && entry_less(&e, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = e;
    return true;
}

static pair_entry heap_pop(heap *h) {
    pair_entry top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && entry_less(&h->v[c + 1], &h->v[c])) c++;
        if (!entry_less(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* The BPE symbols of one piece, in order, written over sym (returns the count). */
static df_status bpe_word(const df_clip_bpe *b, const unsigned char *p, int n, int32_t *sym,
                          int *count) {
    df_status st = DF_OK;
    int32_t *prev = malloc((size_t)n * sizeof *prev), *next = malloc((size_t)n * sizeof *next);
    heap h = {0}, pending = {0};
    if (!prev || !next) goto nomem;
    for (int i = 0; i < n; i++) {
        sym[i] = i == n - 1 ? b->byte_end_id[p[i]] : b->byte_id[p[i]];
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
    }
    for (int i = 0; i + 1 < n; i++) {
        int32_t m, r = merge_rank(b, sym[i], sym[i + 1], &m);
        if (r >= 0 && !heap_push(&h, (pair_entry){r, i, i + 1, sym[i], sym[i + 1]})) goto nomem;
    }
    int alive = n;
    while (h.n && alive > 1) {
        int32_t round = h.v[0].rank;
        pending.n = 0;
        while (h.n && h.v[0].rank == round) {
            pair_entry e = heap_pop(&h);
            /* stale: a side was consumed or changed by an earlier merge */
            if (sym[e.left] != e.a || next[e.left] != e.right || sym[e.right] != e.c) continue;
            if (prev[e.right] != e.left) continue;
            int32_t m;
            merge_rank(b, e.a, e.c, &m);
            sym[e.left] = m;
            int32_t r2 = next[e.right];
            next[e.left] = r2;
            if (r2 >= 0) prev[r2] = e.left;
            sym[e.right] = -1, prev[e.right] = -1, next[e.right] = -1;
            alive--;
            int32_t mm, rank;
            if (prev[e.left] >= 0 && (rank = merge_rank(b, sym[prev[e.left]], m, &mm)) >= 0 &&
                !heap_push(&pending,
                           (pair_entry){rank, prev[e.left], e.left, sym[prev[e.left]], m}))
                goto nomem;
            if (r2 >= 0 && (rank = merge_rank(b, m, sym[r2], &mm)) >= 0 &&
                !heap_push(&pending, (pair_entry){rank, e.left, r2, m, sym[r2]}))
                goto nomem;
        }
        for (size_t i = 0; i < pending.n; i++)
            if (!heap_push(&h, pending.v[i])) goto nomem;
    }
    int k = 0;
    for (int i = 0; i >= 0; i = next[i]) sym[k++] = sym[i];
    *count = k;
    goto done;
nomem:
    st = df_error(DF_ERR_NOMEM, "text: out of memory in BPE (piece of %d bytes)", n);
done:
    free(prev), free(next), free(h.v), free(pending.v);
    return st;
}

static bool ids_reserve(int32_t **ids, int *cap, int need) {
    if (need <= *cap) return true;
    int c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    int32_t *v = realloc(*ids, (size_t)c * sizeof *v);
    if (!v) return false;
    *ids = v, *cap = c;
    return true;
}

df_status df_clip_bpe_piece(df_clip_bpe *b, const char *piece, size_t len, int32_t **ids, int *n,
                            int *cap) {
    /* every BPE symbol is a vocab token (checked at load): no unk here */
    if (len == 0) return DF_OK;
    if (len > (size_t)1 << 28) return df_error(DF_ERR_INVALID, "text: a piece of %zu bytes", len);
    ptrdiff_t slot = strmap_slot(&b->cache, piece, len);
    if (slot >= 0) {
        int32_t e = b->cache.vals[slot];
        int32_t off = b->cache_span[2 * e], cnt = b->cache_span[2 * e + 1];
        if (!ids_reserve(ids, cap, *n + cnt)) goto nomem;
        memcpy(*ids + *n, b->cache_ids + off, (size_t)cnt * sizeof **ids);
        *n += cnt;
        return DF_OK;
    }
    if (!ids_reserve(ids, cap, *n + (int)len)) goto nomem;
    int cnt = 0;
    DF_TRY(bpe_word(b, (const unsigned char *)piece, (int)len, *ids + *n, &cnt));
    /* remember it */
    if (b->cache.count >= CACHE_MAX_PIECES || b->cache_n + (size_t)cnt > CACHE_MAX_IDS)
        cache_clear(b);
    if ((size_t)cnt > CACHE_MAX_IDS) { /* too long to keep */
        *n += cnt;
        return DF_OK;
    }
    if (b->cache_n + (size_t)cnt > b->cache_cap) {
        size_t c = b->cache_cap ? b->cache_cap : 4096;
        while (c < b->cache_n + (size_t)cnt) c *= 2;
        int32_t *v = realloc(b->cache_ids, c * sizeof *v);
        if (!v) goto nomem;
        b->cache_ids = v, b->cache_cap = c;
    }
    size_t e = b->cache.count;
    if (2 * (e + 1) > b->cache_span_cap) {
        size_t c = b->cache_span_cap ? b->cache_span_cap * 2 : 4096;
        int32_t *v = realloc(b->cache_span, c * sizeof *v);
        if (!v) goto nomem;
        b->cache_span = v, b->cache_span_cap = c;
    }
    DF_TRY(df_strmap_put(&b->cache, piece, len, (int32_t)e, NULL));
    b->cache_span[2 * e] = (int32_t)b->cache_n;
    b->cache_span[2 * e + 1] = cnt;
    memcpy(b->cache_ids + b->cache_n, *ids + *n, (size_t)cnt * sizeof **ids);
    b->cache_n += (size_t)cnt;
    *n += cnt;
    return DF_OK;
nomem:
    return df_error(DF_ERR_NOMEM, "text: out of memory");
}
