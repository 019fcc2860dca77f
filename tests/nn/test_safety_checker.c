/* test_safety_checker.c — diffusers v0.21.4 StableDiffusionSafetyChecker on the tiny fixture
 * tests/fixtures/models/safety_checker_tiny (tests/ref/gen_safety_checker.py): the embeddings and
 * both cosine tables within 1e-4 of upstream, the decision flags and the blacked-out images
 * equal, including an image flagged only through the special-care adjustment; and folders with
 * a missing or mis-shaped concept table, or inputs of the wrong size, refused with clear
 * errors. */
#include "nn/nn.h"
#include "tests/common/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL_TOL 1e-4

static df_tensor *out_named(const df_named *o, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(o[i].name, name) == 0) return o[i].tensor;
    cr_assert_fail("no output %s", name);
    return NULL;
}

Test(nn_safety_checker, parity_with_diffusers) {
    df_component c;
    cr_assert_eq(df_component_load(fixture_path("models/safety_checker_tiny"), &c), DF_OK, "%s",
                 df_last_error());
    cr_assert(c.safety_checker);
    df_scope s = df_scope_begin();
    df_tensor *x = fixture_tensor("models/safety_checker_tiny/inputs.safetensors", "clip_input");
    df_tensor *im = fixture_tensor("models/safety_checker_tiny/inputs.safetensors", "images");
    df_named in[2] = {{"clip_input", x}, {"images", im}}, out[DF_COMPONENT_MAX_OUTPUTS];
    int n = 0;
    cr_assert_eq(df_component_forward(&c, in, 2, out, &n), DF_OK, "%s", df_last_error());
    const char *floats[] = {"image_embeds", "cos_dist", "special_cos_dist", "images_out"};
    for (int i = 0; i < 4; i++) {
        df_tensor *w = fixture_tensor("models/safety_checker_tiny/outputs.safetensors", floats[i]);
        double err = rel_max_err(out_named(out, n, floats[i]), w);
        cr_expect(err <= REL_TOL, "%s: relative error %.3g", floats[i], err);
    }
    df_tensor *flags = out_named(out, n, "has_nsfw_concepts");
    df_tensor *want =
        fixture_tensor("models/safety_checker_tiny/outputs.safetensors", "has_nsfw_concepts");
    cr_assert_eq(flags->numel, 4);
    for (int i = 0; i < 4; i++)
        cr_expect_eq(df_tensor_get(flags, i), df_tensor_get(want, i), "image %d's flag", i);
    /* the generator's design: 1 crosses concept 3; 2 crosses special-care 0 and concept 7 by
     * the adjustment alone (-0.005 + 0.01); 3 crosses special-care 1 and no concept */
    df_safety_result res[4];
    df_safety_checker_forward(c.safety_checker, x, NULL, NULL, NULL, res);
    cr_expect(!res[0].nsfw && res[1].nsfw && res[2].nsfw && !res[3].nsfw);
    cr_expect(res[1].concept_scores[3] > 0);
    cr_expect(res[2].special_scores[0] > 0 && res[3].special_scores[1] > 0);
    cr_expect_float_eq(res[2].concept_scores[7], 0.005f, 1e-7);
    for (int k = 0; k < DF_SAFETY_CONCEPTS; k++)
        cr_expect(res[3].concept_scores[k] <= 0, "image 3, concept %d: %g", k,
                  res[3].concept_scores[k]);
    df_scope_end(s);
    df_component_free(&c);
}

