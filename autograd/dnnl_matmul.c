/* dnnl_matmul.c — c (= or +=) a * b (+ bias) on oneDNN matmul, the building block of df_matmul
 * and df_linear (forward and both backward products).
 *
 * Operands are strided memory descriptors, so a transposed operand costs no copy; batch dims are
 * equal or 1 (oneDNN broadcasts a 1). Accumulation uses a sum post-op (c = a*b + c), which is
 * how backward adds into gradient buffers without a temporary. The primitive is cached per
 * (dims, strides, dtypes, bias, accumulate). Dtypes: F32 everywhere, or BF16 operands with an F32
 * or BF16 bias and output (forward only, where df_op_supports_dtype says so); or, under mixed
 * precision (df_dnnl_cdt), a BF16 primitive fed by F32 or BF16 operands (the cache's reorders
 * convert F32 user memory to the primitive's BF16, keeping the operand's strides), or an F32
 * primitive fed by copies rounded to BF16 where oneDNN has no BF16 matmul (emulation).
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
    df_dtype bias_dt, c_dt, prim_dt; /* prim_dt: the primitive's operands (df_dnnl_cdt_dtype) */
    bool bias, accumulate;
} mm_ctx;

static void mm_build(void *vctx, dnnl_primitive_desc_t *pd, int *n_args, df_dnnl_arg_spec *args) {
    const mm_ctx *c = vctx;
    int nd = c->a->ndim;
    dnnl_memory_desc_t a_user = df_dnnl_md_strides(c->a->dtype, nd, c->a->dims, c->a->strides);
    dnnl_memory_desc_t b_user = df_dnnl_md_strides(c->b->dtype, nd, c->b->dims, c->b->strides);
    dnnl_memory_desc_t a_md = df_dnnl_md_strides(c->prim_dt, nd, c->a->dims, c->a->strides);
    dnnl_memory_desc_t b_md = df_dnnl_md_strides(c->prim_dt, nd, c->b->dims, c->b->strides);
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
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SRC, DF_DNNL_IN, a_user};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_WEIGHTS, DF_DNNL_IN, b_user};
    if (c->bias) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_BIAS, DF_DNNL_IN, bias_md};
    /* with the sum post-op the primitive reads dst, so dst stays user memory (OUT, same md) */
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DST, DF_DNNL_OUT, c_md};
    *n_args = n;
}

/* The span of elements an operand's dims and strides reach. */
static int64_t mat_span(const df_dnnl_mat *m) {
    int64_t span = 1;
    for (int i = 0; i < m->ndim; i++) {
        if (m->dims[i] == 0) return 0;
        span += (m->dims[i] - 1) * m->strides[i];
    }
    return span;
}

/* An F32 copy of m rounded to BF16 (same dims and strides); *hold owns its storage. */
static df_dnnl_mat mat_rounded(const df_dnnl_mat *m, df_tensor **hold) {
    int64_t span = mat_span(m);
    *hold = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &span);
    df_bf16_round(m->data, m->dtype, df_f32(*hold), span);
    df_dnnl_mat r = *m;
    r.data = (*hold)->data;
    r.dtype = DF_DTYPE_F32;
    return r;
}

void df_dnnl_matmul_c(const char *opname, df_dnnl_cdt cdt, const df_dnnl_mat *a,
                      const df_dnnl_mat *b, const void *bias, df_dtype bias_dt, void *c,
                      df_dtype c_dt, const int64_t *c_dims, bool accumulate) {
    int nd = a->ndim;
    DF_ASSERT(b->ndim == nd, "%s: matmul operands with %d and %d dims", opname, nd, b->ndim);
    DF_ASSERT(a->dims[nd - 1] == b->dims[nd - 2] && a->dims[nd - 2] == c_dims[nd - 2] &&
                  b->dims[nd - 1] == c_dims[nd - 1],
              "%s: matmul (%lld x %lld) * (%lld x %lld) -> (%lld x %lld)", opname,
              (long long)a->dims[nd - 2], (long long)a->dims[nd - 1], (long long)b->dims[nd - 2],
              (long long)b->dims[nd - 1], (long long)c_dims[nd - 2], (long long)c_dims[nd - 1]);
    if (cdt == DF_CDT_BF16_EMU) { /* rounded copies through the F32 primitive */
        DF_ASSERT(c_dt == DF_DTYPE_F32, "%s: emulated BF16 product with a %s output", opname,
                  df_dtype_name(c_dt));
        df_tensor *ha, *hb, *hbias = NULL;
        df_dnnl_mat ar = mat_rounded(a, &ha), br = mat_rounded(b, &hb);
        if (bias && bias_dt != DF_DTYPE_F32) { /* a BF16 bias widens exactly */
            int64_t len = c_dims[nd - 1];
            hbias = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &len);
            df_bf16_round(bias, bias_dt, df_f32(hbias), len);
            bias = hbias->data;
        }
        df_dnnl_matmul_c(opname, DF_CDT_F32, &ar, &br, bias, DF_DTYPE_F32, c, c_dt, c_dims,
                         accumulate);
        df_tensor_free(ha);
        df_tensor_free(hb);
        df_tensor_free(hbias);
        return;
    }
    df_dtype prim_dt = cdt == DF_CDT_BF16 ? DF_DTYPE_BF16 : a->dtype;
    DF_ASSERT(cdt == DF_CDT_BF16 || a->dtype == b->dtype, "%s: matmul operands of dtypes %s and %s",
              opname, df_dtype_name(a->dtype), df_dtype_name(b->dtype));
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
    df_dnnl_key_push_n(
        &key, 5, (int64_t[]){a->dtype, b->dtype, bias ? (int64_t)bias_dt : -1, c_dt, prim_dt});
    mm_ctx ctx = {a, b, c_dims, bias_dt, c_dt, prim_dt, bias != NULL, accumulate};
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

void df_dnnl_matmul_f32_out(const char *opname, df_dnnl_cdt cdt, const df_dnnl_mat *a,
                            const df_dnnl_mat *b, float *c, const int64_t *c_dims,
                            bool accumulate) {
    df_dnnl_matmul_c(opname, cdt, a, b, NULL, DF_DTYPE_F32, c, DF_DTYPE_F32, c_dims, accumulate);
}

void df_dnnl_matmul_dt(const char *opname, const df_dnnl_mat *a, const df_dnnl_mat *b,
                       const void *bias, df_dtype bias_dt, void *c, df_dtype c_dt,
                       const int64_t *c_dims, bool accumulate) {
    df_dnnl_cdt cdt = a->dtype == DF_DTYPE_BF16 ? DF_CDT_BF16 : DF_CDT_F32;
    DF_ASSERT(a->dtype == b->dtype, "%s: matmul operands of dtypes %s and %s", opname,
              df_dtype_name(a->dtype), df_dtype_name(b->dtype));
    df_dnnl_matmul_c(opname, cdt, a, b, bias, bias_dt, c, c_dt, c_dims, accumulate);
}
