/* source_hdf5.c — HDF5 packs: one file holding a whole image set, for clusters where millions
 * of small files hurt.
 *
 * Layout (written by df_pack_write, read back by df__h5_*):
 *   /images      uint8 (N, R, R, 3), chunked (1, R, R, 3): one chunk per image
 *   /captions    (N) variable-length UTF-8 strings
 *   /file_names  (N) variable-length UTF-8 strings (the source file of each image)
 *   attributes on /: resolution (int), source (string)
 * Debian's HDF5 is the serial build, which is not thread-safe: every H5* call runs under
 * df__hdf5_lock. HDF5's own error printing is turned off; failures become df_error messages
 * naming the file.
 */
#include "datasets/datasets_impl.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

pthread_mutex_t df__hdf5_lock = PTHREAD_MUTEX_INITIALIZER;

struct df__h5src {
    hid_t file, images;
    int res;
};

static void quiet(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

bool df__is_hdf5(const char *path) {
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char b[8];
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    size_t n = fread(b, 1, 8, f);
    fclose(f);
    return n == 8 && memcmp(b, sig, 8) == 0;
}

static hid_t vlen_str_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

/* Reads a 1-D variable-length string dataset of n entries into malloc'd copies. */
static df_status read_strings(hid_t file, const char *path, const char *dname, int64_t n,
                              char ***out) {
    df_status s = DF_OK;
    hid_t d = H5Dopen2(file, dname, H5P_DEFAULT), sp = -1, t = -1;
    char **raw = NULL, **res = NULL;
    if (d < 0) return df_error(DF_ERR_FORMAT, "%s: HDF5 pack has no '%s' dataset", path, dname);
    sp = H5Dget_space(d);
    hsize_t dims[1];
    hid_t ft = H5Dget_type(d);
    bool is_str = ft >= 0 && H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0;
    if (ft >= 0) H5Tclose(ft);
    if (sp < 0 || H5Sget_simple_extent_ndims(sp) != 1 ||
        H5Sget_simple_extent_dims(sp, dims, NULL) != 1 || (int64_t)dims[0] != n || !is_str) {
        s = df_error(DF_ERR_FORMAT, "%s: '%s' must be %lld variable-length strings", path, dname,
                     (long long)n);
        goto done;
    }
    t = vlen_str_type();
    raw = calloc((size_t)n + 1, sizeof(char *));
    res = calloc((size_t)n + 1, sizeof(char *));
    DF_ASSERT(raw && res, "out of memory");
    if (n > 0 && H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) < 0) {
        s = df_error(DF_ERR_FORMAT, "%s: cannot read '%s'", path, dname);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        res[i] = strdup(raw[i] ? raw[i] : "");
        DF_ASSERT(res[i], "out of memory");
    }
    if (n > 0) H5Dvlen_reclaim(t, sp, H5P_DEFAULT, raw);
done:
    free(raw);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    if (s != DF_OK && res) {
        for (int64_t i = 0; i < n; i++) free(res[i]);
        free(res);
        res = NULL;
    }
    *out = res;
    return s;
}

/* A crafted pack can declare billions of images that are never stored (HDF5 hands out fill
 * values for missing chunks) or chunks that inflate enormously through a filter: either makes a
 * reader run for hours on a small file. Packs are df_pack_write's layout: unfiltered chunks of
 * one image, every one written, so the file must hold N * R * R * 3 bytes of image data. */
