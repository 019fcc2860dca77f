/* test_resume.c — save the optimizer state at step 10 through its named tensors, restore it into
 * fresh parameters and a fresh optimizer, continue to step 20: parameters and every state tensor
 * are bitwise equal to an uninterrupted run. Once in memory (clones of the state tensors) and
 * once through a safetensors file (df_optim_state_save / _load), for every optimizer config; and
 * loads that must fail (another optimizer's file, a missing tensor). */
#include "tests/optim/optim_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Runs steps [from, to) of config `name` on fp with optimizer o. */
static void run(df_optim *o, fx_params *fp, const df_lr_schedule *sched, bool has_sched,
                const float *grads, int from, int to) {
    for (int s = from; s < to; s++) {
        fx_set_grads(fp->p, grads + s * FX_NUMEL);
        if (has_sched) df_lr_schedule_apply(sched, o, s);
        cr_assert_eq(df_optim_step(o), DF_OK);
    }
}

static void expect_same(const char *name, df_optim *a, fx_params *pa, df_optim *b, fx_params *pb) {
    float va[FX_NUMEL], vb[FX_NUMEL];
    fx_gather(pa->p, va, false);
    fx_gather(pb->p, vb, false);
    cr_assert(memcmp(va, vb, sizeof va) == 0, "%s: parameters differ after resume", name);
    cr_assert_eq(df_optim_state_count(a), df_optim_state_count(b));
    for (int i = 0; i < df_optim_state_count(a); i++) {
        const char *sn = df_optim_state_name(a, i);
        df_tensor *ta = df_optim_state_tensor(a, i), *tb = df_optim_state_find(b, sn);
        cr_assert(tb && tb->numel == ta->numel, "%s: state '%s' missing", name, sn);
        cr_assert(memcmp(ta->data, tb->data, (size_t)ta->numel * df_dtype_size(ta->dtype)) == 0,
                  "%s: state '%s' differs after resume", name, sn);
    }
}

static void resume_case(const char *name, bool through_file) {
    df_scope sc = df_scope_begin();
    df_tensor *init = fixture_tensor(FX_FILE, "init");
    df_tensor *grads = fixture_tensor(FX_FILE, "grads");
    df_lr_schedule sched;
    bool has_sched;

    fx_params full;
    fx_make(&full, df_f32(init));
    df_optim *o_full = fx_make_optim(name, &full, &sched, &has_sched);
    run(o_full, &full, &sched, has_sched, df_f32(grads), 0, FX_STEPS);

    fx_params first;
    fx_make(&first, df_f32(init));
    df_optim *o1 = fx_make_optim(name, &first, &sched, &has_sched);
    run(o1, &first, &sched, has_sched, df_f32(grads), 0, 10);
    /* the checkpoint: parameter values and the named optimizer state */
    float values[FX_NUMEL];
    fx_gather(first.p, values, false);
    int ns = df_optim_state_count(o1);
    df_tensor **saved = calloc((size_t)ns, sizeof *saved);
    char path[] = "/tmp/df_optim_resume_XXXXXX";
    if (through_file) {
        int fd = mkstemp(path);
        cr_assert(fd >= 0);
        close(fd);
        cr_assert_eq(df_optim_state_save(o1, path), DF_OK, "%s", df_last_error());
    } else {
        for (int i = 0; i < ns; i++) saved[i] = df_tensor_clone(df_optim_state_tensor(o1, i));
    }
    char(*name_copy)[256] = calloc((size_t)ns, sizeof *name_copy);
    for (int i = 0; i < ns; i++) snprintf(name_copy[i], 256, "%s", df_optim_state_name(o1, i));
    df_optim_free(o1);
    fx_free(&first);

    /* fresh objects, restored by name */
    fx_params second;
    fx_make(&second, values);
    df_optim *o2 = fx_make_optim(name, &second, &sched, &has_sched);
    cr_assert_eq(df_optim_state_count(o2), ns);
    if (through_file) {
        cr_assert_eq(df_optim_state_load(o2, path), DF_OK, "%s", df_last_error());
        unlink(path);
    } else {
        for (int i = 0; i < ns; i++) {
            df_tensor *dst = df_optim_state_find(o2, name_copy[i]);
            cr_assert(dst, "%s: no state '%s'", name, name_copy[i]);
            df_tensor_copy_(dst, saved[i]);
        }
    }
    cr_assert_eq(df_optim_step_count(o2, 0), 10);
    run(o2, &second, &sched, has_sched, df_f32(grads), 10, FX_STEPS);
    expect_same(name, o_full, &full, o2, &second);

    df_optim_free(o2);
    df_optim_free(o_full);
    fx_free(&second);
    fx_free(&full);
    free(saved);
    free(name_copy);
    df_scope_end(sc);
}

Test(optim_resume, in_memory_state_round_trip_is_bitwise) {
    for (int c = 0; c < FX_N_CONFIGS; c++) resume_case(fx_configs[c], false);
}

Test(optim_resume, safetensors_state_round_trip_is_bitwise) {
    for (int c = 0; c < FX_N_CONFIGS; c++) resume_case(fx_configs[c], true);
}

/* Loading another configuration's state is an error naming what is wrong. */
Test(optim_resume, mismatched_state_files_are_errors) {
    df_scope sc = df_scope_begin();
    float zeros[FX_NUMEL] = {0};
    fx_params fp;
    fx_make(&fp, zeros);
    df_lr_schedule sched;
    bool has_sched;
    df_optim *adamw = fx_make_optim("adamw_wd", &fp, &sched, &has_sched);
    df_optim *ams = fx_make_optim("adamw_amsgrad_wd", &fp, &sched, &has_sched);
    df_optim *sgd = fx_make_optim("sgd_momentum", &fp, &sched, &has_sched);
    char path[] = "/tmp/df_optim_bad_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(df_optim_state_save(adamw, path), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_optim_state_load(sgd, path), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "adamw") && strstr(df_last_error(), "sgd"), "%s",
              df_last_error());
    cr_assert_eq(df_optim_state_load(ams, path), DF_ERR_NOTFOUND);
    cr_assert(strstr(df_last_error(), "max_exp_avg_sq"), "%s", df_last_error());
    cr_assert_eq(df_optim_state_save(ams, path), DF_OK);
    cr_assert_eq(df_optim_state_load(adamw, path), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "another configuration"), "%s", df_last_error());
    unlink(path);
    cr_assert_neq(df_optim_state_load(adamw, path), DF_OK);
    df_optim_free(adamw);
    df_optim_free(ams);
    df_optim_free(sgd);
    fx_free(&fp);
    df_scope_end(sc);
}
