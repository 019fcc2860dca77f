/* binary.c — add, sub, mul, div with NumPy broadcasting, and the scalar forms add_scalar,
 * mul_scalar, rsub_scalar, rdiv_scalar (torch.add/sub/mul/div, `s - t`, `s / t`).
 *
 *   out = a op b                   a (..A), b (..B) -> out (broadcast(A, B))
 *   add: ga += g            gb += g
 *   sub: ga += g            gb += -g
 *   mul: ga += g * b        gb += g * a
 *   div: ga += g / b        gb += -g * ((a / b) / b)        (torch's div_tensor_other_backward)
 * A gradient for a broadcast input is summed over its repeated dims (df_reduce_sum, in double).
 * Channel-blocked operands (df_tensor.block) are looped over as (N, C / B, H, W, B); plain
 * operands meet them as described at loop_shape; the output is blocked when an operand is.
 * Saved: nothing beyond the inputs, which the node retains (mul/div read them in backward).
 *
 * Scalar forms, s a float:
 *   add_scalar  a + s          ga += g
 *   mul_scalar  a * s          ga += g * s
 *   rsub_scalar s - a          ga += -g
 *   rdiv_scalar (1 / a) * s    ga += -(g * s) * (r * r), r = 1 / a
 * rdiv follows Python's `s / t`, which torch evaluates as reciprocal(t) * s; the gradient is the
 * chain of reciprocal's and mul's backward in the same order, so values match torch bit for bit.
 */
#include "autograd/ops/broadcast_impl.h"

#include <string.h>

typedef enum bin_kind { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV } bin_kind;

typedef struct binary_params {
    bin_kind kind;
} binary_params;

/* ------------------------------------------------------------------ loops -------------------- */

/* o[i] = EXPR(x, y) with x = a[i * sa], y = b[i * sb]; strides 0/1 get vectorised loops. */
#define LOOP2(EXPR)                                                                                \
    do {                                                                                           \
        if (sa == 1 && sb == 1) {                                                                  \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                  \
                float x = a[i], y = b[i];                                                          \
                o[i] = (EXPR);                                                                     \
            }                                                                                      \
        } else if (sa == 1 && sb == 0) {                                                           \
            const float y = b[0];                                                                  \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                  \
                float x = a[i];                                                                    \
                o[i] = (EXPR);                                                                     \
            }                                                                                      \
        } else if (sa == 0 && sb == 1) {                                                           \
            const float x = a[0];                                                                  \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                  \
                float y = b[i];                                                                    \
                o[i] = (EXPR);                                                                     \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float x = a[i * sa], y = b[i * sb];                                                \
                o[i] = (EXPR);                                                                     \
            }                                                                                      \
        }                                                                                          \
    } while (0)

typedef struct fwd_ctx {
    bin_kind kind;
    float *o;
    const float *a, *b;
    int64_t sa, sb;
} fwd_ctx;

static void fwd_row(const void *c_, const int64_t *off, int64_t n) {
    const fwd_ctx *c = c_;
    float *o = c->o + off[0];
    const float *a = c->a + off[1], *b = c->b + off[2];
    int64_t sa = c->sa, sb = c->sb;
    switch (c->kind) {
    case BIN_ADD: LOOP2(x + y); break;
    case BIN_SUB: LOOP2(x - y); break;
    case BIN_MUL: LOOP2(x * y); break;
    case BIN_DIV: LOOP2(x / y); break;
    }
}

/* The gradient term of input `which` (0 = a, 1 = b) at every output element, written (or added,
 * when `acc`) into d (output-shaped): d[i] (+)= EXPR(gv, x, y). */
typedef struct bwd_ctx {
    bin_kind kind;
    int which;
    bool acc;
    float *d;
    const float *g, *a, *b;
    int64_t sa, sb;
} bwd_ctx;

#define LOOP3(EXPR)                                                                                \
    do {                                                                                           \
        if (acc) {                                                                                 \
            LOOP2_G(o[i] += (EXPR));                                                               \
        } else {                                                                                   \
            LOOP2_G(o[i] = (EXPR));                                                                \
        }                                                                                          \
    } while (0)
