/* sd_control.c — the ControlNet parts of diffusers v0.21.4's StableDiffusionControlNetPipeline
 * (pipelines/controlnet/pipeline_controlnet.py, multicontrolnet.py), used by df_sd_generate's
 * text-to-image loop:
 *   images: control_image_processor.preprocess (VaeImageProcessor, do_normalize off): resized
 *     to the output size with Lanczos when it differs, x / 255 in [0, 1]; repeated for every
 *     image of the prompt; doubled ([image; image]) with classifier-free guidance unless guess
 *     mode. The output size defaults to the first control image's, rounded down to a multiple
 *     of the VAE's factor.
 *   each step i of T: keep_k = 1 - (i / T < start_k or (i + 1) / T > end_k); ControlNet k runs
 *     with conditioning_scale scale_k x keep_k on the UNet's (scaled) input and embeddings, or
 *     in guess mode with guidance on scale_model_input(latents) and the conditional embeddings
 *     only, its residuals then given zeros for the unconditional half; the residuals of every
 *     ControlNet are summed (MultiControlNetModel). A ControlNet whose scale x keep is 0 adds
 *     exact zeros upstream: it is not run here.
 */
#include "infer/infer.h"
#include "datasets/datasets.h"
#include "nn/controlnet.h"

#include <stdio.h>
#include <string.h>

df_status df_sd_controls_check(const df_sd_pipeline *p, const df_sd_request *r) {
    if (r->n_controls < 0 || r->n_controls > DF_SD_MAX_CONTROLS)
        return df_error(DF_ERR_INVALID, "%d ControlNets (at most %d)", r->n_controls,
                        DF_SD_MAX_CONTROLS);
    for (int k = 0; k < r->n_controls; k++) {
        const df_sd_control *c = &r->controls[k];
        if (!c->net || !c->image)
            return df_error(DF_ERR_INVALID, "ControlNet %d: no model or no control image", k + 1);
        if (c->image->dtype != DF_DTYPE_U8 || c->image->ndim != 3 || c->image->shape[2] != 3)
            return df_error(DF_ERR_INVALID, "ControlNet %d: the control image must be U8 (H, W, 3)",
                            k + 1);
        if (!(c->start >= 0 && c->start < c->end && c->end <= 1))
            return df_error(DF_ERR_INVALID,
                            "ControlNet %d: control start %g and end %g (0 <= start < end <= 1)",
                            k + 1, c->start, c->end);
        df_status st = df_controlnet_check_unet(&c->net->config, &p->unet.unet2d_cond->config);
        if (st != DF_OK) {
            char why[512]; /* df_error writes the buffer df_last_error reads */
            snprintf(why, sizeof why, "%s", df_last_error());
            return df_error(st, "ControlNet %d: %s", k + 1, why);
        }
    }
    return DF_OK;
}

/* One control image as F32 (1, 3, h, w) in [0, 1], resized (Lanczos) when its size differs. */
static df_tensor *control_image(const df_tensor *img, int h, int w) {
    df_scope scope = df_scope_begin();
    const df_tensor *src = (img->shape[0] == h && img->shape[1] == w)
                               ? img
                               : df_image_resize(img, h, w, DF_RESAMPLE_LANCZOS);
    df_tensor *out = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(1, 3, h, w));
    const uint8_t *s = src->data;
    float *d = df_f32(out);
    for (int64_t ch = 0; ch < 3; ch++)
        for (int64_t i = 0; i < (int64_t)h * w; i++)
            d[ch * h * w + i] = (float)s[i * 3 + ch] / 255.0f;
    df_scope_end(scope);
    return out;
}

df_tensor *df_sd_control_images(const df_sd_control *c, int h, int w, int n, bool doubled) {
    df_tensor *one = control_image(c->image, h, w);
    int64_t per = one->numel, copies = (int64_t)n * (doubled ? 2 : 1);
    df_tensor *out = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(copies, 3, h, w));
    for (int64_t i = 0; i < copies; i++)
        memcpy(df_f32(out) + i * per, df_f32(one), sizeof(float) * (size_t)per);
    df_tensor_free(one);
    return out;
}

/* [zeros; d] along the batch: guess mode's residual for the unconditional half. */
static df_tensor *with_zero_half(df_tensor *d) {
    d = df_to_plain(d);
    df_tensor *z = df_zeros(DF_DTYPE_F32, d->ndim, d->shape);
    return df_concat((df_tensor *[]){z, d}, 2, 0);
}

df_status df_sd_controls_step(const df_sd_request *r, df_tensor *const *images,
                              const df_sd_control_step *s, df_tensor **down, int *n_down,
                              df_tensor **mid) {
    *n_down = 0;
    *mid = NULL;
    bool split = r->guess_mode && s->cfg;
    df_tensor *x = s->unet_input, *ctx = s->embeds;
    if (split) {
        DF_TRY(df_sched_scale_model_input(s->sched, s->latents, s->t, &x));
        int64_t n = ctx->shape[0] / 2;
        ctx = df_slice(ctx, 0, n, n);
    }
    for (int k = 0; k < r->n_controls; k++) {
        const df_sd_control *c = &r->controls[k];
        double i = s->step, total = s->total;
        bool keep = !(i / total < c->start || (i + 1) / total > c->end);
        float scale = (float)c->scale * (keep ? 1.0f : 0.0f);
        if (scale == 0.0f) continue;
        df_tensor *d[DF_UNET_MAX_SKIPS], *m;
        int nd;
        df_controlnet_forward(c->net, x, s->timestep, ctx, images[k], scale, r->guess_mode, d, &nd,
                              &m);
        if (split) {
            for (int j = 0; j < nd; j++) d[j] = with_zero_half(d[j]);
            m = with_zero_half(m);
        }
        if (!*mid) {
            memcpy(down, d, sizeof(df_tensor *) * (size_t)nd);
            *n_down = nd;
            *mid = m;
        } else {
            for (int j = 0; j < nd; j++) down[j] = df_add(down[j], d[j]);
            *mid = df_add(*mid, m);
        }
    }
    return DF_OK;
}
