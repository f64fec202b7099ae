/* squash.c: the top layers of a base merged into one layer (snapshot.h says what and why).
 *
 * Two hash tables of paths. `overrides` holds what the container's changes write (OV_ENTRY: a directory,
 * the path alone; OV_TREE: the path and everything below). `index` holds, per path of the merged layers:
 * the top-most content entry (layer, number of the entry in that layer, directory or not), the top-most
 * whiteout, the top-most opaque marker, the top-most layer with an entry below the path (which makes it a
 * directory there, entry or not), and hide_below: the highest layer that hides what lower layers hold below
 * the path (a whiteout or a non-directory at the path, an opaque marker in it). A path's winner is its
 * top-most content or whiteout (content when both are in one layer: a whiteout hides lower layers only); it
 * is visible when no ancestor has a hide_below above the winner's layer. A winner that a higher layer made a
 * directory again (entries below a deleted path or a file) stands for a new directory over hidden content.
 * An opaque marker is written before anything below its directory. Nothing is ever removed from the index:
 * both passes cost a lookup per entry plus a few per ancestor.
 */
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include "snapshot/diff.h"
#include "snapshot/excludes.h"
#include "snapshot/layer.h"
#include "snapshot/squash.h"

#define WHITEOUT_PREFIX   ".wh."
#define OPAQUE_NAME       ".wh..wh..opq"
#define AUFS_PREFIX       ".wh..wh."
#define READ_BLOCK        (64u * 1024)
#define TABLE_SLOTS_FIRST 1024u

enum { OV_NONE, OV_ENTRY, OV_TREE };
enum { KIND_NONE, KIND_DIR, KIND_OTHER };

typedef struct Node {
        uint64_t hash;
        uint32_t content_seq; /* the winning content entry's number in its layer */
        int16_t content_layer, whiteout_layer, opaque_layer, hide_below; /* -1: none */
        int16_t implied_layer; /* the highest layer with an entry below the path (a directory there) */
        uint8_t content_kind;
        uint8_t override;
        bool written;     /* the winner (or what stands for it) was handled */
        bool marker_done; /* the opaque marker was written */
        size_t len;
        char path[]; /* relative, clean; "" is the root */
} Node;

typedef struct Table {
        Node **slots; /* open addressing, a power of two, at most 3/4 full */
        size_t n_slots, n, max;
} Table;

struct SnapSquash {
        unsigned n_layers;
        unsigned indexed, written; /* layers done by each pass */
        bool have_changes;
        Table index, overrides;
        const SnapExcludes *excludes;
        uint64_t *entries;   /* headers read per layer in pass 1, checked in pass 2 */
        char *path, *target; /* SNAP_PATH_MAX + 1 each: the clean names of the current entry */
};

/* ---- the path tables ---------------------------------------------------------------------------------- */

static uint64_t hash_path(const char *p, size_t len)
{
        uint64_t h = 14695981039346656037ull; /* FNV-1a */
        for (size_t i = 0; i < len; i++)
                h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
        return h;
}

static void table_done(Table *t)
{
        for (size_t i = 0; i < t->n_slots; i++)
                free(t->slots[i]);
        free(t->slots);
        *t = (Table){0};
}

static Node *table_find(const Table *t, const char *path, size_t len)
{
        if (t->n_slots == 0)
                return NULL;
        uint64_t h = hash_path(path, len);
        for (size_t i = h & (t->n_slots - 1);; i = (i + 1) & (t->n_slots - 1)) {
                Node *n = t->slots[i];
                if (!n)
                        return NULL;
                if (n->hash == h && n->len == len && memcmp(n->path, path, len) == 0)
                        return n;
        }
}

static void table_put(Node **slots, size_t n_slots, Node *n)
{
        size_t i = n->hash & (n_slots - 1);
        while (slots[i])
                i = (i + 1) & (n_slots - 1);
        slots[i] = n;
}

