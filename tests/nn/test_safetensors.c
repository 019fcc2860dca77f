/* test_safetensors.c — the safetensors reader and writer (nn/safetensors.c) and sharded sets
 * (nn/safetensors_index.c): round trips of every dtype, files written by Python
 * (tests/ref/gen_safetensors.py) and by the safetensors package (a tiny CLIPTextModel), and one
 * malformed file per rule of design.md §10, each built byte by byte in a temp directory and
 * required to fail with DF_ERR_FORMAT naming the file and the reason.
 */
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ temp files ---------------- */

static char tmp_dir[256];
static char tmp_files[64][512];
static int n_tmp_files;

static void tmp_init(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/df_st_test_XXXXXX");
    cr_assert(mkdtemp(tmp_dir), "mkdtemp failed");
    n_tmp_files = 0;
}

static void tmp_fini(void) {
    for (int i = 0; i < n_tmp_files; i++) unlink(tmp_files[i]);
    rmdir(tmp_dir);
}

TestSuite(nn_safetensors, .init = tmp_init, .fini = tmp_fini);

/* A path inside the temp directory (removed at the end of the test). */
static const char *tmp_path(const char *name) {
    cr_assert(n_tmp_files < 64);
    char *p = tmp_files[n_tmp_files++];
    snprintf(p, 512, "%s/%s", tmp_dir, name);
    return p;
}

static const char *write_raw(const char *name, const void *buf, size_t n) {
    const char *p = tmp_path(name);
    FILE *fp = fopen(p, "wb");
    cr_assert(fp, "cannot create %s", p);
    cr_assert(fwrite(buf, 1, n, fp) == n);
    fclose(fp);
    return p;
}

/* A file: u64 LE header length `hlen` (the header's size when hlen < 0), the header bytes, then
 * `data` bytes counting 0, 1, 2, ... */
static const char *write_st_len(const char *name, int64_t hlen, const char *header, size_t hsize,
                                size_t data) {
    size_t n = 8 + hsize + data;
    uint8_t *buf = malloc(n);
    uint64_t len = hlen < 0 ? (uint64_t)hsize : (uint64_t)hlen;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, header, hsize);
    for (size_t i = 0; i < data; i++) buf[8 + hsize + i] = (uint8_t)i;
    const char *p = write_raw(name, buf, n);
    free(buf);
    return p;
}

static const char *write_st(const char *name, const char *header, size_t data) {
    return write_st_len(name, -1, header, strlen(header), data);
}

/* Opening `path` fails with `want`, leaves *out NULL, and the message names the file and holds
 * `reason`. */
