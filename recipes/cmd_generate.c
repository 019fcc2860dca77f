/* cmd_generate.c — `diffusion generate MODEL [options]`: text-to-image, image-to-image
 * (--image, --strength) and inpainting (--image, --mask) with a Stable Diffusion 1.x / 2.x
 * pipeline folder (infer/sd_*.c). Options mirror diffusers' pipeline arguments:
 *   --prompt T --negative-prompt T --steps N (50) --guidance G (7.5) --scheduler NAME --seed S (0)
 *   --n N (num_images_per_prompt, 1) --height H --width W --image init.png --strength S
 *   --mask mask.png --clip-skip K --guidance-rescale R --eta E --latents init.safetensors
 *   --variant fp16 --timestep-spacing leading|trailing|linspace --rescale-betas-zero-snr
 *   --out FILE.png (a grid when N > 1) | --out-dir DIR (one PNG an image) --out-tensor F.safetensors
 * NAME is a diffusers class name or one of the short names below. Every PNG carries A1111's
 * `parameters` text (prompt, negative prompt, steps, sampler, CFG scale, seed, size, model hash,
 * model). A progress bar is drawn when stderr is a terminal.
 * --safety (when the folder has a safety checker): on (default) replaces flagged images by black
 * ones with a warning naming them, as diffusers; flag keeps them and writes each image's verdict
 * and scores to <out>.safety.json (DIR/safety.json with --out-dir) and to the PNG's `safety`
 * text; off (only ever from the command line) skips the checker with a notice.
 * Safe Latent Diffusion (diffusers' StableDiffusionPipelineSafe, text-to-image with guidance):
 * --sld PRESET (weak, medium, strong, max) and / or --sld-guidance, --sld-warmup,
 * --sld-threshold, --sld-momentum, --sld-mom-beta (over the preset, else medium's values),
 * --sld-concept TEXT (the safe pipeline's concept by default).
 * Textual inversion: --embedding FILE[:TOKEN] (repeatable) loads a learned_embeds.safetensors or
 * an A1111 embedding (nn/embedding_file.h) as diffusers' load_textual_inversion does, under
 * TOKEN or the token the file names; a multi-vector one's token expands in the prompts.
 * ControlNet (diffusers' StableDiffusionControlNetPipeline, text-to-image): --controlnet DIR (a
 * ControlNetModel folder) followed by its --control-image IMG and optionally --control-scale S
 * (1), --control-start A (0), --control-end B (1); repeat the group for several ControlNets
 * (MultiControlNetModel: their residuals summed); --guess-mode for all. The control image is
 * read as RGB (alpha dropped, as PIL's convert("RGB")) and resized to the output size, which
 * defaults to the first control image's size rounded down to a multiple of 8.
 * --lora FILE[:scale] (repeatable; any layout nn/lora_file.h reads) applies LoRAs to the UNet
 * and text encoder on the fly, or fused into the weights with --fuse-lora (the same images
 * within float rounding); several stack (their updates add).
 */
#include "datasets/datasets.h"
#include "infer/infer.h"
#include "nn/controlnet.h"
#include "nn/embedding_file.h"
#include "nn/single_file.h"
#include "recipes/cli.h"
#include "recipes/cli_lora.h"

#include <ftw.h>
#include <math.h>

#include <nettle/sha2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DF_GEN_MAX_EMBEDDINGS 32

static int usage(void) {
    fprintf(stderr,
            "usage: diffusion generate MODEL [--prompt T] [--negative-prompt T] [--steps N] "
            "[--guidance G] [--scheduler NAME] [--seed S] [--n N] [--height H] [--width W] "
            "[--image init.png [--strength S]] [--mask mask.png] [--clip-skip K] "
            "[--guidance-rescale R] [--eta E] [--latents init.safetensors] [--variant V] "
            "[--timestep-spacing leading|trailing|linspace] [--rescale-betas-zero-snr] "
            "[--out FILE.png | --out-dir DIR] [--out-tensor F.safetensors] "
            "[--safety on|flag|off] [--sld weak|medium|strong|max] [--sld-guidance G] "
            "[--sld-warmup N] [--sld-threshold T] [--sld-momentum M] [--sld-mom-beta B] "
            "[--sld-concept TEXT] [--embedding FILE[:TOKEN] ...] [--controlnet DIR --control-image "
            "IMG [--control-scale S] "
            "[--control-start A] [--control-end B]]... [--guess-mode] "
            "[--lora FILE[:scale]]... [--fuse-lora]\n"
            "schedulers: a diffusers class name, or ddim, ddpm, pndm, euler, euler-a, heun, lms, "
            "dpm++2m, dpm++2m-karras, unipc\n");
    return 2;
}

