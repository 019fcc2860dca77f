/* registry.c — the parameter registry: every parameter of a model under its full dotted
 * diffusers name (`down_blocks.0.resnets.0.conv1.weight`). It is the single source for loading,
 * saving, freezing, LoRA targeting and optimizer groups.
 *
 * Loading follows diffusers' `load_state_dict` + `_load_state_dict_into_model`: names must
 * match exactly (after the legacy aliases below), shapes must match, a missing key is an error
 * naming it, an unexpected key is a warning (counted and printed once per file).
 * Aliases: the VAE / UNet2DModel attention's pre-0.14 names `query`, `key`, `value`,
 * `proj_attn` (-> `to_q`, `to_k`, `to_v`, `to_out.0`), and CLIP's `position_ids` buffer, which
 * old transformers checkpoints carry and we ignore.
 */
#include "nn/nn.h"

#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void df_params_init(df_params *r, df_philox *init_gen) {
    memset(r, 0, sizeof *r);
    r->init = init_gen;
}

/* One tensor of the map: its canonical parameter name, file and entry. */
struct df_map_entry {
    char *name;
    const df_st_file *file;
    const df_st_info *info;
};

static const char *canonical_name(const char *key, char *buf, size_t len);

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const struct df_map_entry *)a)->name, ((const struct df_map_entry *)b)->name);
}

/* The map's tensors sorted by canonical name (keys to ignore left out). */
static void map_index_build(df_params *r, const df_st_set *set) {
    int n = df_st_set_count(set);
    r->map_index = calloc((size_t)(n ? n : 1), sizeof *r->map_index);
    DF_ASSERT(r->map_index, "out of memory indexing a weights file");
    for (int i = 0; i < n; i++) {
        struct df_map_entry *e = &r->map_index[r->n_map_index];
        char buf[DF_NAME_MAX];
        e->info = df_st_set_info_at(set, i, &e->file);
        const char *name = canonical_name(e->info->name, buf, sizeof buf);
        if (!name) continue;
        e->name = strdup(name);
        DF_ASSERT(e->name, "out of memory indexing a weights file");
        r->n_map_index++;
    }
    qsort(r->map_index, (size_t)r->n_map_index, sizeof *r->map_index, cmp_entry);
    r->map = set;
}

void df_params_release_pages(const df_params *r) {
    for (int i = 0; i < r->n_map_index; i++)
        df_st_release(r->map_index[i].file, r->map_index[i].info);
}

void df_params_init_with(df_params *r, df_init init) {
    df_params_init(r, init.gen);
    r->shapes_only = init.shapes_only;
    if (init.map && !init.shapes_only) map_index_build(r, init.map);
}

/* A new parameter of `name` from the map: used in place when it is F32 with the same shape and
 * 4-byte aligned, else converted into new storage; NULL when the map has no usable tensor. */
static df_tensor *param_from_map(const df_params *r, const char *name, int ndim,
                                 const int64_t *shape) {
    struct df_map_entry key = {.name = (char *)name};
    const struct df_map_entry *e =
        bsearch(&key, r->map_index, (size_t)r->n_map_index, sizeof key, cmp_entry);
    if (!e || !e->info->supported || e->info->ndim != ndim) return NULL;
    for (int d = 0; d < ndim; d++)
        if (e->info->shape[d] != shape[d]) return NULL;
    const void *data = df_st_data(e->file, e->info);
    if (e->info->dtype == DF_DTYPE_F32 && ((uintptr_t)data & 3) == 0) {
        df_scope_pause pause = df_scope_suspend(); /* parameters outlive every scope */
        df_tensor *t = df_tensor_wrap(DF_DTYPE_F32, ndim, shape, (void *)data);
        df_scope_resume(pause);
        return t;
    }
    df_tensor *t = df_tensor_new_owned(DF_DTYPE_F32, ndim, shape);
    if (df_st_read_into(e->file, e->info->name, t) != DF_OK) {
        df_tensor_free(t);
        return NULL;
    }
    return t;
}

void df_params_free(df_params *r) {
    for (int i = 0; i < r->n; i++) {
        free(r->items[i].name);
        if (r->shapes_only)
            free(r->items[i].tensor); /* a header without storage (df_params_add) */
        else
            df_tensor_free(r->items[i].tensor);
    }
    free(r->items);
    for (int i = 0; i < r->n_modules; i++) free(r->modules[i].name);
    free(r->modules);
    df_flat_free(&r->flat);
    for (int i = 0; i < r->n_map_index; i++) free(r->map_index[i].name);
    free(r->map_index);
    df_st_set_close(r->map_owned); /* after the tensors that point into it */
    memset(r, 0, sizeof *r);
}

