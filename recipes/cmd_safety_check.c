/* cmd_safety_check.c — `diffusion safety-check MODEL_DIR IMAGE...`: scores existing images with
 * the safety checker of a pipeline folder (its safety_checker/ and feature_extractor/, as
 * diffusers' run_safety_checker sees an image: Pillow's convert("RGB"), the CLIPImageProcessor,
 * the checker's forward). One JSON line per image on stdout:
 *   {"file": "a.png", "nsfw": false, "special_scores": [...], "concept_scores": [...]}
 * Exit status 0 when every image was scored (whatever the verdicts), 1 on an error.
 */
#include "datasets/datasets.h"
#include "infer/infer.h"
#include "recipes/cli.h"

#include <stdio.h>
#include <string.h>

/* s as a JSON string body (quotes, backslashes and control characters escaped) into buf. */
static void json_escape(const char *s, char *buf, size_t len) {
    size_t k = 0;
    for (; *s && k + 7 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            buf[k++] = '\\', buf[k++] = (char)c;
        else if (c < 0x20)
            k += (size_t)snprintf(buf + k, len - k, "\\u%04x", c);
        else
            buf[k++] = (char)c;
    }
    buf[k] = 0;
}

int df_cmd_safety_check(int argc, char **argv) {
    if (argc < 2 || argv[0][0] == '-') {
        fprintf(stderr, "usage: diffusion safety-check MODEL_DIR IMAGE...\n");
        return 2;
    }
    df_safety s;
    df_status st = df_safety_load(argv[0], &s);
    for (int i = 1; st == DF_OK && i < argc; i++) {
        df_scope scope = df_scope_begin();
        df_decode_opts dec = df_decode_opts_default();
        dec.drop_alpha = true; /* Pillow's convert("RGB") */
        df_tensor *img;
        df_safety_result r;
        st = df_image_read(argv[i], &dec, &img);
        const df_tensor *one[1] = {img};
        const char *names[1] = {argv[i]};
        if (st == DF_OK) st = df_safety_check_u8(&s, one, 1, names, &r);
        if (st == DF_OK) {
            char verdict[1024], file[2048];
            df_safety_result_json(&r, verdict, sizeof verdict);
            json_escape(argv[i], file, sizeof file);
            printf("{\"file\": \"%s\", %s\n", file, verdict + 1);
            fflush(stdout);
        }
        df_scope_end(scope);
    }
    df_safety_free(&s);
    if (st != DF_OK) return df_cli_fail("safety-check");
    return 0;
}
