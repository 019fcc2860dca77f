/* bench_emoji_nn.c — a CLIP-free measure of a text-to-image model trained on a captioned image
 * folder (the emoji SD base, issue 17): for N captions of the data set, generate one image from
 * the caption and find its nearest neighbours among ALL training images (mean squared pixel
 * distance at the training resolution, after the training transform: shorter side resized,
 * center crop, alpha composited onto white). A prompt is a hit at k when the image whose caption
 * it is ranks among the k nearest. Chance is k / images.
 *
 * Usage: bench_emoji_nn MODEL_DIR DATA_DIR [--prompts N] [--steps S] [--guidance G] [--seed K]
 *                       [--resolution R] [--grid OUT.png] [--verbose]
 *   defaults: 100 prompts (every (images / N)-th caption), 20 steps, guidance 4, seed 0 (prompt
 *   i uses seed K + i), resolution 64. --grid writes rows of (generated, nearest, the prompt's
 *   own image) for the first 16 prompts. --verbose prints one line per prompt.
 * Output: one JSON line {"prompts", "images", "top1", "top5", "top10", "median_rank",
 *   "chance_top1", "seconds"}.
 */
#include "datasets/datasets.h"
#include "infer/infer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *what) {
    fprintf(stderr, "bench_emoji_nn: %s: %s\n", what, df_last_error());
    exit(1);
}

static int cmp_int(const void *a, const void *b) {
    return *(const int *)a - *(const int *)b;
}

/* Every training image after the training transform, in [-1, 1] (C, R, R) rows. */
static float *load_references(const df_dataset *ds, int res, int64_t n) {
    size_t per = (size_t)3 * res * res;
    float *ref = malloc((size_t)n * per * sizeof(float));
    if (!ref) {
        fprintf(stderr, "bench_emoji_nn: out of memory\n");
        exit(1);
    }
    df_transform t = df_transform_default(res);
    t.center_crop = true;
    t.random_flip = false;
    for (int64_t i = 0; i < n; i++) {
        df_tensor *img = NULL;
        if (df_dataset_image(ds, i, &t.decode, &img) != DF_OK) die("reading a training image");
        df_transform_apply(&t, img, NULL, ref + (size_t)i * per);
        df_tensor_free(img);
    }
    return ref;
}

/* The rank (0 = nearest) of image `own` among all references by distance to x, and the nearest. */
static int rank_of(const float *ref, int64_t n, size_t per, const float *x, int64_t own,
                   int64_t *nearest) {
    double own_d = 0, best = 1e300;
    double *d = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        const float *r = ref + (size_t)i * per;
        double s = 0;
        for (size_t k = 0; k < per; k++) {
            double e = (double)x[k] - r[k];
            s += e * e;
        }
        d[i] = s;
        if (s < best) best = s, *nearest = i;
    }
    own_d = d[own];
    int rank = 0;
    for (int64_t i = 0; i < n; i++) rank += d[i] < own_d || (d[i] == own_d && i < own);
    free(d);
    return rank;
}

