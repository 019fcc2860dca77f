/* test_config.c — the YAML run configuration: precedence (defaults < file < command line),
 * nesting, lists, exact error messages (unknown key with suggestion, type, range, choice,
 * syntax), the resolved config round trip and its hash. */
#include "train/train.h"
#include "tests/common/check.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const df_cfg_field schema[] = {
    {"train_batch_size", DF_CFG_INT, "16", 1, 1 << 20, NULL, "images per step"},
    {"learning_rate", DF_CFG_FLOAT, "1e-4", 0, 1e3, NULL, "peak learning rate"},
    {"lr_scheduler", DF_CFG_STRING, "constant", 0, 0, "constant|cosine|linear", "schedule"},
    {"use_ema", DF_CFG_BOOL, "false", 0, 0, NULL, "keep an EMA of the weights"},
    {"output_dir", DF_CFG_STRING, NULL, 0, 0, NULL, "where the run goes"},
    {"model.block_out_channels", DF_CFG_INT_LIST, "[32, 64]", 1, 4096, NULL, "widths"},
    {"model.down_block_types", DF_CFG_STRING_LIST, "[DownBlock2D, AttnDownBlock2D]", 0, 0, NULL,
     "down blocks"},
    {"model.layers_per_block", DF_CFG_INT, "2", 1, 8, NULL, "resnets per block"},
};
#define N_FIELDS (int)(sizeof schema / sizeof schema[0])

static df_config cfg;

static void setup(void) {
    df_config_init(&cfg, schema, N_FIELDS);
}

static void teardown(void) {
    df_config_free(&cfg);
}

TestSuite(train_config, .init = setup, .fini = teardown);

static df_status load(const char *text) {
    return df_config_load_yaml_text(&cfg, text, strlen(text), "recipe.yaml");
}

static void expect_message(df_status st, const char *want) {
    cr_assert_neq(st, DF_OK, "expected an error");
    cr_assert_str_eq(df_last_error(), want);
}

Test(train_config, defaults) {
    cr_assert_eq(df_config_int(&cfg, "train_batch_size"), 16);
    cr_assert_float_eq(df_config_float(&cfg, "learning_rate"), 1e-4, 1e-12);
    cr_assert_str_eq(df_config_str(&cfg, "lr_scheduler"), "constant");
    cr_assert_str_eq(df_config_str(&cfg, "output_dir"), "");
    int64_t ch[4];
    cr_assert_eq(df_config_list(&cfg, "model.block_out_channels", ch, 4), 2);
    cr_assert_eq(ch[1], 64);
}

Test(train_config, file_then_command_line) {
    cr_assert_eq(load("train_batch_size: 8\nmodel:\n  layers_per_block: 3\n"
                      "  block_out_channels: [64, 128, 256]\nuse_ema: true\n"),
                 DF_OK, "%s", df_last_error());
    cr_assert_eq(df_config_int(&cfg, "train_batch_size"), 8);
    cr_assert_eq(df_config_int(&cfg, "model.layers_per_block"), 3);
    cr_assert(df_config_bool(&cfg, "use_ema"));
    cr_assert_eq(df_config_set(&cfg, "train_batch_size=4"), DF_OK);
    cr_assert_eq(df_config_set(&cfg, "model.block_out_channels=[8, 16]"), DF_OK, "%s",
                 df_last_error());
    cr_assert_eq(df_config_int(&cfg, "train_batch_size"), 4);
    int64_t ch[4];
    cr_assert_eq(df_config_list(&cfg, "model.block_out_channels", ch, 4), 2);
    cr_assert_eq(ch[0], 8);
    /* dotted keys at top level work as well as nesting */
    cr_assert_eq(load("model.layers_per_block: 1\n"), DF_OK);
    cr_assert_eq(df_config_int(&cfg, "model.layers_per_block"), 1);
}

Test(train_config, exact_errors) {
    expect_message(load("train_batch_size: 8\nlearnig_rate: 0.1\n"),
                   "unknown key 'learnig_rate' (did you mean 'learning_rate'?) (recipe.yaml:2)");
    expect_message(load("model:\n  layers_per_blok: 2\n"),
                   "unknown key 'model.layers_per_blok' (did you mean 'model.layers_per_block'?) "
                   "(recipe.yaml:2)");
    expect_message(load("colour: red\n"), "unknown key 'colour' (recipe.yaml:1)");
    expect_message(load("train_batch_size: eight\n"),
                   "'train_batch_size': expected an integer, got 'eight' (recipe.yaml:1)");
    expect_message(load("\n\nlearning_rate: -1\n"),
                   "'learning_rate': -1 is out of range [0, 1000] (recipe.yaml:3)");
    expect_message(load("lr_scheduler: cosin\n"),
                   "'lr_scheduler': 'cosin' is not one of constant|cosine|linear (recipe.yaml:1)");
    expect_message(load("model:\n  block_out_channels: 32\n"),
                   "'model.block_out_channels': expected a list of integers (recipe.yaml:2)");
    expect_message(df_config_set(&cfg, "use_ema=maybe"),
                   "'use_ema': expected true or false, got 'maybe' (command line:1)");
    expect_message(
        df_config_set(&cfg, "train_batchsize=2"),
        "unknown key 'train_batchsize' (did you mean 'train_batch_size'?) (command line)");
    expect_message(load("a: [1, 2\n"),
                   "not valid YAML: did not find expected ',' or ']' (recipe.yaml:2)");
    expect_message(load("- 1\n- 2\n"), "the top level must be a mapping of keys (recipe.yaml:1)");
}

