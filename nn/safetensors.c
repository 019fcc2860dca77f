/* safetensors.c — the safetensors reader (mmap + complete validation) and writer.
 *
 * Reference: the format of huggingface/safetensors (u64 LE header length, a JSON header, the
 * raw little-endian tensor bytes) with the stricter rules of design.md §10, listed in nn/nn.h.
 * Every rule is checked at open, so that reading afterwards only converts bytes: a df_st_file
 * that exists is valid, and every info's [begin, end) lies inside the data section with
 * end - begin == numel * dtype size.
 *
 * Invariants of df_st_file: `infos` is sorted by (begin, end, name) (data order); `by_name`
 * holds the indices of `infos` sorted by name (names are unique); `data` points at byte 8 + N
 * of the file. The JSON is parsed by cJSON from a NUL-terminated copy of the header (the mapping
 * itself is not NUL-terminated); cJSON keeps every duplicate key in an object's child list, so
 * duplicates are found by sorting the keys of each object.
 */
#include "nn/nn.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct df_st_file {
    char *label;
    const uint8_t *base; /* the whole file */
    size_t size;
    void *map;           /* munmap(map, size) at close; NULL for memory buffers */
    const uint8_t *data; /* base + 8 + N */
    int n;
    df_st_info *infos; /* data order */
    int *by_name;      /* indices into infos, sorted by name */
    int n_meta;
    char **meta_keys, **meta_values;
};

/* ------------------------------------------------------------------ dtypes of the format ----- */

typedef struct st_dtype {
    const char *name;
    unsigned size;
    bool supported;
    df_dtype dt;
} st_dtype;

static const st_dtype st_dtypes[] = {
    {"F64", 8, true, DF_DTYPE_F64},        {"F32", 4, true, DF_DTYPE_F32},
    {"F16", 2, true, DF_DTYPE_F16},        {"BF16", 2, true, DF_DTYPE_BF16},
    {"I64", 8, true, DF_DTYPE_I64},        {"I32", 4, true, DF_DTYPE_I32},
    {"U8", 1, true, DF_DTYPE_U8},          {"I16", 2, false, DF_DTYPE_COUNT},
    {"I8", 1, false, DF_DTYPE_COUNT},      {"U64", 8, false, DF_DTYPE_COUNT},
    {"U32", 4, false, DF_DTYPE_COUNT},     {"U16", 2, false, DF_DTYPE_COUNT},
    {"BOOL", 1, false, DF_DTYPE_COUNT},    {"F8_E4M3", 1, false, DF_DTYPE_COUNT},
    {"F8_E5M2", 1, false, DF_DTYPE_COUNT},
};

static const st_dtype *st_dtype_find(const char *name) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return &st_dtypes[i];
    return NULL;
}

/* ------------------------------------------------------------------ validation helpers ------- */

#define MAX_EXACT 9007199254740992.0 /* 2^53: larger doubles are not exact integers */

/* Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF). Returns the offset of the
 * first bad byte, or n when all is valid. Control bytes other than tab, LF and CR are refused
 * too when `json` is set: JSON allows them neither inside strings nor between tokens. */
static size_t utf8_check(const uint8_t *s, size_t n, bool json) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            if (json && c < 0x20 && c != '\t' && c != '\n' && c != '\r') return i;
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (n - i < len) return i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
        i += len;
    }
    return n;
}

/* An integral JSON number in [0, 2^53]. */
static bool json_u53(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= MAX_EXACT)) return false;
    uint64_t u = (uint64_t)d;
    if ((double)u != d) return false;
    *out = u;
    return true;
}

static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* DF_ERR_FORMAT when an object holds a key twice (cJSON keeps both). `what` names the object. */
static df_status check_dup_keys(const char *label, const cJSON *obj, const char *what) {
    int n = 0;
    for (const cJSON *c = obj->child; c; c = c->next) n++;
    if (n < 2) return DF_OK;
    const char **keys = malloc((size_t)n * sizeof *keys);
    if (!keys) return df_error(DF_ERR_NOMEM, "%s: out of memory checking keys", label);
    int k = 0;
    for (const cJSON *c = obj->child; c; c = c->next) keys[k++] = c->string ? c->string : "";
    qsort(keys, (size_t)n, sizeof *keys, cmp_cstr);
    df_status s = DF_OK;
    for (int i = 1; i < n; i++) {
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            s = df_error(DF_ERR_FORMAT, "%s: duplicate key '%s' in %s", label, keys[i], what);
            break;
        }
    }
    free(keys);
    return s;
}

