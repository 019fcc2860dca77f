/* clip_tokenizer.c — transformers v4.33.3's CLIPTokenizer (slow, without ftfy): a tokenizer
 * folder's files, added tokens, the pre-tokenizer pattern, and the padded / truncated call.
 * The contract and the steps are in nn/tokenizer.h; the text cleanup is nn/unicode_text.c, the
 * BPE nn/clip_bpe.c.
 */
#include "nn/clip_tokenizer_impl.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOKEN_BYTES 1024
#define MAX_MODEL_LENGTH (1 << 20)

struct df_clip_tokenizer {
    df_clip_bpe bpe;
    int bos, eos, pad, unk, max_length;
    char **added; /* added tokens, id = n_vocab + index */
    int n_added;
    df_strmap added_map;
};

/* ---------------------------------------------------------------- configs */

typedef struct special_names {
    char bos[MAX_TOKEN_BYTES], eos[MAX_TOKEN_BYTES], unk[MAX_TOKEN_BYTES], pad[MAX_TOKEN_BYTES];
    int max_length;
} special_names;

/* A special token: a string, or an object whose "content" is a string (transformers'
 * AddedToken); absent or null keeps out. */
static df_status read_special(const df_json *j, const char *key, char *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!it || cJSON_IsNull(it)) return DF_OK;
    if (cJSON_IsObject(it)) it = cJSON_GetObjectItemCaseSensitive(it, "content");
    if (!cJSON_IsString(it) || !it->valuestring[0])
        return df_error(DF_ERR_FORMAT,
                        "%s: field '%s': expected a non-empty string or an object with a "
                        "\"content\" string",
                        j->path, key);
    size_t n = strlen(it->valuestring);
    if (n >= MAX_TOKEN_BYTES)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': a token of %zu bytes (at most %d)", j->path,
                        key, n, MAX_TOKEN_BYTES - 1);
    memcpy(out, it->valuestring, n + 1);
    return DF_OK;
}

/* tokenizer_config.json (with_config_fields) or special_tokens_map.json; text NULL: absent. */
static df_status read_config(const char *text, size_t len, const char *path,
                             bool with_config_fields, special_names *s) {
    if (!text) return DF_OK;
    df_json j = {0};
    df_status st;
    if (df_json_has_nul_escape(text, len)) {
        st = df_error(DF_ERR_FORMAT, "%s: a string holds a \\u0000 escape", path);
        goto fail;
    }
    if ((st = df_json_parse(text, len, path, &j)) != DF_OK) goto fail;
    if ((st = read_special(&j, "bos_token", s->bos)) != DF_OK ||
        (st = read_special(&j, "eos_token", s->eos)) != DF_OK ||
        (st = read_special(&j, "unk_token", s->unk)) != DF_OK ||
        (st = read_special(&j, "pad_token", s->pad)) != DF_OK)
        goto fail;
    if (with_config_fields) {
        bool lower;
        if ((st = df_json_bool(&j, "do_lower_case", true, &lower)) != DF_OK) goto fail;
        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(j.root, "model_max_length");
        if (ml && !cJSON_IsNull(ml)) {
            double v = cJSON_IsNumber(ml) ? ml->valuedouble : -1;
            if (cJSON_IsNumber(ml) && v >= 1e29) {
                /* transformers' VERY_LARGE_INTEGER (1e30): "no limit"; CLIP's positions: 77 */
            } else if (v < 2 || v > MAX_MODEL_LENGTH || v != (double)(int)v) {
                st = df_error(DF_ERR_FORMAT,
                              "%s: field 'model_max_length': expected an integer in [2, %d]", path,
                              MAX_MODEL_LENGTH);
                goto fail;
            } else {
                s->max_length = (int)v;
            }
        }
    }
    st = DF_OK;
fail:
    df_json_free(&j);
    return st;
}

/* ---------------------------------------------------------------- load / free */

int df_clip_tokenizer_token_id(const df_clip_tokenizer *t, const char *token) {
    size_t n = strlen(token);
    int32_t id = df_strmap_get(&t->bpe.vocab, token, n);
    if (id >= 0) return id;
    id = df_strmap_get(&t->added_map, token, n);
    return id >= 0 ? t->bpe.n_vocab + id : -1;
}

