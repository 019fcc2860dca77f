/* test_reliability_run.c — "never lose a run" (issue 23), end to end through `diffusion train`
 * on a tiny UNet and a generated 8-image dataset: a run folder belongs to one run and one
 * process (a fresh start into a used folder is refused with the ways out, --overwrite moves the
 * old run aside, a second training at once is refused, a stale lock is taken over); rotation
 * only removes this run's older complete checkpoints; `--resume latest` picks this run's newest
 * valid checkpoint and says so when all are damaged; the final export is renamed into place;
 * the messages of SIGTERM, --stop-after-steps, a missing --resume folder, a config change, a
 * folder as the recipe and an unset train_data_dir say what happened and what to do; a "full
 * disk" (a file-size limit lowered, then raised again on the running training) is a warning
 * naming the log files, after which metrics.jsonl and the TensorBoard file have every step,
 * whole.
 * docs/reliability.md lists these promises with the test of each. */
#include "datasets/datasets.h"
#include "tests/common/check.h"
#include "train/train.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static char root[256], yaml[300];

static void make_dataset(const char *data) {
    char path[512];
    cr_assert_eq(df_mkdirs(data), DF_OK);
    for (int i = 0; i < 8; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(8, 8, 3));
        uint8_t *p = img->data;
        for (int k = 0; k < 8 * 8 * 3; k++) p[k] = (uint8_t)(k * (i + 3) * 7);
        snprintf(path, sizeof path, "%s/%02d.png", data, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
    }
}

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_reliab_XXXXXX");
    cr_assert(mkdtemp(root));
    char data[300];
    snprintf(data, sizeof data, "%s/data", root);
    make_dataset(data);
    snprintf(yaml, sizeof yaml, "%s/tiny.yaml", root);
    FILE *f = fopen(yaml, "w");
    cr_assert(f);
    fprintf(f,
            "train_data_dir: %s\n"
            "resolution: 8\n"
            "train_batch_size: 2\n"
            "dataloader_num_workers: 1\n"
            "max_train_steps: 4\n"
            "learning_rate: 3e-3\n"
            "lr_warmup_steps: 1\n"
            "checkpointing_steps: 2\n"
            "num_validation_images: 0\n"
            "use_ema: false\n"
            "model:\n"
            "  block_out_channels: [8, 8]\n"
            "  down_block_types: [DownBlock2D, DownBlock2D]\n"
            "  up_block_types: [UpBlock2D, UpBlock2D]\n"
            "  layers_per_block: 1\n"
            "  norm_num_groups: 4\n",
            data);
    fclose(f);
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(reliability_run, .init = setup, .fini = teardown, .timeout = 300);

/* `diffusion train <yaml> output_dir=<root>/<run> <extra>`: the exit code, output in buf. */
static int train(const char *run, const char *extra, char *buf, size_t len) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s train %s output_dir=%s/%s %s", DF_CLI, yaml, root, run, extra);
    return run_command(cmd, buf, len);
}

static bool exists(const char *rel) {
    char path[600];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", root, rel);
    return stat(path, &st) == 0;
}

static char *slurp(const char *rel, size_t *len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    return read_whole_file(path, len);
}

static void expect_same(const char *a, const char *b) {
    size_t la, lb;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    cr_assert(x && y, "missing %s or %s", a, b);
    cr_expect(la == lb && memcmp(x, y, la) == 0, "%s and %s differ", a, b);
    free(x);
    free(y);
}

static void damage(const char *rel) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    FILE *f = fopen(path, "r+b");
    cr_assert(f, "%s", path);
    fseek(f, 100, SEEK_SET);
    int c = fgetc(f);
    fseek(f, 100, SEEK_SET);
    fputc(c ^ 0x55, f);
    fclose(f);
}

static int count_lines(const char *rel) {
    size_t len;
    char *t = slurp(rel, &len);
    int n = 0;
    for (size_t i = 0; t && i < len; i++) n += t[i] == '\n';
    free(t);
    return n;
}

/* Issue 23.2 and 23.1: rerunning into a used folder without --resume restarted at step 0,
 * truncated metrics.jsonl and then rotated the new checkpoints away. */
