/* model_card.c — the model card (README.md) every exported model carries: what it is (recipe),
 * what it was trained from (base model, data sets), how (the run's config), and its licence.
 * A base model's licence passes on: a LICENSE / LICENSE.md / LICENSE.txt file in the base folder
 * (or beside a single-file base) is copied into the export, and a `license:` line in the base's
 * README.md front matter (Hugging Face model cards: `license: creativeml-openrail-m`) names it.
 * A base that names no licence gets a warning at export: its terms are unknown.
 */
#include "train/train.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const LICENSE_FILES[] = {"LICENSE", "LICENSE.md", "LICENSE.txt", "license.txt",
                                            "LICENSE.rst"};

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The folder of a base path: itself, or the folder holding a single file. */
static void base_folder(const char *base, char *out, size_t len) {
    struct stat st;
    snprintf(out, len, "%s", base);
    if (stat(base, &st) == 0 && S_ISDIR(st.st_mode)) return;
    char *slash = strrchr(out, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(out, len, ".");
}

/* The `license:` value of DIR/README.md's front matter (--- ... ---) into out ("" if none). */
static void readme_license(const char *dir, char *out, size_t len) {
    out[0] = 0;
    char path[DF_PATH_MAX + 16], line[512];
    snprintf(path, sizeof path, "%s/README.md", dir);
    FILE *f = fopen(path, "r");
    if (!f) return;
    bool in_front = false;
    for (int n = 0; fgets(line, sizeof line, f) && n < 200; n++) {
        if (strncmp(line, "---", 3) == 0) {
            if (in_front) break;
            in_front = n == 0;
            if (!in_front) break;
            continue;
        }
        if (in_front && strncmp(line, "license:", 8) == 0) {
            char *v = line + 8;
            while (*v == ' ' || *v == '\t' || *v == '"' || *v == '\'') v++;
            size_t k = strcspn(v, "\"'\r\n");
            while (k && isspace((unsigned char)v[k - 1])) k--;
            snprintf(out, len, "%.*s", (int)k, v);
            break;
        }
    }
    fclose(f);
}

/* Copies src to dst (a licence text: small). */
static df_status copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return df_error(DF_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return df_error(DF_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    }
    char buf[8192];
    size_t n;
    bool bad = false;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) bad |= fwrite(buf, 1, n, out) != n;
    bad |= ferror(in) != 0;
    fclose(in);
    if (fclose(out) != 0 || bad) return df_error(DF_ERR_IO, "%s: copy from %s failed", dst, src);
    return DF_OK;
}

df_status df_model_card_license(const char *base, char *name, size_t name_len, char *file,
                                size_t file_len) {
    name[0] = file[0] = 0;
    if (!base || !base[0]) return DF_OK;
    char dir[DF_PATH_MAX];
    base_folder(base, dir, sizeof dir);
    readme_license(dir, name, name_len);
    for (size_t i = 0; i < sizeof LICENSE_FILES / sizeof LICENSE_FILES[0]; i++) {
        char path[DF_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/%s", dir, LICENSE_FILES[i]);
        if (!is_file(path)) continue;
        snprintf(file, file_len, "%s", path);
        if (!name[0]) { /* the first non-empty line names it ("CreativeML Open RAIL-M", ...) */
            FILE *f = fopen(path, "r");
            char line[256];
            while (f && fgets(line, sizeof line, f)) {
                char *v = line;
                while (isspace((unsigned char)*v) || *v == '#') v++;
                size_t k = strcspn(v, "\r\n");
                if (k) {
                    snprintf(name, name_len, "%.*s", (int)(k > 120 ? 120 : k), v);
                    break;
                }
            }
            if (f) fclose(f);
        }
        break;
    }
    return DF_OK;
}

df_status df_model_card_write(const char *dir, const df_model_card *card) {
    char license[256], license_file[DF_PATH_MAX];
    DF_TRY(df_model_card_license(card->base_model, license, sizeof license, license_file,
                                 sizeof license_file));
    const char *copied = NULL;
    if (license_file[0]) {
        const char *leaf = strrchr(license_file, '/');
        leaf = leaf ? leaf + 1 : license_file;
        char dst[DF_PATH_MAX + 64];
        snprintf(dst, sizeof dst, "%s/%s", dir, leaf);
        DF_TRY(copy_file(license_file, dst));
        copied = leaf;
    }
    bool has_base = card->base_model && card->base_model[0];
    if (has_base && !license[0])
        fprintf(stderr,
                "warning: export: the base model %s names no licence (no LICENSE file, no "
                "'license:' in its README.md); the model card says 'unknown': check the base "
                "model's terms before sharing %s\n",
                card->base_model, dir);
    char path[DF_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/README.md", dir);
    FILE *f = fopen(path, "w");
    if (!f) return df_error(DF_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    const char *base_name = NULL;
    if (has_base) {
        base_name = strrchr(card->base_model, '/');
        base_name = base_name && base_name[1] ? base_name + 1 : card->base_model;
    }
    fprintf(f, "---\nlicense: %s\nlibrary_name: diffusers\ntags:\n- diffusion.c\n- %s\n",
            license[0] ? license : (has_base ? "unknown" : "other"),
            card->recipe ? card->recipe : "diffusion");
    if (base_name) fprintf(f, "base_model: %s\n", base_name);
    fprintf(f, "---\n\n# %s model trained with diffusion.c\n\n", card->recipe ? card->recipe : "A");
    fprintf(f, "- Recipe: `%s`\n", card->recipe ? card->recipe : "(unknown)");
    fprintf(f, "- Base model: %s\n", base_name ? base_name : "none (trained from scratch)");
    for (int i = 0; i < card->n_datasets; i++)
        fprintf(f, "- Training data: `%s`\n", card->datasets[i] ? card->datasets[i] : "");
    fprintf(f, "\n## Licence\n\n");
    if (license[0])
        fprintf(f,
                "This model is derived from %s and keeps its licence: **%s**%s%s%s. Its use "
                "restrictions apply to this model and to its outputs.\n",
                base_name, license, copied ? " (the text is in `" : "", copied ? copied : "",
                copied ? "`)" : "");
    else if (has_base)
        fprintf(f,
                "The base model (%s) names no licence: its terms are unknown. Check them "
                "before sharing or using this model.\n",
                base_name);
    else
        fprintf(f, "Trained from scratch on the data above; the licence is the data owners' and "
                   "the trainer's to state.\n");
    fprintf(f, "\n## Intended use and limitations\n\nA research model. Its outputs can reflect "
               "the biases and content of its training data; it has no safety checker of its "
               "own.\n");
    if (card->config) {
        fprintf(f, "\n## Training configuration\n\n```yaml\n");
        df_config_write(card->config, f, false);
        fprintf(f, "```\n");
    }
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) return df_error(DF_ERR_IO, "%s: write failed", path);
    return DF_OK;
}
