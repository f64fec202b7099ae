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

#include "snapshot/entry.h"
#include "snapshot/snapshot.h"

#define SNAP_XATTR_SIZE_MAX (64u * 1024)  /* one value; the kernel's own limit */
#define SNAP_XATTR_LIST_MAX (64u * 1024)  /* the name list of one entry */
#define SNAP_HOLES_MAX      (64ull << 30) /* hole bytes of one sparse file, written out as zeros */
#define SNAP_BUFFERED_MAX   (1u << 20)    /* files up to this size are read whole, then written */
#define SNAP_READ_RETRIES   3             /* re-reads of a small file the notebook writes meanwhile */

/* Adds a live entry: its name `name` in directory dirfd is opened for content and xattrs (without following
 * symlinks) and checked against the walk's stat. Returns 1 when written, 0 when skipped. */
int snap_layer_add(SnapLayer *l, const SnapEntry *entry, int dirfd, const char *name, NbError *e);
/* `.wh.<basename>` in the parent of path. */
int snap_layer_whiteout(SnapLayer *l, const char *path, NbError *e);
/* `<dir>/.wh..wh..opq`. */
int snap_layer_opaque(SnapLayer *l, const char *dir, NbError *e);
