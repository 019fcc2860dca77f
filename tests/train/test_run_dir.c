/* test_run_dir.c — run-folder ownership: the lock is exclusive between processes (a child
 * process cannot take it while the parent holds it), released on release, and a lock file left
 * by a dead holder is reported as stale and taken over; run.json round-trips; moving a run
 * aside picks the first free name and deletes nothing. */
#include "tests/common/check.h"
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/df_rundir_XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void teardown(void) {
    df_remove_tree(dir);
    char old[128];
    snprintf(old, sizeof old, "%s.old-1", dir);
    df_remove_tree(old);
    snprintf(old, sizeof old, "%s.old-2", dir);
    df_remove_tree(old);
}

TestSuite(train_run_dir, .init = setup, .fini = teardown);

/* 0 when a child process can take the lock of dir, 1 when it is refused as in use. */
static int child_tries_lock(void) {
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        df_run_lock l;
        df_status st = df_run_lock_acquire(&l, dir);
        if (st == DF_OK) df_run_lock_release(&l);
        _exit(st == DF_OK ? 0 : strstr(df_last_error(), "in use by another training") ? 1 : 2);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

Test(train_run_dir, lock_is_exclusive_and_released) {
    df_run_lock l;
    cr_assert_eq(df_run_lock_acquire(&l, dir), DF_OK, "%s", df_last_error());
    cr_assert(!l.stale);
    cr_assert_eq(child_tries_lock(), 1);
    df_run_lock_release(&l);
    cr_assert_eq(child_tries_lock(), 0); /* and the child's clean release leaves no stale lock */
    cr_assert_eq(df_run_lock_acquire(&l, dir), DF_OK);
    cr_assert(!l.stale);
    df_run_lock_release(&l);
}

Test(train_run_dir, dead_holder_is_stale) {
    pid_t pid = fork();
    if (pid == 0) {
        df_run_lock l;
        df_run_lock_acquire(&l, dir);
        _exit(0); /* ends without releasing: the kernel drops the lock, the file keeps its line */
    }
    waitpid(pid, NULL, 0);
    df_run_lock l;
    cr_assert_eq(df_run_lock_acquire(&l, dir), DF_OK, "%s", df_last_error());
    cr_assert(l.stale);
    char want[64];
    snprintf(want, sizeof want, "pid %ld host ", (long)pid);
    cr_assert(strstr(l.stale_holder, want), "%s", l.stale_holder);
    df_run_lock_release(&l);
}

Test(train_run_dir, identity_round_trips) {
    df_run_identity a, b, c;
    cr_assert_eq(df_run_identity_new(&a, 0x0123456789abcdefull, 42), DF_OK);
    cr_assert_eq(df_run_identity_new(&c, 0x0123456789abcdefull, 42), DF_OK);
    cr_assert_str_neq(a.run_id, c.run_id);
    cr_assert_eq(strlen(a.run_id), 16);
    cr_assert_eq(df_run_identity_load(dir, &b), DF_ERR_NOTFOUND);
    cr_assert_eq(df_run_identity_save(dir, &a), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_run_identity_load(dir, &b), DF_OK, "%s", df_last_error());
    cr_assert_str_eq(b.run_id, a.run_id);
    cr_assert_str_eq(b.config_hash, "0123456789abcdef");
    cr_assert_eq(b.seed, 42);
    cr_assert_eq(b.pid, (long)getpid());
    cr_assert_str_eq(b.host, a.host);
    cr_assert_str_eq(b.started, a.started);
    /* a damaged run.json is an error naming it */
    char path[128];
    snprintf(path, sizeof path, "%s/run.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"run_id\": \"nothex\"}", f);
    fclose(f);
    cr_assert_eq(df_run_identity_load(dir, &b), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "run.json"), "%s", df_last_error());
}

Test(train_run_dir, move_aside_picks_a_free_name) {
    char moved[256], path[256];
    cr_assert_eq(df_run_move_aside(dir, moved, sizeof moved), DF_OK, "%s", df_last_error());
    snprintf(path, sizeof path, "%s.old-1", dir);
    cr_assert_str_eq(moved, path);
    cr_assert_eq(mkdir(dir, 0777), 0);
    cr_assert_eq(df_run_move_aside(dir, moved, sizeof moved), DF_OK);
    snprintf(path, sizeof path, "%s.old-2", dir);
    cr_assert_str_eq(moved, path);
    cr_assert_eq(mkdir(dir, 0777), 0);
}
