/* snapshot.h: the snapshot library: what changed in a root filesystem since a recorded baseline, written as
 * one OCI layer (or several, cut at entry boundaries, when one would be too big) and compressed with both
 * layer digests computed on the way. This is its one public header.
 *
 * A save composes it: snap_excludes_*() say what is never saved; snap_baseline_write() records the tree at
 * container start; snap_diff_plan() counts what changed (stat data only) so limits fail before any upload;
 * snap_diff_layer() merge-joins that baseline with a live snap_walk_new() and writes what
 * changed to a SnapLayer (a libarchive PAX stream to a callback); the layer's bytes go into a SnapCompressor
 * (gzip or zstd, one interface) whose output callback uploads them. Nothing here logs above debug or knows
 * about the registry or the agent: errors come back as an NbError, progress through callbacks.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/digest.h"
#include "common/error.h"
#include "common/macro.h"

/* ---- excluded paths ------------------------------------------------------------------------------ */

#define SNAP_EXCLUDES_MAX 65536u
typedef struct SnapExcludes SnapExcludes;
int snap_excludes_new(SnapExcludes **ret, NbError *e);
SnapExcludes *snap_excludes_free(SnapExcludes *x);
/* A path as seen inside the container ("/home/ma-user/.cache/pip"). Rejects "..", empty and relative paths.
 */
int snap_excludes_add(SnapExcludes *x, const char *container_path, NbError *e);
/* Every mount point strictly below root (a canonical absolute host path) in the mount table at mountinfo
 * (NULL: /proc/self/mountinfo). Returns the number added. */
int snap_excludes_add_mounts(SnapExcludes *x, const char *root, const char *mountinfo, NbError *e);
/* A host path (need not exist yet: its parent is resolved); added when it lies inside root. Returns 1 when
 * added, 0 when outside. */
int snap_excludes_add_host_path(SnapExcludes *x, const char *root, const char *host_path, NbError *e);
size_t snap_excludes_count(const SnapExcludes *x);
/* The i-th excluded path, relative, in sorted order. */
const char *snap_excludes_get(const SnapExcludes *x, size_t i);

/* ---- the baseline -------------------------------------------------------------------------------- */

typedef struct SnapBaselineStats {
        uint64_t entries;
        uint64_t file_size;
} SnapBaselineStats;
/* Walks root and writes the baseline to path atomically. */
int snap_baseline_write(const char *root, const SnapExcludes *excludes, const char *path,
                        SnapBaselineStats *ret, NbError *e);
/* The record of a save: the same format, written by the diff pass as it goes (snap_diff_layer_part()) and
 * describing the tree as the saved image shows it, so the next save can diff against it and pack only what
 * changed since (an incremental save). Every live entry the pass meets is recorded: an unchanged one as the
 * baseline had it, a packed one with the stat data the walk took before its content was read (a file that
 * changes while or after it is read differs from that next time, so it comes back) and a mark that its bytes
 * are in the chain's own layers (what the dead-bytes rule of snap_diff_plan() counts). A packed entry whose
 * ctime lies within SNAP_RECORD_RACY_NSEC (100 ms) of the record's start could still change unseen within
 * the same clock tick (git's "racily clean" entries): it is recorded so that the next save reads it again.
 * Written to a temporary file next to path; commit fsyncs and renames it, free without commit removes it. */
typedef struct SnapBaselineWriter SnapBaselineWriter;
int snap_baseline_writer_new(const char *path, SnapBaselineWriter **ret, NbError *e);
int snap_baseline_writer_commit(SnapBaselineWriter *w, SnapBaselineStats *ret, NbError *e);
SnapBaselineWriter *snap_baseline_writer_free(SnapBaselineWriter *w);

typedef struct SnapBaseline SnapBaseline;
int snap_baseline_open(const char *path, SnapBaseline **ret, NbError *e);
SnapBaseline *snap_baseline_free(SnapBaseline *b);
uint64_t snap_baseline_count(const SnapBaseline *b);

