/* outfile.c — output files written atomically: the one "write to a temporary name, then rename"
 * of the project (safetensors, PNG grids, HDF5 packs).
 *
 * A new path or an existing regular file is written to the sibling "<path>.tmp.<pid>.<k>" (same
 * folder, so the rename cannot cross file systems); df_outfile_commit fsyncs it, renames it over
 * the final path and fsyncs the folder. So the final path holds either its old bytes or the
 * complete new file: a failed write leaves it untouched, an interrupted one leaves at most a
 * stray ".tmp." sibling, and a reader that has the old file mapped keeps valid bytes (the old
 * inode lives on). An existing non-regular path (a device such as /dev/full, a pipe) is written
 * in place: it cannot be renamed over.
 */
#include "autograd/autograd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

df_status df_outfile_begin(df_outfile *o, const char *path) {
    static unsigned counter;
    memset(o, 0, sizeof *o);
    struct stat st;
    bool in_place = stat(path, &st) == 0 && !S_ISREG(st.st_mode);
    if (in_place && S_ISDIR(st.st_mode))
        return df_error(DF_ERR_IO, "%s: is a directory, not a file name", path);
    o->path = strdup(path);
    if (!o->path) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    if (in_place) return DF_OK;
    size_t len = strlen(path) + 48;
    o->tmp = malloc(len);
    if (!o->tmp) {
        free(o->path);
        o->path = NULL;
        return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(o->tmp, len, "%s.tmp.%ld.%u", path, (long)getpid(),
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    return DF_OK;
}

const char *df_outfile_name(const df_outfile *o) {
    return o->tmp ? o->tmp : o->path;
}

/* fsyncs the folder holding `path`, so that a rename into it is durable. */
static bool fsync_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return false;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0) return false;
    bool ok = fsync(fd) == 0 || errno == EINVAL; /* some file systems cannot sync folders */
    close(fd);
    return ok;
}

df_status df_outfile_commit(df_outfile *o) {
    if (!o->tmp) { /* in place: nothing to rename */
        df_outfile_abort(o);
        return DF_OK;
    }
    const char *what = "open for fsync";
    int fd = open(o->tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) goto fail;
    what = "fsync";
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    errno = err;
    if (rc != 0) goto fail;
    what = "rename";
    if (rename(o->tmp, o->path) != 0) goto fail;
    free(o->tmp);
    o->tmp = NULL;
    what = "fsync of the folder";
    if (!fsync_parent(o->path)) goto fail;
    df_outfile_abort(o);
    return DF_OK;

fail:;
    df_status s = df_error(DF_ERR_IO, "%s: %s failed: %s", o->path, what, strerror(errno));
    df_outfile_abort(o);
    return s;
}

void df_outfile_abort(df_outfile *o) {
    if (o->tmp) unlink(o->tmp); /* no partial file is left behind */
    free(o->tmp);
    free(o->path);
    o->tmp = o->path = NULL;
}

bool df_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}
