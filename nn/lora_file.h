/* lora_file.h — LoRA / LoCon weights in memory, independent of any file layout, and the file
 * formats people exchange them in: diffusers v0.21.4 (`save_lora_weights`), PEFT names
 * (`lora_A` / `lora_B`, later diffusers), kohya / A1111 (`lora_unet_*.lora_down.weight`,
 * `.lora_up.weight`, `.alpha`, LoCon conv keys). Every reader turns a file into one
 * df_lora_set whose targets are diffusers module names; every writer turns a set back into one
 * layout. The adapters that apply a set to models (on the fly or fused) are in nn/lora.h.
 *
 * One entry is the low-rank update of one module:
 *     W' = W + multiplier * (alpha / rank) * up @ down
 * (for a convolution, up [out, rank, 1, 1] after down [rank, in, kh, kw] with the module's
 * stride and padding, as kohya's LoCon and diffusers' LoRAConv2dLayer).
 */
#ifndef DF_NN_LORA_FILE_H
#define DF_NN_LORA_FILE_H

#include "nn/nn.h"

typedef enum df_lora_format {
    DF_LORA_DIFFUSERS, /* diffusers v0.21.4: unet.<module>.lora.down.weight, text_encoder.* */
    DF_LORA_PEFT,      /* <module>.lora_A.weight / lora_B.weight (+ .alpha when not rank) */
    DF_LORA_KOHYA,     /* lora_unet_<module_with_underscores>.lora_down.weight, .alpha, lora_te_ */
    DF_LORA_FORMAT_COUNT
} df_lora_format;

/* The low-rank update of one module. */
typedef struct df_lora_entry {
    /* "unet.<diffusers module name>" or "text_encoder.<transformers module name>", e.g.
     * "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
     * "text_encoder.text_model.encoder.layers.0.self_attn.q_proj" (owned). */
    char *target;
    df_tensor *down; /* F32; linear [rank, in], conv [rank, in, kh, kw] (owned) */
    df_tensor *up;   /* F32; linear [out, rank], conv [out, rank, 1, 1] (owned) */
    float alpha;     /* the file's alpha; the rank when the file stores none (scale 1) */
} df_lora_entry;

/* A LoRA file's content: entries in the file's order. */
typedef struct df_lora_set {
    df_lora_entry *entries;
    int n, cap;
    df_lora_format format; /* the layout it was read from (writers ignore it) */
} df_lora_set;

/* The format's name as the CLI spells it: "diffusers", "peft", "kohya". */
DF_API const char *df_lora_format_name(df_lora_format f);
/* Parses a name of df_lora_format_name; false when unknown. */
DF_API bool df_lora_format_parse(const char *name, df_lora_format *out);

/* Reads a .safetensors LoRA file of any format above (detected from its keys) into *out
 * (zeroed first). Unknown layouts are refused naming a key; pickles are refused; shapes are
 * checked (down/up ranks agree, alpha is a finite scalar, rank > 0); NaN / Inf values are an
 * error naming the tensor. Errors name the file. */
DF_API df_status df_lora_file_read(const char *path, df_lora_set *out);

/* As df_lora_file_read on n bytes in memory (borrowed for the call); `label` names them in
 * errors. For the fuzz target and for files that arrive by other means than a path. */
DF_API df_status df_lora_file_read_memory(const void *buf, size_t n, const char *label,
                                          df_lora_set *out);

/* Writes set s to path in format f (atomically: a temporary file renamed into place).
 * metadata (NULL-terminated key/value pairs, or NULL) goes into the safetensors header. */
DF_API df_status df_lora_file_write(const df_lora_set *s, const char *path, df_lora_format f,
                                    const char *const *metadata);

/* Appends an entry (target copied; down and up are taken over). */
DF_API df_status df_lora_set_add(df_lora_set *s, const char *target, df_tensor *down, df_tensor *up,
                                 float alpha);

/* Frees the entries and their tensors; s is zeroed. NULL-safe. */
DF_API void df_lora_set_free(df_lora_set *s);

/* Adds multiplier * (alpha / rank) * up @ down to the module weight w (F32, contiguous): a
 * linear weight [out, in] or a convolution's [out, in, kh, kw]. A linear pair also fits a 1x1
 * convolution and a 1x1 conv pair a linear (SD 1.x proj_in is a 1x1 conv, SD 2.x a linear), as
 * long as out and in * kh * kw agree. DF_ERR_INVALID naming `label`, the target and both shapes
 * otherwise (w untouched). */
DF_API df_status df_lora_entry_add_to(const df_lora_entry *e, float multiplier, df_tensor *w,
                                      const char *label);

/* Writes a copy of the diffusers pipeline folder base_dir to out_dir (made; it must not exist or
 * be empty) with n LoRA sets merged into the weights (nn/lora_file_merge.c):
 *     W += multipliers[i] * (alpha / rank) * up @ down   for every entry of every set, in order,
 * where entry target "unet.<module>" is tensor "<module>.weight" of unet/'s weights file,
 * "text_encoder.<module>" of text_encoder/'s (text_encoder_2 likewise). Every other file is
 * copied (symlinks followed). Merged tensors keep their file's dtype (rounded back after the F32
 * arithmetic) unless `to_f32`, which writes every float tensor of a merged component as F32.
 * Targets that name no tensor of the base are an error listing them (nothing written); shape
 * mismatches name the target and both shapes. */
DF_API df_status df_lora_merge_folder(const char *base_dir, const df_lora_set *const *sets,
                                      const float *multipliers, int n, const char *out_dir,
                                      bool to_f32);

#endif
