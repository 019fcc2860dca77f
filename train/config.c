/* config.c — the schema-driven run configuration: defaults < YAML file < key=value overrides.
 *
 * YAML is read through libyaml's document API; nested mappings flatten to dotted keys, a
 * sequence is a list value, `null`/`~` unsets a string. Every value is checked against its
 * field (type, range, choices) where it is read, and every error names its origin:
 * "<why> (<file>:<line>)". Misspelt keys get the closest schema key by edit distance. A key
 * given twice in one document is an error naming both lines; nesting is bounded
 * (MAX_YAML_DEPTH, checked while streaming, before libyaml builds the document).
 */
#include "train/train.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define MAX_YAML_BYTES (4u << 20)

static const char *type_name(df_cfg_type t) {
    static const char *names[] = {"an integer", "a number",           "true or false",
                                  "a string",   "a list of integers", "a list of strings"};
    return names[t];
}

static int find_field(const df_config *c, const char *key) {
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->schema[i].key, key) == 0) return i;
    return -1;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 128 || lb > 128) return 1000;
    size_t row[129];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The schema key closest to `key` (by whole key, or by last segment), or NULL if none is close. */
static const char *suggest(const df_config *c, const char *key) {
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    const char *leaf = strrchr(key, '.');
    leaf = leaf ? leaf + 1 : key;
    for (int i = 0; i < c->n; i++) {
        const char *k = c->schema[i].key;
        const char *kleaf = strrchr(k, '.');
        kleaf = kleaf ? kleaf + 1 : k;
        size_t d = edit_distance(key, k), dl = edit_distance(leaf, kleaf);
        if (dl < d) d = dl;
        if (d < best_d) best_d = d, best = k;
    }
    size_t limit = strlen(leaf) / 3 > 2 ? strlen(leaf) / 3 : 2;
    return best_d <= limit ? best : NULL;
}

static bool parse_int(const char *s, double *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) return false;
    *out = (double)v;
    return true;
}

static bool parse_float(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno == ERANGE || isnan(v)) return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, double *out) {
    static const char *yes[] = {"true", "True", "TRUE", "yes", "on"};
    static const char *no[] = {"false", "False", "FALSE", "no", "off"};
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, yes[i]) == 0) return *out = 1, true;
        if (strcmp(s, no[i]) == 0) return *out = 0, true;
    }
    return false;
}

static bool is_null(const char *s) {
    return strcmp(s, "null") == 0 || strcmp(s, "~") == 0 || strcmp(s, "Null") == 0;
}

static df_status check_range(const df_cfg_field *f, double v, const char *origin) {
    if ((f->min != 0 || f->max != 0) && (v < f->min || v > f->max))
        return df_error(DF_ERR_INVALID, "'%s': %g is out of range [%g, %g] (%s)", f->key, v, f->min,
                        f->max, origin);
    return DF_OK;
}

static df_status check_choice(const df_cfg_field *f, const char *s, const char *origin) {
    if (!f->choices || !*s) return DF_OK;
    size_t len = strlen(s);
    for (const char *p = f->choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, s, n) == 0) return DF_OK;
        p += n + (bar ? 1 : 0);
    }
    return df_error(DF_ERR_INVALID, "'%s': '%s' is not one of %s (%s)", f->key, s, f->choices,
                    origin);
}

/* Parses one scalar for a non-list field (or one list element) into v. */
static df_status scalar_into(const df_cfg_field *f, df_cfg_value *v, const char *s, int elem,
                             const char *origin) {
    double num = 0;
    df_cfg_type t = f->type == DF_CFG_INT_LIST      ? DF_CFG_INT
                    : f->type == DF_CFG_STRING_LIST ? DF_CFG_STRING
                                                    : f->type;
    switch (t) {
    case DF_CFG_INT:
    case DF_CFG_FLOAT:
    case DF_CFG_BOOL: {
        bool ok = t == DF_CFG_INT     ? parse_int(s, &num)
                  : t == DF_CFG_FLOAT ? parse_float(s, &num)
                                      : parse_bool(s, &num);
        if (!ok)
            return df_error(DF_ERR_INVALID, "'%s': expected %s, got '%s' (%s)", f->key,
                            type_name(f->type), s, origin);
        DF_TRY(check_range(f, num, origin));
        if (f->type == DF_CFG_INT_LIST)
            v->nums[elem] = num;
        else
            v->num = num;
        return DF_OK;
    }
    default: {
        const char *text = is_null(s) ? "" : s;
        DF_TRY(check_choice(f, text, origin));
        char *copy = strdup(text);
        if (!copy) return df_error(DF_ERR_NOMEM, "out of memory");
        char **slot = f->type == DF_CFG_STRING_LIST ? &v->strs[elem] : &v->str;
        free(*slot);
        *slot = copy;
        return DF_OK;
    }
    }
}

