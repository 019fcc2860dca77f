/* single_file.h — single-file Stable Diffusion checkpoints (the original CompVis / A1111 layout
 * in one .safetensors: `model.diffusion_model.*` UNet, `first_stage_model.*` VAE,
 * `cond_stage_model.transformer.*` CLIP (SD 1.x) or `cond_stage_model.model.*` OpenCLIP (SD 2.x))
 * to and from a diffusers StableDiffusionPipeline folder, with the key mapping and config
 * inference of diffusers v0.21.4's converters (convert_from_ckpt.py and
 * scripts/convert_diffusers_to_original_stable_diffusion.py). docs/single-file.md gives the
 * mapping, the detection rules and the limits.
 *
 * Files are read memory-mapped and written tensor by tensor (df_st_save_stream): converting a
 * 4 GB checkpoint holds one tensor at a time, not the model. Pickle files (.ckpt, .bin, .pt,
 * .pth) are refused with a message saying how to make a .safetensors file; never unpickled.
 * Errors are one line naming the file and the tensor or field.
 */
#ifndef DF_NN_SINGLE_FILE_H
#define DF_NN_SINGLE_FILE_H

#include "nn/nn.h"

/* What a single file was recognised as. */
typedef struct df_sd_info {
    int version;      /* 1 (CLIP text encoder) or 2 (OpenCLIP) */
    bool inpainting;  /* a 9-channel UNet input */
    bool linear_proj; /* the UNet's transformers use linear proj_in / proj_out */
    int in_channels;  /* UNet input channels: 4 or 9 */
    int text_layers;  /* text encoder layers written (SD 2.x: one fewer than the file holds
                       * when it also holds text_projection, as diffusers) */
    int n_tensors;    /* tensors in the file */
    int n_ignored;    /* tensors outside the three models (EMA copies, schedule buffers) */
    bool has_ema;     /* the file also holds the UNet's EMA copy (model_ema.*, > 100 tensors) */
} df_sd_info;

typedef struct df_sd_convert_opts {
    /* Folder copied to tokenizer/ (vocab.json, merges.txt, tokenizer_config.json,
     * special_tokens_map.json); NULL: df_sd_default_tokenizer_dir. SD 2.x gets pad_token "!". */
    const char *tokenizer_dir;
    /* "epsilon" or "v_prediction"; NULL: epsilon for SD 1.x, v_prediction for SD 2.x (diffusers'
     * default for a v2 checkpoint without global_step: the 768-v model). */
    const char *prediction_type;
    /* Training resolution, for the configs' sample_size; 0: 768 for SD 2.x with v_prediction,
     * else 512 (diffusers' rule). */
    int image_size;
    /* Stored dtype of the written tensors: DF_DTYPE_F16 (--half), DF_DTYPE_F32, or
     * DF_DTYPE_COUNT to keep each tensor's own dtype (exact: the default). */
    df_dtype dtype;
    /* Convert the UNet's EMA weights (model_ema.*) rather than the trained ones, as diffusers'
     * --extract_ema (usually better for inference); an error when the file has none. */
    bool extract_ema;
    bool quiet;       /* no summary line on stderr */
    df_sd_info *info; /* when set, receives what the single file was recognised as */
} df_sd_convert_opts;

DF_API df_sd_convert_opts df_sd_convert_opts_default(void);

/* True when `path` is a safetensors file whose header names an original-layout UNet
 * (model.diffusion_model.input_blocks.0.0.weight). Cheap (reads the header only); no error is
 * set. */
DF_API bool df_sd_single_file_is(const char *path);

/* Recognises an opened single file: SD 1.x / 2.x, inpainting, and checks that every tensor of
 * the three models maps onto the inferred diffusers models with the right shape. SDXL, the
 * SDXL refiner, ControlNet files, UNet-only files and unknown layouts are refused
 * (DF_ERR_UNSUPPORTED, one line naming what was recognised); a missing tensor, a wrong shape or
 * an unexpected one is DF_ERR_FORMAT naming the file and the tensor. */
DF_API df_status df_sd_single_file_detect(const df_st_file *f, df_sd_info *info);

/* `in_file` (a single file) into a new diffusers StableDiffusionPipeline (or, 9 channels,
 * StableDiffusionInpaintPipeline) folder `out_dir` (created; it must not exist or be empty):
 * model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (PNDM for SD 1.x, DDIM
 * for SD 2.x). opts may be NULL (defaults). Nothing is written unless the whole file maps
 * (every check runs first); a failure while writing leaves a partial folder behind. */
DF_API df_status df_sd_single_file_convert(const char *in_file, const char *out_dir,
                                           const df_sd_convert_opts *opts);

/* A diffusers SD folder (unet/, vae/, text_encoder/ with their config.json and safetensors
 * weights, a sharded .index.json accepted) into one original-layout file `out_file` (the
 * mapping of diffusers' convert_diffusers_to_original_stable_diffusion.py; the text encoder is
 * written with OpenCLIP names when its hidden_act is "gelu" (SD 2.x), CLIP names otherwise).
 * opts: only dtype is used (NULL: keep). */
DF_API df_status df_sd_folder_to_single_file(const char *dir, const char *out_file,
                                             const df_sd_convert_opts *opts);

/* The default tokenizer folder: $DIFFUSION_TOKENIZER when set, else the first of
 * <executable's folder>/../models/clip-tokenizer, <executable's folder>/../../models/clip-tokenizer
 * (a build tree), <executable's folder>/../share/diffusion/clip-tokenizer and the source tree's
 * models/clip-tokenizer (compiled in) that holds a vocab.json. DF_ERR_NOTFOUND naming them
 * otherwise. */
DF_API df_status df_sd_default_tokenizer_dir(char *buf, size_t len);

/* DF_ERR_UNSUPPORTED with the how-to-convert message when `path` is a pickle checkpoint (by its
 * extension .ckpt / .bin / .pt / .pth or its first bytes: a zip or a pickle protocol header);
 * DF_OK otherwise (including when it cannot be read: the caller's open reports that). */
DF_API df_status df_sd_refuse_pickle(const char *path);

#endif
