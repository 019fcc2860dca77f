/* test_masks_losses.c — masked_fill, dropout, mse_loss and cross_entropy: gradient checks (every
 * float input; masks and targets never take a gradient), values, and dropout's statistics and
 * stream usage.
 * Gradcheck tolerances: eps 1e-3, atol 5e-3, rtol 1e-2 (see test_unary.c). */
#include "tests/common/check.h"

#include <math.h>
#include <string.h>

typedef struct mf_case {
    df_tensor *mask;
} mf_case;

static df_tensor *call_mf(df_tensor **in, void *u) {
    return df_masked_fill(in[0], ((mf_case *)u)->mask, -3.5f);
}

Test(autograd_masks_losses, masked_fill_gradcheck_and_values) {
    df_scope s = df_scope_begin();
    df_tensor *masks[] = {
        df_from_data(DF_DTYPE_U8, DF_DIMS(2, 1, 4), (uint8_t[]){1, 0, 0, 1, 0, 1, 1, 0}),
        df_from_data(DF_DTYPE_I32, DF_DIMS(4), (int32_t[]){0, 5, 0, -1}),
        df_from_data(DF_DTYPE_I64, DF_DIMS(2, 3, 4),
                     (int64_t[]){1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1}),
    };
    for (int k = 0; k < 3; k++) {
        mf_case c = {masks[k]};
        df_tensor *x = randn_tensor(40 + k, DF_DIMS(2, 3, 4));
        df_tensor_set_requires_grad(x, true);
        gradcheck("masked_fill", call_mf, &c, &x, 1, 1e-3, 5e-3, 1e-2);
        df_tensor *y = call_mf(&x, &c);
        cr_assert(masks[k]->grad == NULL, "the mask takes no gradient");
        for (int64_t i = 0; i < 24; i++) {
            int64_t n = i / 12, j = (i / 4) % 3, w = i % 4;
            double m = k == 0 ? df_tensor_get(masks[0], n * 4 + w)
                     : k == 1 ? df_tensor_get(masks[1], w)
                              : df_tensor_get(masks[2], i);
            (void)j;
            float want = m != 0 ? -3.5f : df_f32(x)[i];
            check_close_f32("masked_fill value", df_f32(y) + i, &want, 1, 0, 0);
        }
    }
    df_scope_end(s);
}

typedef struct drop_case {
    float p;
    uint64_t seed;
} drop_case;

/* A fresh generator per call: every evaluation of the gradcheck sees the same mask. */
static df_tensor *call_drop(df_tensor **in, void *u) {
    drop_case *c = u;
    df_philox g;
    df_philox_init(&g, c->seed, 3);
    return df_dropout(in[0], c->p, &g);
}

Test(autograd_masks_losses, dropout_gradcheck_mask_and_stream) {
    df_scope s = df_scope_begin();
    float ps[] = {0.0f, 0.25f, 0.6f};
    for (int k = 0; k < 3; k++) {
        drop_case c = {ps[k], 77};
        df_tensor *x = randn_tensor(50, DF_DIMS(3, 5));
        df_tensor_set_requires_grad(x, true);
        gradcheck("dropout", call_drop, &c, &x, 1, 1e-3, 5e-3, 1e-2);
        /* the mask: element i kept iff its uniform draw >= p, in element order */
        df_philox g;
        df_philox_init(&g, 77, 3);
        df_tensor *y = call_drop(&x, &c);
        for (int64_t i = 0; i < x->numel; i++) {
            float u = ps[k] > 0 ? df_philox_uniform(&g) : 1.0f;
            float want = u >= ps[k] ? df_f32(x)[i] * (1.0f / (1.0f - ps[k])) : 0.0f;
            check_close_f32("dropout value", df_f32(y) + i, &want, 1, 0, 0);
        }
    }
    /* numel draws when p > 0, none at p == 0; active with grad mode off */
    df_philox g, ref;
    df_philox_init(&g, 5, 1);
    df_philox_init(&ref, 5, 1);
    bool prev = df_grad_set_enabled(false);
    df_tensor *x = df_ones(DF_DTYPE_F32, DF_DIMS(10000));
    df_tensor *y = df_dropout(x, 0.0f, &g);
    cr_assert(g.counter == 0 && g.buf_used == 4, "p == 0 draws nothing");
    check_close("p == 0 is the identity", y, x, 0, 0);
    y = df_dropout(x, 0.3f, &g);
    for (int i = 0; i < 10000; i++) df_philox_uniform(&ref);
    cr_assert(g.counter == ref.counter && g.buf_used == ref.buf_used, "p > 0 draws numel");
    double kept = 0, mean = 0;
    for (int64_t i = 0; i < y->numel; i++) {
        kept += df_f32(y)[i] != 0;
        mean += df_f32(y)[i];
    }
    df_grad_set_enabled(prev);
    /* 10000 Bernoulli(0.7): sd of the kept fraction ~ 0.0046 */
    cr_assert(fabs(kept / 1e4 - 0.7) < 0.025, "kept fraction %g", kept / 1e4);
    cr_assert(fabs(mean / 1e4 - 1.0) < 0.04, "mean %g (inverted scaling keeps it ~1)", mean / 1e4);
    df_scope_end(s);
}

