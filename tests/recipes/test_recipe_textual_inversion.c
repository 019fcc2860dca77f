/* test_recipe_textual_inversion.c — the `textual_inversion` recipe on the tiny SD 1.x pipeline
 * of tests/fixtures/pipelines/sd1 with three 32x32 images: one training step of the new rows
 * through our modules equals diffusers v0.21.4's textual_inversion.py step run by the real
 * upstream code (tests/fixtures/ti/step.safetensors from tests/ref/gen_textual_inversion.py:
 * the loss, the new rows' gradient and the rows after AdamW and the script's restore, within
 * 1e-5), with the recipe's initial rows equal to the script's; training changes only the new
 * rows, checked after every step (the frozen token table, the UNet and the text encoder bitwise
 * as loaded); stop + resume is bitwise; the export is a learned_embeds.safetensors that
 * `diffusion generate --embedding` loads; bad input (an existing placeholder token, a
 * multi-token initializer, missing keys) is a one-line error. */
#include "datasets/datasets.h"
#include "nn/embedding_file.h"
#include "nn/tokenizer.h"
#include "optim/optim.h"
#include "recipes/recipes.h"
#include "tests/common/check.h"
#include "tests/common/recipe_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STEP "ti/step.safetensors"

static char root[256], sd1[512];

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_ti_XXXXXX");
    cr_assert(mkdtemp(root));
    snprintf(sd1, sizeof sd1, "%s", fixture_path("pipelines/sd1"));
    char path[512];
    snprintf(path, sizeof path, "%s/data", root);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    for (int i = 0; i < 3; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(32, 32, 3));
        uint8_t *p = img->data;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                for (int c = 0; c < 3; c++)
                    p[(y * 32 + x) * 3 + c] =
                        (uint8_t)(((x / 4 + y / 4 + i) % 2) ? 200 - c * 50 : 30 + c * 40);
        snprintf(path, sizeof path, "%s/data/%d.png", root, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
    }
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(recipes_ti, .init = setup, .fini = teardown);

static df_status ti_begin(recipe_run *t, const char *out, const char *extra) {
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "recipe: textual_inversion\npretrained_model_name_or_path: %s\n"
             "train_data_dir: %s/data\noutput_dir: %s/%s\nplaceholder_token: <emo>\n"
             "num_vectors: 2\ninitializer_token: face\nresolution: 32\ntrain_batch_size: 2\n"
             "dataloader_num_workers: 1\nmax_train_steps: 4\nlearning_rate: 5e-3\n"
             "adam_weight_decay: 1e-2\nlr_scheduler: constant\nlr_warmup_steps: 0\n"
             "checkpointing_steps: 2\nrepeats: 2\nvalidation_inference_steps: 2\n"
             "use_ema: false\n",
             sd1, root, root, out);
    return recipe_run_begin(t, &df_recipe_textual_inversion, yaml, extra, NULL, 0);
}

/* The step of textual_inversion.py by our modules: the rows' gradient and their AdamW update
 * equal the script's; the recipe starts from the script's rows. */
