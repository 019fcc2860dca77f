/* matmul.c — batched matrix product with NumPy batch broadcasting and optional transposes
 * (torch.matmul(a.mT if trans_a else a, b.mT if trans_b else b) for inputs of >= 2 dims).
 *
 *   A = op_a(a) (..., M, K), B = op_b(b) (..., K, N), C = A B (batch..., M, N), where op is the
 *   transpose of the last two dims when the flag is set; batch dims broadcast (right-aligned,
 *   equal or 1).
 *   forward:  oneDNN matmul; the transposes are strided memory descriptors (no copy).
 *   backward (G = dC, two matmuls per input, with the flags folded into strides):
 *     (1) dA = G B^T          stored as a (trans_a: da = dA^T = B G^T)
 *     (2) dB = A^T G          stored as b (trans_b: db = dB^T = G^T A)
 *     every product (forward too) runs with DF_DNNL_REDUCTION_THREADS (dnnl_impl.h): dB sums
 *     over the rows M, which oneDNN splits across threads otherwise
 *     (3) when an input's batch dims were broadcast, the product is made at the output's batch
 *         shape and summed over the broadcast dims, batches in a fixed order (deterministic).
 *   saved: nothing (a and b are the node's inputs; ops never mutate inputs).
 *   dtypes: F32; or BF16 a and b with an F32 or BF16 output, forward only (docs/dtypes.md); under
 *   mixed precision every product computes as the forward's df_dnnl_cdt says.
 */
#include "autograd/dnnl_impl.h"

#include <string.h>

typedef struct matmul_params {
    bool trans_a, trans_b;
    int nd;                      /* common rank after left-padding with 1s */
    int64_t a_dims[DF_MAX_DIMS]; /* stored dims of a and b, padded to nd */
    int64_t b_dims[DF_MAX_DIMS];
    int64_t c_dims[DF_MAX_DIMS];
    df_dnnl_cdt cdt; /* how the forward computed: backward does the same */
} matmul_params;

static void pad_dims(const df_tensor *t, int nd, int64_t *out) {
    int lead = nd - t->ndim;
    for (int i = 0; i < nd; i++) out[i] = i < lead ? 1 : t->shape[i - lead];
}

/* Adds a product made at batch shape c_dims (matrix rows x cols) into dst whose batch shape is
 * dst_dims (each dim equal or 1): sums over the broadcast dims. */
static void reduce_batches(float *dst, const int64_t *dst_dims, const float *src,
                           const int64_t *c_dims, int nd, int64_t mat) {
    int64_t nb = 1;
    for (int i = 0; i < nd - 2; i++) nb *= c_dims[i];
    for (int64_t b = 0; b < nb; b++) {
        int64_t rem = b, off = 0, stride = 1;
        for (int i = nd - 3; i >= 0; i--) {
            int64_t idx = rem % c_dims[i];
            rem /= c_dims[i];
            if (dst_dims[i] != 1) off += idx * stride;
            stride *= dst_dims[i];
        }
        float *d = dst + off * mat;
        const float *s = src + b * mat;
#pragma omp parallel for simd if (mat > 16384)
        for (int64_t j = 0; j < mat; j++) d[j] += s[j];
    }
}

static bool batch_equal(const int64_t *x, const int64_t *y, int nd) {
    for (int i = 0; i < nd - 2; i++)
        if (x[i] != y[i]) return false;
    return true;
}

/* g_into (= or +=) x * y, where the result has the output's batch shape and is reduced into a
 * gradient of batch shape grad_dims when those differ. */
static void product_into(df_tensor *grad, bool accumulate, const int64_t *grad_dims,
                         const df_dnnl_mat *x, const df_dnnl_mat *y, const matmul_params *p) {
    int nd = p->nd;
    int64_t out_dims[DF_MAX_DIMS];
    memcpy(out_dims, p->c_dims, sizeof out_dims);
    out_dims[nd - 2] = grad_dims[nd - 2];
    out_dims[nd - 1] = grad_dims[nd - 1];
    if (batch_equal(grad_dims, out_dims, nd)) {
        df_dnnl_matmul_f32_out("matmul backward", p->cdt, x, y, df_f32(grad), out_dims, accumulate);
        return;
    }
    int64_t numel = 1;
    for (int i = 0; i < nd; i++) numel *= out_dims[i];
    df_tensor *tmp = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &numel);
    df_dnnl_matmul_f32_out("matmul backward", p->cdt, x, y, df_f32(tmp), out_dims, false);
    if (!accumulate) memset(grad->data, 0, (size_t)grad->numel * sizeof(float));
    reduce_batches(df_f32(grad), grad_dims, df_f32(tmp), out_dims, nd,
                   out_dims[nd - 2] * out_dims[nd - 1]);
    df_tensor_free(tmp);
}

