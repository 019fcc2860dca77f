/* dtype.c — element types: sizes, safetensors names, and the float16/bfloat16 conversions
 * (round to nearest even, as torch's .to(torch.bfloat16) / .half()). */
#include "autograd/autograd.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_info[DF_DTYPE_COUNT] = {
    [DF_DTYPE_F32] = {"F32", 4}, [DF_DTYPE_BF16] = {"BF16", 2}, [DF_DTYPE_F16] = {"F16", 2},
    [DF_DTYPE_F64] = {"F64", 8}, [DF_DTYPE_I32] = {"I32", 4},   [DF_DTYPE_I64] = {"I64", 8},
    [DF_DTYPE_U8] = {"U8", 1},
};

size_t df_dtype_size(df_dtype dt) {
    DF_ASSERT(dt >= 0 && dt < DF_DTYPE_COUNT, "bad dtype %d", (int)dt);
    return dtype_info[dt].size;
}

const char *df_dtype_name(df_dtype dt) {
    if (dt < 0 || dt >= DF_DTYPE_COUNT) return "?";
    return dtype_info[dt].name;
}

bool df_dtype_parse(const char *name, df_dtype *out) {
    for (int i = 0; i < DF_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (df_dtype)i;
            return true;
        }
    }
    return false;
}

bool df_dtype_is_float(df_dtype dt) {
    return dt == DF_DTYPE_F32 || dt == DF_DTYPE_BF16 || dt == DF_DTYPE_F16 || dt == DF_DTYPE_F64;
}

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t df_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if (isnan(x)) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN, sign kept */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float df_bf16_to_f32(uint16_t x) {
    return bits_f32((uint32_t)x << 16);
}

uint16_t df_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t absu = u & 0x7fffffff;
    if (absu >= 0x7f800000) /* inf or NaN */
        return (uint16_t)(sign | 0x7c00 | (absu > 0x7f800000 ? 0x200 : 0));
    if (absu >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (absu < 0x38800000) {                                  /* below the smallest normal */
        /* subnormal half: value / 2^-24, rounded to nearest even */
        float a = bits_f32(absu);
        float scaled = a * 16777216.0f; /* exact: a power of two */
        uint32_t m = (uint32_t)nearbyintf(scaled);
        return (uint16_t)(sign | m);
    }
    uint32_t mant = absu & 0x7fffff;
    uint32_t exp = (absu >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float df_f16_to_f32(uint16_t x) {
    uint32_t sign = (uint32_t)(x & 0x8000) << 16;
    uint32_t exp = (x >> 10) & 0x1f;
    uint32_t mant = x & 0x3ff;
    if (exp == 0) {
        float v = (float)mant / 16777216.0f;
        return (x & 0x8000) ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000 | (mant << 13));
    return bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}
