/* recipe_vae.c — AutoencoderKL training: from scratch (the `model.*` keys, diffusers' names) or
 * fine-tuned from a folder (pretrained_model_name_or_path: a VAE folder, or a pipeline folder
 * with vae/). The loss is train/vae_loss.c's: recon_loss (l1 | mse, element mean) of
 * decode(posterior sample) against the image + kl_weight * the batch mean of the per-item KL
 * sums (ldm's KL; vae_loss.c compares the weighting with ldm's). The posterior noise comes from
 * the step's noise stream. Optional EMA is the trainer's.
 *
 * With enable_bucket (kohya's aspect-ratio buckets), batches come one bucket at a time, of any
 * size whose sides are multiples of the VAE's downsampling (bucket_reso_steps must be one).
 *
 * Validation: a grid of the first num_validation_images images (center crop, no flip): the
 * originals in the first row, their reconstructions decode(posterior mean) below.
 * Export: OUTPUT/vae/ (config.json + diffusion_pytorch_model.safetensors, which diffusers'
 * AutoencoderKL.from_pretrained loads) with scaling_factor = 1 / std of the latents over the
 * data set (scaling_factor_images of them, 0: all; center crop, no flip), printed. As the
 * SD/ldm authors (LatentDiffusion's scale_by_std: 1 / z.flatten().std() of
 * encoder_posterior.sample()), the latents are posterior samples, and the std is torch's
 * (unbiased, over every element); the sample noise is a fixed stream of the seed, so the
 * factor depends only on the weights and the data.
 */
#include "infer/infer.h"
#include "recipes/recipes.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const df_cfg_field vae_fields[] = {
    {"pretrained_model_name_or_path", DF_CFG_STRING, NULL, 0, 0, NULL,
     "fine-tune this AutoencoderKL folder (or a pipeline folder's vae/); unset: build from "
     "model.*"},
    {"model.block_out_channels", DF_CFG_INT_LIST, "[128, 256, 512, 512]", 1, 8192, NULL,
     "AutoencoderKL block widths"},
    {"model.down_block_types", DF_CFG_STRING_LIST,
     "[DownEncoderBlock2D, DownEncoderBlock2D, DownEncoderBlock2D, DownEncoderBlock2D]", 0, 0, NULL,
     "encoder blocks (DownEncoderBlock2D)"},
    {"model.up_block_types", DF_CFG_STRING_LIST,
     "[UpDecoderBlock2D, UpDecoderBlock2D, UpDecoderBlock2D, UpDecoderBlock2D]", 0, 0, NULL,
     "decoder blocks (UpDecoderBlock2D)"},
    {"model.layers_per_block", DF_CFG_INT, "2", 1, 16, NULL, "resnets per block"},
    {"model.latent_channels", DF_CFG_INT, "4", 1, 1024, NULL, "latent channels"},
    {"model.norm_num_groups", DF_CFG_INT, "32", 1, 1024, NULL, "GroupNorm groups"},
    {"recon_loss", DF_CFG_STRING, "l1", 0, 0, "l1|mse",
     "reconstruction term: element mean of the absolute (l1) or squared (mse) error"},
    {"kl_weight", DF_CFG_FLOAT, "1e-6", 0, 1e6, NULL,
     "weight of the KL term (batch mean of per-item KL sums)"},
    {"scaling_factor_images", DF_CFG_INT, "0", 0, 1e9, NULL,
     "images the exported scaling_factor (1 / std of the latents) is measured on (0: all)"},
    DF_CFG_BUCKET_FIELDS,
};

/* Philox stream ids of this recipe (keyed by the seed). */
enum { STREAM_INIT = 0x1417, STREAM_SCALING = 0x5CA1 };

typedef struct vae_recipe {
    df_component comp; /* a fine-tuned model */
    df_vae own;        /* a model built here */
    df_vae *vae;
    df_philox init;
    df_vae_loss_config loss;
    df_dataset *data; /* validation images and the scaling factor */
    df_transform transform;
    int64_t n_validation, scaling_images, batch, down;
    uint64_t seed;
    char base[DF_PATH_MAX];
    /* the last measured scaling factor and the weights it was measured with (the final
     * checkpoint and the final export share it) */
    bool measured;
    uint32_t measured_crc;
    double measured_factor;
    int64_t measured_images;
} vae_recipe;

