/* test_loader.c — loader determinism (same seed same order, another epoch another order, the
 * same batches with 1 or 3 workers), rank shards disjoint and covering, cursor save/restore
 * mid-epoch giving the identical remaining sequence, bad samples (error naming the file, or
 * skipped and counted), and the sources (sidecar captions, HDF5 pack round trip, repeats,
 * caption override and dropout). */
#include "tests/datasets/image_util.h"

#include <math.h>

#define N_IMG 12

typedef struct run {
    int n_batches;
    int64_t idx[64][8];
    int n[64];
    char cap[64][8][32];
    float *pix[64];
    df_loader_cursor after[64];
} run;

static df_dataset *open_ds(const char *dir, df_dataset_opts *o) {
    df_dataset *ds;
    cr_assert_eq(df_dataset_open(dir, o, &ds), DF_OK, "%s", df_last_error());
    return ds;
}

static void collect(const df_dataset *ds, df_loader_opts *o, int n_batches, run *r) {
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, o, &l), DF_OK, "%s", df_last_error());
    r->n_batches = n_batches;
    for (int b = 0; b < n_batches; b++) {
        df_batch *bt;
        cr_assert_eq(df_loader_next(l, &bt), DF_OK, "%s", df_last_error());
        r->n[b] = bt->n;
        for (int i = 0; i < bt->n; i++) {
            r->idx[b][i] = bt->indices[i];
            snprintf(r->cap[b][i], 32, "%s", bt->captions[i]);
        }
        r->pix[b] = malloc(sizeof(float) * (size_t)bt->pixels->numel);
        memcpy(r->pix[b], bt->pixels->data, sizeof(float) * (size_t)bt->pixels->numel);
        r->after[b] = bt->next;
        cr_assert_eq(bt->next.epoch, df_loader_get_cursor(l).epoch);
        cr_assert_eq(bt->next.position, df_loader_get_cursor(l).position);
        df_batch_free(bt);
    }
    df_loader_free(l);
}

static void run_free(run *r) {
    for (int b = 0; b < r->n_batches; b++) free(r->pix[b]);
}

static void check_same(const run *a, int a0, const run *b, int b0, int count, int R) {
    for (int k = 0; k < count; k++) {
        cr_assert_eq(a->n[a0 + k], b->n[b0 + k], "batch %d size", k);
        for (int i = 0; i < a->n[a0 + k]; i++) {
            cr_assert_eq(a->idx[a0 + k][i], b->idx[b0 + k][i], "batch %d sample %d", k, i);
            cr_assert_str_eq(a->cap[a0 + k][i], b->cap[b0 + k][i]);
        }
        check_close_f32("pixels", a->pix[a0 + k], b->pix[b0 + k], (int64_t)a->n[a0 + k] * 3 * R * R,
                        0, 0);
    }
}

