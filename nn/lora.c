/* lora.c — LoRA / LoCon adapters on the module hooks (nn/lora.h): new trainable adapters, a
 * df_lora_set applied on the fly or fused into the weights, and the export of trained adapters.
 * Follows diffusers v0.21.4 models/lora.py: LoRALinearLayer / LoRAConv2dLayer (down with the
 * module's kernel, stride and padding, up 1x1, init normal std 1/rank and zero), the term
 * `scale * up(down(x)) * alpha / rank` added to the module's output, and _fuse_lora's
 * W + scale * (up * alpha / rank) @ down in F32. Dropout on the adapter input is PEFT's
 * lora_dropout (upstream v0.21.4 has none).
 *
 * An adapter references its down / up tensors (trainable ones live in df_lora.params, applied
 * ones in the caller's df_lora_set) and unlinks itself from its module's chain when freed.
 */
#include "nn/lora.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct df_lora_adapter {
    df_adapter base;
    df_lora *owner;
    df_module_ref mod;    /* the module (name borrowed from its registry) */
    df_tensor *down, *up; /* one reference each */
    float scale;          /* multiplier * alpha / rank */
    float dropout;
    float alpha; /* the alpha exported (trainable adapters) */
    bool trainable;
    char *target; /* "<prefix>.<module>" (owned) */
};

const char *const df_lora_unet_default_globs[4] = {"unet.*.to_q", "unet.*.to_k", "unet.*.to_v",
                                                   "unet.*.to_out.0"};
const char *const df_lora_text_default_globs[4] = {"text_encoder.*.q_proj", "text_encoder.*.k_proj",
                                                   "text_encoder.*.v_proj",
                                                   "text_encoder.*.out_proj"};

df_lora_config df_lora_config_default(void) {
    return (df_lora_config){.rank = 4};
}

void df_lora_init(df_lora *l) {
    memset(l, 0, sizeof *l);
    df_params_init(&l->params, NULL);
}

/* ------------------------------------------------------------------ the adapter ------------- */

static df_adapter **chain_head(const df_module_ref *m) {
    return m->kind == DF_MODULE_LINEAR ? &((df_linear_mod *)m->module)->adapter
                                       : &((df_conv_mod *)m->module)->adapter;
}

static const df_tensor *module_weight(const df_module_ref *m) {
    return m->kind == DF_MODULE_LINEAR ? ((const df_linear_mod *)m->module)->weight
                                       : ((const df_conv_mod *)m->module)->weight;
}

/* y + scale * up(down(dropout(x))), in y's layout. */
static df_tensor *lora_forward(df_adapter *base, const void *module, df_module_kind kind,
                               df_tensor *x, df_tensor *y) {
    df_lora_adapter *a = (df_lora_adapter *)base;
    df_tensor *in = x;
    if (a->dropout > 0 && a->owner->dropout_rng)
        in = df_dropout(x, a->dropout, a->owner->dropout_rng);
    df_tensor *t;
    if (kind == DF_MODULE_LINEAR) {
        t = df_linear(df_linear(in, a->down, NULL), a->up, NULL);
    } else {
        df_conv2d_params p = ((const df_conv_mod *)module)->p;
        p.blocked_out = false;
        t = df_conv2d(df_conv2d(in, a->down, NULL, p), a->up, NULL, df_conv2d_default());
        if (y->block && !t->block)
            t = df_to_blocked(t);
        else if (!y->block && t->block)
            t = df_to_plain(t);
    }
    return df_add(y, df_mul_scalar(t, a->scale));
}

/* Unlinks a from its module's chain (a no-op when it is not there). */
static void adapter_unlink(df_lora_adapter *a) {
    df_adapter **p = chain_head(&a->mod);
    while (*p && *p != &a->base) p = &(*p)->next;
    if (*p) *p = a->base.next;
}

static void adapter_free(df_lora_adapter *a) {
    if (!a) return;
    adapter_unlink(a);
    df_tensor_free(a->down);
    df_tensor_free(a->up);
    free(a->target);
    free(a);
}

