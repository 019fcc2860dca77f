/* prompt_weights.c — prompts beyond 77 tokens and A1111's attention syntax: parsing
 * `(word:1.3)`, `(word)`, `[word]`, escapes and BREAK into weighted segments, tokenizing them
 * into 75-token chunks wrapped in start / end tokens, and encoding the chunks with the CLIP text
 * encoder with A1111's weighting. docs/prompts.md states the rules; they follow
 * AUTOMATIC1111's stable-diffusion-webui (modules/prompt_parser.py parse_prompt_attention and
 * modules/sd_hijack_clip.py), with the differences listed there.
 */
#include "infer/infer.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- parsing */

typedef struct seg_list {
    df_prompt_segment *v;
    int n, cap;
} seg_list;

static df_status seg_push(seg_list *l, const char *text, size_t len, double weight, bool is_break) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        df_prompt_segment *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return df_error(DF_ERR_NOMEM, "prompt: out of memory");
        l->v = v, l->cap = cap;
    }
    char *t = malloc(len + 1);
    if (!t) return df_error(DF_ERR_NOMEM, "prompt: out of memory");
    memcpy(t, text, len);
    t[len] = 0;
    l->v[l->n++] = (df_prompt_segment){t, weight, is_break};
    return DF_OK;
}

static bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* \w for \b: ASCII letters, digits, '_', and any non-ASCII byte (letters of other scripts). */
static bool is_word(char c) {
    return isalnum((unsigned char)c) || c == '_' || (unsigned char)c >= 0x80;
}

/* A plain text run [s, s + n): re.split(r"\s*\bBREAK\b\s*") with a BREAK segment between the
 * parts. */
static df_status push_text(seg_list *l, const char *s, size_t n) {
    size_t start = 0, i = 0;
    while (i + 5 <= n) {
        if (memcmp(s + i, "BREAK", 5) == 0 && (i == 0 || !is_word(s[i - 1])) &&
            (i + 5 == n || !is_word(s[i + 5]))) {
            size_t a = i, b = i + 5;
            while (a > start && is_space(s[a - 1])) a--;
            while (b < n && is_space(s[b])) b++;
            DF_TRY(seg_push(l, s + start, a - start, 1.0, false));
            DF_TRY(seg_push(l, "BREAK", 5, -1.0, true));
            start = i = b;
        } else {
            i++;
        }
    }
    return seg_push(l, s + start, n - start, 1.0, false);
}

/* `:\s*([+-]?[.\d]+)\s*\)` at p[0] == ':': the match length and the weight, or 0 when it does
 * not match or the number does not parse (A1111's float() would raise there). */
static size_t weight_close(const char *p, double *w) {
    size_t i = 1;
    while (is_space(p[i])) i++;
    size_t ns = i;
    if (p[i] == '+' || p[i] == '-') i++;
    size_t ds = i;
    while (p[i] == '.' || isdigit((unsigned char)p[i])) i++;
    if (i == ds) return 0;
    size_t ne = i;
    while (is_space(p[i])) i++;
    if (p[i] != ')') return 0;
    char num[64];
    if (ne - ns >= sizeof num) return 0;
    memcpy(num, p + ns, ne - ns);
    num[ne - ns] = 0;
    char *end;
    double v = strtod(num, &end);
    /* Python's float() takes "1.", ".5", "+1.5"; not ".", "1.2.3" */
    if (*end || end == num || !isfinite(v)) return 0;
    *w = v;
    return i + 1;
}

/* BREAK segments keep their -1 (in A1111 a bracket around BREAK scales it too, and the scaled
 * segment is then tokenized as the word "break": a quirk not copied, see docs/prompts.md). */
static void multiply_from(seg_list *l, int from, double m) {
    for (int i = from; i < l->n; i++)
        if (!l->v[i].is_break) l->v[i].weight *= m;
}

