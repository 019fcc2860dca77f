/* test_dist.c — train/dist.c in a process no launcher started: rank 0 of 1, MPI untouched, the
 * collectives are identities (the multi-rank behaviour is tests/mpi's). */
#include "tests/common/check.h"
#include "train/train.h"

#include <stdlib.h>

Test(train_dist, single_process_is_rank_0_of_1) {
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("PMIX_RANK");
    unsetenv("PMI_SIZE");
    unsetenv("PMI_RANK");
    int rank = -1, world = -1;
    cr_assert_eq(df_dist_init(&rank, &world), DF_OK, "%s", df_last_error());
    cr_assert_eq(rank, 0);
    cr_assert_eq(world, 1);
    cr_assert_not(df_dist_active());
    float x[3] = {1.5f, -2.0f, 3.25f};
    cr_assert_eq(df_dist_sum_f32(x, 3), DF_OK);
    cr_assert(x[0] == 1.5f && x[1] == -2.0f && x[2] == 3.25f);
    double v[2] = {4, 5}, out[2] = {0};
    cr_assert_eq(df_dist_gather_f64(v, 2, out), DF_OK);
    cr_assert(out[0] == 4 && out[1] == 5);
    char s[8] = "abc";
    cr_assert_eq(df_dist_bcast_str(s, sizeof s), DF_OK);
    cr_assert_str_eq(s, "abc");
    df_dist_barrier();
    df_dist_finalize();
}
