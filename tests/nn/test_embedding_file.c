/* test_embedding_file.c — textual-inversion embedding files (nn/embedding_file.c): the files of
 * tests/fixtures/ti (written by tests/ref/gen_textual_inversion.py) in every format read with
 * their tokens and vectors; learned_embeds.safetensors written and read back; and the negative
 * cases, each a one-line error naming the file: pickles (by name and by bytes), not safetensors,
 * several tensors, integers, 3-D, too many vectors. */
#include "nn/embedding_file.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[256];

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_embed_XXXXXX");
    cr_assert(mkdtemp(root));
}

static void teardown(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(nn_embedding_file, .init = setup, .fini = teardown);

static void read_ok(const char *name, const char *token, df_embed_format fmt, int64_t k) {
    df_embed e;
    cr_assert_eq(df_embed_read(fixture_path(name), &e), DF_OK, "%s", df_last_error());
    cr_expect_str_eq(e.token, token);
    cr_expect_eq(e.format, fmt, "%s", name);
    cr_expect_eq(e.vectors->ndim, 2);
    cr_expect_eq(e.vectors->shape[0], k, "%s", name);
    cr_expect_eq(e.vectors->shape[1], 32, "%s", name);
    df_embed_free(&e);
}

Test(nn_embedding_file, reads_every_format) {
    read_ok("ti/cat.safetensors", "<cat>", DF_EMBED_DIFFUSERS, 1);
    read_ok("ti/dog.safetensors", "<dog>", DF_EMBED_DIFFUSERS, 3);
    read_ok("ti/zqstyle.safetensors", "zqstyle", DF_EMBED_A1111, 2); /* emb_params: the stem */
    read_ok("ti/a1111.safetensors", "zqold", DF_EMBED_A1111, 2);     /* the metadata's name */
}

Test(nn_embedding_file, learned_embeds_round_trip) {
    df_tensor *v = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(2, 5));
    for (int i = 0; i < 10; i++) df_f32(v)[i] = 0.25f * (float)i - 1;
    char path[400];
    snprintf(path, sizeof path, "%s/learned_embeds.safetensors", root);
    cr_assert_eq(df_embed_save(path, "<emo>", v), DF_OK, "%s", df_last_error());
    df_embed e;
    cr_assert_eq(df_embed_read(path, &e), DF_OK, "%s", df_last_error());
    cr_expect_str_eq(e.token, "<emo>");
    cr_expect(e.vectors->shape[0] == 2 && e.vectors->shape[1] == 5);
    cr_expect_eq(memcmp(df_f32(e.vectors), df_f32(v), 10 * sizeof(float)), 0);
    df_embed_free(&e);
    df_tensor_free(v);
}

/* Writes bytes to root/name and expects df_embed_read to fail with `want` in a one-line
 * message that names the file. */
static void expect_refused(const char *name, const void *bytes, size_t n, const char *want) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s", root, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
    df_embed e;
    df_status st = df_embed_read(path, &e);
    cr_expect_neq(st, DF_OK, "%s was accepted", name);
    cr_expect(strstr(df_last_error(), name) != NULL, "%s: %s", name, df_last_error());
    cr_expect(strstr(df_last_error(), want) != NULL, "%s: %s (want '%s')", name, df_last_error(),
              want);
    cr_expect(strchr(df_last_error(), '\n') == NULL, "%s", df_last_error());
}

/* A safetensors file of the given tensors written by df_st_save into root/name. */
static void write_st(const char *name, int n, const char *const *names, df_tensor *const *ts) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s", root, name);
    cr_assert_eq(df_st_save(path, n, names, (const df_tensor *const *)ts, 0, NULL, NULL), DF_OK,
                 "%s", df_last_error());
}

static void expect_st_refused(const char *name, const char *want) {
    char path[400];
    snprintf(path, sizeof path, "%s/%s", root, name);
    df_embed e;
    cr_expect_neq(df_embed_read(path, &e), DF_OK, "%s was accepted", name);
    cr_expect(strstr(df_last_error(), want) != NULL, "%s: %s (want '%s')", name, df_last_error(),
              want);
    cr_expect(strstr(df_last_error(), name) != NULL, "%s", df_last_error());
}

Test(nn_embedding_file, bad_files_are_one_line_errors) {
    static const unsigned char pickle[] = {0x80, 0x02, 'c', 't', 'o', 'r', 'c', 'h'};
    expect_refused("learned_embeds.bin", pickle, sizeof pickle, "pickle");
    expect_refused("emb.pt", "anything", 8, "pickle");
    expect_refused("disguised.safetensors", pickle, sizeof pickle, "pickle");
    expect_refused("zip.safetensors", "PK\x03\x04rest", 8, "pickle");
    expect_refused("junk.safetensors", "\x08\0\0\0\0\0\0\0{}", 10, "junk.safetensors");

    df_tensor *a = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(4)),
              *b = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(4));
    memset(a->data, 0, 16);
    memset(b->data, 0, 16);
    const char *two[2] = {"<a>", "<b>"};
    df_tensor *ab[2] = {a, b};
    write_st("two.safetensors", 2, two, ab);
    expect_st_refused("two.safetensors", "2 tensors");

    df_tensor *ints = df_tensor_new_owned(DF_DTYPE_I64, DF_DIMS(4));
    memset(ints->data, 0, 32);
    const char *one[1] = {"<i>"};
    write_st("ints.safetensors", 1, one, &ints);
    expect_st_refused("ints.safetensors", "not floats");

    df_tensor *cube = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(2, 2, 2));
    memset(cube->data, 0, 32);
    write_st("cube.safetensors", 1, one, &cube);
    expect_st_refused("cube.safetensors", "3 dimensions");

    df_tensor *many = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(DF_EMBED_MAX_VECTORS + 1, 2));
    memset(many->data, 0, sizeof(float) * (DF_EMBED_MAX_VECTORS + 1) * 2);
    write_st("many.safetensors", 1, one, &many);
    expect_st_refused("many.safetensors", "76 vectors");

    df_embed e;
    char path[400];
    snprintf(path, sizeof path, "%s/absent.safetensors", root);
    cr_expect_eq(df_embed_read(path, &e), DF_ERR_IO);
    df_tensor *all[] = {a, b, ints, cube, many};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) df_tensor_free(all[i]);
}

Test(nn_embedding_file, memory_reads_name_the_label) {
    size_t n;
    FILE *f = fopen(fixture_path("ti/zqstyle.safetensors"), "rb");
    cr_assert(f);
    static char buf[4096];
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    df_embed e;
    cr_assert_eq(df_embed_read_memory(buf, n, "dir/mine.safetensors", &e), DF_OK, "%s",
                 df_last_error());
    cr_expect_str_eq(e.token, "mine");
    df_embed_free(&e);
    cr_expect_neq(df_embed_read_memory(buf, n / 2, "dir/cut.safetensors", &e), DF_OK);
    cr_expect(strstr(df_last_error(), "cut.safetensors") != NULL, "%s", df_last_error());
}
