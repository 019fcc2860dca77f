/* cmd_schedule.c — `diffusion schedule CONFIG.json [--scheduler NAME] --steps N [--strength S]`:
 * prints one JSON object with the timesteps sampling with N steps visits (in order), the
 * scheduler's sigmas where it has them, init_noise_sigma, order, and with --strength the
 * img2img start index (diffusers' t_start * order).
 *
 * The scheduler is built as diffusers' NAME.from_config(CONFIG) (NAME defaults to the config's
 * _class_name), so the numbers equal diffusers v0.21.4's for the same file.
 */
#include "infer/infer.h"
#include "recipes/cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: diffusion schedule CONFIG.json [--scheduler NAME] --steps N "
               "[--strength S]\n");
}

/* The shortest decimal that reads back as the float32 (or double) value. */
static void print_num(double v, bool as_float32) {
    if (v == floor(v) && fabs(v) < 1e15) {
        printf("%.1f", v);
        return;
    }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        double back = strtod(buf, NULL);
        if (as_float32 ? (float)back == (float)v : back == v) break;
    }
    printf("%s", buf);
}

int df_cmd_schedule(int argc, char **argv) {
    const char *config = NULL, *name = NULL, *steps_s = NULL, *strength_s = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--scheduler") == 0 || strcmp(a, "--steps") == 0 ||
            strcmp(a, "--strength") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "diffusion: schedule: %s needs a value\n", a);
                usage(stderr);
                return 2;
            }
            const char **dst = a[2] == 's' && a[3] == 'c'  ? &name
                               : strcmp(a, "--steps") == 0 ? &steps_s
                                                           : &strength_s;
            *dst = argv[++i];
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "diffusion: schedule: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!config) {
            config = a;
        } else {
            fprintf(stderr, "diffusion: schedule: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!config || !steps_s) {
        usage(stderr);
        return 2;
    }
    char *end;
    errno = 0;
    long steps = strtol(steps_s, &end, 10);
    if (*end || end == steps_s || errno || steps < 1 || steps > 1000000) {
        df_error(DF_ERR_INVALID, "field 'steps': expected a positive integer; got '%s'", steps_s);
        return df_cli_fail("schedule");
    }
    double strength = 0;
    if (strength_s) {
        strength = strtod(strength_s, &end);
        if (*end || end == strength_s || !(strength >= 0 && strength <= 1)) {
            df_error(DF_ERR_INVALID, "field 'strength': expected a number in [0, 1]; got '%s'",
                     strength_s);
            return df_cli_fail("schedule");
        }
    }
    df_sched_config cfg;
    if (name) {
        df_sched_kind k;
        if (df_sched_kind_parse(name, "--scheduler", &k) != DF_OK) return df_cli_fail("schedule");
    }
    if (df_sched_config_load(config, name, &cfg) != DF_OK) return df_cli_fail("schedule");
    df_sched *s = NULL;
    int rc = 0;
    if (df_sched_new(&cfg, &s) != DF_OK) {
        rc = df_cli_fail("schedule");
        goto out;
    }
    if (df_sched_set_timesteps(s, (int)steps) != DF_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s (%s)", df_last_error(), config);
        df_error(DF_ERR_INVALID, "%s", msg);
        rc = df_cli_fail("schedule");
        goto out;
    }
    int start = 0;
    if (strength_s && df_sched_img2img_start(s, strength, &start) != DF_OK) {
        rc = df_cli_fail("schedule");
        goto out;
    }
    bool tf = df_sched_timesteps_are_float(s);
    printf("{\"scheduler\": \"%s\", \"steps\": %ld, \"timesteps\": [", df_sched_kind_name(cfg.kind),
           steps);
    const double *ts = df_sched_timesteps(s);
    for (int i = 0; i < df_sched_num_timesteps(s); i++) {
        if (i) printf(", ");
        if (tf)
            print_num(ts[i], !cfg.use_karras_sigmas); /* Karras: float64 */
        else
            printf("%lld", (long long)ts[i]);
    }
    printf("]");
    int ns = 0;
    const double *sg = df_sched_sigmas(s, &ns);
    if (sg) {
        bool f32 = !(cfg.use_karras_sigmas && (cfg.kind == DF_SCHED_DPMSOLVER_MULTISTEP ||
                                               cfg.kind == DF_SCHED_UNIPC_MULTISTEP));
        printf(", \"sigmas\": [");
        for (int i = 0; i < ns; i++) {
            if (i) printf(", ");
            print_num(sg[i], f32);
        }
        printf("]");
    }
    printf(", \"init_noise_sigma\": ");
    print_num(df_sched_init_noise_sigma(s), true);
    printf(", \"order\": %d", df_sched_order(s));
    if (strength_s) printf(", \"start_index\": %d", start);
    printf("}\n");
out:
    df_sched_free(s);
    df_sched_config_free(&cfg);
    return rc;
}
