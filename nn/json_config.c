/* json_config.c — typed reads of a diffusers/transformers `config.json` (cJSON underneath).
 *
 * Every getter takes the class default; a missing key or a JSON null takes it (diffusers reads
 * null as None, which means "the default" for the fields we read this way); a value of the
 * wrong type is an error naming the file and the field. Unknown keys are the caller's business
 * (df_json_note_unknown lists them as diffusers does: a note, not an error).
 */
#include "nn/nn.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CONFIG_BYTES (16u << 20)

df_status df_json_load(const char *path, df_json *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(MAX_CONFIG_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_CONFIG_BYTES + 1, f) : 0;
    bool read_err = ferror(f);
    fclose(f);
    if (!buf) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    if (read_err) {
        free(buf);
        return df_error(DF_ERR_IO, "%s: read failed", path);
    }
    if (n > MAX_CONFIG_BYTES) {
        free(buf);
        return df_error(DF_ERR_FORMAT, "%s: larger than %u bytes", path, MAX_CONFIG_BYTES);
    }
    df_status st = df_json_parse(buf, n, path, out);
    free(buf);
    return st;
}

df_status df_json_parse(const char *text, size_t len, const char *label, df_json *out) {
    memset(out, 0, sizeof *out);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        int line = 1;
        for (size_t i = 0; i < at && i < len; i++) line += text[i] == '\n';
        return df_error(DF_ERR_FORMAT, "%s:%d: not valid JSON (near byte %zu)", label, line, at);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return df_error(DF_ERR_FORMAT, "%s: the top level is not a JSON object", label);
    }
    out->root = root;
    snprintf(out->path, sizeof out->path, "%s", label);
    return DF_OK;
}

void df_json_free(df_json *j) {
    cJSON_Delete(j->root);
    j->root = NULL;
}

/* The item for key, or NULL when absent or null. */
static const cJSON *item(const df_json *j, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j->root, key);
    return it && !cJSON_IsNull(it) ? it : NULL;
}

bool df_json_is_null(const df_json *j, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j->root, key);
    return it && cJSON_IsNull(it);
}

bool df_json_has(const df_json *j, const char *key) {
    return item(j, key) != NULL;
}

static df_status type_error(const df_json *j, const char *key, const char *want) {
    return df_error(DF_ERR_FORMAT, "%s: field '%s': expected %s", j->path, key, want);
}

df_status df_json_int(const df_json *j, const char *key, int def, int *out) {
    const cJSON *it = item(j, key);
    *out = def;
    if (!it) return DF_OK;
    double v = it->valuedouble;
    if (!cJSON_IsNumber(it) || v != floor(v) || fabs(v) > 2147483647.0)
        return type_error(j, key, "an integer");
    *out = (int)v;
    return DF_OK;
}

df_status df_json_double(const df_json *j, const char *key, double def, double *out) {
    const cJSON *it = item(j, key);
    *out = def;
    if (!it) return DF_OK;
    if (!cJSON_IsNumber(it)) return type_error(j, key, "a number");
    *out = it->valuedouble;
    return DF_OK;
}

df_status df_json_bool(const df_json *j, const char *key, bool def, bool *out) {
    const cJSON *it = item(j, key);
    *out = def;
    if (!it) return DF_OK;
    if (!cJSON_IsBool(it)) return type_error(j, key, "true or false");
    *out = cJSON_IsTrue(it);
    return DF_OK;
}

df_status df_json_string(const df_json *j, const char *key, const char *def, char *out,
                         size_t len) {
    const cJSON *it = item(j, key);
    if (!it) {
        snprintf(out, len, "%s", def ? def : "");
        return DF_OK;
    }
    if (!cJSON_IsString(it)) return type_error(j, key, "a string");
    if (strlen(it->valuestring) >= len)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': longer than %zu characters", j->path, key,
                        len - 1);
    snprintf(out, len, "%s", it->valuestring);
    return DF_OK;
}

/* The entry count of list field `key` (item it), at most max; else the type or count error. */
static df_status list_size(const df_json *j, const char *key, const cJSON *it, int max,
                           const char *what, int *count) {
    if (!cJSON_IsArray(it)) return type_error(j, key, what);
    *count = cJSON_GetArraySize(it);
    if (*count > max)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %d entries (at most %d)", j->path, key,
                        *count, max);
    return DF_OK;
}

df_status df_json_int_list(const df_json *j, const char *key, int max, int *out, int *n,
                           bool accept_scalar) {
    const cJSON *it = item(j, key);
    if (!it) return DF_OK; /* *n and out keep the caller's default */
    if (accept_scalar && cJSON_IsNumber(it)) {
        DF_TRY(df_json_int(j, key, 0, &out[0]));
        *n = -1; /* a scalar: the caller broadcasts it */
        return DF_OK;
    }
    int count;
    DF_TRY(list_size(j, key, it, max, "a list of integers", &count));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, it) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
            fabs(e->valuedouble) > 2147483647.0)
            return type_error(j, key, "a list of integers");
        out[i++] = (int)e->valuedouble;
    }
    *n = count;
    return DF_OK;
}

df_status df_json_bool_list(const df_json *j, const char *key, int max, bool *out, int *n,
                            bool accept_scalar) {
    const cJSON *it = item(j, key);
    if (!it) return DF_OK;
    if (accept_scalar && cJSON_IsBool(it)) {
        out[0] = cJSON_IsTrue(it);
        *n = -1;
        return DF_OK;
    }
    int count;
    DF_TRY(list_size(j, key, it, max, "a list of true / false", &count));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, it) {
        if (!cJSON_IsBool(e)) return type_error(j, key, "a list of true / false");
        out[i++] = cJSON_IsTrue(e);
    }
    *n = count;
    return DF_OK;
}

df_status df_json_string_list(const df_json *j, const char *key, int max, char (*out)[DF_JSON_STR],
                              int *n) {
    const cJSON *it = item(j, key);
    if (!it) return DF_OK;
    int count;
    DF_TRY(list_size(j, key, it, max, "a list of strings", &count));
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, it) {
        if (!cJSON_IsString(e) || strlen(e->valuestring) >= DF_JSON_STR)
            return type_error(j, key, "a list of strings");
        snprintf(out[i++], DF_JSON_STR, "%s", e->valuestring);
    }
    *n = count;
    return DF_OK;
}

void df_json_note_unknown(const df_json *j, const char *const *known, int n_known) {
    const cJSON *e;
    cJSON_ArrayForEach(e, j->root) {
        if (e->string[0] == '_') continue; /* _class_name, _diffusers_version, ... */
        bool found = false;
        for (int i = 0; i < n_known && !found; i++) found = strcmp(known[i], e->string) == 0;
        if (!found)
            fprintf(stderr, "diffusion: note: %s: field '%s' is not used by this model\n", j->path,
                    e->string);
    }
}
