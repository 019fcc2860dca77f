/* layer_norm.c — layer normalisation over the last dim (torch.nn.functional.layer_norm with
 * normalized_shape = (D,)) on oneDNN.
 *
 *   x (..., D) viewed as (M, D); per row: mu = mean(x), var = mean((x - mu)^2) (biased),
 *   xhat = (x - mu) / sqrt(var + eps), y = xhat * w + b; w, b (D) each optional (NULL = 1, 0).
 *   forward:  oneDNN layer normalization, forward_training when a node is recorded (it outputs
 *             mean and variance, saved for backward), forward_inference otherwise; the affine
 *             parameters are separate memories (flags dnnl_use_scale / dnnl_use_shift of 2.6).
 *   backward (G = dy):
 *     (1) dx += rstd (G w - mean(G w) - xhat mean(G w xhat))   oneDNN's backward primitive
 *         (backward_data; with affine flags 2.6 implements only prop backward, whose parameter
 *         gradients are discarded), the forward primitive descriptor as hint, added into dx by a
 *         reorder with a sum post-op; each row is reduced by one thread, so the result does not
 *         depend on the thread count
 *     (2) dw += sum_rows G xhat     our loop: column blocks in parallel, rows in order, in double
 *     (3) db += sum_rows G          (oneDNN's diff_scale/diff_shift split the row sum across
 *                                   threads and changed with the thread count: not used)
 *   saved: mean (M), variance (M).
 */
#include "autograd/dnnl_impl.h"

#include <math.h>
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
    dnnl_memory_desc_t data = df_dnnl_md_tag(DF_DTYPE_F32, 2, dims, dnnl_ab);
    dnnl_memory_desc_t stat = df_dnnl_md_tag(DF_DTYPE_F32, 1, &p->M, dnnl_a);
    dnnl_memory_desc_t param = df_dnnl_md_tag(DF_DTYPE_F32, 1, &p->D, dnnl_a);
    dnnl_layer_normalization_desc_t d;
    DF_DNNL_CHECK("layer_norm",
                  dnnl_layer_normalization_forward_desc_init(
                      &d, p->training ? dnnl_forward_training : dnnl_forward_inference, &data,
                      &stat, p->eps, lnorm_flags(p)));
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(false);
    DF_DNNL_CHECK("layer_norm", dnnl_primitive_desc_create(pd, &d, attr, df_dnnl_engine(), NULL));
    dnnl_primitive_attr_destroy(attr);
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
    dnnl_memory_desc_t data = df_dnnl_md_tag(DF_DTYPE_F32, 2, dims, dnnl_ab);
    dnnl_memory_desc_t stat = df_dnnl_md_tag(DF_DTYPE_F32, 1, &p->M, dnnl_a);
    dnnl_memory_desc_t param = df_dnnl_md_tag(DF_DTYPE_F32, 1, &p->D, dnnl_a);
    /* 2.6 implements backward_data only without affine flags; with them it is prop backward,
     * whose diff_scale / diff_shift go to a scratch buffer and are ignored (see (2), (3)) */
    lnorm_params h = *p;
    h.training = true;
    bool affine = p->scale || p->shift;
    dnnl_layer_normalization_desc_t d;
    DF_DNNL_CHECK("layer_norm backward", dnnl_layer_normalization_backward_desc_init(
                                             &d, affine ? dnnl_backward : dnnl_backward_data, &data,
                                             &data, &stat, p->eps, lnorm_flags(&h)));
    df_dnnl_key hk = lnorm_key(DF_DNNL_KIND_LNORM_FWD, &h);
    df_dnnl_prim *hint = df_dnnl_prim_get(&hk, fwd_build, &h);
    dnnl_primitive_attr_t attr = df_dnnl_attr_new(false);
    DF_DNNL_CHECK("layer_norm backward", dnnl_primitive_desc_create(pd, &d, attr, df_dnnl_engine(),
                                                                    df_dnnl_prim_pd(hint)));
    dnnl_primitive_attr_destroy(attr);
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
    if (p->scale) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_SCALE, DF_DNNL_OUT, param};
    if (p->shift) args[n++] = (df_dnnl_arg_spec){DNNL_ARG_DIFF_SHIFT, DF_DNNL_OUT, param};
    *n_args = n;
}

