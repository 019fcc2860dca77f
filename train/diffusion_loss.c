/* diffusion_loss.c — the denoising loss every diffusion recipe trains with, in one place: the
 * draw (noise, timesteps, noisy input, target) and the weighted mean squared error. It follows
 * diffusers' training scripts (examples/text_to_image/train_text_to_image.py,
 * examples/unconditional_image_generation/train_unconditional.py, v0.21.4):
 *
 *   noise   ~ N(0, I)  (+ noise_offset * N(0, I) of shape (N, C, 1, 1): offset noise)
 *   input   = noise    (+ input_perturbation * N(0, I): the noisy input only, not the target)
 *   t       ~ U{0 .. T-1} per item
 *   x_t     = add_noise(x0, input, t)
 *   target  = noise (epsilon) | get_velocity(x0, noise, t) (v_prediction) | x0 (sample)
 *   loss    = mean(m (out - target)^2) / mean(m) per item when a mask m is given, else the
 *             plain per-item mean; then mean_i(w_i loss_i) with
 *             w_i = item weight (e.g. DreamBooth's prior_loss_weight) x min-SNR weight:
 *               min(snr, gamma) / snr        epsilon
 *               min(snr, gamma) / (snr + 1)  v_prediction (Hang et al. 2023; diffusers' scripts
 *                                            after v0.21.4)
 *               min(snr, gamma) / snr        v_prediction with min_snr_v_over_snr: what
 *                                            v0.21.4's train_text_to_image.py computes (it
 *                                            divides by snr whatever the prediction type)
 *               min(snr, gamma)              sample, and snr itself without gamma (the
 *                                            distillation weighting of train_unconditional.py)
 *   With no weight of either kind and no mask: F.mse_loss(out, target) (one mean).
 * Random numbers come from the step's streams (df_step_rng) in a fixed order — noise, offset,
 * perturbation from `noise`, then the timesteps from `timesteps` — so a draw depends only on
 * (seed, rank, step).
 */
#include "train/train.h"

#include <math.h>

static df_tensor *normal_tensor(df_philox *g, int ndim, const int64_t *shape) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, ndim, shape);
    df_philox_fill_normal(g, df_f32(t), t->numel);
    return t;
}

df_status df_diffusion_prepare(const df_diffusion_loss_config *c, df_sched *sched,
                               const df_tensor *x0, df_tensor *noise, df_tensor *input_noise,
                               df_tensor *timesteps, df_diffusion_draw *out) {
    *out = (df_diffusion_draw){.noise = noise, .timesteps = timesteps};
    DF_TRY(
        df_sched_add_noise(sched, x0, input_noise ? input_noise : noise, timesteps, &out->noisy));
    switch (c->prediction) {
    case DF_PRED_EPSILON: out->target = noise; break;
    case DF_PRED_SAMPLE: out->target = (df_tensor *)x0; break;
    case DF_PRED_V_PREDICTION:
        DF_TRY(df_sched_get_velocity(sched, x0, noise, timesteps, &out->target));
        break;
    default:
        return df_error(DF_ERR_UNSUPPORTED, "diffusion loss: prediction type %d", c->prediction);
    }
    return DF_OK;
}

df_status df_diffusion_draw_sample(const df_diffusion_loss_config *c, df_sched *sched,
                                   const df_tensor *x0, df_step_rng *rng, df_diffusion_draw *out) {
    if (x0->ndim != 4 || c->num_train_timesteps < 1)
        return df_error(DF_ERR_INVALID, "diffusion loss: x0 must be (N, C, H, W) and T >= 1");
    int64_t n = x0->shape[0], ch = x0->shape[1];
    df_tensor *noise = normal_tensor(&rng->noise, x0->ndim, x0->shape);
    if (c->noise_offset > 0) {
        df_tensor *off = normal_tensor(&rng->noise, DF_DIMS(n, ch, 1, 1));
        noise = df_add(noise, df_mul_scalar(off, c->noise_offset));
    }
    df_tensor *input = NULL;
    if (c->input_perturbation > 0) {
        df_tensor *p = normal_tensor(&rng->noise, x0->ndim, x0->shape);
        input = df_add(noise, df_mul_scalar(p, c->input_perturbation));
    }
    df_tensor *t = df_tensor_new(DF_DTYPE_I64, 1, &n);
    /* U{0 .. T-1} from the high bits of a 32-bit draw times T (no modulo bias worth a loop) */
    for (int64_t i = 0; i < n; i++)
        ((int64_t *)t->data)[i] = (int64_t)(((uint64_t)df_philox_u32(&rng->timesteps) *
                                             (uint64_t)c->num_train_timesteps) >>
                                            32);
    return df_diffusion_prepare(c, sched, x0, noise, input, t, out);
}

