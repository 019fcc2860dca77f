/* test_ops_shapes_parity.c — concat, slice/chunk, permute/transpose and embedding against
 * PyTorch: tests/ref/gen_ops_shapes.py wrote, per case, the inputs, torch's output, an upstream
 * gradient gout and torch's input gradients into tests/fixtures/ops_shapes/<op>.safetensors
 * (case parameters in the metadata). Forward values are exact copies (atol 0, rtol 0); so are
 * the copy ops' gradients; embedding's gradient sums repeated rows, where the summation order
 * may differ from torch's by an ulp (rtol 1e-6 plus atol 1e-7 for sums that cancel). */
#include "tests/common/check.h"

#include "nn/nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUTS 8

typedef struct parity_case {
    df_st_file *f;
    const char *file;
    char name[64];
    int n; /* inputs */
    df_tensor *in[MAX_INPUTS];
    bool has_grad[MAX_INPUTS];
} parity_case;

/* The fixture tensor <case>.<what> in its stored dtype, or NULL when absent. */
static df_tensor *case_tensor(const parity_case *c, const char *what) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", c->name, what);
    const df_st_info *info = df_st_find(c->f, key);
    if (!info) return NULL;
    df_tensor *t = NULL;
    cr_assert(df_st_read(c->f, key, info->dtype, &t) == DF_OK, "%s: read %s: %s", c->file, key,
              df_last_error());
    return t;
}

/* Metadata <case>.<key> as a comma-separated int list; returns the count. */
static int case_ints(const parity_case *c, const char *key, int *out, int max) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", c->name, key);
    const char *v = df_st_metadata(c->f, k);
    cr_assert(v != NULL, "%s: metadata %s missing", c->file, k);
    int n = 0;
    for (const char *p = v; *p && n < max;) {
        char *end;
        out[n++] = (int)strtol(p, &end, 10);
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p) break;
    }
    return n;
}

static int case_int(const parity_case *c, const char *key) {
    int v = 0;
    case_ints(c, key, &v, 1);
    return v;
}

/* Loads the inputs of case `name`, marking those torch differentiated. */
static void case_load(parity_case *c, df_st_file *f, const char *file, const char *name) {
    memset(c, 0, sizeof *c);
    c->f = f;
    c->file = file;
    snprintf(c->name, sizeof c->name, "%s", name);
    for (int i = 0; i < MAX_INPUTS; i++) {
        char what[32];
        snprintf(what, sizeof what, "in%d", i);
        df_tensor *t = case_tensor(c, what);
        if (!t) break;
        snprintf(what, sizeof what, "grad%d", i);
        df_tensor *g = case_tensor(c, what);
        c->has_grad[i] = g != NULL;
        if (g) df_tensor_set_requires_grad(t, true);
        c->in[c->n++] = t;
    }
    cr_assert(c->n > 0, "%s: case %s has no inputs", file, name);
}

/* Compares out with torch's, runs backward with torch's gout, compares input gradients. */
static void case_check(parity_case *c, df_tensor *out, double grad_atol, double grad_rtol) {
    char label[160];
    snprintf(label, sizeof label, "%s %s: forward", c->file, c->name);
    check_close(label, out, case_tensor(c, "out"), 0, 0);
    cr_assert(df_backward_with(out, case_tensor(c, "gout")) == DF_OK, "%s: backward: %s", label,
              df_last_error());
    for (int i = 0; i < c->n; i++) {
        snprintf(label, sizeof label, "%s %s: grad of input %d", c->file, c->name, i);
        if (!c->has_grad[i]) {
            cr_assert(c->in[i]->grad == NULL, "%s: not required, yet present", label);
            continue;
        }
        char what[32];
        snprintf(what, sizeof what, "grad%d", i);
        cr_assert(c->in[i]->grad != NULL, "%s: missing", label);
        check_close(label, c->in[i]->grad, case_tensor(c, what), grad_atol, grad_rtol);
    }
}

/* Runs fn over every case listed in the file's "cases" metadata. */
static void for_each_case(const char *file, void (*fn)(parity_case *c)) {
    char rel[128];
    snprintf(rel, sizeof rel, "ops_shapes/%s", file);
    df_st_file *f = fixture_open(rel); /* cached by the helper: not closed here */
    const char *cases = df_st_metadata(f, "cases");
    cr_assert(cases != NULL, "%s: no cases", file);
    char list[512];
    snprintf(list, sizeof list, "%s", cases);
    int n_run = 0;
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        df_scope s = df_scope_begin();
        parity_case c;
        case_load(&c, f, file, name);
        fn(&c);
        df_scope_end(s);
        n_run++;
    }
    cr_assert(n_run > 0, "%s: no cases ran", file);
}

static void concat_case(parity_case *c) {
    case_check(c, df_concat(c->in, c->n, case_int(c, "dim")), 0, 0);
}

static void slice_case(parity_case *c) {
    char k[96];
    snprintf(k, sizeof k, "%s.n", c->name);
    if (df_st_metadata(c->f, k)) { /* chunk, then the chunks concatenated in "order" */
        int n = case_int(c, "n"), dim = case_int(c, "dim"), order[8];
        int m = case_ints(c, "order", order, 8);
        df_tensor *parts[8], *picked[8];
        df_chunk(c->in[0], n, dim, parts);
        for (int i = 0; i < m; i++) picked[i] = parts[order[i]];
        case_check(c, df_concat(picked, m, -1), 0, 0);
        return;
    }
    df_tensor *out =
        df_slice(c->in[0], case_int(c, "dim"), case_int(c, "start"), case_int(c, "len"));
    case_check(c, out, 0, 0);
}

static void permute_case(parity_case *c) {
    char k[96];
    snprintf(k, sizeof k, "%s.perm", c->name);
    if (df_st_metadata(c->f, k)) {
        int perm[DF_MAX_DIMS];
        cr_assert(case_ints(c, "perm", perm, DF_MAX_DIMS) == c->in[0]->ndim);
        case_check(c, df_permute(c->in[0], perm), 0, 0);
    } else {
        case_check(c, df_transpose(c->in[0], case_int(c, "d0"), case_int(c, "d1")), 0, 0);
    }
}

static void embedding_case(parity_case *c) {
    case_check(c, df_embedding(c->in[0], c->in[1]), 1e-7, 1e-6);
}

Test(autograd_ops_shapes_parity, concat) {
    for_each_case("concat.safetensors", concat_case);
}

Test(autograd_ops_shapes_parity, slice_and_chunk) {
    for_each_case("slice.safetensors", slice_case);
}

Test(autograd_ops_shapes_parity, permute_and_transpose) {
    for_each_case("permute.safetensors", permute_case);
}

Test(autograd_ops_shapes_parity, embedding) {
    for_each_case("embedding.safetensors", embedding_case);
}
