/* autograd.h — the public interface of the tensor core: tensors, memory, errors, RNG, the tape
 * and every differentiable op.
 *
 * Ownership, in one rule: every function that returns a new `df_tensor *` gives one reference.
 * While a scope is open (df_scope_begin) that reference belongs to the innermost scope and is
 * dropped by df_scope_end; outside any scope it belongs to the caller, who drops it with
 * df_tensor_free. df_tensor_retain adds a reference the caller owns (so a tensor can outlive
 * the scope it was made in). Tensors are contiguous and row-major; a view (reshape, alias) shares
 * storage with its source.
 *
 * Errors: programmer errors (shape or dtype mismatch, misuse) stop with DF_ASSERT, naming the op
 * and the shapes. Recoverable failures (I/O, bad files, out of memory, oneDNN status) return a
 * negative df_status and set a thread-local message read by df_last_error().
 */
#ifndef DF_AUTOGRAD_H
#define DF_AUTOGRAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DF_API __attribute__((visibility("default")))
#define DF_MAX_DIMS 5

/* ---------------------------------------------------------------- errors ---------------------- */

typedef enum df_status {
    DF_OK = 0,
    DF_ERR_IO = -1,          /* open/read/write/fsync failed */
    DF_ERR_FORMAT = -2,      /* outside bytes are malformed (file, header, image, config) */
    DF_ERR_NOMEM = -3,       /* allocation failed */
    DF_ERR_INVALID = -4,     /* an argument or config value is out of its allowed range */
    DF_ERR_DNNL = -5,        /* oneDNN returned an error */
    DF_ERR_NOTFOUND = -6,    /* a named file, key or tensor does not exist */
    DF_ERR_UNSUPPORTED = -7, /* valid input we do not handle (yet) */
} df_status;

/* The message of the last failure on this thread ("" when none). Borrowed; valid until the next
 * failing call on this thread. */
DF_API const char *df_last_error(void);
/* Sets the thread's error message (printf format) and returns `code`, for `return df_error(...)`. */
DF_API df_status df_error(df_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Clears the thread's error message. */
DF_API void df_error_clear(void);
/* Name of a status code ("DF_ERR_IO", ...). Static string. */
DF_API const char *df_status_name(df_status s);

/* Prints "file:line: assertion failed: <message>" to stderr and aborts. Always on. */
DF_API void df_assert_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
#define DF_ASSERT(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) df_assert_fail(__FILE__, __LINE__, __VA_ARGS__);                              \
    } while (0)
/* Propagates a failing status: `DF_TRY(df_foo(...));` inside a function returning df_status. */
#define DF_TRY(expr)                                                                               \
    do {                                                                                           \
        df_status df_try_s_ = (expr);                                                              \
        if (df_try_s_ != DF_OK) return df_try_s_;                                                  \
    } while (0)

/* ---------------------------------------------------------------- dtypes ---------------------- */

typedef enum df_dtype {
    DF_DTYPE_F32 = 0,
    DF_DTYPE_BF16,
    DF_DTYPE_F16,
    DF_DTYPE_F64,
    DF_DTYPE_I32,
    DF_DTYPE_I64,
    DF_DTYPE_U8,
    DF_DTYPE_COUNT
} df_dtype;

DF_API size_t df_dtype_size(df_dtype dt);
/* "F32", "BF16", ... (safetensors spelling). */
DF_API const char *df_dtype_name(df_dtype dt);
/* Parses a safetensors dtype name; returns false for an unknown one. */
DF_API bool df_dtype_parse(const char *name, df_dtype *out);
DF_API bool df_dtype_is_float(df_dtype dt);
/* Whether op `op` (its name without "df_": "matmul", "conv2d", "group_norm", ...) takes inputs
 * of dtype dt on this machine: DF_OK, or DF_ERR_UNSUPPORTED with a message naming the op, the
 * dtype and the reason (an F32-only op, or a CPU for which oneDNN has no BF16 kernel of the op,
 * naming its ISA). Every op takes F32; the few that take BF16 are listed in docs/dtypes.md. */
DF_API df_status df_op_supports_dtype(const char *op, df_dtype dt);

/* Mixed precision (docs/dtypes.md, "Mixed precision"): the dtype the products compute in on
 * this thread, F32 (the default) or BF16. Under BF16, conv2d, linear, matmul and
 * softmax_attention's products round their operands (F32 tensors, or BF16 ones such as frozen
 * weights stored in BF16) to BF16 and accumulate in F32, forward and backward; their outputs
 * and every gradient stay F32, and every other op is unchanged (statistics, softmax, losses in
 * F32). A node keeps the dtype of its forward: its backward computes in it whatever the switch
 * says then. Other dtypes: DF_ASSERT. Returns the previous value. */
