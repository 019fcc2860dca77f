/* test_clip_tokenizer.c — the CLIP tokenizer (nn/tokenizer.h) against transformers v4.33.3's
 * CLIPTokenizer: the 2,356-prompt corpus of tests/fixtures/tokenizer/ (tests/ref/
 * gen_tokenizer_corpus.py), SD 2.x's "!" padding, added tokens, long and bad input, and the
 * negative cases of every file the loader reads.
 */
#include "tests/common/check.h"
#include "nn/tokenizer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOK_DIR DF_SOURCE_DIR "/models/clip-tokenizer"

static df_clip_tokenizer *load_tok(const char *dir) {
    df_clip_tokenizer *t = NULL;
    df_status st = df_clip_tokenizer_load(dir, &t);
    cr_assert_eq(st, DF_OK, "load %s: %s", dir, df_last_error());
    return t;
}

/* Asserts the int array of a JSON list equals got[0..n). */
static void expect_list(const cJSON *list, const int64_t *got, int n, const char *what, int line) {
    cr_assert(cJSON_IsArray(list), "line %d: %s missing", line, what);
    int m = cJSON_GetArraySize(list);
    cr_assert_eq(m, n, "line %d: %s: %d ids, transformers %d", line, what, n, m);
    int i = 0;
    for (const cJSON *it = list->child; it; it = it->next, i++)
        cr_assert_eq(got[i], (int64_t)it->valuedouble, "line %d: %s[%d]: %lld, transformers %d",
                     line, what, i, (long long)got[i], (int)it->valuedouble);
}

/* A tokenizer folder in a scratch directory: the shipped vocab and merges (symlinked) unless
 * given, and the files given (NULL: absent). */
static char scratch[256];

static const char *make_dir(const char *vocab, const char *merges, const char *config,
                            const char *special) {
    snprintf(scratch, sizeof scratch, "/tmp/df_tok_XXXXXX");
    cr_assert(mkdtemp(scratch));
    const char *names[4] = {"vocab.json", "merges.txt", "tokenizer_config.json",
                            "special_tokens_map.json"};
    const char *texts[4] = {vocab, merges, config, special};
    for (int i = 0; i < 4; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", scratch, names[i]);
        if (texts[i]) {
            FILE *f = fopen(p, "wb");
            cr_assert(f);
            fwrite(texts[i], 1, strlen(texts[i]), f);
            fclose(f);
        } else if (i < 2) {
            char src[512];
            snprintf(src, sizeof src, "%s/%s", TOK_DIR, names[i]);
            cr_assert_eq(symlink(src, p), 0);
        }
    }
    return scratch;
}

static void remove_dir(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    cr_assert_eq(system(cmd), 0);
}

/* Loading the folder fails with want and a message holding must_contain. */
static void expect_load_error(const char *vocab, const char *merges, const char *config,
                              const char *special, df_status want, const char *must_contain) {
    const char *dir = make_dir(vocab, merges, config, special);
    df_clip_tokenizer *t = (df_clip_tokenizer *)1;
    expect_status(df_clip_tokenizer_load(dir, &t), want, must_contain);
    cr_assert_null(t);
    remove_dir();
}

