/* sched_config.c — scheduler_config.json: typed reading with each class's defaults, and writing
 * back as diffusers' save_config does.
 *
 * Follows diffusers v0.21.4 ConfigMixin: a class reads the fields of its __init__ from any
 * scheduler's config; a missing field (or one the source class only defaulted, listed in
 * `_use_default_values`) takes the class default; keys it does not know are kept (written back
 * unchanged) and ignored. `to_json_string` writes every field plus the kept keys,
 * `_class_name` and `_diffusers_version`, drops `_use_default_values`/`_ignore_files`, and dumps
 * with json.dumps(indent=2, sort_keys=True): we emit the same bytes (floats as Python's repr,
 * -inf as -Infinity). cJSON does not read Infinity/NaN, so they are rewritten before parsing.
 *
 * Invariant: a field's table row lists the classes that have it; a class reads and writes only
 * its rows.
 */
#include "infer/infer.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K(x) (1u << DF_SCHED_##x)
#define ALL_KINDS ((1u << DF_SCHED_KIND_COUNT) - 1)
#define EULER_LIKE (K(EULER) | K(EULER_ANCESTRAL) | K(HEUN) | K(LMS))

static const char *const kind_names[DF_SCHED_KIND_COUNT] = {
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
};

const char *df_sched_kind_name(df_sched_kind kind) {
    DF_ASSERT(kind >= 0 && kind < DF_SCHED_KIND_COUNT, "bad scheduler kind %d", (int)kind);
    return kind_names[kind];
}

df_status df_sched_kind_parse(const char *name, const char *what, df_sched_kind *out) {
    for (int k = 0; k < DF_SCHED_KIND_COUNT; k++)
        if (name && strcmp(name, kind_names[k]) == 0) {
            *out = (df_sched_kind)k;
            return DF_OK;
        }
    return df_error(DF_ERR_INVALID,
                    "%s: unknown scheduler '%s' (expected DDPMScheduler, DDIMScheduler, "
                    "PNDMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, "
                    "HeunDiscreteScheduler, LMSDiscreteScheduler, DPMSolverMultistepScheduler or "
                    "UniPCMultistepScheduler)",
                    what, name ? name : "(none)");
}

/* ------------------------------------------------------------------ the field table ---------- */

typedef enum ftype { F_INT, F_FLOAT, F_BOOL, F_ENUM, F_BETAS, F_INTLIST, F_NULL } ftype;

static const char *const beta_names[] = {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid",
                                         NULL};
static const char *const pred_names[] = {"epsilon", "v_prediction", "sample", NULL};
static const char *const spacing_names[] = {"leading", "trailing", "linspace", NULL};
static const char *const variance_names[] = {
    "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log",
    "learned",     "learned_range",   NULL};
static const char *const interp_names[] = {"linear", "log_linear", NULL};
static const char *const algo_names[] = {"dpmsolver++", "dpmsolver", NULL};
static const char *const solver_names[] = {"midpoint", "heun", "bh1", "bh2", NULL};

typedef struct field {
    const char *name;
    ftype type;
    size_t off;
    unsigned kinds;             /* classes that have this row */
    const char *const *names;   /* F_ENUM: value names, index = enum value */
    unsigned allowed;           /* F_ENUM: bitmask of allowed values for these classes */
    bool nullable;              /* F_ENUM: null maps to -1 */
    const char *const *aliases; /* F_ENUM: pairs (other class's value, this class's value) that
                                   __init__ rewrites with register_to_config; NULL-terminated */
} field;

/* DPM-Solver and UniPC read each other's (and DEIS's) solver settings as diffusers v0.21.4's
 * __init__ does: DPM-Solver maps algorithm_type deis to dpmsolver++ and solver_type logrho/bh1/
 * bh2 to midpoint; UniPC maps midpoint/heun/logrho to bh2. The rewritten value is what the
 * config then holds and writes back. */
static const char *const dpm_algo_aliases[] = {"deis", "dpmsolver++", NULL};
static const char *const dpm_solver_aliases[] = {"logrho", "midpoint", "bh1", "midpoint",
                                                 "bh2",    "midpoint", NULL};
static const char *const unipc_solver_aliases[] = {"midpoint", "bh2", "heun", "bh2",
                                                   "logrho",   "bh2", NULL};

