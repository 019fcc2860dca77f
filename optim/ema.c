/* ema.c — an exponential moving average of the weights, as diffusers' EMAModel
 * (training_utils.py at v0.21): get_decay, step, copy_to, store, restore, and a state that is
 * named tensors (the shadows under the parameters' names, and "optimization_step").
 *
 * step: optimization_step += 1; d = get_decay(optimization_step); one_minus_decay = 1 - d (double,
 * rounded to float by the kernel); for a parameter that requires grad
 *   t = shadow - param;  t = one_minus_decay * t;  shadow = shadow - t     (float32, torch's order)
 * otherwise shadow = param. Shadows live in one flat buffer (OPTIM_ALIGN-aligned slices).
 */
#include "optim/optim_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct df_ema {
    df_ema_config cfg;
    int n;
    df_tensor **params; /* borrowed */
    df_tensor **shadow; /* owned views of `flat` */
    df_tensor **stored; /* owned views of `stored_flat` */
    char **names;       /* owned */
    df_tensor *flat;    /* F32 [total], owned */
    df_tensor *stored_flat;
    bool has_stored;
    df_tensor *step; /* I64 [1] optimization_step, owned */
};

df_ema_config df_ema_config_default(void) {
    return (df_ema_config){.decay = 0.9999,
                           .min_decay = 0.0,
                           .update_after_step = 0,
                           .use_ema_warmup = false,
                           .inv_gamma = 1.0,
                           .power = 2.0 / 3.0};
}

df_status df_ema_config_check(const df_ema_config *c) {
    if (!(c->decay >= 0 && c->decay <= 1))
        return df_error(DF_ERR_INVALID, "ema: invalid decay %g (allowed: [0, 1])", c->decay);
    if (!(c->min_decay >= 0 && c->min_decay <= c->decay))
        return df_error(DF_ERR_INVALID, "ema: invalid min_decay %g (allowed: [0, decay = %g])",
                        c->min_decay, c->decay);
    if (c->update_after_step < 0)
        return df_error(DF_ERR_INVALID, "ema: invalid update_after_step %lld (allowed: >= 0)",
                        (long long)c->update_after_step);
    if (!(c->inv_gamma > 0) || isinf(c->inv_gamma))
        return df_error(DF_ERR_INVALID, "ema: invalid inv_gamma %g (allowed: finite, > 0)",
                        c->inv_gamma);
    if (!(c->power >= 0) || isinf(c->power))
        return df_error(DF_ERR_INVALID, "ema: invalid power %g (allowed: finite, >= 0)", c->power);
    return DF_OK;
}

static int64_t padded(int64_t n) {
    return (n + OPTIM_ALIGN - 1) / OPTIM_ALIGN * OPTIM_ALIGN;
}

df_status df_ema_new(const df_ema_config *cfg, df_tensor *const *params, const char *const *names,
                     int n, df_ema **out) {
    *out = NULL;
    DF_TRY(df_ema_config_check(cfg));
    if (n < 0 || (n > 0 && !params)) return df_error(DF_ERR_INVALID, "ema: %d parameters", n);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (!params[i] || params[i]->dtype != DF_DTYPE_F32)
            return df_error(DF_ERR_INVALID, "ema: parameter %d is not an F32 tensor", i);
        total += padded(params[i]->numel);
    }
    df_ema *e = calloc(1, sizeof *e);
    DF_ASSERT(e, "out of memory");
    e->cfg = *cfg;
    e->n = n;
    size_t cnt = (size_t)n + 1;
    e->params = calloc(cnt, sizeof *e->params);
    e->shadow = calloc(cnt, sizeof *e->shadow);
    e->stored = calloc(cnt, sizeof *e->stored);
    e->names = calloc(cnt, sizeof *e->names);
    DF_ASSERT(e->params && e->shadow && e->stored && e->names, "out of memory");
    int64_t flat_n = total > 0 ? total : 1;
    e->flat = df_optim_zeros_owned(DF_DTYPE_F32, 1, &flat_n);
    e->step = df_optim_zeros_owned(DF_DTYPE_I64, DF_DIMS(1));
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        df_tensor *p = params[i];
        e->params[i] = p;
        e->shadow[i] = df_optim_view_owned(e->flat, p->ndim, p->shape, off);
        df_tensor_copy_(e->shadow[i], p);
        char buf[64];
        const char *name = names ? names[i] : NULL;
        if (!name) {
            snprintf(buf, sizeof buf, "shadow_params.%d", i);
            name = buf;
        }
        e->names[i] = df_optim_strdup(name);
        off += padded(p->numel);
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++)
            if ((j < i && strcmp(e->names[i], e->names[j]) == 0) ||
                strcmp(e->names[i], "optimization_step") == 0) {
                df_status st =
                    df_error(DF_ERR_INVALID,
                             "ema: parameter name '%s' appears twice or is reserved", e->names[i]);
                df_ema_free(e);
                return st;
            }
    *out = e;
    return DF_OK;
}

