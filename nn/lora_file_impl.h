/* lora_file_impl.h — the key names of each LoRA file format (nn/lora_keys_*.c), shared by the
 * reader and writer of nn/lora_file.c. A key is (target, role): the target is the diffusers
 * module name with its model prefix ("unet.", "text_encoder.", "text_encoder_2."), the role says
 * which tensor of the entry the key holds. */
#ifndef DF_NN_LORA_FILE_IMPL_H
#define DF_NN_LORA_FILE_IMPL_H

#include "nn/lora_file.h"

#include <stddef.h>

#define DF_LORA_NAME_MAX 512

typedef enum df_lora_role { DF_LORA_DOWN, DF_LORA_UP, DF_LORA_ALPHA } df_lora_role;

/* Parses tensor name `key` of format f: the target into target[DF_LORA_NAME_MAX] and its role.
 * False when the key is not one of the format's names (nothing else is reported). */
bool df_lora_key_parse(df_lora_format f, const char *key, char *target, df_lora_role *role);

/* The tensor name of (target, role) in format f into key[DF_LORA_NAME_MAX]. False when the format
 * cannot name it (a target outside unet / text_encoder / text_encoder_2, an alpha in the
 * diffusers format, a name too long). */
bool df_lora_key_format(df_lora_format f, const char *target, df_lora_role role, char *key);

/* The kohya layout (nn/lora_keys_kohya.c): df_lora_key_parse and, for a target split into its
 * model prefix ("unet.", "text_encoder.", "text_encoder_2.") and module, df_lora_key_format. */
bool df_lora_kohya_key_parse(const char *key, char *target, df_lora_role *role);
bool df_lora_kohya_key_format(const char *prefix, const char *module, df_lora_role role, char *key);

/* Kohya's flattened module name ("down_blocks_0_attentions_0_proj_in") back to the diffusers /
 * transformers module name ("down_blocks.0.attentions.0.proj_in") into out[DF_LORA_NAME_MAX]:
 * underscores become dots except inside the segment names that contain one (down_blocks, to_q,
 * self_attn, ...). False when too long or empty segments appear. */
bool df_lora_kohya_unflatten(const char *flat, char *out);

#endif