#define OFF(m) offsetof(df_sched_config, m)
static const field fields[] = {
    {"num_train_timesteps", F_INT, OFF(num_train_timesteps), ALL_KINDS, NULL, 0, false, NULL},
    {"beta_start", F_FLOAT, OFF(beta_start), ALL_KINDS, NULL, 0, false, NULL},
    {"beta_end", F_FLOAT, OFF(beta_end), ALL_KINDS, NULL, 0, false, NULL},
    {"beta_schedule", F_ENUM, OFF(beta_schedule), K(DDPM), beta_names, 0xf, false, NULL},
    {"beta_schedule", F_ENUM, OFF(beta_schedule), ALL_KINDS & ~K(DDPM), beta_names, 0x7, false,
     NULL},
    {"trained_betas", F_BETAS, OFF(trained_betas), ALL_KINDS, NULL, 0, false, NULL},
    {"prediction_type", F_ENUM, OFF(prediction_type), ALL_KINDS & ~(K(PNDM) | K(EULER_ANCESTRAL)),
     pred_names, 0x7, false, NULL},
    {"prediction_type", F_ENUM, OFF(prediction_type), K(PNDM) | K(EULER_ANCESTRAL), pred_names, 0x3,
     false, NULL},
    {"timestep_spacing", F_ENUM, OFF(timestep_spacing), ALL_KINDS, spacing_names, 0x7, false, NULL},
    {"steps_offset", F_INT, OFF(steps_offset), ALL_KINDS, NULL, 0, false, NULL},
    {"clip_sample", F_BOOL, OFF(clip_sample), K(DDPM) | K(DDIM) | K(HEUN), NULL, 0, false, NULL},
    {"clip_sample_range", F_FLOAT, OFF(clip_sample_range), K(DDPM) | K(DDIM) | K(HEUN), NULL, 0,
     false, NULL},
    {"thresholding", F_BOOL, OFF(thresholding),
     K(DDPM) | K(DDIM) | K(DPMSOLVER_MULTISTEP) | K(UNIPC_MULTISTEP), NULL, 0, false, NULL},
    {"dynamic_thresholding_ratio", F_FLOAT, OFF(dynamic_thresholding_ratio),
     K(DDPM) | K(DDIM) | K(DPMSOLVER_MULTISTEP) | K(UNIPC_MULTISTEP), NULL, 0, false, NULL},
    {"sample_max_value", F_FLOAT, OFF(sample_max_value),
     K(DDPM) | K(DDIM) | K(DPMSOLVER_MULTISTEP) | K(UNIPC_MULTISTEP), NULL, 0, false, NULL},
    {"set_alpha_to_one", F_BOOL, OFF(set_alpha_to_one), K(DDIM) | K(PNDM), NULL, 0, false, NULL},
    {"skip_prk_steps", F_BOOL, OFF(skip_prk_steps), K(PNDM), NULL, 0, false, NULL},
    {"rescale_betas_zero_snr", F_BOOL, OFF(rescale_betas_zero_snr), K(DDIM), NULL, 0, false, NULL},
    {"variance_type", F_ENUM, OFF(variance_type), K(DDPM), variance_names, 0x3f, false, NULL},
    {"variance_type", F_ENUM, OFF(variance_type), K(DPMSOLVER_MULTISTEP), variance_names, 0x3f,
     true, NULL},
    {"use_karras_sigmas", F_BOOL, OFF(use_karras_sigmas),
     K(EULER) | K(HEUN) | K(LMS) | K(DPMSOLVER_MULTISTEP) | K(UNIPC_MULTISTEP), NULL, 0, false,
     NULL},
    {"interpolation_type", F_ENUM, OFF(interpolation_type), K(EULER), interp_names, 0x3, false,
     NULL},
    {"solver_order", F_INT, OFF(solver_order), K(DPMSOLVER_MULTISTEP) | K(UNIPC_MULTISTEP), NULL, 0,
     false, NULL},
    {"algorithm_type", F_ENUM, OFF(algorithm_type), K(DPMSOLVER_MULTISTEP), algo_names, 0x3, false,
     dpm_algo_aliases},
    {"solver_type", F_ENUM, OFF(solver_type), K(DPMSOLVER_MULTISTEP), solver_names, 0x3, false,
     dpm_solver_aliases},
    {"solver_type", F_ENUM, OFF(solver_type), K(UNIPC_MULTISTEP), solver_names, 0xc, false,
     unipc_solver_aliases},
    {"lower_order_final", F_BOOL, OFF(lower_order_final),
     K(DPMSOLVER_MULTISTEP) | K(UNIPC_MULTISTEP), NULL, 0, false, NULL},
    {"lambda_min_clipped", F_FLOAT, OFF(lambda_min_clipped), K(DPMSOLVER_MULTISTEP), NULL, 0, false,
     NULL},
    {"predict_x0", F_BOOL, OFF(predict_x0), K(UNIPC_MULTISTEP), NULL, 0, false, NULL},
    {"disable_corrector", F_INTLIST, OFF(disable_corrector), K(UNIPC_MULTISTEP), NULL, 0, false,
     NULL},
    {"solver_p", F_NULL, 0, K(UNIPC_MULTISTEP), NULL, 0, false, NULL},
};
#define N_FIELDS ((int)(sizeof fields / sizeof fields[0]))