static void expect_bad(const char *path, df_status want, const char *reason) {
    df_st_file *f = (df_st_file *)1;
    df_status s = df_st_open(path, &f);
    const char *msg = df_last_error();
    cr_assert_eq(s, want, "%s: got %s (%s), expected %s", path, df_status_name(s), msg,
                 df_status_name(want));
    cr_assert_null(f);
    cr_assert(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    cr_assert(strstr(msg, reason) != NULL, "message lacks '%s': %s", reason, msg);
}

static const df_st_file *open_ok(const char *path) {
    df_st_file *f = NULL;
    df_status s = df_st_open(path, &f);
    cr_assert_eq(s, DF_OK, "%s", df_last_error());
    return f;
}

/* ------------------------------------------------------------------ round trips -------------- */

Test(nn_safetensors, round_trip_every_dtype) {
    df_scope sc = df_scope_begin();
    const df_dtype dts[] = {DF_DTYPE_F32, DF_DTYPE_BF16, DF_DTYPE_F16, DF_DTYPE_F64,
                            DF_DTYPE_I32, DF_DTYPE_I64,  DF_DTYPE_U8};
    enum { ND = sizeof dts / sizeof dts[0] };
    df_tensor *ts[ND + 2];
    const char *names[ND + 2] = {"w.f32",   "w.bf16",  "w.f16",  "w.f64", "ids.i32",
                                 "ids.i64", "mask.u8", "scalar", "empty"};
    df_tensor *src = randn_tensor(7, DF_DIMS(2, 3, 5));
    for (int i = 0; i < ND; i++) {
        if (df_dtype_is_float(dts[i])) {
            ts[i] = df_tensor_to(src, dts[i]);
        } else {
            ts[i] = df_tensor_new(dts[i], DF_DIMS(3, 7));
            for (int64_t k = 0; k < 21; k++) {
                double v =
                    dts[i] == DF_DTYPE_U8 ? (double)(k * 13 % 256) : (double)(k * 1000 - 9000);
                df_tensor_fill_(df_tensor_view(ts[i], 1, (int64_t[]){1}, k), v);
            }
        }
    }
    ts[ND] = df_full(DF_DTYPE_F32, 0, NULL, -2.5);
    ts[ND + 1] = df_zeros(DF_DTYPE_F32, DF_DIMS(0, 4));
    const char *mk[] = {"step", "note"}, *mv[] = {"12", "quote \" backslash \\ tab \t é"};
    const char *path = tmp_path("all.safetensors");
    cr_assert_eq(df_st_save(path, ND + 2, names, (const df_tensor *const *)ts, 2, mk, mv), DF_OK,
                 "%s", df_last_error());

    df_st_file *f = (df_st_file *)open_ok(path);
    cr_assert_eq(df_st_count(f), ND + 2);
    cr_assert_str_eq(df_st_metadata(f, "format"), "pt");
    cr_assert_str_eq(df_st_metadata(f, "step"), "12");
    cr_assert_str_eq(df_st_metadata(f, "note"), mv[1]);
    cr_assert_null(df_st_metadata(f, "absent"));
    cr_assert_eq(df_st_metadata_count(f), 3);
    /* data order is the order given */
    for (int i = 0; i < ND + 2; i++) cr_assert_str_eq(df_st_info_at(f, i)->name, names[i]);
    for (int i = 0; i < ND + 2; i++) {
        const df_st_info *info = df_st_find(f, names[i]);
        cr_assert(info, "%s missing", names[i]);
        cr_assert(info->supported);
        cr_assert_eq(info->dtype, ts[i]->dtype, "%s", names[i]);
        cr_assert_str_eq(info->dtype_name, df_dtype_name(ts[i]->dtype));
        cr_assert_eq(info->ndim, ts[i]->ndim);
        for (int d = 0; d < info->ndim; d++) cr_assert_eq(info->shape[d], ts[i]->shape[d]);
        cr_assert_eq(info->numel, ts[i]->numel);
        size_t bytes = (size_t)ts[i]->numel * df_dtype_size(ts[i]->dtype);
        cr_assert_eq(info->end - info->begin, bytes);
        cr_assert(bytes == 0 || memcmp(df_st_data(f, info), ts[i]->data, bytes) == 0,
                  "%s: bytes differ", names[i]);
        df_tensor *r;
        cr_assert_eq(df_st_read(f, names[i], ts[i]->dtype, &r), DF_OK, "%s", df_last_error());
        cr_assert(df_tensor_same_shape(r, ts[i]));
        cr_assert(bytes == 0 || memcmp(r->data, ts[i]->data, bytes) == 0, "%s", names[i]);
    }
    /* the scalar came back as a 0-d tensor with its value */
    df_tensor *s;
    cr_assert_eq(df_st_read(f, "scalar", DF_DTYPE_F64, &s), DF_OK);
    cr_assert_eq(s->ndim, 0);
    cr_assert_eq(s->numel, 1);
    cr_assert_float_eq(df_tensor_get(s, 0), -2.5, 0);
    df_st_close(f);
    df_scope_end(sc);
}

Test(nn_safetensors, header_is_padded_to_8_and_format_default) {
    df_tensor *t = df_ones(DF_DTYPE_F32, DF_DIMS(3));
    const char *name = "x";
    const char *path = tmp_path("pad.safetensors");
    cr_assert_eq(df_st_save(path, 1, &name, (const df_tensor *const *)&t, 0, NULL, NULL), DF_OK);
    FILE *fp = fopen(path, "rb");
    uint8_t b[8];
    cr_assert_eq(fread(b, 1, 8, fp), 8u);
    fclose(fp);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | b[i];
    cr_assert_eq(n % 8, 0u, "header length %llu", (unsigned long long)n);
    df_st_file *f = (df_st_file *)open_ok(path);
    cr_assert_str_eq(df_st_metadata(f, "format"), "pt");
    cr_assert_eq(((uintptr_t)df_st_data(f, df_st_find(f, "x"))) % 8, 0u);
    df_st_close(f);
    /* a caller's "format" replaces the default */
    const char *k = "format", *v = "flax";
    cr_assert_eq(df_st_save(path, 1, &name, (const df_tensor *const *)&t, 1, &k, &v), DF_OK);
    f = (df_st_file *)open_ok(path);
    cr_assert_str_eq(df_st_metadata(f, "format"), "flax");
    cr_assert_eq(df_st_metadata_count(f), 1);
    df_st_close(f);
    df_tensor_free(t);
}

Test(nn_safetensors, empty_file_list_round_trips) {
    const char *path = tmp_path("none.safetensors");
    cr_assert_eq(df_st_save(path, 0, NULL, NULL, 0, NULL, NULL), DF_OK);
    df_st_file *f = (df_st_file *)open_ok(path);
    cr_assert_eq(df_st_count(f), 0);
    cr_assert_null(df_st_find(f, "x"));
    df_st_close(f);
}

Test(nn_safetensors, read_converts_dtypes) {
    df_scope sc = df_scope_begin();
    df_tensor *x = randn_tensor(3, DF_DIMS(4, 5));
    df_tensor *ids = df_arange(DF_DTYPE_I64, -5, 15, 1);
    const char *names[] = {"x", "ids"};
    const df_tensor *ts[] = {df_tensor_to(x, DF_DTYPE_BF16), ids};
    const char *path = tmp_path("conv.safetensors");
    cr_assert_eq(df_st_save(path, 2, names, ts, 0, NULL, NULL), DF_OK);
    df_st_file *f = (df_st_file *)open_ok(path);

    /* BF16 -> F32 is exact on BF16 values; F32 -> BF16 -> F32 is within BF16's 2^-8 */
    df_tensor *r;
    cr_assert_eq(df_st_read(f, "x", DF_DTYPE_F32, &r), DF_OK);
    check_close("bf16 as f32", r, df_tensor_to(ts[0], DF_DTYPE_F32), 0, 0);
    check_close("bf16 as f32 vs source", r, x, 1e-6, 1.0 / 256);
    cr_assert_eq(df_st_read(f, "x", DF_DTYPE_F16, &r), DF_OK);
    cr_assert_eq(r->dtype, DF_DTYPE_F16);
    check_close("bf16 as f16", r, x, 1e-3, 1.0 / 128);

    /* into an existing tensor: I64 -> I32 and I64 -> F32 */
    df_tensor *i32 = df_zeros(DF_DTYPE_I32, DF_DIMS(20));
    cr_assert_eq(df_st_read_into(f, "ids", i32), DF_OK, "%s", df_last_error());
    for (int64_t i = 0; i < 20; i++) cr_assert_eq(((int32_t *)i32->data)[i], (int32_t)(i - 5));
    df_tensor *f32 = df_zeros(DF_DTYPE_F32, DF_DIMS(20));
    cr_assert_eq(df_st_read_into(f, "ids", f32), DF_OK);
    check_close("i64 into f32", f32, df_arange(DF_DTYPE_F32, -5, 15, 1), 0, 0);

    /* errors: shape mismatch, absent name, float read as int */
    df_tensor *wrong = df_full(DF_DTYPE_F32, DF_DIMS(5, 4), 9.0);
    cr_assert_eq(df_st_read_into(f, "x", wrong), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "[4, 5]") && strstr(df_last_error(), "[5, 4]"), "%s",
              df_last_error());
    cr_assert_float_eq(df_tensor_get(wrong, 0), 9.0, 0, "dst touched on failure");
    cr_assert_eq(df_st_read(f, "nope", DF_DTYPE_F32, &r), DF_ERR_NOTFOUND);
    cr_assert_null(r);
    cr_assert(strstr(df_last_error(), path) && strstr(df_last_error(), "'nope'"));
    cr_assert_eq(df_st_read(f, "x", DF_DTYPE_I32, &r), DF_ERR_INVALID);
    df_st_close(f);
    df_scope_end(sc);
}

