/* pgzip-cat: stdin -> gzip on stdout through pgzip, with the digests, sizes and throughput on stderr. For
 * the benchmarks (against igzip, pigz, gzip) and for poking at the pipeline by hand. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "snapshot/pgzip.h"

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

static int parse_args(int argc, char **argv, PGzipOptions *o)
{
        int c;
        long v;

        while ((c = getopt(argc, argv, "t:l:b:h")) >= 0) {
                switch (c) {
                case 't':
                        if (parse_long(optarg, 0, PGZIP_THREADS_MAX, &v) < 0)
                                return -EINVAL;
                        o->threads = (unsigned)v;
                        break;
                case 'l':
                        if (parse_long(optarg, -1, 9, &v) < 0)
                                return -EINVAL;
                        o->level = (int)v;
                        break;
                case 'b':
                        if (parse_long(optarg, PGZIP_BLOCK_MIN, PGZIP_BLOCK_MAX, &v) < 0)
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

static int run(PGzip *z, PGzipResult *result, NbError *e)
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
                int r = pgzip_write(z, buf, (size_t)n, e);
                if (r < 0)
                        return r;
        }
        return pgzip_finish(z, result, e);
}

int main(int argc, char **argv)
{
        int out_fd = STDOUT_FILENO;
        PGzipOptions o = {.level = -1, .output = write_all, .userdata = &out_fd};
        _cleanup_pgzip_ PGzip *z = NULL;
        PGzipResult result;
        NbError e = {};

        if (parse_args(argc, argv, &o) < 0) {
                fprintf(stderr, "Usage: %s [-t THREADS] [-l LEVEL(-1..9)] [-b BLOCKSIZE] <in >out.gz\n",
                        argv[0]);
                return 2;
        }
        double t0 = now();
        if (pgzip_new(&o, &z, &e) < 0 || run(z, &result, &e) < 0) {
                fprintf(stderr, "pgzip-cat: %s\n", e.msg);
                return 1;
        }
        double dt = now() - t0;
        fprintf(stderr,
                "engine=%s\ndiff_id=%s\ndigest=%s\nsize_in=%" PRIu64 "\nsize_out=%" PRIu64
                "\nratio=%.4f\nseconds=%.3f\nMB/s=%.1f\n",
                pgzip_engine(), result.diff_id, result.digest, result.size_in, result.size_out,
                result.size_in ? (double)result.size_out / (double)result.size_in : 0.0, dt,
                dt > 0 ? (double)result.size_in / 1e6 / dt : 0.0);
        return 0;
}
