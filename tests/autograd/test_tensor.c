/* test_tensor.c — the tensor core: creation, arange, views and reshape, dtype conversions
 * against torch (tests/fixtures/tensor/tensor.safetensors from tests/ref/gen_tensor.py).
 * Bit patterns of 16-bit floats are compared as integers (exactly representable in float). */
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if __has_include("nn/nn.h")
#include "nn/nn.h"
#else
#include "tests/autograd/st_shim.h"
#endif

static df_st_file *open_fixture(void) {
    df_st_file *f = NULL;
    cr_assert_eq(df_st_open(fixture_path("tensor/tensor.safetensors"), &f), DF_OK, "%s",
                 df_last_error());
    return f;
}

static df_tensor *read_raw(df_st_file *f, const char *name) {
    const df_st_info *in = df_st_find(f, name);
    cr_assert(in, "fixture tensor %s missing", name);
    df_tensor *t = NULL;
    cr_assert_eq(df_st_read(f, name, in->dtype, &t), DF_OK, "%s", df_last_error());
    return t;
}

/* The 16-bit patterns of a BF16/F16 tensor as floats; NaN patterns (either side) become -1 when
 * `nan_as` says the element is NaN, so NaN is compared by class. */
static float *bits16(const df_tensor *t, const df_tensor *nan_ref) {
    float *b = malloc((size_t)t->numel * sizeof(float));
    const uint16_t *p = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = df_tensor_get(t, i);
        b[i] = (isnan(v) || (nan_ref && isnan(df_tensor_get(nan_ref, i)))) ? (isnan(v) ? -1.0f : -2.0f)
                                                                             : (float)p[i];
    }
    return b;
}

Test(autograd_tensor, creation) {
    df_scope s = df_scope_begin();
    df_tensor *z = df_zeros(DF_DTYPE_F32, DF_DIMS(2, 3));
    df_tensor *o = df_ones(DF_DTYPE_F32, DF_DIMS(2, 3));
    df_tensor *f = df_full(DF_DTYPE_F32, DF_DIMS(2, 3), 2.5);
    cr_assert(z->ndim == 2 && z->numel == 6 && z->shape[1] == 3);
    float want0[6] = {0}, want1[6] = {1, 1, 1, 1, 1, 1}, want25[6] = {2.5f, 2.5f, 2.5f, 2.5f, 2.5f, 2.5f};
    check_close_f32("zeros", df_f32(z), want0, 6, 0, 0);
    check_close_f32("ones", df_f32(o), want1, 6, 0, 0);
    check_close_f32("full", df_f32(f), want25, 6, 0, 0);
    float src[4] = {1, -2, 3.5f, 4};
    df_tensor *d = df_from_data(DF_DTYPE_F32, DF_DIMS(4), src);
    src[0] = 100; /* a copy, not a wrap */
    check_close_f32("from_data", df_f32(d), (float[]){1, -2, 3.5f, 4}, 4, 0, 0);
    df_tensor *sc = df_full(DF_DTYPE_F32, 0, NULL, 7);
    cr_assert(sc->ndim == 0 && sc->numel == 1);
    df_tensor *i64 = df_full(DF_DTYPE_I64, DF_DIMS(2), 3);
    cr_assert(df_tensor_get(i64, 1) == 3.0);
    df_scope_end(s);
}

Test(autograd_tensor, arange_matches_torch) {
    df_scope s = df_scope_begin();
    df_st_file *f = open_fixture();
    for (int k = 0; k < 6; k++) {
        char name[32];
        snprintf(name, sizeof name, "arange_%d", k);
        const char *m = df_st_metadata(f, name);
        cr_assert(m, "metadata %s", name);
        double a, b, st;
        cr_assert(sscanf(m, "%lf %lf %lf", &a, &b, &st) == 3);
        df_tensor *want = read_raw(f, name);
        df_tensor *got = df_arange(want->dtype, a, b, st);
        /* torch's AVX2 kernel makes each full block of 8 from a base rounded to float
         * (base + j*step), so it can be 1 ulp off the once-rounded start + i*step we compute;
         * rtol 2.5e-7 is about 2 ulp. Integer steps agree exactly. */
        check_close(name, got, want, 0, 2.5e-7);
    }
    df_st_close(f);
    df_scope_end(s);
}