Test(infer_clip_tokenizer, corpus_equals_transformers) {
    df_clip_tokenizer *t = load_tok(TOK_DIR);
    cr_assert_eq(df_clip_tokenizer_vocab_size(t), 49408);
    cr_assert_eq(df_clip_tokenizer_bos(t), 49406);
    cr_assert_eq(df_clip_tokenizer_eos(t), 49407);
    cr_assert_eq(df_clip_tokenizer_pad(t), 49407);
    cr_assert_eq(df_clip_tokenizer_max_length(t), 77);
    /* SD 2.x: the same vocabulary, pad "!" */
    char cfg[4096], sp[4096];
    FILE *f = fopen(fixture_path("tokenizer/sd2/tokenizer_config.json"), "rb");
    cr_assert(f);
    cfg[fread(cfg, 1, sizeof cfg - 1, f)] = 0;
    fclose(f);
    f = fopen(fixture_path("tokenizer/sd2/special_tokens_map.json"), "rb");
    cr_assert(f);
    sp[fread(sp, 1, sizeof sp - 1, f)] = 0;
    fclose(f);
    df_clip_tokenizer *t2 = load_tok(make_dir(NULL, NULL, cfg, sp));
    remove_dir();
    cr_assert_eq(df_clip_tokenizer_pad(t2), 0);

    f = fopen(fixture_path("tokenizer/corpus.jsonl"), "rb");
    cr_assert(f, "corpus.jsonl");
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, n_sd2 = 0, n_long = 0;
    int64_t ids[77], mask[77];
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        cJSON *rec = cJSON_Parse(line);
        cr_assert(rec, "line %d: bad JSON", lineno);
        const char *text = cJSON_GetObjectItem(rec, "text")->valuestring;
        /* encode: the ids without bos/eos, not truncated */
        int32_t *v;
        int n;
        df_status st = df_clip_tokenizer_encode(t, text, &v, &n);
        cr_assert_eq(st, DF_OK, "line %d: %s", lineno, df_last_error());
        int64_t *v64 = malloc(((size_t)n + 1) * sizeof *v64);
        for (int i = 0; i < n; i++) v64[i] = v[i];
        expect_list(cJSON_GetObjectItem(rec, "ids"), v64, n, "encode", lineno);
        n_long += n > 75;
        free(v64);
        free(v);
        /* the padded call */
        cr_assert_eq(df_clip_tokenizer_call(t, text, 0, ids, mask), DF_OK);
        const char *m = cJSON_GetObjectItem(rec, "attention_mask")->valuestring;
        cr_assert_eq(strlen(m), 77);
        int real = 0;
        for (int i = 0; i < 77; i++) {
            cr_assert_eq(mask[i], m[i] - '0', "line %d: mask[%d]", lineno, i);
            real += m[i] == '1';
        }
        expect_list(cJSON_GetObjectItem(rec, "input_ids"), ids, real, "input_ids", lineno);
        for (int i = real; i < 77; i++) cr_assert_eq(ids[i], 49407);
        const cJSON *sd2 = cJSON_GetObjectItem(rec, "sd2_ids");
        if (sd2) {
            cr_assert_eq(df_clip_tokenizer_call(t2, text, 77, ids, NULL), DF_OK);
            expect_list(sd2, ids, 77, "sd2 input_ids", lineno);
            cr_assert_eq(df_clip_tokenizer_call(t, text, 10, ids, mask), DF_OK);
            expect_list(cJSON_GetObjectItem(rec, "ids_10"), ids, 10, "max_length 10", lineno);
            n_sd2++;
        }
        cJSON_Delete(rec);
    }
    free(line);
    fclose(f);
    cr_assert_geq(lineno, 2000);
    cr_assert_eq(n_sd2, 300);
    cr_assert_geq(n_long, 100, "%d over-long prompts", n_long);
    df_clip_tokenizer_free(t);
    df_clip_tokenizer_free(t2);
}

Test(infer_clip_tokenizer, added_tokens_equal_transformers) {
    df_clip_tokenizer *t = load_tok(TOK_DIR);
    FILE *f = fopen(fixture_path("tokenizer/added.jsonl"), "rb");
    cr_assert(f);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *rec = cJSON_Parse(line);
        cr_assert(rec);
        if (lineno++ == 0) {
            int k = 0;
            for (const cJSON *it = cJSON_GetObjectItem(rec, "tokens")->child; it; it = it->next) {
                int id;
                cr_assert_eq(df_clip_tokenizer_add_token(t, it->valuestring, &id), DF_OK, "%s",
                             df_last_error());
                cr_assert_eq(id, 49408 + k);
                cr_assert_eq(df_clip_tokenizer_token_id(t, it->valuestring), 49408 + k);
                k++;
            }
            cr_assert_eq(df_clip_tokenizer_len(t), 49408 + k);
            cr_assert_eq(df_clip_tokenizer_vocab_size(t), 49408);
        }
        int32_t *v;
        int n;
        cr_assert_eq(
            df_clip_tokenizer_encode(t, cJSON_GetObjectItem(rec, "text")->valuestring, &v, &n),
            DF_OK);
        int64_t v64[256];
        cr_assert_leq(n, 256);
        for (int i = 0; i < n; i++) v64[i] = v[i];
        expect_list(cJSON_GetObjectItem(rec, "ids"), v64, n, "added", lineno);
        free(v);
        cJSON_Delete(rec);
    }
    free(line);
    fclose(f);
    cr_assert_eq(lineno, 11);
    /* an existing vocab or added token, empty, not UTF-8 */
    expect_status(df_clip_tokenizer_add_token(t, "cat</w>", NULL), DF_ERR_INVALID, "already");
    expect_status(df_clip_tokenizer_add_token(t, "<cat-toy>", NULL), DF_ERR_INVALID, "already");
    expect_status(df_clip_tokenizer_add_token(t, "", NULL), DF_ERR_INVALID, "0 bytes");
    expect_status(df_clip_tokenizer_add_token(t, "\xc3", NULL), DF_ERR_INVALID, "UTF-8");
    cr_assert_eq(df_clip_tokenizer_token_id(t, "<nope>"), -1);
    df_clip_tokenizer_free(t);
}

