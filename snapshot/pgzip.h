/* pgzip.h: parallel gzip of one byte stream, with both layer digests computed on the way.
 *
 * The input is cut into blocks (default 1 MiB) compressed concurrently by N worker threads with ISA-L's
 * deflate (zlib when built without ISA-L), each block ending on a byte boundary (sync/full flush, the last
 * one final), and joined in order into ONE standard gzip member, as pigz does: any gunzip, Go's
 * compress/gzip and containerd read it. The CRC-32 is computed per block and combined. SHA-256 of the
 * uncompressed input (the layer's diff_id) and of the compressed output (the blob digest) are computed on
 * their own threads.
 *
 * The output callback is called from one writer thread, in stream order; it may block (e.g. on a network
 * upload), which stalls the pipeline through bounded queues: memory stays about (2 * threads + 4) blocks.
 * A non-zero return from the callback fails the stream: pgzip_write()/pgzip_finish() then return it.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/digest.h"
#include "common/error.h"

#define PGZIP_BLOCK_DEFAULT (1024u * 1024)
#define PGZIP_BLOCK_MIN     (32u * 1024)
#define PGZIP_BLOCK_MAX     (64u * 1024 * 1024)
#define PGZIP_THREADS_MAX   256

typedef int (*pgzip_output_fn)(void *userdata, const void *data, size_t size);

typedef struct PGzipOptions {
        unsigned threads;  /* 0: number of online CPUs */
        int level;         /* 0..9 in gzip terms (mapped onto ISA-L levels 0..3); -1: default (1) */
        size_t block_size; /* 0: PGZIP_BLOCK_DEFAULT */
        pgzip_output_fn output;
        void *userdata;
} PGzipOptions;

typedef struct PGzipResult {
        char diff_id[NB_DIGEST_STR_MAX]; /* "sha256:<hex>" of the uncompressed stream */
        char digest[NB_DIGEST_STR_MAX];  /* "sha256:<hex>" of the compressed stream */
        uint64_t size_in;                /* bytes of uncompressed input */
        uint64_t size_out;               /* bytes of compressed output */
} PGzipResult;

typedef struct PGzip PGzip;

int pgzip_new(const PGzipOptions *o, PGzip **ret, NbError *e);
/* Feeds input. Copies data; may block while the queues are full. */
int pgzip_write(PGzip *z, const void *data, size_t size, NbError *e);
/* Flushes, writes the gzip trailer, waits for the output callback to have seen every byte. */
int pgzip_finish(PGzip *z, PGzipResult *ret, NbError *e);
/* Stops the threads (an unfinished stream is abandoned) and frees; NULL is fine. */
PGzip *pgzip_free(PGzip *z);
static inline void pgzip_freep(PGzip **z)
{
        pgzip_free(*z);
}
#define _cleanup_pgzip_ _cleanup_(pgzip_freep)

/* "isa-l" or "zlib": the deflate engine this build uses. */
const char *pgzip_engine(void);