static df_status vae_loss_fn(void *ctx, const df_batch *const *batches, df_step_rng *rng,
                             df_tensor **loss) {
    vae_recipe *v = ctx;
    const df_batch *b = batches[0];
    const int64_t *px = b->pixels->shape; /* any bucket's size */
    if (px[2] % v->down || px[3] % v->down)
        return df_error(DF_ERR_INVALID,
                        "vae: a batch of %lldx%lld images: sides must be "
                        "multiples of %lld, the VAE's downsampling",
                        (long long)px[3], (long long)px[2], (long long)v->down);
    df_tensor *noise = df_tensor_new(DF_DTYPE_F32, DF_DIMS(px[0], v->vae->config.latent_channels,
                                                           px[2] / v->down, px[3] / v->down));
    df_philox_fill_normal(&rng->noise, df_f32(noise), noise->numel);
    df_vae_loss_parts p;
    DF_TRY(df_vae_loss(v->vae, &v->loss, b->pixels, noise, &p));
    *loss = p.loss;
    return DF_OK;
}

/* Images [first, first + n) of the data set, center-cropped (no flip), as (n, C, R, R). */
static df_status load_images(const vae_recipe *v, int64_t first, int64_t n, df_tensor **out) {
    int r = v->transform.resolution, c = v->vae->config.in_channels;
    df_tensor *x = df_tensor_new(DF_DTYPE_F32, DF_DIMS(n, c, r, r));
    for (int64_t i = 0; i < n; i++) {
        df_tensor *img;
        DF_TRY(df_dataset_image(v->data, first + i, &v->transform.decode, &img));
        df_transform_apply(&v->transform, img, NULL, df_f32(x) + i * c * r * r);
    }
    *out = x;
    return DF_OK;
}

static uint32_t weights_crc(const df_params *r) {
    uint32_t crc = 0;
    for (int i = 0; i < r->n; i++) {
        const df_tensor *t = r->items[i].tensor;
        crc = df_crc32c_update(crc, t->data, (size_t)t->numel * sizeof(float));
    }
    return crc;
}

/* 1 / std (unbiased, over every element) of posterior samples of the data set's images. */
static df_status measure_scaling(vae_recipe *v, double *factor, int64_t *n_images) {
    uint32_t crc = weights_crc(&v->vae->params);
    if (v->measured && v->measured_crc == crc) {
        *factor = v->measured_factor;
        *n_images = v->measured_images;
        return DF_OK;
    }
    int64_t n = df_dataset_images(v->data);
    if (v->scaling_images > 0 && v->scaling_images < n) n = v->scaling_images;
    df_philox g;
    df_philox_init(&g, v->seed, STREAM_SCALING);
    double sum = 0, sumsq = 0;
    int64_t count = 0;
    bool grad = df_grad_set_enabled(false);
    df_status st = DF_OK;
    for (int64_t first = 0; first < n && st == DF_OK; first += v->batch) {
        df_scope scope = df_scope_begin();
        int64_t k = n - first < v->batch ? n - first : v->batch;
        df_tensor *x;
        st = load_images(v, first, k, &x);
        if (st == DF_OK) {
            df_tensor *mean, *logvar;
            df_vae_encode(v->vae, x, &mean, &logvar);
            df_tensor *z = df_posterior_sample(mean, logvar, df_posterior_noise(mean, &g));
            for (int64_t i = 0; i < z->numel; i++) {
                double e = df_f32(z)[i];
                sum += e;
                sumsq += e * e;
            }
            count += z->numel;
        }
        df_scope_end(scope);
    }
    df_grad_set_enabled(grad);
    if (st != DF_OK) return st;
    double mean = sum / (double)count,
           var = (sumsq - (double)count * mean * mean) / (double)(count - 1);
    if (!(count > 1 && var > 0 && isfinite(var)))
        return df_error(DF_ERR_INVALID,
                        "vae: the latents of %lld images have no spread: no "
                        "scaling_factor",
                        (long long)n);
    *factor = 1.0 / sqrt(var);
    *n_images = n;
    v->measured = true;
    v->measured_crc = crc;
    v->measured_factor = *factor;
    v->measured_images = n;
    return DF_OK;
}

