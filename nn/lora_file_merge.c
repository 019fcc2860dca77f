/* lora_file_merge.c — LoRA weights merged into a diffusers pipeline folder by plain weight
 * arithmetic (the `diffusion lora merge` command): W += multiplier * (alpha / rank) * up @ down
 * on the named tensors of the unet / text_encoder weight files, as diffusers v0.21.4's
 * fuse_lora computes it (LoRACompatibleLinear._fuse_lora: w_up * alpha / rank, then
 * torch.mm(w_up, w_down), times lora_scale; for a conv, up and down flattened to matrices).
 *
 * Components are streamed tensor by tensor (df_st_save_stream) from the mapped base file, so a
 * full-size UNet is never held in memory twice: untouched tensors are written straight from the
 * mapping, touched ones are read as F32, updated, and converted back. The rest of the folder is
 * copied first (not the weight files being merged), then the merged weight files are written.
 */
#include "nn/lora_file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

df_status df_lora_entry_add_to(const df_lora_entry *e, float multiplier, df_tensor *w,
                               const char *label) {
    const df_tensor *down = e->down, *up = e->up;
    int64_t rank = down->shape[0], out = up->shape[0], in = down->numel / rank;
    char a[64], b[64], c[64];
    bool ok = w->dtype == DF_DTYPE_F32 && w->ndim >= 2 && w->shape[0] == out &&
              w->numel == out * in && w->block == 0;
    /* the trailing dims agree when the ranks of the tensors do */
    if (ok && w->ndim == down->ndim)
        for (int d = 1; d < w->ndim; d++) ok = ok && w->shape[d] == down->shape[d];
    if (ok && w->ndim != down->ndim) /* linear <-> 1x1 conv only */
        ok = (w->ndim == 4 && w->shape[2] == 1 && w->shape[3] == 1) ||
             (down->ndim == 4 && down->shape[2] == 1 && down->shape[3] == 1);
    if (!ok)
        return df_error(DF_ERR_INVALID,
                        "%s: LoRA target %s does not fit: weight %s, down %s, up %s (another "
                        "model's LoRA?)",
                        label, e->target, df_shape_str(w, a, sizeof a),
                        df_shape_str(down, b, sizeof b), df_shape_str(up, c, sizeof c));
    /* scale as upstream: up * alpha / rank first, then the product, then the multiplier */
    float ar = e->alpha / (float)rank;
    const float *U = df_f32(up), *D = df_f32(down);
    float *W = df_f32(w);
    float *row = malloc((size_t)in * sizeof *row);
    if (!row) return df_error(DF_ERR_NOMEM, "%s: out of memory", label);
    for (int64_t o = 0; o < out; o++) {
        for (int64_t i = 0; i < in; i++) row[i] = 0.0f;
        for (int64_t r = 0; r < rank; r++) {
            float u = U[o * rank + r] * ar;
            const float *d = D + r * in;
            for (int64_t i = 0; i < in; i++) row[i] += u * d[i];
        }
        for (int64_t i = 0; i < in; i++) W[o * in + i] += multiplier * row[i];
    }
    free(row);
    return DF_OK;
}

/* ------------------------------------------------------------------ the folder --------------- */

typedef struct comp_spec {
    const char *prefix, *dir, *stem;
} comp_spec;
static const comp_spec comps[] = {{"unet.", "unet", "diffusion_pytorch_model"},
                                  {"text_encoder.", "text_encoder", "model"},
                                  {"text_encoder_2.", "text_encoder_2", "model"}};
#define N_COMPS ((int)(sizeof comps / sizeof comps[0]))

/* Which component a target belongs to (-1: none) and its tensor name "<module>.weight". */
static int target_comp(const char *target, char *tensor, size_t len) {
    for (int c = 0; c < N_COMPS; c++) {
        size_t n = strlen(comps[c].prefix);
        if (strncmp(target, comps[c].prefix, n) == 0) {
            snprintf(tensor, len, "%s.weight", target + n);
            return c;
        }
    }
    return -1;
}

/* The weights file name of component c in base_dir ("<stem>.safetensors", else the fp16
 * variant) into name; false when neither exists. */
static bool comp_file(const char *base_dir, int c, char *name, size_t len, char *path,
                      size_t plen) {
    static const char *const suffixes[] = {".safetensors", ".fp16.safetensors"};
    for (int k = 0; k < 2; k++) {
        snprintf(name, len, "%s%s", comps[c].stem, suffixes[k]);
        snprintf(path, plen, "%s/%s/%s", base_dir, comps[c].dir, name);
        if (access(path, R_OK) == 0) return true;
    }
    return false;
}

