/* infer.h — the public interface of infer/: noise schedulers (used by sampling and by training's
 * add_noise / velocity / SNR), the unconditional pipeline loop, image grids, and prompts (long
 * prompts and A1111 weighting over the CLIP tokenizer of nn/tokenizer.h).
 *
 * Schedulers follow Hugging Face diffusers v0.21.4 (src/diffusers/schedulers/scheduling_*.py):
 * the same config fields and defaults, the same timesteps, sigma tables in the dtypes diffusers
 * keeps them in, and the same float32 arithmetic order in `step`, so that a loop run here equals
 * diffusers' loop to float32 rounding.
 */
#ifndef DF_INFER_H
#define DF_INFER_H

#include "autograd/autograd.h"
#include "nn/nn.h"
#include "nn/tokenizer.h"
#include "datasets/datasets.h"

/* ================================================================ schedulers ================== */

typedef enum df_sched_kind {
    DF_SCHED_DDPM = 0,            /* DDPMScheduler */
    DF_SCHED_DDIM,                /* DDIMScheduler */
    DF_SCHED_PNDM,                /* PNDMScheduler (PRK + PLMS, or PLMS with skip_prk_steps) */
    DF_SCHED_EULER,               /* EulerDiscreteScheduler */
    DF_SCHED_EULER_ANCESTRAL,     /* EulerAncestralDiscreteScheduler */
    DF_SCHED_HEUN,                /* HeunDiscreteScheduler */
    DF_SCHED_LMS,                 /* LMSDiscreteScheduler */
    DF_SCHED_DPMSOLVER_MULTISTEP, /* DPMSolverMultistepScheduler */
    DF_SCHED_UNIPC_MULTISTEP,     /* UniPCMultistepScheduler */
    DF_SCHED_KIND_COUNT
} df_sched_kind;

typedef enum df_beta_schedule {
    DF_BETA_LINEAR = 0,
    DF_BETA_SCALED_LINEAR,
    DF_BETA_SQUAREDCOS_CAP_V2,
    DF_BETA_SIGMOID, /* DDPMScheduler only, as in diffusers */
} df_beta_schedule;

typedef enum df_prediction_type {
    DF_PRED_EPSILON = 0,
    DF_PRED_V_PREDICTION,
    DF_PRED_SAMPLE,
} df_prediction_type;

typedef enum df_timestep_spacing {
    DF_SPACING_LEADING = 0,
    DF_SPACING_TRAILING,
    DF_SPACING_LINSPACE,
} df_timestep_spacing;

typedef enum df_variance_type {
    DF_VARIANCE_NONE = -1, /* JSON null (DPMSolverMultistepScheduler's default) */
    DF_VARIANCE_FIXED_SMALL = 0,
    DF_VARIANCE_FIXED_SMALL_LOG,
    DF_VARIANCE_FIXED_LARGE,
    DF_VARIANCE_FIXED_LARGE_LOG,
    DF_VARIANCE_LEARNED,
    DF_VARIANCE_LEARNED_RANGE,
} df_variance_type;

typedef enum df_interpolation_type {
    DF_INTERP_LINEAR = 0,
    DF_INTERP_LOG_LINEAR
} df_interpolation_type;
typedef enum df_algorithm_type { DF_ALGO_DPMSOLVERPP = 0, DF_ALGO_DPMSOLVER } df_algorithm_type;
/* DPM-Solver: midpoint, heun. UniPC: bh1, bh2. */
typedef enum df_solver_type {
    DF_SOLVER_MIDPOINT = 0,
    DF_SOLVER_HEUN,
    DF_SOLVER_BH1,
    DF_SOLVER_BH2,
} df_solver_type;

#define DF_SCHED_MAX_DISABLE_CORRECTOR 64

/* A scheduler config: the union of the fields of every class, with diffusers' names. Which
 * fields a class has (and so reads and writes back) is the class's __init__ signature in
 * v0.21.4; the others keep the class defaults and are ignored. Keys the class does not know are
 * kept in `extra` and written back unchanged (as diffusers does). */
