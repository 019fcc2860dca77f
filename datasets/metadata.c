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

/* Parses one non-blank line into *e (owned strings). */
static df_status parse_line(const char *s, size_t ll, const char *name, int64_t line,
                            const char *caption_column, df_meta_entry *e) {
    if (memchr(s, '\0', ll))
        return df_error(DF_ERR_FORMAT, "%s:%lld: NUL byte in line", name, (long long)line);
    if (df_json_has_nul_escape(
            s, ll)) /* cJSON would cut the string there: a file name silently changed */
        return df_error(DF_ERR_FORMAT, "%s:%lld: \\u0000 (NUL) in a string", name, (long long)line);
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(s, ll, &end, false);
    df_status st = DF_OK;
    if (!obj) return df_error(DF_ERR_FORMAT, "%s:%lld: not valid JSON", name, (long long)line);
    if (end && !blank(end, ll - (size_t)(end - s))) {
        st = df_error(DF_ERR_FORMAT, "%s:%lld: trailing characters after the JSON object", name,
                      (long long)line);
        goto done;
    }
    if (!cJSON_IsObject(obj)) {
        st = df_error(DF_ERR_FORMAT, "%s:%lld: line is not a JSON object", name, (long long)line);
        goto done;
    }
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(obj, "file_name");
    if (!cJSON_IsString(fn) || !fn->valuestring) {
        st = df_error(DF_ERR_FORMAT, "%s:%lld: \"file_name\" missing or not a string", name,
                      (long long)line);
        goto done;
    }
    if (bad_path(fn->valuestring)) {
        st = df_error(DF_ERR_FORMAT,
                      "%s:%lld: file_name \"%.200s\" is empty, absolute or contains \"..\"", name,
                      (long long)line, fn->valuestring);
        goto done;
    }
    const cJSON *cap_item = cJSON_GetObjectItemCaseSensitive(obj, caption_column);
    const char *caption = "";
    if (cap_item && !cJSON_IsNull(cap_item)) {
        if (!cJSON_IsString(cap_item) || !cap_item->valuestring) {
            st = df_error(DF_ERR_FORMAT, "%s:%lld: caption column \"%s\" is not a string", name,
                          (long long)line, caption_column);
            goto done;
        }
        caption = cap_item->valuestring;
    }
    e->file_name = strdup(fn->valuestring);
    e->caption = strdup(caption);
    if (!e->file_name || !e->caption) {
        free(e->file_name);
        free(e->caption);
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", name);
    }
done:
    cJSON_Delete(obj);
    return st;
}

df_status df_meta_parse(const char *text, size_t len, const char *name, const char *caption_column,
                        df_meta_entry **entries, int64_t *n_out, char ***bad, int64_t *n_bad) {
    df_meta_entry *es = NULL;
    char **bl = NULL;
    int64_t n = 0, cap = 0, nb = 0;
    df_status st = DF_OK;
    size_t pos = 0;
    int64_t line = 0;
    *entries = NULL;
    *n_out = 0;
    if (bad) *bad = NULL, *n_bad = 0;
    while (pos < len) {
        line++;
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - s) : len - pos;
        pos += ll + (nl ? 1 : 0);
        if (blank(s, ll)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            df_meta_entry *ne = realloc(es, sizeof *es * (size_t)cap);
            if (!ne) {
                st = df_error(DF_ERR_NOMEM, "%s: out of memory", name);
                goto fail;
            }
            es = ne;
        }
        st = parse_line(s, ll, name, line, caption_column, &es[n]);
        if (st == DF_OK) {
            n++;
            continue;
        }
        if (!bad || st != DF_ERR_FORMAT) goto fail;
        /* skip_bad_images: keep the message, go on */
        char **nbl = realloc(bl, sizeof(char *) * (size_t)(nb + 1));
        char *msg = strdup(df_last_error());
        if (!nbl || !msg) {
            free(msg);
            if (nbl) bl = nbl;
            st = df_error(DF_ERR_NOMEM, "%s: out of memory", name);
            goto fail;
        }
        bl = nbl;
        bl[nb++] = msg;
        st = DF_OK;
    }
    *entries = es;
    *n_out = n;
    if (bad) *bad = bl, *n_bad = nb;
    return DF_OK;
fail:
    df_meta_free(es, n);
    for (int64_t i = 0; i < nb; i++) free(bl[i]);
    free(bl);
    return st;
}
