/* nn.h — the public interface of nn/: modules, the parameter registry, models, and the file
 * formats they load and save (safetensors, sharded safetensors indexes, diffusers folders).
 *
 * Sections, each self-contained: safetensors files; sharded safetensors (index.json); the
 * parameter registry; config.json; layers; embeddings; blocks; models. Modules are plain structs
 * whose fields mirror diffusers' key segments; `*_init` registers every parameter in a df_params
 * registry under its full dotted name; `*_forward` builds the output from ops (recording the
 * tape when grad mode is on).
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

/* Drops the whole pages of the tensor's bytes from the process's resident set (they are read
 * from the file again if touched): for code that streams tensors out of the mapping with
 * df_st_data, as df_st_read does after converting. A no-op for df_st_open_memory files. */
DF_API void df_st_release(const df_st_file *f, const df_st_info *info);

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

/* One tensor of a file written by df_st_save_stream. */
typedef struct df_st_entry {
    const char *name; /* borrowed */
    df_dtype dtype;
    int ndim;
    int64_t shape[DF_ST_MAX_DIMS];
} df_st_entry;
/* Produces tensor i's bytes (numel * dtype size of its entry, row-major little-endian): either
 * writes them into `buf` (the writer's scratch, as large as the largest tensor; NULL unless the
 * save asked for scratch) and sets *bytes = buf, or points *bytes at its own memory (valid until
 * the next call). A non-OK status aborts the save (no file is left) and is returned. */
typedef df_status (*df_st_fill_fn)(void *ctx, int i, void *buf, const void **bytes);
/* df_st_save for tensors produced one at a time (a converter streaming a multi-gigabyte file
 * holds one tensor, not all): the header from `entries`, then fill(ctx, i, ...) for i = 0 ..
 * n-1 in order. scratch: allocate the buffer passed to fill. Same rules and errors as
 * df_st_save. */
DF_API df_status df_st_save_stream(const char *path, int n, const df_st_entry *entries, int n_meta,
                                   const char *const *meta_keys, const char *const *meta_values,
                                   df_st_fill_fn fill, void *ctx, bool scratch);

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

/* ================================================================ parameter registry ========= */

#define DF_NAME_MAX 256

typedef struct df_param {
    char *name;        /* full dotted diffusers name, owned */
    df_tensor *tensor; /* owned */
    bool trainable;
    bool from_map; /* its values came from df_init.map (initialisers leave it alone) */
} df_param;

/* A module that can carry adapters (nn/adapter.c): its diffusers name (`...attn1.to_q`), its
 * kind and the module (a df_linear_mod or df_conv_mod, borrowed from the model). */
typedef enum df_module_kind { DF_MODULE_LINEAR, DF_MODULE_CONV } df_module_kind;
typedef struct df_module_ref {
    char *name; /* owned */
    df_module_kind kind;
    void *module;
} df_module_ref;

typedef struct df_params {
    df_param *items;
    int n, cap;
    df_module_ref *modules; /* every linear and conv module, in registration order */
    int n_modules, cap_modules;
    df_philox *init;  /* initialiser stream for new parameters; NULL leaves them zero */
    bool shapes_only; /* names and shapes only: tensors have no storage (key-list checks) */
    df_flat flat;     /* the trainable parameters and their gradients (df_params_flatten) */
    /* a weights file that new parameters take their values from (df_init.map), its names
     * sorted for lookup, and the set itself when the registry owns it (closed at free) */
    const struct df_st_set *map;
    struct df_map_entry *map_index;
    int n_map_index;
    struct df_st_set *map_owned;
} df_params;

/* How a model's parameters start: drawn from `gen` (torch's default initialisers' ranges), zero
 * when gen is NULL, or never touched at all (shapes_only: for key-list checks of huge models). */
typedef struct df_init {
    df_philox *gen;
    bool shapes_only;
    /* Parameters found in `map` (by their canonical names) take their values from it: F32 data
     * aligned to 4 bytes is used in place, from the file's private read-only-backed mapping
     * (no copy; a write copies the page), other dtypes are converted into new storage. */
    const struct df_st_set *map;
} df_init;

/* An empty registry; `init_gen` (borrowed, may be NULL) draws initial values. */
DF_API void df_params_init(df_params *r, df_philox *init_gen);
/* An empty registry set up as `init` says (the first step of every model's *_init). */
DF_API void df_params_init_with(df_params *r, df_init init);
DF_API void df_params_free(df_params *r);
/* "prefix.leaf" (or "leaf" when prefix is empty) into buf; returns buf. */
DF_API char *df_name_join(char *buf, size_t len, const char *prefix, const char *leaf);
/* "prefix.leaf.index". */
DF_API char *df_name_index(char *buf, size_t len, const char *prefix, const char *leaf, int index);
/* Registers a zero-filled F32 parameter "prefix.leaf"; returns it (borrowed from r). */
DF_API df_tensor *df_params_add(df_params *r, const char *prefix, const char *leaf, int ndim,
                                const int64_t *shape);
DF_API df_tensor *df_params_find(const df_params *r, const char *name);
/* Fill from r->init (no-op when r->init is NULL): U(-bound, bound) / N(0, std^2). */
DF_API void df_params_init_uniform(df_params *r, df_tensor *t, float bound);
DF_API void df_params_init_normal(df_params *r, df_tensor *t, float std);
/* Fills t with value (no-op in a shapes-only registry). */
DF_API void df_params_fill(df_params *r, df_tensor *t, float value);
DF_API int64_t df_params_count(const df_params *r);
/* Sets `trainable` on every parameter whose name matches the fnmatch pattern; returns the count. */
DF_API int df_params_set_trainable(df_params *r, const char *pattern, bool on);
/* Appends every parameter of `part` to `out` (an initialised registry, not yet flattened) as
 * "prefix.<name>", referencing the part's tensors (df_tensor_retain), trainable flags copied,
 * and its adapter modules as "prefix.<module>": one registry over several models (the UNet and
 * the text encoder trained together). Freeing `out` drops only its references; flattening `out`
 * rebinds the shared tensors, so the models compute with the flat buffer. Free `out` before the
 * parts. DF_ERR_INVALID for a name already in `out`, a flattened `out` or a shapes-only
 * registry. */
