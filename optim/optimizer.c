/* optimizer.c — parameter groups, hyperparameter checks, the moment buffers and their names,
 * and the update loop shared by every kind (see optim_impl.h for the layout).
 *
 * Invariants: every parameter appears once; parameter i's moments start at params[i].moment_off
 * in each moment buffer (OPTIM_ALIGN-aligned, in group order); every group's step count is its
 * "group<g>.step" state tensor, so restoring the state tensors restores the optimizer exactly.
 * The update loop runs over fixed chunks; each chunk is elementwise, so the thread count never
 * changes a result.
 */
#include "optim/optim_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ helpers ------------------ */

df_tensor *df_optim_zeros_owned(df_dtype dt, int ndim, const int64_t *shape) {
    df_scope sc = df_scope_begin();
    df_tensor *t = df_tensor_retain(df_zeros(dt, ndim, shape));
    df_scope_end(sc);
    return t;
}

df_tensor *df_optim_view_owned(const df_tensor *t, int ndim, const int64_t *shape, int64_t off) {
    df_scope sc = df_scope_begin();
    df_tensor *v = df_tensor_retain(df_tensor_view(t, ndim, shape, off));
    df_scope_end(sc);
    return v;
}

char *df_optim_strdup(const char *s) {
    char *d = strdup(s);
    DF_ASSERT(d, "out of memory copying a name");
    return d;
}

static const char *const kind_names[DF_OPTIM_COUNT] = {"sgd", "adam", "adamw", "lion"};

const char *df_optim_kind_name(df_optim_kind kind) {
    DF_ASSERT(kind >= 0 && kind < DF_OPTIM_COUNT, "optimizer kind %d", (int)kind);
    return kind_names[kind];
}

df_status df_optim_kind_parse(const char *name, df_optim_kind *out) {
    for (int k = 0; k < DF_OPTIM_COUNT; k++)
        if (name && strcmp(name, kind_names[k]) == 0) {
            *out = (df_optim_kind)k;
            return DF_OK;
        }
    return df_error(DF_ERR_INVALID,
                    "optim: unknown optimizer '%s' (allowed: sgd, adam, adamw, lion)",
                    name ? name : "(null)");
}

df_optim_hparams df_optim_hparams_default(df_optim_kind kind) {
    df_optim_hparams h = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    if (kind == DF_OPTIM_ADAMW) h.weight_decay = 1e-2;
    if (kind == DF_OPTIM_LION) {
        h.lr = 1e-4;
        h.beta2 = 0.99;
    }
    return h;
}

df_status df_optim_hparams_check(df_optim_kind kind, const df_optim_hparams *h) {
    const char *k = df_optim_kind_name(kind);
    if (!(h->lr >= 0) || isinf(h->lr))
        return df_error(DF_ERR_INVALID, "%s: invalid lr %g (allowed: finite, >= 0)", k, h->lr);
    if (!(h->weight_decay >= 0) || isinf(h->weight_decay))
        return df_error(DF_ERR_INVALID, "%s: invalid weight_decay %g (allowed: finite, >= 0)", k,
                        h->weight_decay);
    if (kind == DF_OPTIM_SGD) {
        if (!(h->momentum >= 0) || isinf(h->momentum))
            return df_error(DF_ERR_INVALID, "sgd: invalid momentum %g (allowed: finite, >= 0)",
                            h->momentum);
        if (!(h->dampening >= 0 && h->dampening <= 1))
            return df_error(DF_ERR_INVALID, "sgd: invalid dampening %g (allowed: [0, 1])",
                            h->dampening);
        if (h->nesterov && (h->momentum <= 0 || h->dampening != 0))
            return df_error(DF_ERR_INVALID,
                            "sgd: nesterov needs momentum > 0 and dampening 0 (got momentum %g, "
                            "dampening %g)",
                            h->momentum, h->dampening);
        return DF_OK;
    }
    if (!(h->beta1 >= 0 && h->beta1 < 1))
        return df_error(DF_ERR_INVALID, "%s: invalid beta1 %g (allowed: [0, 1))", k, h->beta1);
    if (!(h->beta2 >= 0 && h->beta2 < 1))
        return df_error(DF_ERR_INVALID, "%s: invalid beta2 %g (allowed: [0, 1))", k, h->beta2);
    if (kind != DF_OPTIM_LION && (!(h->eps >= 0) || isinf(h->eps)))
        return df_error(DF_ERR_INVALID, "%s: invalid eps %g (allowed: finite, >= 0)", k, h->eps);
    return DF_OK;
}

