/* nn.h — the public interface of nn/: modules, the parameter registry, models, and the file
 * formats they load and save (safetensors, sharded safetensors indexes, diffusers folders).
 *
 * Sections, each self-contained: safetensors files; sharded safetensors (index.json). Model code
 * joins this header in its own sections below them.
 *
 * Ownership and errors follow autograd/autograd.h: tensors returned as `df_tensor **out` are new
 * references under the scope rule; handles (`df_st_file`, `df_st_index`, `df_st_set`) are freed
 * with their `_close` function; failures return a negative df_status and set df_last_error() to
 * "<file>: <reason>" naming the tensor or field.
 */
#ifndef DF_NN_H
#define DF_NN_H

#include "autograd/autograd.h"

/* ================================================================ safetensors ================= */
/* The safetensors format (design.md §10), read by mmap and validated completely at open:
 *
 *   u64 little-endian header length N (<= DF_ST_MAX_HEADER), with 8 + N <= file size;
 *   N bytes of UTF-8 JSON: one object {name: {"dtype": s, "shape": [dims], "data_offsets":
 *   [begin, end]}, ..., "__metadata__": {str: str}} followed only by whitespace (padding);
 *   then the data: every tensor's bytes at [8 + N + begin, 8 + N + end).
 *
 * Rules enforced (each failure is DF_ERR_FORMAT "<path>: <reason>"): dtype is one of F64 F32 F16
 * BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL F8_E4M3 F8_E5M2; shape is an array of at most
 * DF_ST_MAX_DIMS integral numbers in [0, 2^53]; data_offsets are two integral numbers in
 * [0, 2^53] with begin <= end; numel * dtype size (overflow-checked) equals end - begin; sorted
 * by begin, the tensors start at 0 and are contiguous (no gap, no overlap); 8 + N + the last end
 * equals the file size (no trailing bytes); no key appears twice in any object; __metadata__,
 * when present, is an object of strings. The order of keys in the header does not matter (the
 * Python writer lists names alphabetically while laying data out by dtype alignment).
 */

#define DF_ST_MAX_DIMS 8
#define DF_ST_MAX_HEADER 100000000u

typedef struct df_st_file df_st_file;

/* One tensor of a file. All pointers are borrowed from the df_st_file (valid until close). */
typedef struct df_st_info {
    const char *name;
    df_dtype dtype; /* DF_DTYPE_COUNT when not `supported` */
    int ndim;       /* 0 for a scalar */
    int64_t shape[DF_ST_MAX_DIMS];
    uint64_t begin, end;    /* byte range relative to the start of the data section */
    const char *dtype_name; /* the file's spelling: "F32", "I8", "BOOL", ... */
    bool supported;         /* the dtype is a df_dtype (F32 BF16 F16 F64 I32 I64 U8) */
    int64_t numel;
} df_st_info;

/* Opens and fully validates `path` (mapped read-only; the data is not copied). On success *out
 * owns the mapping until df_st_close. Errors: DF_ERR_IO (open/stat/mmap, with strerror),
 * DF_ERR_FORMAT (any rule above), DF_ERR_UNSUPPORTED (more than DF_ST_MAX_DIMS dims),
 * DF_ERR_NOMEM. *out is NULL on failure. */
DF_API df_status df_st_open(const char *path, df_st_file **out);
/* As df_st_open on n bytes already in memory. `buf` is borrowed: it must stay valid and
 * unchanged until df_st_close. `label` names the buffer in error messages (copied). */
DF_API df_status df_st_open_memory(const void *buf, size_t n, const char *label, df_st_file **out);
/* Unmaps and frees; NULL is a no-op. Every pointer obtained from the file dies with it. */
DF_API void df_st_close(df_st_file *f);

/* The path (or label) the file was opened with. Borrowed. */
DF_API const char *df_st_path(const df_st_file *f);
/* Number of tensors (the __metadata__ entry is not a tensor). */
DF_API int df_st_count(const df_st_file *f);
/* Tensor i in data order (increasing begin), 0 <= i < df_st_count. Borrowed. */
DF_API const df_st_info *df_st_info_at(const df_st_file *f, int i);
/* The tensor called `name`, or NULL when absent (no error set). Borrowed. O(log n). */
DF_API const df_st_info *df_st_find(const df_st_file *f, const char *name);
/* The __metadata__ value of `key`, or NULL when absent. Borrowed. */
DF_API const char *df_st_metadata(const df_st_file *f, const char *key);
/* Number of __metadata__ entries and the i-th (key, value) pair (header order). Borrowed. */
DF_API int df_st_metadata_count(const df_st_file *f);
DF_API void df_st_metadata_at(const df_st_file *f, int i, const char **key, const char **value);
/* The tensor's raw little-endian bytes inside the mapping (end - begin bytes; possibly not
 * aligned for its dtype; NULL-safe for 0 bytes). Borrowed until df_st_close. */
DF_API const void *df_st_data(const df_st_file *f, const df_st_info *info);

/* Reads tensor `name` into a new tensor of dtype `as` (values converted: float <-> float rounds
 * to nearest even as df_tensor_to, int <-> int truncates as a C cast, int -> float exact where
 * representable). Reading a float tensor as an integer dtype is refused (DF_ERR_INVALID), as is
 * any use of an unsupported file dtype (DF_ERR_UNSUPPORTED) or more than DF_MAX_DIMS dims
 * (DF_ERR_UNSUPPORTED). DF_ERR_NOTFOUND when there is no such tensor. *out (a new reference,
 * scope rule) is NULL on failure. */
