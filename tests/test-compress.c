/* test-compress: the compressor interface (snapshot/compress.c) with both backends behind it. Through
 * snap_compressor_*() only: each format's stream decodes back to the input (zlib for gzip, libzstd for
 * zstd), the digests are those of the bytes (a one-shot SHA-256), a failing output callback comes back with
 * its code and a message, bad options and levels are refused with the texts the agent shows, and the names
 * and engines are what the CLI and the config speak. The backends' own tests are test-pgzip and test-pzstd.
 */
#include <stdbool.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <zlib.h>
#include <zstd.h>

#include "snapshot/snapshot.h"
#include "compress-fixtures.h"
#include "tests.h"

static size_t gunzip(const Sink *sink, uint8_t *out, size_t cap)
{
        z_stream s = {0};
        ASSERT_EQ(inflateInit2(&s, 16 + 15), Z_OK); /* gzip wrapper: checks the CRC-32 and ISIZE */
        s.next_in = sink->data;
        s.avail_in = (uInt)sink->size;
        s.next_out = out;
        s.avail_out = (uInt)cap;
        ASSERT_EQ(inflate(&s, Z_FINISH), Z_STREAM_END);
        ASSERT_EQ(s.avail_in, 0); /* one member, nothing after it */
        size_t n = s.total_out;
        inflateEnd(&s);
        return n;
}

static size_t unzstd(const Sink *sink, uint8_t *out, size_t cap)
{
        ZSTD_DCtx *d = ZSTD_createDCtx();
        ZSTD_inBuffer in = {sink->data, sink->size, 0};
        ZSTD_outBuffer ob = {out, cap, 0};
        size_t r;
        ASSERT_TRUE(d);
        do {
                r = ZSTD_decompressStream(d, &ob, &in);
                ASSERT_TRUE(!ZSTD_isError(r));
        } while (r != 0 && in.pos < in.size);
        ASSERT_EQ(r, 0); /* the frame is complete, its checksum verified */
        ASSERT_EQ(in.pos, sink->size);
        ZSTD_freeDCtx(d);
        return ob.pos;
}

static void check_stream(SnapCompression f, const uint8_t *data, size_t n, const Sink *sink,
                         const SnapCompressResult *res)
{
        uint8_t *out = malloc(n + 1);
        ASSERT_TRUE(out);
        size_t got = f == SNAP_COMPRESSION_GZIP ? gunzip(sink, out, n + 1) : unzstd(sink, out, n + 1);
        ASSERT_EQ(got, n);
        ASSERT_TRUE(n == 0 || memcmp(out, data, n) == 0);
        check_result(res, data, n, sink);
        free(out);
}

static void roundtrip(SnapCompression f, int level, size_t n, size_t step)
{
        uint8_t *data = make_mix(n);
        Sink sink = {0};
        SnapCompressorOptions o = {
                .format = f, .threads = 2, .level = level, .output = sink_write, .userdata = &sink};
        _cleanup_snap_compressor_ SnapCompressor *c = NULL;
        SnapCompressResult res;
        NbError e = {0};

        ASSERT_OK(snap_compressor_new(&o, &c, &e));
        for (size_t off = 0; off < n; off += step)
                ASSERT_OK(snap_compressor_write(c, data + off, n - off < step ? n - off : step, &e));
        ASSERT_OK(snap_compressor_finish(c, &res, &e));
        ASSERT_TRUE(snap_compressor_finish(c, NULL, &e) < 0); /* once only */
        check_stream(f, data, n, &sink, &res);
        free(sink.data);
        free(data);
}

static void test_roundtrip(void)
{
        for (SnapCompression f = 0; f < _SNAP_COMPRESSION_MAX; f++) {
                printf("roundtrip %s (%s)\n", snap_compression_to_string(f), snap_compression_engine(f));
                roundtrip(f, -1, 0, 1);
                roundtrip(f, -1, 1, 1);
                roundtrip(f, -1, 3 * MIB + 17, 100000);
                roundtrip(f, f == SNAP_COMPRESSION_GZIP ? 0 : 1, MIB + 1, MIB);
                roundtrip(f, f == SNAP_COMPRESSION_GZIP ? 9 : 19, MIB / 2, 4096);
        }
}

/* The callback's code comes back from write() or finish(), with a message that says where, and stays. */
static void test_output_failure(void)
{
        size_t n = 6 * MIB;
        uint8_t *data = make_mix(n);
        for (SnapCompression f = 0; f < _SNAP_COMPRESSION_MAX; f++) {
                Sink sink = {.fail_after = 100 * 1024, .fail_code = -EPIPE};
                SnapCompressorOptions o = {
                        .format = f, .threads = 2, .output = sink_write, .userdata = &sink};
                SnapCompressor *c = NULL;
                NbError e = {0};
                int r = 0;

                o.level = -1;
                ASSERT_OK(snap_compressor_new(&o, &c, &e));
                for (size_t off = 0; off < n && r == 0; off += MIB)
                        r = snap_compressor_write(c, data + off, MIB, &e);
                if (r == 0)
                        r = snap_compressor_finish(c, NULL, &e);
                ASSERT_EQ(r, -EPIPE);
                ASSERT_EQ(e.code, -EPIPE);
                ASSERT_TRUE(strstr(e.msg, "cannot write compressed output at offset"));
                ASSERT_TRUE(strstr(e.msg, strerror(EPIPE)));
                ASSERT_EQ(snap_compressor_write(c, data, 1, NULL), -EPIPE);
                ASSERT_TRUE(snap_compressor_free(c) == NULL);
                free(sink.data);
        }
        free(data);
}

