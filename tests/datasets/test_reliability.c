/* test_reliability.c — the datasets' half of "never lose a run" (issue 23, docs/reliability.md):
 * packs are atomic (a failed or killed pack leaves an existing OUT as it was, no partial file
 * under the final name) and never overwrite an input; data that is not there is an error
 * (a batch with no readable image names the skipped count, a dataset with no readable image is
 * refused at the start); FIFOs and other non-regular files are skipped without blocking; crafted
 * HDF5 packs with absurd dimensions are refused before any image is read. */
#include "tests/datasets/image_util.h"

#include <dirent.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

static df_dataset *open_ds(const char *dir, bool skip) {
    df_dataset_opts o = df_dataset_opts_default();
    o.skip_bad_images = skip;
    df_dataset *ds;
    cr_assert_eq(df_dataset_open(dir, &o, &ds), DF_OK, "%s", df_last_error());
    return ds;
}

/* The bytes of a file (static buffer, NUL-terminated); "" when missing. */
static const char *slurp(const char *path) {
    static char buf[1 << 16];
    buf[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* How many entries of `dir` contain ".tmp." (leftover temporaries). */
static int count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    cr_assert(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static void break_image(const char *dir, int i) {
    char p[700];
    snprintf(p, sizeof p, "%s/img%03d.png", dir, i);
    write_text(p, "not a png at all");
}

/* ---------------------------------------------------------------- atomic packs ---------------- */

Test(datasets_reliability, failed_pack_keeps_existing_out) {
    const char *d = make_folder("rp1", 4, 8, 8);
    char dir[512], out[600];
    snprintf(dir, sizeof dir, "%s", d);
    break_image(dir, 2);
    const char *t = temp_dir("rp1o");
    snprintf(out, sizeof out, "%s/out.h5", t);
    write_text(out, "the previous pack");
    df_dataset *ds = open_ds(dir, false);
    cr_assert_eq(df_pack_write(ds, out, 8, DF_RESAMPLE_BICUBIC, dir, NULL), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "img002.png"), "%s", df_last_error());
    cr_assert_str_eq(slurp(out), "the previous pack");
    cr_assert_eq(count_tmp(t), 0, "a temporary was left behind");
    df_dataset_free(ds);
    remove_tree(dir);
    remove_tree(t);
}

Test(datasets_reliability, pack_with_no_readable_image_fails_and_writes_nothing) {
    const char *d = make_folder("rp2", 3, 8, 8);
    char dir[512], out[600];
    snprintf(dir, sizeof dir, "%s", d);
    for (int i = 0; i < 3; i++) break_image(dir, i);
    const char *t = temp_dir("rp2o");
    snprintf(out, sizeof out, "%s/out.h5", t);
    df_dataset *ds = open_ds(dir, true);
    int64_t skipped = -1;
    cr_assert_eq(df_pack_write(ds, out, 8, DF_RESAMPLE_BICUBIC, dir, &skipped), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "none of the 3 images is readable (3 skipped)"), "%s",
              df_last_error());
    cr_assert_eq(skipped, 3);
    cr_assert_eq(access(out, F_OK), -1, "a pack was written");
    cr_assert_eq(count_tmp(t), 0);
    df_dataset_free(ds);
    remove_tree(dir);
    remove_tree(t);
}

Test(datasets_reliability, pack_of_an_empty_folder_fails) {
    const char *d = temp_dir("rp6");
    char dir[512], out[600];
    snprintf(dir, sizeof dir, "%s", d);
    snprintf(out, sizeof out, "%s.h5", dir);
    df_dataset *ds = open_ds(dir, false);
    cr_assert_eq(df_pack_write(ds, out, 8, DF_RESAMPLE_BICUBIC, dir, NULL), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "the dataset has no images"), "%s", df_last_error());
    cr_assert_eq(access(out, F_OK), -1, "a pack was written");
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_reliability, pack_replaces_out_only_when_complete) {
    const char *d = make_folder("rp3", 3, 8, 8);
    char dir[512], out[600];
    snprintf(dir, sizeof dir, "%s", d);
    const char *t = temp_dir("rp3o");
    snprintf(out, sizeof out, "%s/out.h5", t);
    write_text(out, "the previous pack");
    df_dataset *ds = open_ds(dir, false);
    cr_assert_eq(df_pack_write(ds, out, 8, DF_RESAMPLE_BICUBIC, dir, NULL), DF_OK, "%s",
                 df_last_error());
    df_dataset_free(ds);
    ds = open_ds(out, false);
    cr_assert_eq(df_dataset_kind_of(ds), DF_DATASET_HDF5);
    cr_assert_eq(df_dataset_images(ds), 3);
    cr_assert_eq(count_tmp(t), 0);
    df_dataset_free(ds);
    remove_tree(dir);
    remove_tree(t);
}

