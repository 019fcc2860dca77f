/* sd_single_file_keys.c — the tensor names of a Stable Diffusion checkpoint in the original
 * CompVis layout and in diffusers', as diffusers v0.21.4's converters map them
 * (convert_from_ckpt.py: convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
 * convert_ldm_clip_checkpoint, convert_open_clip_checkpoint; and the reverse tables of
 * scripts/convert_diffusers_to_original_stable_diffusion.py).
 *
 * The mapping is a list of rules built from the layout (block count, layers per block, which
 * blocks have attention, VAE depth, text encoder kind): a prefix in one layout and its
 * counterpart in the other, plus, for some module kinds, a table renaming the first segments of
 * the rest (a ResNet's `in_layers.0` is `norm1`). The same rules translate both ways, so the two
 * directions cannot disagree. Invariant: at most one rule matches a name (prefixes end in '.').
 *
 *   UNet   input_blocks.0.0 = conv_in; input_blocks.(1 + b(L+1) + j).0 = down_blocks.b.resnets.j
 *          (.1 = .attentions.j); input_blocks.(1 + b(L+1) + L).0.op = down_blocks.b.downsamplers.0
 *          .conv; middle_block.0/1/2 = mid_block.resnets.0 / attentions.0 / resnets.1;
 *          output_blocks.(b(L+1) + j).0 = up_blocks.b.resnets.j (.1 = .attentions.j), the last
 *          layer's .1 (.2 after an attention) .conv = up_blocks.b.upsamplers.0.conv;
 *          time_embed.0/2 = time_embedding.linear_1/2; out.0/2 = conv_norm_out / conv_out.
 *   VAE    encoder.down.i.block.j = encoder.down_blocks.i.resnets.j, down.i.downsample =
 *          down_blocks.i.downsamplers.0; decoder.up.(n-1-i).block.j = decoder.up_blocks.i.
 *          resnets.j (blocks numbered in reverse), mid.block_1/2 = mid_block.resnets.0/1,
 *          mid.attn_1.{norm,q,k,v,proj_out} = mid_block.attentions.0.{group_norm,to_q,to_k,to_v,
 *          to_out.0} (1x1 conv weights <-> linear), norm_out = conv_norm_out, nin_shortcut =
 *          conv_shortcut.
 *   CLIP   cond_stage_model.transformer.text_model.* = text_model.* (SD 1.x).
 *   OpenCLIP (SD 2.x) cond_stage_model.model.: positional_embedding, token_embedding.weight,
 *          ln_final = text_model.embeddings.position_embedding.weight / .token_embedding.weight /
 *          text_model.final_layer_norm; transformer.resblocks.l.{ln_1, ln_2, attn.out_proj,
 *          mlp.c_fc, mlp.c_proj} = text_model.encoder.layers.l.{layer_norm1, layer_norm2,
 *          self_attn.out_proj, mlp.fc1, mlp.fc2}; attn.in_proj_weight / _bias = the rows of
 *          self_attn.q_proj, k_proj, v_proj stacked in that order.
 */
#include "nn/sd_single_file_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sf_pair {
    const char *orig, *diff;
} sf_pair;

static const sf_pair unet_resnet[] = {
    {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},         {"skip_connection.", "conv_shortcut."},
};
static const sf_pair vae_resnet[] = {
    {"norm1.", "norm1."},
    {"conv1.", "conv1."},
    {"norm2.", "norm2."},
    {"conv2.", "conv2."},
    {"nin_shortcut.", "conv_shortcut."},
};
static const sf_pair vae_attn[] = {
    {"norm.", "group_norm."},   {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."},
    {"proj_out.", "to_out.0."},
};
static const sf_pair openclip_block[] = {
    {"ln_1.", "layer_norm1."},
    {"ln_2.", "layer_norm2."},
    {"mlp.c_fc.", "mlp.fc1."},
    {"mlp.c_proj.", "mlp.fc2."},
    {"attn.out_proj.", "self_attn.out_proj."},
};
static const char *const qkv[3] = {"q", "k", "v"};

static df_status add(sf_rules *r, int comp, sf_rule_kind kind, const char *orig, const char *diff) {
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 256;
        sf_rule *p = realloc(r->items, (size_t)cap * sizeof *p);
        if (!p) return df_error(DF_ERR_NOMEM, "single-file mapping: out of memory");
        r->items = p;
        r->cap = cap;
    }
    sf_rule *x = &r->items[r->n++];
    x->comp = comp;
    x->kind = kind;
    snprintf(x->orig, sizeof x->orig, "%s", orig);
    snprintf(x->diff, sizeof x->diff, "%s", diff);
    return DF_OK;
}

