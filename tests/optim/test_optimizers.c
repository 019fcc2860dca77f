/* test_optimizers.c — 20-step trajectories of SGD (momentum, dampening, Nesterov), Adam, AdamW
 * (with and without amsgrad) and Lion, with and without weight decay, over two parameter groups
 * with different hyperparameters, against torch.optim 1.13 (fixtures of tests/ref/gen_optim.py);
 * a schedule-driven AdamW run; thread-count independence; hyperparameter errors; state names. */
#include "tests/optim/optim_fixture.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

Test(optim_optimizers, trajectories_match_torch) {
    df_scope sc = df_scope_begin();
    df_tensor *init = fixture_tensor(FX_FILE, "init");
    df_tensor *grads = fixture_tensor(FX_FILE, "grads");
    for (int c = 0; c < FX_N_CONFIGS; c++) {
        char key[128];
        snprintf(key, sizeof key, "traj.%s", fx_configs[c]);
        df_tensor *want = fixture_tensor(FX_FILE, key);
        fx_params fp;
        fx_make(&fp, df_f32(init));
        df_lr_schedule sched;
        bool has_sched;
        df_optim *o = fx_make_optim(fx_configs[c], &fp, &sched, &has_sched);
        for (int s = 0; s < FX_STEPS; s++) {
            fx_set_grads(fp.p, df_f32(grads) + s * FX_NUMEL);
            if (has_sched) df_lr_schedule_apply(&sched, o, s);
            cr_assert_eq(df_optim_step(o), DF_OK);
            float got[FX_NUMEL];
            fx_gather(fp.p, got, false);
            char label[160];
            snprintf(label, sizeof label, "%s after step %d", fx_configs[c], s + 1);
            check_close_f32(label, got, df_f32(want) + s * FX_NUMEL, FX_NUMEL, 1e-6, 0);
        }
        cr_assert_eq(df_optim_step_count(o, 0), FX_STEPS);
        cr_assert_eq(df_optim_step_count(o, 1), FX_STEPS);
        df_optim_free(o);
        fx_free(&fp);
    }
    df_scope_end(sc);
}

/* The same big update with 1 and 2 threads: bit-identical parameters and moments. */
Test(optim_optimizers, thread_count_does_not_change_results) {
    const int64_t n = 300001; /* several chunks, above the parallel threshold, odd tail */
    df_optim_kind kinds[] = {DF_OPTIM_SGD, DF_OPTIM_ADAMW, DF_OPTIM_LION};
    for (int k = 0; k < 3; k++) {
        float *res[2];
        for (int run = 0; run < 2; run++) {
            omp_set_num_threads(run + 1);
            df_tensor *p = randn_tensor(1, 1, &n);
            df_tensor *pp = df_tensor_retain(p);
            df_flat flat;
            cr_assert_eq(df_flat_init(&flat, &pp, 1), DF_OK);
            df_optim_hparams h = df_optim_hparams_default(kinds[k]);
            h.momentum = 0.9;
            h.weight_decay = 0.05;
            df_param_group g = {.params = &pp, .n = 1, .h = h};
            df_optim *o;
            cr_assert_eq(df_optim_new(kinds[k], &g, 1, &o), DF_OK);
            for (int s = 0; s < 3; s++) {
                df_tensor *gr = randn_tensor(100 + s, 1, &n);
                memcpy(pp->grad->data, gr->data, (size_t)n * sizeof(float));
                df_tensor_free(gr);
                df_optim_step(o);
            }
            res[run] = malloc((size_t)n * 2 * sizeof(float));
            memcpy(res[run], pp->data, (size_t)n * sizeof(float));
            memcpy(res[run] + n, df_optim_state_tensor(o, 0)->data, (size_t)n * sizeof(float));
            df_optim_free(o);
            df_tensor_free(pp);
            df_tensor_free(p);
            df_flat_free(&flat);
        }
        omp_set_num_threads(2);
        cr_assert(memcmp(res[0], res[1], (size_t)n * 2 * sizeof(float)) == 0,
                  "%s: 1 and 2 threads differ", df_optim_kind_name(kinds[k]));
        free(res[0]);
        free(res[1]);
    }
}

