/* test_rng.c — the generators. df_torchgen against torch 1.13 (fixtures of tests/ref/gen_rng.py,
 * compared bit for bit) and the standard's mt19937 check value; df_philox against Random123's
 * known-answer vectors for Philox4x32-10, plus its streams, state round trip and distributions.
 */
#include "autograd/rng_impl.h"
#include "nn/nn.h"
#include "tests/common/check.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fails unless got and want hold the same bytes (n elements of `size` bytes); reports the first
 * differing element. Bit equality, not closeness: -0 vs +0 or one ulp is a failure. */
static void check_bits(const char *label, const void *got, const void *want, int64_t n,
                       size_t size) {
    if (memcmp(got, want, (size_t)n * size) == 0) return;
    int64_t i = 0;
    while (memcmp((const char *)got + i * size, (const char *)want + i * size, size) == 0) i++;
    double g = size == 4 ? ((const float *)got)[i] : ((const double *)got)[i];
    double w = size == 4 ? ((const float *)want)[i] : ((const double *)want)[i];
    cr_assert_fail("%s: first differing element %" PRId64 " of %" PRId64 ": got %.17g, want %.17g",
                   label, i, n, g, w);
}

/* ---------------------------------------------------------------- df_torchgen ---------------- */

/* std::mt19937 default-seeded (5489): the standard requires the 10000th output to be this. */
Test(autograd_rng, torchgen_mt19937_check_value) {
    df_torchgen g;
    df_torchgen_seed(&g, 5489);
    uint32_t x = 0;
    for (int i = 0; i < 10000; i++) x = df_torchgen_u32(&g);
    cr_assert_eq(x, 4123659995u, "10000th mt19937 output %u, want 4123659995", x);
}

/* random64 is two words, the first one the high half. */
Test(autograd_rng, torchgen_u64_is_hi_then_lo) {
    df_torchgen a, b;
    df_torchgen_seed(&a, 7);
    df_torchgen_seed(&b, 7);
    uint64_t hi = df_torchgen_u32(&b), lo = df_torchgen_u32(&b);
    cr_assert_eq(df_torchgen_u64(&a), hi << 32 | lo);
}

/* The state words round trip: a restored generator continues exactly, cached normal included. */
Test(autograd_rng, torchgen_state_round_trip) {
    df_torchgen g, h;
    df_torchgen_seed(&g, 42);
    float a[40], b[40];
    df_torchgen_randn(&g, a, 7); /* leaves a cached normal */
    cr_assert(g.has_next_normal);
    uint32_t words[DF_TORCHGEN_STATE_WORDS];
    df_torchgen_state_save(&g, words);
    df_torchgen_randn(&g, a, 3);
    df_torchgen_randn(&g, a + 3, 20);
    df_torchgen_rand(&g, a + 23, 17);
    memset(&h, 0, sizeof h);
    cr_assert_eq(df_torchgen_state_restore(&h, words), DF_OK);
    cr_assert_eq(h.seed, 42u);
    df_torchgen_randn(&h, b, 3);
    df_torchgen_randn(&h, b + 3, 20);
    df_torchgen_rand(&h, b + 23, 17);
    check_bits("randn/rand after restore", b, a, 40, sizeof(float));

    words[624] = 625; /* index out of range */
    cr_assert_eq(df_torchgen_state_restore(&h, words), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "rng_torch.c") != NULL, "message: %s", df_last_error());
}

/* The seeds of gen_rng.py. */
static const uint64_t SEEDS[] = {0, 42, 4294967301ull /* 2^32 + 5 */,
                                 9223372036854775783ull /* 2^63 - 25 */};
#define N_SEEDS ((int)(sizeof SEEDS / sizeof SEEDS[0]))

/* Opens tests/fixtures/rng/seed_<seed>.safetensors and checks its seed metadata. */
static df_st_file *open_seed_file(uint64_t seed) {
    char rel[64];
    snprintf(rel, sizeof rel, "rng/seed_%" PRIu64 ".safetensors", seed);
    df_st_file *f = NULL;
    df_status s = df_st_open(fixture_path(rel), &f);
    cr_assert_eq(s, DF_OK, "%s: %s", rel, df_last_error());
    const char *m = df_st_metadata(f, "seed");
    cr_assert(m && strtoull(m, NULL, 10) == seed, "%s: metadata seed %s", rel, m ? m : "(none)");
    return f;
}

