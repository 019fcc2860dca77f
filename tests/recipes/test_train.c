/* test_train.c — `diffusion train` end to end on a tiny UNet and a generated 16-image dataset:
 * the loss falls; N + stop + resume + N equals 2N bit for bit (weights, optimizer and EMA state,
 * every step's loss); the same through kill -9 at random moments (checkpoints every step, so
 * kills land inside checkpoint writes) with automatic resume from `latest`; a damaged newest
 * checkpoint falls back to the previous one; config errors are exact; an injected NaN leaves
 * the weights unchanged and is counted. */
#include "datasets/datasets.h"
#include "tests/common/check.h"
#include "train/train.h"

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static char root[256], data[300], yaml[300];

/* 16 images of 8x8: colored squares on a gradient, with captions. */
static void make_dataset(void) {
    snprintf(data, sizeof data, "%s/data", root);
    cr_assert_eq(df_mkdirs(data), DF_OK);
    char path[512];
    snprintf(path, sizeof path, "%s/metadata.jsonl", data);
    FILE *meta = fopen(path, "w");
    cr_assert(meta);
    for (int i = 0; i < 16; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(8, 8, 3));
        uint8_t *p = img->data;
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
                for (int c = 0; c < 3; c++) {
                    bool inside = x >= 2 && x < 6 && y >= 2 && y < 6;
                    p[(y * 8 + x) * 3 + c] =
                        (uint8_t)(inside ? (i * 37 + c * 80) % 256 : (x * 16 + y * 8 + c * 40));
                }
        snprintf(path, sizeof path, "%s/%02d.png", data, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
        fprintf(meta, "{\"file_name\": \"%02d.png\", \"text\": \"square %d\"}\n", i, i);
    }
    fclose(meta);
}

static void setup(void) {
    snprintf(root, sizeof root, "/tmp/df_train_XXXXXX");
    cr_assert(mkdtemp(root));
    make_dataset();
    snprintf(yaml, sizeof yaml, "%s/tiny.yaml", root);
    FILE *f = fopen(yaml, "w");
    cr_assert(f);
    fprintf(f,
            "recipe: unconditional\n"
            "train_data_dir: %s\n"
            "resolution: 8\n"
            "train_batch_size: 4\n"
            "dataloader_num_workers: 1\n"
            "max_train_steps: 12\n"
            "learning_rate: 3e-3\n"
            "lr_scheduler: cosine\n"
            "lr_warmup_steps: 2\n"
            "checkpointing_steps: 0\n"
            "num_validation_images: 0\n"
            "model:\n"
            "  block_out_channels: [8, 16]\n"
            "  down_block_types: [DownBlock2D, AttnDownBlock2D]\n"
            "  up_block_types: [AttnUpBlock2D, UpBlock2D]\n"
            "  layers_per_block: 1\n"
            "  norm_num_groups: 4\n",
            data);
    fclose(f);
}

static void teardown(void) {
    df_remove_tree(root);
}

TestSuite(recipes_train, .init = setup, .fini = teardown);
TestSuite(recipes_train_slow, .init = setup, .fini = teardown);

/* Runs `diffusion train <yaml> output_dir=<out> <extra>` with `threads` OpenMP threads; returns
 * the exit code, output in buf. */
static int train_threads(int threads, const char *out, const char *extra, char *buf, size_t len) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=%d %s train %s output_dir=%s/%s %s", threads, DF_CLI,
             yaml, root, out, extra);
    return run_command(cmd, buf, len);
}

static int train(const char *out, const char *extra, char *buf, size_t len) {
    return train_threads(2, out, extra, buf, len);
}

/* metrics.jsonl without the timing field (it_s) and the memory fields (the last three), which
 * differ run to run. */
