/* check.c — closeness checks, gradient checks and random inputs shared by every test. */
#include "tests/common/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

void check_close_f32(const char *label, const float *got, const float *want, int64_t n, double atol,
                     double rtol) {
    double max_abs = 0, max_rel = 0;
    int64_t first_bad = -1, n_bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], w = want[i], d = fabs(g - w);
        bool bad = !(d <= atol + rtol * fabs(w)) && !(isnan(g) && isnan(w));
        if (isinf(w) && g == w) bad = false;
        if (d > max_abs) max_abs = d;
        if (w != 0 && d / fabs(w) > max_rel) max_rel = d / fabs(w);
        if (bad) {
            n_bad++;
            if (first_bad < 0) first_bad = i;
        }
    }
    if (n_bad == 0) return;
    char msg[2048];
    int k = snprintf(msg, sizeof msg,
                     "%s: %lld of %lld elements differ (atol %g rtol %g): max abs %.3g, max rel "
                     "%.3g, first bad index %lld; pairs (got, want):",
                     label, (long long)n_bad, (long long)n, atol, rtol, max_abs, max_rel,
                     (long long)first_bad);
    for (int64_t i = first_bad; i < n && i < first_bad + 6 && k < (int)sizeof msg - 64; i++)
        k += snprintf(msg + k, sizeof msg - k, " [%lld] (%.9g, %.9g)", (long long)i, got[i],
                      want[i]);
    cr_assert_fail("%s", msg);
}

void check_close(const char *label, const df_tensor *got, const df_tensor *want, double atol,
                 double rtol) {
    char sg[64], sw[64];
    cr_assert(got->numel == want->numel, "%s: shape %s, expected %s", label,
              df_shape_str(got, sg, sizeof sg), df_shape_str(want, sw, sizeof sw));
    cr_assert(df_tensor_same_shape(got, want), "%s: shape %s, expected %s", label,
              df_shape_str(got, sg, sizeof sg), df_shape_str(want, sw, sizeof sw));
    cr_assert(got->block == want->block, "%s: layout nChw%dc, expected nChw%dc (0: plain)", label,
              got->block, want->block);
    df_scope s = df_scope_begin();
    df_tensor *g = got->dtype == DF_DTYPE_F32 ? (df_tensor *)got : df_tensor_to(got, DF_DTYPE_F32);
    df_tensor *w =
        want->dtype == DF_DTYPE_F32 ? (df_tensor *)want : df_tensor_to(want, DF_DTYPE_F32);
    check_close_f32(label, df_f32(g), df_f32(w), g->numel, atol, rtol);
    df_scope_end(s);
}

double rel_max_err(const df_tensor *got, const df_tensor *want) {
    double max_d = 0, max_w = 0;
    for (int64_t i = 0; i < want->numel; i++) {
        double d = fabs(df_tensor_get(got, i) - df_tensor_get(want, i));
        double w = fabs(df_tensor_get(want, i));
        if (d > max_d || isnan(d)) max_d = isnan(d) ? INFINITY : d;
        if (w > max_w) max_w = w;
    }
    return max_w > 0 ? max_d / max_w : max_d;
}

df_tensor *randn_tensor(uint64_t seed, int ndim, const int64_t *shape) {
    df_tensor *t = df_tensor_new(DF_DTYPE_F32, ndim, shape);
    df_philox g;
    df_philox_init(&g, seed, 0);
    df_philox_fill_normal(&g, df_f32(t), t->numel);
    return t;
}

/* loss = sum(fn(inputs) * r), in double. */
static double probe_loss(gradcheck_fn fn, void *user, df_tensor **inputs, const df_tensor *r) {
    df_scope s = df_scope_begin();
    df_tensor *out = fn(inputs, user);
    double acc = 0;
    for (int64_t i = 0; i < out->numel; i++) acc += (double)df_f32(out)[i] * df_f32(r)[i];
    df_scope_end(s);
    return acc;
}

void gradcheck(const char *label, gradcheck_fn fn, void *user, df_tensor **inputs, int n,
               double eps, double atol, double rtol) {
    for (int i = 0; i < n; i++) {
        df_tensor_free(inputs[i]->grad);
        inputs[i]->grad = NULL;
    }
    df_scope s = df_scope_begin();
    df_tensor *out = fn(inputs, user);
    df_tensor *r = randn_tensor(12345, out->ndim, out->shape);
    /* backward seeded with r is the gradient of sum(out * r) */
    cr_assert(df_backward_with(out, r) == DF_OK, "%s: backward failed: %s", label, df_last_error());
    for (int i = 0; i < n; i++) {
        df_tensor *x = inputs[i];
        if (!x->requires_grad) {
            cr_assert(x->grad == NULL, "%s: input %d has no requires_grad but got a gradient",
                      label, i);
            continue;
        }
        cr_assert(x->grad != NULL, "%s: input %d received no gradient", label, i);
        float *num = malloc((size_t)x->numel * sizeof(float));
        float *xv = df_f32(x);
        bool prev = df_grad_set_enabled(false);
        for (int64_t j = 0; j < x->numel; j++) {
            float orig = xv[j];
            xv[j] = orig + (float)eps;
            double lp = probe_loss(fn, user, inputs, r);
            xv[j] = orig - (float)eps;
            double lm = probe_loss(fn, user, inputs, r);
            xv[j] = orig;
            num[j] = (float)((lp - lm) / (2 * eps));
        }
        df_grad_set_enabled(prev);
        char name[256];
        snprintf(name, sizeof name, "%s: d loss / d input %d (analytic vs numeric)", label, i);
        check_close_f32(name, df_f32(x->grad), num, x->numel, atol, rtol);
        free(num);
    }
    df_scope_end(s);
}

const char *fixture_path(const char *relpath) {
    static _Thread_local char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", DF_FIXTURES, relpath);
    return buf;
}

int run_command(const char *cmdline, char *out, size_t len) {
    size_t n_cmd = strlen(cmdline) + 8;
    char *cmd = malloc(n_cmd);
    cr_assert(cmd, "out of memory");
    snprintf(cmd, n_cmd, "%s 2>&1", cmdline);
    FILE *p = popen(cmd, "r");
    free(cmd);
    cr_assert(p, "cannot run: %s", cmdline);
    size_t n = fread(out, 1, len - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void expect_status(df_status got, df_status want, const char *must_contain) {
    cr_assert_eq(got, want, "status %s, expected %s (%s)", df_status_name(got),
                 df_status_name(want), df_last_error());
    cr_assert(strstr(df_last_error(), must_contain), "message '%s' lacks '%s'", df_last_error(),
              must_contain);
}
