/* memory_plan.c — `diffusion train --dry-run`: what a run will hold, from the built model and the
 * config, before the trainer allocates its state: the weights (trainable F32, frozen in their
 * stored dtype), their gradients, the optimizer's state (Adam/AdamW two values per trainable
 * weight, Lion one, SGD without momentum none), the EMA copy. Activations depend on the batch,
 * the resolution and gradient_checkpointing; they are not estimated here but measured by every
 * step (metrics.jsonl: mem_peak_mib - mem_mib). */
#include "train/train.h"

#include <sys/resource.h>

static double mib(double bytes) {
    return bytes / 1048576.0;
}

df_status df_train_memory_plan(const df_config *cfg, const df_recipe *r, FILE *f) {
    int64_t n_train = 0, n_frozen = 0;
    double b_frozen = 0;
    for (int i = 0; i < r->params->n; i++) {
        const df_tensor *t = r->params->items[i].tensor;
        if (r->params->items[i].trainable) {
            n_train += t->numel;
        } else {
            n_frozen += t->numel;
            b_frozen += (double)t->numel * (double)df_dtype_size(t->dtype);
        }
    }
    df_optim_kind kind;
    DF_TRY(df_optim_kind_parse(df_config_str(cfg, "optimizer"), &kind));
    int slots = kind == DF_OPTIM_ADAM || kind == DF_OPTIM_ADAMW ? 2 : kind == DF_OPTIM_LION ? 1 : 0;
    bool ema = df_config_bool(cfg, "use_ema");
    double w = (double)n_train * sizeof(float);
    double total = w + b_frozen + w + slots * w + (ema ? w : 0);
    struct rusage ru;
    double rss = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss / 1024.0 : 0;
    fprintf(f, "memory plan (%s):\n", r->name);
    fprintf(f, "  %-24s %14lld values %10.1f MiB\n", "trainable weights (F32)", (long long)n_train,
            mib(w));
    fprintf(f, "  %-24s %14lld values %10.1f MiB\n", "frozen weights", (long long)n_frozen,
            mib(b_frozen));
    fprintf(f, "  %-24s %21s %10.1f MiB\n", "gradients (F32)", "", mib(w));
    fprintf(f, "  %-24s %14d / weight %10.1f MiB\n", "optimizer state", slots, mib(slots * w));
    fprintf(f, "  %-24s %21s %10.1f MiB\n", ema ? "EMA weights (F32)" : "EMA weights (off)", "",
            ema ? mib(w) : 0.0);
    fprintf(f, "  %-24s %21s %10.1f MiB\n", "total before activations", "", mib(total));
    fprintf(f,
            "  activations: per step, with batch %lld at %lld px and gradient_checkpointing %s; "
            "measured by every step (metrics.jsonl: mem_peak_mib - mem_mib)\n",
            (long long)df_config_int(cfg, "train_batch_size"),
            (long long)df_config_int(cfg, "resolution"),
            df_config_bool(cfg, "gradient_checkpointing") ? "on" : "off");
    fprintf(f, "  resident now (model built): %.1f MiB peak RSS\n", rss);
    return DF_OK;
}