df_status df_clip_tokenizer_load_memory(const df_tokenizer_files *f, df_clip_tokenizer **out) {
    *out = NULL;
    df_clip_tokenizer *t = calloc(1, sizeof *t);
    special_names *s = calloc(1, sizeof *s);
    df_status st;
    if (!t || !s) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", f->vocab_label);
        goto fail;
    }
    snprintf(s->bos, sizeof s->bos, "<|startoftext|>");
    snprintf(s->eos, sizeof s->eos, "<|endoftext|>");
    snprintf(s->unk, sizeof s->unk, "<|endoftext|>");
    snprintf(s->pad, sizeof s->pad, "<|endoftext|>");
    s->max_length = 77;
    st = df_clip_bpe_load(&t->bpe, f->vocab, f->vocab_len, f->vocab_label, f->merges, f->merges_len,
                          f->merges_label);
    if (st != DF_OK) goto fail;
    /* the config's special tokens, then the special map's (which win, as in from_pretrained) */
    st = read_config(f->config, f->config_len, f->config_label, true, s);
    if (st != DF_OK) goto fail;
    st = read_config(f->special, f->special_len, f->special_label, false, s);
    if (st != DF_OK) goto fail;
    t->max_length = s->max_length;
    t->unk = df_clip_tokenizer_token_id(t, s->unk);
    if (t->unk < 0) {
        st = df_error(DF_ERR_FORMAT, "%s: the unk token '%s' is not in the vocabulary",
                      f->special  ? f->special_label
                      : f->config ? f->config_label
                                  : f->vocab_label,
                      s->unk);
        goto fail;
    }
    /* convert_tokens_to_ids: a token missing from the vocab is unk */
    t->bos = df_clip_tokenizer_token_id(t, s->bos);
    t->eos = df_clip_tokenizer_token_id(t, s->eos);
    t->pad = df_clip_tokenizer_token_id(t, s->pad);
    if (t->bos < 0) t->bos = t->unk;
    if (t->eos < 0) t->eos = t->unk;
    if (t->pad < 0) t->pad = t->unk;
    free(s);
    *out = t;
    return DF_OK;
fail:
    free(s);
    df_clip_tokenizer_free(t);
    return st;
}

df_status df_clip_tokenizer_load(const char *dir, df_clip_tokenizer **out) {
    *out = NULL;
    static const char *const names[4] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                                         "special_tokens_map.json"};
    char *paths[4] = {0}, *texts[4] = {0};
    size_t lens[4] = {0};
    df_status st = DF_OK;
    for (int i = 0; i < 4; i++) {
        paths[i] = malloc(strlen(dir) + 32);
        if (!paths[i]) {
            st = df_error(DF_ERR_NOMEM, "%s: out of memory", dir);
            goto fail;
        }
        sprintf(paths[i], "%s/%s", dir, names[i]);
        st = df_read_small_file(paths[i], DF_TOKENIZER_MAX_FILE_BYTES, &texts[i], &lens[i]);
        if (st == DF_ERR_NOTFOUND && i >= 2) { /* the two configs are optional */
            st = DF_OK;
            continue;
        }
        if (st != DF_OK) goto fail;
    }
    df_tokenizer_files f = {texts[0], lens[0], paths[0], texts[1], lens[1], paths[1],
                            texts[2], lens[2], paths[2], texts[3], lens[3], paths[3]};
    st = df_clip_tokenizer_load_memory(&f, out);
fail:
    for (int i = 0; i < 4; i++) free(paths[i]), free(texts[i]);
    return st;
}

void df_clip_tokenizer_free(df_clip_tokenizer *t) {
    if (!t) return;
    df_clip_bpe_free(&t->bpe);
    for (int i = 0; i < t->n_added; i++) free(t->added[i]);
    free(t->added);
    df_strmap_free(&t->added_map);
    free(t);
}

int df_clip_tokenizer_bos(const df_clip_tokenizer *t) {
    return t->bos;
}
int df_clip_tokenizer_eos(const df_clip_tokenizer *t) {
    return t->eos;
}
int df_clip_tokenizer_pad(const df_clip_tokenizer *t) {
    return t->pad;
}
int df_clip_tokenizer_unk(const df_clip_tokenizer *t) {
    return t->unk;
}
int df_clip_tokenizer_max_length(const df_clip_tokenizer *t) {
    return t->max_length;
}
int df_clip_tokenizer_vocab_size(const df_clip_tokenizer *t) {
    return t->bpe.n_vocab;
}
int df_clip_tokenizer_len(const df_clip_tokenizer *t) {
    return t->bpe.n_vocab + t->n_added;
}
const char *df_clip_tokenizer_added_token(const df_clip_tokenizer *t, int id) {
    int k = id - t->bpe.n_vocab;
    return k >= 0 && k < t->n_added ? t->added[k] : NULL;
}

