/* baseline.h: the record of the root filesystem taken at container start, and its reader. The same format
 * records, after each save, the tree as the saved image shows it (snapshot.h, the record of a save), with
 * SNAP_ENTRY_SAVED on the entries whose bytes are in the chain's own layers (format version 2; version 1
 * files, without flags, are still read).
 *
 * The file holds every entry of the tree (excludes applied) in tree order with its stat data and symlink
 * target: paths prefix-compressed against the previous one, numbers as LEB128 varints, a SHA-256 of the
 * whole file at its end. It is written to a temporary file in the same directory, fsync'ed and renamed, so a
 * crash leaves the old baseline or the new one, never half of one. The reader checks the checksum, the
 * limits and the order before handing out a single entry, then streams: memory does not grow with the tree.
 */
#pragma once

#include <stdint.h>

#include "snapshot/entry.h"
#include "snapshot/excludes.h"
#include "snapshot/snapshot.h"

#define SNAP_BASELINE_MAGIC "NBSNAPB1"
/* A packed entry whose ctime lies less than this before the record's start is read again by the next save:
 * the kernel stamps ctime from a coarse clock, at most one tick (10 ms at HZ=100) behind the fine one. */
#define SNAP_RECORD_RACY_NSEC  (100 * 1000 * 1000)
#define SNAP_BASELINE_FILE_MAX (16ull * 1024 * 1024 * 1024) /* 16 GiB: ~100 M entries */

/* Adds the next entry, in tree order. A write error does not stop the caller (the record is an extra of the
 * pass that writes it): it is kept and snap_baseline_writer_commit() returns it. */
int snap_baseline_writer_add(SnapBaselineWriter *w, const SnapEntry *en, NbError *e);

/* Takes over fd (e.g. a memfd in the fuzzer). */
int snap_baseline_open_fd(int fd, const char *what, SnapBaseline **ret, NbError *e);
/* 1 and the next entry (valid until the next call), 0 at the end, or a negative errno. */
int snap_baseline_next(SnapBaseline *b, const SnapEntry **ret, NbError *e);
