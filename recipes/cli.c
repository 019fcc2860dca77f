/* cli.c — helpers shared by the subcommands. */
#include "recipes/cli.h"

#include <stdio.h>

int df_cli_fail(const char *what) {
    fprintf(stderr, "diffusion: %s: %s\n", what, df_last_error());
    return 1;
}