DF_API df_status df_params_join(df_params *out, const char *prefix, df_params *part);
/* Moves the trainable parameters into one flat buffer with flat gradients (r->flat, requires_grad
 * on); the frozen ones keep their own storage as data only (no gradient memory, requires_grad
 * off, so no op records them, and no optimizer state). Call once, after the model is built,
 * loaded and marked. */
DF_API df_status df_params_flatten(df_params *r);
/* Marks every parameter frozen and flattens: a model that only runs (a frozen base, a VAE or
 * text encoder under training). */
DF_API df_status df_params_freeze(df_params *r);
/* requires_grad = trainable for every parameter. */
DF_API void df_params_requires_grad(df_params *r);
/* Loads a safetensors file, or a sharded `*.safetensors.index.json`, into the registered
 * parameters: every registered name must be present with the same shape (DF_ERR_NOTFOUND /
 * DF_ERR_FORMAT naming file and tensor); keys we do not have are counted into *n_unexpected (may
 * be NULL) and warned about. Legacy attention names and CLIP's position_ids are handled. On a
 * shapes-only registry only the names and shapes are checked (the file's header against the
 * model: what df_component_load does before allocating anything). */
DF_API df_status df_params_load(df_params *r, const char *path, int *n_unexpected);
/* Writes every parameter, in registration order, to a safetensors file. */
DF_API df_status df_params_save(const df_params *r, const char *path);

/* Which parameters a save or a partial load concerns: every condition set must hold; a zeroed
 * selection takes them all. */
typedef struct df_param_select {
    bool trainable_only; /* only parameters marked trainable */
    const char *prefix;  /* names starting with prefix; NULL: any */
    const char *glob;    /* names matching the fnmatch glob (`*` spans dots); NULL: any */
} df_param_select;
DF_API bool df_param_selected(const df_param *p, const df_param_select *sel);
/* Writes the selected parameters, in registration order. */
DF_API df_status df_params_save_select(const df_params *r, const char *path,
                                       const df_param_select *sel);

/* What a partial load did: tensors applied, selected parameters the file lacks (they keep their
 * values), file tensors that name no selected parameter. The name lists are owned (free with
 * df_load_report_free). */
typedef struct df_load_report {
    int applied, n_missing, n_unexpected;
    char **missing, **unexpected;
} df_load_report;
/* Loads the tensors of a file (or sharded index) that name selected parameters (an adapter or a
 * fine-tuned part on top of a base): a shape mismatch is an error naming the tensor and both
 * shapes; missing and unexpected tensors are not errors, the report lists them. */
DF_API df_status df_params_load_partial(df_params *r, const char *path, const df_param_select *sel,
                                        df_load_report *report);
DF_API void df_load_report_free(df_load_report *report);

/* ================================================================ config.json ================ */

#define DF_JSON_STR 64

typedef struct df_json {
    struct cJSON *root;
    char path[512]; /* the file (or label) named in errors */
} df_json;

DF_API df_status df_json_load(const char *path, df_json *out);
DF_API df_status df_json_parse(const char *text, size_t len, const char *label, df_json *out);
DF_API void df_json_free(df_json *j);
/* Present with a non-null value / present as JSON null. */
DF_API bool df_json_has(const df_json *j, const char *key);
DF_API bool df_json_is_null(const df_json *j, const char *key);
/* Typed getters: absent or null -> `def`; wrong type -> DF_ERR_FORMAT naming file and field. */
DF_API df_status df_json_int(const df_json *j, const char *key, int def, int *out);
DF_API df_status df_json_double(const df_json *j, const char *key, double def, double *out);
DF_API df_status df_json_bool(const df_json *j, const char *key, bool def, bool *out);
DF_API df_status df_json_string(const df_json *j, const char *key, const char *def, char *out,
                                size_t len);
/* A list of at most `max` ints into out, count into *n; absent leaves both unchanged. With
 * accept_scalar, a single number is stored in out[0] and *n = -1 (the caller broadcasts). */
DF_API df_status df_json_int_list(const df_json *j, const char *key, int max, int *out, int *n,
                                  bool accept_scalar);
/* As df_json_int_list for true / false entries. */
DF_API df_status df_json_bool_list(const df_json *j, const char *key, int max, bool *out, int *n,
                                   bool accept_scalar);
DF_API df_status df_json_string_list(const df_json *j, const char *key, int max,
                                     char (*out)[DF_JSON_STR], int *n);
/* Prints a note for every top-level key not in `known` (keys starting with '_' excepted). */
DF_API void df_json_note_unknown(const df_json *j, const char *const *known, int n_known);

/* ================================================================ adapters =================== */

/* An adapter on a linear or conv module (LoRA, LoCon, a test probe): the module's forward
 * computes y = op(x) and then y = a->forward(a, module, kind, x, y) for each adapter of its
 * chain in order. forward returns the new output (y plus the adapter's term; scope rule) and
 * must not change x or y. The adapter and its parameters are the caller's; a module only
 * points at them. */
typedef struct df_adapter df_adapter;
struct df_adapter {
    df_tensor *(*forward)(df_adapter *a, const void *module, df_module_kind kind, df_tensor *x,
                          df_tensor *y);
    void *ctx;
    df_adapter *next; /* the next adapter of the same module, applied after this one */
};

/* Registers module `m` of `kind` under `name` (the layers' *_init do this). */
DF_API void df_params_add_module(df_params *r, const char *name, df_module_kind kind, void *m);
/* The module called name exactly, or NULL. Borrowed. */
DF_API const df_module_ref *df_module_find(const df_params *r, const char *name);
/* The modules whose names match the fnmatch glob (`*` spans dots: `*attn1.to_q`,
 * `*.ff.net.*`), in registration order, into out[0 .. max); returns how many match (may exceed
 * max). */
DF_API int df_modules_match(const df_params *r, const char *glob, const df_module_ref **out,
                            int max);
/* Appends adapter a (borrowed; a->next is overwritten) to the chain of module m. */
DF_API void df_module_attach(const df_module_ref *m, df_adapter *a);
/* Removes every adapter from every module of r. */
DF_API void df_modules_detach_all(df_params *r);
/* y after the adapters of `chain` (the layers' forwards call this). */
DF_API df_tensor *df_adapters_apply(df_adapter *chain, const void *module, df_module_kind kind,
                                    df_tensor *x, df_tensor *y);

/* ================================================================ layers ===================== */