static void clear_lists(df_cfg_value *v) {
    for (int i = 0; i < v->n; i++) {
        free(v->strs[i]);
        v->strs[i] = NULL;
    }
    v->n = 0;
}

/* ----------------------------------------------------------------- YAML documents ---------- */

static void origin_of(char *buf, const char *label, const yaml_node_t *node) {
    snprintf(buf, DF_CFG_ORIGIN, "%s:%zu", label, node->start_mark.line + 1);
}

/* Assigns a YAML node (scalar or sequence of scalars) to field i. */
static df_status assign_node(df_config *c, int i, yaml_document_t *doc, yaml_node_t *node,
                             const char *origin) {
    const df_cfg_field *f = &c->schema[i];
    df_cfg_value tmp = {0};
    df_status st = DF_OK;
    bool is_list = f->type == DF_CFG_INT_LIST || f->type == DF_CFG_STRING_LIST;
    if (node->type == YAML_SCALAR_NODE && !is_list) {
        tmp.str = NULL;
        st = scalar_into(f, &tmp, (const char *)node->data.scalar.value, 0, origin);
        if (st == DF_OK) {
            c->values[i].num = tmp.num;
            if (f->type == DF_CFG_STRING) {
                free(c->values[i].str);
                c->values[i].str = tmp.str;
            }
        }
    } else if (node->type == YAML_SEQUENCE_NODE && is_list) {
        int n = (int)(node->data.sequence.items.top - node->data.sequence.items.start);
        if (n > DF_CFG_MAX_LIST)
            return df_error(DF_ERR_INVALID, "'%s': %d entries (at most %d) (%s)", f->key, n,
                            DF_CFG_MAX_LIST, origin);
        for (int k = 0; k < n && st == DF_OK; k++) {
            yaml_node_t *e = yaml_document_get_node(doc, node->data.sequence.items.start[k]);
            if (!e || e->type != YAML_SCALAR_NODE)
                st = df_error(DF_ERR_INVALID, "'%s': expected %s (%s)", f->key, type_name(f->type),
                              origin);
            else
                st = scalar_into(f, &tmp, (const char *)e->data.scalar.value, k, origin);
            tmp.n = k + 1;
        }
        if (st == DF_OK) {
            clear_lists(&c->values[i]);
            memcpy(c->values[i].nums, tmp.nums, sizeof tmp.nums);
            memcpy(c->values[i].strs, tmp.strs, sizeof tmp.strs);
            c->values[i].n = n;
        } else {
            clear_lists(&tmp);
        }
    } else if (node->type == YAML_SCALAR_NODE && is_null((const char *)node->data.scalar.value)) {
        clear_lists(&c->values[i]);
    } else {
        st = df_error(DF_ERR_INVALID, "'%s': expected %s (%s)", f->key, type_name(f->type), origin);
    }
    if (st == DF_OK) snprintf(c->values[i].origin, DF_CFG_ORIGIN, "%s", origin);
    return st;
}

/* merge_mapping's state for one document: the line that set each field (0: not yet), so that
 * a key given twice (`lr: 1` twice, or `model: {a: 1}` and `model.a: 2`) is an error naming
 * both lines instead of the last one silently winning. */
typedef struct load_state {
    size_t *line;
} load_state;

static df_status merge_mapping(df_config *c, load_state *ls, yaml_document_t *doc, yaml_node_t *map,
                               const char *prefix, const char *label, int depth) {
    if (depth > 8) return df_error(DF_ERR_INVALID, "nesting deeper than 8 levels (%s)", label);
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        yaml_node_t *v = yaml_document_get_node(doc, p->value);
        char origin[DF_CFG_ORIGIN];
        origin_of(origin, label, k);
        if (!k || !v || k->type != YAML_SCALAR_NODE)
            return df_error(DF_ERR_INVALID, "a key must be a plain string (%s)", origin);
        char key[256];
        const char *ks = (const char *)k->data.scalar.value;
        int len = prefix[0] ? snprintf(key, sizeof key, "%s.%s", prefix, ks)
                            : snprintf(key, sizeof key, "%s", ks);
        if (len >= (int)sizeof key) return df_error(DF_ERR_INVALID, "key too long (%s)", origin);
        int i = find_field(c, key);
        if (i >= 0) {
            if (ls->line[i])
                return df_error(DF_ERR_INVALID, "duplicate key '%s': already set at line %zu (%s)",
                                key, ls->line[i], origin);
            ls->line[i] = k->start_mark.line + 1;
            DF_TRY(assign_node(c, i, doc, v, origin));
        } else if (v->type == YAML_MAPPING_NODE) {
            DF_TRY(merge_mapping(c, ls, doc, v, key, label, depth + 1));
        } else {
            const char *s = suggest(c, key);
            if (s)
                return df_error(DF_ERR_INVALID, "unknown key '%s' (did you mean '%s'?) (%s)", key,
                                s, origin);
            return df_error(DF_ERR_INVALID, "unknown key '%s' (%s)", key, origin);
        }
    }
    return DF_OK;
}