Test(datasets_loader, batches_are_images_in_range) {
    const char *dir = make_folder("ld0", N_IMG, 10, 14);
    df_dataset *ds = open_ds(dir, NULL);
    df_loader_opts o = df_loader_opts_default(4, 8);
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_loader_batches_per_epoch(l), 3);
    df_batch *b;
    cr_assert_eq(df_loader_next(l, &b), DF_OK);
    cr_assert_eq(b->n, 4);
    cr_assert_eq(b->pixels->ndim, 4);
    cr_assert_eq(b->pixels->shape[1], 3);
    cr_assert_eq(b->pixels->shape[2], 8);
    const float *p = df_f32(b->pixels);
    for (int64_t i = 0; i < b->pixels->numel; i++) cr_assert(p[i] >= -1.0f && p[i] <= 1.0f);
    for (int i = 0; i < 4; i++) {
        char want[32];
        snprintf(want, sizeof want, "caption %lld", (long long)b->indices[i]);
        cr_assert_str_eq(b->captions[i], want);
        /* channel 0 of every pixel holds the image id * 7 (resizing a constant plane keeps it) */
        cr_assert_float_eq(p[(size_t)i * 3 * 64], (b->indices[i] * 7) / 127.5f - 1.0f, 1e-6);
    }
    df_batch_free(b);
    df_loader_free(l);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_loader, deterministic_order_and_epochs) {
    const char *dir = make_folder("ld1", N_IMG, 9, 9);
    df_dataset *ds = open_ds(dir, NULL);
    df_loader_opts o = df_loader_opts_default(4, 8);
    o.seed = 17;
    run a, b, c;
    collect(ds, &o, 6, &a); /* two epochs */
    o.workers = 1;
    collect(ds, &o, 6, &b);
    check_same(&a, 0, &b, 0, 6, 8);
    o.workers = 3;
    o.prefetch = 1;
    collect(ds, &o, 6, &c);
    check_same(&a, 0, &c, 0, 6, 8);
    /* each epoch is a permutation, and epoch 1 is ordered differently from epoch 0 */
    int seen[2][N_IMG] = {{0}};
    bool differ = false;
    for (int bt = 0; bt < 6; bt++)
        for (int i = 0; i < 4; i++) {
            seen[bt / 3][a.idx[bt][i]]++;
            if (bt < 3 && a.idx[bt][i] != a.idx[bt + 3][i]) differ = true;
        }
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < N_IMG; i++)
            cr_assert_eq(seen[e][i], 1, "epoch %d sample %d seen %d times", e, i, seen[e][i]);
    cr_assert(differ, "epoch 1 has the order of epoch 0");
    cr_assert(a.after[2].epoch == 1 && a.after[2].position == 0);
    /* another seed, another order */
    run d;
    o.seed = 18;
    collect(ds, &o, 3, &d);
    bool other = false;
    for (int bt = 0; bt < 3; bt++)
        for (int i = 0; i < 4; i++) other |= d.idx[bt][i] != a.idx[bt][i];
    cr_assert(other);
    run_free(&a);
    run_free(&b);
    run_free(&c);
    run_free(&d);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_loader, rank_shards_disjoint_and_covering) {
    const char *dir = make_folder("ld2", N_IMG, 8, 8);
    df_dataset *ds = open_ds(dir, NULL);
    for (int64_t epoch = 0; epoch < 2; epoch++) {
        int seen[N_IMG] = {0};
        for (int rank = 0; rank < 3; rank++) {
            df_loader_opts o = df_loader_opts_default(2, 8);
            o.seed = 99;
            o.rank = rank;
            o.world_size = 3;
            o.start = (df_loader_cursor){epoch, 0};
            df_loader *l;
            cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK, "%s", df_last_error());
            cr_assert_eq(df_loader_samples_per_epoch(l), 4);
            for (int b = 0; b < 2; b++) {
                df_batch *bt;
                cr_assert_eq(df_loader_next(l, &bt), DF_OK);
                cr_assert_eq(bt->epoch, epoch);
                for (int i = 0; i < bt->n; i++) {
                    seen[bt->indices[i]]++;
                    cr_assert_eq(bt->indices[i], df_loader_sample_at(l, epoch, b * 2 + i));
                }
                df_batch_free(bt);
            }
            df_loader_free(l);
        }
        for (int i = 0; i < N_IMG; i++)
            cr_assert_eq(seen[i], 1, "sample %d seen %d times", i, seen[i]);
    }
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_loader, uneven_shards_pad_by_wrapping) {
    const char *dir = make_folder("ld3", 10, 8, 8);
    df_dataset *ds = open_ds(dir, NULL);
    int seen[10] = {0}, total = 0;
    for (int rank = 0; rank < 4; rank++) {
        df_loader_opts o = df_loader_opts_default(3, 8);
        o.rank = rank;
        o.world_size = 4;
        df_loader *l;
        cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK);
        cr_assert_eq(df_loader_samples_per_epoch(l), 3); /* ceil(10 / 4) */
        df_batch *bt;
        cr_assert_eq(df_loader_next(l, &bt), DF_OK);
        cr_assert(bt->epoch_end);
        for (int i = 0; i < bt->n; i++) seen[bt->indices[i]]++, total++;
        df_batch_free(bt);
        df_loader_free(l);
    }
    cr_assert_eq(total, 12);
    for (int i = 0; i < 10; i++) cr_assert_geq(seen[i], 1);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_loader, cursor_restore_mid_epoch_is_identical) {
    const char *dir = make_folder("ld4", N_IMG, 11, 13);
    df_dataset *ds = open_ds(dir, NULL);
    df_loader_opts o = df_loader_opts_default(5, 8); /* 3 batches per epoch: 5, 5, 2 */
    o.seed = 4242;
    run full;
    collect(ds, &o, 8, &full);
    cr_assert_eq(full.n[2], 2);
    for (int k = 1; k < 7; k++) {
        run rest;
        o.start = full.after[k - 1];
        collect(ds, &o, 8 - k, &rest);
        check_same(&full, k, &rest, 0, 8 - k, 8);
        run_free(&rest);
    }
    run_free(&full);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_loader, drop_last) {
    const char *dir = make_folder("ld5", N_IMG, 8, 8);
    df_dataset *ds = open_ds(dir, NULL);
    df_loader_opts o = df_loader_opts_default(5, 8);
    o.drop_last = true;
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK);
    cr_assert_eq(df_loader_batches_per_epoch(l), 2);
    for (int b = 0; b < 4; b++) {
        df_batch *bt;
        cr_assert_eq(df_loader_next(l, &bt), DF_OK);
        cr_assert_eq(bt->n, 5);
        cr_assert_eq(bt->epoch_end, b % 2 == 1);
        df_batch_free(bt);
    }
    df_loader_free(l);
    df_dataset_free(ds);
    remove_tree(dir);
}