/* ------------------------------------------------------------------ lifetime ----------------- */

static int64_t padded(int64_t n) {
    return (n + OPTIM_ALIGN - 1) / OPTIM_ALIGN * OPTIM_ALIGN;
}

/* Which moment slots group h of `kind` uses, and their state-name suffixes. */
static int slots_used(df_optim_kind kind, const df_optim_hparams *h, const char **suffix) {
    switch (kind) {
    case DF_OPTIM_SGD: suffix[0] = "momentum_buffer"; return h->momentum != 0 ? 1 : 0;
    case DF_OPTIM_ADAM:
    case DF_OPTIM_ADAMW:
        suffix[0] = "exp_avg";
        suffix[1] = "exp_avg_sq";
        suffix[2] = "max_exp_avg_sq";
        return h->amsgrad ? 3 : 2;
    case DF_OPTIM_LION: suffix[0] = "exp_avg"; return 1;
    default: DF_ASSERT(0, "optimizer kind %d", (int)kind);
    }
    return 0;
}

static void add_state(df_optim *o, const char *name, df_tensor *t) {
    o->state_names[o->n_state] = df_optim_strdup(name);
    o->state[o->n_state++] = t;
}

df_status df_optim_new(df_optim_kind kind, const df_param_group *groups, int n_groups,
                       df_optim **out) {
    *out = NULL;
    if (kind < 0 || kind >= DF_OPTIM_COUNT)
        return df_error(DF_ERR_INVALID, "optim: unknown kind %d (allowed: sgd, adam, adamw, lion)",
                        (int)kind);
    if (n_groups < 0 || (n_groups > 0 && !groups))
        return df_error(DF_ERR_INVALID, "optim: %d parameter groups", n_groups);
    int n_params = 0;
    for (int g = 0; g < n_groups; g++) {
        df_status st = df_optim_hparams_check(kind, &groups[g].h);
        if (st != DF_OK) {
            char why[512]; /* df_error overwrites the message it would read */
            snprintf(why, sizeof why, "%s", df_last_error());
            return df_error(st, "optim: parameter group %d: %s", g, why);
        }
        if (groups[g].n < 0 || (groups[g].n > 0 && !groups[g].params))
            return df_error(DF_ERR_INVALID, "optim: group %d has %d parameters", g, groups[g].n);
        for (int i = 0; i < groups[g].n; i++) {
            const df_tensor *t = groups[g].params[i];
            if (!t || t->dtype != DF_DTYPE_F32)
                return df_error(DF_ERR_INVALID, "optim: group %d parameter %d is not an F32 tensor",
                                g, i);
        }
        n_params += groups[g].n;
    }
    df_optim *o = calloc(1, sizeof *o);
    DF_ASSERT(o, "out of memory");
    o->kind = kind;
    o->n_groups = n_groups;
    o->groups = calloc((size_t)n_groups + 1, sizeof *o->groups);
    o->params = calloc((size_t)n_params + 1, sizeof *o->params);
    DF_ASSERT(o->groups && o->params, "out of memory");
    int max_slots = 0;
    int64_t n_chunks = 0;
    for (int g = 0; g < n_groups; g++) {
        optim_group *og = &o->groups[g];
        og->h = groups[g].h;
        og->initial_lr = groups[g].h.lr;
        og->step = df_optim_zeros_owned(DF_DTYPE_I64, DF_DIMS(1));
        const char *suffix[OPTIM_SLOTS];
        int ns = slots_used(kind, &og->h, suffix);
        if (ns > max_slots) max_slots = ns;
        for (int i = 0; i < groups[g].n; i++) {
            optim_param *p = &o->params[o->n_params++];
            p->t = groups[g].params[i];
            p->group = g;
            p->moment_off = o->total;
            char buf[64];
            const char *name = groups[g].names ? groups[g].names[i] : NULL;
            if (!name) {
                snprintf(buf, sizeof buf, "group%d.%d", g, i);
                name = buf;
            }
            p->name = df_optim_strdup(name);
            o->total += padded(p->t->numel);
            n_chunks += (p->t->numel + OPTIM_CHUNK - 1) / OPTIM_CHUNK;
        }
    }
    /* Repeated tensors or names would make two updates or two state entries alias. */
    df_status st = DF_OK;
    for (int i = 0; i < o->n_params && st == DF_OK; i++)
        for (int j = 0; j < i; j++) {
            if (o->params[i].t == o->params[j].t || o->params[i].t->data == o->params[j].t->data) {
                st = df_error(DF_ERR_INVALID, "optim: parameter '%s' appears twice ('%s')",
                              o->params[i].name, o->params[j].name);
                break;
            }
            if (strcmp(o->params[i].name, o->params[j].name) == 0) {
                st = df_error(DF_ERR_INVALID, "optim: parameter name '%s' appears twice",
                              o->params[i].name);
                break;
            }
        }
    if (st != DF_OK) {
        df_optim_free(o);
        return st;
    }
    int64_t total = o->total > 0 ? o->total : 1;
    for (int k = 0; k < max_slots; k++)
        o->moment[k] = df_optim_zeros_owned(DF_DTYPE_F32, 1, &total);
    o->chunks = calloc((size_t)n_chunks + 1, sizeof *o->chunks);
    size_t max_state = (size_t)o->n_params * OPTIM_SLOTS + (size_t)n_groups + 1;
    o->state_names = calloc(max_state, sizeof *o->state_names);
    o->state = calloc(max_state, sizeof *o->state);
    DF_ASSERT(o->chunks && o->state_names && o->state, "out of memory");
    for (int i = 0; i < o->n_params; i++) {
        optim_param *p = &o->params[i];
        for (int64_t s = 0; s < p->t->numel; s += OPTIM_CHUNK) {
            int64_t len = p->t->numel - s < OPTIM_CHUNK ? p->t->numel - s : OPTIM_CHUNK;
            o->chunks[o->n_chunks++] = (optim_chunk){i, s, len};
        }
    }
    for (int g = 0; g < n_groups; g++) {
        const char *suffix[OPTIM_SLOTS];
        int ns = slots_used(kind, &o->groups[g].h, suffix);
        for (int i = 0; i < o->n_params; i++) {
            optim_param *p = &o->params[i];
            if (p->group != g) continue;
            for (int k = 0; k < ns; k++) {
                char name[512];
                snprintf(name, sizeof name, "%s.%s", p->name, suffix[k]);
                add_state(
                    o, name,
                    df_optim_view_owned(o->moment[k], p->t->ndim, p->t->shape, p->moment_off));
            }
        }
        char name[64];
        snprintf(name, sizeof name, "group%d.step", g);
        add_state(o, name, df_tensor_retain(o->groups[g].step));
    }
    for (int i = 0; i < o->n_state; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(o->state_names[i], o->state_names[j]) == 0) {
                st = df_error(DF_ERR_INVALID, "optim: state name '%s' appears twice",
                              o->state_names[i]);
                df_optim_free(o);
                return st;
            }
    *out = o;
    return DF_OK;
}

