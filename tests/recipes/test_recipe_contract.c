/* test_recipe_contract.c — what a recipe declares and the trainer honours: data sources (each
 * in its own order, resumed exactly), parameter groups with their own learning rate and weight
 * decay (a group at a negligible rate stays bitwise still while the rest trains), a trainable
 * parameter in no group is an error naming it, an error from the loss stops the run with its
 * message, a recipe that needs captions gets them (or an error naming the images without one),
 * a recipe with cached latents gets batches without pixels, and the recipe table feeds the CLI
 * (`--list-recipes`) and the `recipe` key's choices. The unconditional recipe on a tiny UNet
 * and four generated 8x8 images, in process. */
#include "datasets/datasets.h"
#include "recipes/recipes.h"
#include "tests/common/check.h"
#include "tests/common/recipe_run.h"

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[256];

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_contract_XXXXXX");
    cr_assert(mkdtemp(root));
    char path[512];
    snprintf(path, sizeof path, "%s/data", root);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    for (int i = 0; i < 4; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(8, 8, 3));
        for (int64_t j = 0; j < img->numel; j++)
            ((uint8_t *)img->data)[j] = (uint8_t)(j * 7 + i * 50);
        snprintf(path, sizeof path, "%s/data/%d.png", root, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
    }
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(recipes_contract, .init = setup, .fini = teardown);

/* A tiny run: the unconditional config with output in root/<out>, then `extra` (NULL, or
 * space-separated key=value overrides), and its recipe, built. */
typedef recipe_run tiny_run;

static df_status (*one_source_loss)(void *, const df_batch *const *, df_step_rng *, df_tensor **);

static const df_cfg_field caption_fields[] = {DF_CFG_CAPTION_FIELDS};
static bool with_caption_keys; /* the next tiny_begin's schema holds DF_CFG_CAPTION_FIELDS */

static void tiny_begin(tiny_run *t, const char *out, const char *extra) {
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "train_data_dir: %s/data\noutput_dir: %s/%s\nresolution: 8\ntrain_batch_size: 2\n"
             "dataloader_num_workers: 1\nmax_train_steps: 2\nlr_warmup_steps: 0\n"
             "checkpointing_steps: 0\nnum_validation_images: 0\nuse_ema: false\n"
             "model:\n  block_out_channels: [8, 16]\n"
             "  down_block_types: [DownBlock2D, DownBlock2D]\n"
             "  up_block_types: [UpBlock2D, UpBlock2D]\n  layers_per_block: 1\n"
             "  norm_num_groups: 4\n",
             root, root, out);
    int k = with_caption_keys ? (int)(sizeof caption_fields / sizeof caption_fields[0]) : 0;
    cr_assert_eq(recipe_run_begin(t, &df_recipe_unconditional, yaml, extra, caption_fields, k),
                 DF_OK, "%s", df_last_error());
}

static void tiny_end(tiny_run *t) {
    recipe_run_end(t);
}

Test(recipes_contract, groups_train_at_their_own_rates) {
    tiny_run t;
    tiny_begin(&t, "groups", NULL);
    const df_params *p = t.r.params;
    df_tensor **before = malloc((size_t)p->n * sizeof *before);
    for (int i = 0; i < p->n; i++) before[i] = df_tensor_clone(p->items[i].tensor);
    /* the convolutions at a rate so small that AdamW's steps (~lr) vanish in rounding */
    const df_recipe_group groups[2] = {{"convolutions", "*conv*", 1e-30, 0}, {"rest", NULL, 0, -1}};
    t.r.groups = groups;
    t.r.n_groups = 2;
    df_train_opts opts = {0};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    int moved = 0, rest = 0;
    for (int i = 0; i < p->n; i++) {
        const char *name = p->items[i].name;
        if (fnmatch("*conv*", name, 0) == 0) {
            check_close(name, p->items[i].tensor, before[i], 1e-20, 0);
        } else {
            rest++;
            moved += rel_max_err(p->items[i].tensor, before[i]) > 0;
        }
        df_tensor_free(before[i]);
    }
    cr_assert(rest > 0 && moved == rest, "%d of %d other parameters trained", moved, rest);
    free(before);
    tiny_end(&t);
}

Test(recipes_contract, a_parameter_in_no_group_is_an_error) {
    tiny_run t;
    tiny_begin(&t, "nogroup", NULL);
    const df_recipe_group groups[1] = {{"convolutions", "*conv*", 0, -1}};
    t.r.groups = groups;
    t.r.n_groups = 1;
    df_train_opts opts = {0};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "is in no group") && strstr(df_last_error(), "time_"), "%s",
              df_last_error());
    tiny_end(&t);
}