static const char *folder_with_bad(const char *tag) {
    const char *dir = make_folder(tag, 6, 8, 8);
    char p[600];
    snprintf(p, sizeof p, "%s/img003.png", dir);
    write_text(p, "not a png at all");
    return dir;
}

Test(datasets_loader, bad_image_is_an_error_naming_the_file) {
    const char *dir = folder_with_bad("ld6");
    df_dataset *ds = open_ds(dir, NULL);
    df_loader_opts o = df_loader_opts_default(6, 8);
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK);
    df_batch *bt;
    cr_assert_eq(df_loader_next(l, &bt), DF_ERR_FORMAT);
    cr_assert_null(bt);
    cr_assert(strstr(df_last_error(), "img003.png"), "%s", df_last_error());
    cr_assert_eq(df_loader_next(l, &bt), DF_ERR_FORMAT); /* stays failed */
    df_loader_free(l);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_loader, skip_bad_images_counts_and_keeps_epoch_length) {
    const char *dir = folder_with_bad("ld7");
    df_dataset_opts dopt = df_dataset_opts_default();
    dopt.skip_bad_images = true;
    df_dataset *ds = open_ds(dir, &dopt);
    df_loader_opts o = df_loader_opts_default(4, 8);
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK);
    cr_assert_eq(df_loader_samples_per_epoch(l), 6);
    int got = 0, skipped = 0;
    for (int b = 0; b < 2; b++) {
        df_batch *bt;
        cr_assert_eq(df_loader_next(l, &bt), DF_OK, "%s", df_last_error());
        got += bt->n;
        skipped += bt->n_skipped;
        cr_assert_eq(bt->pixels->shape[0], bt->n);
        for (int i = 0; i < bt->n_skipped; i++) cr_assert(strstr(bt->skipped[i], "img003.png"));
        df_batch_free(bt);
    }
    cr_assert_eq(got, 5);
    cr_assert_eq(skipped, 1);
    cr_assert_eq(df_loader_skipped(l, 0), 1);
    df_loader_free(l);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_loader, malformed_metadata_fails_open) {
    const char *dir = make_folder("ld8", 2, 8, 8);
    char p[600];
    snprintf(p, sizeof p, "%s/metadata.jsonl", dir);
    write_text(p, "{\"file_name\": \"img000.png\", \"text\": \"a\"}\n{\"file_name\": "
                  "\"img001.png\", \"text\": 3}\n");
    df_dataset *ds;
    cr_assert_eq(df_dataset_open(dir, NULL, &ds), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "metadata.jsonl:2:"), "%s", df_last_error());
    remove_tree(dir);
}