typedef struct df_linear_mod {
    df_tensor *weight, *bias; /* (out, in), (out) or NULL; borrowed from the registry */
    df_adapter *adapter;      /* applied after the product; NULL: none */
} df_linear_mod;

typedef struct df_conv_mod {
    df_tensor *weight, *bias; /* (out, in, k, k), (out) */
    df_conv2d_params p;
    df_adapter *adapter; /* applied after the convolution; NULL: none */
} df_conv_mod;

typedef struct df_norm_mod {
    df_tensor *weight, *bias; /* (C) */
    int groups;               /* GroupNorm groups; 0 for LayerNorm */
    float eps;
} df_norm_mod;

/* torch.nn.Linear / Conv2d default init when r->init is set: U(+-1/sqrt(fan_in)). */
DF_API void df_linear_mod_init(df_linear_mod *m, df_params *r, const char *name, int in, int out,
                               bool bias);
DF_API df_tensor *df_linear_mod_forward(const df_linear_mod *m, df_tensor *x);
DF_API void df_conv_mod_init(df_conv_mod *m, df_params *r, const char *name, int in, int out,
                             int kernel, int stride, int padding, bool bias);
DF_API df_tensor *df_conv_mod_forward(const df_conv_mod *m, df_tensor *x);
/* GroupNorm / LayerNorm with affine weight 1, bias 0. */
DF_API void df_groupnorm_mod_init(df_norm_mod *m, df_params *r, const char *name, int groups,
                                  int channels, float eps);
DF_API void df_layernorm_mod_init(df_norm_mod *m, df_params *r, const char *name, int dim,
                                  float eps);
DF_API df_tensor *df_norm_mod_forward(const df_norm_mod *m, df_tensor *x);

/* ================================================================ embeddings ================= */

/* diffusers get_timestep_embedding, in float32 whatever the model dtype: timesteps (N) of any
 * dtype (a 0-d tensor is broadcast to `batch`) -> (N, dim). No history. */
DF_API df_tensor *df_timestep_embedding(const df_tensor *timesteps, int batch, int dim,
                                        bool flip_sin_to_cos, float downscale_freq_shift);

/* TimestepEmbedding: linear_1 -> SiLU -> linear_2. */
typedef struct df_timestep_mlp {
    df_linear_mod linear_1, linear_2;
} df_timestep_mlp;
DF_API void df_timestep_mlp_init(df_timestep_mlp *m, df_params *r, const char *name, int in,
                                 int dim);
DF_API df_tensor *df_timestep_mlp_forward(const df_timestep_mlp *m, df_tensor *t_emb);

/* ================================================================ blocks ===================== */

/* ResnetBlock2D. temb_channels 0 = no time embedding (the VAE). */
typedef struct df_resnet_config {
    int in_channels, out_channels, temb_channels, groups;
    float eps, output_scale_factor;
    bool scale_shift; /* time_embedding_norm == "scale_shift" */
} df_resnet_config;

typedef struct df_resnet {
    df_norm_mod norm1, norm2;
    df_conv_mod conv1, conv2, conv_shortcut;
    df_linear_mod time_emb_proj;
    bool has_shortcut, has_temb, scale_shift;
    float output_scale_factor;
    bool gradient_checkpointing; /* recompute the block in backward (df_checkpoint) */
} df_resnet;
DF_API void df_resnet_init(df_resnet *m, df_params *r, const char *name, df_resnet_config c);
/* x (N, Cin, H, W), temb (N, T) or NULL -> (N, Cout, H, W). Runs in channel-blocked layout
 * (df_to_blocked of x, when its channels divide into blocks): the output is blocked then, as are
 * the blocks' outputs built on it; the models' outputs are plain (df_to_plain). */
DF_API df_tensor *df_resnet_forward(const df_resnet *m, df_tensor *x, df_tensor *temb);

/* diffusers Attention with the classic AttnProcessor. */
typedef struct df_attention_config {
    int query_dim, cross_dim; /* cross_dim 0: self-attention only */
    int heads, dim_head;
    bool qkv_bias;
    int norm_groups; /* > 0: the GroupNorm of UNet2DModel / VAE attention (residual form) */
    float norm_eps;
    bool residual_connection;
    float rescale_output_factor;
} df_attention_config;

typedef struct df_attention {
    df_norm_mod group_norm;
    df_linear_mod to_q, to_k, to_v, to_out;
    int heads, dim_head;
    float scale;
    bool has_group_norm, residual_connection;
    float rescale_output_factor;
} df_attention;
DF_API void df_attention_init(df_attention *m, df_params *r, const char *name,
                              df_attention_config c);
/* x (N, C, H, W) or (N, T, C); context (N, S, Cc) or NULL (self-attention). Same shape as x. */
DF_API df_tensor *df_attention_forward(const df_attention *m, df_tensor *x, df_tensor *context);

/* BasicTransformerBlock (layer norms, self-attn, cross-attn, GEGLU feed-forward). */
typedef struct df_transformer_block {
    df_norm_mod norm1, norm2, norm3;
    df_attention attn1, attn2;
    df_linear_mod ff_proj, ff_out; /* ff.net.0.proj, ff.net.2 */
    bool only_cross_attention;
} df_transformer_block;

/* Transformer2DModel (continuous input) with one or more blocks. */
typedef struct df_transformer2d {
    df_norm_mod norm;
    df_conv_mod proj_in_conv, proj_out_conv;
    df_linear_mod proj_in_linear, proj_out_linear;
    df_transformer_block *blocks;
    int n_blocks;
    bool use_linear_projection;
    bool gradient_checkpointing; /* recompute each block in backward (df_checkpoint) */
} df_transformer2d;

typedef struct df_transformer2d_config {
    int channels, heads, cross_dim, layers, norm_groups;
    bool use_linear_projection, only_cross_attention;
} df_transformer2d_config;
DF_API void df_transformer2d_init(df_transformer2d *m, df_params *r, const char *name,
                                  df_transformer2d_config c);
DF_API void df_transformer2d_free(df_transformer2d *m);
DF_API df_tensor *df_transformer2d_forward(const df_transformer2d *m, df_tensor *x,
                                           df_tensor *context);

/* The down, up and mid blocks of UNets and the VAE, one struct per role: the block type decides
 * which parts exist (DownBlock2D, AttnDownBlock2D, CrossAttnDownBlock2D, DownEncoderBlock2D;
 * UpBlock2D, AttnUpBlock2D, CrossAttnUpBlock2D, UpDecoderBlock2D; UNetMidBlock2D,
 * UNetMidBlock2DCrossAttn). */
