/* datasets.h — image I/O (PNG, JPEG), transforms, dataset sources (image folder with
 * metadata.jsonl, sidecar .txt captions, HDF5 packs) and the threaded, resumable loader.
 *
 * Images are U8 tensors of shape (H, W, C), C = 1 (grey) or 3 (RGB), row-major: the layout of
 * numpy.asarray(PIL.Image). Every function returning a new tensor follows the ownership rule of
 * autograd.h (outside a scope the caller owns it and drops it with df_tensor_free).
 *
 * Errors: every failure caused by outside bytes returns DF_ERR_FORMAT (or DF_ERR_IO when the
 * file cannot be read) with df_last_error() = "<file>[:<line>]: <reason>". No function here
 * aborts or crashes on bad bytes; DF_ASSERT only guards programmer errors (bad arguments).
 *
 * Reference behaviour: decoded pixels equal Pillow's (`Image.open(f).convert("RGB")`, with
 * alpha composited by `Image.alpha_composite` onto the background colour), resizes equal
 * Pillow's `Image.resize` (ImagingResample) and the transform pipeline is diffusers'
 * train_text_to_image one (Resize(shorter side), Center/RandomCrop, RandomHorizontalFlip,
 * ToTensor, Normalize([0.5], [0.5])).
 */
#ifndef DF_DATASETS_H
#define DF_DATASETS_H

#include "autograd/autograd.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- image I/O ------------------- */

/* Images larger than this are refused before any pixel memory is allocated. */
#define DF_IMAGE_MAX_SIDE 16384
#define DF_IMAGE_MAX_PIXELS ((int64_t)1 << 28)

typedef struct df_decode_opts {
    int channels;          /* 3: RGB (default), 1: grey (Pillow's "L" conversion) */
    uint8_t background[3]; /* RGB colour that alpha is composited onto (default white) */
    bool drop_alpha;       /* ignore alpha instead (Pillow's convert("RGB"): the colour values
                              of transparent pixels as stored; CLIPImageProcessor) */
} df_decode_opts;
DF_API df_decode_opts df_decode_opts_default(void);

/* Decodes a PNG (1/2/4/8/16-bit grey, grey+alpha, palette (with tRNS), RGB, RGBA, interlaced)
 * or JPEG (baseline, progressive, grey, CMYK/YCCK) held in memory, chosen by magic bytes.
 * 16-bit samples keep their high byte (as Pillow). `name` is used in error messages only.
 * `opts` may be NULL (defaults). On success *out is a new U8 (H, W, opts->channels) tensor. */
DF_API df_status df_image_decode(const void *bytes, size_t n, const char *name,
                                 const df_decode_opts *opts, df_tensor **out);
/* Reads and decodes the file at `path` (as df_image_decode). */
DF_API df_status df_image_read(const char *path, const df_decode_opts *opts, df_tensor **out);
/* Width and height from the header alone (no pixel decode). */
DF_API df_status df_image_probe(const void *bytes, size_t n, const char *name, int *width,
                                int *height);

/* Writes a U8 (H, W, C) image, C in {1, 2, 3, 4} (grey, grey+alpha, RGB, RGBA), as an 8-bit
 * PNG with `n_text` tEXt chunks (keys: 1-79 Latin-1 characters; values: any text). Atomic
 * (df_outfile): `path` holds its previous bytes until the complete PNG replaces it. */
DF_API df_status df_png_write(const char *path, const df_tensor *img, int n_text,
                              const char *const *keys, const char *const *values);

/* ---------------------------------------------------------------- transforms ------------------ */

typedef enum df_resample {
    DF_RESAMPLE_BILINEAR = 0, /* PIL.Image.BILINEAR (triangle filter, antialiased) */
    DF_RESAMPLE_BICUBIC,      /* PIL.Image.BICUBIC (a = -0.5, antialiased) */
    DF_RESAMPLE_AREA,         /* PIL.Image.BOX: the mean over each output pixel's area */
    DF_RESAMPLE_LANCZOS,      /* PIL.Image.LANCZOS (support 3; diffusers' VaeImageProcessor) */
} df_resample;
/* Parses "bilinear", "bicubic", "area"/"box", "lanczos"; false for anything else. */
DF_API bool df_resample_parse(const char *name, df_resample *out);

