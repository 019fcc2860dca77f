/* test_scope_ownership.c — the scope rule's guard rails: freeing the reference a scope holds
 * aborts with a message (instead of a double free later); df_scope_suspend/resume let library
 * code own its temporaries and hand the result to the caller's scope with df_tensor_adopt. */
#include "tests/common/check.h"

#include <signal.h>

Test(autograd_scope_ownership, freeing_a_scope_reference_aborts, .signal = SIGABRT) {
    df_scope s = df_scope_begin();
    df_tensor *t = df_zeros(DF_DTYPE_F32, DF_DIMS(3));
    df_tensor_free(t); /* the scope's only reference: must stop here */
    df_scope_end(s);
}

Test(autograd_scope_ownership, retained_then_freed_is_fine) {
    df_scope s = df_scope_begin();
    df_tensor *t = df_tensor_retain(df_zeros(DF_DTYPE_F32, DF_DIMS(3)));
    df_tensor_free(t);
    df_scope_end(s);
    df_scope s2 = df_scope_begin();
    df_tensor *kept = df_tensor_retain(df_ones(DF_DTYPE_F32, DF_DIMS(2)));
    df_scope_end(s2);
    cr_assert_eq(kept->refcount, 1);
    cr_assert(!kept->scoped);
    df_tensor_free(kept);
}

/* A library-style function: temporaries freed, result handed to the caller's scope. */
static df_tensor *make_result(void) {
    df_scope_pause p = df_scope_suspend();
    df_tensor *tmp = df_ones(DF_DTYPE_F32, DF_DIMS(4));
    df_tensor *res = df_full(DF_DTYPE_F32, DF_DIMS(4), 2.0);
    df_tensor_free(tmp);
    df_scope_resume(p);
    return df_tensor_adopt(res);
}

Test(autograd_scope_ownership, suspend_and_adopt) {
    df_mem_stats before = df_mem_get_stats();
    df_scope s = df_scope_begin();
    df_tensor *r = make_result();
    cr_assert(r->scoped);
    cr_assert_eq(df_tensor_get(r, 3), 2.0);
    df_scope_end(s);
    cr_assert_eq(df_mem_get_stats().bytes_in_use, before.bytes_in_use, "something leaked");
    /* outside any scope the result belongs to the caller */
    df_tensor *o = make_result();
    cr_assert(!o->scoped);
    df_tensor_free(o);
    cr_assert_eq(df_mem_get_stats().bytes_in_use, before.bytes_in_use);
}
