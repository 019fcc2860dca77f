/* safetensors_index.c — sharded safetensors checkpoints: the `*.safetensors.index.json` file
 * (df_st_index) and a set of opened shards that finds any tensor across them (df_st_set).
 *
 * Reference: the index written by transformers/diffusers `save_pretrained(max_shard_size=...)`:
 * {"metadata": {"total_size": bytes}, "weight_map": {"<tensor>": "<shard file>"}}.
 *
 * Invariants: an index's names are unique and `order` sorts them for binary search; every shard
 * name is a plain file name (no '/', not "." or ".."), so an index cannot reach outside its
 * folder. A set built from an index holds exactly the tensors of weight_map, each in the shard
 * the index names; a set built from a plain file holds that file alone.
 */
#include "nn/nn.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct df_st_index {
    char *path, *dir;
    int n;
    char **names, **shards; /* weight_map in file order */
    int *order;             /* indices sorted by name */
    int n_shards;
    char **shard_list; /* distinct shard names, borrowed from `shards` */
    int64_t total_size;
};

struct df_st_set {
    char *path;
    int n_files;
    df_st_file **files;
    int n; /* total tensors */
};

/* ------------------------------------------------------------------ the index file ---------- */

static _Thread_local char *const *sort_names;
static int cmp_idx(const void *a, const void *b) {
    return strcmp(sort_names[*(const int *)a], sort_names[*(const int *)b]);
}

static df_status read_text(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap >= (size_t)DF_ST_MAX_HEADER) {
                free(buf);
                fclose(fp);
                return df_error(DF_ERR_FORMAT, "%s: index file larger than %u bytes", path,
                                DF_ST_MAX_HEADER);
            }
            char *p = realloc(buf, cap * 2);
            if (!p) break;
            buf = p;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - 1 - n, fp);
        n += r;
        if (r == 0) break;
    }
    if (!buf) {
        fclose(fp);
        return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    }
    bool err = ferror(fp);
    fclose(fp);
    if (err) {
        free(buf);
        return df_error(DF_ERR_IO, "%s: read failed", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return DF_OK;
}

static bool plain_file_name(const char *s) {
    return s[0] && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

void df_st_index_close(df_st_index *idx) {
    if (!idx) return;
    for (int i = 0; i < idx->n; i++) {
        free(idx->names[i]);
        free(idx->shards[i]);
    }
    free(idx->names);
    free(idx->shards);
    free(idx->order);
    free(idx->shard_list);
    free(idx->path);
    free(idx->dir);
    free(idx);
}

static df_status index_parse(df_st_index *idx, const char *text, size_t len) {
    const char *P = idx->path;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    df_status s = DF_OK;
    if (!root) {
        s = df_error(DF_ERR_FORMAT, "%s: not valid JSON (near offset %zu)", P,
                     end && end >= text && end <= text + len ? (size_t)(end - text) : 0);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        s = df_error(DF_ERR_FORMAT, "%s: not a JSON object", P);
        goto done;
    }
    for (const char *p = end; p < text + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            s = df_error(DF_ERR_FORMAT, "%s: bytes after the JSON object (offset %zu)", P,
                         (size_t)(p - text));
            goto done;
        }
    }
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (meta && !cJSON_IsObject(meta) && !cJSON_IsNull(meta)) {
        s = df_error(DF_ERR_FORMAT, "%s: metadata is not an object", P);
        goto done;
    }
    idx->total_size = -1;
    const cJSON *ts = meta ? cJSON_GetObjectItemCaseSensitive(meta, "total_size") : NULL;
    if (ts && cJSON_IsNumber(ts) && ts->valuedouble >= 0 && ts->valuedouble <= 9007199254740992.0 &&
        (double)(int64_t)ts->valuedouble == ts->valuedouble)
        idx->total_size = (int64_t)ts->valuedouble;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!wm || !cJSON_IsObject(wm)) {
        s = df_error(DF_ERR_FORMAT, "%s: weight_map is %s", P, wm ? "not an object" : "missing");
        goto done;
    }
    int n = cJSON_GetArraySize(wm);
    idx->names = calloc((size_t)n + 1, sizeof *idx->names);
    idx->shards = calloc((size_t)n + 1, sizeof *idx->shards);
    idx->order = calloc((size_t)n + 1, sizeof *idx->order);
    idx->shard_list = calloc((size_t)n + 1, sizeof *idx->shard_list);
    if (!idx->names || !idx->shards || !idx->order || !idx->shard_list) {
        s = df_error(DF_ERR_NOMEM, "%s: out of memory", P);
        goto done;
    }
    for (const cJSON *c = wm->child; c; c = c->next) {
        const char *name = c->string ? c->string : "";
        if (!cJSON_IsString(c) || !plain_file_name(c->valuestring)) {
            s = df_error(DF_ERR_FORMAT, "%s: weight_map['%s'] is not a shard file name", P, name);
            goto done;
        }
        idx->names[idx->n] = strdup(name);
        idx->shards[idx->n] = strdup(c->valuestring);
        idx->n++;
        if (!idx->names[idx->n - 1] || !idx->shards[idx->n - 1]) {
            s = df_error(DF_ERR_NOMEM, "%s: out of memory", P);
            goto done;
        }
        bool seen = false;
        for (int k = 0; k < idx->n_shards && !seen; k++)
            seen = strcmp(idx->shard_list[k], c->valuestring) == 0;
        if (!seen) idx->shard_list[idx->n_shards++] = idx->shards[idx->n - 1];
    }
    for (int i = 0; i < idx->n; i++) idx->order[i] = i;
    sort_names = idx->names;
    qsort(idx->order, (size_t)idx->n, sizeof *idx->order, cmp_idx);
    sort_names = NULL;
    for (int i = 1; i < idx->n; i++) {
        if (strcmp(idx->names[idx->order[i - 1]], idx->names[idx->order[i]]) == 0) {
            s = df_error(DF_ERR_FORMAT, "%s: duplicate key '%s' in weight_map", P,
                         idx->names[idx->order[i]]);
            goto done;
        }
    }
done:
    cJSON_Delete(root);
    return s;
}