Test(optim_optimizers, state_names_and_shapes) {
    df_scope sc = df_scope_begin();
    float init[FX_NUMEL] = {0};
    fx_params fp;
    fx_make(&fp, init);
    const char *names[2] = {"unet.conv.weight", "unet.conv.bias"};
    df_optim_hparams h = df_optim_hparams_default(DF_OPTIM_ADAMW);
    df_optim_hparams h1 = h;
    h1.amsgrad = true;
    df_param_group groups[2] = {
        {.params = fp.p, .names = names, .n = 2, .h = h},
        {.params = fp.p + 2, .n = 2, .h = h1},
    };
    df_optim *o;
    cr_assert_eq(df_optim_new(DF_OPTIM_ADAMW, groups, 2, &o), DF_OK, "%s", df_last_error());
    /* 2 params x 2 moments + 2 params x 3 moments + 2 step counters */
    cr_assert_eq(df_optim_state_count(o), 12);
    df_tensor *t = df_optim_state_find(o, "unet.conv.weight.exp_avg_sq");
    cr_assert(t && t->ndim == 2 && t->shape[0] == 5 && t->shape[1] == 6);
    cr_assert(df_optim_state_find(o, "group1.1.max_exp_avg_sq"));
    cr_assert_null(df_optim_state_find(o, "unet.conv.weight.max_exp_avg_sq"));
    df_tensor *step = df_optim_state_find(o, "group1.step");
    cr_assert(step && step->dtype == DF_DTYPE_I64 && step->numel == 1);
    df_optim_step(o);
    cr_assert_eq(((int64_t *)step->data)[0], 1);
    df_optim_free(o);
    fx_free(&fp);
    df_scope_end(sc);
}

/* A message names the field and the allowed values. */
static void expect_invalid(df_optim_kind kind, df_optim_hparams h, const char *field,
                           const char *allowed) {
    df_status s = df_optim_hparams_check(kind, &h);
    cr_assert_eq(s, DF_ERR_INVALID, "%s accepted", field);
    cr_assert(strstr(df_last_error(), field) && strstr(df_last_error(), allowed),
              "message '%s' lacks '%s' or '%s'", df_last_error(), field, allowed);
}

Test(optim_optimizers, invalid_hyperparameters_are_errors) {
    df_optim_hparams h = df_optim_hparams_default(DF_OPTIM_ADAMW);
    cr_assert_eq(df_optim_hparams_check(DF_OPTIM_ADAMW, &h), DF_OK);
    df_optim_hparams b = h;
    b.lr = -1e-3;
    expect_invalid(DF_OPTIM_ADAMW, b, "lr", ">= 0");
    b = h, b.lr = NAN;
    expect_invalid(DF_OPTIM_ADAMW, b, "lr", ">= 0");
    b = h, b.beta1 = 1.0;
    expect_invalid(DF_OPTIM_ADAMW, b, "beta1", "[0, 1)");
    b = h, b.beta2 = -0.1;
    expect_invalid(DF_OPTIM_ADAM, b, "beta2", "[0, 1)");
    b = h, b.eps = -1;
    expect_invalid(DF_OPTIM_ADAM, b, "eps", ">= 0");
    b = h, b.weight_decay = -0.1;
    expect_invalid(DF_OPTIM_LION, b, "weight_decay", ">= 0");
    df_optim_hparams s = df_optim_hparams_default(DF_OPTIM_SGD);
    s.momentum = -0.5;
    expect_invalid(DF_OPTIM_SGD, s, "momentum", ">= 0");
    s = df_optim_hparams_default(DF_OPTIM_SGD), s.nesterov = true;
    expect_invalid(DF_OPTIM_SGD, s, "nesterov", "momentum > 0");
    s = df_optim_hparams_default(DF_OPTIM_SGD), s.dampening = 2;
    expect_invalid(DF_OPTIM_SGD, s, "dampening", "[0, 1]");

    df_optim_kind k;
    cr_assert_eq(df_optim_kind_parse("adamw", &k), DF_OK);
    cr_assert_eq(k, DF_OPTIM_ADAMW);
    cr_assert_eq(df_optim_kind_parse("adamax", &k), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "adamax") &&
              strstr(df_last_error(), "sgd, adam, adamw, lion"));

    /* through df_optim_new, naming the group; and a repeated parameter */
    df_scope sc = df_scope_begin();
    float init[FX_NUMEL] = {0};
    fx_params fp;
    fx_make(&fp, init);
    df_optim_hparams bad = h;
    bad.beta2 = 1.5;
    df_param_group groups[2] = {{.params = fp.p, .n = 2, .h = h},
                                {.params = fp.p + 2, .n = 2, .h = bad}};
    df_optim *o = (df_optim *)1;
    cr_assert_eq(df_optim_new(DF_OPTIM_ADAMW, groups, 2, &o), DF_ERR_INVALID);
    cr_assert_null(o);
    cr_assert(strstr(df_last_error(), "group 1") && strstr(df_last_error(), "beta2"), "%s",
              df_last_error());
    groups[1] = (df_param_group){.params = fp.p + 1, .n = 2, .h = h};
    cr_assert_eq(df_optim_new(DF_OPTIM_ADAMW, groups, 2, &o), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "appears twice"), "%s", df_last_error());
    groups[1] = (df_param_group){.params = fp.p + 2, .n = 2, .h = h};
    cr_assert_eq(df_optim_new(DF_OPTIM_ADAMW, groups, 2, &o), DF_OK);
    cr_assert_eq(df_optim_set_lr(o, 0, -1.0), DF_ERR_INVALID);
    cr_assert_eq(df_optim_set_lr(o, 0, 0.5), DF_OK);
    cr_assert(df_optim_group_hparams(o, 0)->lr == 0.5);
    cr_assert(df_optim_initial_lr(o, 0) == h.lr);
    df_optim_free(o);
    fx_free(&fp);
    df_scope_end(sc);
}