static int bad_arg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad_arg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "diffusion: generate: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return usage();
}

/* A short scheduler name: its diffusers class, whether it uses Karras sigmas, and the
 * sampler name A1111 writes. */
typedef struct sched_alias {
    const char *name, *cls, *a1111;
    bool karras;
} sched_alias;

static const sched_alias ALIASES[] = {
    {"ddim", "DDIMScheduler", "DDIM", false},
    {"ddpm", "DDPMScheduler", "DDPM", false},
    {"pndm", "PNDMScheduler", "PLMS", false},
    {"euler", "EulerDiscreteScheduler", "Euler", false},
    {"euler-a", "EulerAncestralDiscreteScheduler", "Euler a", false},
    {"heun", "HeunDiscreteScheduler", "Heun", false},
    {"lms", "LMSDiscreteScheduler", "LMS", false},
    {"dpm++2m", "DPMSolverMultistepScheduler", "DPM++ 2M", false},
    {"dpm++2m-karras", "DPMSolverMultistepScheduler", "DPM++ 2M Karras", true},
    {"unipc", "UniPCMultistepScheduler", "UniPC", false},
};

static const sched_alias *alias_of_name(const char *name) {
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
        if (strcasecmp(name, ALIASES[i].name) == 0) return &ALIASES[i];
    return NULL;
}

/* The A1111 sampler name of the scheduler the pipeline runs. */
static const char *a1111_sampler(const df_sched_config *c) {
    const char *cls = df_sched_kind_name(c->kind);
    for (size_t i = 0; i < sizeof ALIASES / sizeof ALIASES[0]; i++)
        if (strcmp(ALIASES[i].cls, cls) == 0 && ALIASES[i].karras == c->use_karras_sigmas)
            return ALIASES[i].a1111;
    return cls;
}

static bool parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

/* The first 10 hex digits of the SHA-256 of a file (A1111's "AutoV2" model hash); "" when it
 * cannot be read. */