typedef struct df_sched_config {
    df_sched_kind kind;
    int64_t num_train_timesteps;
    double beta_start, beta_end;
    df_beta_schedule beta_schedule;
    double *trained_betas; /* owned; NULL = null */
    int64_t n_trained_betas;
    df_prediction_type prediction_type;
    df_timestep_spacing timestep_spacing;
    int64_t steps_offset;
    bool clip_sample;
    double clip_sample_range;
    bool thresholding;
    double dynamic_thresholding_ratio, sample_max_value;
    bool set_alpha_to_one;                    /* DDIM, PNDM */
    bool skip_prk_steps;                      /* PNDM */
    bool rescale_betas_zero_snr;              /* DDIM */
    df_variance_type variance_type;           /* DDPM; DPM-Solver (null allowed) */
    bool use_karras_sigmas;                   /* Euler, Heun, LMS, DPM-Solver, UniPC */
    df_interpolation_type interpolation_type; /* Euler */
    int64_t solver_order;                     /* DPM-Solver, UniPC */
    df_algorithm_type algorithm_type;         /* DPM-Solver */
    df_solver_type solver_type;               /* DPM-Solver, UniPC */
    bool lower_order_final;                   /* DPM-Solver, UniPC */
    double lambda_min_clipped;                /* DPM-Solver (-inf by default) */
    bool predict_x0;                          /* UniPC */
    int64_t disable_corrector[DF_SCHED_MAX_DISABLE_CORRECTOR]; /* UniPC */
    int n_disable_corrector;
    void *extra; /* owned cJSON object of the keys the class does not know (or NULL) */
} df_sched_config;

/* diffusers class name of a kind ("DDIMScheduler"). Static string. */
DF_API const char *df_sched_kind_name(df_sched_kind kind);
/* Parses a diffusers class name; DF_ERR_INVALID (message naming `what`) for an unknown one. */
DF_API df_status df_sched_kind_parse(const char *name, const char *what, df_sched_kind *out);

/* The class defaults of `kind` (diffusers' __init__ defaults). Free with df_sched_config_free. */
DF_API void df_sched_config_default(df_sched_kind kind, df_sched_config *cfg);
/* Parses a scheduler_config.json text as `class_name` would read it (NULL: the file's
 * `_class_name`): the class's fields are type-checked and taken, missing ones keep the class's
 * defaults, unknown keys are kept in `extra`. `file` names the source in error messages
 * ("<file>: field 'beta_schedule': expected one of ...; got 'foo'"). On failure *cfg is left
 * freed (safe to free again). Errors: DF_ERR_FORMAT (not JSON, wrong type), DF_ERR_INVALID (a
 * value out of range or not supported by the class, an unknown class name). */
DF_API df_status df_sched_config_parse(const char *json, size_t len, const char *file,
                                       const char *class_name, df_sched_config *cfg);
/* Reads and parses a file (see df_sched_config_parse). DF_ERR_IO when it cannot be read. */
DF_API df_status df_sched_config_load(const char *path, const char *class_name,
                                      df_sched_config *cfg);
/* The config as diffusers' save_config writes it: every field of the class, the kept unknown
 * keys, `_class_name` and `_diffusers_version` ("0.21.4"), keys sorted, indent 2, floats in
 * Python's repr. Returns a malloc'd string the caller frees (NULL on out of memory). */
DF_API char *df_sched_config_to_json(const df_sched_config *cfg);
DF_API df_status df_sched_config_save(const df_sched_config *cfg, const char *path);
/* Deep copy (trained_betas and the kept unknown keys included). DF_ERR_NOMEM on failure, with
 * dst left safe to free. */
DF_API df_status df_sched_config_copy(df_sched_config *dst, const df_sched_config *src);
DF_API void df_sched_config_free(df_sched_config *cfg);

/* A source of standard normal noise for the stochastic steps: `fill` writes n N(0,1) floats in
 * the order torch.randn(shape) would. */
