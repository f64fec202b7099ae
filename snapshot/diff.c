#include <assert.h>
#include <string.h>
#include <sys/stat.h>

#include "snapshot/baseline.h"
#include "snapshot/diff.h"
#include "snapshot/layer.h"
#include "snapshot/walk.h"

#define PROGRESS_EVERY 4096u

typedef struct Diff {
        SnapBaseline *base;
        SnapWalk *live;
        const SnapDiffSink *sink;
        const SnapEntry *b, *l;
        SnapBaselineWriter *record;
        char *skip; /* baseline entries under this path are gone with it (deleted, replaced, excluded,
                       opaque) */
        size_t skip_len, skip_allocated;
        bool skipping;
        bool skip_drops; /* the skipped entries are dropped (not excluded) */
        SnapDiffStats stats;
} Diff;

static int next_base(Diff *d, NbError *e)
{
        int r = snap_baseline_next(d->base, &d->b, e);
        if (r == 0)
                d->b = NULL;
        else if (r > 0)
                d->stats.base++;
        return r;
}

static int next_live(Diff *d, NbError *e)
{
        int r = snap_walk_next(d->live, &d->l, e);
        if (r == 0)
                d->l = NULL;
        else if (r > 0)
                d->stats.live++;
        return r;
}

static int drop(Diff *d, const SnapEntry *en, NbError *e)
{
        return d->sink->drop ? d->sink->drop(d->sink->userdata, en, e) : 0;
}

static int changed(Diff *d, SnapChangeKind kind, const SnapEntry *en, NbError *e)
{
        if (!d->sink->change)
                return 0;
        const SnapChange c = {
                .kind = kind,
                .path = en->path,
                .mode = en->mode,
                .size = kind != SNAP_CHANGE_DELETED && S_ISREG(en->mode) ? en->size : 0,
        };
        return d->sink->change(d->sink->userdata, &c, e);
}

static int skip_below(Diff *d, const SnapEntry *en, bool drops, NbError *e)
{
        d->skip_drops = drops;
        if (en->path_len + 1 > d->skip_allocated) {
                size_t n = (en->path_len + 1) * 2;
                char *p = realloc(d->skip, n);
                if (!p)
                        return nb_error_oom(e);
                d->skip = p, d->skip_allocated = n;
        }
        memcpy(d->skip, en->path, en->path_len + 1);
        d->skip_len = en->path_len;
        d->skipping = true;
        return 0;
}

/* A live entry to save, and to record as saved: with the walk's stat data, taken before its content is read.
 */
static int add_live(Diff *d, NbError *e)
{
        int r = d->sink->add(d->sink->userdata, d->l, snap_walk_dirfd(d->live), snap_walk_name(d->live), e);
        if (r < 0 || !d->record)
                return r;
        SnapEntry en = *d->l;
        en.flags = SNAP_ENTRY_SAVED;
        return snap_baseline_writer_add(d->record, &en, e);
}

/* Entry only in the baseline. */
static int gone(Diff *d, const SnapExcludes *ex, NbError *e)
{
        bool excluded = snap_excludes_covers(ex, d->b->path, d->b->path_len);
        if (!excluded) {
                int r = changed(d, SNAP_CHANGE_DELETED, d->b, e);
                if (r >= 0)
                        r = d->sink->whiteout(d->sink->userdata, d->b->path, e);
                if (r >= 0)
                        r = drop(d, d->b, e);
                if (r < 0)
                        return r;
                d->stats.deleted++;
        }
        return S_ISDIR(d->b->mode) ? skip_below(d, d->b, !excluded, e) : 0;
}

/* Entry on both sides. */
static int both(Diff *d, NbError *e)
{
        const SnapEntry *b = d->b, *l = d->l;
        int r;
        if ((b->mode ^ l->mode) & S_IFMT) {
                d->stats.modified++;
                r = changed(d, SNAP_CHANGE_CHANGED, l, e);
                if (r >= 0)
                        r = drop(d, b, e);
                if (r >= 0)
                        r = add_live(d, e);
                if (r >= 0 && S_ISDIR(b->mode))
                        r = skip_below(d, b, true, e);
                return r;
        }
        if (S_ISDIR(l->mode) && b->ino != l->ino) {
                d->stats.recreated++;
                r = changed(d, SNAP_CHANGE_CHANGED, l, e);
                if (r >= 0)
                        r = drop(d, b, e);
                if (r >= 0)
                        r = add_live(d, e);
                if (r >= 0)
                        r = d->sink->opaque(d->sink->userdata, l->path, e);
                if (r >= 0)
                        r = skip_below(d, b, true, e);
                return r;
        }
        if (!snap_entry_changed(b, l)) {
                d->stats.same++;
                /* the image shows what the baseline recorded, as the baseline marked it */
                return d->record ? snap_baseline_writer_add(d->record, b, e) : 0;
        }
        d->stats.modified++;
        r = changed(d, SNAP_CHANGE_CHANGED, l, e);
        if (r >= 0)
                r = drop(d, b, e);
        return r < 0 ? r : add_live(d, e);
}