df_status df_clip_tokenizer_add_token(df_clip_tokenizer *t, const char *token, int *id) {
    size_t n = strlen(token);
    if (n == 0 || n >= MAX_TOKEN_BYTES)
        return df_error(DF_ERR_INVALID, "add_token: a token of %zu bytes (1 to %d)", n,
                        MAX_TOKEN_BYTES - 1);
    uint32_t *cps = NULL;
    size_t k;
    DF_TRY(df_utf8_decode(token, n, "add_token", &cps, &k));
    free(cps);
    if (df_clip_tokenizer_token_id(t, token) >= 0)
        return df_error(DF_ERR_INVALID, "add_token: '%s' is already a token (id %d)", token,
                        df_clip_tokenizer_token_id(t, token));
    char **added = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *added);
    if (!added) return df_error(DF_ERR_NOMEM, "add_token: out of memory");
    t->added = added;
    char *copy = strdup(token);
    if (!copy) return df_error(DF_ERR_NOMEM, "add_token: out of memory");
    df_status st = df_strmap_put(&t->added_map, token, n, t->n_added, NULL);
    if (st != DF_OK) {
        free(copy);
        return st;
    }
    t->added[t->n_added++] = copy;
    if (id) *id = df_clip_tokenizer_len(t) - 1;
    return DF_OK;
}

/* ---------------------------------------------------------------- encoding */

/* The pattern's literal letters, compared as the regex module's IGNORECASE does (after
 * lower-casing only 'ſ' U+017F still folds onto one of them, onto 's'). */
static bool letter_is(uint32_t cp, char lower) {
    return cp == (uint32_t)lower || cp == (uint32_t)(lower - 'a' + 'A') ||
           (lower == 's' && cp == 0x17F);
}

/* Length of the literal lit matched caselessly at cps[i..n), or 0. */
static size_t match_lit(const uint32_t *cps, size_t i, size_t n, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++) {
        if (i + k >= n) return 0;
        char c = lit[k];
        bool ok = c >= 'a' && c <= 'z' ? letter_is(cps[i + k], c) : cps[i + k] == (uint32_t)c;
        if (!ok) return 0;
    }
    return k;
}

/* [^\s\p{L}\p{N}] as the regex module matches it with IGNORECASE: a code point none of whose
 * case variants is a space, letter or number. Against the plain categories that excludes one
 * more code point (checked for all): U+0345 COMBINING GREEK YPOGEGRAMMENI, which folds to the
 * letter 'ι' yet is no letter itself, so no alternative matches it and findall skips it. */
static bool is_other(uint32_t cp) {
    return !df_unicode_is_space(cp) && !df_unicode_is_letter(cp) && !df_unicode_is_number(cp) &&
           cp != 0x345;
}

/* The length of the pattern's match at cps[i] (0: a space, skipped):
 * <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ */
static size_t match_at(const uint32_t *cps, size_t i, size_t n) {
    static const char *const lits[] = {
        "<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    if (cps[i] == '<' || cps[i] == '\'')
        for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
            size_t l = match_lit(cps, i, n, lits[k]);
            if (l) return l;
        }
    size_t j = i;
    if (df_unicode_is_letter(cps[i])) {
        while (j < n && df_unicode_is_letter(cps[j])) j++;
        return j - i;
    }
    if (df_unicode_is_number(cps[i])) return 1;
    while (j < n && is_other(cps[j])) j++;
    return j - i;
}

typedef struct idvec {
    int32_t *v;
    int n, cap;
} idvec;

static df_status push_id(idvec *o, int32_t id) {
    if (o->n == o->cap) {
        int cap = o->cap ? o->cap * 2 : 64;
        int32_t *v = realloc(o->v, (size_t)cap * sizeof *v);
        if (!v) return df_error(DF_ERR_NOMEM, "text: out of memory");
        o->v = v, o->cap = cap;
    }
    o->v[o->n++] = id;
    return DF_OK;
}

