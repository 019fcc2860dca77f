/* sd_generate.c — the denoising loops of diffusers v0.21.4's Stable Diffusion pipelines with one
 * prompt: StableDiffusionPipeline (text-to-image), StableDiffusionImg2ImgPipeline and
 * StableDiffusionInpaintPipeline (9-channel inpainting UNets, and 4-channel UNets with per-step
 * latent blending), in the same order of random draws from one torch generator, so that a seed
 * gives the latents diffusers gives.
 *
 *   embeds = [uncond x n; cond x n] with guidance (scale > 1), else cond x n
 *   txt2img: latents = randn(n, C, h, w) * init_noise_sigma          (or the given latents)
 *   img2img: timesteps = schedule[t_start * order:], t_start = n_steps - int(n_steps * strength)
 *            x0 = scaling_factor * (mean + std * randn(1, C, h, w))  (the VAE posterior sample)
 *            latents = add_noise(x0 x n, randn(n, C, h, w), timesteps[0])
 *   inpaint: as img2img, but strength 1 starts from pure noise; the image is encoded first when
 *            the UNet has 4 channels or strength < 1, then the noise is drawn, then the masked
 *            image (image * (mask < 0.5)) is encoded; the mask is the binarised grey image
 *            resized to (h, w) by nearest neighbour (every 8th pixel).
 *   each step: x = [latents; latents] with guidance; x = scale_model_input(x, t);
 *            9 channels: x = cat(x, mask, masked_latents); e = unet(x, t, embeds);
 *            guidance: e = e_u + g (e_c - e_u), then rescale_noise_cfg when guidance_rescale > 0;
 *            latents = step(e, t, latents); 4-channel inpainting:
 *            latents = (1 - m) add_noise(x0, noise, t_next) + m latents (x0 itself at the end).
 *   image = (vae.decode(latents / scaling_factor) / 2 + 0.5).clamp(0, 1)
 * With ControlNets (text-to-image only; sd_control.c), each step adds their summed residuals to
 * the UNet's skips (StableDiffusionControlNetPipeline, which keeps the folder's scheduler as it
 * is: no steps_offset / clip_sample adjustment).
 * Defaults: txt2img and inpaint take the UNet's sample_size * vae_scale_factor; img2img takes
 * the image's size rounded down to a multiple of 8, ControlNet the first control image's. An image or mask of another size is resized
 * with Lanczos (Pillow's, as VaeImageProcessor does); values x / 255 (image: 2 v - 1).
 */
#include "infer/infer.h"

#include <stdio.h>
#include <stdlib.h>

#include "datasets/datasets.h"

#include <math.h>
#include <string.h>

/* A new owned F32 tensor with `shape`. */
static df_tensor *owned(int ndim, const int64_t *shape) {
    return df_tensor_new_owned(DF_DTYPE_F32, ndim, shape);
}

/* VaeImageProcessor.preprocess of a U8 (H, W, C) image into F32 (1, C, h, w): resized (Lanczos)
 * when the size differs, v = x / 255, then 2 v - 1 (image) or binarised at 0.5 (mask). */
static df_tensor *preprocess(const df_tensor *img, int h, int w, bool mask) {
    df_scope scope = df_scope_begin();
    const df_tensor *src = (img->shape[0] == h && img->shape[1] == w)
                               ? img
                               : df_image_resize(img, h, w, DF_RESAMPLE_LANCZOS);
    int64_t c = src->shape[2];
    df_tensor *out = owned(DF_DIMS(1, c, h, w));
    const uint8_t *s = src->data;
    float *d = df_f32(out);
    for (int64_t ch = 0; ch < c; ch++)
        for (int64_t i = 0; i < (int64_t)h * w; i++) {
            float v = (float)s[i * c + ch] / 255.0f;
            d[ch * h * w + i] = mask ? (v < 0.5f ? 0.0f : 1.0f) : 2.0f * v - 1.0f;
        }
    df_scope_end(scope);
    return out;
}

/* scaling_factor * (mean + std * randn(mean.shape)): the VAE posterior sample of x (1, 3, H, W)
 * as _encode_vae_image draws it. An owned tensor. */
