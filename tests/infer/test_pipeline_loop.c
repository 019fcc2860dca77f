/* test_pipeline_loop.c — the sampling loop of `diffusion sample` against diffusers' own loop.
 * tests/fixtures/schedulers/sd15/ holds, for every scheduler class, diffusers v0.21.4 running
 *     g = torch.Generator().manual_seed(0); latents = randn((1,4,8,8), g) * init_noise_sigma
 *     for t in timesteps (10 steps): x_in = scale_model_input(latents, t)
 *         latents = step(0.1 * x_in + sin(t), t, latents, generator=g).prev_sample
 * i.e. a pipeline loop with a fixed stand-in for the UNet. df_uncond_sample with the same
 * stand-in, our torch-compatible generator seeded 0 and the same config must reproduce the
 * final latents (1e-5 relative, the scheduler tolerance), including the stochastic
 * schedulers, whose noise is drawn from the same generator. */
#include "infer/infer.h"
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* model_output = 0.1 * x_in + sin(float(t)), in float32 as torch computes it */
static df_tensor *stand_in(void *ctx, df_tensor *x, const df_tensor *t) {
    (void)ctx;
    df_tensor *o = df_tensor_new(DF_DTYPE_F32, x->ndim, x->shape);
    float s = (float)sin(df_tensor_get(t, 0));
    for (int64_t i = 0; i < x->numel; i++) df_f32(o)[i] = 0.1f * df_f32(x)[i] + s;
    return o;
}

static void run_loop(const char *file, const char *config, const char *cls) {
    char rel[256];
    snprintf(rel, sizeof rel, "schedulers/sd15/%s", config);
    df_sched_config cfg;
    cr_assert_eq(df_sched_config_load(fixture_path(rel), cls, &cfg), DF_OK, "%s", df_last_error());
    df_sched *s;
    cr_assert_eq(df_sched_new(&cfg, &s), DF_OK, "%s", df_last_error());
    df_scope scope = df_scope_begin();
    df_torchgen gen;
    df_torchgen_seed(&gen, 0);
    df_tensor *noise = df_tensor_new(DF_DTYPE_F32, DF_DIMS(1, 4, 8, 8));
    df_torchgen_randn(&gen, df_f32(noise), noise->numel);
    snprintf(rel, sizeof rel, "schedulers/sd15/%s", file);
    df_st_file *f;
    cr_assert_eq(df_st_open(fixture_path(rel), &f), DF_OK, "%s", df_last_error());
    df_tensor *want_noise, *want;
    cr_assert_eq(df_st_read(f, "init_noise", DF_DTYPE_F32, &want_noise), DF_OK);
    check_close("init_noise", noise, want_noise, 0, 0);
    cr_assert_eq(df_st_read(f, "final", DF_DTYPE_F32, &want), DF_OK);
    df_tensor *got;
    cr_assert_eq(df_uncond_sample(stand_in, NULL, s, 10, noise, &gen, &got), DF_OK, "%s",
                 df_last_error());
    double err = rel_max_err(got, want);
    cr_expect(err <= 1e-5, "%s: final latents differ from diffusers by %.3g (relative)", file, err);
    df_tensor_free(got);
    df_st_close(f);
    df_scope_end(scope);
    df_sched_free(s);
    df_sched_config_free(&cfg);
}

#define LOOP(name, file, config, cls)                                                              \
    Test(infer_pipeline_loop, name) {                                                              \
        run_loop(file, config, cls);                                                               \
    }

LOOP(ddpm, "DDPMScheduler.safetensors", "scheduler_config.json", "DDPMScheduler")
LOOP(ddim, "DDIMScheduler.safetensors", "scheduler_config.json", "DDIMScheduler")
LOOP(ddim_vpred_zsnr, "DDIMScheduler_vpred_zsnr.safetensors", "scheduler_config_vpred_zsnr.json",
     "DDIMScheduler")
LOOP(pndm, "PNDMScheduler.safetensors", "scheduler_config.json", "PNDMScheduler")
LOOP(euler, "EulerDiscreteScheduler.safetensors", "scheduler_config.json", "EulerDiscreteScheduler")
LOOP(euler_trailing, "EulerDiscreteScheduler_trailing.safetensors",
     "scheduler_config_trailing.json", "EulerDiscreteScheduler")
LOOP(euler_ancestral, "EulerAncestralDiscreteScheduler.safetensors", "scheduler_config.json",
     "EulerAncestralDiscreteScheduler")
LOOP(heun, "HeunDiscreteScheduler.safetensors", "scheduler_config.json", "HeunDiscreteScheduler")
LOOP(lms, "LMSDiscreteScheduler.safetensors", "scheduler_config.json", "LMSDiscreteScheduler")
LOOP(dpmsolver, "DPMSolverMultistepScheduler.safetensors", "scheduler_config.json",
     "DPMSolverMultistepScheduler")
LOOP(dpmsolver_karras, "DPMSolverMultistepScheduler_karras.safetensors",
     "scheduler_config_karras.json", "DPMSolverMultistepScheduler")
LOOP(unipc, "UniPCMultistepScheduler.safetensors", "scheduler_config.json",
     "UniPCMultistepScheduler")
