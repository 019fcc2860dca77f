/* run_dir.c — who owns a run folder (design §8, issue 23 "never lose a run").
 *
 * A run folder belongs to one run and, while it trains, to one process:
 *  - the run: OUTPUT/run.json, written when the run starts (run_id, config hash, seed, start
 *    time, host, pid). Every checkpoint's DONE names its run_id, so resuming and rotation only
 *    ever touch checkpoints of this run.
 *  - the process: an advisory lock (flock, exclusive, non-blocking) on OUTPUT/run.lock, held
 *    for the whole run; the kernel releases it when the process ends however it ends. The
 *    holder writes "pid <pid> host <host> since <time>" into the file and empties it on a clean
 *    exit, so a non-empty file whose lock is free was left by a holder that died (kill -9, a
 *    crash, a lost node): it is reported and taken over.
 * A second training in the same folder fails the lock and is refused with who holds it.
 */
#include "train/train.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void utc_now(char *out, size_t len) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void host_name(char *out, size_t len) {
    snprintf(out, len, "localhost");
    if (gethostname(out, len - 1) != 0) snprintf(out, len, "localhost");
    out[len - 1] = '\0';
}

/* Locks `path` (created if absent) exclusively; *busy when another process holds it. */
static df_status lock_file(const char *path, int *fd_out, bool *busy) {
    *busy = false;
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0) return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int err = errno;
            if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {
                /* a file system without locks: train, but say what is not guarded */
                fprintf(stderr,
                        "diffusion: warning: %s: cannot lock (%s): a second training in this "
                        "folder would not be detected\n",
                        path, strerror(err));
                *fd_out = fd;
                return DF_OK;
            }
            close(fd);
            if (err == EWOULDBLOCK) {
                *busy = true;
                return DF_OK;
            }
            return df_error(DF_ERR_IO, "%s: cannot lock: %s", path, strerror(err));
        }
        /* the folder may have been moved aside (--overwrite) between open and flock: the lock
         * counts only if `path` still names the file we locked */
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev) {
            *fd_out = fd;
            return DF_OK;
        }
        close(fd);
    }
    return df_error(DF_ERR_IO, "%s: the lock file keeps being replaced", path);
}

static void read_holder(const char *path, char *out, size_t len) {
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (!fgets(out, (int)len, f)) out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
}

df_status df_run_lock_acquire(df_run_lock *l, const char *run_dir) {
    memset(l, 0, sizeof *l);
    l->fd = -1;
    DF_TRY(df_mkdirs(run_dir));
    DF_TRY(df_pathf(l->path, sizeof l->path, "%s/run.lock", run_dir));
    bool busy;
    int fd = -1;
    DF_TRY(lock_file(l->path, &fd, &busy));
    if (busy) {
        char holder[256];
        read_holder(l->path, holder, sizeof holder);
        return df_error(DF_ERR_INVALID,
                        "%s is in use by another training (%s); two runs cannot share a run "
                        "folder: wait for it to finish or choose another output_dir",
                        run_dir, holder[0] ? holder : "holder unknown");
    }
    char prev[256];
    read_holder(l->path, prev, sizeof prev);
    l->stale = prev[0] != '\0';
    if (l->stale) {
        snprintf(l->stale_holder, sizeof l->stale_holder, "%s", prev);
        fprintf(stderr,
                "diffusion: note: %s was locked by a process that ended without releasing it "
                "(%s); taking it over\n",
                run_dir, prev);
    }
    char host[64], when[32], line[256];
    host_name(host, sizeof host);
    utc_now(when, sizeof when);
    int n = snprintf(line, sizeof line, "pid %ld host %s since %s\n", (long)getpid(), host, when);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)n, 0) != n) {
        int err = errno;
        close(fd);
        return df_error(DF_ERR_IO, "%s: cannot write: %s", l->path, strerror(err));
    }
    l->fd = fd;
    return DF_OK;
}

void df_run_lock_release(df_run_lock *l) {
    if (l->fd < 0) return;
    /* empty: the next holder sees a clean hand-over, not a stale lock */
    if (ftruncate(l->fd, 0) != 0) { /* the kernel still releases the lock */
    }
    close(l->fd);
    l->fd = -1;
}

