/* test_recipe_vae.c — the `vae` recipe on a tiny AutoencoderKL and eight generated 16x16
 * images, in process: the loss falls; the export is a vae/ folder that loads back as an
 * AutoencoderKL whose config carries the measured scaling_factor (1 / std of posterior samples,
 * recomputed here from the exported weights); the validation grid is originals over
 * reconstructions; stop + resume equals the uninterrupted run bitwise (weights, EMA, losses);
 * fine-tuning from the exported folder; aspect-ratio buckets (two shapes: each batch one
 * bucket's size) train and resume exactly too; config errors. */
#include "datasets/datasets.h"
#include "recipes/recipes.h"
#include "tests/common/check.h"
#include "tests/common/recipe_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[256];

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_vae_XXXXXX");
    cr_assert(mkdtemp(root));
    char path[512];
    snprintf(path, sizeof path, "%s/data", root);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    for (int i = 0; i < 8; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(16, 16, 3));
        uint8_t *p = img->data;
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++)
                for (int c = 0; c < 3; c++) {
                    bool inside = x >= 4 && x < 12 && y >= 4 && y < 12;
                    p[(y * 16 + x) * 3 + c] =
                        (uint8_t)(inside ? (i * 37 + c * 80) % 256 : (x * 8 + y * 4 + c * 40));
                }
        snprintf(path, sizeof path, "%s/data/%d.png", root, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
    }
    /* two shapes for buckets: 16x16 and 24x12 (to the 20x12 bucket) */
    snprintf(path, sizeof path, "%s/mixed", root);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    for (int i = 0; i < 8; i++) {
        int w = i % 2 ? 24 : 16, h = i % 2 ? 12 : 16;
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(h, w, 3));
        for (int64_t j = 0; j < img->numel; j++)
            ((uint8_t *)img->data)[j] = (uint8_t)((j * (3 + i)) % 256);
        snprintf(path, sizeof path, "%s/mixed/%d.png", root, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
    }
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(recipes_vae, .init = setup, .fini = teardown);

typedef recipe_run vae_run;

/* The tiny vae config with output root/<out>, then `extra` space-separated overrides. */
static df_status vae_begin(vae_run *t, const char *out, const char *extra) {
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "recipe: vae\ntrain_data_dir: %s/data\noutput_dir: %s/%s\nresolution: 16\n"
             "train_batch_size: 4\ndataloader_num_workers: 1\nmax_train_steps: 6\n"
             "learning_rate: 2e-3\nlr_scheduler: constant\nlr_warmup_steps: 0\n"
             "checkpointing_steps: 3\nnum_validation_images: 4\nuse_ema: true\n"
             "kl_weight: 1e-3\nmodel:\n  block_out_channels: [8, 16]\n"
             "  down_block_types: [DownEncoderBlock2D, DownEncoderBlock2D]\n"
             "  up_block_types: [UpDecoderBlock2D, UpDecoderBlock2D]\n  layers_per_block: 1\n"
             "  latent_channels: 4\n  norm_num_groups: 4\n",
             root, root, out);
    return recipe_run_begin(t, &df_recipe_vae, yaml, extra, NULL, 0);
}

static void vae_end(vae_run *t) {
    recipe_run_end(t);
}

static void vae_train(const char *out, const char *extra, int64_t stop_after, const char *resume) {
    vae_run t;
    cr_assert_eq(vae_begin(&t, out, extra), DF_OK, "%s", df_last_error());
    df_train_opts opts = {.stop_after_steps = stop_after, .resume = resume};
    cr_assert_eq(df_train_run(&t.cfg, &t.r, &opts), DF_OK, "%s", df_last_error());
    vae_end(&t);
}

/* The "loss" values of metrics.jsonl, in order (at most max). */
static int losses(const char *run, double *out, int max) {
    return run_losses(root, run, out, max);
}

static void expect_same(const char *a, const char *b, const char *rel) {
    cr_expect(run_files_equal(root, a, b, rel), "%s differs between %s and %s", rel, a, b);
}

