/* recipe_run.h — building a recipe from a YAML text in tests (tests/common/recipe_run.c). Only
 * the recipe tests link it (it needs the recipes library). */
#ifndef DF_TEST_RECIPE_RUN_H
#define DF_TEST_RECIPE_RUN_H

#include "recipes/recipes.h"
#include "tests/common/check.h"

typedef struct recipe_run {
    df_config cfg;
    df_cfg_field *schema;
    df_recipe r;
} recipe_run;

/* def's schema (plus n_extra `extra` keys, may be NULL), `yaml` loaded, then `overrides`
 * (space-separated key=value, may be NULL) applied, then the recipe created. Returns create's
 * status; on failure nothing is left to free. A bad YAML text or override fails the test. */
df_status recipe_run_begin(recipe_run *t, const df_recipe_def *def, const char *yaml,
                           const char *overrides, const df_cfg_field *extra, int n_extra);
/* Frees the recipe, the config and the schema. */
void recipe_run_end(recipe_run *t);

/* The bytes of root/run/rel (malloc'd, NUL-terminated, length in *len); fails the test when it
 * cannot be read. */
char *run_file(const char *root, const char *run, const char *rel, size_t *len);
/* Whether root/a/rel and root/b/rel hold the same bytes. */
bool run_files_equal(const char *root, const char *a, const char *b, const char *rel);
/* The "loss" values of root/run/metrics.jsonl, in order (at most max); their count. */
int run_losses(const char *root, const char *run, double *out, int max);

#endif
