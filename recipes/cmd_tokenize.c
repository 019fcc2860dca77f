/* cmd_tokenize.c — `diffusion tokenize TOKENIZER_DIR [--max-length N] TEXT...`: prints one JSON
 * line per text, {"input_ids": [...], "attention_mask": [...]}, as transformers'
 * CLIPTokenizer(text, padding="max_length", max_length=N, truncation=True) gives them (N
 * defaults to the folder's model_max_length). The tokenizer is nn/tokenizer.h's.
 */
#include "nn/tokenizer.h"
#include "recipes/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: diffusion tokenize TOKENIZER_DIR [--max-length N] TEXT...\n");
}

int df_cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL;
    long max_length = 0;
    char **texts = calloc((size_t)argc + 1, sizeof *texts);
    int n_texts = 0, rc = 2;
    df_clip_tokenizer *t = NULL;
    int64_t *ids = NULL, *mask = NULL;
    if (!texts) return 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            rc = 0;
            goto done;
        }
        if (strcmp(a, "--max-length") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "diffusion: tokenize: --max-length needs a value\n");
                usage(stderr);
                goto done;
            }
            const char *v = argv[++i];
            char *end;
            errno = 0;
            max_length = strtol(v, &end, 10);
            if (*end || end == v || errno || max_length < 2 || max_length > (1 << 20)) {
                fprintf(stderr,
                        "diffusion: tokenize: --max-length: expected an integer in "
                        "[2, 1048576]; got '%s'\n",
                        v);
                goto done;
            }
        } else if (strcmp(a, "--") == 0) {
            while (++i < argc) texts[n_texts++] = argv[i];
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "diffusion: tokenize: unknown option '%s'\n", a);
            usage(stderr);
            goto done;
        } else if (!dir) {
            dir = a;
        } else {
            texts[n_texts++] = argv[i];
        }
    }
    if (!dir || !n_texts) {
        usage(stderr);
        goto done;
    }
    rc = 1;
    if (df_clip_tokenizer_load(dir, &t) != DF_OK) {
        rc = df_cli_fail("tokenize");
        goto done;
    }
    int len = max_length ? (int)max_length : df_clip_tokenizer_max_length(t);
    ids = malloc((size_t)len * sizeof *ids);
    mask = malloc((size_t)len * sizeof *mask);
    if (!ids || !mask) {
        fprintf(stderr, "diffusion: tokenize: out of memory\n");
        goto done;
    }
    for (int k = 0; k < n_texts; k++) {
        if (df_clip_tokenizer_call(t, texts[k], len, ids, mask) != DF_OK) {
            rc = df_cli_fail("tokenize");
            goto done;
        }
        printf("{\"input_ids\": [");
        for (int i = 0; i < len; i++) printf(i ? ", %lld" : "%lld", (long long)ids[i]);
        printf("], \"attention_mask\": [");
        for (int i = 0; i < len; i++) printf(i ? ", %lld" : "%lld", (long long)mask[i]);
        printf("]}\n");
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    free(texts);
    free(ids);
    free(mask);
    df_clip_tokenizer_free(t);
    return rc;
}
