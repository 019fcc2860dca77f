/* test_metrics_log.c — metrics.jsonl survives failed writes: a write that fails (the file-size
 * limit, as a full disk would) leaves whole lines only and is an error naming the file; the
 * lines stay queued and the next write that succeeds writes them all, in order (no gap, no
 * spliced line). Opening keeps the lines up to a step (a resumed run rewrites the rest). */
#include "tests/common/check.h"
#include "train/train.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

static char dir[64], path[128];

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/df_metrics_XXXXXX");
    cr_assert(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
}

static void teardown(void) {
    df_remove_tree(dir);
}

TestSuite(train_metrics_log, .init = setup, .fini = teardown);

static char *slurp(void) {
    FILE *f = fopen(path, "rb");
    cr_assert(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void line_of(int step, char *out, size_t len) {
    snprintf(out, len, "{\"step\": %d, \"loss\": 0.%d}", step, step * 1111);
}

static void set_size_limit(rlim_t n) {
    struct rlimit r;
    getrlimit(RLIMIT_FSIZE, &r);
    r.rlim_cur = n > r.rlim_max ? r.rlim_max : n;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &r), 0);
}

Test(train_metrics_log, failed_write_is_rewritten_without_gaps) {
    signal(SIGXFSZ, SIG_IGN); /* writes past the limit fail with EFBIG */
    df_metrics_log m;
    char line[128], want[4096] = "";
    cr_assert_eq(df_metrics_open(&m, path, 0), DF_OK, "%s", df_last_error());
    for (int s = 1; s <= 3; s++) {
        line_of(s, line, sizeof line);
        cr_assert_eq(df_metrics_append(&m, line), DF_OK, "%s", df_last_error());
        strcat(want, line);
        strcat(want, "\n");
    }
    size_t good = strlen(want);
    set_size_limit(good + 7); /* room for part of a line */
    for (int s = 4; s <= 6; s++) {
        line_of(s, line, sizeof line);
        cr_assert_eq(df_metrics_append(&m, line), DF_ERR_IO);
        cr_assert(strstr(df_last_error(), path) && strstr(df_last_error(), "write failed"), "%s",
                  df_last_error());
        strcat(want, line);
        strcat(want, "\n");
        struct stat st;
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq((size_t)st.st_size, good, "a partial line was left");
    }
    cr_assert_eq(m.pending_lines, 3);
    set_size_limit(RLIM_INFINITY);
    line_of(7, line, sizeof line);
    cr_assert_eq(df_metrics_append(&m, line), DF_OK, "%s", df_last_error());
    strcat(want, line);
    strcat(want, "\n");
    cr_assert_str_eq(slurp(), want);
    df_metrics_close(&m);
}

Test(train_metrics_log, open_keeps_lines_up_to_the_step) {
    FILE *f = fopen(path, "w");
    for (int s = 1; s <= 5; s++) fprintf(f, "{\"step\": %d, \"loss\": 1}\n", s);
    fputs("{\"step\": 6, \"lo", f); /* a torn last line */
    fclose(f);
    df_metrics_log m;
    cr_assert_eq(df_metrics_open(&m, path, 3), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_metrics_append(&m, "{\"step\": 4, \"loss\": 2}"), DF_OK);
    df_metrics_close(&m);
    cr_assert_str_eq(slurp(), "{\"step\": 1, \"loss\": 1}\n{\"step\": 2, \"loss\": 1}\n"
                              "{\"step\": 3, \"loss\": 1}\n{\"step\": 4, \"loss\": 2}\n");
}