static df_status push_adapter(df_lora *l, df_lora_adapter *a) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 32;
        df_lora_adapter **grown = realloc(l->ads, (size_t)cap * sizeof *grown);
        if (!grown) return df_error(DF_ERR_NOMEM, "lora: out of memory for %d adapters", cap);
        l->ads = grown;
        l->cap = cap;
    }
    l->ads[l->n++] = a;
    return DF_OK;
}

/* A new adapter on module m (tensors retained); attached. */
static df_status attach_new(df_lora *l, const df_module_ref *m, const char *target, df_tensor *down,
                            df_tensor *up, float scale, float dropout, float alpha,
                            bool trainable) {
    df_lora_adapter *a = calloc(1, sizeof *a);
    char *name = strdup(target);
    if (!a || !name) {
        free(a);
        free(name);
        return df_error(DF_ERR_NOMEM, "lora: out of memory");
    }
    *a = (df_lora_adapter){.base = {.forward = lora_forward},
                           .owner = l,
                           .mod = *m,
                           .down = df_tensor_retain(down),
                           .up = df_tensor_retain(up),
                           .scale = scale,
                           .dropout = dropout,
                           .alpha = alpha,
                           .trainable = trainable,
                           .target = name};
    a->base.ctx = a;
    df_status st = push_adapter(l, a);
    if (st != DF_OK) {
        a->mod.module = NULL;
        df_tensor_free(a->down);
        df_tensor_free(a->up);
        free(name);
        free(a);
        return st;
    }
    df_module_attach(m, &a->base);
    return DF_OK;
}

void df_lora_enable(df_lora *l, bool on) {
    for (int i = 0; i < l->n; i++) {
        adapter_unlink(l->ads[i]);
        if (on) df_module_attach(&l->ads[i]->mod, &l->ads[i]->base);
    }
}

void df_lora_free(df_lora *l) {
    if (!l) return;
    for (int i = l->n - 1; i >= 0; i--) adapter_free(l->ads[i]);
    free(l->ads);
    df_params_free(&l->params);
    memset(l, 0, sizeof *l);
}

/* ------------------------------------------------------------------ new adapters ------------ */

static bool matches_any(const char *name, const char *const *globs, int n) {
    for (int i = 0; i < n; i++)
        if (fnmatch(globs[i], name, 0) == 0) return true;
    return false;
}