static int table_grow(Table *t)
{
        size_t n_slots = t->n_slots ? t->n_slots * 2 : TABLE_SLOTS_FIRST;
        Node **slots = calloc(n_slots, sizeof(Node *));
        if (!slots)
                return -ENOMEM;
        for (size_t i = 0; i < t->n_slots; i++)
                if (t->slots[i])
                        table_put(slots, n_slots, t->slots[i]);
        free(t->slots);
        t->slots = slots, t->n_slots = n_slots;
        return 0;
}

/* The node of path, made when missing. -E2BIG past the table's limit. */
static int table_get(Table *t, const char *path, size_t len, Node **ret)
{
        Node *n = table_find(t, path, len);
        if (n) {
                *ret = n;
                return 0;
        }
        if (t->n >= t->max)
                return -E2BIG;
        if ((t->n + 1) * 4 > t->n_slots * 3 && table_grow(t) < 0)
                return -ENOMEM;
        if (!(n = malloc(sizeof(Node) + len + 1)))
                return -ENOMEM;
        *n = (Node){.hash = hash_path(path, len),
                    .content_layer = -1,
                    .whiteout_layer = -1,
                    .opaque_layer = -1,
                    .hide_below = -1,
                    .implied_layer = -1,
                    .len = len};
        memcpy(n->path, path, len);
        n->path[len] = '\0';
        table_put(t->slots, t->n_slots, n);
        t->n++;
        *ret = n;
        return 0;
}

/* Calls f on each proper ancestor of path, the root ("") last; stops at the first true. */
static bool any_ancestor(const Table *t, const char *path, size_t len, bool (*f)(const Node *, int), int arg)
{
        if (len == 0)
                return false;
        for (size_t i = len; i-- > 0;)
                if (path[i] == '/') {
                        const Node *a = table_find(t, path, i);
                        if (a && f(a, arg))
                                return true;
                }
        const Node *root = table_find(t, "", 0);
        return root && f(root, arg);
}

/* ---- lifetime ----------------------------------------------------------------------------------------- */

int snap_squash_new(unsigned n_layers, SnapSquash **ret, NbError *e)
{
        if (n_layers == 0 || n_layers > SNAP_SQUASH_LAYERS_MAX)
                return nb_error_set(e, -EINVAL, "cannot squash %u layers: 1 to %u can be", n_layers,
                                    SNAP_SQUASH_LAYERS_MAX);
        SnapSquash *q = calloc(1, sizeof(*q));
        if (!q || !(q->entries = calloc(n_layers, sizeof(uint64_t))) ||
            !(q->path = malloc(SNAP_PATH_MAX + 1)) || !(q->target = malloc(SNAP_PATH_MAX + 1))) {
                snap_squash_free(q);
                return nb_error_oom(e);
        }
        q->n_layers = n_layers;
        q->index.max = q->overrides.max = SNAP_SQUASH_ENTRIES_MAX;
        *ret = q;
        return 0;
}

SnapSquash *snap_squash_free(SnapSquash *q)
{
        if (!q)
                return NULL;
        table_done(&q->index);
        table_done(&q->overrides);
        free(q->entries);
        free(q->path);
        free(q->target);
        free(q);
        return NULL;
}

void snap_squash_set_entries_max(SnapSquash *q, size_t max)
{
        q->index.max = q->overrides.max = max;
}

/* ---- what the changes write --------------------------------------------------------------------------- */

static bool is_tree(const Node *n, int arg)
{
        (void)arg;
        return n->override == OV_TREE;
}

static int override_add(SnapSquash *q, const char *path, int kind, NbError *e)
{
        size_t len = strlen(path);
        /* below a path written whole (a recreated directory's content): nothing to add */
        if (any_ancestor(&q->overrides, path, len, is_tree, 0))
                return 0;
        Node *n;
        int r = table_get(&q->overrides, path, len, &n);
        if (r == -E2BIG)
                return nb_error_set(e, r, "cannot squash: more than %zu paths changed in the container",
                                    q->overrides.max);
        if (r < 0)
                return nb_error_oom(e);
        if (kind > n->override)
                n->override = (uint8_t)kind;
        return 0;
}