Test(reliability_run, fresh_start_in_used_folder_is_refused) {
    char out[65536];
    cr_assert_eq(train("d", "", out, sizeof out), 0, "%s", out);
    size_t la;
    char *metrics = slurp("d/metrics.jsonl", &la);
    cr_assert_eq(train("d", "seed=8 --stop-after-steps 2", out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "already holds a run (2 checkpoints, the newest checkpoint-4"), "%s",
              out);
    cr_assert(strstr(out, "--resume latest") && strstr(out, "another output_dir") &&
                  strstr(out, "--overwrite"),
              "%s", out);
    /* nothing was touched */
    size_t lb;
    char *again = slurp("d/metrics.jsonl", &lb);
    cr_assert(la == lb && memcmp(metrics, again, la) == 0, "metrics.jsonl changed");
    free(metrics);
    free(again);
    cr_assert(exists("d/checkpoint-2/DONE") && exists("d/checkpoint-4/DONE"));
}

Test(reliability_run, overwrite_moves_the_old_run_aside) {
    char out[65536];
    cr_assert_eq(train("d", "", out, sizeof out), 0, "%s", out);
    df_run_identity first, second, moved;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/d", root);
    cr_assert_eq(df_run_identity_load(dir, &first), DF_OK, "%s", df_last_error());
    cr_assert_eq(train("d", "seed=8 max_train_steps=2 --overwrite", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "moved the previous run"), "%s", out);
    /* the old run is whole under its new name; the new run is a new identity */
    snprintf(dir, sizeof dir, "%s/d.old-1/checkpoint-4", root);
    cr_assert_eq(df_ckpt_verify(dir), DF_OK, "%s", df_last_error());
    snprintf(dir, sizeof dir, "%s/d.old-1", root);
    cr_assert_eq(df_run_identity_load(dir, &moved), DF_OK);
    cr_assert_str_eq(moved.run_id, first.run_id);
    snprintf(dir, sizeof dir, "%s/d", root);
    cr_assert_eq(df_run_identity_load(dir, &second), DF_OK);
    cr_assert_str_neq(second.run_id, first.run_id);
    cr_assert_eq(second.seed, 8);
    cr_assert(!exists("d/checkpoint-4") && exists("d/checkpoint-2/DONE"));
    cr_assert_eq(count_lines("d/metrics.jsonl"), 2);
    cr_assert_eq(train("d", "--overwrite --resume latest", out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "give one of them"), "%s", out);
}

/* The lock: a folder held by a live process is refused, naming the holder; a lock left by a
 * process that died is taken over with a note. */
Test(reliability_run, second_training_in_a_held_folder_is_refused) {
    char out[65536], dir[600];
    snprintf(dir, sizeof dir, "%s/held", root);
    df_run_lock lock;
    cr_assert_eq(df_run_lock_acquire(&lock, dir), DF_OK, "%s", df_last_error());
    cr_assert_eq(train("held", "", out, sizeof out), 1, "%s", out);
    char pid[64];
    snprintf(pid, sizeof pid, "in use by another training (pid %ld host ", (long)getpid());
    cr_assert(strstr(out, pid), "%s", out);
    df_run_lock_release(&lock);
    /* a holder that died: its line is still in the file, the lock is free */
    char path[700];
    snprintf(path, sizeof path, "%s/run.lock", dir);
    FILE *f = fopen(path, "w");
    fputs("pid 999999 host gone since 2026-01-01T00:00:00Z\n", f);
    fclose(f);
    cr_assert_eq(train("held", "max_train_steps=1", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "ended without releasing it (pid 999999 host gone"), "%s", out);
    /* a clean exit leaves the lock file empty: no stale note next time */
    cr_assert_eq(count_lines("held/run.lock"), 0);
}

/* Two real trainings at once: the second is refused while the first runs; SIGTERM then stops the
 * first with a checkpoint and the message to rerun with --resume latest. */
