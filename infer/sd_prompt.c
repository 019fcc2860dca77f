/* sd_prompt.c — a pipeline's prompts to text embeddings. A prompt may use A1111's attention
 * syntax and be longer than CLIP's window (infer/prompt_weights.c, docs/prompts.md): it becomes
 * chunks of 75 tokens, each wrapped in start / end tokens, encoded and concatenated; the
 * negative prompt ("" when none) gets as many chunks as the prompt (and the prompt as many as
 * the negative prompt). With no syntax and at most 75 tokens this is exactly diffusers v0.21.4's
 * encode_prompt: the tokenizer pads to 77 and the text encoder's last_hidden_state is the
 * embedding, bit for bit. clip_skip k > 0 takes hidden_states[-(k + 1)] through
 * final_layer_norm for the prompt only, as the diffusers versions that added clip_skip do (their
 * negative prompt keeps the last layer). With textual-inversion tokens added, a multi-vector
 * token is first expanded in both prompts (infer/embeddings.c, diffusers' maybe_convert_prompt).
 */
#include "infer/infer.h"
#include "nn/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>

df_status df_sd_encode_prompt(df_sd_pipeline *p, const char *prompt, const char *negative,
                              int clip_skip, bool guidance, df_tensor **cond, df_tensor **uncond) {
    *cond = NULL;
    if (uncond) *uncond = NULL;
    df_clip_text *te = p->text_encoder.clip_text;
    int layers = te->config.num_hidden_layers;
    if (clip_skip < 0 || clip_skip >= layers)
        return df_error(DF_ERR_INVALID, "clip skip %d: the text encoder has %d layers (0 to %d)",
                        clip_skip, layers, layers - 1);
    df_prompt_tokens pos = {0}, neg = {0};
    bool cfg = guidance && uncond;
    char *xp = NULL, *xn = NULL; /* multi-vector textual-inversion tokens expanded */
    df_status st = DF_OK;
    if (df_clip_tokenizer_len(p->tokenizer) > df_clip_tokenizer_vocab_size(p->tokenizer)) {
        st = df_prompt_expand_vectors(p->tokenizer, prompt ? prompt : "", &xp);
        if (st == DF_OK && cfg)
            st = df_prompt_expand_vectors(p->tokenizer, negative ? negative : "", &xn);
        prompt = xp;
        negative = xn;
    }
    if (st == DF_OK) st = df_prompt_tokens_parse(p->tokenizer, prompt ? prompt : "", 1, &pos);
    if (st == DF_OK && cfg)
        st = df_prompt_tokens_parse(p->tokenizer, negative ? negative : "", pos.n_chunks, &neg);
    if (st == DF_OK && cfg && neg.n_chunks > pos.n_chunks)
        st = df_prompt_tokens_pad(p->tokenizer, &pos, neg.n_chunks);
    if (st == DF_OK && pos.n_chunks > 1)
        fprintf(stderr, "note: the prompt takes %d chunks of %d tokens (docs/prompts.md)\n",
                pos.n_chunks, pos.length - 2);
    if (st == DF_OK) st = df_prompt_embed(te, &pos, clip_skip, cond);
    if (st == DF_OK && cfg) st = df_prompt_embed(te, &neg, 0, uncond);
    df_prompt_tokens_free(&pos);
    df_prompt_tokens_free(&neg);
    free(xp);
    free(xn);
    return st;
}
