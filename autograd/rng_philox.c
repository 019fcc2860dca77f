/* rng_philox.c — Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 * SC'11; Random123's philox4x32), the counter-based generator for training streams.
 *
 * Block b of stream s under seed k is philox(counter = (b lo, b hi, s lo, s hi), key = k). The
 * state is (key, stream, counter, buf_used): a checkpoint stores four integers and a restored
 * stream continues exactly. Streams of one seed are disjoint counter ranges, so they never
 * overlap. df_philox_block is verified against Random123's known-answer vectors
 * (tests/autograd/test_rng.c).
 *
 * uniform: the top 24 bits of a word times 2^-24, in [0, 1).
 * normal: Box-Muller on two words, u1 in (0, 1] so the log is finite; both values used by the
 * fill (in order cos, sin).
 */
#include "autograd/autograd.h"
#include "autograd/rng_impl.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u /* round multipliers */
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* key schedule (Weyl) increments */
#define PHILOX_W1 0xBB67AE85u

void df_philox_block(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        /* two 32x32->64 products; the high halves mix with the other words and the key */
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0, c1 = (uint32_t)p1, c2 = n2, c3 = (uint32_t)p0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* Computes block `counter` of g's stream into g->buf. */
static void philox_refill(df_philox *g, uint64_t counter) {
    const uint32_t ctr[4] = {(uint32_t)counter, (uint32_t)(counter >> 32), (uint32_t)g->stream,
                             (uint32_t)(g->stream >> 32)};
    const uint32_t key[2] = {(uint32_t)g->key, (uint32_t)(g->key >> 32)};
    df_philox_block(ctr, key, g->buf);
}

void df_philox_init(df_philox *g, uint64_t seed, uint64_t stream) {
    g->key = seed;
    g->stream = stream;
    g->counter = 0;
    g->buf_used = 4;
}

void df_philox_set_state(df_philox *g, uint64_t key, uint64_t stream, uint64_t counter,
                         int buf_used) {
    DF_ASSERT(buf_used >= 0 && buf_used <= 4, "df_philox_set_state: buf_used %d not in 0..4",
              buf_used);
    DF_ASSERT(buf_used == 4 || counter > 0,
              "df_philox_set_state: buf_used %d with counter 0 (no block drawn yet)", buf_used);
    df_philox_init(g, key, stream);
    g->counter = counter;
    g->buf_used = buf_used;
    if (buf_used < 4) philox_refill(g, counter - 1);
}

uint32_t df_philox_u32(df_philox *g) {
    if (g->buf_used == 4) {
        philox_refill(g, g->counter++);
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
        double u1 = ((double)(df_philox_u32(g) >> 8) + 1.0) / 16777216.0;
        double u2 = (double)(df_philox_u32(g) >> 8) / 16777216.0;
        double r = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
        out[i] = (float)(r * cos(th));
        if (i + 1 < n) out[i + 1] = (float)(r * sin(th));
    }
}