df_status df_lora_create(df_lora *l, const df_lora_model *models, int n_models,
                         const df_lora_config *c, df_philox *init) {
    if (c->rank <= 0) return df_error(DF_ERR_INVALID, "lora: rank %d is not positive", c->rank);
    if (c->conv_rank < 0)
        return df_error(DF_ERR_INVALID, "lora: conv rank %d is negative", c->conv_rank);
    if (!(c->alpha >= 0) || !isfinite(c->alpha) || !(c->conv_alpha >= 0) ||
        !isfinite(c->conv_alpha))
        return df_error(DF_ERR_INVALID, "lora: alpha %g / conv alpha %g must be finite and >= 0",
                        c->alpha, c->conv_alpha);
    if (!(c->dropout >= 0 && c->dropout < 1))
        return df_error(DF_ERR_INVALID, "lora: dropout %g is not in [0, 1)", c->dropout);
    if (l->params.flat.data)
        return df_error(DF_ERR_INVALID, "lora: the adapters' registry is already flattened");
    /* every glob must select something */
    for (int g = 0; g < c->n_globs; g++) {
        bool hit = false;
        for (int k = 0; k < n_models && !hit; k++) {
            const df_params *r = models[k].params;
            for (int i = 0; i < r->n_modules && !hit; i++) {
                char name[DF_NAME_MAX];
                df_name_join(name, sizeof name, models[k].prefix, r->modules[i].name);
                hit = fnmatch(c->globs[g], name, 0) == 0 &&
                      (r->modules[i].kind == DF_MODULE_LINEAR || c->conv_rank > 0);
            }
        }
        if (!hit)
            return df_error(DF_ERR_INVALID,
                            "lora: the target glob '%s' matches no %s module (targets are "
                            "'<unet|text_encoder>.<diffusers module name>')",
                            c->globs[g], c->conv_rank > 0 ? "linear or conv" : "linear");
    }
    df_philox *saved = l->params.init;
    l->params.init = init;
    df_status st = DF_OK;
    for (int k = 0; st == DF_OK && k < n_models; k++) {
        const df_params *r = models[k].params;
        for (int i = 0; st == DF_OK && i < r->n_modules; i++) {
            const df_module_ref *m = &r->modules[i];
            char name[DF_NAME_MAX];
            df_name_join(name, sizeof name, models[k].prefix, m->name);
            if (!matches_any(name, c->globs, c->n_globs)) continue;
            bool conv = m->kind == DF_MODULE_CONV;
            if (conv && c->conv_rank == 0) continue;
            int rank = conv ? c->conv_rank : c->rank;
            float alpha = conv ? c->conv_alpha : c->alpha;
            if (alpha == 0) alpha = (float)rank;
            const df_tensor *w = module_weight(m);
            char full[DF_NAME_MAX + 32];
            snprintf(full, sizeof full, "%s.lora.down.weight", name);
            if (df_params_find(&l->params, full)) continue; /* created before: not twice */
            df_tensor *down, *up;
            if (conv) {
                down = df_params_add(&l->params, name, "lora.down.weight",
                                     DF_DIMS(rank, w->shape[1], w->shape[2], w->shape[3]));
                up = df_params_add(&l->params, name, "lora.up.weight",
                                   DF_DIMS(w->shape[0], rank, 1, 1));
            } else {
                down =
                    df_params_add(&l->params, name, "lora.down.weight", DF_DIMS(rank, w->shape[1]));
                up = df_params_add(&l->params, name, "lora.up.weight", DF_DIMS(w->shape[0], rank));
            }
            df_params_init_normal(&l->params, down, 1.0f / (float)rank);
            l->params.items[l->params.n - 2].trainable = true;
            l->params.items[l->params.n - 1].trainable = true;
            st = attach_new(l, m, name, down, up, alpha / (float)rank, c->dropout, alpha, true);
        }
    }
    l->params.init = saved;
    return st;
}

/* ------------------------------------------------------------------ sets -------------------- */

/* The module a target names ("<prefix>.<module>"), with its registry; NULL when none. */
static const df_module_ref *find_target(const char *target, const df_lora_model *models,
                                        int n_models, df_params **reg) {
    for (int k = 0; k < n_models; k++) {
        size_t len = strlen(models[k].prefix);
        if (strncmp(target, models[k].prefix, len) != 0 || target[len] != '.') continue;
        const df_module_ref *m = df_module_find(models[k].params, target + len + 1);
        if (m) {
            if (reg) *reg = models[k].params;
            return m;
        }
    }
    return NULL;
}

/* Whether entry e fits module m (else an error naming the target and the shapes). A linear
 * pair also fits a 1x1 convolution and a 1x1 conv pair a linear (SD 1.x's proj_in is a 1x1
 * conv, SD 2.x's a linear), as df_lora_entry_add_to takes them. */
static df_status check_entry(const df_lora_entry *e, const df_module_ref *m) {
    const df_tensor *w = module_weight(m), *d = e->down, *u = e->up;
    if (d->dtype != DF_DTYPE_F32 || u->dtype != DF_DTYPE_F32)
        return df_error(DF_ERR_INVALID, "lora: %s: down / up are not F32", e->target);
    int64_t rank = d->ndim >= 1 ? d->shape[0] : 0;
    bool ok = rank > 0 && (d->ndim == 2 || d->ndim == 4) && u->ndim == d->ndim &&
              u->shape[1] == rank && u->shape[0] == w->shape[0] &&
              (u->ndim == 2 || (u->shape[2] == 1 && u->shape[3] == 1));
    if (ok && d->ndim == w->ndim)
        for (int k = 1; k < w->ndim; k++) ok = ok && d->shape[k] == w->shape[k];
    else if (ok) /* linear <-> 1x1 conv */
        ok = d->shape[1] == w->shape[1] && (w->ndim == 4 ? w->shape[2] == 1 && w->shape[3] == 1
                                                         : d->shape[2] == 1 && d->shape[3] == 1);
    if (!ok) {
        char ws[96], ds[96], us[96];
        return df_error(DF_ERR_INVALID,
                        "lora: %s: down %s and up %s do not fit the %s weight %s (a LoRA for "
                        "another model?)",
                        e->target, df_shape_str(d, ds, sizeof ds), df_shape_str(u, us, sizeof us),
                        m->kind == DF_MODULE_LINEAR ? "linear" : "conv",
                        df_shape_str(w, ws, sizeof ws));
    }
    if (!isfinite(e->alpha))
        return df_error(DF_ERR_INVALID, "lora: %s: alpha is not finite", e->target);
    return DF_OK;
}

