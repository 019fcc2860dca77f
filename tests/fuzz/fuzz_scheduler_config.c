/* fuzz_scheduler_config.c — libFuzzer target for scheduler_config.json reading and writing
 * (infer/sched_config.c) and for building and stepping the scheduler it describes.
 *
 * Input: byte 0 picks the class (0: the file's _class_name, 1..9: a class by kind), byte 1 the
 * number of inference steps, the rest is the JSON text. Invariants: parsing either fails with a
 * clean status and a message naming the file, or succeeds, and then writing the config and
 * parsing that again gives the same text (round trip); the scheduler then builds (or fails
 * cleanly), set_timesteps works or fails cleanly, and a few steps on a (1, 1, 2, 2) sample with
 * zero noise never fault.
 *
 * Build and run (clang with libFuzzer and ASan; from the repository root):
 *   CC=clang cmake -S . -B build-fuzz -DDF_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_scheduler_config
 *   build-fuzz/tests/fuzz/fuzz_scheduler_config -max_total_time=60 \
 *       tests/fuzz/corpus/scheduler_config
 */
#include "infer/infer.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const classes[] = {NULL,
                                      "DDPMScheduler",
                                      "DDIMScheduler",
                                      "PNDMScheduler",
                                      "EulerDiscreteScheduler",
                                      "EulerAncestralDiscreteScheduler",
                                      "HeunDiscreteScheduler",
                                      "LMSDiscreteScheduler",
                                      "DPMSolverMultistepScheduler",
                                      "UniPCMultistepScheduler"};

static void zero_fill(void *state, float *out, int64_t n) {
    (void)state;
    memset(out, 0, (size_t)n * sizeof(float));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const char *cls = classes[data[0] % 10];
    int steps = 1 + data[1] % 60;
    const char *json = (const char *)data + 2;
    size_t len = size - 2;
    df_sched_config c;
    df_status s = df_sched_config_parse(json, len, "fuzz.json", cls, &c);
    if (s != DF_OK) {
        DF_ASSERT(strstr(df_last_error(), "fuzz.json") != NULL, "error without the file: %s",
                  df_last_error());
        df_sched_config_free(&c);
        return 0;
    }
    char *out = df_sched_config_to_json(&c);
    DF_ASSERT(out, "to_json failed");
    df_sched_config c2;
    s = df_sched_config_parse(out, strlen(out), "fuzz-out.json", NULL, &c2);
    DF_ASSERT(s == DF_OK, "written config does not parse: %s\n%s", df_last_error(), out);
    char *out2 = df_sched_config_to_json(&c2);
    DF_ASSERT(out2 && strcmp(out, out2) == 0, "round trip differs:\n%s\n---\n%s", out, out2);
    free(out);
    free(out2);
    df_sched_config_free(&c2);

    df_sched *sc = NULL;
    if (c.num_train_timesteps <= 4096 && df_sched_new(&c, &sc) == DF_OK &&
        df_sched_set_timesteps(sc, steps) == DF_OK) {
        df_tensor *x = df_full(DF_DTYPE_F32, DF_DIMS(1, 1, 2, 2), 0.5);
        df_noise_source zero = {zero_fill, NULL};
        df_sched_step_args args = {.eta = 0.5, .noise = &zero};
        int n = df_sched_num_timesteps(sc);
        for (int i = 0; i < n && i < 8; i++) {
            double t = df_sched_timesteps(sc)[i];
            df_tensor *in = NULL, *prev = NULL, *x0 = NULL;
            if (df_sched_scale_model_input(sc, x, t, &in) != DF_OK) break;
            s = df_sched_step(sc, in, t, x, &args, &prev, &x0);
            df_tensor_free(in);
            df_tensor_free(x0);
            if (s != DF_OK) break;
            df_tensor_free(x);
            x = prev;
        }
        df_tensor_free(x);
    }
    df_sched_free(sc);
    df_sched_config_free(&c);
    return 0;
}