static df_status copy_file(const char *src, const char *dst) {
    df_status st = DF_OK;
    int in = open(src, O_RDONLY), out = -1;
    if (in < 0) return df_error(DF_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) {
        st = df_error(DF_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
        goto done;
    }
    char buf[1 << 16];
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0) {
            st = df_error(DF_ERR_IO, "%s: read failed: %s", src, strerror(errno));
            goto done;
        }
        if (r == 0) break;
        for (ssize_t o = 0; o < r;) {
            ssize_t w = write(out, buf + o, (size_t)(r - o));
            if (w < 0) {
                st = df_error(DF_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
                goto done;
            }
            o += w;
        }
    }
done:
    close(in);
    if (out >= 0 && close(out) != 0 && st == DF_OK)
        st = df_error(DF_ERR_IO, "%s: close failed: %s", dst, strerror(errno));
    return st;
}

/* Copies folder src into dst (made), following symlinks, two levels deep at most (a pipeline
 * folder and its component folders), except the files of `skip` (n_skip paths as src spells
 * them: the weights the merge writes itself). */
static df_status copy_tree(const char *src, const char *dst, int depth, const char *const *skip,
                           int n_skip) {
    if (mkdir(dst, 0755) != 0 && errno != EEXIST)
        return df_error(DF_ERR_IO, "%s: cannot create the folder: %s", dst, strerror(errno));
    DIR *d = opendir(src);
    if (!d) return df_error(DF_ERR_IO, "%s: cannot open the folder: %s", src, strerror(errno));
    df_status st = DF_OK;
    struct dirent *de;
    while (st == DF_OK && (de = readdir(d))) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        char s[4096], t[4096];
        snprintf(s, sizeof s, "%s/%s", src, de->d_name);
        snprintf(t, sizeof t, "%s/%s", dst, de->d_name);
        struct stat sb;
        if (stat(s, &sb) != 0) {
            st = df_error(DF_ERR_IO, "%s: %s", s, strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            if (depth < 2) st = copy_tree(s, t, depth + 1, skip, n_skip);
        } else if (S_ISREG(sb.st_mode)) {
            bool skipped = false;
            for (int k = 0; k < n_skip; k++) skipped = skipped || strcmp(skip[k], s) == 0;
            if (!skipped) st = copy_file(s, t);
        }
    }
    closedir(d);
    return st;
}

/* One merged component being streamed. */
typedef struct merge_ctx {
    const df_st_file *f;
    const char *label;
    df_st_entry *entries;
    const df_lora_set *const *sets;
    const float *multipliers;
    int n_sets, comp;
} merge_ctx;

static df_status merge_fill(void *vctx, int i, void *buf, const void **bytes) {
    merge_ctx *m = vctx;
    const df_st_info *info = df_st_find(m->f, m->entries[i].name);
    bool touched = false;
    char tensor[1024];
    for (int s = 0; s < m->n_sets && !touched; s++)
        for (int k = 0; k < m->sets[s]->n && !touched; k++)
            touched =
                target_comp(m->sets[s]->entries[k].target, tensor, sizeof tensor) == m->comp &&
                strcmp(tensor, info->name) == 0;
    if (!touched && info->dtype == m->entries[i].dtype) {
        *bytes = df_st_data(m->f, info);
        return DF_OK;
    }
    df_tensor *w = NULL;
    df_dtype as = touched ? DF_DTYPE_F32 : m->entries[i].dtype;
    df_status st = df_tensor_try_new_owned(as, info->ndim, info->shape, &w);
    if (st != DF_OK) return st;
    if ((st = df_st_read_into(m->f, info->name, w)) != DF_OK) goto done;
    for (int s = 0; touched && s < m->n_sets; s++)
        for (int k = 0; k < m->sets[s]->n; k++) {
            const df_lora_entry *e = &m->sets[s]->entries[k];
            if (target_comp(e->target, tensor, sizeof tensor) != m->comp ||
                strcmp(tensor, info->name) != 0)
                continue;
            if ((st = df_lora_entry_add_to(e, m->multipliers[s], w, m->label)) != DF_OK) goto done;
        }
    {
        df_scope scope = df_scope_begin(); /* owns the converted copy */
        const df_tensor *src = w;
        if (w->dtype != m->entries[i].dtype) src = df_tensor_to(w, m->entries[i].dtype);
        memcpy(buf, src->data, (size_t)src->numel * df_dtype_size(src->dtype));
        df_scope_end(scope);
    }
    *bytes = buf;
done:
    df_tensor_free(w);
    return st;
}

