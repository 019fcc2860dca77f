/* layers.c — Linear, Conv2d, GroupNorm and LayerNorm modules over the registry (torch.nn's
 * parameter names `weight`/`bias` and default initialisation: kaiming_uniform(a=sqrt(5)) for
 * weights and U(+-1/sqrt(fan_in)) for biases, i.e. U(+-1/sqrt(fan_in)) for both; norms start at
 * weight 1, bias 0). Linear and conv modules register themselves in the registry's module table
 * and apply their adapters (nn/adapter.c) after their own op. */
#include "nn/nn.h"

#include <math.h>

void df_linear_mod_init(df_linear_mod *m, df_params *r, const char *name, int in, int out,
                        bool bias) {
    float bound = 1.0f / sqrtf((float)in);
    m->weight = df_params_add(r, name, "weight", DF_DIMS(out, in));
    df_params_init_uniform(r, m->weight, bound);
    m->bias = NULL;
    if (bias) {
        m->bias = df_params_add(r, name, "bias", DF_DIMS(out));
        df_params_init_uniform(r, m->bias, bound);
    }
    m->adapter = NULL;
    df_params_add_module(r, name, DF_MODULE_LINEAR, m);
}

df_tensor *df_linear_mod_forward(const df_linear_mod *m, df_tensor *x) {
    df_tensor *y = df_linear(x, m->weight, m->bias);
    return m->adapter ? df_adapters_apply(m->adapter, m, DF_MODULE_LINEAR, x, y) : y;
}

void df_conv_mod_init(df_conv_mod *m, df_params *r, const char *name, int in, int out, int kernel,
                      int stride, int padding, bool bias) {
    float bound = 1.0f / sqrtf((float)(in * kernel * kernel));
    m->weight = df_params_add(r, name, "weight", DF_DIMS(out, in, kernel, kernel));
    df_params_init_uniform(r, m->weight, bound);
    m->bias = NULL;
    if (bias) {
        m->bias = df_params_add(r, name, "bias", DF_DIMS(out));
        df_params_init_uniform(r, m->bias, bound);
    }
    m->p = df_conv2d_default();
    m->p.stride[0] = m->p.stride[1] = stride;
    m->p.padding[0] = m->p.padding[1] = padding;
    m->adapter = NULL;
    df_params_add_module(r, name, DF_MODULE_CONV, m);
}

df_tensor *df_conv_mod_forward(const df_conv_mod *m, df_tensor *x) {
    df_tensor *y = df_conv2d(x, m->weight, m->bias, m->p);
    return m->adapter ? df_adapters_apply(m->adapter, m, DF_MODULE_CONV, x, y) : y;
}

static void norm_init(df_norm_mod *m, df_params *r, const char *name, int groups, int channels,
                      float eps) {
    m->weight = df_params_add(r, name, "weight", DF_DIMS(channels));
    m->bias = df_params_add(r, name, "bias", DF_DIMS(channels));
    df_params_fill(r, m->weight, 1.0f);
    m->groups = groups;
    m->eps = eps;
}

void df_groupnorm_mod_init(df_norm_mod *m, df_params *r, const char *name, int groups, int channels,
                           float eps) {
    DF_ASSERT(groups > 0 && channels % groups == 0, "%s: %d channels in %d groups", name, channels,
              groups);
    norm_init(m, r, name, groups, channels, eps);
}

void df_layernorm_mod_init(df_norm_mod *m, df_params *r, const char *name, int dim, float eps) {
    norm_init(m, r, name, 0, dim, eps);
}

df_tensor *df_norm_mod_forward(const df_norm_mod *m, df_tensor *x) {
    if (m->groups > 0) return df_group_norm(x, m->groups, m->weight, m->bias, m->eps);
    return df_layer_norm(x, m->weight, m->bias, m->eps);
}