static const field *find_field(df_sched_kind kind, const char *name) {
    for (int i = 0; i < N_FIELDS; i++)
        if ((fields[i].kinds & (1u << kind)) && strcmp(fields[i].name, name) == 0)
            return &fields[i];
    return NULL;
}

static bool is_private_dropped(const char *key) {
    return strcmp(key, "_class_name") == 0 || strcmp(key, "_diffusers_version") == 0 ||
           strcmp(key, "_use_default_values") == 0 || strcmp(key, "_ignore_files") == 0;
}

/* ------------------------------------------------------------------ defaults ----------------- */

void df_sched_config_default(df_sched_kind kind, df_sched_config *c) {
    DF_ASSERT(kind >= 0 && kind < DF_SCHED_KIND_COUNT, "bad scheduler kind %d", (int)kind);
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = DF_BETA_LINEAR;
    c->prediction_type = DF_PRED_EPSILON;
    c->timestep_spacing = DF_SPACING_LINSPACE;
    c->steps_offset = 0;
    c->clip_sample = false;
    c->clip_sample_range = 1.0;
    c->thresholding = false;
    c->dynamic_thresholding_ratio = 0.995;
    c->sample_max_value = 1.0;
    c->set_alpha_to_one = false;
    c->variance_type = DF_VARIANCE_NONE;
    c->interpolation_type = DF_INTERP_LINEAR;
    c->solver_order = 2;
    c->algorithm_type = DF_ALGO_DPMSOLVERPP;
    c->solver_type = DF_SOLVER_MIDPOINT;
    c->lower_order_final = true;
    c->lambda_min_clipped = -INFINITY;
    c->predict_x0 = true;
    switch (kind) {
    case DF_SCHED_DDPM:
        c->timestep_spacing = DF_SPACING_LEADING;
        c->clip_sample = true;
        c->variance_type = DF_VARIANCE_FIXED_SMALL;
        break;
    case DF_SCHED_DDIM:
        c->timestep_spacing = DF_SPACING_LEADING;
        c->clip_sample = true;
        c->set_alpha_to_one = true;
        break;
    case DF_SCHED_PNDM: c->timestep_spacing = DF_SPACING_LEADING; break;
    case DF_SCHED_HEUN:
        c->beta_start = 0.00085;
        c->beta_end = 0.012;
        break;
    case DF_SCHED_UNIPC_MULTISTEP: c->solver_type = DF_SOLVER_BH2; break;
    default: break;
    }
}

void df_sched_config_free(df_sched_config *c) {
    if (!c) return;
    free(c->trained_betas);
    c->trained_betas = NULL;
    c->n_trained_betas = 0;
    if (c->extra) cJSON_Delete((cJSON *)c->extra);
    c->extra = NULL;
}

df_status df_sched_config_copy(df_sched_config *dst, const df_sched_config *src) {
    *dst = *src;
    dst->trained_betas = NULL;
    dst->extra = NULL;
    if (src->trained_betas) {
        dst->trained_betas = malloc((size_t)src->n_trained_betas * sizeof(double) + 1);
        if (!dst->trained_betas) return df_error(DF_ERR_NOMEM, "scheduler config: out of memory");
        memcpy(dst->trained_betas, src->trained_betas,
               (size_t)src->n_trained_betas * sizeof(double));
    }
    if (src->extra) {
        dst->extra = cJSON_Duplicate((const cJSON *)src->extra, true);
        if (!dst->extra) {
            df_sched_config_free(dst);
            return df_error(DF_ERR_NOMEM, "scheduler config: out of memory");
        }
    }
    return DF_OK;
}

/* ------------------------------------------------------------------ reading ------------------ */

/* Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), as Python's
 * json.load of a file requires; returns the offset of the first bad byte or -1. */
