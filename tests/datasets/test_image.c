/* test_image.c — PNG/JPEG decoding equals Pillow on every kind of file (fixtures from
 * tests/ref/gen_images.py), alpha compositing onto a chosen background, grey output, PNG
 * writing with tEXt chunks, and clean errors naming the file for broken input. */
#include "tests/datasets/image_util.h"

static const char *const KINDS[] = {
    "gray1.png",
    "gray2.png",
    "gray4.png",
    "gray8.png",
    "gray16.png",
    "gray8_trns.png",
    "gray_alpha8.png",
    "gray_alpha16.png",
    "palette4.png",
    "palette8.png",
    "palette8_trns.png",
    "rgb8.png",
    "rgb16.png",
    "rgba8.png",
    "rgba16.png",
    "rgb8_interlaced.png",
    "rgba8_interlaced.png",
    "gray2_interlaced.png",
    "palette8_interlaced.png",
    "jpeg_baseline.jpg",
    "jpeg_444.jpg",
    "jpeg_progressive.jpg",
    "jpeg_gray.jpg",
    "jpeg_cmyk.jpg",
};
static const char *const WITH_ALPHA[] = {"gray8_trns",      "gray_alpha8", "gray_alpha16",
                                         "palette8_trns",   "rgba8",       "rgba16",
                                         "rgba8_interlaced"};

static void expect_rel(char *buf, size_t n, const char *file, const char *suffix) {
    const char *dot = strrchr(file, '.');
    snprintf(buf, n, "images/%.*s.%s.bin", (int)(dot - file), file, suffix);
}

Test(datasets_image, decode_equals_pillow_rgb) {
    for (size_t i = 0; i < sizeof KINDS / sizeof *KINDS; i++) {
        char rel[128], exp[160];
        snprintf(rel, sizeof rel, "images/%s", KINDS[i]);
        expect_rel(exp, sizeof exp, KINDS[i], "rgb");
        df_tensor *got;
        cr_assert_eq(df_image_read(fixture_path(rel), NULL, &got), DF_OK, "%s: %s", rel,
                     df_last_error());
        df_tensor *want = load_pixels(exp);
        check_image(KINDS[i], got, want, 0.0);
        df_tensor_free(got);
        df_tensor_free(want);
    }
}

Test(datasets_image, decode_grey_equals_pillow_L) {
    df_decode_opts o = df_decode_opts_default();
    o.channels = 1;
    for (size_t i = 0; i < sizeof KINDS / sizeof *KINDS; i++) {
        char rel[128], exp[160];
        snprintf(rel, sizeof rel, "images/%s", KINDS[i]);
        expect_rel(exp, sizeof exp, KINDS[i], "l");
        df_tensor *got;
        cr_assert_eq(df_image_read(fixture_path(rel), &o, &got), DF_OK, "%s: %s", rel,
                     df_last_error());
        df_tensor *want = load_pixels(exp);
        check_image(KINDS[i], got, want, 0.0);
        df_tensor_free(got);
        df_tensor_free(want);
    }
}

Test(datasets_image, alpha_composited_on_background) {
    df_decode_opts o = df_decode_opts_default();
    o.background[0] = 10, o.background[1] = 200, o.background[2] = 30;
    for (size_t i = 0; i < sizeof WITH_ALPHA / sizeof *WITH_ALPHA; i++) {
        char rel[128], exp[160];
        snprintf(rel, sizeof rel, "images/%s.png", WITH_ALPHA[i]);
        snprintf(exp, sizeof exp, "images/%s.bg.bin", WITH_ALPHA[i]);
        df_tensor *got;
        cr_assert_eq(df_image_read(fixture_path(rel), &o, &got), DF_OK, "%s", df_last_error());
        df_tensor *want = load_pixels(exp);
        check_image(WITH_ALPHA[i], got, want, 0.0);
        df_tensor_free(got);
        df_tensor_free(want);
    }
}

Test(datasets_image, probe_reads_dimensions) {
    char *buf;
    size_t n;
    FILE *f = fopen(fixture_path("images/jpeg_progressive.jpg"), "rb");
    cr_assert(f);
    buf = malloc(1 << 16);
    n = fread(buf, 1, 1 << 16, f);
    fclose(f);
    int w = 0, h = 0;
    cr_assert_eq(df_image_probe(buf, n, "p.jpg", &w, &h), DF_OK);
    cr_assert_eq(w, 37);
    cr_assert_eq(h, 23);
    free(buf);
}