static df_status failing_loss(void *ctx, const df_batch *const *b, df_step_rng *rng,
                              df_tensor **loss) {
    (void)ctx, (void)b, (void)rng, (void)loss;
    return df_error(DF_ERR_INVALID, "the test loss refuses this batch");
}

Test(recipes_contract, a_loss_error_stops_the_run_with_its_message) {
    tiny_run t;
    tiny_begin(&t, "lossfail", NULL);
    t.r.loss = failing_loss;
    df_train_opts opts = {0};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "refuses this batch"), "%s", df_last_error());
    tiny_end(&t);
}

/* A recipe that needs captions: the batches carry each image's caption (here the default in
 * the template's place: the test images have none). */
static int captions_seen;
static df_status caption_loss(void *ctx, const df_batch *const *b, df_step_rng *rng,
                              df_tensor **loss) {
    for (int i = 0; i < b[0]->n; i++) {
        cr_assert_str_eq(b[0]->captions[i], "an emoji");
        captions_seen++;
    }
    return one_source_loss(ctx, b, rng, loss);
}

Test(recipes_contract, a_recipe_that_needs_captions_gets_them_or_an_error) {
    with_caption_keys = true;
    tiny_run t;
    tiny_begin(&t, "captions", "caption_template=an_emoji_of_{}");
    one_source_loss = t.r.loss;
    t.r.needs_captions = true;
    df_train_opts opts = {0};
    expect_status(df_train_run(&t.cfg, &t.r, &opts), DF_ERR_FORMAT,
                  "4 of 4 images have no caption");
    cr_assert(strstr(df_last_error(), "default_caption"), "%s", df_last_error());
    cr_assert_eq(df_config_set(&t.cfg, "default_caption=an emoji"), DF_OK, "%s", df_last_error());
    t.r.loss = caption_loss;
    opts.overwrite = true;
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    cr_assert_eq(captions_seen, 4, "2 steps of 2 images");
    tiny_end(&t);
    with_caption_keys = false;
}

/* A recipe whose latents come from a cache: its batches carry no pixels, but indices and flips;
 * here the loss trains on zeros in their place. */
static int no_pixel_batches;
static df_status no_pixel_loss(void *ctx, const df_batch *const *b, df_step_rng *rng,
                               df_tensor **loss) {
    cr_assert_null(b[0]->pixels, "no_pixels: the loader decodes nothing");
    cr_assert(b[0]->n == 2 && b[0]->flipped && b[0]->indices[0] < 4);
    no_pixel_batches++;
    df_batch copy = *b[0];
    copy.pixels = df_tensor_new(DF_DTYPE_F32, DF_DIMS(copy.n, 3, 8, 8));
    memset(copy.pixels->data, 0, sizeof(float) * (size_t)copy.pixels->numel);
    const df_batch *batches[1] = {&copy};
    return one_source_loss(ctx, batches, rng, loss);
}

Test(recipes_contract, a_recipe_with_cached_latents_gets_batches_without_pixels) {
    tiny_run t;
    tiny_begin(&t, "nopixels", NULL);
    one_source_loss = t.r.loss;
    t.r.loss = no_pixel_loss;
    t.r.no_pixels = true;
    df_train_opts opts = {0};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    cr_assert_eq(no_pixel_batches, 2);
    tiny_end(&t);
}

Test(recipes_contract, the_recipe_table_feeds_the_cli_and_the_schema) {
    char out[4096];
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s train --list-recipes", DF_CLI);
    cr_assert_eq(run_command(cmd, out, sizeof out), 0, "%s", out);
    for (int i = 0; i < df_recipe_count(); i++)
        cr_assert(strstr(out, df_recipe_at(i)->name), "%s missing from: %s", df_recipe_at(i)->name,
                  out);
    int n;
    df_cfg_field *schema = df_recipe_schema(df_recipe_at(0), &n);
    bool found = false;
    for (int i = 0; i < n; i++)
        if (strcmp(schema[i].key, "recipe") == 0) {
            found = true;
            for (int k = 0; k < df_recipe_count(); k++)
                cr_assert(strstr(schema[i].choices, df_recipe_at(k)->name), "%s",
                          schema[i].choices);
        }
    cr_assert(found);
    free(schema);
    cr_assert_null(df_recipe_find("no-such-recipe"));
    cr_assert_null(df_recipe_at(df_recipe_count()));
}

/* A run whose convolutions are frozen: its checkpoints hold only the trainable tensors and the
 * base's fingerprint; resuming on the same base continues, on a changed base is refused. */