static long bad_utf8(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int n = c >= 0xc2 && c <= 0xdf   ? 1
                : c >= 0xe0 && c <= 0xef ? 2
                : c >= 0xf0 && c <= 0xf4 ? 3
                                         : -1;
        if (n < 0 || i + (size_t)n >= len) return (long)i;
        unsigned v = c & (n == 1 ? 31 : n == 2 ? 15 : 7);
        for (int k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return (long)i;
            v = (v << 6) | (s[i + k] & 63);
        }
        if ((n == 2 && v < 0x800) || (n == 3 && (v < 0x10000 || v > 0x10ffff)) ||
            (v >= 0xd800 && v <= 0xdfff))
            return (long)i;
        i += (size_t)n + 1;
    }
    return -1;
}

/* Rewrites the non-standard JSON tokens Python writes (Infinity, -Infinity, NaN) outside
 * strings into forms cJSON reads: +-1e999 (strtod gives +-inf) and null for NaN. */
static char *normalise_json(const char *s, size_t len) {
    char *out = malloc(len * 2 + 16);
    if (!out) return NULL;
    size_t o = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '\0') break;
        if (in_str) {
            out[o++] = ch;
            if (ch == '\\' && i + 1 < len)
                out[o++] = s[++i];
            else if (ch == '"')
                in_str = false;
            continue;
        }
        if (ch == '"') in_str = true;
        if (len - i >= 8 && memcmp(s + i, "Infinity", 8) == 0) {
            memcpy(out + o, "1e999", 5);
            o += 5;
            i += 7;
            continue;
        }
        if (len - i >= 3 && memcmp(s + i, "NaN", 3) == 0) {
            memcpy(out + o, "null", 4);
            o += 4;
            i += 2;
            continue;
        }
        out[o++] = ch;
    }
    out[o] = '\0';
    return out;
}

static const char *json_type_name(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "a list";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

static bool is_integral(double d) {
    return isfinite(d) && d == floor(d) && fabs(d) < 9007199254740992.0;
}

static df_status read_field(const field *f, const cJSON *v, const char *file, df_sched_config *c) {
    char *base = (char *)c + f->off;
    switch (f->type) {
    case F_INT:
        if (!cJSON_IsNumber(v) || !is_integral(v->valuedouble))
            return df_error(DF_ERR_FORMAT, "%s: field '%s': expected an integer; got %s", file,
                            f->name, cJSON_IsNumber(v) ? "a fractional number" : json_type_name(v));
        *(int64_t *)base = (int64_t)v->valuedouble;
        return DF_OK;
    case F_FLOAT:
        if (!cJSON_IsNumber(v))
            return df_error(DF_ERR_FORMAT, "%s: field '%s': expected a number; got %s", file,
                            f->name, json_type_name(v));
        *(double *)base = v->valuedouble;
        return DF_OK;
    case F_BOOL:
        if (!cJSON_IsBool(v))
            return df_error(DF_ERR_FORMAT, "%s: field '%s': expected true or false; got %s", file,
                            f->name, json_type_name(v));
        *(bool *)base = cJSON_IsTrue(v);
        return DF_OK;
    case F_ENUM: {
        char expected[256] = "";
        size_t k = 0;
        for (int i = 0; f->names[i]; i++)
            if (f->allowed & (1u << i))
                k += (size_t)snprintf(expected + k, sizeof expected - k, "%s%s", k ? ", " : "",
                                      f->names[i]);
        if (f->nullable && cJSON_IsNull(v)) {
            *(int *)base = -1;
            return DF_OK;
        }
        if (!cJSON_IsString(v))
            return df_error(DF_ERR_FORMAT, "%s: field '%s': expected one of %s%s; got %s", file,
                            f->name, expected, f->nullable ? " or null" : "", json_type_name(v));
        const char *val = v->valuestring;
        for (int a = 0; f->aliases && f->aliases[a]; a += 2)
            if (strcmp(val, f->aliases[a]) == 0) val = f->aliases[a + 1];
        for (int i = 0; f->names[i]; i++)
            if ((f->allowed & (1u << i)) && strcmp(val, f->names[i]) == 0) {
                *(int *)base = i;
                return DF_OK;
            }
        return df_error(DF_ERR_INVALID, "%s: field '%s': expected one of %s%s; got '%.100s'", file,
                        f->name, expected, f->nullable ? " or null" : "", v->valuestring);
    }
    case F_BETAS: {
        if (cJSON_IsNull(v)) return DF_OK;
        if (!cJSON_IsArray(v))
            return df_error(DF_ERR_FORMAT,
                            "%s: field 'trained_betas': expected a list of numbers "
                            "or null; got %s",
                            file, json_type_name(v));
        int n = cJSON_GetArraySize(v);
        double *b = malloc((size_t)n * sizeof(double) + 1);
        if (!b) return df_error(DF_ERR_NOMEM, "%s: out of memory", file);
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (!cJSON_IsNumber(e)) {
                free(b);
                return df_error(DF_ERR_FORMAT,
                                "%s: field 'trained_betas': item %d: expected a "
                                "number; got %s",
                                file, i, json_type_name(e));
            }
            b[i++] = e->valuedouble;
        }
        free(c->trained_betas);
        c->trained_betas = b;
        c->n_trained_betas = n;
        return DF_OK;
    }
    case F_INTLIST: {
        if (!cJSON_IsArray(v))
            return df_error(DF_ERR_FORMAT, "%s: field '%s': expected a list of integers; got %s",
                            file, f->name, json_type_name(v));
        int n = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (!cJSON_IsNumber(e) || !is_integral(e->valuedouble))
                return df_error(DF_ERR_FORMAT,
                                "%s: field '%s': item %d: expected an integer; "
                                "got %s",
                                file, f->name, n, json_type_name(e));
            if (n == DF_SCHED_MAX_DISABLE_CORRECTOR)
                return df_error(DF_ERR_INVALID, "%s: field '%s': more than %d items", file, f->name,
                                DF_SCHED_MAX_DISABLE_CORRECTOR);
            c->disable_corrector[n++] = (int64_t)e->valuedouble;
        }
        c->n_disable_corrector = n;
        return DF_OK;
    }
    case F_NULL:
        if (!cJSON_IsNull(v))
            return df_error(DF_ERR_UNSUPPORTED, "%s: field '%s': only null is supported; got %s",
                            file, f->name, json_type_name(v));
        return DF_OK;
    }
    return DF_OK;
}

