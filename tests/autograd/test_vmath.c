/* test_vmath.c — df_expf (autograd/vmath_impl.h): within 1 ulp of libm's expf over the whole
 * float range it covers, 0 below ln FLT_MIN, +inf above ln FLT_MAX, NaN kept, and the same value
 * from a vectorised loop as from a scalar call (lane- and tail-independent, which exact resume
 * relies on). */
#include "autograd/vmath_impl.h"

#include <criterion/criterion.h>
#include <float.h>
#include <stdint.h>
#include <stdlib.h>

/* Distance in units in the last place between two finite floats of the same sign. */
static int64_t ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return llabs((int64_t)ia - (int64_t)ib);
}

static float float_of_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

Test(autograd_vmath, expf_within_1_ulp) {
    int64_t worst = 0;
    float worst_x = 0;
    /* every 97th float magnitude below +inf, both signs: 22 million values of every exponent */
    for (uint32_t b = 0; b < 0x7f800000u; b += 97) {
        float xs[2] = {float_of_bits(b), -float_of_bits(b)};
        for (int s = 0; s < 2; s++) {
            float x = xs[s], want = expf(x);
            if (x < DF_EXPF_LO || x > DF_EXPF_HI || want < FLT_MIN) continue;
            int64_t d = ulp_distance(df_expf(x), want);
            if (d > worst) worst = d, worst_x = x;
        }
    }
    cr_assert(worst <= 1, "df_expf is %lld ulp from expf at x = %.9g", (long long)worst,
              (double)worst_x);
}

Test(autograd_vmath, expf_edges) {
    cr_assert_eq(df_expf(0.0f), 1.0f);
    cr_assert_eq(df_expf(-FLT_MAX), 0.0f); /* the causal mask's fill value minus a row max */
    cr_assert_eq(df_expf(-100.0f), 0.0f);
    cr_assert_eq(df_expf(-INFINITY), 0.0f);
    cr_assert(isinf(df_expf(89.0f)) && df_expf(89.0f) > 0);
    cr_assert(isinf(df_expf(INFINITY)));
    cr_assert(isnan(df_expf(NAN)));
    float top = df_expf(88.72f);
    cr_assert(isfinite(top) && ulp_distance(top, expf(88.72f)) <= 1, "e^88.72 = %g", (double)top);
}

Test(autograd_vmath, expf_same_in_vector_loop) {
    enum { N = 1003 }; /* not a multiple of any vector width: the loop has a tail */
    float *x = malloc(N * sizeof *x), *vec = malloc(N * sizeof *vec);
    for (int i = 0; i < N; i++) x[i] = -90.0f + 180.0f * (float)i / (float)(N - 1);
#pragma omp simd
    for (int i = 0; i < N; i++) vec[i] = df_expf(x[i]);
    for (int i = 0; i < N; i++) {
        volatile float xi = x[i];
        float one = df_expf(xi);
        cr_assert(memcmp(&one, &vec[i], 4) == 0, "x = %.9g: vector %.9g, scalar %.9g", (double)x[i],
                  (double)vec[i], (double)one);
    }
    free(x);
    free(vec);
}