/* ------------------------------------------------------------------ parsing ------------------ */

static df_status parse_metadata(df_st_file *f, const cJSON *meta) {
    if (!cJSON_IsObject(meta))
        return df_error(DF_ERR_FORMAT, "%s: __metadata__ is not an object", f->label);
    DF_TRY(check_dup_keys(f->label, meta, "__metadata__"));
    int n = 0;
    for (const cJSON *c = meta->child; c; c = c->next) {
        if (!cJSON_IsString(c))
            return df_error(DF_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string",
                            f->label, c->string ? c->string : "");
        n++;
    }
    f->meta_keys = calloc((size_t)n + 1, sizeof *f->meta_keys);
    f->meta_values = calloc((size_t)n + 1, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values)
        return df_error(DF_ERR_NOMEM, "%s: out of memory reading __metadata__", f->label);
    for (const cJSON *c = meta->child; c; c = c->next) {
        f->meta_keys[f->n_meta] = strdup(c->string ? c->string : "");
        f->meta_values[f->n_meta] = strdup(c->valuestring);
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_values[f->n_meta - 1])
            return df_error(DF_ERR_NOMEM, "%s: out of memory reading __metadata__", f->label);
    }
    return DF_OK;
}

static df_status parse_entry(df_st_file *f, const cJSON *e, df_st_info *info) {
    const char *name = e->string ? e->string : "";
    const char *L = f->label;
    if (!cJSON_IsObject(e))
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': entry is not an object", L, name);
    DF_TRY(check_dup_keys(L, e, name));
    info->name = strdup(name);
    if (!info->name) return df_error(DF_ERR_NOMEM, "%s: out of memory", L);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!dt) return df_error(DF_ERR_FORMAT, "%s: tensor '%s': missing dtype", L, name);
    if (!shape) return df_error(DF_ERR_FORMAT, "%s: tensor '%s': missing shape", L, name);
    if (!offs) return df_error(DF_ERR_FORMAT, "%s: tensor '%s': missing data_offsets", L, name);

    if (!cJSON_IsString(dt))
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': dtype is not a string", L, name);
    const st_dtype *sd = st_dtype_find(dt->valuestring);
    if (!sd)
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%.32s'", L, name,
                        dt->valuestring);
    info->dtype_name = sd->name;
    info->supported = sd->supported;
    info->dtype = sd->dt; /* DF_DTYPE_COUNT when unsupported */

    if (!cJSON_IsArray(shape))
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': shape is not an array", L, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > DF_ST_MAX_DIMS)
        return df_error(DF_ERR_UNSUPPORTED, "%s: tensor '%s': %d dims (at most %d supported)", L,
                        name, ndim, DF_ST_MAX_DIMS);
    info->ndim = ndim;
    uint64_t numel = 1;
    bool overflow = false;
    int d = 0;
    for (const cJSON *c = shape->child; c; c = c->next, d++) {
        uint64_t v;
        if (!json_u53(c, &v))
            return df_error(DF_ERR_FORMAT,
                            "%s: tensor '%s': shape[%d] is not a non-negative integer", L, name, d);
        info->shape[d] = (int64_t)v;
        if (!overflow && __builtin_mul_overflow(numel, v, &numel)) overflow = true;
    }
    uint64_t bytes = 0;
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)sd->size, &bytes))
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': numel * dtype size overflows 64 bits", L,
                        name);
    if (numel > (uint64_t)INT64_MAX)
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': numel overflows", L, name);
    info->numel = (int64_t)numel;

    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': data_offsets is not an array of 2", L,
                        name);
    if (!json_u53(offs->child, &info->begin) || !json_u53(offs->child->next, &info->end))
        return df_error(DF_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets are not non-negative integers", L, name);
    if (info->begin > info->end)
        return df_error(DF_ERR_FORMAT, "%s: tensor '%s': data_offsets begin %llu > end %llu", L,
                        name, (unsigned long long)info->begin, (unsigned long long)info->end);
    if (info->end - info->begin != bytes)
        return df_error(DF_ERR_FORMAT,
                        "%s: tensor '%s': size mismatch: data_offsets span %llu bytes but %s "
                        "shape holds %llu bytes",
                        L, name, (unsigned long long)(info->end - info->begin), sd->name,
                        (unsigned long long)bytes);
    return DF_OK;
}

