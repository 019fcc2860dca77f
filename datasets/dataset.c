/* dataset.c — dataset sources: an image folder with metadata.jsonl (Hugging Face ImageFolder),
 * a folder of images with sidecar caption files (kohya sd-scripts), and HDF5 packs
 * (source_hdf5.c). Opening lists files and captions; images are decoded on demand, from any
 * thread.
 *
 * Samples: index i of an epoch (i < images * repeats) is image i % images. Its caption is the
 * override when one is set, else default_caption when the image has none (an empty caption),
 * else the caption in caption_template's "{}"; then replaced by "" with probability
 * caption_dropout (one uniform draw from the sample's generator, taken whether or not dropout
 * is on, so enabling it does not shift the other random draws). Captions are stored as read
 * (a pack keeps them so), the template and default apply when a sample is drawn.
 */
#include "datasets/datasets_impl.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

df_dataset_opts df_dataset_opts_default(void) {
    return (df_dataset_opts){.caption_column = "text", .caption_ext = ".txt", .repeats = 1};
}

static char *path_join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    DF_ASSERT(p, "out of memory");
    memcpy(p, a, la);
    p[la] = '/';
    memcpy(p + la + 1, b, lb + 1);
    return p;
}

static char *xstrdup(const char *s) {
    char *p = strdup(s ? s : "");
    DF_ASSERT(p, "out of memory");
    return p;
}

static bool is_image_name(const char *n) {
    const char *dot = strrchr(n, '.');
    return dot && (strcasecmp(dot, ".png") == 0 || strcasecmp(dot, ".jpg") == 0 ||
                   strcasecmp(dot, ".jpeg") == 0);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A caption file's text without trailing whitespace; "" when the file does not exist. */
static df_status read_caption(const char *path, char **out) {
    char *buf;
    size_t n;
    df_status s = df__read_file(path, &buf, &n);
    if (s == DF_ERR_NOTFOUND) {
        df_error_clear();
        *out = xstrdup("");
        return DF_OK;
    }
    if (s != DF_OK) return s;
    if (memchr(buf, '\0', n)) {
        free(buf);
        return df_error(DF_ERR_FORMAT, "%s: caption file contains a NUL byte", path);
    }
    while (n > 0 &&
           (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = '\0';
    *out = buf;
    return DF_OK;
}

static void add_bad(df_dataset *ds, const char *msg) {
    ds->bad = realloc(ds->bad, sizeof(char *) * (size_t)(ds->n_bad + 1));
    DF_ASSERT(ds->bad, "out of memory");
    ds->bad[ds->n_bad++] = xstrdup(msg);
}

/* False, with a warning kept in the bad list, when `name` in the dataset exists and is not a
 * regular file (a FIFO named x.png would block the reader; a device would never end). A
 * missing file stays: reading it reports it. */
static bool regular_or_missing(df_dataset *ds, const char *name) {
    char *p = path_join(ds->root, name);
    struct stat st;
    bool ok = stat(p, &st) != 0 || S_ISREG(st.st_mode);
    if (!ok) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s: %s, not a regular file", p, df__file_kind(st.st_mode));
        add_bad(ds, msg);
    }
    free(p);
    return ok;
}

static df_status open_sidecar(df_dataset *ds) {
    DIR *d = opendir(ds->root);
    if (!d) return df_error(DF_ERR_IO, "%s: cannot open directory: %m", ds->root);
    int64_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !is_image_name(e->d_name)) continue;
        if (!regular_or_missing(ds, e->d_name)) continue;
        if (ds->n == cap) {
            cap = cap ? 2 * cap : 64;
            ds->files = realloc(ds->files, sizeof(char *) * (size_t)cap);
            DF_ASSERT(ds->files, "out of memory");
        }
        ds->files[ds->n++] = xstrdup(e->d_name);
    }
    closedir(d);
    qsort(ds->files, (size_t)ds->n, sizeof(char *), cmp_str);
    if (ds->n == 0) ds->files = calloc(1, sizeof(char *));
    ds->captions = calloc((size_t)ds->n + 1, sizeof(char *));
    DF_ASSERT(ds->captions, "out of memory");
    for (int64_t i = 0; i < ds->n; i++) {
        const char *f = ds->files[i];
        const char *dot = strrchr(f, '.');
        size_t stem = (size_t)(dot - f), le = strlen(ds->caption_ext);
        char *rel = malloc(stem + le + 1);
        DF_ASSERT(rel, "out of memory");
        memcpy(rel, f, stem);
        memcpy(rel + stem, ds->caption_ext, le + 1);
        char *p = path_join(ds->root, rel);
        free(rel);
        df_status s = read_caption(p, &ds->captions[i]);
        free(p);
        if (s != DF_OK && !ds->opts.skip_bad_images) return s;
        if (s != DF_OK) add_bad(ds, df_last_error()), ds->captions[i] = NULL;
    }
    /* drop the images whose caption file was unreadable */
    int64_t k = 0;
    for (int64_t i = 0; i < ds->n; i++) {
        if (ds->captions[i]) {
            ds->files[k] = ds->files[i];
            ds->captions[k++] = ds->captions[i];
        } else {
            free(ds->files[i]);
        }
    }
    ds->n = k;
    return DF_OK;
}

