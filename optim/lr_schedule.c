/* lr_schedule.c — diffusers' LR schedules (optimization.py at v0.21: get_scheduler and the
 * get_*_schedule lambdas run by torch's LambdaLR), and --scale_lr.
 *
 * lr(step) = initial_lr * factor(step) in double, step = LambdaLR's last_epoch (0 before the
 * first optimizer step). Warmup, for every kind but `constant`: factor = step / max(1, warmup)
 * while step < warmup. After warmup, with progress = (step - warmup) / max(1, training - warmup):
 *   constant(_with_warmup): 1
 *   linear:                 max(0, (training - step) / max(1, training - warmup))
 *   cosine:                 max(0, 0.5 * (1 + cos(pi * num_cycles * 2 * progress)))
 *   cosine_with_restarts:   0 when progress >= 1, else
 *                           max(0, 0.5 * (1 + cos(pi * ((num_cycles * progress) mod 1))))
 *   polynomial:             lr_end / lr_init when step > training, else
 *                           ((lr_init - lr_end) * (1 - (step - warmup) / (training - warmup))
 *                            ^ power + lr_end) / lr_init
 */
#include "optim/optim_impl.h"

#include <math.h>
#include <string.h>

static const char *const lr_names[DF_LR_COUNT] = {
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
};

const char *df_lr_kind_name(df_lr_kind kind) {
    DF_ASSERT(kind >= 0 && kind < DF_LR_COUNT, "lr schedule kind %d", (int)kind);
    return lr_names[kind];
}

df_status df_lr_schedule_check(const df_lr_schedule *s) {
    if (s->kind < 0 || s->kind >= DF_LR_COUNT)
        return df_error(DF_ERR_INVALID,
                        "lr_scheduler: unknown kind %d (allowed: constant, constant_with_warmup, "
                        "linear, cosine, cosine_with_restarts, polynomial)",
                        (int)s->kind);
    const char *k = lr_names[s->kind];
    if (s->num_warmup_steps < 0)
        return df_error(DF_ERR_INVALID,
                        "lr_scheduler %s: invalid num_warmup_steps %lld (allowed: >= 0)", k,
                        (long long)s->num_warmup_steps);
    bool decays = s->kind >= DF_LR_LINEAR;
    if (decays && s->num_training_steps < 1)
        return df_error(DF_ERR_INVALID,
                        "lr_scheduler %s: invalid num_training_steps %lld (allowed: >= 1)", k,
                        (long long)s->num_training_steps);
    if ((s->kind == DF_LR_COSINE || s->kind == DF_LR_COSINE_WITH_RESTARTS) &&
        (!(s->num_cycles >= 0) || isinf(s->num_cycles)))
        return df_error(DF_ERR_INVALID,
                        "lr_scheduler %s: invalid num_cycles %g (allowed: finite, >= 0)", k,
                        s->num_cycles);
    if (s->kind == DF_LR_POLYNOMIAL) {
        if (s->num_training_steps <= s->num_warmup_steps)
            return df_error(DF_ERR_INVALID,
                            "lr_scheduler polynomial: num_training_steps %lld must exceed "
                            "num_warmup_steps %lld",
                            (long long)s->num_training_steps, (long long)s->num_warmup_steps);
        if (!(s->power >= 0) || isinf(s->power))
            return df_error(DF_ERR_INVALID,
                            "lr_scheduler polynomial: invalid power %g (allowed: finite, >= 0)",
                            s->power);
        if (!(s->lr_end >= 0) || !(s->lr_init > s->lr_end) || isinf(s->lr_init))
            return df_error(DF_ERR_INVALID,
                            "lr_scheduler polynomial: lr_end (%g) must be >= 0 and smaller than "
                            "the initial lr (%g)",
                            s->lr_end, s->lr_init);
    }
    return DF_OK;
}

df_status df_lr_schedule_init(df_lr_schedule *s, const char *name, int64_t num_warmup_steps,
                              int64_t num_training_steps, double lr_init) {
    memset(s, 0, sizeof *s);
    int kind = -1;
    for (int k = 0; k < DF_LR_COUNT; k++)
        if (name && strcmp(name, lr_names[k]) == 0) kind = k;
    if (kind < 0)
        return df_error(DF_ERR_INVALID,
                        "lr_scheduler: unknown name '%s' (allowed: constant, "
                        "constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial)",
                        name ? name : "(null)");
    s->kind = (df_lr_kind)kind;
    s->num_warmup_steps = num_warmup_steps;
    s->num_training_steps = num_training_steps;
    s->num_cycles = kind == DF_LR_COSINE_WITH_RESTARTS ? 1.0 : 0.5;
    s->power = 1.0;
    s->lr_end = 1e-7;
    s->lr_init = lr_init;
    return df_lr_schedule_check(s);
}

static int64_t max_i64(int64_t a, int64_t b) {
    return a > b ? a : b;
}

double df_lr_schedule_factor(const df_lr_schedule *s, int64_t step) {
    const int64_t warm = s->num_warmup_steps, train = s->num_training_steps;
    if (s->kind == DF_LR_CONSTANT) return 1.0;
    if (step < warm) return (double)step / (double)max_i64(1, warm);
    double progress = (double)(step - warm) / (double)max_i64(1, train - warm);
    switch (s->kind) {
    case DF_LR_CONSTANT_WITH_WARMUP: return 1.0;
    case DF_LR_LINEAR: return fmax(0.0, (double)(train - step) / (double)max_i64(1, train - warm));
    case DF_LR_COSINE: return fmax(0.0, 0.5 * (1.0 + cos(M_PI * s->num_cycles * 2.0 * progress)));
    case DF_LR_COSINE_WITH_RESTARTS: {
        if (progress >= 1.0) return 0.0;
        double x = s->num_cycles * progress;
        double frac = fmod(x, 1.0); /* Python's % 1.0 for x >= 0 */
        return fmax(0.0, 0.5 * (1.0 + cos(M_PI * frac)));
    }
    case DF_LR_POLYNOMIAL: {
        if (step > train) return s->lr_end / s->lr_init;
        double lr_range = s->lr_init - s->lr_end;
        double decay_steps = (double)(train - warm);
        double pct_remaining = 1.0 - (double)(step - warm) / decay_steps;
        double decay = lr_range * pow(pct_remaining, s->power) + s->lr_end;
        return decay / s->lr_init;
    }
    default: DF_ASSERT(0, "lr schedule kind %d", (int)s->kind);
    }
    return 0.0;
}

void df_lr_schedule_apply(const df_lr_schedule *s, df_optim *o, int64_t step) {
    double f = df_lr_schedule_factor(s, step);
    for (int g = 0; g < df_optim_group_count(o); g++) {
        df_status st = df_optim_set_lr(o, g, df_optim_initial_lr(o, g) * f);
        DF_ASSERT(st == DF_OK, "lr schedule produced an invalid lr: %s", df_last_error());
    }
}

double df_scale_lr(double lr, int train_batch_size, int gradient_accumulation_steps,
                   int num_processes) {
    return lr * gradient_accumulation_steps * train_batch_size * num_processes;
}