static void check_refused(const SnapCompressorOptions *o, const char *want_msg)
{
        SnapCompressor *c = NULL;
        NbError e = {0};
        ASSERT_EQ(snap_compressor_new(o, &c, &e), -EINVAL);
        ASSERT_TRUE(c == NULL);
        if (!strstr(e.msg, want_msg))
                fprintf(stderr, "message: %s\n", e.msg);
        ASSERT_TRUE(strstr(e.msg, want_msg));
}

static void test_invalid(void)
{
        Sink sink = {0};
        SnapCompressorOptions o = {.level = -1, .output = sink_write, .userdata = &sink};

        o.format = _SNAP_COMPRESSION_MAX;
        check_refused(&o, "unknown compression 2");
        o.format = SNAP_COMPRESSION_GZIP;
        o.level = 10;
        check_refused(&o, "level 10 is not a gzip level: gzip takes 0 to 9 (default 1)");
        o.format = SNAP_COMPRESSION_ZSTD;
        o.level = 0;
        check_refused(&o, "level 0 is not a zstd level: zstd takes 1 to 19 (default 3)");
        o.level = 20;
        check_refused(&o, "zstd takes 1 to 19");
        o.level = -2;
        check_refused(&o, "zstd takes 1 to 19");
        o.level = -1;
        o.block_size = MIB;
        check_refused(&o, "zstd takes no block size");
        o.block_size = 0;
        o.threads = SNAP_COMPRESSOR_THREADS_MAX + 1;
        check_refused(&o, "too many compression threads");
        o.threads = 0;
        o.output = NULL;
        check_refused(&o, "no output callback given for the zstd stream");
        o.format = SNAP_COMPRESSION_GZIP;
        o.output = sink_write;
        o.block_size = 1;
        check_refused(&o, "Invalid gzip block size 1");
        ASSERT_TRUE(snap_compressor_free(NULL) == NULL);
}

/* Abandoned mid-stream: free() stops the threads and never calls the callback again. */
static void test_abandon(void)
{
        uint8_t *data = make_mix(3 * MIB);
        for (SnapCompression f = 0; f < _SNAP_COMPRESSION_MAX; f++) {
                Sink sink = {0};
                SnapCompressorOptions o = {
                        .format = f, .threads = 3, .level = -1, .output = sink_write, .userdata = &sink};
                SnapCompressor *c = NULL;
                ASSERT_OK(snap_compressor_new(&o, &c, NULL));
                ASSERT_OK(snap_compressor_write(c, data, 3 * MIB, NULL));
                ASSERT_TRUE(snap_compressor_free(c) == NULL);
                free(sink.data);
        }
        free(data);
}

static void test_names(void)
{
        SnapCompression c;
        ASSERT_STREQ(snap_compression_to_string(SNAP_COMPRESSION_GZIP), "gzip");
        ASSERT_STREQ(snap_compression_to_string(SNAP_COMPRESSION_ZSTD), "zstd");
        ASSERT_STREQ(snap_compression_to_string(_SNAP_COMPRESSION_MAX), "unknown");
        ASSERT_STREQ(snap_compression_to_string((SnapCompression)-1), "unknown");
        ASSERT_OK(snap_compression_from_string("zstd", &c));
        ASSERT_EQ(c, SNAP_COMPRESSION_ZSTD);
        ASSERT_OK(snap_compression_from_string("gzip", &c));
        ASSERT_EQ(c, SNAP_COMPRESSION_GZIP);
        ASSERT_EQ(snap_compression_from_string("ZSTD", &c), -EINVAL); /* case matters */
        ASSERT_EQ(snap_compression_from_string("lz4", &c), -EINVAL);
        ASSERT_EQ(snap_compression_from_string(NULL, &c), -EINVAL);
        ASSERT_EQ(c, SNAP_COMPRESSION_GZIP); /* untouched on failure */

        const char *g = snap_compression_engine(SNAP_COMPRESSION_GZIP);
        ASSERT_TRUE(strcmp(g, "isa-l") == 0 || strcmp(g, "zlib") == 0);
        const char *z = snap_compression_engine(SNAP_COMPRESSION_ZSTD);
        ASSERT_TRUE(strncmp(z, "libzstd ", 8) == 0);
        ASSERT_STREQ(z + 8, ZSTD_versionString());
        ASSERT_STREQ(snap_compression_engine(_SNAP_COMPRESSION_MAX), "unknown");

        ASSERT_OK(snap_compression_level_check(SNAP_COMPRESSION_GZIP, -1, NULL));
        ASSERT_OK(snap_compression_level_check(SNAP_COMPRESSION_GZIP, 0, NULL));
        ASSERT_OK(snap_compression_level_check(SNAP_COMPRESSION_GZIP, SNAP_GZIP_LEVEL_MAX, NULL));
        ASSERT_OK(snap_compression_level_check(SNAP_COMPRESSION_ZSTD, SNAP_ZSTD_LEVEL_MAX, NULL));
        ASSERT_EQ(snap_compression_level_check(SNAP_COMPRESSION_ZSTD, 0, NULL), -EINVAL);
        ASSERT_EQ(snap_compression_level_check(_SNAP_COMPRESSION_MAX, -1, NULL), -EINVAL);
}

int main(void)
{
        test_names();
        test_invalid();
        test_roundtrip();
        test_output_failure();
        test_abandon();
        printf("ok\n");
        return 0;
}