DF_API df_dtype df_set_compute_dtype(df_dtype dt);
DF_API df_dtype df_compute_dtype(void);
/* How BF16 products run on this CPU: true when oneDNN has BF16 kernels for every product pass
 * (forward, backward-data, backward-weights) and the CPU computes BF16 dot products natively
 * (avx512_core_bf16 or later); false otherwise, in which case mixed precision is emulated
 * (operands rounded to BF16, products in F32, or oneDNN's conversions at avx512_core): the
 * same numbers to rounding, slower than F32. `why` (may be NULL) receives a one-line reason. */
DF_API bool df_bf16_native(const char **why);

/* Scalar conversions (round to nearest even; NaN stays NaN). */
DF_API uint16_t df_f32_to_bf16(float x);
DF_API float df_bf16_to_f32(uint16_t x);
DF_API uint16_t df_f32_to_f16(float x);
DF_API float df_f16_to_f32(uint16_t x);

/* ---------------------------------------------------------------- memory ---------------------- */

/* The caching allocator behind every tensor: blocks are 64-byte aligned and, once freed, kept
 * in per-size free lists and handed out again, so a loop that makes the same shapes step after
 * step stops calling malloc after its first step. Thread-safe. */
DF_API void *df_mem_alloc(size_t bytes);        /* NULL on failure (error set) */
DF_API void df_mem_free(void *p, size_t bytes); /* `bytes` as passed to df_mem_alloc */
DF_API void df_mem_trim(void);                  /* returns every cached block to the system */

typedef struct df_mem_stats {
    size_t bytes_in_use; /* handed out and not freed */
    size_t bytes_cached; /* freed, kept for reuse */
    size_t peak_in_use;
    uint64_t system_allocs; /* how many times the pool called the system allocator */
} df_mem_stats;
DF_API df_mem_stats df_mem_get_stats(void);

/* Out of memory: the contract.
 * - Allocations whose failure can be returned return DF_ERR_NOMEM with df_last_error() naming
 *   what was being allocated, how much, and how much the pool holds: df_mem_alloc (NULL),
 *   df_tensor_try_new, df_flat_init, the readers of files and datasets. The caller passes the
 *   status up; nothing is half-written (outputs go through df_outfile, below).
 * - Allocations deep inside an op (activations, tape nodes, op scratch), where no status can
 *   be returned, call df_mem_oom, which formats "out of memory allocating <what>: <bytes>
 *   (<in use> in use, <cached> cached)" and calls the out-of-memory handler. The default
 *   handler prints the message and aborts (as DF_ASSERT). A program installs its own with
 *   df_set_oom_handler: the `diffusion` CLI prints one line with a hint (lower
 *   train_batch_size or the resolution) and exits with DF_EXIT_OOM, without a core dump. A
 *   handler must not return. A run's last committed checkpoint is never touched by this: it
 *   was renamed into place before, and a checkpoint being written is a temporary folder.
 * - Before reporting a failure the pool returns its cached blocks to the system and retries.
 * - DF_MEM_LIMIT (environment, bytes with an optional K/M/G suffix) or df_mem_set_limit caps
 *   the bytes in use: a request beyond it fails as if the system had no memory left (for tests
 *   and for sharing a machine). */
#define DF_EXIT_OOM 3
typedef void (*df_oom_handler)(const char *msg);
/* Installs `h` (NULL: the default) and returns the previous handler. */
DF_API df_oom_handler df_set_oom_handler(df_oom_handler h);
/* Reports an allocation of `bytes` (0: unknown) that cannot fail softly; `what` is a printf
 * format naming it (an op, a tensor's dtype and shape). Never returns. */
DF_API _Noreturn void df_mem_oom(size_t bytes, const char *what, ...)
    __attribute__((format(printf, 2, 3)));
/* Caps the pool's bytes in use (0: no cap). Overrides DF_MEM_LIMIT. */
DF_API void df_mem_set_limit(size_t bytes);
/* "12.5 MiB"-style rendering of a byte count into buf (returns buf). */
DF_API const char *df_mem_format(size_t bytes, char *buf, size_t len);

/* ---------------------------------------------------------------- output files ---------------- */

/* True when raw JSON text s[0 .. n) holds the escape \u0000, which decodes to a NUL that would
 * silently cut a C string (autograd/json_text.c): readers of outside JSON refuse it. */
DF_API bool df_json_has_nul_escape(const char *s, size_t n);

/* An output file written atomically (outfile.c): df_outfile_begin picks the name to write to,
 * df_outfile_name, which is a temporary sibling "<path>.tmp.<pid>.<k>" of `path` (or `path`
 * itself when it exists and is not a regular file: a device, a pipe). The caller creates and
 * writes that file by any means (stdio, libpng, HDF5) and closes it, then df_outfile_commit
 * fsyncs it, renames it over `path` and fsyncs the folder; df_outfile_abort removes it instead.
 * So `path` holds either its previous bytes or the whole new file, never a partial one. */