static df_status check_images_stored(hid_t images, const char *path, int64_t n, int R) {
    uint64_t per = (uint64_t)R * (uint64_t)R * 3;
    hid_t pl = H5Dget_create_plist(images);
    hsize_t chunk[4] = {0};
    bool chunked = pl >= 0 && H5Pget_layout(pl) == H5D_CHUNKED && H5Pget_chunk(pl, 4, chunk) == 4;
    int filters = pl >= 0 ? H5Pget_nfilters(pl) : -1;
    if (pl >= 0) H5Pclose(pl);
    bool contiguous = !chunked && filters == 0;
    if (!contiguous && (!chunked || filters != 0 || chunk[0] != 1 || chunk[1] != (hsize_t)R ||
                        chunk[2] != (hsize_t)R || chunk[3] != 3))
        return df_error(DF_ERR_FORMAT,
                        "%s: 'images' must be stored unfiltered in chunks of one image (1, %d, %d, "
                        "3), as `diffusion dataset pack` writes",
                        path, R, R);
    if (n < 0 || (n > 0 && (uint64_t)n > UINT64_MAX / per))
        return df_error(DF_ERR_FORMAT, "%s: %lld images of %dx%d is absurd", path, (long long)n, R,
                        R);
    uint64_t want = (uint64_t)n * per, have = (uint64_t)H5Dget_storage_size(images);
    if (have < want)
        return df_error(DF_ERR_FORMAT,
                        "%s: 'images' declares %lld images of %dx%d (%llu bytes) but the file "
                        "stores %llu bytes of them: damaged or not a pack",
                        path, (long long)n, R, R, (unsigned long long)want,
                        (unsigned long long)have);
    return DF_OK;
}

df_status df__h5_open(const char *path, df__h5src **out, int64_t *n, char ***files,
                      char ***captions) {
    *out = NULL;
    pthread_mutex_lock(&df__hdf5_lock);
    quiet();
    df_status s = DF_OK;
    df__h5src *h = calloc(1, sizeof *h);
    DF_ASSERT(h, "out of memory");
    h->images = -1;
    h->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (h->file < 0) {
        s = df_error(DF_ERR_FORMAT, "%s: cannot open as HDF5", path);
        goto done;
    }
    h->images = H5Dopen2(h->file, "images", H5P_DEFAULT);
    if (h->images < 0) {
        s = df_error(DF_ERR_FORMAT, "%s: HDF5 pack has no 'images' dataset", path);
        goto done;
    }
    hid_t sp = H5Dget_space(h->images), ty = H5Dget_type(h->images);
    hsize_t dims[4] = {0};
    int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (nd == 4) H5Sget_simple_extent_dims(sp, dims, NULL);
    bool u8 = ty >= 0 && H5Tget_class(ty) == H5T_INTEGER && H5Tget_size(ty) == 1;
    if (sp >= 0) H5Sclose(sp);
    if (ty >= 0) H5Tclose(ty);
    if (nd != 4 || dims[1] != dims[2] || dims[3] != 3 || !u8 || dims[1] == 0 ||
        df__image_check_dims(path, (int64_t)dims[2], (int64_t)dims[1]) != DF_OK) {
        s = df_error(DF_ERR_FORMAT, "%s: 'images' must be uint8 (N, R, R, 3) with 0 < R <= %d",
                     path, DF_IMAGE_MAX_SIDE);
        goto done;
    }
    h->res = (int)dims[1];
    *n = (int64_t)dims[0];
    if ((s = check_images_stored(h->images, path, *n, h->res)) != DF_OK) goto done;
    if ((s = read_strings(h->file, path, "captions", *n, captions)) != DF_OK) goto done;
    if ((s = read_strings(h->file, path, "file_names", *n, files)) != DF_OK) {
        for (int64_t i = 0; i < *n; i++) free((*captions)[i]);
        free(*captions);
        *captions = NULL;
        goto done;
    }
done:
    if (s != DF_OK) {
        if (h->images >= 0) H5Dclose(h->images);
        if (h->file >= 0) H5Fclose(h->file);
        free(h);
        *n = 0;
    } else {
        *out = h;
    }
    pthread_mutex_unlock(&df__hdf5_lock);
    return s;
}

void df__h5_close(df__h5src *h) {
    if (!h) return;
    pthread_mutex_lock(&df__hdf5_lock);
    H5Dclose(h->images);
    H5Fclose(h->file);
    pthread_mutex_unlock(&df__hdf5_lock);
    free(h);
}