df_status df_st_index_parse(const char *text, size_t len, const char *path, df_st_index **out) {
    DF_ASSERT((text || len == 0) && path && out, "df_st_index_parse: NULL argument");
    *out = NULL;
    df_st_index *idx = calloc(1, sizeof *idx);
    if (!idx) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    idx->path = strdup(path);
    const char *slash = strrchr(path, '/');
    idx->dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    char *copy = malloc(len + 1); /* cJSON wants a NUL-terminated text */
    if (!idx->path || !idx->dir || !copy) {
        free(copy);
        df_st_index_close(idx);
        return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    }
    if (len) memcpy(copy, text, len);
    copy[len] = '\0';
    df_status s = index_parse(idx, copy, len);
    free(copy);
    if (s != DF_OK) {
        df_st_index_close(idx);
        return s;
    }
    *out = idx;
    return DF_OK;
}

df_status df_st_index_open(const char *index_json_path, df_st_index **out) {
    DF_ASSERT(index_json_path && out, "df_st_index_open: NULL argument");
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    DF_TRY(read_text(index_json_path, &text, &len));
    df_status s = df_st_index_parse(text, len, index_json_path, out);
    free(text);
    return s;
}

int df_st_index_count(const df_st_index *idx) {
    return idx->n;
}

void df_st_index_at(const df_st_index *idx, int i, const char **name, const char **shard) {
    DF_ASSERT(i >= 0 && i < idx->n, "df_st_index_at: index %d of %d", i, idx->n);
    if (name) *name = idx->names[i];
    if (shard) *shard = idx->shards[i];
}

const char *df_st_index_shard(const df_st_index *idx, const char *name) {
    int lo = 0, hi = idx->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, idx->names[idx->order[mid]]);
        if (c == 0) return idx->shards[idx->order[mid]];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

int df_st_index_shard_count(const df_st_index *idx) {
    return idx->n_shards;
}

const char *df_st_index_shard_at(const df_st_index *idx, int i) {
    DF_ASSERT(i >= 0 && i < idx->n_shards, "df_st_index_shard_at: %d of %d", i, idx->n_shards);
    return idx->shard_list[i];
}

const char *df_st_index_dir(const df_st_index *idx) {
    return idx->dir;
}

int64_t df_st_index_total_size(const df_st_index *idx) {
    return idx->total_size;
}

/* ------------------------------------------------------------------ sets of shards ---------- */

void df_st_set_close(df_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) df_st_close(s->files[i]);
    free(s->files);
    free(s->path);
    free(s);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Opens every shard of idx into s and checks that shards and weight_map agree. */
