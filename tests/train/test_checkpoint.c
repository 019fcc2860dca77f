/* test_checkpoint.c — the checkpoint commit protocol: a committed checkpoint verifies; damage,
 * a missing DONE or an interrupted write is detected and `latest` falls back past it; rotation
 * keeps the newest; an aborted write leaves earlier checkpoints untouched. Ownership (issue 23):
 * DONE names the run; rotation never removes the checkpoint just written, a newer one, another
 * run's or a damaged one; `latest` picks the run's own newest and says when all are damaged. */
#include "train/train.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char run[256];

static void setup(void) {
    snprintf(run, sizeof run, "/tmp/df_ckpt_XXXXXX");
    cr_assert(mkdtemp(run));
}

static void teardown(void) {
    df_remove_tree(run);
}

TestSuite(train_checkpoint, .init = setup, .fini = teardown);

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

/* A checkpoint of run `id` of two files, one in a sub-folder, whose contents depend on step. */
static void make_checkpoint_of(const char *id, int64_t step, int keep) {
    df_ckpt_writer w;
    char path[DF_PATH_MAX], text[64];
    cr_assert_eq(df_ckpt_begin(&w, run, step, id), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_ckpt_file(&w, "trainer_state.json", path, sizeof path), DF_OK);
    snprintf(text, sizeof text, "{\"step\": %lld}\n", (long long)step);
    write_text(path, text);
    cr_assert_eq(df_ckpt_file(&w, "unet/weights.bin", path, sizeof path), DF_OK);
    write_text(path, "0123456789abcdef");
    cr_assert_eq(df_ckpt_commit(&w, keep), DF_OK, "%s", df_last_error());
}

static void make_checkpoint(int64_t step, int keep) {
    make_checkpoint_of(NULL, step, keep);
}

static bool exists(const char *rel) {
    char path[DF_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", run, rel);
    return stat(path, &st) == 0;
}

Test(train_checkpoint, commit_then_verify_and_find) {
    make_checkpoint(10, 0);
    cr_assert(exists("checkpoint-10/DONE"));
    cr_assert(!exists(".checkpoint-10.tmp"));
    char dir[DF_PATH_MAX], latest[DF_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/checkpoint-10", run);
    cr_assert_eq(df_ckpt_verify(dir), DF_OK, "%s", df_last_error());
    make_checkpoint(20, 0);
    cr_assert_eq(df_ckpt_find_latest(run, NULL, latest, sizeof latest), DF_OK);
    cr_assert(strstr(latest, "checkpoint-20"), "%s", latest);
}

Test(train_checkpoint, rotation_keeps_newest) {
    for (int s = 1; s <= 4; s++) make_checkpoint(s * 100, 2);
    int64_t steps[8];
    cr_assert_eq(df_ckpt_list(run, steps, 8), 2);
    cr_assert_eq(steps[0], 300);
    cr_assert_eq(steps[1], 400);
}

Test(train_checkpoint, damaged_newest_falls_back) {
    make_checkpoint(1, 0);
    make_checkpoint(2, 0);
    char path[DF_PATH_MAX], latest[DF_PATH_MAX];
    snprintf(path, sizeof path, "%s/checkpoint-2/unet/weights.bin", run);
    write_text(path, "0123456789abcdeX"); /* same size, one byte changed */
    snprintf(latest, sizeof latest, "%s/checkpoint-2", run);
    cr_assert_eq(df_ckpt_verify(latest), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "unet/weights.bin does not match its checksum"), "%s",
              df_last_error());
    cr_assert_eq(df_ckpt_find_latest(run, NULL, latest, sizeof latest), DF_OK);
    cr_assert(strstr(latest, "checkpoint-1"), "%s", latest);

    /* a truncated file and a missing DONE are refused too */
    write_text(path, "short");
    snprintf(latest, sizeof latest, "%s/checkpoint-2", run);
    cr_assert_eq(df_ckpt_verify(latest), DF_ERR_FORMAT);
    snprintf(path, sizeof path, "%s/checkpoint-2/DONE", run);
    cr_assert_eq(remove(path), 0);
    cr_assert_eq(df_ckpt_verify(latest), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "no DONE"), "%s", df_last_error());
}