Test(recipes_ti, step_matches_textual_inversion_py, .timeout = 120) {
    df_scope scope = df_scope_begin();
    /* the recipe's initial rows: the initializer's embedding, as the script's */
    recipe_run r;
    cr_assert_eq(ti_begin(&r, "init", NULL), DF_OK, "%s", df_last_error());
    df_tensor *vec = df_params_find(r.r.params, "textual_inversion.vectors");
    cr_assert(vec && vec->shape[0] == 2 && vec->shape[1] == 32);
    check_close("rows_init", vec, fixture_tensor(STEP, "rows_init"), 0, 0);
    recipe_run_end(&r);

    char dir[1024];
    df_component unet = {0}, text = {0};
    snprintf(dir, sizeof dir, "%s/unet", sd1);
    cr_assert_eq(df_component_load_frozen(dir, &unet), DF_OK, "%s", df_last_error());
    snprintf(dir, sizeof dir, "%s/text_encoder", sd1);
    cr_assert_eq(df_component_load_frozen(dir, &text), DF_OK, "%s", df_last_error());
    df_clip_tokenizer *tok;
    snprintf(dir, sizeof dir, "%s/tokenizer", sd1);
    cr_assert_eq(df_clip_tokenizer_load(dir, &tok), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_clip_tokenizer_add_token(tok, "<emo>", NULL), DF_OK);
    cr_assert_eq(df_clip_tokenizer_add_token(tok, "<emo>_1", NULL), DF_OK);
    df_sched_config sc;
    snprintf(dir, sizeof dir, "%s/scheduler/scheduler_config.json", sd1);
    cr_assert_eq(df_sched_config_load(dir, "DDPMScheduler", &sc), DF_OK, "%s", df_last_error());
    df_sched *sched;
    cr_assert_eq(df_sched_new(&sc, &sched), DF_OK, "%s", df_last_error());

    /* the captions as the recipe writes them tokenize to the script's ids */
    static const char *const texts[2] = {"a photo of a <emo> <emo>_1",
                                         "a painting in the style of <emo> <emo>_1"};
    df_tensor *ids = df_tensor_new(DF_DTYPE_I64, DF_DIMS(2, 77));
    for (int i = 0; i < 2; i++)
        cr_assert_eq(df_clip_tokenizer_call(tok, texts[i], 77, (int64_t *)ids->data + i * 77, NULL),
                     DF_OK);
    cr_expect_eq(memcmp(ids->data, fixture_tensor(STEP, "input_ids")->data, 2 * 77 * 8), 0);

    df_tensor *rows = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(2, 32));
    memcpy(df_f32(rows), df_f32(fixture_tensor(STEP, "rows_init")), 64 * sizeof(float));
    rows->requires_grad = true;
    text.clip_text->added_embedding = rows;
    df_tensor *hidden = df_clip_text_forward(text.clip_text, ids, NULL, NULL);
    df_diffusion_loss_config c = {.prediction = DF_PRED_EPSILON, .num_train_timesteps = 1000};
    df_tensor *t = fixture_tensor(STEP, "timesteps");
    df_diffusion_draw d;
    cr_assert_eq(df_diffusion_prepare(&c, sched, fixture_tensor(STEP, "latents"),
                                      fixture_tensor(STEP, "noise"), NULL, t, &d),
                 DF_OK, "%s", df_last_error());
    df_tensor *pred = df_unet2d_cond_forward(unet.unet2d_cond, d.noisy, t, hidden);
    df_tensor *loss;
    cr_assert_eq(df_diffusion_loss(&c, sched, pred, &d, NULL, NULL, &loss), DF_OK);
    check_close_f32("loss", df_f32(loss), df_f32(fixture_tensor(STEP, "loss")), 1, 0, 1e-5);
    cr_assert_eq(df_backward(loss), DF_OK, "%s", df_last_error());
    cr_assert(rows->grad, "no gradient reached the new rows");
    check_close("grad_rows", rows->grad, fixture_tensor(STEP, "grad_rows"), 1e-7, 1e-5);

    /* AdamW on the rows alone is the script's AdamW on the whole table, then its restore */
    df_optim_hparams h = df_optim_hparams_default(DF_OPTIM_ADAMW);
    h.lr = 5e-3;
    h.weight_decay = 1e-2;
    df_tensor *ps[1] = {rows};
    df_param_group g = {.params = ps, .n = 1, .h = h};
    df_optim *o;
    cr_assert_eq(df_optim_new(DF_OPTIM_ADAMW, &g, 1, &o), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_optim_step(o), DF_OK);
    check_close("rows_after", rows, fixture_tensor(STEP, "rows_after"), 1e-7, 1e-5);
    cr_expect_eq(df_f32(fixture_tensor(STEP, "others_changed"))[0], 0.0f);
    df_optim_free(o);

    text.clip_text->added_embedding = NULL;
    df_tensor_free(rows);
    df_sched_free(sched);
    df_sched_config_free(&sc);
    df_clip_tokenizer_free(tok);
    df_component_free(&unet);
    df_component_free(&text);
    df_scope_end(scope);
}

/* The recipe's loss is the step's pieces on its own draws: the latents' posterior noise, one
 * style template a caption (uniform draw x 19), the empty-prompt draws, the diffusion draw; its
 * gradient reaches the new rows. */
