/* state_io.c — the optimizer and EMA states to and from safetensors files through their named
 * tensors (optim.h lists the names), for checkpoints. A load is all-or-nothing per tensor name:
 * every state tensor must be in the file with its exact shape, and the file must hold nothing
 * else (a tensor the optimizer does not know means the file belongs to another configuration),
 * so a restored state continues bit-identically. The kind is written as metadata "optimizer" and
 * checked on load. */
#include "nn/nn.h"
#include "optim/optim_impl.h"

#include <stdlib.h>
#include <string.h>

static df_status save_named(const char *path, int n, const char *(*name)(const void *, int),
                            df_tensor *(*tensor)(const void *, int), const void *obj,
                            const char *meta_key, const char *meta_value) {
    const char **names = calloc((size_t)n + 1, sizeof *names);
    const df_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
    DF_ASSERT(names && ts, "out of memory");
    for (int i = 0; i < n; i++) {
        names[i] = name(obj, i);
        ts[i] = tensor(obj, i);
    }
    const char *keys[1] = {meta_key}, *values[1] = {meta_value};
    df_status st = df_st_save(path, n, names, ts, 1, keys, values);
    free(names);
    free(ts);
    return st;
}

/* Reads every named state tensor of obj from f; checks the file has no other tensor. */
static df_status load_named(const df_st_file *f, const char *what, int n,
                            const char *(*name)(const void *, int),
                            df_tensor *(*tensor)(const void *, int), const void *obj) {
    for (int i = 0; i < n; i++) {
        const char *nm = name(obj, i);
        if (!df_st_find(f, nm))
            return df_error(DF_ERR_NOTFOUND, "%s: %s state '%s' is not in the file", df_st_path(f),
                            what, nm);
    }
    if (df_st_count(f) != n)
        return df_error(DF_ERR_INVALID,
                        "%s: the file holds %d tensors, the %s state has %d (another "
                        "configuration?)",
                        df_st_path(f), df_st_count(f), what, n);
    for (int i = 0; i < n; i++) DF_TRY(df_st_read_into(f, name(obj, i), tensor(obj, i)));
    return DF_OK;
}

static const char *optim_name(const void *o, int i) {
    return df_optim_state_name(o, i);
}
static df_tensor *optim_tensor(const void *o, int i) {
    return df_optim_state_tensor(o, i);
}
static const char *ema_name(const void *e, int i) {
    return df_ema_state_name(e, i);
}
static df_tensor *ema_tensor(const void *e, int i) {
    return df_ema_state_tensor(e, i);
}

df_status df_optim_state_save(const df_optim *o, const char *path) {
    return save_named(path, df_optim_state_count(o), optim_name, optim_tensor, o, "optimizer",
                      df_optim_kind_name(o->kind));
}

df_status df_optim_state_load(df_optim *o, const char *path) {
    df_st_file *f;
    DF_TRY(df_st_open(path, &f));
    df_status st = DF_OK;
    const char *kind = df_st_metadata(f, "optimizer");
    if (kind && strcmp(kind, df_optim_kind_name(o->kind)) != 0)
        st = df_error(DF_ERR_INVALID, "%s: state of optimizer '%s', expected '%s'", path, kind,
                      df_optim_kind_name(o->kind));
    if (st == DF_OK)
        st = load_named(f, "optimizer", df_optim_state_count(o), optim_name, optim_tensor, o);
    df_st_close(f);
    return st;
}

df_status df_ema_state_save(const df_ema *e, const char *path) {
    return save_named(path, df_ema_state_count(e), ema_name, ema_tensor, e, "ema", "EMAModel");
}

df_status df_ema_state_load(df_ema *e, const char *path) {
    df_st_file *f;
    DF_TRY(df_st_open(path, &f));
    df_status st = load_named(f, "ema", df_ema_state_count(e), ema_name, ema_tensor, e);
    df_st_close(f);
    return st;
}