/* Checks the ranges the step code relies on. */
static df_status validate(const df_sched_config *c, const char *file) {
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000)
        return df_error(DF_ERR_INVALID,
                        "%s: field 'num_train_timesteps': %lld is out of range "
                        "[2, 100000]",
                        file, (long long)c->num_train_timesteps);
    if (c->trained_betas && c->n_trained_betas != c->num_train_timesteps)
        return df_error(DF_ERR_INVALID,
                        "%s: field 'trained_betas': %lld values for "
                        "num_train_timesteps %lld",
                        file, (long long)c->n_trained_betas, (long long)c->num_train_timesteps);
    if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
        return df_error(DF_ERR_INVALID, "%s: field 'steps_offset': %lld is out of range [0, %lld)",
                        file, (long long)c->steps_offset, (long long)c->num_train_timesteps);
    if (c->kind == DF_SCHED_DPMSOLVER_MULTISTEP || c->kind == DF_SCHED_UNIPC_MULTISTEP) {
        long long hi = 3;
        if (c->solver_order < 1 || c->solver_order > hi)
            return df_error(DF_ERR_INVALID,
                            "%s: field 'solver_order': expected 1 to %lld; got "
                            "%lld",
                            file, hi, (long long)c->solver_order);
    }
    if (!(c->dynamic_thresholding_ratio >= 0 && c->dynamic_thresholding_ratio <= 1))
        return df_error(DF_ERR_INVALID,
                        "%s: field 'dynamic_thresholding_ratio': expected a value "
                        "in [0, 1]; got %g",
                        file, c->dynamic_thresholding_ratio);
    return DF_OK;
}