static df_tensor *encode_sample(df_sd_pipeline *p, df_tensor *x, df_torchgen *gen) {
    df_scope scope = df_scope_begin();
    df_tensor *mean, *logvar;
    df_vae_encode(p->vae.vae, x, &mean, &logvar);
    df_tensor *std = df_exp(df_mul_scalar(logvar, 0.5f));
    df_tensor *z = owned(mean->ndim, mean->shape);
    df_torchgen_randn(gen, df_f32(z), z->numel);
    float sf = p->vae.vae->config.scaling_factor;
    const float *m = df_f32(mean), *sd = df_f32(std);
    float *o = df_f32(z);
    for (int64_t i = 0; i < z->numel; i++) o[i] = sf * (m[i] + sd[i] * o[i]);
    df_scope_end(scope);
    return z;
}

/* n copies of x (1, ...) along the batch: an owned tensor. */
static df_tensor *repeat_batch(const df_tensor *x, int64_t n) {
    int64_t shape[DF_MAX_DIMS];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    int64_t per = x->numel / x->shape[0];
    shape[0] = n * x->shape[0];
    df_tensor *o = owned(x->ndim, shape);
    for (int64_t i = 0; i < n; i++)
        memcpy(df_f32(o) + i * x->numel, df_f32(x), sizeof(float) * (size_t)(per * x->shape[0]));
    return o;
}

/* A 0-d or (n) timestep tensor of the schedule's kind (integer or fractional). */
static df_tensor *timesteps_tensor(const df_sched *s, double t, int64_t n) {
    df_dtype dt = df_sched_timesteps_are_float(s) ? DF_DTYPE_F32 : DF_DTYPE_I64;
    return n ? df_full(dt, DF_DIMS(n), t) : df_full(dt, 0, NULL, t);
}

/* add_noise(x0, noise, t) with one t for every row; a new tensor (scope rule). */
static df_status add_noise(df_sched *s, const df_tensor *x0, const df_tensor *noise, double t,
                           df_tensor **out) {
    return df_sched_add_noise(s, x0, noise, timesteps_tensor(s, t, x0->shape[0]), out);
}

/* Guidance of the UNet output e = [e_u; e_c] (2n, ...) in place into its first half, returned
 * as a new (n, ...) tensor: e_u + g (e_c - e_u), then rescale_noise_cfg. */
static df_tensor *guide(const df_tensor *e, double g, double rescale) {
    int64_t n = e->shape[0] / 2, per = e->numel / e->shape[0];
    int64_t shape[DF_MAX_DIMS];
    memcpy(shape, e->shape, sizeof(int64_t) * (size_t)e->ndim);
    shape[0] = n;
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, e->ndim, shape);
    const float *u = df_f32(e), *c = df_f32(e) + n * per;
    float *o = df_f32(out), gf = (float)g;
    for (int64_t i = 0; i < n * per; i++) o[i] = u[i] + gf * (c[i] - u[i]);
    if (rescale <= 0) return out;
    /* rescale_noise_cfg: std over every dim but the batch (unbiased), per item */
    float r = (float)rescale, keep = (float)(1.0 - rescale);
    for (int64_t b = 0; b < n; b++) {
        double st[2];
        const float *src[2] = {c + b * per, o + b * per};
        for (int k = 0; k < 2; k++) {
            double mean = 0, ss = 0;
            for (int64_t i = 0; i < per; i++) mean += src[k][i];
            mean /= (double)per;
            for (int64_t i = 0; i < per; i++) ss += (src[k][i] - mean) * (src[k][i] - mean);
            st[k] = (float)sqrt(ss / (double)(per - 1));
        }
        float ratio = (float)st[0] / (float)st[1];
        float *ob = o + b * per;
        for (int64_t i = 0; i < per; i++) ob[i] = r * (ob[i] * ratio) + keep * ob[i];
    }
    return out;
}

/* What a request resolves to before the loop. */
typedef struct plan {
    bool cfg, img2img, inpaint, inpaint9;
    bool sld; /* Safe Latent Diffusion: batches [uncond, cond, safety concept] */
    int n, h, w, lh, lw, c;
    double strength;
} plan;

