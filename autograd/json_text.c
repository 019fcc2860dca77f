/* json_text.c — a check on raw JSON text shared by the readers of outside JSON (safetensors
 * headers in nn/, metadata.jsonl lines in datasets/): cJSON decodes the escape \u0000 into a
 * NUL that silently ends a C string, so a name holding it would be read as a shorter one. */
#include "autograd/autograd.h"

#include <string.h>

bool df_json_has_nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0) return true;
        i++; /* the escaped character: "\\\\u0000" is a backslash, then text */
    }
    return false;
}
