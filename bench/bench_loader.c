/* bench_loader.c — images per second of the data pipeline: decode (or HDF5 read) + resize
 * (shorter side, bilinear) + random crop + flip + to-tensor in [-1, 1], assembled into batches
 * by the loader's worker threads. Compared with bench/pillow_loader.py (Pillow doing the same
 * work in one Python process) by bench/run-loader.sh.
 *
 *   bench_loader PATH RESOLUTION WORKERS [BATCH] [SECONDS]
 * PATH is an image folder (metadata.jsonl or sidecar captions) or an HDF5 pack. Runs whole
 * epochs until at least SECONDS (default 5) have passed; prints one line
 * "images_per_s=<x> images=<n> seconds=<t> workers=<w>".
 */
#include "datasets/datasets.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_loader PATH RESOLUTION WORKERS [BATCH] [SECONDS]\n");
        return 2;
    }
    int res = atoi(argv[2]), workers = atoi(argv[3]);
    int batch = argc > 4 ? atoi(argv[4]) : 32;
    double seconds = argc > 5 ? atof(argv[5]) : 5.0;
    df_dataset *ds;
    if (df_dataset_open(argv[1], NULL, &ds) != DF_OK) {
        fprintf(stderr, "bench_loader: %s\n", df_last_error());
        return 1;
    }
    df_loader_opts o = df_loader_opts_default(batch, res);
    o.workers = workers;
    o.seed = 1;
    double t0 = now();
    df_loader *l;
    if (df_loader_new(ds, &o, &l) != DF_OK) {
        fprintf(stderr, "bench_loader: %s\n", df_last_error());
        return 1;
    }
    int64_t images = 0;
    double t = 0;
    for (;;) {
        df_batch *b;
        if (df_loader_next(l, &b) != DF_OK) {
            fprintf(stderr, "bench_loader: %s\n", df_last_error());
            return 1;
        }
        images += b->n;
        bool end = b->epoch_end;
        df_batch_free(b);
        t = now() - t0;
        if (end && t >= seconds) break;
    }
    df_loader_free(l);
    df_dataset_free(ds);
    printf("images_per_s=%.1f images=%lld seconds=%.2f workers=%d\n", images / t, (long long)images,
           t, workers);
    return 0;
}
