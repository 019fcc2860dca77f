/* flat.c — a model's parameters in one flat F32 buffer and their gradients in another (design
 * §3): each parameter tensor becomes a view of its slice, so zero_grad is one memset, the
 * optimizer one loop over the buffer, and an allreduce one call. */
#include "autograd/autograd_impl.h"

#include <stdio.h>
#include <string.h>

#define FLAT_ALIGN 16 /* elements: every slice starts 64-byte aligned */

static int64_t padded(int64_t n) {
    return (n + FLAT_ALIGN - 1) / FLAT_ALIGN * FLAT_ALIGN;
}

df_status df_flat_init(df_flat *flat, df_tensor **params, int n) {
    memset(flat, 0, sizeof *flat);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (params[i]->dtype != DF_DTYPE_F32 || params[i]->node)
            return df_error(DF_ERR_INVALID, "flat parameters: parameter %d is not an F32 leaf", i);
        total += padded(params[i]->numel);
    }
    size_t bytes = (size_t)(total > 0 ? total : 1) * sizeof(float);
    flat->data = df_storage_try_new(bytes);
    flat->grad = flat->data ? df_storage_try_new(bytes) : NULL;
    if (!flat->grad) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", df_last_error());
        const char *what = flat->data ? "gradients" : "parameters";
        df_flat_free(flat);
        return df_error(DF_ERR_NOMEM, "%s for the flat %s of %d tensors", msg, what, n);
    }
    memset(flat->data->data, 0, bytes);
    memset(flat->grad->data, 0, bytes);
    flat->numel = total;
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        df_tensor *p = params[i];
        memcpy((float *)flat->data->data + off, p->data, (size_t)p->numel * sizeof(float));
        df_tensor_rebind(p, flat->data, off);
        if (!p->grad) p->grad = df_tensor_new_unscoped(DF_DTYPE_F32, p->ndim, p->shape);
        df_tensor_rebind(p->grad, flat->grad, off);
        p->requires_grad = true;
        off += padded(p->numel);
    }
    return DF_OK;
}

void df_flat_free(df_flat *flat) {
    if (flat->data) df_storage_release(flat->data);
    if (flat->grad) df_storage_release(flat->grad);
    memset(flat, 0, sizeof *flat);
}

float *df_flat_data(const df_flat *flat) {
    return flat->data->data;
}

float *df_flat_grad(const df_flat *flat) {
    return flat->grad->data;
}

void df_flat_zero_grad(df_flat *flat) {
    memset(flat->grad->data, 0, flat->grad->bytes);
}
