/* embedding.c — row lookup (torch.nn.functional.embedding without padding_idx or max_norm).
 *   shapes:   ids (...) I32 or I64, table (V, D) F32 -> out (..., D)
 *   forward:  out[i, :] = table[ids[i], :]        (ids flattened; 0 <= ids[i] < V asserted)
 *   backward: gtable[ids[i], :] += g[i, :]        for every i, in order
 *   saved:    nothing: the node retains ids (they must not change before backward).
 * The scatter-add is deterministic: threads split the D columns, and each one walks all ids in
 * order, so every element of the gradient is summed in the same order whatever the thread
 * count (a repeated id accumulates; no atomics).
 */
#include "autograd/autograd_impl.h"
#include "autograd/ops/strides_impl.h"

#include <string.h>

/* ids[i] as int64, whatever the index dtype. */
static inline int64_t id_at(const df_tensor *ids, int64_t i) {
    return ids->dtype == DF_DTYPE_I64 ? ((const int64_t *)ids->data)[i]
                                      : ((const int32_t *)ids->data)[i];
}

/* out[i, :] = table[ids[i], :] (ids already checked). */
static void embedding_forward(df_tensor *out, const df_tensor *ids, const df_tensor *table) {
    int64_t D = table->shape[1];
    const float *tab = df_f32(table);
    float *dst = df_f32(out);
#pragma omp parallel for schedule(static) if (out->numel >= DF_PAR_MIN_ELEMS)
    for (int64_t i = 0; i < ids->numel; i++)
        memcpy(dst + i * D, tab + id_at(ids, i) * D, (size_t)D * sizeof(float));
}

static void embedding_backward(df_node *n, const df_tensor *g) {
    df_tensor *gt = df_node_grad(n, 1);
    if (!gt) return;
    const df_tensor *ids = n->inputs[0];
    int64_t m = ids->numel, D = gt->shape[1];
    const float *src = df_f32(g);
    float *dst = df_f32(gt);
    /* columns in blocks of 16 floats (a cache line when D is a multiple of 16), split between
     * threads; every thread walks all ids in order */
    int64_t nblocks = (D + 15) / 16;
    bool par = g->numel >= DF_PAR_MIN_ELEMS && nblocks > 1;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t c0 = b * 16, c1 = c0 + 16 < D ? c0 + 16 : D;
        for (int64_t i = 0; i < m; i++) {
            float *d = dst + id_at(ids, i) * D;
            const float *s = src + i * D;
            for (int64_t c = c0; c < c1; c++) d[c] += s[c];
        }
    }
}

static const df_op embedding_op = {"embedding", embedding_backward, NULL};

df_tensor *df_embedding(df_tensor *ids, df_tensor *table) {
    char si[64], st[64];
    DF_ASSERT(ids->dtype == DF_DTYPE_I32 || ids->dtype == DF_DTYPE_I64,
              "embedding: ids must be I32 or I64, got %s", df_dtype_name(ids->dtype));
    DF_ASSERT_F32("embedding", table);
    DF_ASSERT(table->ndim == 2, "embedding: table must be (V, D), got %s",
              df_shape_str(table, st, sizeof st));
    DF_ASSERT(ids->ndim < DF_MAX_DIMS, "embedding: ids %s have too many dims for (ids..., D)",
              df_shape_str(ids, si, sizeof si));
    int64_t V = table->shape[0], D = table->shape[1], m = ids->numel;
    for (int64_t i = 0; i < m; i++) {
        int64_t id = id_at(ids, i);
        DF_ASSERT(id >= 0 && id < V,
                  "embedding: id %lld (element %lld of ids %s) out of range "
                  "for a table of V = %lld rows",
                  (long long)id, (long long)i, df_shape_str(ids, si, sizeof si), (long long)V);
    }
    int64_t shape[DF_MAX_DIMS];
    memcpy(shape, ids->shape, (size_t)ids->ndim * sizeof *shape);
    shape[ids->ndim] = D;
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, ids->ndim + 1, shape);
    embedding_forward(out, ids, table);
    df_node_new_keep(&embedding_op, out, 2, (df_tensor *[]){ids, table}, 0, 1u); /* ids only */
    return out;
}
