/* test_buckets.c — aspect-ratio buckets (datasets/buckets.c, kohya's enable_bucket): the bucket
 * lists equal kohya sd-scripts' make_bucket_resolutions for four settings (the expected lists are
 * hard-coded here, derived by reading library/model_util.py: the square of side
 * floor(sqrt(A) / steps) * steps, then (w, h) and (h, w) for w = min .. max by steps with
 * h = min(max, floor(floor(A / w) / steps) * steps) >= min; sorted); the assignment and resize
 * of BucketManager.select_bucket; an image outside the buckets' aspect range is an error naming
 * it; batches are one bucket each and cover the epoch; the order is deterministic and a loader
 * started from a saved cursor continues exactly; the pixels are the resize then the crop. */
#include "tests/datasets/image_util.h"

static void expect_list(df_bucket_opts o, const int (*want)[2], int n_want) {
    int(*r)[2], n;
    cr_assert_eq(df_bucket_resolutions(&o, &r, &n), DF_OK, "%s", df_last_error());
    cr_assert_eq(n, n_want, "resolution %d [%d, %d] step %d: %d buckets, kohya has %d",
                 o.resolution, o.min_reso, o.max_reso, o.reso_steps, n, n_want);
    for (int i = 0; i < n; i++)
        cr_assert(r[i][0] == want[i][0] && r[i][1] == want[i][1], "bucket %d: %dx%d, kohya %dx%d",
                  i, r[i][0], r[i][1], want[i][0], want[i][1]);
    free(r);
}

Test(datasets_buckets, lists_equal_kohyas) {
    /* SD 1.x defaults: resolution 512, 256 .. 1024 by 64 */
    const int sd[][2] = {{256, 832}, {256, 896}, {256, 960}, {256, 1024}, {320, 704}, {320, 768},
                         {384, 640}, {448, 576}, {512, 512}, {576, 448},  {640, 384}, {704, 320},
                         {768, 320}, {832, 256}, {896, 256}, {960, 256},  {1024, 256}};
    expect_list((df_bucket_opts){512, 256, 1024, 64}, sd, 17);
    const int small[][2] = {{32, 96}, {32, 112}, {32, 128}, {48, 80}, {64, 64},
                            {80, 48}, {96, 32},  {112, 32}, {128, 32}};
    expect_list((df_bucket_opts){64, 32, 128, 16}, small, 9);
    /* a resolution that is not a multiple of the step */
    const int odd[][2] = {{48, 160}, {64, 128}, {64, 144}, {80, 112}, {96, 96},
                          {112, 80}, {128, 64}, {144, 64}, {160, 48}};
    expect_list((df_bucket_opts){100, 48, 160, 16}, odd, 9);
    const int sd2[][2] = {{320, 960}, {384, 960}, {448, 960}, {512, 960}, {576, 960},
                          {640, 896}, {704, 832}, {768, 768}, {832, 704}, {896, 640},
                          {960, 320}, {960, 384}, {960, 448}, {960, 512}, {960, 576}};
    expect_list((df_bucket_opts){768, 320, 960, 64}, sd2, 15);
    int(*r)[2], n;
    expect_status(df_bucket_resolutions(&(df_bucket_opts){512, 256, 384, 64}, &r, &n),
                  DF_ERR_INVALID, "max_bucket_reso");
    expect_status(df_bucket_resolutions(&(df_bucket_opts){64, 128, 64, 16}, &r, &n), DF_ERR_INVALID,
                  "min_bucket_reso");
}

