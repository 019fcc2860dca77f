/* cli_lora.c — `--lora FILE[:scale]` and `--fuse-lora` for generate and forward
 * (recipes/cli_lora.h). */
#include "recipes/cli_lora.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

df_status df_cli_split_scale(char *arg, const char *label, float *scale) {
    *scale = 1.0f;
    char *colon = strrchr(arg, ':');
    if (!colon || strchr(colon, '/') || access(arg, F_OK) == 0) return DF_OK;
    char *end;
    errno = 0;
    double v = strtod(colon + 1, &end);
    if (end == colon + 1 || *end || errno || !isfinite(v))
        return df_error(DF_ERR_INVALID, "%s%s: the scale '%s' is not a number", label, arg,
                        colon + 1);
    *colon = 0;
    *scale = (float)v;
    return DF_OK;
}

df_status df_cli_lora_arg(df_cli_loras *l, const char *value) {
    if (l->n == DF_CLI_MAX_LORAS)
        return df_error(DF_ERR_INVALID, "--lora: more than %d LoRAs", DF_CLI_MAX_LORAS);
    char *file = l->files[l->n];
    if (snprintf(file, sizeof l->files[0], "%s", value) >= (int)sizeof l->files[0])
        return df_error(DF_ERR_INVALID, "--lora: the path is too long");
    DF_TRY(df_cli_split_scale(file, "--lora ", &l->scales[l->n]));
    l->n++;
    return DF_OK;
}

/* The entries of s that concern one of the models (borrowed: a shallow view), into *out. */
static df_status matching_view(const df_lora_set *s, const df_lora_model *models, int n_models,
                               df_lora_set *out) {
    memset(out, 0, sizeof *out);
    out->entries = calloc((size_t)(s->n ? s->n : 1), sizeof *out->entries);
    if (!out->entries) return df_error(DF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < n_models; k++) {
            size_t len = strlen(models[k].prefix);
            if (strncmp(s->entries[i].target, models[k].prefix, len) == 0 &&
                s->entries[i].target[len] == '.') {
                out->entries[out->n++] = s->entries[i];
                break;
            }
        }
    return DF_OK;
}

df_status df_cli_loras_apply(df_cli_loras *l, const df_lora_model *models, int n_models,
                             bool only_matching) {
    df_lora_init(&l->lora);
    for (int i = 0; i < l->n; i++) {
        DF_TRY(df_lora_file_read(l->files[i], &l->sets[i]));
        df_lora_set view = l->sets[i];
        if (only_matching) {
            DF_TRY(matching_view(&l->sets[i], models, n_models, &view));
            if (view.n == 0) {
                free(view.entries);
                return df_error(DF_ERR_NOTFOUND, "%s: no entry targets the %s", l->files[i],
                                models[0].prefix);
            }
        }
        df_status st = l->fuse ? df_lora_fuse(&view, l->scales[i], models, n_models, &l->fused)
                               : df_lora_apply(&l->lora, &view, l->scales[i], models, n_models);
        if (only_matching) free(view.entries);
        if (st != DF_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", df_last_error());
            return df_error(st, "%s: %s", l->files[i], msg);
        }
        fprintf(stderr, "lora: %s: %d modules at scale %g (%s)\n", l->files[i], view.n,
                (double)l->scales[i], l->fuse ? "fused" : "on the fly");
    }
    return DF_OK;
}

void df_cli_loras_free(df_cli_loras *l) {
    df_lora_free(&l->lora);
    df_lora_unfuse(&l->fused);
    for (int i = 0; i < l->n; i++) df_lora_set_free(&l->sets[i]);
}
