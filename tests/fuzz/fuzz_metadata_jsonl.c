/* fuzz_metadata_jsonl.c — libFuzzer target for metadata.jsonl parsing (datasets/metadata.c):
 * any bytes give entries with safe relative file names, or a clean DF_ERR_FORMAT naming the
 * line — never a crash or a leak. */
#include "datasets/datasets.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    df_meta_entry *es;
    int64_t n;
    if (df_meta_parse((const char *)data, size, "fuzz.jsonl", "text", &es, &n, NULL, NULL) ==
        DF_OK) {
        for (int64_t i = 0; i < n; i++)
            DF_ASSERT(es[i].file_name[0] && es[i].file_name[0] != '/' && es[i].caption,
                      "bad entry accepted");
        df_meta_free(es, n);
    } else {
        DF_ASSERT(strstr(df_last_error(), "fuzz.jsonl") != NULL, "error does not name the file");
    }
    return 0;
}
