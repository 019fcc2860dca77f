/* embedding_file.h — textual-inversion embedding files (nn/embedding_file.c): one token's
 * vectors, read from safetensors in the formats diffusers v0.21.4's load_textual_inversion and
 * A1111 take, and written as diffusers' textual_inversion.py saves learned_embeds.safetensors.
 *
 *   diffusers  one tensor named by its token ("<cat-toy>"), (D) or (k, D)
 *   A1111      "emb_params" (k, D) (kohya / A1111 safetensors), or "string_to_param.*" (k, D)
 *              (an A1111 .pt converted to safetensors, its other entries ignored); the token is
 *              the metadata's "name" when there is one, else the file's stem
 *
 * Pickled files (.pt, .bin, .ckpt, .pth, or bytes that start as a pickle or a zip) are refused
 * with a message and never unpickled. Every error is one line naming the file and the reason.
 */
#ifndef DF_NN_EMBEDDING_FILE_H
#define DF_NN_EMBEDDING_FILE_H

#include "nn/nn.h"

/* Most vectors one embedding may hold, the widest vector, the longest token (bytes). */
#define DF_EMBED_MAX_VECTORS 75
#define DF_EMBED_MAX_WIDTH 16384
#define DF_EMBED_MAX_TOKEN 256

typedef enum df_embed_format { DF_EMBED_DIFFUSERS = 0, DF_EMBED_A1111 } df_embed_format;

typedef struct df_embed {
    char token[DF_EMBED_MAX_TOKEN]; /* the token the file names ("" when it names none) */
    df_tensor *vectors;             /* F32 (k, D), owned (df_embed_free) */
    df_embed_format format;
} df_embed;

/* Reads path (see above) into *out. Errors (DF_ERR_IO, DF_ERR_FORMAT, DF_ERR_INVALID) name the
 * file: a pickle, not safetensors, no embedding tensor or several, a tensor that is not (D) or
 * (k, D) floats, more than DF_EMBED_MAX_VECTORS vectors, a width above DF_EMBED_MAX_WIDTH. */
DF_API df_status df_embed_read(const char *path, df_embed *out);
/* As df_embed_read on n bytes in memory; `label` stands for the path (its stem gives an A1111
 * file's token). The fuzz target's entry. */
DF_API df_status df_embed_read_memory(const void *buf, size_t n, const char *label, df_embed *out);
DF_API void df_embed_free(df_embed *e);
/* Writes learned_embeds.safetensors as textual_inversion.py does: one F32 tensor (k, D) named
 * `token` (the first placeholder token). Errors as df_st_save. */
DF_API df_status df_embed_save(const char *path, const char *token, const df_tensor *vectors);

#endif
