/* test_clip_image_processor.c — infer/clip_image_processor.c against transformers v4.33.3's
 * CLIPImageProcessor on real images (tests/ref/gen_clip_image_processor.py: RGBA emoji, a
 * photo-like RGB image, a grey portrait; the legacy, current and upsampling config forms): every
 * pixel within 1/255 before normalisation (in practice the same bytes: the resize is
 * Pillow-exact). And the bad input: a 1 x 1 image works, 10000 x 10 is a clear error, broken
 * preprocessor_config.json fields name the file and the field. */
#include "infer/infer.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const images[] = {"emoji_1f600.png", "emoji_1f47b.png", "emoji_2764-fe0f.png",
                                     "photo.png", "tall.png"};

static void check_config(const char *cfg) {
    char rel[256];
    snprintf(rel, sizeof rel, "images/clip_processor/%s.json", cfg);
    df_clip_image_processor p;
    cr_assert_eq(df_clip_image_processor_load(fixture_path(rel), &p), DF_OK, "%s", df_last_error());
    for (size_t i = 0; i < sizeof images / sizeof images[0]; i++) {
        df_scope s = df_scope_begin();
        snprintf(rel, sizeof rel, "images/clip_processor/%s", images[i]);
        df_decode_opts dec = df_decode_opts_default();
        dec.drop_alpha = true;
        df_tensor *img;
        cr_assert_eq(df_image_read(fixture_path(rel), &dec, &img), DF_OK, "%s", df_last_error());
        char key[128];
        snprintf(key, sizeof key, "%s.%s", cfg, images[i]);
        df_tensor *want = fixture_tensor("images/clip_processor/expected.safetensors", key);
        int oh, ow;
        df_clip_image_processor_out_size(&p, (int)img->shape[0], (int)img->shape[1], &oh, &ow);
        cr_assert(want->numel == 3LL * oh * ow, "%s: %d x %d", key, oh, ow);
        float *got = malloc((size_t)want->numel * sizeof *got);
        cr_assert_eq(df_clip_image_preprocess(&p, img, images[i], got), DF_OK, "%s",
                     df_last_error());
        double worst = 0;
        for (int64_t k = 0; k < want->numel; k++) {
            int c = (int)(k / ((int64_t)oh * ow));
            worst = fmax(worst, fabs(got[k] - df_f32(want)[k]) * p.image_std[c]);
        }
        cr_expect(worst <= 1.0 / 255 + 1e-6, "%s: %.3g from transformers (in [0, 1] units)", key,
                  worst);
        cr_expect(worst <= 1e-6, "%s: not the same pixels (%.3g)", key, worst);
        free(got);
        df_scope_end(s);
    }
}

Test(infer_clip_image_processor, legacy_config_parity) {
    check_config("legacy");
}

Test(infer_clip_image_processor, dict_config_parity) {
    check_config("dict");
}

Test(infer_clip_image_processor, upsampling_parity) {
    check_config("up");
}

Test(infer_clip_image_processor, tiny_and_extreme_images) {
    df_clip_image_processor p = df_clip_image_processor_default();
    df_scope s = df_scope_begin();
    df_tensor *one = df_full(DF_DTYPE_U8, DF_DIMS(1, 1, 3), 200);
    float *dst = malloc(3 * 224 * 224 * sizeof *dst);
    cr_assert_eq(df_clip_image_preprocess(&p, one, "one.png", dst), DF_OK, "%s", df_last_error());
    float v = (float)(200 / 255.0);
    cr_expect_float_eq(dst[0], (v - p.image_mean[0]) / p.image_std[0], 1e-6);
    df_tensor *wide = df_zeros(DF_DTYPE_U8, DF_DIMS(10, 10000, 3));
    expect_status(df_clip_image_preprocess(&p, wide, "wide.png", dst), DF_ERR_INVALID,
                  "wide.png: a 10000 x 10 image");
    df_tensor *grey = df_zeros(DF_DTYPE_U8, DF_DIMS(4, 4, 1));
    expect_status(df_clip_image_preprocess(&p, grey, "grey.png", dst), DF_ERR_INVALID, "RGB");
    p.crop_height = 300;
    expect_status(df_clip_image_preprocess(&p, one, "one.png", dst), DF_ERR_UNSUPPORTED, "pads");
    free(dst);
    df_scope_end(s);
}

Test(infer_clip_image_processor, config_errors_name_the_field) {
    const char *bad[] = {
        "{\"size\": {\"height\": 224, \"width\": 224}}",
        "{\"size\": 0}",
        "{\"crop_size\": {\"height\": 224}}",
        "{\"image_mean\": [0.5, 0.5]}",
        "{\"image_std\": [0.5, 0, 0.5]}",
        "{\"resample\": 0}",
        "{\"size\": \"big\"}",
        "{\"do_resize\": 3}",
        "{\"rescale_factor\": -1}",
        "{\"size\": 224.5}",
    };
    const char *field[] = {"size",     "size", "crop_size", "image_mean",     "image_std",
                           "resample", "size", "do_resize", "rescale_factor", "size"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        df_json j;
        cr_assert_eq(df_json_parse(bad[i], strlen(bad[i]), "preprocessor_config.json", &j), DF_OK);
        df_clip_image_processor p;
        cr_expect_neq(df_clip_image_processor_from_json(&j, &p), DF_OK, "%s accepted", bad[i]);
        cr_expect(strstr(df_last_error(), field[i]) &&
                      strstr(df_last_error(), "preprocessor_config.json"),
                  "%s: %s", bad[i], df_last_error());
        df_json_free(&j);
    }
}
