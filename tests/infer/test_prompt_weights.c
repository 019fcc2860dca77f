/* test_prompt_weights.c — A1111 prompt syntax, 75-token chunks and the weighted text embedding
 * (infer/prompt_weights.c): a parser table, chunking with the shipped CLIP tokenizer, bit
 * equality of an unweighted one-chunk prompt with the plain tokenizer + text encoder path, and
 * parity of clip_skip and the weighting with transformers (tests/ref/gen_prompt_embeds.py on
 * the clip_text_tiny fixture).
 */
#include "infer/infer.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_DIR DF_SOURCE_DIR "/models/clip-tokenizer"

typedef struct seg_case {
    const char *prompt;
    int n;
    struct {
        const char *text;
        double weight; /* -1: BREAK */
    } segs[4];
} seg_case;

static const double UP = 1.1, DOWN = 1 / 1.1;

/* The rules of docs/prompts.md, case by case. */
static const seg_case cases[] = {
    {"a photo", 1, {{"a photo", 1}}},
    {"", 1, {{"", 1}}},
    {"a (b) c", 3, {{"a ", 1}, {"b", UP}, {" c", 1}}},
    {"(b:1.5)", 1, {{"b", 1.5}}},
    {"[b]", 1, {{"b", DOWN}}},
    {"((b))", 1, {{"b", UP *UP}}},
    {"[[b]]", 1, {{"b", DOWN *DOWN}}},
    {"(a (b:2) c)", 3, {{"a ", UP}, {"b", 2 * UP}, {" c", UP}}},
    {"([a] b)", 2, {{"a", DOWN *UP}, {" b", UP}}},
    {"\\(a\\) \\[b\\] c\\\\d", 1, {{"(a) [b] c\\d", 1}}},
    {"a \\ b", 1, {{"a  b", 1}}},
    {"a ( b", 2, {{"a ", 1}, {" b", UP}}},
    {"a ) b ]", 1, {{"a ) b ]", 1}}},
    {"a ] [b", 2, {{"a ] ", 1}, {"b", DOWN}}},
    {"a:b", 1, {{"a:b", 1}}},
    {"a:1.2) b", 1, {{"a:1.2) b", 1}}},
    {"(a: 0.5 )", 1, {{"a", 0.5}}},
    {"(a:-1)", 1, {{"a", -1}}},
    {"(a:+.5)", 1, {{"a", 0.5}}},
    {"(a:1.2.3)", 1, {{"a:1.2.3", UP}}},
    {"(a:.)", 1, {{"a:.", UP}}},
    {"[a:0.5]", 1, {{"a:0.5", DOWN}}},
    {"(a)(b)", 1, {{"ab", UP}}},
    {"(a:1.1) (b)", 3, {{"a", 1.1}, {" ", 1}, {"b", UP}}},
    {"a BREAK b", 3, {{"a", 1}, {"BREAK", -1}, {"b", 1}}},
    {"aBREAK b BREAKs", 1, {{"aBREAK b BREAKs", 1}}},
    {"(a BREAK b)", 3, {{"a", UP}, {"BREAK", -1}, {"b", UP}}},
    {"((a:2)", 1, {{"a", 2 * UP}}},
};

Test(infer_prompt_weights, parse_attention_table) {
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const seg_case *k = &cases[c];
        df_prompt_segment *s;
        int n;
        cr_assert_eq(df_prompt_parse_attention(k->prompt, &s, &n), DF_OK);
        cr_assert_eq(n, k->n, "'%s': %d segments, want %d", k->prompt, n, k->n);
        for (int i = 0; i < n; i++) {
            cr_assert_str_eq(s[i].text, k->segs[i].text, "'%s' segment %d", k->prompt, i);
            cr_assert(fabs(s[i].weight - k->segs[i].weight) < 1e-12,
                      "'%s' segment %d: weight %.17g, want %.17g", k->prompt, i, s[i].weight,
                      k->segs[i].weight);
            cr_assert_eq(s[i].is_break,
                         k->segs[i].weight == -1 && !strcmp(k->segs[i].text, "BREAK"));
        }
        df_prompt_segments_free(s, n);
    }
}

static df_clip_tokenizer *tok(void) {
    df_clip_tokenizer *t;
    cr_assert_eq(df_clip_tokenizer_load(TOK_DIR, &t), DF_OK, "%s", df_last_error());
    return t;
}

