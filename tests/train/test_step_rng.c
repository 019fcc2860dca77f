/* test_step_rng.c — the per-step random streams (df_step_rng_init): rank 0 draws exactly the
 * streams a run without ranks drew (purpose << 56 | step), so world size 1 is unchanged; other
 * ranks and other steps draw other numbers; a stream depends only on (seed, rank, step). */
#include "tests/common/check.h"
#include "train/train.h"

Test(train_step_rng, rank_zero_is_the_stream_without_ranks) {
    df_step_rng r;
    df_step_rng_init(&r, 42, 0, 1234);
    df_philox want[3];
    for (uint64_t purpose = 1; purpose <= 3; purpose++)
        df_philox_init(&want[purpose - 1], 42, purpose << 56 | 1234);
    const df_philox *got[3] = {&r.noise, &r.timesteps, &r.dropout};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(got[i]->key, want[i].key);
        cr_assert_eq(got[i]->stream, want[i].stream, "stream %d", i);
        cr_assert_eq(df_philox_u32((df_philox *)got[i]), df_philox_u32(&want[i]));
    }
}

Test(train_step_rng, ranks_and_steps_draw_apart) {
    df_step_rng a, b, c, d;
    df_step_rng_init(&a, 7, 0, 5);
    df_step_rng_init(&b, 7, 1, 5);
    df_step_rng_init(&c, 7, 0, 6);
    df_step_rng_init(&d, 7, 1, 5);
    uint32_t xa = df_philox_u32(&a.noise), xb = df_philox_u32(&b.noise);
    uint32_t xc = df_philox_u32(&c.noise), xd = df_philox_u32(&d.noise);
    cr_assert_neq(xa, xb, "rank 1 draws other noise than rank 0");
    cr_assert_neq(xa, xc, "step 6 draws other noise than step 5");
    cr_assert_eq(xb, xd, "the same (seed, rank, step) draws the same");
    cr_assert_neq(a.noise.stream, b.timesteps.stream);
    /* the rank's bits do not overlap the step's: rank 1 at step 0 is not any step of rank 0 */
    df_step_rng e;
    df_step_rng_init(&e, 7, 1, 0);
    cr_assert_eq(e.noise.stream, (1ull << 56) | (1ull << 40));
}