/* ---- the live walk ------------------------------------------------------------------------------- */

typedef struct SnapWalk SnapWalk;
/* root: an existing directory. excludes may be NULL. */
int snap_walk_new(const char *root, const SnapExcludes *excludes, SnapWalk **ret, NbError *e);
SnapWalk *snap_walk_free(SnapWalk *w);

/* ---- the layer tar stream ------------------------------------------------------------------------ */

typedef int (*snap_layer_write_fn)(void *userdata, const void *data, size_t size);
/* A note for the person saving: an entry left out and why. */
typedef void (*snap_layer_note_fn)(void *userdata, const char *path, const char *note);
typedef struct SnapLayerStats {
        uint64_t entries;    /* tar entries, whiteouts included */
        uint64_t whiteouts;  /* .wh. entries, opaque markers included */
        uint64_t skipped;    /* sockets and the like */
        uint64_t data_bytes; /* file content read */
} SnapLayerStats;
typedef struct SnapLayer SnapLayer;
int snap_layer_new(snap_layer_write_fn write, snap_layer_note_fn note, void *userdata, SnapLayer **ret,
                   NbError *e);
SnapLayer *snap_layer_free(SnapLayer *l);
/* Writes the end-of-archive blocks. */
int snap_layer_finish(SnapLayer *l, NbError *e);
const SnapLayerStats *snap_layer_stats(const SnapLayer *l);

/* ---- the diff ------------------------------------------------------------------------------------ */

/* What changed since the baseline, written as a layer.
 *
 * A merge-join by path of the baseline stream and the live walk (both in tree order): cost grows with the
 * number of entries, contents are read only for entries that go into the layer, memory stays flat.
 *  - only in the live tree: added;
 *  - in both, stat data differ (type, mode, owner, size, mtime, ctime, inode, links, rdev, link target):
 *    saved whole again (OCI has no metadata-only entries);
 *  - a directory in both with a new inode was deleted and recreated: saved with an opaque marker, its whole
 *    live content added, the old content never whited out one by one;
 *  - a type change (file <-> directory <-> symlink): the new entry replaces the old one, children of an old
 *    directory need no whiteouts;
 *  - only in the baseline: `.wh.NAME` for the top-most deleted path only; excluded paths are never whited
 * out.
 */

typedef struct SnapDiffStats {
        uint64_t live, base;                                /* entries read from each side */
        uint64_t added, modified, recreated, deleted, same; /* by outcome */
} SnapDiffStats;
/* Called every few thousand entries, and once at the end, on the calling thread. */
typedef void (*snap_diff_progress_fn)(void *userdata, const SnapDiffStats *stats);
int snap_diff_layer(SnapBaseline *base, SnapWalk *live, const SnapExcludes *excludes, SnapLayer *layer,
                    snap_diff_progress_fn progress, void *userdata, SnapDiffStats *ret, NbError *e);

typedef struct SnapPlan SnapPlan;

/* ---- split layers -------------------------------------------------------------------------------- */

/* A change set can be written as several layers, each a valid layer on its own and together the same tree as
 * one: the first holds every changed directory and every whiteout and opaque marker (a pass of the diff that
 * writes nothing else: SNAP_DIFF_SKELETON, in tree order, so a directory comes before its children), then
 * every other entry follows in tree order (SNAP_DIFF_CONTENT), the layer being cut at an entry boundary when
 * the next entry would not fit. A hard-linked entry goes in one piece: its data under the first name and the
 * other names as link entries right after it (the names the plan counted), so no link ever points into
 * another layer.
 *
 * A blob must stay within max bytes compressed, and the cut is made on tar bytes before compression. Deflate
 * never needs more than stored blocks, 5 bytes per 65535 (76 ppm), plus per 1 MiB gzip block one flush
 * marker and a Huffman header (under 400 ppm together) and 18 bytes of gzip header and trailer; libzstd
 * bounds its output by ZSTD_COMPRESSBOUND, n + n/256 plus under 64 KiB (block headers, the frame header,
 * the checksum). Measured on random data: gzip +87 ppm, zstd +23 ppm. So a layer's tar is cut at
 * snap_layer_split_budget(max) = max - max/256 - SNAP_SPLIT_SLACK - the end blocks, and a save also checks
 * each blob's compressed bytes as they are uploaded. */
