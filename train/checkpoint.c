/* checkpoint.c — crash-safe checkpoint folders (design §8).
 *
 * Writing: every file goes into OUTPUT/.checkpoint-<step>.tmp/, then df_ckpt_commit fsyncs
 * each file, writes DONE (one line per file: CRC-32C, size, relative path) and fsyncs it and
 * every folder, renames the folder to OUTPUT/checkpoint-<step>/ and fsyncs OUTPUT. A crash,
 * kill or full disk at any moment leaves every earlier checkpoint untouched: the newest complete
 * one is the newest folder whose DONE verifies.
 * Ownership: DONE's header names the run (run_id, see run_dir.c) that wrote the checkpoint.
 * Rotation (checkpoints_total_limit), after the commit, only removes checkpoints of the same
 * run that are older than the one just committed and complete (DONE present, every file of
 * the listed size; the full checksums are read on resume, not on every rotation), keeping the
 * newest `keep_last` with this one. A checkpoint of another run or a damaged one is reported
 * and left alone, and does not count. A folder is removed by first renaming it to
 * .checkpoint-<step>.removing (so a kill mid-removal never leaves a half checkpoint under its
 * real name); leftovers of that name are removed at the next rotation.
 * Reading: df_ckpt_verify recomputes every checksum; df_ckpt_find_latest walks the run's
 * checkpoints newest first and falls back past damaged ones with a warning.
 */
#include "train/train.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DONE_MAGIC "diffusion-checkpoint 1"

df_status df_pathf(char *buf, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) return df_error(DF_ERR_INVALID, "path too long: %.200s...", buf);
    return DF_OK;
}

