/* grad_accum.c — gradient accumulation over k micro-batches: each micro-batch loss is scaled by
 * 1/k before its backward, gradients accumulate (+=) across the k backwards, and the optimizer
 * steps after the k-th (accelerate's `accumulate` with gradient_accumulation_steps = k). */
#include "optim/optim_impl.h"

df_status df_grad_accum_init(df_grad_accum *a, int k) {
    if (k < 1)
        return df_error(DF_ERR_INVALID,
                        "grad_accum: invalid gradient_accumulation_steps %d (allowed: >= 1)", k);
    a->k = k;
    a->micro = 0;
    return DF_OK;
}

float df_grad_accum_loss_scale(const df_grad_accum *a) {
    return 1.0f / (float)a->k;
}

bool df_grad_accum_tick(df_grad_accum *a) {
    DF_ASSERT(a->k >= 1, "grad_accum: not initialised");
    if (++a->micro < a->k) return false;
    a->micro = 0;
    return true;
}
