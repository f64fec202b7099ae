/* diff.h: what changed since the baseline, written as a layer.
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
#pragma once

#include <stdint.h>

#include "baseline.h"
#include "excludes.h"
#include "layer.h"
#include "walk.h"

typedef struct SnapDiffStats {
        uint64_t live, base;                                /* entries read from each side */
        uint64_t added, modified, recreated, deleted, same; /* by outcome */
} SnapDiffStats;

/* Called every few thousand entries, and once at the end, on the calling thread. */
typedef void (*snap_diff_progress_fn)(void *userdata, const SnapDiffStats *stats);

int snap_diff_layer(SnapBaseline *base, SnapWalk *live, const SnapExcludes *excludes, SnapLayer *layer,
                    snap_diff_progress_fn progress, void *userdata, SnapDiffStats *ret, SnapError *e);