/* (2), (3): column blocks in parallel, rows summed in order in double. */
static void param_grads(const lnorm_params *p, const float *x, const float *g, const float *mean,
                        const float *var, float *dw, float *db) {
    const int64_t M = p->M, D = p->D;
#pragma omp parallel for schedule(static) if (M * D > 65536)
    for (int64_t j0 = 0; j0 < D; j0 += 64) {
        int64_t j1 = j0 + 64 < D ? j0 + 64 : D;
        double aw[64] = {0}, ab[64] = {0};
        for (int64_t r = 0; r < M; r++) {
            const float *xr = x + r * D, *gr = g + r * D;
            double mu = mean[r], rs = 1.0 / sqrt((double)var[r] + (double)p->eps);
            for (int64_t j = j0; j < j1; j++) {
                aw[j - j0] += (double)gr[j] * ((xr[j] - mu) * rs);
                ab[j - j0] += gr[j];
            }
        }
        for (int64_t j = j0; j < j1; j++) {
            if (dw) dw[j] += (float)aw[j - j0];
            if (db) db[j] += (float)ab[j - j0];
        }
    }
}

static void layer_norm_backward(df_node *n, const df_tensor *g) {
    const lnorm_params *p = n->state;
    if (p->M == 0) return;
    const float *mean = df_f32(n->saved[0]), *var = df_f32(n->saved[1]);
    df_tensor *gx = df_node_grad(n, 0);
    if (gx) { /* (1) */
        void *ptrs[DF_DNNL_MAX_ARGS];
        int k = 0;
        ptrs[k++] = df_f32(n->inputs[0]);
        ptrs[k++] = (void *)mean;
        ptrs[k++] = (void *)var;
        ptrs[k++] = df_f32(g);
        if (p->scale) ptrs[k++] = df_f32(n->inputs[1]);
        if (p->shift) ptrs[k++] = df_f32(n->inputs[2]);
        ptrs[k++] = df_f32(gx);
        float ignored[2 * 64], *junk = ignored; /* oneDNN's parameter gradients, unused */
        if (p->D > 64) junk = df_mem_alloc(2 * (size_t)p->D * sizeof(float));
        if (!junk)
            df_mem_oom(2 * (size_t)p->D * sizeof(float), "the scratch of layer_norm backward");
        if (p->scale) ptrs[k++] = junk;
        if (p->shift) ptrs[k++] = junk + p->D;
        lnorm_params b = *p;
        b.training = true;
        df_dnnl_key key = lnorm_key(DF_DNNL_KIND_LNORM_BWD, &b);
        df_dnnl_prim *prim = df_dnnl_prim_get(&key, bwd_build, (void *)p);
        df_dnnl_prim_run("layer_norm backward", prim, ptrs);
        df_dnnl_prim_put(prim);
        if (junk != ignored) df_mem_free(junk, 2 * (size_t)p->D * sizeof(float));
    }
    df_tensor *gw = n->inputs[1] ? df_node_grad(n, 1) : NULL;
    df_tensor *gb = n->inputs[2] ? df_node_grad(n, 2) : NULL;
    if (gw || gb)
        param_grads(p, df_f32(n->inputs[0]), df_f32(g), mean, var, gw ? df_f32(gw) : NULL,
                    gb ? df_f32(gb) : NULL);
}

static const df_op layer_norm_op = {"layer_norm", layer_norm_backward, NULL};

df_tensor *df_layer_norm(df_tensor *x, df_tensor *weight, df_tensor *bias, float eps) {
    DF_ASSERT_F32("layer_norm", x);
    char sx[64], sp[64];
    df_shape_str(x, sx, sizeof sx);
    DF_ASSERT(x->ndim >= 1 && x->shape[x->ndim - 1] > 0, "layer_norm: x %s", sx);
    lnorm_params p = {
        .D = x->shape[x->ndim - 1], .eps = eps, .scale = weight != NULL, .shift = bias != NULL};
    p.M = x->numel / p.D;
    df_tensor *params[2] = {weight, bias};
    for (int i = 0; i < 2; i++)
        if (params[i]) {
            DF_ASSERT_F32("layer_norm", params[i]);
            DF_ASSERT(params[i]->ndim == 1 && params[i]->numel == p.D, "layer_norm: %s %s for x %s",
                      i ? "bias" : "weight", df_shape_str(params[i], sp, sizeof sp), sx);
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
