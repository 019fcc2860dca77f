/* error.c — df_status messages (thread-local, set by df_error) and DF_ASSERT's failure path. */
#include "autograd/autograd.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static _Thread_local char last_error[1024];

const char *df_last_error(void) {
    return last_error;
}

void df_error_clear(void) {
    last_error[0] = '\0';
}

df_status df_error(df_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

const char *df_status_name(df_status s) {
    switch (s) {
    case DF_OK: return "DF_OK";
    case DF_ERR_IO: return "DF_ERR_IO";
    case DF_ERR_FORMAT: return "DF_ERR_FORMAT";
    case DF_ERR_NOMEM: return "DF_ERR_NOMEM";
    case DF_ERR_INVALID: return "DF_ERR_INVALID";
    case DF_ERR_DNNL: return "DF_ERR_DNNL";
    case DF_ERR_NOTFOUND: return "DF_ERR_NOTFOUND";
    case DF_ERR_UNSUPPORTED: return "DF_ERR_UNSUPPORTED";
    }
    return "DF_ERR_UNKNOWN";
}

void df_assert_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s:%d: assertion failed: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}