/* Refuses nesting deeper than MAX_YAML_DEPTH by streaming the events before the document is
 * built: libyaml's scanner does work proportional to the open levels at every token, so a deep
 * document ("[[[[...") costs quadratic time (and its loader recursion stack) long before the
 * depth check of merge_mapping could run. Streaming stops at the first level too many. */
#define MAX_YAML_DEPTH 32

static df_status check_depth(const char *text, size_t len, const char *label) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return df_error(DF_ERR_NOMEM, "%s: out of memory", label);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    df_status st = DF_OK;
    int depth = 0;
    for (bool done = false; !done && st == DF_OK;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) break; /* the loader reports syntax errors */
        if (ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT) {
            if (++depth > MAX_YAML_DEPTH)
                st = df_error(DF_ERR_FORMAT, "nesting deeper than %d levels (%s:%zu)",
                              MAX_YAML_DEPTH, label, ev.start_mark.line + 1);
        } else if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            depth--;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return st;
}

df_status df_config_load_yaml_text(df_config *c, const char *text, size_t len, const char *label) {
    yaml_parser_t parser;
    yaml_document_t doc;
    DF_TRY(check_depth(text, len, label));
    if (!yaml_parser_initialize(&parser)) return df_error(DF_ERR_NOMEM, "%s: out of memory", label);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        df_status st = df_error(DF_ERR_FORMAT, "not valid YAML: %s (%s:%zu)",
                                parser.problem ? parser.problem : "syntax error", label,
                                parser.problem_mark.line + 1);
        yaml_parser_delete(&parser);
        return st;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    df_status st = DF_OK;
    load_state ls = {calloc((size_t)c->n + 1, sizeof(size_t))};
    if (!ls.line)
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", label);
    else if (root && root->type == YAML_MAPPING_NODE)
        st = merge_mapping(c, &ls, &doc, root, "", label, 0);
    else if (root && !(root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0))
        st = df_error(DF_ERR_FORMAT, "the top level must be a mapping of keys (%s:1)", label);
    free(ls.line);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return st;
}

/* Opens a YAML file for reading: a directory, FIFO or device is refused without blocking (a
 * directory used to read as an empty recipe, a FIFO to hang). */
static df_status open_yaml(const char *path, FILE **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return df_error(DF_ERR_IO, "cannot open: %s (%s)", strerror(errno), path);
    struct stat st = {0};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return df_error(DF_ERR_IO, "%s, not a YAML file (%s)",
                        S_ISDIR(st.st_mode) ? "a directory" : "not a regular file", path);
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return df_error(DF_ERR_IO, "cannot open: %s (%s)", strerror(errno), path);
    }
    *out = f;
    return DF_OK;
}

df_status df_config_load_yaml(df_config *c, const char *path) {
    FILE *f;
    DF_TRY(open_yaml(path, &f));
    char *buf = malloc(MAX_YAML_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_YAML_BYTES + 1, f) : 0;
    fclose(f);
    if (!buf) return df_error(DF_ERR_NOMEM, "out of memory (%s)", path);
    df_status st = n > MAX_YAML_BYTES
                       ? df_error(DF_ERR_FORMAT, "larger than %u bytes (%s)", MAX_YAML_BYTES, path)
                       : df_config_load_yaml_text(c, buf, n, path);
    free(buf);
    return st;
}

df_status df_config_set(df_config *c, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return df_error(DF_ERR_INVALID, "override '%s' is not key=value (command line)",
                        assignment);
    char key[256];
    size_t klen = (size_t)(eq - assignment);
    if (klen >= sizeof key) return df_error(DF_ERR_INVALID, "override key too long (command line)");
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    int i = find_field(c, key);
    if (i < 0) {
        const char *s = suggest(c, key);
        if (s)
            return df_error(DF_ERR_INVALID, "unknown key '%s' (did you mean '%s'?) (command line)",
                            key, s);
        return df_error(DF_ERR_INVALID, "unknown key '%s' (command line)", key);
    }
    /* parse the value as a one-entry YAML mapping so lists and quoting work as in files */
    size_t vlen = strlen(eq + 1);
    char *text = malloc(klen + vlen + 8);
    if (!text) return df_error(DF_ERR_NOMEM, "out of memory");
    sprintf(text, "%s: %s\n", key, eq + 1);
    df_status st = df_config_load_yaml_text(c, text, strlen(text), "command line");
    free(text);
    if (st == DF_OK) snprintf(c->values[i].origin, DF_CFG_ORIGIN, "command line");
    return st;
}

