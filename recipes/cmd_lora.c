/* cmd_lora.c — `diffusion lora`: LoRA files (nn/lora_file.h, docs/lora.md).
 *
 *   diffusion lora inspect FILE
 *       the layout, rank(s), alpha(s) and targets (by model and module kind) of a LoRA file
 *   diffusion lora convert IN OUT --format diffusers|kohya|peft
 *       rewrites a LoRA file in another layout (to diffusers, alpha / rank is folded into up)
 *   diffusion lora merge BASE_DIR LORA[:scale]... OUT_DIR [--float]
 *       a copy of the pipeline folder with W += scale * alpha / rank * up @ down merged in
 */
#include "nn/lora_file.h"
#include "recipes/cli.h"
#include "recipes/cli_lora.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f, "usage: diffusion lora inspect FILE\n"
               "       diffusion lora convert IN OUT --format diffusers|kohya|peft\n"
               "       diffusion lora merge BASE_DIR LORA[:scale]... OUT_DIR [--float]\n");
}

/* ------------------------------------------------------------------ inspect ------------------ */

/* The module kind of a target: the part after its model and the last numbered container
 * ("attn1.to_q", "ff.net.0.proj", "conv1", "self_attn.q_proj"), else the whole module. */
static const char *target_kind(const char *target, char *model, size_t len) {
    const char *dot = strchr(target, '.');
    size_t m = dot ? (size_t)(dot - target) : strlen(target);
    snprintf(model, len, "%.*s", (int)m, target);
    const char *module = dot ? dot + 1 : target, *kind = module;
    static const char *const containers[] = {"transformer_blocks.", "resnets.",
                                             "attentions.",         "layers.",
                                             "downsamplers.",       "upsamplers."};
    for (size_t i = 0; i < sizeof containers / sizeof containers[0]; i++) {
        const char *p = module;
        while ((p = strstr(p, containers[i]))) {
            const char *q = p + strlen(containers[i]);
            while (*q >= '0' && *q <= '9') q++;
            if (*q == '.' && q > p + strlen(containers[i]) && q + 1 > kind) kind = q + 1;
            p = q;
        }
    }
    return kind;
}

typedef struct kind_row {
    char model[64], kind[192], shape[32];
    int count;
} kind_row;

static int inspect(const char *path) {
    df_lora_set s;
    if (df_lora_file_read(path, &s) != DF_OK) return df_cli_fail("lora inspect");
    kind_row *rows = calloc((size_t)s.n + 1, sizeof *rows);
    int n_rows = 0;
    /* distinct ranks and alphas, in order of appearance */
    int64_t ranks[16];
    float alphas[16];
    int n_ranks = 0, n_alphas = 0, more_ranks = 0, more_alphas = 0;
    for (int i = 0; i < s.n; i++) {
        const df_lora_entry *e = &s.entries[i];
        int64_t r = e->down->shape[0];
        int k = 0;
        while (k < n_ranks && ranks[k] != r) k++;
        if (k == n_ranks) {
            if (n_ranks < 16)
                ranks[n_ranks++] = r;
            else
                more_ranks = 1;
        }
        k = 0;
        while (k < n_alphas && alphas[k] != e->alpha) k++;
        if (k == n_alphas) {
            if (n_alphas < 16)
                alphas[n_alphas++] = e->alpha;
            else
                more_alphas = 1;
        }
        kind_row row = {0};
        snprintf(row.kind, sizeof row.kind, "%s",
                 target_kind(e->target, row.model, sizeof row.model));
        if (e->down->ndim == 4)
            snprintf(row.shape, sizeof row.shape, "conv %lldx%lld", (long long)e->down->shape[2],
                     (long long)e->down->shape[3]);
        else
            snprintf(row.shape, sizeof row.shape, "linear");
        k = 0;
        while (k < n_rows && (strcmp(rows[k].model, row.model) || strcmp(rows[k].kind, row.kind) ||
                              strcmp(rows[k].shape, row.shape)))
            k++;
        if (k == n_rows) rows[n_rows++] = row;
        rows[k].count++;
    }
    printf("file: %s\nformat: %s\ntargets: %d\n", path, df_lora_format_name(s.format), s.n);
    printf("rank:");
    for (int k = 0; k < n_ranks; k++) printf("%s %lld", k ? "," : "", (long long)ranks[k]);
    printf("%s\nalpha:", more_ranks ? ", ..." : "");
    for (int k = 0; k < n_alphas; k++) printf("%s %g", k ? "," : "", (double)alphas[k]);
    printf("%s%s\n", more_alphas ? ", ..." : "",
           s.format == DF_LORA_DIFFUSERS ? " (none stored: the rank, scale 1)" : "");
    /* per model: a count, then its kinds */
    for (int k = 0; k < n_rows; k++) {
        bool first = true;
        for (int j = 0; j < k; j++) first = first && strcmp(rows[j].model, rows[k].model) != 0;
        if (!first) continue;
        int total = 0;
        for (int j = k; j < n_rows; j++)
            if (strcmp(rows[j].model, rows[k].model) == 0) total += rows[j].count;
        printf("%s: %d targets\n", rows[k].model, total);
        for (int j = k; j < n_rows; j++)
            if (strcmp(rows[j].model, rows[k].model) == 0)
                printf("  %-28s %5d  %s\n", rows[j].kind, rows[j].count, rows[j].shape);
    }
    free(rows);
    df_lora_set_free(&s);
    return 0;
}

/* ------------------------------------------------------------------ convert ------------------ */

