/* test_recipe_text_to_image.c — the `text_to_image` recipe on tiny models (the tiny SD 1.x
 * pipeline of tests/fixtures/pipelines/sd1 as a base, or a UNet and CLIP text encoder from
 * scratch on its VAE) and eight generated 32x32 images with captions, in process: the recipe's
 * loss is the upstream step's pieces (VAE posterior * scaling_factor, tokenizer, text encoder,
 * diffusion draw, UNet, the v0.21.4 min-SNR loss of tests/train/test_t2i_loss.c) on the same
 * draws (v-prediction, min-SNR, offset noise, input perturbation, empty prompts); the loss falls; the export is a StableDiffusionPipeline folder that df_sd_pipeline_load
 * and `diffusion generate` take; cached and uncached latents give the same loss; the text
 * encoder trains only with train_text_encoder; proportion_empty_prompts 1 feeds ""; stop +
 * resume equals the uninterrupted run bitwise; fine-tuning the pipeline folder with its text
 * encoder; images without captions; the shipped emoji-sd.yaml; config errors. */
#include "datasets/datasets.h"
#include "nn/tokenizer.h"
#include "recipes/recipes.h"
#include "tests/common/check.h"
#include "tests/common/recipe_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[256], sd1[512];

static const char *const captions[8] = {
    "red square", "blue circle", "green square", "yellow circle", "red circle", "blue square",
    "green circle",
    /* longer than the 77-token window: truncated with one warning */
    "a very long caption " /* x 20 below */};

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_t2i_XXXXXX");
    cr_assert(mkdtemp(root));
    snprintf(sd1, sizeof sd1, "%s", fixture_path("pipelines/sd1"));
    char path[512];
    snprintf(path, sizeof path, "%s/data", root);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    snprintf(path, sizeof path, "%s/data/metadata.jsonl", root);
    FILE *meta = fopen(path, "w");
    cr_assert(meta);
    for (int i = 0; i < 8; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(32, 32, 3));
        uint8_t *p = img->data;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                for (int c = 0; c < 3; c++) {
                    bool inside = (i % 2) ? (x - 16) * (x - 16) + (y - 16) * (y - 16) < 100
                                          : (x >= 8 && x < 24 && y >= 8 && y < 24);
                    p[(y * 32 + x) * 3 + c] =
                        (uint8_t)(inside ? (c == i % 3 ? 230 : 40) : (x * 4 + y * 2 + c * 30));
                }
        snprintf(path, sizeof path, "%s/data/%d.png", root, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
        fprintf(meta, "{\"file_name\": \"%d.png\", \"text\": \"", i);
        for (int k = 0; k < (i == 7 ? 20 : 1); k++) fputs(captions[i], meta);
        fputs("\"}\n", meta);
    }
    fclose(meta);
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(recipes_t2i, .init = setup, .fini = teardown);

typedef recipe_run t2i_run;

/* The tiny from-scratch config with output root/<out> (base: fine-tune sd1 instead), then
 * `extra` space-separated overrides. */
static df_status t2i_begin(t2i_run *t, const char *out, bool base, const char *extra) {
    char yaml[4096];
    int k = snprintf(yaml, sizeof yaml,
                     "recipe: text_to_image\ntrain_data_dir: %s/data\noutput_dir: %s/%s\n"
                     "resolution: 32\ntrain_batch_size: 4\ndataloader_num_workers: 1\n"
                     "max_train_steps: 6\nlearning_rate: 1e-3\nlr_scheduler: constant\n"
                     "lr_warmup_steps: 0\ncheckpointing_steps: 3\nnum_validation_images: 2\n"
                     "use_ema: true\nrandom_flip: false\nvalidation_inference_steps: 2\n",
                     root, root, out);
    if (base)
        snprintf(yaml + k, sizeof yaml - (size_t)k, "pretrained_model_name_or_path: %s\n", sd1);
    else
        snprintf(yaml + k, sizeof yaml - (size_t)k,
                 "pretrained_vae: %s/vae\ntokenizer_name: %s/tokenizer\nmodel:\n"
                 "  block_out_channels: [16, 32]\n"
                 "  down_block_types: [CrossAttnDownBlock2D, DownBlock2D]\n"
                 "  up_block_types: [UpBlock2D, CrossAttnUpBlock2D]\n  layers_per_block: 1\n"
                 "  attention_head_dim: 2\n  norm_num_groups: 8\ntext_encoder:\n"
                 "  hidden_size: 16\n  intermediate_size: 32\n  num_hidden_layers: 1\n"
                 "  num_attention_heads: 2\n",
                 sd1, sd1);
    return recipe_run_begin(t, &df_recipe_text_to_image, yaml, extra, NULL, 0);
}

