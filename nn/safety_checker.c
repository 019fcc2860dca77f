/* safety_checker.c — diffusers v0.21.4 StableDiffusionSafetyChecker
 * (pipelines/stable_diffusion/safety_checker.py), the forward (not forward_onnx) decision:
 *   image_embeds = visual_projection(CLIPVisionModel(clip_input).pooler_output)
 *   special_cos_dist = normalize(image_embeds) normalize(special_care_embeds)^T   (N, 3)
 *   cos_dist         = normalize(image_embeds) normalize(concept_embeds)^T        (N, 17)
 * per image: adjustment = 0; for each special-care concept k in order:
 *   s_k = round(special_cos_dist[k] - special_care_embeds_weights[k] + adjustment, 3), and once
 *   an s_k > 0 the adjustment is 0.01 (for the rest of that loop too, as upstream);
 * then c_k = round(cos_dist[k] - concept_embeds_weights[k] + adjustment, 3); the image is NSFW
 * when some c_k > 0. The cosines are float32 (torch), the scores float64 (numpy), rounding half
 * to even (numpy's round).
 */
#include "nn/nn.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

df_status df_safety_checker_config_from_json(const df_json *j, df_clip_vision_config *c) {
    /* transformers' CLIPConfig: a legacy vision_config_dict is expanded with the defaults and
     * replaces vision_config's fields, so it alone decides */
    const char *key = "vision_config_dict";
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!v || cJSON_IsNull(v)) v = cJSON_GetObjectItemCaseSensitive(j->root, key = "vision_config");
    df_json sub = {.root = NULL};
    snprintf(sub.path, sizeof sub.path, "%.400s: %s", j->path, key);
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsObject(v))
            return df_error(DF_ERR_FORMAT, "%s: field '%s' is not an object", j->path, key);
        sub.root = (cJSON *)v; /* borrowed: never freed here */
        DF_TRY(df_clip_vision_config_from_json(&sub, c));
    } else {
        *c = df_clip_vision_config_default();
    }
    c->projection_dim = 512;
    DF_TRY(df_json_int(j, "projection_dim", c->projection_dim, &c->projection_dim));
    if (c->projection_dim < 1 || c->projection_dim > DF_MODEL_MAX_CHANNELS)
        return df_error(DF_ERR_FORMAT, "%s: field 'projection_dim': %d outside [1, %d]", j->path,
                        c->projection_dim, DF_MODEL_MAX_CHANNELS);
    c->with_projection = true;
    return DF_OK;
}

df_status df_safety_checker_init(df_safety_checker *m, const df_clip_vision_config *c,
                                 df_init init) {
    memset(m, 0, sizeof *m);
    df_clip_vision_config vc = *c;
    vc.with_projection = true;
    DF_TRY(df_clip_vision_init(&m->vision, &vc, init, "vision_model.vision_model"));
    df_params *r = &m->vision.params;
    int p = vc.projection_dim;
    m->concept_embeds = df_params_add(r, "", "concept_embeds", DF_DIMS(DF_SAFETY_CONCEPTS, p));
    m->special_care_embeds =
        df_params_add(r, "", "special_care_embeds", DF_DIMS(DF_SAFETY_SPECIAL, p));
    m->concept_embeds_weights =
        df_params_add(r, "", "concept_embeds_weights", DF_DIMS(DF_SAFETY_CONCEPTS));
    m->special_care_embeds_weights =
        df_params_add(r, "", "special_care_embeds_weights", DF_DIMS(DF_SAFETY_SPECIAL));
    df_tensor *ones[] = {m->concept_embeds, m->special_care_embeds, m->concept_embeds_weights,
                         m->special_care_embeds_weights};
    for (int i = 0; i < 4; i++) df_params_fill(r, ones[i], 1.0f); /* upstream's torch.ones */
    return DF_OK;
}

void df_safety_checker_free(df_safety_checker *m) {
    df_clip_vision_free(&m->vision);
}

/* cos (N, K) F32 of the rows of a (N, P) and b (K, P), each scaled to unit length
 * (x / max(|x|, 1e-12), torch's normalize). */
static df_tensor *cosine(const df_tensor *a, const df_tensor *b) {
    int64_t n = a->shape[0], k = b->shape[0], p = a->shape[1];
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, DF_DIMS(n, k));
    for (int64_t i = 0; i < n; i++) {
        double na = 0;
        for (int64_t x = 0; x < p; x++)
            na += df_tensor_get(a, i * p + x) * df_tensor_get(a, i * p + x);
        na = fmax(sqrt(na), 1e-12);
        for (int64_t j = 0; j < k; j++) {
            double nb = 0, dot = 0;
            for (int64_t x = 0; x < p; x++) {
                double bv = df_tensor_get(b, j * p + x);
                nb += bv * bv;
                dot += df_tensor_get(a, i * p + x) * bv;
            }
            df_f32(out)[i * k + j] = (float)(dot / (na * fmax(sqrt(nb), 1e-12)));
        }
    }
    return out;
}

/* numpy's round(x, 3): rint(x * 1000) / 1000 */
static double round3(double x) {
    return rint(x * 1000.0) / 1000.0;
}

void df_safety_checker_forward(df_safety_checker *m, df_tensor *clip_input,
                               df_tensor **image_embeds, df_tensor **cos_dist,
                               df_tensor **special_cos_dist, df_safety_result *res) {
    bool grad = df_grad_set_enabled(false);
    df_tensor *pooled;
    df_clip_vision_forward(&m->vision, clip_input, NULL, &pooled);
    df_tensor *emb = df_linear_mod_forward(&m->vision.visual_projection, pooled);
    df_tensor *cd = cosine(emb, m->concept_embeds);
    df_tensor *sd = cosine(emb, m->special_care_embeds);
    df_grad_set_enabled(grad);
    int64_t n = emb->shape[0];
    for (int64_t i = 0; res && i < n; i++) {
        df_safety_result *r = &res[i];
        memset(r, 0, sizeof *r);
        double adjustment = 0;
        for (int k = 0; k < DF_SAFETY_SPECIAL; k++) {
            double s = round3((double)df_f32(sd)[i * DF_SAFETY_SPECIAL + k] -
                              df_tensor_get(m->special_care_embeds_weights, k) + adjustment);
            r->special_scores[k] = (float)s;
            if (s > 0) adjustment = 0.01;
        }
        for (int k = 0; k < DF_SAFETY_CONCEPTS; k++) {
            double s = round3((double)df_f32(cd)[i * DF_SAFETY_CONCEPTS + k] -
                              df_tensor_get(m->concept_embeds_weights, k) + adjustment);
            r->concept_scores[k] = (float)s;
            if (s > 0) r->nsfw = true;
        }
    }
    if (image_embeds) *image_embeds = emb;
    if (cos_dist) *cos_dist = cd;
    if (special_cos_dist) *special_cos_dist = sd;
}