void df_ema_free(df_ema *e) {
    if (!e) return;
    for (int i = 0; i < e->n; i++) {
        df_tensor_free(e->shadow[i]);
        df_tensor_free(e->stored[i]);
        free(e->names[i]);
    }
    df_tensor_free(e->flat);
    df_tensor_free(e->stored_flat);
    df_tensor_free(e->step);
    free(e->params);
    free(e->shadow);
    free(e->stored);
    free(e->names);
    free(e);
}

double df_ema_get_decay(const df_ema *e, int64_t optimization_step) {
    int64_t step = optimization_step - e->cfg.update_after_step - 1;
    if (step <= 0) return 0.0;
    double d;
    if (e->cfg.use_ema_warmup)
        d = 1.0 - pow(1.0 + (double)step / e->cfg.inv_gamma, -e->cfg.power);
    else
        d = (double)(1 + step) / (double)(10 + step);
    d = fmin(d, e->cfg.decay);
    d = fmax(d, e->cfg.min_decay);
    return d;
}

double df_ema_step(df_ema *e) {
    int64_t *step = e->step->data;
    *step += 1;
    double d = df_ema_get_decay(e, *step);
    const float omd = (float)(1.0 - d);
    for (int i = 0; i < e->n; i++) {
        float *s = df_f32(e->shadow[i]);
        const float *p = df_f32(e->params[i]);
        const int64_t len = e->params[i]->numel;
        if (!e->params[i]->requires_grad) {
            memcpy(s, p, (size_t)len * sizeof(float));
            continue;
        }
#pragma omp parallel for simd schedule(static) if (len >= 65536)
        for (int64_t k = 0; k < len; k++) {
            float t = s[k] - p[k];
            t = omd * t;
            s[k] = s[k] - t;
        }
    }
    return d;
}

int64_t df_ema_optimization_step(const df_ema *e) {
    return ((const int64_t *)e->step->data)[0];
}

void df_ema_copy_to(const df_ema *e) {
    for (int i = 0; i < e->n; i++) df_tensor_copy_(e->params[i], e->shadow[i]);
}

void df_ema_store(df_ema *e) {
    if (!e->stored_flat) {
        e->stored_flat = df_optim_zeros_owned(DF_DTYPE_F32, 1, e->flat->shape);
        int64_t off = 0;
        for (int i = 0; i < e->n; i++) {
            const df_tensor *p = e->params[i];
            e->stored[i] = df_optim_view_owned(e->stored_flat, p->ndim, p->shape, off);
            off += padded(p->numel);
        }
    }
    for (int i = 0; i < e->n; i++) df_tensor_copy_(e->stored[i], e->params[i]);
    e->has_stored = true;
}

void df_ema_restore(df_ema *e) {
    DF_ASSERT(e->has_stored, "ema restore: no stored parameters (call df_ema_store first)");
    for (int i = 0; i < e->n; i++) df_tensor_copy_(e->params[i], e->stored[i]);
    e->has_stored = false; /* diffusers drops temp_stored_params after restoring */
}

int df_ema_state_count(const df_ema *e) {
    return e->n + 1;
}

const char *df_ema_state_name(const df_ema *e, int i) {
    DF_ASSERT(i >= 0 && i <= e->n, "ema: state %d of %d", i, e->n + 1);
    return i < e->n ? e->names[i] : "optimization_step";
}

df_tensor *df_ema_state_tensor(const df_ema *e, int i) {
    DF_ASSERT(i >= 0 && i <= e->n, "ema: state %d of %d", i, e->n + 1);
    return i < e->n ? e->shadow[i] : e->step;
}

df_tensor *df_ema_state_find(const df_ema *e, const char *name) {
    for (int i = 0; i <= e->n; i++)
        if (strcmp(df_ema_state_name(e, i), name) == 0) return df_ema_state_tensor(e, i);
    return NULL;
}
