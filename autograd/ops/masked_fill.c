/* masked_fill.c — out = value where mask != 0, else a (torch.Tensor.masked_fill).
 *
 *   a (..A), mask (..M) U8/I32/I64 broadcastable to A, value a float -> out (..A)
 *   ga += g where mask == 0, 0 where it is set
 * Saved: the mask (retained by the node as its second input; it never takes a gradient).
 */
#include "autograd/ops/broadcast_impl.h"

typedef struct masked_fill_params {
    float value;
} masked_fill_params;

static inline bool mask_at(const void *m, df_dtype dt, int64_t i) {
    switch (dt) {
    case DF_DTYPE_U8: return ((const uint8_t *)m)[i] != 0;
    case DF_DTYPE_I32: return ((const int32_t *)m)[i] != 0;
    default: return ((const int64_t *)m)[i] != 0;
    }
}

/* d[i] = mask ? v : x[i] (forward), or d[i] += mask ? 0 : x[i] (backward, x = g). */
typedef struct mf_ctx {
    float *d;
    const float *x;
    const void *m;
    df_dtype mdt;
    int64_t sm;
    float v;
    bool backward;
} mf_ctx;

static void mf_row(const void *c_, const int64_t *off, int64_t n) {
    const mf_ctx *c = c_;
    float *d = c->d + off[0];
    const float *x = c->x + off[0];
    const char *m = (const char *)c->m + off[2] * (int64_t)df_dtype_size(c->mdt);
    if (c->backward) {
        for (int64_t i = 0; i < n; i++)
            if (!mask_at(m, c->mdt, i * c->sm)) d[i] += x[i];
    } else {
        for (int64_t i = 0; i < n; i++) d[i] = mask_at(m, c->mdt, i * c->sm) ? c->v : x[i];
    }
}

static void masked_fill_run(float *d, const float *x, const df_tensor *a, const df_tensor *mask,
                            float v, bool backward) {
    df_bcast bc;
    df_bcast_init(&bc, a->ndim, a->shape, 3, (int[]){a->ndim, a->ndim, mask->ndim},
                  (const int64_t *[]){a->shape, a->shape, mask->shape});
    mf_ctx c = {d, x, mask->data, mask->dtype, bc.stride[2][bc.ndim - 1], v, backward};
    df_bcast_run(&bc, mf_row, &c);
}

static void masked_fill_backward(df_node *n, const df_tensor *g) {
    df_tensor *ga = df_node_grad(n, 0);
    if (!ga) return;
    masked_fill_run(df_f32(ga), df_f32(g), n->inputs[0], n->inputs[1], 0, true);
}

static const df_op masked_fill_op = {"masked_fill", masked_fill_backward, NULL};

df_tensor *df_masked_fill(df_tensor *a, df_tensor *mask, float value) {
    DF_ASSERT_F32("masked_fill", a);
    DF_ASSERT(mask->dtype == DF_DTYPE_U8 || mask->dtype == DF_DTYPE_I32 ||
                  mask->dtype == DF_DTYPE_I64,
              "masked_fill: mask must be U8, I32 or I64, got %s", df_dtype_name(mask->dtype));
    char sa[64], sm[64];
    DF_ASSERT(df_bcast_to_ok(mask->ndim, mask->shape, a->ndim, a->shape),
              "masked_fill: mask %s does not broadcast to %s", df_shape_str(mask, sm, sizeof sm),
              df_shape_str(a, sa, sizeof sa));
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, a->ndim, a->shape);
    masked_fill_run(df_f32(out), df_f32(a), a, mask, value, false);
    df_node *n = df_node_new_keep(&masked_fill_op, out, 2, (df_tensor *[]){a, mask},
                                  sizeof(masked_fill_params), 2u);
    if (n) *(masked_fill_params *)n->state = (masked_fill_params){value};
    return out;
}