Test(datasets_reliability, pack_refuses_outputs_that_are_inputs) {
    const char *d = make_folder("rp4", 3, 8, 8);
    char dir[512], p[700], before[4096];
    snprintf(dir, sizeof dir, "%s", d);
    snprintf(p, sizeof p, "%s/img001.png", dir);
    size_t n_before = strlen(memcpy(before, slurp(p), sizeof before - 1));
    df_dataset *ds = open_ds(dir, false);
    /* a source image, through a second path to it too */
    static const char *const refused[] = {"img001.png",     "./img001.png", "new.png",
                                          "metadata.jsonl", "img000.txt",   "new.JPG"};
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, refused[i]);
        cr_assert_eq(df_pack_write(ds, p, 8, DF_RESAMPLE_BICUBIC, dir, NULL), DF_ERR_INVALID,
                     "%s was not refused", refused[i]);
        cr_assert(strstr(df_last_error(), "choose another output"), "%s", df_last_error());
    }
    snprintf(p, sizeof p, "%s/img001.png", dir);
    cr_assert_eq(strlen(slurp(p)), n_before, "the source image was touched");
    cr_assert_eq(count_tmp(dir), 0);
    /* a pack beside the images (not a name the folder reads) is fine */
    snprintf(p, sizeof p, "%s/pack.h5", dir);
    cr_assert_eq(df_pack_write(ds, p, 8, DF_RESAMPLE_BICUBIC, dir, NULL), DF_OK, "%s",
                 df_last_error());
    df_dataset_free(ds);
    /* re-packing a pack onto itself */
    ds = open_ds(p, false);
    cr_assert_eq(df_pack_write(ds, p, 8, DF_RESAMPLE_BICUBIC, p, NULL), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "is the dataset being read"), "%s", df_last_error());
    df_dataset_free(ds);
    ds = open_ds(p, false);
    cr_assert_eq(df_dataset_images(ds), 3, "the pack was damaged by the refused write");
    df_dataset_free(ds);
    remove_tree(dir);
}

/* A pack killed with SIGKILL while it writes leaves OUT as it was: the bytes go to a temporary
 * sibling until the rename. The child is killed as soon as the temporary exists. */
Test(datasets_reliability, killed_pack_leaves_out_untouched) {
    const char *d = make_folder("rp5", 60, 96, 96);
    char dir[512], out[600];
    snprintf(dir, sizeof dir, "%s", d);
    const char *t = temp_dir("rp5o");
    char tdir[512];
    snprintf(tdir, sizeof tdir, "%s", t);
    snprintf(out, sizeof out, "%s/out.h5", tdir);
    write_text(out, "the previous pack");
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        df_dataset *ds;
        if (df_dataset_open(dir, NULL, &ds) != DF_OK) _exit(2);
        for (int k = 0; k < 1000; k++) /* repeat, so the kill always lands inside a pack */
            if (df_pack_write(ds, out, 64, DF_RESAMPLE_BICUBIC, dir, NULL) != DF_OK) _exit(3);
        _exit(0);
    }
    /* wait for the first rename (the pack is complete once), then kill inside a later pack */
    int polls = 0;
    while (strcmp(slurp(out), "the previous pack") == 0 && polls++ < 200000) usleep(500);
    while (count_tmp(tdir) == 0 && polls++ < 400000) usleep(200);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFSIGNALED(st), "the child finished before it could be killed");
    df_dataset *ds = open_ds(out, false);
    cr_assert_eq(df_dataset_images(ds), 60, "OUT is not a complete pack");
    df_dataset_free(ds);
    remove_tree(dir);
    remove_tree(tdir);
}

/* ---------------------------------------------------------------- data that isn't there ------- */

