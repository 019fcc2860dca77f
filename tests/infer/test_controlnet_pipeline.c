/* test_controlnet_pipeline.c — df_sd_generate with ControlNets against the real diffusers v0.21.4
 * StableDiffusionControlNetPipeline runs of tests/ref/gen_controlnet_pipeline.py (the tiny sd1
 * folder, two ControlNets made by from_unet and perturbed): one ControlNet with the folder's PNDM,
 * guess mode with DDIM, a MultiControlNetModel with control start / end and a control image
 * resized by the pipeline (Euler), no guidance with two images a prompt and the output size
 * taken from the control image. The embeddings are the fixture's; the final latents must agree
 * within 1e-4 and the decoded images within 1e-3. Then the bad inputs. */
#include "datasets/datasets.h"
#include "infer/infer.h"
#include "nn/controlnet.h"
#include "tests/common/check.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static df_tensor *read_image(const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/images/%s", name);
    df_decode_opts o = df_decode_opts_default();
    o.channels = 3;
    df_tensor *img = NULL;
    cr_assert_eq(df_image_read(fixture_path(rel), &o, &img), DF_OK, "%s", df_last_error());
    return img;
}

static df_tensor *fixture_get(df_st_file *f, const char *name) {
    df_tensor *t = NULL;
    cr_assert_eq(df_st_read(f, name, DF_DTYPE_F32, &t), DF_OK, "%s", df_last_error());
    return t;
}

/* Row `row` of x (N, S, D) as (1, S, D): an owned copy. */
static df_tensor *row_of(const df_tensor *x, int64_t row) {
    df_tensor *o = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(1, x->shape[1], x->shape[2]));
    memcpy(df_f32(o), df_f32(x) + row * o->numel, sizeof(float) * (size_t)o->numel);
    return o;
}

static double num_at(const cJSON *a, int i, double def) {
    const cJSON *v = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, i) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static double num_or(const cJSON *o, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static void load_net(const char *name, df_component *c) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/controlnet_%s", name);
    cr_assert_eq(df_component_load(fixture_path(rel), c), DF_OK, "%s", df_last_error());
    cr_assert(c->controlnet);
}

static void check_case(const char *name) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/runs/%s.safetensors", name);
    df_st_file *f = fixture_open(rel);
    cJSON *j = cJSON_Parse(df_st_metadata(f, "args"));
    cr_assert(j);
    const cJSON *sched = cJSON_GetObjectItemCaseSensitive(j, "scheduler");
    df_sd_load_opts lo = {.scheduler = cJSON_IsString(sched) ? sched->valuestring : NULL};
    df_sd_pipeline p;
    cr_assert_eq(df_sd_pipeline_load(fixture_path("pipelines/sd1"), &lo, &p), DF_OK, "%s",
                 df_last_error());
    double guidance = num_or(j, "guidance", 7.5);
    int n = (int)num_or(j, "n", 1);
    bool cfg = guidance > 1.0;
    df_tensor *pe = fixture_get(f, "prompt_embeds");
    df_tensor *cond = row_of(pe, cfg ? n : 0), *uncond = cfg ? row_of(pe, 0) : NULL;

    const cJSON *nets = cJSON_GetObjectItemCaseSensitive(j, "nets");
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(j, "images");
    int k = cJSON_GetArraySize(nets);
    df_component comps[4];
    df_sd_control controls[4];
    df_tensor *imgs[4];
    cr_assert(k >= 1 && k <= 4);
    for (int i = 0; i < k; i++) {
        load_net(cJSON_GetArrayItem(nets, i)->valuestring, &comps[i]);
        imgs[i] = read_image(cJSON_GetArrayItem(images, i)->valuestring);
        controls[i] =
            (df_sd_control){.net = comps[i].controlnet,
                            .image = imgs[i],
                            .scale = num_at(cJSON_GetObjectItemCaseSensitive(j, "scale"), i, 1.0),
                            .start = num_at(cJSON_GetObjectItemCaseSensitive(j, "start"), i, 0.0),
                            .end = num_at(cJSON_GetObjectItemCaseSensitive(j, "end"), i, 1.0)};
    }
    df_sd_request r = {.cond = cond,
                       .uncond = uncond,
                       .steps = (int)num_or(j, "steps", 4),
                       .guidance_scale = guidance,
                       .num_images = n,
                       .height = (int)num_or(j, "height", 0),
                       .width = (int)num_or(j, "width", 0),
                       .seed = (uint64_t)num_or(j, "seed", 0),
                       .strength = -1,
                       .controls = controls,
                       .n_controls = k,
                       .guess_mode = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "guess"))};
    df_sd_result res;
    df_scope scope = df_scope_begin();
    cr_assert_eq(df_sd_generate(&p, &r, &res), DF_OK, "%s: %s", name, df_last_error());
    df_scope_end(scope);
    df_tensor *want_l = fixture_get(f, "latents"), *want_i = fixture_get(f, "image");
    cr_log_info("%s: latents rel err %.2e, image rel err %.2e", name,
                rel_max_err(res.latents, want_l), rel_max_err(res.image, want_i));
    char label[160];
    snprintf(label, sizeof label, "%s latents", name);
    check_close(label, res.latents, want_l, 1e-4, 1e-4);
    snprintf(label, sizeof label, "%s image", name);
    check_close(label, res.image, want_i, 1e-3, 0);
    df_tensor *ts[] = {pe, cond, uncond, res.latents, res.image, want_l, want_i};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) df_tensor_free(ts[i]);
    for (int i = 0; i < k; i++) {
        df_tensor_free(imgs[i]);
        df_component_free(&comps[i]);
    }
    cJSON_Delete(j);
    df_sd_pipeline_free(&p);
    df_st_close(f);
}

