/* test_cmd_controlnet.c — `diffusion generate MODEL --controlnet DIR --control-image IMG ...` on
 * the tiny sd1 folder: the command's latents equal diffusers' StableDiffusionControlNetPipeline
 * runs of tests/ref/gen_controlnet_pipeline.py (one ControlNet; two with start / end and a
 * resized control image), `diffusion forward` runs a ControlNetModel folder, and bad input (a
 * control option before its --controlnet, a missing control image file, a ControlNet for another
 * UNet, a folder that is not a ControlNet) is a one-line error. */
#include "tests/common/check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char out[1 << 16];

static int cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli(const char *fmt, ...) {
    static char args[16384], cmd[17000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s", DF_CLI, args);
    return run_command(cmd, out, sizeof out);
}

static const char *fx(const char *rel) {
    static char path[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(path[k], sizeof path[k], "%s", fixture_path(rel));
    return path[k];
}

static void expect_latents(const char *tensor_file, const char *run) {
    char rel[128];
    snprintf(rel, sizeof rel, "pipelines/runs/%s.safetensors", run);
    df_st_file *f;
    cr_assert_eq(df_st_open(tensor_file, &f), DF_OK, "%s", df_last_error());
    df_tensor *got;
    cr_assert_eq(df_st_read(f, "latents", DF_DTYPE_F32, &got), DF_OK);
    df_st_close(f);
    df_tensor *want = fixture_tensor(rel, "latents");
    check_close(run, got, want, 1e-4, 1e-4);
    df_tensor_free(got);
    df_tensor_free(want);
}

Test(recipes_cmd_controlnet, generate_equals_diffusers) {
    const char *d = scratch_dir_new("cn_generate");
    char t[600];
    snprintf(t, sizeof t, "%s/t.safetensors", d);
    cr_assert_eq(cli("generate %s --prompt 'a red apple' --negative-prompt blurry --steps 4 "
                     "--controlnet %s --control-image %s --control-scale 0.9 --out-tensor %s",
                     fx("pipelines/sd1"), fx("pipelines/controlnet_a"),
                     fx("pipelines/images/init.png"), t),
                 0, "%s", out);
    expect_latents(t, "cn_single_pndm");
    cr_assert_eq(cli("generate %s --prompt 'grinning face' --steps 5 --scheduler euler --height 32 "
                     "--width 32 --controlnet %s --control-image %s --control-scale 0.7 "
                     "--control-end 0.3 --controlnet %s --control-image %s --control-scale 1.2 "
                     "--control-start 0.5 --out-tensor %s",
                     fx("pipelines/sd1"), fx("pipelines/controlnet_a"),
                     fx("pipelines/images/init.png"), fx("pipelines/controlnet_b"),
                     fx("pipelines/images/odd.png"), t),
                 0, "%s", out);
    expect_latents(t, "cn_multi_euler");
    scratch_dir_remove();
}

/* `diffusion forward` on a ControlNetModel folder: the oracle's outputs */
Test(recipes_cmd_controlnet, forward_runs_a_controlnet) {
    const char *d = scratch_dir_new("cn_forward");
    char o[600];
    snprintf(o, sizeof o, "%s/o.safetensors", d);
    cr_assert_eq(cli("forward %s --inputs %s --out %s", fx("models/controlnet_tiny"),
                     fx("models/controlnet_tiny/inputs.safetensors"), o),
                 0, "%s", out);
    df_st_file *f;
    cr_assert_eq(df_st_open(o, &f), DF_OK, "%s", df_last_error());
    const char *names[] = {"down_block_res_samples.0", "down_block_res_samples.3",
                           "mid_block_res_sample"};
    for (int i = 0; i < 3; i++) {
        df_tensor *got;
        cr_assert_eq(df_st_read(f, names[i], DF_DTYPE_F32, &got), DF_OK, "%s", df_last_error());
        df_tensor *want = fixture_tensor("models/controlnet_tiny/outputs.safetensors", names[i]);
        cr_expect(rel_max_err(got, want) <= 1e-4, "%s: %g", names[i], rel_max_err(got, want));
        df_tensor_free(got);
        df_tensor_free(want);
    }
    df_st_close(f);
    scratch_dir_remove();
}

/* one failing run: exit 1 or 2 and our one-line error containing `must` */
static void expect_error(int rc, const char *must) {
    cr_expect(rc == 1 || rc == 2, "exit %d: %s", rc, out);
    cr_expect(strstr(out, must) && strstr(out, "diffusion: generate: "), "'%s' not in: %s", must,
              out);
}

Test(recipes_cmd_controlnet, bad_input_is_one_line) {
    const char *d = scratch_dir_new("cn_bad");
    char t[600], missing[700];
    snprintf(t, sizeof t, "%s/t.safetensors", d);
    snprintf(missing, sizeof missing, "%s/no_such.png", d);
    const char *sd1 = fx("pipelines/sd1"), *init = fx("pipelines/images/init.png");
    expect_error(
        cli("generate %s --prompt x --steps 2 --control-image %s --out-tensor %s", sd1, init, t),
        "--control-image must follow the --controlnet");
    expect_error(cli("generate %s --prompt x --steps 2 --controlnet %s --out-tensor %s", sd1,
                     fx("pipelines/controlnet_a"), t),
                 "needs its --control-image");
    expect_error(cli("generate %s --prompt x --steps 2 --controlnet %s --control-image %s "
                     "--out-tensor %s",
                     sd1, fx("pipelines/controlnet_a"), missing, t),
                 "no_such.png");
    expect_error(cli("generate %s --prompt x --steps 2 --controlnet %s --control-image %s "
                     "--out-tensor %s",
                     sd1, fx("models/controlnet_tiny"), init, t),
                 "ControlNetModel for another UNet: in_channels 4, block_out_channels [32, 64]");
    expect_error(cli("generate %s --prompt x --steps 2 --controlnet %s --control-image %s "
                     "--out-tensor %s",
                     sd1, fx("pipelines/sd1/unet"), init, t),
                 "not a ControlNetModel");
    expect_error(cli("generate %s --prompt x --steps 2 --controlnet %s --control-image %s "
                     "--control-start 0.8 --control-end 0.2 --out-tensor %s",
                     sd1, fx("pipelines/controlnet_a"), init, t),
                 "must be below --control-end");
    scratch_dir_remove();
}