static void file_hash(const char *path, char out[11]) {
    out[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    static uint8_t buf[1 << 20];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) sha256_update(&ctx, n, buf);
    bool ok = !ferror(f);
    fclose(f);
    if (!ok) return;
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_digest(&ctx, sizeof d, d);
    for (int i = 0; i < 5; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* The model hash: the single file's, or for a folder its UNet weights file's (the variant
 * asked for, else the plain file or the variant the loader falls back to; a sharded UNet's
 * index file). */
static void model_hash(const char *model, const char *variant, char out[11]) {
    struct stat st;
    out[0] = 0;
    if (stat(model, &st) == 0 && S_ISREG(st.st_mode)) {
        file_hash(model, out);
        return;
    }
    const char *const tries[] = {variant, "", "fp16", "bf16", "fp32"};
    for (size_t i = variant ? 0 : 1; i < sizeof tries / sizeof tries[0] && !out[0]; i++) {
        char path[1200];
        const char *v = tries[i];
        snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model%s%s.safetensors", model,
                 v[0] ? "." : "", v);
        if (stat(path, &st) != 0)
            snprintf(path, sizeof path,
                     "%s/unet/diffusion_pytorch_model.safetensors.index%s%s.json", model,
                     v[0] ? "." : "", v);
        if (stat(path, &st) == 0) file_hash(path, out);
        if (variant) break;
    }
}

/* Progress on a terminal: "generate: 12/20 [=====>    ] 1.25 s/it, ETA 10 s". */
typedef struct progress {
    bool tty;
    struct timespec start;
} progress;

static double since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

static void on_step(void *ctx, int step, int total) {
    progress *pr = ctx;
    if (!pr->tty) return;
    double el = since(&pr->start), per = el / step;
    char bar[21];
    int fill = 20 * step / total;
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '=' : ' ';
    bar[20] = 0;
    fprintf(stderr, "\rgenerate: %d/%d [%s] %.2f s/it, ETA %.0f s  ", step, total, bar, per,
            per * (total - step));
    if (step == total) fputc('\n', stderr);
    fflush(stderr);
}

/* Reads --latents' `latents` tensor. */
static df_status read_latents(const char *path, df_tensor **out) {
    df_st_file *f;
    DF_TRY(df_st_open(path, &f));
    df_status st = df_st_read(f, "latents", DF_DTYPE_F32, out);
    df_st_close(f);
    return st;
}

/* The generation's settings as the command line gave them. */
typedef struct gen_args {
    const char *model, *prompt, *negative, *sched, *image, *mask, *latents, *out, *out_dir,
        *out_tensor, *variant, *spacing, *safety, *sld, *sld_concept;
    long long steps, seed, n, height, width, clip_skip;
    double guidance, strength, rescale, eta;
    bool zero_snr;
    /* Safe Latent Diffusion: explicit values (NaN / -1: the preset's, else medium's) */
    double sld_guidance, sld_threshold, sld_momentum, sld_mom_beta;
    long long sld_warmup;
    /* --embedding FILE[:TOKEN], in order */
    const char *embeddings[DF_GEN_MAX_EMBEDDINGS];
    int n_embeddings;
    /* ControlNets: each --controlnet and the --control-* options after it */
    struct {
        const char *dir, *image;
        double scale, start, end;
    } cn[DF_SD_MAX_CONTROLS];
    int n_cn;
    bool guess_mode;
    df_cli_loras loras; /* --lora, --fuse-lora */
} gen_args;

/* Loads --embedding FILE[:TOKEN] into the pipeline: FILE when it exists as given, else split at
 * the last ':' into the file and the token. */
static df_status load_embedding(df_sd_pipeline *p, const char *arg) {
    char file[1024], token[DF_EMBED_MAX_TOKEN] = "";
    snprintf(file, sizeof file, "%s", arg);
    const char *colon = strrchr(arg, ':');
    if (access(arg, F_OK) != 0 && colon && colon != arg) {
        snprintf(file, sizeof file, "%.*s", (int)(colon - arg), arg);
        snprintf(token, sizeof token, "%s", colon + 1);
    }
    df_embed e;
    DF_TRY(df_embed_read(file, &e));
    df_status st = df_sd_add_embedding(p, &e, token, file);
    if (st == DF_OK)
        fprintf(stderr, "generate: %s: %lld vector(s) as '%s'\n", file,
                (long long)e.vectors->shape[0], *token ? token : e.token);
    df_embed_free(&e);
    return st;
}

/* Whether SLD is asked for, and its settings: --sld PRESET, then the explicit --sld-* values. */
static bool sld_settings(const gen_args *a, df_sld_params *p) {
    bool any = a->sld || !isnan(a->sld_guidance) || !isnan(a->sld_threshold) ||
               !isnan(a->sld_momentum) || !isnan(a->sld_mom_beta) || a->sld_warmup >= 0 ||
               a->sld_concept;
    if (!any) return false;
    df_sld_preset(a->sld ? a->sld : "medium", p);
    if (!isnan(a->sld_guidance)) p->guidance_scale = a->sld_guidance;
    if (!isnan(a->sld_threshold)) p->threshold = a->sld_threshold;
    if (!isnan(a->sld_momentum)) p->momentum_scale = a->sld_momentum;
    if (!isnan(a->sld_mom_beta)) p->mom_beta = a->sld_mom_beta;
    if (a->sld_warmup >= 0) p->warmup_steps = (int)a->sld_warmup;
    return true;
}

static df_safety_mode safety_mode(const gen_args *a) {
    if (!a->safety || strcmp(a->safety, "on") == 0) return DF_SAFETY_ON;
    return strcmp(a->safety, "flag") == 0 ? DF_SAFETY_FLAG : DF_SAFETY_OFF;
}

/* The verdicts of images [from, from + n) as a JSON array into buf. */
static void safety_json(const df_sd_result *res, int64_t from, int64_t n, char *buf, size_t len) {
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int64_t i = from; i < from + n && k < len; i++) {
        char one[1024];
        df_safety_result_json(&res->safety[i], one, sizeof one);
        k += (size_t)snprintf(buf + k, len - k, "%s%s", i > from ? ", " : "", one);
    }
    if (k < len) snprintf(buf + k, len - k, "]");
}

/* --safety flag: the verdicts next to the output (FILE.safety.json, DIR/safety.json, or
 * TENSORS.safety.json), one JSON object per line with the image's index and file. */