df_status df_prompt_parse_attention(const char *prompt, df_prompt_segment **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    seg_list l = {0};
    int *round = NULL, *square = NULL, n_round = 0, n_square = 0;
    size_t len = strlen(prompt);
    df_status st = DF_OK;
    round = malloc((len + 1) * sizeof *round);
    square = malloc((len + 1) * sizeof *square);
    if (!round || !square) {
        st = df_error(DF_ERR_NOMEM, "prompt: out of memory");
        goto fail;
    }
    size_t i = 0;
    while (i < len) {
        const char *p = prompt + i;
        double w;
        size_t wl;
        if (p[0] == '\\') {
            /* \( \) \[ \] \\ : the character; a lone backslash: nothing */
            bool esc = p[1] == '(' || p[1] == ')' || p[1] == '[' || p[1] == ']' || p[1] == '\\';
            if ((st = seg_push(&l, p + 1, esc ? 1 : 0, 1.0, false)) != DF_OK) goto fail;
            i += esc ? 2 : 1;
        } else if (p[0] == '(') {
            round[n_round++] = l.n, i++;
        } else if (p[0] == '[') {
            square[n_square++] = l.n, i++;
        } else if (p[0] == ':' && (wl = weight_close(p, &w)) != 0) {
            if (n_round)
                multiply_from(&l, round[--n_round], w);
            else if ((st = push_text(&l, p, wl)) != DF_OK) /* no open bracket: literal text */
                goto fail;
            i += wl;
        } else if (p[0] == ')' && n_round) {
            multiply_from(&l, round[--n_round], 1.1), i++;
        } else if (p[0] == ']' && n_square) {
            multiply_from(&l, square[--n_square], 1 / 1.1), i++;
        } else if (p[0] == ')' || p[0] == ']' || p[0] == ':') {
            if ((st = push_text(&l, p, 1)) != DF_OK) goto fail;
            i++;
        } else {
            size_t k = i;
            while (k < len && !strchr("\\()[]:", prompt[k])) k++;
            if ((st = push_text(&l, p, k - i)) != DF_OK) goto fail;
            i = k;
        }
    }
    /* unclosed brackets apply from where they opened, innermost last as A1111 loops */
    for (int k = 0; k < n_round; k++) multiply_from(&l, round[k], 1.1);
    for (int k = 0; k < n_square; k++) multiply_from(&l, square[k], 1 / 1.1);
    if (l.n == 0 && (st = seg_push(&l, "", 0, 1.0, false)) != DF_OK) goto fail;
    /* merge neighbours of equal weight */
    int k = 0;
    while (k + 1 < l.n) {
        df_prompt_segment *a = &l.v[k], *b = &l.v[k + 1];
        if (a->weight == b->weight && !a->is_break && !b->is_break) {
            size_t la = strlen(a->text), lb = strlen(b->text);
            char *t = realloc(a->text, la + lb + 1);
            if (!t) {
                st = df_error(DF_ERR_NOMEM, "prompt: out of memory");
                goto fail;
            }
            memcpy(t + la, b->text, lb + 1);
            a->text = t;
            free(b->text);
            memmove(b, b + 1, (size_t)(l.n - k - 2) * sizeof *b);
            l.n--;
        } else {
            k++;
        }
    }
    free(round);
    free(square);
    *out = l.v;
    *n_out = l.n;
    return DF_OK;
fail:
    free(round);
    free(square);
    df_prompt_segments_free(l.v, l.n);
    return st;
}

void df_prompt_segments_free(df_prompt_segment *segs, int n) {
    if (!segs) return;
    for (int i = 0; i < n; i++) free(segs[i].text);
    free(segs);
}

/* ---------------------------------------------------------------- chunks */

/* Appends one chunk: bos, the tokens, eos, then pad up to length (weights 1 but the tokens'). */
static df_status add_chunk(df_prompt_tokens *p, const df_clip_tokenizer *t, const int32_t *tok,
                           const float *w, int n) {
    int len = p->length;
    int64_t *ids = realloc(p->ids, (size_t)(p->n_chunks + 1) * (size_t)len * sizeof *ids);
    if (ids) p->ids = ids;
    float *ws = realloc(p->weights, (size_t)(p->n_chunks + 1) * (size_t)len * sizeof *ws);
    if (ws) p->weights = ws;
    if (!ids || !ws) return df_error(DF_ERR_NOMEM, "prompt: out of memory");
    int64_t *ci = p->ids + (size_t)p->n_chunks * (size_t)len;
    float *cw = p->weights + (size_t)p->n_chunks * (size_t)len;
    ci[0] = df_clip_tokenizer_bos(t), cw[0] = 1;
    for (int i = 0; i < n; i++) ci[1 + i] = tok[i], cw[1 + i] = w[i];
    ci[n + 1] = df_clip_tokenizer_eos(t), cw[n + 1] = 1;
    for (int i = n + 2; i < len; i++) ci[i] = df_clip_tokenizer_pad(t), cw[i] = 1;
    p->n_chunks++;
    return DF_OK;
}

df_status df_prompt_tokens_parse(df_clip_tokenizer *t, const char *prompt, int min_chunks,
                                 df_prompt_tokens *out) {
    memset(out, 0, sizeof *out);
    out->length = df_clip_tokenizer_max_length(t);
    const int per = out->length - 2; /* 75 */
    df_prompt_segment *segs = NULL;
    int n_segs = 0;
    int32_t *cur = malloc((size_t)per * sizeof *cur), *ids = NULL;
    float *cur_w = malloc((size_t)per * sizeof *cur_w);
    int n_cur = 0;
    df_status st;
    if (!cur || !cur_w) {
        st = df_error(DF_ERR_NOMEM, "prompt: out of memory");
        goto fail;
    }
    if ((st = df_prompt_parse_attention(prompt, &segs, &n_segs)) != DF_OK) goto fail;
    for (int s = 0; s < n_segs; s++) {
        if (segs[s].is_break) { /* closes the chunk, even an empty one */
            if ((st = add_chunk(out, t, cur, cur_w, n_cur)) != DF_OK) goto fail;
            n_cur = 0;
            continue;
        }
        int n;
        if ((st = df_clip_tokenizer_encode(t, segs[s].text, &ids, &n)) != DF_OK) goto fail;
        for (int k = 0; k < n; k++) {
            if (n_cur == per) {
                if ((st = add_chunk(out, t, cur, cur_w, n_cur)) != DF_OK) goto fail;
                n_cur = 0;
            }
            cur[n_cur] = ids[k];
            cur_w[n_cur++] = (float)segs[s].weight;
        }
        free(ids);
        ids = NULL;
    }
    if (n_cur || out->n_chunks == 0)
        if ((st = add_chunk(out, t, cur, cur_w, n_cur)) != DF_OK) goto fail;
    if ((st = df_prompt_tokens_pad(t, out, min_chunks)) != DF_OK) goto fail;
    st = DF_OK;
    goto done;
fail:
    df_prompt_tokens_free(out);
done:
    df_prompt_segments_free(segs, n_segs);
    free(ids);
    free(cur);
    free(cur_w);
    return st;
}