Test(datasets_reliability, loader_refuses_dataset_with_no_readable_image) {
    const char *dir = make_folder("rl1", 3, 8, 8);
    for (int i = 0; i < 3; i++) break_image(dir, i);
    df_dataset *ds = open_ds(dir, true);
    df_loader_opts o = df_loader_opts_default(2, 8);
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_ERR_FORMAT);
    cr_assert_null(l);
    cr_assert(strstr(df_last_error(), "none of the 3 images is readable"), "%s", df_last_error());
    cr_assert(strstr(df_last_error(), "img000.png"), "%s", df_last_error());
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_reliability, batch_with_no_readable_image_is_an_error) {
    const char *dir = make_folder("rl2", 4, 8, 8);
    break_image(dir, 0);
    break_image(dir, 1);
    df_dataset *ds = open_ds(dir, true);
    df_loader_opts o = df_loader_opts_default(2, 8);
    o.shuffle = false; /* batch 0 is images 0 and 1: both unreadable */
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK, "%s", df_last_error());
    df_batch *b;
    cr_assert_eq(df_loader_next(l, &b), DF_ERR_FORMAT);
    cr_assert_null(b);
    cr_assert(strstr(df_last_error(), "no readable image in a batch of 2: 2 skipped"), "%s",
              df_last_error());
    df_loader_free(l);
    /* a batch with one readable image still trains */
    break_image(dir, 2);
    o.start = (df_loader_cursor){0, 2};
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_loader_next(l, &b), DF_OK, "%s", df_last_error());
    cr_assert_eq(b->n, 1);
    cr_assert_eq(b->n_skipped, 1);
    df_batch_free(b);
    df_loader_free(l);
    df_dataset_free(ds);
    remove_tree(dir);
}

/* ---------------------------------------------------------------- hangs ----------------------- */

Test(datasets_reliability, fifo_in_sidecar_folder_is_skipped, .timeout = 60) {
    const char *dir = make_folder("rf1", 2, 8, 8);
    char p[700];
    snprintf(p, sizeof p, "%s/metadata.jsonl", dir);
    cr_assert_eq(unlink(p), 0); /* a sidecar folder */
    snprintf(p, sizeof p, "%s/x.png", dir);
    cr_assert_eq(mkfifo(p, 0644), 0);
    snprintf(p, sizeof p, "%s/img000.txt", dir);
    cr_assert_eq(mkfifo(p, 0644), 0); /* a FIFO caption file */
    df_dataset *ds = open_ds(dir, true);
    cr_assert_eq(df_dataset_images(ds), 1, "the FIFO image or caption was kept");
    cr_assert_str_eq(df_dataset_file(ds, 0), "img001.png");
    cr_assert_eq(df_dataset_bad_entries(ds), 2);
    bool named = false;
    for (int64_t i = 0; i < df_dataset_bad_entries(ds); i++)
        named |= strstr(df_dataset_bad_entry(ds, i), "x.png: a FIFO, not a regular file") != NULL;
    cr_assert(named, "the FIFO is not reported");
    df_dataset_free(ds);
    remove_tree(dir);
}

Test(datasets_reliability, fifo_in_metadata_folder_is_skipped, .timeout = 60) {
    const char *dir = make_folder("rf2", 2, 8, 8);
    char p[700];
    snprintf(p, sizeof p, "%s/img001.png", dir);
    cr_assert_eq(unlink(p), 0);
    cr_assert_eq(mkfifo(p, 0644), 0);
    df_dataset *ds = open_ds(dir, false);
    cr_assert_eq(df_dataset_images(ds), 1);
    cr_assert_eq(df_dataset_bad_entries(ds), 1);
    cr_assert(strstr(df_dataset_bad_entry(ds, 0), "img001.png: a FIFO"), "%s",
              df_dataset_bad_entry(ds, 0));
    df_dataset_free(ds);
    /* a FIFO read directly, and a FIFO given as the dataset, fail at once */
    df_tensor *img;
    cr_assert_eq(df_image_read(p, NULL, &img), DF_ERR_IO);
    cr_assert(strstr(df_last_error(), "a FIFO, not a regular file"), "%s", df_last_error());
    cr_assert_eq(df_dataset_open(p, NULL, &ds), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "a FIFO"), "%s", df_last_error());
    /* metadata.jsonl itself a FIFO */
    snprintf(p, sizeof p, "%s/metadata.jsonl", dir);
    cr_assert_eq(unlink(p), 0);
    cr_assert_eq(mkfifo(p, 0644), 0);
    cr_assert_eq(df_dataset_open(dir, NULL, &ds), DF_ERR_IO);
    cr_assert(strstr(df_last_error(), "metadata.jsonl: a FIFO"), "%s", df_last_error());
    remove_tree(dir);
}