static df_status write_safety_json(const gen_args *a, const df_sd_result *res) {
    char path[1200];
    if (a->out_dir)
        snprintf(path, sizeof path, "%s/safety.json", a->out_dir);
    else {
        const char *base = a->out ? a->out : a->out_tensor;
        const char *dot = strrchr(base, '.'), *slash = strrchr(base, '/');
        int stem = dot && (!slash || dot > slash) ? (int)(dot - base) : (int)strlen(base);
        snprintf(path, sizeof path, "%.*s.safety.json", stem, base);
    }
    FILE *f = fopen(path, "w");
    if (!f) return df_error(DF_ERR_IO, "%s: cannot write", path);
    for (int64_t i = 0; i < res->image->shape[0]; i++) {
        char one[1024], file[1300] = "";
        df_safety_result_json(&res->safety[i], one, sizeof one);
        if (a->out_dir)
            snprintf(file, sizeof file, "%05lld-%lld.png", (long long)i, a->seed);
        else if (a->out)
            snprintf(file, sizeof file, "%s", a->out);
        /* {"image": i, "file": "...", + the verdict's fields} */
        fprintf(f, "{\"image\": %lld, \"file\": \"%s\", %s\n", (long long)i, file, one + 1);
    }
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) return df_error(DF_ERR_IO, "%s: write failed", path);
    fprintf(stderr, "generate: %s\n", path);
    return DF_OK;
}

/* A1111's parameters text. */
static void parameters_text(const gen_args *a, const df_sd_pipeline *p, const df_tensor *image,
                            char *buf, size_t len) {
    char hash[11];
    model_hash(a->model, a->variant, hash);
    const char *name = strrchr(a->model, '/');
    name = name && name[1] ? name + 1 : a->model;
    size_t k = (size_t)snprintf(buf, len, "%s\n", a->prompt ? a->prompt : "");
    if (a->negative && k < len)
        k += (size_t)snprintf(buf + k, len - k, "Negative prompt: %s\n", a->negative);
    if (k < len)
        k += (size_t)snprintf(
            buf + k, len - k,
            "Steps: %lld, Sampler: %s, CFG scale: %g, Seed: %lld, Size: %lldx%lld, "
            "Model hash: %s, Model: %s",
            a->steps, a1111_sampler(&p->sched_config), a->guidance, a->seed,
            (long long)image->shape[3], (long long)image->shape[2], hash, name);
    if (a->image && k < len)
        k += (size_t)snprintf(buf + k, len - k, ", Denoising strength: %g",
                              a->strength >= 0 ? a->strength : (a->mask ? 1.0 : 0.8));
    if (a->clip_skip && k < len)
        k += (size_t)snprintf(buf + k, len - k, ", Clip skip: %lld", a->clip_skip + 1);
    if (a->rescale > 0 && k < len) snprintf(buf + k, len - k, ", Guidance rescale: %g", a->rescale);
}

/* One image i of (N, 3, H, W) in [0, 1] as an (H, W, 3) U8 image. */
static df_tensor *one_image(const df_tensor *img, int64_t i) {
    int64_t per = img->numel / img->shape[0];
    df_tensor *v = df_tensor_new(DF_DTYPE_F32, DF_DIMS(1, 3, img->shape[2], img->shape[3]));
    memcpy(df_f32(v), df_f32(img) + i * per, sizeof(float) * (size_t)per);
    return df_unit_images_to_grid(v, 1);
}

static df_status write_outputs(const gen_args *a, const df_sd_pipeline *p,
                               const df_sd_result *res) {
    char params[8192];
    parameters_text(a, p, res->image, params, sizeof params);
    bool flag = res->safety && safety_mode(a) == DF_SAFETY_FLAG;
    static char verdicts[64 * 1024];
    const char *keys[2] = {"parameters", "safety"}, *vals[2] = {params, verdicts};
    int n_text = flag ? 2 : 1;
    df_status st = DF_OK;
    df_scope scope = df_scope_begin();
    if (a->out) {
        if (flag) safety_json(res, 0, res->image->shape[0], verdicts, sizeof verdicts);
        st = df_png_write(a->out, df_unit_images_to_grid(res->image, 0), n_text, keys, vals);
        if (st == DF_OK) fprintf(stderr, "generate: %s\n", a->out);
    }
    for (int64_t i = 0; st == DF_OK && a->out_dir && i < res->image->shape[0]; i++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/%05lld-%lld.png", a->out_dir, (long long)i, a->seed);
        if (flag) df_safety_result_json(&res->safety[i], verdicts, sizeof verdicts);
        st = df_png_write(path, one_image(res->image, i), n_text, keys, vals);
        if (st == DF_OK) fprintf(stderr, "generate: %s\n", path);
    }
    if (st == DF_OK && flag) st = write_safety_json(a, res);
    if (st == DF_OK && a->out_tensor) {
        const char *names[] = {"latents", "image"};
        const df_tensor *ts[] = {res->latents, res->image};
        st = df_st_save(a->out_tensor, 2, names, ts, 0, NULL, NULL);
        if (st == DF_OK) fprintf(stderr, "generate: %s\n", a->out_tensor);
    }
    df_scope_end(scope);
    return st;
}