Test(infer_clip_tokenizer, invalid_utf8_is_an_error) {
    df_clip_tokenizer *t = load_tok(TOK_DIR);
    const char *bad[] = {"\xff",
                         "abc\x80",
                         "\xc0\xaf" /* overlong '/' */,
                         "\xe0\x80\xaf",
                         "\xed\xa0\x80" /* surrogate */,
                         "\xf4\x90\x80\x80",
                         "caf\xc3",
                         "\xe2\x82"};
    int64_t ids[77];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *v = (int32_t *)1;
        int n = -1;
        expect_status(df_clip_tokenizer_encode(t, bad[i], &v, &n), DF_ERR_INVALID,
                      "invalid UTF-8 at byte");
        cr_assert_null(v);
        cr_assert_eq(n, 0);
        expect_status(df_clip_tokenizer_call(t, bad[i], 77, ids, NULL), DF_ERR_INVALID,
                      "invalid UTF-8");
    }
    expect_status(df_clip_tokenizer_call(t, "x", 1, ids, NULL), DF_ERR_INVALID, "max_length 1");
    df_clip_tokenizer_free(t);
}

/* A 10,000-character prompt (one "word", and words) is truncated to 77 and takes no
 * quadratic time: the BPE heap makes a 10,000-byte piece cheap. */
Test(infer_clip_tokenizer, ten_thousand_characters) {
    df_clip_tokenizer *t = load_tok(TOK_DIR);
    char *text = malloc(10001);
    uint64_t s = 12345;
    for (int i = 0; i < 10000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        text[i] = (char)('a' + (s >> 33) % 26);
    }
    text[10000] = 0;
    int64_t ids[77], mask[77];
    for (int pass = 0; pass < 2; pass++) { /* the second from the cache */
        cr_assert_eq(df_clip_tokenizer_call(t, text, 77, ids, mask), DF_OK);
        cr_assert_eq(ids[0], 49406);
        cr_assert_eq(ids[76], 49407);
        cr_assert_eq(mask[76], 1);
    }
    int32_t *v;
    int n;
    cr_assert_eq(df_clip_tokenizer_encode(t, text, &v, &n), DF_OK);
    cr_assert_gt(n, 1000);
    free(v);
    for (int i = 0; i < 10000; i++) text[i] = i % 7 == 6 ? ' ' : text[i];
    cr_assert_eq(df_clip_tokenizer_encode(t, text, &v, &n), DF_OK);
    cr_assert_gt(n, 1000);
    free(v);
    free(text);
    df_clip_tokenizer_free(t);
}

