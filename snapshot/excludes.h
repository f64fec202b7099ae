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

#include "snap-util.h"

#define SNAP_EXCLUDES_MAX 65536u

typedef struct SnapExcludes SnapExcludes;

int snap_excludes_new(SnapExcludes **ret, SnapError *e);
SnapExcludes *snap_excludes_free(SnapExcludes *x);

/* A path as seen inside the container ("/home/ma-user/.cache/pip"). Rejects "..", empty and relative paths.
 */
int snap_excludes_add(SnapExcludes *x, const char *container_path, SnapError *e);
/* Every mount point strictly below root (a canonical absolute host path) in the mount table at mountinfo
 * (NULL: /proc/self/mountinfo). Returns the number added. */
int snap_excludes_add_mounts(SnapExcludes *x, const char *root, const char *mountinfo, SnapError *e);
/* A host path (need not exist yet: its parent is resolved); added when it lies inside root. Returns 1 when
 * added, 0 when outside. */
int snap_excludes_add_host_path(SnapExcludes *x, const char *root, const char *host_path, SnapError *e);

/* True when relative path is exactly an excluded path. */
bool snap_excludes_match(const SnapExcludes *x, const char *path);
/* True when relative path or one of its ancestors is excluded. */
bool snap_excludes_covers(const SnapExcludes *x, const char *path, size_t path_len);

size_t snap_excludes_count(const SnapExcludes *x);
/* The i-th excluded path, relative, in sorted order. */
const char *snap_excludes_get(const SnapExcludes *x, size_t i);
