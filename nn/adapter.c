/* adapter.c — the module table and adapter hooks: every linear and conv module registers its
 * diffusers name in its model's registry (df_params.modules) at init, and carries an optional
 * chain of adapters that its forward applies after its own op (y = op(x); y = adapter(x, y)).
 * LoRA, LoCon and ControlNet-style additions plug in here without the models knowing them;
 * modules are found by exact name or by glob over the names (fnmatch, `*` spanning dots).
 * A module is borrowed by the table: models keep their modules at fixed addresses for their
 * lifetime (arrays allocated once at init).
 */
#include "nn/nn.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

void df_params_add_module(df_params *r, const char *name, df_module_kind kind, void *m) {
    if (r->n_modules == r->cap_modules) {
        int cap = r->cap_modules ? 2 * r->cap_modules : 64;
        df_module_ref *grown = realloc(r->modules, (size_t)cap * sizeof *grown);
        DF_ASSERT(grown, "module table: out of memory for %d modules", cap);
        r->modules = grown;
        r->cap_modules = cap;
    }
    char *copy = strdup(name);
    DF_ASSERT(copy, "module table: out of memory");
    r->modules[r->n_modules++] = (df_module_ref){copy, kind, m};
}

const df_module_ref *df_module_find(const df_params *r, const char *name) {
    for (int i = 0; i < r->n_modules; i++)
        if (strcmp(r->modules[i].name, name) == 0) return &r->modules[i];
    return NULL;
}

int df_modules_match(const df_params *r, const char *glob, const df_module_ref **out, int max) {
    int hits = 0;
    for (int i = 0; i < r->n_modules; i++) {
        if (fnmatch(glob, r->modules[i].name, 0) != 0) continue;
        if (hits < max) out[hits] = &r->modules[i];
        hits++;
    }
    return hits;
}

/* The adapter chain head of a module. */
static df_adapter **chain_of(const df_module_ref *m) {
    return m->kind == DF_MODULE_LINEAR ? &((df_linear_mod *)m->module)->adapter
                                       : &((df_conv_mod *)m->module)->adapter;
}

void df_module_attach(const df_module_ref *m, df_adapter *a) {
    df_adapter **p = chain_of(m);
    while (*p) p = &(*p)->next;
    a->next = NULL;
    *p = a;
}

void df_modules_detach_all(df_params *r) {
    for (int i = 0; i < r->n_modules; i++) *chain_of(&r->modules[i]) = NULL;
}

df_tensor *df_adapters_apply(df_adapter *chain, const void *module, df_module_kind kind,
                             df_tensor *x, df_tensor *y) {
    for (df_adapter *a = chain; a; a = a->next) y = a->forward(a, module, kind, x, y);
    return y;
}