df_status df_run_identity_new(df_run_identity *id, uint64_t config_hash, uint64_t seed) {
    memset(id, 0, sizeof *id);
    host_name(id->host, sizeof id->host);
    utc_now(id->started, sizeof id->started);
    id->pid = (long)getpid();
    id->seed = seed;
    snprintf(id->config_hash, sizeof id->config_hash, "%016" PRIx64, config_hash);
    /* unique across hosts, processes and time: 64 random bits (the clock and pid mixed in when
     * /dev/urandom is unavailable) */
    uint64_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &r, sizeof r) != (ssize_t)sizeof r) r = 0;
        close(fd);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id->host; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h ^= (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ (uint64_t)id->pid << 40;
    snprintf(id->run_id, sizeof id->run_id, "%016" PRIx64, r ^ h);
    return DF_OK;
}

df_status df_run_identity_save(const char *run_dir, const df_run_identity *id) {
    char path[DF_PATH_MAX], tmp[DF_PATH_MAX];
    DF_TRY(df_pathf(path, sizeof path, "%s/run.json", run_dir));
    DF_TRY(df_pathf(tmp, sizeof tmp, "%s/run.json.tmp", run_dir));
    cJSON *o = cJSON_CreateObject();
    if (!o) return df_error(DF_ERR_NOMEM, "out of memory (%s)", path);
    cJSON_AddStringToObject(o, "run_id", id->run_id);
    cJSON_AddStringToObject(o, "config_hash", id->config_hash);
    cJSON_AddNumberToObject(o, "seed", (double)id->seed);
    cJSON_AddStringToObject(o, "started", id->started);
    cJSON_AddStringToObject(o, "host", id->host);
    cJSON_AddNumberToObject(o, "pid", (double)id->pid);
    DF_TRY(df_json_write_object(o, tmp));
    if (rename(tmp, path) != 0)
        return df_error(DF_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    return DF_OK;
}

df_status df_run_identity_load(const char *run_dir, df_run_identity *id) {
    char path[DF_PATH_MAX];
    memset(id, 0, sizeof *id);
    DF_TRY(df_pathf(path, sizeof path, "%s/run.json", run_dir));
    if (access(path, F_OK) != 0)
        return df_error(DF_ERR_NOTFOUND, "%s: no run.json (not a run folder yet)", run_dir);
    df_json j;
    DF_TRY(df_json_load(path, &j));
    double seed = 0, pid = 0;
    df_status st = df_json_string(&j, "run_id", "", id->run_id, sizeof id->run_id);
    if (st == DF_OK)
        st = df_json_string(&j, "config_hash", "", id->config_hash, sizeof id->config_hash);
    if (st == DF_OK) st = df_json_double(&j, "seed", 0, &seed);
    if (st == DF_OK) st = df_json_string(&j, "started", "", id->started, sizeof id->started);
    if (st == DF_OK) st = df_json_string(&j, "host", "", id->host, sizeof id->host);
    if (st == DF_OK) st = df_json_double(&j, "pid", 0, &pid);
    df_json_free(&j);
    if (st != DF_OK) return st;
    if (strlen(id->run_id) != 16 || strspn(id->run_id, "0123456789abcdef") != 16)
        return df_error(DF_ERR_FORMAT, "%s: run_id is not 16 hex digits", path);
    id->seed = (uint64_t)seed;
    id->pid = (long)pid;
    return DF_OK;
}

df_status df_run_move_aside(const char *run_dir, char *moved, size_t len) {
    for (int i = 1; i < 10000; i++) {
        DF_TRY(df_pathf(moved, len, "%s.old-%d", run_dir, i));
        struct stat st;
        if (lstat(moved, &st) == 0) continue;
        if (rename(run_dir, moved) != 0)
            return df_error(DF_ERR_IO, "%s: cannot move aside to %s: %s", run_dir, moved,
                            strerror(errno));
        return DF_OK;
    }
    return df_error(DF_ERR_IO, "%s: no free name to move it aside to", run_dir);
}
