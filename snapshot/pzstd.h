/* pzstd.h: multithreaded zstd of one byte stream, with both layer digests computed on the way.
 *
 * The same shape as pgzip.h, for application/vnd.oci.image.layer.v1.tar+zstd layers: the input is copied
 * into 1 MiB blocks and handed to a driver thread that feeds libzstd's multithreaded streaming compressor
 * (ZSTD_c_nbWorkers workers cut the stream into jobs and compress them in parallel) and hashes the input
 * (the layer's diff_id); a writer thread hashes the compressed bytes (the blob digest) and calls the output
 * callback. The result is ONE standard zstd frame with a content checksum: `zstd -d`, Go's klauspost/zstd
 * (containerd, containers/image) and libzstd read it.
 *
 * The output depends only on the input and the level, never on the thread count (see pzstd.c).
 *
 * The output callback is called from the writer thread, in stream order; it may block (e.g. on a network
 * upload), which stalls the pipeline through bounded buffer pools: memory stays about PZSTD_BUFFERS 1 MiB
 * buffers plus libzstd's own (a few job sizes per worker: ~10 MiB per worker at level 3, ~100 MiB at 19).
 * A non-zero return from the callback fails the stream: pzstd_write()/pzstd_finish() then return it.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/digest.h"
#include "common/error.h"

#define PZSTD_LEVEL_DEFAULT 3 /* zstd's own default */
#define PZSTD_LEVEL_MIN     1
#define PZSTD_LEVEL_MAX     19 /* 20..22 ("ultra") need hundreds of MiB per worker: not offered */
#define PZSTD_THREADS_MAX   256

typedef int (*pzstd_output_fn)(void *userdata, const void *data, size_t size);

typedef struct PZstdOptions {
        unsigned threads; /* libzstd workers; 0: number of online CPUs. Never 0 workers (see pzstd.c) */
        int level;        /* PZSTD_LEVEL_MIN..PZSTD_LEVEL_MAX; 0 or -1: PZSTD_LEVEL_DEFAULT */
        pzstd_output_fn output;
        void *userdata;
} PZstdOptions;

typedef struct PZstdResult {
        char diff_id[NB_DIGEST_STR_MAX]; /* "sha256:<hex>" of the uncompressed stream */
        char digest[NB_DIGEST_STR_MAX];  /* "sha256:<hex>" of the compressed stream */
        uint64_t size_in;                /* bytes of uncompressed input */
        uint64_t size_out;               /* bytes of compressed output */
} PZstdResult;

typedef struct PZstd PZstd;

int pzstd_new(const PZstdOptions *o, PZstd **ret, NbError *e);
/* Feeds input. Copies data; may block while the buffer pool is exhausted. */
int pzstd_write(PZstd *z, const void *data, size_t size, NbError *e);
/* Ends the frame, waits for the output callback to have seen every byte. */
int pzstd_finish(PZstd *z, PZstdResult *ret, NbError *e);
/* Stops the threads (an unfinished stream is abandoned) and frees; NULL is fine. */
PZstd *pzstd_free(PZstd *z);
static inline void pzstd_freep(PZstd **z)
{
        pzstd_free(*z);
}
#define _cleanup_pzstd_ _cleanup_(pzstd_freep)

/* libzstd's version string, e.g. "1.5.4". */
const char *pzstd_version(void);