static void t2i_end(t2i_run *t) {
    recipe_run_end(t);
}

static void t2i_train(const char *out, bool base, const char *extra, int64_t stop_after,
                      const char *resume) {
    t2i_run t;
    cr_assert_eq(t2i_begin(&t, out, base, extra), DF_OK, "%s", df_last_error());
    df_train_opts opts = {.stop_after_steps = stop_after, .resume = resume};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    t2i_end(&t);
}

static char *file_of(const char *run, const char *rel, size_t *len) {
    return run_file(root, run, rel, len);
}

static bool same_file(const char *a, const char *b, const char *rel) {
    return run_files_equal(root, a, b, rel);
}

/* The "loss" values of metrics.jsonl, in order (at most max). */
static int losses(const char *run, double *out, int max) {
    return run_losses(root, run, out, max);
}

/* (Call inside a scope: the decoded images are the scope's.) A batch of images first .. first + n - 1 as the loader makes it (center crop, no flip); with
 * pixels false, as the no_pixels loader does (latent cache). caps: NULL for the data's. */
static df_batch *make_batch(int first, int n, bool pixels, const char *const *caps) {
    df_batch *b = calloc(1, sizeof *b);
    b->n = n;
    b->captions = calloc((size_t)n, sizeof *b->captions);
    b->indices = calloc((size_t)n, sizeof *b->indices);
    b->flipped = calloc((size_t)n, sizeof *b->flipped);
    if (pixels) b->pixels = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(n, 3, 32, 32));
    df_transform tr = df_transform_default(32);
    tr.center_crop = true;
    tr.random_flip = false;
    for (int i = 0; i < n; i++) {
        b->indices[i] = first + i;
        b->captions[i] = strdup(caps ? caps[i] : captions[first + i]);
        if (!pixels) continue;
        char path[512];
        snprintf(path, sizeof path, "%s/data/%d.png", root, first + i);
        df_tensor *img;
        cr_assert_eq(df_image_read(path, NULL, &img), DF_OK, "%s", df_last_error());
        df_transform_apply(&tr, img, NULL, df_f32(b->pixels) + (int64_t)i * 3 * 32 * 32);
    }
    return b;
}

static void free_batch(df_batch *b) {
    df_batch_free(b); /* frees b too */
}

/* The recipe's loss on batch b at step `step` (seed 0). */
static float recipe_loss(t2i_run *t, const df_batch *b, int64_t step) {
    df_step_rng rng;
    df_step_rng_init(&rng, 0, 0, step);
    df_tensor *loss;
    const df_batch *const bs[1] = {b};
    cr_assert_eq(t->r.loss(t->r.ctx, bs, &rng, &loss), DF_OK, "%s", df_last_error());
    cr_assert_eq(loss->numel, 1);
    return df_f32(loss)[0];
}

