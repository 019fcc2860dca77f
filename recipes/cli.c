/* cli.c — helpers shared by the subcommands: the one-line failure, and the check that an
 * output path is not one of the command's inputs. */
#include "recipes/cli.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int df_cli_fail(const char *what) {
    fprintf(stderr, "diffusion: %s: %s\n", what, df_last_error());
    return 1;
}

/* realpath of the folder holding `path` (which need not exist), or NULL. malloc'd. */
static char *real_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return NULL;
    char *real = realpath(dir, NULL);
    free(dir);
    return real;
}

/* Names the diffusers loaders look for in a model folder (weights, shards and their index,
 * configs): a new file with such a name would be read as part of the model next time. */
static bool loader_reads_name(const char *base) {
    static const char *const prefixes[] = {"diffusion_pytorch_model.", "model.", "pytorch_model."};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
        if (strncmp(base, prefixes[i], strlen(prefixes[i])) == 0) return true;
    size_t n = strlen(base);
    return (n >= 11 && strcmp(base + n - 11, "config.json") == 0) ||
           strcmp(base, "model_index.json") == 0;
}

/* Walks `dir` (depth more levels of subfolders) for a file that is `out`, or a folder that holds
 * `out` under a name the model loaders read. */
static df_status check_dir(const char *out, const char *out_parent, const char *dir, int depth) {
    df_status s = DF_OK;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && s == DF_OK && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
        struct stat st;
        if (stat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode) && depth > 0)
            s = check_dir(out, out_parent, p, depth - 1);
        else if (S_ISREG(st.st_mode) && df_same_file(out, p))
            s = df_error(DF_ERR_INVALID,
                         "%s: is the model's file %s (an input): choose another output", out, p);
    }
    if (d) closedir(d);
    if (s != DF_OK) return s;
    char *real = realpath(dir, NULL);
    if (!real) return DF_OK; /* the loader reports a missing folder */
    const char *base = strrchr(out, '/');
    base = base ? base + 1 : out;
    if (out_parent && strcmp(real, out_parent) == 0 && loader_reads_name(base))
        s = df_error(DF_ERR_INVALID,
                     "%s: lies in the model folder %s, which reads files of this name: choose "
                     "another output",
                     out, dir);
    free(real);
    return s;
}

df_status df_cli_check_output(const char *out, const char *const *inputs, int n_inputs,
                              const char *model_dir) {
    if (!out) return DF_OK;
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] && df_same_file(out, inputs[i]))
            return df_error(DF_ERR_INVALID, "%s: is the input %s: choose another output", out,
                            inputs[i]);
    if (!model_dir) return DF_OK;
    struct stat st;
    if (stat(out, &st) == 0 && S_ISDIR(st.st_mode))
        return df_error(DF_ERR_INVALID, "%s: is a folder, not a file name", out);
    char *parent = real_parent(out);
    df_status s = check_dir(out, parent, model_dir, 2);
    free(parent);
    return s;
}
