/* pgzip.h: parallel gzip of one byte stream, with both layer digests computed on the way: the gzip backend
 * of compress.h.
 *
 * The input is cut into blocks (default 1 MiB) compressed concurrently by N worker threads with ISA-L's
 * deflate (zlib when built without ISA-L), each block ending on a byte boundary (sync/full flush, the last
 * one final), and joined in order into ONE standard gzip member, as pigz does: any gunzip, Go's
 * compress/gzip and containerd read it. The CRC-32 is computed per block and combined. SHA-256 of the
 * uncompressed input (the layer's diff_id) and of the compressed output (the blob digest) are computed on
 * their own threads.
 *
 * Memory stays about (2 * threads + 4) blocks. The verbs are snap_backend_gzip's (compress.h): callers
 * use snap_compressor_*() with SNAP_COMPRESSION_GZIP. This header holds what the backend's tests need.
 */
#pragma once

#include "snapshot/snapshot.h"

#define PGZIP_BLOCK_DEFAULT (1024u * 1024)
#define PGZIP_BLOCK_MIN     (32u * 1024)
#define PGZIP_BLOCK_MAX     (64u * 1024 * 1024)
#define PGZIP_THREADS_MAX   SNAP_COMPRESSOR_THREADS_MAX

/* "isa-l" or "zlib": the deflate engine this build uses. */
const char *pgzip_engine(void);
