/* attention.c — fused softmax attention, o = softmax(q k^T [+ causal mask]) v, over any batch
 * dims (torch: torch.softmax(q @ k.mT [masked_fill(triu(1), finfo.min)], -1) @ v; the caller
 * scales q by d^-1/2 first, as our Attention module does).
 *
 *   q (..., T, d), k (..., S, d), v (..., S, e) with equal batch dims -> o (..., T, e)
 *   forward, per block of batch items (or of query rows when one item's scores are too big):
 *     (1) s = q k^T                     (B_c, T_c, S)   oneDNN matmul
 *     (2) causal: s_ij = -FLT_MAX for j > i (what masked_fill with finfo(float32).min gives)
 *     (3) p = softmax(s) per row        (the same row kernel as df_softmax: max, exp, double sum)
 *     (4) o = p v
 *   backward (G = dL/do), the same blocks, p recomputed by (1)-(3) bit for bit:
 *     (5) dp = G v^T
 *     (6) dv += p^T G
 *     (7) ds = p (dp - sum_j dp_j p_j)  (softmax backward, the row sum in double as df_softmax)
 *     (8) dq += ds k,   dk += ds^T q
 *   saved: nothing but the inputs. The (T, S) probabilities — the largest tensors of a UNet's
 *   attention, (N·heads, T, S) per layer — are never stored, only one block at a time
 *   (attention_chunk_bytes), which is what makes this op worth having next to the composite
 *   df_matmul(df_softmax(df_matmul(q, k, false, true)), v, false, false) it equals
 *   (tests/autograd/test_attention.c ties them together).
 *   Mixed precision: the five products compute as the forward's df_dnnl_cdt says (q, k, v, p, G
 *   and ds rounded to BF16, F32 accumulation); the scores, softmax and its backward stay F32.
 *   Determinism: every product runs with DF_DNNL_REDUCTION_THREADS (dnnl_impl.h); row blocks
 *   of one item accumulate dk and dv in a fixed order.
 */
#include "autograd/dnnl_impl.h"
#include "autograd/ops/broadcast_impl.h"

#include <float.h>
#include <math.h>
#include <string.h>

typedef struct attention_params {
    bool causal;
    int nd;
    int64_t batch, T, S, d, e; /* batch = product of the batch dims */
    df_dnnl_cdt cdt;           /* how the products compute (mixed precision) */
} attention_params;

static size_t attention_chunk_bytes = (size_t)8 << 20;

size_t df_softmax_attention_set_chunk_bytes(size_t bytes) {
    size_t old = attention_chunk_bytes;
    attention_chunk_bytes = bytes ? bytes : 1;
    return old;
}

/* One block: batch items [b0, b0 + nb), query rows [r0, r0 + nr) (nr < T only when nb == 1, so
 * every operand slice is contiguous). */
typedef struct block {
    int64_t b0, nb, r0, nr;
} block;

/* The blocks cover every (item, row) once, in a fixed order that depends only on the shapes. */
static int64_t block_count(const attention_params *p, int64_t *items, int64_t *rows) {
    int64_t per_item = p->T * p->S * (int64_t)sizeof(float);
    int64_t budget = (int64_t)attention_chunk_bytes;
    if (per_item <= budget) {
        *items = budget / per_item < p->batch ? budget / per_item : p->batch;
        *rows = p->T;
        return (p->batch + *items - 1) / *items;
    }
    *items = 1;
    *rows = budget / (p->S * (int64_t)sizeof(float));
    if (*rows < 1) *rows = 1;
    return p->batch * ((p->T + *rows - 1) / *rows);
}

static block block_at(const attention_params *p, int64_t i, int64_t items, int64_t rows) {
    if (rows == p->T) {
        int64_t b0 = i * items;
        return (block){b0, b0 + items <= p->batch ? items : p->batch - b0, 0, p->T};
    }
    int64_t per = (p->T + rows - 1) / rows, b0 = i / per, r0 = (i % per) * rows;
    return (block){b0, 1, r0, r0 + rows <= p->T ? rows : p->T - r0};
}

