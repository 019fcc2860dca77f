/* transformer.c — diffusers BasicTransformerBlock and Transformer2DModel (continuous input).
 *
 * BasicTransformerBlock (norm_type "layer_norm", eps 1e-5, GEGLU feed-forward ×4):
 *   h = attn1(norm1(h), only_cross_attention ? ctx : None) + h
 *   h = attn2(norm2(h), ctx) + h
 *   h = ff(norm3(h)) + h,   ff(x) = net.2(a * gelu(g)),  (a, g) = chunk(net.0.proj(x), 2, -1)
 * Transformer2DModel: GroupNorm(eps 1e-6) -> proj_in (1x1 conv on NCHW, or linear after
 * flattening to (N, HW, C) when use_linear_projection) -> blocks -> proj_out -> + residual.
 * With gradient_checkpointing each BasicTransformerBlock is one df_checkpoint segment (as
 * diffusers checkpoints them), recomputed in backward.
 */
#include "nn/nn.h"

#include <stdlib.h>

static void block_init(df_transformer_block *b, df_params *r, const char *name, int dim, int heads,
                       int cross_dim, bool only_cross) {
    char buf[DF_NAME_MAX];
    int dim_head = dim / heads;
    df_layernorm_mod_init(&b->norm1, r, df_name_join(buf, sizeof buf, name, "norm1"), dim, 1e-5f);
    df_attention_config a = {.query_dim = dim,
                             .cross_dim = only_cross ? cross_dim : 0,
                             .heads = heads,
                             .dim_head = dim_head,
                             .qkv_bias = false,
                             .rescale_output_factor = 1.0f};
    df_attention_init(&b->attn1, r, df_name_join(buf, sizeof buf, name, "attn1"), a);
    df_layernorm_mod_init(&b->norm2, r, df_name_join(buf, sizeof buf, name, "norm2"), dim, 1e-5f);
    a.cross_dim = cross_dim;
    df_attention_init(&b->attn2, r, df_name_join(buf, sizeof buf, name, "attn2"), a);
    df_layernorm_mod_init(&b->norm3, r, df_name_join(buf, sizeof buf, name, "norm3"), dim, 1e-5f);
    df_linear_mod_init(&b->ff_proj, r, df_name_join(buf, sizeof buf, name, "ff.net.0.proj"), dim,
                       2 * 4 * dim, true);
    df_linear_mod_init(&b->ff_out, r, df_name_join(buf, sizeof buf, name, "ff.net.2"), 4 * dim, dim,
                       true);
    b->only_cross_attention = only_cross;
}

/* One block on in = {h, ctx (or NULL)}, user = the df_transformer_block. */
static df_tensor *block_run(df_tensor *const *in, const void *user) {
    const df_transformer_block *b = user;
    df_tensor *h = in[0], *ctx = in[1];
    df_scope scope = df_scope_begin();
    df_tensor *a = df_attention_forward(&b->attn1, df_norm_mod_forward(&b->norm1, h),
                                        b->only_cross_attention ? ctx : NULL);
    h = df_add(a, h);
    h = df_add(df_attention_forward(&b->attn2, df_norm_mod_forward(&b->norm2, h), ctx), h);
    df_tensor *parts[2];
    df_chunk(df_linear_mod_forward(&b->ff_proj, df_norm_mod_forward(&b->norm3, h)), 2, -1, parts);
    df_tensor *ff = df_linear_mod_forward(&b->ff_out, df_mul(parts[0], df_gelu(parts[1])));
    return df_scope_end_keep(scope, df_add(ff, h));
}

void df_transformer2d_init(df_transformer2d *m, df_params *r, const char *name,
                           df_transformer2d_config c) {
    char buf[DF_NAME_MAX];
    int ch = c.channels;
    df_groupnorm_mod_init(&m->norm, r, df_name_join(buf, sizeof buf, name, "norm"), c.norm_groups,
                          ch, 1e-6f);
    m->use_linear_projection = c.use_linear_projection;
    if (c.use_linear_projection)
        df_linear_mod_init(&m->proj_in_linear, r, df_name_join(buf, sizeof buf, name, "proj_in"),
                           ch, ch, true);
    else
        df_conv_mod_init(&m->proj_in_conv, r, df_name_join(buf, sizeof buf, name, "proj_in"), ch,
                         ch, 1, 1, 0, true);
    m->n_blocks = c.layers;
    m->gradient_checkpointing = false;
    m->blocks = calloc((size_t)c.layers, sizeof *m->blocks);
    DF_ASSERT(m->blocks || c.layers == 0, "out of memory");
    for (int i = 0; i < c.layers; i++)
        block_init(&m->blocks[i], r, df_name_index(buf, sizeof buf, name, "transformer_blocks", i),
                   ch, c.heads, c.cross_dim, c.only_cross_attention);
    if (c.use_linear_projection)
        df_linear_mod_init(&m->proj_out_linear, r, df_name_join(buf, sizeof buf, name, "proj_out"),
                           ch, ch, true);
    else
        df_conv_mod_init(&m->proj_out_conv, r, df_name_join(buf, sizeof buf, name, "proj_out"), ch,
                         ch, 1, 1, 0, true);
}

void df_transformer2d_free(df_transformer2d *m) {
    free(m->blocks);
    m->blocks = NULL;
}

df_tensor *df_transformer2d_forward(const df_transformer2d *m, df_tensor *x, df_tensor *context) {
    df_scope scope = df_scope_begin();
    if (x->block) x = df_to_plain(x); /* tokens are rows of a plain layout */
    int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], w = x->shape[3];
    df_tensor *hs = df_norm_mod_forward(&m->norm, x);
    if (!m->use_linear_projection) hs = df_conv_mod_forward(&m->proj_in_conv, hs);
    hs = df_reshape(df_permute(hs, (int[]){0, 2, 3, 1}), DF_DIMS(n, h * w, c));
    if (m->use_linear_projection) hs = df_linear_mod_forward(&m->proj_in_linear, hs);
    for (int i = 0; i < m->n_blocks; i++) {
        df_tensor *in[2] = {hs, context};
        hs = m->gradient_checkpointing ? df_checkpoint(block_run, &m->blocks[i], 2, in)
                                       : block_run(in, &m->blocks[i]);
    }
    if (m->use_linear_projection) hs = df_linear_mod_forward(&m->proj_out_linear, hs);
    hs = df_permute(df_reshape(hs, DF_DIMS(n, h, w, c)), (int[]){0, 3, 1, 2});
    if (!m->use_linear_projection) hs = df_conv_mod_forward(&m->proj_out_conv, hs);
    return df_scope_end_keep(scope, df_add(hs, x));
}