Test(recipes_ti, recipe_loss_is_the_steps_pieces, .timeout = 120) {
    df_scope scope = df_scope_begin();
    recipe_run r;
    cr_assert_eq(ti_begin(&r, "pieces", "learnable_property=style proportion_empty_prompts=0.5"),
                 DF_OK, "%s", df_last_error());
    df_tensor *vec = df_params_find(r.r.params, "textual_inversion.vectors");
    df_batch *b = calloc(1, sizeof *b);
    b->n = 2;
    b->captions = calloc(2, sizeof *b->captions);
    b->indices = calloc(2, sizeof *b->indices);
    b->flipped = calloc(2, sizeof *b->flipped);
    b->pixels = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(2, 3, 32, 32));
    df_transform tr = df_transform_default(32);
    tr.center_crop = true;
    tr.random_flip = false;
    for (int i = 0; i < 2; i++) {
        b->captions[i] = strdup("");
        char path[600];
        snprintf(path, sizeof path, "%s/data/%d.png", root, i);
        df_tensor *img;
        cr_assert_eq(df_image_read(path, NULL, &img), DF_OK, "%s", df_last_error());
        df_transform_apply(&tr, img, NULL, df_f32(b->pixels) + (int64_t)i * 3 * 32 * 32);
    }
    df_step_rng rng;
    df_step_rng_init(&rng, 0, 0, 3);
    df_tensor *loss;
    const df_batch *bs[1] = {b};
    vec->requires_grad = true;
    cr_assert_eq(r.r.loss(r.r.ctx, bs, &rng, &loss), DF_OK, "%s", df_last_error());
    float got = df_f32(loss)[0];
    cr_assert_eq(df_backward(loss), DF_OK, "%s", df_last_error());
    cr_assert(vec->grad, "no gradient reached the rows");
    double g = 0;
    for (int64_t i = 0; i < vec->grad->numel; i++) g += fabs(df_f32(vec->grad)[i]);
    cr_expect_gt(g, 0);

    /* by hand */
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
    cr_assert_eq(df_clip_tokenizer_add_token(tok, "<emo>", NULL), DF_OK);
    cr_assert_eq(df_clip_tokenizer_add_token(tok, "<emo>_1", NULL), DF_OK);
    df_sched_config sc;
    snprintf(dir, sizeof dir, "%s/scheduler/scheduler_config.json", sd1);
    cr_assert_eq(df_sched_config_load(dir, "DDPMScheduler", &sc), DF_OK, "%s", df_last_error());
    df_sched *sched;
    cr_assert_eq(df_sched_new(&sc, &sched), DF_OK, "%s", df_last_error());
    df_step_rng_init(&rng, 0, 0, 3);
    bool grad = df_grad_set_enabled(false);
    df_tensor *mean, *logvar;
    df_vae_encode(vae.vae, b->pixels, &mean, &logvar);
    df_tensor *latents =
        df_mul_scalar(df_posterior_sample(mean, logvar, df_posterior_noise(mean, &rng.noise)),
                      vae.vae->config.scaling_factor);
    static const char *const style[19] = {
        "a painting in the style of ",         "a rendering in the style of ",
        "a cropped painting in the style of ", "the painting in the style of ",
        "a clean painting in the style of ",   "a dirty painting in the style of ",
        "a dark painting in the style of ",    "a picture in the style of ",
        "a cool painting in the style of ",    "a close-up painting in the style of ",
        "a bright painting in the style of ",  "a cropped painting in the style of ",
        "a good painting in the style of ",    "a close-up painting in the style of ",
        "a rendition in the style of ",        "a nice painting in the style of ",
        "a small painting in the style of ",   "a weird painting in the style of ",
        "a large painting in the style of "};
    char caps[2][256];
    for (int i = 0; i < 2; i++) {
        int k = (int)(df_philox_uniform(&rng.dropout) * 19);
        snprintf(caps[i], sizeof caps[i], "%s<emo> <emo>_1", style[k]);
    }
    df_tensor *ids = df_tensor_new(DF_DTYPE_I64, DF_DIMS(2, 77));
    for (int i = 0; i < 2; i++) {
        bool drop = df_philox_uniform(&rng.dropout) < 0.5;
        cr_assert_eq(df_clip_tokenizer_call(tok, drop ? "" : caps[i], 77,
                                            (int64_t *)ids->data + i * 77, NULL),
                     DF_OK);
    }
    text.clip_text->added_embedding = vec;
    df_tensor *hidden = df_clip_text_forward(text.clip_text, ids, NULL, NULL);
    df_diffusion_loss_config c = {.prediction = sc.prediction_type,
                                  .num_train_timesteps = sc.num_train_timesteps,
                                  .min_snr_v_over_snr = true};
    df_diffusion_draw d;
    cr_assert_eq(df_diffusion_draw_sample(&c, sched, latents, &rng, &d), DF_OK, "%s",
                 df_last_error());
    df_tensor *pred = df_unet2d_cond_forward(unet.unet2d_cond, d.noisy, d.timesteps, hidden);
    df_tensor *want;
    cr_assert_eq(df_diffusion_loss(&c, sched, pred, &d, NULL, NULL, &want), DF_OK);
    df_grad_set_enabled(grad);
    cr_expect(fabsf(got - df_f32(want)[0]) <= 1e-5f * fmaxf(1, fabsf(got)),
              "recipe %.8g, by hand %.8g", got, df_f32(want)[0]);

    text.clip_text->added_embedding = NULL;
    df_sched_free(sched);
    df_sched_config_free(&sc);
    df_clip_tokenizer_free(tok);
    df_component_free(&unet);
    df_component_free(&vae);
    df_component_free(&text);
    df_batch_free(b);
    recipe_run_end(&r);
    df_scope_end(scope);
}