#define LOOP2_G(STMT)                                                                              \
    do {                                                                                           \
        if (sa == 1 && sb == 1) {                                                                  \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                  \
                float gv = g[i], x = a[i], y = b[i];                                               \
                (void)x, (void)y;                                                                  \
                STMT;                                                                              \
            }                                                                                      \
        } else if (sa == 1 && sb == 0) {                                                           \
            const float y = b[0];                                                                  \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                  \
                float gv = g[i], x = a[i];                                                         \
                (void)x, (void)y;                                                                  \
                STMT;                                                                              \
            }                                                                                      \
        } else if (sa == 0 && sb == 1) {                                                           \
            const float x = a[0];                                                                  \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                  \
                float gv = g[i], y = b[i];                                                         \
                (void)x, (void)y;                                                                  \
                STMT;                                                                              \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t i = 0; i < n; i++) {                                                      \
                float gv = g[i], x = a[i * sa], y = b[i * sb];                                     \
                (void)x, (void)y;                                                                  \
                STMT;                                                                              \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void bwd_row(const void *c_, const int64_t *off, int64_t n) {
    const bwd_ctx *c = c_;
    float *o = c->d + off[0];
    const float *g = c->g + off[1], *a = c->a + off[2], *b = c->b + off[3];
    int64_t sa = c->sa, sb = c->sb;
    bool acc = c->acc;
    switch (c->kind * 2 + c->which) {
    case BIN_ADD * 2 + 0:
    case BIN_ADD * 2 + 1:
    case BIN_SUB * 2 + 0: LOOP3(gv); break;
    case BIN_SUB * 2 + 1: LOOP3(-gv); break;
    case BIN_MUL * 2 + 0: LOOP3(gv * y); break;
    case BIN_MUL * 2 + 1: LOOP3(gv * x); break;
    case BIN_DIV * 2 + 0: LOOP3(gv / y); break;
    case BIN_DIV * 2 + 1: LOOP3(-gv * ((x / y) / y)); break;
    }
}

/* ------------------------------------------------------------------ binary op ---------------- */

/* The shape the loops see when the output has channel block B (0: logical shapes throughout).
 * A blocked (N, C, H, W) is the row-major (N, C / B, H, W, B); a plain operand, read against
 * such an output with its shape right-aligned to (n, c, h, w), is (n, 1, h, w, 1) when it
 * broadcasts over channels (c = 1) and (n, C / B, 1, 1, B) when it has one value per channel
 * and no spatial extent (a bias, a time embedding): in both its row-major data already has
 * that shape. Returns the ndim, or -1 for a plain operand with channels and space (which the
 * op converts to blocked first). */
static int loop_shape(int ndim, const int64_t *shape, int block, int out_block, int64_t *out) {
    if (!out_block) {
        memcpy(out, shape, sizeof(int64_t) * (size_t)ndim);
        return ndim;
    }
    int64_t s4[4] = {1, 1, 1, 1};
    for (int i = 0; i < ndim; i++) s4[4 - ndim + i] = shape[i];
    int64_t lanes = block || s4[1] > 1 ? out_block : 1;
    if (!block && s4[1] > 1 && (s4[2] > 1 || s4[3] > 1)) return -1;
    int64_t r[5] = {s4[0], s4[1] / lanes, s4[2], s4[3], lanes};
    memcpy(out, r, sizeof r);
    return 5;
}

/* loop_shape of tensor t (a node's input may be a header without data: its shape and block
 * are kept). */
static int t_loop_shape(const df_tensor *t, int out_block, int64_t *out) {
    return loop_shape(t->ndim, t->shape, t->block, out_block, out);
}

static void binary_forward(bin_kind kind, df_tensor *out, const df_tensor *a, const df_tensor *b) {
    int64_t so[DF_MAX_DIMS], sa[DF_MAX_DIMS], sb[DF_MAX_DIMS];
    int no = t_loop_shape(out, out->block, so), na = t_loop_shape(a, out->block, sa),
        nb = t_loop_shape(b, out->block, sb);
    df_bcast bc;
    df_bcast_init(&bc, no, so, 3, (int[]){no, na, nb}, (const int64_t *[]){so, sa, sb});
    int last = bc.ndim - 1;
    fwd_ctx c = {kind, df_f32(out), df_f32(a), df_f32(b), bc.stride[1][last], bc.stride[2][last]};
    df_bcast_run(&bc, fwd_row, &c);
}

static void binary_backward(df_node *n, const df_tensor *g) {
    const binary_params *p = n->state;
    const df_tensor *a = n->inputs[0], *b = n->inputs[1];
    int64_t sg[DF_MAX_DIMS], sa[DF_MAX_DIMS], sb[DF_MAX_DIMS], si[DF_MAX_DIMS];
    int ng = t_loop_shape(g, g->block, sg), na = t_loop_shape(a, g->block, sa),
        nb = t_loop_shape(b, g->block, sb);
    for (int which = 0; which < 2; which++) {
        df_tensor *gi = df_node_grad(n, which);
        if (!gi) continue;
        int ni = t_loop_shape(gi, g->block, si);
        bool same = ni == ng && gi->numel == g->numel;
        bool plain = p->kind == BIN_ADD || p->kind == BIN_SUB;
        double sign = (p->kind == BIN_SUB && which == 1) ? -1.0 : 1.0;
        if (plain && !same) { /* the sum of ±g over the repeated dims */
            df_reduce_sum(df_f32(g), ng, sg, df_f32(gi), ni, si, sign, true);
            continue;
        }
        if (plain) { /* ±g itself: add and sub never read their inputs (kept as shapes only) */
            float *d = df_f32(gi);
            const float *gv = df_f32(g);
            float sgn = (float)sign;
#pragma omp parallel for simd schedule(static) if (g->numel > 32768)
            for (int64_t i = 0; i < g->numel; i++) d[i] += sgn * gv[i];
            continue;
        }
        df_bcast bc;
        df_bcast_init(&bc, ng, sg, 4, (int[]){ng, ng, na, nb}, (const int64_t *[]){sg, sg, sa, sb});
        int last = bc.ndim - 1;
        df_tensor *tmp = same ? NULL : df_tensor_new_unscoped(DF_DTYPE_F32, ng, sg);
        bwd_ctx c = {p->kind,           which,     same,      df_f32(same ? gi : tmp),
                     df_f32(g),         df_f32(a), df_f32(b), bc.stride[2][last],
                     bc.stride[3][last]};
        df_bcast_run(&bc, bwd_row, &c);
        if (tmp) {
            df_reduce_sum(df_f32(tmp), ng, sg, df_f32(gi), ni, si, 1.0, true);
            df_tensor_free(tmp);
        }
    }
}

static const df_op add_op = {"add", binary_backward, NULL};
static const df_op sub_op = {"sub", binary_backward, NULL};
static const df_op mul_op = {"mul", binary_backward, NULL};
static const df_op div_op = {"div", binary_backward, NULL};

/* The output's channel block: a blocked operand's (both blocked: equal blocks). */
static int binary_block(const char *opname, const df_tensor *a, const df_tensor *b, int nd) {
    DF_ASSERT(!a->block || !b->block || a->block == b->block,
              "%s: operands blocked by nChw%dc and nChw%dc", opname, a->block, b->block);
    int block = a->block ? a->block : b->block;
    DF_ASSERT(!block || nd == 4, "%s: a channel-blocked operand broadcast to %d dims", opname, nd);
    return block;
}

static df_tensor *binary(const df_op *op, bin_kind kind, df_tensor *a, df_tensor *b) {
    DF_ASSERT_F32_ANY_LAYOUT(op->name, a);
    DF_ASSERT_F32_ANY_LAYOUT(op->name, b);
    int nd;
    int64_t shape[DF_MAX_DIMS], tmp[DF_MAX_DIMS];
    char sa[64], sb[64];
    DF_ASSERT(df_bcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape),
              "%s: shapes %s and %s do not broadcast", op->name, df_shape_str(a, sa, sizeof sa),
              df_shape_str(b, sb, sizeof sb));
    int block = binary_block(op->name, a, b, nd);
    /* a plain operand with channels and space meets a blocked one in blocked layout */
    if (block && t_loop_shape(a, block, tmp) < 0) a = df_to_blocked(a);
    if (block && t_loop_shape(b, block, tmp) < 0) b = df_to_blocked(b);
    DF_ASSERT(t_loop_shape(a, block, tmp) >= 0 && t_loop_shape(b, block, tmp) >= 0,
              "%s: shapes %s and %s: a plain operand that cannot meet a channel-blocked one",
              op->name, df_shape_str(a, sa, sizeof sa), df_shape_str(b, sb, sizeof sb));
    df_tensor *out = df_tensor_new(DF_DTYPE_F32, nd, shape);
    out->block = block;
    binary_forward(kind, out, a, b);
    /* add and sub need only shapes in backward; mul and div need both values */
    unsigned keep = (kind == BIN_ADD || kind == BIN_SUB) ? 0u : 3u;
    df_node *n = df_node_new_keep(op, out, 2, (df_tensor *[]){a, b}, sizeof(binary_params), keep);
    if (n) *(binary_params *)n->state = (binary_params){kind};
    return out;
}

