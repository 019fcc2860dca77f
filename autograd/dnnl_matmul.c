/* dnnl_matmul.c — c (= or +=) a * b (+ bias) on oneDNN matmul, the building block of df_matmul
 * and df_linear (forward and both backward products).
 *
 * Operands are strided memory descriptors, so a transposed operand costs no copy; batch dims are
 * equal or 1 (oneDNN broadcasts a 1). Accumulation uses a sum post-op (c = a*b + c), which is
 * how backward adds into gradient buffers without a temporary. The primitive is cached per
 * (dims, strides, dtypes, bias, accumulate). Dtypes: F32 everywhere, or BF16 operands with an F32
 * or BF16 bias and output (forward only, where df_op_supports_dtype says so).
 */
#include "autograd/dnnl_impl.h"

df_dnnl_mat df_dnnl_mat_of(const float *data, int ndim, const int64_t *stored_dims, bool trans) {
    DF_ASSERT(ndim >= 2 && ndim <= DF_MAX_DIMS, "matmul: operand with %d dims", ndim);
    df_dnnl_mat m = {.ndim = ndim, .data = data, .dtype = DF_DTYPE_F32};
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        m.dims[i] = stored_dims[i];
        m.strides[i] = s;
        s *= stored_dims[i];
    }
    if (trans) {
        int64_t t = m.dims[ndim - 1];
        m.dims[ndim - 1] = m.dims[ndim - 2];
        m.dims[ndim - 2] = t;
        t = m.strides[ndim - 1];
        m.strides[ndim - 1] = m.strides[ndim - 2];
        m.strides[ndim - 2] = t;
    }
    return m;
}

df_dnnl_mat df_dnnl_mat_of_tensor(const df_tensor *t, int ndim, const int64_t *stored_dims,
                                  bool trans) {
    df_dnnl_mat m = df_dnnl_mat_of(t->data, ndim, stored_dims, trans);
    m.dtype = t->dtype;
    return m;
}

typedef struct mm_ctx {
    const df_dnnl_mat *a, *b;
    const int64_t *c_dims;
    df_dtype bias_dt, c_dt;
    bool bias, accumulate;
} mm_ctx;

static void mm_build(void *vctx, dnnl_primitive_desc_t *pd, int *n_args, df_dnnl_arg_spec *args) {
    const mm_ctx *c = vctx;
    int nd = c->a->ndim;
    dnnl_memory_desc_t a_md = df_dnnl_md_strides(c->a->dtype, nd, c->a->dims, c->a->strides);
    dnnl_memory_desc_t b_md = df_dnnl_md_strides(c->b->dtype, nd, c->b->dims, c->b->strides);
    dnnl_memory_desc_t c_md = df_dnnl_md_plain(c->c_dt, nd, c->c_dims);
    int64_t bias_dims[DF_MAX_DIMS];
    for (int i = 0; i < nd; i++) bias_dims[i] = 1;
    bias_dims[nd - 1] = c->c_dims[nd - 1];
    dnnl_memory_desc_t bias_md = df_dnnl_md_plain(c->bias_dt, nd, bias_dims);
    dnnl_matmul_desc_t d;
    DF_DNNL_CHECK("matmul",
                  dnnl_matmul_desc_init(&d, &a_md, &b_md, c->bias ? &bias_md : NULL, &c_md));
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(c->accumulate);
    DF_DNNL_CHECK("matmul", dnnl_primitive_desc_create(pd, &d, attr, df_dnnl_engine(), NULL));
    dnnl_primitive_attr_destroy(attr);
    int n = 0;
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SRC, DF_DNNL_IN, a_md};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_WEIGHTS, DF_DNNL_IN, b_md};
    if (c->bias) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_BIAS, DF_DNNL_IN, bias_md};
    /* with the sum post-op the primitive reads dst, so dst stays user memory (OUT, same md) */
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DST, DF_DNNL_OUT, c_md};
    *n_args = n;
}

void df_dnnl_matmul_dt(const char *opname, const df_dnnl_mat *a, const df_dnnl_mat *b,
                       const void *bias, df_dtype bias_dt, void *c, df_dtype c_dt,
                       const int64_t *c_dims, bool accumulate) {
    int nd = a->ndim;
    DF_ASSERT(b->ndim == nd, "%s: matmul operands with %d and %d dims", opname, nd, b->ndim);
    DF_ASSERT(a->dims[nd - 1] == b->dims[nd - 2] && a->dims[nd - 2] == c_dims[nd - 2] &&
                  b->dims[nd - 1] == c_dims[nd - 1],
              "%s: matmul (%lld x %lld) * (%lld x %lld) -> (%lld x %lld)", opname,
              (long long)a->dims[nd - 2], (long long)a->dims[nd - 1], (long long)b->dims[nd - 2],
              (long long)b->dims[nd - 1], (long long)c_dims[nd - 2], (long long)c_dims[nd - 1]);
    DF_ASSERT(a->dtype == b->dtype, "%s: matmul operands of dtypes %s and %s", opname,
              df_dtype_name(a->dtype), df_dtype_name(b->dtype));
    /* every product runs with the fixed thread count: oneDNN's GEMM picks its blocking by the
     * thread count, and a (1024 x 64) x (64 x 64) forward product came out different at 1 and
     * 2 threads, not only the long backward reductions */
    df_dnnl_key key = {.kind = DF_DNNL_KIND_MATMUL, .threads = DF_DNNL_REDUCTION_THREADS};
    df_dnnl_key_push(&key, nd);
    df_dnnl_key_push_n(&key, nd, a->dims);
    df_dnnl_key_push_n(&key, nd, a->strides);
    df_dnnl_key_push_n(&key, nd, b->dims);
    df_dnnl_key_push_n(&key, nd, b->strides);
    df_dnnl_key_push_n(&key, nd, c_dims);
    df_dnnl_key_push(&key, bias != NULL);
    df_dnnl_key_push(&key, accumulate);
    df_dnnl_key_push_n(&key, 4,
                       (int64_t[]){a->dtype, b->dtype, bias ? (int64_t)bias_dt : -1, c_dt});
    mm_ctx ctx = {a, b, c_dims, bias_dt, c_dt, bias != NULL, accumulate};
    df_dnnl_prim *p = df_dnnl_prim_get(&key, mm_build, &ctx);
    void *ptrs[4];
    int n = 0;
    ptrs[n++] = (void *)a->data;
    ptrs[n++] = (void *)b->data;
    if (bias) ptrs[n++] = (void *)bias;
    ptrs[n++] = c;
    df_dnnl_prim_run(opname, p, ptrs);
    df_dnnl_prim_put(p);
}
