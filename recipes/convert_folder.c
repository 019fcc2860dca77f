/* convert_folder.c — a diffusers model folder with its weights in another float dtype, as
 * `pipe.to(torch.float16).save_pretrained(out)` writes it: every .safetensors file of the tree
 * (component folders, shards) rewritten with its F32 / F16 / BF16 tensors in the new dtype
 * (round to nearest even, as torch's `.to()`); integer tensors, every other file (configs,
 * tokenizer, model card, shard indexes: the tensor names do not change) copied byte for byte.
 * The tree is written beside the output under a temporary name and renamed into place at the
 * end, so a failure (a full disk) leaves no partial folder. Files are streamed one tensor at a
 * time from their mapping.
 */
#define _XOPEN_SOURCE 700
#include "nn/nn.h"
#include "recipes/cli.h"
#include "train/train.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct stream_ctx {
    const df_st_file *f;
    const df_st_entry *entries;
} stream_ctx;

static bool is_float(df_dtype d) {
    return d == DF_DTYPE_F32 || d == DF_DTYPE_F16 || d == DF_DTYPE_BF16;
}

static df_status fill_tensor(void *ctx, int i, void *buf, const void **bytes) {
    stream_ctx *c = ctx;
    df_tensor *t = NULL;
    df_scope scope = df_scope_begin();
    df_status s = df_st_read(c->f, c->entries[i].name, c->entries[i].dtype, &t);
    if (s == DF_OK) {
        memcpy(buf, t->data, (size_t)t->numel * df_dtype_size(t->dtype));
        *bytes = buf;
    }
    df_scope_end(scope);
    return s;
}

static df_status convert_file(const char *src, const char *dst, df_dtype dt) {
    df_st_file *f = NULL;
    DF_TRY(df_st_open(src, &f));
    int n = df_st_count(f), n_meta = df_st_metadata_count(f);
    df_st_entry *e = calloc((size_t)n + 1, sizeof *e);
    const char **mk = calloc((size_t)n_meta + 1, sizeof *mk);
    const char **mv = calloc((size_t)n_meta + 1, sizeof *mv);
    df_status s = e && mk && mv ? DF_OK : df_error(DF_ERR_NOMEM, "%s: out of memory", src);
    for (int i = 0; s == DF_OK && i < n; i++) {
        const df_st_info *info = df_st_info_at(f, i);
        if (!info->supported) {
            s = df_error(DF_ERR_UNSUPPORTED, "%s: tensor %s has dtype %s", src, info->name,
                         info->dtype_name);
            break;
        }
        e[i].name = info->name;
        e[i].dtype = is_float(info->dtype) ? dt : info->dtype;
        e[i].ndim = info->ndim;
        memcpy(e[i].shape, info->shape, sizeof e[i].shape);
    }
    for (int i = 0; s == DF_OK && i < n_meta; i++) df_st_metadata_at(f, i, &mk[i], &mv[i]);
    stream_ctx c = {f, e};
    if (s == DF_OK) s = df_st_save_stream(dst, n, e, n_meta, mk, mv, fill_tensor, &c, true);
    free(e);
    free(mk);
    free(mv);
    df_st_close(f);
    return s;
}

static df_status copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return df_error(DF_ERR_IO, "%s: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return df_error(DF_ERR_IO, "%s: %s", dst, strerror(errno));
    }
    char buf[1 << 16];
    size_t k;
    bool ok = true;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0 && ok) ok = fwrite(buf, 1, k, out) == k;
    ok = ok && !ferror(in);
    fclose(in);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0) ok = false;
    if (fclose(out) != 0) ok = false;
    return ok ? DF_OK : df_error(DF_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
}

static bool has_suffix(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Mirrors folder src into dst (created), depth-first; depth bounds symlink loops. */
static df_status convert_tree(const char *src, const char *dst, df_dtype dt, int depth) {
    if (depth > 8) return df_error(DF_ERR_INVALID, "%s: folders nested too deep", src);
    if (mkdir(dst, 0755) != 0) return df_error(DF_ERR_IO, "%s: %s", dst, strerror(errno));
    DIR *d = opendir(src);
    if (!d) return df_error(DF_ERR_IO, "%s: %s", src, strerror(errno));
    df_status s = DF_OK;
    struct dirent *ent;
    while (s == DF_OK && (ent = readdir(d))) {
        if (ent->d_name[0] == '.') continue; /* ".", "..", hidden files and temporaries */
        char a[PATH_MAX], b[PATH_MAX];
        if (snprintf(a, sizeof a, "%s/%s", src, ent->d_name) >= (int)sizeof a ||
            snprintf(b, sizeof b, "%s/%s", dst, ent->d_name) >= (int)sizeof b) {
            s = df_error(DF_ERR_INVALID, "%s/%s: path too long", src, ent->d_name);
            break;
        }
        struct stat st;
        if (stat(a, &st) != 0) {
            s = df_error(DF_ERR_IO, "%s: %s", a, strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            s = convert_tree(a, b, dt, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            s = has_suffix(ent->d_name, ".safetensors") ? convert_file(a, b, dt) : copy_file(a, b);
        }
    }
    closedir(d);
    return s;
}

df_status df_convert_folder_dtype(const char *src, const char *dst, df_dtype dt) {
    if (!is_float(dt))
        return df_error(DF_ERR_INVALID, "convert: the weights' dtype must be F32, F16 or BF16");
    struct stat st;
    if (stat(src, &st) != 0 || !S_ISDIR(st.st_mode))
        return df_error(DF_ERR_NOTFOUND, "%s: not a folder", src);
    if (stat(dst, &st) == 0)
        return df_error(DF_ERR_INVALID, "%s: exists: choose a new folder", dst);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dst, (long)getpid()) >= (int)sizeof tmp)
        return df_error(DF_ERR_INVALID, "%s: path too long", dst);
    df_status s = convert_tree(src, tmp, dt, 0);
    if (s == DF_OK && rename(tmp, dst) != 0)
        s = df_error(DF_ERR_IO, "%s: rename failed: %s", dst, strerror(errno));
    if (s != DF_OK) df_remove_tree(tmp);
    return s;
}