Test(nn_safetensors, save_replaces_a_mapped_file_safely) {
    df_scope sc = df_scope_begin();
    /* big enough to span many pages, so reading drops whole pages of the mapping */
    df_tensor *a = randn_tensor(11, DF_DIMS(256, 1024));
    const char *name = "w";
    const char *path = tmp_path("replace.safetensors");
    cr_assert_eq(df_st_save(path, 1, &name, (const df_tensor *const *)&a, 0, NULL, NULL), DF_OK);
    df_st_file *old = (df_st_file *)open_ok(path);
    df_tensor *r1;
    cr_assert_eq(df_st_read(old, "w", DF_DTYPE_F32, &r1), DF_OK);
    check_close("first read", r1, a, 0, 0);

    /* overwrite while `old` is mapped: `old` still reads the old values, the path the new */
    df_tensor *b = df_full(DF_DTYPE_F32, DF_DIMS(256, 1024), 0.5);
    cr_assert_eq(df_st_save(path, 1, &name, (const df_tensor *const *)&b, 0, NULL, NULL), DF_OK);
    df_tensor *r2 = df_zeros(DF_DTYPE_F32, DF_DIMS(256, 1024));
    cr_assert_eq(df_st_read_into(old, "w", r2), DF_OK);
    check_close("second read of the old mapping", r2, a, 0, 0);
    cr_assert(memcmp(df_st_data(old, df_st_find(old, "w")), a->data, (size_t)a->numel * 4) == 0);
    df_st_close(old);
    df_st_file *f = (df_st_file *)open_ok(path);
    cr_assert_eq(df_st_read_into(f, "w", r2), DF_OK);
    check_close("new file", r2, b, 0, 0);
    df_st_close(f);

    /* no temporary file is left in the folder */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", tmp_dir);
    cr_assert_eq(system(cmd), 0, "stray files in %s", tmp_dir);
    df_scope_end(sc);
}

Test(nn_safetensors, read_into_scalar) {
    df_tensor *s = df_full(DF_DTYPE_F64, 0, NULL, 0.1);
    const char *name = "s";
    const char *path = tmp_path("s.safetensors");
    cr_assert_eq(df_st_save(path, 1, &name, (const df_tensor *const *)&s, 0, NULL, NULL), DF_OK);
    df_st_file *f = (df_st_file *)open_ok(path);
    df_tensor *d = df_zeros(DF_DTYPE_F32, 0, NULL);
    cr_assert_eq(df_st_read_into(f, "s", d), DF_OK);
    cr_assert_float_eq(df_f32(d)[0], 0.1f, 0);
    df_tensor *one = df_zeros(DF_DTYPE_F32, DF_DIMS(1));
    cr_assert_eq(df_st_read_into(f, "s", one), DF_ERR_INVALID, "[] must not match [1]");
    df_st_close(f);
    df_tensor_free(s);
    df_tensor_free(d);
    df_tensor_free(one);
}