static df_status make_plan(const df_sd_pipeline *p, const df_sd_request *r, plan *pl) {
    const df_unet2d_cond_config *uc = &p->unet.unet2d_cond->config;
    const int vsf = p->vae_scale_factor;
    memset(pl, 0, sizeof *pl);
    pl->cfg = r->guidance_scale > 1.0;
    pl->n = r->num_images > 0 ? r->num_images : 1;
    pl->img2img = r->image && !r->mask;
    pl->inpaint = r->mask != NULL;
    pl->c = p->vae.vae->config.latent_channels;
    if (pl->inpaint && !r->image)
        return df_error(DF_ERR_INVALID, "a mask needs an image to inpaint");
    if (r->image &&
        (r->image->dtype != DF_DTYPE_U8 || r->image->ndim != 3 || r->image->shape[2] != 3))
        return df_error(DF_ERR_INVALID, "the init image must be U8 (H, W, 3)");
    if (r->mask && (r->mask->dtype != DF_DTYPE_U8 || r->mask->ndim != 3 || r->mask->shape[2] != 1))
        return df_error(DF_ERR_INVALID, "the mask must be U8 (H, W, 1)");
    pl->h = r->height, pl->w = r->width;
    if (r->n_controls > 0) {
        DF_TRY(df_sd_controls_check(p, r));
        if (r->image || r->mask || r->sld_concept)
            return df_error(DF_ERR_UNSUPPORTED,
                            "ControlNet is text-to-image only here (no init image, mask or Safe "
                            "Latent Diffusion)");
    }
    const df_tensor *sized = pl->img2img         ? r->image
                             : r->n_controls > 0 ? r->controls[0].image
                                                 : NULL;
    if (sized) { /* the image's size, rounded down to the VAE's factor */
        if (!pl->h) pl->h = (int)(sized->shape[0] - sized->shape[0] % vsf);
        if (!pl->w) pl->w = (int)(sized->shape[1] - sized->shape[1] % vsf);
    }
    if (!pl->h) pl->h = uc->sample_size * vsf;
    if (!pl->w) pl->w = (uc->sample_width ? uc->sample_width : uc->sample_size) * vsf;
    if (pl->h < 8 || pl->w < 8 || pl->h % 8 || pl->w % 8)
        return df_error(DF_ERR_INVALID, "height and width must be multiples of 8 (got %dx%d)",
                        pl->h, pl->w);
    if (pl->h > DF_IMAGE_MAX_SIDE || pl->w > DF_IMAGE_MAX_SIDE)
        return df_error(DF_ERR_INVALID, "%dx%d: larger than %d pixels a side", pl->h, pl->w,
                        DF_IMAGE_MAX_SIDE);
    pl->lh = pl->h / vsf, pl->lw = pl->w / vsf;
    pl->strength = r->strength >= 0 ? r->strength : (pl->inpaint ? 1.0 : 0.8);
    if (!(pl->strength >= 0.0 && pl->strength <= 1.0))
        return df_error(DF_ERR_INVALID, "strength %g: must be in [0, 1]", pl->strength);
    pl->inpaint9 = pl->inpaint && uc->in_channels == 2 * pl->c + 1;
    int want_in = pl->inpaint9 ? 2 * pl->c + 1 : pl->c;
    if (uc->in_channels != want_in)
        return df_error(DF_ERR_UNSUPPORTED, "the UNet takes %d input channels: %s needs %d%s",
                        uc->in_channels,
                        pl->inpaint   ? "inpainting"
                        : pl->img2img ? "image-to-image"
                                      : "text-to-image",
                        pl->c, pl->inpaint ? " (or 2 x latent + 1 for an inpainting UNet)" : "");
    if (r->latents) {
        const df_tensor *l = r->latents;
        if (pl->img2img)
            return df_error(DF_ERR_INVALID,
                            "initial latents apply to text-to-image and inpainting, not to "
                            "image-to-image (its start is the noised image)");
        if (l->dtype != DF_DTYPE_F32 || l->ndim != 4 || l->shape[0] != pl->n ||
            l->shape[1] != pl->c || l->shape[2] != pl->lh || l->shape[3] != pl->lw)
            return df_error(DF_ERR_INVALID,
                            "the initial latents must be F32 (%d, %d, %d, %d) for %d images of "
                            "%dx%d",
                            pl->n, pl->c, pl->lh, pl->lw, pl->n, pl->h, pl->w);
    }
    const df_tensor *e[2] = {r->cond, r->uncond};
    for (int k = 0; k < (pl->cfg ? 2 : 1); k++)
        if (!e[k] || e[k]->dtype != DF_DTYPE_F32 || e[k]->ndim != 3 || e[k]->shape[0] != 1)
            return df_error(DF_ERR_INVALID, "the %s embeddings must be F32 (1, S, D)",
                            k ? "negative prompt" : "prompt");
    if (pl->cfg && r->uncond->shape[1] != r->cond->shape[1])
        return df_error(DF_ERR_INVALID,
                        "the prompt and negative prompt embeddings differ in length (%lld, %lld)",
                        (long long)r->cond->shape[1], (long long)r->uncond->shape[1]);
    if (r->steps < 1) return df_error(DF_ERR_INVALID, "steps: %d (at least 1)", r->steps);
    /* StableDiffusionPipelineSafe: enable_safety_guidance = sld_guidance_scale > 1 and CFG */
    pl->sld = r->sld_concept && r->sld.guidance_scale > 1.0 && pl->cfg;
    if (pl->sld) {
        const df_tensor *sc = r->sld_concept;
        if (sc->dtype != DF_DTYPE_F32 || sc->ndim != 3 || sc->shape[0] != 1 ||
            sc->shape[1] != r->cond->shape[1] || sc->shape[2] != r->cond->shape[2])
            return df_error(DF_ERR_INVALID,
                            "the safety concept embeddings must be F32 (1, %lld, %lld), as the "
                            "prompt's",
                            (long long)r->cond->shape[1], (long long)r->cond->shape[2]);
        if (pl->inpaint || pl->img2img)
            return df_error(DF_ERR_UNSUPPORTED,
                            "Safe Latent Diffusion is text-to-image only (diffusers' "
                            "StableDiffusionPipelineSafe)");
        if (r->guidance_rescale > 0)
            return df_error(DF_ERR_UNSUPPORTED,
                            "Safe Latent Diffusion has no guidance rescale in diffusers v0.21.4");
    }
    return DF_OK;
}