typedef struct df_noise_source {
    void (*fill)(void *state, float *out, int64_t n);
    void *state;
} df_noise_source;
/* Noise from torch's CPU generator: the draws diffusers makes with torch.Generator on CPU. The
 * generator is borrowed. */
DF_API df_noise_source df_noise_from_torchgen(df_torchgen *g);
/* Noise from caller-provided tensors: the i-th fill copies tensors[i] (F32, numel must equal n).
 * `cursor` counts the fills; the struct is borrowed by the source. */
typedef struct df_noise_list {
    const df_tensor *const *tensors;
    int count;
    int cursor;
} df_noise_list;
DF_API df_noise_source df_noise_from_list(df_noise_list *list);

typedef struct df_sched df_sched;

/* A scheduler built from a config (copied): betas, alphas_cumprod and the class's tables as
 * diffusers' __init__ makes them. Errors: DF_ERR_INVALID (trained_betas of the wrong length, an
 * unsupported combination). Free with df_sched_free. */
DF_API df_status df_sched_new(const df_sched_config *cfg, df_sched **out);
DF_API void df_sched_free(df_sched *s);
DF_API const df_sched_config *df_sched_config_of(const df_sched *s);

/* set_timesteps(n): the timesteps sampling with n steps visits (and sigmas), and resets the
 * multistep state. Errors: DF_ERR_INVALID naming 'steps' when n < 1 or n > num_train_timesteps. */
DF_API df_status df_sched_set_timesteps(df_sched *s, int n);
/* The current timesteps (borrowed, valid until the next set_timesteps; before the first one,
 * diffusers' __init__ schedule T-1..0). Integer-valued for
 * DDPM/DDIM/PNDM/DPM-Solver/UniPC (diffusers keeps int64), float32 values for the sigma
 * schedulers (Euler, Euler ancestral, Heun, LMS). */
DF_API int df_sched_num_timesteps(const df_sched *s);
DF_API const double *df_sched_timesteps(const df_sched *s);
DF_API bool df_sched_timesteps_are_float(const df_sched *s);
/* The scheduler's `sigmas` after set_timesteps (NULL and 0 when the class has none: DDPM, DDIM,
 * PNDM). Values are the float32 (or float64, DPM-Solver/UniPC with Karras sigmas) diffusers
 * holds. Borrowed. */
DF_API const double *df_sched_sigmas(const df_sched *s, int *n);
/* Training tables (borrowed, num_train_timesteps long): betas, alphas_cumprod (float32). */
DF_API const float *df_sched_betas(const df_sched *s);
DF_API const float *df_sched_alphas_cumprod(const df_sched *s);
/* DPM-Solver / UniPC tables alpha_t, sigma_t, lambda_t (NULL for the other classes). */
DF_API const float *df_sched_dpm_table(const df_sched *s, const char *name);
/* init_noise_sigma: 1 for the alpha schedulers, the sigma formula for Euler-like ones (float32,
 * after set_timesteps). */
DF_API double df_sched_init_noise_sigma(const df_sched *s);
/* `order` (2 for Heun, 1 otherwise): the img2img start index is t_start * order. */
DF_API int df_sched_order(const df_sched *s);
/* img2img: diffusers' get_timesteps: init = min(int(n * strength), n), t_start = max(n - init, 0);
 * returns t_start * order in *start_index. Needs set_timesteps(n) first. DF_ERR_INVALID naming
 * 'strength' outside [0, 1]. */
DF_API df_status df_sched_img2img_start(const df_sched *s, double strength, int *start_index);

/* scale_model_input(sample, t): a new tensor (the scope rule of autograd.h), equal to sample for
 * the alpha schedulers, sample / sqrt(sigma^2 + 1) for the sigma ones. DF_ERR_INVALID when t is
 * not in the schedule of a sigma scheduler. */
DF_API df_status df_sched_scale_model_input(df_sched *s, const df_tensor *sample, double t,
                                            df_tensor **out);

typedef struct df_sched_step_args {
    double eta;                    /* DDIM only (default 0) */
    bool use_clipped_model_output; /* DDIM */
    df_noise_source *noise; /* used by stochastic steps (DDPM t > 0, DDIM eta > 0, Euler, Euler
                               ancestral); may be NULL for the deterministic ones */
} df_sched_step_args;

