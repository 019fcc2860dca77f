/* test_sd_parity.c — the Stable Diffusion pipelines against the real diffusers v0.21.4 runs of
 * tests/ref/gen_sd_pipelines.py on tiny random pipeline folders (SD 1-like: epsilon, quick_gelu,
 * fp16 variant files; SD 2-like: v-prediction, linear projection, F16 text encoder; a 9-channel
 * inpainting UNet): text-to-image with and without guidance, image-to-image and both kinds of
 * inpainting, with DDIM, Euler, DPM++ 2M and the folders' own schedulers. The prompt embeddings,
 * the final latents (within 1e-4) and the decoded images (within 1e-3) must agree; the noise is
 * drawn from the same seeded torch generator in the same order. */
#include "datasets/datasets.h"
#include "infer/infer.h"
#include "tests/common/check.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A fixture run's arguments (the `args` metadata). */
typedef struct run_args {
    char folder[64], mode[16], scheduler[64], image[64], mask[64], spacing[16];
    bool zero_snr;
    int steps, n, height, width;
    double guidance, strength, rescale;
    uint64_t seed;
} run_args;

static const char *str_or(const cJSON *o, const char *key, const char *def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : def;
}

static double num_or(const cJSON *o, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static run_args read_args(const df_st_file *f) {
    const char *text = df_st_metadata(f, "args");
    cr_assert(text, "fixture without args");
    cJSON *j = cJSON_Parse(text);
    cr_assert(j);
    run_args a = {0};
    snprintf(a.folder, sizeof a.folder, "%s", str_or(j, "folder", ""));
    snprintf(a.mode, sizeof a.mode, "%s", str_or(j, "mode", ""));
    snprintf(a.scheduler, sizeof a.scheduler, "%s", str_or(j, "scheduler", ""));
    snprintf(a.image, sizeof a.image, "%s", str_or(j, "image", ""));
    snprintf(a.mask, sizeof a.mask, "%s", str_or(j, "mask", ""));
    const cJSON *ov = cJSON_GetObjectItemCaseSensitive(j, "sched_overrides");
    snprintf(a.spacing, sizeof a.spacing, "%s", str_or(ov, "timestep_spacing", ""));
    a.zero_snr = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ov, "rescale_betas_zero_snr"));
    a.steps = (int)num_or(j, "steps", 0);
    a.n = (int)num_or(j, "n", 1);
    a.height = (int)num_or(j, "height", 0);
    a.width = (int)num_or(j, "width", 0);
    a.guidance = num_or(j, "guidance", 7.5);
    a.strength = num_or(j, "strength", -1);
    a.rescale = num_or(j, "guidance_rescale", 0);
    a.seed = (uint64_t)num_or(j, "seed", 0);
    cJSON_Delete(j);
    return a;
}

static df_tensor *read_image(const char *name, int channels) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/images/%s", name);
    df_decode_opts o = df_decode_opts_default();
    o.channels = channels;
    df_tensor *img = NULL;
    cr_assert_eq(df_image_read(fixture_path(rel), &o, &img), DF_OK, "%s", df_last_error());
    return img;
}

static df_tensor *fixture_get(df_st_file *f, const char *name, df_dtype dt) {
    df_tensor *t = NULL;
    cr_assert_eq(df_st_read(f, name, dt, &t), DF_OK, "%s", df_last_error());
    return t;
}

