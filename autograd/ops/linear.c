/* linear.c — y = x W^T + b (torch.nn.functional.linear).
 *
 *   x (..., in) flattened to X (M, in), W (out, in), b (out) or NULL -> y (..., out).
 *   forward:  oneDNN matmul of X and the strided transpose of W, bias as the matmul's bias
 *             (inner product measured against it: see docs/layout.md).
 *   backward (G = dy as (M, out)):
 *     (1) dX += G W            (M, out) x (out, in)
 *     (2) dW += G^T X          (out, M) x (M, in), G^T a strided view; a reduction over the
 *                              M rows (every product here runs with DF_DNNL_REDUCTION_THREADS,
 *                              dnnl_impl.h, so results do not follow the thread count)
 *     (3) db += sum_rows G     columns summed over rows in a fixed order (deterministic)
 *     a gradient this backward creates is written (=) instead (df_node_grad_dest)
 *   saved: nothing (x, W, b are the node's inputs).
 *   dtypes: F32; or BF16 x and W (bias F32 or BF16) with an F32 or BF16 output, forward only
 *   (docs/dtypes.md); under mixed precision the three products compute as the forward's
 *   df_dnnl_cdt says (x or W may be BF16 then when it needs no gradient), the bias sum in F32.
 */
#include "autograd/dnnl_impl.h"

typedef struct linear_params {
    int64_t M, in, out;
    df_dnnl_cdt cdt; /* how the forward computed: backward does the same */
} linear_params;

static void linear_backward(df_node *n, const df_tensor *g) {
    const linear_params *p = n->state;
    const df_tensor *x = n->inputs[0], *w = n->inputs[1];
    int64_t g_dims[2] = {p->M, p->out}, x_dims[2] = {p->M, p->in}, w_dims[2] = {p->out, p->in};
    if (g->numel == 0) { /* empty products (M or out is 0): zero-filled gradients */
        for (int i = 0; i < 3; i++)
            if (n->inputs[i]) df_node_grad(n, i);
        return;
    }
    bool acc;
    df_tensor *gx = df_node_grad_dest(n, 0, &acc);
    if (gx) { /* (1) */
        df_dnnl_mat gm = df_dnnl_mat_of(df_f32(g), 2, g_dims, false);
        df_dnnl_mat wm = df_dnnl_mat_of_tensor(w, 2, w_dims, false);
        df_dnnl_matmul_f32_out("linear backward", p->cdt, &gm, &wm, df_f32(gx), x_dims, acc);
    }
    df_tensor *gw = df_node_grad_dest(n, 1, &acc);
    if (gw) { /* (2) */
        df_dnnl_mat gt = df_dnnl_mat_of(df_f32(g), 2, g_dims, true);
        df_dnnl_mat xm = df_dnnl_mat_of_tensor(x, 2, x_dims, false);
        df_dnnl_matmul_f32_out("linear backward", p->cdt, &gt, &xm, df_f32(gw), w_dims, acc);
    }
    df_tensor *gb = n->inputs[2] ? df_node_grad_dest(n, 2, &acc) : NULL;
    if (gb) { /* (3) blocks of columns in parallel, rows in order */
        const float *gd = df_f32(g);
        float *db = df_f32(gb);
        int64_t O = p->out, M = p->M;
        bool acc_b = acc;
#pragma omp parallel for if (M * O > 65536)
        for (int64_t j0 = 0; j0 < O; j0 += 64) {
            int64_t j1 = j0 + 64 < O ? j0 + 64 : O;
            float acc[64] = {0};
            for (int64_t i = 0; i < M; i++)
#pragma omp simd
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += gd[i * O + j];
            for (int64_t j = j0; j < j1; j++) db[j] = (acc_b ? db[j] : 0.0f) + acc[j - j0];
        }
    }
}

static const df_op linear_op = {"linear", linear_backward, NULL};

df_tensor *df_linear_to(df_tensor *x, df_tensor *w, df_tensor *bias, df_dtype out_dt) {
    DF_ASSERT_PLAIN("linear", x);
    DF_ASSERT_PLAIN("linear", w);
    if (bias) DF_ASSERT_PLAIN("linear", bias);
    df_dnnl_cdt cdt = df_dnnl_product_dtype("linear", 2, (df_tensor *[]){x, w}, bias, out_dt);
    char sx[64], sw[64], sb[64];
    DF_ASSERT(x->ndim >= 1 && w->ndim == 2 && x->shape[x->ndim - 1] == w->shape[1],
              "linear: x %s and weight %s (expected (..., in) and (out, in))",
              df_shape_str(x, sx, sizeof sx), df_shape_str(w, sw, sizeof sw));
    linear_params p = {.in = w->shape[1], .out = w->shape[0], .cdt = cdt};
    p.M = p.in > 0 ? x->numel / p.in : 0;
    if (bias) {
        DF_ASSERT(bias->numel == p.out && bias->ndim == 1, "linear: bias %s for weight %s",
                  df_shape_str(bias, sb, sizeof sb), df_shape_str(w, sw, sizeof sw));
    }
    int64_t out_shape[DF_MAX_DIMS];
    for (int i = 0; i < x->ndim - 1; i++) out_shape[i] = x->shape[i];
    out_shape[x->ndim - 1] = p.out;
    df_tensor *out = df_tensor_new(out_dt, x->ndim, out_shape);
    if (out->numel > 0) {
        int64_t x_dims[2] = {p.M, p.in}, w_dims[2] = {p.out, p.in}, y_dims[2] = {p.M, p.out};
        df_dnnl_mat xm = df_dnnl_mat_of_tensor(x, 2, x_dims, false);
        df_dnnl_mat wt = df_dnnl_mat_of_tensor(w, 2, w_dims, true);
        df_dnnl_matmul_c("linear", cdt, &xm, &wt, bias ? bias->data : NULL,
                         bias ? bias->dtype : DF_DTYPE_F32, out->data, out_dt, y_dims, false);
    }
    df_node *n = df_node_new_keep(&linear_op, out, 3, (df_tensor *[]){x, w, bias}, sizeof p, 3u);
    if (n) *(linear_params *)n->state = p;
    return out;
}

df_tensor *df_linear(df_tensor *x, df_tensor *w, df_tensor *bias) {
    /* under mixed precision the output is F32 whatever the operands (frozen BF16 weights) */
    return df_linear_to(x, w, bias, df_compute_dtype() == DF_DTYPE_BF16 ? DF_DTYPE_F32 : x->dtype);
}