/* step(model_output, t, sample): one sampling step. *prev_sample gets a new F32 tensor of
 * sample's shape; *pred_original_sample (when non-NULL) gets a new tensor where diffusers' step
 * returns one (DDPM, DDIM, Euler, Euler ancestral, LMS), else NULL. Shapes (N, C, H, W) or any
 * shape; model_output and sample equal in shape, F32. `args` may be NULL (eta 0, no noise).
 * Errors: DF_ERR_INVALID (t not in the schedule, set_timesteps not called, a stochastic step
 * with no noise source). */
DF_API df_status df_sched_step(df_sched *s, const df_tensor *model_output, double t,
                               const df_tensor *sample, const df_sched_step_args *args,
                               df_tensor **prev_sample, df_tensor **pred_original_sample);

/* Training side. timesteps: any dtype, one per row of x0 (its first dim). The alpha schedulers
 * index alphas_cumprod with them; the sigma schedulers (Euler, Euler ancestral, Heun, LMS) look
 * them up in the current schedule, as diffusers does — a fresh scheduler holds diffusers'
 * __init__ schedule (every training timestep), so no set_timesteps is needed for training.
 * Results are new tensors (scope rule). DF_ERR_INVALID for a timestep outside the schedule. */
/* add_noise(x0, noise, timesteps): sqrt(abar) x0 + sqrt(1 - abar) noise, or x0 + sigma noise. */
DF_API df_status df_sched_add_noise(df_sched *s, const df_tensor *x0, const df_tensor *noise,
                                    const df_tensor *timesteps, df_tensor **out);
/* get_velocity(sample, noise, timesteps): sqrt(abar) noise - sqrt(1 - abar) sample. */
DF_API df_status df_sched_get_velocity(df_sched *s, const df_tensor *sample, const df_tensor *noise,
                                       const df_tensor *timesteps, df_tensor **out);
/* SNR per timestep, diffusers' training_utils.compute_snr: (sqrt(abar) / sqrt(1 - abar))^2 in
 * float32. Returns a new F32 tensor shaped like timesteps. */
DF_API df_status df_sched_snr(df_sched *s, const df_tensor *timesteps, df_tensor **out);

/* ================================================================ pipelines ================ */

/* An unconditional diffusers pipeline folder (model_index.json, unet/ = UNet2DModel,
 * scheduler/scheduler_config.json). */
typedef struct df_uncond_pipeline {
    df_component unet;
    df_sched_config sched_config;
    bool has_sched_config;
    df_sched *sched;
} df_uncond_pipeline;

/* Loads dir; `scheduler_name` (a diffusers class name, or NULL for the folder's own) builds that
 * scheduler from the folder's scheduler config, as `Cls.from_config(...)`. Free with
 * df_uncond_pipeline_free even on failure. */
DF_API df_status df_uncond_pipeline_load(const char *dir, const char *scheduler_name,
                                         df_uncond_pipeline *p);
DF_API void df_uncond_pipeline_free(df_uncond_pipeline *p);
/* The model a sampling loop calls: x (N, C, H, W) and a 0-d timestep -> the model output
 * (scope rule). df_unet2d_denoise is the UNet2DModel one (ctx: the df_unet2d). */
typedef df_tensor *(*df_denoise_fn)(void *ctx, df_tensor *x, const df_tensor *t);
DF_API df_tensor *df_unet2d_denoise(void *unet, df_tensor *x, const df_tensor *t);
/* The sampling loop (see pipeline_uncond.c) from init_noise (N, C, H, W), which is multiplied by
 * init_noise_sigma; stochastic steps draw from gen. *out: the final sample (N, C, H, W) before
 * any clamping, owned by the caller (df_tensor_free) whatever scope is open. */
DF_API df_status df_uncond_sample(df_denoise_fn denoise, void *ctx, df_sched *s, int steps,
                                  const df_tensor *init_noise, df_torchgen *gen, df_tensor **out);