static void frozen_run(const char *out, int64_t stop_after, const char *resume, float nudge,
                       df_status want, int *n_saved) {
    tiny_run t;
    tiny_begin(&t, out, "checkpointing_steps=1");
    cr_assert(df_params_set_trainable(t.r.params, "*conv*", false) > 0);
    if (nudge != 0) df_f32(df_params_find(t.r.params, "conv_in.weight"))[0] += nudge;
    df_train_opts opts = {.stop_after_steps = stop_after, .resume = resume};
    df_status st = df_train_run(&t.cfg, &t.r, &opts);
    cr_assert_eq(st, want, "%s", df_last_error());
    if (n_saved) {
        *n_saved = 0;
        for (int i = 0; i < t.r.params->n; i++) *n_saved += t.r.params->items[i].trainable;
    }
    tiny_end(&t);
}

Test(recipes_contract, checkpoints_hold_the_trained_part_and_name_the_base) {
    int n_trainable;
    frozen_run("frozen", 1, NULL, 0, DF_OK, &n_trainable);
    char path[512];
    snprintf(path, sizeof path, "%s/frozen/checkpoint-1/training/model.safetensors", root);
    df_st_file *f;
    cr_assert_eq(df_st_open(path, &f), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_count(f), n_trainable, "only the trainable tensors are saved");
    cr_assert_null(df_st_find(f, "conv_in.weight"));
    df_st_close(f);
    snprintf(path, sizeof path, "%s/frozen/checkpoint-1/training/trainer_state.json", root);
    df_json j;
    cr_assert_eq(df_json_load(path, &j), DF_OK);
    cr_assert(df_json_has(&j, "frozen_base"), "trainer_state.json names the frozen base");
    df_json_free(&j);
    /* a changed base is refused; the same base resumes to the end */
    frozen_run("frozen", 0, "latest", 0.25f, DF_ERR_INVALID, NULL);
    cr_assert(strstr(df_last_error(), "frozen base differs"), "%s", df_last_error());
    frozen_run("frozen", 0, "latest", 0, DF_OK, NULL);
}

/* Two data sources (both of the test folder, each in its own order): the loss of each batch,
 * summed; which samples each source gave at each call is recorded. */
static int64_t first_index[2][64];
static int n_calls;

static df_status two_source_loss(void *ctx, const df_batch *const *b, df_step_rng *rng,
                                 df_tensor **loss) {
    df_tensor *l0, *l1;
    DF_TRY(one_source_loss(ctx, &b[0], rng, &l0));
    DF_TRY(one_source_loss(ctx, &b[1], rng, &l1));
    if (n_calls < 64) {
        first_index[0][n_calls] = b[0]->indices[0];
        first_index[1][n_calls] = b[1]->indices[0];
    }
    n_calls++;
    *loss = df_add(l0, l1);
    return DF_OK;
}

static const df_recipe_source two_sources[2] = {{"instance", "train_data_dir"},
                                                {"class", "train_data_dir"}};

/* The tiny run with two sources for 4 steps, checkpoints every 2 (stopping after stop_after
 * steps when > 0, resuming from `resume` when set). */
static void two_source_run(const char *out, int64_t stop_after, const char *resume) {
    tiny_run t;
    tiny_begin(&t, out, "max_train_steps=4 checkpointing_steps=2");
    one_source_loss = t.r.loss;
    t.r.loss = two_source_loss;
    t.r.sources = two_sources;
    t.r.n_sources = 2;
    df_train_opts opts = {.stop_after_steps = stop_after, .resume = resume};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    tiny_end(&t);
}

Test(recipes_contract, two_data_sources_train_and_resume_exactly) {
    n_calls = 0;
    two_source_run("whole2", 0, NULL);
    int differ = 0;
    for (int i = 0; i < n_calls && i < 64; i++) differ += first_index[0][i] != first_index[1][i];
    cr_assert(n_calls == 4 && differ > 0, "each source draws in its own order (%d calls)", n_calls);
    two_source_run("cut2", 2, NULL);
    two_source_run("cut2", 0, "latest");
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/whole2/unet/diffusion_pytorch_model.safetensors", root);
    snprintf(b, sizeof b, "%s/cut2/unet/diffusion_pytorch_model.safetensors", root);
    size_t la, lb;
    char *x = read_whole_file(a, &la), *y = read_whole_file(b, &lb);
    cr_assert(x && y && la == lb && memcmp(x, y, la) == 0,
              "stop at 2 and resume: the weights equal the uninterrupted run's");
    free(x);
    free(y);
    snprintf(a, sizeof a, "%s/cut2/checkpoint-2/training/trainer_state.json", root);
    df_json j;
    cr_assert_eq(df_json_load(a, &j), DF_OK);
    cr_assert(df_json_has(&j, "loader_cursors"), "every source's cursor is kept");
    df_json_free(&j);
}