df_status df_sched_config_parse(const char *json, size_t len, const char *file,
                                const char *class_name, df_sched_config *c) {
    memset(c, 0, sizeof *c);
    if (!file) file = "scheduler config";
    long bad = bad_utf8((const unsigned char *)json, len);
    if (bad >= 0) return df_error(DF_ERR_FORMAT, "%s: not valid UTF-8 (byte %ld)", file, bad);
    char *text = normalise_json(json, len);
    if (!text) return df_error(DF_ERR_NOMEM, "%s: out of memory", file);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, true);
    if (!root) {
        long pos = end ? (long)(end - text) : -1;
        free(text);
        return df_error(DF_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", file, pos);
    }
    free(text);
    df_status st = DF_OK;
    if (!cJSON_IsObject(root)) {
        st = df_error(DF_ERR_FORMAT, "%s: expected a JSON object at the top level; got %s", file,
                      json_type_name(root));
        goto fail;
    }
    const char *cls = class_name;
    if (!cls) {
        const cJSON *cn = cJSON_GetObjectItemCaseSensitive(root, "_class_name");
        if (!cn) {
            st = df_error(DF_ERR_INVALID, "%s: field '_class_name': missing (name a scheduler)",
                          file);
            goto fail;
        }
        if (!cJSON_IsString(cn)) {
            st = df_error(DF_ERR_FORMAT, "%s: field '_class_name': expected a string; got %s", file,
                          json_type_name(cn));
            goto fail;
        }
        cls = cn->valuestring;
    }
    df_sched_kind kind;
    char what[512];
    snprintf(what, sizeof what, "%s: %s", file, class_name ? "scheduler" : "field '_class_name'");
    if ((st = df_sched_kind_parse(cls, what, &kind)) != DF_OK) goto fail;
    df_sched_config_default(kind, c);

    cJSON *extra = cJSON_CreateObject();
    if (!extra) {
        st = df_error(DF_ERR_NOMEM, "%s: out of memory", file);
        goto fail;
    }
    c->extra = extra;
    const cJSON *item;
    /* extract_init_dict: keys listed in _use_default_values (an in-memory config's record of the
     * defaults its class filled in) are dropped, so the reading class applies its own defaults */
    const cJSON *used_defaults = cJSON_GetObjectItemCaseSensitive(root, "_use_default_values");
    cJSON_ArrayForEach(item, root) {
        const char *key = item->string;
        bool was_default = false;
        const cJSON *d;
        if (cJSON_IsArray(used_defaults)) cJSON_ArrayForEach(d, used_defaults) {
                if (cJSON_IsString(d) && strcmp(d->valuestring, key) == 0) was_default = true;
            }
        if (was_default) continue;
        const field *f = find_field(kind, key);
        if (f) {
            if ((st = read_field(f, item, file, c)) != DF_OK) goto fail;
        } else if (!is_private_dropped(key)) {
            /* diffusers keeps unknown keys (the last occurrence wins, as in a Python dict) */
            cJSON *dup = cJSON_Duplicate(item, true);
            if (!dup) {
                st = df_error(DF_ERR_NOMEM, "%s: out of memory", file);
                goto fail;
            }
            if (cJSON_GetObjectItemCaseSensitive(extra, key))
                cJSON_ReplaceItemInObjectCaseSensitive(extra, key, dup);
            else
                cJSON_AddItemToObject(extra, key, dup);
        }
    }
    if ((st = validate(c, file)) != DF_OK) goto fail;
    cJSON_Delete(root);
    return DF_OK;
fail:
    cJSON_Delete(root);
    df_sched_config_free(c);
    return st;
}

df_status df_sched_config_load(const char *path, const char *class_name, df_sched_config *c) {
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "rb");
    if (!f) return df_error(DF_ERR_IO, "%s: cannot open", path);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) {
                free(buf);
                fclose(f);
                return df_error(DF_ERR_FORMAT, "%s: larger than 64 MB", path);
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
        if (r == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return df_error(DF_ERR_IO, "%s: read failed", path);
    }
    buf[len] = '\0';
    df_status st = df_sched_config_parse(buf, len, path, class_name, c);
    free(buf);
    return st;
}

/* ------------------------------------------------------------------ writing ------------------ */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (b->n + n + 1 > cap) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void sb_str(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}
static void sb_indent(sbuf *b, int level) {
    for (int i = 0; i < level; i++) sb_put(b, "  ", 2);
}

/* Python's repr(float): the shortest digits that round-trip; fixed notation for decimal
 * exponents in [-4, 16), else d.ddde[+-]XX. */
static void py_float_repr(double x, char *out) {
    if (isnan(x)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(x)) {
        strcpy(out, x > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (x == 0) {
        strcpy(out, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 0; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec, x);
        if (strtod(tmp, NULL) == x) break;
    }
    snprintf(tmp, sizeof tmp, "%.*e", prec, x);
    /* split "-d.ddde+XX" into sign, digits and exponent */
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg) p++;
    char digits[32];
    int nd = 0;
    while (*p && *p != 'e') {
        if (isdigit((unsigned char)*p)) digits[nd++] = *p;
        p++;
    }
    digits[nd] = '\0';
    int e10 = atoi(p + 1);
    char *o = out;
    if (neg) *o++ = '-';
    if (e10 >= -4 && e10 < 16) {
        if (e10 < 0) {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -e10 - 1; i++) *o++ = '0';
            for (int i = 0; i < nd; i++) *o++ = digits[i];
        } else {
            for (int i = 0; i <= e10; i++) *o++ = i < nd ? digits[i] : '0';
            *o++ = '.';
            if (nd > e10 + 1)
                for (int i = e10 + 1; i < nd; i++) *o++ = digits[i];
            else
                *o++ = '0';
        }
        *o = '\0';
        return;
    }
    *o++ = digits[0];
    if (nd > 1) {
        *o++ = '.';
        for (int i = 1; i < nd; i++) *o++ = digits[i];
    }
    sprintf(o, "e%c%02d", e10 < 0 ? '-' : '+', abs(e10));
}