/* ------------------------------------------------------------------ files from Python --------- */

#define PYFILE "safetensors/python_dtypes.safetensors"

Test(nn_safetensors, reads_python_written_dtypes) {
    df_scope sc = df_scope_begin();
    df_st_file *f = fixture_open(PYFILE);
    cr_assert_eq(df_st_count(f), 13);
    cr_assert_str_eq(df_st_metadata(f, "note"), "written by gen_safetensors.py");
    /* base = arange(12) * 0.25 - 1, exact in every float dtype */
    df_tensor *want = df_tensor_new(DF_DTYPE_F32, DF_DIMS(3, 4));
    for (int i = 0; i < 12; i++) df_f32(want)[i] = (float)i * 0.25f - 1.0f;
    const char *floats[] = {"f32", "f64", "f16", "bf16"};
    for (int i = 0; i < 4; i++)
        check_close(floats[i], fixture_tensor(PYFILE, floats[i]), want, 0, 0);
    cr_assert_eq(df_st_find(f, "bf16")->dtype, DF_DTYPE_BF16);

    df_tensor *i64 = fixture_tensor(PYFILE, "i64");
    cr_assert_eq(i64->dtype, DF_DTYPE_I64);
    const int64_t w64[] = {-3, 0, 5, (int64_t)1 << 40, -((int64_t)1 << 40), 7};
    for (int i = 0; i < 6; i++) cr_assert_eq(((int64_t *)i64->data)[i], w64[i]);
    df_tensor *i32 = fixture_tensor(PYFILE, "i32");
    cr_assert_eq(((int32_t *)i32->data)[0], -7);
    cr_assert_eq(((int32_t *)i32->data)[2], INT32_MAX);
    df_tensor *u8 = fixture_tensor(PYFILE, "u8");
    cr_assert_eq(((uint8_t *)u8->data)[3], 255);

    df_tensor *s = fixture_tensor(PYFILE, "scalar");
    cr_assert_eq(s->ndim, 0);
    cr_assert_float_eq(df_f32(s)[0], 3.5f, 0);
    df_tensor *e = fixture_tensor(PYFILE, "empty");
    cr_assert_eq(e->ndim, 2);
    cr_assert_eq(e->numel, 0);
    df_tensor *d5 = fixture_tensor(PYFILE, "f32_5d");
    cr_assert_eq(d5->ndim, 5);
    cr_assert_eq(d5->shape[2], 3);
    check_close_f32("5d", df_f32(d5), df_f32(df_arange(DF_DTYPE_F32, 0, 12, 1)), 12, 0, 0);

    /* I8 and BOOL validate but do not read; 6 dims validate but do not fit a df_tensor */
    const df_st_info *i8 = df_st_find(f, "i8");
    cr_assert(!i8->supported);
    cr_assert_eq(i8->dtype, DF_DTYPE_COUNT);
    cr_assert_str_eq(i8->dtype_name, "I8");
    cr_assert_eq(i8->end - i8->begin, 3u);
    cr_assert_eq(((const int8_t *)df_st_data(f, i8))[0], -128);
    cr_assert_str_eq(df_st_find(f, "bool")->dtype_name, "BOOL");
    df_tensor *r;
    cr_assert_eq(df_st_read(f, "bool", DF_DTYPE_U8, &r), DF_ERR_UNSUPPORTED);
    cr_assert(strstr(df_last_error(), "BOOL"));
    const df_st_info *d6 = df_st_find(f, "f32_6d");
    cr_assert_eq(d6->ndim, 6);
    cr_assert_eq(d6->shape[5], 2);
    cr_assert_eq(df_st_read(f, "f32_6d", DF_DTYPE_F32, &r), DF_ERR_UNSUPPORTED);
    df_scope_end(sc);
}

#define CLIP "safetensors/clip_text_tiny.safetensors"