/* Samples in [-1, 1] (N, C, H, W) as one U8 (rows*H, cols*W, C) grid image (cols <= 0: about
 * square), converted as diffusers' pipelines do; NaN becomes 0. */
DF_API df_tensor *df_images_to_grid(const df_tensor *x, int cols);
/* How many values of F32 x are NaN or infinite (the grid shows them black). */
DF_API int64_t df_images_nonfinite(const df_tensor *x);

/* ================================================================ prompts ===================== */
/* Long prompts and A1111's attention syntax (infer/prompt_weights.c; the rules in
 * docs/prompts.md). A prompt becomes weighted segments, then chunks of model_max_length (77)
 * tokens: bos, up to 75 prompt tokens, eos, pad; the text encoder runs on each chunk and the
 * chunks are concatenated along the sequence. */

/* One parsed piece of a prompt: text with a weight, or a BREAK (is_break, weight -1). */
typedef struct df_prompt_segment {
    char *text;
    double weight;
    bool is_break;
} df_prompt_segment;

/* A1111's parse_prompt_attention: `(x)` x1.1, `[x]` /1.1, `(x:W)` xW, nesting multiplies,
 * `\(` `\)` `\[` `\]` `\\` literal, unmatched `)` `]` literal, unclosed `(` `[` apply to the
 * end, BREAK (a whole word) a segment of its own; neighbours of equal weight merged; an empty
 * prompt is one empty segment. *segs is owned (df_prompt_segments_free). Never fails but for
 * memory. */
DF_API df_status df_prompt_parse_attention(const char *prompt, df_prompt_segment **segs, int *n);
DF_API void df_prompt_segments_free(df_prompt_segment *segs, int n);

typedef struct df_prompt_tokens {
    int n_chunks;
    int64_t *ids;   /* n_chunks * length */
    float *weights; /* same; 1 for bos, eos and padding */
    int length;     /* tokens per chunk: the tokenizer's model_max_length (77) */
} df_prompt_tokens;

/* Parses prompt (UTF-8), tokenizes each segment on its own (df_clip_tokenizer_encode) and
 * splits the weighted tokens into chunks of length - 2, each written bos + tokens + eos + pad
 * (the tokenizer's pad id); a BREAK ends the current chunk (even an empty one). At least one
 * chunk, and at least min_chunks (empty ones added: bos, eos, pad). With no syntax and <= 75
 * tokens the one chunk equals df_clip_tokenizer_call(t, prompt, 0, ...). Errors: the tokenizer's
 * (invalid UTF-8). out is owned: df_prompt_tokens_free. */
DF_API df_status df_prompt_tokens_parse(df_clip_tokenizer *t, const char *prompt, int min_chunks,
                                        df_prompt_tokens *out);
/* Adds empty chunks until p has n_chunks (a negative prompt padded to the positive's count). */
DF_API df_status df_prompt_tokens_pad(const df_clip_tokenizer *t, df_prompt_tokens *p,
                                      int n_chunks);
DF_API void df_prompt_tokens_free(df_prompt_tokens *p);

/* Runs the text encoder on every chunk and concatenates them: (1, n_chunks * length, D), a new
 * tensor (scope rule) without history. clip_skip 0: last_hidden_state; k > 0:
 * hidden_states[-(k + 1)] through final_layer_norm (diffusers' clip_skip, which v0.22 added to
 * encode_prompt: clip_skip 1 is A1111's "CLIP skip 2"); k at most num_hidden_layers. No
 * attention mask (CLIPTextConfig has no use_attention_mask, so diffusers passes none). A chunk
 * with a weight other than 1 is weighted A1111's way: z * w per token, then z * (mean(z before)
 * / mean(z after)) over the chunk; chunks of weights 1 are left as the encoder gave them, so one
 * unweighted chunk is bit-equal to the plain path. DF_ERR_INVALID for clip_skip out of range,
 * chunks longer than the encoder's positions, or ids outside its vocabulary. */
DF_API df_status df_prompt_embed(df_clip_text *te, const df_prompt_tokens *p, int clip_skip,
                                 df_tensor **out);

