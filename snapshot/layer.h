/* layer.h: the layer tar stream, written with libarchive to a callback.
 *
 * The bytes follow the OCI image-spec layer rules and what docker, containerd and umoci read: PAX
 * (restricted: ustar headers unless a field needs PAX) with xattrs as SCHILY.xattr.*, names stored
 * byte-exact (UTF-8 as it is, other bytes raw under hdrcharset=BINARY), whole-second mtimes, no atime/ctime,
 * empty uname/gname, no GNU.sparse (holes are written as data), no padding after the end-of-archive blocks.
 * Hard links: the first name carries the data, later names are link entries to it. Deletions are `.wh.NAME`
 * files, a directory whose old content is gone gets `.wh..wh..opq`. A live entry whose name starts with
 * `.wh.` fails the layer; sockets are skipped.
 */
#pragma once

#include <stdint.h>

#include <archive.h>
#include <archive_entry.h>

#include "snapshot/entry.h"
#include "snapshot/snapshot.h"

#define SNAP_XATTR_SIZE_MAX (64u * 1024)  /* one value; the kernel's own limit */
#define SNAP_XATTR_LIST_MAX (64u * 1024)  /* the name list of one entry */
#define SNAP_HOLES_MAX      (64ull << 30) /* hole bytes of one sparse file, written out as zeros */
#define SNAP_BUFFERED_MAX   (1u << 20)    /* files up to this size are read whole, then written */
#define SNAP_READ_RETRIES   3             /* re-reads of a small file the notebook writes meanwhile */
#define SNAP_TAR_BLOCK      512u
#define SNAP_TAR_END        (2 * SNAP_TAR_BLOCK) /* the end-of-archive blocks (no padding after them) */

/* An upper bound of the tar bytes of one entry, which split layers are cut by. libarchive's pax writer puts
 * a ustar header (512) after, when a field needs it, a pax header (a 512 header of its own, then the records
 * padded to 512). The records hold the path and link target (each "LEN key=value\n"),
 * SCHILY.xattr.NAME=VALUE per extended attribute, and a few numbers (uid, gid, size, mtime: under 400 bytes
 * with their keys). The bound takes three times the path and link, twice the attributes, 1 KiB for the rest
 * and a spare block, so it holds with room to spare; the data is padded to 512. */
static inline uint64_t snap_tar_pad(uint64_t n)
{
        return (n + SNAP_TAR_BLOCK - 1) / SNAP_TAR_BLOCK * SNAP_TAR_BLOCK;
}
static inline uint64_t snap_tar_entry_bound(uint64_t path_len, uint64_t link_len, uint64_t xattr_bytes,
                                            uint64_t data)
{
        return 3 * SNAP_TAR_BLOCK + snap_tar_pad(3 * (path_len + link_len) + 2 * xattr_bytes + 1024) +
               snap_tar_pad(data);
}

/* Adds a live entry: its name `name` in directory dirfd is opened for content and xattrs (without following
 * symlinks) and checked against the walk's stat. Returns 1 when written, 0 when skipped. */
int snap_layer_add(SnapLayer *l, const SnapEntry *entry, int dirfd, const char *name, NbError *e);
/* `.wh.<basename>` in the parent of path. */
int snap_layer_whiteout(SnapLayer *l, const char *path, NbError *e);
/* `<dir>/.wh..wh..opq`. */
int snap_layer_opaque(SnapLayer *l, const char *dir, NbError *e);
#define SNAP_MARKER_NAME_MAX 12 /* ".wh..wh..opq"; ".wh." + a name is as long as the name plus 4 */

/* Whether snap_layer_split() was called: a squash refuses such a layer. */
bool snap_layer_is_split(const SnapLayer *l);

/* For squash.c: entries of another layer, with this layer's header rules (copy_header() in layer.c says
 * which fields; the caller has set the entry's pathname and hard link target to clean relative paths), and
 * files of the live root in place of a hard link. Not in a split layer yet: -EFBIG. */
/* Writes ae and streams its data from src (the archive ae was read from; NULL for an entry without data),
 * in a bounded buffer. */
int snap_layer_copy(SnapLayer *l, struct archive *src, struct archive_entry *ae, NbError *e);
/* Writes the regular file open at fd under path (relative), with its own metadata and xattrs, as
 * snap_layer_add() writes a live file, but never as a hard link. */
int snap_layer_add_fd(SnapLayer *l, const char *path, int fd, NbError *e);
