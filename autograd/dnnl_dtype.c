/* dnnl_dtype.c — which ops take which dtypes on this machine (df_op_supports_dtype), and the
 * dtype rules the oneDNN products check before building a primitive (df_dnnl_product_dtype).
 *
 * The table below is the code side of docs/dtypes.md: every op that takes a dtype besides F32
 * has a row. BF16 convolution and matmul exist in oneDNN 2.6 only from AVX-512 (avx512_core:
 * emulated conversions; avx512_core_bf16: native dot products); with AVX2 (or
 * DNNL_MAX_CPU_ISA=AVX2) dnnl_primitive_desc_create returns dnnl_unimplemented for every
 * BF16 convolution and matmul, F32 output or BF16 (measured). So the answer is not guessed from
 * the ISA: it is what oneDNN says for a small primitive of the op in that dtype, asked once per
 * process. Layout conversions are reorders, which take BF16 on every ISA.
 */
#include "autograd/dnnl_impl.h"

#include <pthread.h>
#include <string.h>

enum {
    PROBE_NONE = 0,
    PROBE_MATMUL,
    PROBE_CONV,
    PROBE_TRAIN, /* mixed precision's every pass: see probe_train */
    PROBE_COUNT
};

static const struct {
    const char *op;
    int probe; /* BF16 forward runs when this probe succeeds; PROBE_NONE: BF16 always runs */
} bf16_ops[] = {
    {"matmul", PROBE_MATMUL},   {"linear", PROBE_MATMUL}, {"conv2d", PROBE_CONV},
    {"to_blocked", PROBE_NONE}, {"to_plain", PROBE_NONE},
};

static bool probe_ok[PROBE_COUNT];
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

/* Whether oneDNN creates the primitive descriptor (false for dnnl_unimplemented). */
static bool pd_creates_hint(const_dnnl_op_desc_t d, const_dnnl_primitive_desc_t hint) {
    dnnl_primitive_desc_t pd;
    dnnl_status_t s = dnnl_primitive_desc_create(&pd, d, NULL, df_dnnl_engine(), hint);
    if (s == dnnl_success) dnnl_primitive_desc_destroy(pd);
    return s == dnnl_success;
}

static bool pd_creates(const_dnnl_op_desc_t d) {
    return pd_creates_hint(d, NULL);
}

/* What mixed precision runs (DF_CDT_BF16): a BF16 matmul adding into an F32 output (sum
 * post-op, backward's accumulation) with a transposed BF16 operand, and the three passes of a
 * BF16 convolution with F32 outputs: forward, backward-data (BF16 diff_dst and weights, F32
 * diff_src), backward-weights (BF16 src and diff_dst, F32 diff_weights and diff_bias). */