static df_tensor *call_mse(df_tensor **in, void *u) {
    return df_mse_loss(in[0], in[1], *(bool *)u);
}

Test(autograd_masks_losses, mse_loss_gradcheck_and_values) {
    df_scope s = df_scope_begin();
    for (int mean = 0; mean < 2; mean++) {
        for (int mode = 0; mode < 3; mode++) {
            bool m = mean;
            df_tensor *in[2] = {randn_tensor(60, DF_DIMS(2, 3, 4)), randn_tensor(61, DF_DIMS(2, 3, 4))};
            df_tensor_set_requires_grad(in[0], mode != 2);
            df_tensor_set_requires_grad(in[1], mode != 1);
            gradcheck("mse_loss", call_mse, &m, in, 2, 1e-3, 5e-3, 1e-2);
        }
    }
    df_tensor *a = df_from_data(DF_DTYPE_F32, DF_DIMS(4), (float[]){1, 2, 3, 4});
    df_tensor *b = df_from_data(DF_DTYPE_F32, DF_DIMS(4), (float[]){0, 2, 5, 1});
    df_tensor *l = df_mse_loss(a, b, true);
    cr_assert_eq(l->ndim, 0);
    check_close_f32("mse mean", df_f32(l), (float[]){3.5f}, 1, 0, 0);
    check_close_f32("mse none", df_f32(df_mse_loss(a, b, false)), (float[]){1, 0, 4, 9}, 4, 0, 0);
    df_scope_end(s);
}

static df_tensor *call_ce(df_tensor **in, void *u) {
    return df_cross_entropy(in[0], (df_tensor *)u);
}

Test(autograd_masks_losses, cross_entropy_gradcheck_and_values) {
    df_scope s = df_scope_begin();
    df_tensor *t32 = df_from_data(DF_DTYPE_I32, DF_DIMS(4), (int32_t[]){2, 0, 4, 1});
    df_tensor *t64 = df_from_data(DF_DTYPE_I64, DF_DIMS(4), (int64_t[]){2, 0, 4, 1});
    df_tensor *x = randn_tensor(70, DF_DIMS(4, 5));
    df_tensor_set_requires_grad(x, true);
    gradcheck("cross_entropy i32", call_ce, t32, &x, 1, 1e-3, 5e-3, 1e-2);
    gradcheck("cross_entropy i64", call_ce, t64, &x, 1, 1e-3, 5e-3, 1e-2);
    cr_assert(t32->grad == NULL && t64->grad == NULL, "targets take no gradient");
    /* uniform logits: loss = ln C; large logits stay finite */
    df_tensor *z = df_from_data(DF_DTYPE_F32, DF_DIMS(2, 5),
                                (float[]){0, 0, 0, 0, 0, 1000, 0, 0, 0, -1000});
    df_tensor *tz = df_from_data(DF_DTYPE_I64, DF_DIMS(2), (int64_t[]){3, 0});
    float want = logf(5.0f) / 2.0f;
    check_close_f32("cross_entropy", df_f32(df_cross_entropy(z, tz)), &want, 1, 1e-6, 1e-6);
    df_scope_end(s);
}