Test(train_config, a_failed_load_keeps_earlier_values) {
    cr_assert_neq(load("train_batch_size: 0\n"), DF_OK);
    cr_assert_eq(df_config_int(&cfg, "train_batch_size"), 16);
}

Test(train_config, write_reload_and_hash) {
    cr_assert_eq(load("output_dir: \"runs/a b\"\nmodel:\n  down_block_types: [X, \"Y: z\"]\n"),
                 DF_OK);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    df_config_write(&cfg, f, false);
    fclose(f);
    df_config other;
    df_config_init(&other, schema, N_FIELDS);
    cr_assert_eq(df_config_load_yaml_text(&other, text, len, "saved.yaml"), DF_OK, "%s\n%s",
                 df_last_error(), text);
    cr_assert_eq(df_config_hash(&other), df_config_hash(&cfg));
    const char *strs[4];
    cr_assert_eq(df_config_str_list(&other, "model.down_block_types", strs, 4), 2);
    cr_assert_str_eq(strs[1], "Y: z");
    cr_assert_str_eq(df_config_str(&other, "output_dir"), "runs/a b");
    uint64_t h = df_config_hash(&other);
    cr_assert_eq(df_config_set(&other, "train_batch_size=17"), DF_OK);
    cr_assert_neq(df_config_hash(&other), h);
    df_config_free(&other);
    free(text);
}

/* issue 23: a key given twice is an error naming both lines, not "the last one wins" */
Test(train_config, duplicate_keys_are_errors) {
    expect_message(load("train_batch_size: 8\nuse_ema: true\ntrain_batch_size: 4\n"),
                   "duplicate key 'train_batch_size': already set at line 1 (recipe.yaml:3)");
    expect_message(load("model:\n  layers_per_block: 3\nmodel.layers_per_block: 4\n"),
                   "duplicate key 'model.layers_per_block': already set at line 2 "
                   "(recipe.yaml:3)");
    /* a file then the command line is an override, not a duplicate */
    cr_assert_eq(load("train_batch_size: 8\n"), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_config_set(&cfg, "train_batch_size=4"), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_config_int(&cfg, "train_batch_size"), 4);
}

/* issue 23: --print-config shows where a list came from, not "default" */
Test(train_config, list_values_record_their_origin) {
    cr_assert_eq(load("\nmodel:\n  block_out_channels: [8, 16]\n"), DF_OK, "%s", df_last_error());
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    df_config_write(&cfg, f, true);
    fclose(f);
    cr_assert(strstr(text, "block_out_channels: [8, 16]  # recipe.yaml:3"), "%s", text);
    cr_assert(strstr(text, "down_block_types: [\"DownBlock2D\", \"AttnDownBlock2D\"]  # default"),
              "%s", text);
    free(text);
}

/* issue 23: deep nesting is refused at a bounded depth, in time linear in the input (a quadratic
 * parse of this input took minutes) */
Test(train_config, deep_nesting_is_bounded, .timeout = 60) {
    size_t depth = 200000;
    char *text = malloc(2 * depth + 8);
    cr_assert(text);
    memcpy(text, "a: ", 3);
    memset(text + 3, '[', depth);
    memset(text + 3 + depth, ']', depth);
    text[3 + 2 * depth] = '\0';
    expect_message(load(text), "nesting deeper than 32 levels (recipe.yaml:1)");
    /* block mappings too */
    char *p = text;
    for (int i = 0; i < 40; i++) p += sprintf(p, "%*sk%d:\n", 2 * i, "", i);
    sprintf(p, "%*sv: 1\n", 80, "");
    expect_message(load(text), "nesting deeper than 32 levels (recipe.yaml:33)");
    free(text);
}

/* issue 23: a directory or a FIFO given as the recipe is refused at once (a directory read as an
 * empty recipe; a FIFO blocked) */
Test(train_config, recipe_must_be_a_regular_file, .timeout = 60) {
    char d[] = "/tmp/df_cfg_XXXXXX", fifo[64];
    cr_assert(mkdtemp(d));
    cr_assert_eq(df_config_load_yaml(&cfg, d), DF_ERR_IO);
    cr_assert(strstr(df_last_error(), "a directory, not a YAML file"), "%s", df_last_error());
    snprintf(fifo, sizeof fifo, "%s/r.yaml", d);
    cr_assert_eq(mkfifo(fifo, 0644), 0);
    cr_assert_eq(df_config_load_yaml(&cfg, fifo), DF_ERR_IO);
    cr_assert(strstr(df_last_error(), "not a regular file, not a YAML file"), "%s",
              df_last_error());
    char value[64];
    cr_assert_eq(df_config_peek(fifo, "recipe", value, sizeof value), DF_ERR_IO);
    unlink(fifo);
    rmdir(d);
}