static bool probe_train(void) {
    int64_t a[2] = {8, 16}, a_strides[2] = {1, 8}, b[2] = {16, 4}, c[2] = {8, 4};
    dnnl_memory_desc_t am = df_dnnl_md_strides(DF_DTYPE_BF16, 2, a, a_strides);
    dnnl_memory_desc_t bm = df_dnnl_md_plain(DF_DTYPE_BF16, 2, b);
    dnnl_memory_desc_t cm = df_dnnl_md_plain(DF_DTYPE_F32, 2, c);
    dnnl_matmul_desc_t md;
    DF_DNNL_CHECK("dtype probe", dnnl_matmul_desc_init(&md, &am, &bm, NULL, &cm));
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(true);
    dnnl_primitive_desc_t pd;
    bool ok = dnnl_primitive_desc_create(&pd, &md, attr, df_dnnl_engine(), NULL) == dnnl_success;
    dnnl_primitive_attr_destroy(attr);
    if (!ok) return false;
    dnnl_primitive_desc_destroy(pd);
    int64_t x[4] = {2, 16, 8, 8}, w[4] = {16, 16, 3, 3}, o = 16;
    dnnl_memory_desc_t xb = df_dnnl_md_tag(DF_DTYPE_BF16, 4, x, dnnl_format_tag_any);
    dnnl_memory_desc_t wb = df_dnnl_md_tag(DF_DTYPE_BF16, 4, w, dnnl_format_tag_any);
    dnnl_memory_desc_t xf = df_dnnl_md_tag(DF_DTYPE_F32, 4, x, dnnl_format_tag_any);
    dnnl_memory_desc_t wf = df_dnnl_md_tag(DF_DTYPE_F32, 4, w, dnnl_format_tag_any);
    dnnl_memory_desc_t bf = df_dnnl_md_tag(DF_DTYPE_F32, 1, &o, dnnl_x);
    dnnl_dims_t one = {1, 1}, zero = {0, 0};
    dnnl_convolution_desc_t fd, dd, wd;
    DF_DNNL_CHECK("dtype probe", dnnl_dilated_convolution_forward_desc_init(
                                     &fd, dnnl_forward_training, dnnl_convolution_direct, &xb, &wb,
                                     &bf, &xf, one, zero, one, one));
    dnnl_primitive_desc_t fwd;
    if (dnnl_primitive_desc_create(&fwd, &fd, NULL, df_dnnl_engine(), NULL) != dnnl_success)
        return false;
    DF_DNNL_CHECK("dtype probe",
                  dnnl_dilated_convolution_backward_data_desc_init(
                      &dd, dnnl_convolution_direct, &xf, &wb, &xb, one, zero, one, one));
    DF_DNNL_CHECK("dtype probe",
                  dnnl_dilated_convolution_backward_weights_desc_init(
                      &wd, dnnl_convolution_direct, &xb, &wf, &bf, &xb, one, zero, one, one));
    ok = pd_creates_hint(&dd, fwd) && pd_creates_hint(&wd, fwd);
    dnnl_primitive_desc_destroy(fwd);
    return ok;
}

static void probe_init(void) {
    /* (8 x 16) x (16 x 4) BF16 -> F32, the weight transposed as linear reads it */
    int64_t a[2] = {8, 16}, b[2] = {16, 4}, b_strides[2] = {1, 16}, c[2] = {8, 4};
    dnnl_memory_desc_t am = df_dnnl_md_plain(DF_DTYPE_BF16, 2, a);
    dnnl_memory_desc_t bm = df_dnnl_md_strides(DF_DTYPE_BF16, 2, b, b_strides);
    dnnl_memory_desc_t cm = df_dnnl_md_plain(DF_DTYPE_F32, 2, c);
    dnnl_matmul_desc_t md;
    DF_DNNL_CHECK("dtype probe", dnnl_matmul_desc_init(&md, &am, &bm, NULL, &cm));
    probe_ok[PROBE_MATMUL] = pd_creates(&md);
    /* a 3x3 convolution of 16 channels, BF16 -> F32, layouts chosen by the primitive */
    int64_t x[4] = {1, 16, 8, 8}, w[4] = {16, 16, 3, 3};
    dnnl_memory_desc_t xm = df_dnnl_md_tag(DF_DTYPE_BF16, 4, x, dnnl_format_tag_any);
    dnnl_memory_desc_t wm = df_dnnl_md_tag(DF_DTYPE_BF16, 4, w, dnnl_format_tag_any);
    dnnl_memory_desc_t ym = df_dnnl_md_tag(DF_DTYPE_F32, 4, x, dnnl_format_tag_any);
    dnnl_dims_t one = {1, 1}, zero = {0, 0};
    dnnl_convolution_desc_t cd;
    DF_DNNL_CHECK("dtype probe", dnnl_dilated_convolution_forward_desc_init(
                                     &cd, dnnl_forward_inference, dnnl_convolution_direct, &xm, &wm,
                                     NULL, &ym, one, zero, one, one));
    probe_ok[PROBE_CONV] = pd_creates(&cd);
    probe_ok[PROBE_TRAIN] = probe_ok[PROBE_MATMUL] && probe_ok[PROBE_CONV] && probe_train();
}