typedef struct df_outfile {
    char *path; /* the final path (owned copy) */
    char *tmp;  /* the temporary sibling (owned), NULL when writing in place */
} df_outfile;
/* DF_ERR_NOMEM, or DF_ERR_IO when `path` is a directory. */
DF_API df_status df_outfile_begin(df_outfile *o, const char *path);
/* Where to write. Borrowed from o. */
DF_API const char *df_outfile_name(const df_outfile *o);
/* Makes the written file durable and visible under its final path. DF_ERR_IO "<path>: <what>
 * failed: <strerror>" (the temporary is removed, `path` untouched). Releases o either way. */
DF_API df_status df_outfile_commit(df_outfile *o);
/* Removes the temporary, if any, and releases o. A released or zeroed o is a no-op. */
DF_API void df_outfile_abort(df_outfile *o);
/* True when a and b both exist and are the same file (device and inode). */
DF_API bool df_same_file(const char *a, const char *b);

/* ---------------------------------------------------------------- tensors --------------------- */

typedef struct df_storage df_storage;
typedef struct df_node df_node;

typedef struct df_tensor {
    df_dtype dtype;
    int ndim;
    int64_t shape[DF_MAX_DIMS];
    int64_t numel;
    void *data;             /* first element; borrowed from `storage` */
    df_storage *storage;    /* shared by views */
    struct df_tensor *grad; /* leaf gradient, owned; NULL until a backward reaches it */
    df_node *node;          /* the op that made this tensor (grad_fn); NULL for leaves */
    bool requires_grad;     /* leaves: set by the user; op outputs: true when `node` is set */
    bool scoped;            /* one of the references belongs to an open scope */
    int refcount;
    /* Storage layout. 0: plain row-major (every tensor made outside the ops below). B > 0: a
     * 4-D activation (N, C, H, W) stored channel-blocked as oneDNN's nChw{B}c, i.e. the
     * row-major array (N, C / B, H, W, B) (C divisible by B): the layout the convolution
     * kernels compute in, kept between ops so that no reorder runs around each convolution
     * (docs/layout.md). Made by df_to_blocked and by the ops that accept it (conv2d,
     * group_norm, the elementwise ops, concat along channels, upsample_nearest2d); any other op
     * stops with a DF_ASSERT naming it: convert with df_to_plain first. `shape` is always the
     * logical (N, C, H, W). */
    int block;
} df_tensor;

/* `DF_DIMS(2, 3, 4)` expands to the (ndim, shape) argument pair `3, (int64_t[]){2, 3, 4}`. */
#define DF_DIMS(...)                                                                               \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]) {                       \
        __VA_ARGS__                                                                                \
    }

/* New tensors. All return a new reference (see the ownership rule above) and never NULL: running
 * out of memory here calls the out-of-memory handler (df_mem_oom), as the step cannot continue. Values of df_tensor_new
 * are uninitialised. ndim may be 0 (a scalar). */
DF_API df_tensor *df_tensor_new(df_dtype dt, int ndim, const int64_t *shape);
/* As df_tensor_new, but the reference always belongs to the caller, even inside a scope (for
 * parameters and other long-lived state). */
DF_API df_tensor *df_tensor_new_owned(df_dtype dt, int ndim, const int64_t *shape);
/* As df_tensor_new_owned, but out of memory is DF_ERR_NOMEM ("out of memory allocating <size>
 * (...) for a tensor <dtype> (<shape>)"), not the out-of-memory handler: for parameters and
 * state whose allocation a loader can report. *out is NULL on failure. */
DF_API df_status df_tensor_try_new_owned(df_dtype dt, int ndim, const int64_t *shape,
                                         df_tensor **out);
DF_API df_tensor *df_zeros(df_dtype dt, int ndim, const int64_t *shape);
DF_API df_tensor *df_ones(df_dtype dt, int ndim, const int64_t *shape);
DF_API df_tensor *df_full(df_dtype dt, int ndim, const int64_t *shape, double value);
/* 1-D [start, end) by step, as torch.arange. */
DF_API df_tensor *df_arange(df_dtype dt, double start, double end, double step);
/* Copies numel elements of dtype `dt` from `src`. */
DF_API df_tensor *df_from_data(df_dtype dt, int ndim, const int64_t *shape, const void *src);
/* Wraps memory the caller keeps alive (no copy, never freed by us), e.g. an mmap. */
DF_API df_tensor *df_tensor_wrap(df_dtype dt, int ndim, const int64_t *shape, void *data);
/* A copy converted to `dt` (float <-> bf16/f16/f64 round to nearest even; to ints truncate), in
 * t's layout. */