static uint32_t params_crc(const df_params *p, const char *prefix, int *count) {
    uint32_t crc = 0;
    *count = 0;
    for (int i = 0; i < p->n; i++) {
        if (strncmp(p->items[i].name, prefix, strlen(prefix)) != 0) continue;
        const df_tensor *x = p->items[i].tensor;
        crc = df_crc32c_update(crc, df_f32(x), (size_t)x->numel * sizeof(float));
        (*count)++;
    }
    return crc;
}

/* Training in steps of one (stop, then resume): after every step only the new rows differ from
 * the start; the UNet and the text encoder (its token table included) are bitwise as loaded. */
Test(recipes_ti, only_the_new_rows_train_checked_every_step, .timeout = 600) {
    recipe_run r;
    cr_assert_eq(ti_begin(&r, "every", NULL), DF_OK, "%s", df_last_error());
    cr_assert_eq(r.r.repeats, 2);
    int nu, nt;
    uint32_t unet0 = params_crc(r.r.params, "unet.", &nu);
    uint32_t text0 = params_crc(r.r.params, "text_encoder.", &nt);
    cr_assert(nu > 10 && nt > 10);
    float prev[64];
    memcpy(prev, df_f32(df_params_find(r.r.params, "textual_inversion.vectors")), sizeof prev);
    recipe_run_end(&r);
    for (int step = 1; step <= 4; step++) {
        cr_assert_eq(ti_begin(&r, "every", NULL), DF_OK, "%s", df_last_error());
        df_train_opts opts = {.stop_after_steps = step < 4 ? step : 0,
                              .resume = step > 1 ? "latest" : NULL};
        cr_assert_eq(df_train_run(&r.cfg, &r.r, &opts), DF_OK, "%s", df_last_error());
        int a, b;
        /* the frozen tensors keep their own storage (the trainable ones are the trainer's) */
        cr_expect_eq(params_crc(r.r.params, "unet.", &a), unet0, "the UNet changed at step %d",
                     step);
        cr_expect_eq(params_crc(r.r.params, "text_encoder.", &b), text0,
                     "the text encoder changed at step %d", step);
        cr_expect(a == nu && b == nt);
        recipe_run_end(&r);
        /* the step's checkpoint holds the trained rows (the only trainable tensor) */
        char path[600];
        snprintf(path, sizeof path, "%s/every/checkpoint-%d/training/model.safetensors", root,
                 step);
        df_st_file *f;
        cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
        cr_expect_eq(df_st_count(f), 1);
        df_tensor *v;
        cr_assert_eq(df_st_read(f, "textual_inversion.vectors", DF_DTYPE_F32, &v), DF_OK, "%s",
                     df_last_error());
        df_st_close(f);
        cr_expect_neq(memcmp(df_f32(v), prev, sizeof prev), 0, "the rows did not train at step %d",
                      step);
        memcpy(prev, df_f32(v), sizeof prev);
        df_tensor_free(v);
    }
    /* the export: the script's file, which generate loads */
    char path[600];
    snprintf(path, sizeof path, "%s/every/learned_embeds.safetensors", root);
    df_embed e;
    cr_assert_eq(df_embed_read(path, &e), DF_OK, "%s", df_last_error());
    cr_expect_str_eq(e.token, "<emo>");
    cr_expect(e.vectors->shape[0] == 2 && e.vectors->shape[1] == 32);
    cr_expect_eq(memcmp(df_f32(e.vectors), prev, sizeof prev), 0, "the export is not the rows");
    df_embed_free(&e);
    char cmd[2048], out[4096];
    snprintf(cmd, sizeof cmd,
             "%s generate %s --embedding %s --prompt 'a photo of a <emo>' --steps 2 --out %s/g.png",
             DF_CLI, sd1, path, root);
    cr_expect_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "2 vector(s) as '<emo>'") != NULL, "%s", out);
}

