/* fuzz_image.c — libFuzzer target for the PNG and JPEG decoders (datasets/image*.c): any bytes
 * must give DF_OK with a well-formed image or a clean DF_ERR_* — never a crash, a leak or an
 * out-of-bounds access. The first byte picks grey or RGB output and a background colour.
 * Images over 4M pixels are probed only, to stay inside libFuzzer's memory limit. */
#include "datasets/datasets.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_decode_opts o = df_decode_opts_default();
    if (size > 0) {
        o.channels = (data[0] & 1) ? 1 : 3;
        o.background[1] = data[0];
    }
    int w, h;
    if (df_image_probe(data, size, "fuzz", &w, &h) != DF_OK) {
        /* probe and decode must agree on header failures: decode it anyway */
        df_tensor *t = NULL;
        if (df_image_decode(data, size, "fuzz", &o, &t) == DF_OK) df_tensor_free(t);
        return 0;
    }
    if ((int64_t)w * h > (4 << 20)) return 0;
    df_tensor *t = NULL;
    if (df_image_decode(data, size, "fuzz", &o, &t) == DF_OK) {
        DF_ASSERT(t->shape[0] == h && t->shape[1] == w && t->shape[2] == o.channels,
                  "decode/probe mismatch");
        df_tensor *r = df_image_resize(t, 7, 5, DF_RESAMPLE_BICUBIC);
        df_tensor_free(r);
        df_tensor_free(t);
    }
    return 0;
}