/* Resizes a U8 (H, W, C) image to (out_h, out_w) exactly as Pillow's Image.resize with the
 * same filter (two separable passes, horizontal first, 8-bit intermediate, 22-bit fixed-point
 * coefficients). Returns a new tensor (a copy when the size is unchanged). */
DF_API df_tensor *df_image_resize(const df_tensor *img, int out_h, int out_w, df_resample f);
/* Resizes so that the shorter side is `size`, the longer int(size * long / short) — as
 * torchvision's Resize(size) on a PIL image. */
DF_API df_tensor *df_image_resize_short(const df_tensor *img, int size, df_resample f);
/* The (h, w) window at (top, left), which must lie inside the image. A new tensor. */
DF_API df_tensor *df_image_crop(const df_tensor *img, int top, int left, int h, int w);
/* torchvision CenterCrop offsets: top = round((H - h) / 2), left = round((W - w) / 2). */
DF_API df_tensor *df_image_center_crop(const df_tensor *img, int h, int w);
/* Uniform random crop offsets (as torchvision RandomCrop) drawn from `g`. */
DF_API void df_random_crop_offsets(df_philox *g, int H, int W, int h, int w, int *top, int *left);
/* Mirror left-right. A new tensor. */
DF_API df_tensor *df_image_hflip(const df_tensor *img);
/* Writes the U8 (H, W, C) image as C planes of H*W floats in [-1, 1] (x / 127.5 - 1). */
DF_API void df_image_to_chw(const df_tensor *img, float *dst);

/* The training transform of one sample. */
typedef struct df_transform {
    int resolution;     /* output side R: the sample is (C, R, R) */
    df_resample filter; /* default bilinear (as diffusers) */
    bool center_crop;   /* true: center crop; false: random crop (default) */
    bool random_flip;   /* flip with probability 1/2 */
    df_decode_opts decode;
} df_transform;
DF_API df_transform df_transform_default(int resolution);
/* Resize shorter side to R (skipped when already R), crop R x R, flip, normalise into `dst`
 * (C * R * R floats). Randomness only from `g`: the crop offsets (random crop), then one
 * uniform for the flip (random_flip). Returns whether the image was flipped. */
DF_API bool df_transform_apply(const df_transform *t, const df_tensor *img, df_philox *g,
                               float *dst);
/* The flip decision df_transform_apply draws for a center-cropped sample (one uniform from g
 * when random_flip), without an image: what a loader that delivers no pixels draws. */
DF_API bool df_transform_draw_flip(const df_transform *t, df_philox *g);

/* ---------------------------------------------------------------- metadata.jsonl -------------- */

/* ControlNet conditioning images (canny.c, silhouette.c). U8 (H, W, 3) maps, 0 or 255.
 * df_canny: OpenCV's cv2.Canny(img, low, high) (aperture 3, L1 gradient; see canny.c) of a U8
 * (H, W, 1 or 3) image; DF_ERR_INVALID for another image or 0 <= low <= high <= 4080 broken.
 * df_image_read_alpha: a PNG's alpha channel as U8 (H, W, 1); DF_ERR_INVALID naming the file
 * when it has none. df_silhouette: 255 where alpha >= threshold. */
DF_API df_status df_canny(const df_tensor *img, int low, int high, df_tensor **out);
DF_API df_status df_image_read_alpha(const char *path, df_tensor **out);
DF_API df_tensor *df_silhouette(const df_tensor *alpha, int threshold);
/* A conditioning generator as a spec string: "file" (the conditioning_image column's file as
 * it is, RGB), "canny" / "canny:LOW:HIGH" (of the image; 100, 200 by default), "silhouette" /
 * "silhouette:T" (of the image's alpha; 128 by default). */
typedef enum df_cond_kind { DF_COND_FILE, DF_COND_CANNY, DF_COND_SILHOUETTE } df_cond_kind;
typedef struct df_conditioning {
    df_cond_kind kind;
    int low, high, threshold;
} df_conditioning;
DF_API df_status df_conditioning_parse(const char *spec, df_conditioning *out);
/* The conditioning image of the file at `path` (the conditioning file itself for "file", else
 * the image the generator reads): a new U8 (H, W, 3) tensor the caller frees (df_tensor_free,
 * whatever scope is open); errors name the file. */
DF_API df_status df_conditioning_make(const df_conditioning *c, const char *path, df_tensor **out);