static df_status fsync_path(const char *path, bool dir) {
    int fd = open(path, dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
    if (fd < 0) return df_error(DF_ERR_IO, "%s: open for fsync failed: %s", path, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0) return df_error(DF_ERR_IO, "%s: fsync failed: %s", path, strerror(err));
    return DF_OK;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

df_status df_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? DF_OK : df_error(DF_ERR_IO, "%s: %s", path, strerror(errno));
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return df_error(DF_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    return DF_OK;
}

df_status df_mkdirs(const char *path) {
    char buf[DF_PATH_MAX];
    DF_TRY(df_pathf(buf, sizeof buf, "%s", path));
    for (char *p = buf + 1;; p++) {
        bool end = *p == '\0';
        if (*p == '/' || end) {
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return df_error(DF_ERR_IO, "%s: cannot create folder: %s", buf, strerror(errno));
            if (end) break;
            *p = '/';
        }
    }
    return DF_OK;
}

df_status df_ckpt_begin(df_ckpt_writer *w, const char *run_dir, int64_t step, const char *run_id) {
    memset(w, 0, sizeof *w);
    w->step = step;
    if (run_id && *run_id) {
        if (strlen(run_id) != DF_RUN_ID_LEN - 1 ||
            strspn(run_id, "0123456789abcdef") != strlen(run_id))
            return df_error(DF_ERR_INVALID, "run id '%.40s' is not 16 hex digits", run_id);
        snprintf(w->run_id, sizeof w->run_id, "%s", run_id);
    }
    DF_TRY(df_pathf(w->run_dir, sizeof w->run_dir, "%s", run_dir));
    DF_TRY(
        df_pathf(w->tmp_dir, sizeof w->tmp_dir, "%s/.checkpoint-%" PRId64 ".tmp", run_dir, step));
    DF_TRY(df_pathf(w->final_dir, sizeof w->final_dir, "%s/checkpoint-%" PRId64, run_dir, step));
    DF_TRY(df_mkdirs(run_dir));
    DF_TRY(df_remove_tree(w->tmp_dir)); /* a leftover of a killed run */
    if (mkdir(w->tmp_dir, 0777) != 0)
        return df_error(DF_ERR_IO, "%s: cannot create folder: %s", w->tmp_dir, strerror(errno));
    return DF_OK;
}

df_status df_ckpt_file(df_ckpt_writer *w, const char *rel, char *path, size_t len) {
    if (rel[0] == '/' || strstr(rel, "..") || strchr(rel, ' ') || strchr(rel, '\n'))
        return df_error(DF_ERR_INVALID, "checkpoint file name '%s' is not a plain relative path",
                        rel);
    DF_TRY(df_pathf(path, len, "%s/%s", w->tmp_dir, rel));
    /* make the file's folder */
    char dir[DF_PATH_MAX];
    DF_TRY(df_pathf(dir, sizeof dir, "%s", path));
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    return df_mkdirs(dir);
}

/* CRC-32C and size of a file. */
static df_status checksum_file(const char *path, uint32_t *crc, uint64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    static _Thread_local unsigned char buf[1 << 16];
    uint32_t c = 0;
    uint64_t total = 0;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        c = df_crc32c_update(c, buf, n);
        total += n;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) return df_error(DF_ERR_IO, "%s: read failed", path);
    *crc = c;
    *size = total;
    return DF_OK;
}

static df_status read_done(const char *dir, char *run_id, size_t run_id_len, bool files,
                           bool checksums);

/* Removes checkpoint-<step> of run_dir: renamed to .checkpoint-<step>.removing, then deleted. */
static df_status remove_checkpoint(const char *run_dir, int64_t step) {
    char dir[DF_PATH_MAX], doomed[DF_PATH_MAX];
    DF_TRY(df_pathf(dir, sizeof dir, "%s/checkpoint-%" PRId64, run_dir, step));
    DF_TRY(df_pathf(doomed, sizeof doomed, "%s/.checkpoint-%" PRId64 ".removing", run_dir, step));
    DF_TRY(df_remove_tree(doomed));
    if (rename(dir, doomed) != 0)
        return df_error(DF_ERR_IO, "%s: cannot remove (rename failed: %s)", dir, strerror(errno));
    return df_remove_tree(doomed);
}

/* Clears the way for w->final_dir (see df_ckpt_commit). */
static df_status replace_existing(const df_ckpt_writer *w) {
    char id[DF_RUN_ID_LEN];
    if (read_done(w->final_dir, id, sizeof id, false, false) == DF_OK && strcmp(id, w->run_id) == 0)
        return remove_checkpoint(w->run_dir, w->step);
    for (int i = 1; i < 1000; i++) {
        char aside[DF_PATH_MAX];
        struct stat st;
        DF_TRY(df_pathf(aside, sizeof aside, "%s.displaced-%d", w->final_dir, i));
        if (lstat(aside, &st) == 0) continue;
        if (rename(w->final_dir, aside) != 0)
            return df_error(DF_ERR_IO, "%s: cannot move aside: %s", w->final_dir, strerror(errno));
        fprintf(stderr,
                "diffusion: warning: %s was damaged or of another run; moved to %s to write this "
                "run's checkpoint of the same step\n",
                w->final_dir, aside);
        return DF_OK;
    }
    return df_error(DF_ERR_IO, "%s: no free name to move it aside to", w->final_dir);
}

/* Removes the .checkpoint-<step>.removing leftovers of a removal that was interrupted. */
static void remove_leftovers(const char *run_dir) {
    DIR *d = opendir(run_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, ".checkpoint-", 12) != 0 || n < 21 ||
            strcmp(e->d_name + n - 9, ".removing") != 0)
            continue;
        char path[DF_PATH_MAX];
        if (df_pathf(path, sizeof path, "%s/%s", run_dir, e->d_name) != DF_OK ||
            df_remove_tree(path) != DF_OK)
            fprintf(stderr, "diffusion: warning: %s\n", df_last_error());
    }
    closedir(d);
}

/* checkpoints_total_limit after committing w: walks the older checkpoints newest first; those
 * of w's run that are complete count toward `keep` (w itself is the first) and the ones beyond
 * it are removed. Another run's checkpoints and damaged ones are reported, never counted, never
 * removed; newer checkpoints than w are not looked at. */
