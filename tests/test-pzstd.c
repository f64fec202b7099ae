/* test-pzstd: the multithreaded zstd stream (snapshot/pzstd.c) is one valid zstd frame that
 * libzstd decompresses back to the input, whatever the size and the write pattern; the digests are those
 * of the bytes (checked against a one-shot SHA-256); the bytes are the same for 1, 2 and 4 threads; a
 * failing output callback comes back as the error and never hangs; bad options are refused. Driven
 * through snap_compressor_*() with SNAP_COMPRESSION_ZSTD, as every caller does. */
#include <stdbool.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <zstd.h>

#include "snapshot/pzstd.h"
#include "compress-fixtures.h"
#include "tests.h"

/* Compresses data in writes of `chunk` bytes (0: one write). */
static void compress(const uint8_t *data, size_t n, unsigned threads, int level, size_t chunk, Sink *sink,
                     SnapCompressResult *res)
{
        SnapCompressorOptions o = {.format = SNAP_COMPRESSION_ZSTD,
                                   .threads = threads,
                                   .level = level,
                                   .output = sink_write,
                                   .userdata = sink};
        SnapCompressor *z = NULL;
        NbError e = {0};
        ASSERT_OK(snap_compressor_new(&o, &z, &e));
        size_t off = 0;
        while (off < n) {
                size_t k = chunk && chunk < n - off ? chunk : n - off;
                ASSERT_OK(snap_compressor_write(z, data + off, k, &e));
                off += k;
        }
        ASSERT_OK(snap_compressor_finish(z, res, &e));
        ASSERT_TRUE(snap_compressor_finish(z, NULL, &e) < 0); /* only once */
        snap_compressor_free(z);
}

/* Streaming decompression: a multithreaded frame has no content size in its header. */
static void check_roundtrip(const uint8_t *data, size_t n, const Sink *sink, const SnapCompressResult *res)
{
        ZSTD_DCtx *d = ZSTD_createDCtx();
        ASSERT_TRUE(d);
        uint8_t *out = malloc(n + 1);
        ASSERT_TRUE(out);
        ZSTD_inBuffer in = {sink->data, sink->size, 0};
        ZSTD_outBuffer ob = {out, n + 1, 0};
        size_t r;
        do {
                r = ZSTD_decompressStream(d, &ob, &in);
                if (ZSTD_isError(r))
                        fprintf(stderr, "zstd: %s\n", ZSTD_getErrorName(r));
                ASSERT_TRUE(!ZSTD_isError(r));
        } while (r != 0 && in.pos < in.size);
        ASSERT_EQ(r, 0); /* the frame is complete (checksum verified) */
        ASSERT_EQ(in.pos, sink->size);
        ASSERT_EQ(ob.pos, n);
        ASSERT_TRUE(n == 0 || memcmp(out, data, n) == 0);
        check_result(res, data, n, sink);
        free(out);
        ZSTD_freeDCtx(d);
}

static void test_sizes(void)
{
        static const size_t sizes[] = {0, 1, 4096, MIB - 1, MIB, MIB + 1, 3 * MIB + 17, 20 * MIB};
        uint8_t *data = make_mix(20 * MIB);
        for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
                Sink sink = {0};
                SnapCompressResult res;
                compress(data, sizes[i], 2, -1, 0, &sink, &res);
                check_roundtrip(data, sizes[i], &sink, &res);
                printf("size %zu: %zu compressed\n", sizes[i], sink.size);
                free(sink.data);
        }
        free(data);
}

/* The same bytes for 1, 2, 4 workers and any write pattern, at two levels (several libzstd jobs each). */
static void test_deterministic(void)
{
        size_t n = 40 * MIB + 12345;
        uint8_t *data = make_mix(n);
        static const int levels[] = {1, 3};
        static const unsigned threads[] = {1, 2, 4};
        static const size_t chunks[] = {0, 1000, 3 * MIB + 1};
        for (size_t l = 0; l < ELEMENTSOF(levels); l++) {
                Sink first = {0};
                SnapCompressResult first_res;
                for (size_t t = 0; t < ELEMENTSOF(threads); t++) {
                        Sink sink = {0};
                        SnapCompressResult res;
                        compress(data, n, threads[t], levels[l], chunks[t], &sink, &res);
                        if (t == 0) {
                                check_roundtrip(data, n, &sink, &res);
                                first = sink;
                                first_res = res;
                                continue;
                        }
                        ASSERT_EQ(sink.size, first.size);
                        ASSERT_TRUE(memcmp(sink.data, first.data, sink.size) == 0);
                        ASSERT_STREQ(res.digest, first_res.digest);
                        ASSERT_STREQ(res.diff_id, first_res.diff_id);
                        free(sink.data);
                }
                printf("level %d: %zu -> %zu bytes, identical for 1/2/4 threads\n", levels[l], n,
                       first.size);
                free(first.data);
        }
        free(data);
}