static int changes_add(void *u, const SnapEntry *en, int dirfd, const char *name, NbError *e)
{
        (void)dirfd, (void)name;
        /* a live non-directory hides whatever the layers hold at and below its path */
        return override_add(u, en->path, S_ISDIR(en->mode) ? OV_ENTRY : OV_TREE, e);
}

static int changes_gone(void *u, const char *path, NbError *e)
{
        return override_add(u, path, OV_TREE, e);
}

int snap_squash_changes(SnapSquash *q, SnapBaseline *base, SnapWalk *live, const SnapExcludes *ex,
                        NbError *e)
{
        if (q->have_changes || q->written > 0)
                return nb_error_set(e, -EINVAL, "the changes of a squash are recorded once, before writing");
        const SnapDiffSink sink = {changes_add, changes_gone, changes_gone, NULL, q};
        int r = snap_diff_run(base, live, ex, &sink, NULL, NULL, NULL, NULL, e);
        if (r < 0)
                return r;
        q->excludes = ex;
        q->have_changes = true;
        return 0;
}

/* OV_TREE when path or an ancestor is written whole by the changes, else path's own override. */
static int override_of(const SnapSquash *q, const char *path, size_t len)
{
        const Node *n = table_find(&q->overrides, path, len);
        if (n && n->override == OV_TREE)
                return OV_TREE;
        if (any_ancestor(&q->overrides, path, len, is_tree, 0))
                return OV_TREE;
        return n ? n->override : OV_NONE;
}

/* ---- reading layers ----------------------------------------------------------------------------------- */

static void reader_freep(struct archive **a)
{
        if (*a)
                archive_read_free(*a);
}
#define _cleanup_reader_ _cleanup_(reader_freep)

static int reader_open(int fd, unsigned layer, struct archive **ret, NbError *e)
{
        _cleanup_reader_ struct archive *a = archive_read_new();
        if (!a)
                return nb_error_oom(e);
        /* ARCHIVE_WARN: a filter run through an external program; still fine */
        if (archive_read_support_filter_gzip(a) < ARCHIVE_WARN ||
            archive_read_support_filter_zstd(a) < ARCHIVE_WARN ||
            archive_read_support_filter_none(a) < ARCHIVE_WARN ||
            archive_read_support_format_tar(a) != ARCHIVE_OK ||
            archive_read_open_fd(a, fd, READ_BLOCK) != ARCHIVE_OK)
                return nb_error_set(e, -EBADMSG, "cannot read merged layer %u: %s", layer,
                                    archive_error_string(a) ?: "libarchive");
        *ret = TAKE_PTR(a);
        return 0;
}

/* 1 and the next header, 0 at the end. */
static int reader_next(struct archive *a, unsigned layer, uint64_t seq, struct archive_entry **ret,
                       NbError *e)
{
        int r = archive_read_next_header(a, ret);
        if (r == ARCHIVE_EOF)
                return 0;
        /* ARCHIVE_WARN: a name in another charset, kept as bytes */
        if (r == ARCHIVE_OK || r == ARCHIVE_WARN)
                return 1;
        return nb_error_set(e, -EBADMSG, "cannot read merged layer %u (after %" PRIu64 " entries): %s",
                            layer, seq, archive_error_string(a) ?: "libarchive");
}

/* Reads what is left of fd (the padding after the tar, the end of a compressed stream), so that a writer on
 * the other side of a pipe is never left blocked. */
static void drain(int fd)
{
        char buf[4096];
        ssize_t k;
        while ((k = read(fd, buf, sizeof(buf))) > 0 || (k < 0 && errno == EINTR))
                ;
}

