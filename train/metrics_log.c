/* metrics_log.c — metrics.jsonl, one JSON object per line, that a failed write never damages.
 *
 * Lines are queued in memory and written with one write at the file's end of whole lines
 * (`good`). A failed or short write (full disk, quota, EFBIG) cuts the file back to `good` —
 * never a half line, never a spliced one — and keeps the lines queued: the next append writes
 * them all, in order, so the file ends up as if nothing had failed. Opening keeps the lines of
 * steps <= keep_through (a resumed run rewrites the steps after its checkpoint).
 */
#include "train/train.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

df_status df_metrics_open(df_metrics_log *m, const char *path, int64_t keep_through) {
    memset(m, 0, sizeof *m);
    m->fd = -1;
    char tmp[DF_PATH_MAX];
    DF_TRY(df_pathf(m->path, sizeof m->path, "%s", path));
    DF_TRY(df_pathf(tmp, sizeof tmp, "%s.tmp", path));
    FILE *old = fopen(path, "r");
    FILE *f = fopen(tmp, "w");
    if (!f) {
        if (old) fclose(old);
        return df_error(DF_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    char line[4096];
    while (old && fgets(line, sizeof line, old)) {
        long long s;
        if (sscanf(line, "{\"step\": %lld", &s) == 1 && s <= keep_through && strchr(line, '\n'))
            fputs(line, f);
    }
    if (old) fclose(old);
    bool bad = fflush(f) != 0 || ferror(f);
    int err = errno;
    if (fclose(f) != 0 || bad || rename(tmp, path) != 0) {
        if (!bad) err = errno;
        remove(tmp);
        return df_error(DF_ERR_IO, "%s: cannot write: %s", path, strerror(err));
    }
    m->fd = open(path, O_WRONLY | O_CLOEXEC);
    struct stat sb;
    if (m->fd < 0 || fstat(m->fd, &sb) != 0)
        return df_error(DF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    m->good = sb.st_size;
    return DF_OK;
}

df_status df_metrics_flush(df_metrics_log *m) {
    if (m->pending_len == 0) return DF_OK;
    if (m->fd < 0) return df_error(DF_ERR_IO, "%s: not open", m->path);
    size_t done = 0;
    int err = 0;
    while (done < m->pending_len) {
        ssize_t n = pwrite(m->fd, m->pending + done, m->pending_len - done, m->good + (off_t)done);
        if (n <= 0) {
            err = n < 0 ? errno : ENOSPC;
            if (n < 0 && err == EINTR) continue;
            break;
        }
        done += (size_t)n;
    }
    if (done < m->pending_len) {
        /* no half line stays behind: the next write starts again at the last whole line */
        if (ftruncate(m->fd, m->good) != 0) { /* a later write overwrites the rest anyway */
        }
        return df_error(DF_ERR_IO, "%s: write failed: %s (%lld line%s waiting)", m->path,
                        strerror(err), (long long)m->pending_lines,
                        m->pending_lines == 1 ? "" : "s");
    }
    m->good += (off_t)m->pending_len;
    m->pending_len = 0;
    m->pending_lines = 0;
    return DF_OK;
}

df_status df_metrics_append(df_metrics_log *m, const char *line) {
    size_t n = strlen(line);
    if (m->pending_len + n + 1 > m->pending_cap) {
        size_t cap = m->pending_cap ? m->pending_cap : 4096;
        while (cap < m->pending_len + n + 1) cap *= 2;
        char *p = realloc(m->pending, cap);
        if (!p) return df_error(DF_ERR_NOMEM, "%s: out of memory queueing a line", m->path);
        m->pending = p;
        m->pending_cap = cap;
    }
    memcpy(m->pending + m->pending_len, line, n);
    m->pending[m->pending_len + n] = '\n';
    m->pending_len += n + 1;
    m->pending_lines++;
    return df_metrics_flush(m);
}

void df_metrics_close(df_metrics_log *m) {
    if (m->fd >= 0) close(m->fd);
    m->fd = -1;
    free(m->pending);
    m->pending = NULL;
    m->pending_len = m->pending_cap = 0;
}