char *df_name_join(char *buf, size_t len, const char *prefix, const char *leaf) {
    if (prefix && prefix[0])
        snprintf(buf, len, "%s.%s", prefix, leaf);
    else
        snprintf(buf, len, "%s", leaf);
    return buf;
}

char *df_name_index(char *buf, size_t len, const char *prefix, const char *leaf, int index) {
    char tmp[DF_NAME_MAX];
    snprintf(tmp, sizeof tmp, "%s.%d", leaf, index);
    return df_name_join(buf, len, prefix, tmp);
}

df_tensor *df_params_add(df_params *r, const char *prefix, const char *leaf, int ndim,
                         const int64_t *shape) {
    char name[DF_NAME_MAX];
    df_name_join(name, sizeof name, prefix, leaf);
    DF_ASSERT(!df_params_find(r, name), "parameter '%s' registered twice", name);
    DF_ASSERT(!r->flat.data, "parameter '%s' registered after the registry was flattened", name);
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->items = realloc(r->items, (size_t)r->cap * sizeof *r->items);
        DF_ASSERT(r->items, "out of memory growing the parameter registry");
    }
    df_tensor *t;
    bool from_map = false;
    if (r->shapes_only) {
        /* a header (dtype, shape, numel) without storage: a shapes-only registry of any size
         * costs no parameter memory (key-list checks, and the shape check before loading) */
        t = calloc(1, sizeof *t);
        DF_ASSERT(t, "out of memory growing the parameter registry");
        t->dtype = DF_DTYPE_F32;
        t->ndim = ndim;
        t->numel = 1;
        for (int d = 0; d < ndim; d++) t->numel *= (t->shape[d] = shape[d]);
        t->refcount = 1;
    } else if (!r->map || !(t = param_from_map(r, name, ndim, shape))) {
        /* parameters outlive every scope: made with no scope open */
        t = df_tensor_new_owned(DF_DTYPE_F32, ndim, shape);
        memset(t->data, 0, (size_t)t->numel * sizeof(float));
    } else {
        from_map = true;
    }
    r->items[r->n++] =
        (df_param){.name = strdup(name), .tensor = t, .trainable = true, .from_map = from_map};
    return t;
}

df_tensor *df_params_find(const df_params *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->items[i].name, name) == 0) return r->items[i].tensor;
    return NULL;
}

/* Whether t took its values from the registry's map (no initialiser may write it). */
static bool from_map(const df_params *r, const df_tensor *t) {
    if (!r->map) return false;
    for (int i = r->n - 1; i >= 0; i--)
        if (r->items[i].tensor == t) return r->items[i].from_map;
    return false;
}

void df_params_fill(df_params *r, df_tensor *t, float value) {
    if (!r->shapes_only && !from_map(r, t)) df_tensor_fill_(t, value);
}

void df_params_init_uniform(df_params *r, df_tensor *t, float bound) {
    if (!r->init || r->shapes_only || from_map(r, t)) return;
    float *p = df_f32(t);
    for (int64_t i = 0; i < t->numel; i++) p[i] = (2 * df_philox_uniform(r->init) - 1) * bound;
}

void df_params_init_normal(df_params *r, df_tensor *t, float std) {
    if (!r->init || r->shapes_only || from_map(r, t)) return;
    df_philox_fill_normal(r->init, df_f32(t), t->numel);
    for (int64_t i = 0; i < t->numel; i++) df_f32(t)[i] *= std;
}

int64_t df_params_count(const df_params *r) {
    int64_t n = 0;
    for (int i = 0; i < r->n; i++) n += r->items[i].tensor->numel;
    return n;
}

int df_params_set_trainable(df_params *r, const char *pattern, bool on) {
    int hits = 0;
    for (int i = 0; i < r->n; i++) {
        if (fnmatch(pattern, r->items[i].name, 0) == 0) {
            r->items[i].trainable = on;
            hits++;
        }
    }
    return hits;
}