/* The clean form of a name in a layer: "./" prefixes, "." components, doubled and trailing slashes dropped;
 * the root is "". Absolute names, ".." and names too long are refused. */
static int clean_name(const char *name, char *out, size_t *ret_len)
{
        if (!name || !*name)
                return -EINVAL;
        if (name[0] == '/')
                return -EINVAL;
        size_t len = 0;
        for (const char *p = name; *p;) {
                size_t n = strcspn(p, "/");
                if (n == 2 && p[0] == '.' && p[1] == '.')
                        return -EINVAL;
                if (n > 0 && !(n == 1 && p[0] == '.')) {
                        if (len + (len > 0) + n > SNAP_PATH_MAX)
                                return -ENAMETOOLONG;
                        if (len > 0)
                                out[len++] = '/';
                        memcpy(out + len, p, n);
                        len += n;
                }
                p += n;
                p += strspn(p, "/");
        }
        out[len] = '\0';
        *ret_len = len;
        return 0;
}

typedef enum EntryKind {
        ENTRY_SKIP,     /* the root, aufs metadata */
        ENTRY_CONTENT,  /* q->path */
        ENTRY_WHITEOUT, /* q->path is the path deleted */
        ENTRY_OPAQUE,   /* q->path is the directory made opaque */
} EntryKind;

static int unsafe_name(unsigned layer, const char *name, const char *why, NbError *e)
{
        return nb_error_set(e, -EINVAL, "cannot squash merged layer %u: entry \"%.512s\" %s", layer,
                            name ? name : "(unreadable)", why);
}

/* What an entry of a layer says, with its clean path in q->path. */
static int classify(SnapSquash *q, unsigned layer, struct archive_entry *ae, EntryKind *ret, size_t *ret_len,
                    NbError *e)
{
        const char *name = archive_entry_pathname(ae);
        size_t len;
        int r = clean_name(name, q->path, &len);
        if (r < 0)
                return unsafe_name(layer, name,
                                   r == -ENAMETOOLONG
                                           ? "has a name that is too long"
                                           : "is not a safe relative name (absolute, \"..\" or empty)",
                                   e);
        *ret_len = len;
        if (len == 0) {
                *ret = ENTRY_SKIP;
                return 0;
        }
        /* aufs metadata (.wh..wh.plnk/..., .wh..wh.aufs): runtimes skip it too */
        if (strncmp(q->path, AUFS_PREFIX, strlen(AUFS_PREFIX)) == 0 && strcmp(q->path, OPAQUE_NAME) != 0) {
                *ret = ENTRY_SKIP;
                return 0;
        }
        const char *base = snap_path_basename(q->path);
        size_t dir_len = base > q->path ? (size_t)(base - q->path - 1) : 0;
        if (strncmp(base, WHITEOUT_PREFIX, strlen(WHITEOUT_PREFIX)) != 0) {
                if (archive_entry_filetype(ae) == AE_IFSOCK)
                        return unsafe_name(layer, name, "is a socket, which a layer cannot hold", e);
                *ret = ENTRY_CONTENT;
                return 0;
        }
        if (strcmp(base, OPAQUE_NAME) == 0) {
                q->path[dir_len] = '\0';
                *ret_len = dir_len;
                *ret = ENTRY_OPAQUE;
                return 0;
        }

        if (strncmp(base, AUFS_PREFIX, strlen(AUFS_PREFIX)) == 0) {
                *ret = ENTRY_SKIP;
                return 0;
        }
        const char *deleted = base + strlen(WHITEOUT_PREFIX);
        if (!*deleted || strcmp(deleted, ".") == 0 || strcmp(deleted, "..") == 0)
                return unsafe_name(layer, name, "is a whiteout without a valid name", e);
        memmove(q->path + (base - q->path), deleted, strlen(deleted) + 1);
        *ret_len = len - strlen(WHITEOUT_PREFIX);
        *ret = ENTRY_WHITEOUT;
        return 0;
}