static void emit_string(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        char esc[16];
        if (c == '"')
            sb_str(b, "\\\"");
        else if (c == '\\')
            sb_str(b, "\\\\");
        else if (c == '\n')
            sb_str(b, "\\n");
        else if (c == '\r')
            sb_str(b, "\\r");
        else if (c == '\t')
            sb_str(b, "\\t");
        else if (c == '\b')
            sb_str(b, "\\b");
        else if (c == '\f')
            sb_str(b, "\\f");
        else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_str(b, esc);
        } else if (c < 0x80) {
            sb_put(b, (const char *)p, 1);
        } else {
            /* json.dumps(ensure_ascii=True): non-ASCII as \uXXXX (surrogate pairs above BMP) */
            /* invalid UTF-8 (bad lead or continuation, surrogates, > U+10FFFF) -> U+FFFD */
            unsigned cp = 0xfffd;
            int extra = c >= 0xf8 ? 0 : c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
            if (extra) {
                unsigned v = extra == 3 ? c & 7 : extra == 2 ? c & 15 : c & 31;
                int i;
                for (i = 1; i <= extra && (p[i] & 0xc0) == 0x80; i++) v = (v << 6) | (p[i] & 63);
                if (i <= extra)
                    extra = i - 1;
                else if (v <= 0x10ffff && (v < 0xd800 || v > 0xdfff))
                    cp = v;
            }
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xd800 + (cp >> 10),
                         0xdc00 + (cp & 0x3ff));
            } else {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            }
            sb_str(b, esc);
            p += extra;
        }
        p++;
    }
    sb_put(b, "\"", 1);
}

static void emit_number(sbuf *b, double d, bool as_float) {
    char tmp[64];
    if (!as_float && is_integral(d))
        snprintf(tmp, sizeof tmp, "%lld", (long long)d);
    else
        py_float_repr(d, tmp);
    sb_str(b, tmp);
}

static int cmp_keys(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A cJSON value as json.dumps(indent=2, sort_keys=True) writes it. Numbers keep cJSON's view:
 * integral values print as integers. */
static void emit_json(sbuf *b, const cJSON *v, int level) {
    if (cJSON_IsNull(v))
        sb_str(b, "null");
    else if (cJSON_IsTrue(v))
        sb_str(b, "true");
    else if (cJSON_IsFalse(v))
        sb_str(b, "false");
    else if (cJSON_IsNumber(v))
        emit_number(b, v->valuedouble, false);
    else if (cJSON_IsString(v))
        emit_string(b, v->valuestring);
    else if (cJSON_IsArray(v)) {
        int n = cJSON_GetArraySize(v);
        if (n == 0) {
            sb_str(b, "[]");
            return;
        }
        sb_str(b, "[\n");
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            sb_indent(b, level + 1);
            emit_json(b, e, level + 1);
            sb_str(b, ++i < n ? ",\n" : "\n");
        }
        sb_indent(b, level);
        sb_str(b, "]");
    } else if (cJSON_IsObject(v)) {
        int n = cJSON_GetArraySize(v);
        if (n == 0) {
            sb_str(b, "{}");
            return;
        }
        const cJSON *e;
        int k = 0;
        const char **keys = malloc((size_t)n * sizeof *keys);
        if (!keys) {
            b->oom = true;
            return;
        }
        k = 0;
        cJSON_ArrayForEach(e, v) keys[k++] = e->string;
        qsort(keys, (size_t)n, sizeof *keys, cmp_keys);
        sb_str(b, "{\n");
        for (int i = 0; i < n; i++) {
            sb_indent(b, level + 1);
            emit_string(b, keys[i]);
            sb_str(b, ": ");
            emit_json(b, cJSON_GetObjectItemCaseSensitive(v, keys[i]), level + 1);
            sb_str(b, i + 1 < n ? ",\n" : "\n");
        }
        free(keys);
        sb_indent(b, level);
        sb_str(b, "}");
    }
}

