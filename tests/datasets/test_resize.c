/* test_resize.c — resize equals Pillow's Image.resize (bilinear, bicubic, box/area, lanczos) on RGB and
 * grey images, downsampling, upsampling, mixed and one-axis cases (fixtures from
 * tests/ref/gen_images.py), and the crop / flip / normalise transforms. The requirement is
 * "within 1/255"; the integer pipeline follows Pillow's step by step, so we assert exact. */
#include "tests/datasets/image_util.h"

#include <math.h>

static const char *const FILTERS[] = {"bilinear", "bicubic", "area", "lanczos"};
static const int SIZES[][2] = {{17, 23}, {70, 90}, {80, 30}, {47, 20}, {13, 61}, {8, 8}};

static void check_resizes(const char *src_rel, const char *suffix) {
    df_tensor *src = load_pixels(src_rel);
    for (int f = 0; f < 4; f++) {
        df_resample r;
        cr_assert(df_resample_parse(FILTERS[f], &r));
        for (size_t k = 0; k < sizeof SIZES / sizeof *SIZES; k++) {
            char rel[128];
            snprintf(rel, sizeof rel, "images/resize_%s_%dx%d%s.bin", FILTERS[f], SIZES[k][0],
                     SIZES[k][1], suffix);
            df_tensor *want = load_pixels(rel);
            df_tensor *got = df_image_resize(src, SIZES[k][0], SIZES[k][1], r);
            check_image(rel, got, want, 0.0);
            df_tensor_free(got);
            df_tensor_free(want);
        }
    }
    df_tensor_free(src);
}

Test(datasets_resize, rgb_equals_pillow) {
    check_resizes("images/resize_src.bin", "");
}

Test(datasets_resize, grey_equals_pillow) {
    check_resizes("images/resize_src_l.bin", "_l");
}

Test(datasets_resize, same_size_is_a_copy) {
    df_tensor *src = load_pixels("images/resize_src.bin");
    df_tensor *got = df_image_resize(src, 47, 61, DF_RESAMPLE_BICUBIC);
    cr_assert_neq(got->data, src->data);
    check_image("copy", got, src, 0.0);
    df_tensor_free(got);
    df_tensor_free(src);
}

Test(datasets_resize, shorter_side_as_torchvision) {
    df_tensor *src = load_pixels("images/resize_src.bin"); /* 47 x 61 */
    df_tensor *r = df_image_resize_short(src, 20, DF_RESAMPLE_BILINEAR);
    cr_assert_eq(r->shape[0], 20);
    cr_assert_eq(r->shape[1], 25); /* int(20 * 61 / 47) = 25 */
    df_tensor_free(r);
    df_tensor_free(src);
}

Test(datasets_resize, center_crop_and_flip) {
    df_tensor *img = make_image(1, 6, 9);
    df_tensor *c = df_image_center_crop(img, 4, 4);
    /* torchvision: top = round(2 / 2) = 1, left = round(5 / 2) = 2 (half to even) */
    df_tensor *want = df_image_crop(img, 1, 2, 4, 4);
    check_image("center crop", c, want, 0.0);
    const uint8_t *p = c->data;
    cr_assert_eq(p[1], 9);      /* y = 1 */
    cr_assert_eq(p[2], 2 * 11); /* x = 2 */
    df_tensor *f = df_image_hflip(img), *ff = df_image_hflip(f);
    check_image("flip twice", ff, img, 0.0);
    cr_assert_eq(((uint8_t *)f->data)[2], 8 * 11);
    df_tensor_free(c);
    df_tensor_free(want);
    df_tensor_free(f);
    df_tensor_free(ff);
    df_tensor_free(img);
}

Test(datasets_resize, to_tensor_range_and_layout) {
    df_tensor *img = make_image(3, 2, 3);
    float out[18];
    df_image_to_chw(img, out);
    float want[18];
    const uint8_t *p = img->data;
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 6; i++) want[c * 6 + i] = p[i * 3 + c] / 127.5f - 1.0f;
    check_close_f32("chw", out, want, 18, 0, 0);
    cr_assert_float_eq(out[0], 21 / 127.5f - 1.0f, 1e-7);
    df_tensor_free(img);
}

Test(datasets_resize, random_crop_covers_offsets_deterministically) {
    df_philox g1, g2;
    df_philox_init(&g1, 5, 0);
    df_philox_init(&g2, 5, 0);
    int seen[4][5] = {{0}};
    for (int i = 0; i < 400; i++) {
        int t1, l1, t2, l2;
        df_random_crop_offsets(&g1, 10, 12, 7, 8, &t1, &l1);
        df_random_crop_offsets(&g2, 10, 12, 7, 8, &t2, &l2);
        cr_assert(t1 == t2 && l1 == l2);
        cr_assert(t1 >= 0 && t1 <= 3 && l1 >= 0 && l1 <= 4);
        seen[t1][l1]++;
    }
    for (int t = 0; t < 4; t++)
        for (int l = 0; l < 5; l++)
            cr_assert_gt(seen[t][l], 0, "offset (%d, %d) never drawn", t, l);
}

Test(datasets_resize, transform_center_no_flip_matches_steps) {
    df_tensor *src = load_pixels("images/resize_src.bin"); /* 47 x 61 */
    df_transform t = df_transform_default(16);
    t.center_crop = true;
    t.random_flip = false;
    t.filter = DF_RESAMPLE_BICUBIC;
    float got[3 * 16 * 16], want[3 * 16 * 16];
    df_philox g;
    df_philox_init(&g, 1, 1);
    df_transform_apply(&t, src, &g, got);
    df_tensor *r = df_image_resize_short(src, 16, DF_RESAMPLE_BICUBIC);
    df_tensor *c = df_image_center_crop(r, 16, 16);
    df_image_to_chw(c, want);
    check_close_f32("transform", got, want, 3 * 16 * 16, 0, 0);
    df_tensor_free(r);
    df_tensor_free(c);
    df_tensor_free(src);
}
