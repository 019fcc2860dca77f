/* rng_torch.c — PyTorch 1.13's CPU generator, bit for bit: torch.manual_seed(s) followed by
 * torch.randn / torch.rand (float32) gives the same bits as df_torchgen_seed + _randn / _rand.
 *
 * References (read, not copied): aten/src/ATen/core/MT19937RNGEngine.h (the engine),
 * aten/src/ATen/CPUGeneratorImpl.cpp (random, random64, the cached normal),
 * aten/src/ATen/core/{DistributionsHelper,TransformationHelper}.h (uniform_real_distribution,
 * normal_distribution), aten/src/ATen/native/cpu/DistributionTemplates.h (normal_kernel,
 * normal_fill_AVX2, uniform_kernel) and aten/src/ATen/native/cpu/avx_mathfun.h (the Cephes
 * log/sincos polynomials of the AVX2 kernel).
 *
 * Engine: standard MT19937 seeded with the low 32 bits of the 64-bit seed (init_genrand); the
 * full seed is only remembered. random() is one tempered word; random64() is two words, the
 * first one the high half.
 *
 * Sampling, per torch function:
 * - rand (float32): x = (random() & 0xffffff) * 2^-24, one word per element, serially.
 * - randn, n >= 16 (normal_fill_AVX2, the kernel torch dispatches to on an AVX2 CPU): fill all n
 *   with float uniforms as rand does, then Box-Muller on each block of 16: u1 = 1 - d[j],
 *   u2 = d[j+8], d[j] = r cos theta, d[j+8] = r sin theta (j < 8), r = sqrt(-2 log u1),
 *   theta = 2 pi u2, with avx_mathfun's log256_ps and sincos256_ps. When 16 does not divide n,
 *   16 fresh uniforms overwrite the last 16 slots and that block is transformed again.
 * - randn, n < 16: at::normal_distribution<double> per element: if the generator holds a cached
 *   normal, return it (and clear it); else two 53-bit uniforms
 *   u = (random64() & (2^53-1)) * 2^-53, r = sqrt(-2 log(1 - u2)), theta = 2 pi u1; cache
 *   r sin theta, return r cos theta, rounded to float. The cache survives across calls (the
 *   block path leaves it alone); only seeding clears it.
 * - randperm, randint, random_() on int64: see the integer section at the end.
 *
 * The AVX2 kernel is emulated lane by lane in scalar float arithmetic so that it is exact on any
 * x86-64 CPU. GCC contracted its mul/add pairs into FMA instructions when building torch (the
 * kernel is compiled with -mfma and GCC's default -ffp-contract=fast); every place that became
 * an FMA is written with fmaf below, every other operation is a single rounded float operation.
 * This file must therefore not be compiled with FMA contraction of its own float expressions:
 * the project's -march=x86-64-v2 has no FMA, and the pragmas below keep it so if that changes.
 * Which product of a "mul, mul, add" triple became the FMA was settled against 2^20 torch values
 * (the hash in tests/fixtures/rng/large.safetensors); the other choice differs there.
 *
 * Scope: torch's AVX2 dispatch is what torch 1.13 uses on x86-64 CPUs with AVX2 (also on AVX-512
 * CPUs, unless ATEN_CPU_CAPABILITY says otherwise). Forced to "default" or "avx512", torch itself
 * gives randn(n >= 16) values that differ in the last bits; those variants are not reproduced.
 */
#include "autograd/autograd.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define MT_N 624
#define MT_M 397

void df_torchgen_seed(df_torchgen *g, uint64_t seed) {
    g->seed = seed;
    g->mt[0] = (uint32_t)seed;
    for (uint32_t j = 1; j < MT_N; j++)
        g->mt[j] = 1812433253u * (g->mt[j - 1] ^ (g->mt[j - 1] >> 30)) + j;
    g->mti = MT_N; /* twist before the first draw */
    g->has_next_normal = false;
    g->next_normal = 0.0;
}

