/* dnnl_impl.h — the oneDNN layer shared by the ops that run on it (conv2d, matmul, linear,
 * layer_norm). Internal to autograd/.
 *
 * - One CPU engine and one stream for the process, created on first use (pthread_once).
 * - DF_DNNL_CHECK(op, call): a oneDNN call that must succeed. Ops return tensors, not statuses,
 *   and every shape reaching oneDNN has been checked by the op first, so a failing oneDNN call
 *   for valid shapes is a programmer error (a wrong descriptor) or an allocation failure deep in
 *   the library: the macro sets df_last_error() to "<op>: <call> failed: <status name>"
 *   (DF_ERR_DNNL) and stops with DF_ASSERT, which prints that message — except
 *   dnnl_out_of_memory, which goes to the out-of-memory handler (df_mem_oom).
 * - A primitive cache: an op describes its primitive by a key (op kind, shapes, params); the
 *   first request for a key builds the primitive descriptor, the primitive, and the reorders
 *   between the plain layouts our tensors use ("user" memory) and the layouts the primitive
 *   chose (format_tag_any), and later requests reuse them. Thread-safe (one mutex), bounded
 *   (least recently used entries are evicted; an entry in use is freed when its last user puts
 *   it back).
 *
 * Follows oneDNN v2.6.3 examples/cpu_cnn_training_f32.c: format_tag_any for the primitive, user
 * memory in plain tags, a reorder only when the two differ, backward descriptors created with the
 * forward primitive descriptor as hint.
 */
#ifndef DF_DNNL_IMPL_H
#define DF_DNNL_IMPL_H

#include "autograd/autograd_impl.h"

#include <oneapi/dnnl/dnnl.h>

dnnl_engine_t df_dnnl_engine(void);
dnnl_stream_t df_dnnl_stream(void);

/* Stops with "<opname>: <call> failed: <status name>" (see the header comment). */
void df_dnnl_fail(const char *opname, const char *call, dnnl_status_t s, const char *file, int line)
    __attribute__((noreturn));
