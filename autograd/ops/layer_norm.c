/* layer_norm.c — layer normalisation over the last dim (torch.nn.functional.layer_norm with
 * normalized_shape = (D,)) on oneDNN.
 *
 *   x (..., D) viewed as (M, D); per row: mu = mean(x), var = mean((x - mu)^2) (biased),
 *   xhat = (x - mu) / sqrt(var + eps), y = xhat * w + b; w, b (D) each optional (NULL = 1, 0).
 *   forward:  oneDNN layer normalization, forward_training when a node is recorded (it outputs
 *             mean and variance, saved for backward), forward_inference otherwise; the affine
 *             parameters are separate memories (flags dnnl_use_scale / dnnl_use_shift of 2.6).
 *   backward (G = dy), by oneDNN's backward primitive (prop backward when affine, else
 *   backward_data), the forward primitive descriptor as hint:
 *     (1) dx += rstd (G w - mean(G w) - xhat mean(G w xhat))
 *     (2) dw += sum_rows G xhat
 *     (3) db += sum_rows G
 *     results are added into the gradients by a reorder with a sum post-op; a gradient the
 *     primitive must produce but nobody needs goes to a scratch tensor.
 *   saved: mean (M), variance (M).
 */
#include "autograd/dnnl_impl.h"

#include <string.h>

typedef struct lnorm_params {
    int64_t M, D;
    float eps;
    bool scale, shift;
    bool training;
} lnorm_params;

static df_dnnl_key lnorm_key(int kind, const lnorm_params *p) {
    df_dnnl_key k = {.kind = kind};
    int32_t eps_bits;
    memcpy(&eps_bits, &p->eps, sizeof eps_bits);
    int64_t v[] = {p->M, p->D, eps_bits, p->scale, p->shift, p->training};
    df_dnnl_key_push_n(&k, 6, v);
    return k;
}

static unsigned lnorm_flags(const lnorm_params *p) {
    return (p->scale ? dnnl_use_scale : 0u) | (p->shift ? dnnl_use_shift : 0u);
}

static void fwd_build(void *ctx, dnnl_primitive_desc_t *pd, int *n_args, df_dnnl_arg_spec *args) {
    const lnorm_params *p = ctx;
    int64_t dims[2] = {p->M, p->D};
    dnnl_memory_desc_t data = df_dnnl_md_tag(2, dims, dnnl_ab);
    dnnl_memory_desc_t stat = df_dnnl_md_tag(1, &p->M, dnnl_a);
    dnnl_memory_desc_t param = df_dnnl_md_tag(1, &p->D, dnnl_a);
    dnnl_layer_normalization_desc_t d;
    DF_DNNL_CHECK("layer_norm", dnnl_layer_normalization_forward_desc_init(
                                    &d, p->training ? dnnl_forward_training
                                                    : dnnl_forward_inference,
                                    &data, &stat, p->eps, lnorm_flags(p)));
    DF_DNNL_CHECK("layer_norm", dnnl_primitive_desc_create(pd, &d, NULL, df_dnnl_engine(), NULL));
    int n = 0;
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SRC, DF_DNNL_IN, data};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DST, DF_DNNL_OUT, data};
    if (p->scale) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SCALE, DF_DNNL_IN, param};
    if (p->shift) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SHIFT, DF_DNNL_IN, param};
    if (p->training) {
        args[n++] = (df_dnnl_arg_spec){DNNL_ARG_MEAN, DF_DNNL_OUT, stat};
        args[n++] = (df_dnnl_arg_spec){DNNL_ARG_VARIANCE, DF_DNNL_OUT, stat};
    }
    *n_args = n;
}

static void bwd_build(void *ctx, dnnl_primitive_desc_t *pd, int *n_args, df_dnnl_arg_spec *args) {
    const lnorm_params *p = ctx;
    int64_t dims[2] = {p->M, p->D};
    dnnl_memory_desc_t data = df_dnnl_md_tag(2, dims, dnnl_ab);
    dnnl_memory_desc_t stat = df_dnnl_md_tag(1, &p->M, dnnl_a);
    dnnl_memory_desc_t param = df_dnnl_md_tag(1, &p->D, dnnl_a);
    bool affine = p->scale || p->shift;
    dnnl_layer_normalization_desc_t d;
    DF_DNNL_CHECK("layer_norm backward",
                  dnnl_layer_normalization_backward_desc_init(
                      &d, affine ? dnnl_backward : dnnl_backward_data, &data, &data, &stat,
                      p->eps, lnorm_flags(p)));
    df_dnnl_key hk = lnorm_key(DF_DNNL_KIND_LNORM_FWD, p);
    df_dnnl_prim *hint = df_dnnl_prim_get(&hk, fwd_build, (void *)p);
    DF_DNNL_CHECK("layer_norm backward", dnnl_primitive_desc_create(pd, &d, NULL, df_dnnl_engine(),
                                                                    df_dnnl_prim_pd(hint)));
    df_dnnl_prim_put(hint);
    int n = 0;
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SRC, DF_DNNL_IN, data};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_MEAN, DF_DNNL_IN, stat};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_VARIANCE, DF_DNNL_IN, stat};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_DST, DF_DNNL_IN, data};
    if (p->scale) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SCALE, DF_DNNL_IN, param};
    /* 2.6 asks for the shift memory in backward too (unused by the math) */
    if (p->shift) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_SHIFT, DF_DNNL_IN, param};
    args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_SRC, DF_DNNL_OUT_ACC, data};
    if (p->scale) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_SCALE, DF_DNNL_OUT_ACC, param};
    if (p->shift) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_SHIFT, DF_DNNL_OUT_ACC, param};
    *n_args = n;
}

