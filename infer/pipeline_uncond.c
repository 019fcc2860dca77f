/* pipeline_uncond.c — unconditional generation from a diffusers pipeline folder (DDPMPipeline /
 * DDIMPipeline layout: model_index.json, unet/ with a UNet2DModel, scheduler/), and the loop
 * every diffusers pipeline runs:
 *     latents = init_noise * scheduler.init_noise_sigma
 *     for t in scheduler.timesteps:
 *         x_in = scheduler.scale_model_input(latents, t)
 *         latents = scheduler.step(unet(x_in, t).sample, t, latents, generator).prev_sample
 * (DDPMPipeline itself skips the scaling and the sigma, which are identities for DDPM/DDIM.)
 * The UNet runs without recording a tape.
 */
#include "infer/infer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

df_status df_uncond_pipeline_load(const char *dir, const char *scheduler_name,
                                  df_uncond_pipeline *p) {
    memset(p, 0, sizeof *p);
    char path[1024];
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    df_json index;
    DF_TRY(df_json_load(path, &index));
    char cls[DF_JSON_STR];
    df_status st = df_json_string(&index, "_class_name", "", cls, sizeof cls);
    df_json_free(&index);
    if (st != DF_OK) return st;
    snprintf(path, sizeof path, "%s/unet", dir);
    DF_TRY(df_component_load(path, &p->unet));
    if (!p->unet.unet2d)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: unconditional pipelines need a UNet2DModel, not %s", path,
                        p->unet.class_name);
    const df_unet2d_config *uc = &p->unet.unet2d->config;
    if (uc->out_channels != uc->in_channels)
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: out_channels %d differs from in_channels %d: the scheduler steps "
                        "need a model output shaped as the sample (learned variance is not "
                        "implemented)",
                        path, uc->out_channels, uc->in_channels);
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    DF_TRY(df_sched_config_load(path, scheduler_name, &p->sched_config));
    p->has_sched_config = true;
    return df_sched_new(&p->sched_config, &p->sched);
}

void df_uncond_pipeline_free(df_uncond_pipeline *p) {
    df_component_free(&p->unet);
    df_sched_free(p->sched);
    if (p->has_sched_config) df_sched_config_free(&p->sched_config);
    memset(p, 0, sizeof *p);
}

/* A 0-d timestep tensor of the schedule's kind (integer or fractional). */
static df_tensor *timestep_tensor(const df_sched *s, double t) {
    if (df_sched_timesteps_are_float(s)) return df_full(DF_DTYPE_F32, 0, NULL, t);
    return df_full(DF_DTYPE_I64, 0, NULL, t);
}

df_tensor *df_unet2d_denoise(void *unet, df_tensor *x, const df_tensor *t) {
    return df_unet2d_forward(unet, x, t);
}

df_status df_uncond_sample(df_denoise_fn denoise, void *ctx, df_sched *s, int steps,
                           const df_tensor *init_noise, df_torchgen *gen, df_tensor **out) {
    *out = NULL;
    DF_TRY(df_sched_set_timesteps(s, steps));
    bool prev = df_grad_set_enabled(false);
    /* latents: a reference this function owns; each step's result replaces it */
    df_tensor *latents = df_tensor_new_owned(DF_DTYPE_F32, init_noise->ndim, init_noise->shape);
    float sigma = (float)df_sched_init_noise_sigma(s);
    for (int64_t i = 0; i < latents->numel; i++) df_f32(latents)[i] = df_f32(init_noise)[i] * sigma;
    df_noise_source noise = df_noise_from_torchgen(gen);
    df_sched_step_args args = {.noise = &noise};
    const double *ts = df_sched_timesteps(s);
    df_status st = DF_OK;
    for (int i = 0; i < df_sched_num_timesteps(s) && st == DF_OK; i++) {
        df_scope scope = df_scope_begin();
        df_tensor *x_in = NULL, *next = NULL;
        st = df_sched_scale_model_input(s, latents, ts[i], &x_in);
        if (st == DF_OK) {
            df_tensor *eps = denoise(ctx, x_in, timestep_tensor(s, ts[i]));
            st = df_sched_step(s, eps, ts[i], latents, &args, &next, NULL);
        }
        if (st == DF_OK) df_tensor_retain(next);
        df_scope_end(scope);
        if (st == DF_OK) {
            df_tensor_free(latents);
            latents = next;
        }
    }
    df_grad_set_enabled(prev);
    if (st != DF_OK) {
        df_tensor_free(latents);
        return st;
    }
    *out = latents;
    return DF_OK;
}
