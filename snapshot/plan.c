/* plan.c: the counting pass of a save (snapshot.h, "the plan"): the diff's decisions, with stat sizes summed
 * instead of contents read. */
#include <string.h>
#include <sys/stat.h>

#include "snapshot/baseline.h"
#include "snapshot/diff.h"
#include "snapshot/layer.h"
#include "snapshot/plan.h"
#include "snapshot/walk.h"

#define SNAP_PLAN_INODES_MAX     (16u << 20) /* hard-linked inodes remembered */
#define SNAP_PLAN_LINK_NAMES_MAX (16u << 20) /* names of hard-linked entries remembered */

/* A hard-linked entry of the changes (not a directory, nlink > 1) and its names in tree order. */
typedef struct Inode {
        uint64_t dev, ino; /* ino 0: a free slot (no file has inode 0 on Linux file systems we read) */
        uint64_t size;     /* a regular file's data, 0 for other kinds */
        char **names;
        uint32_t n_names, allocated;
        bool taken; /* snap_plan_take_links() handed the names out */
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
        size_t n_names;
        snap_change_fn change; /* snap_diff_preview() */
        void *change_userdata;
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
        for (size_t i = 0; i < p->inodes_allocated; i++) {
                for (uint32_t k = 0; k < p->inodes[i].n_names; k++)
                        free(p->inodes[i].names[k]);
                free(p->inodes[i].names);
        }
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

/* The inode's slot, added (empty) when new. */
static int inode_get(SnapPlan *p, uint64_t dev, uint64_t ino, Inode **ret, NbError *e)
{
        if ((p->n_inodes + 1) * 2 > p->inodes_allocated) {
                int r = inodes_grow(p, e);
                if (r < 0)
                        return r;
        }
        size_t i = inode_slot(p->inodes, p->inodes_allocated, dev, ino);
        if (p->inodes[i].ino == 0) {
                p->inodes[i] = (Inode){.dev = dev, .ino = ino};
                p->n_inodes++;
        }
        *ret = &p->inodes[i];
        return 0;
}

static int inode_add_name(SnapPlan *p, Inode *in, const char *path, NbError *e)
{
        if (p->n_names >= SNAP_PLAN_LINK_NAMES_MAX)
                return nb_error_set(e, -E2BIG, "cannot count the changes: over %u hard-linked names",
                                    SNAP_PLAN_LINK_NAMES_MAX);
        if (in->n_names == in->allocated) {
                uint32_t n = in->allocated ? in->allocated * 2 : 2;
                char **names = realloc(in->names, n * sizeof(char *));
                if (!names)
                        return nb_error_oom(e);
                in->names = names, in->allocated = n;
        }
        if (!(in->names[in->n_names] = strdup(path)))
                return nb_error_oom(e);
        in->n_names++;
        p->n_names++;
        return 0;
}

int snap_plan_take_links(SnapPlan *p, uint64_t dev, uint64_t ino, char *const **ret_names, size_t *ret_n)
{
        if (!p || p->inodes_allocated == 0 || ino == 0)
                return -ENOENT;
        size_t i = inode_slot(p->inodes, p->inodes_allocated, dev, ino);
        Inode *in = &p->inodes[i];
        if (in->ino == 0 || in->n_names < 2)
                return -ENOENT;
        if (in->taken)
                return 0;
        in->taken = true;
        *ret_names = in->names;
        *ret_n = in->n_names;
        return 1;
}

void snap_plan_links_reset(SnapPlan *p)
{
        for (size_t i = 0; p && i < p->inodes_allocated; i++)
                p->inodes[i].taken = false;
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

/* The largest unit of the changes so far: a file with its tar headers, a hard-linked one with all its names.
 */
static int offer_largest(SnapPlan *p, const char *path, uint64_t size, uint64_t tar, NbError *e)
{
        if (p->largest && tar <= p->stats.largest_tar)
                return 0;
        char *copy = strdup(path);
        if (!copy)
                return nb_error_oom(e);
        free(p->largest);
        p->largest = copy;
        p->stats.largest = copy;
        p->stats.largest_size = size;
        p->stats.largest_tar = tar;
        return 0;
}

static int plan_add(void *u, const SnapEntry *en, int dirfd, const char *name, NbError *e)
{
        SnapPlan *p = u;
        (void)dirfd, (void)name;
        p->stats.entries++;
        uint64_t header = snap_tar_entry_bound(en->path_len, en->link_len, 0, 0);
        if (S_ISDIR(en->mode)) {
                p->stats.tar_bytes += header;
                p->stats.skeleton_tar += header;
                return 0;
        }
        uint64_t size = S_ISREG(en->mode) ? en->size : 0;
        if (en->nlink > 1 && en->ino != 0) {
                /* counted once, at the end (inode_units), with a header for every name */
                Inode *in;
                int r = inode_get(p, en->dev, en->ino, &in, e);
                if (r >= 0)
                        r = inode_add_name(p, in, en->path, e);
                if (r < 0)
                        return r;
                if (in->n_names > 1)
                        return 0;
                in->size = size;
        } else {
                p->stats.tar_bytes += header + snap_tar_pad(size);
                if (S_ISREG(en->mode)) {
                        int r = offer_largest(p, en->path, size, header + snap_tar_pad(size), e);
                        if (r < 0)
                                return r;
                }
        }
        if (!S_ISREG(en->mode))
                return 0;
        p->stats.files++;
        p->stats.bytes += size;
        return gather(p, en, size, e);
}

/* A hard-linked inode goes in one piece: the data once, under its first name, and a link entry (a header
 * naming the first) for each other name. */
static int inode_units(SnapPlan *p, NbError *e)
{
        for (size_t i = 0; i < p->inodes_allocated; i++) {
                const Inode *in = &p->inodes[i];
                if (in->ino == 0 || in->n_names == 0)
                        continue;
                size_t first = strlen(in->names[0]);
                uint64_t tar = snap_tar_entry_bound(first, 0, 0, in->size);
                for (uint32_t k = 1; k < in->n_names; k++)
                        tar += snap_tar_entry_bound(strlen(in->names[k]), first, 0, 0);
                p->stats.tar_bytes += tar;
                if (in->size > 0 || in->n_names > 1) {
                        int r = offer_largest(p, in->names[0], in->size, tar, e);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int plan_marker(void *u, const char *path, NbError *e)
{
        SnapPlan *p = u;
        (void)e;
        uint64_t tar = snap_tar_entry_bound(strlen(path) + SNAP_MARKER_NAME_MAX + 1, 0, 0, 0);
        p->stats.deleted++;
        p->stats.tar_bytes += tar;
        p->stats.skeleton_tar += tar;
        return 0;
}

static int plan_drop(void *u, const SnapEntry *en, NbError *e)
{
        SnapPlan *p = u;
        (void)e;
        /* a hard-linked file's bytes are in the chain once: each name drops its share */
        if (S_ISREG(en->mode) && (en->flags & SNAP_ENTRY_SAVED))
                p->stats.dead_bytes += en->nlink > 1 ? en->size / en->nlink : en->size;
        return 0;
}

static int plan_change(void *u, const SnapChange *c, NbError *e)
{
        SnapPlan *p = u;
        return p->change(p->change_userdata, c, e);
}

int snap_diff_preview(SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex, snap_change_fn change,
                      void *userdata, SnapPlan **ret, NbError *e)
{
        SnapPlan *p = calloc(1, sizeof(SnapPlan));
        if (!p)
                return nb_error_oom(e);
        p->change = change, p->change_userdata = userdata;
        const SnapDiffSink sink = {plan_add,  plan_marker, plan_marker,
                                   plan_drop, p,           change ? plan_change : NULL};
        int r = snap_diff_run(base, live, ex, &sink, NULL, NULL, NULL, NULL, e);
        if (r < 0) {
                snap_plan_free(p);
                return nb_error_wrap(e, r, "cannot count the changes");
        }
        for (size_t d = SNAP_PLAN_DIR_DEPTH + 1; d-- > 0;)
                if (p->open[d].path)
                        top_offer(p, &p->open[d]);
        r = inode_units(p, e);
        if (r < 0) {
                snap_plan_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

int snap_diff_plan(SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex, SnapPlan **ret, NbError *e)
{
        return snap_diff_preview(base, live, ex, NULL, NULL, ret, e);
}
