/* walk.h: a streaming walk of the live tree in tree order (see entry.h), one entry per call.
 *
 * Never follows symlinks and never crosses an excluded path (the subtree is skipped). Directories are read
 * whole, their names sorted, then each name is stat'ed relative to the directory's fd; memory grows with the
 * depth and the widest directory on the current path, not with the size of the tree. Entries that vanish
 * between the read of the directory and the stat are skipped (the notebook keeps running).
 */
#pragma once

#include "snapshot/entry.h"
#include "snapshot/excludes.h"
#include "snapshot/snapshot.h"

#define SNAP_DENTS_BUFFER (256u * 1024) /* one getdents64 batch */

/* Returns 1 and the next entry (valid until the next call), 0 at the end, or a negative errno. */
int snap_walk_next(SnapWalk *w, const SnapEntry **ret, NbError *e);
/* The fd of the directory holding the entry last returned, and its name there, to open it without a path
 * lookup from the root (no symlink in between can be swapped in). Valid until the next call. */
int snap_walk_dirfd(const SnapWalk *w);
const char *snap_walk_name(const SnapWalk *w);