static int cmp_info_data(const void *a, const void *b) {
    const df_st_info *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* qsort has no context argument: by_name sorts through this thread's info array. */
static _Thread_local const df_st_info *sort_infos;
static int cmp_by_name(const void *a, const void *b) {
    return strcmp(sort_infos[*(const int *)a].name, sort_infos[*(const int *)b].name);
}

static df_status parse_header(df_st_file *f, const cJSON *root, uint64_t data_size) {
    const char *L = f->label;
    if (!cJSON_IsObject(root)) return df_error(DF_ERR_FORMAT, "%s: header is not a JSON object", L);
    DF_TRY(check_dup_keys(L, root, "the header"));
    int n = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        if (!c->string || strcmp(c->string, "__metadata__") != 0) n++;
    f->infos = calloc((size_t)n + 1, sizeof *f->infos);
    f->by_name = calloc((size_t)n + 1, sizeof *f->by_name);
    if (!f->infos || !f->by_name) return df_error(DF_ERR_NOMEM, "%s: out of memory", L);
    for (const cJSON *c = root->child; c; c = c->next) {
        if (c->string && strcmp(c->string, "__metadata__") == 0) {
            DF_TRY(parse_metadata(f, c));
            continue;
        }
        f->n++; /* counted before parsing so that close frees a partly filled name */
        DF_TRY(parse_entry(f, c, &f->infos[f->n - 1]));
    }

    qsort(f->infos, (size_t)n, sizeof *f->infos, cmp_info_data);
    uint64_t expect = 0;
    for (int i = 0; i < n; i++) {
        const df_st_info *t = &f->infos[i];
        if (t->begin != expect) {
            if (i == 0)
                return df_error(DF_ERR_FORMAT,
                                "%s: tensor '%s': data does not start at offset 0 (first "
                                "data_offsets begin at %llu)",
                                L, t->name, (unsigned long long)t->begin);
            return df_error(DF_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets begin at %llu but the previous tensor "
                            "'%s' ends at %llu (%s)",
                            L, t->name, (unsigned long long)t->begin, f->infos[i - 1].name,
                            (unsigned long long)expect, t->begin > expect ? "gap" : "overlap");
        }
        expect = t->end;
    }
    if (expect != data_size)
        return df_error(DF_ERR_FORMAT,
                        "%s: the tensors hold %llu data bytes but the file has %llu after the "
                        "header (%s)",
                        L, (unsigned long long)expect, (unsigned long long)data_size,
                        expect < data_size ? "trailing bytes"
                                           : "data runs past the end of the "
                                             "file");

    for (int i = 0; i < n; i++) f->by_name[i] = i;
    sort_infos = f->infos;
    qsort(f->by_name, (size_t)n, sizeof *f->by_name, cmp_by_name);
    sort_infos = NULL;
    return DF_OK;
}

/* Validates f->base[0, f->size) and fills f. */
static df_status parse_file(df_st_file *f) {
    const char *L = f->label;
    if (f->size < 8)
        return df_error(DF_ERR_FORMAT,
                        "%s: file is %zu bytes, too short for the 8-byte header length", L,
                        f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | f->base[i];
    if (n > DF_ST_MAX_HEADER)
        return df_error(DF_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes", L,
                        (unsigned long long)n, DF_ST_MAX_HEADER);
    if (n > f->size - 8)
        return df_error(DF_ERR_FORMAT,
                        "%s: header length %llu runs past the end of the file (%zu bytes)", L,
                        (unsigned long long)n, f->size);
    const uint8_t *h = f->base + 8;
    size_t bad = utf8_check(h, (size_t)n, true);
    if (bad < n)
        return df_error(DF_ERR_FORMAT,
                        "%s: header is not valid UTF-8 JSON text (byte 0x%02x at header offset "
                        "%zu)",
                        L, h[bad], bad);

    /* As the safetensors package: the header is an object, so its first byte past whitespace is
     * '{' (cJSON alone would also skip a UTF-8 byte-order mark). */
    size_t first = 0;
    while (first < n &&
           (h[first] == ' ' || h[first] == '\t' || h[first] == '\n' || h[first] == '\r'))
        first++;
    if (first < n && h[first] != '{')
        return df_error(DF_ERR_FORMAT, "%s: header is not a JSON object (starts with 0x%02x)", L,
                        h[first]);

    /* cJSON hands strings back NUL-terminated: a NUL inside a name (raw or \u0000) would cut it
     * silently, so that two different names could collide or a name be read as another */
    if (memchr(h, '\0', (size_t)n) || df_json_has_nul_escape((const char *)h, (size_t)n))
        return df_error(DF_ERR_FORMAT,
                        "%s: header holds a NUL character (raw or \\u0000): tensor names and "
                        "metadata cannot contain NUL",
                        L);
    char *copy = malloc((size_t)n + 1);
    if (!copy)
        return df_error(DF_ERR_NOMEM, "%s: out of memory for a %llu-byte header", L,
                        (unsigned long long)n);
    memcpy(copy, h, (size_t)n);
    copy[n] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, (size_t)n, &end, false);
    df_status s = DF_OK;
    if (!root) {
        size_t at = end && end >= copy && end <= copy + n ? (size_t)(end - copy) : 0;
        s = df_error(DF_ERR_FORMAT, "%s: header is not valid JSON (near header offset %zu)", L, at);
        goto done;
    }
    for (const char *p = end; p < copy + n; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            s = df_error(DF_ERR_FORMAT,
                         "%s: header has bytes after its JSON value (header offset %zu)", L,
                         (size_t)(p - copy));
            goto done;
        }
    }
    f->data = f->base + 8 + n;
    s = parse_header(f, root, (uint64_t)(f->size - 8 - n));
done:
    cJSON_Delete(root);
    free(copy);
    return s;
}

