/* test_latent_cache.c — cache_latents (train/latent_cache.c) on a tiny AutoencoderKL
 * (tests/fixtures/train/vae_loss) and six generated 20x16 images: a loader without pixels
 * gives the batches (indices, captions, flips) of the loader with pixels; the cached posteriors
 * of a batch equal encoding its pixels, and so do the latents and a diffusion loss on them
 * (within 1e-6), with aspect-ratio buckets too (the loader's bucket resize and crop); a second
 * open reads the file; another VAE, other settings, a rewritten image, a damaged or truncated
 * file are each reported and rebuilt; a random crop is refused. */
#include "tests/common/check.h"
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char root[256], data[300], cache_dir[300];

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_latcache_XXXXXX");
    cr_assert(mkdtemp(root));
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(cache_dir, sizeof cache_dir, "%s/run/latent_cache", root);
    cr_assert_eq(df_mkdirs(data), DF_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/metadata.jsonl", data);
    FILE *meta = fopen(path, "w");
    cr_assert(meta);
    for (int i = 0; i < 6; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(20, 16, 3));
        uint8_t *p = img->data;
        for (int64_t j = 0; j < img->numel; j++) p[j] = (uint8_t)((j * (7 + i)) % 251 + i * 3);
        snprintf(path, sizeof path, "%s/%d.png", data, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
        fprintf(meta, "{\"file_name\": \"%d.png\", \"text\": \"image %d\"}\n", i, i);
    }
    fclose(meta);
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(train_latent_cache, .init = setup, .fini = teardown);

typedef struct fixture {
    df_component vae;
    df_dataset *ds;
    df_latent_cache_opts o;
} fixture;

static void cache_fixture_open(fixture *f) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", fixture_path("train/vae_loss"));
    cr_assert_eq(df_component_load_frozen(dir, &f->vae), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_dataset_open(data, NULL, &f->ds), DF_OK, "%s", df_last_error());
    f->o = (df_latent_cache_opts){.dir = cache_dir, .ds = f->ds, .vae = f->vae.vae, .batch = 3};
    f->o.transform = df_transform_default(16);
    f->o.transform.center_crop = true;
    f->o.transform.random_flip = true;
}

static void cache_fixture_close(fixture *f) {
    df_dataset_free(f->ds);
    df_component_free(&f->vae);
}

static df_latent_cache *open_cache(const fixture *f, bool want_built, const char *reason) {
    df_latent_cache *c;
    cr_assert_eq(df_latent_cache_open(&f->o, &c), DF_OK, "%s", df_last_error());
    const char *why;
    bool built = df_latent_cache_built(c, &why);
    cr_assert_eq(built, want_built, "built %d, wanted %d (%s)", built, want_built, why);
    if (reason) cr_assert(strstr(why, reason), "rebuilt because '%s', wanted '%s'", why, reason);
    return c;
}

static df_batch *first_batch(const fixture *f, bool no_pixels, int which) {
    df_loader_opts lo = df_loader_opts_default(f->o.buckets ? 2 : 4, 16);
    lo.transform = f->o.transform;
    lo.buckets = f->o.buckets;
    lo.seed = 3;
    lo.workers = 1;
    lo.no_pixels = no_pixels;
    df_loader *l;
    cr_assert_eq(df_loader_new(f->ds, &lo, &l), DF_OK, "%s", df_last_error());
    df_batch *b = NULL;
    for (int k = 0; k <= which; k++) {
        df_batch_free(b);
        cr_assert_eq(df_loader_next(l, &b), DF_OK, "%s", df_last_error());
    }
    df_loader_free(l);
    return b;
}

