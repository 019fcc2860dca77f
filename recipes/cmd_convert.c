/* cmd_convert.c — `diffusion convert`: single-file Stable Diffusion checkpoints to and from
 * diffusers folders (nn/single_file.h, docs/single-file.md).
 *
 *   diffusion convert MODEL.safetensors OUT_DIR [--tokenizer DIR]
 *       [--prediction-type epsilon|v_prediction] [--image-size N] [--extract-ema]
 *       [--half | --float]
 *   diffusion convert DIR OUT.safetensors [--half | --float]
 *   diffusion convert DIR OUT_DIR --half | --float
 *
 * The direction follows the input: a folder is converted to one file, a file to a folder; a
 * folder to a folder (an output not ending in .safetensors) changes the weights' dtype only
 * (recipes/convert_folder.c), for any diffusers model folder.
 * Without --half / --float every tensor keeps its dtype (an exact copy of the values).
 */
#include "nn/single_file.h"
#include "recipes/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(FILE *f) {
    fprintf(f, "usage: diffusion convert MODEL.safetensors OUT_DIR [--tokenizer DIR]\n"
               "                         [--prediction-type epsilon|v_prediction] "
               "[--image-size N] [--extract-ema] [--half|--float]\n"
               "       diffusion convert DIR OUT.safetensors [--half|--float]\n"
               "       diffusion convert DIR OUT_DIR --half|--float\n");
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int df_cmd_convert(int argc, char **argv) {
    df_sd_convert_opts o = df_sd_convert_opts_default();
    const char *pos[2] = {NULL, NULL}, *image = NULL;
    int n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--half") == 0) {
            o.dtype = DF_DTYPE_F16;
        } else if (strcmp(a, "--extract-ema") == 0) {
            o.extract_ema = true;
        } else if (strcmp(a, "--float") == 0) {
            o.dtype = DF_DTYPE_F32;
        } else if (strcmp(a, "--tokenizer") == 0 || strcmp(a, "--prediction-type") == 0 ||
                   strcmp(a, "--image-size") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "diffusion: convert: %s needs a value\n", a);
                usage(stderr);
                return 2;
            }
            const char *v = argv[++i];
            if (a[2] == 't')
                o.tokenizer_dir = v;
            else if (a[2] == 'p')
                o.prediction_type = v;
            else
                image = v;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "diffusion: convert: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (n_pos < 2) {
            pos[n_pos++] = a;
        } else {
            fprintf(stderr, "diffusion: convert: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (n_pos != 2) {
        usage(stderr);
        return 2;
    }
    if (image) {
        char *end;
        errno = 0;
        long v = strtol(image, &end, 10);
        if (*end || end == image || errno || v < 8 || v > 65536 || v % 8) {
            df_error(DF_ERR_INVALID, "--image-size '%s': expected a multiple of 8", image);
            return df_cli_fail("convert");
        }
        o.image_size = (int)v;
    }
    if (o.prediction_type && strcmp(o.prediction_type, "v-prediction") == 0)
        o.prediction_type = "v_prediction"; /* diffusers accepts both spellings */
    if (is_dir(pos[0])) {
        if (o.tokenizer_dir || o.prediction_type || image || o.extract_ema) {
            df_error(DF_ERR_INVALID,
                     "--tokenizer, --prediction-type, --image-size and --extract-ema are for "
                     "a single file to a folder");
            return df_cli_fail("convert");
        }
        size_t len = strlen(pos[1]);
        if (len < 12 || strcmp(pos[1] + len - 12, ".safetensors") != 0) {
            if (o.dtype == DF_DTYPE_COUNT) {
                df_error(DF_ERR_INVALID, "a folder to a folder changes the weights' dtype: "
                                         "give --half or --float");
                return df_cli_fail("convert");
            }
            if (df_convert_folder_dtype(pos[0], pos[1], o.dtype) != DF_OK)
                return df_cli_fail("convert");
            fprintf(stderr, "%s -> %s (%s weights)\n", pos[0], pos[1],
                    o.dtype == DF_DTYPE_F16 ? "F16" : "F32");
            return 0;
        }
        if (df_cli_check_output(pos[1], NULL, 0, pos[0]) != DF_OK ||
            df_sd_folder_to_single_file(pos[0], pos[1], &o) != DF_OK)
            return df_cli_fail("convert");
        fprintf(stderr, "%s -> %s\n", pos[0], pos[1]);
        return 0;
    }
    if (df_sd_single_file_convert(pos[0], pos[1], &o) != DF_OK) return df_cli_fail("convert");
    return 0;
}
