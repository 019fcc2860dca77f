/* test_grad_clip.c — global norm and clip_grad_norm_ against torch 1.13 (fixtures of
 * tests/ref/gen_optim.py), the non-finite check, thread-count independence of the norm, and
 * gradient accumulation with the loss scaled by 1/k. */
#include "tests/optim/optim_fixture.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>

static const double clip_cases[] = {1.0, 100.0, 0.25, 5.0}; /* gen_optim.py CLIP_CASES */

Test(optim_grad_clip, clip_grad_norm_matches_torch) {
    df_scope sc = df_scope_begin();
    for (int k = 0; k < 4; k++) {
        char key[64];
        snprintf(key, sizeof key, "clip.in.%d", k);
        df_tensor *in = fixture_tensor(FX_FILE, key);
        snprintf(key, sizeof key, "clip.out.%d", k);
        df_tensor *want = fixture_tensor(FX_FILE, key);
        snprintf(key, sizeof key, "clip.norm.%d", k);
        df_tensor *want_norm = fixture_tensor(FX_FILE, key);
        float zeros[FX_NUMEL] = {0};
        fx_params fp;
        fx_make(&fp, zeros);
        fx_set_grads(fp.p, df_f32(in));
        double norm = 0;
        cr_assert_eq(df_clip_grad_norm(fp.p, FX_NPARAM, clip_cases[k], &norm), DF_OK);
        float got_norm = (float)norm;
        snprintf(key, sizeof key, "norm, case %d", k);
        /* torch sums in float32, we in double: equal to float rounding */
        check_close_f32(key, &got_norm, df_f32(want_norm), 1, 1e-6, 1e-6);
        float got[FX_NUMEL];
        fx_gather(fp.p, got, true);
        snprintf(key, sizeof key, "clipped grads, case %d", k);
        check_close_f32(key, got, df_f32(want), FX_NUMEL, 1e-6, 1e-6);
        fx_free(&fp);
    }
    df_scope_end(sc);
}

Test(optim_grad_clip, non_finite_gradients_are_seen) {
    float zeros[FX_NUMEL] = {0};
    fx_params fp;
    fx_make(&fp, zeros);
    df_f32(fp.p[2]->grad)[5] = 1.0f;
    cr_assert(df_grad_all_finite(fp.p, FX_NPARAM));
    float one = 1.0f, norm_f = (float)df_grad_norm(fp.p, FX_NPARAM);
    check_close_f32("norm of a unit gradient", &norm_f, &one, 1, 0, 0);
    df_f32(fp.p[3]->grad)[20] = INFINITY;
    cr_assert(!df_grad_all_finite(fp.p, FX_NPARAM));
    cr_assert(isinf(df_grad_norm(fp.p, FX_NPARAM)));
    /* torch: an infinite norm gives coef 0, so finite gradients become 0 */
    double norm = 0;
    cr_assert_eq(df_clip_grad_norm(fp.p, FX_NPARAM, 1.0, &norm), DF_OK);
    cr_assert(isinf(norm));
    float zero = 0.0f;
    check_close_f32("finite grad after an infinite norm", df_f32(fp.p[2]->grad) + 5, &zero, 1, 0,
                    0);
    df_f32(fp.p[3]->grad)[20] = NAN;
    cr_assert(!df_grad_all_finite(fp.p, FX_NPARAM));
    cr_assert(isnan(df_grad_norm(fp.p, FX_NPARAM)));
    cr_assert_eq(df_clip_grad_norm(fp.p, FX_NPARAM, 0.0, NULL), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "max_norm"), "%s", df_last_error());
    fx_free(&fp);
}

Test(optim_grad_clip, norm_does_not_depend_on_thread_count) {
    const int64_t n = 1000003;
    df_tensor *t = df_zeros(DF_DTYPE_F32, 1, &n);
    t->grad = randn_tensor(7, 1, &n);
    double norms[3];
    for (int th = 1; th <= 3; th++) {
        omp_set_num_threads(th);
        norms[th - 1] = df_grad_norm(&t, 1);
    }
    omp_set_num_threads(2);
    cr_assert(memcmp(&norms[0], &norms[1], sizeof(double)) == 0 &&
                  memcmp(&norms[0], &norms[2], sizeof(double)) == 0,
              "norms %.17g %.17g %.17g", norms[0], norms[1], norms[2]);
    float got = (float)(norms[0] / sqrt((double)n)), want = 1.0f; /* N(0,1): rms near 1 */
    check_close_f32("rms of randn", &got, &want, 1, 0.01, 0);
    df_tensor_free(t);
}

Test(optim_grad_clip, accumulation_scales_loss_by_one_over_k) {
    df_grad_accum a;
    cr_assert_eq(df_grad_accum_init(&a, 0), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "gradient_accumulation_steps"), "%s", df_last_error());
    cr_assert_eq(df_grad_accum_init(&a, 4), DF_OK);
    /* micro-batch i's loss gradient is g_i; backward of (loss * scale) adds scale * g_i */
    float acc[8] = {0}, mean[8] = {0};
    int steps = 0;
    for (int i = 0; i < 8; i++) {
        float scale = df_grad_accum_loss_scale(&a);
        for (int j = 0; j < 8; j++) {
            float g = (float)(i * 8 + j) * 0.5f;
            acc[j] += scale * g;
            if (i < 4) mean[j] += g / 4.0f;
        }
        if (df_grad_accum_tick(&a)) {
            steps++;
            if (steps == 1)
                check_close_f32("accumulated = mean gradient", acc, mean, 8, 1e-6, 1e-6);
            memset(acc, 0, sizeof acc);
        }
        cr_assert_eq(steps, (i + 1) / 4, "optimizer steps after micro-batch %d", i);
    }
}
