/* cmd_dataset.c — `diffusion dataset pack|inspect`: pack an image folder into an HDF5 file and
 * describe a dataset (count, resolution histogram, caption statistics, unreadable files).
 *
 *   diffusion dataset pack SRC OUT.h5 --resolution R [--filter bilinear|bicubic|area|lanczos]
 *                          [--caption-column NAME] [--skip-bad-images]
 *   diffusion dataset inspect PATH [--caption-column NAME] [--max-list N]
 *
 * Errors: one line "diffusion: dataset <sub>: <why> (<file>[:<line>])", exit code 1; a bad
 * argument prints "diffusion: dataset <sub>: <what is wrong>" and the usage, exit code 2.
 * OUT is written atomically (a failed or interrupted pack leaves an existing OUT as it was) and
 * may not be one of the inputs (df_pack_write).
 */
#include "datasets/datasets.h"
#include "recipes/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(FILE *f) {
    fprintf(f, "usage: diffusion dataset pack SRC OUT.h5 --resolution R [--filter "
               "bilinear|bicubic|area|lanczos]\n"
               "                              [--caption-column NAME] [--skip-bad-images]\n"
               "       diffusion dataset inspect PATH [--caption-column NAME] [--max-list N]\n");
    return 2;
}

/* A bad argument: "diffusion: dataset <sub>: <why>", then the usage; exit code 2. */
static int bad_arg(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad_arg(const char *sub, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "diffusion: dataset %s: ", sub);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return usage(stderr);
}

/* Rewrites the library's "<file>[:<line>]: <why>" as "<why> (<file>[:<line>])" and fails. */
static int fail(const char *what) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", df_last_error());
    char *sep = strstr(msg, ": ");
    if (sep) {
        *sep = '\0';
        df_error(DF_ERR_FORMAT, "%s (%s)", sep + 2, msg);
    }
    return df_cli_fail(what);
}

static const char *kind_name(df_dataset_kind k) {
    switch (k) {
    case DF_DATASET_METADATA: return "image folder with metadata.jsonl";
    case DF_DATASET_SIDECAR: return "image folder with sidecar captions";
    default: return "HDF5 pack";
    }
}

static int cmd_pack(int argc, char **argv) {
    const char *src = NULL, *out = NULL;
    int res = 0;
    df_resample filter = DF_RESAMPLE_BICUBIC;
    df_dataset_opts o = df_dataset_opts_default();
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool takes = strcmp(a, "--resolution") == 0 || strcmp(a, "--filter") == 0 ||
                     strcmp(a, "--caption-column") == 0;
        if (takes && i + 1 >= argc) return bad_arg("pack", "%s needs a value", a);
        if (strcmp(a, "--resolution") == 0) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (!*argv[i] || *end || v < 1 || v > DF_IMAGE_MAX_SIDE)
                return bad_arg("pack", "--resolution must be an integer in 1..%d, got '%s'",
                               DF_IMAGE_MAX_SIDE, argv[i]);
            res = (int)v;
        } else if (strcmp(a, "--filter") == 0) {
            if (!df_resample_parse(argv[++i], &filter))
                return bad_arg("pack", "unknown --filter '%s' (bilinear, bicubic or area)",
                               argv[i]);
        } else if (strcmp(a, "--caption-column") == 0)
            o.caption_column = argv[++i];
        else if (strcmp(a, "--skip-bad-images") == 0)
            o.skip_bad_images = true;
        else if (a[0] == '-')
            return bad_arg("pack", "unknown option '%s'", a);
        else if (!src)
            src = a;
        else if (!out)
            out = a;
        else
            return bad_arg("pack", "unexpected argument '%s' (SRC and OUT are already '%s', '%s')",
                           a, src, out);
    }
    if (!src) return bad_arg("pack", "missing SRC (an image folder or a pack)");
    if (!out) return bad_arg("pack", "missing OUT (the .h5 file to write)");
    if (res <= 0) return bad_arg("pack", "missing --resolution R");
    df_dataset *ds;
    if (df_dataset_open(src, &o, &ds) != DF_OK) return fail("dataset pack");
    int64_t skipped = 0;
    df_status s = df_pack_write(ds, out, res, filter, src, &skipped);
    int64_t n = df_dataset_images(ds);
    df_dataset_free(ds);
    if (s != DF_OK) return fail("dataset pack");
    printf("packed %lld images (%lld skipped) at %dx%d into %s\n", (long long)(n - skipped),
           (long long)skipped, res, res, out);
    return 0;
}

typedef struct res_count {
    int w, h;
    int64_t n;
} res_count;