static void rotate(const df_ckpt_writer *w, int keep) {
    int64_t steps[4096];
    int n = df_ckpt_list(w->run_dir, steps, 4096), kept = 1;
    for (int i = n - 1; i >= 0; i--) {
        if (steps[i] >= w->step) continue;
        char dir[DF_PATH_MAX], id[DF_RUN_ID_LEN];
        if (df_pathf(dir, sizeof dir, "%s/checkpoint-%" PRId64, w->run_dir, steps[i]) != DF_OK)
            continue;
        df_status st = read_done(dir, id, sizeof id, false, false);
        if (st == DF_OK && strcmp(id, w->run_id) != 0) {
            fprintf(stderr,
                    "diffusion: warning: %s belongs to another run (%s): not counted toward "
                    "checkpoints_total_limit, not removed\n",
                    dir, id[0] ? id : "written before run ids");
            continue;
        }
        if (st == DF_OK) st = read_done(dir, NULL, 0, true, false);
        if (st != DF_OK) {
            fprintf(stderr,
                    "diffusion: warning: damaged checkpoint (%s): not counted toward "
                    "checkpoints_total_limit, not removed\n",
                    df_last_error());
            continue;
        }
        if (kept < keep) {
            kept++;
            continue;
        }
        if (remove_checkpoint(w->run_dir, steps[i]) != DF_OK)
            fprintf(stderr, "diffusion: warning: %s\n", df_last_error());
    }
    remove_leftovers(w->run_dir);
}

/* nftw has no user pointer: the writer being collected into (one commit at a time per thread). */
static _Thread_local df_ckpt_writer *collecting;
static _Thread_local bool collect_overflow;

static int collect_file(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    if (flag != FTW_F) return 0;
    size_t base = strlen(collecting->tmp_dir) + 1;
    const char *rel = path + base;
    if (strcmp(rel, "DONE.partial") == 0 || strcmp(rel, "DONE") == 0) return 0;
    if (collecting->n_files == DF_CKPT_MAX_FILES || strlen(rel) >= sizeof collecting->files[0] ||
        strchr(rel, ' ') || strchr(rel, '\n')) {
        collect_overflow = true;
        return 1;
    }
    snprintf(collecting->files[collecting->n_files++], sizeof collecting->files[0], "%s", rel);
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(a, b);
}

/* Every regular file under the temporary folder, sorted (DONE lists them in a stable order). */
static df_status collect_files(df_ckpt_writer *w) {
    w->n_files = 0;
    collecting = w;
    collect_overflow = false;
    int rc = nftw(w->tmp_dir, collect_file, 16, FTW_PHYS);
    collecting = NULL;
    if (collect_overflow)
        return df_error(DF_ERR_INVALID, "%s: more than %d files, or a file name with a space",
                        w->tmp_dir, DF_CKPT_MAX_FILES);
    if (rc != 0) return df_error(DF_ERR_IO, "%s: cannot list: %s", w->tmp_dir, strerror(errno));
    qsort(w->files, (size_t)w->n_files, sizeof w->files[0], cmp_names);
    return DF_OK;
}

