/* test_reliability_io.c — "never lose a run" for inputs and outputs (issue 23,
 * docs/reliability.md): out of memory is an error naming the allocation, never an abort (the
 * CLI under DF_MEM_LIMIT and under a real RLIMIT_AS, the library's returnable allocations);
 * `sample` and `forward` refuse an output that is one of their inputs and write atomically;
 * argument errors say what is wrong; NaN latents warn; --latents and --n must agree. */
#include "autograd/autograd_impl.h"
#include "datasets/datasets.h"
#include "nn/nn.h"
#include "recipes/cli.h"
#include "tests/common/check.h"
#include "train/train.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[256];

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/df_relio_XXXXXX");
    cr_assert(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/pipe", dir);
    fixture_ddpm_pipeline(path);
}

static void teardown(void) {
    df_remove_tree(dir);
}

TestSuite(recipes_reliability_io, .init = setup, .fini = teardown);

/* Runs `diffusion ARGS` with `env` (may be "") and returns the exit code; a signal gives -1. */
static int run(const char *env, const char *args, char *out, size_t len) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s %s", env, DF_CLI, args);
    return run_command(cmd, out, len);
}

/* FNV-1a of a file's bytes (0 when missing): "unchanged" checks. */
static uint64_t file_hash(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    uint64_t h = 0xcbf29ce484222325ull;
    int c;
    while ((c = fgetc(f)) != EOF) h = (h ^ (uint64_t)c) * 0x100000001b3ull;
    fclose(f);
    return h;
}

static void save_latents(const char *path, int n, float fill_nan_at) {
    df_tensor *lat = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(n, 3, 16, 16));
    df_torchgen g;
    df_torchgen_seed(&g, 3);
    df_torchgen_randn(&g, df_f32(lat), lat->numel);
    if (fill_nan_at >= 0)
        for (int64_t i = 0; i < lat->numel; i++) df_f32(lat)[i] = NAN;
    const char *name = "latents";
    cr_assert_eq(df_st_save(path, 1, &name, (const df_tensor *const *)&lat, 0, NULL, NULL), DF_OK,
                 "%s", df_last_error());
    df_tensor_free(lat);
}

/* ---------------------------------------------------------------- out of memory -------------- */

Test(recipes_reliability_io, oom_in_an_op_is_an_error_not_an_abort) {
    char out[8192], args[1024];
    snprintf(args, sizeof args, "sample %s/pipe --steps 2 --n 64 --out %s/g.png", dir, dir);
    int rc = run("DF_MEM_LIMIT=3M", args, out, sizeof out);
    cr_assert_eq(rc, DF_EXIT_OOM, "exit %d (134 is an abort):\n%s", rc, out);
    cr_assert(strstr(out, "diffusion: out of memory allocating tensor F32 (64, "), "%s", out);
    cr_assert(strstr(out, " in use, "), "%s", out);
    cr_assert(strstr(out, "lower train_batch_size or the resolution"), "%s", out);
    cr_assert_null(strstr(out, "assertion failed"), "%s", out);
    cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "not one line: %s", out);
    snprintf(args, sizeof args, "%s/g.png", dir);
    cr_assert_eq(access(args, F_OK), -1, "a grid was written");
}

/* The real thing: the address space limited in a child, so that the system allocator fails. */
Test(recipes_reliability_io, oom_under_rlimit_as) {
    char args[1024];
    snprintf(args, sizeof args, "%s/big.safetensors", dir);
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct rlimit rl = {(rlim_t)1 << 30, (rlim_t)1 << 30}; /* 1 GiB; --n 4096 needs more */
        setrlimit(RLIMIT_AS, &rl);
        dup2(pipefd[1], 2);
        dup2(pipefd[1], 1);
        char pipe_dir[300];
        snprintf(pipe_dir, sizeof pipe_dir, "%s/pipe", dir);
        execl(DF_CLI, DF_CLI, "sample", pipe_dir, "--steps", "2", "--n", "4096", "--out-tensor",
              args, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    static char out[1 << 16];
    size_t n = 0;
    ssize_t got;
    while ((got = read(pipefd[0], out + n, sizeof out - 1 - n)) > 0) n += (size_t)got;
    out[n] = '\0';
    close(pipefd[0]);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st), "killed by signal %d:\n%s", WIFSIGNALED(st) ? WTERMSIG(st) : 0, out);
    cr_assert_eq(WEXITSTATUS(st), DF_EXIT_OOM, "%s", out);
    cr_assert(strstr(out, "diffusion: out of memory allocating "), "%s", out);
    cr_assert_eq(access(args, F_OK), -1, "an output was written");
}