static df_status merge_comp(const char *src, const char *dst, int comp,
                            const df_lora_set *const *sets, const float *multipliers, int n,
                            bool to_f32) {
    df_st_file *f = NULL;
    df_st_entry *entries = NULL;
    const char **mk = NULL, **mv = NULL;
    df_status st = df_st_open(src, &f);
    if (st != DF_OK) return st;
    int nt = df_st_count(f), nm = df_st_metadata_count(f);
    entries = calloc((size_t)nt + 1, sizeof *entries);
    mk = calloc((size_t)nm + 1, sizeof *mk);
    mv = calloc((size_t)nm + 1, sizeof *mv);
    if (!entries || !mk || !mv) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", src);
        goto done;
    }
    for (int i = 0; i < nm; i++) df_st_metadata_at(f, i, &mk[i], &mv[i]);
    for (int i = 0; i < nt; i++) {
        const df_st_info *info = df_st_info_at(f, i);
        if (!info->supported) {
            st = df_error(DF_ERR_UNSUPPORTED,
                          "%s: tensor '%s' has dtype %s, which merge cannot copy", src, info->name,
                          info->dtype_name);
            goto done;
        }
        entries[i].name = info->name;
        entries[i].dtype = info->dtype;
        bool is_f = info->dtype == DF_DTYPE_F16 || info->dtype == DF_DTYPE_BF16 ||
                    info->dtype == DF_DTYPE_F64;
        if (to_f32 && is_f) entries[i].dtype = DF_DTYPE_F32;
        entries[i].ndim = info->ndim;
        memcpy(entries[i].shape, info->shape, sizeof info->shape);
    }
    merge_ctx m = {.f = f,
                   .label = src,
                   .entries = entries,
                   .sets = sets,
                   .multipliers = multipliers,
                   .n_sets = n,
                   .comp = comp};
    st = df_st_save_stream(dst, nt, entries, nm, mk, mv, merge_fill, &m, true);
done:
    free(entries);
    free(mk);
    free(mv);
    df_st_close(f);
    return st;
}

df_status df_lora_merge_folder(const char *base_dir, const df_lora_set *const *sets,
                               const float *multipliers, int n, const char *out_dir, bool to_f32) {
    char names[N_COMPS][256], paths[N_COMPS][4096];
    bool have[N_COMPS], used[N_COMPS] = {false};
    df_st_file *files[N_COMPS] = {NULL};
    df_status st = DF_OK;
    for (int c = 0; c < N_COMPS; c++)
        have[c] = comp_file(base_dir, c, names[c], sizeof names[c], paths[c], sizeof paths[c]);
    /* every target must name a tensor of the base: list those that do not */
    char list[1024] = "";
    size_t o = 0;
    int missing = 0, total = 0;
    for (int s = 0; s < n; s++)
        for (int k = 0; k < sets[s]->n; k++) {
            const char *target = sets[s]->entries[k].target;
            char tensor[1024];
            int c = target_comp(target, tensor, sizeof tensor);
            total++;
            bool found = false;
            if (c >= 0 && have[c]) {
                if (!files[c] && (st = df_st_open(paths[c], &files[c])) != DF_OK) goto done;
                found = df_st_find(files[c], tensor) != NULL;
                used[c] = used[c] || found;
            }
            if (!found && missing++ < 5 && o < sizeof list)
                o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", missing > 1 ? ", " : "",
                                      target);
        }
    if (missing) {
        st = df_error(DF_ERR_NOTFOUND,
                      "%s: %d of %d LoRA targets match no weight of the pipeline: %s%s", base_dir,
                      missing, total, list, missing > 5 ? ", ..." : "");
        goto done;
    }
    /* shapes first, so that a wrong LoRA leaves no folder behind */
    for (int s = 0; s < n; s++)
        for (int k = 0; k < sets[s]->n; k++) {
            const df_lora_entry *e = &sets[s]->entries[k];
            char tensor[1024];
            int c = target_comp(e->target, tensor, sizeof tensor);
            const df_st_info *info = df_st_find(files[c], tensor);
            df_tensor *probe = NULL;
            if ((st = df_tensor_try_new_owned(DF_DTYPE_F32, info->ndim, info->shape, &probe)) !=
                DF_OK)
                goto done;
            memset(probe->data, 0, (size_t)probe->numel * sizeof(float));
            st = df_lora_entry_add_to(e, 0.0f, probe, paths[c]);
            df_tensor_free(probe);
            if (st != DF_OK) goto done;
        }
    DIR *d = opendir(out_dir);
    if (d) {
        struct dirent *de;
        int entries = 0;
        while ((de = readdir(d)))
            entries += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
        closedir(d);
        if (entries) {
            st = df_error(DF_ERR_INVALID, "%s: the output folder exists and is not empty", out_dir);
            goto done;
        }
    }
    const char *skip[N_COMPS];
    int n_skip = 0;
    for (int c = 0; c < N_COMPS; c++)
        if (used[c]) skip[n_skip++] = paths[c];
    if ((st = copy_tree(base_dir, out_dir, 0, skip, n_skip)) != DF_OK) goto done;
    for (int c = 0; c < N_COMPS; c++) {
        if (!used[c]) continue;
        char dst[4096];
        snprintf(dst, sizeof dst, "%s/%s/%s", out_dir, comps[c].dir, names[c]);
        if ((st = merge_comp(paths[c], dst, c, sets, multipliers, n, to_f32)) != DF_OK) goto done;
    }
done:
    for (int c = 0; c < N_COMPS; c++) df_st_close(files[c]);
    return st;
}