df_status df_ckpt_commit(df_ckpt_writer *w, int keep_last) {
    char done_tmp[DF_PATH_MAX], done[DF_PATH_MAX];
    df_status collected = collect_files(w);
    if (collected != DF_OK) {
        df_ckpt_abort(w);
        return collected;
    }
    DF_TRY(df_pathf(done_tmp, sizeof done_tmp, "%s/DONE.partial", w->tmp_dir));
    DF_TRY(df_pathf(done, sizeof done, "%s/DONE", w->tmp_dir));
    FILE *f = fopen(done_tmp, "w");
    if (!f) return df_error(DF_ERR_IO, "%s: cannot create: %s", done_tmp, strerror(errno));
    fprintf(f, "%s step=%" PRId64 " files=%d%s%s\n", DONE_MAGIC, w->step, w->n_files,
            w->run_id[0] ? " run=" : "", w->run_id);
    df_status st = DF_OK;
    for (int i = 0; i < w->n_files && st == DF_OK; i++) {
        char path[DF_PATH_MAX];
        uint32_t crc;
        uint64_t size;
        st = df_pathf(path, sizeof path, "%s/%s", w->tmp_dir, w->files[i]);
        if (st == DF_OK) st = fsync_path(path, false);
        if (st == DF_OK) st = checksum_file(path, &crc, &size);
        if (st == DF_OK) fprintf(f, "%08" PRIx32 " %" PRIu64 " %s\n", crc, size, w->files[i]);
    }
    if (fflush(f) != 0 || ferror(f))
        st = st ? st : df_error(DF_ERR_IO, "%s: write failed: %s", done_tmp, strerror(errno));
    if (st == DF_OK && fsync(fileno(f)) != 0)
        st = df_error(DF_ERR_IO, "%s: fsync failed: %s", done_tmp, strerror(errno));
    if (fclose(f) != 0 && st == DF_OK) st = df_error(DF_ERR_IO, "%s: close failed", done_tmp);
    if (st == DF_OK && rename(done_tmp, done) != 0)
        st = df_error(DF_ERR_IO, "%s: rename failed: %s", done, strerror(errno));
    /* every folder inside the checkpoint, then the checkpoint itself */
    for (int i = 0; i < w->n_files && st == DF_OK; i++) {
        const char *slash = strrchr(w->files[i], '/');
        if (!slash) continue;
        char dir[DF_PATH_MAX];
        st = df_pathf(dir, sizeof dir, "%s/%.*s", w->tmp_dir, (int)(slash - w->files[i]),
                      w->files[i]);
        if (st == DF_OK) st = fsync_path(dir, true);
    }
    if (st == DF_OK) st = fsync_path(w->tmp_dir, true);
    /* the same step written again: this run's older copy (a resume from an earlier step) is
     * removed, renamed aside first so that no moment leaves a half-removed folder under the
     * final name; another run's or a damaged one is moved aside, never deleted */
    struct stat old;
    if (st == DF_OK && lstat(w->final_dir, &old) == 0) st = replace_existing(w);
    if (st == DF_OK && rename(w->tmp_dir, w->final_dir) != 0)
        st = df_error(DF_ERR_IO, "%s: rename failed: %s", w->final_dir, strerror(errno));
    if (st == DF_OK) st = fsync_path(w->run_dir, true);
    if (st != DF_OK) {
        df_ckpt_abort(w);
        return st;
    }
    if (keep_last > 0) rotate(w, keep_last);
    return DF_OK;
}

void df_ckpt_abort(df_ckpt_writer *w) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", df_last_error()); /* keep the caller's error */
    df_remove_tree(w->tmp_dir);
    df_error(DF_ERR_IO, "%s", msg);
}

/* Reads dir's DONE: the header's run id into run_id (may be NULL), and, with `files`, checks
 * every listed file's size and, with `checksums`, its CRC-32C. */