Test(recipes_reliability_io, returnable_allocations_return_nomem) {
    df_mem_set_limit((size_t)64 << 20);
    df_tensor *t = NULL;
    cr_assert_eq(df_tensor_try_new_owned(DF_DTYPE_F32, DF_DIMS(1024, 1024, 32), &t), DF_ERR_NOMEM);
    cr_assert_null(t);
    cr_assert(strstr(df_last_error(), "out of memory allocating 128.0 MiB"), "%s", df_last_error());
    cr_assert(strstr(df_last_error(), "for a tensor F32 (1024, 1024, 32)"), "%s", df_last_error());
    cr_assert(strstr(df_last_error(), "limit 64.0 MiB"), "%s", df_last_error());
    /* flat buffers: the parameters stay as they were */
    df_tensor *p = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(1024, 1024, 10)); /* 40 MiB */
    df_flat flat;
    cr_assert_eq(df_flat_init(&flat, &p, 1), DF_ERR_NOMEM);
    cr_assert(strstr(df_last_error(), "for the flat parameters of 1 tensors") ||
                  strstr(df_last_error(), "for the flat gradients of 1 tensors"),
              "%s", df_last_error());
    cr_assert_eq(p->storage->bytes, (size_t)40 << 20, "the parameter was rebound");
    df_tensor_free(p);
    df_mem_set_limit(0);
    cr_assert_eq(df_tensor_try_new_owned(DF_DTYPE_F32, DF_DIMS(16), &t), DF_OK);
    df_tensor_free(t);
}

static void exit_handler(const char *msg) {
    fprintf(stderr, "handler: %s\n", msg);
    _exit(DF_EXIT_OOM);
}

/* An allocation that cannot return a status goes to the installed handler (in a child). */
Test(recipes_reliability_io, oom_handler_is_called_with_the_allocation) {
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        df_set_oom_handler(exit_handler);
        df_mem_set_limit((size_t)1 << 20);
        df_tensor *t = df_tensor_new(DF_DTYPE_F32, DF_DIMS(2, 512, 512)); /* 2 MiB */
        (void)t;
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == DF_EXIT_OOM, "status %d", st);
}

/* ---------------------------------------------------------------- outputs are not inputs ------ */

Test(recipes_reliability_io, sample_refuses_outputs_that_are_inputs) {
    char out[8192], args[2048], w[512], lat[512];
    snprintf(w, sizeof w, "%s/pipe/unet/diffusion_pytorch_model.safetensors", dir);
    uint64_t before = file_hash(w);
    snprintf(args, sizeof args, "sample %s/pipe --steps 2 --n 1 --out-tensor %s", dir, w);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "is the model's file"), "%s", out);
    cr_assert(strstr(out, "choose another output"), "%s", out);
    cr_assert_eq(file_hash(w), before, "the weights were touched");
    /* a new weight-like name in the model's folder */
    snprintf(args, sizeof args,
             "sample %s/pipe --steps 2 --n 1 --out-tensor %s/pipe/unet/model.safetensors", dir,
             dir);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "which reads files of this name"), "%s", out);
    /* the latents file */
    snprintf(lat, sizeof lat, "%s/lat.safetensors", dir);
    save_latents(lat, 2, -1);
    before = file_hash(lat);
    snprintf(args, sizeof args, "sample %s/pipe --steps 2 --latents %s --out-tensor %s", dir, lat,
             lat);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "is the input"), "%s", out);
    cr_assert_eq(file_hash(lat), before);
}

Test(recipes_reliability_io, forward_refuses_outputs_that_are_inputs) {
    char out[8192], args[4096], w[512], in[512];
    snprintf(w, sizeof w, "%s/pipe/unet/diffusion_pytorch_model.safetensors", dir);
    snprintf(in, sizeof in, "%s/pipe/unet/inputs.safetensors", dir);
    uint64_t wh = file_hash(w), ih = file_hash(in);
    snprintf(args, sizeof args, "forward %s/pipe/unet --inputs %s --out %s", dir, in, w);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "diffusion: forward: ") && strstr(out, "is the model's file"), "%s", out);
    snprintf(args, sizeof args, "forward %s/pipe/unet --inputs %s --out %s", dir, in, in);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "is the input"), "%s", out);
    snprintf(args, sizeof args,
             "forward %s/pipe/unet --inputs %s --out %s/o.st --backward %s "
             "--grads %s",
             dir, in, dir, in, in);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert_eq(file_hash(w), wh, "the weights were touched");
    cr_assert_eq(file_hash(in), ih, "the inputs were touched");
    /* an ordinary output still works, and replaces an older file whole */
    snprintf(args, sizeof args, "%s/o.safetensors", dir);
    FILE *f = fopen(args, "w");
    fputs("old", f);
    fclose(f);
    snprintf(args, sizeof args, "forward %s/pipe/unet --inputs %s --out %s/o.safetensors", dir, in,
             dir);
    cr_assert_eq(run("", args, out, sizeof out), 0, "%s", out);
    snprintf(args, sizeof args, "%s/o.safetensors", dir);
    df_st_file *sf;
    cr_assert_eq(df_st_open(args, &sf), DF_OK, "%s", df_last_error());
    cr_assert(df_st_find(sf, "sample"));
    df_st_close(sf);
}