Test(recipes_vae, trains_exports_and_measures_the_scaling_factor, .timeout = 300) {
    vae_train("fall", "max_train_steps=40 checkpointing_steps=0 validation_steps=0", 0, NULL);
    double l[64];
    int n = losses("fall", l, 64);
    cr_assert_eq(n, 40);
    double first = (l[0] + l[1] + l[2] + l[3]) / 4, last = (l[36] + l[37] + l[38] + l[39]) / 4;
    cr_expect_lt(last, 0.7 * first, "loss did not fall: %.4f -> %.4f", first, last);

    /* the export loads back as an AutoencoderKL; its scaling factor is 1 / std of posterior
     * samples of the eight images (center crop, the recipe's fixed noise stream) */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fall/vae", root);
    df_component comp = {0};
    cr_assert_eq(df_component_load(dir, &comp), DF_OK, "%s", df_last_error());
    cr_assert(comp.vae);
    float factor = comp.vae->config.scaling_factor;
    cr_assert(isfinite(factor) && factor > 0 && factor != 0.18215f, "scaling_factor %g", factor);
    df_scope scope = df_scope_begin();
    df_tensor *x = df_tensor_new(DF_DTYPE_F32, DF_DIMS(8, 3, 16, 16));
    for (int i = 0; i < 8; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/data/%d.png", root, i);
        df_tensor *img;
        cr_assert_eq(df_image_read(path, NULL, &img), DF_OK);
        df_image_to_chw(img, df_f32(x) + i * 3 * 16 * 16);
    }
    df_philox g;
    df_philox_init(&g, 0, 0x5CA1);
    df_tensor *mean, *logvar;
    bool grad = df_grad_set_enabled(false);
    double sum = 0, sumsq = 0;
    for (int b = 0; b < 2; b++) { /* the recipe's batches of train_batch_size 4 */
        df_tensor *xb = df_tensor_new(DF_DTYPE_F32, DF_DIMS(4, 3, 16, 16));
        memcpy(df_f32(xb), df_f32(x) + b * 4 * 3 * 16 * 16, sizeof(float) * (size_t)xb->numel);
        df_vae_encode(comp.vae, xb, &mean, &logvar);
        df_tensor *z = df_posterior_sample(mean, logvar, df_posterior_noise(mean, &g));
        for (int64_t i = 0; i < z->numel; i++) {
            sum += df_f32(z)[i];
            sumsq += (double)df_f32(z)[i] * df_f32(z)[i];
        }
    }
    df_grad_set_enabled(grad);
    double cnt = 2.0 * 4 * 4 * 8 * 8, m = sum / cnt, var = (sumsq - cnt * m * m) / (cnt - 1);
    cr_expect(fabs(1.0 / sqrt(var) - factor) < 1e-4 * factor, "scaling_factor %g, recomputed %g",
              factor, 1.0 / sqrt(var));
    df_scope_end(scope);
    df_component_free(&comp);

    /* the validation grid: 2 rows (originals, reconstructions) of 4 images */
    char path[512];
    snprintf(path, sizeof path, "%s/fall/samples/step-40.png", root);
    df_tensor *grid;
    cr_assert_eq(df_image_read(path, NULL, &grid), DF_OK, "%s", df_last_error());
    cr_assert(grid->shape[0] == 32 && grid->shape[1] == 64, "grid %lldx%lld",
              (long long)grid->shape[0], (long long)grid->shape[1]);
    df_tensor_free(grid);

    /* fine-tune from the exported folder (the run folder: its vae/) */
    char extra[512];
    snprintf(extra, sizeof extra,
             "pretrained_model_name_or_path=%s/fall max_train_steps=2 checkpointing_steps=0 "
             "recon_loss=mse",
             root);
    vae_train("tune", extra, 0, NULL);
    cr_assert_eq(losses("tune", l, 64), 2);
    cr_expect_lt(l[0], first, "fine-tuning starts from the trained weights");
}

Test(recipes_vae, stop_and_resume_is_exact, .timeout = 300) {
    vae_train("whole", NULL, 0, NULL);
    vae_train("split", NULL, 3, NULL);
    vae_train("split", NULL, 0, "latest");
    expect_same("whole", "split", "checkpoint-6/training/model.safetensors");
    expect_same("whole", "split", "checkpoint-6/training/ema.safetensors");
    expect_same("whole", "split", "checkpoint-6/training/optimizer.safetensors");
    expect_same("whole", "split", "vae/diffusion_pytorch_model.safetensors");
    expect_same("whole", "split", "vae/config.json");
    double a[16], b[16];
    int na = losses("whole", a, 16), nb = losses("split", b, 16);
    cr_assert_eq(na, 6);
    cr_assert_eq(nb, 6);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(a[i], b[i], "step %d loss %g vs %g", i + 1, a[i], b[i]);
}

Test(recipes_vae, buckets_train_and_resume_exactly, .timeout = 300) {
    char extra[512];
    snprintf(extra, sizeof extra,
             "train_data_dir=%s/mixed enable_bucket=true min_bucket_reso=8 max_bucket_reso=32 "
             "bucket_reso_steps=4 train_batch_size=3",
             root);
    vae_train("bwhole", extra, 0, NULL);
    vae_train("bsplit", extra, 3, NULL);
    vae_train("bsplit", extra, 0, "latest");
    expect_same("bwhole", "bsplit", "checkpoint-6/training/model.safetensors");
    expect_same("bwhole", "bsplit", "checkpoint-6/training/optimizer.safetensors");
    expect_same("bwhole", "bsplit", "vae/diffusion_pytorch_model.safetensors");
    double a[16], b[16];
    cr_assert_eq(losses("bwhole", a, 16), 6);
    cr_assert_eq(losses("bsplit", b, 16), 6);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(a[i], b[i], "step %d loss %g vs %g", i + 1, a[i], b[i]);
    /* steps that are not multiples of the VAE's downsampling are refused */
    vae_run t;
    snprintf(extra, sizeof extra, "enable_bucket=true bucket_reso_steps=3");
    expect_status(vae_begin(&t, "bbad", extra), DF_ERR_INVALID, "bucket_reso_steps");
}

Test(recipes_vae, config_errors_name_the_key) {
    vae_run t;
    expect_status(vae_begin(&t, "bad1", "resolution=17"), DF_ERR_INVALID, "not divisible by 2^1");
    expect_status(vae_begin(&t, "bad2", "model.norm_num_groups=3"), DF_ERR_INVALID,
                  "model.norm_num_groups");
    expect_status(vae_begin(&t, "bad3", "model.block_out_channels=[8,16,16]"), DF_ERR_INVALID,
                  "same length");
    char extra[512];
    snprintf(extra, sizeof extra, "pretrained_model_name_or_path=%s/data", root);
    cr_assert_neq(vae_begin(&t, "bad4", extra), DF_OK);
    cr_assert(strstr(df_last_error(), "data"), "%s", df_last_error());
}

/* gradient_checkpointing is for the UNet recipes: the VAE recipe's run refuses it, naming it */
Test(recipes_vae, gradient_checkpointing_is_refused) {
    vae_run t;
    cr_assert_eq(vae_begin(&t, "ck", "gradient_checkpointing=true"), DF_OK, "%s", df_last_error());
    df_train_opts opts = {0};
    expect_status(df_train_run(&t.cfg, &t.r, &opts), DF_ERR_UNSUPPORTED,
                  "gradient_checkpointing: the vae recipe trains no UNet");
    vae_end(&t);
}