/* ---- pass 1: the index -------------------------------------------------------------------------------- */

static void raise_hide(Node *n, int16_t layer)
{
        if (layer > n->hide_below)
                n->hide_below = layer;
}

static int index_full(SnapSquash *q, NbError *e)
{
        return nb_error_set(e, -E2BIG,
                            "cannot squash: the %u merged layers hold more than %zu paths (the index of a "
                            "squash is kept in memory); squash fewer layers",
                            q->n_layers, q->index.max);
}

/* dir (the first len bytes of path) and its ancestors are directories in layer `layer`: an entry there
 * says so, even without an entry of their own. Layers come bottom first, so the walk up stops at the first
 * ancestor that knows it already. */
static int mark_implied(SnapSquash *q, const char *path, size_t len, int16_t layer, NbError *e)
{
        while (len > 0) {
                Node *a;
                int r = table_get(&q->index, path, len, &a);
                if (r < 0)
                        return r == -E2BIG ? index_full(q, e) : nb_error_oom(e);
                if (a->implied_layer >= layer)
                        return 0;
                a->implied_layer = layer;
                while (len > 0 && path[len - 1] != '/')
                        len--;
                len = len > 0 ? len - 1 : 0;
        }
        return 0;
}

static int index_entry(SnapSquash *q, unsigned layer, uint64_t seq, struct archive_entry *ae, NbError *e)
{
        EntryKind kind;
        size_t len;
        int r = classify(q, layer, ae, &kind, &len, e);
        if (r < 0 || kind == ENTRY_SKIP)
                return r;
        int16_t l = (int16_t)layer;
        /* the directory the entry lies in (the directory itself for an opaque marker) */
        const char *base = snap_path_basename(q->path);
        size_t dir_len = kind == ENTRY_OPAQUE ? len : base > q->path ? (size_t)(base - q->path - 1) : 0;
        r = mark_implied(q, q->path, dir_len, l, e);
        if (r < 0)
                return r;
        Node *n;
        r = table_get(&q->index, q->path, len, &n);
        if (r < 0)
                return r == -E2BIG ? index_full(q, e) : nb_error_oom(e);
        const char *link = kind == ENTRY_CONTENT ? archive_entry_hardlink(ae) : NULL;
        size_t link_len;
        if (link && (clean_name(link, q->target, &link_len) < 0 || link_len == 0))
                return unsafe_name(layer, link, "is a hard link target that is not a safe relative name", e);
        switch (kind) {
        case ENTRY_CONTENT:
                /* the last of duplicates in one layer wins, as on extraction */
                n->content_layer = l;
                n->content_seq = (uint32_t)seq;
                n->content_kind = archive_entry_filetype(ae) == AE_IFDIR && !archive_entry_hardlink(ae)
                                          ? KIND_DIR
                                          : KIND_OTHER;
                if (n->content_kind == KIND_OTHER)
                        raise_hide(n, l); /* a file replaces a directory of lower layers */
                break;
        case ENTRY_WHITEOUT:
                n->whiteout_layer = l;
                raise_hide(n, l);
                break;
        case ENTRY_OPAQUE:
                n->opaque_layer = l;
                raise_hide(n, l);
                break;
        case ENTRY_SKIP:
                break;
        }
        return 0;
}

int snap_squash_index(SnapSquash *q, unsigned layer, int fd, NbError *e)
{
        if (layer != q->indexed || layer >= q->n_layers)
                return nb_error_set(e, -EINVAL, "merged layer %u indexed out of order (expected %u of %u)",
                                    layer, q->indexed, q->n_layers);
        _cleanup_reader_ struct archive *a = NULL;
        int r = reader_open(fd, layer, &a, e);
        uint64_t seq = 0;
        while (r >= 0) {
                struct archive_entry *ae;
                r = reader_next(a, layer, seq, &ae, e);
                if (r <= 0)
                        break;
                if (seq >= UINT32_MAX)
                        return nb_error_set(e, -E2BIG, "merged layer %u has too many entries", layer);
                r = index_entry(q, layer, seq++, ae, e);
        }
        if (r < 0)
                return r;
        drain(fd);
        q->entries[layer] = seq;
        q->indexed++;
        return 0;
}

