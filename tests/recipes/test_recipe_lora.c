/* test_recipe_lora.c — the `lora` recipe on the tiny SD 1.x pipeline of tests/fixtures/pipelines/
 * sd1 and four generated 32x32 images with captions, in process: fresh adapters leave the
 * text_to_image recipe's loss unchanged (the same parts: data, draws, loss); only the adapters
 * train and are checkpointed; the export is a pytorch_lora_weights.safetensors that reads back
 * as the trained adapters (network_alpha folded into up, as the diffusers layout has none); the validation grid is the base's images above the LoRA's (equal at
 * the start); stop + resume equals the uninterrupted run bitwise (text encoder adapters, LoCon,
 * dropout, cached latents); config errors name the key. */
#include "nn/lora.h"
#include "recipes/recipes.h"
#include "tests/common/check.h"
#include "tests/common/recipe_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char root[256], sd1[512];

static const char *const captions[4] = {"red square", "blue circle", "green square",
                                        "yellow circle"};

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_lora_XXXXXX");
    cr_assert(mkdtemp(root));
    snprintf(sd1, sizeof sd1, "%s", fixture_path("pipelines/sd1"));
    char path[512];
    snprintf(path, sizeof path, "%s/data", root);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    snprintf(path, sizeof path, "%s/data/metadata.jsonl", root);
    FILE *meta = fopen(path, "w");
    cr_assert(meta);
    for (int i = 0; i < 4; i++) {
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
        fprintf(meta, "{\"file_name\": \"%d.png\", \"text\": \"%s\"}\n", i, captions[i]);
    }
    fclose(meta);
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(recipes_lora, .init = setup, .fini = teardown);

/* The tiny config (recipe `recipe`, output root/<out>) then `extra` overrides. */
static df_status lora_begin(recipe_run *t, const df_recipe_def *def, const char *out,
                            const char *extra) {
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "recipe: %s\ntrain_data_dir: %s/data\noutput_dir: %s/%s\n"
             "pretrained_model_name_or_path: %s\n"
             "resolution: 32\ntrain_batch_size: 2\ndataloader_num_workers: 1\n"
             "max_train_steps: 4\nlearning_rate: 1e-2\nlr_scheduler: constant\n"
             "lr_warmup_steps: 0\ncheckpointing_steps: 2\nnum_validation_images: 1\n"
             "use_ema: false\nrandom_flip: false\nvalidation_inference_steps: 2\n",
             def->name, root, root, out, sd1);
    return recipe_run_begin(t, def, yaml, extra, NULL, 0);
}

static void lora_train(const char *out, const char *extra, int64_t stop_after, const char *resume) {
    recipe_run t;
    cr_assert_eq(lora_begin(&t, &df_recipe_lora, out, extra), DF_OK, "%s", df_last_error());
    df_train_opts opts = {.stop_after_steps = stop_after, .resume = resume};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    recipe_run_end(&t);
}

static void path_of(char *buf, size_t len, const char *run, const char *rel) {
    snprintf(buf, len, "%s/%s/%s", root, run, rel);
}

/* Batch of images first .. first + n - 1 with their captions, pixels as the loader makes them. */
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

static float recipe_loss(recipe_run *t, const df_batch *b, int64_t step) {
    df_step_rng rng;
    df_step_rng_init(&rng, 0, 0, step);
    df_tensor *loss;
    const df_batch *const bs[1] = {b};
    cr_assert_eq(t->r.loss(t->r.ctx, bs, &rng, &loss), DF_OK, "%s", df_last_error());
    return df_f32(loss)[0];
}

Test(recipes_lora, fresh_adapters_give_the_text_to_image_loss_and_grid) {
    df_scope scope = df_scope_begin();
    const char *keys = "snr_gamma=5 noise_offset=0.1 proportion_empty_prompts=0.5 "
                       "validation_prompts=[square]";
    recipe_run a, b;
    cr_assert_eq(lora_begin(&a, &df_recipe_lora, "fresh", keys), DF_OK, "%s", df_last_error());
    cr_assert_eq(lora_begin(&b, &df_recipe_text_to_image, "t2i", keys), DF_OK, "%s",
                 df_last_error());
    df_batch *batch = make_batch(0, 2);
    float la = recipe_loss(&a, batch, 5), lb = recipe_loss(&b, batch, 5);
    cr_assert(isfinite(la));
    cr_assert_eq(la, lb, "lora %.9g vs text_to_image %.9g", la, lb);
    /* only the adapters train: every trainable parameter is an adapter's */
    int n_train = 0;
    for (int i = 0; i < a.r.params->n; i++) {
        const df_param *p = &a.r.params->items[i];
        if (!p->trainable) continue;
        n_train++;
        cr_assert(strstr(p->name, ".lora.") && strncmp(p->name, "unet.", 5) == 0, "%s", p->name);
    }
    cr_assert(n_train > 0);
    /* before / after: equal halves while up is zero */
    df_tensor *grid;
    cr_assert_eq(a.r.validate(a.r.ctx, 0, &grid), DF_OK, "%s", df_last_error());
    cr_assert_eq(grid->shape[0], 64, "two 32-pixel rows, got %lld", (long long)grid->shape[0]);
    size_t half = (size_t)grid->numel / 2;
    cr_assert(memcmp(grid->data, (uint8_t *)grid->data + half, half) == 0,
              "fresh adapters: the LoRA row is the base's");
    df_batch_free(batch);
    recipe_run_end(&a);
    recipe_run_end(&b);
    df_scope_end(scope);
}