/* ---------------------------------------------------------------- sample's arguments ---------- */

Test(recipes_reliability_io, sample_argument_errors_say_what_is_wrong) {
    char out[8192], args[2048];
    static const struct {
        const char *args, *want;
        int rc;
    } cases[] = {
        {"", "missing MODEL_DIR", 2},
        {"P --steps x", "--steps must be an integer in 1..100000, got 'x'", 2},
        {"P --n 0", "--n must be an integer in 1..4096, got '0'", 2},
        {"P --seed -1", "--seed must be a non-negative integer", 2},
        {"P --colour red", "unknown option '--colour'", 2},
        {"P Q", "unexpected argument 'Q'", 2},
        {"P --steps", "--steps needs a value", 2},
        {"P --out a.png --out-tensor b.safetensors", "exclude each other", 2},
        {"P --out grid.jpg", "only PNG is written", 2},
        {"P --out grid.JPEG", "only PNG is written", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char a[512];
        snprintf(a, sizeof a, "%s", cases[i].args);
        char *p = strstr(a, "P");
        if (p && p == a) {
            snprintf(args, sizeof args, "sample %s/pipe%s", dir, a + 1);
        } else {
            snprintf(args, sizeof args, "sample %s", a);
        }
        cr_assert_eq(run("", args, out, sizeof out), cases[i].rc, "%s: %s", cases[i].args, out);
        cr_assert(strstr(out, "diffusion: sample: "), "%s: %s", cases[i].args, out);
        cr_assert(strstr(out, cases[i].want), "%s: want '%s' in %s", cases[i].args, cases[i].want,
                  out);
        cr_assert(strstr(out, "usage: diffusion sample"), "%s", out);
    }
}

Test(recipes_reliability_io, latents_and_a_different_n_conflict) {
    char out[8192], args[2048], lat[512];
    snprintf(lat, sizeof lat, "%s/lat.safetensors", dir);
    save_latents(lat, 2, -1);
    snprintf(args, sizeof args, "sample %s/pipe --steps 2 --latents %s --n 3 --out %s/g.png", dir,
             lat, dir);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "'latents' holds 2 images but --n asks for 3"), "%s", out);
    snprintf(args, sizeof args, "sample %s/pipe --steps 2 --latents %s --n 2 --out %s/g.png", dir,
             lat, dir);
    cr_assert_eq(run("", args, out, sizeof out), 0, "%s", out);
}

Test(recipes_reliability_io, nan_latents_warn) {
    char out[8192], args[2048], lat[512];
    snprintf(lat, sizeof lat, "%s/nan.safetensors", dir);
    save_latents(lat, 1, 0);
    snprintf(args, sizeof args, "sample %s/pipe --steps 2 --latents %s --out %s/g.png", dir, lat,
             dir);
    cr_assert_eq(run("", args, out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "warning: sample: 768 of 768 values of the final latents are NaN"), "%s",
              out);
    /* finite latents: no warning */
    save_latents(lat, 1, -1);
    cr_assert_eq(run("", args, out, sizeof out), 0, "%s", out);
    cr_assert_null(strstr(out, "warning"), "%s", out);
}

/* ---------------------------------------------------------------- df_outfile ------------------ */

Test(recipes_reliability_io, outfile_replaces_only_on_commit) {
    char path[512];
    snprintf(path, sizeof path, "%s/x.bin", dir);
    FILE *f = fopen(path, "w");
    fputs("old", f);
    fclose(f);
    uint64_t old = file_hash(path);
    df_outfile o;
    cr_assert_eq(df_outfile_begin(&o, path), DF_OK);
    cr_assert_str_neq(df_outfile_name(&o), path);
    f = fopen(df_outfile_name(&o), "w");
    fputs("new", f);
    fclose(f);
    cr_assert_eq(file_hash(path), old, "visible before the commit");
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s", df_outfile_name(&o));
    df_outfile_abort(&o);
    cr_assert_eq(file_hash(path), old);
    cr_assert_eq(access(tmp, F_OK), -1, "abort left the temporary");
    cr_assert_eq(df_outfile_begin(&o, path), DF_OK);
    f = fopen(df_outfile_name(&o), "w");
    fputs("new", f);
    fclose(f);
    cr_assert_eq(df_outfile_commit(&o), DF_OK, "%s", df_last_error());
    cr_assert_neq(file_hash(path), old);
    /* a directory is not a file name; a device is written in place */
    cr_assert_eq(df_outfile_begin(&o, dir), DF_ERR_IO);
    cr_assert_eq(df_outfile_begin(&o, "/dev/null"), DF_OK);
    cr_assert_str_eq(df_outfile_name(&o), "/dev/null");
    cr_assert_eq(df_outfile_commit(&o), DF_OK);
}

