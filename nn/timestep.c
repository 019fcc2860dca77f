/* timestep.c — diffusers' sinusoidal timestep embedding and the TimestepEmbedding MLP.
 *
 * get_timestep_embedding (diffusers/models/embeddings.py), computed in float32 in torch's order:
 *   exponent_i = (-ln(10000) * i) / (half - shift)      i = 0 .. half-1   (float32 ops)
 *   arg_{n,i}  = float(t_n) * exp(exponent_i)
 *   emb = [sin(arg), cos(arg)]  ->  [cos, sin] when flip_sin_to_cos; zero-padded when dim is odd.
 * TimestepEmbedding: linear_1 -> SiLU -> linear_2.
 */
#include "nn/nn.h"

#include <math.h>

df_tensor *df_timestep_embedding(const df_tensor *timesteps, int batch, int dim,
                                 bool flip_sin_to_cos, float downscale_freq_shift) {
    DF_ASSERT(timesteps->numel == 1 || timesteps->numel == batch,
              "timestep embedding: %lld timesteps for a batch of %d", (long long)timesteps->numel,
              batch);
    int half = dim / 2;
    df_tensor *out = df_zeros(DF_DTYPE_F32, DF_DIMS(batch, dim));
    float *o = df_f32(out);
    const float log_max = (float)-log(10000.0);
    const float denom = (float)half - downscale_freq_shift;
    for (int n = 0; n < batch; n++) {
        float t = (float)df_tensor_get(timesteps, timesteps->numel == 1 ? 0 : n);
        for (int i = 0; i < half; i++) {
            float exponent = (log_max * (float)i) / denom;
            float arg = t * expf(exponent);
            float s = sinf(arg), c = cosf(arg);
            o[(int64_t)n * dim + i] = flip_sin_to_cos ? c : s;
            o[(int64_t)n * dim + half + i] = flip_sin_to_cos ? s : c;
        }
    }
    return out;
}

void df_timestep_mlp_init(df_timestep_mlp *m, df_params *r, const char *name, int in, int dim) {
    char buf[DF_NAME_MAX];
    df_linear_mod_init(&m->linear_1, r, df_name_join(buf, sizeof buf, name, "linear_1"), in, dim,
                       true);
    df_linear_mod_init(&m->linear_2, r, df_name_join(buf, sizeof buf, name, "linear_2"), dim, dim,
                       true);
}

df_tensor *df_timestep_mlp_forward(const df_timestep_mlp *m, df_tensor *t_emb) {
    df_tensor *h = df_silu(df_linear_mod_forward(&m->linear_1, t_emb));
    return df_linear_mod_forward(&m->linear_2, h);
}