DF_API df_tensor *df_tensor_to(const df_tensor *t, df_dtype dt);
/* A contiguous copy with no history. */
DF_API df_tensor *df_tensor_clone(const df_tensor *t);
/* Copies src's values into dst (same numel; dtypes converted). No history. */
DF_API void df_tensor_copy_(df_tensor *dst, const df_tensor *src);
/* A tensor sharing t's storage and shape, without history (detach). */
DF_API df_tensor *df_detach(const df_tensor *t);
/* A view of t's storage with another shape (same numel, no history): the building block of
 * reshape. `offset` is in elements. */
DF_API df_tensor *df_tensor_view(const df_tensor *t, int ndim, const int64_t *shape,
                                 int64_t offset);

DF_API df_tensor *df_tensor_retain(df_tensor *t);
/* Hands a reference the caller owns (from df_tensor_new_owned, a retain, ...) to the innermost
 * open scope, or leaves it with the caller when no scope is open: the way library code returns
 * a result under the scope rule after building it with owned temporaries it may free on error.
 * Returns t. */
DF_API df_tensor *df_tensor_adopt(df_tensor *t);
DF_API void df_tensor_free(df_tensor *t); /* drops one reference; NULL is a no-op */

DF_API void df_tensor_fill_(df_tensor *t, double value);
/* Marks a leaf as a parameter/input that receives a gradient in df_backward. */
DF_API void df_tensor_set_requires_grad(df_tensor *t, bool on);
/* Zeroes (keeps) the leaf gradient if it has one. */
DF_API void df_tensor_zero_grad(df_tensor *t);
/* Element i (in storage order: for a channel-blocked tensor the blocked order) as double,
 * whatever the dtype (slow; for tests and printing). */
DF_API double df_tensor_get(const df_tensor *t, int64_t i);
DF_API bool df_tensor_same_shape(const df_tensor *a, const df_tensor *b);
/* "[2, 3, 4]" into buf (at least 64 bytes); returns buf. */
DF_API char *df_shape_str(const df_tensor *t, char *buf, size_t len);

static inline float *df_f32(const df_tensor *t) {
    return (float *)t->data;
}

/* ---------------------------------------------------------------- scopes ---------------------- */

/* A scope owns every tensor made on this thread while it is the innermost open scope; ending it
 * drops those references (tensors still referenced elsewhere, e.g. by the tape or a retain,
 * live on). Scopes nest and must end in reverse order. */
typedef struct df_scope {
    size_t mark;
} df_scope;
DF_API df_scope df_scope_begin(void);
DF_API void df_scope_end(df_scope s);
/* Ends scope s but keeps `keep` (made inside s, or owned by an enclosing scope) alive: it belongs
 * to the enclosing scope afterwards (or to the caller when none is open). The way a module forward frees its intermediates as soon as it
 * returns (inference) while its output lives on. Returns keep. */
DF_API df_tensor *df_scope_end_keep(df_scope s, df_tensor *keep);
/* Library code that builds a result from temporaries it frees itself: between suspend and
 * resume no scope adopts new tensors (the code owns them all), and the result is handed to the
 * caller's scope with df_tensor_adopt after resume. Pairs nest like scopes. */
typedef struct df_scope_pause {
    int depth;
} df_scope_pause;
DF_API df_scope_pause df_scope_suspend(void);
DF_API void df_scope_resume(df_scope_pause p);

/* ---------------------------------------------------------------- flat parameters ------------- */

/* Parameters of a model in one flat F32 buffer and their gradients in another: zero_grad is one
 * memset, the optimizer one loop, an allreduce one call. */
typedef struct df_flat {
    df_storage *data;
    df_storage *grad;
    int64_t numel;
} df_flat;
/* Moves the values of `params` (F32 leaves) into one buffer, repoints each tensor at its slice,
 * marks it requires_grad and gives it a gradient that is a slice of one zeroed gradient buffer.
 * Slices start at 16-element boundaries. */
DF_API df_status df_flat_init(df_flat *flat, df_tensor **params, int n);
DF_API void df_flat_free(df_flat *flat);
DF_API float *df_flat_data(const df_flat *flat);
DF_API float *df_flat_grad(const df_flat *flat);
DF_API void df_flat_zero_grad(df_flat *flat);
/* Gradient-ready listener (data-parallel overlap, train/ddp.c): while set, every df_backward
 * run on this thread calls fn(ctx, offset, numel) on this thread as soon as the gradient of a
 * leaf whose gradient is a slice of `flat` is final for that backward (the last node of the
 * graph that uses it has run), with the slice's first element and size in the flat gradient
 * buffer. Leaves the backward does not reach are not reported. A backward nested in a node's
 * backward (gradient checkpointing) counts its uses in too; one that reaches a leaf already
 * reported fails the backward with DF_ERR_INVALID. fn NULL removes the listener; without one,
 * backward counts nothing. fn must not run a backward. */
