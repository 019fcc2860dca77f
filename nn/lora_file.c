/* lora_file.c — LoRA sets in memory and their files: format detection, the reader (grouping
 * each target's down / up / alpha tensors and checking them) and the writer of every layout of
 * nn/lora_file.h. The key names of each layout are in nn/lora_keys_diffusers.c (diffusers,
 * PEFT) and nn/lora_keys_kohya.c; docs/lora.md describes the mapping and the alpha rules.
 *
 * Reading: pickles are refused from their first bytes (a zip archive or a pickle opcode), then
 * the safetensors reader validates the container; the layout is the one whose names match the
 * most keys, and every key it does not name is an error listing them (never dropped). Each
 * target needs exactly one down and one up tensor (float, 2-D for a linear, 4-D for a
 * convolution with a 1x1 up), ranks that agree and are > 0, an optional alpha holding one finite
 * number, and only finite values. Tensors are read as F32.
 *
 * Writing: diffusers v0.21.4 has no alpha, so an entry whose alpha differs from its rank is
 * written with up * (alpha / rank) (the update upstream then computes is the same up to float
 * rounding); kohya always writes .alpha (F32 scalar, as sd-scripts); PEFT writes .alpha only
 * when it differs from the rank. Tensors are written as F32 in the set's order.
 */
#include "nn/lora_file_impl.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const format_names[DF_LORA_FORMAT_COUNT] = {"diffusers", "peft", "kohya"};

const char *df_lora_format_name(df_lora_format f) {
    return (unsigned)f < DF_LORA_FORMAT_COUNT ? format_names[f] : "unknown";
}

bool df_lora_format_parse(const char *name, df_lora_format *out) {
    for (int i = 0; i < DF_LORA_FORMAT_COUNT; i++)
        if (name && strcmp(name, format_names[i]) == 0) {
            *out = (df_lora_format)i;
            return true;
        }
    return false;
}

/* ------------------------------------------------------------------ the set ------------------ */

df_status df_lora_set_add(df_lora_set *s, const char *target, df_tensor *down, df_tensor *up,
                          float alpha) {
    DF_ASSERT(s && target && down && up, "df_lora_set_add: NULL argument");
    char *t = NULL;
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        df_lora_entry *e = realloc(s->entries, (size_t)cap * sizeof *e);
        if (!e) goto nomem;
        s->entries = e;
        s->cap = cap;
    }
    t = strdup(target);
    if (!t) goto nomem;
    s->entries[s->n++] = (df_lora_entry){.target = t, .down = down, .up = up, .alpha = alpha};
    return DF_OK;
nomem:
    df_tensor_free(down);
    df_tensor_free(up);
    return df_error(DF_ERR_NOMEM, "out of memory adding LoRA target %s", target);
}

void df_lora_set_free(df_lora_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) {
        free(s->entries[i].target);
        df_tensor_free(s->entries[i].down);
        df_tensor_free(s->entries[i].up);
    }
    free(s->entries);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ reading ------------------ */

/* DF_ERR_UNSUPPORTED when the file starts like torch.save's output: a zip archive ("PK\3\4",
 * PyTorch >= 1.6) or a pickle (protocol opcode 0x80), unless byte 8 opens a safetensors JSON
 * header (a header length of 0x80 + 256 k starts with the same byte). Other bytes are left to
 * the safetensors reader. */
static df_status refuse_pickle(const char *path, const unsigned char *b, size_t n) {
    if (n >= 9 && b[8] == '{') return DF_OK; /* a safetensors JSON header */
    if ((n >= 4 && memcmp(b, "PK\3\4", 4) == 0) || (n >= 2 && b[0] == 0x80 && b[1] <= 5))
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: is a PyTorch pickle (.bin / .pt / .ckpt), which can run code when "
                        "loaded: only .safetensors LoRA files are read (convert it with "
                        "safetensors.torch.save_file on a trusted machine)",
                        path);
    return DF_OK;
}

/* One target's tensors while grouping. */
typedef struct group {
    char target[DF_LORA_NAME_MAX];
    const df_st_info *t[3]; /* down, up, alpha */
} group;

static const char *const role_names[] = {"down", "up", "alpha"};

static bool is_float(df_dtype d) {
    return d == DF_DTYPE_F32 || d == DF_DTYPE_F16 || d == DF_DTYPE_BF16 || d == DF_DTYPE_F64;
}