df_status df__h5_read(df__h5src *h, const char *path, int64_t i, df_tensor **out) {
    int R = h->res;
    df_tensor *t = df_tensor_new(DF_DTYPE_U8, DF_DIMS(R, R, 3));
    pthread_mutex_lock(&df__hdf5_lock);
    hsize_t start[4] = {(hsize_t)i, 0, 0, 0}, count[4] = {1, (hsize_t)R, (hsize_t)R, 3};
    hsize_t mdims[3] = {(hsize_t)R, (hsize_t)R, 3};
    hid_t fs = H5Dget_space(h->images), ms = H5Screate_simple(3, mdims, NULL);
    herr_t e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (e >= 0) e = H5Dread(h->images, H5T_NATIVE_UCHAR, ms, fs, H5P_DEFAULT, t->data);
    H5Sclose(ms);
    H5Sclose(fs);
    pthread_mutex_unlock(&df__hdf5_lock);
    if (e < 0) {
        df_tensor_free(t);
        return df_error(DF_ERR_FORMAT, "%s: cannot read image %lld from the pack", path,
                        (long long)i);
    }
    *out = t;
    return DF_OK;
}

static df_status write_strings(hid_t file, const char *out_path, const char *name, char **v,
                               int64_t n) {
    hsize_t dims[1] = {(hsize_t)n};
    hid_t sp = H5Screate_simple(1, dims, NULL), t = vlen_str_type();
    hid_t d = H5Dcreate2(file, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t e = d < 0 ? -1 : (n > 0 ? H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) : 0);
    if (d >= 0) H5Dclose(d);
    H5Tclose(t);
    H5Sclose(sp);
    return e < 0 ? df_error(DF_ERR_IO, "%s: cannot write '%s'", out_path, name) : DF_OK;
}

