/* test_cmd_forward.c — `diffusion forward` end to end: the built program run on a diffusers
 * fixture folder reproduces diffusers' outputs and gradients (max rel. error <= 1e-4, the
 * issue's criterion), and bad invocations fail with a one-line error. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static int run(const char *args, char *err, size_t len) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", DF_CLI, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    size_t n = fread(err, 1, len - 1, p);
    err[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(recipes_cmd_forward, unet2d_matches_diffusers) {
    char tmp[] = "/tmp/df_fwd_XXXXXX", args[4096], err[4096];
    cr_assert(mkdtemp(tmp));
    const char *dir = fixture_path("models/unet2d_tiny");
    snprintf(args, sizeof args,
             "forward %s --inputs %s/inputs.safetensors --out %s/out.safetensors "
             "--backward %s/inputs.safetensors --grads %s/grads.safetensors",
             dir, dir, tmp, dir, tmp);
    cr_assert_eq(run(args, err, sizeof err), 0, "%s", err);

    char path[512];
    df_st_file *out, *grads, *want;
    snprintf(path, sizeof path, "%s/out.safetensors", tmp);
    cr_assert_eq(df_st_open(path, &out), DF_OK, "%s", df_last_error());
    snprintf(path, sizeof path, "%s/grads.safetensors", tmp);
    cr_assert_eq(df_st_open(path, &grads), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_st_open(fixture_path("models/unet2d_tiny/outputs.safetensors"), &want), DF_OK);

    df_scope s = df_scope_begin();
    df_tensor *got, *exp;
    cr_assert_eq(df_st_read(out, "sample", DF_DTYPE_F32, &got), DF_OK);
    cr_assert_eq(df_st_read(want, "sample", DF_DTYPE_F32, &exp), DF_OK);
    cr_expect(rel_max_err(got, exp) <= 1e-4, "sample: %g", rel_max_err(got, exp));
    cr_assert_eq(df_st_read(grads, "input.sample", DF_DTYPE_F32, &got), DF_OK);
    cr_assert_eq(df_st_read(want, "grad.input.sample", DF_DTYPE_F32, &exp), DF_OK);
    cr_expect(rel_max_err(got, exp) <= 1e-4, "input.sample: %g", rel_max_err(got, exp));
    int n_params = 0;
    for (int i = 0; i < df_st_count(grads); i++) {
        const char *name = df_st_info_at(grads, i)->name;
        if (strncmp(name, "input.", 6) == 0 || strstr(name, "to_k.bias")) continue;
        char key[512];
        snprintf(key, sizeof key, "grad.param.%s", name);
        cr_assert_eq(df_st_read(grads, name, DF_DTYPE_F32, &got), DF_OK);
        cr_assert_eq(df_st_read(want, key, DF_DTYPE_F32, &exp), DF_OK, "%s", key);
        cr_expect(rel_max_err(got, exp) <= 1e-4, "%s: %g", name, rel_max_err(got, exp));
        n_params++;
    }
    cr_expect_gt(n_params, 90);
    df_scope_end(s);
    df_st_close(out);
    df_st_close(grads);
    df_st_close(want);
    snprintf(args, sizeof args, "rm -rf %s", tmp);
    cr_assert_eq(system(args), 0);
}

Test(recipes_cmd_forward, errors_are_one_line) {
    char err[4096];
    cr_assert_eq(run("forward /nonexistent --inputs a --out b", err, sizeof err), 1);
    cr_assert(strstr(err, "diffusion: forward: /nonexistent/config.json"), "%s", err);
    cr_assert_eq(strchr(err, '\n'), err + strlen(err) - 1, "not one line: %s", err);
    cr_assert_eq(run("forward", err, sizeof err), 2);
    cr_assert(strstr(err, "usage: diffusion forward"), "%s", err);
}