/* The fixture tensor `name` as a new tensor of dtype dt (current scope). */
static df_tensor *fixture(df_st_file *f, const char *name, df_dtype dt) {
    df_tensor *t = NULL;
    df_status s = df_st_read(f, name, dt, &t);
    cr_assert_eq(s, DF_OK, "%s: %s", name, df_last_error());
    return t;
}

/* Draws randn (or rand) of want's numel from a fresh seed and compares bits. */
static void check_fresh(uint64_t seed, df_st_file *f, const char *name, bool normal) {
    df_tensor *want = fixture(f, name, DF_DTYPE_F32);
    float *got = malloc((size_t)want->numel * sizeof(float));
    df_torchgen g;
    df_torchgen_seed(&g, seed);
    if (normal)
        df_torchgen_randn(&g, got, want->numel);
    else
        df_torchgen_rand(&g, got, want->numel);
    char label[96];
    snprintf(label, sizeof label, "seed %" PRIu64 " %s", seed, name);
    check_bits(label, got, df_f32(want), want->numel, sizeof(float));
    free(got);
}

/* torch.randn(n) after torch.manual_seed(seed), both the scalar (n < 16) and block paths. */
Test(autograd_rng, torchgen_randn_matches_torch) {
    static const int sizes[] = {1, 7, 15, 16, 17, 31, 100, 1000};
    for (int s = 0; s < N_SEEDS; s++) {
        df_scope sc = df_scope_begin();
        df_st_file *f = open_seed_file(SEEDS[s]);
        char name[32];
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            snprintf(name, sizeof name, "randn_%d", sizes[k]);
            check_fresh(SEEDS[s], f, name, true);
        }
        check_fresh(SEEDS[s], f, "randn_2x3x4x4", true);
        df_st_close(f);
        df_scope_end(sc);
    }
}

Test(autograd_rng, torchgen_rand_matches_torch) {
    static const int sizes[] = {1, 15, 16, 100, 1000};
    for (int s = 0; s < N_SEEDS; s++) {
        df_scope sc = df_scope_begin();
        df_st_file *f = open_seed_file(SEEDS[s]);
        char name[32];
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            snprintf(name, sizeof name, "rand_%d", sizes[k]);
            check_fresh(SEEDS[s], f, name, false);
        }
        df_st_close(f);
        df_scope_end(sc);
    }
}

/* torch.randn(5, dtype=float64): the scalar double path before rounding to float. */
Test(autograd_rng, torchgen_normal_f64_matches_torch) {
    for (int s = 0; s < N_SEEDS; s++) {
        df_scope sc = df_scope_begin();
        df_st_file *f = open_seed_file(SEEDS[s]);
        df_tensor *want = fixture(f, "randn_f64_5", DF_DTYPE_F64);
        cr_assert_eq(want->numel, 5);
        df_torchgen g;
        df_torchgen_seed(&g, SEEDS[s]);
        double got[5];
        for (int i = 0; i < 5; i++) got[i] = df_torchgen_normal(&g);
        check_bits("randn f64", got, want->data, 5, sizeof(double));
        df_st_close(f);
        df_scope_end(sc);
    }
}

/* Several calls in a row on one generator (the cached normal carries across block-path and rand
 * calls). Same list as CALLS in gen_rng.py, which the metadata confirms. */
Test(autograd_rng, torchgen_call_sequence_matches_torch) {
    static const struct {
        bool normal;
        int n;
    } calls[] = {{true, 7}, {true, 100}, {true, 3}, {false, 5}, {true, 16},
                 {true, 1}, {true, 17},  {true, 2}, {false, 1}, {true, 33}};
    char list[256] = "";
    for (size_t k = 0; k < sizeof calls / sizeof calls[0]; k++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s:%d", k ? "," : "",
                 calls[k].normal ? "randn" : "rand", calls[k].n);
    for (int s = 0; s < N_SEEDS; s++) {
        df_scope sc = df_scope_begin();
        df_st_file *f = open_seed_file(SEEDS[s]);
        const char *m = df_st_metadata(f, "calls");
        cr_assert(m && strcmp(m, list) == 0, "fixture calls %s, test calls %s", m ? m : "-", list);
        df_tensor *want = fixture(f, "seq", DF_DTYPE_F32);
        float *got = malloc((size_t)want->numel * sizeof(float));
        df_torchgen g;
        df_torchgen_seed(&g, SEEDS[s]);
        int64_t at = 0;
        for (size_t k = 0; k < sizeof calls / sizeof calls[0]; k++) {
            cr_assert(at + calls[k].n <= want->numel);
            if (calls[k].normal)
                df_torchgen_randn(&g, got + at, calls[k].n);
            else
                df_torchgen_rand(&g, got + at, calls[k].n);
            at += calls[k].n;
        }
        cr_assert_eq(at, want->numel);
        check_bits("call sequence", got, df_f32(want), at, sizeof(float));
        free(got);
        df_st_close(f);
        df_scope_end(sc);
    }
}

