/* clip_image_processor.c — transformers v4.33 CLIPImageProcessor (models/clip/
 * image_processing_clip.py) from a pipeline's feature_extractor/preprocessor_config.json: what
 * the safety checker sees of an image.
 *   convert to RGB (Pillow's convert: alpha dropped, grey replicated; the decoder's drop_alpha)
 *   resize: shorter side to size.shortest_edge, the longer int(size * long / short), Pillow's
 *     filter `resample` (3 bicubic, 2 bilinear, 4 box, 1 lanczos) on 8-bit pixels
 *   center crop: top = (H - h) // 2, left = (W - w) // 2
 *   rescale: float32(v * rescale_factor) (float64 product, as numpy)
 *   normalize: (x - mean) / std in float32, channel first
 * Legacy configs give size / crop_size as ints (get_size_dict: shortest edge / a square).
 */
#include "infer/infer.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

/* OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (transformers' image_utils.py) */
static const double clip_mean[3] = {0.48145466, 0.4578275, 0.40821073};
static const double clip_std[3] = {0.26862954, 0.26130258, 0.27577711};

df_clip_image_processor df_clip_image_processor_default(void) {
    df_clip_image_processor p = {.do_resize = true,
                                 .shortest_edge = 224,
                                 .resample = DF_RESAMPLE_BICUBIC,
                                 .do_center_crop = true,
                                 .crop_height = 224,
                                 .crop_width = 224,
                                 .do_rescale = true,
                                 .rescale_factor = 1.0 / 255,
                                 .do_normalize = true,
                                 .do_convert_rgb = true};
    for (int c = 0; c < 3; c++)
        p.image_mean[c] = (float)clip_mean[c], p.image_std[c] = (float)clip_std[c];
    return p;
}

#define MAX_SIDE 8192

/* `key`: an int n (-> n, n) or an object with the given fields; absent leaves *a, *b. */
static df_status size_field(const df_json *j, const char *key, const char *fa, const char *fb,
                            int *a, int *b) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!v || cJSON_IsNull(v)) return DF_OK;
    if (cJSON_IsNumber(v)) {
        *a = *b = (int)v->valuedouble;
        if (v->valuedouble != *a)
            return df_error(DF_ERR_FORMAT, "%s: field '%s': %g is not an integer", j->path, key,
                            v->valuedouble);
    } else if (cJSON_IsObject(v)) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(v, fa);
        const cJSON *y = fb ? cJSON_GetObjectItemCaseSensitive(v, fb) : x;
        if (!cJSON_IsNumber(x) || !cJSON_IsNumber(y))
            return df_error(DF_ERR_UNSUPPORTED,
                            "%s: field '%s': needs the integer key%s '%s'%s%s%s", j->path, key,
                            fb ? "s" : "", fa, fb ? " and '" : "", fb ? fb : "", fb ? "'" : "");
        *a = (int)x->valuedouble, *b = (int)y->valuedouble;
    } else {
        return df_error(DF_ERR_FORMAT, "%s: field '%s' is neither an integer nor an object",
                        j->path, key);
    }
    if (*a < 1 || *a > MAX_SIDE || *b < 1 || *b > MAX_SIDE)
        return df_error(DF_ERR_FORMAT, "%s: field '%s': %d x %d outside [1, %d]", j->path, key, *a,
                        *b, MAX_SIDE);
    return DF_OK;
}

static df_status triple(const df_json *j, const char *key, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->root, key);
    if (!v || cJSON_IsNull(v)) return DF_OK;
    if (cJSON_IsNumber(v)) {
        for (int c = 0; c < 3; c++) out[c] = (float)v->valuedouble;
        return DF_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3)
        return df_error(DF_ERR_FORMAT, "%s: field '%s' must be a number or a list of 3", j->path,
                        key);
    for (int c = 0; c < 3; c++) {
        const cJSON *x = cJSON_GetArrayItem(v, c);
        if (!cJSON_IsNumber(x))
            return df_error(DF_ERR_FORMAT, "%s: field '%s'[%d] is not a number", j->path, key, c);
        out[c] = (float)x->valuedouble;
    }
    return DF_OK;
}

