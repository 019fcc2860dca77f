/* fixture.c — reading committed safetensors fixtures (tests/fixtures/<relpath>) in tests.
 *
 * The last opened file is cached, so a test reading many tensors of one fixture maps it once.
 * Failures are test failures (cr_assert) carrying df_last_error(), never NULL returns.
 */
#include "tests/common/check.h"

#include <stdio.h>
#include <string.h>

static df_st_file *cached;
static char cached_rel[1024];

df_st_file *fixture_open(const char *relpath) {
    if (cached && strcmp(cached_rel, relpath) == 0) return cached;
    df_st_close(cached);
    cached = NULL;
    cached_rel[0] = '\0';
    df_st_file *f = NULL;
    df_status s = df_st_open(fixture_path(relpath), &f);
    cr_assert(s == DF_OK, "fixture %s: %s (%s)", relpath, df_last_error(), df_status_name(s));
    cached = f;
    snprintf(cached_rel, sizeof cached_rel, "%s", relpath);
    return f;
}

df_tensor *fixture_tensor(const char *relpath, const char *name) {
    df_st_file *f = fixture_open(relpath);
    const df_st_info *info = df_st_find(f, name);
    cr_assert(info, "fixture %s: no tensor '%s'", relpath, name);
    cr_assert(info->supported, "fixture %s: tensor '%s' has dtype %s, which df_tensor lacks",
              relpath, name, info->dtype_name);
    df_dtype as = df_dtype_is_float(info->dtype) ? DF_DTYPE_F32 : info->dtype;
    df_tensor *t = NULL;
    df_status s = df_st_read(f, name, as, &t);
    cr_assert(s == DF_OK, "fixture %s: %s (%s)", relpath, df_last_error(), df_status_name(s));
    return t;
}