void df_optim_free(df_optim *o) {
    if (!o) return;
    for (int i = 0; i < o->n_state; i++) {
        free(o->state_names[i]);
        df_tensor_free(o->state[i]);
    }
    for (int g = 0; g < o->n_groups; g++) df_tensor_free(o->groups[g].step);
    for (int i = 0; i < o->n_params; i++) free(o->params[i].name);
    for (int k = 0; k < OPTIM_SLOTS; k++) df_tensor_free(o->moment[k]);
    free(o->state_names);
    free(o->state);
    free(o->chunks);
    free(o->params);
    free(o->groups);
    free(o);
}

/* ------------------------------------------------------------------ the update --------------- */

df_status df_optim_step(df_optim *o) {
    optim_scalars sc_stack[8];
    optim_scalars *sc = o->n_groups <= 8 ? sc_stack : calloc((size_t)o->n_groups, sizeof *sc);
    DF_ASSERT(sc, "out of memory");
    for (int g = 0; g < o->n_groups; g++) {
        optim_group *og = &o->groups[g];
        int64_t step = ((int64_t *)og->step->data)[0] + 1;
        memset(&sc[g], 0, sizeof sc[g]);
        switch (o->kind) {
        case DF_OPTIM_SGD: df_sgd_scalars(&og->h, step, &sc[g]); break;
        case DF_OPTIM_ADAM: df_adam_scalars(&og->h, false, step, &sc[g]); break;
        case DF_OPTIM_ADAMW: df_adam_scalars(&og->h, true, step, &sc[g]); break;
        case DF_OPTIM_LION: df_lion_scalars(&og->h, &sc[g]); break;
        default: DF_ASSERT(0, "optimizer kind %d", (int)o->kind);
        }
    }
    for (int i = 0; i < o->n_params; i++) {
        const df_tensor *t = o->params[i].t;
        DF_ASSERT(!t->grad || (t->grad->dtype == DF_DTYPE_F32 && t->grad->numel == t->numel),
                  "optim: parameter '%s' has a gradient that is not F32 of its size",
                  o->params[i].name);
    }
    const df_optim_kind kind = o->kind;
    float *m0 = o->moment[0] ? df_f32(o->moment[0]) : NULL;
    float *m1 = o->moment[1] ? df_f32(o->moment[1]) : NULL;
    float *m2 = o->moment[2] ? df_f32(o->moment[2]) : NULL;
    const bool parallel = o->total >= OPTIM_PARALLEL_MIN;
#pragma omp parallel for schedule(static) if (parallel)
    for (int c = 0; c < o->n_chunks; c++) {
        const optim_chunk *ch = &o->chunks[c];
        const optim_param *pp = &o->params[ch->param];
        if (!pp->t->grad) continue; /* torch skips p.grad is None */
        const optim_scalars *s = &sc[pp->group];
        float *p = df_f32(pp->t) + ch->start;
        const float *g = df_f32(pp->t->grad) + ch->start;
        int64_t off = pp->moment_off + ch->start;
        switch (kind) {
        case DF_OPTIM_SGD: df_sgd_kernel(s, p, g, m0 ? m0 + off : NULL, ch->len); break;
        case DF_OPTIM_ADAM:
        case DF_OPTIM_ADAMW:
            df_adam_kernel(s, kind == DF_OPTIM_ADAMW, p, g, m0 + off, m1 + off,
                           s->amsgrad ? m2 + off : NULL, ch->len);
            break;
        case DF_OPTIM_LION: df_lion_kernel(s, p, g, m0 + off, ch->len); break;
        default: break;
        }
    }
    for (int g = 0; g < o->n_groups; g++) ((int64_t *)o->groups[g].step->data)[0] += 1;
    if (sc != sc_stack) free(sc);
    return DF_OK;
}