typedef enum df_block_attn {
    DF_BLOCK_ATTN_NONE = 0,
    DF_BLOCK_ATTN_SPATIAL,     /* Attention with group norm (UNet2DModel, VAE) */
    DF_BLOCK_ATTN_TRANSFORMER, /* Transformer2DModel (cross-attention UNet) */
} df_block_attn;

typedef struct df_block_config {
    int n_layers, in_channels, out_channels, prev_channels, temb_channels, groups;
    float eps, output_scale_factor;
    bool scale_shift;
    df_block_attn attn;
    int attn_head_dim;      /* SPATIAL: head width (0 = one head) */
    bool attn_without_norm; /* SPATIAL: no group_norm (UNetMidBlock2D unless the resnets' time
                               scale shift is "default") */
    df_transformer2d_config transformer; /* TRANSFORMER: heads, cross_dim, ... */
    bool add_sample;                     /* a downsampler / upsampler after the layers */
    int downsample_padding; /* 1 for UNets; 0 (and right/bottom pad) for the VAE encoder */
} df_block_config;

typedef struct df_block {
    df_resnet *resnets;
    df_attention *attentions;       /* SPATIAL */
    df_transformer2d *transformers; /* TRANSFORMER */
    int n_resnets, n_attn;
    df_block_attn attn;
    bool has_sampler;
    df_conv_mod sampler; /* downsamplers.0.conv / upsamplers.0.conv */
    int downsample_padding;
} df_block;

DF_API void df_down_block_init(df_block *b, df_params *r, const char *name, df_block_config c);
DF_API void df_up_block_init(df_block *b, df_params *r, const char *name, df_block_config c);
DF_API void df_mid_block_init(df_block *b, df_params *r, const char *name, df_block_config c);
DF_API void df_block_free(df_block *b);
/* The block settings both UNets share (time embedding width, norms, resnet time-embedding mode
 * "default" or "scale_shift", downsample padding); each block adds its own widths. */
DF_API df_block_config df_unet_base_block(int temb_channels, int groups, float eps,
                                          const char *resnet_time_scale_shift,
                                          int downsample_padding);
/* DF_ERR_UNSUPPORTED naming the block type unless every down/up type is a UNet block of a kind
 * other than `excluded` (UNet2DModel has no cross-attention blocks; the conditional UNet no
 * spatial-attention ones). */
DF_API df_status df_unet_check_blocks(const char *cls, int n, char (*down)[DF_JSON_STR],
                                      char (*up)[DF_JSON_STR], df_block_attn excluded);
/* The UNet body shared by both UNets: h = conv_in output; the down path (storing skips), the mid
 * block (none when mid is NULL) and the up path (consuming them). Each upsampler resizes to
 * the size of the skip it meets next (diffusers' upsample_size, nearest as F.interpolate, for
 * sides that do not divide by 2^(blocks-1)); with sides that divide, that is the plain x2. */
DF_API df_tensor *df_unet_blocks_forward(const df_block *down, const df_block *mid,
                                         const df_block *up, int n_blocks, df_tensor *h,
                                         df_tensor *temb, df_tensor *context);
/* ControlNet's additions to a UNet (diffusers' down_block_additional_residuals and
 * mid_block_additional_residual): down[i] is added to the i-th skip connection after the down
 * path (n_down must be the skip count, each of its skip's shape), mid to the mid block's output
 * (to the down path's output when there is no mid block). Borrowed. */
typedef struct df_unet_residuals {
    df_tensor *const *down;
    int n_down;
    df_tensor *mid;
} df_unet_residuals;
/* The UNet body's parts, callable on their own: the skip count of a down path (conv_in's output
 * and every layer's and downsampler's); the down path (skips[0 .. *n_skips) filled, the last
 * output returned); the up path (consuming skips from the end). */
DF_API int df_unet_skip_count(const df_block *down, int n_blocks);
DF_API df_tensor *df_unet_down_forward(const df_block *down, int n_blocks, df_tensor *h,
                                       df_tensor *temb, df_tensor *context, df_tensor **skips,
                                       int *n_skips);
DF_API df_tensor *df_unet_up_forward(const df_block *up, int n_blocks, df_tensor *h,
                                     df_tensor *temb, df_tensor *context, df_tensor **skips,
                                     int *n_skips);
/* df_unet_blocks_forward with residuals (NULL: none) into *out; a residual of the wrong count or
 * shape is DF_ERR_INVALID naming it and the shape it must have. */
DF_API df_status df_unet_blocks_forward_res(const df_block *down, const df_block *mid,
                                            const df_block *up, int n_blocks, df_tensor *h,
                                            df_tensor *temb, df_tensor *context,
                                            const df_unet_residuals *res, df_tensor **out);
/* Frees n_blocks down and up blocks and the mid block (any may be NULL). */
DF_API void df_unet_blocks_free(df_block *down, df_block *mid, df_block *up, int n_blocks);
/* The attention kind of a diffusers block class name; false for a class we do not implement. */
DF_API bool df_block_type_attn(const char *type, df_block_attn *out);
/* Down: appends each layer's output (and the downsampler's) to skips[*n_skips++]; returns the
 * last. Up: consumes skips from the end. Mid: resnet, then (attention, resnet) pairs. */
DF_API df_tensor *df_down_block_forward(const df_block *b, df_tensor *x, df_tensor *temb,
                                        df_tensor *context, df_tensor **skips, int *n_skips);
DF_API df_tensor *df_up_block_forward(const df_block *b, df_tensor *x, df_tensor *temb,
                                      df_tensor *context, df_tensor **skips, int *n_skips);
DF_API df_tensor *df_mid_block_forward(const df_block *b, df_tensor *x, df_tensor *temb,
                                       df_tensor *context);

/* ================================================================ models ===================== */

#define DF_MAX_BLOCKS 8

/* Sane limits of the config readers (well above every published model: SD/SDXL use at most
 * 1280 channels, 10 transformer layers, 3 resnets per block). A config beyond them is refused
 * (DF_ERR_FORMAT naming the file and field) before anything is allocated. */