df_tensor *df_add(df_tensor *a, df_tensor *b) {
    return binary(&add_op, BIN_ADD, a, b);
}
df_tensor *df_sub(df_tensor *a, df_tensor *b) {
    return binary(&sub_op, BIN_SUB, a, b);
}
df_tensor *df_mul(df_tensor *a, df_tensor *b) {
    return binary(&mul_op, BIN_MUL, a, b);
}
df_tensor *df_div(df_tensor *a, df_tensor *b) {
    return binary(&div_op, BIN_DIV, a, b);
}

/* ------------------------------------------------------------------ scalar forms ------------- */

typedef enum scal_kind { SCAL_ADD, SCAL_MUL, SCAL_RSUB, SCAL_RDIV } scal_kind;

typedef struct scalar_params {
    scal_kind kind;
    float s;
} scalar_params;

static void scalar_backward(df_node *n, const df_tensor *g) {
    const scalar_params *p = n->state;
    df_tensor *ga = df_node_grad(n, 0);
    if (!ga) return;
    float *d = df_f32(ga);
    const float *gv = df_f32(g), *x = df_f32(n->inputs[0]);
    const float s = p->s;
    int64_t len = ga->numel;
    switch (p->kind) {
    case SCAL_ADD:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) d[i] += gv[i];
        break;
    case SCAL_MUL:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) d[i] += gv[i] * s;
        break;
    case SCAL_RSUB:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) d[i] -= gv[i];
        break;
    case SCAL_RDIV:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) {
            float r = 1.0f / x[i];
            d[i] += -(gv[i] * s) * (r * r);
        }
        break;
    }
}