static char *losses_of(const char *run) {
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", root, run);
    char *text = read_whole_file(path, &len);
    cr_assert(text, "no %s", path);
    char *out = malloc(len + 1), *o = out;
    for (char *p = text; *p;) {
        char *nl = strchr(p, '\n');
        char *end = nl ? nl + 1 : p + strlen(p);
        char *it = strstr(p, "\"it_s\": "), *mem = strstr(p, ", \"mem_mib\": ");
        if (it && it < end) { /* up to it_s, then from the field after it */
            memcpy(o, p, (size_t)(it - p));
            o += it - p;
            p = strchr(it, ',') + 2;
        }
        if (mem && mem < end) { /* up to the memory fields, then the line's end */
            memcpy(o, p, (size_t)(mem - p));
            o += mem - p;
            p = strchr(mem, '}');
        }
        memcpy(o, p, (size_t)(end - p));
        o += end - p;
        p = end;
    }
    *o = '\0';
    free(text);
    return out;
}

static void expect_same_file(const char *a_run, const char *b_run, const char *rel) {
    char pa[512], pb[512];
    size_t la, lb;
    snprintf(pa, sizeof pa, "%s/%s/%s", root, a_run, rel);
    snprintf(pb, sizeof pb, "%s/%s/%s", root, b_run, rel);
    char *a = read_whole_file(pa, &la), *b = read_whole_file(pb, &lb);
    cr_assert(a && b, "missing %s or %s", pa, pb);
    cr_expect(la == lb && memcmp(a, b, la) == 0, "%s differs between %s and %s", rel, a_run, b_run);
    free(a);
    free(b);
}

static void expect_same_run(const char *a, const char *b, int64_t step) {
    static const char *files[] = {"training/model.safetensors", "training/optimizer.safetensors",
                                  "training/ema.safetensors",
                                  "unet/diffusion_pytorch_model.safetensors"};
    char rel[256];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(rel, sizeof rel, "checkpoint-%lld/%s", (long long)step, files[i]);
        expect_same_file(a, b, rel);
    }
    expect_same_file(a, b, "unet/diffusion_pytorch_model.safetensors"); /* the final export */
    char *la = losses_of(a), *lb = losses_of(b);
    cr_expect_str_eq(la, lb, "per-step losses differ");
    free(la);
    free(lb);
}

Test(recipes_train, loss_falls, .timeout = 300) {
    char out[65536];
    cr_assert_eq(train("fall", "max_train_steps=30 learning_rate=1e-2 lr_scheduler=constant", out,
                       sizeof out),
                 0, "%s", out);
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/fall/metrics.jsonl", root);
    char *text = read_whole_file(path, &len);
    double first = 0, last = 0;
    int step = 0;
    for (char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        double loss;
        if (sscanf(strstr(p, "\"loss\": "), "\"loss\": %lf", &loss) != 1) break;
        step++;
        if (step <= 5) first += loss / 5;
        if (step > 25) last += loss / 5;
    }
    /* the memory fields: the allocator's bytes in use and peak, the process's peak RSS */
    double mem = 0, mem_peak = 0, rss = 0;
    char *last_line = strstr(text, "\"step\": 30,");
    cr_assert(last_line && sscanf(strstr(last_line, "\"mem_mib\": "),
                                  "\"mem_mib\": %lf, \"mem_peak_mib\": %lf, \"rss_peak_mib\": %lf",
                                  &mem, &mem_peak, &rss) == 3,
              "no memory fields in %s", text);
    cr_expect(mem > 0 && mem_peak >= mem && rss > 0, "mem %g peak %g rss %g", mem, mem_peak, rss);
    free(text);
    cr_assert_eq(step, 30);
    cr_expect_lt(last, 0.8 * first, "loss did not fall: first 5 steps %.4f, last 5 %.4f", first,
                 last);
    /* the export is a diffusers pipeline folder */
    snprintf(path, sizeof path, "%s/fall/model_index.json", root);
    cr_assert(access(path, R_OK) == 0);
    snprintf(path, sizeof path, "%s/fall/scheduler/scheduler_config.json", root);
    cr_assert(access(path, R_OK) == 0);
    /* with its model card (train/model_card.c): trained from scratch, the recipe, the config */
    snprintf(path, sizeof path, "%s/fall/README.md", root);
    size_t n;
    char *card = read_whole_file(path, &n);
    cr_assert(card, "no model card");
    cr_expect(strstr(card, "- Recipe: `unconditional`") &&
                  strstr(card, "none (trained from scratch)") &&
                  strstr(card, "## Training configuration"),
              "%s", card);
    free(card);
}

