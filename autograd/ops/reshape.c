/* reshape.c — a view of the same elements with another shape (torch.reshape on a contiguous
 * tensor). One dim may be -1 and is inferred.
 *   forward:  out = view(a, shape)            (no copy)
 *   backward: ga += view(g, a.shape)
 * A channel-blocked tensor (df_tensor.block) keeps its layout and can only be viewed with its
 * own shape: an alias with history (df_to_blocked / df_to_plain of a tensor already in the
 * layout).
 */
#include "autograd/ops/broadcast_impl.h"

#include <string.h>

static void reshape_backward(df_node *n, const df_tensor *g) {
    bool acc;
    df_tensor *ga = df_node_grad_dest(n, 0, &acc);
    if (!ga) return;
    float *d = df_f32(ga);
    const float *s = df_f32(g);
    if (!acc) { /* a fresh gradient: g itself */
        memcpy(d, s, sizeof(float) * (size_t)ga->numel);
        return;
    }
#pragma omp parallel for simd schedule(static) if (ga->numel > DF_PAR_GRAIN)
    for (int64_t i = 0; i < ga->numel; i++) d[i] += s[i];
}

static const df_op reshape_op = {"reshape", reshape_backward, NULL};

df_tensor *df_reshape(df_tensor *a, int ndim, const int64_t *shape) {
    int64_t dims[DF_MAX_DIMS], known = 1;
    int infer = -1;
    DF_ASSERT(ndim >= 0 && ndim <= DF_MAX_DIMS, "reshape: %d dims", ndim);
    for (int i = 0; i < ndim; i++) {
        dims[i] = shape[i];
        if (shape[i] == -1) {
            DF_ASSERT(infer < 0, "reshape: more than one -1");
            infer = i;
        } else {
            DF_ASSERT(shape[i] >= 0, "reshape: dim %lld", (long long)shape[i]);
            known *= shape[i];
        }
    }
    if (infer >= 0) {
        DF_ASSERT(known > 0 && a->numel % known == 0, "reshape: cannot infer -1 for %lld elements",
                  (long long)a->numel);
        dims[infer] = a->numel / known;
        known *= dims[infer];
    }
    char sa[64];
    DF_ASSERT(known == a->numel, "reshape: %s (%lld elements) to %lld elements",
              df_shape_str(a, sa, sizeof sa), (long long)a->numel, (long long)known);
    df_tensor *out = df_tensor_view(a, ndim, dims, 0);
    if (a->dtype == DF_DTYPE_F32) df_node_new_keep(&reshape_op, out, 1, &a, 0, 0u);
    return out;
}
