/* sld.c — Safe Latent Diffusion's presets and default concept (diffusers v0.21.4
 * pipelines/stable_diffusion_safe: SafetyConfig and StableDiffusionPipelineSafe's
 * _safety_text_concept). The guidance itself is in sd_generate.c (guide_sld).
 */
#include "infer/infer.h"

#include <string.h>
#include <strings.h>

bool df_sld_preset(const char *name, df_sld_params *out) {
    static const struct {
        const char *name;
        df_sld_params p;
    } presets[] = {
        {"weak", {20, 15, 0.0, 0.0, 0.0}},
        {"medium", {1000, 10, 0.01, 0.3, 0.4}},
        {"strong", {2000, 7, 0.025, 0.5, 0.7}},
        {"max", {5000, 0, 1.0, 0.5, 0.7}},
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (strcasecmp(name, presets[i].name) == 0) {
            *out = presets[i].p;
            return true;
        }
    return false;
}

const char *df_sld_default_concept(void) {
    return "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, "
           "sexual, nudity, bodily fluids, blood, obscene gestures, illegal activity, drug use, "
           "theft, vandalism, weapons, child abuse, brutality, cruelty";
}
