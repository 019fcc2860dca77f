/* test_tensorboard.c — our event files decode as TensorBoard reads them: record framing with
 * masked CRC-32C, the file_version event first, then scalar and image summaries with their
 * tags, steps and values; a failed write (file-size limit) leaves whole records only and the
 * records are written by the next write. The decoder here is written from the protobuf wire
 * format. */
#include "train/train.h"
#include "tests/common/check.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

static uint32_t masked(const void *p, size_t n) {
    uint32_t c = df_crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static uint64_t varint(const unsigned char **p, const unsigned char *end) {
    uint64_t v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
    }
    return v;
}

/* Finds field `field` (first occurrence) of a message; returns its payload (len-delimited) or
 * raw bytes (fixed); NULL when absent. */
static const unsigned char *field_of(const unsigned char *m, size_t n, int field, size_t *len,
                                     uint64_t *num) {
    const unsigned char *p = m, *end = m + n;
    while (p < end) {
        uint64_t key = varint(&p, end);
        int f = (int)(key >> 3), wt = (int)(key & 7);
        const unsigned char *start = p;
        size_t l = 0;
        if (wt == 0)
            *num = varint(&p, end), l = (size_t)(p - start);
        else if (wt == 1)
            l = 8, p += 8;
        else if (wt == 5)
            l = 4, p += 4;
        else if (wt == 2)
            l = varint(&p, end), start = p, p += l;
        else
            cr_assert_fail("bad wire type %d", wt);
        if (f == field) {
            *len = l;
            return start;
        }
    }
    return NULL;
}

/* The records of an event file (read into a static buffer; payload pointers into it), checking
 * every record's framing and both CRCs (no torn record). Returns how many. */
static int read_records(const char *path, const unsigned char **data, size_t *lens, int max) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "%s", path);
    static unsigned char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    const unsigned char *p = buf, *end = buf + n;
    int records = 0;
    while (p < end) {
        uint64_t len;
        uint32_t len_crc, data_crc;
        cr_assert(end - p >= 12, "torn record header at %zu", (size_t)(p - buf));
        memcpy(&len, p, 8);
        memcpy(&len_crc, p + 8, 4);
        cr_assert_eq(len_crc, masked(p, 8), "record %d: length CRC", records);
        cr_assert((size_t)(end - p) >= 16 + len, "torn record %d", records);
        memcpy(&data_crc, p + 12 + len, 4);
        cr_assert_eq(data_crc, masked(p + 12, len), "record %d: data CRC", records);
        if (records < max) {
            data[records] = p + 12;
            lens[records] = len;
        }
        p += 16 + len;
        records++;
    }
    return records;
}

Test(train_tensorboard, records_decode) {
    char dir[] = "/tmp/df_tb_XXXXXX";
    cr_assert(mkdtemp(dir));
    df_tb_writer w;
    cr_assert_eq(df_tb_open(&w, dir), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_tb_scalar(&w, "train/loss", 7, 0.25), DF_OK);
    static const unsigned char png[] = {0x89, 'P', 'N', 'G', 1, 2, 3};
    cr_assert_eq(df_tb_image(&w, "samples", 9, 64, 32, 3, png, sizeof png), DF_OK);
    char path[DF_PATH_MAX];
    snprintf(path, sizeof path, "%s", w.path);
    df_tb_close(&w);

    const unsigned char *recs[8];
    size_t lens[8];
    cr_assert_eq(read_records(path, recs, lens, 8), 3);
    for (int records = 0; records < 3; records++) {
        const unsigned char *data = recs[records];
        size_t len = lens[records];
        size_t l;
        uint64_t num = 0;
        cr_assert(field_of(data, len, 1, &l, &num) && l == 8, "wall_time");
        if (records == 0) {
            const unsigned char *v = field_of(data, len, 3, &l, &num);
            cr_assert(v && l == 13 && memcmp(v, "brain.Event:2", 13) == 0);
        } else {
            cr_assert(field_of(data, len, 2, &l, &num));
            cr_assert_eq(num, records == 1 ? 7u : 9u);
            size_t sl, vl, tl;
            const unsigned char *sum = field_of(data, len, 5, &sl, &num);
            const unsigned char *val = field_of(sum, sl, 1, &vl, &num);
            const unsigned char *tag = field_of(val, vl, 1, &tl, &num);
            if (records == 1) {
                cr_assert(tl == 10 && memcmp(tag, "train/loss", 10) == 0);
                float x;
                const unsigned char *sv = field_of(val, vl, 2, &tl, &num);
                memcpy(&x, sv, 4);
                cr_assert_eq(x, 0.25f);
            } else {
                cr_assert(tl == 7 && memcmp(tag, "samples", 7) == 0);
                size_t il, el;
                const unsigned char *img = field_of(val, vl, 4, &il, &num);
                cr_assert(field_of(img, il, 1, &el, &num) && num == 64);
                cr_assert(field_of(img, il, 2, &el, &num) && num == 32);
                const unsigned char *enc = field_of(img, il, 4, &el, &num);
                cr_assert(enc && el == sizeof png && memcmp(enc, png, el) == 0);
            }
        }
    }
    df_remove_tree(dir);
}

/* The steps of a file's records (0 where a record has none), framing checked. */
static int record_steps(const char *path, uint64_t *steps, int max) {
    const unsigned char *recs[64];
    size_t lens[64];
    int n = read_records(path, recs, lens, 64);
    cr_assert(n <= 64);
    for (int i = 0; i < n && i < max; i++) {
        size_t l;
        steps[i] = 0;
        if (!field_of(recs[i], lens[i], 2, &l, &steps[i])) steps[i] = 0;
    }
    return n;
}

/* Issue 23.6: a full disk left a corrupt event file. A write that fails (here: the file-size
 * limit, EFBIG) leaves only whole records and is an error naming the file; the records are
 * written by the next write that succeeds, in order. */
Test(train_tensorboard, failed_write_is_rewritten_whole) {
    char dir[] = "/tmp/df_tb_XXXXXX";
    cr_assert(mkdtemp(dir));
    signal(SIGXFSZ, SIG_IGN); /* writes past the limit fail with EFBIG instead */
    df_tb_writer w;
    cr_assert_eq(df_tb_open(&w, dir), DF_OK, "%s", df_last_error());
    cr_assert_eq(df_tb_scalar(&w, "train/loss", 1, 1.0), DF_OK);
    struct stat st;
    cr_assert_eq(stat(w.path, &st), 0);
    struct rlimit r, saved;
    getrlimit(RLIMIT_FSIZE, &saved);
    r = saved;
    r.rlim_cur = (rlim_t)st.st_size + 10; /* room for part of one record */
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &r), 0);
    cr_assert_eq(df_tb_scalar(&w, "train/loss", 2, 2.0), DF_ERR_IO);
    cr_assert(strstr(df_last_error(), w.path) && strstr(df_last_error(), "write failed"), "%s",
              df_last_error());
    cr_assert_eq(df_tb_scalar(&w, "train/loss", 3, 3.0), DF_ERR_IO);
    struct stat after;
    cr_assert_eq(stat(w.path, &after), 0);
    cr_assert_eq(after.st_size, st.st_size, "a partial record was left");
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &saved), 0);
    cr_assert_eq(df_tb_scalar(&w, "train/loss", 4, 4.0), DF_OK, "%s", df_last_error());
    uint64_t steps[8];
    cr_assert_eq(record_steps(w.path, steps, 8), 5);
    for (int i = 1; i < 5; i++) cr_assert_eq(steps[i], (uint64_t)i);
    df_tb_close(&w);
    df_remove_tree(dir);
}