/* Reads info as a new owned F32 tensor with finite values only. */
static df_status read_finite(const char *path, const df_st_file *f, const df_st_info *info,
                             df_tensor **out) {
    *out = NULL;
    df_tensor *t = NULL;
    df_status st = df_tensor_try_new_owned(DF_DTYPE_F32, info->ndim, info->shape, &t);
    if (st != DF_OK) return st;
    st = df_st_read_into(f, info->name, t);
    if (st != DF_OK) goto fail;
    const float *v = df_f32(t);
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(v[i])) {
            st = df_error(DF_ERR_FORMAT, "%s: tensor '%s' holds %s at element %lld", path,
                          info->name, isnan(v[i]) ? "NaN" : "Inf", (long long)i);
            goto fail;
        }
    *out = t;
    return DF_OK;
fail:
    df_tensor_free(t);
    return st;
}

static void shape_str(const df_st_info *in, char *buf, size_t len) {
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < in->ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", d ? ", " : "", (long long)in->shape[d]);
    if (o < len) snprintf(buf + o, len - o, "]");
}

/* Checks one group's shapes and dtypes. */
static df_status check_group(const char *path, const group *g) {
    const df_st_info *down = g->t[DF_LORA_DOWN], *up = g->t[DF_LORA_UP], *al = g->t[DF_LORA_ALPHA];
    char a[96], b[96];
    if (!down || !up) {
        const df_st_info *have = down ? down : up ? up : al;
        return df_error(DF_ERR_FORMAT, "%s: LoRA target %s has '%s' but no %s tensor", path,
                        g->target, have->name, down ? "up" : "down");
    }
    for (int r = 0; r < 3; r++)
        if (g->t[r] && (!g->t[r]->supported || !is_float(g->t[r]->dtype)))
            return df_error(DF_ERR_FORMAT, "%s: tensor '%s' has dtype %s: expected a float", path,
                            g->t[r]->name, g->t[r]->dtype_name);
    shape_str(down, a, sizeof a);
    shape_str(up, b, sizeof b);
    if ((down->ndim != 2 && down->ndim != 4) || up->ndim != down->ndim)
        return df_error(DF_ERR_FORMAT,
                        "%s: LoRA target %s: down '%s' %s and up '%s' %s: expected [rank, in] and "
                        "[out, rank] (linear) or [rank, in, kh, kw] and [out, rank, 1, 1] (conv)",
                        path, g->target, down->name, a, up->name, b);
    if (down->shape[0] <= 0)
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s' %s has rank 0", path, down->name, a);
    if (up->shape[1] != down->shape[0] || up->shape[0] <= 0)
        return df_error(DF_ERR_FORMAT,
                        "%s: LoRA target %s: the ranks disagree: down '%s' %s, up '%s' %s", path,
                        g->target, down->name, a, up->name, b);
    if (up->ndim == 4 && (up->shape[2] != 1 || up->shape[3] != 1))
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s' %s: a conv up must be [out, rank, 1, 1]",
                        path, up->name, b);
    if (al && al->numel != 1) {
        shape_str(al, a, sizeof a);
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s' %s: an alpha must be a scalar", path,
                        al->name, a);
    }
    return DF_OK;
}

/* The format whose names match the most of f's keys (ties: diffusers, peft, kohya); *n_match
 * gets how many. */
static df_lora_format detect(const df_st_file *f, int *n_match) {
    int best = 0, best_n = -1;
    char target[DF_LORA_NAME_MAX];
    df_lora_role role;
    for (int k = 0; k < DF_LORA_FORMAT_COUNT; k++) {
        int n = 0;
        for (int i = 0; i < df_st_count(f); i++)
            n += df_lora_key_parse((df_lora_format)k, df_st_info_at(f, i)->name, target, &role);
        if (n > best_n) best = k, best_n = n;
    }
    *n_match = best_n;
    return (df_lora_format)best;
}