#define SNAP_SPLIT_SLACK    (64u * 1024) /* bytes a compressed stream may add besides n/256 */
#define SNAP_SPLIT_BLOB_MIN (1u << 20)   /* the smallest blob size a split accepts */

/* Tar bytes of entries per layer for blobs of at most max bytes; max >= SNAP_SPLIT_BLOB_MIN. */
uint64_t snap_layer_split_budget(uint64_t max);

/* Called when a layer's tar was finished (its end blocks written to the write callback), before the next
 * one starts on the same callback: the place to finish a compressed stream and start the next. */
typedef int (*snap_layer_cut_fn)(void *userdata, NbError *e);
/* Cuts the layer's stream into tars of at most budget + SNAP_TAR_END bytes. plan: the counting pass of
 * the same changes (for hard links). Before the first entry. */
int snap_layer_split(SnapLayer *l, uint64_t budget, SnapPlan *plan, snap_layer_cut_fn cut, NbError *e);
/* Tars finished and started so far: 1 before any cut. */
unsigned snap_layer_parts(const SnapLayer *l);

typedef enum SnapDiffPart {
        SNAP_DIFF_ALL,      /* everything, in tree order: one layer */
        SNAP_DIFF_SKELETON, /* changed directories, whiteouts, opaque markers */
        SNAP_DIFF_CONTENT,  /* everything else */
} SnapDiffPart;
/* record: NULL, or the record of this save to write (see the baseline section), on a pass that meets every
 * entry (SNAP_DIFF_ALL or SNAP_DIFF_CONTENT). */
int snap_diff_layer_part(SnapBaseline *base, SnapWalk *live, const SnapExcludes *excludes, SnapLayer *layer,
                         SnapDiffPart part, SnapBaselineWriter *record, snap_diff_progress_fn progress,
                         void *userdata, SnapDiffStats *ret, NbError *e);

/* ---- the plan: what a save would write, counted before anything is written ------------------------ */

/* The same merge-join as snap_diff_layer(), with nothing read but stat data: it costs about one walk. A
 * save runs it first, so limits on the size of what changed fail before any upload.
 *
 * bytes: the uncompressed sizes of the regular files that changed (a hard-linked inode counted once).
 * Directories: each changed file's bytes go to one directory, its ancestor SNAP_PLAN_DIR_DEPTH levels below
 * the root ("/opt/conda/pkgs", "/home/ma-user/.cache"), or its own directory when it lies higher up; those
 * directories never overlap, so the largest of them say where the bytes are. */

#define SNAP_PLAN_TOP_DIRS  5 /* directories reported, largest first */
#define SNAP_PLAN_DIR_DEPTH 3 /* levels below the root where bytes are gathered */

typedef struct SnapPlanDir {
        const char *path; /* relative, without a leading '/'; "" for the root */
        uint64_t bytes;
} SnapPlanDir;

