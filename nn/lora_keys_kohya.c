/* lora_keys_kohya.c — the tensor names of kohya-ss sd-scripts LoRA / LoCon files (networks/
 * lora.py), the layout A1111 and ComfyUI exchange:
 *     lora_unet_<module>.lora_down.weight, .lora_up.weight, .alpha     (the UNet)
 *     lora_te_<module>... (lora_te1_ for SDXL's first encoder)          (text_encoder)
 *     lora_te2_<module>...                                              (text_encoder_2)
 * where <module> is the diffusers / transformers module name with every '.' replaced by '_'
 * ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "text_model_encoder_layers_0_
 * self_attn_q_proj"). LoCon keys name the ResNet convolutions the same way
 * ("down_blocks_0_resnets_0_conv1"), down [rank, in, kh, kw] and up [out, rank, 1, 1].
 *
 * Back to module names: the flattening loses which underscores were dots. diffusers v0.21.4's
 * _convert_kohya_lora_to_diffusers turns every '_' into '.' and repairs known names with
 * string replacements; here the flat name is cut at underscores except inside the known segment
 * names that contain one (the table below, longest first), which gives the same module names
 * for SD 1.x / 2.x UNets and CLIP text encoders. The original CompVis names of SDXL files
 * (input_blocks_...) are not mapped: they read as modules the model does not have, which the
 * consumer reports.
 */
#include "nn/lora_file_impl.h"

#include <stdio.h>
#include <string.h>

/* Segment names of diffusers' UNet2DConditionModel and transformers' CLIPTextModel that contain
 * an underscore. Longer names first where one is a prefix of another. */
static const char *const compound[] = {"transformer_blocks",
                                       "conv_norm_out",
                                       "conv_shortcut",
                                       "time_emb_proj",
                                       "time_embedding",
                                       "add_embedding",
                                       "class_embedding",
                                       "down_blocks",
                                       "up_blocks",
                                       "mid_block",
                                       "proj_in",
                                       "proj_out",
                                       "conv_in",
                                       "conv_out",
                                       "linear_1",
                                       "linear_2",
                                       "to_out",
                                       "to_q",
                                       "to_k",
                                       "to_v",
                                       "add_q_proj",
                                       "add_k_proj",
                                       "add_v_proj",
                                       "text_model",
                                       "self_attn",
                                       "q_proj",
                                       "k_proj",
                                       "v_proj",
                                       "out_proj",
                                       "final_layer_norm",
                                       "layer_norm1",
                                       "layer_norm2",
                                       "token_embedding",
                                       "position_embedding",
                                       "conv_act",
                                       "conv1_1",
                                       "ff_inner"};

bool df_lora_kohya_unflatten(const char *flat, char *out) {
    size_t o = 0;
    const char *s = flat;
    if (!*s) return false;
    while (*s) {
        size_t n = 0;
        for (size_t i = 0; i < sizeof compound / sizeof compound[0]; i++) {
            size_t m = strlen(compound[i]);
            if (strncmp(s, compound[i], m) == 0 && (s[m] == '_' || s[m] == 0) && m > n) n = m;
        }
        if (n == 0) {
            const char *u = strchr(s, '_');
            n = u ? (size_t)(u - s) : strlen(s);
        }
        if (n == 0 || o + n + 2 > DF_LORA_NAME_MAX) return false; /* "__", a leading '_' */
        if (o) out[o++] = '.';
        memcpy(out + o, s, n);
        o += n;
        s += n;
        if (*s == '_') {
            s++;
            if (!*s) return false; /* a trailing '_' */
        }
    }
    out[o] = 0;
    return true;
}

static const char *const prefixes[][2] = {{"lora_unet_", "unet."},
                                          {"lora_te_", "text_encoder."},
                                          {"lora_te1_", "text_encoder."},
                                          {"lora_te2_", "text_encoder_2."}};
static const char *const roles[] = {".lora_down.weight", ".lora_up.weight", ".alpha"};

bool df_lora_kohya_key_parse(const char *key, char *target, df_lora_role *role) {
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t m = strlen(prefixes[i][0]);
        if (strncmp(key, prefixes[i][0], m) != 0) continue;
        const char *flat = key + m, *dot = strchr(flat, '.');
        if (!dot || dot == flat || (size_t)(dot - flat) >= DF_LORA_NAME_MAX) return false;
        int r = -1;
        for (int k = 0; k < 3; k++)
            if (strcmp(dot, roles[k]) == 0) r = k;
        if (r < 0) return false;
        char flat_copy[DF_LORA_NAME_MAX], module[DF_LORA_NAME_MAX];
        memcpy(flat_copy, flat, (size_t)(dot - flat));
        flat_copy[dot - flat] = 0;
        if (!df_lora_kohya_unflatten(flat_copy, module)) return false;
        int w = snprintf(target, DF_LORA_NAME_MAX, "%s%s", prefixes[i][1], module);
        *role = (df_lora_role)r;
        return w > 0 && w < DF_LORA_NAME_MAX;
    }
    return false;
}

bool df_lora_kohya_key_format(const char *prefix, const char *module, df_lora_role role,
                              char *key) {
    const char *kp = strcmp(prefix, "unet.") == 0           ? "lora_unet_"
                     : strcmp(prefix, "text_encoder.") == 0 ? "lora_te_"
                                                            : "lora_te2_";
    int w = snprintf(key, DF_LORA_NAME_MAX, "%s%s%s", kp, module, roles[role]);
    if (w <= 0 || w >= DF_LORA_NAME_MAX) return false;
    size_t start = strlen(kp), end = (size_t)w - strlen(roles[role]);
    for (size_t i = start; i < end; i++)
        if (key[i] == '.') key[i] = '_';
    return true;
}