/* The set of an opened file f named `path` in messages (f is closed either way). */
static df_status read_set(df_st_file *f, const char *path, df_lora_set *out) {
    group *groups = NULL;
    int n_groups = 0;
    df_tensor *down = NULL, *up = NULL, *alpha = NULL;
    df_status st = DF_OK;
    int n = df_st_count(f), n_match = 0;
    if (n == 0) {
        st = df_error(DF_ERR_FORMAT, "%s: holds no tensors: not a LoRA file", path);
        goto fail;
    }
    df_lora_format fmt = detect(f, &n_match);
    if (n_match == 0) {
        st = df_error(DF_ERR_FORMAT,
                      "%s: unknown LoRA layout: key '%s' is not a name of the diffusers, peft or "
                      "kohya layouts (docs/lora.md)",
                      path, df_st_info_at(f, 0)->name);
        goto fail;
    }
    if (n_match < n) {
        /* every key the layout does not name, listed (up to 5) */
        char list[1024] = "";
        size_t o = 0;
        int shown = 0;
        char target[DF_LORA_NAME_MAX];
        df_lora_role role;
        for (int i = 0; i < n; i++) {
            const char *k = df_st_info_at(f, i)->name;
            if (df_lora_key_parse(fmt, k, target, &role)) continue;
            if (shown++ < 5 && o < sizeof list)
                o +=
                    (size_t)snprintf(list + o, sizeof list - o, "%s'%s'", shown > 1 ? ", " : "", k);
        }
        st = df_error(DF_ERR_FORMAT, "%s: %d of %d keys are not %s LoRA names: %s%s", path,
                      n - n_match, n, df_lora_format_name(fmt), list, shown > 5 ? ", ..." : "");
        goto fail;
    }
    groups = calloc((size_t)n, sizeof *groups);
    if (!groups) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (int i = 0; i < n; i++) { /* data order: the file's order */
        const df_st_info *info = df_st_info_at(f, i);
        char target[DF_LORA_NAME_MAX];
        df_lora_role role;
        df_lora_key_parse(fmt, info->name, target, &role);
        int g = 0;
        while (g < n_groups && strcmp(groups[g].target, target) != 0) g++;
        if (g == n_groups) memcpy(groups[n_groups++].target, target, sizeof target);
        if (groups[g].t[role]) {
            st = df_error(DF_ERR_FORMAT, "%s: keys '%s' and '%s' are both the %s tensor of %s",
                          path, groups[g].t[role]->name, info->name, role_names[role], target);
            goto fail;
        }
        groups[g].t[role] = info;
    }
    for (int g = 0; g < n_groups; g++) {
        st = check_group(path, &groups[g]);
        if (st != DF_OK) goto fail;
    }
    for (int g = 0; g < n_groups; g++) {
        const group *gr = &groups[g];
        float a = (float)gr->t[DF_LORA_DOWN]->shape[0];
        if ((st = read_finite(path, f, gr->t[DF_LORA_DOWN], &down)) != DF_OK ||
            (st = read_finite(path, f, gr->t[DF_LORA_UP], &up)) != DF_OK)
            goto fail;
        if (gr->t[DF_LORA_ALPHA]) {
            /* one number, of shape [] (sd-scripts) or [1] */
            if ((st = read_finite(path, f, gr->t[DF_LORA_ALPHA], &alpha)) != DF_OK) goto fail;
            a = df_f32(alpha)[0];
            df_tensor_free(alpha);
            alpha = NULL;
        }
        st = df_lora_set_add(out, gr->target, down, up, a);
        down = up = NULL;
        if (st != DF_OK) goto fail;
    }
    out->format = fmt;
    free(groups);
    df_st_close(f);
    return DF_OK;
fail:
    df_tensor_free(down);
    df_tensor_free(up);
    df_tensor_free(alpha);
    free(groups);
    df_st_close(f);
    df_lora_set_free(out);
    return st;
}

df_status df_lora_file_read(const char *path, df_lora_set *out) {
    memset(out, 0, sizeof *out);
    unsigned char b[9] = {0};
    FILE *fp = fopen(path, "rb");
    if (!fp) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t n = fread(b, 1, sizeof b, fp);
    fclose(fp);
    df_st_file *f = NULL;
    df_status st = refuse_pickle(path, b, n);
    if (st == DF_OK) st = df_st_open(path, &f);
    return st == DF_OK ? read_set(f, path, out) : st;
}

df_status df_lora_file_read_memory(const void *buf, size_t n, const char *label, df_lora_set *out) {
    memset(out, 0, sizeof *out);
    df_st_file *f = NULL;
    df_status st = refuse_pickle(label, buf, n);
    if (st == DF_OK) st = df_st_open_memory(buf, n, label, &f);
    return st == DF_OK ? read_set(f, label, out) : st;
}

/* ------------------------------------------------------------------ writing ------------------ */

