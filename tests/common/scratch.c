/* scratch.c — a scratch folder per test (under /tmp, made in a suite's init and removed in its
 * fini) and small text files written into it. */
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>

static char scratch[256];

const char *scratch_dir_new(const char *tag) {
    snprintf(scratch, sizeof scratch, "/tmp/df_%s_XXXXXX", tag);
    cr_assert(mkdtemp(scratch), "mkdtemp %s", scratch);
    return scratch;
}

const char *scratch_dir(void) {
    return scratch;
}

void scratch_dir_remove(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    cr_assert_eq(system(cmd), 0);
}

const char *scratch_write(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", scratch, name);
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    fputs(text, f);
    fclose(f);
    return path;
}