Test(autograd_tensor, views_and_reshape) {
    df_scope s = df_scope_begin();
    df_tensor *x = df_arange(DF_DTYPE_F32, 0, 24, 1);
    df_tensor *r = df_reshape(x, DF_DIMS(2, -1, 4));
    cr_assert(r->ndim == 3 && r->shape[0] == 2 && r->shape[1] == 3 && r->shape[2] == 4);
    cr_assert(r->storage == x->storage && r->data == x->data, "reshape is a view");
    df_f32(r)[5] = -1; /* writes through */
    cr_assert(df_tensor_get(x, 5) == -1.0);
    df_tensor *v = df_tensor_view(x, DF_DIMS(2, 2), 10);
    cr_assert(df_tensor_get(v, 0) == 10.0 && df_tensor_get(v, 3) == 13.0);
    df_tensor *d = df_detach(x);
    cr_assert(d->storage == x->storage && d->node == NULL);
    /* reshape passes the gradient through */
    df_tensor *p = df_ones(DF_DTYPE_F32, DF_DIMS(6));
    df_tensor_set_requires_grad(p, true);
    df_tensor *q = df_mul_scalar(df_reshape(p, DF_DIMS(3, 2)), 3);
    cr_assert_eq(df_backward(df_sum(q, 0, NULL, false)), DF_OK);
    check_close_f32("reshape grad", df_f32(p->grad), (float[]){3, 3, 3, 3, 3, 3}, 6, 0, 0);
    df_scope_end(s);
}

static void check_bits(const char *label, const df_tensor *got, const df_tensor *want) {
    cr_assert_eq(got->numel, want->numel);
    float *g = bits16(got, want), *w = bits16(want, got);
    check_close_f32(label, g, w, got->numel, 0, 0);
    free(g);
    free(w);
}

Test(autograd_tensor, f32_to_bf16_and_f16_match_torch) {
    df_scope s = df_scope_begin();
    df_st_file *f = open_fixture();
    df_tensor *x = read_raw(f, "f32_edge");
    check_bits("f32 -> bf16", df_tensor_to(x, DF_DTYPE_BF16), read_raw(f, "f32_edge_bf16"));
    check_bits("f32 -> f16", df_tensor_to(x, DF_DTYPE_F16), read_raw(f, "f32_edge_f16"));
    /* NaN stays NaN, either sign */
    df_tensor *nan = df_from_data(DF_DTYPE_F32, DF_DIMS(2), (float[]){NAN, -NAN});
    df_tensor *nb = df_tensor_to(nan, DF_DTYPE_BF16), *nh = df_tensor_to(nan, DF_DTYPE_F16);
    for (int i = 0; i < 2; i++) {
        cr_assert(isnan(df_tensor_get(nb, i)), "bf16 NaN");
        cr_assert(isnan(df_tensor_get(nh, i)), "f16 NaN");
        cr_assert(isnan(df_tensor_get(df_tensor_to(nb, DF_DTYPE_F32), i)), "bf16 NaN back");
    }
    df_st_close(f);
    df_scope_end(s);
}

Test(autograd_tensor, bf16_and_f16_to_f32_match_torch) {
    df_scope s = df_scope_begin();
    df_st_file *f = open_fixture();
    check_close("bf16 -> f32", df_tensor_to(read_raw(f, "bf16_all"), DF_DTYPE_F32),
                read_raw(f, "bf16_all_f32"), 0, 0);
    check_close("f16 -> f32", df_tensor_to(read_raw(f, "f16_all"), DF_DTYPE_F32),
                read_raw(f, "f16_all_f32"), 0, 0);
    /* and back: every widened value converts to its own pattern */
    check_bits("f32 -> f16 round trip", df_tensor_to(read_raw(f, "f16_all_f32"), DF_DTYPE_F16),
               read_raw(f, "f16_all"));
    check_bits("f32 -> bf16 round trip", df_tensor_to(read_raw(f, "bf16_all_f32"), DF_DTYPE_BF16),
               read_raw(f, "bf16_all"));
    df_st_close(f);
    df_scope_end(s);
}

Test(autograd_tensor, integer_conversions_match_torch) {
    df_scope s = df_scope_begin();
    df_st_file *f = open_fixture();
    df_tensor *fi = read_raw(f, "f32_int");
    df_tensor *iv = read_raw(f, "i64_vals");
    struct {
        const char *label;
        df_tensor *got, *want;
    } cases[] = {
        {"f32 -> i32", df_tensor_to(fi, DF_DTYPE_I32), read_raw(f, "f32_int_i32")},
        {"f32 -> i64", df_tensor_to(fi, DF_DTYPE_I64), read_raw(f, "f32_int_i64")},
        {"i64 -> f32", df_tensor_to(iv, DF_DTYPE_F32), read_raw(f, "i64_vals_f32")},
        {"i64 -> i32", df_tensor_to(iv, DF_DTYPE_I32), read_raw(f, "i64_vals_i32")},
    };
    for (int k = 0; k < 4; k++) {
        cr_assert_eq(cases[k].got->dtype, cases[k].want->dtype, "%s dtype", cases[k].label);
        for (int64_t i = 0; i < cases[k].want->numel; i++)
            cr_assert(df_tensor_get(cases[k].got, i) == df_tensor_get(cases[k].want, i),
                      "%s [%lld]: %.17g, torch %.17g", cases[k].label, (long long)i,
                      df_tensor_get(cases[k].got, i), df_tensor_get(cases[k].want, i));
    }
    df_st_close(f);
    df_scope_end(s);
}
