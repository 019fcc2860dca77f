/* cmd_forward.c — `diffusion forward COMPONENT_DIR --inputs in.safetensors --out out.safetensors
 * [--backward probe.safetensors [--grads grads.safetensors]]`: runs one diffusers component on
 * named inputs and writes its named outputs; with --backward, the loss is the sum over every
 * output with a probe of sum(output * probe) (the probe of output X is the tensor
 * `probe.X`, else `probe` when X is the main output (`sample`; CLIP's `last_hidden_state`),
 * else `X`: so a diffusers fixture's inputs file,
 * which holds both `sample` and `probe`, serves as its own probe file), and --grads receives every parameter's gradient
 * under its diffusers name and every float input's as `input.<name>`. The user's tool for
 * checking a port, and ours for parity with diffusers. Outputs are written atomically, and an
 * output that is an input (the model's own weights, --inputs, --backward, --out for --grads)
 * is refused. --lora FILE[:scale] (repeatable) applies a LoRA file's entries for this component
 * (a UNet2DConditionModel: "unet.*", a CLIPTextModel: "text_encoder.*") on the fly, or fused
 * into the weights with --fuse-lora: for parity tests of LoRA files against diffusers. */
#include "nn/nn.h"
#include "recipes/cli.h"
#include "recipes/cli_lora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUTS 16

static int usage(void) {
    fprintf(stderr, "usage: diffusion forward COMPONENT_DIR --inputs in.safetensors --out "
                    "out.safetensors [--backward probe.safetensors] [--grads grads.safetensors] "
                    "[--lora FILE[:scale]]... [--fuse-lora]\n");
    return 2;
}

/* The probe for output `name` in the probe file, or NULL. */
static const char *probe_name(const df_st_file *probes, const char *name, const char *main_output,
                              char *buf, size_t len) {
    snprintf(buf, len, "probe.%s", name);
    if (df_st_find(probes, buf)) return buf;
    if (strcmp(name, main_output) == 0 && df_st_find(probes, "probe")) return "probe";
    if (df_st_find(probes, name)) return name;
    return NULL;
}