static df_status vae_export(void *ctx, const char *dir) {
    vae_recipe *v = ctx;
    double factor = 0;
    int64_t n = 0;
    DF_TRY(measure_scaling(v, &factor, &n));
    df_vae_config c = v->vae->config;
    c.scaling_factor = (float)factor;
    fprintf(stderr,
            "diffusion: vae: latent scaling_factor %.6g (1 / std of posterior samples of %lld "
            "images), written to vae/config.json\n",
            (double)c.scaling_factor, (long long)n);
    char path[DF_PATH_MAX];
    DF_TRY(df_pathf(path, sizeof path, "%s/vae", dir));
    DF_TRY(df_mkdirs(path));
    DF_TRY(df_pathf(path, sizeof path, "%s/vae/config.json", dir));
    DF_TRY(df_vae_config_save(&c, path));
    DF_TRY(df_pathf(path, sizeof path, "%s/vae/diffusion_pytorch_model.safetensors", dir));
    return df_params_save(&v->vae->params, path);
}

static df_status vae_validate(void *ctx, int64_t step, df_tensor **grid) {
    (void)step;
    vae_recipe *v = ctx;
    int64_t n =
        v->n_validation < df_dataset_images(v->data) ? v->n_validation : df_dataset_images(v->data);
    df_tensor *x;
    DF_TRY(load_images(v, 0, n, &x));
    bool grad = df_grad_set_enabled(false);
    df_tensor *mean, *logvar;
    df_vae_encode(v->vae, x, &mean, &logvar);
    df_tensor *rec = df_vae_decode(v->vae, mean);
    df_grad_set_enabled(grad);
    df_tensor *both =
        df_tensor_new(DF_DTYPE_F32, DF_DIMS(2 * n, x->shape[1], x->shape[2], x->shape[3]));
    memcpy(df_f32(both), df_f32(x), sizeof(float) * (size_t)x->numel);
    memcpy(df_f32(both) + x->numel, df_f32(rec), sizeof(float) * (size_t)rec->numel);
    *grid = df_images_to_grid(both, (int)n);
    return DF_OK;
}

static void vae_free(void *ctx) {
    vae_recipe *v = ctx;
    if (v->comp.params)
        df_component_free(&v->comp);
    else if (v->vae)
        df_vae_free(&v->own);
    df_dataset_free(v->data);
    free(v);
}

/* The AutoencoderKL of the model.* keys. */
static df_status config_from_keys(const df_config *cfg, df_vae_config *mc) {
    *mc = df_vae_config_default();
    DF_TRY(df_recipe_model_blocks(cfg, mc->block_out_channels, mc->down_block_types,
                                  mc->up_block_types, &mc->n_blocks));
    mc->layers_per_block = (int)df_config_int(cfg, "model.layers_per_block");
    mc->latent_channels = (int)df_config_int(cfg, "model.latent_channels");
    mc->norm_num_groups = (int)df_config_int(cfg, "model.norm_num_groups");
    mc->sample_size = (int)df_config_int(cfg, "resolution");
    return DF_OK;
}

/* Loads the folder to fine-tune: an AutoencoderKL folder, or a pipeline folder's vae/. */
static df_status load_base(vae_recipe *v, const char *path) {
    char dir[DF_PATH_MAX], cfg[DF_PATH_MAX];
    struct stat st;
    DF_TRY(df_pathf(cfg, sizeof cfg, "%s/config.json", path));
    if (stat(cfg, &st) == 0)
        DF_TRY(df_pathf(dir, sizeof dir, "%s", path));
    else
        DF_TRY(df_pathf(dir, sizeof dir, "%s/vae", path));
    DF_TRY(df_component_load(dir, &v->comp));
    if (!v->comp.vae)
        return df_error(DF_ERR_INVALID,
                        "%s: is a %s, not an AutoencoderKL "
                        "(pretrained_model_name_or_path)",
                        dir, v->comp.class_name);
    v->vae = v->comp.vae;
    snprintf(v->base, sizeof v->base, "%s", dir);
    return DF_OK;
}