typedef void (*df_grad_ready_fn)(void *ctx, int64_t offset, int64_t numel);
DF_API void df_flat_set_grad_ready(const df_flat *flat, df_grad_ready_fn fn, void *ctx);

/* ---------------------------------------------------------------- the tape -------------------- */

/* Grad mode is per thread, on by default. Returns the previous mode. */
DF_API bool df_grad_set_enabled(bool on);
DF_API bool df_grad_enabled(void);

/* Backpropagates from a scalar (numel 1) `loss`: every leaf with requires_grad that `loss`
 * depends on gets d loss / d leaf added (+=) to its `grad` (created zero-filled when NULL).
 * Each node releases what it saved once its backward has run, so the graph is consumed.
 *
 * Re-entrant: an op's backward may run a forward and a backward of its own (gradient
 * checkpointing recomputes a segment and backpropagates through it). The rules for such a node:
 * (1) grad mode is off while a backward runs: it turns it on (df_grad_set_enabled) to record the
 *     recomputation and restores it;
 * (2) the nested graph must not reach a node of the enclosing graph (df_backward then fails with
 *     DF_ERR_INVALID, and nothing of the enclosing graph is touched): inputs with history are
 *     detached (df_detach) into fresh leaves with requires_grad, and their .grad added into the
 *     node's input gradients by hand; leaves (parameters) may be used as they are, their .grad
 *     receives the nested contributions exactly as the plain graph would give them;
 * (3) tensors made while the node runs follow the scope rule: they belong to the innermost open
 *     scope, usually the caller's step scope, so the node opens its own scope around the
 *     recomputation and ends it before returning (gradients and the tape's own buffers are never
 *     scoped, so nothing it must keep is freed);
 * (4) a failing nested backward is reported with df_tape_fail (autograd_impl.h): the enclosing
 *     backward stops and returns that status. */
DF_API df_status df_backward(df_tensor *loss);
/* As df_backward with an explicit gradient of `out` (same shape). */
DF_API df_status df_backward_with(df_tensor *out, const df_tensor *grad_out);

/* Gradient checkpointing (autograd/checkpoint.c): a segment of the model whose activations are
 * not kept for backward, but recomputed there. fn builds the segment's output from in[0..n)
 * (entries may be NULL) and `user` (the module; it must outlive the backward), using
 * parameters (leaves) as it likes; it must compute the same values each time it runs (no
 * random draws). With grad mode off this is fn(in, user). Otherwise fn runs once to give the
 * output, its graph dropped as it returns: the tape keeps only the inputs, and the backward
 * runs fn again with recording on and backpropagates through it (autograd.h's re-entrant
 * rules). Gradients are bitwise those of the plain graph: an input's gradient already
 * accumulated is handed to the recomputation, which adds to it in the plain graph's order.
 * At most DF_CHECKPOINT_MAX_INPUTS inputs (DF_ASSERT). A new reference under the scope rule. */
#define DF_CHECKPOINT_MAX_INPUTS 8
typedef df_tensor *(*df_checkpoint_fn)(df_tensor *const *in, const void *user);
DF_API df_tensor *df_checkpoint(df_checkpoint_fn fn, const void *user, int n, df_tensor *const *in);

/* ---------------------------------------------------------------- RNG ------------------------- */

/* Counter-based Philox4x32-10 stream: block b of stream `stream` under seed `seed` is
 * philox(counter = (b, stream) as 128 bits, key = seed). Streams of one seed are disjoint
 * counter ranges, so they never overlap; distinct (seed, stream) pairs give distinct sequences.
 * The state is four integers (key, stream, counter, buf_used): a checkpoint stores them and
 * df_philox_set_state continues the stream exactly. The struct is plain data. */
typedef struct df_philox {
    uint64_t key;     /* the seed */
    uint64_t stream;  /* counter words 2..3 */
    uint64_t counter; /* counter words 0..1: 128-bit blocks consumed so far */
    uint32_t buf[4];  /* the last block (counter - 1) */
    int buf_used;     /* words of buf already handed out (4 = empty) */
} df_philox;
DF_API void df_philox_init(df_philox *g, uint64_t seed, uint64_t stream);
/* Restores a state saved from the fields key, stream, counter, buf_used (buf is recomputed).
 * buf_used must be in 0..4, and counter > 0 when buf_used < 4 (DF_ASSERT). */