Test(recipes_t2i, loss_is_the_upstream_steps_pieces) {
    df_scope scope = df_scope_begin();
    t2i_run t;
    cr_assert_eq(t2i_begin(&t, "pieces", true,
                           "snr_gamma=5 noise_offset=0.1 proportion_empty_prompts=0.5 "
                           "prediction_type=v_prediction input_perturbation=0.1"),
                 DF_OK, "%s", df_last_error());
    df_batch *b = make_batch(0, 4, true, NULL);
    float got = recipe_loss(&t, b, 7);

    /* the same step by hand, from the base's components (test_t2i_loss.c's path) */
    char dir[1024];
    df_component unet = {0}, vae = {0}, text = {0};
    snprintf(dir, sizeof dir, "%s/unet", sd1);
    cr_assert_eq(df_component_load_frozen(dir, &unet), DF_OK, "%s", df_last_error());
    snprintf(dir, sizeof dir, "%s/vae", sd1);
    cr_assert_eq(df_component_load_frozen(dir, &vae), DF_OK, "%s", df_last_error());
    snprintf(dir, sizeof dir, "%s/text_encoder", sd1);
    cr_assert_eq(df_component_load_frozen(dir, &text), DF_OK, "%s", df_last_error());
    df_clip_tokenizer *tok;
    snprintf(dir, sizeof dir, "%s/tokenizer", sd1);
    cr_assert_eq(df_clip_tokenizer_load(dir, &tok), DF_OK, "%s", df_last_error());
    df_sched_config sc;
    snprintf(dir, sizeof dir, "%s/scheduler/scheduler_config.json", sd1);
    cr_assert_eq(df_sched_config_load(dir, "DDPMScheduler", &sc), DF_OK, "%s", df_last_error());
    sc.prediction_type = DF_PRED_V_PREDICTION;
    df_sched *sched;
    cr_assert_eq(df_sched_new(&sc, &sched), DF_OK, "%s", df_last_error());

    df_step_rng rng;
    df_step_rng_init(&rng, 0, 0, 7);
    bool grad = df_grad_set_enabled(false);
    df_tensor *mean, *logvar;
    df_vae_encode(vae.vae, b->pixels, &mean, &logvar);
    df_tensor *latents =
        df_mul_scalar(df_posterior_sample(mean, logvar, df_posterior_noise(mean, &rng.noise)),
                      vae.vae->config.scaling_factor);
    df_tensor *ids = df_tensor_new(DF_DTYPE_I64, DF_DIMS(4, 77));
    int empty = 0;
    for (int i = 0; i < 4; i++) {
        bool drop = df_philox_uniform(&rng.dropout) < 0.5;
        empty += drop;
        cr_assert_eq(df_clip_tokenizer_call(tok, drop ? "" : captions[i], 77,
                                            (int64_t *)ids->data + i * 77, NULL),
                     DF_OK);
    }
    df_tensor *hidden = df_clip_text_forward(text.clip_text, ids, NULL, NULL);
    df_diffusion_loss_config c = {.prediction = DF_PRED_V_PREDICTION,
                                  .num_train_timesteps = 1000,
                                  .snr_gamma = 5,
                                  .noise_offset = 0.1f,
                                  .input_perturbation = 0.1f,
                                  .min_snr_v_over_snr = true};
    df_diffusion_draw d;
    cr_assert_eq(df_diffusion_draw_sample(&c, sched, latents, &rng, &d), DF_OK, "%s",
                 df_last_error());
    df_tensor *pred = df_unet2d_cond_forward(unet.unet2d_cond, d.noisy, d.timesteps, hidden);
    df_tensor *loss;
    cr_assert_eq(df_diffusion_loss(&c, sched, pred, &d, NULL, NULL, &loss), DF_OK, "%s",
                 df_last_error());
    df_grad_set_enabled(grad);
    cr_expect(empty > 0 && empty < 4, "the draws exercise both branches (%d empty)", empty);
    cr_expect(fabsf(got - df_f32(loss)[0]) <= 1e-5f * fmaxf(1, fabsf(got)),
              "recipe %.8g, by hand %.8g", got, df_f32(loss)[0]);

    df_sched_free(sched);
    df_sched_config_free(&sc);
    df_clip_tokenizer_free(tok);
    df_component_free(&unet);
    df_component_free(&vae);
    df_component_free(&text);
    free_batch(b);
    t2i_end(&t);
    df_scope_end(scope);
}

Test(recipes_t2i, cached_latents_give_the_uncached_loss) {
    df_scope scope = df_scope_begin();
    t2i_run a, c;
    cr_assert_eq(t2i_begin(&a, "uncached", false, "snr_gamma=5"), DF_OK, "%s", df_last_error());
    cr_assert_eq(t2i_begin(&c, "cached", false, "snr_gamma=5 cache_latents=true"), DF_OK, "%s",
                 df_last_error());
    cr_assert(c.r.no_pixels && !a.r.no_pixels);
    for (int first = 0; first < 8; first += 4) {
        df_batch *bp = make_batch(first, 4, true, NULL), *bl = make_batch(first, 4, false, NULL);
        float lu = recipe_loss(&a, bp, 3 + first), lc = recipe_loss(&c, bl, 3 + first);
        cr_expect(fabsf(lu - lc) <= 1e-6f * fmaxf(1, fabsf(lu)), "uncached %.9g, cached %.9g", lu,
                  lc);
        free_batch(bp);
        free_batch(bl);
    }
    t2i_end(&a);
    t2i_end(&c);
    df_scope_end(scope);
}