/* The gradient accumulator of input i, or a zeroed scratch tensor (*scratch set) when the
 * primitive writes a gradient nobody needs. */
static float *grad_or_scratch(df_node *n, int i, int64_t numel, df_tensor **scratch) {
    df_tensor *g = n->inputs[i] ? df_node_grad(n, i) : NULL;
    if (g) return df_f32(g);
    *scratch = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &numel);
    memset((*scratch)->data, 0, (size_t)numel * sizeof(float));
    return df_f32(*scratch);
}

static void layer_norm_backward(df_node *n, const df_tensor *g) {
    const lnorm_params *p = n->state;
    if (p->M == 0) return;
    df_tensor *scratch[3] = {NULL, NULL, NULL};
    void *ptrs[DF_DNNL_MAX_ARGS];
    int k = 0;
    ptrs[k++] = df_f32(n->inputs[0]);
    ptrs[k++] = df_f32(n->saved[0]);
    ptrs[k++] = df_f32(n->saved[1]);
    ptrs[k++] = df_f32(g);
    if (p->scale) ptrs[k++] = df_f32(n->inputs[1]);
    if (p->shift) ptrs[k++] = df_f32(n->inputs[2]);
    ptrs[k++] = grad_or_scratch(n, 0, p->M * p->D, &scratch[0]); /* (1) */
    if (p->scale) ptrs[k++] = grad_or_scratch(n, 1, p->D, &scratch[1]); /* (2) */
    if (p->shift) ptrs[k++] = grad_or_scratch(n, 2, p->D, &scratch[2]); /* (3) */
    df_dnnl_key key = lnorm_key(DF_DNNL_KIND_LNORM_BWD, p);
    df_dnnl_prim *prim = df_dnnl_prim_get(&key, bwd_build, (void *)p);
    df_dnnl_prim_run("layer_norm backward", prim, ptrs);
    df_dnnl_prim_put(prim);
    for (int i = 0; i < 3; i++) df_tensor_free(scratch[i]);
}

static const df_op layer_norm_op = {"layer_norm", layer_norm_backward, NULL};

df_tensor *df_layer_norm(df_tensor *x, df_tensor *weight, df_tensor *bias, float eps) {
    DF_ASSERT_F32("layer_norm", x);
    char sx[64], sp[64];
    df_shape_str(x, sx, sizeof sx);
    DF_ASSERT(x->ndim >= 1 && x->shape[x->ndim - 1] > 0, "layer_norm: x %s", sx);
    lnorm_params p = {.D = x->shape[x->ndim - 1], .eps = eps, .scale = weight != NULL,
                      .shift = bias != NULL};
    p.M = x->numel / p.D;
    df_tensor *params[2] = {weight, bias};
    for (int i = 0; i < 2; i++)
        if (params[i]) {
            DF_ASSERT_F32("layer_norm", params[i]);
            DF_ASSERT(params[i]->ndim == 1 && params[i]->numel == p.D,
                      "layer_norm: %s %s for x %s", i ? "bias" : "weight",
                      df_shape_str(params[i], sp, sizeof sp), sx);
        }
    df_tensor *inputs[3] = {x, weight, bias};
    p.training = df_needs_grad(3, inputs);
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, x->ndim, x->shape);
    if (p.M == 0) {
        p.training = false;
        df_node *n = df_node_new(&layer_norm_op, out, 3, inputs, sizeof p);
        if (n) *(lnorm_params *)n->state = p;
        return out;
    }
    df_tensor *mean = NULL, *var = NULL;
    void *ptrs[DF_DNNL_MAX_ARGS];
    int k = 0;
    ptrs[k++] = df_f32(x);
    ptrs[k++] = df_f32(out);
    if (weight) ptrs[k++] = df_f32(weight);
    if (bias) ptrs[k++] = df_f32(bias);
    if (p.training) {
        mean = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &p.M);
        var = df_tensor_new_unscoped(DF_DTYPE_F32, 1, &p.M);
        ptrs[k++] = df_f32(mean);
        ptrs[k++] = df_f32(var);
    }
    df_dnnl_key key = lnorm_key(DF_DNNL_KIND_LNORM_FWD, &p);
    df_dnnl_prim *prim = df_dnnl_prim_get(&key, fwd_build, &p);
    df_dnnl_prim_run("layer_norm", prim, ptrs);
    df_dnnl_prim_put(prim);
    df_node *n = df_node_new(&layer_norm_op, out, 3, inputs, sizeof p);
    if (n) {
        *(lnorm_params *)n->state = p;
        df_node_save(n, 0, mean);
        df_node_save(n, 1, var);
    }
    df_tensor_free(mean);
    df_tensor_free(var);
    return out;
}