#define CASE(n)                                                                                    \
    Test(controlnet_pipeline, n) {                                                                 \
        check_case(#n);                                                                            \
    }

CASE(cn_single_pndm)
CASE(cn_guess_ddim)
CASE(cn_multi_euler)
CASE(cn_nocfg_euler)

/* A ControlNet made for another UNet, a control image that is not RGB, start after end, and
 * ControlNet with an init image: errors naming the ControlNet and the reason. */
Test(controlnet_pipeline, bad_requests) {
    df_sd_pipeline p;
    cr_assert_eq(df_sd_pipeline_load(fixture_path("pipelines/sd1"), NULL, &p), DF_OK, "%s",
                 df_last_error());
    df_component other;
    cr_assert_eq(df_component_load(fixture_path("models/controlnet_tiny"), &other), DF_OK);
    df_component good;
    load_net("a", &good);
    df_tensor *img = read_image("init.png");
    df_tensor *cond = df_zeros(DF_DTYPE_F32, DF_DIMS(1, 77, 32));
    df_sd_control c = {.net = other.controlnet, .image = img, .scale = 1, .start = 0, .end = 1};
    df_sd_request r = {.cond = cond,
                       .steps = 2,
                       .guidance_scale = 1,
                       .controls = &c,
                       .n_controls = 1,
                       .strength = -1};
    df_sd_result res;
    expect_status(df_sd_generate(&p, &r, &res), DF_ERR_INVALID,
                  "ControlNet 1: ControlNetModel for another UNet");
    c.net = good.controlnet;
    c.start = 0.6, c.end = 0.5;
    expect_status(df_sd_generate(&p, &r, &res), DF_ERR_INVALID, "control start 0.6 and end 0.5");
    c.start = 0, c.end = 1;
    df_tensor *grey = df_zeros(DF_DTYPE_U8, DF_DIMS(32, 32, 1));
    c.image = grey;
    expect_status(df_sd_generate(&p, &r, &res), DF_ERR_INVALID, "must be U8 (H, W, 3)");
    c.image = img;
    r.image = img;
    expect_status(df_sd_generate(&p, &r, &res), DF_ERR_UNSUPPORTED, "text-to-image only");
    df_tensor_free(grey);
    df_tensor_free(img);
    df_tensor_free(cond);
    df_component_free(&good);
    df_component_free(&other);
    df_sd_pipeline_free(&p);
}
