/* sd_prompt.c — a pipeline's prompts to text embeddings, as diffusers v0.21.4's encode_prompt:
 * the tokenizer pads to model_max_length (77) and truncates (with a warning naming how many
 * tokens were dropped), the text encoder's last_hidden_state is the embedding; with guidance the
 * negative prompt ("" when none) is encoded the same way. clip_skip k > 0 takes
 * hidden_states[-(k + 1)] through final_layer_norm for the prompt only, as the diffusers versions
 * that added clip_skip do (their negative prompt keeps the last layer).
 */
#include "infer/infer.h"
#include "nn/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The padded ids of text as a (1, L) I64 tensor (scope rule); warns when text was truncated. */
static df_status tokenize(df_clip_tokenizer *tok, const char *text, const char *what,
                          df_tensor **out) {
    int max = df_clip_tokenizer_max_length(tok);
    int32_t *ids = NULL;
    int n = 0;
    DF_TRY(df_clip_tokenizer_encode(tok, text, &ids, &n));
    free(ids);
    if (n > max - 2)
        fprintf(stderr,
                "warning: the %s is %d tokens; CLIP reads %d, so the last %d were dropped\n", what,
                n, max - 2, n - (max - 2));
    df_tensor *t = df_tensor_new(DF_DTYPE_I64, DF_DIMS(1, max));
    int64_t *mask = malloc(sizeof(int64_t) * (size_t)max);
    if (!mask) return df_error(DF_ERR_NOMEM, "out of memory");
    df_status st = df_clip_tokenizer_call(tok, text, max, t->data, mask);
    free(mask);
    *out = t;
    return st;
}

df_status df_sd_encode_prompt(df_sd_pipeline *p, const char *prompt, const char *negative,
                              int clip_skip, bool guidance, df_tensor **cond, df_tensor **uncond) {
    *cond = NULL;
    if (uncond) *uncond = NULL;
    df_tensor *ids;
    DF_TRY(tokenize(p->tokenizer, prompt ? prompt : "", "prompt", &ids));
    DF_TRY(df_sd_encode_ids(p, ids, clip_skip, cond));
    if (!guidance || !uncond) return DF_OK;
    DF_TRY(tokenize(p->tokenizer, negative ? negative : "", "negative prompt", &ids));
    return df_sd_encode_ids(p, ids, 0, uncond);
}
