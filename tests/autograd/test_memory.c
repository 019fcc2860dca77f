/* test_memory.c — the memory model of design §3 on a small conv net (conv -> group_norm -> silu
 * -> conv -> mse, flat parameters, an SGD update): over 200 forward/backward steps the process's
 * resident set does not grow and, after the first steps, the pool makes no system allocation. */
#include "tests/common/check.h"

#include <stdio.h>
#include <unistd.h>

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

Test(autograd_memory, conv_net_rss_does_not_grow, .timeout = 120) {
    df_tensor *w1 = randn_tensor(1, DF_DIMS(16, 3, 3, 3)), *b1 = randn_tensor(2, DF_DIMS(16));
    df_tensor *gw = df_tensor_new_owned(DF_DTYPE_F32, DF_DIMS(16)),
              *gb = randn_tensor(3, DF_DIMS(16));
    df_tensor_fill_(gw, 1.0);
    df_tensor *w2 = randn_tensor(4, DF_DIMS(3, 16, 3, 3)), *b2 = randn_tensor(5, DF_DIMS(3));
    df_tensor *params[] = {w1, b1, gw, gb, w2, b2};
    df_flat flat;
    cr_assert_eq(df_flat_init(&flat, params, 6), DF_OK);
    df_conv2d_params p = df_conv2d_default();
    p.padding[0] = p.padding[1] = 1;
    long rss_warm = 0;
    uint64_t allocs_warm = 0;
    for (int step = 0; step < 200; step++) {
        df_scope s = df_scope_begin();
        df_tensor *x = randn_tensor(100 + step, DF_DIMS(2, 3, 8, 8));
        df_tensor *h = df_conv2d(x, w1, b1, p);
        h = df_silu(df_group_norm(h, 4, gw, gb, 1e-5f));
        df_tensor *loss = df_mse_loss(df_conv2d(h, w2, b2, p), x, true);
        cr_assert_eq(df_backward(loss), DF_OK);
        df_scope_end(s);
        float *d = df_flat_data(&flat), *g = df_flat_grad(&flat);
        for (int64_t i = 0; i < flat.numel; i++) d[i] -= 1e-3f * g[i];
        df_flat_zero_grad(&flat);
        if (step == 19) {
            rss_warm = rss_kib();
            allocs_warm = df_mem_get_stats().system_allocs;
        }
    }
    long rss_end = rss_kib();
    cr_log_info("RSS after 20 steps %ld KiB, after 200 %ld KiB", rss_warm, rss_end);
    cr_expect_leq(rss_end - rss_warm, 1024, "RSS grew by %ld KiB between steps 20 and 200",
                  rss_end - rss_warm);
    cr_expect_eq(df_mem_get_stats().system_allocs, allocs_warm,
                 "the pool allocated after warm-up (%llu -> %llu)", (unsigned long long)allocs_warm,
                 (unsigned long long)df_mem_get_stats().system_allocs);
    for (int i = 0; i < 6; i++) df_tensor_free(params[i]);
    df_flat_free(&flat);
}
