/* test_cmd_schedule.c — `diffusion schedule` run as a user runs it (the built binary, DF_CLI):
 * for the SD 1.5 scheduler config under every scheduler name, the printed timesteps and sigmas
 * equal diffusers v0.21.4's (the fixtures' `timesteps` and `schedule.sigmas`); --strength gives
 * diffusers' img2img start index; bad input exits non-zero with one line naming the field.
 */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* Runs the CLI with `args`; returns its exit code, stdout in out and stderr in err. */
static int run(const char *args, char *out, size_t out_n, char *err, size_t err_n) {
    char errfile[] = "/tmp/df_cli_errXXXXXX";
    int fd = mkstemp(errfile);
    cr_assert(fd >= 0);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' schedule %s 2>'%s'", DF_CLI, args, errfile);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen failed");
    size_t n = fread(out, 1, out_n - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    FILE *e = fdopen(fd, "r");
    n = fread(err, 1, err_n - 1, e);
    err[n] = '\0';
    fclose(e);
    remove(errfile);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static const char *const names[] = {"DDPMScheduler",
                                    "DDIMScheduler",
                                    "PNDMScheduler",
                                    "EulerDiscreteScheduler",
                                    "EulerAncestralDiscreteScheduler",
                                    "HeunDiscreteScheduler",
                                    "LMSDiscreteScheduler",
                                    "DPMSolverMultistepScheduler",
                                    "UniPCMultistepScheduler"};

static void check_array(const char *label, const cJSON *arr, const df_tensor *want) {
    cr_assert(cJSON_IsArray(arr), "%s: not an array", label);
    cr_assert_eq(cJSON_GetArraySize(arr), want->numel, "%s: %d values, expected %lld", label,
                 cJSON_GetArraySize(arr), (long long)want->numel);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        double w = df_tensor_get(want, i);
        cr_assert(fabs(e->valuedouble - w) <= 1e-7 * fabs(w), "%s[%d]: %.9g, expected %.9g", label,
                  i, e->valuedouble, w);
        i++;
    }
}

Test(recipes_cmd_schedule, sd15_config_under_every_scheduler) {
    static char out[1 << 16], err[4096];
    for (int k = 0; k < 9; k++) {
        char args[1024], rel[256];
        snprintf(args, sizeof args, "'%s' --scheduler %s --steps 10",
                 fixture_path("schedulers/sd15/scheduler_config.json"), names[k]);
        int rc = run(args, out, sizeof out, err, sizeof err);
        cr_assert_eq(rc, 0, "%s: exit %d: %s", names[k], rc, err);
        cJSON *j = cJSON_Parse(out);
        cr_assert(j, "%s: output is not JSON: %s", names[k], out);
        snprintf(rel, sizeof rel, "schedulers/sd15/%s.safetensors", names[k]);
        df_st_file *f = fixture_open(rel);
        df_tensor *ts = NULL, *sg = NULL;
        cr_assert(df_st_read(f, "timesteps", DF_DTYPE_F64, &ts) == DF_OK);
        check_array(names[k], cJSON_GetObjectItem(j, "timesteps"), ts);
        const cJSON *sigmas = cJSON_GetObjectItem(j, "sigmas");
        if (df_st_find(f, "schedule.sigmas")) {
            cr_assert(df_st_read(f, "schedule.sigmas", DF_DTYPE_F64, &sg) == DF_OK);
            check_array(names[k], sigmas, sg);
            df_tensor_free(sg);
        } else {
            cr_assert(!sigmas, "%s: prints sigmas it does not have", names[k]);
        }
        cr_assert_str_eq(cJSON_GetObjectItem(j, "scheduler")->valuestring, names[k]);
        df_tensor_free(ts);
        cJSON_Delete(j);
    }
}

Test(recipes_cmd_schedule, class_from_config_and_strength) {
    static char out[1 << 16], err[4096];
    char args[1024];
    snprintf(args, sizeof args, "'%s' --steps 10 --strength 0.75",
             fixture_path("schedulers/sd15/scheduler_config.json"));
    cr_assert_eq(run(args, out, sizeof out, err, sizeof err), 0, "%s", err);
    cJSON *j = cJSON_Parse(out);
    cr_assert(j, "not JSON: %s", out);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "scheduler")->valuestring, "PNDMScheduler");
    cr_assert_eq(cJSON_GetObjectItem(j, "start_index")->valueint, 3);
    cJSON_Delete(j);
    snprintf(args, sizeof args, "'%s' --scheduler HeunDiscreteScheduler --steps 10 --strength 0.75",
             fixture_path("schedulers/sd15/scheduler_config.json"));
    cr_assert_eq(run(args, out, sizeof out, err, sizeof err), 0, "%s", err);
    j = cJSON_Parse(out);
    cr_assert_eq(cJSON_GetObjectItem(j, "start_index")->valueint, 6); /* t_start * order 2 */
    cJSON_Delete(j);
}

static void expect_error(const char *args_fmt, const char *needle) {
    static char out[1 << 16], err[4096];
    char args[1024];
    snprintf(args, sizeof args, args_fmt, fixture_path("schedulers/sd15/scheduler_config.json"));
    int rc = run(args, out, sizeof out, err, sizeof err);
    cr_assert_neq(rc, 0, "%s: exit 0", args);
    cr_assert_eq(out[0], '\0', "%s: printed %s", args, out);
    cr_assert(strncmp(err, "diffusion: schedule: ", 21) == 0, "%s: stderr '%s'", args, err);
    cr_assert(strstr(err, needle), "%s: stderr '%s' lacks '%s'", args, err, needle);
    cr_assert(strchr(err, '\n') == err + strlen(err) - 1, "%s: not one line: '%s'", args, err);
}

Test(recipes_cmd_schedule, bad_input_names_the_field) {
    expect_error("'%s' --scheduler FooScheduler --steps 10",
                 "--scheduler: unknown scheduler 'FooScheduler'");
    expect_error("'%s' --steps 1001",
                 "field 'steps': 1001 is larger than num_train_timesteps 1000");
    expect_error("'%s' --steps ten", "field 'steps'");
    expect_error("'%s' --steps 10 --strength 1.5", "field 'strength'");
    expect_error("'%s' --steps 10 --strength -0.5", "field 'strength'");
    expect_error("'%s'.missing --steps 10", "cannot open");
}

Test(recipes_cmd_schedule, bad_config_names_file_and_field) {
    char path[] = "/tmp/df_sched_cfgXXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"_class_name\": \"DDIMScheduler\", \"beta_schedule\": \"foo\"}", f);
    fclose(f);
    static char out[4096], err[4096];
    char args[1024];
    snprintf(args, sizeof args, "'%s' --steps 10", path);
    int rc = run(args, out, sizeof out, err, sizeof err);
    remove(path);
    cr_assert_neq(rc, 0);
    char want[512];
    snprintf(want, sizeof want,
             "%s: field 'beta_schedule': expected one of linear, "
             "scaled_linear, squaredcos_cap_v2; got 'foo'",
             path);
    cr_assert(strstr(err, want), "stderr '%s'", err);
}