static void test_output_failure(void)
{
        size_t n = 30 * MIB;
        uint8_t *data = make_mix(n);
        Sink sink = {.fail_after = 2 * MIB, .fail_code = -EPIPE};
        SnapCompressorOptions o = {.format = SNAP_COMPRESSION_ZSTD,
                                   .threads = 2,
                                   .level = 1,
                                   .output = sink_write,
                                   .userdata = &sink};
        SnapCompressor *z = NULL;
        NbError e = {0};
        ASSERT_OK(snap_compressor_new(&o, &z, &e));
        int r = 0;
        for (size_t off = 0; off < n && r >= 0; off += MIB)
                r = snap_compressor_write(z, data + off, MIB, &e);
        if (r >= 0)
                r = snap_compressor_finish(z, NULL, &e);
        ASSERT_EQ(r, -EPIPE);
        ASSERT_TRUE(strstr(e.msg, "cannot write compressed output") != NULL);
        ASSERT_TRUE(snap_compressor_write(z, data, 10, &e) < 0);
        snap_compressor_free(z);
        ASSERT_EQ(sink.calls_after_failure, 0);
        free(sink.data);
        free(data);
}

/* Freed in the middle of a stream, with the pools full and the writer blocked on nothing. */
static void test_abandon(void)
{
        size_t n = 12 * MIB;
        uint8_t *data = make_mix(n);
        Sink sink = {0};
        SnapCompressorOptions o = {.format = SNAP_COMPRESSION_ZSTD,
                                   .threads = 3,
                                   .level = 3,
                                   .output = sink_write,
                                   .userdata = &sink};
        SnapCompressor *z = NULL;
        NbError e = {0};
        ASSERT_OK(snap_compressor_new(&o, &z, &e));
        ASSERT_OK(snap_compressor_write(z, data, n, &e));
        ASSERT_TRUE(snap_compressor_free(z) == NULL);
        ASSERT_TRUE(snap_compressor_free(NULL) == NULL);
        free(sink.data);
        free(data);
}

static void test_invalid(void)
{
        Sink sink = {0};
        SnapCompressor *z = NULL;
        NbError e = {0};
        SnapCompressorOptions none = {.format = SNAP_COMPRESSION_ZSTD, .level = 3};
        ASSERT_EQ(snap_compressor_new(&none, &z, &e), -EINVAL);
        static const int bad_levels[] = {-2, 0, 20, 22, 1000};
        for (size_t i = 0; i < ELEMENTSOF(bad_levels); i++) {
                SnapCompressorOptions o = {.format = SNAP_COMPRESSION_ZSTD,
                                           .level = bad_levels[i],
                                           .output = sink_write,
                                           .userdata = &sink};
                ASSERT_EQ(snap_compressor_new(&o, &z, &e), -EINVAL);
                ASSERT_TRUE(strstr(e.msg, "zstd level") != NULL);
        }
        SnapCompressorOptions many = {.format = SNAP_COMPRESSION_ZSTD,
                                      .threads = PZSTD_THREADS_MAX + 1,
                                      .output = sink_write,
                                      .userdata = &sink};
        ASSERT_EQ(snap_compressor_new(&many, &z, &e), -EINVAL);
        ASSERT_TRUE(z == NULL);
        /* the level bounds themselves are fine; -1 means the default */
        static const int good_levels[] = {-1, PZSTD_LEVEL_MIN, PZSTD_LEVEL_MAX};
        for (size_t i = 0; i < ELEMENTSOF(good_levels); i++) {
                SnapCompressorOptions o = {.format = SNAP_COMPRESSION_ZSTD,
                                           .threads = 1,
                                           .level = good_levels[i],
                                           .output = sink_write,
                                           .userdata = &sink};
                SnapCompressResult res;
                ASSERT_OK(snap_compressor_new(&o, &z, &e));
                ASSERT_OK(snap_compressor_write(z, "hello", 5, &e));
                ASSERT_OK(snap_compressor_finish(z, &res, &e));
                z = snap_compressor_free(z);
        }
        free(sink.data);
}

int main(void)
{
        setvbuf(stdout, NULL, _IOLBF, 0);
        printf("%s\n", snap_compression_engine(SNAP_COMPRESSION_ZSTD));
        test_invalid();
        test_sizes();
        test_deterministic();
        test_output_failure();
        test_abandon();
        return 0;
}
