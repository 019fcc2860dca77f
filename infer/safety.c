/* safety.c — a pipeline's safety checker (diffusers v0.21.4 run_safety_checker): the folder's
 * `safety_checker/` (StableDiffusionSafetyChecker, nn/safety_checker.c) and
 * `feature_extractor/preprocessor_config.json` (CLIPImageProcessor, clip_image_processor.c).
 * Images in [0, 1] are first made 8-bit as diffusers' postprocess(output_type="pil") does
 * ((x * 255).round()), then preprocessed, then scored; a flagged image is replaced by black.
 */
#include "infer/infer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

df_status df_safety_load(const char *dir, df_safety *s) {
    memset(s, 0, sizeof *s);
    char path[1100];
    snprintf(path, sizeof path, "%s/safety_checker", dir);
    if (!is_dir(path))
        return df_error(DF_ERR_NOTFOUND,
                        "%s: no safety checker folder (the pipeline's model_index.json names "
                        "one; run with --safety off to go without it)",
                        path);
    DF_TRY(df_component_map_frozen(path, NULL, &s->checker));
    if (!s->checker.safety_checker)
        return df_error(DF_ERR_UNSUPPORTED, "%s: a %s, not a StableDiffusionSafetyChecker", path,
                        s->checker.class_name);
    snprintf(path, sizeof path, "%s/feature_extractor/preprocessor_config.json", dir);
    DF_TRY(df_clip_image_processor_load(path, &s->processor));
    const df_clip_vision_config *vc = &s->checker.safety_checker->vision.config;
    const df_clip_image_processor *fe = &s->processor;
    if (!fe->do_center_crop || fe->crop_height != vc->image_size ||
        fe->crop_width != vc->image_size)
        return df_error(DF_ERR_FORMAT,
                        "%s: the processor gives %s%d x %d images but the safety checker takes "
                        "%d x %d",
                        path, fe->do_center_crop ? "" : "uncropped ", fe->crop_width,
                        fe->crop_height, vc->image_size, vc->image_size);
    s->loaded = true;
    return DF_OK;
}

void df_safety_free(df_safety *s) {
    df_component_free(&s->checker);
    memset(s, 0, sizeof *s);
}

df_status df_safety_check_u8(df_safety *s, const df_tensor *const *images, int n,
                             const char *const *names, df_safety_result *res) {
    DF_ASSERT(s->loaded, "df_safety_check_u8: no checker loaded");
    int side = s->checker.safety_checker->vision.config.image_size;
    df_scope scope = df_scope_begin();
    df_tensor *x = df_tensor_new(DF_DTYPE_F32, DF_DIMS(n, 3, side, side));
    df_status st = DF_OK;
    for (int i = 0; st == DF_OK && i < n; i++)
        st = df_clip_image_preprocess(&s->processor, images[i], names[i],
                                      df_f32(x) + (int64_t)i * 3 * side * side);
    if (st == DF_OK) df_safety_checker_forward(s->checker.safety_checker, x, NULL, NULL, NULL, res);
    df_scope_end(scope);
    return st;
}

df_status df_safety_check_images(df_safety *s, df_tensor *images, bool blacken,
                                 df_safety_result *res, int *n_flagged) {
    DF_ASSERT(images->dtype == DF_DTYPE_F32 && images->ndim == 4 && images->shape[1] == 3,
              "df_safety_check_images: expected F32 (N, 3, H, W)");
    int64_t n = images->shape[0], per = images->numel / n;
    df_scope scope = df_scope_begin();
    df_tensor **u8 = calloc((size_t)n, sizeof *u8);
    const char **names = calloc((size_t)n, sizeof *names);
    char(*labels)[32] = calloc((size_t)n, sizeof *labels);
    DF_ASSERT(u8 && names && labels, "df_safety_check_images: out of memory");
    for (int64_t i = 0; i < n; i++) {
        df_tensor *one = df_tensor_view(
            images, 4, (int64_t[]){1, 3, images->shape[2], images->shape[3]}, i * per);
        u8[i] = df_unit_images_to_grid(one, 1);
        snprintf(labels[i], sizeof labels[i], "image %lld", (long long)i);
        names[i] = labels[i];
    }
    df_status st = df_safety_check_u8(s, (const df_tensor *const *)u8, (int)n, names, res);
    df_scope_end(scope);
    free(u8);
    free(names);
    free(labels);
    if (st != DF_OK) return st;
    int flagged = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!res[i].nsfw) continue;
        flagged++;
        if (blacken) memset(df_f32(images) + i * per, 0, sizeof(float) * (size_t)per);
    }
    if (n_flagged) *n_flagged = flagged;
    return DF_OK;
}

void df_safety_flag_list(const df_safety_result *res, int n, char *buf, size_t len) {
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < n && k < len; i++)
        if (res[i].nsfw) k += (size_t)snprintf(buf + k, len - k, "%s%d", k ? ", " : "", i);
}

void df_safety_result_json(const df_safety_result *r, char *buf, size_t len) {
    size_t k = (size_t)snprintf(buf, len, "{\"nsfw\": %s, \"special_scores\": [",
                                r->nsfw ? "true" : "false");
    for (int i = 0; i < DF_SAFETY_SPECIAL && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, "%s%.3f", i ? ", " : "", r->special_scores[i]);
    if (k < len) k += (size_t)snprintf(buf + k, len - k, "], \"concept_scores\": [");
    for (int i = 0; i < DF_SAFETY_CONCEPTS && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, "%s%.3f", i ? ", " : "", r->concept_scores[i]);
    if (k < len) snprintf(buf + k, len - k, "]}");
}