Test(datasets_buckets, select_as_kohya) {
    int(*r)[2], n;
    cr_assert_eq(df_bucket_resolutions(&(df_bucket_opts){64, 32, 128, 16}, &r, &n), DF_OK);
    const struct {
        int w, h, bw, bh, rw, rh;
    } cases[] = {
        {64, 64, 64, 64, 64, 64},   /* square */
        {100, 50, 80, 48, 96, 48},  /* 2.0: closest 80/48 = 1.67; wider: match heights */
        {48, 80, 48, 80, 48, 80},   /* exactly a bucket */
        {30, 90, 32, 96, 32, 96},   /* 1/3 = 32/96: match widths, 90 * 32 / 30 + 0.5 -> 96 */
        {200, 100, 80, 48, 96, 48}, /* scaled down */
        {120, 100, 64, 64, 77, 64}, /* 1.2: 64/64 (|0.2|) beats 80/48 (|0.47|) */
        {16, 40, 32, 96, 38, 96},   /* 0.4: 32/96 (|0.067|) beats 48/80 (|0.2|); taller */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rw, rh, b = df_bucket_select((const int(*)[2])r, n, cases[i].w, cases[i].h, &rw, &rh);
        cr_assert(r[b][0] == cases[i].bw && r[b][1] == cases[i].bh && rw == cases[i].rw &&
                      rh == cases[i].rh,
                  "%dx%d: bucket %dx%d resized %dx%d, want %dx%d resized %dx%d", cases[i].w,
                  cases[i].h, r[b][0], r[b][1], rw, rh, cases[i].bw, cases[i].bh, cases[i].rw,
                  cases[i].rh);
    }
    free(r);
}

/* A folder of images of three shapes (and one more of a fourth when `extreme`). */
static const char *shapes_folder(bool extreme) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", temp_dir("buckets"));
    char p[700];
    const int sizes[][2] = {{64, 64}, {100, 50}, {30, 90}}; /* w, h */
    for (int i = 0; i < 12; i++) {
        df_tensor *img = make_image(i, sizes[i % 3][1], sizes[i % 3][0]);
        snprintf(p, sizeof p, "%s/%02d.png", dir, i);
        cr_assert_eq(df_png_write(p, img, 0, NULL, NULL), DF_OK);
        df_tensor_free(img);
    }
    if (extreme) {
        df_tensor *img = make_image(99, 100, 10);
        snprintf(p, sizeof p, "%s/banner.png", dir);
        cr_assert_eq(df_png_write(p, img, 0, NULL, NULL), DF_OK);
        df_tensor_free(img);
    }
    return dir;
}

Test(datasets_buckets, an_image_with_no_bucket_is_named) {
    const char *dir = shapes_folder(true);
    df_dataset *ds;
    cr_assert_eq(df_dataset_open(dir, NULL, &ds), DF_OK);
    df_buckets bk;
    expect_status(df_buckets_assign(ds, &(df_bucket_opts){64, 32, 128, 16}, &bk), DF_ERR_INVALID,
                  "banner.png: 10x100");
    cr_assert(strstr(df_last_error(), "fits no bucket"), "%s", df_last_error());
    df_dataset_free(ds);
    remove_tree(dir);
}

typedef struct seen {
    int n;
    int64_t idx[64][4];
    int len[64], bucket[64];
    float *pix[64];
    df_loader_cursor after[64];
} seen;

static void collect(const df_dataset *ds, const df_buckets *bk, df_loader_cursor start, int count,
                    seen *s) {
    df_loader_opts lo = df_loader_opts_default(4, 64);
    lo.buckets = bk;
    lo.seed = 5;
    lo.workers = 2;
    lo.start = start;
    lo.transform.center_crop = true;
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &lo, &l), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_loader_batches_per_epoch(l), 3, "4 + 4 + 4 images, one batch a bucket");
    s->n = count;
    for (int k = 0; k < count; k++) {
        df_batch *b;
        cr_assert_eq(df_loader_next(l, &b), DF_OK, "%s", df_last_error());
        s->len[k] = b->n;
        s->bucket[k] = b->bucket;
        cr_assert_eq(b->pixels->shape[2], bk->resos[b->bucket][1]);
        cr_assert_eq(b->pixels->shape[3], bk->resos[b->bucket][0]);
        for (int i = 0; i < b->n; i++) {
            s->idx[k][i] = b->indices[i];
            cr_assert_eq(bk->bucket[b->indices[i]], b->bucket, "one bucket per batch");
        }
        s->pix[k] = malloc(sizeof(float) * (size_t)b->pixels->numel);
        memcpy(s->pix[k], b->pixels->data, sizeof(float) * (size_t)b->pixels->numel);
        s->after[k] = b->next;
        df_batch_free(b);
    }
    df_loader_free(l);
}