void df_optim_zero_grad(df_optim *o) {
    for (int i = 0; i < o->n_params; i++) df_tensor_zero_grad(o->params[i].t);
}

/* ------------------------------------------------------------------ accessors ---------------- */

df_optim_kind df_optim_kind_of(const df_optim *o) {
    return o->kind;
}

int df_optim_group_count(const df_optim *o) {
    return o->n_groups;
}

const df_optim_hparams *df_optim_group_hparams(const df_optim *o, int g) {
    DF_ASSERT(g >= 0 && g < o->n_groups, "optim: group %d of %d", g, o->n_groups);
    return &o->groups[g].h;
}

double df_optim_initial_lr(const df_optim *o, int g) {
    DF_ASSERT(g >= 0 && g < o->n_groups, "optim: group %d of %d", g, o->n_groups);
    return o->groups[g].initial_lr;
}

df_status df_optim_set_lr(df_optim *o, int g, double lr) {
    DF_ASSERT(g >= 0 && g < o->n_groups, "optim: group %d of %d", g, o->n_groups);
    if (!(lr >= 0) || isinf(lr))
        return df_error(DF_ERR_INVALID, "optim: group %d: invalid lr %g (allowed: finite, >= 0)", g,
                        lr);
    o->groups[g].h.lr = lr;
    return DF_OK;
}

int64_t df_optim_step_count(const df_optim *o, int g) {
    DF_ASSERT(g >= 0 && g < o->n_groups, "optim: group %d of %d", g, o->n_groups);
    return ((const int64_t *)o->groups[g].step->data)[0];
}

int df_optim_param_count(const df_optim *o) {
    return o->n_params;
}

df_tensor *df_optim_param(const df_optim *o, int i) {
    DF_ASSERT(i >= 0 && i < o->n_params, "optim: parameter %d of %d", i, o->n_params);
    return o->params[i].t;
}

int df_optim_state_count(const df_optim *o) {
    return o->n_state;
}

const char *df_optim_state_name(const df_optim *o, int i) {
    DF_ASSERT(i >= 0 && i < o->n_state, "optim: state %d of %d", i, o->n_state);
    return o->state_names[i];
}

df_tensor *df_optim_state_tensor(const df_optim *o, int i) {
    DF_ASSERT(i >= 0 && i < o->n_state, "optim: state %d of %d", i, o->n_state);
    return o->state[i];
}

df_tensor *df_optim_state_find(const df_optim *o, const char *name) {
    for (int i = 0; i < o->n_state; i++)
        if (strcmp(o->state_names[i], name) == 0) return o->state[i];
    return NULL;
}