static df_status vae_setup(vae_recipe *v, const df_config *cfg) {
    const char *base = df_config_str(cfg, "pretrained_model_name_or_path");
    if (*base) {
        DF_TRY(load_base(v, base));
    } else {
        df_vae_config mc;
        DF_TRY(config_from_keys(cfg, &mc));
        df_philox_init(&v->init, v->seed, STREAM_INIT);
        DF_TRY(df_vae_init(&v->own, &mc, (df_init){.gen = &v->init}));
        v->vae = &v->own;
    }
    if (v->vae->config.in_channels != 3 || v->vae->config.out_channels != 3)
        return df_error(DF_ERR_INVALID,
                        "the VAE must map RGB to RGB (in_channels %d, out_channels %d): the data "
                        "loader gives RGB images",
                        v->vae->config.in_channels, v->vae->config.out_channels);
    int64_t res = df_config_int(cfg, "resolution"),
            down = (int64_t)1 << (v->vae->config.n_blocks - 1);
    if (res % down != 0)
        return df_error(DF_ERR_INVALID,
                        "resolution %lld is not divisible by 2^%d, the VAE's downsampling "
                        "(config)",
                        (long long)res, v->vae->config.n_blocks - 1);
    v->down = down;
    if (df_config_bool(cfg, "enable_bucket") && df_config_int(cfg, "bucket_reso_steps") % down)
        return df_error(DF_ERR_INVALID,
                        "bucket_reso_steps %lld is not a multiple of %lld, the VAE's downsampling "
                        "(config)",
                        (long long)df_config_int(cfg, "bucket_reso_steps"), (long long)down);
    const char *dir = df_config_str(cfg, "train_data_dir");
    if (!*dir) return df_error(DF_ERR_INVALID, "train_data_dir is not set (config)");
    df_dataset_opts o = df_dataset_opts_default();
    o.skip_bad_images = df_config_bool(cfg, "skip_bad_images");
    DF_TRY(df_dataset_open(dir, &o, &v->data));
    if (df_dataset_images(v->data) == 0)
        return df_error(DF_ERR_INVALID, "%s: the dataset is empty (train_data_dir)", dir);
    v->transform = df_transform_default((int)res);
    v->transform.center_crop = true;
    v->transform.random_flip = false;
    return DF_OK;
}

static df_status vae_create(const df_config *cfg, df_recipe *r) {
    vae_recipe *v = calloc(1, sizeof *v);
    if (!v) return df_error(DF_ERR_NOMEM, "out of memory");
    v->seed = (uint64_t)df_config_int(cfg, "seed");
    v->loss = (df_vae_loss_config){
        .recon = strcmp(df_config_str(cfg, "recon_loss"), "mse") == 0 ? DF_RECON_MSE : DF_RECON_L1,
        .kl_weight = (float)df_config_float(cfg, "kl_weight")};
    v->n_validation = df_config_int(cfg, "num_validation_images");
    v->scaling_images = df_config_int(cfg, "scaling_factor_images");
    v->batch = df_config_int(cfg, "train_batch_size");
    df_status st = vae_setup(v, cfg);
    if (st != DF_OK) {
        vae_free(v);
        return st;
    }
    *r = (df_recipe){.name = "vae",
                     .ctx = v,
                     .params = &v->vae->params,
                     .base_path = v->base[0] ? v->base : NULL,
                     .buckets = true,
                     .loss = vae_loss_fn,
                     .export_model = vae_export,
                     .validate = vae_validate,
                     .free = vae_free};
    return DF_OK;
}

const df_recipe_def df_recipe_vae = {
    .name = "vae",
    .fields = vae_fields,
    .n_fields = (int)(sizeof vae_fields / sizeof vae_fields[0]),
    .create = vae_create,
};
