/* test_metadata.c — metadata.jsonl parsing: good files (blank lines, null captions, other
 * columns, a custom caption column) and every kind of malformed line, each an error naming
 * the file and the line. */
#include "tests/datasets/image_util.h"

static df_status parse(const char *text, const char *col, df_meta_entry **es, int64_t *n) {
    return df_meta_parse(text, strlen(text), "meta.jsonl", col, es, n, NULL, NULL);
}

Test(datasets_metadata, parses_entries) {
    const char *t = "{\"file_name\": \"a.png\", \"text\": \"a red apple\"}\n"
                    "\n   \n"
                    "{\"text\": null, \"file_name\": \"sub/b.jpg\", \"other\": [1, 2]}\r\n"
                    "{\"file_name\": \"c.png\"}";
    df_meta_entry *es;
    int64_t n;
    cr_assert_eq(parse(t, "text", &es, &n), DF_OK, "%s", df_last_error());
    cr_assert_eq(n, 3);
    cr_assert_str_eq(es[0].file_name, "a.png");
    cr_assert_str_eq(es[0].caption, "a red apple");
    cr_assert_str_eq(es[1].file_name, "sub/b.jpg");
    cr_assert_str_eq(es[1].caption, "");
    cr_assert_str_eq(es[2].caption, "");
    df_meta_free(es, n);
}

Test(datasets_metadata, custom_caption_column) {
    const char *t = "{\"file_name\": \"a.png\", \"text\": \"x\", \"prompt\": \"grinning face\"}\n";
    df_meta_entry *es;
    int64_t n;
    cr_assert_eq(parse(t, "prompt", &es, &n), DF_OK);
    cr_assert_str_eq(es[0].caption, "grinning face");
    df_meta_free(es, n);
}

Test(datasets_metadata, malformed_lines_name_file_and_line) {
    static const struct {
        const char *line, *why;
    } bad[] = {
        {"{\"file_name\": \"a.png\"", "not valid JSON"},
        {"[\"a.png\"]", "not a JSON object"},
        {"\"a.png\"", "not a JSON object"},
        {"{\"text\": \"x\"}", "file_name"},
        {"{\"file_name\": 3}", "file_name"},
        {"{\"file_name\": \"\"}", "empty, absolute"},
        {"{\"file_name\": \"/etc/passwd\"}", "absolute"},
        {"{\"file_name\": \"../x.png\"}", "\"..\""},
        {"{\"file_name\": \"a.png\", \"text\": 5}", "not a string"},
        {"{\"file_name\": \"a.png\", \"text\": [\"x\"]}", "not a string"},
        {"{\"file_name\": \"a.png\"} {}", "trailing"},
        {"{\"file_name\": \"a.png\"} garbage", "trailing"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"file_name\": \"ok.png\", \"text\": \"fine\"}\n\n%s\n",
                 bad[i].line);
        df_meta_entry *es = (df_meta_entry *)1;
        int64_t n = 7;
        df_status s = parse(text, "text", &es, &n);
        cr_assert_eq(s, DF_ERR_FORMAT, "line '%s' accepted", bad[i].line);
        cr_assert_null(es);
        cr_assert_eq(n, 0);
        cr_assert(strstr(df_last_error(), "meta.jsonl:3:"), "'%s': %s", bad[i].line,
                  df_last_error());
        cr_assert(strstr(df_last_error(), bad[i].why), "'%s': %s", bad[i].line, df_last_error());
    }
}

Test(datasets_metadata, nul_byte_is_an_error) {
    const char t[] = "{\"file_name\": \"a.png\"}\n{\"file_name\"\0: \"b.png\"}\n";
    df_meta_entry *es;
    int64_t n;
    cr_assert_eq(df_meta_parse(t, sizeof t - 1, "m.jsonl", "text", &es, &n, NULL, NULL),
                 DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "m.jsonl:2:"), "%s", df_last_error());
}

/* issue 23: an escaped NUL would cut the file name where cJSON hands it back ("a.png\u0000.txt"
 * read as "a.png"): an error naming the line, not a silently different name */
Test(datasets_metadata, escaped_nul_is_an_error) {
    const char *t = "{\"file_name\": \"a.png\"}\n{\"file_name\": \"b.png\\u0000.txt\"}\n";
    df_meta_entry *es;
    int64_t n;
    cr_assert_eq(parse(t, "text", &es, &n), DF_ERR_FORMAT);
    cr_assert(strstr(df_last_error(), "meta.jsonl:2: \\u0000 (NUL) in a string"), "%s",
              df_last_error());
    /* an escaped backslash followed by "u0000" is text, not a NUL */
    t = "{\"file_name\": \"a\\\\u0000.png\"}\n";
    cr_assert_eq(parse(t, "text", &es, &n), DF_OK, "%s", df_last_error());
    cr_assert_str_eq(es[0].file_name, "a\\u0000.png");
    df_meta_free(es, n);
}