static df_status set_from_index(df_st_set *s, const df_st_index *idx) {
    int k = idx->n_shards;
    s->files = calloc((size_t)k + 1, sizeof *s->files);
    if (!s->files) return df_error(DF_ERR_NOMEM, "%s: out of memory", s->path);
    for (int i = 0; i < k; i++) {
        const char *shard = idx->shard_list[i];
        size_t len = strlen(idx->dir) + strlen(shard) + 2;
        char *p = malloc(len);
        if (!p) return df_error(DF_ERR_NOMEM, "%s: out of memory", s->path);
        snprintf(p, len, "%s/%s", idx->dir, shard);
        df_status st = df_st_open(p, &s->files[i]);
        free(p);
        if (st != DF_OK) return st;
        s->n_files++;
        const df_st_file *f = s->files[i];
        for (int t = 0; t < df_st_count(f); t++) {
            const char *name = df_st_info_at(f, t)->name;
            const char *want = df_st_index_shard(idx, name);
            if (!want)
                return df_error(DF_ERR_FORMAT, "%s: tensor '%s' of shard %s is not in weight_map",
                                s->path, name, shard);
            if (strcmp(want, shard) != 0)
                return df_error(DF_ERR_FORMAT,
                                "%s: tensor '%s' is in shard %s but weight_map names %s", s->path,
                                name, shard, want);
        }
        s->n += df_st_count(f);
    }
    /* Every shard's tensors are in weight_map under that shard, and names are unique in
     * weight_map, so equal counts mean every weight_map entry was found. */
    if (s->n != idx->n) {
        for (int i = 0; i < idx->n; i++) {
            const df_st_file *f = NULL;
            for (int j = 0; j < s->n_files; j++)
                if (strcmp(idx->shard_list[j], idx->shards[i]) == 0) f = s->files[j];
            if (!f || !df_st_find(f, idx->names[i]))
                return df_error(DF_ERR_FORMAT, "%s: tensor '%s' of weight_map is missing from %s",
                                s->path, idx->names[i], idx->shards[i]);
        }
    }
    return DF_OK;
}

df_status df_st_set_open(const char *path, df_st_set **out) {
    DF_ASSERT(path && out, "df_st_set_open: NULL argument");
    *out = NULL;
    df_st_set *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    }
    df_status st;
    if (ends_with(path, ".index.json")) {
        df_st_index *idx;
        st = df_st_index_open(path, &idx);
        if (st == DF_OK) {
            st = set_from_index(s, idx);
            df_st_index_close(idx);
        }
    } else {
        s->files = calloc(1, sizeof *s->files);
        st = s->files ? df_st_open(path, &s->files[0])
                      : df_error(DF_ERR_NOMEM, "%s: out of memory", path);
        if (st == DF_OK) {
            s->n_files = 1;
            s->n = df_st_count(s->files[0]);
        }
    }
    if (st != DF_OK) {
        df_st_set_close(s);
        return st;
    }
    *out = s;
    return DF_OK;
}

int df_st_set_count(const df_st_set *s) {
    return s->n;
}

const df_st_info *df_st_set_info_at(const df_st_set *s, int i, const df_st_file **file) {
    DF_ASSERT(i >= 0 && i < s->n, "df_st_set_info_at: index %d of %d", i, s->n);
    for (int j = 0; j < s->n_files; j++) {
        int c = df_st_count(s->files[j]);
        if (i < c) {
            if (file) *file = s->files[j];
            return df_st_info_at(s->files[j], i);
        }
        i -= c;
    }
    return NULL;
}

const df_st_info *df_st_set_find(const df_st_set *s, const char *name, const df_st_file **file) {
    for (int j = 0; j < s->n_files; j++) {
        const df_st_info *t = df_st_find(s->files[j], name);
        if (t) {
            if (file) *file = s->files[j];
            return t;
        }
    }
    return NULL;
}

df_status df_st_set_read(const df_st_set *s, const char *name, df_dtype as, df_tensor **out) {
    const df_st_file *f;
    *out = NULL;
    if (!df_st_set_find(s, name, &f))
        return df_error(DF_ERR_NOTFOUND, "%s: no tensor '%s'", s->path, name);
    return df_st_read(f, name, as, out);
}

df_status df_st_set_read_into(const df_st_set *s, const char *name, df_tensor *dst) {
    const df_st_file *f;
    if (!df_st_set_find(s, name, &f))
        return df_error(DF_ERR_NOTFOUND, "%s: no tensor '%s'", s->path, name);
    return df_st_read_into(f, name, dst);
}

int df_st_set_file_count(const df_st_set *s) {
    return s->n_files;
}

const df_st_file *df_st_set_file_at(const df_st_set *s, int i) {
    DF_ASSERT(i >= 0 && i < s->n_files, "df_st_set_file_at: %d of %d", i, s->n_files);
    return s->files[i];
}
