/* compress-cat: stdin -> gzip or zstd on stdout through snap_compressor_*() (what a save uses), with the
 * digests, sizes and throughput on stderr. For the benchmarks (against igzip, pigz, gzip and the zstd CLI)
 * and for poking at the pipelines by hand. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "snapshot/snapshot.h"

#define READ_SIZE (4u * 1024 * 1024)

static int write_all(void *userdata, const void *data, size_t size)
{
        int fd = *(int *)userdata;
        const char *p = data;

        while (size > 0) {
                ssize_t n = write(fd, p, size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                size -= (size_t)n;
        }
        return 0;
}

static int parse_long(const char *s, long min, long max, long *ret)
{
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

enum { OPT_FORMAT = 'f' };

static const struct option options[] = {
        {"format", required_argument, NULL, OPT_FORMAT},
        {},
};

/* The level is checked against the format by snap_compressor_new(), whichever flag comes first. */
static int parse_args(int argc, char **argv, SnapCompressorOptions *o)
{
        int c;
        long v;

        while ((c = getopt_long(argc, argv, "f:t:l:b:h", options, NULL)) >= 0) {
                switch (c) {
                case OPT_FORMAT:
                        if (snap_compression_from_string(optarg, &o->format) < 0)
                                return -EINVAL;
                        break;
                case 't':
                        if (parse_long(optarg, 0, SNAP_COMPRESSOR_THREADS_MAX, &v) < 0)
                                return -EINVAL;
                        o->threads = (unsigned)v;
                        break;
                case 'l':
                        if (parse_long(optarg, -1, INT_MAX, &v) < 0)
                                return -EINVAL;
                        o->level = (int)v;
                        break;
                case 'b':
                        if (parse_long(optarg, 1, LONG_MAX, &v) < 0)
                                return -EINVAL;
                        o->block_size = (size_t)v;
                        break;
                default:
                        return -EINVAL;
                }
        }
        return optind == argc ? 0 : -EINVAL;
}

static double now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int run(SnapCompressor *z, SnapCompressResult *result, NbError *e)
{
        _cleanup_free_ char *buf = malloc(READ_SIZE);
        if (!buf)
                return nb_error_set(e, -ENOMEM, "Out of memory");
        for (;;) {
                ssize_t n = read(STDIN_FILENO, buf, READ_SIZE);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return nb_error_set(e, -errno, "Failed to read standard input: %m");
                if (n == 0)
                        break;
                int r = snap_compressor_write(z, buf, (size_t)n, e);
                if (r < 0)
                        return r;
        }
        return snap_compressor_finish(z, result, e);
}

int main(int argc, char **argv)
{
        int out_fd = STDOUT_FILENO;
        SnapCompressorOptions o = {.level = -1, .output = write_all, .userdata = &out_fd};
        _cleanup_snap_compressor_ SnapCompressor *z = NULL;
        SnapCompressResult result;
        NbError e = {};

        if (parse_args(argc, argv, &o) < 0) {
                fprintf(stderr,
                        "Usage: %s [--format gzip|zstd] [-t THREADS] [-l LEVEL] [-b BLOCKSIZE (gzip)] <in "
                        ">out\n"
                        "  LEVEL: -1 (the default), gzip 0-9, zstd 1-19\n",
                        argv[0]);
                return 2;
        }
        double t0 = now();
        if (snap_compressor_new(&o, &z, &e) < 0 || run(z, &result, &e) < 0) {
                fprintf(stderr, "compress-cat: %s\n", e.msg);
                return 1;
        }
        double dt = now() - t0;
        fprintf(stderr,
                "format=%s\nengine=%s\ndiff_id=%s\ndigest=%s\nsize_in=%" PRIu64 "\nsize_out=%" PRIu64
                "\nratio=%.4f\nseconds=%.3f\nMB/s=%.1f\n",
                snap_compression_to_string(o.format), snap_compression_engine(o.format), result.diff_id,
                result.digest, result.size_in, result.size_out,
                result.size_in ? (double)result.size_out / (double)result.size_in : 0.0, dt,
                dt > 0 ? (double)result.size_in / 1e6 / dt : 0.0);
        return 0;
}