static const df_op add_scalar_op = {"add_scalar", scalar_backward, NULL};
static const df_op mul_scalar_op = {"mul_scalar", scalar_backward, NULL};
static const df_op rsub_scalar_op = {"rsub_scalar", scalar_backward, NULL};
static const df_op rdiv_scalar_op = {"rdiv_scalar", scalar_backward, NULL};

static df_tensor *scalar_op(const df_op *op, scal_kind kind, df_tensor *a, float s) {
    DF_ASSERT_F32_ANY_LAYOUT(op->name, a); /* elementwise: any layout, kept */
    df_tensor *out = df_tensor_new_like(DF_DTYPE_F32, a);
    float *o = df_f32(out);
    const float *x = df_f32(a);
    int64_t len = a->numel;
    switch (kind) {
    case SCAL_ADD:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) o[i] = x[i] + s;
        break;
    case SCAL_MUL:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) o[i] = x[i] * s;
        break;
    case SCAL_RSUB:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) o[i] = s - x[i];
        break;
    case SCAL_RDIV:
#pragma omp parallel for simd schedule(static) if (len > DF_PAR_GRAIN)
        for (int64_t i = 0; i < len; i++) o[i] = (1.0f / x[i]) * s;
        break;
    }
    df_node *n = df_node_new(op, out, 1, &a, sizeof(scalar_params));
    if (n) *(scalar_params *)n->state = (scalar_params){kind, s};
    return out;
}

df_tensor *df_add_scalar(df_tensor *a, float s) {
    return scalar_op(&add_scalar_op, SCAL_ADD, a, s);
}
df_tensor *df_mul_scalar(df_tensor *a, float s) {
    return scalar_op(&mul_scalar_op, SCAL_MUL, a, s);
}
df_tensor *df_rsub_scalar(float s, df_tensor *a) {
    return scalar_op(&rsub_scalar_op, SCAL_RSUB, a, s);
}
df_tensor *df_rdiv_scalar(float s, df_tensor *a) {
    return scalar_op(&rdiv_scalar_op, SCAL_RDIV, a, s);
}