typedef struct SnapPlanStats {
        uint64_t bytes;   /* see above */
        uint64_t files;   /* regular files that changed, hard-linked inodes once */
        uint64_t entries; /* live entries that changed, every kind */
        uint64_t deleted; /* whiteouts, opaque markers included */
        /* The changed file that takes the most tar bytes, a hard-linked one with all its names (relative
         * path of its first name, NULL when none): what must fit in one layer. */
        const char *largest;
        uint64_t largest_size; /* its size */
        uint64_t largest_tar;  /* its tar bytes (snap_layer_split's bound: headers included) */
        uint64_t tar_bytes;    /* the same bound for every entry: the one tar of the changes, end blocks left
                                  out */
        /* Bytes of the regular files the baseline marks as packed by the chain (a record of a save) that the
         * changes delete or replace: what stacking the new layer on the chain would leave dead in it (a
         * hard-linked file's size shared among its names). */
        uint64_t dead_bytes;
        uint64_t skeleton_tar; /* the same for the directories, whiteouts and opaque markers alone */
        size_t n_top;
        SnapPlanDir top[SNAP_PLAN_TOP_DIRS];
} SnapPlanStats;

int snap_diff_plan(SnapBaseline *base, SnapWalk *live, const SnapExcludes *excludes, SnapPlan **ret,
                   NbError *e);

/* The preview of a save (nbsnap diff): the counting pass, which also hands out each change it counts, in the
 * order the save writes them (tree order), the way `docker diff` shows a container's changes:
 *  - ADDED: a live entry the baseline does not have, every entry below a directory that was deleted and
 *    recreated included;
 *  - CHANGED: an entry in both whose stat data differ (saved whole again), a type change, a directory
 *    deleted and recreated (its old content gone: an opaque marker);
 *  - DELETED: the top-most path that is gone (a whiteout; nothing below it is listed).
 * Excluded paths are never listed. Nothing is read but stat data and nothing is written. */
typedef enum SnapChangeKind {
        SNAP_CHANGE_ADDED,
        SNAP_CHANGE_CHANGED,
        SNAP_CHANGE_DELETED,
        _SNAP_CHANGE_MAX,
} SnapChangeKind;

typedef struct SnapChange {
        SnapChangeKind kind;
        const char *path; /* relative, without a leading '/'; valid during the call */
        uint32_t mode;    /* st_mode of the live entry (of the baseline's for DELETED) */
        uint64_t size;    /* content bytes the layer carries for it: a regular file's size, else 0 (each name
                             of a hard-linked file counts it here; SnapPlanStats.bytes counts it once) */
} SnapChange;

/* Returns >= 0 to go on, or a negative errno that stops the pass. */
typedef int (*snap_change_fn)(void *userdata, const SnapChange *c, NbError *e);
/* snap_diff_plan() with change called for each change (NULL: snap_diff_plan() itself). */
int snap_diff_preview(SnapBaseline *base, SnapWalk *live, const SnapExcludes *excludes,
                      snap_change_fn change, void *userdata, SnapPlan **ret, NbError *e);
SnapPlan *snap_plan_free(SnapPlan *p);
const SnapPlanStats *snap_plan_stats(const SnapPlan *p);

/* ---- squash: the top layers of the base merged into the new layer ------------------------------------- */