static df_status open_metadata(df_dataset *ds, const char *meta_path) {
    char *buf;
    size_t len;
    DF_TRY(df__read_file(meta_path, &buf, &len));
    df_meta_entry *es;
    int64_t n;
    df_status s = df_meta_parse(buf, len, meta_path, ds->caption_column, &es, &n,
                                ds->opts.skip_bad_images ? &ds->bad : NULL, &ds->n_bad);
    free(buf);
    if (s != DF_OK) return s;
    ds->files = calloc((size_t)n + 1, sizeof(char *));
    ds->captions = calloc((size_t)n + 1, sizeof(char *));
    DF_ASSERT(ds->files && ds->captions, "out of memory");
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!regular_or_missing(ds, es[i].file_name)) {
            free(es[i].file_name);
            free(es[i].caption);
            continue;
        }
        ds->files[k] = es[i].file_name;
        ds->captions[k++] = es[i].caption;
    }
    ds->n = k;
    free(es);
    return DF_OK;
}

/* Counts the images without a caption; with require_captions and neither an override nor a
 * default caption, any is an error naming the count and the first; with a default caption the
 * count is reported on stderr. */
static df_status check_captions(df_dataset *ds) {
    int64_t first = -1;
    ds->n_uncaptioned = 0;
    for (int64_t i = 0; i < ds->n; i++)
        if (!ds->captions[i][0] && ds->n_uncaptioned++ == 0) first = i;
    if (ds->n_uncaptioned == 0 || !ds->opts.require_captions || ds->caption_override) return DF_OK;
    if (ds->default_caption) {
        fprintf(stderr,
                "note: %s: %lld of %lld images have no caption; they use default_caption "
                "\"%s\"\n",
                ds->root, (long long)ds->n_uncaptioned, (long long)ds->n, ds->default_caption);
        return DF_OK;
    }
    const char *where = ds->kind == DF_DATASET_METADATA  ? "its metadata.jsonl column"
                        : ds->kind == DF_DATASET_SIDECAR ? "a sidecar caption file"
                                                         : "its caption in the pack";
    return df_error(DF_ERR_FORMAT,
                    "%s: %lld of %lld images have no caption (the first: %s, caption column "
                    "\"%s\"): give each %s, or set default_caption",
                    ds->root, (long long)ds->n_uncaptioned, (long long)ds->n, ds->files[first],
                    ds->caption_column, where);
}

df_status df_dataset_open(const char *path, const df_dataset_opts *opts, df_dataset **out) {
    *out = NULL;
    df_dataset_opts def = df_dataset_opts_default();
    if (!opts) opts = &def;
    if (opts->repeats < 1)
        return df_error(DF_ERR_INVALID, "%s: repeats must be >= 1 (got %d)", path, opts->repeats);
    if (!(opts->caption_dropout >= 0.0f && opts->caption_dropout <= 1.0f))
        return df_error(DF_ERR_INVALID, "%s: caption_dropout must be in [0, 1]", path);
    if (opts->caption_template && *opts->caption_template && !strstr(opts->caption_template, "{}"))
        return df_error(DF_ERR_INVALID,
                        "%s: caption_template \"%s\" has no {} where the caption goes", path,
                        opts->caption_template);
    struct stat st;
    if (stat(path, &st) != 0) return df_error(DF_ERR_NOTFOUND, "%s: %m", path);
    df_dataset *ds = calloc(1, sizeof *ds);
    DF_ASSERT(ds, "out of memory");
    ds->opts = *opts;
    ds->caption_column = xstrdup(opts->caption_column ? opts->caption_column : "text");
    ds->caption_ext = xstrdup(opts->caption_ext ? opts->caption_ext : ".txt");
    ds->caption_override = opts->caption_override ? xstrdup(opts->caption_override) : NULL;
    ds->caption_template =
        opts->caption_template && *opts->caption_template ? xstrdup(opts->caption_template) : NULL;
    ds->default_caption = opts->default_caption ? xstrdup(opts->default_caption) : NULL;
    ds->opts.caption_column = ds->caption_column;
    ds->opts.caption_ext = ds->caption_ext;
    ds->opts.caption_override = ds->caption_override;
    ds->opts.caption_template = ds->caption_template;
    ds->opts.default_caption = ds->default_caption;
    ds->root = xstrdup(path);
    df_status s;
    if (S_ISDIR(st.st_mode)) {
        char *meta = path_join(path, "metadata.jsonl");
        struct stat ms;
        if (stat(meta, &ms) == 0) {
            ds->kind = DF_DATASET_METADATA;
            s = open_metadata(ds, meta);
        } else {
            ds->kind = DF_DATASET_SIDECAR;
            s = open_sidecar(ds);
        }
        free(meta);
    } else if (!S_ISREG(st.st_mode)) {
        s = df_error(DF_ERR_FORMAT, "%s: %s, neither a directory nor an HDF5 pack", path,
                     df__file_kind(st.st_mode));
    } else if (df__is_hdf5(path)) {
        ds->kind = DF_DATASET_HDF5;
        s = df__h5_open(path, &ds->h5, &ds->n, &ds->files, &ds->captions);
    } else {
        s = df_error(DF_ERR_FORMAT, "%s: neither a directory nor an HDF5 pack", path);
    }
    if (s == DF_OK) s = check_captions(ds);
    if (s != DF_OK) {
        df_dataset_free(ds);
        return s;
    }
    for (int64_t i = 0; i < ds->n_bad; i++) fprintf(stderr, "warning: skipped %s\n", ds->bad[i]);
    *out = ds;
    return DF_OK;
}

