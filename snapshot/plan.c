/* plan.c: the counting pass of a save (snapshot.h, "the plan"): the diff's decisions, with stat sizes summed
 * instead of contents read. */
#include <string.h>
#include <sys/stat.h>

#include "snapshot/baseline.h"
#include "snapshot/diff.h"
#include "snapshot/walk.h"

#define SNAP_PLAN_INODES_MAX (16u << 20) /* hard-linked inodes remembered (16 bytes each) */

typedef struct Inode {
        uint64_t dev, ino; /* ino 0: a free slot (no file has inode 0 on Linux file systems we read) */
} Inode;

typedef struct Bucket {
        char *path; /* NULL: none open at this depth */
        size_t len;
        uint64_t bytes;
} Bucket;

struct SnapPlan {
        SnapPlanStats stats;
        char *largest;
        char *top[SNAP_PLAN_TOP_DIRS];
        Bucket open[SNAP_PLAN_DIR_DEPTH + 1]; /* open[d]: the directory d levels deep gathering bytes now */
        Inode *inodes;
        size_t n_inodes, inodes_allocated; /* allocated: a power of two, or 0 */
};

SnapPlan *snap_plan_free(SnapPlan *p)
{
        if (!p)
                return NULL;
        free(p->largest);
        for (size_t i = 0; i < SNAP_PLAN_TOP_DIRS; i++)
                free(p->top[i]);
        for (size_t i = 0; i <= SNAP_PLAN_DIR_DEPTH; i++)
                free(p->open[i].path);
        free(p->inodes);
        free(p);
        return NULL;
}

const SnapPlanStats *snap_plan_stats(const SnapPlan *p)
{
        return &p->stats;
}

static size_t inode_slot(const Inode *t, size_t allocated, uint64_t dev, uint64_t ino)
{
        size_t i = (size_t)((ino * 0x9e3779b97f4a7c15ull) ^ dev) & (allocated - 1);
        while (t[i].ino != 0 && (t[i].ino != ino || t[i].dev != dev))
                i = (i + 1) & (allocated - 1);
        return i;
}

static int inodes_grow(SnapPlan *p, NbError *e)
{
        size_t n = p->inodes_allocated ? p->inodes_allocated * 2 : 1024;
        if (n / 2 > SNAP_PLAN_INODES_MAX)
                return nb_error_set(e, -E2BIG, "cannot count the changes: over %u hard-linked files",
                                    SNAP_PLAN_INODES_MAX);
        Inode *t = calloc(n, sizeof(Inode));
        if (!t)
                return nb_error_oom(e);
        for (size_t i = 0; i < p->inodes_allocated; i++)
                if (p->inodes[i].ino != 0)
                        t[inode_slot(t, n, p->inodes[i].dev, p->inodes[i].ino)] = p->inodes[i];
        free(p->inodes);
        p->inodes = t, p->inodes_allocated = n;
        return 0;
}

/* 1 when the inode was seen before (its bytes are counted), 0 when it is new (and now remembered). */
static int inode_seen(SnapPlan *p, uint64_t dev, uint64_t ino, NbError *e)
{
        if (ino == 0)
                return 0;
        if ((p->n_inodes + 1) * 2 > p->inodes_allocated) {
                int r = inodes_grow(p, e);
                if (r < 0)
                        return r;
        }
        size_t i = inode_slot(p->inodes, p->inodes_allocated, dev, ino);
        if (p->inodes[i].ino != 0)
                return 1;
        p->inodes[i] = (Inode){dev, ino};
        p->n_inodes++;
        return 0;
}

/* A closed directory competes for the top: the list stays sorted, largest first; on a tie, the first seen
 * (tree order) stays ahead, so the report is deterministic. */
