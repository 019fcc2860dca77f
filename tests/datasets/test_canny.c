/* test_canny.c — the ControlNet conditioning generators (datasets/canny.c, silhouette.c) against
 * tests/ref/gen_conditioning.py's numpy transcription of OpenCV's cv2.Canny (OpenCV itself is
 * not installed here) and the alpha threshold: bit-exact maps for an RGB image at two threshold
 * pairs, a grey image, and silhouettes at two thresholds; the spec strings; bad input (a file
 * without alpha, a missing file, thresholds out of order, unknown specs) named. */
#include "datasets/datasets.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <string.h>

static df_tensor *expected(const char *name) {
    return fixture_tensor("images/conditioning/expected.safetensors", name);
}

static void expect_same(const char *label, const df_tensor *got, const df_tensor *want) {
    cr_assert(df_tensor_same_shape(got, want), "%s: shape", label);
    int64_t diff = 0;
    for (int64_t i = 0; i < got->numel; i++)
        diff += ((const uint8_t *)got->data)[i] != ((const uint8_t *)want->data)[i];
    cr_expect_eq(diff, 0, "%s: %lld values differ", label, (long long)diff);
}

static void check_spec(const char *spec, const char *file, const char *want_name) {
    df_conditioning c;
    cr_assert_eq(df_conditioning_parse(spec, &c), DF_OK, "%s", df_last_error());
    char rel[128];
    snprintf(rel, sizeof rel, "images/conditioning/%s", file);
    df_tensor *got, *want = expected(want_name);
    cr_assert_eq(df_conditioning_make(&c, fixture_path(rel), &got), DF_OK, "%s", df_last_error());
    expect_same(spec, got, want);
    df_tensor_free(got);
    df_tensor_free(want);
}

Test(datasets_conditioning, canny_matches_the_reference) {
    check_spec("canny", "rgb.png", "canny_100_200");
    check_spec("canny:50:150", "rgb.png", "canny_50_150");
}

Test(datasets_conditioning, canny_of_a_grey_image) {
    df_decode_opts o = df_decode_opts_default();
    o.channels = 1;
    df_tensor *img, *got, *want = expected("canny_grey_30_90");
    cr_assert_eq(df_image_read(fixture_path("images/conditioning/grey.png"), &o, &img), DF_OK);
    cr_assert_eq(df_canny(img, 30, 90, &got), DF_OK, "%s", df_last_error());
    expect_same("grey", got, want);
    df_tensor *ts[] = {img, got, want};
    for (int i = 0; i < 3; i++) df_tensor_free(ts[i]);
}

Test(datasets_conditioning, silhouette_matches_the_alpha) {
    check_spec("silhouette", "rgba.png", "silhouette_128");
    check_spec("silhouette:40", "rgba.png", "silhouette_40");
}

Test(datasets_conditioning, bad_input_is_named) {
    df_conditioning c;
    cr_assert_eq(df_conditioning_parse("silhouette", &c), DF_OK);
    df_tensor *out;
    expect_status(df_conditioning_make(&c, fixture_path("images/conditioning/rgb.png"), &out),
                  DF_ERR_INVALID, "rgb.png: no alpha channel");
    expect_status(df_conditioning_make(&c, fixture_path("images/conditioning/missing.png"), &out),
                  DF_ERR_NOTFOUND, "missing.png");
    const char *bad[] = {"canny:200:100", "canny:5", "canny:1:2:3",
                         "silhouette:0",  "edges",   "canny:-1:3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_status(df_conditioning_parse(bad[i], &c), DF_ERR_INVALID, bad[i]);
    df_tensor *img = df_zeros(DF_DTYPE_U8, DF_DIMS(4, 4, 3));
    expect_status(df_canny(img, 10, 5, &out), DF_ERR_INVALID, "thresholds 10 and 5");
    df_tensor *f = df_zeros(DF_DTYPE_F32, DF_DIMS(4, 4, 3));
    expect_status(df_canny(f, 1, 5, &out), DF_ERR_INVALID, "U8");
    df_tensor_free(img);
    df_tensor_free(f);
}

/* a flat image has no edges; a 1x1 image works */
Test(datasets_conditioning, degenerate_images) {
    df_tensor *flat = df_zeros(DF_DTYPE_U8, DF_DIMS(5, 7, 3)), *out;
    cr_assert_eq(df_canny(flat, 0, 0, &out), DF_OK);
    for (int64_t i = 0; i < out->numel; i++) cr_assert_eq(((uint8_t *)out->data)[i], 0);
    df_tensor_free(out);
    df_tensor *one = df_zeros(DF_DTYPE_U8, DF_DIMS(1, 1, 1));
    cr_assert_eq(df_canny(one, 0, 0, &out), DF_OK);
    df_tensor_free(out);
    df_tensor_free(one);
    df_tensor_free(flat);
}
