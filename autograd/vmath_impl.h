/* vmath_impl.h — an e^x that the compiler vectorises. Internal to autograd/.
 *
 * libm's expf is a call per element: a loop of them (softmax rows, SiLU, sigmoid) runs one value
 * at a time, and it was a third of the emoji-ddpm training step. df_expf is plain float and
 * integer arithmetic, inlined, so a `#pragma omp simd` loop runs it 4 (SSE) or 8 (AVX2) values
 * at a time. Every lane computes the same operations in the same order, so a value's result does
 * not depend on which lane, thread or loop tail computes it (exact resume needs that).
 *
 * Method (Cephes expf, S. L. Moshier): n = round(x log2 e) by the 1.5 * 2^23 trick (read back
 * from the sum's bits, so no float-to-int conversion);
 * r = x - n ln2 in two parts (Cody-Waite: n * C1 is exact); e^r by its degree-7 polynomial on
 * |r| <= ln2 / 2; e^x = e^r * 2^n, with 2^n built from exponent bits in two halves so that
 * n = -126 .. 128 stays representable. Below -87.34 (e^x < FLT_MIN) it returns 0 where libm
 * returns a denormal; above 88.72 +inf; NaN stays NaN.
 * Accuracy: within 1 ulp of expf over the float range, equal to it for 99% of values
 * (tests/autograd/test_vmath.c); torch's own vectorised exp (SLEEF expf_u10) is a 1-ulp method.
 */
#ifndef DF_VMATH_IMPL_H
#define DF_VMATH_IMPL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define DF_EXPF_LO (-87.33654f) /* ln FLT_MIN */
#define DF_EXPF_HI 88.72283f    /* ln FLT_MAX */

static inline uint32_t df_f32_bits_(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* 2^k for an integer k in [-126, 127], from its exponent bits (unsigned arithmetic: no
 * undefined shift whatever k is). */
static inline float df_exp2i_(int32_t k) {
    uint32_t bits = (uint32_t)(k + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float df_expf(float x) {
    float xc = x < DF_EXPF_LO ? DF_EXPF_LO : x;
    xc = xc > DF_EXPF_HI ? DF_EXPF_HI : xc;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = xc * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = xc - n * 0.693359375f; /* C1 + C2 = ln 2 */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    /* n as an integer from t's low mantissa bits (t is in [2^23, 2^24), where the ulp is 1):
     * converting the float n would be undefined for a NaN x, and compilers exploit that */
    int32_t k = (int32_t)(df_f32_bits_(t) - df_f32_bits_(magic));
    int32_t k1 = k >> 1; /* n in [-126, 128]: two halves in [-63, 64] */
    y = y * df_exp2i_(k1) * df_exp2i_(k - k1);
    y = x < DF_EXPF_LO ? 0.0f : y;
    return x > DF_EXPF_HI ? INFINITY : y;
}

#endif