DF_API void df_philox_set_state(df_philox *g, uint64_t key, uint64_t stream, uint64_t counter,
                                int buf_used);
DF_API uint32_t df_philox_u32(df_philox *g);
/* [0, 1): the top 24 bits of one word times 2^-24. */
DF_API float df_philox_uniform(df_philox *g);
/* N(0, 1) by Box-Muller on two words; df_philox_normal keeps only the cosine value (2 words per
 * draw), the fill uses both (cos into out[i], sin into out[i+1]). */
DF_API float df_philox_normal(df_philox *g);
DF_API void df_philox_fill_normal(df_philox *g, float *out, int64_t n);
DF_API void df_philox_fill_uniform(df_philox *g, float *out, int64_t n);

/* torch's CPU generator (mt19937) with torch's sampling algorithms, so that
 * df_torchgen_seed(g, s) followed by fills reproduces torch.manual_seed(s); torch.randn(shape)
 * / torch.rand(shape) (float32, CPU, torch 1.13 with its default AVX2 kernels) bit for bit,
 * whatever CPU we run on; also torch.randperm / randint. Only float32 randn/rand: float64 tensors
 * of 16 or more elements take another torch path (not reproduced). Calls continue the state
 * exactly as successive torch calls on one generator do. The struct is plain data: copying it
 * copies the generator. Not thread-safe (one per thread). */
typedef struct df_torchgen {
    uint32_t mt[624];
    int mti;              /* next word of mt to hand out; 624 = regenerate before the next draw */
    bool has_next_normal; /* torch caches the second Box-Muller value of its scalar normal path */
    double next_normal;
    uint64_t seed; /* as given; only its low 32 bits seed mt (as in torch) */
} df_torchgen;
/* torch.manual_seed(seed) / Generator.manual_seed(seed): also clears the cached normal. */
DF_API void df_torchgen_seed(df_torchgen *g, uint64_t seed);
/* The generator's random() (one mt19937 word) and random64() (two words, first = high half). */
DF_API uint32_t df_torchgen_u32(df_torchgen *g);
DF_API uint64_t df_torchgen_u64(df_torchgen *g);
/* torch.randn(n) into out (float32); any shape with n elements (only numel matters). n < 16
 * takes torch's scalar path, which reads and refills the cached normal; n >= 16 the block
 * Box-Muller path, which leaves the cache alone. */
DF_API void df_torchgen_randn(df_torchgen *g, float *out, int64_t n);
/* torch.rand(n) into out (float32): the low 24 bits of one word per element, times 2^-24. */
DF_API void df_torchgen_rand(df_torchgen *g, float *out, int64_t n);
/* One draw of torch's scalar at::normal_distribution<double>(0, 1) (the n < 16 randn path, and
 * torch.randn(n, dtype=torch.float64) for n < 16): the cached value if any, else a new pair. */
DF_API double df_torchgen_normal(df_torchgen *g);
/* torch.randperm(n, generator=g) (int64) into out[n]: the order torch.utils.data.RandomSampler
 * yields. */
DF_API void df_torchgen_randperm(df_torchgen *g, int64_t n, int64_t *out);
/* torch.randint(low, high, (n,), generator=g) (int64) into out[n]; low < high (DF_ASSERT). */
DF_API void df_torchgen_randint(df_torchgen *g, int64_t low, int64_t high, int64_t *out, int64_t n);
/* torch.empty((), dtype=torch.int64).random_(generator=g).item(): uniform in [0, 2^63) (how
 * RandomSampler draws the seed of its own generator when given none). */
DF_API int64_t df_torchgen_random_i64(df_torchgen *g);
/* Checkpoints: the whole state as DF_TORCHGEN_STATE_WORDS u32 words, laid out as mt[0..623],
 * mti, has_next_normal, next_normal (IEEE bits, low word first), seed (low word first).
 * restore returns DF_ERR_FORMAT (g untouched) when mti or the flag is out of range. */
#define DF_TORCHGEN_STATE_WORDS 630
DF_API void df_torchgen_state_save(const df_torchgen *g, uint32_t out[DF_TORCHGEN_STATE_WORDS]);
DF_API df_status df_torchgen_state_restore(df_torchgen *g,
                                           const uint32_t in[DF_TORCHGEN_STATE_WORDS]);

/* ---------------------------------------------------------------- ops ------------------------- */
/* Every op checks shapes (DF_ASSERT naming the op and both shapes), computes its output in F32,
 * and records a node when grad mode is on and an input requires a gradient. Broadcasting follows
 * NumPy. `dims` arrays accept negative indices. Ops return tensors, not statuses: a oneDNN call
 * failing inside an op (conv2d, matmul, linear, layer_norm), which for shapes the op accepted
 * means a wrong descriptor or exhausted memory, sets df_last_error() to "<op>: <call> failed:
 * <status>" (DF_ERR_DNNL) and stops with DF_ASSERT. */

