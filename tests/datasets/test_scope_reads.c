/* test_scope_reads.c — image reads and transforms work inside an open scope (their
 * temporaries are their own; the result belongs to the scope) and leak nothing. */
#include "datasets/datasets.h"
#include "tests/common/check.h"

Test(datasets_scope_reads, decode_in_a_scope) {
    df_mem_stats before = df_mem_get_stats();
    for (int i = 0; i < 3; i++) {
        df_scope s = df_scope_begin();
        df_tensor *img;
        cr_assert_eq(df_image_read(fixture_path("images/rgba8.png"), NULL, &img), DF_OK, "%s",
                     df_last_error());
        cr_assert(img->scoped);
        df_transform t = df_transform_default(8);
        float out[3 * 8 * 8];
        df_philox g;
        df_philox_init(&g, 1, 2);
        df_transform_apply(&t, img, &g, out);
        df_scope_end(s);
    }
    cr_assert_eq(df_mem_get_stats().bytes_in_use, before.bytes_in_use, "a read leaked");
}
