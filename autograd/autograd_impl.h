/* autograd_impl.h — what an op file needs to record itself on the tape. Internal to autograd/.
 *
 * An op's constructor computes its output, then, when df_needs_grad says so, records a node:
 *
 *     df_node *n = df_node_new(&OP, out, 2, (df_tensor *[]){a, b}, sizeof(my_params));
 *     if (n) { *(my_params *)n->state = p; df_node_save(n, 0, out); }
 *
 * and its backward reads `grad_out` and adds (+=) into df_node_grad(n, i) for each input that
 * needs one (NULL otherwise). Inputs are retained by the node; saved tensors are detached
 * aliases, so a node never keeps its own output alive (no reference cycles).
 */
#ifndef DF_AUTOGRAD_IMPL_H
#define DF_AUTOGRAD_IMPL_H

#include "autograd/autograd.h"

#define DF_NODE_MAX_SAVED 4

typedef struct df_op {
    const char *name;
    /* Adds d loss / d input into df_node_grad(n, i) for every input that needs it. */
    void (*backward)(df_node *n, const df_tensor *grad_out);
    /* Releases what the op keeps in n->state besides plain values (oneDNN primitives). May be
     * NULL. */
    void (*free_state)(void *state);
} df_op;

struct df_node {
    const df_op *op;
    int refcount;
    int n_inputs;
    df_tensor *saved[DF_NODE_MAX_SAVED]; /* detached aliases, owned */
    df_tensor *out_grad;                 /* accumulated gradient of the output, owned */
    int out_ndim;
    int64_t out_shape[DF_MAX_DIMS];
    int out_block; /* the output's df_tensor.block (its gradient's layout) */
    void *state;   /* state_size zeroed bytes, inline in this allocation */
    size_t alloc_bytes;
    uint64_t visit;      /* df_backward bookkeeping */
    int pending;         /* df_backward: consumers not yet run */
    df_tensor *inputs[]; /* retained */
};

/* storage: the refcounted block behind tensors. */
struct df_storage {
    int refcount;
    bool external; /* wrapped memory: never freed */
    void *data;
    size_t bytes;
};

/* True when grad mode is on and any of the n inputs requires a gradient. */
bool df_needs_grad(int n, df_tensor *const *inputs);
/* Records a node making `out` (which then requires grad) when df_needs_grad(inputs); else
 * returns NULL and records nothing. The node keeps every input's data alive until its backward
 * has run. */
df_node *df_node_new(const df_op *op, df_tensor *out, int n_inputs, df_tensor *const *inputs,
                     size_t state_size);
/* As df_node_new, but keeps the data only of the inputs whose bit is set in keep_data (bit i:
 * input i): an intermediate input outside the mask is held as a header without storage (shape,
 * dtype and producer node, so gradients still reach it), and its memory is free to go as soon
 * as nothing else uses it. The op's backward must read only shapes of those inputs. Leaves are
 * always kept (they outlive the step anyway). */
df_node *df_node_new_keep(const df_op *op, df_tensor *out, int n_inputs, df_tensor *const *inputs,
                          size_t state_size, unsigned keep_data);
/* As df_node_new_keep, but the node is made whether or not an input requires grad: for an op
 * whose backward reaches leaves that are not its inputs (a checkpoint's parameters), which
 * decides itself that a node is needed. */
df_node *df_node_new_always(const df_op *op, df_tensor *out, int n_inputs, df_tensor *const *inputs,
                            size_t state_size, unsigned keep_data);
/* Keeps a detached alias of t in slot i for backward. */
void df_node_save(df_node *n, int slot, const df_tensor *t);
/* The F32 gradient accumulator of input i (created zero-filled, same shape as the input), or
 * NULL when input i needs no gradient. Backward adds into it. */
df_tensor *df_node_grad(df_node *n, int i);
/* As df_node_grad, for a backward that writes a whole gradient at once: when input i has no
 * gradient yet it is created *uninitialised* and *accumulate is set false (the caller must
 * overwrite every element: `=`); when one exists (an earlier consumer of the input, or a leaf's
 * .grad from an earlier backward) *accumulate is set true (the caller adds: `+=`). Saves the
 * zero fill and a read of the gradient, which a memory-bound product such as a 1x1 convolution
 * pays for. */
df_tensor *df_node_grad_dest(df_node *n, int i, bool *accumulate);

/* Reports a recoverable failure from inside an op's backward (whose signature has no status):
 * the running backward stops after this node and df_backward returns `st` (the first one
 * reported; the message is the caller's df_error). What a backward that runs a nested forward and
 * backward (recomputation) does when that fails. Only valid while a backward runs. */
void df_tape_fail(df_status st);

void df_node_retain(df_node *n);
void df_node_release(df_node *n);

/* A new storage of `bytes` (uninitialised, refcount 1) and the release of one reference. */
df_storage *df_storage_new(size_t bytes);
/* As df_storage_new, but NULL (DF_ERR_NOMEM set) when memory is short. */
df_storage *df_storage_try_new(size_t bytes);
void df_storage_release(df_storage *s);
/* Points t at storage s from element `offset` (taking a reference) and drops its old storage. */
void df_tensor_rebind(df_tensor *t, df_storage *s, int64_t offset);