/* Compares int64 draws against fixture `name` (exact: integers). */
static void check_i64(uint64_t seed, df_st_file *f, const char *name, const int64_t *got) {
    df_tensor *want = fixture(f, name, DF_DTYPE_I64);
    const int64_t *w = want->data;
    for (int64_t i = 0; i < want->numel; i++)
        cr_assert_eq(got[i], w[i], "seed %" PRIu64 " %s[%" PRId64 "]: %" PRId64 ", want %" PRId64,
                     seed, name, i, got[i], w[i]);
}

/* randperm, randint (narrow and wide range) and random_() on int64 after manual_seed. */
Test(autograd_rng, torchgen_integers_match_torch) {
    static int64_t got[1000];
    for (int s = 0; s < N_SEEDS; s++) {
        df_scope sc = df_scope_begin();
        df_st_file *f = open_seed_file(SEEDS[s]);
        df_torchgen g;
        df_torchgen_seed(&g, SEEDS[s]);
        df_torchgen_randperm(&g, 10, got);
        check_i64(SEEDS[s], f, "randperm_10", got);
        df_torchgen_seed(&g, SEEDS[s]);
        df_torchgen_randperm(&g, 1000, got);
        check_i64(SEEDS[s], f, "randperm_1000", got);
        df_torchgen_seed(&g, SEEDS[s]);
        df_torchgen_randint(&g, 0, 10, got, 100);
        check_i64(SEEDS[s], f, "randint_0_10_100", got);
        df_torchgen_seed(&g, SEEDS[s]);
        df_torchgen_randint(&g, -5, INT64_C(1) << 40, got, 8);
        check_i64(SEEDS[s], f, "randint_wide_8", got);
        df_torchgen_seed(&g, SEEDS[s]);
        got[0] = df_torchgen_random_i64(&g);
        check_i64(SEEDS[s], f, "random_i64", got);
        df_st_close(f);
        df_scope_end(sc);
    }
}

/* The 64-bit FNV-1a hash of n bytes (as gen_rng.py computes it). */
static uint64_t fnv1a64(const void *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
    return h;
}

/* 2^20 values of the block path: its rarest rounding cases (about one element in 5000 depends on
 * which product torch's build fused into an FMA) are caught by the hash of the whole tensor. */
Test(autograd_rng, torchgen_randn_large_matches_torch) {
    df_scope sc = df_scope_begin();
    df_st_file *f = NULL;
    cr_assert_eq(df_st_open(fixture_path("rng/large.safetensors"), &f), DF_OK, "%s",
                 df_last_error());
    const char *seed_s = df_st_metadata(f, "seed"), *n_s = df_st_metadata(f, "n"),
               *hash_s = df_st_metadata(f, "fnv1a64");
    cr_assert(seed_s && n_s && hash_s, "large.safetensors: metadata seed, n, fnv1a64 expected");
    int64_t n = strtoll(n_s, NULL, 10);
    float *got = malloc((size_t)n * sizeof(float));
    df_torchgen g;
    df_torchgen_seed(&g, strtoull(seed_s, NULL, 10));
    df_torchgen_randn(&g, got, n);
    check_bits("head", got, df_f32(fixture(f, "head", DF_DTYPE_F32)), 64, sizeof(float));
    check_bits("tail", got + n - 64, df_f32(fixture(f, "tail", DF_DTYPE_F32)), 64, sizeof(float));
    uint64_t h = fnv1a64(got, (size_t)n * sizeof(float));
    cr_assert_eq(h, strtoull(hash_s, NULL, 16), "randn(%" PRId64 ") hash %016" PRIx64 ", want %s",
                 n, h, hash_s);
    free(got);
    df_st_close(f);
    df_scope_end(sc);
}

