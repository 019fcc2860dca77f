/* datasets_impl.h — internals shared by the files of datasets/ (never included outside it).
 *
 * Decoders produce a U8 (H, W, c_in) tensor with c_in in {1, 2, 3, 4} (grey, grey+alpha, RGB,
 * RGBA, 8 bits per sample); df__image_finish turns it into what df_decode_opts asks for.
 */
#ifndef DF_DATASETS_IMPL_H
#define DF_DATASETS_IMPL_H

#include "datasets/datasets.h"

#include <pthread.h>
#include <sys/types.h>

/* Checks a header's dimensions against DF_IMAGE_MAX_*; DF_ERR_FORMAT naming `name` if absurd. */
df_status df__image_check_dims(const char *name, int64_t w, int64_t h);

df_status df__png_decode(const void *bytes, size_t n, const char *name, df_tensor **out);
df_status df__png_probe(const void *bytes, size_t n, const char *name, int *w, int *h);
df_status df__jpeg_decode(const void *bytes, size_t n, const char *name, df_tensor **out);
df_status df__jpeg_probe(const void *bytes, size_t n, const char *name, int *w, int *h);

/* Composites alpha onto the background and converts to opts->channels. Consumes `raw` (its
 * reference is dropped or returned as *out). */
df_tensor *df__image_finish(df_tensor *raw, const df_decode_opts *opts);

/* "a FIFO", "a socket", "a device", "a directory": what a non-regular file is, for messages. */
const char *df__file_kind(mode_t mode);

/* Reads a whole file into a malloc'd buffer (*len bytes, NUL-terminated one byte past). A path
 * that is not a regular file (FIFO, socket, device) is refused without blocking: DF_ERR_IO. */
df_status df__read_file(const char *path, char **buf, size_t *len);

/* DF_ERR_INVALID "<out>: <why>" when writing `out` would overwrite or add to what `ds` reads:
 * the dataset itself (a pack, the folder), one of its images, caption files or metadata.jsonl,
 * or a new image / caption / metadata.jsonl name inside its folder. */
df_status df__dataset_check_output(const df_dataset *ds, const char *out);

typedef struct df__h5src df__h5src;

struct df_dataset {
    df_dataset_kind kind;
    df_dataset_opts opts;
    char *caption_column, *caption_ext, *caption_override; /* owned copies behind opts */
    char *caption_template, *default_caption;              /* owned copies behind opts */
    int64_t n_uncaptioned;                                 /* images whose caption is "" */
    char *root;
    int64_t n;
    char **files; /* relative names */
    char **captions;
    df__h5src *h5;
    char **bad; /* messages of entries left out at open (skip_bad_images) */
    int64_t n_bad;
};

/* Serial HDF5 is not thread-safe: every H5* call in datasets/ holds this lock. */
extern pthread_mutex_t df__hdf5_lock;

/* The HDF5 source (source_hdf5.c). */
df_status df__h5_open(const char *path, df__h5src **out, int64_t *n, char ***files,
                      char ***captions);
void df__h5_close(df__h5src *h);
df_status df__h5_read(df__h5src *h, const char *path, int64_t i, df_tensor **out);
bool df__is_hdf5(const char *path);

#endif