/* A (nb, rows, cols) operand starting at row r0 of item b0 of a (batch, R, cols) tensor. */
static df_dnnl_mat mat_of(const float *base, const block *bl, int64_t R, int64_t rows, int64_t cols,
                          bool trans) {
    int64_t dims[3] = {bl->nb, rows, cols};
    return df_dnnl_mat_of(base + (bl->b0 * R + (rows == R ? 0 : bl->r0)) * cols, 3, dims, trans);
}

/* (1)-(3) into s (nb, nr, S): the probabilities of one block. */
static void block_probs(const attention_params *p, const block *bl, const float *q, const float *k,
                        float *s) {
    df_dnnl_mat qm = mat_of(q, bl, p->T, bl->nr, p->d, false);
    df_dnnl_mat km = mat_of(k, bl, p->S, p->S, p->d, true);
    int64_t s_dims[3] = {bl->nb, bl->nr, p->S};
    df_dnnl_matmul_f32_out("softmax_attention", p->cdt, &qm, &km, s, s_dims, false);
    int64_t n_rows = bl->nb * bl->nr, S = p->S;
    bool causal = p->causal;
#pragma omp parallel for schedule(static) if (n_rows * S > DF_PAR_GRAIN)
    for (int64_t r = 0; r < n_rows; r++) {
        float *row = s + r * S;
        if (causal)
            for (int64_t j = bl->r0 + r % bl->nr + 1; j < S; j++) row[j] = -FLT_MAX;
        df_softmax_row(row, row, S, false);
    }
}

static void attention_backward(df_node *n, const df_tensor *g_) {
    const attention_params *p = n->state;
    df_tensor *gq = df_node_grad(n, 0), *gk = df_node_grad(n, 1), *gv = df_node_grad(n, 2);
    const float *q = df_f32(n->inputs[0]), *k = df_f32(n->inputs[1]), *v = df_f32(n->inputs[2]);
    const float *g = df_f32(g_);
    int64_t items, rows, nblocks = block_count(p, &items, &rows), S = p->S;
    int64_t buf_numel = items * rows * S;
    df_tensor *pb = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &buf_numel);
    df_tensor *db = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &buf_numel);
    float *pr = df_f32(pb), *dp = df_f32(db);
    for (int64_t i = 0; i < nblocks; i++) {
        block bl = block_at(p, i, items, rows);
        block_probs(p, &bl, q, k, pr);
        int64_t ps_dims[3] = {bl.nb, bl.nr, S};
        df_dnnl_mat gm = mat_of(g, &bl, p->T, bl.nr, p->e, false);
        if (gv) { /* (6) */
            df_dnnl_mat pt = df_dnnl_mat_of(pr, 3, ps_dims, true);
            int64_t v_dims[3] = {bl.nb, S, p->e};
            df_dnnl_matmul_f32_out("softmax_attention backward", p->cdt, &pt, &gm,
                                   df_f32(gv) + bl.b0 * S * p->e, v_dims, true);
        }
        if (!gq && !gk) continue;
        df_dnnl_mat vt = mat_of(v, &bl, S, S, p->e, true); /* (5) */
        df_dnnl_matmul_f32_out("softmax_attention backward", p->cdt, &gm, &vt, dp, ps_dims, false);
        int64_t n_rows = bl.nb * bl.nr;
#pragma omp parallel for schedule(static) if (n_rows * S > DF_PAR_GRAIN)
        for (int64_t r = 0; r < n_rows; r++) /* (7), in place */
            df_softmax_row_grad(pr + r * S, dp + r * S, dp + r * S, S, false);
        df_dnnl_mat ds = df_dnnl_mat_of(dp, 3, ps_dims, false);
        if (gq) { /* (8) */
            df_dnnl_mat km = mat_of(k, &bl, S, S, p->d, false);
            int64_t q_dims[3] = {bl.nb, bl.nr, p->d};
            df_dnnl_matmul_f32_out("softmax_attention backward", p->cdt, &ds, &km,
                                   df_f32(gq) + (bl.b0 * p->T + bl.r0) * p->d, q_dims, true);
        }
        if (gk) {
            df_dnnl_mat dst = df_dnnl_mat_of(dp, 3, ps_dims, true);
            df_dnnl_mat qm = mat_of(q, &bl, p->T, bl.nr, p->d, false);
            int64_t k_dims[3] = {bl.nb, S, p->d};
            df_dnnl_matmul_f32_out("softmax_attention backward", p->cdt, &dst, &qm,
                                   df_f32(gk) + bl.b0 * S * p->d, k_dims, true);
        }
    }
    df_tensor_free(pb);
    df_tensor_free(db);
}