Test(datasets_loader, malformed_metadata_skipped_and_counted) {
    const char *dir = make_folder("ld9", 3, 8, 8);
    char p[600];
    snprintf(p, sizeof p, "%s/metadata.jsonl", dir);
    write_text(p, "{\"file_name\": \"img000.png\", \"text\": \"a\"}\nnot json\n"
                  "{\"file_name\": \"img002.png\", \"text\": \"c\"}\n");
    df_dataset_opts o = df_dataset_opts_default();
    o.skip_bad_images = true;
    df_dataset *ds = open_ds(dir, &o);
    cr_assert_eq(df_dataset_images(ds), 2);
    cr_assert_eq(df_dataset_bad_entries(ds), 1);
    cr_assert(strstr(df_dataset_bad_entry(ds, 0), "metadata.jsonl:2: not valid JSON"), "%s",
              df_dataset_bad_entry(ds, 0));
    cr_assert_str_eq(df_dataset_file(ds, 1), "img002.png");
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_sources, sidecar_captions) {
    const char *dir = temp_dir("side");
    char p[600];
    for (int i = 0; i < 3; i++) {
        df_tensor *img = make_image(i, 8, 8);
        snprintf(p, sizeof p, "%s/%c.png", dir, 'c' - i);
        cr_assert_eq(df_png_write(p, img, 0, NULL, NULL), DF_OK);
        df_tensor_free(img);
    }
    snprintf(p, sizeof p, "%s/a.txt", dir);
    write_text(p, "a red apple\n");
    snprintf(p, sizeof p, "%s/b.txt", dir);
    write_text(p, "grinning face");
    snprintf(p, sizeof p, "%s/notes.md", dir);
    write_text(p, "ignored");
    df_dataset *ds = open_ds(dir, NULL);
    cr_assert_eq(df_dataset_kind_of(ds), DF_DATASET_SIDECAR);
    cr_assert_eq(df_dataset_images(ds), 3);
    cr_assert_str_eq(df_dataset_file(ds, 0), "a.png");
    cr_assert_str_eq(df_dataset_caption(ds, 0), "a red apple");
    cr_assert_str_eq(df_dataset_caption(ds, 1), "grinning face");
    cr_assert_str_eq(df_dataset_caption(ds, 2), "");
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_sources, repeats_override_dropout) {
    const char *dir = make_folder("rep", 4, 8, 8);
    df_dataset_opts o = df_dataset_opts_default();
    o.repeats = 3;
    o.caption_override = "a photo of sks dog";
    df_dataset *ds = open_ds(dir, &o);
    cr_assert_eq(df_dataset_len(ds), 12);
    df_philox g;
    df_philox_init(&g, 1, 2);
    df_tensor *img;
    char *cap;
    cr_assert_eq(df_dataset_get(ds, 9, NULL, &g, &img, &cap), DF_OK);
    cr_assert_str_eq(cap, "a photo of sks dog");
    cr_assert_eq(((uint8_t *)img->data)[0], 1 * 7); /* 9 % 4 = image 1 */
    free(cap);
    df_tensor_free(img);
    df_dataset_free(ds);
    o.repeats = 1;
    o.caption_override = NULL;
    o.caption_dropout = 0.5f;
    ds = open_ds(dir, &o);
    int empty = 0;
    for (int i = 0; i < 400; i++) {
        cr_assert_eq(df_dataset_get(ds, i % 4, NULL, &g, &img, &cap), DF_OK);
        empty += cap[0] == '\0';
        free(cap);
        df_tensor_free(img);
    }
    cr_assert(empty > 150 && empty < 250, "dropout rate %d / 400", empty);
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_sources, hdf5_pack_round_trip) {
    const char *dir = make_folder("h5", 5, 12, 20);
    char src[512], out[600];
    snprintf(src, sizeof src, "%s", dir);
    snprintf(out, sizeof out, "%s/pack.h5", src);
    df_dataset *ds = open_ds(src, NULL);
    int64_t skipped = -1;
    cr_assert_eq(df_pack_write(ds, out, 8, DF_RESAMPLE_BICUBIC, src, &skipped), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(skipped, 0);
    df_dataset *pk = open_ds(out, NULL);
    cr_assert_eq(df_dataset_kind_of(pk), DF_DATASET_HDF5);
    cr_assert_eq(df_dataset_images(pk), 5);
    for (int i = 0; i < 5; i++) {
        cr_assert_str_eq(df_dataset_file(pk, i), df_dataset_file(ds, i));
        cr_assert_str_eq(df_dataset_caption(pk, i), df_dataset_caption(ds, i));
        df_tensor *a, *b;
        cr_assert_eq(df_dataset_image(ds, i, NULL, &a), DF_OK);
        cr_assert_eq(df_dataset_image(pk, i, NULL, &b), DF_OK, "%s", df_last_error());
        df_tensor *r = df_image_resize_short(a, 8, DF_RESAMPLE_BICUBIC),
                  *c = df_image_center_crop(r, 8, 8);
        check_image("pack", b, c, 0.0);
        df_tensor_free(a);
        df_tensor_free(b);
        df_tensor_free(r);
        df_tensor_free(c);
    }
    /* the loader reads packs too, with the same results as the folder at the pack's size */
    df_loader_opts o = df_loader_opts_default(5, 8);
    o.transform.center_crop = true;
    o.transform.filter = DF_RESAMPLE_BICUBIC;
    run a, b;
    collect(ds, &o, 2, &a);
    collect(pk, &o, 2, &b);
    check_same(&a, 0, &b, 0, 2, 8);
    run_free(&a);
    run_free(&b);
    df_dataset_free(pk);
    df_dataset_free(ds);
    /* a truncated pack and a file that is not a pack are clean errors naming the file */
    snprintf(out, sizeof out, "%s/pack.h5", src);
    FILE *f = fopen(out, "r+b");
    cr_assert(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    cr_assert_eq(truncate(out, size / 2), 0);
    df_dataset *trunc;
    cr_assert_eq(df_dataset_open(out, NULL, &trunc), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "pack.h5"), "%s", df_last_error());
    /* a file that is not a pack */
    snprintf(out, sizeof out, "%s/img000.png", src);
    df_dataset *bad;
    cr_assert_eq(df_dataset_open(out, NULL, &bad), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "img000.png"));
    remove_tree(src);
}