Test(datasets_image, png_write_roundtrip_with_text) {
    const char *dir = temp_dir("pngw");
    char path[600];
    snprintf(path, sizeof path, "%s/out.png", dir);
    for (int c = 1; c <= 4; c++) {
        df_tensor *img = df_tensor_new(DF_DTYPE_U8, DF_DIMS(9, 13, c));
        uint8_t *p = img->data;
        for (int64_t i = 0; i < img->numel; i++) p[i] = (uint8_t)(i * 37 + 11);
        const char *keys[] = {"parameters", "Software"};
        const char *vals[] = {"a red apple\nSteps: 20, Sampler: DDIM, Seed: 42", "diffusion.c"};
        cr_assert_eq(df_png_write(path, img, 2, keys, vals), DF_OK, "%s", df_last_error());
        /* the raw file carries uncompressed tEXt chunks */
        FILE *f = fopen(path, "rb");
        char buf[8192];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        const char want[] = "tEXtparameters\0a red apple\nSteps: 20";
        cr_assert(memmem(buf, n, want, sizeof want - 1), "tEXt chunk not found");
        /* grey and RGB come back exactly */
        if (c == 1 || c == 3) {
            df_decode_opts o = df_decode_opts_default();
            o.channels = c;
            df_tensor *back;
            cr_assert_eq(df_image_read(path, &o, &back), DF_OK, "%s", df_last_error());
            check_image("png roundtrip", back, img, 0.0);
            df_tensor_free(back);
        }
        df_tensor_free(img);
    }
    remove_tree(dir);
}

/* Every broken file: DF_ERR_FORMAT, the message names the file, nothing leaks or crashes. */
Test(datasets_image, broken_files_are_clean_errors) {
    static const char *const bad[] = {"truncated.png", "truncated.jpg", "wrong_magic.png",
                                      "text.png",      "empty.jpg",     "absurd.png",
                                      "absurd.jpg",    "bad_crc.png"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "images/bad/%s", bad[i]);
        df_tensor *out = (df_tensor *)1;
        df_status s = df_image_read(fixture_path(rel), NULL, &out);
        cr_assert_eq(s, DF_ERR_FORMAT, "%s: status %s (%s)", bad[i], df_status_name(s),
                     df_last_error());
        cr_assert_null(out, "%s: output set on failure", bad[i]);
        cr_assert(strstr(df_last_error(), bad[i]), "%s: message does not name the file: %s", bad[i],
                  df_last_error());
    }
    cr_assert(strstr(df_last_error(), "PNG"), "%s", df_last_error());
}

Test(datasets_image, absurd_dimensions_refused_before_allocation) {
    df_mem_stats before = df_mem_get_stats();
    df_tensor *out;
    cr_assert_eq(df_image_read(fixture_path("images/bad/absurd.png"), NULL, &out), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "exceed"), "%s", df_last_error());
    cr_assert_eq(df_image_read(fixture_path("images/bad/absurd.jpg"), NULL, &out), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "exceed"), "%s", df_last_error());
    df_mem_stats after = df_mem_get_stats();
    cr_assert_eq(after.bytes_in_use, before.bytes_in_use);
}

Test(datasets_image, decompression_bomb_stays_small) {
    df_mem_stats before = df_mem_get_stats();
    df_tensor *out;
    cr_assert_eq(df_image_read(fixture_path("images/bad/bomb_progressive.jpg"), NULL, &out),
                 DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "bomb_progressive.jpg: JPEG:"), "%s", df_last_error());
    cr_assert_eq(df_image_read(fixture_path("images/bad/bomb.png"), NULL, &out), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "bomb.png: PNG: "), "%s", df_last_error());
    cr_assert_eq(df_mem_get_stats().peak_in_use, before.peak_in_use,
                 "the image buffer was allocated");
}

Test(datasets_image, missing_file_is_notfound) {
    df_tensor *out;
    cr_assert_eq(df_image_read("/nonexistent/x.png", NULL, &out), DF_ERR_NOTFOUND);
    cr_assert(strstr(df_last_error(), "/nonexistent/x.png"));
}