void df_dataset_free(df_dataset *ds) {
    if (!ds) return;
    if (ds->h5) df__h5_close(ds->h5);
    for (int64_t i = 0; i < ds->n; i++) {
        if (ds->files) free(ds->files[i]);
        if (ds->captions) free(ds->captions[i]);
    }
    free(ds->files);
    free(ds->captions);
    for (int64_t i = 0; i < ds->n_bad; i++) free(ds->bad[i]);
    free(ds->bad);
    free(ds->root);
    free(ds->caption_column);
    free(ds->caption_ext);
    free(ds->caption_override);
    free(ds->caption_template);
    free(ds->default_caption);
    free(ds);
}

/* "<real folder>/<name>": `path` with its folder resolved (the file itself need not exist), or
 * NULL when the folder does not exist. malloc'd. */
static char *canonical(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : xstrdup(".");
    DF_ASSERT(dir, "out of memory");
    char *real = realpath(dir, NULL);
    free(dir);
    if (!real) return NULL;
    char *p = path_join(real, slash ? slash + 1 : path);
    free(real);
    return p;
}

/* True when `path` names the same file as `other` (an existing file, or the same name in the
 * same real folder). */
static bool same_target(const char *path, const char *canon_path, const char *other) {
    if (df_same_file(path, other)) return true;
    char *c = canonical(other);
    bool same = c && canon_path && strcmp(c, canon_path) == 0;
    free(c);
    return same;
}

df_status df__dataset_check_output(const df_dataset *ds, const char *out) {
    if (df_same_file(out, ds->root))
        return df_error(DF_ERR_INVALID, "%s: is the dataset being read: choose another output",
                        out);
    if (ds->kind == DF_DATASET_HDF5) return DF_OK;
    char *canon = canonical(out);
    df_status s = DF_OK;
    const char *base = strrchr(out, '/');
    base = base ? base + 1 : out;
    /* Only the same directory entry is at risk: the rename replaces that entry, while a hard
     * link or a symlink elsewhere keeps the old bytes. So entries of another base name are
     * skipped without a system call (a million-image metadata.jsonl stays fast). */
    for (int64_t i = 0; i < ds->n && s == DF_OK; i++) {
        const char *eb = strrchr(ds->files[i], '/');
        if (strcmp(eb ? eb + 1 : ds->files[i], base) != 0) continue;
        char *p = path_join(ds->root, ds->files[i]);
        if (same_target(out, canon, p))
            s = df_error(DF_ERR_INVALID,
                         "%s: is the dataset's image '%s' (an input): choose another output", out,
                         ds->files[i]);
        free(p);
    }
    /* a new file inside the folder that the next open would read */
    size_t lb = strlen(base), le = strlen(ds->caption_ext);
    bool readable_name = is_image_name(base) || strcmp(base, "metadata.jsonl") == 0 ||
                         (lb > le && strcmp(base + lb - le, ds->caption_ext) == 0);
    char *in_root = path_join(ds->root, base);
    if (s == DF_OK && readable_name && same_target(out, canon, in_root))
        s = df_error(DF_ERR_INVALID,
                     "%s: lies in the dataset folder %s, which reads files named like it: choose "
                     "another output",
                     out, ds->root);
    free(in_root);
    free(canon);
    return s;
}

df_dataset_kind df_dataset_kind_of(const df_dataset *ds) {
    return ds->kind;
}