/* ---------------------------------------------------------------- training end to end -------- */

/* dir/data: n 8x8 PNGs with metadata.jsonl; dir/tiny.yaml: the unconditional recipe on a tiny
 * UNet over it (as tests/recipes/test_train.c). */
static void make_training(int n) {
    char path[512];
    snprintf(path, sizeof path, "%s/data", dir);
    cr_assert_eq(df_mkdirs(path), DF_OK);
    snprintf(path, sizeof path, "%s/data/metadata.jsonl", dir);
    FILE *meta = fopen(path, "w");
    cr_assert(meta);
    for (int i = 0; i < n; i++) {
        df_tensor *img = df_tensor_new_owned(DF_DTYPE_U8, DF_DIMS(8, 8, 3));
        for (int64_t k = 0; k < img->numel; k++) ((uint8_t *)img->data)[k] = (uint8_t)(k * 7 + i);
        snprintf(path, sizeof path, "%s/data/%02d.png", dir, i);
        cr_assert_eq(df_png_write(path, img, 0, NULL, NULL), DF_OK, "%s", df_last_error());
        df_tensor_free(img);
        fprintf(meta, "{\"file_name\": \"%02d.png\", \"text\": \"x\"}\n", i);
    }
    fclose(meta);
    snprintf(path, sizeof path, "%s/tiny.yaml", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fprintf(f,
            "recipe: unconditional\ntrain_data_dir: %s/data\nresolution: 8\ntrain_batch_size: 4\n"
            "dataloader_num_workers: 1\nmax_train_steps: 4\nlearning_rate: 1e-3\n"
            "checkpointing_steps: 2\nnum_validation_images: 0\nmodel:\n"
            "  block_out_channels: [8, 16]\n  down_block_types: [DownBlock2D, AttnDownBlock2D]\n"
            "  up_block_types: [AttnUpBlock2D, UpBlock2D]\n  layers_per_block: 1\n"
            "  norm_num_groups: 4\n",
            dir);
    fclose(f);
}

/* A training folder whose images are all unreadable is refused at the start, naming the count,
 * instead of training on empty batches (issue 23 point 5); a FIFO among them does not block. */
Test(recipes_reliability_io, train_refuses_data_with_no_readable_image, .timeout = 120) {
    make_training(4);
    char path[512], args[2048], out[65536];
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/data/%02d.png", dir, i);
        FILE *f = fopen(path, "w");
        fputs("not a png", f);
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/data/03.png", dir);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(mkfifo(path, 0644), 0);
    snprintf(args, sizeof args, "train %s/tiny.yaml output_dir=%s/run skip_bad_images=true", dir,
             dir);
    cr_assert_eq(run("", args, out, sizeof out), 1, "%s", out);
    cr_assert(strstr(out, "none of the 3 images is readable"), "%s", out);
    cr_assert(strstr(out, "03.png: a FIFO, not a regular file"), "%s", out);
    snprintf(path, sizeof path, "%s/run/unet/diffusion_pytorch_model.safetensors", dir);
    cr_assert_eq(access(path, F_OK), -1, "an untrained model was exported");
}

/* Out of memory while training exits 3 with the message, and the checkpoint committed before
 * stays valid: resuming under a memory cap that the first step cannot meet leaves it intact. */
Test(recipes_reliability_io, train_oom_keeps_the_last_checkpoint, .timeout = 300) {
    make_training(8);
    char args[2048], out[65536], ckpt[512];
    snprintf(args, sizeof args, "train %s/tiny.yaml output_dir=%s/run --stop-after-steps 2", dir,
             dir);
    cr_assert_eq(run("", args, out, sizeof out), 0, "%s", out);
    snprintf(ckpt, sizeof ckpt, "%s/run/checkpoint-2", dir);
    cr_assert_eq(df_ckpt_verify(ckpt), DF_OK, "%s", df_last_error());
    snprintf(args, sizeof args, "train %s/tiny.yaml output_dir=%s/run --resume latest", dir, dir);
    int rc = run("DF_MEM_LIMIT=600K", args, out, sizeof out);
    cr_assert_eq(rc, DF_EXIT_OOM, "exit %d:\n%s", rc, out);
    cr_assert(strstr(out, "diffusion: out of memory allocating "), "%s", out);
    cr_assert_eq(df_ckpt_verify(ckpt), DF_OK, "the committed checkpoint was damaged: %s",
                 df_last_error());
    /* and the run resumes from it once memory is there */
    cr_assert_eq(run("", args, out, sizeof out), 0, "%s", out);
}