#define DF_MODEL_MAX_CHANNELS 16384 /* block widths, in/out/latent channels, cross-attn width */
#define DF_MODEL_MAX_LAYERS 64      /* layers_per_block, transformer_layers_per_block */
#define DF_MODEL_MAX_KERNEL 15      /* conv_in_kernel, conv_out_kernel */
#define DF_MODEL_MAX_SIDE 65536     /* sample_size sides and input sides */
/* Skip connections a UNet can hold: conv_in's plus (layers + 1) per block. */
#define DF_UNET_MAX_SKIPS (1 + DF_MAX_BLOCKS * (DF_MODEL_MAX_LAYERS + 1))

/* UNet2DModel config (diffusers field names and defaults). sample_size is the height (0 =
 * None); sample_width the width of the [height, width] list form, 0 for the int form (square). */
typedef struct df_unet2d_config {
    int sample_size, sample_width, in_channels, out_channels;
    bool center_input_sample, flip_sin_to_cos;
    int freq_shift;
    int n_blocks;
    char down_block_types[DF_MAX_BLOCKS][DF_JSON_STR];
    char up_block_types[DF_MAX_BLOCKS][DF_JSON_STR];
    int block_out_channels[DF_MAX_BLOCKS];
    int layers_per_block;
    float mid_block_scale_factor;
    int downsample_padding;
    float dropout;
    char act_fn[DF_JSON_STR];
    int attention_head_dim; /* 0 = None */
    int norm_num_groups;
    float norm_eps;
    char resnet_time_scale_shift[DF_JSON_STR];
    bool add_attention;
    char time_embedding_type[DF_JSON_STR];
} df_unet2d_config;

/* UNet2DConditionModel config (SD 1.x / 2.x fields; docs/config-fields.md lists every field).
 * mid_block_type "" means null (no mid block). time_embedding_dim 0 = None (4 x the first block
 * width); time_embedding_act_fn / timestep_post_act "" = None, else "silu". */
typedef struct df_unet2d_cond_config {
    int sample_size, sample_width, in_channels, out_channels;
    bool center_input_sample, flip_sin_to_cos;
    int freq_shift;
    int n_blocks;
    char down_block_types[DF_MAX_BLOCKS][DF_JSON_STR];
    char up_block_types[DF_MAX_BLOCKS][DF_JSON_STR];
    char mid_block_type[DF_JSON_STR];
    int block_out_channels[DF_MAX_BLOCKS];
    int layers_per_block[DF_MAX_BLOCKS];
    int num_attention_heads
        [DF_MAX_BLOCKS]; /* resolved: num_attention_heads or attention_head_dim */
    int cross_attention_dim[DF_MAX_BLOCKS];
    int transformer_layers_per_block[DF_MAX_BLOCKS];
    bool only_cross_attention[DF_MAX_BLOCKS];
    int downsample_padding;
    float mid_block_scale_factor, dropout;
    char act_fn[DF_JSON_STR];
    int norm_num_groups;
    float norm_eps;
    bool use_linear_projection, upcast_attention;
    char resnet_time_scale_shift[DF_JSON_STR];
    int conv_in_kernel, conv_out_kernel;
    int time_embedding_dim;
    char time_embedding_act_fn[DF_JSON_STR], timestep_post_act[DF_JSON_STR];
} df_unet2d_cond_config;

/* AutoencoderKL config. */
typedef struct df_vae_config {
    int in_channels, out_channels, latent_channels, sample_size, sample_width;
    int n_blocks;
    char down_block_types[DF_MAX_BLOCKS][DF_JSON_STR];
    char up_block_types[DF_MAX_BLOCKS][DF_JSON_STR];
    int block_out_channels[DF_MAX_BLOCKS];
    int layers_per_block, norm_num_groups;
    char act_fn[DF_JSON_STR];
    float scaling_factor;
    bool force_upcast;
} df_vae_config;

DF_API df_unet2d_config df_unet2d_config_default(void);
DF_API df_unet2d_cond_config df_unet2d_cond_config_default(void);
DF_API df_vae_config df_vae_config_default(void);
/* Reads a diffusers config.json over the class defaults; validates every field. */
DF_API df_status df_unet2d_config_load(const char *path, df_unet2d_config *c);
DF_API df_status df_unet2d_cond_config_load(const char *path, df_unet2d_cond_config *c);
DF_API df_status df_vae_config_load(const char *path, df_vae_config *c);
/* Writes config.json as diffusers' save_config does (every field, sorted, _class_name). */
DF_API df_status df_unet2d_config_save(const df_unet2d_config *c, const char *path);
DF_API df_status df_vae_config_save(const df_vae_config *c, const char *path);
DF_API df_status df_unet2d_cond_config_save(const df_unet2d_cond_config *c, const char *path);
/* Writes a cJSON object to path, pretty-printed, and frees it. */
DF_API df_status df_json_write_object(struct cJSON *obj, const char *path);
/* The same over an already parsed config (the file's label is j->path). */
DF_API df_status df_unet2d_config_from_json(const df_json *j, df_unet2d_config *c);
DF_API df_status df_unet2d_cond_config_from_json(const df_json *j, df_unet2d_cond_config *c);
DF_API df_status df_vae_config_from_json(const df_json *j, df_vae_config *c);

/* The UNet body (nn/unet_body.c) both UNets are made of, under diffusers' module names. */
typedef struct df_unet_body {
    df_conv_mod conv_in, conv_out;
    df_timestep_mlp time_embedding;
    df_block down[DF_MAX_BLOCKS], up[DF_MAX_BLOCKS], mid;
    bool has_mid; /* false for mid_block_type null */
    df_norm_mod conv_norm_out;
    int n_blocks;
} df_unet_body;

/* What a model builds its body from: the widths, the time embedding width, and each block's
 * settings (n_layers, attention, heads, transformer; the body fills in the channels and the
 * samplers). up[i] is in diffusers' up order (up_blocks.i). */
typedef struct df_unet_body_config {
    int n_blocks, in_channels, out_channels, conv_in_kernel, conv_out_kernel;
    int channels[DF_MAX_BLOCKS]; /* block_out_channels */
    int temb_channels, norm_groups;
    float norm_eps;
    df_block_config down[DF_MAX_BLOCKS], up[DF_MAX_BLOCKS], mid;
    bool has_mid;
} df_unet_body_config;

/* Registers the body's parameters in diffusers' order (conv_in, time_embedding, down, mid, up,
 * conv_norm_out, conv_out). The config must be checked already (the models' readers do). */