/* Binary, with broadcasting. */
DF_API df_tensor *df_add(df_tensor *a, df_tensor *b);
DF_API df_tensor *df_sub(df_tensor *a, df_tensor *b);
DF_API df_tensor *df_mul(df_tensor *a, df_tensor *b);
DF_API df_tensor *df_div(df_tensor *a, df_tensor *b);
/* Scalar forms: a + s, a * s, s - a (rsub), s / a (rdiv). */
DF_API df_tensor *df_add_scalar(df_tensor *a, float s);
DF_API df_tensor *df_mul_scalar(df_tensor *a, float s);
DF_API df_tensor *df_rsub_scalar(float s, df_tensor *a);
DF_API df_tensor *df_rdiv_scalar(float s, df_tensor *a);

/* Unary. */
DF_API df_tensor *df_neg(df_tensor *a);
DF_API df_tensor *df_exp(df_tensor *a);
DF_API df_tensor *df_log(df_tensor *a);
DF_API df_tensor *df_sqrt(df_tensor *a);
DF_API df_tensor *df_rsqrt(df_tensor *a);
DF_API df_tensor *df_pow(df_tensor *a, float exponent);
DF_API df_tensor *df_clamp(df_tensor *a, float lo, float hi); /* torch.clamp; grad 0 outside */
DF_API df_tensor *df_sigmoid(df_tensor *a);
DF_API df_tensor *df_tanh(df_tensor *a);
DF_API df_tensor *df_silu(df_tensor *a);
DF_API df_tensor *df_gelu(df_tensor *a);       /* exact: x * Phi(x) (erf) */
DF_API df_tensor *df_gelu_tanh(df_tensor *a);  /* approximate='tanh' */
DF_API df_tensor *df_quick_gelu(df_tensor *a); /* x * sigmoid(1.702 x) */

/* Softmax family over the last dim. */
DF_API df_tensor *df_softmax(df_tensor *a);
DF_API df_tensor *df_log_softmax(df_tensor *a);

/* Fused attention: softmax(q k^T) v over the last two dims, q (..., T, d), k (..., S, d),
 * v (..., S, e) with equal batch dims -> (..., T, e). The caller scales q. With `causal`, key j
 * is masked out of query i's row for j > i (masked_fill with -FLT_MAX before the softmax). It
 * equals df_matmul(df_softmax(df_matmul(q, k, false, true)), v, false, false) but never keeps
 * the (T, S) probabilities: backward recomputes them block by block. */
DF_API df_tensor *df_softmax_attention(df_tensor *q, df_tensor *k, df_tensor *v, bool causal);

/* Reductions over `ndims` dims (ndims 0 = all dims). */
DF_API df_tensor *df_sum(df_tensor *a, int ndims, const int *dims, bool keepdim);
DF_API df_tensor *df_mean(df_tensor *a, int ndims, const int *dims, bool keepdim);

/* Matrix products. matmul: a (..., M, K) x b (..., K, N) with batch broadcasting; trans_a /
 * trans_b use the transpose of the last two dims. linear: x (..., in) W(out, in)^T + b (out);
 * bias may be NULL. */
DF_API df_tensor *df_matmul(df_tensor *a, df_tensor *b, bool trans_a, bool trans_b);
DF_API df_tensor *df_linear(df_tensor *x, df_tensor *w, df_tensor *bias);
/* BF16 (docs/dtypes.md): matmul, linear and conv2d also take BF16 operands (a and b, or x and
 * w, both BF16; a bias F32 or BF16) where df_op_supports_dtype allows, forward only (no input
 * may need a gradient: DF_ASSERT). Their output has the operands' dtype; the _to forms choose
 * it: F32 or BF16 for BF16 operands (the products accumulate in F32 either way), F32 for F32. */
DF_API df_tensor *df_matmul_to(df_tensor *a, df_tensor *b, bool trans_a, bool trans_b,
                               df_dtype out_dt);
DF_API df_tensor *df_linear_to(df_tensor *x, df_tensor *w, df_tensor *bias, df_dtype out_dt);

/* Convolution on (N, C, H, W) with weight (O, C/groups, KH, KW); bias (O) or NULL. The output
 * is channel-blocked (df_tensor.block) when x is, or when `blocked_out` is set, and the output
 * channels divide into blocks (O % df_act_block() == 0); plain otherwise. */