Test(nn_safetensors, reads_every_tensor_of_a_real_model_file) {
    df_scope sc = df_scope_begin();
    df_st_file *f = fixture_open(CLIP);
    cr_assert_eq(df_st_count(f), 36);
    cr_assert_str_eq(df_st_metadata(f, "format"), "pt");
    int64_t total = 0;
    for (int i = 0; i < df_st_count(f); i++) {
        const df_st_info *info = df_st_info_at(f, i);
        cr_assert_eq(info->dtype, DF_DTYPE_F32);
        df_tensor *t = fixture_tensor(CLIP, info->name);
        cr_assert_eq(t->numel, info->numel);
        total += (int64_t)(info->end - info->begin);
    }
    cr_assert_eq(total, 202656 - 8 - 3992);
    /* values as torch reads them */
    df_tensor *emb = fixture_tensor(CLIP, "text_model.embeddings.token_embedding.weight");
    cr_assert_eq(emb->shape[0], 1000);
    cr_assert_eq(emb->shape[1], 32);
    const float emb_want[] = {0.00259565376f, -0.000348147005f, 0.00775003899f};
    check_close_f32("token_embedding[0,:3]", df_f32(emb), emb_want, 3, 0, 1e-7);
    check_close_f32("token_embedding[-1]", df_f32(emb) + emb->numel - 1,
                    (const float[]){-0.000562398927f}, 1, 0, 1e-7);
    df_tensor *ln = fixture_tensor(CLIP, "text_model.final_layer_norm.weight");
    const float ln_want[] = {1.03723609f, 0.966362298f, 0.994389653f};
    check_close_f32("final_layer_norm.weight[:3]", df_f32(ln), ln_want, 3, 0, 1e-7);
    double sum = 0;
    for (int64_t i = 0; i < ln->numel; i++) sum += df_f32(ln)[i];
    check_close_f32("final_layer_norm.weight sum", (const float[]){(float)sum},
                    (const float[]){32.01028f}, 1, 0, 1e-6);
    df_scope_end(sc);
}

/* ------------------------------------------------------------------ writer errors ------------ */

Test(nn_safetensors, save_reports_io_errors) {
    df_tensor *t = df_ones(DF_DTYPE_F32, DF_DIMS(1024));
    const char *name = "x";
    df_status s = df_st_save("/dev/full", 1, &name, (const df_tensor *const *)&t, 0, NULL, NULL);
    cr_assert_eq(s, DF_ERR_IO);
    cr_assert(strstr(df_last_error(), "/dev/full") && strstr(df_last_error(), "No space left"),
              "%s", df_last_error());
    const char *bad = tmp_path("no/such/dir.safetensors");
    cr_assert_eq(df_st_save(bad, 1, &name, (const df_tensor *const *)&t, 0, NULL, NULL), DF_ERR_IO);
    cr_assert(strstr(df_last_error(), bad) && strstr(df_last_error(), "No such file"));
    const char *names2[] = {"a", "a"};
    const df_tensor *ts2[] = {t, t};
    cr_assert_eq(df_st_save(tmp_path("dup.safetensors"), 2, names2, ts2, 0, NULL, NULL),
                 DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "'a' given twice"));
    const char *meta_name = "__metadata__";
    cr_assert_eq(df_st_save(tmp_path("m.safetensors"), 1, &meta_name, (const df_tensor *const *)&t,
                            0, NULL, NULL),
                 DF_ERR_INVALID);
    df_tensor_free(t);
}

/* ------------------------------------------------------------------ one bad file per rule ----- */

#define T_A "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"

Test(nn_safetensors, rejects_short_files) {
    expect_bad(write_raw("empty", "", 0), DF_ERR_FORMAT, "too short");
    expect_bad(write_raw("five", "\x10\0\0\0\0", 5), DF_ERR_FORMAT, "too short");
}

