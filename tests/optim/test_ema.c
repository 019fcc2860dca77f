/* test_ema.c — diffusers' EMAModel (training_utils.py v0.21, re-implemented in
 * tests/ref/gen_optim.py): decays and shadow trajectories over 20 steps for the plain rule, the
 * warmup rule, update_after_step + min_decay, and a frozen parameter; store / copy_to / restore;
 * a state round trip (in memory and through a safetensors file) that continues bit-identically;
 * bad configs. */
#include "tests/optim/optim_fixture.h"

#include <math.h>
#include <stdio.h>
#include <unistd.h>

static df_ema_config ema_case(const char *name) {
    df_ema_config c = df_ema_config_default();
    if (strcmp(name, "warmup") == 0) {
        c.use_ema_warmup = true, c.inv_gamma = 1.0, c.power = 2.0 / 3.0, c.decay = 0.999;
    } else if (strcmp(name, "after3") == 0) {
        c.update_after_step = 3, c.min_decay = 0.5, c.decay = 0.9;
    } else if (strcmp(name, "frozen") == 0) {
        c.use_ema_warmup = true, c.inv_gamma = 2.0, c.power = 0.75, c.decay = 0.99;
    }
    return c;
}

static const char *const ema_names[] = {"default", "warmup", "after3", "frozen"};

/* Parameters with the initial values; parameter 1 frozen in "frozen". Caller frees each. */
static void make_plain(df_tensor *p[FX_NPARAM], const float *init, bool frozen1) {
    int64_t off = 0;
    for (int i = 0; i < FX_NPARAM; i++) {
        p[i] = df_tensor_new_owned(DF_DTYPE_F32, fx_ndims[i], fx_shapes[i]);
        memcpy(p[i]->data, init + off, (size_t)p[i]->numel * sizeof(float));
        off += p[i]->numel;
        df_tensor_set_requires_grad(p[i], !(frozen1 && i == 1));
    }
}

static void set_values(df_tensor *p[FX_NPARAM], const float *v) {
    int64_t off = 0;
    for (int i = 0; i < FX_NPARAM; i++) {
        memcpy(p[i]->data, v + off, (size_t)p[i]->numel * sizeof(float));
        off += p[i]->numel;
    }
}

Test(optim_ema, trajectories_match_diffusers) {
    df_scope sc = df_scope_begin();
    df_st_file *f = fixture_open(FX_FILE);
    df_tensor *init = fixture_tensor(FX_FILE, "init");
    df_tensor *traj = fixture_tensor(FX_FILE, "traj.adamw_wd");
    for (int c = 0; c < 4; c++) {
        char key[64];
        snprintf(key, sizeof key, "ema.%s", ema_names[c]);
        df_tensor *want = fixture_tensor(FX_FILE, key);
        snprintf(key, sizeof key, "ema_decay.%s", ema_names[c]);
        df_tensor *want_decay = NULL;
        cr_assert_eq(df_st_read(f, key, DF_DTYPE_F64, &want_decay), DF_OK);
        df_tensor *p[FX_NPARAM];
        make_plain(p, df_f32(init), c == 3);
        df_ema_config cfg = ema_case(ema_names[c]);
        df_ema *e;
        cr_assert_eq(df_ema_new(&cfg, p, NULL, FX_NPARAM, &e), DF_OK, "%s", df_last_error());
        float decays[FX_STEPS], want_decays[FX_STEPS];
        for (int s = 0; s < FX_STEPS; s++) {
            set_values(p, df_f32(traj) + s * FX_NUMEL);
            decays[s] = (float)df_ema_step(e);
            want_decays[s] = (float)((double *)want_decay->data)[s];
            float got[FX_NUMEL];
            int64_t off = 0;
            for (int i = 0; i < FX_NPARAM; i++) {
                df_tensor *t = df_ema_state_tensor(e, i);
                memcpy(got + off, t->data, (size_t)t->numel * sizeof(float));
                off += t->numel;
            }
            char label[96];
            snprintf(label, sizeof label, "ema %s after step %d", ema_names[c], s + 1);
            check_close_f32(label, got, df_f32(want) + s * FX_NUMEL, FX_NUMEL, 1e-6, 0);
        }
        snprintf(key, sizeof key, "ema %s decays", ema_names[c]);
        check_close_f32(key, decays, want_decays, FX_STEPS, 1e-7, 0);
        cr_assert_eq(df_ema_optimization_step(e), FX_STEPS);
        df_ema_free(e);
        for (int i = 0; i < FX_NPARAM; i++) df_tensor_free(p[i]);
    }
    df_scope_end(sc);
}

Test(optim_ema, store_copy_to_restore) {
    df_scope sc = df_scope_begin();
    df_tensor *init = fixture_tensor(FX_FILE, "init");
    df_tensor *traj = fixture_tensor(FX_FILE, "traj.adamw_wd");
    df_tensor *p[FX_NPARAM];
    make_plain(p, df_f32(init), false);
    df_ema_config cfg = ema_case("warmup");
    df_ema *e;
    cr_assert_eq(df_ema_new(&cfg, p, NULL, FX_NPARAM, &e), DF_OK);
    for (int s = 0; s < 5; s++) {
        set_values(p, df_f32(traj) + s * FX_NUMEL);
        df_ema_step(e);
    }
    df_ema_store(e);
    df_ema_copy_to(e);
    for (int i = 0; i < FX_NPARAM; i++)
        cr_assert(memcmp(p[i]->data, df_ema_state_tensor(e, i)->data,
                         (size_t)p[i]->numel * sizeof(float)) == 0,
                  "param %d is not the shadow after copy_to", i);
    df_ema_restore(e);
    float got[FX_NUMEL];
    fx_gather(p, got, false);
    cr_assert(memcmp(got, df_f32(traj) + 4 * FX_NUMEL, sizeof got) == 0,
              "restore did not bring back the training weights");
    df_ema_free(e);
    for (int i = 0; i < FX_NPARAM; i++) df_tensor_free(p[i]);
    df_scope_end(sc);
}

