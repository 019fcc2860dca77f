/* optim_fixture.h — what the tests of tests/optim share: the parameter layout of
 * tests/ref/gen_optim.py (four parameters in two groups, 100 values in all), building those
 * parameters in a df_flat buffer, and gathering their values. */
#ifndef DF_TEST_OPTIM_FIXTURE_H
#define DF_TEST_OPTIM_FIXTURE_H

#include "optim/optim.h"
#include "tests/common/check.h"

#include <string.h>

#define FX_FILE "optim/optim.safetensors"
#define FX_NPARAM 4
#define FX_NUMEL 100
#define FX_STEPS 20

static const int64_t fx_shapes[FX_NPARAM][2] = {{5, 6}, {17, 0}, {4, 8}, {3, 7}};
static const int fx_ndims[FX_NPARAM] = {2, 1, 2, 2};

/* The parameters of one run, in a df_flat buffer (so the optimizer sees the real layout). */
typedef struct fx_params {
    df_tensor *p[FX_NPARAM];
    df_flat flat;
} fx_params;

/* Makes the four parameters with values from `values` (FX_NUMEL floats). Caller owns: fx_free. */
static inline void fx_make(fx_params *fp, const float *values) {
    int64_t off = 0;
    for (int i = 0; i < FX_NPARAM; i++) {
        df_tensor *t = df_tensor_new_owned(DF_DTYPE_F32, fx_ndims[i], fx_shapes[i]);
        memcpy(t->data, values + off, (size_t)t->numel * sizeof(float));
        off += t->numel;
        fp->p[i] = t;
    }
    cr_assert_eq(df_flat_init(&fp->flat, fp->p, FX_NPARAM), DF_OK, "%s", df_last_error());
}

static inline void fx_free(fx_params *fp) {
    for (int i = 0; i < FX_NPARAM; i++) df_tensor_free(fp->p[i]);
    df_flat_free(&fp->flat);
}

/* Concatenates the flattened parameter values (or gradients) into out[FX_NUMEL]. */
static inline void fx_gather(df_tensor *const *p, float *out, bool grad) {
    int64_t off = 0;
    for (int i = 0; i < FX_NPARAM; i++) {
        const df_tensor *t = grad ? p[i]->grad : p[i];
        memcpy(out + off, t->data, (size_t)t->numel * sizeof(float));
        off += t->numel;
    }
}

/* Sets the gradients from in[FX_NUMEL]. */
static inline void fx_set_grads(df_tensor *const *p, const float *in) {
    int64_t off = 0;
    for (int i = 0; i < FX_NPARAM; i++) {
        memcpy(p[i]->grad->data, in + off, (size_t)p[i]->numel * sizeof(float));
        off += p[i]->numel;
    }
}

/* The hyperparameters of gen_optim.py's optim_configs(), by name. */
static inline df_optim_kind fx_config(const char *name, df_optim_hparams h[2], const char **sched) {
    bool wd = strstr(name, "_wd") != NULL, ams = strstr(name, "amsgrad") != NULL;
    *sched = NULL;
    df_optim_kind kind;
    if (strncmp(name, "sgd", 3) == 0) {
        kind = DF_OPTIM_SGD;
        h[0] = h[1] = df_optim_hparams_default(kind);
        h[0].lr = 0.02;
        h[1].lr = 0.01;
        if (strstr(name, "momentum")) {
            h[0].momentum = 0.9, h[0].dampening = 0.1;
            h[1].momentum = 0.5, h[1].dampening = 0.0;
        }
        if (strstr(name, "nesterov")) {
            h[0].momentum = 0.9, h[0].nesterov = true;
            h[1].momentum = 0.8, h[1].nesterov = true;
        }
        h[0].weight_decay = wd ? 0.01 : 0.0;
        h[1].weight_decay = wd ? 0.1 : 0.0;
    } else if (strncmp(name, "lion", 4) == 0) {
        kind = DF_OPTIM_LION;
        h[0] = h[1] = df_optim_hparams_default(kind);
        h[0].lr = 1e-3;
        h[1].lr = 3e-4, h[1].beta1 = 0.95, h[1].beta2 = 0.98;
        h[0].weight_decay = wd ? 10 * 0.01 : 0.0;
        h[1].weight_decay = wd ? 10 * 0.1 : 0.0;
    } else {
        kind = strncmp(name, "adamw", 5) == 0 ? DF_OPTIM_ADAMW : DF_OPTIM_ADAM;
        h[0] = h[1] = df_optim_hparams_default(kind);
        h[0].lr = 1e-2;
        h[1].lr = 3e-3;
        if (strcmp(name, "adamw_cosine") == 0) {
            h[0].weight_decay = 0.01;
            h[1].weight_decay = 0.1;
            *sched = "cosine";
            return kind;
        }
        h[1].beta1 = 0.8, h[1].beta2 = 0.99, h[1].eps = 1e-6;
        h[0].weight_decay = wd ? 0.01 : 0.0;
        h[1].weight_decay = wd ? 0.1 : 0.0;
        h[0].amsgrad = h[1].amsgrad = ams;
    }
    return kind;
}

static const char *const fx_configs[] = {
    "sgd",           "sgd_wd",           "sgd_momentum", "sgd_momentum_wd",
    "sgd_nesterov",  "sgd_nesterov_wd",  "adam",         "adam_wd",
    "adam_amsgrad",  "adam_amsgrad_wd",  "adamw",        "adamw_wd",
    "adamw_amsgrad", "adamw_amsgrad_wd", "lion",         "lion_wd",
    "adamw_cosine",
};
#define FX_N_CONFIGS (int)(sizeof fx_configs / sizeof fx_configs[0])

static inline df_optim *fx_make_optim(const char *name, fx_params *fp, df_lr_schedule *sched,
                                      bool *has_sched) {
    df_optim_hparams h[2];
    const char *sname;
    df_optim_kind kind = fx_config(name, h, &sname);
    df_param_group groups[2] = {
        {.params = fp->p, .n = 2, .h = h[0]},
        {.params = fp->p + 2, .n = 2, .h = h[1]},
    };
    df_optim *o = NULL;
    cr_assert_eq(df_optim_new(kind, groups, 2, &o), DF_OK, "%s: %s", name, df_last_error());
    *has_sched = sname != NULL;
    if (sname)
        cr_assert_eq(df_lr_schedule_init(sched, sname, 5, 20, h[0].lr), DF_OK, "%s",
                     df_last_error());
    return o;
}

#endif