df_status df_lora_file_write(const df_lora_set *s, const char *path, df_lora_format fmt,
                             const char *const *metadata) {
    if ((unsigned)fmt >= DF_LORA_FORMAT_COUNT)
        return df_error(DF_ERR_INVALID, "%s: unknown LoRA format %d", path, (int)fmt);
    int cap = 3 * s->n, n = 0, n_meta = 0;
    char **names = calloc((size_t)cap + 1, sizeof *names);
    const df_tensor **ts = calloc((size_t)cap + 1, sizeof *ts);
    df_tensor **owned = calloc((size_t)cap + 1, sizeof *owned);
    df_status st = DF_OK;
    if (!names || !ts || !owned) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    while (metadata && metadata[2 * n_meta]) {
        DF_ASSERT(metadata[2 * n_meta + 1], "df_lora_file_write: metadata key without a value");
        n_meta++;
    }
    for (int i = 0; i < s->n; i++) {
        const df_lora_entry *e = &s->entries[i];
        for (int j = 0; j < i; j++)
            if (strcmp(s->entries[j].target, e->target) == 0) {
                st = df_error(DF_ERR_INVALID, "%s: LoRA target %s appears twice", path, e->target);
                goto fail;
            }
        int64_t rank = e->down->shape[0];
        if (e->down->dtype != DF_DTYPE_F32 || e->up->dtype != DF_DTYPE_F32 ||
            (e->down->ndim != 2 && e->down->ndim != 4) || e->up->ndim != e->down->ndim ||
            rank <= 0 || e->up->shape[1] != rank || !isfinite(e->alpha)) {
            char a[64], b[64];
            st = df_error(DF_ERR_INVALID,
                          "%s: LoRA target %s: down %s and up %s (alpha %g) are not an F32 "
                          "[rank, in(, kh, kw)] / [out, rank(, 1, 1)] pair",
                          path, e->target, df_shape_str(e->down, a, sizeof a),
                          df_shape_str(e->up, b, sizeof b), (double)e->alpha);
            goto fail;
        }
        bool want_alpha = fmt == DF_LORA_KOHYA || (fmt == DF_LORA_PEFT && e->alpha != (float)rank);
        for (int r = 0; r < (want_alpha ? 3 : 2); r++) {
            char key[DF_LORA_NAME_MAX];
            if (!df_lora_key_format(fmt, e->target, (df_lora_role)r, key)) {
                st = df_error(DF_ERR_UNSUPPORTED,
                              "%s: LoRA target %s has no %s name (targets start with unet., "
                              "text_encoder. or text_encoder_2.)",
                              path, e->target, df_lora_format_name(fmt));
                goto fail;
            }
            if (fmt == DF_LORA_KOHYA && r == 0) {
                /* the flattened name must read back as the same module */
                char back[DF_LORA_NAME_MAX];
                df_lora_role role;
                if (!df_lora_key_parse(fmt, key, back, &role) || strcmp(back, e->target) != 0) {
                    st = df_error(DF_ERR_UNSUPPORTED,
                                  "%s: LoRA target %s: its kohya name '%s' reads back as %s", path,
                                  e->target, key, back);
                    goto fail;
                }
            }
            const df_tensor *t = r == 0 ? e->down : e->up;
            if (r == 2) {
                owned[n] = df_tensor_new_owned(DF_DTYPE_F32, 0, NULL);
                df_f32(owned[n])[0] = e->alpha;
                t = owned[n];
            } else if (r == 1 && fmt == DF_LORA_DIFFUSERS && e->alpha != (float)rank) {
                /* no alpha in this layout: the scale goes into up */
                float scale = e->alpha / (float)rank;
                owned[n] = df_tensor_new_owned(DF_DTYPE_F32, e->up->ndim, e->up->shape);
                float *v = df_f32(owned[n]);
                const float *u = df_f32(e->up);
                for (int64_t k = 0; k < owned[n]->numel; k++) v[k] = u[k] * scale;
                t = owned[n];
            }
            names[n] = strdup(key);
            if (!names[n]) {
                st = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
                goto fail;
            }
            ts[n++] = t;
        }
    }
    {
        const char **mk = calloc((size_t)n_meta + 1, sizeof *mk);
        const char **mv = calloc((size_t)n_meta + 1, sizeof *mv);
        if (!mk || !mv) {
            free(mk);
            free(mv);
            st = df_error(DF_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        for (int i = 0; i < n_meta; i++) mk[i] = metadata[2 * i], mv[i] = metadata[2 * i + 1];
        st = df_st_save(path, n, (const char *const *)names, ts, n_meta, mk, mv);
        free(mk);
        free(mv);
    }
fail:
    for (int i = 0; names && i < cap; i++) free(names[i]);
    for (int i = 0; owned && i < cap; i++) df_tensor_free(owned[i]);
    free(names);
    free(ts);
    free(owned);
    return st;
}