Test(recipes_lora, trains_only_adapters_and_exports_them, .timeout = 300) {
    lora_train("run", "rank=2 network_alpha=1", 0, NULL);
    char path[1024];
    /* the checkpoint holds the adapters only */
    path_of(path, sizeof path, "run", "checkpoint-4/training/model.safetensors");
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    int n = df_st_count(f);
    cr_assert(n > 0 && n % 2 == 0);
    for (int i = 0; i < n; i++)
        cr_assert(strstr(df_st_info_at(f, i)->name, ".lora."), "%s", df_st_info_at(f, i)->name);
    /* the export reads back as those adapters */
    df_lora_set set;
    path_of(path, sizeof path, "run", "pytorch_lora_weights.safetensors");
    cr_assert_eq(df_lora_file_read(path, &set), DF_OK, "%s", df_last_error());
    cr_assert_eq(set.n, n / 2);
    cr_assert_eq(set.format, DF_LORA_DIFFUSERS);
    bool trained = false;
    df_scope s = df_scope_begin();
    for (int i = 0; i < set.n; i++) {
        const df_lora_entry *e = &set.entries[i];
        cr_assert_eq(e->down->shape[0], 2);
        /* the diffusers layout holds no alpha: up * (alpha / rank) with alpha = rank */
        cr_assert_float_eq(e->alpha, 2.0f, 0, "%s", e->target);
        char name[512];
        snprintf(name, sizeof name, "%s.lora.up.weight", e->target);
        df_tensor *up;
        cr_assert_eq(df_st_read(f, name, DF_DTYPE_F32, &up), DF_OK, "%s", df_last_error());
        check_close(name, e->up, df_mul_scalar(up, 0.5f), 0, 0);
        for (int64_t j = 0; j < up->numel; j++) trained = trained || df_f32(up)[j] != 0;
    }
    df_scope_end(s);
    cr_assert(trained, "the up weights moved");
    df_lora_set_free(&set);
    df_st_close(f);
}