/* ---------------------------------------------------------------- df_philox ------------------ */

/* Random123's kat_vectors for philox4x32-10. */
Test(autograd_rng, philox_known_answers) {
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t k = 0; k < sizeof kat / sizeof kat[0]; k++) {
        uint32_t out[4];
        df_philox_block(kat[k].ctr, kat[k].key, out);
        for (int i = 0; i < 4; i++)
            cr_assert_eq(out[i], kat[k].out[i], "vector %zu word %d: %08x, want %08x", k, i, out[i],
                         kat[k].out[i]);
    }
}

/* Word i of stream s is word i % 4 of block (i / 4, s) under key = seed. */
Test(autograd_rng, philox_stream_layout) {
    df_philox g;
    uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull;
    df_philox_init(&g, seed, stream);
    for (uint32_t b = 0; b < 3; b++) {
        uint32_t ctr[4] = {b, 0, (uint32_t)stream, (uint32_t)(stream >> 32)};
        uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, want[4];
        df_philox_block(ctr, key, want);
        for (int i = 0; i < 4; i++) cr_assert_eq(df_philox_u32(&g), want[i], "block %u", b);
    }
}

/* Different streams of one seed and different seeds give different words. */
Test(autograd_rng, philox_streams_differ) {
    df_philox a, b, c;
    df_philox_init(&a, 1, 0);
    df_philox_init(&b, 1, 1);
    df_philox_init(&c, 2, 0);
    int same_ab = 0, same_ac = 0;
    for (int i = 0; i < 64; i++) {
        uint32_t x = df_philox_u32(&a);
        same_ab += x == df_philox_u32(&b);
        same_ac += x == df_philox_u32(&c);
    }
    cr_assert(same_ab == 0 && same_ac == 0, "equal words: streams %d, seeds %d", same_ab, same_ac);
}

/* A state rebuilt from (key, stream, counter, buf_used) continues exactly, mid-block and at a
 * block boundary. */
Test(autograd_rng, philox_state_round_trip) {
    for (int skip = 0; skip < 10; skip++) {
        df_philox g, h;
        df_philox_init(&g, 99, 3);
        for (int i = 0; i < skip; i++) df_philox_u32(&g);
        df_philox_set_state(&h, g.key, g.stream, g.counter, g.buf_used);
        for (int i = 0; i < 9; i++) {
            uint32_t want = df_philox_u32(&g);
            cr_assert_eq(df_philox_u32(&h), want, "after %d words, word %d", skip, i);
        }
    }
}

Test(autograd_rng, philox_uniform_range_and_mean) {
    enum { N = 100000 };
    static float u[N];
    df_philox g;
    df_philox_init(&g, 5, 0);
    df_philox_fill_uniform(&g, u, N);
    double sum = 0;
    for (int i = 0; i < N; i++) {
        cr_assert(u[i] >= 0.0f && u[i] < 1.0f, "u[%d] = %.9g outside [0, 1)", i, u[i]);
        sum += u[i];
    }
    /* the mean of 1e5 uniforms has sd 0.0009: 0.005 is a 5-sigma bound */
    cr_assert(fabs(sum / N - 0.5) < 0.005, "mean %.5f", sum / N);
}

Test(autograd_rng, philox_normal_moments) {
    enum { N = 100001 }; /* odd: the last pair keeps only its cosine */
    static float z[N];
    df_philox g;
    df_philox_init(&g, 6, 0);
    df_philox_fill_normal(&g, z, N);
    double sum = 0, sq = 0;
    for (int i = 0; i < N; i++) {
        cr_assert(isfinite(z[i]), "z[%d] = %g", i, z[i]);
        sum += z[i];
        sq += (double)z[i] * z[i];
    }
    double mean = sum / N, var = sq / N - mean * mean;
    /* sd of the mean 0.0032, of the variance 0.0045: bounds of about 6 sigma */
    cr_assert(fabs(mean) < 0.02 && fabs(var - 1.0) < 0.03, "mean %.5f var %.5f", mean, var);
    float one = df_philox_normal(&g);
    cr_assert(isfinite(one) && fabs(one) < 10.0f, "df_philox_normal %g", one);
}
