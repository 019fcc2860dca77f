/* fuzz_checkpoint_done.c — libFuzzer target for the checkpoint DONE reader (train/checkpoint.c,
 * df_ckpt_verify): the input becomes the DONE file of a checkpoint folder that also holds one
 * small file, and verification must give DF_OK or a clean error, never a crash, a read outside
 * the folder or a leak. See tests/fuzz/README.md. */
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/df_fuzz_done_XXXXXX");
        if (!mkdtemp(dir)) abort();
        char path[128];
        snprintf(path, sizeof path, "%s/a.bin", dir);
        FILE *f = fopen(path, "wb");
        if (!f) abort();
        fputs("0123456789", f);
        fclose(f);
    }
    char done[128];
    snprintf(done, sizeof done, "%s/DONE", dir);
    FILE *f = fopen(done, "wb");
    if (!f) abort();
    fwrite(data, 1, size, f);
    fclose(f);
    (void)df_ckpt_verify(dir);
    return 0;
}