/* CLIPTokenizer._tokenize of one piece of text (no added tokens in it), ids appended. */
static df_status tokenize_text(df_clip_tokenizer *t, const char *s, size_t len, idvec *o) {
    uint32_t *cps = NULL, *norm = NULL;
    char *buf = NULL;
    size_t n, m;
    df_status st = df_utf8_decode(s, len, "text", &cps, &n);
    if (st != DF_OK) goto fail;
    if ((st = df_clip_normalize(cps, n, &norm, &m)) != DF_OK) goto fail;
    buf = malloc(4 * m + 1);
    if (!buf && m) {
        st = df_error(DF_ERR_NOMEM, "text: out of memory");
        goto fail;
    }
    size_t i = 0;
    while (i < m) {
        size_t l = match_at(norm, i, m);
        if (!l) {
            i++;
            continue;
        }
        size_t bl = 0;
        for (size_t k = i; k < i + l; k++) bl += (size_t)df_utf8_put(norm[k], buf + bl);
        i += l;
        /* the BPE cache starts with the two specials mapped to themselves */
        if ((bl == 15 && memcmp(buf, "<|startoftext|>", 15) == 0) ||
            (bl == 13 && memcmp(buf, "<|endoftext|>", 13) == 0)) {
            int32_t id = df_strmap_get(&t->bpe.vocab, buf, bl);
            if ((st = push_id(o, id >= 0 ? id : t->unk)) != DF_OK) goto fail;
            continue;
        }
        if ((st = df_clip_bpe_piece(&t->bpe, buf, bl, &o->v, &o->n, &o->cap)) != DF_OK) goto fail;
    }
    st = DF_OK;
fail:
    free(cps);
    free(norm);
    free(buf);
    return st;
}

df_status df_clip_tokenizer_encode(df_clip_tokenizer *t, const char *text, int32_t **ids, int *n) {
    *ids = NULL;
    *n = 0;
    idvec o = {0};
    size_t len = strlen(text);
    if (len > (size_t)INT_MAX / 8)
        return df_error(DF_ERR_INVALID, "text: %zu bytes is too long", len);
    /* reject invalid UTF-8 anywhere before splitting at added tokens */
    uint32_t *cps;
    size_t k;
    DF_TRY(df_utf8_decode(text, len, "text", &cps, &k));
    free(cps);
    df_status st = DF_OK;
    size_t start = 0, i = 0;
    while (i < len) {
        /* tokens_trie.split: the leftmost added token, the longest there */
        int best = -1;
        size_t best_len = 0;
        for (int a = 0; a < t->n_added; a++) {
            size_t al = strlen(t->added[a]);
            if (al > best_len && al <= len - i && memcmp(text + i, t->added[a], al) == 0)
                best = a, best_len = al;
        }
        if (best < 0) {
            i++;
            continue;
        }
        if ((st = tokenize_text(t, text + start, i - start, &o)) != DF_OK) goto fail;
        if ((st = push_id(&o, t->bpe.n_vocab + best)) != DF_OK) goto fail;
        i += best_len;
        start = i;
    }
    if ((st = tokenize_text(t, text + start, len - start, &o)) != DF_OK) goto fail;
    *ids = o.v;
    *n = o.n;
    if (!o.n) {
        free(o.v);
        *ids = NULL;
    }
    return DF_OK;
fail:
    free(o.v);
    return st;
}

df_status df_clip_tokenizer_call(df_clip_tokenizer *t, const char *text, int max_length,
                                 int64_t *ids, int64_t *mask) {
    if (max_length <= 0) max_length = t->max_length;
    if (max_length < 2)
        return df_error(DF_ERR_INVALID,
                        "max_length %d: needs at least 2 (the start and end tokens)", max_length);
    int32_t *v;
    int n;
    DF_TRY(df_clip_tokenizer_encode(t, text, &v, &n));
    if (n > max_length - 2) n = max_length - 2;
    ids[0] = t->bos;
    for (int i = 0; i < n; i++) ids[1 + i] = v[i];
    ids[n + 1] = t->eos;
    for (int i = n + 2; i < max_length; i++) ids[i] = t->pad;
    if (mask)
        for (int i = 0; i < max_length; i++) mask[i] = i < n + 2;
    free(v);
    return DF_OK;
}