/* A new tensor owned by nobody but the caller even inside a scope (for node internals). */
df_tensor *df_tensor_new_unscoped(df_dtype dt, int ndim, const int64_t *shape);
/* A detached alias of t (shares storage, no history) owned by the caller even inside a scope. */
df_tensor *df_detach_unscoped(const df_tensor *t);

/* Asserts t is F32 (ops compute in F32), in any layout: for the ops that handle channel-blocked
 * tensors (df_tensor.block). */
#define DF_ASSERT_F32_ANY_LAYOUT(opname, t)                                                        \
    DF_ASSERT((t)->dtype == DF_DTYPE_F32, "%s: expected F32, got %s", opname,                      \
              df_dtype_name((t)->dtype))
/* Asserts t is F32 or BF16, in any layout: for the ops that take BF16 without a oneDNN kernel
 * that may be missing on this CPU (layout reorders; docs/dtypes.md). */
#define DF_ASSERT_F32_BF16_ANY_LAYOUT(opname, t)                                                   \
    DF_ASSERT((t)->dtype == DF_DTYPE_F32 || (t)->dtype == DF_DTYPE_BF16,                           \
              "%s: expected F32 or BF16, got %s", opname, df_dtype_name((t)->dtype))
/* Asserts t is in plain layout: every op that indexes elements row-major checks it. */
#define DF_ASSERT_PLAIN(opname, t)                                                                 \
    DF_ASSERT((t)->block == 0,                                                                     \
              "%s: input is channel-blocked (nChw%dc); convert it with df_to_plain first", opname, \
              (t)->block)
/* Asserts t is F32 and plain (ops compute in F32). */
#define DF_ASSERT_F32(opname, t)                                                                   \
    do {                                                                                           \
        DF_ASSERT_F32_ANY_LAYOUT(opname, t);                                                       \
        DF_ASSERT_PLAIN(opname, t);                                                                \
    } while (0)
/* Kernels over channel-blocked data (df_tensor.block) take the lane count as a compile-time
 * constant: DF_LANE_FN marks such a body (inlined into each call), and DF_LANES(L, F, args...)
 * calls F(args..., L) with L a literal 1 (plain data), 8 or 16, so that the lane loops keep
 * their values in registers and vectorise. DF_LANES_MAX sizes per-lane arrays. */
#define DF_LANES_MAX 16
/* The hot loops of our own kernels (softmax rows, the Winograd transforms, elementwise ops) are
 * compiled once per x86-64 level and picked at load time by the CPU (GCC's target_clones, an
 * ifunc each): the build targets x86-64-v2 so that one binary runs on every machine, and these
 * loops still get AVX2 (v3) or AVX-512 (v4) vectors where the CPU has them. Their results may
 * differ in the last bits between machines of different levels (vector widths change the order
 * of lane reductions), never between runs on one machine. Other compilers get the v2 code. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DF_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DF_SIMD_CLONES
#endif

#define DF_LANE_FN static inline __attribute__((always_inline)) void
#define DF_LANES(L, F, ...)                                                                        \
    do {                                                                                           \
        if ((L) == 1)                                                                              \
            F(__VA_ARGS__, 1);                                                                     \
        else if ((L) == 8)                                                                         \
            F(__VA_ARGS__, 8);                                                                     \
        else                                                                                       \
            F(__VA_ARGS__, 16);                                                                    \
    } while (0)

/* A new tensor (scope rule) with t's shape and layout. */
df_tensor *df_tensor_new_like(df_dtype dt, const df_tensor *t);

/* Shared kernels. df_softmax_row: softmax (or log_softmax when `log`) of one row of D floats,
 * stable (row maximum subtracted), the sum in double; y may equal x. */
void df_softmax_row(const float *x, float *y, int64_t D, bool log);
/* The softmax backward of one row: d = y (g - sum_j g_j y_j) (the sum in double), added into d
 * when `accumulate`, else written; g may equal d. */
void df_softmax_row_grad(const float *y, const float *g, float *d, int64_t D, bool accumulate);
/* df_softmax_attention works in blocks of at most this many bytes of scores (default 8 MiB);
 * returns the previous value. Results do not depend on it beyond rounding of dk/dv sums across
 * row blocks; tests shrink it to cover the row-block path. */
size_t df_softmax_attention_set_chunk_bytes(size_t bytes);
/* conv2d takes Winograd F(2x2, 3x3) from this many 2x2 output tiles (N ceil(OH / 2) ceil(OW / 2);
 * default 256, measured in conv2d.c); returns the previous value. Tests lower it to reach the
 * Winograd passes with small tensors. */
int64_t df_conv2d_set_winograd_min_tiles(int64_t tiles);

/* Normalises a possibly negative dim against ndim; asserts it is in range. */
int df_dim_norm(const char *opname, int dim, int ndim);

#endif