Test(infer_clip_tokenizer, configs) {
    /* pad as an AddedToken object; model_max_length; the special map wins over the config */
    df_clip_tokenizer *t = load_tok(
        make_dir(NULL, NULL, "{\"model_max_length\": 20, \"pad_token\": \"a</w>\"}",
                 "{\"pad_token\": {\"content\": \"!\", \"lstrip\": false}, \"bos_token\": null}"));
    remove_dir();
    cr_assert_eq(df_clip_tokenizer_pad(t), 0);
    cr_assert_eq(df_clip_tokenizer_bos(t), 49406);
    cr_assert_eq(df_clip_tokenizer_max_length(t), 20);
    int64_t ids[20], mask[20];
    cr_assert_eq(df_clip_tokenizer_call(t, "a photo", 0, ids, mask), DF_OK);
    cr_assert_eq(ids[3], 49407);
    cr_assert_eq(ids[4], 0);
    cr_assert_eq(ids[19], 0);
    cr_assert_eq(mask[3], 1);
    cr_assert_eq(mask[4], 0);
    df_clip_tokenizer_free(t);
    /* transformers' "no limit" sentinel leaves 77; no configs at all: the defaults */
    t = load_tok(
        make_dir(NULL, NULL, "{\"model_max_length\": 1000000000000000019884624838656}", NULL));
    remove_dir();
    cr_assert_eq(df_clip_tokenizer_max_length(t), 77);
    cr_assert_eq(df_clip_tokenizer_pad(t), 49407);
    df_clip_tokenizer_free(t);

    expect_load_error(NULL, NULL, "{\"model_max_length\": 1}", NULL, DF_ERR_FORMAT,
                      "tokenizer_config.json: field 'model_max_length'");
    expect_load_error(NULL, NULL, "{\"model_max_length\": \"77\"}", NULL, DF_ERR_FORMAT,
                      "model_max_length");
    expect_load_error(NULL, NULL, "{\"do_lower_case\": \"yes\"}", NULL, DF_ERR_FORMAT,
                      "do_lower_case");
    expect_load_error(NULL, NULL, "[1]", NULL, DF_ERR_FORMAT, "tokenizer_config.json");
    expect_load_error(NULL, NULL, NULL, "{\"bos_token\": 5}", DF_ERR_FORMAT,
                      "special_tokens_map.json: field 'bos_token'");
    expect_load_error(NULL, NULL, NULL, "{\"pad_token\": {\"content\": 3}}", DF_ERR_FORMAT,
                      "field 'pad_token'");
    expect_load_error(NULL, NULL, NULL, "{\"unk_token\": \"<unk>\"}", DF_ERR_FORMAT,
                      "the unk token '<unk>' is not in the vocabulary");
    expect_load_error(NULL, NULL, NULL, "{\"unk_token\": \"a\\u0000\"}", DF_ERR_FORMAT, "\\u0000");
    expect_load_error(NULL, NULL, NULL, "{\"eos_token\": ", DF_ERR_FORMAT, "not valid JSON");
}

Test(infer_clip_tokenizer, bad_vocab) {
    expect_load_error("[\"a\"]", NULL, NULL, NULL, DF_ERR_FORMAT,
                      "vocab.json: the top level is not a JSON object");
    expect_load_error("{}", NULL, NULL, NULL, DF_ERR_FORMAT, "0 tokens");
    expect_load_error("{\"a\": 0.5}", NULL, NULL, NULL, DF_ERR_FORMAT,
                      "token 'a': the id must be an integer");
    expect_load_error("{\"a\": \"0\"}", NULL, NULL, NULL, DF_ERR_FORMAT, "must be an integer");
    expect_load_error("{\"a\": 0, \"b\": 2}", NULL, NULL, NULL, DF_ERR_FORMAT, "[0, 2)");
    expect_load_error("{\"a\": 0, \"b\": -1}", NULL, NULL, NULL, DF_ERR_FORMAT, "integer");
    expect_load_error("{\"a\": 0, \"b\": 0}", NULL, NULL, NULL, DF_ERR_FORMAT,
                      "id 0 is given to two tokens");
    expect_load_error("{\"a\": 0, \"a\": 1}", NULL, NULL, NULL, DF_ERR_FORMAT,
                      "token 'a' appears twice");
    expect_load_error("{\"\": 0}", NULL, NULL, NULL, DF_ERR_FORMAT, "empty token");
    expect_load_error("{\"a\\u0000\": 0}", NULL, NULL, NULL, DF_ERR_FORMAT, "\\u0000");
    expect_load_error("{\"a\": 0", NULL, NULL, NULL, DF_ERR_FORMAT, "vocab.json:1: not valid JSON");
    expect_load_error("{\"a\": 0}", NULL, NULL, NULL, DF_ERR_FORMAT, "byte symbol 'Ā' (byte 0x00)");
    /* larger than the limit (a sparse file) */
    const char *dir = make_dir("{}", NULL, NULL, NULL);
    char p[512];
    snprintf(p, sizeof p, "%s/vocab.json", dir);
    cr_assert_eq(truncate(p, (off_t)DF_TOKENIZER_MAX_FILE_BYTES + 1), 0);
    df_clip_tokenizer *t;
    expect_status(df_clip_tokenizer_load(dir, &t), DF_ERR_FORMAT, "larger than");
    snprintf(p, sizeof p, "%s/vocab.json", dir);
    unlink(p);
    expect_status(df_clip_tokenizer_load(dir, &t), DF_ERR_NOTFOUND, "vocab.json: cannot open");
    remove_dir();
}

/* ids of "the" with the real vocabulary and the given merges.txt. */
static int encode_the(const char *merges, int32_t out[4]) {
    df_clip_tokenizer *t = load_tok(make_dir(NULL, merges, NULL, NULL));
    remove_dir();
    int32_t *v;
    int n;
    cr_assert_eq(df_clip_tokenizer_encode(t, "the", &v, &n), DF_OK);
    cr_assert_leq(n, 4);
    memcpy(out, v, (size_t)n * sizeof *v);
    free(v);
    df_clip_tokenizer_free(t);
    return n;
}

