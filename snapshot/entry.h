/* entry.h: one filesystem entry as the snapshot modules see it, and the order they all agree on.
 *
 * Paths are relative to the root, without a leading '/', as raw bytes (any byte but NUL; newlines and
 * non-UTF-8 bytes included). The root itself is never an entry. Every stream of entries (a baseline file, a
 * walk of the live tree) is in tree order: depth-first, pre-order, siblings sorted bytewise by name. That is
 * the order of snap_path_cmp(), which compares paths bytewise with '/' below every other byte, so a
 * merge-join of two streams by path is correct.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Named limits. */
#define SNAP_PATH_MAX        (64u * 1024) /* bytes in a relative path; deeper trees fail clearly */
#define SNAP_DEPTH_MAX       4096u        /* directory nesting */
#define SNAP_LINK_MAX        4096u        /* bytes in a symlink target */
#define SNAP_DIR_ENTRIES_MAX 4000000      /* entries in one directory */

typedef struct SnapEntry {
        const char *path; /* NUL-terminated, relative */
        size_t path_len;
        uint32_t mode; /* type and permission bits, as st_mode */
        uint32_t uid, gid;
        uint32_t nlink;
        uint64_t size;
        int64_t mtime_sec, ctime_sec;
        uint32_t mtime_nsec, ctime_nsec;
        uint64_t dev, ino, rdev;
        const char *link; /* symlink target (NUL-terminated) or NULL */
        size_t link_len;
        uint32_t flags; /* SNAP_ENTRY_*: what a record says of the entry besides its stat data */
} SnapEntry;

/* Flags of a recorded entry. */
#define SNAP_ENTRY_SAVED                                                                                    \
        1u /* packed by a save of the chain: its bytes are in one of the chain's own layers */
#define SNAP_ENTRY_FLAGS SNAP_ENTRY_SAVED

/* <0, 0, >0 like strcmp, in tree order. */
int snap_path_cmp(const char *a, size_t a_len, const char *b, size_t b_len);
/* True when path is prefix itself or lies below it. */
bool snap_path_within(const char *path, size_t path_len, const char *prefix, size_t prefix_len);
/* The last component of a relative path. */
const char *snap_path_basename(const char *path);

/* True when the stat data differ in anything that means the entry must be saved again. */
bool snap_entry_changed(const SnapEntry *a, const SnapEntry *b);