Test(train_checkpoint, no_checkpoint_is_an_error) {
    char latest[DF_PATH_MAX];
    cr_assert_eq(df_ckpt_find_latest(run, NULL, latest, sizeof latest), DF_ERR_NOTFOUND);
    cr_assert(strstr(df_last_error(), "no complete checkpoint"));
}

Test(train_checkpoint, abort_leaves_earlier_untouched) {
    make_checkpoint(5, 0);
    df_ckpt_writer w;
    char path[DF_PATH_MAX];
    cr_assert_eq(df_ckpt_begin(&w, run, 6, NULL), DF_OK);
    cr_assert_eq(df_ckpt_file(&w, "state.bin", path, sizeof path), DF_OK);
    /* a full disk: the write fails, the trainer aborts */
    FILE *full = fopen("/dev/full", "w");
    if (full) {
        fputs("x", full);
        cr_assert_neq(fflush(full), 0, "writing /dev/full must fail");
        fclose(full);
    }
    df_error(DF_ERR_IO, "state.bin: write failed: No space left on device");
    df_ckpt_abort(&w);
    cr_assert_str_eq(df_last_error(), "state.bin: write failed: No space left on device");
    cr_assert(!exists(".checkpoint-6.tmp"));
    cr_assert(!exists("checkpoint-6"));
    char dir[DF_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/checkpoint-5", run);
    cr_assert_eq(df_ckpt_verify(dir), DF_OK);
}

Test(train_checkpoint, interrupted_write_is_ignored) {
    make_checkpoint(7, 0);
    df_ckpt_writer w;
    char path[DF_PATH_MAX], latest[DF_PATH_MAX];
    cr_assert_eq(df_ckpt_begin(&w, run, 8, NULL), DF_OK);
    cr_assert_eq(df_ckpt_file(&w, "a.txt", path, sizeof path), DF_OK);
    write_text(path, "partial");
    /* killed here: no commit */
    cr_assert_eq(df_ckpt_find_latest(run, NULL, latest, sizeof latest), DF_OK);
    cr_assert(strstr(latest, "checkpoint-7"), "%s", latest);
    /* the next begin of the same step clears the leftover */
    cr_assert_eq(df_ckpt_begin(&w, run, 8, NULL), DF_OK);
    cr_assert_eq(df_ckpt_commit(&w, 0), DF_OK);
    cr_assert_eq(df_ckpt_find_latest(run, NULL, latest, sizeof latest), DF_OK);
    cr_assert(strstr(latest, "checkpoint-8"), "%s", latest);
}

Test(train_checkpoint, crc32c_known_value) {
    /* the CRC-32C check value of "123456789" (RFC 3720) */
    cr_assert_eq(df_crc32c("123456789", 9), 0xE3069283u);
    cr_assert_eq(df_crc32c_update(df_crc32c("1234", 4), "56789", 5), 0xE3069283u);
}

#define RUN_A "aaaaaaaaaaaaaaaa"
#define RUN_B "bbbbbbbbbbbbbbbb"

/* Issue 23.1: a folder holding another run's higher steps (55, 60) made rotation delete the
 * checkpoint just written. */
Test(train_checkpoint, rotation_only_removes_this_runs_older_checkpoints) {
    make_checkpoint_of(RUN_A, 55, 0);
    make_checkpoint_of(RUN_A, 60, 0);
    make_checkpoint_of(RUN_B, 5, 0);
    char path[DF_PATH_MAX];
    snprintf(path, sizeof path, "%s/checkpoint-5/DONE", run);
    cr_assert_eq(remove(path), 0); /* B's checkpoint-5 is damaged */
    make_checkpoint_of(RUN_B, 10, 1);
    make_checkpoint_of(RUN_B, 20, 1);
    make_checkpoint_of(RUN_B, 30, 2);
    int64_t steps[8];
    cr_assert_eq(df_ckpt_list(run, steps, 8), 5);
    int64_t want[] = {5, 20, 30, 55, 60};
    for (int i = 0; i < 5; i++) cr_assert_eq(steps[i], want[i]);
    char dir[DF_PATH_MAX], id[DF_RUN_ID_LEN];
    snprintf(dir, sizeof dir, "%s/checkpoint-30", run);
    cr_assert_eq(df_ckpt_run_id(dir, id, sizeof id), DF_OK);
    cr_assert_str_eq(id, RUN_B);
    cr_assert(!exists(".checkpoint-10.removing"));
    /* a checkpoint written before run ids has none */
    make_checkpoint(70, 0);
    snprintf(dir, sizeof dir, "%s/checkpoint-70", run);
    cr_assert_eq(df_ckpt_run_id(dir, id, sizeof id), DF_OK);
    cr_assert_str_eq(id, "");
}

Test(train_checkpoint, rotation_never_counts_a_truncated_checkpoint) {
    make_checkpoint_of(RUN_B, 1, 0);
    make_checkpoint_of(RUN_B, 2, 0);
    char path[DF_PATH_MAX];
    snprintf(path, sizeof path, "%s/checkpoint-2/unet/weights.bin", run);
    write_text(path, "short");
    make_checkpoint_of(RUN_B, 3, 2);
    /* 2 is damaged (not counted, kept), so 1 is the second checkpoint to keep */
    cr_assert(exists("checkpoint-1") && exists("checkpoint-2") && exists("checkpoint-3"));
    make_checkpoint_of(RUN_B, 4, 2);
    cr_assert(!exists("checkpoint-1") && exists("checkpoint-2") && exists("checkpoint-3"));
}

Test(train_checkpoint, latest_is_the_runs_own_newest) {
    make_checkpoint_of(RUN_B, 10, 0);
    make_checkpoint_of(RUN_A, 60, 0);
    char latest[DF_PATH_MAX];
    cr_assert_eq(df_ckpt_find_latest(run, RUN_B, latest, sizeof latest), DF_OK);
    cr_assert(strstr(latest, "checkpoint-10"), "%s", latest);
    cr_assert_eq(df_ckpt_find_latest(run, NULL, latest, sizeof latest), DF_OK);
    cr_assert(strstr(latest, "checkpoint-60"), "%s", latest);
    cr_assert_eq(df_ckpt_find_latest(run, "cccccccccccccccc", latest, sizeof latest),
                 DF_ERR_NOTFOUND);
    /* every checkpoint of B damaged: an error saying so, not "no checkpoint" */
    char path[DF_PATH_MAX];
    snprintf(path, sizeof path, "%s/checkpoint-10/unet/weights.bin", run);
    write_text(path, "0123456789abcdeX");
    cr_assert_eq(df_ckpt_find_latest(run, RUN_B, latest, sizeof latest), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "every checkpoint of this run is damaged (checkpoint-10;"),
              "%s", df_last_error());
}

Test(train_checkpoint, same_step_of_another_run_is_moved_aside) {
    make_checkpoint_of(RUN_A, 10, 0);
    make_checkpoint_of(RUN_B, 10, 0);
    cr_assert(exists("checkpoint-10.displaced-1/DONE"));
    char dir[DF_PATH_MAX], id[DF_RUN_ID_LEN];
    snprintf(dir, sizeof dir, "%s/checkpoint-10", run);
    cr_assert_eq(df_ckpt_run_id(dir, id, sizeof id), DF_OK);
    cr_assert_str_eq(id, RUN_B);
    /* the run's own older copy of a step is replaced */
    make_checkpoint_of(RUN_B, 10, 0);
    cr_assert(!exists("checkpoint-10.displaced-2"));
}

Test(train_checkpoint, bad_run_id_is_refused) {
    df_ckpt_writer w;
    cr_assert_eq(df_ckpt_begin(&w, run, 1, "xyz"), DF_ERR_INVALID);
}