Test(infer_clip_tokenizer, merges_file) {
    df_clip_tokenizer *t = load_tok(TOK_DIR);
    int id_t = df_clip_tokenizer_token_id(t, "t"), id_h = df_clip_tokenizer_token_id(t, "h");
    int id_e = df_clip_tokenizer_token_id(t, "e</w>"), id_th = df_clip_tokenizer_token_id(t, "th");
    int id_the = df_clip_tokenizer_token_id(t, "the</w>");
    int id_he = df_clip_tokenizer_token_id(t, "he</w>");
    cr_assert(id_t >= 0 && id_h >= 0 && id_e >= 0 && id_th >= 0 && id_the >= 0 && id_he >= 0);
    df_clip_tokenizer_free(t);
    int32_t v[4];
    /* the header line is skipped */
    cr_assert_eq(encode_the("#version: 0.2\nt h\n", v), 2);
    cr_assert(v[0] == id_th && v[1] == id_e);
    /* without a header, transformers skips the first merge all the same */
    cr_assert_eq(encode_the("t h\n", v), 3);
    cr_assert(v[0] == id_t && v[1] == id_h && v[2] == id_e);
    /* CR LF, blank surroundings */
    cr_assert_eq(encode_the("\n\n#version\r\nt h\r\nth e</w>\r\n\n", v), 1);
    cr_assert_eq(v[0], id_the);
    /* a repeated pair keeps its last rank: "h e</w>" (rank 1) then "t h" again (rank 2) */
    cr_assert_eq(encode_the("#v\nt h\nh e</w>\nt h\n", v), 2);
    cr_assert(v[0] == id_t && v[1] == id_he);
    expect_load_error(NULL, "#version: 0.2\nt h x\n", NULL, NULL, DF_ERR_FORMAT,
                      "merges.txt:2: expected two symbols");
    expect_load_error(NULL, "#version: 0.2\nt h\n\nh e\n", NULL, NULL, DF_ERR_FORMAT,
                      "merges.txt:3: expected two symbols separated by a space, got 0");
    expect_load_error(NULL, "#version: 0.2\nt h\nzz\xc3\xa9q h\n", NULL, NULL, DF_ERR_FORMAT,
                      "merges.txt:3: 'zzéq' (a symbol of the merge) is not in vocab.json");
    expect_load_error(NULL, "#version: 0.2\nq </w>\n", NULL, NULL, DF_ERR_FORMAT,
                      "'</w>' (a symbol of the merge)");
    expect_load_error(NULL, "#version: 0.2\nq x\n", NULL, NULL, DF_ERR_FORMAT,
                      "'qx' (the merged symbol) is not in vocab.json");
    expect_load_error(NULL, "#version\n\xff\xfe\n", NULL, NULL, DF_ERR_FORMAT,
                      "merges.txt: invalid UTF-8 at byte 9");
}

Test(infer_clip_tokenizer, tokenize_command) {
    char out[4096];
    int rc = run_command(DF_CLI " tokenize " TOK_DIR " --max-length 8 'a photo' 'A  PHOTO!'", out,
                         sizeof out);
    cr_assert_eq(rc, 0, "%s", out);
    cr_assert_str_eq(out, "{\"input_ids\": [49406, 320, 1125, 49407, 49407, 49407, 49407, 49407], "
                          "\"attention_mask\": [1, 1, 1, 1, 0, 0, 0, 0]}\n"
                          "{\"input_ids\": [49406, 320, 1125, 256, 49407, 49407, 49407, 49407], "
                          "\"attention_mask\": [1, 1, 1, 1, 1, 0, 0, 0]}\n");
    rc = run_command(DF_CLI " tokenize " TOK_DIR " $(printf 'caf\\303')", out, sizeof out);
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert_str_eq(out, "diffusion: tokenize: text: invalid UTF-8 at byte 3 (0xC3)\n");
    rc = run_command(DF_CLI " tokenize " TOK_DIR " --max-length 1 x", out, sizeof out);
    cr_assert_eq(rc, 2, "%s", out);
    rc = run_command(DF_CLI " tokenize " TOK_DIR, out, sizeof out);
    cr_assert_eq(rc, 2, "%s", out);
}
