/* test_docs.c — the README's configuration table is the schema's own (`diffusion train --docs`),
 * so it cannot drift from the code: regenerate it with scripts/gen-config-docs. */
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Test(recipes_docs, readme_config_table_matches_schema) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s train --docs unconditional", DF_CLI);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    static char table[1 << 16], readme[1 << 18];
    size_t n = fread(table, 1, sizeof table - 1, p);
    table[n] = '\0';
    pclose(p);
    FILE *f = fopen(DF_SOURCE_DIR "/README.md", "r");
    cr_assert(f, "cannot read README.md");
    n = fread(readme, 1, sizeof readme - 1, f);
    readme[n] = '\0';
    fclose(f);
    const char *begin = strstr(readme, "<!-- config:unconditional -->\n");
    const char *end = strstr(readme, "<!-- /config:unconditional -->");
    cr_assert(begin && end && end > begin, "README.md lacks the config:unconditional markers");
    begin += strlen("<!-- config:unconditional -->\n");
    size_t len = (size_t)(end - begin);
    cr_assert(len == strlen(table) && memcmp(begin, table, len) == 0,
              "README.md's config table is stale: run scripts/gen-config-docs");
}
