/* test_recipe_controlnet.c — the `controlnet` recipe on the tiny SD 1.x pipeline of
 * tests/fixtures/pipelines/sd1 (frozen) and eight generated 32x32 RGBA shapes with captions and
 * a conditioning_image column: a ControlNet made from the UNet leaves the UNet's prediction as
 * it is, so its first loss is text_to_image's on the same batch and draws; only the ControlNet
 * trains (the UNet's weights do not move); the run exports a ControlNetModel folder that
 * df_component_load and `diffusion generate --controlnet` take, with a validation grid of the
 * control images; stop + resume equals the uninterrupted run bitwise; the canny and silhouette
 * generators train; bad input: a conditioning column pointing at a missing file, an image
 * without one, a ControlNet for another UNet, a random crop, silhouettes of images without
 * alpha, conditioning widths that miss the latents' side. */
#include "datasets/datasets.h"
#include "nn/controlnet.h"
#include "recipes/recipes.h"
#include "tests/common/check.h"
#include "tests/common/recipe_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[256], sd1[512];

static const char *const captions[8] = {"red square",    "blue circle",  "green square",
                                        "yellow circle", "red circle",   "blue square",
                                        "green circle",  "yellow square"};

static bool inside(int i, int x, int y) {
    return (i % 2) ? (x - 16) * (x - 16) + (y - 16) * (y - 16) < 100
                   : (x >= 8 && x < 24 && y >= 8 && y < 24);
}

/* data/: i.png (RGBA: the shape opaque, the rest transparent), cond/i.png (the shape white on
 * black), metadata.jsonl with text and conditioning_image; rgb/: the same without alpha. */