/* An image too deep (docker refuses more than 125 layers) is saved on the bottom layers of its base, kept by
 * digest, with one new layer that holds the top n_layers layers of the base merged, then the container's
 * changes: the tree a runtime shows for the new image is, path by path, the one it showed for the base plus
 * the changes. The squash writes the merged layers' part of that layer; snap_diff_layer() then writes the
 * changes into the same SnapLayer, right after it.
 *
 *  1. snap_squash_changes() runs the merge-join of the diff (the same baseline, walk and excludes as the
 *     diff pass that follows) and records which paths the changes will write: a changed directory stands
 *     for itself, a changed non-directory, a deletion or a recreated directory for the path and everything
 *     below it. Memory grows with the number of changes.
 *  2. snap_squash_index() reads the headers of each merged layer, bottom first (layer 0 .. n_layers - 1),
 *     and builds the index: for each path of the merged layers, its top-most content or whiteout, and the
 *     layers that hide what lies below it (whiteouts, opaque markers, non-directories). Memory grows with
 *     the number of paths in the merged layers (about 70 bytes each plus the path), never with their data;
 *     at most SNAP_SQUASH_ENTRIES_MAX paths.
 *  3. snap_squash_write() reads the same layers again, bottom first, and writes each path's winner once, in
 *     the order the layers give: the entry as the layer has it (metadata and data), `.wh.NAME` where the
 *     top-most word is a deletion, and `DIR/.wh..wh..opq` for a directory that a merged layer made opaque
 *     (or that replaced a deleted or non-directory path), after its entry and before anything below it,
 *     with only what the merged layers put there above that point.
 * Paths the changes write are left out; a changed directory's marker is still written when the merged
 * layers hide the kept layers' content below it (the diff's directory entry follows it), so the save needs
 * nothing more for a directory the container made where a merged layer had deleted one. Paths hidden by a
 * mount in the container (excluded, so never changed) keep the layers' content. A hard link whose target is
 * not written before it (the target changed in the container, or a higher layer replaced or deleted it)
 * becomes a regular file with the content and metadata of the same path in the live root (unchanged there,
 * so the image's), opened without following symlinks; a link to a target that no merged layer holds stays
 * a link (the kept layers have it).
 * Layers are read as tar, plain, gzip or zstd, from an fd (a pipe from a download is fine) to its end (the
 * fd is not closed). Entry names are cleaned ("./" prefixes, "." components and trailing '/' dropped);
 * absolute names, ".." components and names libarchive cannot read fail the squash; aufs metadata
 * (`.wh..wh.*` other than the opaque marker) is skipped. A split layer (snap_layer_split) cannot take a
 * squash yet: -EFBIG. */
#define SNAP_SQUASH_LAYERS_MAX  1024u              /* layers merged in one squash */
#define SNAP_SQUASH_ENTRIES_MAX (4u * 1000 * 1000) /* paths in the merged layers; also changes recorded */

typedef struct SnapSquash SnapSquash;
int snap_squash_new(unsigned n_layers, SnapSquash **ret, NbError *e);
SnapSquash *snap_squash_free(SnapSquash *q);
/* Records what the changes write. ex must stay valid until the squash is freed (snap_squash_write() reads
 * no hard link's content from an excluded path). Once, before snap_squash_write(). */
int snap_squash_changes(SnapSquash *q, SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex,
                        NbError *e);
/* Pass 1: the headers of merged layer `layer` (0 = the bottom one), read from fd. In order, once each. */
int snap_squash_index(SnapSquash *q, unsigned layer, int fd, NbError *e);
/* Pass 2: writes the winners of merged layer `layer` to out, reading the same layer again from fd; root is
 * the live root (for hard links). In order, once each, after every layer was indexed. Returns the number of
 * entries written. */
int snap_squash_write(SnapSquash *q, unsigned layer, int fd, const char *root, SnapLayer *out, NbError *e);

/* ---- the compressor ------------------------------------------------------------------------------ */

/* One compressed byte stream with both layer digests computed on the way: SHA-256 of the input (the layer's
 * diff_id) and of the output (the blob digest). The formats are backends behind one interface, as
 * libarchive's write filters are: gzip (parallel deflate on ISA-L, one standard gzip member) and zstd
 * (libzstd's multithreaded compressor, one standard frame). The output callback is called from one writer
 * thread, in stream order; it may block (an upload), which stalls the pipeline through bounded buffers. A
 * non-zero return from it fails the stream: snap_compressor_write()/snap_compressor_finish() then return
 * it, with a message naming the offset. */

typedef enum SnapCompression {
        SNAP_COMPRESSION_GZIP, /* 0: the default, every runtime pulls it */
        SNAP_COMPRESSION_ZSTD, /* application/vnd.oci.image.layer.v1.tar+zstd */
        _SNAP_COMPRESSION_MAX,
} SnapCompression;

#define SNAP_GZIP_LEVEL_MAX         9
#define SNAP_ZSTD_LEVEL_MAX         19 /* 20..22 ("ultra") need hundreds of MiB per worker: not offered */
#define SNAP_COMPRESSOR_THREADS_MAX 256

