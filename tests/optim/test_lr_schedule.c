/* test_lr_schedule.c — diffusers' schedules (v0.21 lambdas under torch's LambdaLR, fixtures of
 * tests/ref/gen_optim.py) applied to an optimizer for 25 steps, scale_lr, and bad input. */
#include "tests/optim/optim_fixture.h"

#include <math.h>
#include <stdio.h>

/* gen_optim.py's SCHEDULES: name, kind, warmup, training, num_cycles (0 = default), power,
 * lr_end. */
typedef struct sched_case {
    const char *name, *kind;
    int64_t warmup, training;
    double num_cycles, power, lr_end;
} sched_case;

static const sched_case cases[] = {
    {"constant", "constant", 0, 20, 0, 1.0, 1e-7},
    {"constant_with_warmup", "constant_with_warmup", 5, 20, 0, 1.0, 1e-7},
    {"linear", "linear", 5, 20, 0, 1.0, 1e-7},
    {"linear_nowarmup", "linear", 0, 20, 0, 1.0, 1e-7},
    {"cosine", "cosine", 5, 20, 0, 1.0, 1e-7},
    {"cosine_cycles", "cosine", 3, 20, 1.5, 1.0, 1e-7},
    {"cosine_with_restarts", "cosine_with_restarts", 5, 20, 0, 1.0, 1e-7},
    {"cosine_with_restarts_3", "cosine_with_restarts", 2, 20, 3, 1.0, 1e-7},
    {"polynomial", "polynomial", 5, 20, 0, 1.0, 1e-7},
    {"polynomial_pow2", "polynomial", 4, 20, 0, 2.0, 1e-4},
};

Test(optim_lr_schedule, schedules_match_diffusers) {
    df_scope sc = df_scope_begin();
    df_st_file *f = fixture_open(FX_FILE);
    df_tensor *p = df_zeros(DF_DTYPE_F32, DF_DIMS(3));
    p->grad = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(3));
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const sched_case *k = &cases[c];
        char key[128];
        snprintf(key, sizeof key, "lr.%s", k->name);
        df_tensor *want = NULL;
        cr_assert_eq(df_st_read(f, key, DF_DTYPE_F64, &want), DF_OK, "%s", df_last_error());
        df_lr_schedule s;
        cr_assert_eq(df_lr_schedule_init(&s, k->kind, k->warmup, k->training, 1e-3), DF_OK, "%s",
                     df_last_error());
        if (k->num_cycles) s.num_cycles = k->num_cycles;
        s.power = k->power;
        s.lr_end = k->lr_end;
        cr_assert_eq(df_lr_schedule_check(&s), DF_OK, "%s", df_last_error());
        df_param_group g = {.params = &p, .n = 1, .h = df_optim_hparams_default(DF_OPTIM_SGD)};
        df_optim *o;
        cr_assert_eq(df_optim_new(DF_OPTIM_SGD, &g, 1, &o), DF_OK);
        /* compared in float after scaling to O(1): the doubles agree to rounding */
        float got[25], exp[25];
        for (int step = 0; step < 25; step++) {
            df_lr_schedule_apply(&s, o, step);
            got[step] = (float)(df_optim_group_hparams(o, 0)->lr * 1e3);
            exp[step] = (float)(((double *)want->data)[step] * 1e3);
            df_optim_step(o);
        }
        check_close_f32(k->name, got, exp, 25, 1e-7, 1e-7);
        df_optim_free(o);
    }
    df_scope_end(sc);
}

Test(optim_lr_schedule, scale_lr_and_factor_spot_values) {
    /* diffusers: lr * gradient_accumulation_steps * train_batch_size * num_processes */
    double want = 1e-4 * 2 * 4 * 8;
    float got_f[3] = {(float)df_scale_lr(1e-4, 4, 2, 8), 0, 0}, want_f[3] = {(float)want, 0, 0};
    df_lr_schedule s;
    cr_assert_eq(df_lr_schedule_init(&s, "linear", 10, 110, 1e-4), DF_OK);
    got_f[1] = (float)df_lr_schedule_factor(&s, 5); /* warmup: 5 / 10 */
    want_f[1] = 0.5f;
    got_f[2] = (float)df_lr_schedule_factor(&s, 60); /* (110 - 60) / 100 */
    want_f[2] = 0.5f;
    check_close_f32("scale_lr and linear", got_f, want_f, 3, 0, 1e-7);
}

Test(optim_lr_schedule, bad_schedules_are_errors) {
    df_lr_schedule s;
    cr_assert_eq(df_lr_schedule_init(&s, "cosine_annealing", 0, 10, 1e-3), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "cosine_annealing") &&
                  strstr(df_last_error(), "constant, constant_with_warmup, linear, cosine, "
                                          "cosine_with_restarts, polynomial"),
              "%s", df_last_error());
    cr_assert_eq(df_lr_schedule_init(&s, "linear", -1, 10, 1e-3), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "num_warmup_steps"), "%s", df_last_error());
    cr_assert_eq(df_lr_schedule_init(&s, "cosine", 0, 0, 1e-3), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "num_training_steps"), "%s", df_last_error());
    cr_assert_eq(df_lr_schedule_init(&s, "polynomial", 0, 10, 1e-8), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "lr_end"), "%s", df_last_error());
    cr_assert_eq(df_lr_schedule_init(&s, "constant", 0, 0, 1e-3), DF_OK);
    cr_assert_eq(df_lr_schedule_init(&s, "cosine_with_restarts", 2, 10, 1e-3), DF_OK);
    cr_assert(s.num_cycles == 1.0);
    s.num_cycles = -1;
    cr_assert_eq(df_lr_schedule_check(&s), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "num_cycles"), "%s", df_last_error());
}