DF_API void df_unet_body_init(df_unet_body *b, df_params *r, const df_unet_body_config *c);
DF_API void df_unet_body_free(df_unet_body *b);
/* Gradient checkpointing of every ResnetBlock2D and BasicTransformerBlock of the body (off after
 * init): their activations are recomputed in backward instead of kept; gradients are bitwise
 * the same. Used by the trainer's gradient_checkpointing key. */
DF_API void df_unet_body_set_gradient_checkpointing(df_unet_body *b, bool on);
/* The forward's parts: conv_in (output channel-blocked where the width divides into blocks);
 * the down path, mid block and up path with optional residuals (df_unet_blocks_forward_res);
 * the head (conv_norm_out, SiLU, conv_out; a plain output). */
DF_API df_tensor *df_unet_body_conv_in(const df_unet_body *b, df_tensor *sample);
DF_API df_status df_unet_body_blocks(const df_unet_body *b, df_tensor *h, df_tensor *emb,
                                     df_tensor *context, const df_unet_residuals *res,
                                     df_tensor **out);
DF_API df_tensor *df_unet_body_out(const df_unet_body *b, df_tensor *h);

typedef struct df_unet2d {
    df_unet2d_config config;
    df_params params;
    df_unet_body body;
} df_unet2d;

typedef struct df_unet2d_cond {
    df_unet2d_cond_config config;
    df_params params;
    df_unet_body body;
} df_unet2d_cond;

typedef struct df_vae {
    df_vae_config config;
    df_params params;
    /* encoder.* */
    df_conv_mod enc_conv_in, enc_conv_out;
    df_block enc_down[DF_MAX_BLOCKS], enc_mid;
    df_norm_mod enc_norm_out;
    /* decoder.* */
    df_conv_mod dec_conv_in, dec_conv_out;
    df_block dec_up[DF_MAX_BLOCKS], dec_mid;
    df_norm_mod dec_norm_out;
    df_conv_mod quant_conv, post_quant_conv;
} df_vae;

/* Builds the model from its config, registering every parameter under diffusers' names. Validates the config (DF_ERR_UNSUPPORTED for a
 * block type or option we do not implement). */
DF_API df_status df_unet2d_init(df_unet2d *m, const df_unet2d_config *c, df_init init);
/* Whether the model can run on a sample of (n, channels, height, width): DF_ERR_INVALID naming
 * the model and the size otherwise. UNet2DModel needs sides divisible by 2^(blocks-1) (diffusers
 * fails on others); UNet2DConditionModel takes any side (diffusers' upsample_size path); the VAE
 * encoder needs sides of at least 2^(blocks-1). All need sides in [1, DF_MODEL_MAX_SIDE]. The
 * forward functions assume a checked size (df_component_forward checks). */
DF_API df_status df_unet2d_check_sample(const df_unet2d_config *c, const df_tensor *sample);
DF_API df_status df_unet2d_cond_check_sample(const df_unet2d_cond_config *c,
                                             const df_tensor *sample);
DF_API df_status df_vae_check_sample(const df_vae_config *c, const df_tensor *sample);
DF_API df_status df_vae_check_latents(const df_vae_config *c, const df_tensor *z);
/* The widths every UNet / VAE config must have (DF_ERR_INVALID naming `cls` otherwise): 1 to
 * DF_MAX_BLOCKS blocks, each width in [1, DF_MODEL_MAX_CHANNELS] divisible by `groups`. The
 * *_init functions check these (and their own fields) for configs built in code. */
DF_API df_status df_model_check_widths(const char *cls, int n_blocks, const int *channels,
                                       int groups, int in_channels, int out_channels);
/* A block with no resnet (layers_per_block 0) passes its input on: its width must equal the
 * previous block's (DF_ERR_INVALID otherwise; diffusers' downsampler asserts there). */
DF_API df_status df_model_check_zero_layers(const char *cls, int n_blocks, const int *channels,
                                            const int *layers);
/* The shared check: x F32 (N >= 1, channels, H, W), each side in [at_least,
 * DF_MODEL_MAX_SIDE] and a multiple of `multiple`; `cls` names the model in the error. */
DF_API df_status df_model_check_sides(const char *cls, const df_tensor *x, int channels,
                                      int64_t multiple, int64_t at_least);
DF_API void df_unet2d_free(df_unet2d *m);
/* sample (N, C, H, W), timestep 0-d or (N) of any dtype -> (N, out, H, W). */
DF_API df_tensor *df_unet2d_forward(df_unet2d *m, df_tensor *sample, const df_tensor *timestep);

DF_API df_status df_unet2d_cond_init(df_unet2d_cond *m, const df_unet2d_cond_config *c,
                                     df_init init);
DF_API void df_unet2d_cond_free(df_unet2d_cond *m);
/* encoder_hidden_states (N, S, cross_attention_dim). */
DF_API df_tensor *df_unet2d_cond_forward(df_unet2d_cond *m, df_tensor *sample,
                                         const df_tensor *timestep,
                                         df_tensor *encoder_hidden_states);
/* The same with a ControlNet's residuals (NULL: none) into *out; residual errors as
 * df_unet_blocks_forward_res. */
DF_API df_status df_unet2d_cond_forward_res(df_unet2d_cond *m, df_tensor *sample,
                                            const df_tensor *timestep,
                                            df_tensor *encoder_hidden_states,
                                            const df_unet_residuals *res, df_tensor **out);

DF_API df_status df_vae_init(df_vae *m, const df_vae_config *c, df_init init);
DF_API void df_vae_free(df_vae *m);
/* The posterior of x: mean and logvar (clamped to [-30, 20]), each (N, latent, h, w). */
DF_API void df_vae_encode(df_vae *m, df_tensor *x, df_tensor **mean, df_tensor **logvar);
/* z (N, latent, h, w) -> image (N, out, H, W). No scaling_factor is applied. */
DF_API df_tensor *df_vae_decode(df_vae *m, df_tensor *z);

/* ================================================================ CLIP text encoder ========== */

#define DF_CLIP_MAX_LAYERS 64
#define DF_CLIP_MAX_BATCH 1024
#define DF_CLIP_MAX_VOCAB (1 << 20)
#define DF_CLIP_MAX_POSITIONS 65536