/* oneDNN's name for the ISA it runs at (its dnnl_cpu_isa_t spelling). */
static const char *isa_name(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}

df_status df_op_supports_dtype(const char *op, df_dtype dt) {
    if (dt == DF_DTYPE_F32) return DF_OK;
    const char *dn = df_dtype_name(dt);
    if (dt != DF_DTYPE_BF16)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: %s tensors are storage only: no op computes in %s (convert with "
                        "df_tensor_to; docs/dtypes.md)",
                        op, dn, dn);
    for (size_t i = 0; i < sizeof bf16_ops / sizeof bf16_ops[0]; i++) {
        if (strcmp(op, bf16_ops[i].op) != 0) continue;
        if (bf16_ops[i].probe == PROBE_NONE) return DF_OK;
        pthread_once(&probe_once, probe_init);
        if (probe_ok[bf16_ops[i].probe]) return DF_OK;
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: BF16 is not available on this CPU: oneDNN 2.6 has BF16 convolution "
                        "and matmul only from AVX-512 (avx512_core), and runs at %s here "
                        "(DNNL_MAX_CPU_ISA may lower it); use F32 (docs/dtypes.md)",
                        op, isa_name());
    }
    return df_error(DF_ERR_UNSUPPORTED,
                    "%s: takes F32 only, not BF16 (the ops that take BF16: docs/dtypes.md)", op);
}

/* ------------------------------------------------------------------ mixed precision ------- */

static _Thread_local df_dtype compute_dt = DF_DTYPE_F32;

df_dtype df_set_compute_dtype(df_dtype dt) {
    DF_ASSERT(dt == DF_DTYPE_F32 || dt == DF_DTYPE_BF16,
              "set_compute_dtype: products compute in F32 or BF16, not %s", df_dtype_name(dt));
    df_dtype old = compute_dt;
    compute_dt = dt;
    return old;
}

df_dtype df_compute_dtype(void) {
    return compute_dt;
}

bool df_bf16_native(const char **why) {
    pthread_once(&probe_once, probe_init);
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    bool dot = isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx;
    if (why) {
        *why = !probe_ok[PROBE_TRAIN]
                   ? "oneDNN 2.6 has no BF16 convolution or matmul below AVX-512: operands are "
                     "rounded to BF16 and multiplied in F32"
               : !dot ? "the CPU has no BF16 dot product (avx512_bf16): oneDNN converts in "
                        "software"
                      : "native BF16 dot products (avx512_core_bf16)";
    }
    return probe_ok[PROBE_TRAIN] && dot;
}

df_dnnl_cdt df_dnnl_compute_cdt(void) {
    if (compute_dt == DF_DTYPE_F32) return DF_CDT_F32;
    pthread_once(&probe_once, probe_init);
    return probe_ok[PROBE_TRAIN] ? DF_CDT_BF16 : DF_CDT_BF16_EMU;
}

void df_bf16_round(const void *src, df_dtype dt, float *dst, int64_t n) {
    if (dt == DF_DTYPE_BF16) {
        const uint16_t *s = src;
#pragma omp parallel for simd if (n > 32768)
        for (int64_t i = 0; i < n; i++) dst[i] = df_bf16_to_f32(s[i]);
        return;
    }
    DF_ASSERT(dt == DF_DTYPE_F32, "bf16 round: %s operand", df_dtype_name(dt));
    const float *s = src;
#pragma omp parallel for simd if (n > 32768)
    for (int64_t i = 0; i < n; i++) dst[i] = df_bf16_to_f32(df_f32_to_bf16(s[i]));
}

df_tensor *df_bf16_rounded(const df_tensor *t) {
    df_tensor *r = df_tensor_new_unscoped(DF_DTYPE_F32, t->ndim, t->shape);
    r->block = t->block;
    df_bf16_round(t->data, t->dtype, df_f32(r), t->numel);
    return r;
}