Test(recipes_ti, stop_and_resume_is_exact, .timeout = 600) {
    const char *extra = "learnable_property=style validation_prompts=[a_<emo>]";
    recipe_run r;
    cr_assert_eq(ti_begin(&r, "whole", extra), DF_OK, "%s", df_last_error());
    df_train_opts opts = {0};
    cr_assert_eq(df_train_run(&r.cfg, &r.r, &opts), DF_OK, "%s", df_last_error());
    recipe_run_end(&r);
    cr_assert_eq(ti_begin(&r, "split", extra), DF_OK, "%s", df_last_error());
    opts.stop_after_steps = 3;
    cr_assert_eq(df_train_run(&r.cfg, &r.r, &opts), DF_OK, "%s", df_last_error());
    recipe_run_end(&r);
    cr_assert_eq(ti_begin(&r, "split", extra), DF_OK, "%s", df_last_error());
    opts = (df_train_opts){.resume = "latest"};
    cr_assert_eq(df_train_run(&r.cfg, &r.r, &opts), DF_OK, "%s", df_last_error());
    recipe_run_end(&r);
    static const char *const files[] = {"checkpoint-4/training/model.safetensors",
                                        "checkpoint-4/training/optimizer.safetensors",
                                        "learned_embeds.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        cr_expect(run_files_equal(root, "whole", "split", files[i]), "%s differs", files[i]);
    double a[8], b[8];
    cr_assert_eq(run_losses(root, "whole", a, 8), 4);
    cr_assert_eq(run_losses(root, "split", b, 8), 4);
    for (int i = 0; i < 4; i++) cr_expect_eq(a[i], b[i], "step %d", i + 1);
    char path[600];
    snprintf(path, sizeof path, "%s/whole/samples/step-4.png", root);
    cr_expect_eq(access(path, F_OK), 0, "no validation grid");
}

Test(recipes_ti, bad_input_is_a_one_line_error) {
    recipe_run r;
    expect_status(ti_begin(&r, "b1", "placeholder_token=face"), DF_ERR_INVALID,
                  "'face' is already in the tokenizer");
    expect_status(ti_begin(&r, "b2", "initializer_token=a_red_face"), DF_ERR_INVALID,
                  "it must be one token");
    cr_expect(strchr(df_last_error(), '\n') == NULL);
    expect_status(ti_begin(&r, "b3", "initializer_token="), DF_ERR_INVALID, "initializer_token");
    expect_status(ti_begin(&r, "b4", "placeholder_token="), DF_ERR_INVALID, "placeholder_token");
    expect_status(ti_begin(&r, "b5", "train_text_encoder=true"), DF_ERR_INVALID,
                  "train_text_encoder");
    expect_status(ti_begin(&r, "b6", "pretrained_model_name_or_path="), DF_ERR_INVALID,
                  "pretrained_model_name_or_path");
}

/* recipes/configs/emoji-ti.yaml builds on the tiny pipeline (the base and data overridden). */
Test(recipes_ti, the_emoji_ti_config_builds) {
    FILE *f = fopen(DF_SOURCE_DIR "/recipes/configs/emoji-ti.yaml", "rb");
    cr_assert(f);
    static char yaml[8192];
    size_t n = fread(yaml, 1, sizeof yaml - 1, f);
    fclose(f);
    yaml[n] = '\0';
    char extra[2048];
    snprintf(extra, sizeof extra,
             "pretrained_model_name_or_path=%s train_data_dir=%s/data output_dir=%s/cfg "
             "resolution=32",
             sd1, root, root);
    recipe_run r;
    cr_assert_eq(recipe_run_begin(&r, &df_recipe_textual_inversion, yaml, extra, NULL, 0), DF_OK,
                 "%s", df_last_error());
    cr_expect_str_eq(df_config_str(&r.cfg, "placeholder_token"), "<twemoji>");
    cr_expect_str_eq(df_config_str(&r.cfg, "learnable_property"), "style");
    df_tensor *v = df_params_find(r.r.params, "textual_inversion.vectors");
    cr_expect(v && v->shape[0] == 2);
    recipe_run_end(&r);
}