DF_API df_status df_st_read(const df_st_file *f, const char *name, df_dtype as, df_tensor **out);
/* Converts tensor `name` straight from the mapping into `dst` (contiguous, any supported dtype),
 * whose shape must equal the stored one exactly (else DF_ERR_INVALID naming both shapes). No
 * intermediate copy. Other errors as df_st_read. dst is untouched on failure. */
DF_API df_status df_st_read_into(const df_st_file *f, const char *name, df_tensor *dst);

/* Writes n tensors (in this order, their own dtypes, contiguous 8-byte-aligned data) and
 * n_meta string pairs to `path` (created or truncated, then fsynced). __metadata__ always
 * holds "format": "pt" unless meta_keys supplies "format". Names must be non-empty, unique,
 * valid UTF-8 and not "__metadata__"; metadata keys unique and strings valid UTF-8 (else
 * DF_ERR_INVALID). A failed open/write/fsync/close (a full disk included) is DF_ERR_IO
 * "<path>: <what> failed: <strerror>". A regular file is written to a temporary sibling
 * ("<path>.tmp.<pid>.<k>"), fsynced and renamed over `path` (the folder is fsynced too), so
 * `path` never holds a partial file and readers that have the old file mapped are undisturbed;
 * a device or a pipe is written in place. */
DF_API df_status df_st_save(const char *path, int n, const char *const *names,
                            const df_tensor *const *ts, int n_meta, const char *const *meta_keys,
                            const char *const *meta_values);

/* ================================================================ sharded safetensors ========= */
/* Large checkpoints are split into shards plus `<name>.safetensors.index.json`:
 *   {"metadata": {...}, "weight_map": {"<tensor name>": "<shard file name>", ...}}
 * Shard names are relative to the index's folder (a name with '/' or "..", or an absolute one,
 * is refused: DF_ERR_FORMAT).
 *
 * df_st_index is the parsed index alone; df_st_set opens every shard (or one plain file) and
 * answers "where is tensor X" across them, so a model loader treats both layouts alike:
 *
 *     df_st_set *s;
 *     DF_TRY(df_st_set_open("unet/diffusion_pytorch_model.safetensors.index.json", &s));
 *     // or df_st_set_open("unet/diffusion_pytorch_model.safetensors", &s)
 *     const df_st_file *f; const df_st_info *info = df_st_set_find(s, "conv_in.weight", &f);
 *     df_st_read_into(f, info->name, param);
 *     df_st_set_close(s);
 */

typedef struct df_st_index df_st_index;

/* Parses an index file. weight_map must be an object of non-empty strings, keys unique;
 * "metadata" (optional) must be an object (its values are ignored except via
 * df_st_index_total_size). Errors: DF_ERR_IO, DF_ERR_FORMAT naming the file and the key. */
DF_API df_status df_st_index_open(const char *index_json_path, df_st_index **out);
/* As df_st_index_open on `len` bytes of JSON text already in memory (need not be NUL-terminated;
 * copied). `path` stands for the index file: it names it in errors and gives the shards'
 * folder. */
DF_API df_status df_st_index_parse(const char *text, size_t len, const char *path,
                                   df_st_index **out);
DF_API void df_st_index_close(df_st_index *idx);
/* Number of tensor names in weight_map, and the i-th (name, shard file name) in file order. */
DF_API int df_st_index_count(const df_st_index *idx);
DF_API void df_st_index_at(const df_st_index *idx, int i, const char **name, const char **shard);
/* The shard file name (as written in the index, relative to its folder) holding `name`, or
 * NULL. Borrowed. */
DF_API const char *df_st_index_shard(const df_st_index *idx, const char *name);
/* Number of distinct shard files and the i-th, in order of first appearance. Borrowed. */
DF_API int df_st_index_shard_count(const df_st_index *idx);
DF_API const char *df_st_index_shard_at(const df_st_index *idx, int i);
/* The folder of the index file ("." when none). Borrowed. */
DF_API const char *df_st_index_dir(const df_st_index *idx);
/* metadata.total_size, or -1 when absent or not a non-negative integer. */
DF_API int64_t df_st_index_total_size(const df_st_index *idx);

typedef struct df_st_set df_st_set;

/* Opens `path`: a path ending in ".index.json" is an index whose shards are all opened and
 * checked (every name of weight_map must be in the shard it names: DF_ERR_FORMAT otherwise;
 * a tensor present in a shard but absent from weight_map is also refused, as is a name found
 * in two shards); any other path is one safetensors file. Errors as df_st_index_open and
 * df_st_open (the message names the shard). */
DF_API df_status df_st_set_open(const char *path, df_st_set **out);
DF_API void df_st_set_close(df_st_set *s);
/* Total number of tensors over all shards, and the i-th (shard by shard, data order). The
 * file holding it goes to *file when file is not NULL. */
DF_API int df_st_set_count(const df_st_set *s);
DF_API const df_st_info *df_st_set_info_at(const df_st_set *s, int i, const df_st_file **file);
/* The tensor `name` and (when file is not NULL) the shard holding it, or NULL when absent. */
DF_API const df_st_info *df_st_set_find(const df_st_set *s, const char *name,
                                        const df_st_file **file);
/* df_st_read / df_st_read_into on whichever shard holds `name` (DF_ERR_NOTFOUND naming the
 * set's path when none does). */
DF_API df_status df_st_set_read(const df_st_set *s, const char *name, df_dtype as, df_tensor **out);
DF_API df_status df_st_set_read_into(const df_st_set *s, const char *name, df_tensor *dst);
/* Number of files in the set (1 for a plain file) and the i-th. Borrowed. */
DF_API int df_st_set_file_count(const df_st_set *s);
DF_API const df_st_file *df_st_set_file_at(const df_st_set *s, int i);

#endif