static void check_case(const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/runs/%s.safetensors", name);
    df_st_file *f = fixture_open(rel);
    run_args a = read_args(f);
    snprintf(rel, sizeof rel, "pipelines/%s", a.folder);
    df_sd_load_opts lo = {.scheduler = a.scheduler[0] ? a.scheduler : NULL,
                          .timestep_spacing = a.spacing[0] ? a.spacing : NULL,
                          .rescale_betas_zero_snr = a.zero_snr};
    df_sd_pipeline p;
    cr_assert_eq(df_sd_pipeline_load(fixture_path(rel), &lo, &p), DF_OK, "%s", df_last_error());
    bool cfg = a.guidance > 1.0;
    df_tensor *ids = fixture_get(f, "input_ids", DF_DTYPE_I64);
    df_tensor *cond = NULL, *uncond = NULL;
    cr_assert_eq(df_sd_encode_ids(&p, ids, 0, &cond), DF_OK, "%s", df_last_error());
    if (cfg) {
        df_tensor *nids = fixture_get(f, "negative_ids", DF_DTYPE_I64);
        cr_assert_eq(df_sd_encode_ids(&p, nids, 0, &uncond), DF_OK, "%s", df_last_error());
        df_tensor_free(nids);
    }
    /* the embeddings diffusers' encode_prompt made: [negative x n; prompt x n] */
    df_tensor *want_pe = fixture_get(f, "prompt_embeds", DF_DTYPE_F32);
    int64_t per = cond->numel;
    char label[160];
    snprintf(label, sizeof label, "%s prompt_embeds", name);
    check_close_f32(label, df_f32(cond), df_f32(want_pe) + (cfg ? a.n * per : 0), per, 1e-5, 1e-5);
    if (cfg) check_close_f32(label, df_f32(uncond), df_f32(want_pe), per, 1e-5, 1e-5);
    df_sd_request r = {.cond = cond,
                       .uncond = uncond,
                       .steps = a.steps,
                       .guidance_scale = a.guidance,
                       .guidance_rescale = a.rescale,
                       .num_images = a.n,
                       .height = a.height,
                       .width = a.width,
                       .seed = a.seed,
                       .strength = a.strength};
    df_tensor *image = a.image[0] ? read_image(a.image, 3) : NULL;
    df_tensor *mask = a.mask[0] ? read_image(a.mask, 1) : NULL;
    r.image = image;
    r.mask = mask;
    df_sd_result res;
    df_scope scope = df_scope_begin(); /* as the command runs it: the results are the caller's */
    cr_assert_eq(df_sd_generate(&p, &r, &res), DF_OK, "%s: %s", name, df_last_error());
    df_scope_end(scope);
    df_tensor *want_l = fixture_get(f, "latents", DF_DTYPE_F32);
    df_tensor *want_i = fixture_get(f, "image", DF_DTYPE_F32);
    double el = rel_max_err(res.latents, want_l), ei = rel_max_err(res.image, want_i);
    cr_log_info("%s: latents rel err %.2e, image rel err %.2e", name, el, ei);
    snprintf(label, sizeof label, "%s latents", name);
    check_close(label, res.latents, want_l, 1e-4, 1e-4);
    snprintf(label, sizeof label, "%s image", name);
    check_close(label, res.image, want_i, 1e-3, 0);
    df_tensor *ts[] = {ids,  cond,        uncond,    want_pe, image,
                       mask, res.latents, res.image, want_l,  want_i};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) df_tensor_free(ts[i]);
    df_sd_pipeline_free(&p);
    df_st_close(f);
}