/* ------------------------------------------------------------------ open / close ------------- */

void df_st_close(df_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free((char *)f->infos[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->infos);
    free(f->by_name);
    if (f->map) munmap(f->map, f->size);
    free(f->label);
    free(f);
}

static df_status open_common(const uint8_t *base, size_t size, void *map, const char *label,
                             df_st_file **out) {
    *out = NULL;
    df_st_file *f = calloc(1, sizeof *f);
    char *lab = strdup(label ? label : "<memory>");
    if (!f || !lab) {
        free(f);
        free(lab);
        if (map) munmap(map, size);
        return df_error(DF_ERR_NOMEM, "%s: out of memory", label ? label : "<memory>");
    }
    f->label = lab;
    f->base = base;
    f->size = size;
    f->map = map;
    df_status s = parse_file(f);
    if (s != DF_OK) {
        df_st_close(f);
        return s;
    }
    *out = f;
    return DF_OK;
}

df_status df_st_open_memory(const void *buf, size_t n, const char *label, df_st_file **out) {
    DF_ASSERT(out && (buf || n == 0), "df_st_open_memory: NULL argument");
    static const uint8_t empty[1];
    return open_common(buf ? buf : empty, n, NULL, label, out);
}

df_status df_st_open(const char *path, df_st_file **out) {
    DF_ASSERT(path && out, "df_st_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return df_error(DF_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return df_error(DF_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return df_error(DF_ERR_IO, "%s: cannot map %zu bytes: %s", path, size, strerror(e));
        }
    }
    close(fd);
    static const uint8_t empty[1];
    return open_common(map ? map : empty, size, map, path, out);
}

/* ------------------------------------------------------------------ queries ------------------ */

const char *df_st_path(const df_st_file *f) {
    return f->label;
}

int df_st_count(const df_st_file *f) {
    return f->n;
}

