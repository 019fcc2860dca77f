/* test_embeddings.c — textual-inversion embeddings in a pipeline (infer/embeddings.c) against
 * diffusers v0.21.4's own load_textual_inversion and maybe_convert_prompt on the tiny SD 1.x
 * pipeline (tests/fixtures/ti/load.safetensors, tests/ref/gen_textual_inversion.py): a one-vector
 * and a three-vector diffusers file, a kohya "emb_params" file and an A1111 "string_to_param"
 * file loaded in turn give the same converted prompts, token ids, last_hidden_state and
 * pooler_output (whose argmax position is an added token's); a token clash names the token and
 * changes nothing; a width mismatch and a missing token are one-line errors; `diffusion generate
 * --embedding` takes the files. */
#include "infer/infer.h"
#include "nn/embedding_file.h"
#include "nn/tokenizer.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOAD "ti/load.safetensors"

static void load_sd1(df_sd_pipeline *p) {
    cr_assert_eq(df_sd_pipeline_load(fixture_path("pipelines/sd1"), NULL, p), DF_OK, "%s",
                 df_last_error());
}

static df_status add_file(df_sd_pipeline *p, const char *name, const char *token) {
    df_embed e;
    char path[1024];
    snprintf(path, sizeof path, "%s", fixture_path(name));
    DF_TRY(df_embed_read(path, &e));
    df_status st = df_sd_add_embedding(p, &e, token, path);
    df_embed_free(&e);
    return st;
}

Test(infer_embeddings, loads_as_load_textual_inversion) {
    df_sd_pipeline p;
    load_sd1(&p);
    cr_assert_eq(add_file(&p, "ti/cat.safetensors", NULL), DF_OK, "%s", df_last_error());
    cr_assert_eq(add_file(&p, "ti/dog.safetensors", NULL), DF_OK, "%s", df_last_error());
    cr_assert_eq(add_file(&p, "ti/zqstyle.safetensors", NULL), DF_OK, "%s", df_last_error());
    cr_assert_eq(add_file(&p, "ti/a1111.safetensors", NULL), DF_OK, "%s", df_last_error());
    char want_len[16];
    snprintf(want_len, sizeof want_len, "%d", df_clip_tokenizer_len(p.tokenizer));
    df_st_file *f;
    cr_assert_eq(df_st_open(fixture_path(LOAD), &f), DF_OK, "%s", df_last_error());
    cr_expect_str_eq(want_len, df_st_metadata(f, "len_tokenizer"));
    df_st_close(f);
    cr_assert_eq(p.added_embedding->shape[0], 1 + 3 + 2 + 2);

    /* a clash: named, and nothing added */
    int before = df_clip_tokenizer_len(p.tokenizer);
    expect_status(add_file(&p, "ti/cat.safetensors", NULL), DF_ERR_INVALID, "'<cat>'");
    expect_status(add_file(&p, "ti/dog.safetensors", "<cat>"), DF_ERR_INVALID, "'<cat>'");
    cr_expect_eq(df_clip_tokenizer_len(p.tokenizer), before);

    df_scope scope = df_scope_begin();
    for (int i = 0; i < 4; i++) {
        char key[64];
        snprintf(key, sizeof key, "prompt%d", i);
        cr_assert_eq(df_st_open(fixture_path(LOAD), &f), DF_OK);
        char *prompt = strdup(df_st_metadata(f, key));
        snprintf(key, sizeof key, "converted%d", i);
        char *converted = strdup(df_st_metadata(f, key));
        df_st_close(f);
        char *got;
        cr_assert_eq(df_prompt_expand_vectors(p.tokenizer, prompt, &got), DF_OK, "%s",
                     df_last_error());
        cr_expect_str_eq(got, converted, "prompt %d", i);
        df_tensor *ids = df_tensor_new(DF_DTYPE_I64, DF_DIMS(1, 77));
        cr_assert_eq(df_clip_tokenizer_call(p.tokenizer, got, 77, ids->data, NULL), DF_OK);
        snprintf(key, sizeof key, "prompt%d.ids", i);
        df_tensor *want_ids = fixture_tensor(LOAD, key);
        cr_expect_eq(memcmp(ids->data, want_ids->data, 77 * sizeof(int64_t)), 0, "%s", key);
        df_tensor *pooled;
        df_tensor *hidden = df_clip_text_forward(p.text_encoder.clip_text, ids, NULL, &pooled);
        snprintf(key, sizeof key, "prompt%d.hidden", i);
        check_close(key, hidden, fixture_tensor(LOAD, key), 1e-5, 1e-5);
        snprintf(key, sizeof key, "prompt%d.pooled", i);
        check_close(key, pooled, fixture_tensor(LOAD, key), 1e-5, 1e-5);
        /* the pipeline's own prompt encoding expands the prompt too */
        df_tensor *cond;
        cr_assert_eq(df_sd_encode_prompt(&p, prompt, NULL, 0, false, &cond, NULL), DF_OK, "%s",
                     df_last_error());
        check_close("encode_prompt", cond, hidden, 0, 0);
        free(got);
        free(prompt);
        free(converted);
    }
    df_scope_end(scope);
    df_sd_pipeline_free(&p);
}

Test(infer_embeddings, bad_embeddings_are_one_line_errors) {
    df_sd_pipeline p;
    load_sd1(&p);
    expect_status(add_file(&p, "ti/wide.safetensors", NULL), DF_ERR_INVALID,
                  "vectors of width 40, the text encoder's is 32");
    cr_expect(strchr(df_last_error(), '\n') == NULL);
    expect_status(add_file(&p, "ti/cat.safetensors", "a"), DF_ERR_INVALID, "'a'");
    df_embed e = {0};
    e.vectors = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(1, 32));
    expect_status(df_sd_add_embedding(&p, &e, NULL, "x.safetensors"), DF_ERR_INVALID,
                  "names no token");
    df_embed_free(&e);
    cr_expect_eq(df_clip_tokenizer_len(p.tokenizer), 49408);
    cr_expect(p.added_embedding == NULL);
    df_sd_pipeline_free(&p);
}

Test(infer_embeddings, generate_takes_embedding_files, .timeout = 120) {
    char cmd[4096], out[8192], dir[] = "/tmp/df_emb_XXXXXX";
    cr_assert(mkdtemp(dir));
    char cat[1024], dog[1024];
    snprintf(cat, sizeof cat, "%s", fixture_path("ti/cat.safetensors"));
    snprintf(dog, sizeof dog, "%s", fixture_path("ti/dog.safetensors"));
    snprintf(cmd, sizeof cmd,
             "%s generate %s --embedding %s --embedding %s:'<hound>' --prompt 'a <cat> and a "
             "<hound>' --steps 2 --out %s/g.png",
             DF_CLI, fixture_path("pipelines/sd1"), cat, dog, dir);
    cr_expect_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "3 vector(s) as '<hound>'") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "%s/g.png", dir);
    cr_expect_eq(access(cmd, F_OK), 0, "no image");
    snprintf(cmd, sizeof cmd,
             "%s generate %s --embedding %s --embedding %s --steps 2 --out %s/h.png", DF_CLI,
             fixture_path("pipelines/sd1"), cat, cat, dir);
    cr_expect_neq(run_command(cmd, out, sizeof out), 0);
    cr_expect(strstr(out, "'<cat>' is already in the tokenizer") != NULL, "%s", out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}