Test(optim_ema, state_round_trip_continues_bitwise) {
    df_scope sc = df_scope_begin();
    df_tensor *init = fixture_tensor(FX_FILE, "init");
    df_tensor *traj = fixture_tensor(FX_FILE, "traj.adamw_wd");
    const char *names[FX_NPARAM] = {"a.weight", "a.bias", "b.weight", "b.bias"};
    df_ema_config cfg = ema_case("after3");
    /* uninterrupted */
    df_tensor *p[FX_NPARAM];
    make_plain(p, df_f32(init), false);
    df_ema *e;
    cr_assert_eq(df_ema_new(&cfg, p, names, FX_NPARAM, &e), DF_OK);
    for (int s = 0; s < FX_STEPS; s++) {
        set_values(p, df_f32(traj) + s * FX_NUMEL);
        df_ema_step(e);
    }
    /* interrupted at 10: save the named state, restore into a fresh EMA */
    df_tensor *q[FX_NPARAM];
    make_plain(q, df_f32(init), false);
    df_ema *e1;
    cr_assert_eq(df_ema_new(&cfg, q, names, FX_NPARAM, &e1), DF_OK);
    for (int s = 0; s < 10; s++) {
        set_values(q, df_f32(traj) + s * FX_NUMEL);
        df_ema_step(e1);
    }
    int ns = df_ema_state_count(e1);
    df_tensor *saved[FX_NPARAM + 1];
    for (int i = 0; i < ns; i++) saved[i] = df_tensor_clone(df_ema_state_tensor(e1, i));
    char path[] = "/tmp/df_ema_state_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(df_ema_state_save(e1, path), DF_OK, "%s", df_last_error());
    df_ema_free(e1);
    /* in memory: write the saved tensors into a fresh EMA by name */
    df_ema *e2;
    cr_assert_eq(df_ema_new(&cfg, q, names, FX_NPARAM, &e2), DF_OK);
    for (int i = 0; i < ns; i++) {
        df_tensor *dst = df_ema_state_find(e2, df_ema_state_name(e2, i));
        cr_assert(dst);
        df_tensor_copy_(dst, saved[i]);
    }
    cr_assert_eq(df_ema_optimization_step(e2), 10);
    /* through the file: a second fresh EMA must hold the same state */
    df_ema *e3;
    cr_assert_eq(df_ema_new(&cfg, q, names, FX_NPARAM, &e3), DF_OK);
    cr_assert_eq(df_ema_state_load(e3, path), DF_OK, "%s", df_last_error());
    unlink(path);
    for (int i = 0; i < ns; i++) {
        df_tensor *a = df_ema_state_tensor(e2, i), *b = df_ema_state_tensor(e3, i);
        cr_assert(memcmp(a->data, b->data, (size_t)a->numel * df_dtype_size(a->dtype)) == 0,
                  "state '%s' differs after a file round trip", df_ema_state_name(e2, i));
    }
    df_ema_free(e3);
    for (int s = 10; s < FX_STEPS; s++) {
        set_values(q, df_f32(traj) + s * FX_NUMEL);
        df_ema_step(e2);
    }
    for (int i = 0; i < ns; i++) {
        df_tensor *a = df_ema_state_tensor(e, i),
                  *b = df_ema_state_find(e2, df_ema_state_name(e, i));
        cr_assert(b && a->numel == b->numel);
        cr_assert(memcmp(a->data, b->data, (size_t)a->numel * df_dtype_size(a->dtype)) == 0,
                  "state '%s' differs after resume", df_ema_state_name(e, i));
    }
    df_ema_free(e);
    df_ema_free(e2);
    for (int i = 0; i < FX_NPARAM; i++) df_tensor_free(p[i]), df_tensor_free(q[i]);
    df_scope_end(sc);
}

Test(optim_ema, bad_configs_are_errors) {
    df_ema_config c = df_ema_config_default();
    cr_assert_eq(df_ema_config_check(&c), DF_OK);
    c.decay = 1.5;
    cr_assert_eq(df_ema_config_check(&c), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "decay") && strstr(df_last_error(), "[0, 1]"));
    c = df_ema_config_default(), c.min_decay = 0.99999;
    cr_assert_eq(df_ema_config_check(&c), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "min_decay"), "%s", df_last_error());
    c = df_ema_config_default(), c.inv_gamma = 0;
    cr_assert_eq(df_ema_config_check(&c), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "inv_gamma"), "%s", df_last_error());
    c = df_ema_config_default(), c.update_after_step = -1;
    cr_assert_eq(df_ema_config_check(&c), DF_ERR_INVALID);
    cr_assert(strstr(df_last_error(), "update_after_step"), "%s", df_last_error());
}