/* ---- pass 2: the winners ------------------------------------------------------------------------------ */

static bool hides_above(const Node *a, int layer)
{
        return a->hide_below > layer;
}

/* Whether what layer `layer` holds at path shows: no ancestor hidden from above that layer. */
static bool visible(const SnapSquash *q, const Node *n, int layer)
{
        return !any_ancestor(&q->index, n->path, n->len, hides_above, layer);
}

/* The winner of a path: its top-most content, or its top-most whiteout when that is higher. */
static bool content_wins(const Node *n)
{
        return n->content_layer >= 0 && n->content_layer >= n->whiteout_layer;
}

/* A winner that a higher layer turned into a directory by putting entries below it without an entry for it:
 * it stands for a directory whose lower content is gone. (A whiteout and entries below it in one layer are
 * left as they are, in the layer's order: runtimes apply them in that order.) */
static bool demoted(const Node *n)
{
        if (content_wins(n))
                return n->content_kind == KIND_OTHER && n->implied_layer > n->content_layer;
        return n->whiteout_layer >= 0 && n->implied_layer > n->whiteout_layer;
}

static int write_made_dir(const char *path, SnapLayer *out, NbError *e)
{
        struct archive_entry *ae = archive_entry_new();
        if (!ae)
                return nb_error_oom(e);
        archive_entry_copy_pathname(ae, path);
        archive_entry_set_mode(ae, S_IFDIR | 0755);
        int r = snap_layer_copy(out, NULL, ae, e);
        archive_entry_free(ae);
        return r;
}

/* The winner's layer of a path (or its top-most opaque marker's, when no layer has an entry for it). */
static int16_t win_layer(const Node *n)
{
        int16_t win = content_wins(n) ? n->content_layer : n->whiteout_layer;
        return win >= 0 ? win : n->opaque_layer;
}

/* Whether the path gets an opaque marker (the kept layers' content below it stays hidden), and whether a
 * directory entry must be made for it first: a directory of the layers that a merged layer hid the lower
 * content of, a path the layers deleted or made a non-directory that is a directory again (by the changes,
 * or by entries below it in a higher layer). */
static bool marker_wanted(const SnapSquash *q, const Node *n, bool *ret_made)
{
        *ret_made = false;
        if (n->hide_below < 0 || n->marker_done)
                return false;
        /* the highest layer that says the path is there: its winner, an opaque marker in it, or entries
         * below a deleted path that make it a directory again */
        int16_t top = win_layer(n);
        if (n->opaque_layer > top)
                top = n->opaque_layer;
        if (demoted(n) && n->implied_layer > top)
                top = n->implied_layer;
        int ov = override_of(q, n->path, n->len);
        if (ov == OV_TREE || !visible(q, n, top))
                return false;
        if (ov == OV_ENTRY)
                return true; /* the changes write the directory, after the marker */
        if (demoted(n)) {
                *ret_made = true;
                return true;
        }
        bool content = content_wins(n);
        if (!content && n->whiteout_layer < 0)
                return true; /* only opaque markers: the directory is the kept layers' */
        return content && n->content_kind == KIND_DIR;
}

static int write_marker(SnapSquash *q, Node *n, bool made, SnapLayer *out, NbError *e)
{
        n->marker_done = true;
        int r = made ? write_made_dir(n->path, out, e) : 0;
        if (r >= 0)
                r = snap_layer_opaque(out, n->path, e);
        return r < 0 ? r : made ? 2 : 1;
}

/* The markers of path's ancestors, root first, that are not written yet: a marker always comes before
 * anything below its directory in the layer (an applier that honours a marker by deleting what it did not
 * unpack from this layer yet, as docker's does, must not delete the merged content). */
