/* crc32c.c — CRC-32C (Castagnoli), the checksum of checkpoint DONE files and of TensorBoard
 * record framing. SSE4.2's crc32 instruction (part of the x86-64-v2 baseline we build for),
 * eight bytes per step. */
#include "train/train.h"

#include <nmmintrin.h>
#include <string.h>

uint32_t df_crc32c_update(uint32_t crc, const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}

uint32_t df_crc32c(const void *data, size_t n) {
    return df_crc32c_update(0, data, n);
}
