/* embeddings.c — textual-inversion embeddings in a pipeline, as diffusers v0.21.4's
 * TextualInversionLoaderMixin: load_textual_inversion (the token and, for a multi-vector
 * embedding, token_1 .. token_{k-1} added to the tokenizer, their vectors as new rows of the
 * text encoder's token embedding: here rows after the table, df_clip_text.added_embedding) and
 * maybe_convert_prompt (each such token in a prompt replaced by all its tokens). */
#include "infer/infer.h"
#include "nn/embedding_file.h"
#include "nn/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether `name` is a token of t (vocab or added). */
static bool has_token(const df_clip_tokenizer *t, const char *name) {
    return df_clip_tokenizer_token_id(t, name) >= 0;
}

df_status df_sd_add_embedding(df_sd_pipeline *p, const df_embed *e, const char *token,
                              const char *label) {
    df_clip_text *te = p->text_encoder.clip_text;
    df_clip_tokenizer *tok = p->tokenizer;
    if (!token || !*token) token = e->token;
    if (!*token)
        return df_error(DF_ERR_INVALID, "%s: the file names no token: give one as %s:TOKEN", label,
                        label);
    int64_t k = e->vectors->shape[0], d = e->vectors->shape[1];
    if (d != te->config.hidden_size)
        return df_error(DF_ERR_INVALID,
                        "%s: vectors of width %lld, the text encoder's is %d (an embedding for "
                        "another model)",
                        label, (long long)d, te->config.hidden_size);
    int64_t rows = p->added_embedding ? p->added_embedding->shape[0] : 0;
    if (df_clip_tokenizer_len(tok) != te->config.vocab_size + rows)
        return df_error(DF_ERR_INVALID,
                        "%s: the tokenizer has %d tokens, the text encoder %lld rows: cannot add "
                        "embeddings",
                        label, df_clip_tokenizer_len(tok),
                        (long long)(te->config.vocab_size + rows));
    /* every token checked before any is added (a clash leaves the pipeline as it was) */
    char name[DF_EMBED_MAX_TOKEN + 16];
    for (int64_t i = 0; i < (k > 1 ? k : 2); i++) {
        if (i == 0)
            snprintf(name, sizeof name, "%s", token);
        else
            snprintf(name, sizeof name, "%s_%lld", token, (long long)i);
        if (has_token(tok, name))
            return df_error(DF_ERR_INVALID,
                            "%s: the token '%s' is already in the tokenizer (choose another "
                            "with %s:TOKEN)",
                            label, name, label);
    }
    if (strlen(token) >= DF_EMBED_MAX_TOKEN)
        return df_error(DF_ERR_INVALID, "%s: a token of %zu bytes (at most %d)", label,
                        strlen(token), DF_EMBED_MAX_TOKEN - 1);
    for (int64_t i = 0; i < k; i++) {
        if (i == 0)
            snprintf(name, sizeof name, "%s", token);
        else
            snprintf(name, sizeof name, "%s_%lld", token, (long long)i);
        df_status st = df_clip_tokenizer_add_token(tok, name, NULL);
        if (st != DF_OK) return df_error(st, "%s: %s", label, df_last_error());
    }
    df_tensor *grown = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(rows + k, d));
    if (rows) memcpy(df_f32(grown), df_f32(p->added_embedding), sizeof(float) * (size_t)(rows * d));
    memcpy(df_f32(grown) + rows * d, df_f32(e->vectors), sizeof(float) * (size_t)(k * d));
    df_tensor_free(p->added_embedding);
    p->added_embedding = grown;
    te->added_embedding = grown;
    return DF_OK;
}

/* s with every occurrence of `from` replaced by `to` (malloc'd; NULL: out of memory). */
static char *replace_all(const char *s, const char *from, const char *to) {
    size_t lf = strlen(from), lt = strlen(to), n = 0;
    for (const char *q = strstr(s, from); q; q = strstr(q + lf, from)) n++;
    char *out = malloc(strlen(s) + n * (lt >= lf ? lt - lf : 0) + 1);
    if (!out) return NULL;
    char *w = out;
    for (const char *q; (q = strstr(s, from)) != NULL; s = q + lf) {
        memcpy(w, s, (size_t)(q - s));
        w += q - s;
        memcpy(w, to, lt);
        w += lt;
    }
    strcpy(w, s);
    return out;
}

df_status df_prompt_expand_vectors(df_clip_tokenizer *t, const char *prompt, char **out) {
    *out = NULL;
    int32_t *ids = NULL;
    int n = 0;
    DF_TRY(df_clip_tokenizer_encode(t, prompt, &ids, &n));
    char *cur = strdup(prompt);
    df_status st = cur ? DF_OK : df_error(DF_ERR_NOMEM, "out of memory");
    for (int i = 0; st == DF_OK && i < n; i++) {
        const char *token = df_clip_tokenizer_added_token(t, ids[i]);
        bool seen = false;
        for (int j = 0; j < i && !seen; j++) seen = ids[j] == ids[i];
        if (!token || seen) continue;
        /* "token token_1 token_2 ..." while token_<i> is an added token */
        size_t cap = strlen(token) + 1, len = strlen(token);
        char *rep = malloc(cap), name[DF_EMBED_MAX_TOKEN + 16];
        if (!rep) {
            st = df_error(DF_ERR_NOMEM, "out of memory");
            break;
        }
        memcpy(rep, token, len + 1);
        for (int k = 1;; k++) {
            snprintf(name, sizeof name, "%s_%d", token, k);
            int id = df_clip_tokenizer_token_id(t, name);
            if (id < df_clip_tokenizer_vocab_size(t)) break; /* absent, or not an added token */
            size_t ln = strlen(name);
            char *grown = realloc(rep, len + ln + 2);
            if (!grown) {
                st = df_error(DF_ERR_NOMEM, "out of memory");
                break;
            }
            rep = grown;
            rep[len++] = ' ';
            memcpy(rep + len, name, ln + 1);
            len += ln;
        }
        if (st == DF_OK && strcmp(rep, token) != 0) {
            char *next = replace_all(cur, token, rep);
            if (!next)
                st = df_error(DF_ERR_NOMEM, "out of memory");
            else {
                free(cur);
                cur = next;
            }
        }
        free(rep);
    }
    free(ids);
    if (st != DF_OK) {
        free(cur);
        return st;
    }
    *out = cur;
    return DF_OK;
}