const df_st_info *df_st_info_at(const df_st_file *f, int i) {
    DF_ASSERT(i >= 0 && i < f->n, "df_st_info_at: index %d of %d tensors", i, f->n);
    return &f->infos[i];
}

const df_st_info *df_st_find(const df_st_file *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const df_st_info *t = &f->infos[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *df_st_metadata(const df_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

int df_st_metadata_count(const df_st_file *f) {
    return f->n_meta;
}

void df_st_metadata_at(const df_st_file *f, int i, const char **key, const char **value) {
    DF_ASSERT(i >= 0 && i < f->n_meta, "df_st_metadata_at: index %d of %d", i, f->n_meta);
    if (key) *key = f->meta_keys[i];
    if (value) *value = f->meta_values[i];
}

const void *df_st_data(const df_st_file *f, const df_st_info *info) {
    return f->data + info->begin;
}

/* ------------------------------------------------------------------ reading ------------------ */

/* Unaligned little-endian loads (the data may sit at any offset of the mapping). */
static inline uint16_t ld16(const uint8_t *p, int64_t i) {
    uint16_t v;
    memcpy(&v, p + 2 * i, 2);
    return v;
}

static double load_f(const uint8_t *p, df_dtype dt, int64_t i) {
    switch (dt) {
    case DF_DTYPE_F32: {
        float v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case DF_DTYPE_BF16: return df_bf16_to_f32(ld16(p, i));
    case DF_DTYPE_F16: return df_f16_to_f32(ld16(p, i));
    case DF_DTYPE_F64: {
        double v;
        memcpy(&v, p + 8 * i, 8);
        return v;
    }
    case DF_DTYPE_I32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case DF_DTYPE_I64: {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        return (double)v;
    }
    case DF_DTYPE_U8: return p[i];
    default: DF_ASSERT(0, "bad dtype %d", (int)dt);
    }
    return 0;
}

static int64_t load_i(const uint8_t *p, df_dtype dt, int64_t i) {
    switch (dt) {
    case DF_DTYPE_I32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case DF_DTYPE_I64: {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        return v;
    }
    case DF_DTYPE_U8: return p[i];
    default: DF_ASSERT(0, "load_i: %s is not an integer dtype", df_dtype_name(dt));
    }
    return 0;
}

/* Converts n elements of sdt at src (any alignment) into dst of ddt, with the rounding of
 * autograd's df_tensor_to (float targets go through F32 for BF16/F16). */
static void convert_from_file(void *dst, df_dtype ddt, const uint8_t *src, df_dtype sdt,
                              int64_t n) {
    if (ddt == sdt) {
        memcpy(dst, src, (size_t)n * df_dtype_size(sdt));
        return;
    }
    switch (ddt) {
    case DF_DTYPE_F32: {
        float *d = dst;
        if (sdt == DF_DTYPE_BF16) /* df_bf16_to_f32 inlined: the top half of an F32 */
            for (int64_t i = 0; i < n; i++) {
                uint32_t u = (uint32_t)ld16(src, i) << 16;
                memcpy(&d[i], &u, 4);
            }
        else if (sdt == DF_DTYPE_F16)
            for (int64_t i = 0; i < n; i++) d[i] = df_f16_to_f32(ld16(src, i));
        else
            for (int64_t i = 0; i < n; i++) d[i] = (float)load_f(src, sdt, i);
        return;
    }
    case DF_DTYPE_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = df_f32_to_bf16((float)load_f(src, sdt, i));
        return;
    }
    case DF_DTYPE_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = df_f32_to_f16((float)load_f(src, sdt, i));
        return;
    }
    case DF_DTYPE_F64: {
        double *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = load_f(src, sdt, i);
        return;
    }
    case DF_DTYPE_I32: {
        int32_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = (int32_t)load_i(src, sdt, i);
        return;
    }
    case DF_DTYPE_I64: {
        int64_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = load_i(src, sdt, i);
        return;
    }
    case DF_DTYPE_U8: {
        uint8_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = (uint8_t)load_i(src, sdt, i);
        return;
    }
    default: DF_ASSERT(0, "bad dtype %d", (int)ddt);
    }
}

static void shape_str(char *buf, size_t len, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < len) snprintf(buf + k, len - k, "]");
}

/* The checks shared by read and read_into: the tensor exists, its dtype is supported, it fits
 * a df_tensor, and it may be converted to `as`. */
static df_status read_check(const df_st_file *f, const char *name, df_dtype as,
                            const df_st_info **out) {
    DF_ASSERT(as >= 0 && as < DF_DTYPE_COUNT, "df_st_read: bad dtype %d", (int)as);
    const df_st_info *t = df_st_find(f, name);
    if (!t) return df_error(DF_ERR_NOTFOUND, "%s: no tensor '%s'", f->label, name);
    if (!t->supported)
        return df_error(DF_ERR_UNSUPPORTED, "%s: tensor '%s': dtype %s cannot be read", f->label,
                        name, t->dtype_name);
    if (t->ndim > DF_MAX_DIMS)
        return df_error(DF_ERR_UNSUPPORTED, "%s: tensor '%s': %d dims (tensors hold at most %d)",
                        f->label, name, t->ndim, DF_MAX_DIMS);
    if (df_dtype_is_float(t->dtype) && !df_dtype_is_float(as))
        return df_error(DF_ERR_INVALID, "%s: tensor '%s': cannot read %s data as %s", f->label,
                        name, t->dtype_name, df_dtype_name(as));
    *out = t;
    return DF_OK;
}

/* Once a tensor has been converted out of the mapping, the whole pages inside its byte range
 * leave this process's resident set: MADV_DONTNEED on a private, never-written file mapping only
 * forgets the pages, and a later access (df_st_data, a second read) faults them in again from
 * the file. So loading a model holds each byte once, in its parameter, not also in the map. */
static void release_pages(const df_st_file *f, const df_st_info *t) {
    if (!f->map) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)(f->data + t->begin), hi = (uintptr_t)(f->data + t->end);
    lo = (lo + page - 1) & ~(page - 1);
    hi &= ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

void df_st_release(const df_st_file *f, const df_st_info *info) {
    DF_ASSERT(f && info, "df_st_release: NULL argument");
    release_pages(f, info);
}

df_status df_st_read(const df_st_file *f, const char *name, df_dtype as, df_tensor **out) {
    DF_ASSERT(f && name && out, "df_st_read: NULL argument");
    *out = NULL;
    const df_st_info *t;
    DF_TRY(read_check(f, name, as, &t));
    df_tensor *r = df_tensor_new(as, t->ndim, t->shape);
    convert_from_file(r->data, as, f->data + t->begin, t->dtype, t->numel);
    release_pages(f, t);
    *out = r;
    return DF_OK;
}

df_status df_st_read_into(const df_st_file *f, const char *name, df_tensor *dst) {
    DF_ASSERT(f && name && dst, "df_st_read_into: NULL argument");
    DF_ASSERT(dst->block == 0, "df_st_read_into: '%s' into a channel-blocked tensor", name);
    const df_st_info *t;
    DF_TRY(read_check(f, name, dst->dtype, &t));
    bool same = t->ndim == dst->ndim;
    for (int i = 0; same && i < t->ndim; i++) same = t->shape[i] == dst->shape[i];
    if (!same) {
        char a[160], b[160];
        shape_str(a, sizeof a, t->ndim, t->shape);
        shape_str(b, sizeof b, dst->ndim, dst->shape);
        return df_error(DF_ERR_INVALID, "%s: tensor '%s': shape %s in the file, expected %s",
                        f->label, name, a, b);
    }
    convert_from_file(dst->data, dst->dtype, f->data + t->begin, t->dtype, t->numel);
    release_pages(f, t);
    return DF_OK;
}

/* ------------------------------------------------------------------ writing ------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

/* A JSON string literal (s is valid UTF-8: only '"', '\\' and control bytes need escapes). */
static void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_put(b, e, 6);
        } else {
            sb_put(b, p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static bool valid_utf8_str(const char *s) {
    size_t n = strlen(s);
    return utf8_check((const uint8_t *)s, n, false) == n;
}

/* Writes all n bytes, retrying short writes and EINTR. */
static bool write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        if (w == 0) {
            errno = ENOSPC;
            return false;
        }
        c += w;
        n -= (size_t)w;
    }
    return true;
}

