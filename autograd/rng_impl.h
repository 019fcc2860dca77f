/* rng_impl.h — generator internals shared inside autograd/ and with its tests (the known-answer
 * tests of the Philox block function). Internal: never included outside autograd/ and tests. */
#ifndef DF_RNG_IMPL_H
#define DF_RNG_IMPL_H

#include <stdint.h>

/* Philox4x32-10 of one 128-bit counter under a 64-bit key (Random123's philox4x32(ctr, key) with
 * 10 rounds): words are little-end first, ctr[0] and key[0] the low words. */
void df_philox_block(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

#endif
