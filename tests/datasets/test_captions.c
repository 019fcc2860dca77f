/* test_captions.c — captions for text-to-image training: the caption column of metadata.jsonl,
 * sidecar .txt files, captions kept by an HDF5 pack, caption_template, default_caption and the
 * rule for images without a caption (a count, or an error naming the first unless a default is
 * set), and the captions the loader's batches carry. */
#include "tests/datasets/image_util.h"

#include <stdlib.h>

/* A sidecar folder: a.png "red apple", b.png (no .txt), c.png "rocket", d.png (an empty .txt). */
static const char *sidecar_folder(void) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", temp_dir("caps"));
    char p[700];
    for (int i = 0; i < 4; i++) {
        df_tensor *img = make_image(i, 8, 8);
        snprintf(p, sizeof p, "%s/%c.png", dir, 'a' + i);
        cr_assert_eq(df_png_write(p, img, 0, NULL, NULL), DF_OK);
        df_tensor_free(img);
    }
    snprintf(p, sizeof p, "%s/a.txt", dir);
    write_text(p, "red apple\n");
    snprintf(p, sizeof p, "%s/c.txt", dir);
    write_text(p, "rocket");
    snprintf(p, sizeof p, "%s/d.txt", dir);
    write_text(p, "\n");
    return dir;
}

static void expect_sample_captions(const df_dataset *ds, const char *const *want, int n) {
    cr_assert_eq(df_dataset_images(ds), n);
    for (int i = 0; i < n; i++) {
        char *c = df_dataset_sample_caption(ds, i);
        cr_assert_str_eq(c, want[i], "image %d", i);
        free(c);
    }
}

Test(datasets_captions, template_and_default) {
    const char *dir = sidecar_folder();
    df_dataset_opts o = df_dataset_opts_default();
    df_dataset *ds;
    /* a recipe without captions: images without one are only counted */
    cr_assert_eq(df_dataset_open(dir, &o, &ds), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_dataset_uncaptioned(ds), 2);
    const char *plain[] = {"red apple", "", "rocket", ""};
    expect_sample_captions(ds, plain, 4);
    df_dataset_free(ds);

    o.require_captions = true;
    o.caption_template = "an emoji of {}, {}";
    o.default_caption = "an emoji";
    cr_assert_eq(df_dataset_open(dir, &o, &ds), DF_OK, "%s", df_last_error());
    const char *templ[] = {"an emoji of red apple, red apple", "an emoji",
                           "an emoji of rocket, rocket", "an emoji"};
    expect_sample_captions(ds, templ, 4);
    cr_assert_str_eq(df_dataset_caption(ds, 0), "red apple", "stored as read");
    /* the override wins over template and default (DreamBooth's instance prompt) */
    df_dataset_free(ds);
    o.caption_override = "a photo of sks dog";
    cr_assert_eq(df_dataset_open(dir, &o, &ds), DF_OK, "%s", df_last_error());
    const char *over[] = {"a photo of sks dog", "a photo of sks dog", "a photo of sks dog",
                          "a photo of sks dog"};
    expect_sample_captions(ds, over, 4);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_captions, missing_captions_are_an_error_naming_count_and_first) {
    const char *dir = sidecar_folder();
    df_dataset_opts o = df_dataset_opts_default();
    o.require_captions = true;
    df_dataset *ds;
    expect_status(df_dataset_open(dir, &o, &ds), DF_ERR_FORMAT, "2 of 4 images have no caption");
    cr_assert(strstr(df_last_error(), "b.png") && strstr(df_last_error(), "default_caption"), "%s",
              df_last_error());
    cr_assert_null(ds);
    /* metadata.jsonl: a null, an absent and an empty column */
    const char *mdir = make_folder("capmeta", 4, 8, 8);
    char p[700];
    snprintf(p, sizeof p, "%s/metadata.jsonl", mdir);
    write_text(p, "{\"file_name\": \"img000.png\", \"text\": \"grinning face\", \"name\": \"x\"}\n"
                  "{\"file_name\": \"img001.png\", \"text\": null}\n"
                  "{\"file_name\": \"img002.png\"}\n"
                  "{\"file_name\": \"img003.png\", \"text\": \"\", \"name\": \"dog face\"}\n");
    expect_status(df_dataset_open(mdir, &o, &ds), DF_ERR_FORMAT, "3 of 4 images have no caption");
    cr_assert(strstr(df_last_error(), "img001.png") && strstr(df_last_error(), "\"text\""), "%s",
              df_last_error());
    /* another column: two of them named */
    o.caption_column = "name";
    expect_status(df_dataset_open(mdir, &o, &ds), DF_ERR_FORMAT, "2 of 4 images have no caption");
    o.default_caption = "an emoji";
    cr_assert_eq(df_dataset_open(mdir, &o, &ds), DF_OK, "%s", df_last_error());
    const char *want[] = {"x", "an emoji", "an emoji", "dog face"};
    expect_sample_captions(ds, want, 4);
    df_dataset_free(ds);
    /* a template without {} is refused */
    o.caption_template = "an emoji";
    expect_status(df_dataset_open(mdir, &o, &ds), DF_ERR_INVALID, "has no {}");
    remove_tree(mdir);
    remove_tree(dir);
}

Test(datasets_captions, pack_keeps_captions_and_batches_carry_them) {
    const char *dir = sidecar_folder();
    char out[700];
    snprintf(out, sizeof out, "%s.h5", dir);
    df_dataset_opts o = df_dataset_opts_default();
    df_dataset *ds, *pk;
    cr_assert_eq(df_dataset_open(dir, &o, &ds), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_pack_write(ds, out, 8, DF_RESAMPLE_BILINEAR, "test", NULL), DF_OK, "%s",
                 df_last_error());
    df_dataset_free(ds);
    o.require_captions = true;
    o.caption_template = "an emoji of {}";
    expect_status(df_dataset_open(out, &o, &pk), DF_ERR_FORMAT, "2 of 4 images have no caption");
    o.default_caption = "an emoji";
    cr_assert_eq(df_dataset_open(out, &o, &pk), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_dataset_kind_of(pk), DF_DATASET_HDF5);
    cr_assert_str_eq(df_dataset_caption(pk, 0), "red apple");
    cr_assert_str_eq(df_dataset_caption(pk, 2), "rocket");
    const char *want[] = {"an emoji of red apple", "an emoji", "an emoji of rocket", "an emoji"};
    expect_sample_captions(pk, want, 4);
    df_loader_opts lo = df_loader_opts_default(4, 8);
    lo.workers = 1;
    df_loader *l;
    cr_assert_eq(df_loader_new(pk, &lo, &l), DF_OK, "%s", df_last_error());
    df_batch *b;
    cr_assert_eq(df_loader_next(l, &b), DF_OK, "%s", df_last_error());
    cr_assert_eq(b->n, 4);
    for (int i = 0; i < b->n; i++)
        cr_assert_str_eq(b->captions[i], want[b->indices[i]], "sample %d", i);
    df_batch_free(b);
    df_loader_free(l);
    df_dataset_free(pk);
    remove(out);
    remove_tree(dir);
}