static void top_offer(SnapPlan *p, Bucket *b)
{
        size_t n = p->stats.n_top, i = n;
        while (i > 0 && p->stats.top[i - 1].bytes < b->bytes)
                i--;
        if (b->bytes == 0 || i == SNAP_PLAN_TOP_DIRS) {
                free(b->path);
        } else {
                if (n == SNAP_PLAN_TOP_DIRS)
                        free(p->top[--n]);
                memmove(p->top + i + 1, p->top + i, (n - i) * sizeof(p->top[0]));
                memmove(p->stats.top + i + 1, p->stats.top + i, (n - i) * sizeof(p->stats.top[0]));
                p->top[i] = b->path;
                p->stats.top[i] = (SnapPlanDir){b->path, b->bytes};
                p->stats.n_top = n + 1;
        }
        *b = (Bucket){0};
}

/* Length of the first `depth` components of path (path itself has more). */
static size_t prefix_len(const char *path, size_t depth)
{
        size_t len = 0;
        for (size_t d = 0; d < depth; d++) {
                const char *s = strchr(path + len + (d ? 1 : 0), '/');
                len = (size_t)(s - path);
        }
        return len;
}

/* Gathers a file's bytes into its directory (see snapshot.h). The walk is in tree order, so a directory's
 * files all come while the walk is inside it: the directories gathering bytes form one path from the root,
 * and a directory is closed, for good, once the walk has left it. */
static int gather(SnapPlan *p, const SnapEntry *en, uint64_t bytes, NbError *e)
{
        size_t depth = 0;
        for (const char *s = en->path; (s = strchr(s, '/')); s++)
                depth++; /* components above the file */
        if (depth > SNAP_PLAN_DIR_DEPTH)
                depth = SNAP_PLAN_DIR_DEPTH;
        for (size_t d = 1; d <= SNAP_PLAN_DIR_DEPTH; d++) {
                Bucket *b = &p->open[d];
                if (b->path &&
                    !(snap_path_within(en->path, en->path_len, b->path, b->len) && en->path_len > b->len))
                        for (size_t k = SNAP_PLAN_DIR_DEPTH; k >= d; k--)
                                if (p->open[k].path)
                                        top_offer(p, &p->open[k]);
        }
        Bucket *b = &p->open[depth];
        if (!b->path) {
                size_t len = prefix_len(en->path, depth);
                if (!(b->path = strndup(en->path, len)))
                        return nb_error_oom(e);
                b->len = len;
        }
        b->bytes += bytes;
        return 0;
}

static int plan_add(void *u, const SnapEntry *en, int dirfd, const char *name, NbError *e)
{
        SnapPlan *p = u;
        (void)dirfd, (void)name;
        p->stats.entries++;
        if (!S_ISREG(en->mode))
                return 0;
        if (en->nlink > 1) {
                int r = inode_seen(p, en->dev, en->ino, e);
                if (r != 0)
                        return r < 0 ? r : 0;
        }
        p->stats.files++;
        p->stats.bytes += en->size;
        if (!p->largest || en->size > p->stats.largest_size) {
                char *copy = strdup(en->path);
                if (!copy)
                        return nb_error_oom(e);
                free(p->largest);
                p->largest = copy;
                p->stats.largest = copy;
                p->stats.largest_size = en->size;
        }
        return gather(p, en, en->size, e);
}

static int plan_marker(void *u, const char *path, NbError *e)
{
        SnapPlan *p = u;
        (void)path, (void)e;
        p->stats.deleted++;
        return 0;
}

int snap_diff_plan(SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex, SnapPlan **ret, NbError *e)
{
        SnapPlan *p = calloc(1, sizeof(SnapPlan));
        if (!p)
                return nb_error_oom(e);
        const SnapDiffSink sink = {plan_add, plan_marker, plan_marker, p};
        int r = snap_diff_run(base, live, ex, &sink, NULL, NULL, NULL, e);
        if (r < 0) {
                snap_plan_free(p);
                return nb_error_wrap(e, r, "cannot count the changes");
        }
        for (size_t d = SNAP_PLAN_DIR_DEPTH + 1; d-- > 0;)
                if (p->open[d].path)
                        top_offer(p, &p->open[d]);
        *ret = p;
        return 0;
}