df_status df_clip_image_processor_from_json(const df_json *j, df_clip_image_processor *p) {
    *p = df_clip_image_processor_default();
    DF_TRY(df_json_bool(j, "do_resize", true, &p->do_resize));
    DF_TRY(df_json_bool(j, "do_center_crop", true, &p->do_center_crop));
    DF_TRY(df_json_bool(j, "do_rescale", true, &p->do_rescale));
    DF_TRY(df_json_bool(j, "do_normalize", true, &p->do_normalize));
    DF_TRY(df_json_bool(j, "do_convert_rgb", true, &p->do_convert_rgb));
    DF_TRY(df_json_double(j, "rescale_factor", p->rescale_factor, &p->rescale_factor));
    if (!(p->rescale_factor > 0 && p->rescale_factor < 1e6))
        return df_error(DF_ERR_FORMAT, "%s: field 'rescale_factor': %g", j->path,
                        p->rescale_factor);
    int se = p->shortest_edge;
    DF_TRY(size_field(j, "size", "shortest_edge", NULL, &se, &se));
    p->shortest_edge = se;
    DF_TRY(size_field(j, "crop_size", "height", "width", &p->crop_height, &p->crop_width));
    DF_TRY(triple(j, "image_mean", p->image_mean));
    DF_TRY(triple(j, "image_std", p->image_std));
    for (int c = 0; c < 3; c++)
        if (!(p->image_std[c] != 0))
            return df_error(DF_ERR_FORMAT, "%s: field 'image_std'[%d] is 0", j->path, c);
    int resample = 3;
    DF_TRY(df_json_int(j, "resample", resample, &resample));
    switch (resample) { /* PIL.Image.Resampling */
    case 1: p->resample = DF_RESAMPLE_LANCZOS; break;
    case 2: p->resample = DF_RESAMPLE_BILINEAR; break;
    case 3: p->resample = DF_RESAMPLE_BICUBIC; break;
    case 4: p->resample = DF_RESAMPLE_AREA; break;
    default:
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: field 'resample': %d (1 lanczos, 2 bilinear, 3 bicubic or 4 box)",
                        j->path, resample);
    }
    return DF_OK;
}

df_status df_clip_image_processor_load(const char *path, df_clip_image_processor *p) {
    df_json j;
    DF_TRY(df_json_load(path, &j));
    df_status st = df_clip_image_processor_from_json(&j, p);
    df_json_free(&j);
    return st;
}

void df_clip_image_processor_out_size(const df_clip_image_processor *p, int h, int w, int *oh,
                                      int *ow) {
    if (p->do_resize) {
        int s = p->shortest_edge;
        int64_t lng = (int64_t)((double)s * (w <= h ? h : w) / (w <= h ? w : h));
        if (w <= h)
            w = s, h = (int)(lng > INT32_MAX ? INT32_MAX : lng);
        else
            h = s, w = (int)(lng > INT32_MAX ? INT32_MAX : lng);
    }
    if (p->do_center_crop) h = p->crop_height, w = p->crop_width;
    *oh = h, *ow = w;
}

df_status df_clip_image_preprocess(const df_clip_image_processor *p, const df_tensor *img,
                                   const char *name, float *dst) {
    if (img->dtype != DF_DTYPE_U8 || img->ndim != 3 || img->shape[2] != 3)
        return df_error(DF_ERR_INVALID, "%s: the image processor takes U8 (H, W, 3) RGB", name);
    int h = (int)img->shape[0], w = (int)img->shape[1];
    df_scope s = df_scope_begin();
    df_tensor *x = (df_tensor *)img;
    if (p->do_resize) {
        int sh = p->shortest_edge;
        double lng = (double)sh * (w <= h ? h : w) / (w <= h ? w : h);
        if (lng > MAX_SIDE) {
            df_scope_end(s);
            return df_error(DF_ERR_INVALID,
                            "%s: a %d x %d image would be resized to %d x %.0f for the safety "
                            "checker (the longer side is at most %d): its aspect ratio is too "
                            "extreme",
                            name, w, h, sh, lng, MAX_SIDE);
        }
        int nh = w <= h ? (int)lng : sh, nw = w <= h ? sh : (int)lng;
        x = df_image_resize(x, nh, nw, p->resample);
        h = nh, w = nw;
    }
    if (p->do_center_crop) {
        if (p->crop_height > h || p->crop_width > w) {
            df_scope_end(s);
            return df_error(DF_ERR_UNSUPPORTED,
                            "%s: a crop of %d x %d from a %d x %d image (CLIPImageProcessor pads "
                            "with zeros there; not implemented)",
                            name, p->crop_width, p->crop_height, w, h);
        }
        int top = (h - p->crop_height) / 2, left = (w - p->crop_width) / 2;
        x = df_image_crop(x, top, left, p->crop_height, p->crop_width);
        h = p->crop_height, w = p->crop_width;
    }
    const uint8_t *px = x->data;
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < (int64_t)h * w; i++) {
            float v = p->do_rescale ? (float)(px[i * 3 + c] * p->rescale_factor) : px[i * 3 + c];
            if (p->do_normalize) v = (v - p->image_mean[c]) / p->image_std[c];
            dst[c * (int64_t)h * w + i] = v;
        }
    df_scope_end(s);
    return DF_OK;
}