/* SLD's guidance (pipeline_stable_diffusion_safe.py, equations 3-8 of Schramowski et al.) on
 * e = [uncond; text; safety] (3n items) at step i, updating the momentum (n items, zero at
 * first): the output is uncond + g * (text - uncond - (i >= warmup ? safety_guidance : 0)). */
static df_tensor *guide_sld(const df_tensor *e, const df_sd_request *r, int i,
                            df_tensor **momentum) {
    int64_t n = e->shape[0] / 3, per = e->numel / e->shape[0], m = n * per;
    int64_t shape[DF_MAX_DIMS];
    memcpy(shape, e->shape, sizeof(int64_t) * (size_t)e->ndim);
    shape[0] = n;
    if (!*momentum) {
        *momentum = df_tensor_new_owned(DF_DTYPE_F32, e->ndim, shape);
        memset(df_f32(*momentum), 0, sizeof(float) * (size_t)m);
    }
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, e->ndim, shape);
    const float *u = df_f32(e), *c = u + m, *sc = u + 2 * m;
    float *o = df_f32(out), *mom = df_f32(*momentum);
    const df_sld_params *q = &r->sld;
    float gs = (float)q->guidance_scale, thr = (float)q->threshold;
    float ms = (float)q->momentum_scale, beta = (float)q->mom_beta, g = (float)r->guidance_scale;
    bool warm = i >= q->warmup_steps;
    for (int64_t k = 0; k < m; k++) {
        float guidance = c[k] - u[k];
        float diff = c[k] - sc[k];
        float scale = fminf(fabsf(diff) * gs, 1.0f);      /* eq. 6 */
        float concept_scale = diff >= thr ? 0.0f : scale; /* eq. 6 */
        float safety = (sc[k] - u[k]) * concept_scale;    /* eq. 4 */
        safety = safety + ms * mom[k];                    /* eq. 7 */
        mom[k] = beta * mom[k] + (1 - beta) * safety;     /* eq. 8 */
        if (warm) guidance = guidance - safety;           /* eq. 3 */
        o[k] = u[k] + g * guidance;
    }
    return out;
}

