/* rng_philox.c — Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 * SC'11), the counter-based generator for training streams. The state is (key, counter): a
 * checkpoint stores two integers and a restored stream continues exactly. Streams of one seed
 * differ in the high key word, so they never overlap.
 *
 * uniform: the top 24 bits of a word times 2^-24, in [0, 1).
 * normal: Box-Muller on two uniforms, both values used (in order cos, sin).
 */
#include "autograd/autograd.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox_block(uint64_t counter, uint64_t key, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

void df_philox_init(df_philox *g, uint64_t seed, uint64_t stream) {
    /* splitmix the stream id into the key so that nearby seeds/streams are unrelated */
    uint64_t z = stream + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    g->key = seed ^ z;
    g->counter = 0;
    g->buf_used = 4;
}

uint32_t df_philox_u32(df_philox *g) {
    if (g->buf_used == 4) {
        philox_block(g->counter++, g->key, g->buf);
        g->buf_used = 0;
    }
    return g->buf[g->buf_used++];
}

float df_philox_uniform(df_philox *g) {
    return (float)(df_philox_u32(g) >> 8) * (1.0f / 16777216.0f);
}

float df_philox_normal(df_philox *g) {
    float z;
    df_philox_fill_normal(g, &z, 1);
    return z;
}

void df_philox_fill_uniform(df_philox *g, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = df_philox_uniform(g);
}

void df_philox_fill_normal(df_philox *g, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i += 2) {
        /* u1 in (0, 1] so the log is finite */
        double u1 = ((double)(df_philox_u32(g) >> 8) + 1.0) / 16777216.0;
        double u2 = (double)(df_philox_u32(g) >> 8) / 16777216.0;
        double r = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
        out[i] = (float)(r * cos(th));
        if (i + 1 < n) out[i + 1] = (float)(r * sin(th));
    }
}