static df_status write_named(const char *path, const df_named *items, int n) {
    const char **names = malloc((size_t)(n ? n : 1) * sizeof *names);
    const df_tensor **ts = malloc((size_t)(n ? n : 1) * sizeof *ts);
    if (!names || !ts) {
        free(names);
        free(ts);
        return df_error(DF_ERR_NOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < n; i++) {
        names[i] = items[i].name;
        ts[i] = items[i].tensor;
    }
    df_status st = df_st_save(path, n, names, ts, 0, NULL, NULL);
    free(names);
    free(ts);
    return st;
}

/* loss = sum over outputs with a probe of sum(output * probe); backward; *used = probes used. */
static df_status run_backward(const char *probe_path, const char *main_output, df_named *outputs,
                              int n_out, int *used) {
    df_st_file *probes;
    DF_TRY(df_st_open(probe_path, &probes));
    df_tensor *loss = NULL;
    df_status st = DF_OK;
    *used = 0;
    for (int i = 0; i < n_out && st == DF_OK; i++) {
        char buf[DF_NAME_MAX];
        const char *pn = probe_name(probes, outputs[i].name, main_output, buf, sizeof buf);
        if (!pn) continue;
        df_tensor *p;
        st = df_st_read(probes, pn, DF_DTYPE_F32, &p);
        if (st != DF_OK) break;
        if (!df_tensor_same_shape(p, outputs[i].tensor)) {
            st = df_error(DF_ERR_INVALID, "%s: probe '%s' does not match the shape of output '%s'",
                          probe_path, pn, outputs[i].name);
            break;
        }
        df_tensor *term = df_sum(df_mul(outputs[i].tensor, p), 0, NULL, false);
        loss = loss ? df_add(loss, term) : term;
        (*used)++;
    }
    df_st_close(probes);
    if (st != DF_OK) return st;
    if (!loss) return df_error(DF_ERR_NOTFOUND, "%s: no probe matches any output", probe_path);
    return df_backward(loss);
}

int df_cmd_forward(int argc, char **argv) {
    const char *dir = NULL, *in_path = NULL, *out_path = NULL, *probe_path = NULL,
               *grads_path = NULL;
    static df_cli_loras loras;
    memset(&loras, 0, sizeof loras);
    for (int i = 0; i < argc; i++) {
        const char **slot = NULL;
        if (strcmp(argv[i], "--fuse-lora") == 0) {
            loras.fuse = true;
            continue;
        }
        if (strcmp(argv[i], "--lora") == 0) {
            if (i + 1 >= argc) return usage();
            if (df_cli_lora_arg(&loras, argv[++i]) == DF_OK) continue;
            fprintf(stderr, "diffusion: forward: %s\n", df_last_error());
            return 2;
        }
        if (strcmp(argv[i], "--inputs") == 0)
            slot = &in_path;
        else if (strcmp(argv[i], "--out") == 0)
            slot = &out_path;
        else if (strcmp(argv[i], "--backward") == 0)
            slot = &probe_path;
        else if (strcmp(argv[i], "--grads") == 0)
            slot = &grads_path;
        else if (argv[i][0] == '-')
            return usage();
        else if (!dir)
            dir = argv[i];
        else
            return usage();
        if (slot) {
            if (i + 1 >= argc) return usage();
            *slot = argv[++i];
        }
    }
    if (!dir || !in_path || !out_path || (grads_path && !probe_path) || (loras.fuse && !loras.n))
        return usage();
    /* the outputs are renamed into place (df_st_save): one must not replace an input */
    const char *ins[] = {in_path, probe_path, out_path};
    if (grads_path && strcmp(grads_path, out_path) == 0) {
        fprintf(stderr, "diffusion: forward: --out and --grads are both %s\n", out_path);
        return usage();
    }
    if (df_cli_check_output(out_path, ins, 2, dir) != DF_OK ||
        df_cli_check_output(grads_path, ins, 3, dir) != DF_OK)
        return df_cli_fail("forward");

    df_component comp;
    df_status st = df_component_load(dir, &comp);
    if (st != DF_OK) {
        df_component_free(&comp);
        return df_cli_fail("forward");
    }
    if (loras.n) {
        const char *prefix = comp.unet2d_cond ? "unet" : comp.clip_text ? "text_encoder" : NULL;
        df_lora_model m = {prefix, comp.params};
        st = prefix ? df_cli_loras_apply(&loras, &m, 1, true)
                    : df_error(DF_ERR_UNSUPPORTED, "--lora: %s: a %s takes no LoRA", dir,
                               comp.class_name);
        if (st != DF_OK) {
            df_cli_loras_free(&loras);
            df_component_free(&comp);
            return df_cli_fail("forward");
        }
    }
    df_scope scope = df_scope_begin();
    df_st_file *in = NULL;
    df_named inputs[MAX_INPUTS], outputs[DF_COMPONENT_MAX_OUTPUTS];
    int n_in = 0, n_out = 0, used = 0;
    st = df_st_open(in_path, &in);
    if (st == DF_OK && df_st_count(in) > MAX_INPUTS)
        st = df_error(DF_ERR_INVALID, "%s: more than %d inputs", in_path, MAX_INPUTS);
    for (int i = 0; st == DF_OK && i < df_st_count(in); i++) {
        const df_st_info *info = df_st_info_at(in, i);
        bool is_float = info->supported && df_dtype_is_float(info->dtype) &&
                        strcmp(info->name, "timestep") != 0;
        df_tensor *t;
        st = df_st_read(in, info->name, is_float ? DF_DTYPE_F32 : info->dtype, &t);
        if (st != DF_OK) break;
        if (is_float && probe_path) df_tensor_set_requires_grad(t, true);
        inputs[n_in++] = (df_named){info->name, t};
    }
    if (st == DF_OK && probe_path) df_params_requires_grad(comp.params);
    bool prev = df_grad_set_enabled(probe_path != NULL);
    if (st == DF_OK) st = df_component_forward(&comp, inputs, n_in, outputs, &n_out);
    df_grad_set_enabled(prev);
    if (st == DF_OK) st = write_named(out_path, outputs, n_out);
    if (st == DF_OK && probe_path)
        st = run_backward(probe_path, df_component_main_output(&comp), outputs, n_out, &used);
    if (st == DF_OK && grads_path) {
        int n = comp.params->n + n_in;
        df_named *grads = malloc((size_t)n * sizeof *grads);
        char(*names)[DF_NAME_MAX] = malloc((size_t)n_in * DF_NAME_MAX + 1);
        int k = 0;
        for (int i = 0; grads && i < comp.params->n; i++) {
            df_tensor *p = comp.params->items[i].tensor;
            grads[k++] = (df_named){comp.params->items[i].name,
                                    p->grad ? p->grad : df_zeros(DF_DTYPE_F32, p->ndim, p->shape)};
        }
        for (int i = 0; grads && names && i < n_in; i++) {
            if (!inputs[i].tensor->requires_grad) continue;
            snprintf(names[i], DF_NAME_MAX, "input.%s", inputs[i].name);
            df_tensor *t = inputs[i].tensor;
            grads[k++] =
                (df_named){names[i], t->grad ? t->grad : df_zeros(DF_DTYPE_F32, t->ndim, t->shape)};
        }
        st = grads && names ? write_named(grads_path, grads, k)
                            : df_error(DF_ERR_NOMEM, "%s: out of memory", grads_path);
        free(grads);
        free(names);
    }
    df_st_close(in);
    df_scope_end(scope);
    df_cli_loras_free(&loras); /* before the model its adapters sit on */
    df_component_free(&comp);
    if (st != DF_OK) return df_cli_fail("forward");
    if (probe_path) fprintf(stderr, "forward: loss over %d output(s) with a probe\n", used);
    return 0;
}