/* The SIMD loops equal the scalar reference bit for bit: one 1003-element parameter (SIMD body
 * and tail) against 1003 one-element parameters (scalar path only), same values and gradients. */
Test(optim_optimizers, simd_path_equals_scalar_path) {
    enum { N = 1003 };
    const char *cases[] = {"sgd_nesterov_wd", "adam_wd", "adamw_amsgrad_wd", "lion_wd"};
    for (int c = 0; c < 4; c++) {
        df_optim_hparams h[2];
        const char *sched;
        df_optim_kind kind = fx_config(cases[c], h, &sched);
        const int64_t n = N;
        df_tensor *big = randn_tensor(3, 1, &n);
        df_flat fbig;
        cr_assert_eq(df_flat_init(&fbig, &big, 1), DF_OK);
        df_tensor *small[N];
        for (int i = 0; i < N; i++)
            small[i] = df_from_data(DF_DTYPE_F32, DF_DIMS(1), df_f32(big) + i);
        df_flat fsmall;
        cr_assert_eq(df_flat_init(&fsmall, small, N), DF_OK);
        df_param_group gb = {.params = &big, .n = 1, .h = h[0]};
        df_param_group gs = {.params = small, .n = N, .h = h[0]};
        df_optim *ob, *os;
        cr_assert_eq(df_optim_new(kind, &gb, 1, &ob), DF_OK);
        cr_assert_eq(df_optim_new(kind, &gs, 1, &os), DF_OK);
        for (int s = 0; s < 4; s++) {
            df_tensor *g = randn_tensor(10 + s, 1, &n);
            if (s == 2) df_f32(g)[5] = 0.0f; /* sign(0), v = 0 */
            memcpy(big->grad->data, g->data, sizeof(float) * N);
            for (int i = 0; i < N; i++) df_f32(small[i]->grad)[0] = df_f32(g)[i];
            df_tensor_free(g);
            df_optim_step(ob);
            df_optim_step(os);
        }
        for (int i = 0; i < N; i++)
            cr_assert(memcmp(df_f32(big) + i, small[i]->data, sizeof(float)) == 0,
                      "%s: element %d: SIMD %.9g, scalar %.9g", cases[c], i, df_f32(big)[i],
                      df_f32(small[i])[0]);
        df_optim_free(ob);
        df_optim_free(os);
        for (int i = 0; i < N; i++) df_tensor_free(small[i]);
        df_tensor_free(big);
        df_flat_free(&fbig);
        df_flat_free(&fsmall);
    }
}