static df_status check_save_args(const char *path, int n, const df_st_entry *entries, int n_meta,
                                 const char *const *meta_keys, const char *const *meta_values) {
    for (int i = 0; i < n; i++) {
        const char *name = entries[i].name;
        DF_ASSERT(name, "df_st_save: NULL name %d", i);
        DF_ASSERT(entries[i].ndim >= 0 && entries[i].ndim <= DF_ST_MAX_DIMS,
                  "df_st_save: tensor '%s' has %d dims", name, entries[i].ndim);
        if (!name[0] || strcmp(name, "__metadata__") == 0 || !valid_utf8_str(name))
            return df_error(DF_ERR_INVALID, "%s: invalid tensor name '%s'", path, name);
        for (int j = 0; j < i; j++)
            if (strcmp(name, entries[j].name) == 0)
                return df_error(DF_ERR_INVALID, "%s: tensor name '%s' given twice", path, name);
    }
    for (int i = 0; i < n_meta; i++) {
        DF_ASSERT(meta_keys[i] && meta_values[i], "df_st_save: NULL metadata %d", i);
        if (!valid_utf8_str(meta_keys[i]) || !valid_utf8_str(meta_values[i]))
            return df_error(DF_ERR_INVALID, "%s: metadata '%s' is not valid UTF-8", path,
                            meta_keys[i]);
        for (int j = 0; j < i; j++)
            if (strcmp(meta_keys[i], meta_keys[j]) == 0)
                return df_error(DF_ERR_INVALID, "%s: metadata key '%s' given twice", path,
                                meta_keys[i]);
    }
    return DF_OK;
}