/* One entry of metadata.jsonl (Hugging Face ImageFolder): file_name and a caption column. */
typedef struct df_meta_entry {
    char *file_name; /* owned */
    char *caption;   /* owned; "" when the column is absent or null */
} df_meta_entry;
/* Parses metadata.jsonl text. Empty / whitespace-only lines are skipped; every other line must
 * be one JSON object with a string "file_name" (relative, no "..") and, when present, a string
 * (or null) `caption_column`. A bad line is DF_ERR_FORMAT "<name>:<line>: <reason>" — unless
 * `bad` is not NULL: then bad lines are left out and *bad (owned, n_bad malloc'd strings, free
 * each and the array) holds their messages. On success *entries (owned, free with
 * df_meta_free) holds *n entries. */
DF_API df_status df_meta_parse(const char *text, size_t len, const char *name,
                               const char *caption_column, df_meta_entry **entries, int64_t *n,
                               char ***bad, int64_t *n_bad);
DF_API void df_meta_free(df_meta_entry *entries, int64_t n);

/* ---------------------------------------------------------------- datasets -------------------- */

typedef enum df_dataset_kind {
    DF_DATASET_METADATA = 0, /* folder with metadata.jsonl */
    DF_DATASET_SIDECAR,      /* folder of images with <stem>.txt captions (kohya) */
    DF_DATASET_HDF5,         /* pack written by df_pack_write */
} df_dataset_kind;

typedef struct df_dataset_opts {
    const char *caption_column;   /* metadata.jsonl column (default "text") */
    const char *caption_ext;      /* sidecar extension (default ".txt") */
    int repeats;                  /* every image appears `repeats` times per epoch (default 1) */
    float caption_dropout;        /* probability of replacing the caption by "" (default 0) */
    const char *caption_override; /* when set, every caption is this (DreamBooth instance prompt) */
    bool skip_bad_images; /* skip (count, report) unreadable images, metadata lines and caption
                             files instead of failing */
    /* Captions. An image "has no caption" when its caption is empty: the metadata.jsonl column
     * absent, null or "", no (or an empty) sidecar file, an empty string in a pack. */
    const char *caption_template; /* e.g. "an emoji of {}": every "{}" is the image's caption;
                                     NULL or "": the caption as is. Not applied to the override
                                     nor to default_caption */
    const char *default_caption;  /* the caption of images without one (NULL: none) */
    bool require_captions; /* images without a caption (and no default_caption nor override) are
                              an error at open naming their count and the first one */
} df_dataset_opts;
DF_API df_dataset_opts df_dataset_opts_default(void);

typedef struct df_dataset df_dataset;

/* Opens `path`: a directory with metadata.jsonl (kind METADATA), another directory (SIDECAR:
 * every .png/.jpg/.jpeg, sorted by name), or an HDF5 pack file. Files are only listed here;
 * images are decoded by df_dataset_get. The options are copied. */
DF_API df_status df_dataset_open(const char *path, const df_dataset_opts *opts, df_dataset **out);
DF_API void df_dataset_free(df_dataset *ds);
DF_API df_dataset_kind df_dataset_kind_of(const df_dataset *ds);
/* Distinct images (without repeats) and samples per epoch (images * repeats). */
DF_API int64_t df_dataset_images(const df_dataset *ds);
DF_API int64_t df_dataset_len(const df_dataset *ds);
/* The path the data set was opened from (a folder or a pack). Borrowed. */
DF_API const char *df_dataset_root(const df_dataset *ds);
/* File name of image i (< df_dataset_images), relative to the dataset. Borrowed. */
DF_API const char *df_dataset_file(const df_dataset *ds, int64_t i);
/* Caption of image i as read (before template, default, override and dropout). Borrowed. */
DF_API const char *df_dataset_caption(const df_dataset *ds, int64_t i);
/* Images without a caption (see df_dataset_opts), and the caption image i trains with before
 * dropout: the override, else default_caption for an image without one, else the template
 * applied. A new malloc'd string (free it). */
DF_API int64_t df_dataset_uncaptioned(const df_dataset *ds);
DF_API char *df_dataset_sample_caption(const df_dataset *ds, int64_t i);
/* Entries left out when the dataset was opened: with skip_bad_images, malformed metadata.jsonl
 * lines and unreadable caption files; always, images that exist but are not regular files (a
 * FIFO named x.png would block the reader, a device never end). Their count and messages
 * "<file>[:<line>]: <reason>" (borrowed). Reported on stderr by df_dataset_open too. */