/* ================================================================ Stable Diffusion ========== */

struct df_clip_tokenizer;

typedef struct df_sd_load_opts {
    const char *variant;          /* weights variant ("fp16": *.fp16.safetensors); NULL: plain */
    const char *scheduler;        /* a diffusers scheduler class name; NULL: the folder's */
    const char *timestep_spacing; /* leading | trailing | linspace; NULL: the folder's */
    bool rescale_betas_zero_snr;  /* DDIM's zero-terminal-SNR betas */
    bool use_karras_sigmas;       /* Karras sigmas (Euler, Heun, LMS, DPM-Solver, UniPC) */
    bool safety_off;              /* do not load the safety checker model_index.json names */
} df_sd_load_opts;

/* A Stable Diffusion 1.x / 2.x pipeline folder (see sd_pipeline.c), every model frozen. */
typedef struct df_sd_pipeline {
    char dir[1024];
    df_component unet, vae, text_encoder;
    struct df_clip_tokenizer *tokenizer;
    df_sched_config sched_config;
    bool has_sched_config;
    df_sched *sched;
    bool has_safety_checker;  /* model_index.json names one and it is loaded in `safety` */
    struct df_safety *safety; /* NULL without a checker (or with safety_off) */
    int vae_scale_factor;     /* 2^(len(vae.block_out_channels) - 1) */
    /* df_sd_generate drops each model's mapped weight pages from the resident set when it is
     * done with it (the text encoder before the loop, the UNet before the decode): set at load;
     * whoever writes a mapped weight in place (merging a LoRA) must clear it. */
    bool release_weights;
    /* Textual-inversion embeddings loaded (df_sd_add_embedding): F32 (k, D), owned, the text
     * encoder's added_embedding; NULL: none. */
    df_tensor *added_embedding;
} df_sd_pipeline;

/* Loads the folder (opts may be NULL). Errors name the file: a missing component, an unsupported
 * class, a pickle weights file. Free with df_sd_pipeline_free even on failure. */
DF_API df_status df_sd_pipeline_load(const char *dir, const df_sd_load_opts *opts,
                                     df_sd_pipeline *p);
DF_API void df_sd_pipeline_free(df_sd_pipeline *p);

/* The text encoder on token ids (N, L) -> embeddings (N, L, D): clip_skip 0 gives
 * last_hidden_state (diffusers v0.21.4); k > 0 gives hidden_states[-(k + 1)] through
 * final_layer_norm (the rule later diffusers versions added). A new tensor (scope rule). */
DF_API df_status df_sd_encode_ids(df_sd_pipeline *p, const df_tensor *ids, int clip_skip,
                                  df_tensor **out);

/* Textual inversion (infer/embeddings.c), as diffusers v0.21.4's load_textual_inversion: adds
 * embedding e's token (`token`, or NULL: the one the file names) and, for k > 1 vectors,
 * token_1 .. token_{k-1} to the tokenizer, their vectors as rows after the text encoder's table
 * (p->added_embedding). `label` names the file in errors: one naming no token, vectors of
 * another width than the text encoder's, a token already in the tokenizer (named; nothing is
 * added then). Repeatable. */
struct df_embed;
DF_API df_status df_sd_add_embedding(df_sd_pipeline *p, const struct df_embed *e, const char *token,
                                     const char *label);
/* maybe_convert_prompt: every added token of the prompt that has added tokens token_1, token_2,
 * ... (a multi-vector embedding) replaced everywhere in the prompt by "token token_1 token_2
 * ..." (str.replace, as upstream). *out is malloc'd. DF_ERR_INVALID for invalid UTF-8. */
DF_API df_status df_prompt_expand_vectors(struct df_clip_tokenizer *t, const char *prompt,
                                          char **out);