df_status df_prompt_tokens_pad(const df_clip_tokenizer *t, df_prompt_tokens *p, int n_chunks) {
    while (p->n_chunks < n_chunks) DF_TRY(add_chunk(p, t, NULL, NULL, 0));
    return DF_OK;
}

void df_prompt_tokens_free(df_prompt_tokens *p) {
    if (!p) return;
    free(p->ids);
    free(p->weights);
    memset(p, 0, sizeof *p);
}

/* ---------------------------------------------------------------- embedding */

df_status df_prompt_embed(df_clip_text *te, const df_prompt_tokens *p, int clip_skip,
                          df_tensor **out) {
    *out = NULL;
    const int layers = te->config.num_hidden_layers;
    if (clip_skip < 0 || clip_skip > layers)
        return df_error(DF_ERR_INVALID,
                        "clip_skip %d: expected 0 to %d (the text encoder's layers)", clip_skip,
                        layers);
    if (p->n_chunks < 1 || p->length < 2 || p->length > te->config.max_position_embeddings)
        return df_error(DF_ERR_INVALID,
                        "prompt tokens: %d chunks of %d; the text encoder takes 1+ chunks of at "
                        "most %d",
                        p->n_chunks, p->length, te->config.max_position_embeddings);
    int64_t vocab = te->config.vocab_size; /* and the textual-inversion rows after it */
    if (te->added_embedding) vocab += te->added_embedding->shape[0];
    for (int64_t i = 0; i < (int64_t)p->n_chunks * p->length; i++)
        if (p->ids[i] < 0 || p->ids[i] >= vocab)
            return df_error(
                DF_ERR_INVALID,
                "prompt tokens: id %lld is outside the text encoder's vocabulary (%lld)",
                (long long)p->ids[i], (long long)vocab);
    bool grad = df_grad_set_enabled(false);
    df_scope scope = df_scope_begin();
    df_tensor **chunks = malloc((size_t)p->n_chunks * sizeof *chunks);
    df_tensor *hs[DF_CLIP_MAX_LAYERS + 1];
    if (!chunks) {
        df_scope_end(scope);
        df_grad_set_enabled(grad);
        return df_error(DF_ERR_NOMEM, "prompt: out of memory");
    }
    const int64_t len = p->length;
    for (int c = 0; c < p->n_chunks; c++) {
        df_tensor *ids = df_from_data(DF_DTYPE_I64, DF_DIMS(1, len), p->ids + (size_t)c * len);
        df_tensor *z = df_clip_text_forward(te, ids, clip_skip ? hs : NULL, NULL);
        /* diffusers (v0.22's clip_skip): hidden_states[-(clip_skip + 1)] through final_layer_norm */
        if (clip_skip) z = df_norm_mod_forward(&te->final_layer_norm, hs[layers - clip_skip]);
        const float *w = p->weights + (size_t)c * len;
        bool all_one = true;
        for (int64_t i = 0; i < len; i++) all_one &= w[i] == 1.0f;
        if (!all_one) {
            /* A1111: z * w per token, then z * (mean before / mean after) over the chunk */
            z = df_tensor_clone(z);
            float *d = df_f32(z);
            int64_t dim = z->shape[2];
            double before = 0, after = 0;
            for (int64_t i = 0; i < len * dim; i++) before += d[i];
            for (int64_t i = 0; i < len; i++)
                for (int64_t k = 0; k < dim; k++) d[i * dim + k] *= w[i];
            for (int64_t i = 0; i < len * dim; i++) after += d[i];
            float ratio =
                (float)(before / (double)(len * dim)) / (float)(after / (double)(len * dim));
            if (after != 0) /* a zero mean (all weights 0): no rescale rather than NaN */
                for (int64_t i = 0; i < len * dim; i++) d[i] *= ratio;
        }
        chunks[c] = z;
    }
    df_tensor *res = p->n_chunks == 1 ? chunks[0] : df_concat(chunks, p->n_chunks, 1);
    free(chunks);
    *out = df_scope_end_keep(scope, res);
    df_grad_set_enabled(grad);
    return DF_OK;
}