static int ancestor_markers(SnapSquash *q, const char *path, size_t len, SnapLayer *out, NbError *e)
{
        int written = 0;
        for (size_t i = 0; i < len; i++) {
                if (i > 0 && path[i] != '/')
                        continue;
                Node *a = table_find(&q->index, path, i);
                bool made;
                if (!a || a->hide_below < 0 || a->marker_done || !marker_wanted(q, a, &made))
                        continue;
                int r = write_marker(q, a, made, out, e);
                if (r < 0)
                        return r;
                written += r;
        }
        return written;
}

/* A hard link entry: kept when its target was written before it, else made a regular file from the live
 * root (the path is unchanged there). */
static bool target_written(const SnapSquash *q, unsigned layer, uint64_t seq, const char *target, size_t len)
{
        const Node *t = table_find(&q->index, target, len);
        if (!t)
                return true; /* no merged layer holds it: the kept layers do */
        if (!content_wins(t) || t->content_kind != KIND_OTHER || demoted(t) ||
            (unsigned)t->content_layer > layer ||
            ((unsigned)t->content_layer == layer && t->content_seq >= seq))
                return false;
        return visible(q, t, t->content_layer) && override_of(q, target, len) == OV_NONE;
}

/* Opens root/path without following a symlink anywhere on the way. */
static int open_beneath(const char *root, const char *path, NbError *e)
{
        _cleanup_close_ int dir = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0)
                return nb_error_set(e, -errno, "cannot open the root %s: %m", root);
        const char *p = path;
        for (;;) {
                size_t n = strcspn(p, "/");
                char name[NAME_MAX + 1];
                if (n > NAME_MAX)
                        return nb_error_set(e, -ENAMETOOLONG, "cannot open /%s: a name is too long", path);
                memcpy(name, p, n);
                name[n] = '\0';
                if (!p[n]) {
                        int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
                        return fd >= 0 ? fd : nb_error_set(e, -errno, "cannot open /%s: %m", path);
                }
                int next = openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (next < 0)
                        return nb_error_set(e, -errno, "cannot open /%s: %m", path);
                close(dir);
                dir = next;
                p += n + 1;
        }
}

static int materialise(SnapSquash *q, unsigned layer, const char *root, struct archive_entry *ae,
                       SnapLayer *out, NbError *e)
{
        const char *path = archive_entry_pathname(ae);
        if (q->excludes && snap_excludes_covers(q->excludes, path, strlen(path)))
                return nb_error_set(
                        e, -ENOENT,
                        "cannot squash: /%s, a hard link in merged layer %u whose target is replaced, "
                        "must be read from the container, where it is hidden by a mount or excluded",
                        path, layer);
        int fd = open_beneath(root, path, e);
        if (fd < 0)
                return nb_error_wrap(e, fd,
                                     "cannot squash: /%s, a hard link in merged layer %u whose target is "
                                     "replaced, must be read from the container",
                                     path, layer);
        _cleanup_close_ int f = fd;
        int r = snap_layer_add_fd(out, path, f, e);
        return r < 0 ? nb_error_wrap(e, r, "cannot squash merged layer %u", layer) : 1;
}

static int write_content(SnapSquash *q, unsigned layer, uint64_t seq, const char *root, struct archive *a,
                         struct archive_entry *ae, SnapLayer *out, NbError *e)
{
        archive_entry_copy_pathname(ae, q->path);
        const char *link = archive_entry_hardlink(ae);
        if (link) {
                size_t len;
                if (clean_name(link, q->target, &len) < 0 || len == 0)
                        return unsafe_name(layer, link,
                                           "is a hard link target that is not a safe relative name", e);
                archive_entry_copy_hardlink(ae, q->target);
                if (!target_written(q, layer, seq, q->target, len))
                        return materialise(q, layer, root, ae, out, e);
        }
        int r = snap_layer_copy(out, a, ae, e);
        return r < 0 ? nb_error_wrap(e, r, "cannot squash merged layer %u", layer) : 1;
}