Test(nn_safetensors, rejects_header_length_over_limit) {
    expect_bad(write_st_len("huge", 100000001, "{}", 2, 0), DF_ERR_FORMAT, "exceeds the limit");
    expect_bad(write_raw("max64", "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10), DF_ERR_FORMAT,
               "exceeds the limit");
}

Test(nn_safetensors, rejects_header_length_beyond_file) {
    expect_bad(write_st_len("beyond", 100, "{}", 2, 0), DF_ERR_FORMAT, "runs past the end");
}

Test(nn_safetensors, rejects_invalid_utf8) {
    expect_bad(write_st("utf8", "{\"a\xff\":{}}", 0), DF_ERR_FORMAT, "not valid UTF-8");
    expect_bad(write_st("overlong", "{\"a\xc0\xaf\":{}}", 0), DF_ERR_FORMAT, "not valid UTF-8");
    expect_bad(write_st("surrogate", "{\"\xed\xa0\x80\":{}}", 0), DF_ERR_FORMAT, "not valid UTF-8");
    expect_bad(write_st_len("nul", -1, "{}\0 ", 4, 0), DF_ERR_FORMAT, "byte 0x00");
}

Test(nn_safetensors, rejects_non_object_header) {
    expect_bad(write_st("array", "[1,2]", 0), DF_ERR_FORMAT, "not a JSON object");
    expect_bad(write_st("string", "\"x\"", 0), DF_ERR_FORMAT, "not a JSON object");
    expect_bad(write_st("broken", "{\"a\":", 0), DF_ERR_FORMAT, "not valid JSON");
    expect_bad(write_st("blank", "        ", 0), DF_ERR_FORMAT, "not valid JSON");
    expect_bad(write_st("after", "{} x", 0), DF_ERR_FORMAT, "bytes after");
    expect_bad(write_st("entry", "{\"a\":[1]}", 0), DF_ERR_FORMAT, "'a': entry is not an object");
    expect_bad(write_st("bom", "\xef\xbb\xbf{}", 0), DF_ERR_FORMAT, "not a JSON object");
}

Test(nn_safetensors, rejects_missing_fields) {
    expect_bad(write_st("nodt", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4), DF_ERR_FORMAT,
               "tensor 'a': missing dtype");
    expect_bad(write_st("noshape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4),
               DF_ERR_FORMAT, "tensor 'a': missing shape");
    expect_bad(write_st("nooffs", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), DF_ERR_FORMAT,
               "tensor 'a': missing data_offsets");
}

Test(nn_safetensors, rejects_wrong_field_types) {
    expect_bad(write_st("dtnum", "{\"a\":{\"dtype\":1,\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
               DF_ERR_FORMAT, "dtype is not a string");
    expect_bad(
        write_st("shobj", "{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4),
        DF_ERR_FORMAT, "shape is not an array");
    expect_bad(
        write_st("off3", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4),
        DF_ERR_FORMAT, "not an array of 2");
    expect_bad(
        write_st("offneg", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4),
        DF_ERR_FORMAT, "not non-negative integers");
}

Test(nn_safetensors, rejects_unknown_dtype) {
    expect_bad(
        write_st("f128", "{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16),
        DF_ERR_FORMAT, "tensor 'a': unknown dtype 'F128'");
}

Test(nn_safetensors, rejects_bad_shapes) {
    expect_bad(
        write_st("neg", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4),
        DF_ERR_FORMAT, "tensor 'a': shape[0] is not a non-negative integer");
    expect_bad(write_st("frac",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,1.5],\"data_offsets\":[0,12]}}",
                        12),
               DF_ERR_FORMAT, "shape[1] is not a non-negative integer");
    expect_bad(
        write_st("str", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4),
        DF_ERR_FORMAT, "shape[0] is not a non-negative integer");
    expect_bad(
        write_st("big", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,1]}}", 1),
        DF_ERR_FORMAT, "shape[0] is not a non-negative integer");
    expect_bad(write_st("dims9",
                        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                        "\"data_offsets\":[0,1]}}",
                        1),
               DF_ERR_UNSUPPORTED, "9 dims");
}

Test(nn_safetensors, rejects_offsets_not_starting_at_0) {
    expect_bad(
        write_st("start", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
        DF_ERR_FORMAT, "tensor 'a': data does not start at offset 0");
}

Test(nn_safetensors, rejects_gap) {
    expect_bad(write_st("gap",
                        "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":"
                        "[8,12]}}",
                        12),
               DF_ERR_FORMAT,
               "tensor 'b': data_offsets begin at 8 but the previous tensor 'a' "
               "ends at 4 (gap)");
}

Test(nn_safetensors, rejects_overlap) {
    expect_bad(write_st("overlap",
                        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                        8),
               DF_ERR_FORMAT, "(overlap)");
    expect_bad(write_st("same",
                        "{" T_A ",\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":"
                        "[0,4]}}",
                        8),
               DF_ERR_FORMAT, "(overlap)");
}

/* Header order is free (the safetensors package lists names alphabetically and lays data out
 * by alignment), so a header listing offsets out of order is valid; offsets running backwards
 * inside one entry are not. */
Test(nn_safetensors, unsorted_header_is_read_in_data_order) {
    const char *p = write_st("unsorted",
                             "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":"
                             "[4,6]}," T_A "}",
                             6);
    df_st_file *f = (df_st_file *)open_ok(p);
    cr_assert_str_eq(df_st_info_at(f, 0)->name, "a");
    cr_assert_str_eq(df_st_info_at(f, 1)->name, "b");
    df_tensor *b;
    cr_assert_eq(df_st_read(f, "b", DF_DTYPE_U8, &b), DF_OK);
    cr_assert_eq(((uint8_t *)b->data)[0], 4); /* data bytes count 0, 1, 2, ... */
    cr_assert_eq(((uint8_t *)b->data)[1], 5);
    df_tensor_free(b);
    df_st_close(f);
    expect_bad(
        write_st("reversed", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4),
        DF_ERR_FORMAT, "tensor 'a': data_offsets begin 4 > end 0");
}

Test(nn_safetensors, rejects_size_mismatch) {
    expect_bad(
        write_st("mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8),
        DF_ERR_FORMAT, "tensor 'a': size mismatch");
}

Test(nn_safetensors, rejects_numel_overflow) {
    /* 2^53 * 2^53 overflows 64 bits; 2^40 * 2^30 * 8 bytes too */
    expect_bad(write_st("ovf",
                        "{\"a\":{\"dtype\":\"U8\",\"shape\":[9007199254740992,"
                        "9007199254740992],\"data_offsets\":[0,0]}}",
                        0),
               DF_ERR_FORMAT, "tensor 'a': numel * dtype size overflows");
    expect_bad(write_st("ovf2",
                        "{\"a\":{\"dtype\":\"F64\",\"shape\":[1099511627776,1073741824],"
                        "\"data_offsets\":[0,0]}}",
                        0),
               DF_ERR_FORMAT, "overflows");
    /* a zero dim makes a huge shape legal */
    df_st_file *f = (df_st_file *)open_ok(write_st(
        "zero", "{\"a\":{\"dtype\":\"F64\",\"shape\":[9007199254740992,0],\"data_offsets\":[0,0]}}",
        0));
    cr_assert_eq(df_st_find(f, "a")->numel, 0);
    df_st_close(f);
}

Test(nn_safetensors, rejects_trailing_or_missing_data) {
    expect_bad(write_st("trailing", "{" T_A "}", 12), DF_ERR_FORMAT, "trailing bytes");
    expect_bad(write_st("short", "{" T_A "}", 2), DF_ERR_FORMAT, "runs past the end");
    expect_bad(write_st("nodata", "{}", 1), DF_ERR_FORMAT, "trailing bytes");
}

Test(nn_safetensors, rejects_duplicate_keys) {
    expect_bad(write_st("dup", "{" T_A "," T_A "}", 4), DF_ERR_FORMAT,
               "duplicate key 'a' in the header");
    expect_bad(write_st("dupfield",
                        "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F64\",\"shape\":[1],"
                        "\"data_offsets\":[0,4]}}",
                        4),
               DF_ERR_FORMAT, "duplicate key 'dtype' in a");
    expect_bad(write_st("dupmeta", "{\"__metadata__\":{},\"__metadata__\":{}}", 0), DF_ERR_FORMAT,
               "duplicate key '__metadata__'");
    expect_bad(write_st("dupmetakey", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0),
               DF_ERR_FORMAT, "duplicate key 'k' in __metadata__");
}

Test(nn_safetensors, rejects_bad_metadata) {
    expect_bad(write_st("metanum", "{\"__metadata__\":{\"k\":1}}", 0), DF_ERR_FORMAT,
               "__metadata__ value of 'k' is not a string");
    expect_bad(write_st("metaarr", "{\"__metadata__\":[]}", 0), DF_ERR_FORMAT,
               "__metadata__ is not an object");
    expect_bad(write_st("metanull", "{\"__metadata__\":{\"k\":null}}", 0), DF_ERR_FORMAT,
               "value of 'k' is not a string");
}

Test(nn_safetensors, open_reports_missing_file) {
    const char *p = tmp_path("absent.safetensors");
    expect_bad(p, DF_ERR_IO, "No such file");
    expect_bad(tmp_dir, DF_ERR_IO, "not a regular file");
}

Test(nn_safetensors, open_memory_names_the_label) {
    static const uint8_t buf[] = {2, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    df_st_file *f;
    cr_assert_eq(df_st_open_memory(buf, sizeof buf, "mem", &f), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_count(f), 0);
    cr_assert_str_eq(df_st_path(f), "mem");
    df_st_close(f);
    cr_assert_eq(df_st_open_memory(buf, 9, "label-x", &f), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "label-x"));
}

/* ------------------------------------------------------------------ sharded sets ------------- */

static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "w");
    cr_assert(fp);
    fputs(text, fp);
    fclose(fp);
}

Test(nn_safetensors, sharded_set_finds_tensors_across_shards) {
    df_scope sc = df_scope_begin();
    df_tensor *a = randn_tensor(1, DF_DIMS(2, 3)), *b = randn_tensor(2, DF_DIMS(4));
    df_tensor *c = df_arange(DF_DTYPE_I64, 0, 5, 1);
    const char *n1[] = {"a", "b"}, *n2[] = {"c"};
    cr_assert_eq(df_st_save(tmp_path("m-00001-of-00002.safetensors"), 2, n1,
                            (const df_tensor *[]){a, b}, 0, NULL, NULL),
                 DF_OK);
    cr_assert_eq(df_st_save(tmp_path("m-00002-of-00002.safetensors"), 1, n2,
                            (const df_tensor *[]){c}, 0, NULL, NULL),
                 DF_OK);
    const char *ip = tmp_path("m.safetensors.index.json");
    write_text(ip, "{\"metadata\":{\"total_size\":80},\"weight_map\":{"
                   "\"c\":\"m-00002-of-00002.safetensors\",\"a\":\"m-00001-of-00002.safetensors\","
                   "\"b\":\"m-00001-of-00002.safetensors\"}}");

    df_st_index *idx;
    cr_assert_eq(df_st_index_open(ip, &idx), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_index_count(idx), 3);
    cr_assert_eq(df_st_index_shard_count(idx), 2);
    cr_assert_str_eq(df_st_index_shard(idx, "a"), "m-00001-of-00002.safetensors");
    cr_assert_null(df_st_index_shard(idx, "z"));
    cr_assert_eq(df_st_index_total_size(idx), 80);
    cr_assert_str_eq(df_st_index_dir(idx), tmp_dir);
    df_st_index_close(idx);

    df_st_set *s;
    cr_assert_eq(df_st_set_open(ip, &s), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_set_count(s), 3);
    cr_assert_eq(df_st_set_file_count(s), 2);
    const df_st_file *f;
    const df_st_info *info = df_st_set_find(s, "c", &f);
    cr_assert(info && strstr(df_st_path(f), "00002"));
    df_tensor *r;
    cr_assert_eq(df_st_set_read(s, "b", DF_DTYPE_F32, &r), DF_OK);
    check_close("b", r, b, 0, 0);
    df_tensor *a2 = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 3));
    cr_assert_eq(df_st_set_read_into(s, "a", a2), DF_OK);
    check_close("a", a2, a, 0, 0);
    cr_assert_eq(df_st_set_read(s, "zz", DF_DTYPE_F32, &r), DF_ERR_NOTFOUND);
    df_st_set_close(s);

    /* a plain file is a set of one */
    cr_assert_eq(df_st_set_open(tmp_files[0], &s), DF_OK);
    cr_assert_eq(df_st_set_count(s), 2);
    df_st_set_close(s);

    /* the index and the shards disagree */
    const char *bad = tmp_path("bad.safetensors.index.json");
    write_text(bad, "{\"weight_map\":{\"a\":\"m-00002-of-00002.safetensors\","
                    "\"c\":\"m-00002-of-00002.safetensors\"}}");
    cr_assert_eq(df_st_set_open(bad, &s), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), bad) && strstr(df_last_error(), "'a'"), "%s",
              df_last_error());
    write_text(bad, "{\"weight_map\":{\"c\":\"../m-00002-of-00002.safetensors\"}}");
    cr_assert_eq(df_st_set_open(bad, &s), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "not a shard file name"), "%s", df_last_error());
    write_text(bad, "{\"weight_map\":{\"c\":\"m-00002-of-00002.safetensors\"}}");
    cr_assert_eq(df_st_set_open(bad, &s), DF_OK, "%s", df_last_error());
    df_st_set_close(s);
    write_text(bad, "{\"weight_map\":[]}");
    cr_assert_eq(df_st_index_open(bad, &idx), DF_ERR_FORMAT);
    df_scope_end(sc);
}