Test(train_latent_cache, cached_equals_encoding_the_batch) {
    fixture f;
    cache_fixture_open(&f);
    df_latent_cache *c = open_cache(&f, true, "");
    int flips = 0, plain = 0;
    for (int which = 0; which < 4; which++) { /* two epochs of batches of 4 and 2 */
        df_scope scope = df_scope_begin();
        df_batch *bp = first_batch(&f, false, which), *bn = first_batch(&f, true, which);
        cr_assert(bp->pixels && !bn->pixels);
        cr_assert_eq(bp->n, bn->n);
        for (int i = 0; i < bp->n; i++) {
            cr_assert_eq(bp->indices[i], bn->indices[i]);
            cr_assert_eq(bp->flipped[i], bn->flipped[i]);
            cr_assert_str_eq(bp->captions[i], bn->captions[i]);
            flips += bp->flipped[i];
            plain += !bp->flipped[i];
        }
        bool grad = df_grad_set_enabled(false);
        df_tensor *mu, *lvu, *mc, *lvc;
        df_vae_encode(f.vae.vae, bp->pixels, &mu, &lvu);
        df_grad_set_enabled(grad);
        cr_assert_eq(df_latent_cache_batch(c, bn, &mc, &lvc), DF_OK, "%s", df_last_error());
        check_close("mean", mc, mu, 1e-6, 1e-6);
        check_close("logvar", lvc, lvu, 1e-6, 1e-6);
        /* the latents and an unconditional-style loss on them, same noise */
        df_philox g1, g2;
        df_philox_init(&g1, 9, 1);
        df_philox_init(&g2, 9, 1);
        df_tensor *zu = df_posterior_sample(mu, lvu, df_posterior_noise(mu, &g1));
        df_tensor *zc = df_posterior_sample(mc, lvc, df_posterior_noise(mc, &g2));
        check_close("z", zc, zu, 1e-6, 1e-6);
        /* the same through df_batch_latents, scaled */
        df_tensor *lat_u, *lat_c;
        df_philox_init(&g1, 9, 1);
        df_philox_init(&g2, 9, 1);
        cr_assert_eq(df_batch_latents(f.vae.vae, NULL, bp, &g1, 0.5f, &lat_u), DF_OK, "%s",
                     df_last_error());
        cr_assert_eq(df_batch_latents(f.vae.vae, c, bn, &g2, 0.5f, &lat_c), DF_OK, "%s",
                     df_last_error());
        check_close("df_batch_latents: uncached", lat_u, df_mul_scalar(zu, 0.5f), 0, 0);
        check_close("df_batch_latents: cached", lat_c, df_mul_scalar(zc, 0.5f), 0, 0);
        df_tensor *none;
        expect_status(df_batch_latents(f.vae.vae, NULL, bn, &g1, 1, &none), DF_ERR_INVALID,
                      "without pixels");
        const char *json = "{\"_class_name\": \"DDPMScheduler\", \"prediction_type\": \"epsilon\"}";
        df_sched_config sc;
        cr_assert_eq(df_sched_config_parse(json, strlen(json), "test", NULL, &sc), DF_OK);
        df_sched *s;
        cr_assert_eq(df_sched_new(&sc, &s), DF_OK);
        df_diffusion_loss_config lc = {DF_PRED_EPSILON, 1000, .snr_gamma = 5};
        df_tensor *losses[2];
        for (int k = 0; k < 2; k++) {
            df_step_rng rng;
            df_step_rng_init(&rng, 1, 0, which);
            df_diffusion_draw d;
            cr_assert_eq(df_diffusion_draw_sample(&lc, s, k ? zc : zu, &rng, &d), DF_OK);
            df_tensor *out = df_mul_scalar(d.noisy, 0.5f); /* a fixed "model" */
            cr_assert_eq(df_diffusion_loss(&lc, s, out, &d, NULL, NULL, &losses[k]), DF_OK);
        }
        check_close("loss", losses[1], losses[0], 1e-6, 1e-6);
        df_sched_free(s);
        df_sched_config_free(&sc);
        df_batch_free(bp);
        df_batch_free(bn);
        df_scope_end(scope);
    }
    cr_assert(flips > 0 && plain > 0, "both orientations met (%d flipped, %d not)", flips, plain);
    df_latent_cache_free(c);
    /* the second open reads the file */
    df_latent_cache_free(open_cache(&f, false, NULL));
    cache_fixture_close(&f);
}

Test(train_latent_cache, buckets_cached_equals_encoding_the_batch) {
    /* two shapes: 24x12 goes to the 20x12 bucket, 16x16 stays */
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/wide", root);
    cr_assert_eq(df_mkdirs(dir), DF_OK);
    for (int i = 0; i < 6; i++) {
        int w = i % 2 ? 24 : 16, h = i % 2 ? 12 : 16;
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(h, w, 3));
        for (int64_t j = 0; j < img->numel; j++)
            ((uint8_t *)img->data)[j] = (uint8_t)((j * (5 + i)) % 253);
        snprintf(path, sizeof path, "%s/%d.png", dir, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK);
        df_tensor_free(img);
    }
    fixture f;
    cache_fixture_open(&f);
    df_dataset_free(f.ds);
    cr_assert_eq(df_dataset_open(dir, NULL, &f.ds), DF_OK, "%s", df_last_error());
    df_buckets bk;
    cr_assert_eq(df_buckets_assign(f.ds, &(df_bucket_opts){16, 8, 32, 4}, &bk), DF_OK, "%s",
                 df_last_error());
    f.o.ds = f.ds;
    f.o.buckets = &bk;
    df_latent_cache *c = open_cache(&f, true, "");
    int wide = 0;
    for (int which = 0; which < 6; which++) {
        df_scope scope = df_scope_begin();
        df_batch *bp = first_batch(&f, false, which), *bn = first_batch(&f, true, which);
        cr_assert_eq(bp->bucket, bn->bucket);
        wide += bp->pixels->shape[3] == 20;
        for (int i = 0; i < bp->n; i++) cr_assert_eq(bp->flipped[i], bn->flipped[i]);
        bool grad = df_grad_set_enabled(false);
        df_tensor *mu, *lvu, *mc, *lvc;
        df_vae_encode(f.vae.vae, bp->pixels, &mu, &lvu);
        df_grad_set_enabled(grad);
        cr_assert_eq(df_latent_cache_batch(c, bn, &mc, &lvc), DF_OK, "%s", df_last_error());
        check_close("bucket mean", mc, mu, 1e-6, 1e-6);
        check_close("bucket logvar", lvc, lvu, 1e-6, 1e-6);
        df_batch_free(bp);
        df_batch_free(bn);
        df_scope_end(scope);
    }
    cr_assert(wide > 0 && wide < 6, "both buckets met (%d of 6 batches wide)", wide);
    df_latent_cache_free(c);
    df_latent_cache_free(open_cache(&f, false, NULL));
    df_buckets_free(&bk);
    cache_fixture_close(&f);
}

