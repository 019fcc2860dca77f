/* fuzz_single_file.c — libFuzzer target for single-file checkpoint recognition and mapping
 * (nn/sd_single_file.c, nn/sd_single_file_keys.c): df_sd_single_file_detect infers the layout
 * from names and shapes, builds the configs and shapes-only models and maps every tensor; any
 * key list must give DF_OK or a clean error, never a crash, a leak or an abort.
 *
 * Input: text, one tensor per line, "<name> <dim> <dim> ..." (at most 8 dims). The target makes
 * an in-memory safetensors file of F16 zeros with those names and shapes (inputs whose data
 * would exceed 64 MB are skipped) and runs the detection on it. The seeds in
 * corpus/single_file are the key lists of the tiny SD 1.x, SD 2.x and inpainting fixtures
 * (tests/fixtures/single_file/<case>.json). Build and run: see tests/fuzz/README.md. */
#include "nn/single_file.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DATA (64u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    cJSON *header = cJSON_CreateObject();
    uint64_t off = 0;
    bool ok = header != NULL;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); ok && line;
         line = strtok_r(NULL, "\n", &save)) {
        char *tok_save = NULL, *name = strtok_r(line, " ", &tok_save);
        if (!name || cJSON_GetObjectItemCaseSensitive(header, name)) continue;
        double dims[8];
        int nd = 0;
        uint64_t numel = 1;
        for (char *t = strtok_r(NULL, " ", &tok_save); t && nd < 8;
             t = strtok_r(NULL, " ", &tok_save)) {
            long v = strtol(t, NULL, 10);
            if (v < 0 || v > (1 << 20)) v = 1;
            dims[nd++] = (double)v;
            numel *= (uint64_t)v;
            if (numel > MAX_DATA) ok = false;
        }
        if (!ok || off + 2 * numel > MAX_DATA) {
            ok = false;
            break;
        }
        cJSON *e = cJSON_AddObjectToObject(header, name);
        cJSON_AddStringToObject(e, "dtype", "F16");
        cJSON_AddItemToObject(e, "shape", cJSON_CreateDoubleArray(dims, nd));
        double range[2] = {(double)off, (double)(off + 2 * numel)};
        cJSON_AddItemToObject(e, "data_offsets", cJSON_CreateDoubleArray(range, 2));
        off += 2 * numel;
    }
    char *json = ok ? cJSON_PrintUnformatted(header) : NULL;
    cJSON_Delete(header);
    free(text);
    if (!json) return 0;
    size_t hn = strlen(json);
    uint8_t *file = calloc(1, 8 + hn + off);
    if (file) {
        for (int i = 0; i < 8; i++) file[i] = (uint8_t)((uint64_t)hn >> (8 * i));
        memcpy(file + 8, json, hn);
        df_st_file *f = NULL;
        if (df_st_open_memory(file, 8 + hn + off, "fuzz.safetensors", &f) == DF_OK) {
            df_sd_info info;
            df_sd_single_file_detect(f, &info);
        }
        df_st_close(f);
        free(file);
    }
    free(json);
    return 0;
}