/* Parsing an index from memory fails with DF_ERR_FORMAT naming the file and `reason`. */
static void expect_bad_index(const char *text, const char *reason) {
    df_st_index *idx = (df_st_index *)1;
    df_status s = df_st_index_parse(text, strlen(text), "x/m.safetensors.index.json", &idx);
    cr_assert_eq(s, DF_ERR_FORMAT, "%s: %s", text, df_last_error());
    cr_assert_null(idx);
    cr_assert(strstr(df_last_error(), "x/m.safetensors.index.json"), "%s", df_last_error());
    cr_assert(strstr(df_last_error(), reason), "lacks '%s': %s", reason, df_last_error());
}

Test(nn_safetensors, rejects_bad_index_files) {
    expect_bad_index("", "not valid JSON");
    expect_bad_index("[]", "not a JSON object");
    expect_bad_index("{\"weight_map\":{}} x", "bytes after");
    expect_bad_index("{}", "weight_map is missing");
    expect_bad_index("{\"weight_map\":{\"a\":1}}", "weight_map['a'] is not a shard file name");
    expect_bad_index("{\"weight_map\":{\"a\":\"/etc/passwd\"}}", "not a shard file name");
    expect_bad_index("{\"weight_map\":{\"a\":\"\"}}", "not a shard file name");
    expect_bad_index("{\"weight_map\":{\"a\":\"s1\",\"a\":\"s2\"}}", "duplicate key 'a'");
    expect_bad_index("{\"metadata\":3,\"weight_map\":{}}", "metadata is not an object");
    df_st_index *idx;
    const char *ok = "{\"weight_map\":{\"b\":\"s2\",\"a\":\"s1\",\"c\":\"s2\"}}";
    cr_assert_eq(df_st_index_parse(ok, strlen(ok), "m.safetensors.index.json", &idx), DF_OK);
    cr_assert_str_eq(df_st_index_dir(idx), ".");
    cr_assert_eq(df_st_index_total_size(idx), -1);
    cr_assert_eq(df_st_index_shard_count(idx), 2);
    cr_assert_str_eq(df_st_index_shard_at(idx, 0), "s2");
    cr_assert_str_eq(df_st_index_shard(idx, "a"), "s1");
    const char *name, *shard;
    df_st_index_at(idx, 2, &name, &shard);
    cr_assert_str_eq(name, "c");
    df_st_index_close(idx);
}

/* issue 23: a NUL inside a tensor name would be cut silently (two names could become one) */
Test(nn_safetensors, nul_in_a_name_is_an_error) {
    expect_bad(write_st("nul.safetensors",
                        "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                        4),
               DF_ERR_FORMAT, "NUL");
    const df_st_file *f = open_ok(
        write_st("bs.safetensors",
                 "{\"a\\\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4));
    cr_assert(df_st_find(f, "a\\u0000b"), "an escaped backslash is not a NUL");
    df_st_close((df_st_file *)f);
}