/* The rules under mixed precision (compute dtype BF16): see dnnl_impl.h. */
static df_dnnl_cdt mixed_dtype(const char *opname, int n, df_tensor *const *operands,
                               const df_tensor *bias, df_dtype out_dt) {
    df_tensor *all[DF_NODE_MAX_SAVED + 1];
    DF_ASSERT(n <= DF_NODE_MAX_SAVED, "%s: %d operands", opname, n);
    for (int i = 0; i < n; i++) all[i] = operands[i];
    all[n] = (df_tensor *)bias;
    for (int i = 0; i <= n; i++) {
        const df_tensor *t = all[i];
        if (!t) continue;
        DF_ASSERT(t->dtype == DF_DTYPE_F32 || t->dtype == DF_DTYPE_BF16,
                  "%s: a %s operand under mixed precision (expected F32 or BF16)", opname,
                  df_dtype_name(t->dtype));
        DF_ASSERT(t->dtype == DF_DTYPE_F32 || !df_needs_grad(1, (df_tensor *[]){(df_tensor *)t}),
                  "%s: a BF16 input needs a gradient (gradients are F32 of F32 tensors: keep "
                  "trained weights F32, docs/dtypes.md)",
                  opname);
    }
    df_dnnl_cdt cdt = df_dnnl_compute_cdt();
    DF_ASSERT(out_dt == DF_DTYPE_F32 ||
                  (out_dt == DF_DTYPE_BF16 && cdt == DF_CDT_BF16 && !df_needs_grad(n + 1, all)),
              "%s: a %s output under mixed precision (F32; BF16 only forward-only on a CPU with "
              "oneDNN BF16 kernels)",
              opname, df_dtype_name(out_dt));
    return cdt;
}

df_dnnl_cdt df_dnnl_product_dtype(const char *opname, int n, df_tensor *const *operands,
                                  const df_tensor *bias, df_dtype out_dt) {
    if (compute_dt == DF_DTYPE_BF16) return mixed_dtype(opname, n, operands, bias, out_dt);
    df_dtype dt = operands[0]->dtype;
    const char *alt = dt == DF_DTYPE_F32 ? "" : " or BF16";
    for (int i = 0; i < n; i++)
        DF_ASSERT(operands[i]->dtype == dt && (dt == DF_DTYPE_F32 || dt == DF_DTYPE_BF16),
                  "%s: operands of dtypes %s and %s (expected both F32 or both BF16; convert with "
                  "df_tensor_to, or compute in BF16: df_set_compute_dtype)",
                  opname, df_dtype_name(dt), df_dtype_name(operands[i]->dtype));
    DF_ASSERT(!bias || bias->dtype == DF_DTYPE_F32 || bias->dtype == dt,
              "%s: a %s bias with %s operands (expected F32%s)", opname, df_dtype_name(bias->dtype),
              df_dtype_name(dt), alt);
    DF_ASSERT(out_dt == DF_DTYPE_F32 || out_dt == dt,
              "%s: %s output from %s operands (expected F32%s)", opname, df_dtype_name(out_dt),
              df_dtype_name(dt), alt);
    if (dt == DF_DTYPE_F32) return DF_CDT_F32;
    if (df_op_supports_dtype(opname, dt) != DF_OK)
        df_assert_fail(__FILE__, __LINE__, "%s", df_last_error());
    df_tensor *all[DF_NODE_MAX_SAVED + 1];
    DF_ASSERT(n <= DF_NODE_MAX_SAVED, "%s: %d operands", opname, n);
    for (int i = 0; i < n; i++) all[i] = operands[i];
    all[n] = (df_tensor *)bias;
    DF_ASSERT(!df_needs_grad(n + 1, all),
              "%s: BF16 tensors run forward only (gradients are F32): an input needs a gradient; "
              "turn grad mode off, or keep trained tensors F32 and compute in BF16 "
              "(df_set_compute_dtype)",
              opname);
    return DF_CDT_BF16;
}
