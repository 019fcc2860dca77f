/* vae_loss.c — the AutoencoderKL training loss (the `vae` recipe) and the posterior sample that
 * every user of a VAE's latents shares (the text-to-image loss and the latent cache draw it the
 * same way, so cached and uncached training see the same latents):
 *
 *   mean, logvar = encode(x)                     (logvar clamped to [-30, 20], as diffusers)
 *   z     = mean + exp(logvar / 2) * noise        DiagonalGaussianDistribution.sample()
 *   recon = mean(|decode(z) - x|)  (l1)  |  mean((decode(z) - x)^2)  (mse)   over every element
 *   kl    = mean_i 0.5 * sum_{c,h,w}(mean^2 + exp(logvar) - 1 - logvar)   posterior.kl(), then
 *           the batch mean of the per-item sums, as ldm's LPIPSWithDiscriminator
 *           (torch.sum(kl) / batch)
 *   loss  = recon + kl_weight * kl
 *
 * The reconstruction term is the element mean (what diffusers-style fine-tuning scripts use:
 * F.mse_loss / F.l1_loss), not ldm's per-item pixel sum (its nll_loss = sum / batch with the
 * learned logvar at 0): so ldm's kl_weight w on its summed loss is w * C * H * W here. The KL
 * keeps ldm's per-item sum, whose size does not depend on the weighting of the reconstruction.
 * No perceptual (LPIPS) or adversarial term: those need networks this project does not ship.
 */
#include "train/train.h"

#include <math.h>

df_tensor *df_posterior_noise(const df_tensor *mean, df_philox *g) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, mean->ndim, mean->shape);
    df_philox_fill_normal(g, df_f32(t), t->numel);
    return t;
}

df_tensor *df_posterior_sample(df_tensor *mean, df_tensor *logvar, df_tensor *noise) {
    return df_add(mean, df_mul(df_exp(df_mul_scalar(logvar, 0.5f)), noise));
}

/* mean(|a - b|): the absolute value as the difference times its (constant) sign, whose gradient
 * is torch's sign(a - b) (0 where they are equal). */
static df_tensor *l1_mean(df_tensor *a, df_tensor *b) {
    df_tensor *d = df_sub(a, b);
    df_tensor *sign = df_tensor_new(DF_DTYPE_F32, d->ndim, d->shape);
    const float *dv = df_f32(d);
    float *sv = df_f32(sign);
    for (int64_t i = 0; i < d->numel; i++) sv[i] = dv[i] > 0 ? 1.0f : dv[i] < 0 ? -1.0f : 0.0f;
    return df_mean(df_mul(d, sign), 0, NULL, false);
}

df_status df_vae_loss(df_vae *m, const df_vae_loss_config *c, df_tensor *pixels, df_tensor *noise,
                      df_vae_loss_parts *out) {
    *out = (df_vae_loss_parts){0};
    DF_TRY(df_vae_check_sample(&m->config, pixels));
    if (pixels->block) pixels = df_to_plain(pixels);
    df_tensor *mean, *logvar;
    df_vae_encode(m, pixels, &mean, &logvar);
    if (!df_tensor_same_shape(noise, mean))
        return df_error(DF_ERR_INVALID, "vae loss: the noise's shape is not the posterior's");
    df_tensor *z = df_posterior_sample(mean, logvar, noise);
    df_tensor *decoded = df_vae_decode(m, z);
    if (!df_tensor_same_shape(decoded, pixels))
        return df_error(DF_ERR_INVALID, "vae loss: the decoded image's shape is not the input's "
                                        "(out_channels must equal in_channels)");
    df_tensor *recon =
        c->recon == DF_RECON_MSE ? df_mse_loss(decoded, pixels, true) : l1_mean(decoded, pixels);
    const int dims[3] = {1, 2, 3};
    df_tensor *terms =
        df_sub(df_add(df_mul(mean, mean), df_exp(logvar)), df_add_scalar(logvar, 1.0f));
    df_tensor *kl = df_mul_scalar(df_mean(df_sum(terms, 3, dims, false), 0, NULL, false), 0.5f);
    out->recon = recon;
    out->kl = kl;
    out->z = z;
    out->decoded = decoded;
    out->loss = c->kl_weight > 0 ? df_add(recon, df_mul_scalar(kl, c->kl_weight)) : recon;
    return DF_OK;
}
