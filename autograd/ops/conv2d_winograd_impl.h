/* conv2d_winograd_impl.h — Winograd F(2x2, 3x3) convolution passes (conv2d_winograd.c) for
 * conv2d.c: 3x3 kernels, stride 1, padding 1, dilation 1, one group, activations channel-blocked
 * (N, C / B, H, W, B) with C and O multiples of B, weights plain (O, C, 3, 3). Internal to
 * autograd/. */
#ifndef DF_OPS_CONV2D_WINOGRAD_IMPL_H
#define DF_OPS_CONV2D_WINOGRAD_IMPL_H

#include <stdbool.h>
#include <stdint.h>

/* y = conv(x, w) + bias (bias may be NULL); y (N, O / B, H, W, B) is overwritten. */
void df_winograd_forward(const float *x, const float *w, const float *bias, float *y, int64_t N,
                         int64_t C, int64_t H, int64_t W, int64_t O, int64_t B);
/* dx (=, or += when accumulate) the gradient of x for the output gradient g. */
void df_winograd_backward_data(const float *g, const float *w, float *dx, bool accumulate,
                               int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t B);
/* dw (=/+= by acc_w) the weight gradient and, when db is not NULL, db (=/+= by acc_b) the bias
 * gradient, for input x and output gradient g. */
void df_winograd_backward_weights(const float *x, const float *g, float *dw, bool acc_w, float *db,
                                  bool acc_b, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                                  int64_t B);

#endif