/* A copy of the fixture folder whose weights lack `drop`, or hold it with `rows` rows. */
static const char *broken_copy(const char *drop, int rows) {
    const char *dir = scratch_dir_new("safety");
    char path[600];
    size_t len;
    char *cfg = read_whole_file(fixture_path("models/safety_checker_tiny/config.json"), &len);
    cr_assert(cfg);
    scratch_write("config.json", cfg);
    free(cfg);
    df_st_file *f;
    cr_assert_eq(df_st_open(fixture_path("models/safety_checker_tiny/model.safetensors"), &f),
                 DF_OK);
    int n = df_st_count(f), k = 0;
    const char **names = calloc((size_t)n, sizeof *names);
    const df_tensor **ts = calloc((size_t)n, sizeof *ts);
    for (int i = 0; i < n; i++) {
        const char *name = df_st_info_at(f, i)->name;
        df_tensor *t;
        cr_assert_eq(df_st_read(f, name, DF_DTYPE_F32, &t), DF_OK);
        if (strcmp(name, drop) == 0) {
            if (rows <= 0) continue;
            t = df_slice(t, 0, 0, rows);
        }
        names[k] = name;
        ts[k++] = t;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(df_st_save(path, k, names, ts, 0, NULL, NULL), DF_OK, "%s", df_last_error());
    df_st_close(f);
    free(names);
    free(ts);
    return dir;
}

Test(nn_safety_checker, missing_concept_embeds_is_an_error) {
    df_scope s = df_scope_begin();
    const char *dir = broken_copy("concept_embeds", 0);
    df_component c;
    expect_status(df_component_load(dir, &c), DF_ERR_NOTFOUND, "missing tensor 'concept_embeds'");
    df_component_free(&c);
    scratch_dir_remove();
    df_scope_end(s);
}

Test(nn_safety_checker, wrong_concept_shape_is_an_error) {
    df_scope s = df_scope_begin();
    const char *dir = broken_copy("special_care_embeds", 2);
    df_component c;
    df_status st = df_component_load(dir, &c);
    cr_expect_neq(st, DF_OK);
    cr_expect(strstr(df_last_error(), "special_care_embeds"), "%s", df_last_error());
    df_component_free(&c);
    scratch_dir_remove();
    df_scope_end(s);
}

Test(nn_safety_checker, wrong_input_size_is_an_error) {
    df_component c;
    cr_assert_eq(df_component_load(fixture_path("models/safety_checker_tiny"), &c), DF_OK);
    df_scope s = df_scope_begin();
    df_named in[1] = {{"clip_input", df_zeros(DF_DTYPE_F32, DF_DIMS(1, 3, 1, 1))}};
    df_named out[DF_COMPONENT_MAX_OUTPUTS];
    int n = 0;
    expect_status(df_component_forward(&c, in, 1, out, &n), DF_ERR_INVALID, "clip_input");
    in[0].tensor = df_zeros(DF_DTYPE_F32, DF_DIMS(1, 3, 10, 1000));
    expect_status(df_component_forward(&c, in, 1, out, &n), DF_ERR_INVALID, "(N, 3, 32, 32)");
    df_scope_end(s);
    df_component_free(&c);
}

Test(nn_safety_checker, config_errors_name_the_field) {
    df_json j;
    const char *bad[] = {
        "{\"vision_config\": {\"image_size\": 8, \"patch_size\": 16}}",
        "{\"vision_config\": {\"hidden_size\": 30, \"num_attention_heads\": 4}}",
        "{\"vision_config\": 3}",
        "{\"projection_dim\": 0}",
        "{\"vision_config\": {\"hidden_act\": \"relu\"}}",
    };
    const char *want[] = {"patch_size", "attention heads", "vision_config", "projection_dim",
                          "hidden_act"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(df_json_parse(bad[i], strlen(bad[i]), "safety_checker/config.json", &j),
                     DF_OK);
        df_clip_vision_config c;
        df_status st = df_safety_checker_config_from_json(&j, &c);
        cr_expect_neq(st, DF_OK, "%s accepted", bad[i]);
        cr_expect(strstr(df_last_error(), want[i]) &&
                      strstr(df_last_error(), "safety_checker/config.json"),
                  "%s: %s", bad[i], df_last_error());
        df_json_free(&j);
    }
    /* the legacy vision_config_dict replaces vision_config (with the defaults filled in) */
    const char *legacy = "{\"vision_config\": {\"patch_size\": 8, \"hidden_size\": 64}, "
                         "\"vision_config_dict\": {\"patch_size\": 14}, \"projection_dim\": 24}";
    cr_assert_eq(df_json_parse(legacy, strlen(legacy), "config.json", &j), DF_OK);
    df_clip_vision_config c;
    cr_assert_eq(df_safety_checker_config_from_json(&j, &c), DF_OK, "%s", df_last_error());
    cr_expect_eq(c.patch_size, 14);
    cr_expect_eq(c.hidden_size, 768);
    cr_expect_eq(c.projection_dim, 24);
    cr_expect(c.with_projection);
    df_json_free(&j);
}
