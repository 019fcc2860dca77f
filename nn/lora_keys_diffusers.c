/* lora_keys_diffusers.c — the tensor names of the diffusers v0.21.4 and PEFT LoRA layouts.
 *
 * diffusers v0.21.4 (loaders.py: LoraLoaderMixin.save_lora_weights prefixes the state dict it
 * is given with "unet." / "text_encoder."; load_attn_procs and load_lora_into_text_encoder read):
 *   unet.<module>.lora.down.weight / .lora.up.weight        LoRACompatibleLinear / Conv layout
 *   unet.<attn>.processor.to_q_lora.down.weight             attn-procs layout (LoRAAttnProcessor,
 *       to_k_lora, to_v_lora, to_out_lora = <attn>.to_out.0) train_text_to_image_lora.py)
 *   text_encoder.<module>.lora_linear_layer.down.weight     PatchedLoraProjection
 *   text_encoder.<attn>.to_q_lora.down.weight               the older text-encoder names
 *       (to_q/k/v/out_lora = <attn>.q_proj / k_proj / v_proj / out_proj)
 *   keys without a unet. / text_encoder. prefix are the old unet-only files (load_lora_into_unet).
 *   The layout has no alpha: the scale is 1 (alpha = rank).
 * The writer uses the LoRACompatible names for the UNet (they name any linear or convolution,
 * not only attention projections) and lora_linear_layer for the text encoders.
 *
 * PEFT (later diffusers, peft's save_pretrained):
 *   unet.<module>.lora_A.weight (down), .lora_B.weight (up), text_encoder.<module>.lora_A...;
 *   base_model.model.<module>.lora_A.weight: the text encoder when <module> starts with
 *   "text_model.", else the UNet; <prefix>.<module>.alpha when the alpha is not the rank (peft
 *   keeps lora_alpha in adapter_config.json; a scalar tensor keeps a file self-contained).
 */
#include "nn/lora_file_impl.h"

#include <stdio.h>
#include <string.h>

static bool ends_with(const char *s, size_t n, const char *suffix, size_t *stem) {
    size_t m = strlen(suffix);
    if (n <= m || memcmp(s + n - m, suffix, m) != 0) return false;
    *stem = n - m;
    return true;
}

static bool set_target(char *target, const char *prefix, const char *module, size_t n) {
    if (n == 0 || module[0] == '.' || module[n - 1] == '.') return false;
    int w = snprintf(target, DF_LORA_NAME_MAX, "%s%.*s", prefix, (int)n, module);
    return w > 0 && w < DF_LORA_NAME_MAX;
}

/* "unet." / "text_encoder." / "text_encoder_2." at the start of key: the prefix (with its dot)
 * and its length; NULL when none. */
static const char *model_prefix(const char *key, size_t *len) {
    static const char *const prefixes[] = {"unet.", "text_encoder.", "text_encoder_2."};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(key, prefixes[i], n) == 0) {
            *len = n;
            return prefixes[i];
        }
    }
    return NULL;
}

/* The attn-procs projection names: unet name, text-encoder name, key stem. */
typedef struct attn_proj {
    const char *lora, *unet, *te;
} attn_proj;
static const attn_proj attn_projs[] = {
    {"to_q_lora", "to_q", "q_proj"},
    {"to_k_lora", "to_k", "k_proj"},
    {"to_v_lora", "to_v", "v_proj"},
    {"to_out_lora", "to_out.0", "out_proj"},
};

static bool parse_diffusers(const char *key, char *target, df_lora_role *role) {
    size_t plen = 0;
    const char *prefix = model_prefix(key, &plen);
    bool te = prefix && prefix[0] == 't';
    if (!prefix) prefix = "unet."; /* the old unet-only layout */
    const char *rest = key + plen;
    size_t n = strlen(rest), stem;
    const char *sub;
    if (ends_with(rest, n, ".down.weight", &stem))
        *role = DF_LORA_DOWN;
    else if (ends_with(rest, n, ".up.weight", &stem))
        *role = DF_LORA_UP;
    else
        return false;
    /* rest[0, stem) ends with the LoRA layer's name */
    if (!te && ends_with(rest, stem, ".lora", &n)) return set_target(target, prefix, rest, n);
    if (te && ends_with(rest, stem, ".lora_linear_layer", &n))
        return set_target(target, prefix, rest, n);
    for (size_t i = 0; i < sizeof attn_projs / sizeof attn_projs[0]; i++) {
        char suffix[32];
        snprintf(suffix, sizeof suffix, "%s%s", te ? "." : ".processor.", attn_projs[i].lora);
        if (!ends_with(rest, stem, suffix, &n) || n == 0) continue;
        sub = te ? attn_projs[i].te : attn_projs[i].unet;
        int w = snprintf(target, DF_LORA_NAME_MAX, "%s%.*s.%s", prefix, (int)n, rest, sub);
        return rest[0] != '.' && w > 0 && w < DF_LORA_NAME_MAX;
    }
    return false;
}

static bool parse_peft(const char *key, char *target, df_lora_role *role) {
    size_t plen = 0;
    const char *prefix = model_prefix(key, &plen);
    const char *rest = key + plen;
    if (!prefix) {
        static const char base[] = "base_model.model.";
        if (strncmp(key, base, sizeof base - 1) != 0) return false;
        rest = key + sizeof base - 1;
        prefix = strncmp(rest, "text_model.", 11) == 0 ? "text_encoder." : "unet.";
    }
    size_t n = strlen(rest), stem;
    if (ends_with(rest, n, ".lora_A.weight", &stem))
        *role = DF_LORA_DOWN;
    else if (ends_with(rest, n, ".lora_B.weight", &stem))
        *role = DF_LORA_UP;
    else if (ends_with(rest, n, ".alpha", &stem))
        *role = DF_LORA_ALPHA;
    else
        return false;
    return set_target(target, prefix, rest, stem);
}

bool df_lora_key_parse(df_lora_format f, const char *key, char *target, df_lora_role *role) {
    switch (f) {
    case DF_LORA_DIFFUSERS: return parse_diffusers(key, target, role);
    case DF_LORA_PEFT: return parse_peft(key, target, role);
    case DF_LORA_KOHYA: return df_lora_kohya_key_parse(key, target, role);
    case DF_LORA_FORMAT_COUNT: break;
    }
    return false;
}
bool df_lora_key_format(df_lora_format f, const char *target, df_lora_role role, char *key) {
    size_t plen = 0;
    const char *prefix = model_prefix(target, &plen);
    if (!prefix || !target[plen]) return false;
    const char *module = target + plen;
    bool te = prefix[0] == 't';
    int w = -1;
    switch (f) {
    case DF_LORA_DIFFUSERS:
        if (role == DF_LORA_ALPHA) return false;
        w = snprintf(key, DF_LORA_NAME_MAX, "%s%s.%s.%s.weight", prefix, module,
                     te ? "lora_linear_layer" : "lora", role == DF_LORA_DOWN ? "down" : "up");
        break;
    case DF_LORA_PEFT:
        w = snprintf(key, DF_LORA_NAME_MAX, "%s%s", target,
                     role == DF_LORA_DOWN ? ".lora_A.weight"
                     : role == DF_LORA_UP ? ".lora_B.weight"
                                          : ".alpha");
        break;
    case DF_LORA_KOHYA: return df_lora_kohya_key_format(prefix, module, role, key);
    case DF_LORA_FORMAT_COUNT: break;
    }
    return w > 0 && w < DF_LORA_NAME_MAX;
}
