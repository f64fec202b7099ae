/* pzstd.h: multithreaded zstd of one byte stream, with both layer digests computed on the way: the zstd
 * backend of compress.h.
 *
 * For application/vnd.oci.image.layer.v1.tar+zstd layers: the input is copied into 1 MiB blocks and handed
 * to a driver thread that feeds libzstd's multithreaded streaming compressor (ZSTD_c_nbWorkers workers cut
 * the stream into jobs and compress them in parallel) and hashes the input (the layer's diff_id); a writer
 * thread hashes the compressed bytes (the blob digest) and calls the output callback. The result is ONE
 * standard zstd frame with a content checksum: `zstd -d`, Go's klauspost/zstd (containerd, containers/image)
 * and libzstd read it.
 *
 * The output depends only on the input and the level, never on the thread count (see pzstd.c).
 *
 * Memory stays about 8 1 MiB buffers plus libzstd's own (a few job sizes per worker: ~10 MiB per worker
 * at level 3, ~100 MiB at 19). The verbs are snap_backend_zstd's (compress.h): callers use
 * snap_compressor_*() with SNAP_COMPRESSION_ZSTD. This header holds what the backend's tests need.
 */
#pragma once

#include "snapshot/snapshot.h"

#define PZSTD_LEVEL_DEFAULT 3 /* zstd's own default */
#define PZSTD_LEVEL_MIN     1
#define PZSTD_LEVEL_MAX     SNAP_ZSTD_LEVEL_MAX
#define PZSTD_THREADS_MAX   SNAP_COMPRESSOR_THREADS_MAX