df_status df_params_join(df_params *out, const char *prefix, df_params *part) {
    if (out->flat.data)
        return df_error(DF_ERR_INVALID, "join '%s': the joined registry is already flattened",
                        prefix);
    if (out->shapes_only || part->shapes_only)
        return df_error(DF_ERR_INVALID, "join '%s': shapes-only registries cannot be joined",
                        prefix);
    for (int i = 0; i < part->n; i++) {
        char name[DF_NAME_MAX];
        df_name_join(name, sizeof name, prefix, part->items[i].name);
        if (df_params_find(out, name))
            return df_error(DF_ERR_INVALID, "join: parameter '%s' is already in the registry",
                            name);
        if (out->n == out->cap) {
            int cap = out->cap ? 2 * out->cap : 64;
            df_param *grown = realloc(out->items, (size_t)cap * sizeof *grown);
            if (!grown) return df_error(DF_ERR_NOMEM, "join '%s': out of memory", prefix);
            out->items = grown;
            out->cap = cap;
        }
        char *copy = strdup(name);
        if (!copy) return df_error(DF_ERR_NOMEM, "join '%s': out of memory", prefix);
        const df_param *p = &part->items[i];
        out->items[out->n++] = (df_param){.name = copy,
                                          .tensor = df_tensor_retain(p->tensor),
                                          .trainable = p->trainable,
                                          .from_map = p->from_map};
    }
    for (int i = 0; i < part->n_modules; i++) {
        char name[DF_NAME_MAX];
        df_name_join(name, sizeof name, prefix, part->modules[i].name);
        df_params_add_module(out, name, part->modules[i].kind, part->modules[i].module);
    }
    return DF_OK;
}

df_status df_params_flatten(df_params *r) {
    df_tensor **train = malloc((size_t)(r->n ? r->n : 1) * sizeof *train);
    df_tensor **frozen = malloc((size_t)(r->n ? r->n : 1) * sizeof *frozen);
    df_status st = DF_OK;
    int n_train = 0, n_frozen = 0;
    if (!train || !frozen) st = df_error(DF_ERR_NOMEM, "flatten: out of memory");
    for (int i = 0; st == DF_OK && i < r->n; i++) {
        if (r->items[i].trainable)
            train[n_train++] = r->items[i].tensor;
        else
            frozen[n_frozen++] = r->items[i].tensor;
    }
    if (st == DF_OK) st = df_flat_init(&r->flat, train, n_train);
    /* frozen values stay where they are (moving them would hold two copies at once): only
     * their gradients go, and with requires_grad off no op records them */
    for (int i = 0; st == DF_OK && i < n_frozen; i++) {
        if (frozen[i]->grad) df_tensor_free(frozen[i]->grad);
        frozen[i]->grad = NULL;
        frozen[i]->requires_grad = false;
    }
    free(train);
    free(frozen);
    return st;
}

df_status df_params_freeze(df_params *r) {
    for (int i = 0; i < r->n; i++) r->items[i].trainable = false;
    return df_params_flatten(r);
}

void df_params_requires_grad(df_params *r) {
    for (int i = 0; i < r->n; i++) r->items[i].tensor->requires_grad = r->items[i].trainable;
}

/* The name a checkpoint key stands for in today's diffusers, or NULL to ignore the key. */
static const char *canonical_name(const char *key, char *buf, size_t len) {
    static const struct {
        const char *old, *new;
    } aliases[] = {{".query.", ".to_q."},
                   {".key.", ".to_k."},
                   {".value.", ".to_v."},
                   {".proj_attn.", ".to_out.0."}};
    const char *dot = strrchr(key, '.');
    if (dot && strcmp(dot, ".position_ids") == 0) return NULL;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        const char *hit = strstr(key, aliases[i].old);
        if (hit) {
            snprintf(buf, len, "%.*s%s%s", (int)(hit - key), key, aliases[i].new,
                     hit + strlen(aliases[i].old));
            return buf;
        }
    }
    return key;
}

bool df_param_selected(const df_param *p, const df_param_select *sel) {
    if (!sel) return true;
    if (sel->trainable_only && !p->trainable) return false;
    if (sel->prefix && strncmp(p->name, sel->prefix, strlen(sel->prefix)) != 0) return false;
    return !sel->glob || fnmatch(sel->glob, p->name, 0) == 0;
}

/* Appends a copy of name to a report list. */
static df_status report_add(char ***list, int *n, const char *name) {
    char **grown = realloc(*list, (size_t)(*n + 1) * sizeof *grown);
    char *copy = strdup(name);
    if (!grown || !copy) {
        free(copy);
        if (grown) *list = grown;
        return df_error(DF_ERR_NOMEM, "load report: out of memory");
    }
    *list = grown;
    (*list)[(*n)++] = copy;
    return DF_OK;
}

/* Loads every key of one open file that names a selected parameter; marks them in `seen`. Keys
 * that name none are counted in rep->n_unexpected and listed when `list` is set, else warned
 * about (the first five). */
