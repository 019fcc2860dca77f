/* test_convert_folder.c — `diffusion convert DIR OUT_DIR --half|--float`
 * (recipes/convert_folder.c): every float tensor of the fixture SD 2 pipeline comes out as
 * torch's `.to(dtype)` would make it (df_tensor_to, round to nearest even), integer tensors and
 * the other files unchanged; an existing output, a file for input, a non-float dtype and a
 * folder-to-folder call without a dtype are one-line errors that write nothing.
 */
#include "recipes/cli.h"
#include "infer/infer.h"
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const weight_files[] = {"unet/diffusion_pytorch_model.safetensors",
                                           "vae/diffusion_pytorch_model.safetensors",
                                           "text_encoder/model.safetensors"};
static const char *const other_files[] = {"model_index.json", "unet/config.json",
                                          "tokenizer/vocab.json",
                                          "scheduler/scheduler_config.json"};

static void expect_converted(const char *src_dir, const char *dst_dir, df_dtype dt) {
    for (size_t k = 0; k < sizeof weight_files / sizeof *weight_files; k++) {
        char a[4096], b[4096];
        snprintf(a, sizeof a, "%s/%s", src_dir, weight_files[k]);
        snprintf(b, sizeof b, "%s/%s", dst_dir, weight_files[k]);
        df_st_file *fa = NULL, *fb = NULL;
        cr_assert_eq(df_st_open(a, &fa), DF_OK, "%s", df_last_error());
        cr_assert_eq(df_st_open(b, &fb), DF_OK, "%s", df_last_error());
        cr_assert_eq(df_st_count(fa), df_st_count(fb), "%s: tensor count", weight_files[k]);
        df_scope scope = df_scope_begin();
        for (int i = 0; i < df_st_count(fa); i++) {
            const df_st_info *ia = df_st_info_at(fa, i);
            const df_st_info *ib = df_st_find(fb, ia->name);
            cr_assert(ib, "%s: %s missing", weight_files[k], ia->name);
            bool fl = ia->dtype == DF_DTYPE_F32 || ia->dtype == DF_DTYPE_F16 ||
                      ia->dtype == DF_DTYPE_BF16;
            df_dtype want_dt = fl ? dt : ia->dtype;
            cr_assert_eq(ib->dtype, want_dt, "%s: %s dtype", weight_files[k], ia->name);
            df_tensor *orig = NULL;
            cr_assert_eq(df_st_read(fa, ia->name, ia->dtype, &orig), DF_OK);
            df_tensor *want = df_tensor_to(orig, want_dt);
            size_t nb = (size_t)want->numel * df_dtype_size(want_dt);
            cr_assert_eq(ib->end - ib->begin, nb, "%s: %s size", weight_files[k], ia->name);
            cr_assert(memcmp(df_st_data(fb, ib), want->data, nb) == 0, "%s: %s values",
                      weight_files[k], ia->name);
        }
        df_scope_end(scope);
        df_st_close(fa);
        df_st_close(fb);
    }
    for (size_t k = 0; k < sizeof other_files / sizeof *other_files; k++) {
        char a[4096], b[4096];
        snprintf(a, sizeof a, "%s/%s", src_dir, other_files[k]);
        snprintf(b, sizeof b, "%s/%s", dst_dir, other_files[k]);
        size_t na = 0, nb = 0;
        char *ta = read_whole_file(a, &na), *tb = read_whole_file(b, &nb);
        cr_assert(ta && tb && na == nb && memcmp(ta, tb, na) == 0, "%s differs", other_files[k]);
        free(ta);
        free(tb);
    }
}

Test(convert_folder, half_and_back_to_float) {
    const char *src = fixture_path("pipelines/sd2");
    char half[4096], full[4096];
    snprintf(half, sizeof half, "%s/half", scratch_dir_new("convert_folder"));
    snprintf(full, sizeof full, "%s/float", scratch_dir());
    cr_assert_eq(df_convert_folder_dtype(src, half, DF_DTYPE_F16), DF_OK, "%s", df_last_error());
    expect_converted(src, half, DF_DTYPE_F16);
    cr_assert_eq(df_convert_folder_dtype(half, full, DF_DTYPE_F32), DF_OK, "%s", df_last_error());
    expect_converted(half, full, DF_DTYPE_F32);
    /* the pipeline loads and runs from the converted folder */
    df_sd_pipeline p = {0};
    cr_assert_eq(df_sd_pipeline_load(half, NULL, &p), DF_OK, "%s", df_last_error());
    df_sd_pipeline_free(&p);
    scratch_dir_remove();
}

Test(convert_folder, bad_input_writes_nothing) {
    char src[4096], out[4096];
    snprintf(src, sizeof src, "%s", fixture_path("pipelines/sd2")); /* a static buffer */
    snprintf(out, sizeof out, "%s/out", scratch_dir_new("convert_folder_bad"));
    expect_status(df_convert_folder_dtype(src, out, DF_DTYPE_I32), DF_ERR_INVALID, "F32, F16");
    expect_status(
        df_convert_folder_dtype(fixture_path("pipelines/sd2/model_index.json"), out, DF_DTYPE_F16),
        DF_ERR_NOTFOUND, "not a folder");
    struct stat st;
    cr_assert(stat(out, &st) != 0, "nothing written");
    cr_assert_eq(mkdir(out, 0755), 0);
    expect_status(df_convert_folder_dtype(src, out, DF_DTYPE_F16), DF_ERR_INVALID, "exists");
    char cmd[8192], text[4096];
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' '%s/other'", DF_CLI, src, scratch_dir());
    cr_assert_neq(run_command(cmd, text, sizeof text), 0);
    cr_assert(strstr(text, "--half or --float"), "%s", text);
    snprintf(cmd, sizeof cmd, "%s/other", scratch_dir());
    cr_assert(stat(cmd, &st) != 0, "nothing written");
    scratch_dir_remove();
}
