/* recipe_table.c — the one list of training recipes. The CLI (`diffusion train`, `--docs`,
 * `--list-recipes`), the config schema's `recipe` choices and the README generator
 * (scripts/gen-config-docs) all read it: a new recipe is its own file plus one line here. */
#include "recipes/recipes.h"

#include <stdlib.h>
#include <string.h>

static const df_recipe_def *const all_recipes[] = {
    &df_recipe_unconditional,     &df_recipe_vae,  &df_recipe_text_to_image, &df_recipe_dreambooth,
    &df_recipe_textual_inversion, &df_recipe_lora, &df_recipe_controlnet,
};

int df_recipe_count(void) {
    return (int)(sizeof all_recipes / sizeof all_recipes[0]);
}

const df_recipe_def *df_recipe_at(int i) {
    return i >= 0 && i < df_recipe_count() ? all_recipes[i] : NULL;
}

const df_recipe_def *df_recipe_find(const char *name) {
    for (int i = 0; i < df_recipe_count(); i++)
        if (strcmp(all_recipes[i]->name, name) == 0) return all_recipes[i];
    return NULL;
}

/* "a|b|c": every recipe's name, the `recipe` key's choices. */
static const char *recipe_choices(void) {
    static char choices[512];
    if (choices[0]) return choices;
    size_t k = 0;
    for (int i = 0; i < df_recipe_count() && k < sizeof choices - 1; i++) {
        size_t len = strlen(all_recipes[i]->name);
        if (k + len + 2 > sizeof choices) break;
        if (i) choices[k++] = '|';
        memcpy(choices + k, all_recipes[i]->name, len);
        k += len;
    }
    choices[k] = '\0';
    return choices;
}

df_cfg_field *df_recipe_schema(const df_recipe_def *def, int *n) {
    int base = def->extends ? def->extends->n_fields : 0;
    *n = df_trainer_schema_len + base + def->n_fields;
    df_cfg_field *s = malloc((size_t)*n * sizeof *s);
    DF_ASSERT(s, "out of memory");
    memcpy(s, df_trainer_schema, (size_t)df_trainer_schema_len * sizeof *s);
    if (base) memcpy(s + df_trainer_schema_len, def->extends->fields, (size_t)base * sizeof *s);
    memcpy(s + df_trainer_schema_len + base, def->fields, (size_t)def->n_fields * sizeof *s);
    for (int i = 0; i < df_trainer_schema_len; i++)
        if (strcmp(s[i].key, "recipe") == 0) s[i].choices = recipe_choices();
    return s;
}