static int cmp_count(const void *a, const void *b) {
    const res_count *x = a, *y = b;
    if (x->n != y->n) return x->n < y->n ? 1 : -1;
    if (x->w != y->w) return x->w - y->w;
    return x->h - y->h;
}

static int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int max_list = 20;
    df_dataset_opts o = df_dataset_opts_default();
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--caption-column") == 0 && i + 1 < argc)
            o.caption_column = argv[++i];
        else if (strcmp(argv[i], "--max-list") == 0 && i + 1 < argc)
            max_list = atoi(argv[++i]);
        else if (argv[i][0] == '-')
            return bad_arg("inspect", "unknown option '%s'", argv[i]);
        else if (path)
            return bad_arg("inspect", "unexpected argument '%s' (PATH is already '%s')", argv[i],
                           path);
        else
            path = argv[i];
    }
    if (!path) return bad_arg("inspect", "missing PATH (an image folder or a pack)");
    o.skip_bad_images = true; /* list every bad entry instead of stopping at the first */
    df_dataset *ds;
    if (df_dataset_open(path, &o, &ds) != DF_OK) return fail("dataset inspect");
    int64_t n = df_dataset_images(ds), bad = 0;
    res_count *hist = NULL;
    int n_hist = 0;
    char **bad_msgs = calloc((size_t)n + 1, sizeof(char *));
    for (int64_t i = 0; i < n; i++) {
        df_tensor *img;
        if (df_dataset_image(ds, i, NULL, &img) != DF_OK) {
            bad_msgs[bad++] = strdup(df_last_error());
            continue;
        }
        int w = (int)img->shape[1], h = (int)img->shape[0];
        df_tensor_free(img);
        int k = 0;
        while (k < n_hist && !(hist[k].w == w && hist[k].h == h)) k++;
        if (k == n_hist) {
            hist = realloc(hist, sizeof *hist * (size_t)(n_hist + 1));
            hist[n_hist++] = (res_count){w, h, 0};
        }
        hist[k].n++;
    }
    int64_t empty = 0, chars = 0, words = 0, min_len = -1, max_len = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *c = df_dataset_caption(ds, i);
        int64_t len = (int64_t)strlen(c);
        if (len == 0) empty++;
        chars += len;
        if (min_len < 0 || len < min_len) min_len = len;
        if (len > max_len) max_len = len;
        bool in = false;
        for (const char *p = c; *p; p++) {
            bool sp = *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r';
            if (!sp && !in) words++;
            in = !sp;
        }
    }
    printf("dataset:  %s (%s)\n", path, kind_name(df_dataset_kind_of(ds)));
    printf("images:   %lld (%lld readable, %lld unreadable)\n", (long long)n, (long long)(n - bad),
           (long long)bad);
    printf("resolutions (width x height: images):\n");
    qsort(hist, (size_t)n_hist, sizeof *hist, cmp_count);
    for (int k = 0; k < n_hist && k < max_list; k++)
        printf("  %5d x %-5d %lld\n", hist[k].w, hist[k].h, (long long)hist[k].n);
    if (n_hist > max_list) printf("  ... %d more sizes\n", n_hist - max_list);
    printf(
        "captions: %lld with text, %lld empty; length in characters min %lld, mean %.1f, max %lld; "
        "mean %.1f words\n",
        (long long)(n - empty), (long long)empty, (long long)(min_len < 0 ? 0 : min_len),
        n ? (double)chars / n : 0.0, (long long)max_len, n ? (double)words / n : 0.0);
    int64_t bad_entries = df_dataset_bad_entries(ds);
    if (bad_entries) {
        printf("entries left out (bad metadata lines or caption files, non-regular files): %lld\n",
               (long long)bad_entries);
        for (int64_t i = 0; i < bad_entries; i++) printf("  %s\n", df_dataset_bad_entry(ds, i));
    }
    if (bad) {
        printf("unreadable files:\n");
        for (int64_t i = 0; i < bad; i++) printf("  %s\n", bad_msgs[i]);
    }
    for (int64_t i = 0; i < bad; i++) free(bad_msgs[i]);
    free(bad_msgs);
    free(hist);
    df_dataset_free(ds);
    return 0;
}

int df_cmd_dataset(int argc, char **argv) {
    if (argc < 1) {
        fprintf(stderr, "diffusion: dataset: missing subcommand (pack or inspect)\n");
        return usage(stderr);
    }
    if (strcmp(argv[0], "pack") == 0) return cmd_pack(argc - 1, argv + 1);
    if (strcmp(argv[0], "inspect") == 0) return cmd_inspect(argc - 1, argv + 1);
    if (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "diffusion: dataset: unknown subcommand '%s' (pack or inspect)\n", argv[0]);
    return usage(stderr);
}