/* ----------------------------------------------------------------- life cycle, reads -------- */

void df_config_init(df_config *c, const df_cfg_field *schema, int n) {
    c->schema = schema;
    c->n = n;
    c->values = calloc((size_t)n, sizeof *c->values);
    DF_ASSERT(c->values, "out of memory");
    for (int i = 0; i < n; i++) {
        snprintf(c->values[i].origin, DF_CFG_ORIGIN, "default");
        c->values[i].str = strdup("");
        if (!schema[i].def) continue;
        char text[512];
        snprintf(text, sizeof text, "%s: %s\n", schema[i].key, schema[i].def);
        df_status st = df_config_load_yaml_text(c, text, strlen(text), "schema default");
        DF_ASSERT(st == DF_OK, "config schema: bad default for '%s': %s", schema[i].key,
                  df_last_error());
        snprintf(c->values[i].origin, DF_CFG_ORIGIN, "default");
    }
}

void df_config_free(df_config *c) {
    for (int i = 0; c->values && i < c->n; i++) {
        free(c->values[i].str);
        clear_lists(&c->values[i]);
    }
    free(c->values);
    c->values = NULL;
}

static const df_cfg_value *get(const df_config *c, const char *key, df_cfg_type t) {
    int i = find_field(c, key);
    DF_ASSERT(i >= 0, "config: no key '%s' in the schema", key);
    DF_ASSERT(c->schema[i].type == t, "config: '%s' is not %s", key, type_name(t));
    return &c->values[i];
}

int64_t df_config_int(const df_config *c, const char *key) {
    return (int64_t)get(c, key, DF_CFG_INT)->num;
}

double df_config_float(const df_config *c, const char *key) {
    return get(c, key, DF_CFG_FLOAT)->num;
}

bool df_config_bool(const df_config *c, const char *key) {
    return get(c, key, DF_CFG_BOOL)->num != 0;
}

const char *df_config_str(const df_config *c, const char *key) {
    return get(c, key, DF_CFG_STRING)->str;
}

int df_config_list(const df_config *c, const char *key, int64_t *out, int max) {
    const df_cfg_value *v = get(c, key, DF_CFG_INT_LIST);
    for (int i = 0; i < v->n && i < max; i++) out[i] = (int64_t)v->nums[i];
    return v->n;
}

int df_config_str_list(const df_config *c, const char *key, const char **out, int max) {
    const df_cfg_value *v = get(c, key, DF_CFG_STRING_LIST);
    for (int i = 0; i < v->n && i < max; i++) out[i] = v->strs[i];
    return v->n;
}

/* ----------------------------------------------------------------- writing ------------------ */

/* Writes a scalar as YAML text (strings double-quoted with escapes). */
static void write_scalar(FILE *f, const df_cfg_field *fd, const df_cfg_value *v, int elem) {
    df_cfg_type t = fd->type == DF_CFG_INT_LIST      ? DF_CFG_INT
                    : fd->type == DF_CFG_STRING_LIST ? DF_CFG_STRING
                                                     : fd->type;
    double num = fd->type == DF_CFG_INT_LIST ? v->nums[elem] : v->num;
    const char *s = fd->type == DF_CFG_STRING_LIST ? v->strs[elem] : v->str;
    if (t == DF_CFG_INT)
        fprintf(f, "%lld", (long long)num);
    else if (t == DF_CFG_FLOAT)
        fprintf(f, "%.17g", num);
    else if (t == DF_CFG_BOOL)
        fprintf(f, "%s", num != 0 ? "true" : "false");
    else if (!s || !*s)
        fprintf(f, "null");
    else {
        fputc('"', f);
        for (const char *p = s; *p; p++) {
            if (*p == '"' || *p == '\\')
                fprintf(f, "\\%c", *p);
            else if (*p == '\n')
                fprintf(f, "\\n");
            else
                fputc(*p, f);
        }
        fputc('"', f);
    }
}