/* The value of one class field, typed by the table (float fields always print as floats, as
 * Python keeps them). */
static void emit_field(sbuf *b, const field *f, const df_sched_config *c) {
    const char *base = (const char *)c + f->off;
    switch (f->type) {
    case F_INT: emit_number(b, (double)*(const int64_t *)base, false); break;
    case F_FLOAT: emit_number(b, *(const double *)base, true); break;
    case F_BOOL: sb_str(b, *(const bool *)base ? "true" : "false"); break;
    case F_ENUM: {
        int e = *(const int *)base;
        if (e < 0)
            sb_str(b, "null");
        else
            emit_string(b, f->names[e]);
        break;
    }
    case F_BETAS:
        if (!c->trained_betas) {
            sb_str(b, "null");
        } else if (c->n_trained_betas == 0) {
            sb_str(b, "[]");
        } else {
            sb_str(b, "[\n");
            for (int64_t i = 0; i < c->n_trained_betas; i++) {
                sb_indent(b, 2);
                emit_number(b, c->trained_betas[i], true);
                sb_str(b, i + 1 < c->n_trained_betas ? ",\n" : "\n");
            }
            sb_str(b, "  ]");
        }
        break;
    case F_INTLIST:
        if (c->n_disable_corrector == 0) {
            sb_str(b, "[]");
        } else {
            sb_str(b, "[\n");
            for (int i = 0; i < c->n_disable_corrector; i++) {
                sb_indent(b, 2);
                emit_number(b, (double)c->disable_corrector[i], false);
                sb_str(b, i + 1 < c->n_disable_corrector ? ",\n" : "\n");
            }
            sb_str(b, "  ]");
        }
        break;
    case F_NULL: sb_str(b, "null"); break;
    }
}

typedef struct out_key {
    const char *key;
    const field *f;     /* a class field, or */
    const cJSON *extra; /* a kept unknown key, or neither: _class_name / _diffusers_version */
} out_key;

static int cmp_out_keys(const void *a, const void *b) {
    return strcmp(((const out_key *)a)->key, ((const out_key *)b)->key);
}

char *df_sched_config_to_json(const df_sched_config *c) {
    int n_extra = c->extra ? cJSON_GetArraySize((const cJSON *)c->extra) : 0;
    out_key *keys = malloc((size_t)(N_FIELDS + n_extra + 2) * sizeof *keys);
    if (!keys) return NULL;
    int n = 0;
    for (int i = 0; i < N_FIELDS; i++)
        if (fields[i].kinds & (1u << c->kind))
            keys[n++] = (out_key){fields[i].name, &fields[i], NULL};
    if (c->extra) {
        const cJSON *e;
        cJSON_ArrayForEach(e, (const cJSON *)c->extra) {
            if (find_field(c->kind, e->string) || is_private_dropped(e->string)) continue;
            keys[n++] = (out_key){e->string, NULL, e};
        }
    }
    keys[n++] = (out_key){"_class_name", NULL, NULL};
    keys[n++] = (out_key){"_diffusers_version", NULL, NULL};
    qsort(keys, (size_t)n, sizeof *keys, cmp_out_keys);
    sbuf b = {0};
    sb_str(&b, "{\n");
    for (int i = 0; i < n; i++) {
        sb_str(&b, "  ");
        emit_string(&b, keys[i].key);
        sb_str(&b, ": ");
        if (keys[i].f)
            emit_field(&b, keys[i].f, c);
        else if (keys[i].extra)
            emit_json(&b, keys[i].extra, 1);
        else if (strcmp(keys[i].key, "_class_name") == 0)
            emit_string(&b, kind_names[c->kind]);
        else
            emit_string(&b, "0.21.4");
        sb_str(&b, i + 1 < n ? ",\n" : "\n");
    }
    sb_str(&b, "}\n");
    free(keys);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

df_status df_sched_config_save(const df_sched_config *c, const char *path) {
    char *s = df_sched_config_to_json(c);
    if (!s) return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(s);
        return df_error(DF_ERR_IO, "%s: cannot open for writing", path);
    }
    size_t len = strlen(s);
    bool ok = fwrite(s, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    free(s);
    if (!ok) return df_error(DF_ERR_IO, "%s: write failed", path);
    return DF_OK;
}