/* The loop's inputs made before it: the initial latents, the noise and image latents that
 * 4-channel inpainting blends with, the mask and masked-image latents of 9-channel inpainting,
 * and the first timestep index. Draws from gen in diffusers' order. Owned tensors. */
typedef struct prepared {
    df_tensor *latents, *noise, *image_latents, *mask, *masked_latents;
    int start;
} prepared;

static void prepared_free(prepared *q) {
    df_tensor *ts[] = {q->latents, q->noise, q->image_latents, q->mask, q->masked_latents};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) df_tensor_free(ts[i]);
    memset(q, 0, sizeof *q);
}

/* latents = add_noise(x0 repeated n times, noise, t): an owned tensor. */
static df_status noised(df_sched *s, const df_tensor *x0, const df_tensor *noise, double t,
                        df_tensor **out) {
    df_tensor *rep = repeat_batch(x0, noise->shape[0] / x0->shape[0]);
    df_tensor *y = NULL;
    df_scope scope = df_scope_begin();
    df_status st = add_noise(s, rep, noise, t, &y);
    if (st == DF_OK) df_tensor_retain(y);
    df_scope_end(scope);
    df_tensor_free(rep);
    *out = y;
    return st;
}

static df_status prepare(df_sd_pipeline *p, const df_sd_request *r, const plan *pl,
                         df_torchgen *gen, prepared *q) {
    df_sched *s = p->sched;
    memset(q, 0, sizeof *q);
    const double *ts = df_sched_timesteps(s);
    float sigma = (float)df_sched_init_noise_sigma(s);
    const int64_t shape[4] = {pl->n, pl->c, pl->lh, pl->lw};
    if (r->image) DF_TRY(df_sched_img2img_start(s, pl->strength, &q->start));
    if (r->steps - q->start / df_sched_order(s) < 1 || q->start >= df_sched_num_timesteps(s))
        return df_error(DF_ERR_INVALID,
                        "strength %g with %d steps leaves no denoising step (raise either)",
                        pl->strength, r->steps);
    double t0 = ts[q->start];
    df_tensor *image = r->image ? preprocess(r->image, pl->h, pl->w, false) : NULL;
    df_status st = DF_OK;
    if (!r->image) { /* text-to-image */
        q->latents = owned(4, shape);
        if (r->latents)
            memcpy(df_f32(q->latents), df_f32(r->latents),
                   sizeof(float) * (size_t)r->latents->numel);
        else
            df_torchgen_randn(gen, df_f32(q->latents), q->latents->numel);
        for (int64_t i = 0; i < q->latents->numel; i++) df_f32(q->latents)[i] *= sigma;
    } else if (pl->img2img) {
        df_tensor *x0 = encode_sample(p, image, gen);
        q->noise = owned(4, shape);
        df_torchgen_randn(gen, df_f32(q->noise), q->noise->numel);
        st = noised(s, x0, q->noise, t0, &q->latents);
        df_tensor_free(x0);
    } else { /* inpainting */
        bool strength_max = pl->strength == 1.0;
        if (!pl->inpaint9 || (!r->latents && !strength_max))
            q->image_latents = encode_sample(p, image, gen);
        q->noise = owned(4, shape);
        if (r->latents)
            memcpy(df_f32(q->noise), df_f32(r->latents), sizeof(float) * (size_t)q->noise->numel);
        else
            df_torchgen_randn(gen, df_f32(q->noise), q->noise->numel);
        if (r->latents || strength_max) {
            q->latents = owned(4, shape);
            for (int64_t i = 0; i < q->latents->numel; i++)
                df_f32(q->latents)[i] = df_f32(q->noise)[i] * sigma;
        } else {
            st = noised(s, q->image_latents, q->noise, t0, &q->latents);
        }
        df_tensor *mask = preprocess(r->mask, pl->h, pl->w, true);
        /* masked image = image * (mask < 0.5), then its posterior sample */
        for (int64_t i = 0; i < image->numel; i++)
            df_f32(image)[i] *= df_f32(mask)[i % ((int64_t)pl->h * pl->w)] < 0.5f ? 1.0f : 0.0f;
        df_tensor *masked = encode_sample(p, image, gen);
        /* nearest-neighbour resize to the latent size (torch's interpolate default) */
        q->mask = owned(DF_DIMS(1, 1, pl->lh, pl->lw));
        for (int y = 0; y < pl->lh; y++)
            for (int x = 0; x < pl->lw; x++)
                df_f32(q->mask)[y * pl->lw + x] =
                    df_f32(mask)[(int64_t)(y * pl->h / pl->lh) * pl->w + x * pl->w / pl->lw];
        df_tensor_free(mask);
        if (pl->inpaint9) {
            q->masked_latents = repeat_batch(masked, pl->n * (pl->cfg ? 2 : 1));
            df_tensor *m = repeat_batch(q->mask, pl->n * (pl->cfg ? 2 : 1));
            df_tensor_free(q->mask);
            q->mask = m;
        }
        df_tensor_free(masked);
    }
    df_tensor_free(image);
    return st;
}