#define CASE(n)                                                                                    \
    Test(sd_parity, n) {                                                                           \
        check_case(#n);                                                                            \
    }

CASE(sd1_txt2img_pndm)
CASE(sd1_txt2img_ddim)
CASE(sd1_txt2img_euler)
CASE(sd1_txt2img_dpm)
CASE(sd1_txt2img_nocfg_euler)
CASE(sd1_txt2img_nocfg_dpm)
CASE(sd2_txt2img_ddim)
CASE(sd2_txt2img_euler)
CASE(sd2_txt2img_dpm)
CASE(sd2_txt2img_nocfg_ddim)
CASE(sd2_txt2img_zsnr_rescale)
CASE(sd1_img2img_ddim)
CASE(sd1_img2img_euler)
CASE(sd1_img2img_dpm_odd)
CASE(sd2_img2img_ddim_nocfg)
CASE(sd1_inpaint9_dpm)
CASE(sd1_inpaint9_ddim_half)
CASE(sd1_inpaint9_euler)
CASE(sd1_inpaint4_euler)
CASE(sd1_inpaint4_ddim)
CASE(sd2_inpaint4_dpm)

/* Safe Latent Diffusion: diffusers' StableDiffusionPipelineSafe runs (its default safety
 * concept, recorded in the metadata) from the prompt texts; the final latents within 1e-4 and
 * the images within 1e-3, and SLD must have moved them (latents_without_sld: the same run with
 * sld_guidance_scale 0). */
static void check_safe_case(const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/runs/%s.safetensors", name);
    df_st_file *f = fixture_open(rel);
    const char *text = df_st_metadata(f, "args");
    cr_assert(text);
    cJSON *j = cJSON_Parse(text);
    cr_assert(j);
    run_args a = read_args(f);
    const cJSON *sld = cJSON_GetObjectItemCaseSensitive(j, "sld");
    df_sld_params sp = {.guidance_scale = num_or(sld, "sld_guidance_scale", 0),
                        .warmup_steps = (int)num_or(sld, "sld_warmup_steps", 0),
                        .threshold = num_or(sld, "sld_threshold", 0),
                        .momentum_scale = num_or(sld, "sld_momentum_scale", 0),
                        .mom_beta = num_or(sld, "sld_mom_beta", 0)};
    const char *concept = df_st_metadata(f, "safety_concept");
    cr_assert(concept && strcmp(concept, df_sld_default_concept()) == 0,
              "the fixture's concept is not df_sld_default_concept()");
    snprintf(rel, sizeof rel, "pipelines/%s", a.folder);
    df_sd_load_opts lo = {.scheduler = a.scheduler[0] ? a.scheduler : NULL};
    df_sd_pipeline p;
    cr_assert_eq(df_sd_pipeline_load(fixture_path(rel), &lo, &p), DF_OK, "%s", df_last_error());
    df_scope scope = df_scope_begin();
    df_tensor *cond, *uncond, *sc, *none;
    const char *neg = str_or(j, "negative", NULL);
    cr_assert_eq(df_sd_encode_prompt(&p, str_or(j, "prompt", ""), neg, 0, true, &cond, &uncond),
                 DF_OK, "%s", df_last_error());
    cr_assert_eq(df_sd_encode_prompt(&p, concept, NULL, 0, false, &sc, &none), DF_OK, "%s",
                 df_last_error());
    df_sd_request r = {.cond = cond,
                       .uncond = uncond,
                       .steps = a.steps,
                       .guidance_scale = a.guidance,
                       .num_images = a.n,
                       .height = a.height,
                       .width = a.width,
                       .seed = a.seed,
                       .strength = -1,
                       .sld_concept = sc,
                       .sld = sp};
    df_sd_result res;
    cr_assert_eq(df_sd_generate(&p, &r, &res), DF_OK, "%s: %s", name, df_last_error());
    df_tensor *want_l = fixture_get(f, "latents", DF_DTYPE_F32);
    df_tensor *want_i = fixture_get(f, "image", DF_DTYPE_F32);
    df_tensor *plain = fixture_get(f, "latents_without_sld", DF_DTYPE_F32);
    char label[160];
    snprintf(label, sizeof label, "%s latents", name);
    check_close(label, res.latents, want_l, 1e-4, 1e-4);
    snprintf(label, sizeof label, "%s image", name);
    check_close(label, res.image, want_i, 1e-3, 0);
    cr_expect_gt(rel_max_err(plain, want_l), 1e-2, "SLD did not change the latents");
    df_tensor_free(res.latents); /* the caller's; the rest belongs to the scope */
    df_tensor_free(res.image);
    free(res.safety);
    df_scope_end(scope);
    cJSON_Delete(j);
    df_sd_pipeline_free(&p);
    df_st_close(f);
}

Test(sd_parity, sd1_safe_pndm) {
    check_safe_case("sd1_safe_pndm");
}

Test(sd_parity, sd1_safe_max_ddim) {
    check_safe_case("sd1_safe_max_ddim");
}

Test(sd_parity, sld_presets) {
    df_sld_params p;
    cr_assert(df_sld_preset("medium", &p));
    cr_expect(p.guidance_scale == 1000 && p.warmup_steps == 10 && p.threshold == 0.01 &&
              p.momentum_scale == 0.3 && p.mom_beta == 0.4);
    cr_assert(df_sld_preset("MAX", &p));
    cr_expect(p.guidance_scale == 5000 && p.warmup_steps == 0 && p.threshold == 1.0);
    cr_expect(df_sld_preset("weak", &p) && p.warmup_steps == 15 && p.guidance_scale == 20);
    cr_expect(df_sld_preset("strong", &p) && p.threshold == 0.025 && p.mom_beta == 0.7);
    cr_expect(!df_sld_preset("extreme", &p));
}