typedef int (*snap_output_fn)(void *userdata, const void *data, size_t size);

typedef struct SnapCompressorOptions {
        SnapCompression format;
        unsigned threads;  /* 0: number of online CPUs */
        int level;         /* -1: the format's default; else snap_compression_level_check() says */
        size_t block_size; /* gzip: bytes deflated independently, 0: 1 MiB; zstd: must be 0 */
        snap_output_fn output;
        void *userdata;
} SnapCompressorOptions;

typedef struct SnapCompressResult {
        char diff_id[NB_DIGEST_STR_MAX]; /* "sha256:<hex>" of the uncompressed stream */
        char digest[NB_DIGEST_STR_MAX];  /* "sha256:<hex>" of the compressed stream */
        uint64_t size_in;                /* bytes of uncompressed input */
        uint64_t size_out;               /* bytes of compressed output */
} SnapCompressResult;

typedef struct SnapCompressor SnapCompressor;
int snap_compressor_new(const SnapCompressorOptions *o, SnapCompressor **ret, NbError *e);
/* Feeds input. Copies data; may block while the buffers are full. */
int snap_compressor_write(SnapCompressor *c, const void *data, size_t size, NbError *e);
/* Ends the stream, waits for the output callback to have seen every byte. Once only. */
int snap_compressor_finish(SnapCompressor *c, SnapCompressResult *ret, NbError *e);
/* Stops the threads (an unfinished stream is abandoned) and frees; NULL is fine. */
SnapCompressor *snap_compressor_free(SnapCompressor *c);

/* "gzip", "zstd": the word of the CLI, the config and the media type suffix ("unknown" out of range). */
const char *snap_compression_to_string(SnapCompression c);
/* The reverse, case-sensitive; -EINVAL for anything else. */
int snap_compression_from_string(const char *s, SnapCompression *ret);
/* Whether level (-1: the format's default) is one of c's levels: gzip 0-9 (default 1), zstd 1-19 (default
 * 3). e says which are when not. */
int snap_compression_level_check(SnapCompression c, int level, NbError *e);
/* What does the work in this build: "isa-l" or "zlib" for gzip, "libzstd 1.5.4" for zstd. */
const char *snap_compression_engine(SnapCompression c);

/* ---- cleanup helpers -------------------------------------------------------------------------------- */

static inline void snap_excludes_freep(SnapExcludes **p)
{
        snap_excludes_free(*p);
}
static inline void snap_baseline_writer_freep(SnapBaselineWriter **p)
{
        snap_baseline_writer_free(*p);
}
static inline void snap_baseline_freep(SnapBaseline **p)
{
        snap_baseline_free(*p);
}
static inline void snap_walk_freep(SnapWalk **p)
{
        snap_walk_free(*p);
}
static inline void snap_layer_freep(SnapLayer **p)
{
        snap_layer_free(*p);
}
static inline void snap_plan_freep(SnapPlan **p)
{
        snap_plan_free(*p);
}
static inline void snap_squash_freep(SnapSquash **p)
{
        snap_squash_free(*p);
}
static inline void snap_compressor_freep(SnapCompressor **p)
{
        snap_compressor_free(*p);
}
#define _cleanup_snap_excludes_        _cleanup_(snap_excludes_freep)
#define _cleanup_snap_baseline_        _cleanup_(snap_baseline_freep)
#define _cleanup_snap_baseline_writer_ _cleanup_(snap_baseline_writer_freep)
#define _cleanup_snap_walk_            _cleanup_(snap_walk_freep)
#define _cleanup_snap_layer_           _cleanup_(snap_layer_freep)
#define _cleanup_snap_compressor_      _cleanup_(snap_compressor_freep)
#define _cleanup_snap_plan_            _cleanup_(snap_plan_freep)
#define _cleanup_snap_squash_          _cleanup_(snap_squash_freep)