typedef struct df_conv2d_params {
    int stride[2], padding[2], dilation[2], groups;
    bool blocked_out;
} df_conv2d_params;
DF_API df_conv2d_params df_conv2d_default(void); /* stride 1, padding 0, dilation 1, groups 1 */
DF_API df_tensor *df_conv2d(df_tensor *x, df_tensor *w, df_tensor *bias, df_conv2d_params p);
DF_API df_tensor *df_conv2d_to(df_tensor *x, df_tensor *w, df_tensor *bias, df_conv2d_params p,
                               df_dtype out_dt);

/* Normalisations. group_norm on (N, C, ...) with `groups` groups; weight/bias (C) or NULL.
 * layer_norm over the last dim; weight/bias (D) or NULL. */
DF_API df_tensor *df_group_norm(df_tensor *x, int groups, df_tensor *weight, df_tensor *bias,
                                float eps);
DF_API df_tensor *df_layer_norm(df_tensor *x, df_tensor *weight, df_tensor *bias, float eps);

/* Shapes. reshape: one dim may be -1; the result is a view. */
DF_API df_tensor *df_reshape(df_tensor *a, int ndim, const int64_t *shape);
/* concat, slice, chunk, permute and transpose copy elements of any dtype (the output keeps the
 * input's dtype; gradients are F32 as everywhere). Each returns new tensors (scope rule).
 * concat: torch.cat of n >= 1 tensors of one dtype and ndim >= 1, equal shapes except along
 * dim (which may be 0 for some); the same tensor may appear more than once. */
DF_API df_tensor *df_concat(df_tensor **ts, int n, int dim);
/* a[..., start:start+len, ...] along dim (a copy; torch.narrow). start < 0 counts from the end;
 * the range must lie inside the dim (len may be 0). */
DF_API df_tensor *df_slice(df_tensor *a, int dim, int64_t start, int64_t len);
/* n equal chunks along dim into out[0..n-1] (dim size divisible by n), each a df_slice. */
DF_API void df_chunk(df_tensor *a, int n, int dim, df_tensor **out);
/* Materialised torch.permute: perm holds a->ndim distinct dims (negative allowed); out dim k is
 * a's dim perm[k]. transpose swaps d0 and d1. */
DF_API df_tensor *df_permute(df_tensor *a, const int *perm);
DF_API df_tensor *df_transpose(df_tensor *a, int d0, int d1);

/* Activation layout (df_tensor.block). df_act_block: the channel block B of this machine's
 * convolution kernels (8 with AVX2, 16 with AVX-512), or 0 when blocking is off (no such
 * kernel, or the environment sets DF_ACT_LAYOUT=plain). df_to_blocked: x (N, C, H, W) in
 * blocked layout, or an alias of x (a new tensor sharing its storage) when it already is
 * blocked, is not 4-D, C is not a multiple of B, or B is 0. df_to_plain: x in plain layout (an
 * alias of x when plain). Both are differentiable (the gradient takes the reverse reorder). */
DF_API int df_act_block(void);
/* Makes B = block (0, 8 or 16) from now on, whatever the machine's kernels prefer, and returns
 * the B in force before. For tests that compare block widths: oneDNN runs a convolution in a
 * layout that is not its own through a slower kernel, with the same results up to rounding.
 * Call it with no blocked tensor alive; not thread-safe against ops running meanwhile. */
DF_API int df_act_block_set(int block);
DF_API df_tensor *df_to_blocked(df_tensor *x);
DF_API df_tensor *df_to_plain(df_tensor *x);

/* Spatial. */
DF_API df_tensor *df_upsample_nearest2d(df_tensor *x, int scale);
DF_API df_tensor *df_avg_pool2d(df_tensor *x, int kernel, int stride);

/* Lookup: ids (I32 or I64, any shape up to 4 dims) into table (V, D) F32 -> (ids..., D) F32
 * (F.embedding). An id outside [0, V) is a DF_ASSERT naming it and V. The gradient of table
 * sums the rows of repeated ids; ids are kept for backward and must not change before it. */
DF_API df_tensor *df_embedding(df_tensor *ids, df_tensor *table);

/* Regularisation and masks. dropout: zero with probability p, scale the rest by 1/(1-p);
 * identity when p == 0. masked_fill: where mask (U8 or I32/I64, broadcastable) is non-zero,
 * the value; elsewhere a. */
DF_API df_tensor *df_dropout(df_tensor *a, float p, df_philox *gen);
DF_API df_tensor *df_masked_fill(df_tensor *a, df_tensor *mask, float value);

/* Losses. mse: mean ((a-b)^2) (scalar) or elementwise when `reduce_mean` is false.
 * cross_entropy: logits (N, C), target ids (N) I64/I32 -> mean negative log-likelihood. */
DF_API df_tensor *df_mse_loss(df_tensor *a, df_tensor *b, bool reduce_mean);
DF_API df_tensor *df_cross_entropy(df_tensor *logits, df_tensor *target);

#endif
