/* config_write_impl.h — the value writers the diffusers config.json savers share
 * (nn/model_config_write.c defines them; nn/controlnet_config.c uses them too). */
#ifndef DF_NN_CONFIG_WRITE_IMPL_H
#define DF_NN_CONFIG_WRITE_IMPL_H

#include <cjson/cJSON.h>
#include <stdbool.h>

/* The shortest decimal that reads back as the float v (1e-05, not 9.99999974738e-06), as
 * Python prints the value diffusers stored. */
double df_json_shortest(float v);
/* A per-block int field: the number when every block has the same value (as configs usually
 * store it), else the list. */
cJSON *df_json_int_or_list(const int *v, int n);
/* The same for a per-block bool field (only_cross_attention). */
cJSON *df_json_bool_or_list(const bool *v, int n);

#endif