Test(recipes_lora, stop_and_resume_is_exact, .timeout = 300) {
    const char *extra = "train_text_encoder=true text_encoder_lr=5e-3 conv_dim=2 "
                        "lora_dropout=0.1 cache_latents=true center_crop=true";
    lora_train("whole", extra, 0, NULL);
    lora_train("split", extra, 2, NULL);
    lora_train("split", extra, 0, "latest");
    static const char *const files[] = {"checkpoint-4/training/model.safetensors",
                                        "checkpoint-4/training/optimizer.safetensors",
                                        "pytorch_lora_weights.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        cr_expect(run_files_equal(root, "whole", "split", files[i]), "%s differs", files[i]);
    double a[8], b[8];
    cr_assert_eq(run_losses(root, "whole", a, 8), 4);
    cr_assert_eq(run_losses(root, "split", b, 8), 4);
    for (int i = 0; i < 4; i++) cr_expect_eq(a[i], b[i], "step %d", i + 1);
    /* text encoder adapters and LoCon are in the export */
    df_lora_set set;
    char path[1024];
    path_of(path, sizeof path, "whole", "pytorch_lora_weights.safetensors");
    cr_assert_eq(df_lora_file_read(path, &set), DF_OK, "%s", df_last_error());
    bool text = false, conv = false;
    for (int i = 0; i < set.n; i++) {
        text = text || strncmp(set.entries[i].target, "text_encoder.", 13) == 0;
        conv = conv || strstr(set.entries[i].target, "resnets") != NULL;
    }
    cr_assert(text && conv, "text encoder %d, LoCon %d", text, conv);
    df_lora_set_free(&set);
}

Test(recipes_lora, config_errors_name_the_key) {
    recipe_run t;
    expect_status(lora_begin(&t, &df_recipe_lora, "bad", "unet_targets=[\"*.no_such\"]"),
                  DF_ERR_INVALID, "unet.*.no_such");
    expect_status(lora_begin(&t, &df_recipe_lora, "bad", "pretrained_model_name_or_path="),
                  DF_ERR_INVALID, "pretrained_model_name_or_path");
}

/* ------------------------------------------------------------------ --lora in the CLI ------- */

/* A random LoRA for sd1 on the UNet's attention and the text encoder's q_proj, written to
 * root/<name> in the diffusers layout. */
static void write_random_lora(const char *name, char *path, size_t len) {
    df_lora_set set = {0};
    static const char *const parts[2][3] = {{"unet", "*attn*.to_*", "unet"},
                                            {"text_encoder", "*.q_proj", "text_encoder"}};
    uint64_t seed = 40;
    for (int k = 0; k < 2; k++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", sd1, parts[k][0]);
        df_component comp;
        cr_assert_eq(df_component_load(dir, &comp), DF_OK, "%s", df_last_error());
        const df_module_ref *hits[128];
        int n = df_modules_match(comp.params, parts[k][1], hits, 128);
        cr_assert(n > 0 && n <= 128);
        for (int i = 0; i < n; i++) {
            const df_tensor *w = ((const df_linear_mod *)hits[i]->module)->weight;
            df_tensor *d = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(2, w->shape[1]));
            df_tensor *u = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(w->shape[0], 2));
            df_scope s = df_scope_begin();
            df_tensor_copy_(d, df_mul_scalar(randn_tensor(seed++, d->ndim, d->shape), 0.3f));
            df_tensor_copy_(u, df_mul_scalar(randn_tensor(seed++, u->ndim, u->shape), 0.3f));
            df_scope_end(s);
            char target[DF_NAME_MAX];
            snprintf(target, sizeof target, "%s.%s", parts[k][2], hits[i]->name);
            cr_assert_eq(df_lora_set_add(&set, target, d, u, 2.0f), DF_OK, "%s", df_last_error());
        }
        df_component_free(&comp);
    }
    snprintf(path, len, "%s/%s", root, name);
    cr_assert_eq(df_lora_file_write(&set, path, DF_LORA_DIFFUSERS, NULL), DF_OK, "%s",
                 df_last_error());
    df_lora_set_free(&set);
}

/* `diffusion generate sd1 ... <extra>` into root/<out>; its exit code, output in log. */
static int generate(const char *extra, const char *out, char *log, size_t len) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s generate %s --prompt 'red square' --steps 2 --height 32 --width 32 --seed 3 "
             "--guidance 3 --out-tensor %s/%s %s",
             DF_CLI, sd1, root, out, extra);
    return run_command(cmd, log, len);
}

static df_tensor *image_of(const char *out) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, out);
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    df_tensor *t;
    cr_assert_eq(df_st_read(f, "latents", DF_DTYPE_F32, &t), DF_OK, "%s", df_last_error());
    df_st_close(f);
    return t;
}

Test(recipes_lora, generate_with_lora_on_the_fly_equals_fused, .timeout = 300) {
    char lora[1024], arg[2400], log[8192];
    write_random_lora("random.safetensors", lora, sizeof lora);
    cr_assert_eq(generate("", "base.safetensors", log, sizeof log), 0, "%s", log);
    snprintf(arg, sizeof arg, "--lora %s:0.8", lora);
    cr_assert_eq(generate(arg, "fly.safetensors", log, sizeof log), 0, "%s", log);
    cr_assert(strstr(log, "on the fly"), "%s", log);
    snprintf(arg, sizeof arg, "--lora %s:0.8 --fuse-lora", lora);
    cr_assert_eq(generate(arg, "fused.safetensors", log, sizeof log), 0, "%s", log);
    cr_assert(strstr(log, "fused"), "%s", log);
    /* two LoRAs stack: 0.5 + 0.3 of the same file is 0.8 of it */
    snprintf(arg, sizeof arg, "--lora %s:0.5 --lora %s:0.3", lora, lora);
    cr_assert_eq(generate(arg, "stacked.safetensors", log, sizeof log), 0, "%s", log);
    df_scope s = df_scope_begin();
    df_tensor *base = image_of("base.safetensors"), *fly = image_of("fly.safetensors");
    cr_assert(rel_max_err(fly, base) > 1e-3, "the LoRA changes the latents");
    check_close("fused vs on the fly", image_of("fused.safetensors"), fly, 1e-5, 1e-5);
    check_close("stacked", image_of("stacked.safetensors"), fly, 1e-5, 1e-4);
    df_scope_end(s);
    /* a scale that is not a number: one line */
    snprintf(arg, sizeof arg, "--lora %s:abc", lora);
    cr_assert_eq(generate(arg, "bad.safetensors", log, sizeof log), 2, "%s", log);
    cr_assert(strstr(log, "the scale 'abc' is not a number"), "%s", log);
    cr_assert(!strchr(log, '\n') || strchr(log, '\n') == log + strlen(log) - 1, "one line: %s",
              log);
}