/* Reads the init image (RGB; alpha composited onto white) and the mask (grey). */
static df_status read_images(const gen_args *a, df_tensor **image, df_tensor **mask) {
    *image = *mask = NULL;
    if (!a->image) return DF_OK;
    df_decode_opts o = df_decode_opts_default();
    DF_TRY(df_image_read(a->image, &o, image));
    if (!a->mask) return DF_OK;
    o.channels = 1;
    DF_TRY(df_image_read(a->mask, &o, mask));
    if ((*mask)->shape[0] != (*image)->shape[0] || (*mask)->shape[1] != (*image)->shape[1])
        return df_error(DF_ERR_INVALID, "%s: the mask is %lldx%lld but the image is %lldx%lld",
                        a->mask, (long long)(*mask)->shape[1], (long long)(*mask)->shape[0],
                        (long long)(*image)->shape[1], (long long)(*image)->shape[0]);
    return DF_OK;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* The folder to load: MODEL itself, or for a single-file checkpoint a diffusers folder it is
 * converted into under $TMPDIR (*temp set; the caller removes it). */
static df_status model_folder(const char *model, char *dir, size_t len, bool *temp) {
    struct stat st;
    *temp = false;
    snprintf(dir, len, "%s", model);
    if (stat(model, &st) != 0 || !S_ISREG(st.st_mode)) return DF_OK;
    DF_TRY(df_sd_refuse_pickle(model));
    if (!df_sd_single_file_is(model))
        return df_error(DF_ERR_UNSUPPORTED,
                        "%s: not a Stable Diffusion pipeline folder nor a single-file SD "
                        "checkpoint (no model.diffusion_model.* tensors)",
                        model);
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, len, "%s/diffusion-generate-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) return df_error(DF_ERR_IO, "%s: cannot make a temporary folder", dir);
    *temp = true;
    fprintf(stderr,
            "generate: converting the single file (diffusion convert %s DIR does it once)\n",
            model);
    df_sd_convert_opts o = df_sd_convert_opts_default();
    o.quiet = true;
    char sub[1100];
    snprintf(sub, sizeof sub, "%s/pipeline", dir);
    df_status s = df_sd_single_file_convert(model, sub, &o);
    snprintf(dir + strlen(dir), len - strlen(dir), "/pipeline");
    return s;
}

/* Loads the ControlNet folders (frozen) and their control images. */
static df_status load_controls(const gen_args *a, df_component *nets, df_tensor **images,
                               df_sd_control *controls) {
    df_decode_opts o = df_decode_opts_default();
    o.drop_alpha = true; /* VaeImageProcessor: PIL's convert("RGB") */
    for (int k = 0; k < a->n_cn; k++) {
        DF_TRY(df_component_map_frozen(a->cn[k].dir, NULL, &nets[k]));
        if (!nets[k].controlnet)
            return df_error(DF_ERR_INVALID, "--controlnet %s: a %s folder, not a ControlNetModel",
                            a->cn[k].dir, nets[k].class_name);
        DF_TRY(df_image_read(a->cn[k].image, &o, &images[k]));
        controls[k] = (df_sd_control){.net = nets[k].controlnet,
                                      .image = images[k],
                                      .scale = a->cn[k].scale,
                                      .start = a->cn[k].start,
                                      .end = a->cn[k].end};
    }
    return DF_OK;
}

static df_status run(gen_args *a) {
    df_sd_load_opts lo = {.variant = a->variant,
                          .timestep_spacing = a->spacing,
                          .rescale_betas_zero_snr = a->zero_snr};
    const sched_alias *al = a->sched ? alias_of_name(a->sched) : NULL;
    lo.scheduler = al ? al->cls : a->sched;
    lo.use_karras_sigmas = al && al->karras;
    df_safety_mode mode = safety_mode(a);
    lo.safety_off = mode == DF_SAFETY_OFF;
    if (lo.safety_off)
        fprintf(stderr, "notice: generate: --safety off: the safety checker does not run and the "
                        "images are not screened; you are responsible for their use (see the "
                        "README's Safety section)\n");
    char dir[1024];
    bool temp;
    df_sd_pipeline p = {0};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    df_status st = model_folder(a->model, dir, sizeof dir, &temp);
    if (st == DF_OK) st = df_sd_pipeline_load(dir, &lo, &p);
    if (st == DF_OK) fprintf(stderr, "generate: loaded %s in %.2f s\n", a->model, since(&t0));
    for (int i = 0; st == DF_OK && i < a->n_embeddings; i++)
        st = load_embedding(&p, a->embeddings[i]);
    df_lora_model lora_models[2] = {{"unet", p.unet.params},
                                    {"text_encoder", p.text_encoder.params}};
    if (st == DF_OK && a->loras.n) st = df_cli_loras_apply(&a->loras, lora_models, 2, false);
    if (st == DF_OK && !p.safety && !lo.safety_off)
        fprintf(stderr,
                "note: generate: %s has no safety checker (model_index.json names none); "
                "the images are not screened\n",
                a->model);
    df_tensor *image = NULL, *mask = NULL, *latents = NULL, *cond = NULL, *uncond = NULL,
              *concept = NULL;
    df_sld_params sld = {0};
    bool use_sld = sld_settings(a, &sld);
    df_component nets[DF_SD_MAX_CONTROLS] = {0};
    df_tensor *cimages[DF_SD_MAX_CONTROLS] = {0};
    df_sd_control controls[DF_SD_MAX_CONTROLS];
    if (st == DF_OK) st = load_controls(a, nets, cimages, controls);
    if (st == DF_OK) st = read_images(a, &image, &mask);
    if (st == DF_OK && a->image && !a->mask && !a->height &&
        (image->shape[0] % 8 || image->shape[1] % 8))
        fprintf(stderr,
                "note: %s is %lldx%lld; it is resized to %lldx%lld (multiples of 8) as diffusers "
                "does\n",
                a->image, (long long)image->shape[1], (long long)image->shape[0],
                (long long)(image->shape[1] / 8 * 8), (long long)(image->shape[0] / 8 * 8));
    if (st == DF_OK && a->latents) st = read_latents(a->latents, &latents);
    bool cfg = a->guidance > 1.0;
    df_scope scope = df_scope_begin();
    if (st == DF_OK)
        st =
            df_sd_encode_prompt(&p, a->prompt, a->negative, (int)a->clip_skip, cfg, &cond, &uncond);
    if (st == DF_OK && use_sld) {
        df_tensor *unused = NULL;
        if (!cfg || sld.guidance_scale <= 1)
            fprintf(stderr, "note: generate: Safe Latent Diffusion needs --guidance > 1 and an "
                            "SLD guidance > 1; it is off for this run\n");
        st = df_sd_encode_prompt(&p, a->sld_concept ? a->sld_concept : df_sld_default_concept(),
                                 NULL, (int)a->clip_skip, false, &concept, &unused);
        if (st == DF_OK && concept->shape[1] != cond->shape[1])
            st = df_error(DF_ERR_INVALID,
                          "--sld-concept: %lld tokens of embeddings, the prompt's are %lld "
                          "(keep the concept within 75 tokens, without weights)",
                          (long long)concept->shape[1], (long long)cond->shape[1]);
    }
    progress pr = {.tty = isatty(2) == 1};
    clock_gettime(CLOCK_MONOTONIC, &pr.start);
    df_sd_request r = {.cond = cond,
                       .uncond = uncond,
                       .steps = (int)a->steps,
                       .guidance_scale = a->guidance,
                       .guidance_rescale = a->rescale,
                       .eta = a->eta,
                       .num_images = (int)a->n,
                       .height = (int)a->height,
                       .width = (int)a->width,
                       .seed = (uint64_t)a->seed,
                       .latents = latents,
                       .image = image,
                       .mask = mask,
                       .strength = a->strength,
                       .progress = on_step,
                       .progress_ctx = &pr,
                       .safety = mode,
                       .sld_concept = concept,
                       .sld = sld,
                       .controls = controls,
                       .n_controls = a->n_cn,
                       .guess_mode = a->guess_mode};
    df_sd_result res = {0};
    if (st == DF_OK) st = df_sd_generate(&p, &r, &res);
    if (st == DF_OK) {
        int64_t bad = df_images_nonfinite(res.latents);
        if (bad)
            fprintf(stderr,
                    "warning: generate: %lld values of the final latents are NaN or infinite "
                    "(shown black)\n",
                    (long long)bad);
        if (res.safety && mode == DF_SAFETY_FLAG && res.n_flagged) {
            char which[512];
            df_safety_flag_list(res.safety, (int)res.image->shape[0], which, sizeof which);
            fprintf(stderr,
                    "warning: generate: the safety checker flags image(s) %s (kept: --safety "
                    "flag)\n",
                    which);
        }
        fprintf(stderr, "generate: %lld image(s) of %lldx%lld in %.1f s\n",
                (long long)res.image->shape[0], (long long)res.image->shape[3],
                (long long)res.image->shape[2], since(&pr.start));
        st = write_outputs(a, &p, &res);
    }
    df_scope_end(scope);
    df_tensor *ts[] = {image, mask, latents, res.latents, res.image};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) df_tensor_free(ts[i]);
    free(res.safety);
    df_cli_loras_free(&a->loras); /* before the models its adapters sit on */
    for (int k = 0; k < a->n_cn; k++) {
        df_tensor_free(cimages[k]);
        df_component_free(&nets[k]);
    }
    df_sd_pipeline_free(&p);
    if (temp) { /* the converted folder, whose mapped files the pipeline no longer holds */
        char *slash = strrchr(dir, '/');
        *slash = 0;
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    return st;
}

int df_cmd_generate(int argc, char **argv) {
    gen_args a = {.steps = 50,
                  .n = 1,
                  .guidance = 7.5,
                  .strength = -1,
                  .sld_guidance = NAN,
                  .sld_threshold = NAN,
                  .sld_momentum = NAN,
                  .sld_mom_beta = NAN,
                  .sld_warmup = -1};
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (o[0] != '-') {
            if (a.model) return bad_arg("unexpected argument '%s' (MODEL is '%s')", o, a.model);
            a.model = o;
            continue;
        }
        if (strcmp(o, "--rescale-betas-zero-snr") == 0) {
            a.zero_snr = true;
            continue;
        }
        if (strcmp(o, "--guess-mode") == 0) {
            a.guess_mode = true;
            continue;
        }
        if (strcmp(o, "--fuse-lora") == 0) {
            a.loras.fuse = true;
            continue;
        }
        if (!v) return bad_arg("%s needs a value", o);
        i++;
        if (strcmp(o, "--embedding") == 0) {
            if (a.n_embeddings == DF_GEN_MAX_EMBEDDINGS)
                return bad_arg("--embedding: at most %d", DF_GEN_MAX_EMBEDDINGS);
            a.embeddings[a.n_embeddings++] = v;
            continue;
        }
        if (strcmp(o, "--controlnet") == 0) {
            if (a.n_cn == DF_SD_MAX_CONTROLS)
                return bad_arg("--controlnet: at most %d ControlNets", DF_SD_MAX_CONTROLS);
            a.cn[a.n_cn].dir = v;
            a.cn[a.n_cn].scale = 1, a.cn[a.n_cn].start = 0, a.cn[a.n_cn].end = 1;
            a.n_cn++;
            continue;
        }
        if (strncmp(o, "--control-", 10) == 0) {
            if (a.n_cn == 0) return bad_arg("%s must follow the --controlnet it belongs to", o);
            bool ok = true;
            if (strcmp(o, "--control-image") == 0)
                a.cn[a.n_cn - 1].image = v;
            else if (strcmp(o, "--control-scale") == 0)
                ok = parse_double(v, -100, 100, &a.cn[a.n_cn - 1].scale);
            else if (strcmp(o, "--control-start") == 0)
                ok = parse_double(v, 0, 1, &a.cn[a.n_cn - 1].start);
            else if (strcmp(o, "--control-end") == 0)
                ok = parse_double(v, 0, 1, &a.cn[a.n_cn - 1].end);
            else
                return bad_arg("unknown option '%s'", o);
            if (!ok) return bad_arg("%s: '%s' is not a valid value", o, v);
            continue;
        }
        const char **str = strcmp(o, "--prompt") == 0             ? &a.prompt
                           : strcmp(o, "--negative-prompt") == 0  ? &a.negative
                           : strcmp(o, "--scheduler") == 0        ? &a.sched
                           : strcmp(o, "--image") == 0            ? &a.image
                           : strcmp(o, "--mask") == 0             ? &a.mask
                           : strcmp(o, "--latents") == 0          ? &a.latents
                           : strcmp(o, "--out") == 0              ? &a.out
                           : strcmp(o, "--out-dir") == 0          ? &a.out_dir
                           : strcmp(o, "--out-tensor") == 0       ? &a.out_tensor
                           : strcmp(o, "--variant") == 0          ? &a.variant
                           : strcmp(o, "--timestep-spacing") == 0 ? &a.spacing
                           : strcmp(o, "--safety") == 0           ? &a.safety
                           : strcmp(o, "--sld") == 0              ? &a.sld
                           : strcmp(o, "--sld-concept") == 0      ? &a.sld_concept
                                                                  : NULL;
        if (str) {
            *str = v;
            continue;
        }
        if (strcmp(o, "--lora") == 0) {
            if (df_cli_lora_arg(&a.loras, v) == DF_OK) continue;
            fprintf(stderr, "diffusion: generate: %s\n", df_last_error());
            return 2;
        }
        bool ok = true;
        if (strcmp(o, "--steps") == 0)
            ok = parse_long(v, 1, 10000, &a.steps);
        else if (strcmp(o, "--seed") == 0)
            ok = parse_long(v, 0, INT64_MAX, &a.seed);
        else if (strcmp(o, "--n") == 0)
            ok = parse_long(v, 1, 64, &a.n);
        else if (strcmp(o, "--height") == 0)
            ok = parse_long(v, 8, DF_IMAGE_MAX_SIDE, &a.height);
        else if (strcmp(o, "--width") == 0)
            ok = parse_long(v, 8, DF_IMAGE_MAX_SIDE, &a.width);
        else if (strcmp(o, "--clip-skip") == 0)
            ok = parse_long(v, 0, 64, &a.clip_skip);
        else if (strcmp(o, "--guidance") == 0)
            ok = parse_double(v, 0, 1000, &a.guidance);
        else if (strcmp(o, "--strength") == 0)
            ok = parse_double(v, 0, 1, &a.strength);
        else if (strcmp(o, "--guidance-rescale") == 0)
            ok = parse_double(v, 0, 1, &a.rescale);
        else if (strcmp(o, "--eta") == 0)
            ok = parse_double(v, 0, 1, &a.eta);
        else if (strcmp(o, "--sld-guidance") == 0)
            ok = parse_double(v, 0, 1e6, &a.sld_guidance);
        else if (strcmp(o, "--sld-warmup") == 0)
            ok = parse_long(v, 0, 10000, &a.sld_warmup);
        else if (strcmp(o, "--sld-threshold") == 0)
            ok = parse_double(v, -1e6, 1e6, &a.sld_threshold);
        else if (strcmp(o, "--sld-momentum") == 0)
            ok = parse_double(v, 0, 1e6, &a.sld_momentum);
        else if (strcmp(o, "--sld-mom-beta") == 0)
            ok = parse_double(v, 0, 1, &a.sld_mom_beta);
        else
            return bad_arg("unknown option '%s'", o);
        if (!ok) return bad_arg("%s: '%s' is not a valid value", o, v);
    }
    if (!a.model) return bad_arg("missing MODEL (a Stable Diffusion pipeline folder)");
    if (a.safety && strcmp(a.safety, "on") != 0 && strcmp(a.safety, "flag") != 0 &&
        strcmp(a.safety, "off") != 0)
        return bad_arg("--safety: '%s' (on, flag or off)", a.safety);
    df_sld_params unused;
    if (a.sld && !df_sld_preset(a.sld, &unused))
        return bad_arg("--sld: '%s' (weak, medium, strong or max)", a.sld);
    if (a.mask && !a.image) return bad_arg("--mask needs --image (the image to inpaint)");
    for (int k = 0; k < a.n_cn; k++) {
        if (!a.cn[k].image)
            return bad_arg("--controlnet %s needs its --control-image", a.cn[k].dir);
        if (!(a.cn[k].start < a.cn[k].end))
            return bad_arg("--controlnet %s: --control-start %g must be below --control-end %g",
                           a.cn[k].dir, a.cn[k].start, a.cn[k].end);
    }
    if (a.guess_mode && a.n_cn == 0) return bad_arg("--guess-mode needs --controlnet");
    if (a.n_cn && (a.image || a.mask || a.sld))
        return bad_arg("--controlnet is text-to-image only (no --image, --mask or --sld)");
    if (a.loras.fuse && !a.loras.n) return bad_arg("--fuse-lora needs --lora");
    if (a.strength >= 0 && !a.image) return bad_arg("--strength needs --image");
    if (a.out && a.out_dir) return bad_arg("--out and --out-dir exclude each other");
    if (!a.out && !a.out_dir && !a.out_tensor) a.out = "generated.png";
    if ((a.height != 0) != (a.width != 0)) return bad_arg("give --height and --width together");
    const char *inputs[] = {a.image, a.mask, a.latents};
    const char *outs[] = {a.out, a.out_tensor};
    for (int k = 0; k < 2; k++)
        if (outs[k] && df_cli_check_output(outs[k], inputs, 3, a.model) != DF_OK)
            return df_cli_fail("generate");
    if (a.out_dir && mkdir(a.out_dir, 0777) != 0 && access(a.out_dir, W_OK) != 0)
        return bad_arg("--out-dir %s: cannot create or write it", a.out_dir);
    if (run(&a) != DF_OK) return df_cli_fail("generate");
    return 0;
}