Test(datasets_buckets, one_bucket_batches_deterministic_and_resumable) {
    const char *dir = shapes_folder(false);
    df_dataset *ds;
    cr_assert_eq(df_dataset_open(dir, NULL, &ds), DF_OK);
    df_buckets bk;
    cr_assert_eq(df_buckets_assign(ds, &(df_bucket_opts){64, 32, 128, 16}, &bk), DF_OK, "%s",
                 df_last_error());
    seen a, b, c;
    collect(ds, &bk, (df_loader_cursor){0, 0}, 9, &a);
    collect(ds, &bk, (df_loader_cursor){0, 0}, 9, &b);
    /* each epoch covers the 12 images once */
    for (int e = 0; e < 3; e++) {
        int count[12] = {0};
        for (int k = 3 * e; k < 3 * e + 3; k++)
            for (int i = 0; i < a.len[k]; i++) count[a.idx[k][i]]++;
        for (int i = 0; i < 12; i++) cr_assert_eq(count[i], 1, "epoch %d image %d", e, i);
    }
    int differ = 0;
    for (int k = 0; k < 3; k++)
        differ += a.bucket[k] != a.bucket[k + 3] || a.idx[k][0] != a.idx[k + 3][0];
    cr_assert(differ > 0, "another epoch, another order");
    /* a loader started at the cursor after batch 4 continues exactly */
    collect(ds, &bk, a.after[3], 5, &c);
    for (int k = 0; k < 9; k++) {
        cr_assert_eq(a.len[k], b.len[k]);
        for (int i = 0; i < a.len[k]; i++) cr_assert_eq(a.idx[k][i], b.idx[k][i]);
    }
    for (int k = 0; k < 5; k++) {
        cr_assert_eq(c.bucket[k], a.bucket[k + 4]);
        for (int i = 0; i < c.len[k]; i++) cr_assert_eq(c.idx[k][i], a.idx[k + 4][i]);
        int64_t numel = (int64_t)c.len[k] * 3 * bk.resos[c.bucket[k]][0] * bk.resos[c.bucket[k]][1];
        check_close_f32("resumed pixels", c.pix[k], a.pix[k + 4], numel, 0, 0);
    }
    for (int k = 0; k < 9; k++) free(a.pix[k]), free(b.pix[k]);
    for (int k = 0; k < 5; k++) free(c.pix[k]);
    /* a cursor inside a batch is refused */
    df_loader_opts lo = df_loader_opts_default(4, 64);
    lo.buckets = &bk;
    lo.start = (df_loader_cursor){0, 2};
    df_loader *l;
    expect_status(df_loader_new(ds, &lo, &l), DF_ERR_INVALID, "not at a batch");
    df_buckets_free(&bk);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_buckets, pixels_are_resize_then_crop) {
    const char *dir = shapes_folder(false);
    df_dataset *ds;
    cr_assert_eq(df_dataset_open(dir, NULL, &ds), DF_OK);
    df_buckets bk;
    cr_assert_eq(df_buckets_assign(ds, &(df_bucket_opts){64, 32, 128, 16}, &bk), DF_OK);
    df_transform t = df_transform_default(64);
    t.center_crop = true;
    t.random_flip = false;
    df_tensor *img;
    cr_assert_eq(df_dataset_image(ds, 1, NULL, &img), DF_OK); /* 100x50 -> 96x48 -> 80x48 */
    cr_assert(bk.resos[bk.bucket[1]][0] == 80 && bk.resos[bk.bucket[1]][1] == 48);
    float *got = malloc(sizeof(float) * 3 * 80 * 48), *want = malloc(sizeof(float) * 3 * 80 * 48);
    df_buckets_apply(&bk, &t, 1, img, NULL, got);
    df_tensor *r = df_image_resize(img, 48, 96, DF_RESAMPLE_BILINEAR),
              *c = df_image_crop(r, 0, 8, 48, 80);
    df_image_to_chw(c, want);
    check_close_f32("bucket pixels", got, want, 3 * 80 * 48, 0, 0);
    free(got);
    free(want);
    df_tensor_free(img);
    df_tensor_free(r);
    df_tensor_free(c);
    df_buckets_free(&bk);
    df_dataset_free(ds);
    remove_tree(dir);
}
