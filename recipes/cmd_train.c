/* cmd_train.c — `diffusion train RECIPE.yaml [key=value ...] [--resume latest|DIR]
 * [--overwrite] [--print-config] [--dry-run] [--allow-config-change] [--stop-after-steps N]`:
 * resolves the config (defaults < file < command line; the file's `recipe` key picks the
 * recipe), then runs the trainer. `--print-config` prints the resolved config with where each
 * value came from, and exits; `--dry-run` builds the model and prints the memory plan
 * (df_train_memory_plan) without touching the run folder; `--stop-after-steps N` stops after
 * step N as SIGTERM would (checkpoint, exit 0), for time-boxed jobs and tests; `--overwrite`
 * starts a new run in an output_dir that holds one by moving the old run aside (see
 * train/run_dir.c). Input that cannot train (a folder as the recipe, no train_data_dir) and a
 * run folder that cannot be used (in use, holding another run, a missing --resume folder:
 * df_train_claim) are refused before the model is built.
 *
 * Under mpirun or srun (docs/clusters.md) every rank runs this command: rank 0 claims and
 * writes the run folder, the others only compute; an error on any rank ends the whole job with
 * that rank's message (MPI_Abort), so no rank waits for ever on one that is gone. */
#include "recipes/cli.h"
#include "recipes/recipes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int usage(void) {
    fprintf(stderr, "usage: diffusion train RECIPE.yaml [key=value ...] [--resume latest|DIR] "
                    "[--overwrite] [--print-config] [--dry-run] [--allow-config-change] "
                    "[--stop-after-steps N]\n"
                    "       diffusion train --docs [RECIPE]\n"
                    "       diffusion train --list-recipes\n");
    return 2;
}

/* `diffusion train --docs [RECIPE]`: every config key as a Markdown table (the README's). */
static int print_docs(const char *name) {
    const df_recipe_def *def = df_recipe_find(name);
    if (!def) {
        df_error(DF_ERR_INVALID, "unknown recipe '%s'", name);
        return df_cli_fail("config");
    }
    int n;
    df_cfg_field *schema = df_recipe_schema(def, &n);
    df_config_write_docs(schema, n, stdout);
    free(schema);
    return 0;
}

int df_cmd_train(int argc, char **argv) {
    if (argc >= 1 && strcmp(argv[0], "--docs") == 0)
        return print_docs(argc >= 2 ? argv[1] : df_recipe_at(0)->name);
    if (argc >= 1 && strcmp(argv[0], "--list-recipes") == 0) {
        for (int i = 0; i < df_recipe_count(); i++) printf("%s\n", df_recipe_at(i)->name);
        return 0;
    }
    const char *path = NULL;
    df_train_opts opts = {0};
    bool print = false, dry_run = false;
    int first_override = -1;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--resume") == 0) {
            if (++i >= argc) return usage();
            opts.resume = argv[i];
        } else if (strcmp(argv[i], "--print-config") == 0) {
            print = true;
        } else if (strcmp(argv[i], "--dry-run") == 0) {
            dry_run = true;
        } else if (strcmp(argv[i], "--stop-after-steps") == 0) {
            if (++i >= argc || (opts.stop_after_steps = strtoll(argv[i], NULL, 10)) <= 0)
                return usage();
        } else if (strcmp(argv[i], "--allow-config-change") == 0) {
            opts.allow_config_change = true;
        } else if (strcmp(argv[i], "--overwrite") == 0) {
            opts.overwrite = true;
        } else if (argv[i][0] == '-') {
            return usage();
        } else if (!path) {
            path = argv[i];
        } else if (!strchr(argv[i], '=')) {
            return usage();
        } else if (first_override < 0) {
            first_override = i;
        }
    }
    if (!path) return usage();
    opts.config_path = path;
    if (opts.overwrite && opts.resume) {
        df_error(DF_ERR_INVALID, "--overwrite starts a new run and --resume continues one: give "
                                 "one of them");
        return df_cli_fail("train");
    }
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        df_error(DF_ERR_INVALID, "%s is a folder, not a YAML recipe (e.g. recipes/configs/*.yaml)",
                 path);
        return df_cli_fail("config");
    }
    char name[64];
    if (df_config_peek(path, "recipe", name, sizeof name) != DF_OK) return df_cli_fail("config");
    if (!name[0]) snprintf(name, sizeof name, "unconditional");
    const df_recipe_def *def = df_recipe_find(name);
    if (!def) {
        df_error(DF_ERR_INVALID, "unknown recipe '%s' (%s)", name, path);
        return df_cli_fail("config");
    }
    int n;
    df_cfg_field *schema = df_recipe_schema(def, &n);
    df_config cfg;
    df_config_init(&cfg, schema, n);
    df_status st = df_config_load_yaml(&cfg, path);
    for (int i = first_override; st == DF_OK && i >= 0 && i < argc; i++)
        if (argv[i][0] != '-' && strchr(argv[i], '=') && argv[i] != path)
            st = df_config_set(&cfg, argv[i]);
        else if (strcmp(argv[i], "--resume") == 0 || strcmp(argv[i], "--stop-after-steps") == 0)
            i++;
    int rc = 0;
    if (st != DF_OK) {
        rc = df_cli_fail("config");
    } else if (print) {
        df_config_write(&cfg, stdout, true);
    } else if (!df_config_str(&cfg, "train_data_dir")[0]) {
        df_error(DF_ERR_INVALID,
                 "train_data_dir is not set: give the training images in %s "
                 "(train_data_dir: FOLDER) or on the command line (train_data_dir=FOLDER)",
                 path);
        rc = df_cli_fail("config");
    } else if (dry_run) {
        df_recipe recipe;
        st = def->create(&cfg, &recipe);
        if (st == DF_OK) {
            st = df_train_memory_plan(&cfg, &recipe, stdout);
            recipe.free(recipe.ctx);
        }
        if (st != DF_OK) rc = df_cli_fail("train");
    } else {
        /* the run folder first: a refusal costs nothing, building the model may cost minutes */
        df_run_lock lock = {.fd = -1};
        st = df_dist_init(&opts.rank, &opts.world_size);
        if (st == DF_OK && df_dist_active()) { /* for the job's log, and to signal one rank */
            char host[256] = "?";
            gethostname(host, sizeof host - 1);
            fprintf(stderr, "diffusion: rank %d of %d: pid %ld on %s\n", opts.rank, opts.world_size,
                    (long)getpid(), host);
        }
        if (st == DF_OK && opts.rank == 0) st = df_train_claim(&cfg, &opts, &lock);
        opts.lock = &lock;
        df_recipe recipe;
        if (st == DF_OK) st = def->create(&cfg, &recipe);
        if (st == DF_OK) {
            st = df_train_run(&cfg, &recipe, &opts);
            recipe.free(recipe.ctx);
        }
        df_run_lock_release(&lock);
        if (st != DF_OK && df_dist_active()) {
            char msg[2048];
            snprintf(msg, sizeof msg, "train: %s", df_last_error());
            df_dist_abort(msg);
        }
        if (st != DF_OK) rc = df_cli_fail("train");
        df_dist_finalize();
    }
    df_config_free(&cfg);
    free(schema);
    return rc;
}