static df_status read_done(const char *dir, char *run_id, size_t run_id_len, bool files,
                           bool checksums) {
    char done[DF_PATH_MAX];
    DF_TRY(df_pathf(done, sizeof done, "%s/DONE", dir));
    FILE *f = fopen(done, "r");
    if (!f) return df_error(DF_ERR_FORMAT, "%s: no DONE file (an interrupted checkpoint)", dir);
    char line[DF_PATH_MAX + 64];
    df_status st = DF_OK;
    int declared = -1, seen = 0;
    if (!fgets(line, sizeof line, f) || strncmp(line, DONE_MAGIC, strlen(DONE_MAGIC)) != 0 ||
        !strstr(line, "files=") || sscanf(strstr(line, "files="), "files=%d", &declared) != 1)
        st = df_error(DF_ERR_FORMAT, "%s: DONE has no valid header", dir);
    if (st == DF_OK && run_id) {
        char id[DF_RUN_ID_LEN + 1] = "";
        const char *r = strstr(line, " run=");
        if (r && (sscanf(r, " run=%17[0-9a-f]", id) != 1 || strlen(id) != DF_RUN_ID_LEN - 1))
            st = df_error(DF_ERR_FORMAT, "%s: DONE has a malformed run id", dir);
        snprintf(run_id, run_id_len, "%s", id);
    }
    while (st == DF_OK && files && fgets(line, sizeof line, f)) {
        uint32_t want_crc, crc = 0;
        uint64_t want_size, size = 0;
        char rel[DF_PATH_MAX];
        if (sscanf(line, "%8" SCNx32 " %" SCNu64 " %4095s", &want_crc, &want_size, rel) != 3 ||
            rel[0] == '/' || strstr(rel, "..")) {
            st = df_error(DF_ERR_FORMAT, "%s: malformed DONE line %d", dir, seen + 2);
            break;
        }
        char path[DF_PATH_MAX];
        st = df_pathf(path, sizeof path, "%s/%s", dir, rel);
        if (st == DF_OK && checksums) {
            st = checksum_file(path, &crc, &size);
        } else if (st == DF_OK) {
            struct stat sb;
            if (stat(path, &sb) != 0)
                st = df_error(DF_ERR_FORMAT, "%s: %s is missing", dir, rel);
            else
                size = (uint64_t)sb.st_size;
            crc = want_crc; /* sizes only: the checksums are read on resume */
        }
        if (st == DF_OK && (size != want_size || crc != want_crc))
            st = df_error(DF_ERR_FORMAT, "%s: %s does not match its checksum in DONE", dir, rel);
        seen++;
    }
    fclose(f);
    if (st == DF_OK && files && seen != declared)
        st = df_error(DF_ERR_FORMAT, "%s: DONE lists %d of %d files", dir, seen, declared);
    return st;
}

df_status df_ckpt_verify(const char *dir) {
    return read_done(dir, NULL, 0, true, true);
}

df_status df_ckpt_run_id(const char *dir, char *out, size_t len) {
    return read_done(dir, out, len, false, false);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int df_ckpt_list(const char *run_dir, int64_t *steps, int max) {
    DIR *d = opendir(run_dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        char *end;
        if (strncmp(e->d_name, "checkpoint-", 11) != 0) continue;
        long long s = strtoll(e->d_name + 11, &end, 10);
        if (*end || end == e->d_name + 11 || s < 0) continue;
        steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof *steps, cmp_i64);
    return n;
}

df_status df_ckpt_find_latest(const char *run_dir, const char *run_id, char *out, size_t len) {
    int64_t steps[4096];
    int n = df_ckpt_list(run_dir, steps, 4096), damaged = 0;
    char names[512] = "", last_problem[1024] = "";
    for (int i = n - 1; i >= 0; i--) {
        char dir[DF_PATH_MAX], id[DF_RUN_ID_LEN];
        if (df_pathf(dir, sizeof dir, "%s/checkpoint-%" PRId64, run_dir, steps[i]) != DF_OK)
            continue;
        df_status st = df_ckpt_run_id(dir, id, sizeof id);
        if (st == DF_OK && run_id && strcmp(id, run_id) != 0) {
            fprintf(stderr,
                    "diffusion: warning: %s belongs to another run (%s); not resuming from it\n",
                    dir, id[0] ? id : "written before run ids");
            continue;
        }
        if (st == DF_OK) st = df_ckpt_verify(dir);
        if (st == DF_OK) {
            snprintf(out, len, "%s", dir);
            return DF_OK;
        }
        damaged++;
        snprintf(last_problem, sizeof last_problem, "%s", df_last_error());
        size_t used = strlen(names);
        snprintf(names + used, sizeof names - used, "%scheckpoint-%" PRId64, used ? ", " : "",
                 steps[i]);
        fprintf(stderr, "diffusion: warning: skipping damaged checkpoint: %s\n", last_problem);
    }
    if (damaged > 0)
        return df_error(DF_ERR_FORMAT,
                        "%s: every checkpoint of this run is damaged (%s; the last: %s); nothing "
                        "to resume from: repair or move them away, or train into a new output_dir",
                        run_dir, names, last_problem);
    return df_error(DF_ERR_NOTFOUND, "%s: no complete checkpoint to resume from", run_dir);
}