static void matmul_backward(df_node *n, const df_tensor *g) {
    const matmul_params *p = n->state;
    if (g->numel == 0) { /* empty products: the gradients are zero-filled and stay so */
        df_node_grad(n, 0);
        df_node_grad(n, 1);
        return;
    }
    int nd = p->nd;
    const df_tensor *a = n->inputs[0], *b = n->inputs[1];
    df_dnnl_mat gm = df_dnnl_mat_of(df_f32(g), nd, p->c_dims, false);
    df_dnnl_mat gt = df_dnnl_mat_of(df_f32(g), nd, p->c_dims, true);
    bool acc;
    df_tensor *ga = df_node_grad_dest(n, 0, &acc);
    if (ga) { /* (1) */
        if (!p->trans_a) {
            df_dnnl_mat bt = df_dnnl_mat_of_tensor(b, nd, p->b_dims, !p->trans_b);
            product_into(ga, acc, p->a_dims, &gm, &bt, p);
        } else {
            df_dnnl_mat bm = df_dnnl_mat_of_tensor(b, nd, p->b_dims, p->trans_b);
            product_into(ga, acc, p->a_dims, &bm, &gt, p);
        }
    }
    df_tensor *gb = df_node_grad_dest(n, 1, &acc);
    if (gb) { /* (2) */
        if (!p->trans_b) {
            df_dnnl_mat at = df_dnnl_mat_of_tensor(a, nd, p->a_dims, !p->trans_a);
            product_into(gb, acc, p->b_dims, &at, &gm, p);
        } else {
            df_dnnl_mat am = df_dnnl_mat_of_tensor(a, nd, p->a_dims, p->trans_a);
            product_into(gb, acc, p->b_dims, &gt, &am, p);
        }
    }
}

static const df_op matmul_op = {"matmul", matmul_backward, NULL};

df_tensor *df_matmul_to(df_tensor *a, df_tensor *b, bool trans_a, bool trans_b, df_dtype out_dt) {
    DF_ASSERT_PLAIN("matmul", a);
    DF_ASSERT_PLAIN("matmul", b);
    df_dnnl_cdt cdt = df_dnnl_product_dtype("matmul", 2, (df_tensor *[]){a, b}, NULL, out_dt);
    char sa[64], sb[64];
    DF_ASSERT(a->ndim >= 2 && b->ndim >= 2, "matmul: inputs need >= 2 dims, got %s and %s",
              df_shape_str(a, sa, sizeof sa), df_shape_str(b, sb, sizeof sb));
    matmul_params p = {.trans_a = trans_a, .trans_b = trans_b, .cdt = cdt};
    p.nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int nd = p.nd;
    pad_dims(a, nd, p.a_dims);
    pad_dims(b, nd, p.b_dims);
    df_dnnl_mat am = df_dnnl_mat_of_tensor(a, nd, p.a_dims, trans_a);
    df_dnnl_mat bm = df_dnnl_mat_of_tensor(b, nd, p.b_dims, trans_b);
    DF_ASSERT(am.dims[nd - 1] == bm.dims[nd - 2], "matmul: %s%s x %s%s: inner dims %lld != %lld",
              df_shape_str(a, sa, sizeof sa), trans_a ? "^T" : "", df_shape_str(b, sb, sizeof sb),
              trans_b ? "^T" : "", (long long)am.dims[nd - 1], (long long)bm.dims[nd - 2]);
    for (int i = 0; i < nd - 2; i++) {
        int64_t x = p.a_dims[i], y = p.b_dims[i];
        DF_ASSERT(x == y || x == 1 || y == 1, "matmul: batch dims of %s and %s do not broadcast",
                  df_shape_str(a, sa, sizeof sa), df_shape_str(b, sb, sizeof sb));
        p.c_dims[i] = x == 1 ? y : x;
    }
    p.c_dims[nd - 2] = am.dims[nd - 2];
    p.c_dims[nd - 1] = bm.dims[nd - 1];
    df_tensor *out = df_tensor_new(out_dt, nd, p.c_dims);
    if (out->numel > 0)
        df_dnnl_matmul_c("matmul", cdt, &am, &bm, NULL, DF_DTYPE_F32, out->data, out_dt, p.c_dims,
                         false);
    df_node *n = df_node_new(&matmul_op, out, 2, (df_tensor *[]){a, b}, sizeof p);
    if (n) *(matmul_params *)n->state = p;
    return out;
}

df_tensor *df_matmul(df_tensor *a, df_tensor *b, bool trans_a, bool trans_b) {
    df_dtype out_dt = df_compute_dtype() == DF_DTYPE_BF16 ? DF_DTYPE_F32 : a->dtype;
    return df_matmul_to(a, b, trans_a, trans_b, out_dt);
}
