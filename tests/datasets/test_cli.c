/* test_cli.c — `diffusion dataset inspect|pack` end to end: the inspect report (count,
 * resolution histogram, captions, every unreadable file with its reason), a pack whose HDF5
 * layout is the documented one (chunk per image, attributes), and one-line errors. */
#include "tests/datasets/image_util.h"

#include <hdf5.h>

/* Runs the CLI with `args`; returns its exit code and its stdout+stderr in out (static). */
static int run_cli(const char *args, char **out) {
    static char buf[1 << 16];
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", DF_CLI, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = '\0';
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(datasets_cli, inspect_reports_unreadable_files) {
    char *out, args[1024];
    snprintf(args, sizeof args, "dataset inspect %s", fixture_path("images/bad"));
    cr_assert_eq(run_cli(args, &out), 0, "%s", out);
    cr_assert(strstr(out, "images:   10 (0 readable, 10 unreadable)"), "%s", out);
    static const char *const bad[] = {
        "truncated.png: PNG: file is truncated", "truncated.jpg: JPEG: file is truncated",
        "text.png: not a PNG or JPEG", "absurd.png: image dimensions 100000 x 100000"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert(strstr(out, bad[i]), "missing '%s' in:\n%s", bad[i], out);
}

Test(datasets_cli, pack_then_inspect) {
    const char *dir = make_folder("cli", 4, 10, 16);
    char d[512], args[1400], h5[600], *out;
    snprintf(d, sizeof d, "%s", dir);
    snprintf(h5, sizeof h5, "%s/out.h5", d);
    snprintf(args, sizeof args, "dataset pack %s %s --resolution 8", d, h5);
    cr_assert_eq(run_cli(args, &out), 0, "%s", out);
    cr_assert(strstr(out, "packed 4 images (0 skipped)"), "%s", out);
    snprintf(args, sizeof args, "dataset inspect %s", h5);
    cr_assert_eq(run_cli(args, &out), 0, "%s", out);
    cr_assert(strstr(out, "HDF5 pack"), "%s", out);
    cr_assert(strstr(out, "    8 x 8     4\n"), "%s", out);
    cr_assert(strstr(out, "captions: 4 with text, 0 empty"), "%s", out);
    /* the documented layout */
    hid_t f = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    hid_t ds = H5Dopen2(f, "images", H5P_DEFAULT), pl = H5Dget_create_plist(ds);
    hsize_t chunk[4];
    cr_assert_eq(H5Pget_chunk(pl, 4, chunk), 4);
    cr_assert(chunk[0] == 1 && chunk[1] == 8 && chunk[2] == 8 && chunk[3] == 3);
    int res = 0;
    hid_t a = H5Aopen(f, "resolution", H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_INT, &res);
    cr_assert_eq(res, 8);
    H5Aclose(a);
    cr_assert_gt(H5Aexists(f, "source"), 0);
    H5Pclose(pl);
    H5Dclose(ds);
    H5Fclose(f);
    remove_tree(d);
}

Test(datasets_cli, errors_are_one_line) {
    char *out;
    cr_assert_eq(run_cli("dataset inspect /nonexistent/dir", &out), 1);
    cr_assert(strncmp(out, "diffusion: dataset inspect: ", 28) == 0, "%s", out);
    cr_assert(strstr(out, "(/nonexistent/dir)\n"), "%s", out);
    cr_assert_eq(strchr(out, '\n') - out + 1, (long)strlen(out), "more than one line: %s", out);
    cr_assert_eq(run_cli("dataset pack onlyone", &out), 2);
    cr_assert(strstr(out, "usage:"));
}

/* issue 23: argument errors say what is wrong (then the usage), exit code 2 */
Test(datasets_cli, pack_argument_errors_say_what_is_wrong) {
    static const struct {
        const char *args, *want;
    } cases[] = {
        {"dataset pack", "dataset pack: missing SRC"},
        {"dataset pack src", "dataset pack: missing OUT"},
        {"dataset pack src out.h5", "dataset pack: missing --resolution R"},
        {"dataset pack src out.h5 --resolution 0", "--resolution must be an integer in 1..16384, "
                                                   "got '0'"},
        {"dataset pack src out.h5 --resolution 8x", "got '8x'"},
        {"dataset pack src out.h5 --resolution", "--resolution needs a value"},
        {"dataset pack src out.h5 --resolution 8 --filter hamming", "unknown --filter 'hamming'"},
        {"dataset pack src out.h5 --resolution 8 --verbose", "unknown option '--verbose'"},
        {"dataset pack src out.h5 extra --resolution 8", "unexpected argument 'extra'"},
        {"dataset inspect", "dataset inspect: missing PATH"},
        {"dataset inspect a b", "unexpected argument 'b'"},
        {"dataset", "missing subcommand"},
        {"dataset unpack", "unknown subcommand 'unpack'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *out;
        cr_assert_eq(run_cli(cases[i].args, &out), 2, "%s: %s", cases[i].args, out);
        cr_assert(strstr(out, cases[i].want), "%s: want '%s' in %s", cases[i].args, cases[i].want,
                  out);
        cr_assert(strstr(out, "usage: diffusion dataset pack"), "%s", out);
    }
}

/* issue 23: OUT pointing at a source image is refused and the image kept */
Test(datasets_cli, pack_refuses_a_source_image_as_out) {
    const char *dir = make_folder("clip", 2, 8, 8);
    char d[512], args[1400], img[600], *out;
    snprintf(d, sizeof d, "%s", dir);
    snprintf(img, sizeof img, "%s/img001.png", d);
    df_tensor *before;
    cr_assert_eq(df_image_read(img, NULL, &before), DF_OK);
    snprintf(args, sizeof args, "dataset pack %s %s --resolution 8", d, img);
    cr_assert_eq(run_cli(args, &out), 1, "%s", out);
    cr_assert(strstr(out, "is the dataset's image 'img001.png' (an input)"), "%s", out);
    df_tensor *after;
    cr_assert_eq(df_image_read(img, NULL, &after), DF_OK, "the image was damaged");
    check_image("img001.png", after, before, 0);
    df_tensor_free(before);
    df_tensor_free(after);
    remove_tree(d);
}