/* CLIPTextConfig (transformers v4.33 field names and defaults). */
typedef struct df_clip_text_config {
    int vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
    int max_position_embeddings;
    float layer_norm_eps;
    char hidden_act[DF_JSON_STR]; /* quick_gelu | gelu */
    int bos_token_id, eos_token_id, pad_token_id;
    int projection_dim;   /* CLIPTextModelWithProjection's text_projection width */
    bool with_projection; /* the class is CLIPTextModelWithProjection (set by the loader) */
} df_clip_text_config;

typedef struct df_clip_layer {
    df_linear_mod q_proj, k_proj, v_proj, out_proj, fc1, fc2;
    df_norm_mod layer_norm1, layer_norm2;
} df_clip_layer;

/* The encoder fields CLIPTextConfig and CLIPVisionConfig share, read into the caller's config
 * (pointers into it; the values there are the defaults): attention_dropout (0 only), the
 * initialisers' scales (types only), projection_dim, hidden_size, intermediate_size,
 * num_hidden_layers, num_attention_heads, layer_norm_eps, hidden_act (quick_gelu | gelu; a
 * DF_JSON_STR buffer), with their range checks and heads dividing hidden_size (clip_encoder.c).
 * Errors name the file and the field. */
typedef struct df_clip_encoder_fields {
    int *hidden_size, *intermediate_size, *num_hidden_layers, *num_attention_heads, *projection_dim;
    float *layer_norm_eps;
    char *hidden_act;
} df_clip_encoder_fields;
DF_API df_status df_clip_encoder_fields_read(const df_json *j, df_clip_encoder_fields f);

/* One CLIPEncoderLayer (clip_encoder.c), shared by the text and vision towers: registers
 * "<prefix>.self_attn.{k,v,q,out}_proj", "<prefix>.layer_norm{1,2}", "<prefix>.mlp.fc{1,2}". */
DF_API void df_clip_layer_init(df_clip_layer *l, df_params *r, const char *prefix, int d, int inter,
                               float eps);
/* h (N, T, D) -> the layer's output (N, T, D); causal masks key j > query i (the text tower). */
DF_API df_tensor *df_clip_layer_forward(const df_clip_layer *l, df_tensor *h, int heads,
                                        bool quick_gelu, bool causal);

typedef struct df_clip_text {
    df_clip_text_config config;
    df_params params;
    df_tensor *token_embedding, *position_embedding;
    df_clip_layer *layers;
    df_norm_mod final_layer_norm;
    df_linear_mod text_projection; /* with_projection only: pooled -> text_embeds, no bias */
    /* Textual inversion: F32 (k, hidden_size) rows after token_embedding's, the embeddings of
     * the tokenizer's added tokens vocab_size .. vocab_size + k - 1 (borrowed: the textual
     * inversion recipe's trainable rows or a pipeline's loaded embeddings); NULL: none. The
     * forward looks ids up in token_embedding and these rows as one table, as transformers
     * does after resize_token_embeddings. */
    df_tensor *added_embedding;
} df_clip_text;

DF_API df_clip_text_config df_clip_text_config_default(void);
DF_API df_status df_clip_text_config_from_json(const df_json *j, df_clip_text_config *c);
/* Writes a transformers CLIPTextConfig config.json (keys sorted, "architectures":
 * ["CLIPTextModel"] or ["CLIPTextModelWithProjection"]) that transformers and we read back. */
DF_API df_status df_clip_text_config_save(const df_clip_text_config *c, const char *path);
DF_API df_status df_clip_text_init(df_clip_text *m, const df_clip_text_config *c, df_init init);
DF_API void df_clip_text_free(df_clip_text *m);
/* input_ids (N, L) integer -> last_hidden_state (N, L, D). hidden_states (may be NULL) receives
 * num_hidden_layers + 1 tensors (embeddings, then each layer's output before the final norm);
 * pooled (may be NULL) the pooler_output (N, D): with eos_token_id 2 (SD's configs) at each
 * row's argmax(ids), which an added token's id wins over the end token, as in transformers
 * v4.33.3 (docs/textual-inversion.md). */
DF_API df_tensor *df_clip_text_forward(df_clip_text *m, const df_tensor *input_ids,
                                       df_tensor **hidden_states, df_tensor **pooled);

/* ================================================================ CLIP vision tower ========== */

/* CLIPVisionConfig (transformers v4.33 field names and defaults). */
typedef struct df_clip_vision_config {
    int hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
    int num_channels, image_size, patch_size;
    float layer_norm_eps;
    char hidden_act[DF_JSON_STR]; /* quick_gelu | gelu */
    int projection_dim;           /* visual_projection's width (with_projection) */
    bool with_projection;         /* CLIPVisionModelWithProjection / the safety checker */
} df_clip_vision_config;

/* transformers' CLIPVisionTransformer (+ visual_projection). Its parameters are registered under
 * `prefix` ("vision_model" for CLIPVisionModel, "vision_model.vision_model" in the safety
 * checker); visual_projection is top-level "visual_projection". */
typedef struct df_clip_vision {
    df_clip_vision_config config;
    df_params params;
    df_tensor *class_embedding, *patch_embedding, *position_embedding;
    df_norm_mod pre_layrnorm, post_layernorm; /* transformers' spelling */
    df_clip_layer *layers;
    df_linear_mod visual_projection; /* with_projection only: no bias */
} df_clip_vision;

DF_API df_clip_vision_config df_clip_vision_config_default(void);
/* Reads a CLIPVisionConfig object (a CLIPVisionModel's config.json or a CLIPConfig's
 * "vision_config"); sizes are checked (image_size a multiple of patch_size, heads divide the
 * width), errors name the file and the field. */
DF_API df_status df_clip_vision_config_from_json(const df_json *j, df_clip_vision_config *c);
DF_API df_status df_clip_vision_init(df_clip_vision *m, const df_clip_vision_config *c,
                                     df_init init, const char *prefix);
DF_API void df_clip_vision_free(df_clip_vision *m);
/* pixel_values (N, C, image_size, image_size) F32 -> last_hidden_state (N, 1 + patches, D)
 * (before post_layernorm, as upstream). hidden_states (may be NULL) receives layers + 1 tensors
 * (the pre_layrnorm'd embeddings, then each layer's output); pooled (may be NULL) the
 * pooler_output post_layernorm(last[:, 0]) (N, D). The caller checks the input's shape
 * (df_clip_vision_check_pixels). */
DF_API df_tensor *df_clip_vision_forward(df_clip_vision *m, df_tensor *pixel_values,
                                         df_tensor **hidden_states, df_tensor **pooled);