static uint64_t entry_bytes(const df_st_entry *e) {
    uint64_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= (uint64_t)e->shape[d];
    return n * df_dtype_size(e->dtype);
}

/* Writes the length, the header and the tensors through df_outfile: a new path or a regular
 * file is written to a temporary sibling, fsynced and renamed over `path` (then the folder is
 * fsynced): `path` never holds a partial file, and readers that have the old file mapped keep
 * valid bytes (truncating a mapped file would make them fault). Anything else (a device such
 * as /dev/full, a pipe) is written in place. Tensor i's bytes come from fill, one at a time. */
static df_status write_file(const char *path, const uint8_t len8[8], const sbuf *b, int n,
                            const df_st_entry *entries, df_st_fill_fn fill, void *ctx,
                            bool scratch) {
    df_outfile of;
    DF_TRY(df_outfile_begin(&of, path));
    df_status s = DF_OK;
    void *buf = NULL;
    bool in_place = of.tmp == NULL;
    const char *what = "open";
    int fd = in_place ? open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
                      : open(of.tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) goto fail_io;
    if (scratch) {
        uint64_t max = 1;
        for (int i = 0; i < n; i++)
            if (entry_bytes(&entries[i]) > max) max = entry_bytes(&entries[i]);
        if (max > SIZE_MAX || !(buf = malloc((size_t)max))) {
            s = df_error(DF_ERR_NOMEM, "%s: out of memory for a %llu-byte tensor buffer", path,
                         (unsigned long long)max);
            goto fail;
        }
    }
    what = "write";
    if (!write_all(fd, len8, 8) || !write_all(fd, b->p, b->len)) goto fail_io;
    for (int i = 0; i < n; i++) {
        const void *bytes = NULL;
        s = fill(ctx, i, buf, &bytes);
        if (s != DF_OK) goto fail;
        if (!write_all(fd, bytes, (size_t)entry_bytes(&entries[i]))) goto fail_io;
    }
    free(buf);
    buf = NULL;
    what = "close";
    int rc = close(fd);
    fd = -1;
    if (rc != 0) goto fail_io;
    return df_outfile_commit(&of); /* fsync, rename, fsync of the folder */

fail_io:
    s = df_error(DF_ERR_IO, "%s: %s failed: %s", path, what, strerror(errno));
fail:
    free(buf);
    if (fd >= 0) close(fd);
    df_outfile_abort(&of); /* no partial file is left behind */
    return s;
}

