/* embedding_file.c — textual-inversion embedding files (nn/embedding_file.h): which tensor of a
 * safetensors file is the embedding and which token it names, as diffusers v0.21.4's
 * _retrieve_tokens_and_embeddings decides for a state dict (one entry: diffusers, the key is the
 * token; "string_to_param": A1111) plus the safetensors spellings A1111's own loader takes
 * ("emb_params", "string_to_param.*"); the vectors read as F32 (k, D). */
#include "nn/embedding_file.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* The stem of a path: after the last '/', before the last '.'. */
static void stem_of(const char *label, char *out, size_t len) {
    const char *base = strrchr(label, '/');
    base = base ? base + 1 : label;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    if (n >= len) n = len - 1;
    memcpy(out, base, n);
    out[n] = '\0';
}

/* Whether bytes start as a pickle (protocol 2+ opcode PROTO) or a zip (torch.save's format). */
static bool pickled_bytes(const unsigned char *b, size_t n) {
    return (n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) ||
           (n >= 4 && memcmp(b, "PK\x03\x04", 4) == 0);
}

static df_status refuse_pickle(const char *label) {
    return df_error(DF_ERR_FORMAT,
                    "%s: a pickled (torch.save) embedding, which diffusion.c never loads (it can "
                    "run code); convert it to safetensors",
                    label);
}

/* The embedding tensor of f and its token (from the key, the metadata or the stem). */
static df_status pick(const df_st_file *f, const char *label, const df_st_info **out, df_embed *e) {
    const df_st_info *emb = df_st_find(f, "emb_params"), *s2p = NULL;
    int n = df_st_count(f);
    for (int i = 0; i < n && !s2p; i++) {
        const df_st_info *info = df_st_info_at(f, i);
        if (strncmp(info->name, "string_to_param.", 16) == 0) s2p = info;
    }
    if (emb || s2p) {
        const char *name = df_st_metadata(f, "name");
        if (name && *name && strlen(name) < sizeof e->token)
            snprintf(e->token, sizeof e->token, "%s", name);
        else
            stem_of(label, e->token, sizeof e->token);
        e->format = DF_EMBED_A1111;
        *out = s2p ? s2p : emb;
        return DF_OK;
    }
    if (n != 1)
        return df_error(DF_ERR_FORMAT,
                        "%s: %d tensors, not a textual-inversion embedding (one tensor named by "
                        "its token, emb_params or string_to_param.*)",
                        label, n);
    *out = df_st_info_at(f, 0);
    if (strlen((*out)->name) >= sizeof e->token)
        return df_error(DF_ERR_FORMAT, "%s: a token of %zu bytes (at most %d)", label,
                        strlen((*out)->name), DF_EMBED_MAX_TOKEN - 1);
    snprintf(e->token, sizeof e->token, "%s", (*out)->name);
    e->format = DF_EMBED_DIFFUSERS;
    return DF_OK;
}

static df_status read_file(const df_st_file *f, const char *label, df_embed *out) {
    const df_st_info *info = NULL;
    DF_TRY(pick(f, label, &info, out));
    if (!info->supported || !df_dtype_is_float(info->dtype))
        return df_error(DF_ERR_FORMAT, "%s: %s is %s, not floats", label, info->name,
                        info->dtype_name);
    if (info->ndim != 1 && info->ndim != 2)
        return df_error(DF_ERR_FORMAT, "%s: %s has %d dimensions, an embedding is (D) or (k, D)",
                        label, info->name, info->ndim);
    int64_t k = info->ndim == 2 ? info->shape[0] : 1, d = info->shape[info->ndim - 1];
    if (k < 1 || k > DF_EMBED_MAX_VECTORS || d < 1 || d > DF_EMBED_MAX_WIDTH)
        return df_error(DF_ERR_FORMAT,
                        "%s: %s holds %lld vectors of width %lld (1 to %d vectors, 1 to %d wide)",
                        label, info->name, (long long)k, (long long)d, DF_EMBED_MAX_VECTORS,
                        DF_EMBED_MAX_WIDTH);
    df_scope scope = df_scope_begin();
    df_tensor *t = NULL;
    df_status st = df_st_read(f, info->name, DF_DTYPE_F32, &t);
    df_tensor *v = NULL;
    if (st == DF_OK) {
        v = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(k, d));
        memcpy(v->data, t->data, sizeof(float) * (size_t)(k * d));
    }
    df_scope_end(scope);
    DF_TRY(st);
    out->vectors = v;
    return DF_OK;
}

df_status df_embed_read_memory(const void *buf, size_t n, const char *label, df_embed *out) {
    memset(out, 0, sizeof *out);
    if (pickled_bytes(buf, n)) return refuse_pickle(label);
    df_st_file *f;
    DF_TRY(df_st_open_memory(buf, n, label, &f));
    df_status st = read_file(f, label, out);
    df_st_close(f);
    return st;
}

df_status df_embed_read(const char *path, df_embed *out) {
    memset(out, 0, sizeof *out);
    const char *dot = strrchr(path, '.');
    static const char *const pickles[] = {".pt", ".bin", ".ckpt", ".pth"};
    for (size_t i = 0; dot && i < sizeof pickles / sizeof pickles[0]; i++)
        if (strcmp(dot, pickles[i]) == 0) return refuse_pickle(path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char head[4];
    size_t got = fread(head, 1, sizeof head, fp);
    fclose(fp);
    if (pickled_bytes(head, got)) return refuse_pickle(path);
    df_st_file *f;
    DF_TRY(df_st_open(path, &f));
    df_status st = read_file(f, path, out);
    df_st_close(f);
    return st;
}

void df_embed_free(df_embed *e) {
    df_tensor_free(e->vectors);
    e->vectors = NULL;
}

df_status df_embed_save(const char *path, const char *token, const df_tensor *vectors) {
    const char *names[1] = {token};
    const df_tensor *ts[1] = {vectors};
    return df_st_save(path, 1, names, ts, 0, NULL, NULL);
}