static int step(Diff *d, const SnapExcludes *ex, NbError *e)
{
        if (d->b && d->skipping) {
                if (snap_path_within(d->b->path, d->b->path_len, d->skip, d->skip_len)) {
                        int r = d->skip_drops ? drop(d, d->b, e) : 0;
                        return r < 0 ? r : next_base(d, e);
                }
                d->skipping = false;
        }
        int c = !d->b   ? 1
                : !d->l ? -1
                        : snap_path_cmp(d->b->path, d->b->path_len, d->l->path, d->l->path_len);
        int r;
        if (c < 0) {
                r = gone(d, ex, e);
                return r < 0 ? r : next_base(d, e);
        }
        if (c > 0) {
                d->stats.added++;
                r = changed(d, SNAP_CHANGE_ADDED, d->l, e);
                if (r >= 0)
                        r = add_live(d, e);
                return r < 0 ? r : next_live(d, e);
        }
        r = both(d, e);
        if (r >= 0)
                r = next_base(d, e);
        return r < 0 ? r : next_live(d, e);
}

int snap_diff_run(SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex, const SnapDiffSink *sink,
                  SnapBaselineWriter *record, snap_diff_progress_fn progress, void *userdata,
                  SnapDiffStats *ret, NbError *e)
{
        Diff d = {.base = base, .live = live, .sink = sink, .record = record};
        int r = next_base(&d, e);
        if (r >= 0)
                r = next_live(&d, e);
        uint64_t n = 0;
        while (r >= 0 && (d.b || d.l)) {
                r = step(&d, ex, e);
                if (progress && ++n % PROGRESS_EVERY == 0)
                        progress(userdata, &d.stats);
        }
        free(d.skip);
        if (r < 0)
                return r;
        if (progress)
                progress(userdata, &d.stats);
        if (ret)
                *ret = d.stats;
        return 0;
}

static int layer_add(void *u, const SnapEntry *en, int dirfd, const char *name, NbError *e)
{
        return snap_layer_add(u, en, dirfd, name, e);
}

static int layer_whiteout(void *u, const char *path, NbError *e)
{
        return snap_layer_whiteout(u, path, e);
}

static int layer_opaque(void *u, const char *dir, NbError *e)
{
        return snap_layer_opaque(u, dir, e);
}

static int skeleton_add(void *u, const SnapEntry *en, int dirfd, const char *name, NbError *e)
{
        return S_ISDIR(en->mode) ? snap_layer_add(u, en, dirfd, name, e) : 0;
}

static int content_add(void *u, const SnapEntry *en, int dirfd, const char *name, NbError *e)
{
        return S_ISDIR(en->mode) ? 0 : snap_layer_add(u, en, dirfd, name, e);
}

static int no_marker(void *u, const char *path, NbError *e)
{
        (void)u, (void)path, (void)e;
        return 0;
}

int snap_diff_layer_part(SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex, SnapLayer *layer,
                         SnapDiffPart part, SnapBaselineWriter *record, snap_diff_progress_fn progress,
                         void *userdata, SnapDiffStats *ret, NbError *e)
{
        const SnapDiffSink sinks[] = {
                [SNAP_DIFF_ALL] = {layer_add, layer_whiteout, layer_opaque, NULL, layer},
                [SNAP_DIFF_SKELETON] = {skeleton_add, layer_whiteout, layer_opaque, NULL, layer},
                [SNAP_DIFF_CONTENT] = {content_add, no_marker, no_marker, NULL, layer},
        };
        assert(part < ELEMENTSOF(sinks));
        assert(!record || part != SNAP_DIFF_SKELETON);
        return snap_diff_run(base, live, ex, &sinks[part], record, progress, userdata, ret, e);
}

int snap_diff_layer(SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex, SnapLayer *layer,
                    snap_diff_progress_fn progress, void *userdata, SnapDiffStats *ret, NbError *e)
{
        return snap_diff_layer_part(base, live, ex, layer, SNAP_DIFF_ALL, NULL, progress, userdata, ret, e);
}