/* The UNet input of one step: [latents; latents] with guidance, scaled, and for 9-channel
 * inpainting the mask and masked-image latents appended along the channels. */
static df_status unet_input(df_sd_pipeline *p, const plan *pl, const prepared *q, double t,
                            df_tensor **out) {
    df_tensor *x = q->latents;
    if (pl->cfg)
        x = df_concat((df_tensor *[]){q->latents, q->latents, q->latents}, pl->sld ? 3 : 2, 0);
    df_tensor *scaled = NULL;
    DF_TRY(df_sched_scale_model_input(p->sched, x, t, &scaled));
    x = scaled;
    if (pl->inpaint9) x = df_concat((df_tensor *[]){x, q->mask, q->masked_latents}, 3, 1);
    *out = x;
    return DF_OK;
}

/* 4-channel inpainting's blend after step i: the known region from the image latents noised to
 * the next timestep (the image latents themselves after the last step). */
static df_status blend(df_sd_pipeline *p, const prepared *q, int i, df_tensor *latents) {
    const double *ts = df_sched_timesteps(p->sched);
    int64_t per = latents->numel / latents->shape[0], hw = q->mask->numel;
    df_tensor *known = NULL;
    if (i + 1 < df_sched_num_timesteps(p->sched))
        DF_TRY(noised(p->sched, q->image_latents, q->noise, ts[i + 1], &known));
    else
        known = repeat_batch(q->image_latents, latents->shape[0]);
    float *l = df_f32(latents);
    const float *k = df_f32(known), *m = df_f32(q->mask);
    for (int64_t j = 0; j < latents->numel; j++) {
        float mj = m[(j % per) % hw];
        l[j] = (1.0f - mj) * k[j] + mj * l[j];
    }
    df_tensor_free(known);
    return DF_OK;
}

/* Repeats cond (and uncond) n times: [uncond x n; cond x n] with guidance. */
static df_tensor *batch_embeds(const df_sd_request *r, const plan *pl) {
    df_tensor *c = repeat_batch(r->cond, pl->n);
    if (!pl->cfg) return c;
    df_tensor *u = repeat_batch(r->uncond, pl->n);
    df_tensor *sc = pl->sld ? repeat_batch(r->sld_concept, pl->n) : NULL;
    df_scope scope = df_scope_begin();
    df_tensor *both = df_tensor_retain(df_concat((df_tensor *[]){u, c, sc}, pl->sld ? 3 : 2, 0));
    df_scope_end(scope);
    df_tensor_free(u);
    df_tensor_free(c);
    df_tensor_free(sc);
    return both;
}