#define DF_DNNL_CHECK(opname, call)                                                                \
    do {                                                                                           \
        dnnl_status_t df_dnnl_s_ = (call);                                                         \
        if (df_dnnl_s_ != dnnl_success)                                                            \
            df_dnnl_fail(opname, #call, df_dnnl_s_, __FILE__, __LINE__);                           \
    } while (0)

/* A new primitive attribute (the caller destroys it) with a user-managed scratchpad and, when
 * `sum`, a sum post-op (dst = result + dst). Every primitive is created with one: the library's
 * default scratchpad is shared by all primitives of the process (unless oneDNN was built with
 * DNNL_ENABLE_CONCURRENT_EXEC, which Debian's is not), so two threads running the backward-weights
 * convolution at once corrupted each other's reduction buffers and barriers and hung; with a user
 * scratchpad each execution gets its own (df_dnnl_prim_run allocates it from the memory pool). */
dnnl_primitive_attr_t df_dnnl_attr_new(bool sum);

/* The oneDNN data type of dt: F32 or BF16 (DF_ASSERT for the others, which no oneDNN op takes). */
dnnl_data_type_t df_dnnl_dt(df_dtype dt);

/* Memory descriptors of dtype dt (F32 or BF16): by tag (dnnl_format_tag_any for "primitive
 * chooses"), and by explicit strides in elements (transposed views). */
dnnl_memory_desc_t df_dnnl_md_tag(df_dtype dt, int ndim, const int64_t *dims,
                                  dnnl_format_tag_t tag);
dnnl_memory_desc_t df_dnnl_md_strides(df_dtype dt, int ndim, const int64_t *dims,
                                      const int64_t *strides);
/* Plain row-major (abcd...) descriptor. */
dnnl_memory_desc_t df_dnnl_md_plain(df_dtype dt, int ndim, const int64_t *dims);
/* A 4-D (N, C, H, W) activation in layout `block` (df_tensor.block): nchw when 0, else
 * nChw{block}c. */
dnnl_memory_desc_t df_dnnl_md_act(df_dtype dt, const int64_t *dims, int block);

/* How a product computes (docs/dtypes.md), recorded in its node so that backward computes as
 * forward did:
 *   DF_CDT_F32       F32 operands, F32 primitives;
 *   DF_CDT_BF16      primitives in BF16 with F32 accumulation: F32 operands are converted on
 *                    the way in by the cache's reorders (user memory F32, primitive memory BF16),
 *                    BF16 operands read as they are; outputs and gradients F32 (or a BF16
 *                    output, forward only);
 *   DF_CDT_BF16_EMU  mixed precision where oneDNN has no BF16 kernel (AVX2): every operand is
 *                    rounded to BF16 into an F32 copy (df_bf16_round) and the F32 primitive runs:
 *                    the same values as DF_CDT_BF16 up to the accumulation order. */
typedef enum df_dnnl_cdt { DF_CDT_F32 = 0, DF_CDT_BF16, DF_CDT_BF16_EMU } df_dnnl_cdt;

/* The dtype rules of a oneDNN product (matmul, linear, conv2d; docs/dtypes.md), checked with
 * DF_ASSERT, and how it computes. With the thread's compute dtype F32 (df_compute_dtype): the n
 * operands share one dtype, F32 or BF16; bias (NULL: none) is F32 or the operands' dtype;
 * out_dt is F32 for F32 operands, F32 or BF16 for BF16 ones; BF16 also needs
 * df_op_supports_dtype(opname, BF16) (the message names this CPU's ISA) and no input needing a
 * gradient. With the compute dtype BF16 (mixed precision): operands and bias each F32 or BF16,
 * only the F32 ones may need a gradient, out_dt F32 (BF16 only natively and without
 * gradients); DF_CDT_BF16 where oneDNN has BF16 kernels for every pass, DF_CDT_BF16_EMU
 * otherwise. */
df_dnnl_cdt df_dnnl_product_dtype(const char *opname, int n, df_tensor *const *operands,
                                  const df_tensor *bias, df_dtype out_dt);
/* How a product of F32 operands computes under the thread's compute dtype (attention). */
df_dnnl_cdt df_dnnl_compute_cdt(void);
/* The dtype of a primitive's operands under cdt: BF16 for DF_CDT_BF16, F32 otherwise. */
static inline df_dtype df_dnnl_cdt_dtype(df_dnnl_cdt cdt) {
    return cdt == DF_CDT_BF16 ? DF_DTYPE_BF16 : DF_DTYPE_F32;
}
/* dst[i] = src[i] (F32 or BF16, n elements) rounded to BF16 (nearest even), as F32. */
void df_bf16_round(const void *src, df_dtype dt, float *dst, int64_t n);
/* A new unscoped F32 tensor of t's shape and layout holding t rounded to BF16 (DF_CDT_BF16_EMU). */
df_tensor *df_bf16_rounded(const df_tensor *t);

/* ------------------------------------------------------------------ primitive cache --------- */

#define DF_DNNL_KEY_MAX 48 /* one slot is taken by the cache (the thread count) */

/* Results must not depend on the thread count (resume must be exact). oneDNN splits some long
 * reductions across threads — convolution backward-weights over the batch and pixels, a GEMM
 * over a long inner dim (matmul backward, linear's weight gradient) — so their sums changed
 * between 1 and 2 threads (up to 4e-3 on the benchmark shapes); the GEMM's blocking follows
 * the thread count too, so even a short forward product ((1024 x 64) x (64 x 64), the UNet's
 * attention projections) rounded differently. Backward-weights convolutions and every matmul
 * set key.threads = DF_DNNL_REDUCTION_THREADS: they are created and run with exactly
 * that many OpenMP threads whatever OMP_NUM_THREADS says, which fixes the split. The price: on
 * a machine with more cores those primitives use only this many. Override with
 * -DDF_DNNL_REDUCTION_THREADS=n at build time (results then differ from other builds). */
#ifndef DF_DNNL_REDUCTION_THREADS
#define DF_DNNL_REDUCTION_THREADS 2
#endif

/* What identifies a primitive: the op kind (an op-private enum value, distinct per op file via
 * df_dnnl_kind) and up to DF_DNNL_KEY_MAX integers (shapes, params, flags, and the dtype of
 * every argument: a primitive built for F32 must never serve BF16 data of the same shape).
 * Zero-initialise, then push values. */
typedef struct df_dnnl_key {
    int kind;
    int threads; /* 0: run with the caller's omp_get_max_threads(); > 0: see below */
    int n;
    int64_t v[DF_DNNL_KEY_MAX];
} df_dnnl_key;
void df_dnnl_key_push(df_dnnl_key *k, int64_t v);
void df_dnnl_key_push_n(df_dnnl_key *k, int n, const int64_t *v);

enum {
    DF_DNNL_KIND_CONV_FWD = 1,
    DF_DNNL_KIND_CONV_BWD_DATA,
    DF_DNNL_KIND_CONV_BWD_WEIGHTS,
    DF_DNNL_KIND_MATMUL,
    DF_DNNL_KIND_INNER_PRODUCT_FWD,
    DF_DNNL_KIND_LNORM_FWD,
    DF_DNNL_KIND_LNORM_BWD,
    DF_DNNL_KIND_REORDER,
};

/* How an execution argument meets user memory:
 *   IN      user memory is read (reordered into the primitive's layout if it differs);
 *   OUT     user memory is overwritten with the result;
 *   OUT_ACC the result is added (+=) to user memory (a reorder with a sum post-op), which is
 *           how backward accumulates into gradients. */
typedef enum df_dnnl_dir { DF_DNNL_IN, DF_DNNL_OUT, DF_DNNL_OUT_ACC } df_dnnl_dir;

typedef struct df_dnnl_arg_spec {
    int arg; /* DNNL_ARG_SRC, ... */
    df_dnnl_dir dir;
    dnnl_memory_desc_t user; /* the plain layout of our tensor */
} df_dnnl_arg_spec;

#define DF_DNNL_MAX_ARGS 10

/* Builds a primitive: creates *pd and fills args[0..*n_args) (the order in which
 * df_dnnl_prim_run takes data pointers). Runs without the cache lock held, so it may itself get
 * other entries (a backward pd's forward hint). */
typedef void (*df_dnnl_build_fn)(void *ctx, dnnl_primitive_desc_t *pd, int *n_args,
                                 df_dnnl_arg_spec *args);

typedef struct df_dnnl_prim df_dnnl_prim;

/* The cached primitive for (key, current omp_get_max_threads()), built with build(ctx) on a
 * miss. The caller holds a reference until df_dnnl_prim_put. */
df_dnnl_prim *df_dnnl_prim_get(const df_dnnl_key *key, df_dnnl_build_fn build, void *ctx);
void df_dnnl_prim_put(df_dnnl_prim *p);
/* Borrowed while the reference is held. */
const_dnnl_primitive_desc_t df_dnnl_prim_pd(const df_dnnl_prim *p);
/* Executes with user data pointers in the order of the build's args (reorders included) and
 * waits for completion. */
void df_dnnl_prim_run(const char *opname, df_dnnl_prim *p, void *const *ptrs);

/* At most this many primitives are kept; the least recently used is evicted beyond. */
#define DF_DNNL_CACHE_CAPACITY 512

/* Cache statistics (tests): entries held, hits and misses since start. */
typedef struct df_dnnl_cache_stats {
    int entries;
    uint64_t hits, misses;
} df_dnnl_cache_stats;
df_dnnl_cache_stats df_dnnl_cache_get_stats(void);

/* ------------------------------------------------------------------ matmul helper ---------- */

/* One matrix operand of a oneDNN matmul: dims (..., rows, cols) over `ndim` dims (all operands
 * of a call have the same ndim, batch dims either equal or 1 for broadcasting) and element
 * strides, so a transpose is a stride swap; elements of dtype `dtype` (F32 or BF16). */
typedef struct df_dnnl_mat {
    int ndim;
    int64_t dims[DF_MAX_DIMS];
    int64_t strides[DF_MAX_DIMS];
    const void *data;
    df_dtype dtype;
} df_dnnl_mat;

/* A contiguous F32 (..., rows, cols) operand, or its transpose (logical dims (..., cols, rows))
 * when `trans`. */
df_dnnl_mat df_dnnl_mat_of(const float *data, int ndim, const int64_t *stored_dims, bool trans);
/* As df_dnnl_mat_of, over the data of tensor t in its dtype (plain layout). */
df_dnnl_mat df_dnnl_mat_of_tensor(const df_tensor *t, int ndim, const int64_t *stored_dims,
                                  bool trans);

/* c (= or +=) a * b (+ bias broadcast over rows when bias != NULL, length = c's cols) with
 * oneDNN matmul, computing as cdt says (DF_CDT_BF16: operands of either dtype converted to BF16
 * by the primitive's reorders; DF_CDT_BF16_EMU: rounded copies, F32 product, F32 bias and
 * output; DF_CDT_F32: a and b of one dtype, the primitive in it). c must be contiguous.
 * `accumulate` adds into c (sum post-op). Every product runs with DF_DNNL_REDUCTION_THREADS
 * threads (oneDNN's GEMM blocking follows the thread count, and with it the rounding). */
void df_dnnl_matmul_c(const char *opname, df_dnnl_cdt cdt, const df_dnnl_mat *a,
                      const df_dnnl_mat *b, const void *bias, df_dtype bias_dt, void *c,
                      df_dtype c_dt, const int64_t *c_dims, bool accumulate);
/* df_dnnl_matmul_c computing in the operands' dtype (a and b of one dtype; bias and c have
 * theirs: what oneDNN 2.6 takes, F32 operands with F32 bias and output, BF16 operands with F32
 * or BF16 bias and output). */
void df_dnnl_matmul_dt(const char *opname, const df_dnnl_mat *a, const df_dnnl_mat *b,
                       const void *bias, df_dtype bias_dt, void *c, df_dtype c_dt,
                       const int64_t *c_dims, bool accumulate);
/* df_dnnl_matmul_dt with an F32 bias and output. */
static inline void df_dnnl_matmul(const char *opname, const df_dnnl_mat *a, const df_dnnl_mat *b,
                                  const float *bias, float *c, const int64_t *c_dims,
                                  bool accumulate) {
    df_dnnl_matmul_dt(opname, a, b, bias, DF_DTYPE_F32, c, DF_DTYPE_F32, c_dims, accumulate);
}
/* df_dnnl_matmul_c with no bias and an F32 output. */
void df_dnnl_matmul_f32_out(const char *opname, df_dnnl_cdt cdt, const df_dnnl_mat *a,
                            const df_dnnl_mat *b, float *c, const int64_t *c_dims, bool accumulate);

#endif