DF_API int64_t df_dataset_bad_entries(const df_dataset *ds);
DF_API const char *df_dataset_bad_entry(const df_dataset *ds, int64_t i);
/* Decodes image i (< df_dataset_images) into a new U8 (H, W, C) tensor. Thread-safe. */
DF_API df_status df_dataset_image(const df_dataset *ds, int64_t i, const df_decode_opts *dec,
                                  df_tensor **out);
/* Sample `index` (< df_dataset_len): image index % images; its df_dataset_sample_caption,
 * replaced by "" on dropout drawn from `g`. *caption is a new malloc'd string (free it).
 * Thread-safe. */
DF_API df_status df_dataset_get(const df_dataset *ds, int64_t index, const df_decode_opts *dec,
                                df_philox *g, df_tensor **img, char **caption);
/* The caption part of df_dataset_get alone (the same draw from g), without decoding. */
DF_API char *df_dataset_draw_caption(const df_dataset *ds, int64_t index, df_philox *g);

/* Writes every image of `ds`, resized (shorter side) and center-cropped to R x R RGB, into an
 * HDF5 file: datasets images (N, R, R, 3) uint8 chunked (1, R, R, 3), captions (N) and
 * file_names (N) variable-length UTF-8 strings, attributes resolution (int) and source (string).
 * Unreadable images fail the pack unless the dataset skips bad images; *n_skipped (may be NULL)
 * counts them; a dataset without images, or none of whose images is readable, fails
 * (DF_ERR_FORMAT naming the count). The pack is written to a temporary sibling and renamed over out_path only when
 * complete (df_outfile): a failed or interrupted pack leaves an existing out_path untouched.
 * An out_path that the dataset reads (the source pack or folder, one of its images, caption
 * files or metadata.jsonl, or a new file the folder would read) is refused: DF_ERR_INVALID. */
DF_API df_status df_pack_write(const df_dataset *ds, const char *out_path, int resolution,
                               df_resample filter, const char *source, int64_t *n_skipped);

/* ---------------------------------------------------------------- aspect-ratio buckets -------- */

/* kohya's enable_bucket settings (datasets/buckets.c has the rules, read from sd-scripts). */
typedef struct df_bucket_opts {
    int resolution;                     /* the buckets' area is resolution^2 */
    int min_reso, max_reso, reso_steps; /* min_bucket_reso, max_bucket_reso, bucket_reso_steps */
} df_bucket_opts;
/* kohya's defaults: min 256, max 1024, steps 64. */
DF_API df_bucket_opts df_bucket_opts_default(int resolution);

/* The bucket list as kohya's make_bucket_resolutions: *n (width, height) pairs, sorted, into
 * *out (malloc'd). DF_ERR_INVALID naming the setting for settings that make no sense. */
DF_API df_status df_bucket_resolutions(const df_bucket_opts *o, int (**out)[2], int *n);
/* The bucket of a width x height image (kohya's select_bucket) and the size it is resized to
 * before the crop. */
DF_API int df_bucket_select(const int (*resos)[2], int n, int width, int height, int *resized_w,
                            int *resized_h);

/* Every image's bucket. */
typedef struct df_buckets {
    int n;             /* buckets */
    int (*resos)[2];   /* (width, height) of each bucket */
    int64_t n_images;  /* the data set's images */
    int *bucket;       /* of each image */
    int (*resized)[2]; /* each image's (width, height) before the crop */
} df_buckets;
/* Assigns each image of ds (header sizes; no decode except for packs). An image whose aspect
 * ratio lies outside the buckets' range is DF_ERR_INVALID naming it. Free with df_buckets_free. */
DF_API df_status df_buckets_assign(const df_dataset *ds, const df_bucket_opts *o, df_buckets *out);
DF_API void df_buckets_free(df_buckets *b);
/* The training pixels of image `image` in its bucket: resized to its resized size (t->filter),
 * cropped to the bucket (centred, kohya's floor, or random from g), flipped (random_flip, one
 * uniform from g after the crop's draws), normalised into dst (C * bucket_h * bucket_w). Returns
 * whether it flipped. */