/* DF_ERR_INVALID naming `what` unless x is F32 (N, num_channels, image_size, image_size),
 * 1 <= N <= DF_CLIP_MAX_BATCH. */
DF_API df_status df_clip_vision_check_pixels(const df_clip_vision_config *c, const df_tensor *x,
                                             const char *what);

/* ================================================================ safety checker ============= */

#define DF_SAFETY_CONCEPTS 17 /* StableDiffusionSafetyChecker's concept_embeds rows */
#define DF_SAFETY_SPECIAL 3   /* its special_care_embeds rows */

/* diffusers v0.21.4 StableDiffusionSafetyChecker: a CLIP vision tower with visual_projection
 * (parameters "vision_model.vision_model.*", "visual_projection.weight") and the hidden concept
 * embeddings with their thresholds ("concept_embeds" (17, P), "concept_embeds_weights" (17),
 * "special_care_embeds" (3, P), "special_care_embeds_weights" (3)). */
typedef struct df_safety_checker {
    df_clip_vision vision; /* with_projection; its registry holds every parameter */
    df_tensor *concept_embeds, *concept_embeds_weights, *special_care_embeds,
        *special_care_embeds_weights;
} df_safety_checker;

/* One image's verdict, as the checker's forward computes it: the scores are
 * round(cos - threshold + adjustment, 3), adjustment 0.01 once a special-care score is > 0 (and
 * for the special-care concepts after it), a concept is bad when its score is > 0. */
typedef struct df_safety_result {
    bool nsfw;
    float special_scores[DF_SAFETY_SPECIAL], concept_scores[DF_SAFETY_CONCEPTS];
} df_safety_result;

/* Reads a CLIPConfig (config.json of a safety_checker folder: "vision_config" or the legacy
 * "vision_config_dict", which replaces it as transformers does, and "projection_dim"). */
DF_API df_status df_safety_checker_config_from_json(const df_json *j, df_clip_vision_config *c);
DF_API df_status df_safety_checker_init(df_safety_checker *m, const df_clip_vision_config *c,
                                        df_init init);
DF_API void df_safety_checker_free(df_safety_checker *m);
/* clip_input (N, 3, S, S) (checked by the caller) -> image_embeds (N, P), cos_dist (N, 17),
 * special_cos_dist (N, 3) (cosine similarities, upstream's cosine_distance), and one result
 * per item in res (may be NULL). Runs without gradients. */
DF_API void df_safety_checker_forward(df_safety_checker *m, df_tensor *clip_input,
                                      df_tensor **image_embeds, df_tensor **cos_dist,
                                      df_tensor **special_cos_dist, df_safety_result *res);

/* ================================================================ components ================= */

/* A tensor with a name (borrowed). */
typedef struct df_named {
    const char *name;
    df_tensor *tensor;
} df_named;

#define DF_COMPONENT_MAX_OUTPUTS (DF_CLIP_MAX_LAYERS + 3)

/* A diffusers component folder loaded as the model its config's _class_name names. */
typedef struct df_component {
    char class_name[DF_JSON_STR];
    df_unet2d *unet2d; /* exactly one of these is set */
    df_unet2d_cond *unet2d_cond;
    df_vae *vae;
    df_clip_text *clip_text;
    df_clip_vision *clip_vision;
    df_safety_checker *safety_checker;
    df_params *params; /* the model's registry */
} df_component;

/* Loads DIR/config.json and the weights (DIR/diffusion_pytorch_model.safetensors or its
 * .index.json; for transformers components, whose config names the class in `architectures`,
 * DIR/model.safetensors). Errors name the file and the field or tensor. Free with df_component_free even
 * on failure. */
DF_API df_status df_component_load(const char *dir, df_component *c);
/* As df_component_load with a weights variant (diffusers' `variant`: "fp16" reads
 * `<stem>.fp16.safetensors`); NULL or "" takes the plain file, else the one variant file there
 * is. Any stored float dtype (F16, BF16, F32, F64) is converted to the model's F32. A pickle file
 * (.bin, .ckpt, .pt) is refused with DF_ERR_UNSUPPORTED and the way to convert it. */
DF_API df_status df_component_load_variant(const char *dir, const char *variant, df_component *c);
/* The weights file of component folder `dir` for weights stem `stem` ("diffusion_pytorch_model"
 * or "model"): `<stem>[.<variant>].safetensors`, else the sharded `<stem>.safetensors.index
 * [.<variant>].json`; with no variant and no plain file the fp16, bf16 or fp32 variant file.
 * DF_ERR_UNSUPPORTED for a pickle file there (with how to convert it), DF_ERR_NOTFOUND else. */
DF_API df_status df_component_weights_path(const char *dir, const char *stem, const char *variant,
                                           char *out, size_t len);
/* Drops the pages of the weights the registry maps (df_init.map) from the resident set; they are
 * read from the file again when next used. For a model that is done for now (the UNet while
 * the VAE decodes). Only for weights never written since loading: a private page that was
 * written (a merged LoRA) would revert to the file's bytes. */
DF_API void df_params_release_pages(const df_params *r);
/* For inference: as df_component_load_variant, but the parameters are the weights file's own
 * memory (F32 tensors used in place from its mapping, others converted), so loading copies
 * nothing and the resident set holds each weight once; every parameter frozen. The mapping is
 * private: an in-place change of a weight (a merged LoRA) copies only the pages it writes. */
DF_API df_status df_component_map_frozen(const char *dir, const char *variant, df_component *c);
/* df_component_load, then every parameter frozen (df_params_freeze): a base that only runs. */
DF_API df_status df_component_load_frozen(const char *dir, df_component *c);
DF_API void df_component_free(df_component *c);
/* Runs the model on named inputs (see component.c for the names) and fills outputs (at most
 * DF_COMPONENT_MAX_OUTPUTS, names static, tensors under the scope rule). A missing or
 * mis-shaped input is DF_ERR_NOTFOUND / DF_ERR_INVALID naming it. */
DF_API df_status df_component_forward(df_component *c, const df_named *inputs, int n_inputs,
                                      df_named *outputs, int *n_outputs);
/* The main output's name (the one a bare `probe` tensor goes with): "sample", or
 * "last_hidden_state" for CLIPTextModel. Static string. */
DF_API const char *df_component_main_output(const df_component *c);

#endif
