/* recipe_run.c — a recipe built from a YAML text for the recipe tests: the schema of the
 * recipe (plus extra keys), the config loaded, key=value overrides applied, the recipe
 * created; and the files of a run folder. */
#include "tests/common/recipe_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

df_status recipe_run_begin(recipe_run *t, const df_recipe_def *def, const char *yaml,
                           const char *overrides, const df_cfg_field *extra, int n_extra) {
    int n;
    t->schema = df_recipe_schema(def, &n);
    if (n_extra > 0) {
        t->schema = realloc(t->schema, (size_t)(n + n_extra) * sizeof *t->schema);
        cr_assert(t->schema);
        memcpy(t->schema + n, extra, (size_t)n_extra * sizeof *extra);
        n += n_extra;
    }
    df_config_init(&t->cfg, t->schema, n);
    cr_assert_eq(df_config_load_yaml_text(&t->cfg, yaml, strlen(yaml), "test"), DF_OK, "%s",
                 df_last_error());
    size_t len = overrides ? strlen(overrides) : 0;
    char *words = malloc(len + 1);
    cr_assert(words);
    memcpy(words, overrides ? overrides : "", len + 1);
    for (char *save = NULL, *w = strtok_r(words, " ", &save); w; w = strtok_r(NULL, " ", &save))
        cr_assert_eq(df_config_set(&t->cfg, w), DF_OK, "%s", df_last_error());
    free(words);
    df_status st = def->create(&t->cfg, &t->r);
    if (st != DF_OK) {
        df_config_free(&t->cfg);
        free(t->schema);
    }
    return st;
}

void recipe_run_end(recipe_run *t) {
    t->r.free(t->r.ctx);
    df_config_free(&t->cfg);
    free(t->schema);
}

char *run_file(const char *root, const char *run, const char *rel, size_t *len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", root, run, rel);
    char *text = read_whole_file(path, len);
    cr_assert(text, "no %s", path);
    return text;
}

bool run_files_equal(const char *root, const char *a, const char *b, const char *rel) {
    size_t la, lb;
    char *x = run_file(root, a, rel, &la), *y = run_file(root, b, rel, &lb);
    bool same = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

int run_losses(const char *root, const char *run, double *out, int max) {
    size_t len;
    char *text = run_file(root, run, "metrics.jsonl", &len);
    int n = 0;
    for (char *p = strstr(text, "\"loss\": "); p && n < max; p = strstr(p + 1, "\"loss\": "))
        out[n++] = strtod(p + 8, NULL);
    free(text);
    return n;
}