#define ADD(comp, kind, ...)                                                                       \
    do {                                                                                           \
        char o_[96], d_[96];                                                                       \
        snprintf(o_, sizeof o_, __VA_ARGS__);                                                      \
        snprintf(d_, sizeof d_, "%s", diffbuf);                                                    \
        DF_TRY(add(r, comp, kind, o_, d_));                                                        \
    } while (0)

static df_status unet_rules(const sf_layout *l, sf_rules *r) {
    const char *P = SF_UNET_PREFIX;
    int n = l->unet_blocks, L = l->unet_layers;
    char diffbuf[96];
    static const char *const fixed[][2] = {
        {"time_embed.0.", "time_embedding.linear_1."},
        {"time_embed.2.", "time_embedding.linear_2."},
        {"input_blocks.0.0.", "conv_in."},
        {"out.0.", "conv_norm_out."},
        {"out.2.", "conv_out."},
    };
    for (size_t k = 0; k < sizeof fixed / sizeof *fixed; k++) {
        snprintf(diffbuf, sizeof diffbuf, "%s", fixed[k][1]);
        ADD(SF_UNET, SF_R_PLAIN, "%s%s", P, fixed[k][0]);
    }
    for (int b = 0; b < n; b++) {
        for (int j = 0; j < L; j++) {
            int i = 1 + b * (L + 1) + j;
            snprintf(diffbuf, sizeof diffbuf, "down_blocks.%d.resnets.%d.", b, j);
            ADD(SF_UNET, SF_R_UNET_RESNET, "%sinput_blocks.%d.0.", P, i);
            if (l->down_attn[b]) {
                snprintf(diffbuf, sizeof diffbuf, "down_blocks.%d.attentions.%d.", b, j);
                ADD(SF_UNET, SF_R_PLAIN, "%sinput_blocks.%d.1.", P, i);
            }
        }
        if (b < n - 1) {
            snprintf(diffbuf, sizeof diffbuf, "down_blocks.%d.downsamplers.0.conv.", b);
            ADD(SF_UNET, SF_R_PLAIN, "%sinput_blocks.%d.0.op.", P, 1 + b * (L + 1) + L);
        }
    }
    snprintf(diffbuf, sizeof diffbuf, "mid_block.resnets.0.");
    ADD(SF_UNET, SF_R_UNET_RESNET, "%smiddle_block.0.", P);
    snprintf(diffbuf, sizeof diffbuf, "mid_block.attentions.0.");
    ADD(SF_UNET, SF_R_PLAIN, "%smiddle_block.1.", P);
    snprintf(diffbuf, sizeof diffbuf, "mid_block.resnets.1.");
    ADD(SF_UNET, SF_R_UNET_RESNET, "%smiddle_block.2.", P);
    for (int b = 0; b < n; b++) {
        bool attn = l->down_attn[n - 1 - b];
        for (int j = 0; j <= L; j++) {
            int i = b * (L + 1) + j;
            snprintf(diffbuf, sizeof diffbuf, "up_blocks.%d.resnets.%d.", b, j);
            ADD(SF_UNET, SF_R_UNET_RESNET, "%soutput_blocks.%d.0.", P, i);
            if (attn) {
                snprintf(diffbuf, sizeof diffbuf, "up_blocks.%d.attentions.%d.", b, j);
                ADD(SF_UNET, SF_R_PLAIN, "%soutput_blocks.%d.1.", P, i);
            }
            if (b < n - 1 && j == L) {
                snprintf(diffbuf, sizeof diffbuf, "up_blocks.%d.upsamplers.0.conv.", b);
                ADD(SF_UNET, SF_R_PLAIN, "%soutput_blocks.%d.%d.conv.", P, i, attn ? 2 : 1);
            }
        }
    }
    return DF_OK;
}

