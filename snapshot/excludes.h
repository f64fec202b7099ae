/* excludes.h: the set of paths below the root that are never walked, recorded or saved.
 *
 * Paths are stored relative to the root and matched exactly by the walk (which then skips the whole
 * subtree), or with their ancestors by snap_excludes_covers() for entries that only the baseline knows.
 * Sources: container paths given by the user (--exclude), the mount points below the root read from
 * /proc/self/mountinfo (work volumes, file bind mounts such as /etc/hosts, /dev/shm, /proc ...), and host
 * paths of the agent's own files (state dir, credentials) when they lie inside the root.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "snapshot/snapshot.h"

/* True when relative path is exactly an excluded path. */
bool snap_excludes_match(const SnapExcludes *x, const char *path);
/* True when relative path or one of its ancestors is excluded. */
bool snap_excludes_covers(const SnapExcludes *x, const char *path, size_t path_len);