static const df_op attention_op = {"softmax_attention", attention_backward, NULL};

df_tensor *df_softmax_attention(df_tensor *q, df_tensor *k, df_tensor *v, bool causal) {
    const char *op = "softmax_attention";
    DF_ASSERT_F32(op, q);
    DF_ASSERT_F32(op, k);
    DF_ASSERT_F32(op, v);
    char sq[64], sk[64], sv[64];
    df_shape_str(q, sq, sizeof sq), df_shape_str(k, sk, sizeof sk), df_shape_str(v, sv, sizeof sv);
    int nd = q->ndim;
    DF_ASSERT(nd >= 2 && k->ndim == nd && v->ndim == nd,
              "%s: q %s, k %s, v %s must have the same number (>= 2) of dims", op, sq, sk, sv);
    attention_params p = {.causal = causal, .nd = nd, .batch = 1, .cdt = df_dnnl_compute_cdt()};
    for (int i = 0; i < nd - 2; i++) {
        DF_ASSERT(k->shape[i] == q->shape[i] && v->shape[i] == q->shape[i],
                  "%s: batch dims of q %s, k %s, v %s differ", op, sq, sk, sv);
        p.batch *= q->shape[i];
    }
    p.T = q->shape[nd - 2], p.d = q->shape[nd - 1];
    p.S = k->shape[nd - 2], p.e = v->shape[nd - 1];
    DF_ASSERT(k->shape[nd - 1] == p.d && v->shape[nd - 2] == p.S,
              "%s: q %s, k %s, v %s: need q (..., T, d), k (..., S, d), v (..., S, e)", op, sq, sk,
              sv);
    int64_t o_shape[DF_MAX_DIMS];
    memcpy(o_shape, q->shape, sizeof o_shape);
    o_shape[nd - 1] = p.e;
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, nd, o_shape);
    if (out->numel > 0 && p.S > 0) {
        int64_t items, rows, nblocks = block_count(&p, &items, &rows);
        int64_t buf_numel = items * rows * p.S;
        df_tensor *sb = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &buf_numel);
        for (int64_t i = 0; i < nblocks; i++) {
            block bl = block_at(&p, i, items, rows);
            block_probs(&p, &bl, df_f32(q), df_f32(k), df_f32(sb));
            int64_t ps_dims[3] = {bl.nb, bl.nr, p.S}, o_dims[3] = {bl.nb, bl.nr, p.e};
            df_dnnl_mat pm = df_dnnl_mat_of(df_f32(sb), 3, ps_dims, false); /* (4) */
            df_dnnl_mat vm = mat_of(df_f32(v), &bl, p.S, p.S, p.e, false);
            df_dnnl_matmul_f32_out(op, p.cdt, &pm, &vm, df_f32(out) + (bl.b0 * p.T + bl.r0) * p.e,
                                   o_dims, false);
        }
        df_tensor_free(sb);
    } else if (out->numel > 0) {
        memset(out->data, 0, (size_t)out->numel * sizeof(float)); /* no keys: an empty sum */
    }
    df_node *n = df_node_new(&attention_op, out, 3, (df_tensor *[]){q, k, v}, sizeof p);
    if (n) *(attention_params *)n->state = p;
    return out;
}