/* Copies (3, R, R) floats in [-1, 1] into cell `col` of row `row` of a grid (N, 3, R, R) in [0, 1]. */
static void put_cell(df_tensor *grid, int cell, const float *x, size_t per) {
    float *g = df_f32(grid) + (size_t)cell * per;
    for (size_t k = 0; k < per; k++) g[k] = x[k] * 0.5f + 0.5f;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_emoji_nn MODEL_DIR DATA_DIR [--prompts N] [--steps S] "
                        "[--guidance G] [--seed K] [--resolution R] [--grid OUT.png] "
                        "[--verbose]\n");
        return 2;
    }
    int n_prompts = 100, steps = 20, res = 64;
    double guidance = 4.0;
    uint64_t seed = 0;
    const char *grid_path = NULL;
    bool verbose = false;
    for (int i = 3; i < argc; i++) {
        bool more = i + 1 < argc;
        if (!strcmp(argv[i], "--prompts") && more)
            n_prompts = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && more)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--guidance") && more)
            guidance = atof(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && more)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--resolution") && more)
            res = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--grid") && more)
            grid_path = argv[++i];
        else if (!strcmp(argv[i], "--verbose"))
            verbose = true;
        else {
            fprintf(stderr, "bench_emoji_nn: unknown or incomplete argument %s\n", argv[i]);
            return 2;
        }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    df_dataset_opts dopts = df_dataset_opts_default();
    df_dataset *ds = NULL;
    if (df_dataset_open(argv[2], &dopts, &ds) != DF_OK) die(argv[2]);
    int64_t n = df_dataset_images(ds);
    if (n_prompts < 1 || n_prompts > n) n_prompts = (int)n;
    size_t per = (size_t)3 * res * res;
    float *ref = load_references(ds, res, n);

    df_sd_pipeline p = {0};
    if (df_sd_pipeline_load(argv[1], NULL, &p) != DF_OK) die(argv[1]);
    int *ranks = malloc((size_t)n_prompts * sizeof(int));
    int grid_rows = n_prompts < 16 ? n_prompts : 16;
    df_tensor *grid = df_zeros(DF_DTYPE_F32, 4, (int64_t[]){grid_rows * 3, 3, res, res});
    float *x = malloc(per * sizeof(float));
    int hits1 = 0, hits5 = 0, hits10 = 0;
    for (int k = 0; k < n_prompts; k++) {
        int64_t own = (int64_t)k * n / n_prompts;
        const char *prompt = df_dataset_caption(ds, own);
        df_scope scope = df_scope_begin();
        df_tensor *cond = NULL, *uncond = NULL;
        if (df_sd_encode_prompt(&p, prompt, NULL, 0, guidance > 1, &cond, &uncond) != DF_OK)
            die(prompt);
        df_sd_request r = {.cond = cond,
                           .uncond = uncond,
                           .steps = steps,
                           .guidance_scale = guidance,
                           .num_images = 1,
                           .height = res,
                           .width = res,
                           .seed = seed + (uint64_t)k,
                           .safety = DF_SAFETY_OFF,
                           .strength = -1};
        df_sd_result out = {0};
        if (df_sd_generate(&p, &r, &out) != DF_OK) die(prompt);
        const float *img = df_f32(out.image); /* [0, 1] */
        for (size_t i = 0; i < per; i++) x[i] = img[i] * 2.0f - 1.0f;
        int64_t nearest = 0;
        ranks[k] = rank_of(ref, n, per, x, own, &nearest);
        hits1 += ranks[k] < 1, hits5 += ranks[k] < 5, hits10 += ranks[k] < 10;
        if (verbose)
            printf("%4d rank %5d  %s  (nearest: %s)\n", k, ranks[k], prompt,
                   df_dataset_caption(ds, nearest));
        if (k < grid_rows) {
            put_cell(grid, k * 3, x, per);
            put_cell(grid, k * 3 + 1, ref + (size_t)nearest * per, per);
            put_cell(grid, k * 3 + 2, ref + (size_t)own * per, per);
        }
        df_tensor_free(out.latents);
        df_tensor_free(out.image);
        free(out.safety);
        df_scope_end(scope);
    }
    if (grid_path) {
        df_scope scope = df_scope_begin();
        if (df_png_write(grid_path, df_unit_images_to_grid(grid, 3), 0, NULL, NULL) != DF_OK)
            die(grid_path);
        df_scope_end(scope);
    }
    qsort(ranks, (size_t)n_prompts, sizeof(int), cmp_int);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("{\"prompts\": %d, \"images\": %lld, \"top1\": %.3f, \"top5\": %.3f, \"top10\": %.3f, "
           "\"median_rank\": %d, \"chance_top1\": %.5f, \"seconds\": %.1f}\n",
           n_prompts, (long long)n, (double)hits1 / n_prompts, (double)hits5 / n_prompts,
           (double)hits10 / n_prompts, ranks[n_prompts / 2], 1.0 / (double)n,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    free(x);
    free(ranks);
    free(ref);
    df_tensor_free(grid);
    df_sd_pipeline_free(&p);
    df_dataset_free(ds);
    return 0;
}