Test(recipes_t2i, proportion_empty_prompts_one_feeds_empty_captions) {
    df_scope scope = df_scope_begin();
    t2i_run all, none;
    cr_assert_eq(t2i_begin(&all, "all", false, "proportion_empty_prompts=1"), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(t2i_begin(&none, "none", false, NULL), DF_OK, "%s", df_last_error());
    static const char *const empty[4] = {"", "", "", ""};
    df_batch *b = make_batch(0, 4, true, NULL), *e = make_batch(0, 4, true, empty);
    float l_all = recipe_loss(&all, b, 2), l_empty = recipe_loss(&none, e, 2),
          l_caps = recipe_loss(&none, b, 2);
    cr_expect_eq(l_all, l_empty, "every caption became \"\": %.9g vs %.9g", l_all, l_empty);
    cr_expect_neq(l_caps, l_empty, "captions matter");
    free_batch(b);
    free_batch(e);
    t2i_end(&all);
    t2i_end(&none);
    df_scope_end(scope);
}

Test(recipes_t2i, trains_exports_and_generates, .timeout = 600) {
    t2i_train("fall", false,
              "max_train_steps=30 checkpointing_steps=0 learning_rate=3e-3 use_ema=false "
              "validation_prompts=[red_square,blue_circle]",
              0, NULL);
    double l[64];
    int n = losses("fall", l, 64);
    cr_assert_eq(n, 30);
    double first = 0, last = 0;
    for (int i = 0; i < 6; i++) first += l[i], last += l[24 + i];
    cr_expect_lt(last, 0.8 * first, "loss did not fall: %.4f -> %.4f", first / 6, last / 6);

    /* the validation grid: a row a prompt, 2 images each */
    char path[1024];
    snprintf(path, sizeof path, "%s/fall/samples/step-30.png", root);
    df_tensor *grid;
    cr_assert_eq(df_image_read(path, NULL, &grid), DF_OK, "%s", df_last_error());
    cr_expect(grid->shape[0] >= 64 && grid->shape[0] < grid->shape[1] + 16, "grid %lldx%lld",
              (long long)grid->shape[0], (long long)grid->shape[1]);
    df_tensor_free(grid);

    /* the export: a pipeline folder; the UNet config reads back as written */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fall", root);
    df_sd_pipeline p;
    cr_assert_eq(df_sd_pipeline_load(dir, NULL, &p), DF_OK, "%s", df_last_error());
    cr_assert(!p.has_safety_checker);
    const df_unet2d_cond_config *uc = &p.unet.unet2d_cond->config;
    cr_expect_eq(uc->n_blocks, 2);
    cr_expect_eq(uc->block_out_channels[1], 32);
    cr_expect_eq(uc->num_attention_heads[0], 2);
    cr_expect_eq(uc->cross_attention_dim[0], 16);
    cr_expect_eq(uc->sample_size, 4);
    cr_expect_eq(p.text_encoder.clip_text->config.hidden_size, 16);
    cr_expect_eq(p.text_encoder.clip_text->config.vocab_size, 49408);
    cr_expect_eq(p.sched_config.kind, DF_SCHED_PNDM);
    cr_expect(p.sched_config.skip_prk_steps && p.sched_config.steps_offset == 1);
    df_scope scope = df_scope_begin();
    df_tensor *cond, *uncond;
    cr_assert_eq(df_sd_encode_prompt(&p, "red square", NULL, 0, true, &cond, &uncond), DF_OK);
    df_sd_request q = {.cond = cond,
                       .uncond = uncond,
                       .steps = 3,
                       .guidance_scale = 2,
                       .num_images = 1,
                       .seed = 1,
                       .strength = -1};
    df_sd_result res;
    cr_assert_eq(df_sd_generate(&p, &q, &res), DF_OK, "%s", df_last_error());
    cr_expect_eq(res.image->shape[2], 32, "the UNet's sample_size times 8");
    df_tensor_free(res.image);
    df_tensor_free(res.latents);
    df_scope_end(scope);
    df_sd_pipeline_free(&p);
    /* write it again: the same config.json (a stable round trip) */
    df_unet2d_cond_config back;
    snprintf(path, sizeof path, "%s/fall/unet/config.json", root);
    cr_assert_eq(df_unet2d_cond_config_load(path, &back), DF_OK, "%s", df_last_error());
    snprintf(path, sizeof path, "%s/fall/again.json", root);
    cr_assert_eq(df_unet2d_cond_config_save(&back, path), DF_OK);
    size_t la, lb;
    char *x = file_of("fall", "unet/config.json", &la), *y = file_of("fall", "again.json", &lb);
    cr_expect(la == lb && memcmp(x, y, la) == 0, "config.json does not read back the same");
    free(x);
    free(y);

    /* `diffusion generate` takes the folder */
    char cmd[2048], out[4096];
    snprintf(cmd, sizeof cmd, "%s generate %s/fall --prompt 'blue circle' --steps 2 --out %s/g.png",
             DF_CLI, root, root);
    cr_expect_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    snprintf(path, sizeof path, "%s/g.png", root);
    cr_expect_eq(access(path, F_OK), 0, "no image");
}

Test(recipes_t2i, the_text_encoder_trains_only_when_asked, .timeout = 300) {
    /* a fresh recipe's export: the initial weights */
    t2i_run t;
    cr_assert_eq(t2i_begin(&t, "init", false, NULL), DF_OK, "%s", df_last_error());
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/init", root);
    cr_assert_eq(df_mkdirs(dir), DF_OK);
    cr_assert_eq(t.r.export_model(t.r.ctx, dir), DF_OK, "%s", df_last_error());
    cr_expect_eq(t.r.n_groups, 0);
    t2i_end(&t);

    t2i_train("frozen", false, "max_train_steps=3 checkpointing_steps=0 use_ema=false", 0, NULL);
    cr_expect(same_file("init", "frozen", "text_encoder/model.safetensors"),
              "a frozen text encoder changed");
    cr_expect(same_file("init", "frozen", "vae/diffusion_pytorch_model.safetensors"));
    cr_expect(!same_file("init", "frozen", "unet/diffusion_pytorch_model.safetensors"));

    cr_assert_eq(t2i_begin(&t, "joined", false, "train_text_encoder=true text_encoder_lr=5e-4"),
                 DF_OK, "%s", df_last_error());
    cr_expect_eq(t.r.n_groups, 2);
    cr_expect_str_eq(t.r.groups[1].glob, "text_encoder.*");
    cr_expect_eq(t.r.groups[1].lr, 5e-4);
    int n_text = 0;
    for (int i = 0; i < t.r.params->n; i++) {
        cr_expect(t.r.params->items[i].trainable, "%s", t.r.params->items[i].name);
        n_text += strncmp(t.r.params->items[i].name, "text_encoder.", 13) == 0;
    }
    cr_expect_gt(n_text, 0);
    t2i_end(&t);
    t2i_train("joined", false,
              "max_train_steps=3 checkpointing_steps=0 use_ema=false train_text_encoder=true", 0,
              NULL);
    cr_expect(!same_file("init", "joined", "text_encoder/model.safetensors"),
              "the text encoder did not train");
    cr_expect(same_file("init", "joined", "vae/diffusion_pytorch_model.safetensors"));
}

Test(recipes_t2i, stop_and_resume_is_exact, .timeout = 300) {
    const char *extra = "train_text_encoder=true cache_latents=true proportion_empty_prompts=0.3";
    t2i_train("whole", false, extra, 0, NULL);
    t2i_train("split", false, extra, 3, NULL);
    t2i_train("split", false, extra, 0, "latest");
    static const char *const files[] = {"checkpoint-6/training/model.safetensors",
                                        "checkpoint-6/training/ema.safetensors",
                                        "checkpoint-6/training/optimizer.safetensors",
                                        "unet/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors",
                                        "unet/config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        cr_expect(same_file("whole", "split", files[i]), "%s differs", files[i]);
    double a[16], b[16];
    cr_assert_eq(losses("whole", a, 16), 6);
    cr_assert_eq(losses("split", b, 16), 6);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(a[i], b[i], "step %d loss %g vs %g", i + 1, a[i], b[i]);
}

/* gradient_checkpointing=true (the UNet's resnets and transformer blocks recomputed in backward;
 * the text encoder trains, so the context reaching them has history) gives the plain run's
 * files bit for bit, also stopped and resumed with the key on. */
Test(recipes_t2i, gradient_checkpointing_is_exact_and_resumes, .timeout = 300) {
    const char *plain = "train_text_encoder=true max_train_steps=4";
    const char *ck = "train_text_encoder=true max_train_steps=4 gradient_checkpointing=true";
    t2i_train("ck_plain", false, plain, 0, NULL);
    t2i_train("ck_on", false, ck, 2, NULL);
    t2i_train("ck_on", false, ck, 0, "latest");
    static const char *const files[] = {
        "checkpoint-4/training/model.safetensors", "checkpoint-4/training/optimizer.safetensors",
        "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        cr_expect(same_file("ck_plain", "ck_on", files[i]), "%s differs", files[i]);
    double a[16], b[16];
    cr_assert_eq(losses("ck_plain", a, 16), 4);
    cr_assert_eq(losses("ck_on", b, 16), 4);
    for (int i = 0; i < 4; i++)
        cr_expect_eq(a[i], b[i], "step %d loss %g vs %g", i + 1, a[i], b[i]);
}

Test(recipes_t2i, config_errors_name_the_key) {
    t2i_run t;
    expect_status(t2i_begin(&t, "bad1", false, "pretrained_vae="), DF_ERR_INVALID,
                  "pretrained_vae");
    expect_status(t2i_begin(&t, "bad2", false, "resolution=36"), DF_ERR_INVALID, "not divisible");
    expect_status(t2i_begin(&t, "bad3", false, "model.attention_head_dim=3"), DF_ERR_INVALID,
                  "model.attention_head_dim");
    expect_status(t2i_begin(&t, "bad4", false, "validation_scheduler=NoSuchScheduler"),
                  DF_ERR_INVALID, "validation_scheduler");
    expect_status(t2i_begin(&t, "bad5", false, "model.cross_attention_dim=24"), DF_ERR_INVALID,
                  "model.cross_attention_dim");
    expect_status(t2i_begin(&t, "bad6", false, "text_encoder.num_attention_heads=3"),
                  DF_ERR_INVALID, "text_encoder.num_attention_heads");
    char extra[1024];
    snprintf(extra, sizeof extra, "pretrained_model_name_or_path=%s/nowhere", root);
    expect_status(t2i_begin(&t, "bad7", false, extra), DF_ERR_NOTFOUND, "nowhere");
    snprintf(extra, sizeof extra, "pretrained_vae=%s/unet", sd1);
    expect_status(t2i_begin(&t, "bad8", false, extra), DF_ERR_INVALID, "not an AutoencoderKL");
}

Test(recipes_t2i, the_emoji_sd_config_is_valid) {
    int n;
    df_cfg_field *schema = df_recipe_schema(&df_recipe_text_to_image, &n);
    df_config cfg;
    df_config_init(&cfg, schema, n);
    cr_assert_eq(df_config_load_yaml(&cfg, DF_SOURCE_DIR "/recipes/configs/emoji-sd.yaml"), DF_OK,
                 "%s", df_last_error());
    cr_expect_str_eq(df_config_str(&cfg, "recipe"), "text_to_image");
    const char *prompts[DF_CFG_MAX_LIST];
    cr_expect_eq(df_config_str_list(&cfg, "validation_prompts", prompts, DF_CFG_MAX_LIST), 6);
    cr_expect(df_config_bool(&cfg, "train_text_encoder") && df_config_bool(&cfg, "cache_latents"));
    df_config_free(&cfg);
    free(schema);
}

Test(recipes_t2i, fine_tunes_a_pipeline_folder_with_its_text_encoder, .timeout = 300) {
    t2i_train("tune", true,
              "max_train_steps=2 checkpointing_steps=0 train_text_encoder=true use_ema=false", 0,
              NULL);
    double l[8];
    cr_assert_eq(losses("tune", l, 8), 2);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tune", root);
    df_sd_pipeline p;
    cr_assert_eq(df_sd_pipeline_load(dir, NULL, &p), DF_OK, "%s", df_last_error());
    cr_expect_eq(p.unet.unet2d_cond->config.cross_attention_dim[0], 32);
    cr_expect_eq(p.text_encoder.clip_text->config.hidden_size, 32);
    df_sd_pipeline_free(&p);
}

Test(recipes_t2i, images_without_captions_are_an_error) {
    t2i_run t;
    expect_status(t2i_begin(&t, "nocap", false, "caption_column=nope"), DF_ERR_FORMAT,
                  "8 of 8 images have no caption");
}

/* Validation images go through the base folder's safety checker: a copy of sd1 (symbolic links)
 * with the checker of tests/fixtures/models/safety_checker_tiny whose thresholds flag every
 * image gives an all-black grid. */
Test(recipes_t2i, validation_goes_through_the_base_checker, .timeout = 300) {
    char base[600], path[800], src[800];
    snprintf(base, sizeof base, "%s/base", root);
    cr_assert_eq(df_mkdirs(base), DF_OK);
    const char *parts[] = {"unet",      "vae",       "text_encoder",
                           "tokenizer", "scheduler", "model_index.json"};
    for (int i = 0; i < 6; i++) {
        snprintf(src, sizeof src, "%s/%s", sd1, parts[i]);
        snprintf(path, sizeof path, "%s/%s", base, parts[i]);
        cr_assert_eq(symlink(src, path), 0);
    }
    snprintf(path, sizeof path, "%s/feature_extractor", base);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    snprintf(path, sizeof path, "%s/feature_extractor/preprocessor_config.json", base);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs("{\"size\": 32, \"crop_size\": 32}\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/safety_checker", base);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    size_t n;
    char *cfg = read_whole_file(fixture_path("models/safety_checker_tiny/config.json"), &n);
    snprintf(path, sizeof path, "%s/safety_checker/config.json", base);
    f = fopen(path, "w");
    cr_assert(f && cfg);
    fputs(cfg, f);
    fclose(f);
    free(cfg);
    df_st_file *w;
    cr_assert_eq(df_st_open(fixture_path("models/safety_checker_tiny/model.safetensors"), &w),
                 DF_OK);
    int k = df_st_count(w);
    df_scope s = df_scope_begin();
    const char **nm = calloc((size_t)k, sizeof *nm);
    const df_tensor **tv = calloc((size_t)k, sizeof *tv);
    for (int i = 0; i < k; i++) {
        nm[i] = df_st_info_at(w, i)->name;
        df_tensor *t;
        cr_assert_eq(df_st_read(w, nm[i], DF_DTYPE_F32, &t), DF_OK);
        if (strcmp(nm[i], "concept_embeds_weights") == 0) df_tensor_fill_(t, -1);
        tv[i] = t;
    }
    snprintf(path, sizeof path, "%s/safety_checker/model.safetensors", base);
    cr_assert_eq(df_st_save(path, k, nm, tv, 0, NULL, NULL), DF_OK, "%s", df_last_error());
    df_scope_end(s);
    df_st_close(w);
    free(nm);
    free(tv);
    t2i_run t;
    char extra[900];
    snprintf(extra, sizeof extra, "pretrained_model_name_or_path=%s validation_prompts=[red]",
             base);
    cr_assert_eq(t2i_begin(&t, "checked", true, extra), DF_OK, "%s", df_last_error());
    s = df_scope_begin();
    df_tensor *grid;
    cr_assert_eq(t.r.validate(t.r.ctx, 0, &grid), DF_OK, "%s", df_last_error());
    int64_t lit = 0;
    for (int64_t i = 0; i < grid->numel; i++) lit += ((const uint8_t *)grid->data)[i] != 0;
    cr_expect_eq(lit, 0, "%lld pixels of flagged validation images are not black", (long long)lit);
    df_scope_end(s);
    t2i_end(&t);
}
