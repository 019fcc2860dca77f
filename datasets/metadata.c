/* metadata.c — parsing of metadata.jsonl, the caption file of Hugging Face's ImageFolder.
 *
 * One JSON object per line: {"file_name": "a.png", "text": "a caption", ...}. Blank lines are
 * skipped (as `datasets` does). Every other malformed line is an error naming the file and the
 * 1-based line: not JSON, not an object, trailing bytes, file_name missing / not a string /
 * empty / absolute / containing "..", caption column neither a string nor null.
 */
#include "datasets/datasets_impl.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

static bool bad_path(const char *p) {
    if (p[0] == '/' || p[0] == '\0') return true;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 2 && s[0] == '.' && s[1] == '.') return true;
        if (!e) break;
        s = e + 1;
    }
    return false;
}

void df_meta_free(df_meta_entry *entries, int64_t n) {
    if (!entries) return;
    for (int64_t i = 0; i < n; i++) {
        free(entries[i].file_name);
        free(entries[i].caption);
    }
    free(entries);
}

df_status df_meta_parse(const char *text, size_t len, const char *name, const char *caption_column,
                        df_meta_entry **entries, int64_t *n_out) {
    df_meta_entry *es = NULL;
    int64_t n = 0, cap = 0;
    df_status st = DF_OK;
    cJSON *obj = NULL;
    size_t pos = 0;
    int64_t line = 0;
    *entries = NULL;
    *n_out = 0;
    while (pos < len) {
        line++;
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - s) : len - pos;
        pos += ll + (nl ? 1 : 0);
        if (blank(s, ll)) continue;
        if (memchr(s, '\0', ll)) {
            st = df_error(DF_ERR_FORMAT, "%s:%lld: NUL byte in line", name, (long long)line);
            goto fail;
        }
        const char *end = NULL;
        obj = cJSON_ParseWithLengthOpts(s, ll, &end, false);
        if (!obj) {
            st = df_error(DF_ERR_FORMAT, "%s:%lld: not valid JSON", name, (long long)line);
            goto fail;
        }
        if (end && !blank(end, ll - (size_t)(end - s))) {
            st = df_error(DF_ERR_FORMAT, "%s:%lld: trailing characters after the JSON object", name,
                          (long long)line);
            goto fail;
        }
        if (!cJSON_IsObject(obj)) {
            st = df_error(DF_ERR_FORMAT, "%s:%lld: line is not a JSON object", name, (long long)line);
            goto fail;
        }
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(obj, "file_name");
        if (!cJSON_IsString(fn) || !fn->valuestring) {
            st = df_error(DF_ERR_FORMAT, "%s:%lld: \"file_name\" missing or not a string", name,
                          (long long)line);
            goto fail;
        }
        if (bad_path(fn->valuestring)) {
            st = df_error(DF_ERR_FORMAT, "%s:%lld: file_name \"%.200s\" is empty, absolute or contains \"..\"",
                          name, (long long)line, fn->valuestring);
            goto fail;
        }
        const cJSON *cap_item = cJSON_GetObjectItemCaseSensitive(obj, caption_column);
        const char *caption = "";
        if (cap_item && !cJSON_IsNull(cap_item)) {
            if (!cJSON_IsString(cap_item) || !cap_item->valuestring) {
                st = df_error(DF_ERR_FORMAT, "%s:%lld: caption column \"%s\" is not a string", name,
                              (long long)line, caption_column);
                goto fail;
            }
            caption = cap_item->valuestring;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            df_meta_entry *ne = realloc(es, sizeof *es * (size_t)cap);
            if (!ne) {
                st = df_error(DF_ERR_NOMEM, "%s: out of memory", name);
                goto fail;
            }
            es = ne;
        }
        es[n].file_name = strdup(fn->valuestring);
        es[n].caption = strdup(caption);
        n++;
        if (!es[n - 1].file_name || !es[n - 1].caption) {
            st = df_error(DF_ERR_NOMEM, "%s: out of memory", name);
            goto fail;
        }
        cJSON_Delete(obj);
        obj = NULL;
    }
    *entries = es;
    *n_out = n;
    return DF_OK;
fail:
    cJSON_Delete(obj);
    df_meta_free(es, n);
    return st;
}