static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_cn_XXXXXX");
    cr_assert(mkdtemp(root));
    snprintf(sd1, sizeof sd1, "%s", fixture_path("pipelines/sd1"));
    char path[512];
    static const char *const dirs[] = {"data", "data/cond", "rgb"};
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/%s", root, dirs[k]);
        cr_assert_eq(df_mkdirs(path), DF_OK);
    }
    snprintf(path, sizeof path, "%s/data/metadata.jsonl", root);
    FILE *meta = fopen(path, "w");
    snprintf(path, sizeof path, "%s/rgb/metadata.jsonl", root);
    FILE *rmeta = fopen(path, "w");
    cr_assert(meta && rmeta);
    for (int i = 0; i < 8; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(32, 32, 4));
        df_tensor *rgb = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(32, 32, 3));
        df_tensor *cond = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(32, 32, 3));
        uint8_t *p = img->data, *q = rgb->data, *c = cond->data;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                bool in = inside(i, x, y);
                for (int ch = 0; ch < 3; ch++) {
                    uint8_t v =
                        (uint8_t)(in ? (ch == i % 3 ? 230 : 40) : (x * 4 + y * 2 + ch * 30));
                    p[(y * 32 + x) * 4 + ch] = q[(y * 32 + x) * 3 + ch] = v;
                    c[(y * 32 + x) * 3 + ch] = in ? 255 : 0;
                }
                p[(y * 32 + x) * 4 + 3] = in ? 255 : 0;
            }
        snprintf(path, sizeof path, "%s/data/%d.png", root, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        snprintf(path, sizeof path, "%s/rgb/%d.png", root, i);
        cr_assert_eq(df_png_write(path, rgb, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        snprintf(path, sizeof path, "%s/data/cond/%d.png", root, i);
        cr_assert_eq(df_png_write(path, cond, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        fprintf(meta,
                "{\"file_name\": \"%d.png\", \"text\": \"%s\", \"conditioning_image\": "
                "\"cond/%d.png\"}\n",
                i, captions[i], i);
        fprintf(rmeta, "{\"file_name\": \"%d.png\", \"text\": \"%s\"}\n", i, captions[i]);
        df_tensor_free(img);
        df_tensor_free(rgb);
        df_tensor_free(cond);
    }
    fclose(meta);
    fclose(rmeta);
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(recipes_controlnet, .init = setup, .fini = teardown);

static df_status cn_begin(recipe_run *t, const df_recipe_def *def, const char *out,
                          const char *extra) {
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "recipe: %s\ntrain_data_dir: %s/data\noutput_dir: %s/%s\n"
             "pretrained_model_name_or_path: %s\n"
             "resolution: 32\ntrain_batch_size: 4\ndataloader_num_workers: 1\n"
             "max_train_steps: 4\nlearning_rate: 1e-3\nlr_scheduler: constant\n"
             "lr_warmup_steps: 0\ncheckpointing_steps: 2\nnum_validation_images: 1\n"
             "use_ema: false\nrandom_flip: true\nvalidation_inference_steps: 2\n",
             def->name, root, root, out, sd1);
    if (def == &df_recipe_controlnet)
        snprintf(yaml + strlen(yaml), sizeof yaml - strlen(yaml),
                 "conditioning_embedding_out_channels: [4, 8, 8, 16]\n");
    return recipe_run_begin(t, def, yaml, extra, NULL, 0);
}

static void cn_train(const char *out, const char *extra, int64_t stop_after, const char *resume) {
    recipe_run t;
    cr_assert_eq(cn_begin(&t, &df_recipe_controlnet, out, extra), DF_OK, "%s", df_last_error());
    df_train_opts opts = {.stop_after_steps = stop_after, .resume = resume};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    recipe_run_end(&t);
}

/* A batch of images first .. first + n - 1 as the loader makes them (center crop, no flip). */
static df_batch *make_batch(int first, int n) {
    df_batch *b = calloc(1, sizeof *b);
    b->n = n;
    b->captions = calloc((size_t)n, sizeof *b->captions);
    b->indices = calloc((size_t)n, sizeof *b->indices);
    b->flipped = calloc((size_t)n, sizeof *b->flipped);
    b->pixels = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(n, 3, 32, 32));
    df_transform tr = df_transform_default(32);
    tr.center_crop = true;
    tr.random_flip = false;
    for (int i = 0; i < n; i++) {
        b->indices[i] = first + i;
        b->captions[i] = strdup(captions[first + i]);
        char path[512];
        snprintf(path, sizeof path, "%s/data/%d.png", root, first + i);
        df_tensor *img;
        cr_assert_eq(df_image_read(path, NULL, &img), DF_OK, "%s", df_last_error());
        df_transform_apply(&tr, img, NULL, df_f32(b->pixels) + (int64_t)i * 3 * 32 * 32);
    }
    return b;
}

static float loss_of(recipe_run *t, const df_batch *b) {
    df_step_rng rng;
    df_step_rng_init(&rng, 0, 0, 1);
    df_tensor *loss;
    const df_batch *const bs[1] = {b};
    cr_assert_eq(t->r.loss(t->r.ctx, bs, &rng, &loss), DF_OK, "%s", df_last_error());
    return df_f32(loss)[0];
}

/* from_unet's zero convolutions: the UNet's prediction unchanged, text_to_image's loss */
Test(recipes_controlnet, a_new_controlnet_gives_the_unet_loss, .timeout = 300) {
    recipe_run cn, t2i;
    cr_assert_eq(cn_begin(&cn, &df_recipe_controlnet, "a", NULL), DF_OK, "%s", df_last_error());
    cr_assert_eq(cn_begin(&t2i, &df_recipe_text_to_image, "b", NULL), DF_OK, "%s", df_last_error());
    /* only the ControlNet trains */
    const df_params *p = cn.r.params;
    int64_t n = 0;
    for (int i = 0; i < p->n; i++) {
        cr_assert(p->items[i].trainable, "%s is frozen", p->items[i].name);
        n++;
    }
    cr_assert(df_params_find(p, "controlnet_mid_block.weight") && n > 30);
    df_scope s = df_scope_begin();
    df_batch *b = make_batch(2, 4);
    float a = loss_of(&cn, b), want = loss_of(&t2i, b);
    cr_expect_eq(a, want, "controlnet %.9g, text_to_image %.9g", a, want);
    df_batch_free(b);
    df_scope_end(s);
    recipe_run_end(&cn);
    recipe_run_end(&t2i);
}

Test(recipes_controlnet, trains_exports_and_generates, .timeout = 600) {
    char val[1024];
    snprintf(val, sizeof val,
             "validation_prompts=[red_square] validation_image=[%s/data/cond/0.png] "
             "checkpointing_steps=0",
             root);
    cn_train("run", val, 0, NULL);
    double l[8];
    cr_assert_eq(run_losses(root, "run", l, 8), 4);
    for (int i = 0; i < 4; i++) cr_expect(l[i] > 0 && l[i] < 10, "loss %g", l[i]);
    char path[1024];
    snprintf(path, sizeof path, "%s/run/samples/step-4.png", root);
    df_tensor *grid;
    cr_assert_eq(df_image_read(path, NULL, &grid), DF_OK, "%s", df_last_error());
    cr_expect(grid->shape[1] >= 64, "the control image and one generation: %lld wide",
              (long long)grid->shape[1]);
    df_tensor_free(grid);
    /* the export: a ControlNetModel folder; the zero convolutions have moved */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/run", root);
    df_component c;
    cr_assert_eq(df_component_load(dir, &c), DF_OK, "%s", df_last_error());
    cr_assert(c.controlnet);
    cr_expect_eq(c.controlnet->config.n_cond_blocks, 4);
    df_tensor *w = df_params_find(&c.params[0], "controlnet_mid_block.weight");
    double sum = 0;
    for (int64_t i = 0; i < w->numel; i++) sum += df_f32(w)[i] * df_f32(w)[i];
    cr_expect_gt(sum, 0, "controlnet_mid_block did not train");
    df_component_free(&c);
    /* `diffusion generate --controlnet` takes it */
    char cmd[4096], out[4096];
    snprintf(cmd, sizeof cmd,
             "%s generate %s --prompt 'red square' --steps 2 --controlnet %s --control-image "
             "%s/data/cond/1.png --out %s/g.png",
             DF_CLI, sd1, dir, root, root);
    cr_expect_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
}

Test(recipes_controlnet, stop_and_resume_is_exact, .timeout = 300) {
    cn_train("whole", NULL, 0, NULL);
    cn_train("split", NULL, 2, NULL);
    cn_train("split", NULL, 0, "latest");
    static const char *const files[] = {"checkpoint-4/training/model.safetensors",
                                        "checkpoint-4/training/optimizer.safetensors",
                                        "diffusion_pytorch_model.safetensors", "config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        cr_expect(run_files_equal(root, "whole", "split", files[i]), "%s differs", files[i]);
    double a[8], b[8];
    cr_assert_eq(run_losses(root, "whole", a, 8), 4);
    cr_assert_eq(run_losses(root, "split", b, 8), 4);
    for (int i = 0; i < 4; i++) cr_expect_eq(a[i], b[i], "step %d", i + 1);
}

/* the generators instead of the column */
Test(recipes_controlnet, canny_and_silhouette_train, .timeout = 300) {
    cn_train("canny", "conditioning=canny:50:100 max_train_steps=1 checkpointing_steps=0", 0, NULL);
    /* with a generator, the validation image is the one it makes the control image of */
    char extra[1024];
    snprintf(extra, sizeof extra,
             "conditioning=silhouette max_train_steps=1 checkpointing_steps=0 "
             "validation_prompts=[red_square] validation_image=[%s/data/1.png]",
             root);
    cn_train("sil", extra, 0, NULL);
    double l[2];
    cr_expect_eq(run_losses(root, "canny", l, 2), 1);
    cr_expect_eq(run_losses(root, "sil", l, 2), 1);
    char path[1024];
    snprintf(path, sizeof path, "%s/sil/samples/step-1.png", root);
    df_tensor *grid;
    cr_assert_eq(df_image_read(path, NULL, &grid), DF_OK, "%s", df_last_error());
    /* the first cell is the circle's silhouette: white at its centre, black in the corner */
    const uint8_t *g = grid->data;
    int64_t w = grid->shape[1];
    int64_t at = 0;
    for (int64_t y = 0; y < grid->shape[0] && !at; y++) /* the first white pixel's row */
        for (int64_t x = 0; x < 34 && !at; x++)
            if (g[(y * w + x) * 3] == 255 && g[(y * w + x) * 3 + 1] == 255) at = y;
    cr_expect(at > 0, "no silhouette in the grid's first cell");
    df_tensor_free(grid);
}

static void expect_create_error(const char *extra, const char *must) {
    recipe_run t;
    df_status st = cn_begin(&t, &df_recipe_controlnet, "bad", extra);
    if (st == DF_OK) recipe_run_end(&t);
    cr_expect(st != DF_OK, "%s: accepted", extra);
    cr_expect(strstr(df_last_error(), must), "%s: '%s' not in: %s", extra, must, df_last_error());
}

Test(recipes_controlnet, bad_input_is_named) {
    char path[1024], extra[2048];
    /* a conditioning column pointing at a missing file */
    snprintf(path, sizeof path, "%s/data/cond/3.png", root);
    char moved[1024];
    snprintf(moved, sizeof moved, "%s/data/cond/3.moved", root);
    cr_assert_eq(rename(path, moved), 0);
    expect_create_error(NULL, "cond/3.png: conditioning image of '3.png' not found");
    cr_assert_eq(rename(moved, path), 0);
    /* images without the column, and silhouettes of images without alpha */
    snprintf(extra, sizeof extra, "train_data_dir=%s/rgb", root);
    expect_create_error(extra, "'0.png' has no 'conditioning_image'");
    snprintf(extra, sizeof extra, "train_data_dir=%s/rgb conditioning=silhouette", root);
    recipe_run t;
    cr_assert_eq(cn_begin(&t, &df_recipe_controlnet, "sil_rgb", extra), DF_OK, "%s",
                 df_last_error());
    df_train_opts opts = {0};
    expect_status(df_train_run(&t.cfg, &t.r, &opts), DF_ERR_INVALID, "no alpha channel");
    recipe_run_end(&t);
    /* a ControlNet for another UNet */
    snprintf(extra, sizeof extra, "controlnet_model_name_or_path=%s",
             fixture_path("models/controlnet_tiny"));
    expect_create_error(extra, "ControlNetModel for another UNet: in_channels 4, "
                               "block_out_channels [32, 64]");
    expect_create_error("center_crop=false", "center_crop");
    expect_create_error("conditioning_embedding_out_channels=[4,8]", "conditioning widths");
    expect_create_error("conditioning=edges", "conditioning 'edges'");
    expect_create_error("validation_prompts=[a,b] validation_image=[x.png]",
                        "validation_image: 1 images for 2 validation_prompts");
}

/* the shipped demo config loads into the schema */
Test(recipes_controlnet, the_emoji_controlnet_config_is_valid) {
    int n;
    df_cfg_field *schema = df_recipe_schema(&df_recipe_controlnet, &n);
    df_config cfg;
    df_config_init(&cfg, schema, n);
    cr_assert_eq(df_config_load_yaml(&cfg, DF_SOURCE_DIR "/recipes/configs/emoji-controlnet.yaml"),
                 DF_OK, "%s", df_last_error());
    cr_expect_str_eq(df_config_str(&cfg, "recipe"), "controlnet");
    df_conditioning c;
    cr_expect_eq(df_conditioning_parse(df_config_str(&cfg, "conditioning"), &c), DF_OK);
    const char *v[DF_CFG_MAX_LIST], *p[DF_CFG_MAX_LIST];
    cr_expect_eq(df_config_str_list(&cfg, "validation_image", v, DF_CFG_MAX_LIST),
                 df_config_str_list(&cfg, "validation_prompts", p, DF_CFG_MAX_LIST));
    df_config_free(&cfg);
    free(schema);
}