/* t viewed with the module's rank of dims: (a, b) <-> (a, b, 1, 1); a new owned reference. */
static df_tensor *as_module_dims(df_tensor *t, const df_module_ref *m) {
    int want = m->kind == DF_MODULE_LINEAR ? 2 : 4;
    if (t->ndim == want) return df_tensor_retain(t);
    df_scope_pause pause = df_scope_suspend();
    df_tensor *v = want == 2 ? df_tensor_view(t, DF_DIMS(t->shape[0], t->shape[1]), 0)
                             : df_tensor_view(t, DF_DIMS(t->shape[0], t->shape[1], 1, 1), 0);
    df_scope_resume(pause);
    return v;
}

/* Checks every entry of s against models: unmatched targets listed in one error. */
static df_status check_set(const df_lora_set *s, const df_lora_model *models, int n_models) {
    int missing = 0;
    char list[512] = "";
    size_t k = 0;
    for (int i = 0; i < s->n; i++) {
        const df_module_ref *m = find_target(s->entries[i].target, models, n_models, NULL);
        if (m) {
            DF_TRY(check_entry(&s->entries[i], m));
            continue;
        }
        if (missing < 5 && k < sizeof list)
            k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", missing ? ", " : "",
                                  s->entries[i].target);
        missing++;
    }
    if (missing)
        return df_error(DF_ERR_NOTFOUND, "lora: %d of %d targets match no module: %s%s", missing,
                        s->n, list, missing > 5 ? ", ..." : "");
    return DF_OK;
}

df_status df_lora_apply(df_lora *l, const df_lora_set *s, float multiplier,
                        const df_lora_model *models, int n_models) {
    if (!isfinite(multiplier))
        return df_error(DF_ERR_INVALID, "lora: the multiplier %g is not finite", multiplier);
    DF_TRY(check_set(s, models, n_models));
    for (int i = 0; i < s->n; i++) {
        const df_lora_entry *e = &s->entries[i];
        const df_module_ref *m = find_target(e->target, models, n_models, NULL);
        float scale = multiplier * e->alpha / (float)e->down->shape[0];
        df_tensor *down = as_module_dims(e->down, m), *up = as_module_dims(e->up, m);
        df_status st = attach_new(l, m, e->target, down, up, scale, 0, e->alpha, false);
        df_tensor_free(down);
        df_tensor_free(up);
        DF_TRY(st);
    }
    return DF_OK;
}

/* ------------------------------------------------------------------ fusing ------------------ */

struct df_lora_fused_item {
    df_module_ref mod;
    df_params *reg;
    int param; /* the weight's index in reg */
    df_tensor *original, *fused;
};

/* W + multiplier * alpha / rank * up @ down as a new owned tensor of W's dtype (the arithmetic
 * in F32: df_lora_entry_add_to, as diffusers' _fuse_lora). */
static df_status fused_weight(const df_tensor *w, const df_lora_entry *e, float multiplier,
                              df_tensor **out) {
    df_scope_pause pause = df_scope_suspend(); /* every tensor here is owned */
    df_tensor *f = df_tensor_to(w, DF_DTYPE_F32);
    df_status st = df_lora_entry_add_to(e, multiplier, f, "lora fuse");
    if (st == DF_OK && w->dtype != DF_DTYPE_F32) {
        df_tensor *back = df_tensor_to(f, w->dtype);
        df_tensor_free(f);
        f = back;
    }
    df_scope_resume(pause);
    if (st != DF_OK) {
        df_tensor_free(f);
        return st;
    }
    *out = f;
    return DF_OK;
}

