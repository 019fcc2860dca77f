/* test_dnnl.c — the oneDNN layer (autograd/dnnl.c): the primitive cache reuses a primitive per
 * shape, stays bounded, works from several threads at once, and a failing oneDNN call stops
 * with the op, the call and the status name. White-box: includes the internal dnnl_impl.h. */
#include "autograd/dnnl_impl.h"
#include "tests/common/check.h"

#include <omp.h>
#include <pthread.h>
#include <signal.h>

Test(autograd_dnnl, cache_reuses_per_shape) {
    df_tensor *a = randn_tensor(1, DF_DIMS(3, 17));
    df_tensor *b = randn_tensor(2, DF_DIMS(17, 5));
    df_tensor_free(df_matmul(a, b, false, false)); /* first use of this shape: a miss */
    df_dnnl_cache_stats s0 = df_dnnl_cache_get_stats();
    for (int i = 0; i < 5; i++) df_tensor_free(df_matmul(a, b, false, false));
    df_dnnl_cache_stats s1 = df_dnnl_cache_get_stats();
    cr_assert_eq(s1.misses, s0.misses, "same shape built again (%llu -> %llu misses)",
                 (unsigned long long)s0.misses, (unsigned long long)s1.misses);
    cr_assert_eq(s1.hits, s0.hits + 5);
    cr_assert_eq(s1.entries, s0.entries);
    df_tensor *c = randn_tensor(3, DF_DIMS(17, 6)); /* a new shape: one more miss */
    df_tensor_free(df_matmul(a, c, false, false));
    cr_assert_eq(df_dnnl_cache_get_stats().misses, s1.misses + 1);
    df_tensor_free(a);
    df_tensor_free(b);
    df_tensor_free(c);
}

Test(autograd_dnnl, cache_is_bounded) {
    for (int k = 1; k <= DF_DNNL_CACHE_CAPACITY + 40; k++) {
        df_scope s = df_scope_begin();
        df_tensor *a = df_ones(DF_DTYPE_F32, DF_DIMS(1, k));
        df_tensor *b = df_ones(DF_DTYPE_F32, DF_DIMS(k, 1));
        df_tensor *c = df_matmul(a, b, false, false);
        cr_assert_float_eq(df_f32(c)[0], (float)k, 1e-3);
        df_scope_end(s);
    }
    df_dnnl_cache_stats st = df_dnnl_cache_get_stats();
    cr_assert(st.entries <= DF_DNNL_CACHE_CAPACITY, "%d entries", st.entries);
    cr_assert(st.entries >= DF_DNNL_CACHE_CAPACITY - 1, "%d entries", st.entries);
}

/* conv forward + backward of fixed inputs; results copied out */
typedef struct conv_run {
    float y[2 * 4 * 6 * 6], gx[2 * 3 * 6 * 6], gw[4 * 3 * 3 * 3];
} conv_run;

static void conv_once(conv_run *r) {
    df_scope s = df_scope_begin();
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    df_tensor *x = randn_tensor(5, DF_DIMS(2, 3, 6, 6));
    df_tensor *w = randn_tensor(6, DF_DIMS(4, 3, 3, 3));
    df_tensor_set_requires_grad(x, true);
    df_tensor_set_requires_grad(w, true);
    df_tensor *y = df_conv2d(x, w, NULL, p);
    df_tensor *g = randn_tensor(7, y->ndim, y->shape);
    DF_ASSERT(df_backward_with(y, g) == DF_OK, "backward: %s", df_last_error());
    memcpy(r->y, y->data, sizeof r->y);
    memcpy(r->gx, x->grad->data, sizeof r->gx);
    memcpy(r->gw, w->grad->data, sizeof r->gw);
    df_scope_end(s);
}

static conv_run reference;
static int mismatches[2];

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    conv_run r;
    for (int i = 0; i < 20; i++) {
        conv_once(&r);
        if (memcmp(r.y, reference.y, sizeof r.y) != 0 ||
            memcmp(r.gx, reference.gx, sizeof r.gx) != 0 ||
            memcmp(r.gw, reference.gw, sizeof r.gw) != 0)
            mismatches[id]++;
    }
    return NULL;
}

Test(autograd_dnnl, concurrent_use_from_two_threads) {
    conv_once(&reference);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    /* same shapes, same team size: bit-identical to the single-threaded run. Before primitives
     * got a user-managed scratchpad (dnnl_impl.h, df_dnnl_attr_new) this hung about one run in
     * four in the backward-weights convolution. */
    cr_assert(mismatches[0] == 0 && mismatches[1] == 0, "mismatching runs: %d, %d", mismatches[0],
              mismatches[1]);
}

Test(autograd_dnnl, failing_call_stops_with_message, .signal = SIGABRT) {
    dnnl_memory_desc_t md;
    dnnl_dims_t d = {2, 3};
    /* a negative rank is invalid: stops with "test: <call> failed: invalid_arguments" */
    DF_DNNL_CHECK("test", dnnl_memory_desc_init_by_tag(&md, -1, d, dnnl_f32, dnnl_ab));
}

/* Conv and matmul gradients (forward too) at shapes where oneDNN splits the weight-gradient
 * reductions across threads: bit-identical with 1 and 2 OpenMP threads. Before reductions ran
 * with DF_DNNL_REDUCTION_THREADS, dw differed by up to 4e-3 here. */
typedef struct big_run {
    df_tensor *y, *gx, *gw, *gb, *mm_gb;
} big_run;

static big_run big_once(int threads) {
    omp_set_num_threads(threads);
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    df_tensor *x = randn_tensor(8, DF_DIMS(32, 64, 32, 32));
    df_tensor *w = randn_tensor(9, DF_DIMS(64, 64, 3, 3));
    df_tensor *b = randn_tensor(10, DF_DIMS(64));
    df_tensor *a = randn_tensor(11, DF_DIMS(32768, 64));
    df_tensor *m = randn_tensor(12, DF_DIMS(64, 64));
    df_tensor *ts[] = {x, w, b, a, m};
    for (int i = 0; i < 5; i++) df_tensor_set_requires_grad(ts[i], true);
    df_tensor *y = df_conv2d(x, w, b, p);
    df_tensor *gy = randn_tensor(13, y->ndim, y->shape);
    cr_assert(df_backward_with(y, gy) == DF_OK);
    df_tensor *c = df_matmul(a, m, false, false);
    df_tensor *gc = randn_tensor(14, c->ndim, c->shape);
    cr_assert(df_backward_with(c, gc) == DF_OK);
    big_run r = {df_detach(y), df_detach(x->grad), df_detach(w->grad), df_detach(b->grad),
                 df_detach(m->grad)};
    return r;
}

Test(autograd_dnnl, reductions_independent_of_thread_count) {
    df_scope s = df_scope_begin();
    big_run r1 = big_once(1), r2 = big_once(2);
    check_close("conv y, 1 vs 2 threads", r2.y, r1.y, 0, 0);
    check_close("conv dx, 1 vs 2 threads", r2.gx, r1.gx, 0, 0);
    check_close("conv dw, 1 vs 2 threads", r2.gw, r1.gw, 0, 0);
    check_close("conv db, 1 vs 2 threads", r2.gb, r1.gb, 0, 0);
    check_close("matmul db, 1 vs 2 threads", r2.mm_gb, r1.mm_gb, 0, 0);
    df_scope_end(s);
}