static int convert(const char *in, const char *out, const char *format) {
    df_lora_format f;
    if (!df_lora_format_parse(format, &f)) {
        df_error(DF_ERR_INVALID, "--format '%s': expected diffusers, kohya or peft", format);
        return df_cli_fail("lora convert");
    }
    const char *inputs[1] = {in};
    if (df_cli_check_output(out, inputs, 1, NULL) != DF_OK) return df_cli_fail("lora convert");
    df_lora_set s;
    if (df_lora_file_read(in, &s) != DF_OK) return df_cli_fail("lora convert");
    int folded = 0;
    for (int i = 0; i < s.n; i++)
        folded += s.entries[i].alpha != (float)s.entries[i].down->shape[0];
    const char *meta[] = {"format", "pt", NULL};
    df_status st = df_lora_file_write(&s, out, f, meta);
    if (st == DF_OK) {
        fprintf(stderr, "%s (%s, %d targets) -> %s (%s)\n", in, df_lora_format_name(s.format), s.n,
                out, format);
        if (f == DF_LORA_DIFFUSERS && folded)
            fprintf(stderr,
                    "note: the diffusers layout has no alpha: alpha / rank was multiplied into "
                    "up for %d targets\n",
                    folded);
    }
    df_lora_set_free(&s);
    return st == DF_OK ? 0 : df_cli_fail("lora convert");
}

/* ------------------------------------------------------------------ merge -------------------- */

/* True when folder `out` (which may not exist yet) is `base` or lies inside it. */
static bool inside(const char *out, const char *base) {
    char rb[PATH_MAX], ro[PATH_MAX], parent[PATH_MAX];
    if (!realpath(base, rb)) return false;
    if (realpath(out, ro)) {
        size_t n = strlen(rb);
        return strncmp(ro, rb, n) == 0 && (ro[n] == 0 || ro[n] == '/');
    }
    snprintf(parent, sizeof parent, "%s", out); /* not made yet: look at its parent */
    char *slash = strrchr(parent, '/');
    if (slash) {
        *slash = 0;
        if (slash == parent) snprintf(parent, sizeof parent, "/");
    } else {
        snprintf(parent, sizeof parent, ".");
    }
    if (!realpath(parent, ro)) return false;
    size_t n = strlen(rb);
    return strncmp(ro, rb, n) == 0 && (ro[n] == 0 || ro[n] == '/');
}

static int merge(int n_pos, char **pos, bool to_f32) {
    int n = n_pos - 2;
    const char *base = pos[0], *out = pos[n_pos - 1];
    df_lora_set *sets = calloc((size_t)n, sizeof *sets);
    const df_lora_set **ptrs = calloc((size_t)n, sizeof *ptrs);
    float *scales = calloc((size_t)n, sizeof *scales);
    int rc = 1, loaded = 0;
    if (!sets || !ptrs || !scales) {
        df_error(DF_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        if (df_cli_split_scale(pos[1 + i], "", &scales[i]) != DF_OK ||
            df_lora_file_read(pos[1 + i], &sets[i]) != DF_OK)
            goto done;
        ptrs[i] = &sets[i];
        loaded++;
    }
    if (inside(out, base)) {
        df_error(DF_ERR_INVALID, "%s: is inside the base folder %s: choose another output", out,
                 base);
        goto done;
    }
    if (df_lora_merge_folder(base, ptrs, scales, n, out, to_f32) != DF_OK) goto done;
    for (int i = 0; i < n; i++)
        fprintf(stderr, "merged %s (%s, %d targets) x %g\n", pos[1 + i],
                df_lora_format_name(sets[i].format), sets[i].n, (double)scales[i]);
    fprintf(stderr, "%s -> %s\n", base, out);
    rc = 0;
done:
    for (int i = 0; i < loaded; i++) df_lora_set_free(&sets[i]);
    free(sets);
    free(ptrs);
    free(scales);
    return rc ? df_cli_fail("lora merge") : 0;
}

int df_cmd_lora(int argc, char **argv) {
    if (argc < 1) {
        usage(stderr);
        return 2;
    }
    const char *verb = argv[0];
    if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    char **pos = calloc((size_t)argc + 1, sizeof *pos);
    int n_pos = 0, rc = 2;
    const char *format = NULL;
    bool to_f32 = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            rc = 0;
            goto done;
        }
        if (strcmp(a, "--format") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "diffusion: lora: --format needs a value\n");
                goto bad;
            }
            format = argv[++i];
        } else if (strcmp(a, "--float") == 0) {
            to_f32 = true;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "diffusion: lora: unknown option '%s'\n", a);
            goto bad;
        } else {
            pos[n_pos++] = argv[i];
        }
    }
    if (strcmp(verb, "inspect") == 0 && n_pos == 1 && !format && !to_f32) {
        rc = inspect(pos[0]);
    } else if (strcmp(verb, "convert") == 0 && n_pos == 2 && format && !to_f32) {
        rc = convert(pos[0], pos[1], format);
    } else if (strcmp(verb, "merge") == 0 && n_pos >= 3 && !format) {
        rc = merge(n_pos, pos, to_f32);
    } else {
        if (strcmp(verb, "inspect") && strcmp(verb, "convert") && strcmp(verb, "merge"))
            fprintf(stderr, "diffusion: lora: unknown verb '%s'\n", verb);
        goto bad;
    }
    goto done;
bad:
    usage(stderr);
    rc = 2;
done:
    free(pos);
    return rc;
}