static df_status load_set(df_params *r, const df_st_set *set, const char *path,
                          const df_param_select *sel, bool *seen, df_load_report *rep, bool list) {
    for (int i = 0; i < df_st_set_count(set); i++) {
        const df_st_file *f;
        const df_st_info *info = df_st_set_info_at(set, i, &f);
        char buf[DF_NAME_MAX];
        const char *name = canonical_name(info->name, buf, sizeof buf);
        if (!name) continue;
        int idx = -1;
        for (int j = 0; j < r->n; j++)
            if (strcmp(r->items[j].name, name) == 0 && df_param_selected(&r->items[j], sel))
                idx = j;
        if (idx < 0) {
            if (list)
                DF_TRY(report_add(&rep->unexpected, &rep->n_unexpected, info->name));
            else if (rep->n_unexpected++ < 5 && !r->shapes_only)
                fprintf(stderr, "diffusion: warning: %s: unexpected tensor '%s' ignored\n", path,
                        info->name);
            continue;
        }
        df_tensor *t = r->items[idx].tensor;
        bool same = info->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = info->shape[d] == t->shape[d];
        if (!same) {
            char want[64], got[128];
            size_t k = 0;
            got[k++] = '[';
            for (int d = 0; d < info->ndim && k < sizeof got - 24; d++)
                k += (size_t)snprintf(got + k, sizeof got - k, d ? ", %lld" : "%lld",
                                      (long long)info->shape[d]);
            snprintf(got + k, sizeof got - k, "]");
            return df_error(DF_ERR_FORMAT,
                            "%s: tensor '%s' has shape %s in the file but %s in the model", path,
                            info->name, got, df_shape_str(t, want, sizeof want));
        }
        if (!r->shapes_only) DF_TRY(df_st_read_into(f, info->name, t));
        seen[idx] = true;
        rep->applied++;
    }
    return DF_OK;
}

/* Opens path and loads what it holds of the selection into r; seen[i] marks the loaded. */
static df_status load_file(df_params *r, const char *path, const df_param_select *sel, bool *seen,
                           df_load_report *rep, bool list) {
    df_st_set *set = NULL;
    df_status st = df_st_set_open(path, &set);
    if (st == DF_OK) st = load_set(r, set, path, sel, seen, rep, list);
    df_st_set_close(set);
    return st;
}

df_status df_params_load(df_params *r, const char *path, int *n_unexpected_out) {
    bool *seen = calloc((size_t)(r->n ? r->n : 1), sizeof *seen);
    if (!seen) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    df_load_report rep = {0};
    df_status st = load_file(r, path, NULL, seen, &rep, false);
    for (int i = 0; st == DF_OK && i < r->n; i++)
        if (!seen[i])
            st = df_error(DF_ERR_NOTFOUND, "%s: missing tensor '%s'", path, r->items[i].name);
    free(seen);
    if (rep.n_unexpected > 5 && !r->shapes_only)
        fprintf(stderr, "diffusion: warning: %s: %d unexpected tensors ignored in all\n", path,
                rep.n_unexpected);
    if (n_unexpected_out) *n_unexpected_out = rep.n_unexpected;
    return st;
}

df_status df_params_load_partial(df_params *r, const char *path, const df_param_select *sel,
                                 df_load_report *rep) {
    *rep = (df_load_report){0};
    bool *seen = calloc((size_t)(r->n ? r->n : 1), sizeof *seen);
    if (!seen) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    df_status st = load_file(r, path, sel, seen, rep, true);
    for (int i = 0; st == DF_OK && i < r->n; i++)
        if (!seen[i] && df_param_selected(&r->items[i], sel))
            st = report_add(&rep->missing, &rep->n_missing, r->items[i].name);
    free(seen);
    if (st != DF_OK) df_load_report_free(rep);
    return st;
}

void df_load_report_free(df_load_report *rep) {
    for (int i = 0; i < rep->n_missing; i++) free(rep->missing[i]);
    for (int i = 0; i < rep->n_unexpected; i++) free(rep->unexpected[i]);
    free(rep->missing);
    free(rep->unexpected);
    *rep = (df_load_report){0};
}

df_status df_params_save(const df_params *r, const char *path) {
    return df_params_save_select(r, path, NULL);
}

df_status df_params_save_select(const df_params *r, const char *path, const df_param_select *sel) {
    const char **names = malloc((size_t)(r->n ? r->n : 1) * sizeof *names);
    const df_tensor **ts = malloc((size_t)(r->n ? r->n : 1) * sizeof *ts);
    df_status st;
    if (!names || !ts) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    } else {
        int n = 0;
        for (int i = 0; i < r->n; i++) {
            if (!df_param_selected(&r->items[i], sel)) continue;
            names[n] = r->items[i].name;
            ts[n++] = r->items[i].tensor;
        }
        st = df_st_save(path, n, names, ts, 0, NULL, NULL);
    }
    free(names);
    free(ts);
    return st;
}