Test(infer_prompt_weights, chunks) {
    df_clip_tokenizer *t = tok();
    int cat = df_clip_tokenizer_token_id(t, "cat</w>");
    /* plain: equal to the tokenizer's call */
    const char *plain = "a photo of a cat, highly detailed, 8k";
    df_prompt_tokens p;
    cr_assert_eq(df_prompt_tokens_parse(t, plain, 1, &p), DF_OK);
    int64_t want[77];
    cr_assert_eq(df_clip_tokenizer_call(t, plain, 0, want, NULL), DF_OK);
    cr_assert_eq(p.n_chunks, 1);
    cr_assert_eq(p.length, 77);
    for (int i = 0; i < 77; i++) {
        cr_assert_eq(p.ids[i], want[i]);
        cr_assert_eq(p.weights[i], 1.0f);
    }
    df_prompt_tokens_free(&p);
    /* 100 "cat"s, the last 30 weighted: chunks of 75 + 25 */
    char text[1024] = "";
    for (int i = 0; i < 70; i++) strcat(text, "cat ");
    strcat(text, "(");
    for (int i = 0; i < 30; i++) strcat(text, "cat ");
    strcat(text, ":1.5)");
    cr_assert_eq(df_prompt_tokens_parse(t, text, 1, &p), DF_OK);
    cr_assert_eq(p.n_chunks, 2);
    for (int c = 0; c < 2; c++) {
        const int64_t *ids = p.ids + c * 77;
        const float *w = p.weights + c * 77;
        int n = c == 0 ? 75 : 25;
        cr_assert_eq(ids[0], 49406);
        cr_assert_eq(w[0], 1.0f);
        for (int i = 1; i <= n; i++) {
            cr_assert_eq(ids[i], cat);
            int token = c * 75 + i - 1;
            cr_assert_eq(w[i], token < 70 ? 1.0f : 1.5f, "chunk %d token %d", c, i);
        }
        cr_assert_eq(ids[n + 1], 49407);
        for (int i = n + 2; i < 77; i++) cr_assert(ids[i] == 49407 && w[i] == 1.0f);
    }
    /* the negative prompt padded to the same count; then once more by df_prompt_tokens_pad */
    df_prompt_tokens neg;
    cr_assert_eq(df_prompt_tokens_parse(t, "blurry", p.n_chunks, &neg), DF_OK);
    cr_assert_eq(neg.n_chunks, 2);
    cr_assert_eq(neg.ids[77], 49406);
    cr_assert_eq(neg.ids[78], 49407);
    cr_assert_eq(neg.ids[79], 49407);
    cr_assert_eq(df_prompt_tokens_pad(t, &neg, 3), DF_OK);
    cr_assert_eq(neg.n_chunks, 3);
    cr_assert_eq(neg.ids[2 * 77], 49406);
    df_prompt_tokens_free(&neg);
    df_prompt_tokens_free(&p);
    /* exactly 75 tokens: one chunk; BREAK: a new chunk, an empty one at the start */
    text[0] = 0;
    for (int i = 0; i < 75; i++) strcat(text, "cat ");
    cr_assert_eq(df_prompt_tokens_parse(t, text, 0, &p), DF_OK);
    cr_assert_eq(p.n_chunks, 1);
    cr_assert_eq(p.ids[76], 49407);
    df_prompt_tokens_free(&p);
    cr_assert_eq(df_prompt_tokens_parse(t, "BREAK cat BREAK cat", 0, &p), DF_OK);
    cr_assert_eq(p.n_chunks, 3);
    cr_assert(p.ids[1] == 49407 && p.ids[78] == cat && p.ids[79] == 49407 && p.ids[155] == cat);
    df_prompt_tokens_free(&p);
    /* a 10,000-character prompt */
    char *big = malloc(10001);
    for (int i = 0; i < 10000; i++) big[i] = "(cat) dog, "[i % 11];
    big[10000] = 0;
    cr_assert_eq(df_prompt_tokens_parse(t, big, 0, &p), DF_OK);
    cr_assert_eq(p.n_chunks, 37); /* 909 x (cat, dog, ','), then cat, d */
    df_prompt_tokens_free(&p);
    free(big);
    /* invalid UTF-8 is the tokenizer's error */
    expect_status(df_prompt_tokens_parse(t, "(caf\xc3)", 1, &p), DF_ERR_INVALID, "UTF-8");
    cr_assert_eq(p.n_chunks, 0);
    cr_assert_null(p.ids);
    df_clip_tokenizer_free(t);
}