static df_status pack_write(const df_dataset *ds, const char *out_path, int resolution,
                            df_resample filter, const char *source, int64_t *n_skipped) {
    if (resolution < 1 || resolution > DF_IMAGE_MAX_SIDE)
        return df_error(DF_ERR_INVALID, "%s: resolution %d out of range", out_path, resolution);
    DF_TRY(df__dataset_check_output(ds, out_path));
    if (df_dataset_images(ds) == 0)
        return df_error(DF_ERR_FORMAT, "%s: the dataset has no images: nothing to pack", ds->root);
    int64_t n = df_dataset_images(ds), k = 0, skipped = 0;
    int R = resolution;
    char **caps = calloc((size_t)n + 1, sizeof(char *)),
         **names = calloc((size_t)n + 1, sizeof(char *));
    DF_ASSERT(caps && names, "out of memory");
    df_status s = DF_OK;
    df_outfile of;
    if ((s = df_outfile_begin(&of, out_path)) != DF_OK) {
        free(caps);
        free(names);
        return s;
    }
    pthread_mutex_lock(&df__hdf5_lock);
    quiet();
    hid_t file = H5Fcreate(df_outfile_name(&of), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), d = -1;
    pthread_mutex_unlock(&df__hdf5_lock);
    if (file < 0) {
        df_outfile_abort(&of);
        free(caps);
        free(names);
        return df_error(DF_ERR_IO, "%s: cannot create HDF5 file", out_path);
    }
    hsize_t dims[4] = {0, (hsize_t)R, (hsize_t)R, 3},
            maxd[4] = {H5S_UNLIMITED, (hsize_t)R, (hsize_t)R, 3};
    hsize_t chunk[4] = {1, (hsize_t)R, (hsize_t)R, 3};
    pthread_mutex_lock(&df__hdf5_lock);
    hid_t sp = H5Screate_simple(4, dims, maxd), pl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(pl, 4, chunk);
    d = H5Dcreate2(file, "images", H5T_NATIVE_UCHAR, sp, H5P_DEFAULT, pl, H5P_DEFAULT);
    H5Pclose(pl);
    H5Sclose(sp);
    pthread_mutex_unlock(&df__hdf5_lock);
    if (d < 0) {
        s = df_error(DF_ERR_IO, "%s: cannot create the images dataset", out_path);
        goto done;
    }
    df_decode_opts dec = df_decode_opts_default();
    for (int64_t i = 0; i < n; i++) {
        df_tensor *img;
        s = df_dataset_image(ds, i, &dec, &img);
        if (s != DF_OK) {
            if (!ds->opts.skip_bad_images) goto done;
            fprintf(stderr, "warning: skipped %s\n", df_last_error());
            skipped++;
            s = DF_OK;
            continue;
        }
        df_tensor *rs = img;
        int H = (int)img->shape[0], W = (int)img->shape[1];
        if ((H < W ? H : W) != R) rs = df_image_resize_short(img, R, filter);
        df_tensor *cr = df_image_center_crop(rs, R, R);
        if (rs != img) df_tensor_free(rs);
        df_tensor_free(img);
        pthread_mutex_lock(&df__hdf5_lock);
        dims[0] = (hsize_t)k + 1;
        herr_t e = H5Dset_extent(d, dims);
        hid_t fs = H5Dget_space(d), ms = H5Screate_simple(3, chunk + 1, NULL);
        hsize_t start[4] = {(hsize_t)k, 0, 0, 0};
        if (e >= 0) e = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, chunk, NULL);
        if (e >= 0) e = H5Dwrite(d, H5T_NATIVE_UCHAR, ms, fs, H5P_DEFAULT, cr->data);
        H5Sclose(ms);
        H5Sclose(fs);
        pthread_mutex_unlock(&df__hdf5_lock);
        df_tensor_free(cr);
        if (e < 0) {
            s = df_error(DF_ERR_IO, "%s: cannot write image %lld", out_path, (long long)k);
            goto done;
        }
        caps[k] = ds->captions[i];
        names[k] = ds->files[i];
        k++;
    }
    pthread_mutex_lock(&df__hdf5_lock);
    s = write_strings(file, out_path, "captions", caps, k);
    if (s == DF_OK) s = write_strings(file, out_path, "file_names", names, k);
    if (s == DF_OK) {
        hid_t as = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(file, "resolution", H5T_NATIVE_INT, as, H5P_DEFAULT, H5P_DEFAULT);
        herr_t e = a < 0 ? -1 : H5Awrite(a, H5T_NATIVE_INT, &R);
        if (a >= 0) H5Aclose(a);
        hid_t t = vlen_str_type();
        const char *src = source ? source : "";
        a = e < 0 ? -1 : H5Acreate2(file, "source", t, as, H5P_DEFAULT, H5P_DEFAULT);
        e = a < 0 ? -1 : H5Awrite(a, t, &src);
        if (a >= 0) H5Aclose(a);
        H5Tclose(t);
        H5Sclose(as);
        if (e < 0) s = df_error(DF_ERR_IO, "%s: cannot write attributes", out_path);
    }
    pthread_mutex_unlock(&df__hdf5_lock);
done:
    pthread_mutex_lock(&df__hdf5_lock);
    if (d >= 0) H5Dclose(d);
    if (H5Fclose(file) < 0 && s == DF_OK)
        s = df_error(DF_ERR_IO, "%s: cannot close HDF5 file", out_path);
    pthread_mutex_unlock(&df__hdf5_lock);
    free(caps);
    free(names);
    if (s == DF_OK && k == 0 && n > 0)
        s = df_error(DF_ERR_FORMAT, "%s: none of the %lld images is readable (%lld skipped)",
                     ds->root, (long long)n, (long long)skipped);
    /* the pack replaces out_path only when complete: a failure leaves what was there before */
    if (s == DF_OK)
        s = df_outfile_commit(&of);
    else
        df_outfile_abort(&of);
    if (n_skipped) *n_skipped = skipped;
    return s;
}

df_status df_pack_write(const df_dataset *ds, const char *out_path, int resolution,
                        df_resample filter, const char *source, int64_t *n_skipped) {
    /* every image and intermediate of the pack loop is freed here: none belongs to a scope */
    df_scope_pause pause = df_scope_suspend();
    df_status s = pack_write(ds, out_path, resolution, filter, source, n_skipped);
    df_scope_resume(pause);
    return s;
}