/* Writes what entry `seq` of `layer` stands for: nothing, when it is not its path's winner, hidden, or the
 * changes write the path. Returns the number of entries written. */
static int write_one(SnapSquash *q, unsigned layer, uint64_t seq, const char *root, struct archive *a,
                     struct archive_entry *ae, SnapLayer *out, NbError *e)
{
        EntryKind kind;
        size_t len;
        int r = classify(q, layer, ae, &kind, &len, e);
        if (r < 0 || kind == ENTRY_SKIP)
                return r;
        Node *n = table_find(&q->index, q->path, len);
        if (!n)
                return nb_error_set(e, -EBADMSG, "merged layer %u is not the layer that was indexed (/%s)",
                                    layer, q->path);
        bool content = content_wins(n);
        int16_t win = content ? n->content_layer : n->whiteout_layer;
        /* the top-most opaque marker: where the directory's marker goes, when nothing put it earlier */
        bool at_marker = kind == ENTRY_OPAQUE && n->opaque_layer == (int16_t)layer;
        bool at_winner = kind == ENTRY_CONTENT    ? content && win == (int16_t)layer && n->content_seq == seq
                         : kind == ENTRY_WHITEOUT ? !content && win == (int16_t)layer
                                                  : false;
        if (at_winner && !n->written)
                n->written = true;
        else if (!at_marker)
                return 0;
        int ov = override_of(q, n->path, n->len);
        if (ov == OV_TREE || (at_winner && !visible(q, n, win)))
                return 0;
        int written = ancestor_markers(q, n->path, n->len, out, e);
        if (written < 0)
                return written;
        /* the layer's own word: its entry, or its whiteout */
        if (at_winner && ov == OV_NONE && !demoted(n)) {
                r = kind == ENTRY_WHITEOUT ? snap_layer_whiteout(out, n->path, e)
                                           : write_content(q, layer, seq, root, a, ae, out, e);
                if (r < 0)
                        return r;
                written++;
        }
        /* then its marker, unless something below it needed it earlier */
        bool made;
        if (marker_wanted(q, n, &made)) {
                r = write_marker(q, n, made, out, e);
                if (r < 0)
                        return r;
                written += r;
        }
        return written;
}

int snap_squash_write(SnapSquash *q, unsigned layer, int fd, const char *root, SnapLayer *out, NbError *e)
{
        if (q->indexed != q->n_layers || layer != q->written || !q->have_changes)
                return nb_error_set(e, -EINVAL,
                                    "merged layer %u written out of order (expected %u; %u of %u indexed; "
                                    "changes %s)",
                                    layer, q->written, q->indexed, q->n_layers,
                                    q->have_changes ? "recorded" : "not recorded");
        if (snap_layer_is_split(out))
                return nb_error_set(e, -EFBIG,
                                    "a squash cannot be split yet: the layer it writes to has a size limit");
        _cleanup_reader_ struct archive *a = NULL;
        int r = reader_open(fd, layer, &a, e);
        uint64_t seq = 0, written = 0;
        while (r >= 0) {
                struct archive_entry *ae;
                r = reader_next(a, layer, seq, &ae, e);
                if (r <= 0)
                        break;
                r = write_one(q, layer, seq++, root, a, ae, out, e);
                written += r > 0 ? (uint64_t)r : 0;
        }
        if (r < 0)
                return r;
        if (seq != q->entries[layer])
                return nb_error_set(e, -EBADMSG,
                                    "merged layer %u is not the layer that was indexed (%" PRIu64
                                    " entries, then %" PRIu64 ")",
                                    layer, q->entries[layer], seq);
        drain(fd);
        q->written++;
        return written > INT32_MAX ? INT32_MAX : (int)written;
}