Test(reliability_run, two_trainings_at_once_and_sigterm) {
    char outdir[400], out[65536];
    snprintf(outdir, sizeof outdir, "output_dir=%s/busy", root);
    char log[400];
    snprintf(log, sizeof log, "%s/busy.log", root);
    char *argv[] = {(char *)DF_CLI, "train", yaml, outdir, "max_train_steps=100000", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid;
    cr_assert_eq(posix_spawn(&pid, DF_CLI, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    /* wait until it trains (a metrics line is written after its first step) */
    for (int i = 0; i < 6000 && count_lines("busy/metrics.jsonl") < 1; i++) {
        struct timespec d = {0, 10000000};
        nanosleep(&d, NULL);
    }
    bool started = count_lines("busy/metrics.jsonl") >= 1;
    int rc = started ? train("busy", "--resume latest", out, sizeof out) : -1;
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(started, "the first training never started");
    cr_assert_eq(rc, 1, "%s", out);
    cr_assert(strstr(out, "is in use by another training (pid "), "%s", out);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    size_t len;
    char *text = slurp("busy.log", &len);
    cr_assert(text && strstr(text, "stopped by a signal after step") &&
                  strstr(text, "rerun the same command with --resume latest"),
              "%s", text);
    free(text);
}

Test(reliability_run, stop_after_steps_says_resume_latest) {
    char out[65536];
    cr_assert_eq(train("s", "--stop-after-steps 1", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "stopped by --stop-after-steps after step 1; checkpoint written. To "
                          "continue, rerun the same command with --resume latest"),
              "%s", out);
    cr_assert_eq(train("s", "--resume latest", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "resuming from") && strstr(out, "checkpoint-1 (step 1)"), "%s", out);
}

/* Issue 23.1: checkpoints_total_limit removed by step number, so older runs' or damaged ones
 * could outrank the checkpoint just written. Now: only this run's complete older ones go. */
Test(reliability_run, rotation_removes_only_this_runs_older_complete_checkpoints) {
    char out[65536];
    const char *opts = "checkpoints_total_limit=2 checkpointing_steps=1 max_train_steps=5";
    char args[256];
    snprintf(args, sizeof args, "%s --stop-after-steps 3", opts);
    cr_assert_eq(train("rot", args, out, sizeof out), 0, "%s", out);
    cr_assert(!exists("rot/checkpoint-1") && exists("rot/checkpoint-2") &&
              exists("rot/checkpoint-3"));
    char path[600];
    snprintf(path, sizeof path, "%s/rot/checkpoint-2/training/model.safetensors", root);
    cr_assert_eq(truncate(path, 64), 0); /* damaged in a way the rotation's size check sees */
    snprintf(args, sizeof args, "%s --resume latest", opts);
    cr_assert_eq(train("rot", args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "damaged checkpoint") && strstr(out, "not counted"), "%s", out);
    /* 2 is damaged: reported, kept; 3 was this run's and older than the two newest */
    cr_assert(exists("rot/checkpoint-2") && !exists("rot/checkpoint-3") &&
                  exists("rot/checkpoint-4/DONE") && exists("rot/checkpoint-5/DONE"),
              "%s", out);
}

/* `--resume latest` takes this run's newest valid checkpoint, never another run's (even a
 * newer one); writing the same step later moves the foreign one aside instead of deleting it. */
Test(reliability_run, resume_latest_ignores_other_runs) {
    char out[65536], cmd[1024];
    cr_assert_eq(train("a", "", out, sizeof out), 0, "%s", out);
    cr_assert_eq(train("b", "seed=8 --stop-after-steps 2", out, sizeof out), 0, "%s", out);
    snprintf(cmd, sizeof cmd, "cp -r %s/a/checkpoint-4 %s/b/checkpoint-4", root, root);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(train("b", "seed=8 --resume latest", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "checkpoint-4 belongs to another run"), "%s", out);
    cr_assert(strstr(out, "checkpoint-2 (step 2)"), "%s", out);
    cr_assert(strstr(out, "moved to"), "%s", out);
    expect_same("a/checkpoint-4/training/model.safetensors",
                "b/checkpoint-4.displaced-1/training/model.safetensors");
    char dir[600], id[DF_RUN_ID_LEN];
    df_run_identity b;
    snprintf(dir, sizeof dir, "%s/b", root);
    cr_assert_eq(df_run_identity_load(dir, &b), DF_OK);
    snprintf(dir, sizeof dir, "%s/b/checkpoint-4", root);
    cr_assert_eq(df_ckpt_run_id(dir, id, sizeof id), DF_OK);
    cr_assert_str_eq(id, b.run_id);
}

/* Issue 23.1: with every checkpoint damaged a requeued job restarted at step 0 ("no checkpoint
 * yet") and rotated each new checkpoint away. */
Test(reliability_run, all_checkpoints_damaged_is_an_error) {
    char out[65536];
    cr_assert_eq(train("dm", "", out, sizeof out), 0, "%s", out);
    damage("dm/checkpoint-2/training/optimizer.safetensors");
    damage("dm/checkpoint-4/training/optimizer.safetensors");
    cr_assert_eq(train("dm", "--resume latest", out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "every checkpoint of this run is damaged (checkpoint-4, checkpoint-2"),
              "%s", out);
    cr_assert(!strstr(out, "no checkpoint"), "%s", out);
    cr_assert(exists("dm/checkpoint-2/DONE") && exists("dm/checkpoint-4/DONE"));
}

Test(reliability_run, resume_from_a_missing_folder_says_so) {
    char out[65536], args[600];
    snprintf(args, sizeof args, "--resume %s/nonexistent", root);
    cr_assert_eq(train("m", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "/nonexistent: the folder does not exist"), "%s", out);
    cr_assert(!strstr(out, "DONE"), "%s", out);
}

/* Issue 23.7: a config-change refusal showed two hashes; it lists the keys now. */
Test(reliability_run, config_change_lists_the_keys) {
    char out[65536];
    cr_assert_eq(train("cc", "--stop-after-steps 2", out, sizeof out), 0, "%s", out);
    cr_assert_eq(train("cc", "learning_rate=1e-3 model.block_out_channels=[8,16] --resume latest",
                       out, sizeof out),
                 1, "%s", out);
    cr_assert(strstr(out, "the config changed since this checkpoint: learning_rate: 0.003 -> "
                          "0.001, model.block_out_channels: [8, 8] -> [8, 16]; undo the change, "
                          "or pass --allow-config-change"),
              "%s", out);
}

Test(reliability_run, folder_as_recipe_and_empty_recipe) {
    char out[65536], cmd[1024];
    snprintf(cmd, sizeof cmd, "%s train %s output_dir=%s/x", DF_CLI, root, root);
    cr_assert_eq(run_command(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "is a folder, not a YAML recipe"), "%s", out);
    char empty[400];
    snprintf(empty, sizeof empty, "%s/empty.yaml", root);
    FILE *f = fopen(empty, "w");
    fclose(f);
    /* refused before the default (2.7 GB) model is built: no "training ... parameters" line */
    snprintf(cmd, sizeof cmd, "%s train %s output_dir=%s/x", DF_CLI, empty, root);
    cr_assert_eq(run_command(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "diffusion: config: train_data_dir is not set"), "%s", out);
    cr_assert(!strstr(out, "parameters"), "%s", out);
    cr_assert(!exists("x"), "nothing is created");
}

/* The final export is renamed into place: no temporary left, and a second export (a run resumed
 * to a later max_train_steps) replaces the first whole. */
Test(reliability_run, final_export_is_renamed_into_place) {
    char out[65536];
    cr_assert_eq(train("ex", "max_train_steps=2", out, sizeof out), 0, "%s", out);
    cr_assert(exists("ex/model_index.json") && !exists("ex/.export.tmp") &&
              !exists("ex/.export.old"));
    expect_same("ex/unet/diffusion_pytorch_model.safetensors",
                "ex/checkpoint-2/unet/diffusion_pytorch_model.safetensors");
    cr_assert_eq(
        train("ex", "max_train_steps=4 --resume latest --allow-config-change", out, sizeof out), 0,
        "%s", out);
    cr_assert(!exists("ex/.export.tmp") && !exists("ex/.export.old"));
    expect_same("ex/unet/diffusion_pytorch_model.safetensors",
                "ex/checkpoint-4/unet/diffusion_pytorch_model.safetensors");
}

/* A disk that fills while a checkpoint is written (a file-size limit, SIGXFSZ ignored: writes
 * past it fail with EFBIG as with ENOSPC): the run stops with the write's error, the checkpoint
 * before stays whole and nothing half-written is left; once there is room again, --resume latest
 * ends bit-identical to a run that never stopped. */
Test(reliability_run, disk_full_during_a_checkpoint_then_resume_is_exact) {
    char out[65536];
    cr_assert_eq(train("whole", "", out, sizeof out), 0, "%s", out);
    cr_assert_eq(train("cut", "--stop-after-steps 2", out, sizeof out), 0, "%s", out);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "trap '' XFSZ; ulimit -f 8; exec %s train %s output_dir=%s/cut --resume latest",
             DF_CLI, yaml, root);
    int code = run_command(cmd, out, sizeof out);
    cr_assert(code != 0 && code != 134 && strstr(out, "checkpoint-4"),
              "exit %d (want an error naming the checkpoint write): %s", code, out);
    cr_assert(!exists("cut/checkpoint-4") && !exists("cut/.checkpoint-4.tmp"),
              "nothing half-written under a checkpoint's name");
    char dir[600];
    snprintf(dir, sizeof dir, "%s/cut/checkpoint-2", root);
    cr_assert_eq(df_ckpt_verify(dir), DF_OK, "checkpoint-2 still verifies: %s", df_last_error());
    cr_assert_eq(train("cut", "--resume latest", out, sizeof out), 0, "%s", out);
    expect_same("cut/unet/diffusion_pytorch_model.safetensors",
                "whole/unet/diffusion_pytorch_model.safetensors");
    expect_same("cut/checkpoint-4/training/optimizer.safetensors",
                "whole/checkpoint-4/training/optimizer.safetensors");
}

static uint32_t masked_crc(const void *p, size_t n) {
    uint32_t c = df_crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static bool log_has(const char *rel, const char *needle) {
    size_t len;
    char *t = slurp(rel, &len);
    bool has = t && strstr(t, needle);
    free(t);
    return has;
}

static void wait_for(const char *rel, const char *needle) {
    for (int i = 0; i < 30000 && !log_has(rel, needle); i++) {
        struct timespec d = {0, 10000000};
        nanosleep(&d, NULL);
    }
    cr_assert(log_has(rel, needle), "no '%s' in %s", needle, rel);
}

/* Issue 23.6: a disk full for 2 s left gaps and a spliced line in metrics.jsonl and a corrupt
 * TensorBoard file, with exit 0 and no warning. The full disk is a file-size limit
 * (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail with EFBIG) set before exec and raised
 * again with prlimit once the training has warned; then SIGTERM ends it. */
Test(reliability_run, log_writes_that_fail_are_warned_and_caught_up) {
    char outdir[400], log[400];
    snprintf(outdir, sizeof outdir, "output_dir=%s/full", root);
    snprintf(log, sizeof log, "%s/full.log", root);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives a failed test */
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit r;
        getrlimit(RLIMIT_FSIZE, &r);
        r.rlim_cur = 1600; /* config.yaml fits; metrics and events fill up within ~15 steps */
        setrlimit(RLIMIT_FSIZE, &r);
        execl(DF_CLI, DF_CLI, "train", yaml, outdir, "max_train_steps=100000",
              "checkpointing_steps=0", "logging_steps=1000000", (char *)NULL);
        _exit(127);
    }
    wait_for("full.log", "metrics.jsonl: write failed");
    wait_for("full.log", "tfevents"); /* the events file's warning names it */
    struct rlimit r;
    getrlimit(RLIMIT_FSIZE, &r); /* this process's: unlimited */
    cr_assert_eq(prlimit(pid, RLIMIT_FSIZE, &r, NULL), 0);
    wait_for("full.log", "metrics.jsonl is written again, nothing missing");
    for (int i = 0; i < 30000; i++) {
        size_t len;
        char *t = slurp("full.log", &len);
        const char *w = t ? strstr(t, "is written again") : NULL;
        bool both = w && strstr(w + 1, "is written again");
        free(t);
        if (both) break;
        struct timespec d = {0, 10000000};
        nanosleep(&d, NULL);
    }
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    size_t len;
    char *text = slurp("full.log", &len);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d: %s", status, text);
    cr_assert(strstr(text, "tfevents") && strstr(text, "is written again, nothing missing\n") &&
                  strstr(strstr(text, "is written again") + 1, "is written again"),
              "%s", text);
    free(text);
    /* metrics.jsonl: steps 1..N, each line whole */
    char *m = slurp("full/metrics.jsonl", &len);
    cr_assert(m && len > 0 && m[len - 1] == '\n');
    int steps = 0;
    for (char *p = m; *p; p = strchr(p, '\n') + 1) {
        int step = 0;
        char *nl = strchr(p, '\n');
        cr_assert(sscanf(p, "{\"step\": %d, \"loss\": ", &step) == 1 && step == steps + 1 &&
                      nl[-1] == '}' && !memchr(p + 1, '{', (size_t)(nl - p - 1)),
                  "line %d: %.*s", steps + 1, (int)(nl - p), p);
        steps++;
    }
    free(m);
    cr_assert_gt(len, 1600, "the log should have outgrown the 1600-byte limit");
    /* the events file: whole records (both CRCs), the version record then 2 per step */
    char rel[600];
    DIR *d = NULL;
    snprintf(rel, sizeof rel, "%s/full/logs", root);
    cr_assert((d = opendir(rel)));
    struct dirent *e;
    while ((e = readdir(d)) && strncmp(e->d_name, "events.", 7) != 0) {
    }
    cr_assert(e);
    snprintf(rel, sizeof rel, "full/logs/%s", e->d_name);
    closedir(d);
    unsigned char *ev = (unsigned char *)slurp(rel, &len);
    size_t off = 0;
    int records = 0;
    while (off < len) {
        uint64_t n;
        uint32_t crc;
        cr_assert(len - off >= 12, "torn record header");
        memcpy(&n, ev + off, 8);
        memcpy(&crc, ev + off + 8, 4);
        cr_assert_eq(crc, masked_crc(ev + off, 8), "record %d: length CRC", records);
        cr_assert(len - off >= 16 + n, "torn record %d", records);
        memcpy(&crc, ev + off + 12 + n, 4);
        cr_assert_eq(crc, masked_crc(ev + off + 12, n), "record %d: data CRC", records);
        off += 16 + n;
        records++;
    }
    free(ev);
    cr_assert_eq(records, 1 + 2 * steps);
}

/* The run-folder refusals cost nothing: they come before the model is built. The recipe here is
 * the default model (2.7 GB of weights) under an 800 MB address-space limit, so building it
 * first would fail on memory instead of giving the refusal. */
Test(reliability_run, refusals_come_before_the_model_is_built) {
    char out[65536], cmd[2048], big[400];
    cr_assert_eq(train("d", "max_train_steps=2", out, sizeof out), 0, "%s", out);
    snprintf(big, sizeof big, "%s/big.yaml", root);
    FILE *f = fopen(big, "w");
    fprintf(f, "train_data_dir: %s/data\n", root);
    fclose(f);
    snprintf(cmd, sizeof cmd, "ulimit -v 800000; %s train %s output_dir=%s/d", DF_CLI, big, root);
    cr_assert_eq(run_command(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "already holds a run"), "%s", out);
    snprintf(cmd, sizeof cmd, "ulimit -v 800000; %s train %s output_dir=%s/d --resume %s/nowhere",
             DF_CLI, big, root, root);
    cr_assert_eq(run_command(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "/nowhere: the folder does not exist"), "%s", out);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/d", root);
    df_run_lock lock;
    cr_assert_eq(df_run_lock_acquire(&lock, dir), DF_OK, "%s", df_last_error());
    snprintf(cmd, sizeof cmd, "ulimit -v 800000; %s train %s output_dir=%s/d --resume latest",
             DF_CLI, big, root);
    cr_assert_eq(run_command(cmd, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "is in use by another training"), "%s", out);
    df_run_lock_release(&lock);
}
