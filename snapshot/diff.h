/* diff.h: the merge-join of the baseline and the live walk (snapshot.h says what it decides), with what it
 * decides handed to a sink: the layer writer (snap_diff_layer) or the counting pass (snap_diff_plan). */
#pragma once

#include "snapshot/entry.h"
#include "snapshot/snapshot.h"

typedef struct SnapDiffSink {
        /* a live entry to save; its name `name` is in directory dirfd. Returns >= 0 or a negative errno. */
        int (*add)(void *userdata, const SnapEntry *entry, int dirfd, const char *name, NbError *e);
        /* the top-most deleted path */
        int (*whiteout)(void *userdata, const char *path, NbError *e);
        /* a directory whose old content is gone */
        int (*opaque)(void *userdata, const char *dir, NbError *e);
        /* NULL, or: a baseline entry whose content the changes delete or replace (each one, below a deleted
         * or replaced directory too; excluded entries never) */
        int (*drop)(void *userdata, const SnapEntry *entry, NbError *e);
        void *userdata;
        /* NULL, or: each change as a person reads it (snapshot.h, SnapChange), before the calls above make
         * it; called with userdata */
        int (*change)(void *userdata, const SnapChange *c, NbError *e);
} SnapDiffSink;

/* record: NULL, or the record of the save to write as the join goes (snapshot.h). */
int snap_diff_run(SnapBaseline *base, SnapWalk *live, const SnapExcludes *excludes, const SnapDiffSink *sink,
                  SnapBaselineWriter *record, snap_diff_progress_fn progress, void *userdata,
                  SnapDiffStats *ret, NbError *e);