Test(recipes_train, stop_and_resume_is_exact, .timeout = 300) {
    char out[65536];
    cr_assert_eq(train("whole", "", out, sizeof out), 0, "%s", out);
    cr_assert_eq(train("split", "--stop-after-steps 5", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "stopped"), "%s", out);
    cr_assert_eq(train("split", "--resume latest", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "resuming from"), "%s", out);
    expect_same_run("whole", "split", 12);
}

/* gradient_checkpointing=true recomputes the UNet's resnet blocks in backward: the run is the
 * plain run bit for bit (checkpoints, export, losses), so the key does not block a resume: a run
 * stopped without it resumes with it. */
Test(recipes_train, gradient_checkpointing_is_exact_and_resumes, .timeout = 300) {
    char out[65536];
    cr_assert_eq(train("plain", "", out, sizeof out), 0, "%s", out);
    cr_assert_eq(train("ck", "--stop-after-steps 5", out, sizeof out), 0, "%s", out);
    cr_assert_eq(train("ck", "gradient_checkpointing=true --resume latest", out, sizeof out), 0,
                 "%s", out);
    cr_assert(strstr(out, "resuming from"), "%s", out);
    expect_same_run("plain", "ck", 12);
}

/* mixed_precision=bf16 (products in BF16, docs/dtypes.md) with gradient_checkpointing: a run
 * stopped and resumed is the uninterrupted one bit for bit, and not the fp32 run; fp16 is
 * refused by name. */
Test(recipes_train, bf16_with_checkpointing_resumes_exactly, .timeout = 300) {
    char out[65536], extra[256];
    const char *mp = "mixed_precision=bf16 gradient_checkpointing=true";
    cr_assert_eq(train("bf16", mp, out, sizeof out), 0, "%s", out);
    snprintf(extra, sizeof extra, "%s --stop-after-steps 5", mp);
    cr_assert_eq(train("bf16split", extra, out, sizeof out), 0, "%s", out);
    snprintf(extra, sizeof extra, "%s --resume latest", mp);
    cr_assert_eq(train("bf16split", extra, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "resuming from"), "%s", out);
    expect_same_run("bf16", "bf16split", 12);
    cr_assert_eq(train("f32", "", out, sizeof out), 0, "%s", out);
    char *l16 = losses_of("bf16"), *l32 = losses_of("f32");
    cr_expect(strcmp(l16, l32) != 0, "bf16 computed the fp32 losses");
    free(l16);
    free(l32);
    cr_assert_neq(train("fp16", "mixed_precision=fp16", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "mixed_precision: fp16 is not supported"), "%s", out);
}