int64_t df_dataset_bad_entries(const df_dataset *ds) {
    return ds->n_bad;
}

const char *df_dataset_bad_entry(const df_dataset *ds, int64_t i) {
    DF_ASSERT(i >= 0 && i < ds->n_bad, "df_dataset_bad_entry: index %lld out of %lld", (long long)i,
              (long long)ds->n_bad);
    return ds->bad[i];
}

const char *df_dataset_root(const df_dataset *ds) {
    return ds->root;
}

int64_t df_dataset_images(const df_dataset *ds) {
    return ds->n;
}

int64_t df_dataset_len(const df_dataset *ds) {
    return ds->n * ds->opts.repeats;
}

const char *df_dataset_file(const df_dataset *ds, int64_t i) {
    DF_ASSERT(i >= 0 && i < ds->n, "df_dataset_file: index %lld out of %lld", (long long)i,
              (long long)ds->n);
    return ds->files[i];
}

const char *df_dataset_caption(const df_dataset *ds, int64_t i) {
    DF_ASSERT(i >= 0 && i < ds->n, "df_dataset_caption: index %lld out of %lld", (long long)i,
              (long long)ds->n);
    return ds->captions[i];
}

int64_t df_dataset_uncaptioned(const df_dataset *ds) {
    return ds->n_uncaptioned;
}

/* `tpl` with every "{}" replaced by `cap`. malloc'd. */
static char *apply_template(const char *tpl, const char *cap) {
    size_t lc = strlen(cap), len = 0, n_slots = 0;
    for (const char *p = tpl; (p = strstr(p, "{}")); p += 2) n_slots++;
    len = strlen(tpl) - 2 * n_slots + lc * n_slots;
    char *out = malloc(len + 1), *o = out;
    DF_ASSERT(out, "out of memory");
    for (const char *p = tpl; *p;) {
        if (p[0] == '{' && p[1] == '}') {
            memcpy(o, cap, lc);
            o += lc;
            p += 2;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

char *df_dataset_sample_caption(const df_dataset *ds, int64_t i) {
    DF_ASSERT(i >= 0 && i < ds->n, "df_dataset_sample_caption: index %lld out of %lld",
              (long long)i, (long long)ds->n);
    if (ds->caption_override) return xstrdup(ds->caption_override);
    if (!ds->captions[i][0]) return xstrdup(ds->default_caption ? ds->default_caption : "");
    if (ds->caption_template) return apply_template(ds->caption_template, ds->captions[i]);
    return xstrdup(ds->captions[i]);
}

df_status df_dataset_image(const df_dataset *ds, int64_t i, const df_decode_opts *dec,
                           df_tensor **out) {
    DF_ASSERT(i >= 0 && i < ds->n, "df_dataset_image: index %lld out of %lld", (long long)i,
              (long long)ds->n);
    *out = NULL;
    if (ds->kind == DF_DATASET_HDF5) {
        df_tensor *rgb;
        df_scope_pause pause = df_scope_suspend(); /* temporaries freed here are ours */
        df_status s = df__h5_read(ds->h5, ds->root, i, &rgb);
        df_decode_opts def = df_decode_opts_default();
        df_tensor *img = s == DF_OK ? df__image_finish(rgb, dec ? dec : &def) : NULL;
        df_scope_resume(pause);
        if (s != DF_OK) return s;
        *out = df_tensor_adopt(img);
        return DF_OK;
    }
    char *p = path_join(ds->root, ds->files[i]);
    df_status s = df_image_read(p, dec, out);
    free(p);
    return s;
}

df_status df_dataset_get(const df_dataset *ds, int64_t index, const df_decode_opts *dec,
                         df_philox *g, df_tensor **img, char **caption) {
    DF_ASSERT(index >= 0 && index < df_dataset_len(ds), "df_dataset_get: index %lld out of %lld",
              (long long)index, (long long)df_dataset_len(ds));
    *img = NULL;
    *caption = NULL;
    int64_t i = index % ds->n;
    char *cap = df_dataset_draw_caption(ds, index, g);
    df_status s = df_dataset_image(ds, i, dec, img);
    if (s != DF_OK) {
        free(cap);
        return s;
    }
    *caption = cap;
    return DF_OK;
}

char *df_dataset_draw_caption(const df_dataset *ds, int64_t index, df_philox *g) {
    DF_ASSERT(index >= 0 && index < df_dataset_len(ds),
              "df_dataset_draw_caption: index %lld out of %lld", (long long)index,
              (long long)df_dataset_len(ds));
    float u = df_philox_uniform(g);
    return u < ds->opts.caption_dropout ? xstrdup("")
                                        : df_dataset_sample_caption(ds, index % ds->n);
}
