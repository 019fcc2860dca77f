/* test_sd_prompt.c — the pipeline's prompt encoding (infer/sd_prompt.c) on the tiny SD 1-like
 * folder: a plain prompt is bit-equal to tokenizer + text encoder (what the parity runs pin to
 * diffusers' encode_prompt), long prompts and negative prompts get the same chunk count either
 * way round, weights change the embeddings, and clip skip is checked against its range. */
#include "infer/infer.h"
#include "tests/common/check.h"

#include <string.h>

static df_sd_pipeline pipe_;

static void setup(void) {
    cr_assert_eq(df_sd_pipeline_load(fixture_path("pipelines/sd1"), NULL, &pipe_), DF_OK, "%s",
                 df_last_error());
}

static void teardown(void) {
    df_sd_pipeline_free(&pipe_);
}

TestSuite(sd_prompt, .init = setup, .fini = teardown);

/* A prompt of n words. */
static const char *words(int n) {
    static char buf[8192];
    buf[0] = 0;
    for (int i = 0; i < n; i++) strcat(buf, i ? " apple" : "apple");
    return buf;
}

Test(sd_prompt, plain_prompt_is_the_plain_path) {
    df_scope scope = df_scope_begin();
    df_tensor *cond, *uncond;
    cr_assert_eq(
        df_sd_encode_prompt(&pipe_, "a red apple, on a table", "blurry", 0, true, &cond, &uncond),
        DF_OK, "%s", df_last_error());
    const char *texts[] = {"a red apple, on a table", "blurry"};
    df_tensor *got[] = {cond, uncond};
    for (int k = 0; k < 2; k++) {
        df_tensor *ids = df_tensor_new(DF_DTYPE_I64, DF_DIMS(1, 77));
        int64_t mask[77];
        cr_assert_eq(df_clip_tokenizer_call(pipe_.tokenizer, texts[k], 77, ids->data, mask), DF_OK);
        df_tensor *want;
        cr_assert_eq(df_sd_encode_ids(&pipe_, ids, 0, &want), DF_OK, "%s", df_last_error());
        cr_assert(df_tensor_same_shape(got[k], want));
        cr_assert(memcmp(got[k]->data, want->data, sizeof(float) * (size_t)want->numel) == 0,
                  "'%s' differs from tokenizer + text encoder", texts[k]);
    }
    df_scope_end(scope);
}

Test(sd_prompt, chunk_counts_agree) {
    df_scope scope = df_scope_begin();
    df_tensor *cond, *uncond;
    /* 100 tokens: two chunks, and the empty negative prompt gets two */
    cr_assert_eq(df_sd_encode_prompt(&pipe_, words(100), NULL, 0, true, &cond, &uncond), DF_OK);
    cr_assert(cond->shape[1] == 154 && uncond->shape[1] == 154, "%lld, %lld",
              (long long)cond->shape[1], (long long)uncond->shape[1]);
    /* a long negative prompt lengthens the prompt */
    cr_assert_eq(df_sd_encode_prompt(&pipe_, "apple", words(160), 0, true, &cond, &uncond), DF_OK);
    cr_assert(cond->shape[1] == 231 && uncond->shape[1] == 231, "%lld, %lld",
              (long long)cond->shape[1], (long long)uncond->shape[1]);
    /* without guidance no negative prompt is encoded */
    df_tensor *none = NULL;
    cr_assert_eq(df_sd_encode_prompt(&pipe_, "apple", "pear", 0, false, &cond, &none), DF_OK);
    cr_assert_null(none);
    df_scope_end(scope);
}

Test(sd_prompt, weights_and_clip_skip) {
    df_scope scope = df_scope_begin();
    df_tensor *plain, *weighted, *skipped;
    cr_assert_eq(df_sd_encode_prompt(&pipe_, "red apple", NULL, 0, false, &plain, NULL), DF_OK);
    cr_assert_eq(df_sd_encode_prompt(&pipe_, "(red:1.5) apple", NULL, 0, false, &weighted, NULL),
                 DF_OK);
    cr_assert(df_tensor_same_shape(plain, weighted));
    cr_assert(memcmp(plain->data, weighted->data, sizeof(float) * (size_t)plain->numel) != 0,
              "the weight changed nothing");
    cr_assert_eq(df_sd_encode_prompt(&pipe_, "red apple", NULL, 1, false, &skipped, NULL), DF_OK);
    cr_assert(memcmp(plain->data, skipped->data, sizeof(float) * (size_t)plain->numel) != 0);
    df_tensor *x;
    expect_status(df_sd_encode_prompt(&pipe_, "red apple", NULL, 2, false, &x, NULL),
                  DF_ERR_INVALID, "clip skip 2");
    expect_status(df_sd_encode_prompt(&pipe_, "\xff apple", NULL, 0, false, &x, NULL),
                  DF_ERR_INVALID, "UTF-8");
    df_scope_end(scope);
}
