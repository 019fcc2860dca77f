/* tensorboard.c — TensorBoard event files written by hand (no protobuf dependency).
 *
 * A file `events.out.tfevents.<unix time>.<host>` is a sequence of records:
 *   u64 length (LE) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)
 * with mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8. Each record's data is one serialized
 * tensorflow.Event:
 *   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
 *   Summary { repeated Value value = 1; }
 *   Value   { string tag = 1; float simple_value = 2; Image image = 4; }
 *   Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
 * The first event carries file_version "brain.Event:2", as TensorFlow's writer does.
 * Failed writes: a record is framed in memory and queued; the queue is written at the offset
 * after the last whole record. A failed or short write cuts the file back there (a reader never
 * meets a torn record) and keeps the queue, which the next successful write empties: no record
 * is lost to a full disk that frees up again.
 */
#include "train/train.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

/* A growing byte buffer for one message. */
typedef struct pb_buf {
    unsigned char *data;
    size_t len, cap;
    bool failed;
} pb_buf;

static void pb_put(pb_buf *b, const void *p, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        unsigned char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void pb_varint(pb_buf *b, uint64_t v) {
    unsigned char tmp[10];
    int n = 0;
    do {
        tmp[n] = (unsigned char)(v & 0x7f);
        v >>= 7;
        if (v) tmp[n] |= 0x80;
        n++;
    } while (v);
    pb_put(b, tmp, (size_t)n);
}

static void pb_tag(pb_buf *b, int field, int wire) {
    pb_varint(b, (uint64_t)field << 3 | (uint64_t)wire);
}

static void pb_bytes(pb_buf *b, int field, const void *p, size_t n) {
    pb_tag(b, field, 2);
    pb_varint(b, n);
    pb_put(b, p, n);
}

static void pb_double(pb_buf *b, int field, double v) {
    pb_tag(b, field, 1);
    pb_put(b, &v, 8); /* little-endian host */
}

static void pb_float(pb_buf *b, int field, float v) {
    pb_tag(b, field, 5);
    pb_put(b, &v, 4);
}

static uint32_t masked_crc(const void *p, size_t n) {
    uint32_t c = df_crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static double now_seconds(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec * 1e-6;
}

/* Writes the queued records after the last whole one. */
static df_status flush_pending(df_tb_writer *w) {
    size_t done = 0;
    int err = 0;
    while (done < w->pending_len) {
        ssize_t n =
            pwrite(w->fd, w->pending + done, w->pending_len - done, (off_t)w->good + (off_t)done);
        if (n <= 0) {
            err = n < 0 ? errno : ENOSPC;
            if (n < 0 && err == EINTR) continue;
            break;
        }
        done += (size_t)n;
    }
    if (done < w->pending_len) {
        if (ftruncate(w->fd, (off_t)w->good) != 0) { /* a later write overwrites the rest */
        }
        return df_error(DF_ERR_IO, "%s: write failed: %s (%zu bytes of records waiting)", w->path,
                        strerror(err), w->pending_len);
    }
    w->good += (int64_t)w->pending_len;
    w->pending_len = 0;
    return DF_OK;
}

static df_status write_record(df_tb_writer *w, const pb_buf *event) {
    if (event->failed) return df_error(DF_ERR_NOMEM, "%s: out of memory", w->path);
    if (w->fd < 0) return df_error(DF_ERR_IO, "%s: not open", w->path);
    uint64_t len = event->len;
    uint32_t len_crc = masked_crc(&len, 8), data_crc = masked_crc(event->data, event->len);
    size_t need = w->pending_len + 16 + event->len;
    if (need > w->pending_cap) {
        size_t cap = w->pending_cap ? w->pending_cap : 4096;
        while (cap < need) cap *= 2;
        unsigned char *p = realloc(w->pending, cap);
        if (!p) return df_error(DF_ERR_NOMEM, "%s: out of memory queueing a record", w->path);
        w->pending = p;
        w->pending_cap = cap;
    }
    unsigned char *p = w->pending + w->pending_len;
    memcpy(p, &len, 8);
    memcpy(p + 8, &len_crc, 4);
    if (event->len) memcpy(p + 12, event->data, event->len);
    memcpy(p + 12 + event->len, &data_crc, 4);
    w->pending_len = need;
    return flush_pending(w);
}

/* An Event with wall_time and step; the caller adds its payload. */
static void event_head(pb_buf *b, int64_t step) {
    pb_double(b, 1, now_seconds());
    pb_tag(b, 2, 0);
    pb_varint(b, (uint64_t)step);
}

df_status df_tb_open(df_tb_writer *w, const char *logdir) {
    memset(w, 0, sizeof *w);
    w->fd = -1;
    DF_TRY(df_mkdirs(logdir));
    char host[64] = "localhost";
    gethostname(host, sizeof host - 1);
    DF_TRY(df_pathf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s", logdir,
                    (long long)now_seconds(), host));
    w->fd = open(w->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (w->fd < 0) return df_error(DF_ERR_IO, "%s: cannot create: %s", w->path, strerror(errno));
    off_t end = lseek(w->fd, 0, SEEK_END);
    w->good = end > 0 ? (int64_t)end : 0;
    pb_buf b = {0};
    event_head(&b, 0);
    static const char version[] = "brain.Event:2";
    pb_bytes(&b, 3, version, sizeof version - 1);
    df_status st = write_record(w, &b);
    free(b.data);
    return st;
}

df_status df_tb_scalar(df_tb_writer *w, const char *tag, int64_t step, double value) {
    pb_buf val = {0}, sum = {0}, ev = {0};
    pb_bytes(&val, 1, tag, strlen(tag));
    pb_float(&val, 2, (float)value);
    pb_bytes(&sum, 1, val.data, val.len);
    event_head(&ev, step);
    pb_bytes(&ev, 5, sum.data, sum.len);
    df_status st =
        val.failed || sum.failed ? df_error(DF_ERR_NOMEM, "out of memory") : write_record(w, &ev);
    free(val.data);
    free(sum.data);
    free(ev.data);
    return st;
}

df_status df_tb_image(df_tb_writer *w, const char *tag, int64_t step, int height, int width,
                      int channels, const void *png, size_t png_len) {
    pb_buf img = {0}, val = {0}, sum = {0}, ev = {0};
    pb_tag(&img, 1, 0);
    pb_varint(&img, (uint64_t)height);
    pb_tag(&img, 2, 0);
    pb_varint(&img, (uint64_t)width);
    pb_tag(&img, 3, 0);
    pb_varint(&img, (uint64_t)channels);
    pb_bytes(&img, 4, png, png_len);
    pb_bytes(&val, 1, tag, strlen(tag));
    pb_bytes(&val, 4, img.data, img.len);
    pb_bytes(&sum, 1, val.data, val.len);
    event_head(&ev, step);
    pb_bytes(&ev, 5, sum.data, sum.len);
    df_status st = img.failed || val.failed || sum.failed ? df_error(DF_ERR_NOMEM, "out of memory")
                                                          : write_record(w, &ev);
    free(img.data);
    free(val.data);
    free(sum.data);
    free(ev.data);
    return st;
}

void df_tb_close(df_tb_writer *w) {
    if (w->fd >= 0) close(w->fd);
    w->fd = -1;
    free(w->pending);
    w->pending = NULL;
    w->pending_len = w->pending_cap = 0;
}
