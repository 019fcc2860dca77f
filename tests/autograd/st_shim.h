/* st_shim.h — TEMPORARY stand-in for the nn/ safetensors reader (nn/nn.h) so that the parity
 * tests can run before that reader lands on main: the subset of its API the tests use
 * (df_st_open, df_st_close, df_st_metadata, df_st_find, df_st_read), read-only, no validation
 * beyond what the tests need. Compiled only while nn/nn.h does not exist. */
#ifndef DF_TEST_ST_SHIM_H
#define DF_TEST_ST_SHIM_H

#include "autograd/autograd.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct df_st_info {
    const char *name;
    df_dtype dtype;
    int ndim;
    int64_t shape[DF_MAX_DIMS];
    uint64_t begin, end;
} df_st_info;

typedef struct df_st_file {
    cJSON *header;
    unsigned char *data;
    int n;
    df_st_info info[512];
} df_st_file;

static inline df_status df_st_open(const char *path, df_st_file **out) {
    FILE *f = fopen(path, "rb");
    if (!f) return df_error(DF_ERR_IO, "%s: cannot open", path);
    uint64_t hn = 0;
    if (fread(&hn, 8, 1, f) != 1) return fclose(f), df_error(DF_ERR_FORMAT, "%s: short", path);
    char *h = malloc(hn + 1);
    if (fread(h, 1, hn, f) != hn) return fclose(f), free(h), df_error(DF_ERR_FORMAT, "%s", path);
    h[hn] = 0;
    long pos = ftell(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f) - pos;
    fseek(f, pos, SEEK_SET);
    df_st_file *st = calloc(1, sizeof *st);
    st->data = malloc((size_t)sz + 1);
    if (fread(st->data, 1, (size_t)sz, f) != (size_t)sz) sz = 0;
    fclose(f);
    st->header = cJSON_Parse(h);
    free(h);
    cJSON *it;
    cJSON_ArrayForEach(it, st->header) {
        if (strcmp(it->string, "__metadata__") == 0) continue;
        df_st_info *in = &st->info[st->n++];
        in->name = it->string;
        df_dtype_parse(cJSON_GetObjectItem(it, "dtype")->valuestring, &in->dtype);
        cJSON *shape = cJSON_GetObjectItem(it, "shape"), *d;
        cJSON_ArrayForEach(d, shape) in->shape[in->ndim++] = (int64_t)d->valuedouble;
        cJSON *off = cJSON_GetObjectItem(it, "data_offsets");
        in->begin = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        in->end = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
    }
    *out = st;
    return DF_OK;
}

static inline void df_st_close(df_st_file *f) {
    if (!f) return;
    cJSON_Delete(f->header);
    free(f->data);
    free(f);
}

static inline const char *df_st_metadata(const df_st_file *f, const char *key) {
    cJSON *m = cJSON_GetObjectItem(f->header, "__metadata__");
    cJSON *v = m ? cJSON_GetObjectItem(m, key) : NULL;
    return v ? v->valuestring : NULL;
}

static inline const df_st_info *df_st_find(const df_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->info[i].name, name) == 0) return &f->info[i];
    return NULL;
}

static inline df_status df_st_read(const df_st_file *f, const char *name, df_dtype as,
                                   df_tensor **out) {
    const df_st_info *in = df_st_find(f, name);
    if (!in) return df_error(DF_ERR_NOTFOUND, "%s: no such tensor", name);
    df_tensor *raw = df_from_data(in->dtype, in->ndim, in->shape, f->data + in->begin);
    *out = in->dtype == as ? raw : df_tensor_to(raw, as);
    return DF_OK;
}

#endif