/* Regenerates all 624 words (the MT19937 recurrence). */
static void mt_twist(uint32_t *mt) {
    for (int k = 0; k < MT_N; k++) {
        uint32_t y = (mt[k] & 0x80000000u) | (mt[(k + 1) % MT_N] & 0x7fffffffu);
        mt[k] = mt[(k + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
}

uint32_t df_torchgen_u32(df_torchgen *g) {
    if (g->mti >= MT_N) {
        mt_twist(g->mt);
        g->mti = 0;
    }
    uint32_t y = g->mt[g->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t df_torchgen_u64(df_torchgen *g) {
    uint64_t hi = df_torchgen_u32(g);
    return (hi << 32) | df_torchgen_u32(g);
}

/* at::uniform_real_distribution<float>(0, 1): the low 24 bits of one word. */
static float uniform_f32(df_torchgen *g) {
    return (float)(df_torchgen_u32(g) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): the low 53 bits of random64(). */
static double uniform_f64(df_torchgen *g) {
    return (double)(df_torchgen_u64(g) & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

double df_torchgen_normal(df_torchgen *g) {
    if (g->has_next_normal) {
        g->has_next_normal = false;
        return g->next_normal;
    }
    double u1 = uniform_f64(g), u2 = uniform_f64(g);
    double r = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * M_PI * u1;
    g->next_normal = r * sin(theta);
    g->has_next_normal = true;
    return r * cos(theta);
}

void df_torchgen_rand(df_torchgen *g, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(g);
}

/* ---- avx_mathfun, one lane: the Cephes single-precision log and sincos as torch's kernel
 * evaluates them (same constants, same operation order, FMA where the torch build fused). */

static float f32_bits_as(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_as_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* log(x) for x in (0, 1] (torch only passes 1 - uniform, never 0 or a denormal). */
static float cephes_logf(float x) {
    /* x = m * 2^e with m in [0.5, 1); if m < sqrt(1/2), use 2m - 1 and e - 1 */
    int32_t e_int = (int32_t)(f32_as_bits(x) >> 23) - 0x7f;
    x = f32_bits_as((f32_as_bits(x) & ~0x7f800000u) | f32_as_bits(0.5f));
    float e = (float)e_int + 1.0f;
    bool small = x < (float)0.707106781186547524;
    float tmp = small ? x : 0.0f;
    x = x - 1.0f;
    e = e - (small ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = fmaf((float)7.0376836292E-2, x, (float)-1.1514610310E-1);
    y = fmaf(y, x, (float)1.1676998740E-1);
    y = fmaf(y, x, (float)-1.2420140846E-1);
    y = fmaf(y, x, (float)1.4249322787E-1);
    y = fmaf(y, x, (float)-1.6668057665E-1);
    y = fmaf(y, x, (float)2.0000714765E-1);
    y = fmaf(y, x, (float)-2.4999993993E-1);
    y = fmaf(y, x, (float)3.3333331174E-1);
    y = y * x;
    y = fmaf(y, z, e * (float)-2.12194440e-4); /* y * z + e * q1 */
    y = fmaf(-z, 0.5f, y);                     /* y - z / 2 */
    return fmaf(e, (float)0.693359375, x + y); /* x + y + e * q2 */
}

/* sin(x) and cos(x) for x in [0, 2 pi) (theta = 2 pi u). */
static void cephes_sincosf(float x, float *s, float *c) {
    uint32_t sign_sin = f32_as_bits(x) & 0x80000000u;
    x = f32_bits_as(f32_as_bits(x) & 0x7fffffffu);
    /* octant j (rounded up to even), then x -= j pi/4 in three parts */
    int32_t j = (int32_t)(x * (float)1.27323954473516);
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t swap_sin = (uint32_t)(j & 4) << 29;
    bool poly_sin = (j & 2) == 0; /* in avx_mathfun's naming: the "poly_mask" lanes */
    x = fmaf(y, (float)-0.78515625, x);
    x = fmaf(y, (float)-2.4187564849853515625e-4, x);
    x = fmaf(y, (float)-3.77489497744594108e-8, x);
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sin;

    float z = x * x;
    float yc = fmaf((float)2.443315711809948E-005, z, (float)-1.388731625493765E-003);
    yc = fmaf(yc, z, (float)4.166664568298827E-002);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f)); /* yc * z - z / 2 */
    yc = yc + 1.0f;

    float ys = fmaf((float)-1.9515295891E-4, z, (float)8.3321608736E-3);
    ys = fmaf(ys, z, (float)-1.6666654611E-1);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    /* the kernel's blend: masked lanes are +0.0, and it adds/subtracts them as it goes */
    float ysin2 = poly_sin ? ys : 0.0f, ysin1 = poly_sin ? 0.0f : yc;
    ys = ys - ysin2;
    yc = yc - ysin1;
    *s = f32_bits_as(f32_as_bits(ysin1 + ysin2) ^ sign_sin);
    *c = f32_bits_as(f32_as_bits(yc + ys) ^ sign_cos);
}

/* Box-Muller on one block of 16 uniforms, in place (normal_fill_16_AVX2, mean 0, std 1). */
static void normal_fill_16(float *d) {
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j], u2 = d[j + 8];
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float s, c;
        cephes_sincosf(two_pi * u2, &s, &c);
        /* the kernel ends with fma(n, std, mean) = n * 1 + 0: exact, except -0 becomes +0 */
        d[j] = radius * c + 0.0f;
        d[j + 8] = radius * s + 0.0f;
    }
}

void df_torchgen_randn(df_torchgen *g, float *out, int64_t n) {
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) out[i] = (float)df_torchgen_normal(g);
        return;
    }
    df_torchgen_rand(g, out, n);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16 != 0) {
        df_torchgen_rand(g, out + n - 16, 16);
        normal_fill_16(out + n - 16);
    }
}

void df_torchgen_state_save(const df_torchgen *g, uint32_t out[DF_TORCHGEN_STATE_WORDS]) {
    uint64_t nb;
    memcpy(&nb, &g->next_normal, sizeof nb);
    memcpy(out, g->mt, sizeof g->mt);
    out[MT_N] = (uint32_t)g->mti;
    out[MT_N + 1] = g->has_next_normal;
    out[MT_N + 2] = (uint32_t)nb, out[MT_N + 3] = (uint32_t)(nb >> 32);
    out[MT_N + 4] = (uint32_t)g->seed, out[MT_N + 5] = (uint32_t)(g->seed >> 32);
}

df_status df_torchgen_state_restore(df_torchgen *g, const uint32_t in[DF_TORCHGEN_STATE_WORDS]) {
    if (in[MT_N] > MT_N || in[MT_N + 1] > 1)
        return df_error(DF_ERR_FORMAT,
                        "rng_torch.c: bad generator state (index %u, cache flag %u); expected "
                        "index <= 624 and flag 0 or 1",
                        in[MT_N], in[MT_N + 1]);
    uint64_t nb = (uint64_t)in[MT_N + 2] | (uint64_t)in[MT_N + 3] << 32;
    memcpy(g->mt, in, sizeof g->mt);
    g->mti = (int)in[MT_N];
    g->has_next_normal = in[MT_N + 1] != 0;
    memcpy(&g->next_normal, &nb, sizeof nb);
    g->seed = (uint64_t)in[MT_N + 4] | (uint64_t)in[MT_N + 5] << 32;
    return DF_OK;
}

/* ---- integers (aten/src/ATen/native/TensorFactories.cpp randperm_cpu; uniform_int_distribution
 * and uniform_int_from_to_distribution of DistributionsHelper.h) */

void df_torchgen_randperm(df_torchgen *g, int64_t n, int64_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = i;
    /* Fisher-Yates from the front: slot i takes a uniform pick of slots i..n-1 */
    for (int64_t i = 0; i < n - 1; i++) {
        int64_t z = (int64_t)(df_torchgen_u32(g) % (uint64_t)(n - i));
        int64_t t = out[i];
        out[i] = out[i + z];
        out[i + z] = t;
    }
}

void df_torchgen_randint(df_torchgen *g, int64_t low, int64_t high, int64_t *out, int64_t n) {
    DF_ASSERT(low < high, "df_torchgen_randint: empty range [%lld, %lld)", (long long)low,
              (long long)high);
    uint64_t range = (uint64_t)high - (uint64_t)low;
    for (int64_t i = 0; i < n; i++) {
        uint64_t v = range >= (1ull << 32) ? df_torchgen_u64(g) : df_torchgen_u32(g);
        out[i] = (int64_t)(v % range + (uint64_t)low);
    }
}

int64_t df_torchgen_random_i64(df_torchgen *g) {
    return (int64_t)(df_torchgen_u64(g) & 0x7fffffffffffffffull);
}