static df_status vae_rules(const sf_layout *l, sf_rules *r) {
    const char *P = SF_VAE_PREFIX;
    int n = l->vae_blocks;
    char diffbuf[96];
    static const char *const fixed[][2] = {
        {"encoder.conv_in.", "encoder.conv_in."},
        {"encoder.conv_out.", "encoder.conv_out."},
        {"encoder.norm_out.", "encoder.conv_norm_out."},
        {"decoder.conv_in.", "decoder.conv_in."},
        {"decoder.conv_out.", "decoder.conv_out."},
        {"decoder.norm_out.", "decoder.conv_norm_out."},
        {"quant_conv.", "quant_conv."},
        {"post_quant_conv.", "post_quant_conv."},
    };
    for (size_t k = 0; k < sizeof fixed / sizeof *fixed; k++) {
        snprintf(diffbuf, sizeof diffbuf, "%s", fixed[k][1]);
        ADD(SF_VAE, SF_R_PLAIN, "%s%s", P, fixed[k][0]);
    }
    /* the resnets of a block are matched by prefix "down.i.block." + index: any layer count */
    for (int i = 0; i < n; i++) {
        snprintf(diffbuf, sizeof diffbuf, "encoder.down_blocks.%d.resnets.", i);
        ADD(SF_VAE, SF_R_VAE_RESNETS, "%sencoder.down.%d.block.", P, i);
        if (i < n - 1) {
            snprintf(diffbuf, sizeof diffbuf, "encoder.down_blocks.%d.downsamplers.0.conv.", i);
            ADD(SF_VAE, SF_R_PLAIN, "%sencoder.down.%d.downsample.conv.", P, i);
        }
        snprintf(diffbuf, sizeof diffbuf, "decoder.up_blocks.%d.resnets.", i);
        ADD(SF_VAE, SF_R_VAE_RESNETS, "%sdecoder.up.%d.block.", P, n - 1 - i);
        if (i < n - 1) {
            snprintf(diffbuf, sizeof diffbuf, "decoder.up_blocks.%d.upsamplers.0.conv.", i);
            ADD(SF_VAE, SF_R_PLAIN, "%sdecoder.up.%d.upsample.conv.", P, n - 1 - i);
        }
    }
    for (int e = 0; e < 2; e++) {
        const char *side = e ? "decoder" : "encoder";
        for (int k = 0; k < 2; k++) {
            snprintf(diffbuf, sizeof diffbuf, "%s.mid_block.resnets.%d.", side, k);
            ADD(SF_VAE, SF_R_VAE_RESNET, "%s%s.mid.block_%d.", P, side, k + 1);
        }
        snprintf(diffbuf, sizeof diffbuf, "%s.mid_block.attentions.0.", side);
        ADD(SF_VAE, SF_R_VAE_ATTN, "%s%s.mid.attn_1.", P, side);
    }
    return DF_OK;
}

static df_status text_rules(const sf_layout *l, sf_rules *r) {
    char diffbuf[96];
    if (!l->openclip) {
        snprintf(diffbuf, sizeof diffbuf, "text_model.");
        ADD(SF_TEXT, SF_R_PLAIN, "%stext_model.", SF_CLIP_PREFIX);
        return DF_OK;
    }
    const char *P = SF_OPENCLIP_PREFIX;
    snprintf(diffbuf, sizeof diffbuf, "text_model.embeddings.position_embedding.weight");
    ADD(SF_TEXT, SF_R_EXACT, "%spositional_embedding", P);
    snprintf(diffbuf, sizeof diffbuf, "text_model.embeddings.token_embedding.weight");
    ADD(SF_TEXT, SF_R_EXACT, "%stoken_embedding.weight", P);
    snprintf(diffbuf, sizeof diffbuf, "text_model.final_layer_norm.");
    ADD(SF_TEXT, SF_R_PLAIN, "%sln_final.", P);
    for (int i = 0; i < l->text_layers; i++) {
        snprintf(diffbuf, sizeof diffbuf, "text_model.encoder.layers.%d.", i);
        ADD(SF_TEXT, SF_R_OPENCLIP_BLOCK, "%stransformer.resblocks.%d.", P, i);
    }
    return DF_OK;
}

df_status sf_rules_build(const sf_layout *l, sf_rules *r) {
    memset(r, 0, sizeof *r);
    df_status s = unet_rules(l, r);
    if (s == DF_OK) s = vae_rules(l, r);
    if (s == DF_OK) s = text_rules(l, r);
    if (s != DF_OK) sf_rules_free(r);
    return s;
}

void sf_rules_free(sf_rules *r) {
    free(r->items);
    memset(r, 0, sizeof *r);
}