/* Writes every key, or (hash_only) the non-operational ones. */
static void write_config(const df_config *c, FILE *f, bool with_origin, bool hash_only) {
    char prev[256] = "";
    for (int i = 0; i < c->n; i++) {
        const df_cfg_field *fd = &c->schema[i];
        if (hash_only && fd->operational) continue;
        /* open the mapping levels this key needs beyond those the previous key opened */
        const char *key = fd->key;
        int depth = 0;
        size_t common = 0;
        for (const char *p = key; *p; p++) {
            if (*p != '.') continue;
            size_t len = (size_t)(p - key);
            bool same = strncmp(prev, key, len + 1) == 0;
            if (same)
                common = len + 1;
            else {
                fprintf(f, "%*s%.*s:\n", 2 * depth, "", (int)(len - common), key + common);
                common = len + 1;
            }
            depth++;
        }
        fprintf(f, "%*s%s: ", 2 * depth, "", key + common);
        const df_cfg_value *v = &c->values[i];
        if (fd->type == DF_CFG_INT_LIST || fd->type == DF_CFG_STRING_LIST) {
            fputc('[', f);
            for (int k = 0; k < v->n; k++) {
                if (k) fputs(", ", f);
                write_scalar(f, fd, v, k);
            }
            fputc(']', f);
        } else {
            write_scalar(f, fd, v, 0);
        }
        if (with_origin) fprintf(f, "  # %s", v->origin);
        fputc('\n', f);
        snprintf(prev, sizeof prev, "%s", key);
    }
}

void df_config_write(const df_config *c, FILE *f, bool with_origin) {
    write_config(c, f, with_origin, false);
}

df_status df_config_save(const df_config *c, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return df_error(DF_ERR_IO, "cannot write: %s (%s)", strerror(errno), path);
    df_config_write(c, f, false);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) return df_error(DF_ERR_IO, "write failed (%s)", path);
    return DF_OK;
}

uint64_t df_config_hash(const df_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    DF_ASSERT(f, "out of memory");
    write_config(c, f, false, true);
    fclose(f);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)buf[i]) * 0x100000001b3ull;
    free(buf);
    return h;
}

void df_config_write_docs(const df_cfg_field *schema, int n, FILE *f) {
    static const char *short_type[] = {"int", "float", "bool", "string", "int list", "string list"};
    fprintf(f, "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n");
    for (int i = 0; i < n; i++) {
        const df_cfg_field *fd = &schema[i];
        char allowed[128] = "";
        if (fd->choices)
            snprintf(allowed, sizeof allowed, "%s", fd->choices);
        else if (fd->min != 0 || fd->max != 0) {
            bool ints = fd->type == DF_CFG_INT || fd->type == DF_CFG_INT_LIST;
            snprintf(allowed, sizeof allowed, ints ? "[%.0f, %.0f]" : "[%g, %g]", fd->min, fd->max);
        }
        for (char *p = allowed; *p; p++)
            if (*p == '|') *p = ',';
        fprintf(f, "| `%s` | %s | %s | %s | %s |\n", fd->key, short_type[fd->type],
                fd->def ? fd->def : "", allowed, fd->doc ? fd->doc : "");
    }
}

df_status df_config_peek(const char *path, const char *key, char *out, size_t len) {
    out[0] = '\0';
    FILE *f;
    DF_TRY(open_yaml(path, &f));
    char *buf = malloc(MAX_YAML_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_YAML_BYTES, f) : 0;
    fclose(f);
    if (!buf) return df_error(DF_ERR_NOMEM, "out of memory (%s)", path);
    yaml_parser_t parser;
    yaml_document_t doc;
    df_status st = check_depth(buf, n, path);
    if (st != DF_OK) {
        free(buf);
        return st;
    }
    if (!yaml_parser_initialize(&parser)) {
        free(buf);
        return df_error(DF_ERR_NOMEM, "out of memory (%s)", path);
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, n);
    if (!yaml_parser_load(&parser, &doc)) {
        st = df_error(DF_ERR_FORMAT, "not valid YAML: %s (%s:%zu)",
                      parser.problem ? parser.problem : "syntax error", path,
                      parser.problem_mark.line + 1);
    } else {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        if (root && root->type == YAML_MAPPING_NODE) {
            for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
                 p < root->data.mapping.pairs.top; p++) {
                yaml_node_t *k = yaml_document_get_node(&doc, p->key);
                yaml_node_t *v = yaml_document_get_node(&doc, p->value);
                if (k && v && k->type == YAML_SCALAR_NODE && v->type == YAML_SCALAR_NODE &&
                    strcmp((const char *)k->data.scalar.value, key) == 0)
                    snprintf(out, len, "%s", (const char *)v->data.scalar.value);
            }
        }
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
    free(buf);
    return st;
}
