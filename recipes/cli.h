/* cli.h — the `diffusion` program's subcommands. Each command lives in recipes/cmd_<name>.c,
 * takes the arguments after its name, prints its own usage on bad arguments, and returns the
 * process exit code. Errors are one line on stderr: "diffusion: <what>: <why> (<file>[:<line>])",
 * written with df_cli_fail. */
#ifndef DF_RECIPES_CLI_H
#define DF_RECIPES_CLI_H

#include "autograd/autograd.h"

typedef struct df_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} df_command;

int df_cmd_forward(int argc, char **argv);
int df_cmd_sample(int argc, char **argv);
/* `diffusion generate MODEL ...` (recipes/cmd_generate.c): Stable Diffusion pipelines. */
int df_cmd_generate(int argc, char **argv);
/* `diffusion safety-check MODEL_DIR IMAGE...` (recipes/cmd_safety_check.c). */
int df_cmd_safety_check(int argc, char **argv);
int df_cmd_train(int argc, char **argv);
/* `diffusion schedule CONFIG.json [--scheduler NAME] --steps N [--strength S]` (cmd_schedule.c). */
int df_cmd_schedule(int argc, char **argv);

/* Prints "diffusion: <what>: <df_last_error()>" to stderr and returns the exit code 1. */
int df_cli_fail(const char *what);

/* DF_ERR_INVALID "<out>: is ... (an input): choose another output" when writing `out` would
 * replace or shadow an input: the same file as one of `inputs` (NULL entries are skipped), a
 * file in `model_dir` or its subfolders (two levels: a pipeline's component folders), or a
 * new file there under a name the loaders read (diffusion_pytorch_model.*, model.*, *config.json,
 * model_index.json). `out` that is a folder is refused too. */
df_status df_cli_check_output(const char *out, const char *const *inputs, int n_inputs,
                              const char *model_dir);

/* `diffusion tokenize TOKENIZER_DIR [--max-length N] TEXT...` (recipes/cmd_tokenize.c). */
int df_cmd_tokenize(int argc, char **argv);
/* `diffusion convert` (recipes/cmd_convert.c): single-file SD checkpoints <-> folders. */
int df_cmd_convert(int argc, char **argv);
/* Writes a copy of model folder `src` (a pipeline or one component) to the new folder `dst`
 * with every float tensor of its .safetensors files in dtype `dt` (F32, F16 or BF16); other
 * files copied (recipes/convert_folder.c). `dst` must not exist; no partial folder is left. */
df_status df_convert_folder_dtype(const char *src, const char *dst, df_dtype dt);

/* `diffusion dataset pack|inspect` (recipes/cmd_dataset.c). */
int df_cmd_dataset(int argc, char **argv);

/* `diffusion lora inspect|convert|merge` (recipes/cmd_lora.c): LoRA files. */
int df_cmd_lora(int argc, char **argv);

#endif