/* A random CLIPTextModel with CLIP's vocabulary and 77 positions (small widths). */
static void random_clip(df_clip_text *m) {
    df_clip_text_config c = df_clip_text_config_default();
    c.vocab_size = 49408;
    c.hidden_size = 16;
    c.intermediate_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.max_position_embeddings = 77;
    df_philox g;
    df_philox_init(&g, 7, 0);
    cr_assert_eq(df_clip_text_init(m, &c, (df_init){&g, false}), DF_OK, "%s", df_last_error());
}

Test(infer_prompt_weights, unweighted_chunk_is_bit_equal_to_the_plain_path) {
    df_clip_tokenizer *t = tok();
    df_clip_text m;
    random_clip(&m);
    const char *prompt = "an astronaut riding a horse on mars, highly detailed";
    df_scope s = df_scope_begin();
    int64_t ids[77];
    cr_assert_eq(df_clip_tokenizer_call(t, prompt, 0, ids, NULL), DF_OK);
    df_tensor *want =
        df_clip_text_forward(&m, df_from_data(DF_DTYPE_I64, DF_DIMS(1, 77), ids), NULL, NULL);
    df_prompt_tokens p;
    cr_assert_eq(df_prompt_tokens_parse(t, prompt, 1, &p), DF_OK);
    df_tensor *got;
    cr_assert_eq(df_prompt_embed(&m, &p, 0, &got), DF_OK, "%s", df_last_error());
    cr_assert(df_tensor_same_shape(got, want));
    cr_assert_eq(memcmp(got->data, want->data, (size_t)want->numel * sizeof(float)), 0,
                 "not bit-equal");
    /* two chunks: the concatenation of the two plain runs */
    df_prompt_tokens_pad(t, &p, 2);
    cr_assert_eq(df_prompt_embed(&m, &p, 0, &got), DF_OK);
    cr_assert_eq(got->shape[1], 154);
    cr_assert_eq(memcmp(got->data, want->data, (size_t)want->numel * sizeof(float)), 0);
    /* errors */
    expect_status(df_prompt_embed(&m, &p, 3, &got), DF_ERR_INVALID, "clip_skip 3");
    expect_status(df_prompt_embed(&m, &p, -1, &got), DF_ERR_INVALID, "clip_skip -1");
    p.ids[5] = 49408;
    expect_status(df_prompt_embed(&m, &p, 0, &got), DF_ERR_INVALID, "id 49408");
    df_prompt_tokens_free(&p);
    df_scope_end(s);
    df_clip_text_free(&m);
    df_clip_tokenizer_free(t);
}

Test(infer_prompt_weights, clip_skip_and_weights_equal_transformers) {
    df_component comp;
    fixture_component("clip_text_tiny", &comp);
    const char *fx = "prompts/clip_text_tiny_embeds.safetensors";
    df_scope s = df_scope_begin();
    df_tensor *ids = fixture_tensor(fx, "input_ids"), *w = fixture_tensor(fx, "weights");
    cr_assert_eq(ids->shape[0], 2);
    int64_t len = ids->shape[1], d = comp.clip_text->config.hidden_size;
    df_prompt_tokens p = {2, malloc((size_t)(2 * len) * sizeof(int64_t)),
                          malloc((size_t)(2 * len) * sizeof(float)), (int)len};
    for (int64_t i = 0; i < 2 * len; i++) p.ids[i] = (int64_t)df_tensor_get(ids, i);
    for (int k = 0; k <= 2; k++) {
        char name[32];
        for (int64_t i = 0; i < 2 * len; i++) p.weights[i] = 1;
        df_tensor *got;
        cr_assert_eq(df_prompt_embed(comp.clip_text, &p, k, &got), DF_OK, "%s", df_last_error());
        snprintf(name, sizeof name, "clip_skip.%d", k);
        df_tensor *want = df_reshape(fixture_tensor(fx, name), DF_DIMS(1, 2 * len, d));
        check_close(name, got, want, 1e-5, 1e-4);
        for (int64_t i = 0; i < 2 * len; i++) p.weights[i] = df_f32(w)[i];
        cr_assert_eq(df_prompt_embed(comp.clip_text, &p, k, &got), DF_OK);
        snprintf(name, sizeof name, "weighted.%d", k);
        want = df_reshape(fixture_tensor(fx, name), DF_DIMS(1, 2 * len, d));
        check_close(name, got, want, 1e-5, 1e-4);
    }
    df_prompt_tokens_free(&p);
    df_scope_end(s);
    df_component_free(&comp);
}