/* An HDF5 file with an 'images' dataset (n, R, R, 3) uint8 chunked as `chunk`, with `gzip` or
 * not, holding `written` images, plus n strings of captions and file names. */
static void write_crafted_pack(const char *path, hsize_t n, int R, const hsize_t chunk[4],
                               bool gzip, int written) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    hsize_t dims[4] = {n, (hsize_t)R, (hsize_t)R, 3};
    hid_t sp = H5Screate_simple(4, dims, NULL), pl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(pl, 4, chunk);
    if (gzip) H5Pset_deflate(pl, 9);
    hid_t d = H5Dcreate2(f, "images", H5T_NATIVE_UCHAR, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    cr_assert_geq(d, 0);
    if (written) {
        size_t bytes = (size_t)written * R * R * 3;
        unsigned char *zero = calloc(bytes, 1);
        hsize_t start[4] = {0}, count[4] = {(hsize_t)written, (hsize_t)R, (hsize_t)R, 3};
        hid_t fs = H5Dget_space(d), ms = H5Screate_simple(4, count, NULL);
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
        cr_assert_geq(H5Dwrite(d, H5T_NATIVE_UCHAR, ms, fs, H5P_DEFAULT, zero), 0);
        H5Sclose(ms);
        H5Sclose(fs);
        free(zero);
    }
    H5Dclose(d);
    H5Pclose(pl);
    H5Sclose(sp);
    H5Fclose(f);
}

Test(datasets_reliability, crafted_hdf5_dimensions_refused_before_reading, .timeout = 60) {
    const char *t = temp_dir("rh");
    char p[600];
    snprintf(p, sizeof p, "%s/p.h5", t);
    df_dataset *ds;
    /* a billion images declared, none stored */
    hsize_t one[4] = {1, 64, 64, 3};
    write_crafted_pack(p, 1000000000, 64, one, false, 0);
    cr_assert_eq(df_dataset_open(p, NULL, &ds), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "declares 1000000000 images of 64x64"), "%s",
              df_last_error());
    /* chunks through a filter (a deflate bomb) */
    write_crafted_pack(p, 4, 64, one, true, 4);
    cr_assert_eq(df_dataset_open(p, NULL, &ds), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "unfiltered in chunks of one image"), "%s", df_last_error());
    /* chunks spanning many images */
    hsize_t many[4] = {4, 64, 64, 3};
    write_crafted_pack(p, 4, 64, many, false, 4);
    cr_assert_eq(df_dataset_open(p, NULL, &ds), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "chunks of one image"), "%s", df_last_error());
    remove_tree(t);
}

/* ---------------------------------------------------------------- out of memory --------------- */

/* A batch that does not fit is DF_ERR_NOMEM naming the batch, not an abort in a worker thread. */
Test(datasets_reliability, batch_out_of_memory_is_an_error) {
    const char *dir = make_folder("ro1", 4, 8, 8);
    df_dataset *ds = open_ds(dir, false);
    df_loader_opts o = df_loader_opts_default(4, 64); /* a batch is 4 * 3 * 64 * 64 floats */
    o.workers = 1;
    o.prefetch = 1;
    df_mem_set_limit(100 << 10); /* decoding fits, the 192 KiB batch does not */
    df_loader *l;
    cr_assert_eq(df_loader_new(ds, &o, &l), DF_OK, "%s", df_last_error());
    df_batch *b;
    cr_assert_eq(df_loader_next(l, &b), DF_ERR_NOMEM);
    cr_assert(strstr(df_last_error(), "loader: out of memory allocating 192.0 KiB"), "%s",
              df_last_error());
    cr_assert(strstr(df_last_error(), "a batch of 4 images at 64x64"), "%s", df_last_error());
    df_mem_set_limit(0);
    df_loader_free(l);
    df_dataset_free(ds);
    remove_tree(dir);
}