/* --dry-run builds the model and prints the memory plan, without touching the run folder */
Test(recipes_train, dry_run_prints_the_memory_plan) {
    char out[65536];
    cr_assert_eq(train("dry", "--dry-run", out, sizeof out), 0, "%s", out);
    static const char *const lines[] = {"memory plan (unconditional)",
                                        "trainable weights (F32)",
                                        "gradients (F32)",
                                        "optimizer state",
                                        "EMA weights (F32)",
                                        "total before activations",
                                        "activations"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        cr_expect(strstr(out, lines[i]), "no '%s' in:\n%s", lines[i], out);
    /* the model's trainable values, and AdamW's 2 state values per weight */
    long long n_train = 0;
    int slots = 0;
    cr_assert(sscanf(strstr(out, "trainable weights (F32)") + 23, "%lld", &n_train) == 1);
    cr_assert(sscanf(strstr(out, "optimizer state") + 15, "%d", &slots) == 1);
    cr_expect(n_train > 1000 && slots == 2, "trainable %lld, optimizer %d per weight", n_train,
              slots);
    char path[512];
    snprintf(path, sizeof path, "%s/dry", root);
    cr_expect(access(path, F_OK) != 0, "the dry run made its run folder");
}

/* Starts training in the background (`extra`: one more key=value or NULL); returns its pid. */
static pid_t spawn_train(const char *run, bool resume, const char *extra) {
    char outdir[400];
    snprintf(outdir, sizeof outdir, "output_dir=%s/%s", root, run);
    char *argv[] = {(char *)DF_CLI,
                    "train",
                    yaml,
                    outdir,
                    "checkpointing_steps=1",
                    "max_train_steps=30",
                    (char *)(extra ? extra : "max_train_steps=30"),
                    resume ? "--resume" : NULL,
                    "latest",
                    NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    cr_assert_eq(posix_spawn(&pid, DF_CLI, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

/* kill -9 at random moments until a run completes, then compare with an uninterrupted run. */
static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void kill_and_resume(int kills, unsigned seed, const char *extra) {
    char out[65536], dir[512], args[256];
    double t0 = seconds();
    snprintf(args, sizeof args, "checkpointing_steps=1 max_train_steps=30 %s", extra ? extra : "");
    cr_assert_eq(train("ref", args, out, sizeof out), 0, "%s", out);
    /* Kill delays scale with how long a whole run takes here (2% .. 15%), so that each resumed
     * run makes little progress. The machine's speed can change under us: a round in which the
     * run completed before `kills` kills landed is discarded and redone with shorter delays. */
    double whole = seconds() - t0, scale = 1.0;
    srand(seed);
    snprintf(dir, sizeof dir, "%s/killed", root);
    for (int round = 0; round < 6; round++, scale /= 2) {
        df_remove_tree(dir);
        int killed = 0;
        bool done = false;
        for (int attempt = 0; attempt < kills + 30 && !done; attempt++) {
            pid_t pid = spawn_train("killed", attempt > 0, extra);
            int status;
            if (killed < kills) {
                double delay = scale * whole * (0.02 + 0.13 * (rand() / (double)RAND_MAX));
                struct timespec d = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
                nanosleep(&d, NULL);
                if (waitpid(pid, &status, WNOHANG) == 0) {
                    kill(pid, SIGKILL);
                    waitpid(pid, &status, 0);
                    killed++;
                    continue;
                }
            } else {
                waitpid(pid, &status, 0);
            }
            cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "run %d failed (status %d)",
                      attempt, status);
            done = true;
        }
        cr_assert(done, "never completed");
        if (killed < kills) continue; /* completed too early: redo with shorter delays */
        cr_log_info("kill -9: %d kills before completion (round %d)", killed, round);
        expect_same_run("ref", "killed", 30);
        return;
    }
    cr_assert_fail("no round landed %d kills before the run completed", kills);
}

/* The same binary gives the same run at 1 and 3 threads as at 2 (design: exact resume on
 * machines with other core counts). The wider model makes oneDNN's GEMMs pick other blockings
 * by thread count: a forward product of this size rounded differently before every matmul ran
 * with a fixed thread count. */
Test(recipes_train, thread_count_does_not_change_results, .timeout = 300) {
    char out[65536];
    const char *wide = "model.block_out_channels=[32,64] model.norm_num_groups=8 "
                       "train_batch_size=8 max_train_steps=6";
    for (int threads = 1; threads <= 3; threads++) {
        char run[16];
        snprintf(run, sizeof run, "threads%d", threads);
        cr_assert_eq(train_threads(threads, run, wide, out, sizeof out), 0, "%s", out);
    }
    expect_same_run("threads2", "threads1", 6);
    expect_same_run("threads2", "threads3", 6);
}

Test(recipes_train, kill9_and_resume_is_exact, .timeout = 600) {
    kill_and_resume(5, 1234, NULL);
}

/* The long version: CTest runs it as `recipes_slow` (label slow) with DF_SLOW=1. */
Test(recipes_train_slow, kill9_twenty_times, .timeout = 1800) {
    if (!getenv("DF_SLOW")) cr_skip_test("slow: set DF_SLOW=1 (ctest -L slow)");
    kill_and_resume(20, (unsigned)time(NULL), NULL);
}

/* kill -9 with rotation on (kills land inside rotations too): still bit-identical, and the
 * folder ends with this run's two newest checkpoints and no half-removed one (issue 23). */
Test(recipes_train_slow, kill9_with_rotation, .timeout = 1800) {
    if (!getenv("DF_SLOW")) cr_skip_test("slow: set DF_SLOW=1 (ctest -L slow)");
    kill_and_resume(10, (unsigned)time(NULL), "checkpoints_total_limit=2");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/killed", root);
    int64_t steps[64];
    cr_assert_eq(df_ckpt_list(dir, steps, 64), 2);
    cr_assert(steps[0] == 29 && steps[1] == 30, "%lld %lld", (long long)steps[0],
              (long long)steps[1]);
}

Test(recipes_train, damaged_checkpoint_falls_back, .timeout = 300) {
    char out[65536], path[512];
    cr_assert_eq(train("dmg", "checkpointing_steps=4 max_train_steps=8", out, sizeof out), 0, "%s",
                 out);
    snprintf(path, sizeof path, "%s/dmg/checkpoint-8/training/optimizer.safetensors", root);
    FILE *f = fopen(path, "r+b");
    cr_assert(f);
    fseek(f, 200, SEEK_SET);
    fputc('X', f);
    fclose(f);
    cr_assert_eq(
        train("dmg", "checkpointing_steps=4 max_train_steps=8 --resume latest", out, sizeof out), 0,
        "%s", out);
    cr_assert(strstr(out, "skipping damaged checkpoint"), "%s", out);
    cr_assert(strstr(out, "checkpoint-4 (step 4)"), "%s", out);
}

Test(recipes_train, config_errors_are_exact) {
    char out[65536];
    cr_assert_eq(train("e", "learnig_rate=1", out, sizeof out), 1);
    cr_assert(strstr(out, "diffusion: config: unknown key 'learnig_rate' (did you mean "
                          "'learning_rate'?) (command line)\n"),
              "%s", out);
    cr_assert_eq(train("e", "train_batch_size=many", out, sizeof out), 1);
    cr_assert(strstr(out, "diffusion: config: 'train_batch_size': expected an integer, got 'many' "
                          "(command line:1)\n"),
              "%s", out);
    cr_assert_eq(train("e", "learning_rate=-1", out, sizeof out), 1);
    cr_assert(strstr(out, "diffusion: config: 'learning_rate': -1 is out of range [0, 10] "
                          "(command line:1)\n"),
              "%s", out);
    cr_assert_eq(train("e", "train_data_dir=/nonexistent", out, sizeof out), 1);
    cr_assert(strstr(out, "/nonexistent"), "%s", out);
}

Test(recipes_train, injected_nan_is_skipped, .timeout = 300) {
    char out[65536];
    cr_assert_eq(train("nan", "max_train_steps=4 checkpointing_steps=2 inject_nan_at_step=2", out,
                       sizeof out),
                 0, "%s", out);
    /* step index 2 (the third step) was skipped: weights after it equal those before it */
    cr_assert_eq(train("nan2", "max_train_steps=4 checkpointing_steps=3 inject_nan_at_step=2", out,
                       sizeof out),
                 0, "%s", out);
    expect_same_file("nan", "nan2", "checkpoint-4/training/model.safetensors"); /* sanity */
    char a[512], b[512];
    snprintf(a, sizeof a, "checkpoint-2/training/model.safetensors");
    snprintf(b, sizeof b, "%s/nan2/checkpoint-3/training/model.safetensors", root);
    char pa[1024];
    snprintf(pa, sizeof pa, "%s/nan/%s", root, a);
    size_t la, lb;
    char *x = read_whole_file(pa, &la), *y = read_whole_file(b, &lb);
    cr_assert(x && y && la == lb && memcmp(x, y, la) == 0, "the skipped step changed the weights");
    free(x);
    free(y);
    char *m = losses_of("nan");
    cr_assert(strstr(m, "\"step\": 3, \"loss\"") && strstr(m, "\"skipped\": 1"), "%s", m);
    free(m);
}