Test(recipes_lora, forward_takes_the_component_entries, .timeout = 120) {
    char lora[1024], cmd[4096], log[8192];
    write_random_lora("fwd.safetensors", lora, sizeof lora);
    /* the text encoder with and without the LoRA, on the fly and fused */
    const char *in = fixture_path("pipelines/sd1/text_encoder");
    df_tensor *ids = df_tensor_new_owned(DF_DTYPE_I64, DF_DIMS(1, 8));
    for (int i = 0; i < 8; i++) ((int64_t *)ids->data)[i] = i == 0 ? 49406 : 100 + i;
    char inputs[1024];
    snprintf(inputs, sizeof inputs, "%s/ids.safetensors", root);
    const char *names[] = {"input_ids"};
    const df_tensor *ts[] = {ids};
    cr_assert_eq(df_st_save(inputs, 1, names, ts, 0, NULL, NULL), DF_OK, "%s", df_last_error());
    df_tensor_free(ids);
    const char *variants[3] = {"", "--lora %s:0.8", "--lora %s:0.8 --fuse-lora"};
    for (int k = 0; k < 3; k++) {
        char extra[1200];
        snprintf(extra, sizeof extra, variants[k], lora);
        snprintf(cmd, sizeof cmd, "%s forward %s --inputs %s --out %s/fwd%d.safetensors %s", DF_CLI,
                 in, inputs, root, k, extra);
        cr_assert_eq(run_command(cmd, log, sizeof log), 0, "%s", log);
    }
    df_scope s = df_scope_begin();
    df_tensor *out[3];
    for (int k = 0; k < 3; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/fwd%d.safetensors", root, k);
        df_st_file *f;
        cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
        cr_assert_eq(df_st_read(f, "last_hidden_state", DF_DTYPE_F32, &out[k]), DF_OK, "%s",
                     df_last_error());
        df_st_close(f);
    }
    cr_assert(rel_max_err(out[1], out[0]) > 1e-3, "the LoRA changes the text encoder");
    check_close("fused vs on the fly", out[2], out[1], 1e-5, 1e-5);
    df_scope_end(s);
    /* a VAE takes no LoRA */
    snprintf(cmd, sizeof cmd, "%s forward %s/vae --inputs %s --out %s/x.safetensors --lora %s",
             DF_CLI, sd1, inputs, root, lora);
    cr_assert_eq(run_command(cmd, log, sizeof log), 1, "%s", log);
    cr_assert(strstr(log, "takes no LoRA"), "%s", log);
}

/* The shipped demo config builds on any SD base (here the tiny one): its targets exist. */
Test(recipes_lora, the_emoji_lora_config_is_valid) {
    size_t len;
    char *yaml = read_whole_file(DF_SOURCE_DIR "/recipes/configs/emoji-lora-twemoji.yaml", &len);
    cr_assert(yaml);
    char extra[2048];
    snprintf(extra, sizeof extra,
             "pretrained_model_name_or_path=%s train_data_dir=%s/data output_dir=%s/cfg "
             "resolution=32",
             sd1, root, root);
    recipe_run t;
    cr_assert_eq(recipe_run_begin(&t, &df_recipe_lora, yaml, extra, NULL, 0), DF_OK, "%s",
                 df_last_error());
    free(yaml);
    cr_expect_str_eq(df_config_str(&t.cfg, "recipe"), "lora");
    cr_expect(df_config_bool(&t.cfg, "validation_before_after"));
    int n_conv = 0, n_train = 0;
    for (int i = 0; i < t.r.params->n; i++) {
        const df_param *p = &t.r.params->items[i];
        if (!p->trainable) continue;
        n_train++;
        n_conv += p->tensor->ndim == 4;
    }
    cr_expect(n_train > 0 && n_conv > 0, "%d adapter tensors, %d LoCon", n_train, n_conv);
    recipe_run_end(&t);
}