/* The prompt's embeddings (1, 77 * chunks, D) into *cond and, when `guidance`, the negative
 * prompt's (NULL: "") into *uncond, with as many chunks (A1111 weights and long prompts; with
 * neither, diffusers' encode_prompt bit for bit; see sd_prompt.c; multi-vector textual-inversion
 * tokens expanded first, df_prompt_expand_vectors). New tensors (scope rule).
 * DF_ERR_INVALID for text that is not UTF-8 or a clip_skip outside the encoder's layers. */
DF_API df_status df_sd_encode_prompt(df_sd_pipeline *p, const char *prompt, const char *negative,
                                     int clip_skip, bool guidance, df_tensor **cond,
                                     df_tensor **uncond);

typedef enum df_safety_mode {
    DF_SAFETY_ON = 0, /* flagged images become black (diffusers' default) */
    DF_SAFETY_FLAG,   /* images kept; the verdicts are in df_sd_result.safety */
    DF_SAFETY_OFF,    /* the checker does not run */
} df_safety_mode;

/* Safe Latent Diffusion's settings (diffusers v0.21.4 StableDiffusionPipelineSafe). */
typedef struct df_sld_params {
    double guidance_scale; /* sld_guidance_scale; <= 1 disables SLD */
    int warmup_steps;      /* sld_warmup_steps */
    double threshold;      /* sld_threshold */
    double momentum_scale; /* sld_momentum_scale */
    double mom_beta;       /* sld_mom_beta */
} df_sld_params;

/* diffusers' SafetyConfig presets: "weak", "medium" (the safe pipeline's defaults), "strong",
 * "max"; false for another name. */
DF_API bool df_sld_preset(const char *name, df_sld_params *out);
/* The safe pipeline's default safety concept text. Static. */
DF_API const char *df_sld_default_concept(void);

/* Called after each denoising step: step (1-based) of total. */
typedef void (*df_sd_progress_fn)(void *ctx, int step, int total);

/* One generation: text-to-image, or image-to-image when `image` is set, or inpainting when
 * `mask` is set too (diffusers' StableDiffusionPipeline / ...Img2ImgPipeline /
 * ...InpaintPipeline __call__ with one prompt). */
typedef struct df_sd_request {
    const df_tensor *cond;    /* F32 (1, S, D) prompt embeddings */
    const df_tensor *uncond;  /* F32 (1, S, D) negative embeddings (used when guidance > 1) */
    int steps;                /* num_inference_steps */
    double guidance_scale;    /* classifier-free guidance; <= 1 disables it */
    double guidance_rescale;  /* rescale_noise_cfg's factor (0: off) */
    double eta;               /* DDIM's eta */
    int num_images;           /* num_images_per_prompt */
    int height, width;        /* multiples of 8; 0: the default (see sd_generate.c) */
    uint64_t seed;            /* torch.Generator().manual_seed(seed): every draw */
    const df_tensor *latents; /* optional F32 (N, C, h, w) initial noise (txt2img, inpaint) */
    const df_tensor *image;   /* optional U8 (H, W, 3) init image: img2img, inpaint */
    const df_tensor *mask;    /* optional U8 (H, W, 1) inpainting mask (white is repainted) */
    double strength;          /* img2img / inpaint; < 0: diffusers' default (0.8 / 1.0) */
    df_sd_progress_fn progress;
    void *progress_ctx;
    df_safety_mode safety; /* what the pipeline's checker (if any) does to the images */
    /* Safe Latent Diffusion (text-to-image with CFG): the safety concept's embeddings F32
     * (1, S, D), as the prompt's; NULL or sld.guidance_scale <= 1: off */
    const df_tensor *sld_concept;
    df_sld_params sld;
} df_sd_request;

typedef struct df_sd_result {
    df_tensor *latents;       /* F32 (N, C, h, w): the final latents, before the VAE */
    df_tensor *image;         /* F32 (N, 3, H, W) in [0, 1]: decoded, before 8-bit rounding */
    df_safety_result *safety; /* N verdicts when the pipeline's checker ran (free()), else NULL */
    int n_flagged;
} df_sd_result;

/* Runs the request. *out's tensors belong to the caller (df_tensor_free) whatever scope is open.
 * Errors: DF_ERR_INVALID for sizes that are not multiples of 8, a strength outside [0, 1] or one
 * leaving no step, a mask without an image, embeddings of the wrong width, latents of the wrong
 * shape. */
