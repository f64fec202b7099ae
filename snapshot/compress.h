/* compress.h: the backend interface behind snap_compressor_*() (snapshot.h), internal to the library.
 *
 * Like a libarchive write filter, a compression format is one SnapCompressorBackend: its name, its levels,
 * its engine, and four verbs over its own state (pgzip.c: PGzip, pzstd.c: PZstd). compress.c keeps the one
 * table of backends and does what is the same for all: option checks common to every format, the level
 * range, the dispatch. The helpers below are what the backends' pipelines share: the two SHA-256 contexts,
 * the first-failure record, and starting a thread with signals blocked.
 */
#pragma once

#include <pthread.h>
#include <stdarg.h>

#include "common/digest.h"
#include "snapshot/snapshot.h"

typedef struct SnapCompressorBackend {
        const char *name; /* "gzip" */
        int level_min, level_max, level_default;
        const char *(*engine)(void);
        /* o is checked already: format, output, threads, level in range. */
        int (*new)(const SnapCompressorOptions *o, void **ret, NbError *e);
        int (*write)(void *state, const void *data, size_t size, NbError *e);
        int (*finish)(void *state, SnapCompressResult *ret, NbError *e);
        void (*free)(void *state);
} SnapCompressorBackend;

extern const SnapCompressorBackend snap_backend_gzip; /* pgzip.c */
extern const SnapCompressorBackend snap_backend_zstd; /* pzstd.c */

/* The two SHA-256 contexts of a stream: of the input (the diff_id) and of the output (the blob digest). */
int snap_digests_new(EVP_MD_CTX **ret_in, EVP_MD_CTX **ret_out);
/* Finishes both into a result with the two sizes. */
void snap_digests_result(EVP_MD_CTX *in, EVP_MD_CTX *out, uint64_t size_in, uint64_t size_out,
                         SnapCompressResult *ret);

/* Keeps the first failure of a stream in held (code made a negative errno, 0 becoming -EIO). Returns true
 * when this one was the first, so the caller wakes everyone; held->code stays 0 while healthy. */
bool snap_error_record(NbError *held, int code, const char *fmt, va_list ap) _printf_(3, 0);
/* What a verb returns once the stream stopped: the held failure, or -ECANCELED when the stream was freed
 * rather than failed ("The <name> stream was abandoned"). */
int snap_error_copy(const NbError *held, const char *name, NbError *e);
/* What a verb returns once the stream was finished: its failure again, if it failed, else -EINVAL. */
int snap_error_finished(const NbError *held, const char *name, NbError *e);

/* pthread_create() with every signal blocked in the new thread: signals belong to the caller's threads.
 * Returns 0 or a negative errno. */
int snap_thread_start(pthread_t *t, void *(*fn)(void *), void *arg);
