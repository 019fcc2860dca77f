/* controlnet.h — diffusers v0.21.4 ControlNetModel (models/controlnet.py): the UNet's down half
 * (conv_in, time_embedding, down_blocks, mid_block: the same df_unet_body and block code as the
 * UNets), the conditioning embedding (controlnet_cond_embedding: conv_in, SiLU, pairs of 3x3
 * convolutions (stride 1, then 2) with SiLU, conv_out) added to conv_in's output, and one zero
 * 1x1 convolution per skip connection (controlnet_down_blocks.i) and after the mid block
 * (controlnet_mid_block). Its outputs are the UNet's down_block_additional_residuals and
 * mid_block_additional_residual (df_unet_residuals).
 */
#ifndef DF_CONTROLNET_H
#define DF_CONTROLNET_H

#include "nn/nn.h"

/* ControlNetModel's config.json (diffusers v0.21.4 field names and defaults). The fields that
 * select features we do not implement (class and addition embeddings, encoder_hid_proj,
 * global_pool_conditions) are refused when set. heads is the resolved number of heads
 * (num_attention_heads or attention_head_dim, per block); heads_given says num_attention_heads
 * was set (it is written back as it was read). */
typedef struct df_controlnet_config {
    int in_channels, conditioning_channels;
    bool flip_sin_to_cos;
    int freq_shift;
    int n_blocks;
    char down_block_types[DF_MAX_BLOCKS][DF_JSON_STR];
    bool only_cross_attention[DF_MAX_BLOCKS];
    int block_out_channels[DF_MAX_BLOCKS];
    int layers_per_block, downsample_padding;
    float mid_block_scale_factor;
    char act_fn[DF_JSON_STR];
    int norm_num_groups;
    float norm_eps;
    int cross_attention_dim;
    int transformer_layers_per_block[DF_MAX_BLOCKS];
    int attention_head_dim[DF_MAX_BLOCKS];
    int heads[DF_MAX_BLOCKS];
    bool heads_given;
    bool use_linear_projection, upcast_attention;
    char resnet_time_scale_shift[DF_JSON_STR];
    bool bgr; /* controlnet_conditioning_channel_order "bgr" (else "rgb") */
    int n_cond_blocks;
    int conditioning_embedding_out_channels[DF_MAX_BLOCKS];
} df_controlnet_config;

#define DF_CONTROLNET_MAX_BGR 64 /* conditioning_channels of a "bgr" ControlNet at most */
#define DF_CONTROLNET_MAX_COND_CONVS (2 * (DF_MAX_BLOCKS - 1))

typedef struct df_controlnet {
    df_controlnet_config config;
    df_params params;
    df_unet_body body; /* conv_in, time_embedding, down_blocks, mid_block (down_only) */
    /* controlnet_cond_embedding.{conv_in, blocks.i, conv_out} */
    df_conv_mod cond_conv_in, cond_blocks[DF_CONTROLNET_MAX_COND_CONVS], cond_conv_out;
    df_conv_mod *zero_down; /* controlnet_down_blocks.i, one per skip connection */
    int n_zero_down;
    df_conv_mod zero_mid; /* controlnet_mid_block */
} df_controlnet;

DF_API df_controlnet_config df_controlnet_config_default(void);
/* Reads a ControlNetModel config.json over the class defaults; errors name the file and field. */
DF_API df_status df_controlnet_config_from_json(const df_json *j, df_controlnet_config *c);
DF_API df_status df_controlnet_config_load(const char *path, df_controlnet_config *c);
/* Writes config.json as diffusers' save_config does (every field, sorted, _class_name). */
DF_API df_status df_controlnet_config_save(const df_controlnet_config *c, const char *path);
/* The config diffusers' ControlNetModel.from_unet gives for a UNet (conditioning embedding
 * widths `cond_channels`, n of them; NULL: the default 16, 32, 96, 256). DF_ERR_UNSUPPORTED
 * naming the field when the UNet has what a ControlNet cannot copy (per-block layer counts or
 * cross-attention widths, no mid block, another conv_in kernel, a time embedding other than
 * the default one). */
DF_API df_status df_controlnet_config_from_unet(const df_unet2d_cond_config *u,
                                                const int *cond_channels, int n,
                                                df_controlnet_config *c);

DF_API df_status df_controlnet_init(df_controlnet *m, const df_controlnet_config *c, df_init init);
DF_API void df_controlnet_free(df_controlnet *m);
/* ControlNetModel.from_unet(unet): the config above, the conditioning embedding drawn from
 * `gen` (torch's default ranges; NULL: zeros) with its conv_out zero, the zero convolutions
 * zero, and conv_in, time_embedding, down_blocks and mid_block copied from the UNet. */
DF_API df_status df_controlnet_from_unet(df_controlnet *m, const df_unet2d_cond *unet,
                                         const int *cond_channels, int n, df_philox *gen);
/* DF_ERR_INVALID naming the mismatch unless this ControlNet fits the UNet: same in_channels,
 * block widths, layers (so the same skip connections) and cross-attention width. */
DF_API df_status df_controlnet_check_unet(const df_controlnet_config *c,
                                          const df_unet2d_cond_config *u);
/* DF_ERR_INVALID naming the input unless sample is F32 (N, in_channels, H, W), cond F32
 * (N, conditioning_channels, H', W') whose embedding has the sample's sides (H' = 8 H with the
 * default four conditioning widths) and encoder_hidden_states F32 (N, S, cross_attention_dim). */
DF_API df_status df_controlnet_check_inputs(const df_controlnet_config *c, const df_tensor *sample,
                                            const df_tensor *ctx, const df_tensor *cond);
/* The forward (inputs checked by the caller): down[0 .. *n_down) (DF_UNET_MAX_SKIPS slots) and
 * *mid receive the residuals, scaled by conditioning_scale, or with guess_mode by
 * conditioning_scale x logspace(-1, 0, n_down + 1) (the last for the mid residual). They keep
 * the layout of the blocks (df_to_plain for plain ones). */
DF_API void df_controlnet_forward(df_controlnet *m, df_tensor *sample, const df_tensor *timestep,
                                  df_tensor *encoder_hidden_states, df_tensor *controlnet_cond,
                                  float conditioning_scale, bool guess_mode, df_tensor **down,
                                  int *n_down, df_tensor **mid);

#endif