df_status df_st_save_stream(const char *path, int n, const df_st_entry *entries, int n_meta,
                            const char *const *meta_keys, const char *const *meta_values,
                            df_st_fill_fn fill, void *ctx, bool scratch) {
    DF_ASSERT(path && n >= 0 && n_meta >= 0 && fill, "df_st_save: bad arguments");
    DF_ASSERT(n == 0 || entries, "df_st_save: NULL entries");
    DF_ASSERT(n_meta == 0 || (meta_keys && meta_values), "df_st_save: NULL metadata");
    DF_TRY(check_save_args(path, n, entries, n_meta, meta_keys, meta_values));

    /* The header: __metadata__ first (as the Python writer), then tensors in the given order. */
    sbuf b = {0};
    bool has_format = false;
    for (int i = 0; i < n_meta; i++) has_format |= strcmp(meta_keys[i], "format") == 0;
    sb_str(&b, "{\"__metadata__\":{");
    if (!has_format) sb_str(&b, "\"format\":\"pt\"");
    for (int i = 0; i < n_meta; i++) {
        if (i > 0 || !has_format) sb_str(&b, ",");
        sb_json_str(&b, meta_keys[i]);
        sb_str(&b, ":");
        sb_json_str(&b, meta_values[i]);
    }
    sb_str(&b, "}");
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const df_st_entry *e = &entries[i];
        uint64_t bytes = entry_bytes(e);
        char num[64];
        sb_str(&b, ",");
        sb_json_str(&b, e->name);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, df_dtype_name(e->dtype));
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)e->shape[d]);
            sb_str(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + bytes));
        sb_str(&b, num);
        off += bytes;
    }
    sb_str(&b, "}");
    while (!b.oom && b.len % 8 != 0) sb_put(&b, " ", 1);
    if (b.oom) {
        free(b.p);
        return df_error(DF_ERR_NOMEM, "%s: out of memory building the header", path);
    }
    if (b.len > DF_ST_MAX_HEADER) {
        free(b.p);
        return df_error(DF_ERR_INVALID, "%s: header of %zu bytes exceeds the limit", path, b.len);
    }

    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)b.len >> (8 * i));

    df_status s = write_file(path, len8, &b, n, entries, fill, ctx, scratch);
    free(b.p);
    return s;
}

/* df_st_save's producer: each tensor's own storage. */
static df_status fill_from_tensors(void *ctx, int i, void *buf, const void **bytes) {
    (void)buf;
    *bytes = ((const df_tensor *const *)ctx)[i]->data;
    return DF_OK;
}

df_status df_st_save(const char *path, int n, const char *const *names, const df_tensor *const *ts,
                     int n_meta, const char *const *meta_keys, const char *const *meta_values) {
    DF_ASSERT(path && n >= 0 && n_meta >= 0, "df_st_save: bad arguments");
    DF_ASSERT(n == 0 || (names && ts), "df_st_save: NULL names or tensors");
    df_st_entry *entries = calloc(n > 0 ? (size_t)n : 1, sizeof *entries);
    if (!entries) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) {
        DF_ASSERT(names[i] && ts[i], "df_st_save: NULL name or tensor %d", i);
        /* the file holds row-major data: a channel-blocked activation must be converted first */
        DF_ASSERT(ts[i]->block == 0, "df_st_save: tensor '%s' is channel-blocked; df_to_plain it",
                  names[i]);
        DF_ASSERT(ts[i]->ndim <= DF_ST_MAX_DIMS, "df_st_save: tensor '%s' has too many dims",
                  names[i]);
        entries[i].name = names[i];
        entries[i].dtype = ts[i]->dtype;
        entries[i].ndim = ts[i]->ndim;
        for (int d = 0; d < ts[i]->ndim; d++) entries[i].shape[d] = ts[i]->shape[d];
    }
    df_status s = df_st_save_stream(path, n, entries, n_meta, meta_keys, meta_values,
                                    fill_from_tensors, (void *)ts, false);
    free(entries);
    return s;
}
