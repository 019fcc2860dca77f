/* test_model_card.c — train/model_card.c: an export's README.md names the recipe, base, data and
 * config, and carries the base model's licence on (from its README.md front matter or a LICENSE
 * file, which is copied); a base without one is "unknown" (and warned about), a model trained
 * from scratch says so. */
#include "tests/common/check.h"
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char *card_of(const char *dir) {
    char path[700];
    snprintf(path, sizeof path, "%s/README.md", dir);
    size_t n;
    char *text = read_whole_file(path, &n);
    cr_assert(text, "no %s", path);
    return text;
}

static const char *mk(const char *rel) {
    static char path[700];
    snprintf(path, sizeof path, "%s/%s", scratch_dir(), rel);
    cr_assert_eq(mkdir(path, 0777), 0, "%s", path);
    return path;
}

Test(train_model_card, licence_from_readme_front_matter_and_file) {
    scratch_dir_new("card");
    char base[700], out[700];
    snprintf(base, sizeof base, "%s", mk("sd15"));
    snprintf(out, sizeof out, "%s", mk("out"));
    scratch_write("sd15/README.md",
                  "---\nlicense: creativeml-openrail-m\ntags:\n- stable-diffusion\n---\n# SD\n");
    scratch_write("sd15/LICENSE", "Copyright (c) 2022 Robin Rombach and Patrick Esser ...\n");
    const char *data[] = {"data/emoji-google"};
    df_model_card card = {
        .recipe = "text_to_image", .base_model = base, .datasets = data, .n_datasets = 1};
    cr_assert_eq(df_model_card_write(out, &card), DF_OK, "%s", df_last_error());
    char *text = card_of(out);
    cr_expect(strstr(text, "license: creativeml-openrail-m\n"), "%s", text);
    cr_expect(strstr(text, "base_model: sd15\n"), "%s", text);
    cr_expect(strstr(text, "- Recipe: `text_to_image`"), "%s", text);
    cr_expect(strstr(text, "- Training data: `data/emoji-google`"), "%s", text);
    cr_expect(strstr(text, "keeps its licence: **creativeml-openrail-m** (the text is in "
                           "`LICENSE`)"),
              "%s", text);
    cr_expect(!strstr(text, scratch_dir()), "the card names this machine's path:\n%s", text);
    free(text);
    char lic[800];
    snprintf(lic, sizeof lic, "%s/LICENSE", out);
    size_t n;
    char *copied = read_whole_file(lic, &n);
    cr_assert(copied, "LICENSE not copied");
    cr_expect(strstr(copied, "Robin Rombach"));
    free(copied);
    scratch_dir_remove();
}

Test(train_model_card, licence_file_names_it_beside_a_single_file) {
    scratch_dir_new("card");
    char out[700], single[800], name[256], file[1024];
    snprintf(out, sizeof out, "%s", mk("out"));
    mk("ckpt");
    scratch_write("ckpt/LICENSE.md", "\n# CreativeML Open RAIL-M\n\ndated August 22, 2022\n");
    snprintf(single, sizeof single, "%s/ckpt/v1-5.safetensors", scratch_dir());
    cr_assert_eq(df_model_card_license(single, name, sizeof name, file, sizeof file), DF_OK);
    cr_expect_str_eq(name, "CreativeML Open RAIL-M");
    cr_expect(strstr(file, "ckpt/LICENSE.md"), "%s", file);
    df_model_card card = {.recipe = "text_to_image", .base_model = single};
    cr_assert_eq(df_model_card_write(out, &card), DF_OK, "%s", df_last_error());
    char *text = card_of(out);
    cr_expect(strstr(text, "license: CreativeML Open RAIL-M\n"), "%s", text);
    free(text);
    scratch_dir_remove();
}

Test(train_model_card, unknown_and_from_scratch) {
    scratch_dir_new("card");
    char base[700], out[700];
    snprintf(base, sizeof base, "%s", mk("bare"));
    snprintf(out, sizeof out, "%s", mk("out"));
    df_model_card card = {.recipe = "vae", .base_model = base};
    cr_assert_eq(df_model_card_write(out, &card), DF_OK, "%s", df_last_error());
    char *text = card_of(out);
    cr_expect(strstr(text, "license: unknown\n") && strstr(text, "names no licence"), "%s", text);
    free(text);
    card.base_model = NULL;
    card.recipe = "unconditional";
    cr_assert_eq(df_model_card_write(out, &card), DF_OK, "%s", df_last_error());
    text = card_of(out);
    cr_expect(strstr(text, "license: other\n") && strstr(text, "none (trained from scratch)"), "%s",
              text);
    free(text);
    scratch_dir_remove();
}