DF_API df_status df_sd_generate(df_sd_pipeline *p, const df_sd_request *r, df_sd_result *out);
/* Images in [0, 1] (N, 3, H, W) as one U8 grid (x * 255 rounded), as df_images_to_grid. */
DF_API df_tensor *df_unit_images_to_grid(const df_tensor *x, int cols);

/* ================================================================ CLIP image processor ====== */

/* transformers' CLIPImageProcessor (clip_image_processor.c): what the safety checker sees. */
typedef struct df_clip_image_processor {
    bool do_resize, do_center_crop, do_rescale, do_normalize, do_convert_rgb;
    int shortest_edge;           /* size.shortest_edge */
    int crop_height, crop_width; /* crop_size */
    df_resample resample;
    double rescale_factor;
    float image_mean[3], image_std[3];
} df_clip_image_processor;

/* CLIPImageProcessor's defaults (224, bicubic, OpenAI CLIP's mean and std). */
DF_API df_clip_image_processor df_clip_image_processor_default(void);
/* Reads a preprocessor_config.json (also the legacy int size / crop_size); errors name the file
 * and the field. */
DF_API df_status df_clip_image_processor_from_json(const df_json *j, df_clip_image_processor *p);
DF_API df_status df_clip_image_processor_load(const char *path, df_clip_image_processor *p);
/* The (h, w) of the processor's output for an h x w input. */
DF_API void df_clip_image_processor_out_size(const df_clip_image_processor *p, int h, int w,
                                             int *oh, int *ow);
/* One U8 (H, W, 3) image (decoded with drop_alpha for files) into dst (3, oh, ow) floats.
 * DF_ERR_INVALID naming `name` for an image whose resize would exceed 8192 pixels a side (an
 * extreme aspect ratio such as 10000 x 10); DF_ERR_UNSUPPORTED when the crop is larger than the
 * resized image (upstream pads). */
DF_API df_status df_clip_image_preprocess(const df_clip_image_processor *p, const df_tensor *img,
                                          const char *name, float *dst);

/* ================================================================ safety checker ============= */

/* A pipeline's safety checker and its feature extractor (safety.c). */
typedef struct df_safety {
    df_component checker; /* a StableDiffusionSafetyChecker, frozen */
    df_clip_image_processor processor;
    bool loaded;
} df_safety;

/* Loads DIR/safety_checker/ and DIR/feature_extractor/preprocessor_config.json (DIR a pipeline
 * folder). DF_ERR_NOTFOUND naming the folder (and --safety off) when safety_checker/ is missing;
 * the processor's crop must be the checker's image_size. Free with df_safety_free even on
 * failure. */
DF_API df_status df_safety_load(const char *dir, df_safety *s);
DF_API void df_safety_free(df_safety *s);
/* Scores n U8 (H, W, 3) images (names label errors) into res[0..n-1]. An image the processor
 * refuses (10000 x 10) is its error. */
DF_API df_status df_safety_check_u8(df_safety *s, const df_tensor *const *images, int n,
                                    const char *const *names, df_safety_result *res);
/* Scores images F32 (N, 3, H, W) in [0, 1] (a pipeline's output: made 8-bit as diffusers'
 * postprocess does, then preprocessed) into res[0..N-1]; with `blacken` the flagged ones are set
 * to 0 in place (run_safety_checker); *n_flagged (may be NULL) counts the flagged. The API
 * recipes call for validation images. */
DF_API df_status df_safety_check_images(df_safety *s, df_tensor *images, bool blacken,
                                        df_safety_result *res, int *n_flagged);
/* "0, 2" — the indices of the flagged images. */
DF_API void df_safety_flag_list(const df_safety_result *res, int n, char *buf, size_t len);
/* One result as a JSON object: {"nsfw": b, "special_scores": [...], "concept_scores": [...]}. */
DF_API void df_safety_result_json(const df_safety_result *r, char *buf, size_t len);

#endif