DF_API bool df_buckets_apply(const df_buckets *b, const df_transform *t, int64_t image,
                             const df_tensor *img, df_philox *g, float *dst);

/* ---------------------------------------------------------------- loader ---------------------- */

typedef struct df_loader_cursor {
    int64_t epoch;
    int64_t position; /* samples of this rank's share already delivered in `epoch` */
} df_loader_cursor;

typedef struct df_loader_opts {
    int batch_size;
    uint64_t seed;
    int rank, world_size; /* data-parallel shard (default 0 of 1) */
    int workers;          /* worker threads (default 2) */
    int prefetch;         /* batches decoded ahead (default 2 * workers) */
    bool shuffle;         /* default true; false: the identity order */
    bool drop_last;       /* drop the last partial batch of each epoch (default false) */
    bool no_pixels;       /* deliver no pixels (latents come from a cache): batches carry the
                       indices, captions and flips only, with the same draws as with pixels;
                       needs center_crop (default false) */
    df_transform transform;
    /* Aspect-ratio buckets (borrowed, of this data set; NULL: every sample resolution^2):
     * each epoch shuffles every bucket's samples, cuts them into batches and shuffles the
     * batches, so a batch holds one bucket's size; world_size must be 1. */
    const df_buckets *buckets;
    df_loader_cursor start; /* where to begin (a saved cursor); default (0, 0) */
} df_loader_opts;
DF_API df_loader_opts df_loader_opts_default(int batch_size, int resolution);

typedef struct df_batch {
    df_tensor *pixels; /* F32 (n, C, R, R) in [-1, 1], owned by the batch; NULL (no_pixels) */
    int n;             /* samples in the batch (fewer than batch_size when some were skipped) */
    char **captions;   /* n strings, owned */
    int64_t *indices;  /* n dataset sample indices */
    bool *flipped;     /* n: whether the sample was flipped (random_flip) */
    int bucket;        /* the batch's bucket (df_loader_opts.buckets), -1 without */
    int64_t epoch;
    bool epoch_end;        /* the last batch of its epoch */
    df_loader_cursor next; /* the loader's cursor after this batch (save it with a checkpoint) */
    int n_skipped;         /* bad samples left out of this batch */
    char **skipped;        /* n_skipped messages "<file>: <reason>", owned */
} df_batch;
DF_API void df_batch_free(df_batch *b);

typedef struct df_loader df_loader;

/* Starts the workers. The rank's share of an epoch: the dataset's samples in the order of a
 * permutation drawn from Philox (seed, epoch), padded by wrapping to a multiple of world_size
 * (as torch's DistributedSampler), then positions rank, rank + world, ... Per-sample randomness
 * (crop, flip, caption dropout) comes from Philox (seed, epoch, position in the permutation),
 * so batches do not depend on the number of workers. `ds` must outlive the loader. With
 * skip_bad_images, a dataset none of whose images is readable is refused (DF_ERR_FORMAT "<root>:
 * none of the N images is readable ..."); the check stops at the first readable image. */
DF_API df_status df_loader_new(const df_dataset *ds, const df_loader_opts *opts, df_loader **out);
/* Stops and joins the workers and frees the queue. NULL is a no-op. */
DF_API void df_loader_free(df_loader *l);
/* The next batch, in order; epochs follow each other without end. On a bad sample without
 * skip_bad_images, returns DF_ERR_FORMAT naming the file (the loader stays in that error); with
 * it, a batch none of whose samples is readable is DF_ERR_FORMAT naming the skipped count. */
DF_API df_status df_loader_next(df_loader *l, df_batch **out);
/* The cursor of the next batch df_loader_next will return (save it with a checkpoint). */
DF_API df_loader_cursor df_loader_get_cursor(const df_loader *l);
/* Samples of this rank per epoch and batches per epoch. */
DF_API int64_t df_loader_samples_per_epoch(const df_loader *l);
DF_API int64_t df_loader_batches_per_epoch(const df_loader *l);
/* Skipped samples reported so far in epoch `epoch` (0 when none). */
DF_API int64_t df_loader_skipped(const df_loader *l, int64_t epoch);
/* The index of the dataset sample at `position` of the rank's share of `epoch` (what the
 * loader delivers there), for tests and tools. */
DF_API int64_t df_loader_sample_at(const df_loader *l, int64_t epoch, int64_t position);

#endif