static void set_weight(const df_module_ref *m, df_tensor *w) {
    if (m->kind == DF_MODULE_LINEAR)
        ((df_linear_mod *)m->module)->weight = w;
    else
        ((df_conv_mod *)m->module)->weight = w;
}

static int weight_index(const df_params *r, const df_module_ref *m) {
    const df_tensor *w = module_weight(m);
    for (int i = 0; i < r->n; i++)
        if (r->items[i].tensor == w) return i;
    return -1;
}

df_status df_lora_fuse(const df_lora_set *s, float multiplier, const df_lora_model *models,
                       int n_models, df_lora_fused *undo) {
    if (!isfinite(multiplier))
        return df_error(DF_ERR_INVALID, "lora: the multiplier %g is not finite", multiplier);
    DF_TRY(check_set(s, models, n_models));
    for (int i = 0; i < s->n; i++) {
        const df_lora_entry *e = &s->entries[i];
        df_params *reg;
        const df_module_ref *m = find_target(e->target, models, n_models, &reg);
        int idx = weight_index(reg, m);
        if (idx < 0)
            return df_error(DF_ERR_INVALID, "lora: %s: the weight is not in its registry",
                            e->target);
        if (reg->items[idx].trainable && reg->flat.data)
            return df_error(DF_ERR_INVALID,
                            "lora: %s: cannot fuse into a weight of a training's flat buffer",
                            e->target);
        if (undo->n == undo->cap) {
            int cap = undo->cap ? 2 * undo->cap : 32;
            struct df_lora_fused_item *grown = realloc(undo->items, (size_t)cap * sizeof *grown);
            if (!grown) return df_error(DF_ERR_NOMEM, "lora: out of memory fusing");
            undo->items = grown;
            undo->cap = cap;
        }
        df_tensor *w = reg->items[idx].tensor, *f;
        DF_TRY(fused_weight(w, e, multiplier, &f));
        undo->items[undo->n++] = (struct df_lora_fused_item){
            .mod = *m, .reg = reg, .param = idx, .original = w, .fused = f};
        reg->items[idx].tensor = f; /* the registry's reference to w moves to undo */
        set_weight(m, f);
    }
    return DF_OK;
}

void df_lora_unfuse(df_lora_fused *undo) {
    if (!undo) return;
    for (int i = undo->n - 1; i >= 0; i--) {
        struct df_lora_fused_item *it = &undo->items[i];
        it->reg->items[it->param].tensor = it->original;
        set_weight(&it->mod, it->original);
        df_tensor_free(it->fused);
    }
    free(undo->items);
    memset(undo, 0, sizeof *undo);
}

/* ------------------------------------------------------------------ export ------------------ */

static df_tensor *owned_copy(const df_tensor *t) {
    df_tensor *c = df_tensor_new_owned(DF_DTYPE_F32, t->ndim, t->shape);
    df_tensor_copy_(c, t);
    return c;
}

df_status df_lora_export(const df_lora *l, df_lora_set *out) {
    memset(out, 0, sizeof *out);
    out->format = DF_LORA_DIFFUSERS;
    int n = 0;
    for (int i = 0; i < l->n; i++) n += l->ads[i]->trainable;
    if (n == 0) return DF_OK;
    out->entries = calloc((size_t)n, sizeof *out->entries);
    if (!out->entries) return df_error(DF_ERR_NOMEM, "lora: out of memory exporting");
    out->cap = n;
    for (int i = 0; i < l->n; i++) {
        const df_lora_adapter *a = l->ads[i];
        if (!a->trainable) continue;
        char *target = strdup(a->target);
        if (!target) return df_error(DF_ERR_NOMEM, "lora: out of memory exporting");
        out->entries[out->n++] = (df_lora_entry){.target = target,
                                                 .down = owned_copy(a->down),
                                                 .up = owned_copy(a->up),
                                                 .alpha = a->alpha};
    }
    return DF_OK;
}