/* The per-item weights (N): min-SNR (or the sample prediction's SNR) times item_weights; NULL
 * when neither applies. */
static df_status loss_weights(const df_diffusion_loss_config *c, df_sched *sched,
                              const df_tensor *timesteps, const df_tensor *item_weights,
                              df_tensor **out) {
    *out = NULL;
    bool snr_weighted = c->snr_gamma > 0 || c->prediction == DF_PRED_SAMPLE;
    if (!snr_weighted && !item_weights) return DF_OK;
    int64_t n = timesteps->shape[0];
    if (item_weights && (item_weights->ndim != 1 || item_weights->shape[0] != n))
        return df_error(DF_ERR_INVALID, "diffusion loss: item weights must be (%lld)",
                        (long long)n);
    df_tensor *snr = NULL;
    if (snr_weighted) DF_TRY(df_sched_snr(sched, timesteps, &snr));
    df_tensor *w = df_tensor_new(DF_DTYPE_F32, 1, &n);
    for (int64_t i = 0; i < n; i++) {
        float v = 1.0f;
        if (snr) {
            float s = df_f32(snr)[i], m = c->snr_gamma > 0 ? fminf(s, c->snr_gamma) : s;
            v = m;
            if (c->snr_gamma > 0 && c->prediction == DF_PRED_EPSILON)
                v = m / s;
            else if (c->snr_gamma > 0 && c->prediction == DF_PRED_V_PREDICTION)
                v = c->min_snr_v_over_snr ? m / s : m / (s + 1.0f);
        }
        if (item_weights) v *= df_tensor_get(item_weights, i);
        df_f32(w)[i] = v;
    }
    *out = w;
    return DF_OK;
}

df_status df_diffusion_loss(const df_diffusion_loss_config *c, df_sched *sched,
                            const df_tensor *model_out, const df_diffusion_draw *d,
                            const df_tensor *item_weights, const df_tensor *mask,
                            df_tensor **loss) {
    if (!df_tensor_same_shape(model_out, d->target))
        return df_error(DF_ERR_INVALID, "diffusion loss: the model output's shape is not the "
                                        "target's");
    df_tensor *w;
    DF_TRY(loss_weights(c, sched, d->timesteps, item_weights, &w));
    df_tensor *out = (df_tensor *)model_out, *target = d->target;
    if (!w && !mask) {
        *loss = df_mse_loss(out, target, true);
        return DF_OK;
    }
    df_tensor *sq = df_mse_loss(out, target, false); /* (out - target)^2, (N, C, H, W) */
    const int dims[3] = {1, 2, 3};
    df_tensor *per_item;
    if (mask) {
        if (mask->ndim != 4 || mask->shape[0] != sq->shape[0] || mask->shape[2] != sq->shape[2] ||
            mask->shape[3] != sq->shape[3] ||
            (mask->shape[1] != 1 && mask->shape[1] != sq->shape[1]))
            return df_error(DF_ERR_INVALID, "diffusion loss: the mask must be (N, 1 or C, H, W) "
                                            "of the output's N, H, W");
        if (mask->dtype != DF_DTYPE_F32)
            return df_error(DF_ERR_INVALID, "diffusion loss: the mask must be F32");
        /* the mask's weight per item, counted over the output's channels */
        int64_t n = sq->shape[0], per = mask->numel / n, rep = sq->shape[1] / mask->shape[1];
        df_tensor *covered = df_tensor_new(DF_DTYPE_F32, 1, &n);
        for (int64_t i = 0; i < n; i++) {
            double total = 0;
            for (int64_t j = 0; j < per; j++) total += df_f32(mask)[i * per + j];
            df_f32(covered)[i] = total > 0 ? (float)(total * (double)rep) : 1.0f;
        }
        per_item = df_div(df_sum(df_mul(sq, (df_tensor *)mask), 3, dims, false), covered);
    } else {
        per_item = df_mean(sq, 3, dims, false);
    }
    *loss = w ? df_mean(df_mul(per_item, w), 0, NULL, false) : df_mean(per_item, 0, NULL, false);
    return DF_OK;
}
