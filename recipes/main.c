/* main.c — the `diffusion` program: dispatches to the subcommands of recipes/cmd_*.c and
 * installs the out-of-memory handler (exit code DF_EXIT_OOM). */
#include "recipes/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One line per command; each is defined in recipes/cmd_<name>.c. */
static const df_command commands[] = {
    {"train", "train a recipe from a YAML config", df_cmd_train},
    {"forward", "run a diffusers component on named inputs (and backward)", df_cmd_forward},
    {"schedule", "print a scheduler's timesteps and sigmas", df_cmd_schedule},
    {"dataset", "pack an image folder into HDF5, or inspect a dataset", df_cmd_dataset},
    {"sample", "generate images from a diffusers pipeline folder", df_cmd_sample},
    {"generate", "text-to-image, image-to-image and inpainting with Stable Diffusion",
     df_cmd_generate},
    {"safety-check", "score images with a pipeline's safety checker (one JSON line each)",
     df_cmd_safety_check},
    {"tokenize", "CLIP token ids and attention masks of texts", df_cmd_tokenize},
    {"convert", "a single-file SD checkpoint to a diffusers folder, or back", df_cmd_convert},
    {"lora", "inspect a LoRA file, convert its layout, or merge LoRAs into a pipeline",
     df_cmd_lora},
    {NULL, NULL, NULL},
};

static void usage(FILE *f) {
    fprintf(f, "usage: diffusion <command> [args]\n\ncommands:\n");
    for (const df_command *c = commands; c->name; c++)
        fprintf(f, "  %-10s %s\n", c->name, c->summary);
}

/* OpenMP threads that spin while they wait (libgomp's default) starve the threads they wait for
 * whenever the cores are shared — with our own loader threads, for one: a 32x32 training step
 * measured 8x slower. libgomp reads OMP_WAIT_POLICY when it is loaded, before main, so unless
 * the user chose a policy we set "passive" and run this program again, once. */
static void prefer_passive_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
    /* no /proc: carry on with the active policy */
}

/* Out of memory inside an op (autograd.h's contract): one line naming the allocation, its
 * size and what is in use, a hint, and exit code DF_EXIT_OOM — no abort, no core dump. Files
 * being written are temporaries (df_outfile, checkpoint folders), so nothing committed is
 * damaged. */
static void on_oom(const char *msg) {
    fflush(stdout);
    fprintf(stderr,
            "diffusion: %s; lower train_batch_size or the resolution (sample: --n), or free "
            "memory\n",
            msg);
    fflush(stderr);
    _exit(DF_EXIT_OOM);
}

int main(int argc, char **argv) {
    prefer_passive_openmp(argv);
    df_set_oom_handler(on_oom);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (const df_command *c = commands; c->name; c++)
        if (strcmp(argv[1], c->name) == 0) return c->run(argc - 2, argv + 2);
    fprintf(stderr, "diffusion: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