/* vae.decode(latents / scaling_factor) per image, (x / 2 + 0.5).clamp(0, 1): owned. */
static df_tensor *decode(df_sd_pipeline *p, const df_tensor *latents, const plan *pl) {
    df_tensor *img = owned(DF_DIMS(pl->n, 3, pl->h, pl->w));
    float sf = p->vae.vae->config.scaling_factor;
    int64_t per_l = latents->numel / pl->n, per_i = img->numel / pl->n;
    for (int b = 0; b < pl->n; b++) {
        df_scope scope = df_scope_begin();
        df_tensor *z = df_tensor_new(DF_DTYPE_F32, DF_DIMS(1, pl->c, pl->lh, pl->lw));
        for (int64_t i = 0; i < per_l; i++) df_f32(z)[i] = df_f32(latents)[b * per_l + i] / sf;
        df_tensor *x = df_vae_decode(p->vae.vae, z);
        float *o = df_f32(img) + b * per_i;
        for (int64_t i = 0; i < per_i; i++) {
            float v = df_f32(x)[i] / 2.0f + 0.5f;
            o[i] = v > 0.0f ? (v < 1.0f ? v : 1.0f) : (v == v ? 0.0f : v);
        }
        df_scope_end(scope);
    }
    return img;
}

/* The pipeline is done with model c for this request: its mapped weights leave the resident set
 * (when allowed) and the activation pool is returned to the system, so the next stage's peak
 * (the VAE decode's large images after the UNet's) does not add to this one's. */
static void done_with(df_sd_pipeline *p, const df_component *c) {
    if (p->release_weights && c->params) df_params_release_pages(c->params);
    df_mem_trim();
}

/* The scheduler as the pipeline's __init__ leaves it: steps_offset 1 in every pipeline;
 * clip_sample off for text-to-image and image-to-image; skip_prk_steps on for inpainting (which
 * keeps clip_sample). Rebuilt from the folder's config for each request. */
static df_status adjust_scheduler(df_sd_pipeline *p, const plan *pl, bool control) {
    df_sched_config c;
    DF_TRY(df_sched_config_copy(&c, &p->sched_config));
    if (!control) c.steps_offset = 1;
    if (pl->inpaint)
        c.skip_prk_steps = true;
    else if (!control)
        c.clip_sample = false;
    df_sched *s = NULL;
    df_status st = df_sched_new(&c, &s);
    df_sched_config_free(&c);
    if (st != DF_OK) return st;
    df_sched_free(p->sched);
    p->sched = s;
    return DF_OK;
}

/* run_safety_checker: the decoded images through the pipeline's checker; flagged ones black
 * (DF_SAFETY_ON, with diffusers' one-line warning naming them) or kept (DF_SAFETY_FLAG). */
static df_status check_safety(df_sd_pipeline *p, const df_sd_request *r, df_sd_result *out) {
    int64_t n = out->image->shape[0];
    if (!(out->safety = calloc((size_t)n, sizeof *out->safety)))
        return df_error(DF_ERR_NOMEM, "safety checker: out of memory");
    bool on = r->safety == DF_SAFETY_ON;
    int k = 0;
    DF_TRY(df_safety_check_images(p->safety, out->image, on, out->safety, &k));
    out->n_flagged = k;
    if (k > 0 && on) {
        char which[512];
        df_safety_flag_list(out->safety, (int)n, which, sizeof which);
        fprintf(stderr,
                "warning: potential NSFW content was detected in image%s %s of %lld; black "
                "image%s returned instead. Try again with a different prompt and/or seed.\n",
                k > 1 ? "s" : "", which, (long long)n, k > 1 ? "s are" : " is");
    }
    return DF_OK;
}