static void patch_file(const char *path, long offset, int truncate_to) {
    if (truncate_to >= 0) {
        cr_assert_eq(truncate(path, truncate_to), 0);
        return;
    }
    FILE *fp = fopen(path, "r+b");
    cr_assert(fp);
    fseek(fp, offset, SEEK_SET);
    int ch = fgetc(fp);
    fseek(fp, offset, SEEK_SET);
    fputc(ch ^ 0x40, fp);
    fclose(fp);
}

Test(train_latent_cache, changes_and_damage_rebuild) {
    fixture f;
    cache_fixture_open(&f);
    df_latent_cache_free(open_cache(&f, true, ""));
    /* another VAE: one weight changed */
    df_tensor *w = f.vae.vae->params.items[0].tensor;
    float keep = df_f32(w)[0];
    df_f32(w)[0] = keep + 0.25f;
    df_latent_cache_free(open_cache(&f, true, "another VAE"));
    df_f32(w)[0] = keep;
    df_latent_cache_free(open_cache(&f, true, "another VAE"));
    df_latent_cache_free(open_cache(&f, false, NULL));
    /* other settings: no flips, another filter */
    f.o.transform.random_flip = false;
    df_latent_cache *c = open_cache(&f, true, "settings");
    df_tensor *m, *lv;
    expect_status(df_latent_cache_get(c, 0, true, &m, &lv), DF_ERR_INVALID, "no flipped");
    df_latent_cache_free(c);
    f.o.transform.filter = DF_RESAMPLE_BICUBIC;
    df_latent_cache_free(open_cache(&f, true, "settings"));
    df_latent_cache_free(open_cache(&f, false, NULL));
    /* an image rewritten (same name, new bytes) */
    df_dataset_free(f.ds);
    char img[512];
    snprintf(img, sizeof img, "%s/3.png", data);
    df_tensor *px = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(20, 16, 3));
    memset(px->data, 77, (size_t)px->numel);
    cr_assert_eq(df_png_write(img, px, 0, NULL, NULL), DF_OK);
    df_tensor_free(px);
    cr_assert_eq(df_dataset_open(data, NULL, &f.ds), DF_OK);
    f.o.ds = f.ds;
    df_latent_cache_free(open_cache(&f, true, "settings"));
    /* damage: a flipped byte in the data, a truncated file, garbage */
    char path[512];
    snprintf(path, sizeof path, "%s/latents.bin", cache_dir);
    patch_file(path, 100, -1);
    df_latent_cache_free(open_cache(&f, true, "checksum"));
    patch_file(path, 0, 30);
    df_latent_cache_free(open_cache(&f, true, "truncated"));
    FILE *fp = fopen(path, "wb");
    cr_assert(fp);
    fputs("not a cache at all, but long enough to have a header of forty bytes", fp);
    fclose(fp);
    df_latent_cache_free(open_cache(&f, true, "not a latent cache"));
    df_latent_cache_free(open_cache(&f, false, NULL));
    /* a random crop cannot be cached */
    f.o.transform.center_crop = false;
    expect_status(df_latent_cache_open(&f.o, &c), DF_ERR_INVALID, "center_crop");
    df_loader_opts lo = df_loader_opts_default(4, 16);
    lo.transform = f.o.transform;
    lo.no_pixels = true;
    df_loader *l;
    expect_status(df_loader_new(f.ds, &lo, &l), DF_ERR_INVALID, "center_crop");
    cache_fixture_close(&f);
}