static bool starts(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

static bool leaf(const char *s) {
    return strcmp(s, "weight") == 0 || strcmp(s, "bias") == 0;
}

/* "<index>." at the start of s (a VAE resnet's layer): its length, 0 when absent. */
static size_t index_prefix(const char *s) {
    size_t k = 0;
    while (s[k] >= '0' && s[k] <= '9' && k < 4) k++;
    return k > 0 && s[k] == '.' ? k + 1 : 0;
}

/* The rest of a name under a table rule, from one side (`from_orig`) to the other. */
static bool map_rest(sf_rule_kind kind, const char *rest, bool from_orig, char *out, size_t len,
                     int *part, bool *conv1x1) {
    const sf_pair *tab;
    size_t n;
    char idx[8] = "";
    *part = -1;
    *conv1x1 = false;
    switch (kind) {
    case SF_R_UNET_RESNET: tab = unet_resnet, n = sizeof unet_resnet / sizeof *unet_resnet; break;
    case SF_R_VAE_RESNET: tab = vae_resnet, n = sizeof vae_resnet / sizeof *vae_resnet; break;
    case SF_R_VAE_RESNETS: {
        size_t k = index_prefix(rest);
        if (!k) return false;
        snprintf(idx, sizeof idx, "%.*s", (int)k, rest);
        rest += k;
        tab = vae_resnet, n = sizeof vae_resnet / sizeof *vae_resnet;
        break;
    }
    case SF_R_VAE_ATTN: tab = vae_attn, n = sizeof vae_attn / sizeof *vae_attn; break;
    case SF_R_OPENCLIP_BLOCK:
        tab = openclip_block, n = sizeof openclip_block / sizeof *openclip_block;
        if (from_orig) {
            if (strcmp(rest, "attn.in_proj_weight") == 0 ||
                strcmp(rest, "attn.in_proj_bias") == 0) {
                *part = 0; /* '@' stands for q, k, v: the caller emits the three */
                snprintf(out, len, "self_attn.@_proj.%s",
                         strcmp(rest + 13, "weight") == 0 ? "weight" : "bias");
                return true;
            }
        } else {
            for (int p = 0; p < 3; p++) {
                char w[40], b[40];
                snprintf(w, sizeof w, "self_attn.%s_proj.weight", qkv[p]);
                snprintf(b, sizeof b, "self_attn.%s_proj.bias", qkv[p]);
                if (strcmp(rest, w) == 0 || strcmp(rest, b) == 0) {
                    *part = p;
                    snprintf(out, len, "attn.in_proj_%s", strcmp(rest, w) == 0 ? "weight" : "bias");
                    return true;
                }
            }
        }
        break;
    default: return false;
    }
    for (size_t k = 0; k < n; k++) {
        const char *a = from_orig ? tab[k].orig : tab[k].diff;
        const char *b = from_orig ? tab[k].diff : tab[k].orig;
        if (!starts(rest, a) || !leaf(rest + strlen(a))) continue;
        snprintf(out, len, "%s%s%s", idx, b, rest + strlen(a));
        *conv1x1 = kind == SF_R_VAE_ATTN && k > 0 && strcmp(rest + strlen(a), "weight") == 0;
        return true;
    }
    return false;
}

static bool translate(const sf_rules *r, int comp, const char *name, bool from_orig, sf_target *t) {
    for (int i = 0; i < r->n; i++) {
        const sf_rule *x = &r->items[i];
        if (!from_orig && x->comp != comp) continue;
        const char *from = from_orig ? x->orig : x->diff, *to = from_orig ? x->diff : x->orig;
        t->comp = x->comp;
        t->part = -1;
        t->conv1x1 = false;
        if (x->kind == SF_R_EXACT) {
            if (strcmp(name, from) != 0) continue;
            snprintf(t->name, sizeof t->name, "%s", to);
            return true;
        }
        if (!starts(name, from)) continue;
        const char *rest = name + strlen(from);
        if (x->kind == SF_R_PLAIN) {
            if (!*rest) return false;
            int w = snprintf(t->name, sizeof t->name, "%s%s", to, rest);
            return w > 0 && (size_t)w < sizeof t->name;
        }
        char mapped[DF_NAME_MAX];
        if (!map_rest(x->kind, rest, from_orig, mapped, sizeof mapped, &t->part, &t->conv1x1))
            return false;
        int w = snprintf(t->name, sizeof t->name, "%s%s", to, mapped);
        return w > 0 && (size_t)w < sizeof t->name;
    }
    return false;
}

bool sf_to_diff(const sf_rules *r, const char *orig, sf_target *t) {
    return translate(r, -1, orig, true, t);
}

bool sf_to_orig(const sf_rules *r, int comp, const char *diff, sf_target *t) {
    return translate(r, comp, diff, false, t);
}

void sf_qkv_name(const char *pattern, int part, char *out, size_t len) {
    const char *at = strchr(pattern, '@');
    DF_ASSERT(at && part >= 0 && part < 3, "sf_qkv_name: bad pattern '%s'", pattern);
    snprintf(out, len, "%.*s%s%s", (int)(at - pattern), pattern, qkv[part], at + 1);
}