df_status df_sd_generate(df_sd_pipeline *p, const df_sd_request *r, df_sd_result *out) {
    memset(out, 0, sizeof *out);
    plan pl;
    DF_TRY(make_plan(p, r, &pl));
    DF_TRY(adjust_scheduler(p, &pl, r->n_controls > 0));
    DF_TRY(df_sched_set_timesteps(p->sched, r->steps));
    bool grad = df_grad_set_enabled(false);
    df_torchgen gen;
    df_torchgen_seed(&gen, r->seed);
    prepared q;
    df_status st = prepare(p, r, &pl, &gen, &q);
    df_tensor *embeds = st == DF_OK ? batch_embeds(r, &pl) : NULL;
    df_tensor *control[DF_SD_MAX_CONTROLS] = {0};
    for (int k = 0; st == DF_OK && k < r->n_controls; k++)
        control[k] =
            df_sd_control_images(&r->controls[k], pl.h, pl.w, pl.n, pl.cfg && !r->guess_mode);
    done_with(p, &p->text_encoder);
    df_noise_source noise = df_noise_from_torchgen(&gen);
    df_tensor *momentum = NULL; /* SLD's safety momentum */
    df_sched_step_args args = {.eta = r->eta, .noise = &noise};
    const double *ts = df_sched_timesteps(p->sched);
    int total = df_sched_num_timesteps(p->sched);
    for (int i = q.start; st == DF_OK && i < total; i++) {
        df_scope scope = df_scope_begin();
        df_tensor *x = NULL, *e = NULL, *next = NULL;
        st = unet_input(p, &pl, &q, ts[i], &x);
        df_tensor *t = timesteps_tensor(p->sched, ts[i], 0), *down[DF_UNET_MAX_SKIPS], *mid = NULL;
        int n_down = 0;
        if (st == DF_OK && r->n_controls > 0) {
            df_sd_control_step cs = {p->sched, x, q.latents, ts[i], t, embeds, i, total, pl.cfg};
            st = df_sd_controls_step(r, control, &cs, down, &n_down, &mid);
        }
        df_unet_residuals res = {down, n_down, mid};
        if (st == DF_OK)
            st = df_unet2d_cond_forward_res(p->unet.unet2d_cond, x, t, embeds, mid ? &res : NULL,
                                            &e);
        if (st == DF_OK && pl.sld)
            e = guide_sld(e, r, i - q.start, &momentum);
        else if (st == DF_OK && pl.cfg)
            e = guide(e, r->guidance_scale, r->guidance_rescale);
        if (st == DF_OK) st = df_sched_step(p->sched, e, ts[i], q.latents, &args, &next, NULL);
        if (st == DF_OK) df_tensor_retain(next);
        df_scope_end(scope);
        if (st != DF_OK) break;
        df_tensor_free(q.latents);
        q.latents = next;
        if (pl.inpaint && !pl.inpaint9) st = blend(p, &q, i, q.latents);
        if (r->progress) r->progress(r->progress_ctx, i - q.start + 1, total - q.start);
    }
    df_tensor_free(embeds);
    for (int k = 0; k < r->n_controls && k < DF_SD_MAX_CONTROLS; k++) df_tensor_free(control[k]);
    df_tensor_free(momentum);
    done_with(p, &p->unet);
    if (st == DF_OK) {
        out->image = decode(p, q.latents, &pl);
        out->latents = q.latents;
        q.latents = NULL;
        if (p->safety && r->safety != DF_SAFETY_OFF) st = check_safety(p, r, out);
    }
    prepared_free(&q);
    df_grad_set_enabled(grad);
    return st;
}

df_status df_sd_encode_ids(df_sd_pipeline *p, const df_tensor *ids, int clip_skip,
                           df_tensor **out) {
    df_clip_text *te = p->text_encoder.clip_text;
    int layers = te->config.num_hidden_layers;
    if (clip_skip < 0 || clip_skip >= layers)
        return df_error(DF_ERR_INVALID, "clip skip %d: the text encoder has %d layers (0 to %d)",
                        clip_skip, layers, layers - 1);
    bool grad = df_grad_set_enabled(false);
    df_tensor *hidden[DF_CLIP_MAX_LAYERS + 1];
    df_tensor *last = df_clip_text_forward(te, ids, clip_skip ? hidden : NULL, NULL);
    if (clip_skip) {
        df_norm_mod *ln = &te->final_layer_norm;
        last = df_layer_norm(hidden[layers - clip_skip], ln->weight, ln->bias, ln->eps);
    }
    df_grad_set_enabled(grad);
    *out = last;
    return DF_OK;
}
