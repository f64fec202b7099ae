/* Unit tests of the squash (snapshot/squash.c): layer tars built here with libarchive (gzip, zstd and
 * plain), a live root in a scratch directory with a baseline taken before the "container's" changes, the
 * merged layers written to a SnapLayer in memory and read back entry by entry. */
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "snapshot/excludes.h"
#include "snapshot/layer.h"
#include "snapshot/snapshot.h"
#include "snapshot/squash.h"
#include "tests.h"

static char scratch[] = "/tmp/test-squash.XXXXXX";

static void sh(const char *fmt, ...) _printf_(1, 2);
static void sh(const char *fmt, ...)
{
        char cmd[8192];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        int r = system(cmd);
        if (r != 0) {
                fprintf(stderr, "command failed (%d): %s\n", r, cmd);
                abort();
        }
}

/* ---- layer tars --------------------------------------------------------------------------------------- */

/* One entry of a layer: d(ir), f(ile: arg is the data), l(symlink to arg), h(ard link to arg), c(har device
 * 1,5). mode 0: 0755 for directories, 0644 for files. */
typedef struct TarEntry {
        char type;
        const char *path;
        const char *arg;
        unsigned mode, uid;
        const char *xattr; /* "name=value" or NULL */
        long mtime;        /* 0: 1000 */
        size_t big;        /* a file of this many pattern bytes (pattern_byte()) instead of arg */
} TarEntry;

static uint8_t pattern_byte(size_t i)
{
        return (uint8_t)(i * 31 + i / 4096 + 7);
}

/* The checksum listing() prints for a file over 64 bytes. */
static uint64_t sum_update(uint64_t h, const uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 1099511628211ull;
        return h;
}

static uint64_t pattern_sum(size_t n)
{
        uint64_t h = 14695981039346656037ull;
        for (size_t i = 0; i < n; i++) {
                uint8_t b = pattern_byte(i);
                h = sum_update(h, &b, 1);
        }
        return h;
}

#define END                                                                                                 \
        {                                                                                                   \
                0                                                                                           \
        }

/* Writes a layer tar to scratch/name with the filter ("gzip", "zstd" or "none"). */
static void make_layer(const char *name, const char *filter, const TarEntry *t)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", scratch, name);
        struct archive *a = archive_write_new();
        ASSERT_EQ(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
        if (strcmp(filter, "gzip") == 0)
                ASSERT_EQ(archive_write_add_filter_gzip(a), ARCHIVE_OK);
        else if (strcmp(filter, "zstd") == 0)
                ASSERT_EQ(archive_write_add_filter_zstd(a), ARCHIVE_OK);
        ASSERT_EQ(archive_write_open_filename(a, path), ARCHIVE_OK);
        for (; t->type; t++) {
                struct archive_entry *ae = archive_entry_new();
                archive_entry_copy_pathname(ae, t->path);
                archive_entry_set_mtime(ae, t->mtime ? t->mtime : 1000, 0);
                archive_entry_set_uid(ae, t->uid);
                archive_entry_set_gid(ae, t->uid);
                unsigned type = t->type == 'd'   ? AE_IFDIR
                                : t->type == 'l' ? AE_IFLNK
                                : t->type == 'c' ? AE_IFCHR
                                                 : AE_IFREG;
                archive_entry_set_mode(ae, type | (t->mode          ? t->mode
                                                   : t->type == 'd' ? 0755
                                                   : t->type == 'l' ? 0777
                                                                    : 0644));
                if (t->type == 'l')
                        archive_entry_copy_symlink(ae, t->arg);
                if (t->type == 'h')
                        archive_entry_copy_hardlink(ae, t->arg);
                if (t->type == 'c')
                        archive_entry_set_rdev(ae, makedev(1, 5));
                if (t->xattr) {
                        const char *eq = strchr(t->xattr, '=');
                        char key[128];
                        snprintf(key, sizeof(key), "%.*s", (int)(eq - t->xattr), t->xattr);
                        archive_entry_xattr_add_entry(ae, key, eq + 1, strlen(eq + 1));
                }
                size_t size = t->big ? t->big : t->type == 'f' && t->arg ? strlen(t->arg) : 0;
                archive_entry_set_size(ae, (la_int64_t)size);
                ASSERT_EQ(archive_write_header(a, ae), ARCHIVE_OK);
                if (size && !t->big)
                        ASSERT_EQ(archive_write_data(a, t->arg, size), (la_ssize_t)size);
                for (size_t off = 0; off < t->big;) {
                        uint8_t chunk[10000];
                        size_t n = t->big - off < sizeof(chunk) ? t->big - off : sizeof(chunk);
                        for (size_t i = 0; i < n; i++)
                                chunk[i] = pattern_byte(off + i);
                        ASSERT_EQ(archive_write_data(a, chunk, n), (la_ssize_t)n);
                        off += n;
                }
                archive_entry_free(ae);
        }
        ASSERT_EQ(archive_write_free(a), ARCHIVE_OK);
}

static int open_layer(const char *name)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", scratch, name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        return fd;
}

/* ---- the output --------------------------------------------------------------------------------------- */

/* The tar as lines "TYPE PATH[ =DATA][ -> SYMLINK][ => HARDLINK][ MAJ,MIN][ mode=][ uid=][ x:NAME=VALUE]"
 * (mode when not 0755/0644/0777, uid when not 0); with_mtime adds " t=MTIME" to each line. */
static char *listing(const TestBuf *b, bool with_mtime)
{
        struct archive *a = archive_read_new();
        archive_read_support_format_tar(a);
        ASSERT_EQ(archive_read_open_memory(a, b->data, b->size), ARCHIVE_OK);
        char *out = NULL;
        size_t outlen = 0;
        FILE *f = open_memstream(&out, &outlen);
        struct archive_entry *ae;
        while (archive_read_next_header(a, &ae) == ARCHIVE_OK) {
                unsigned type = archive_entry_filetype(ae), perm = archive_entry_perm(ae);
                const char *hl = archive_entry_hardlink(ae), *sl = archive_entry_symlink(ae);
                char t = hl                 ? 'h'
                         : type == AE_IFDIR ? 'd'
                         : type == AE_IFLNK ? 'l'
                         : type == AE_IFCHR ? 'c'
                         : type == AE_IFREG ? 'f'
                                            : '?';
                fprintf(f, "%c %s", t, archive_entry_pathname(ae));
                if (t == 'f' && archive_entry_size(ae) > 64) {
                        uint64_t h = 14695981039346656037ull, size = 0;
                        uint8_t data[65536];
                        la_ssize_t n;
                        while ((n = archive_read_data(a, data, sizeof(data))) > 0) {
                                h = sum_update(h, data, (size_t)n);
                                size += (uint64_t)n;
                        }
                        ASSERT_EQ(size, archive_entry_size(ae));
                        fprintf(f, " size=%" PRIu64 " sum=%016" PRIx64, size, h);
                } else if (t == 'f' && archive_entry_size(ae) > 0) {
                        char data[256];
                        la_ssize_t n = archive_read_data(a, data, sizeof(data));
                        ASSERT_EQ(n, archive_entry_size(ae));
                        fputs(" =", f);
                        for (la_ssize_t i = 0; i < n; i++)
                                fputs(data[i] == '\n' ? "\\n" : (char[]){data[i], 0}, f);
                }
                if (sl)
                        fprintf(f, " -> %s", sl);
                if (hl)
                        fprintf(f, " => %s", hl);
                if (t == 'c')
                        fprintf(f, " %u,%u", major(archive_entry_rdev(ae)), minor(archive_entry_rdev(ae)));
                if (perm != (t == 'd' ? 0755u : t == 'l' ? 0777u : 0644u))
                        fprintf(f, " mode=%o", perm);
                if (archive_entry_uid(ae))
                        fprintf(f, " uid=%lld", (long long)archive_entry_uid(ae));
                const char *name;
                const void *v;
                size_t vs;
                archive_entry_xattr_reset(ae);
                while (archive_entry_xattr_next(ae, &name, &v, &vs) == ARCHIVE_OK)
                        fprintf(f, " x:%s=%.*s", name, (int)vs, (const char *)v);
                if (with_mtime)
                        fprintf(f, " t=%lld", (long long)archive_entry_mtime(ae));
                fputc('\n', f);
                ASSERT_TRUE(archive_entry_mtime_nsec(ae) == 0);
                ASSERT_TRUE(!archive_entry_atime_is_set(ae) && !archive_entry_ctime_is_set(ae));
                ASSERT_TRUE(!archive_entry_uname(ae) || !archive_entry_uname(ae)[0]);
        }
        fclose(f);
        ASSERT_EQ(archive_read_free(a), ARCHIVE_OK);
        return out;
}

static void assert_listing(const char *got, const char *want)
{
        if (strcmp(got, want) != 0) {
                fprintf(stderr, "layer differs; got:\n%s\nwant:\n%s\n", got, want);
                abort();
        }
}

/* ---- a runtime's view ----------------------------------------------------------------------------------
 */

/* The tree that layers applied in order give, as the OCI rules say (whiteouts and opaque markers hide lower
 * layers only; entries below a missing directory make it; a hard link takes its target's content), as
 * sorted "path: description" lines. Small trees only: lookups are linear. */
typedef struct TreeNode {
        char *path, *desc;
        int layer;
} TreeNode;

typedef struct Tree {
        TreeNode nodes[512];
        size_t n;
} Tree;

static TreeNode *tree_find(Tree *t, const char *path)
{
        for (size_t i = 0; i < t->n; i++)
                if (strcmp(t->nodes[i].path, path) == 0)
                        return &t->nodes[i];
        return NULL;
}

static bool below(const char *path, const char *dir)
{
        size_t n = strlen(dir);
        return n == 0 || (strncmp(path, dir, n) == 0 && path[n] == '/');
}

/* Removes path (when self) and what lies below it, from the layers under `layer`. */
static void tree_remove(Tree *t, const char *path, bool self, int layer)
{
        for (size_t i = 0; i < t->n;) {
                TreeNode *n = &t->nodes[i];
                if (n->layer < layer && ((self && strcmp(n->path, path) == 0) || below(n->path, path))) {
                        free(n->path);
                        free(n->desc);
                        *n = t->nodes[--t->n];
                } else
                        i++;
        }
}

static void tree_set(Tree *t, const char *path, const char *desc, int layer)
{
        TreeNode *n = tree_find(t, path);
        if (!n) {
                ASSERT_INT(t->n, <, ELEMENTSOF(t->nodes));
                n = &t->nodes[t->n++];
                n->path = strdup(path);
        } else
                free(n->desc);
        n->desc = strdup(desc);
        n->layer = layer;
}

/* The directories above path, made when missing (or when not directories). */
static void tree_parents(Tree *t, const char *path, int layer)
{
        char p[512];
        snprintf(p, sizeof(p), "%s", path);
        for (char *slash = strchr(p, '/'); slash; slash = strchr(slash + 1, '/')) {
                *slash = '\0';
                TreeNode *n = tree_find(t, p);
                if (!n || n->desc[0] != 'd') {
                        tree_remove(t, p, true, layer + 1);
                        tree_set(t, p, "d 755 0 ", layer); /* as runtimes make it */
                }
                *slash = '/';
        }
}

static void entry_desc(struct archive *a, struct archive_entry *ae, Tree *t, char *desc, size_t size)
{
        const char *hl = archive_entry_hardlink(ae);
        if (hl) {
                while (strncmp(hl, "./", 2) == 0)
                        hl += 2;
                TreeNode *target = tree_find(t, hl);
                ASSERT_TRUE(target != NULL);
                snprintf(desc, size, "%s", target->desc);
                return;
        }
        unsigned type = archive_entry_filetype(ae);
        char content[256] = "";
        if (type == AE_IFREG) {
                la_ssize_t n = archive_read_data(a, content, sizeof(content) - 1);
                ASSERT_INT(n, >=, 0);
                content[n] = '\0';
        }
        snprintf(desc, size, "%c %o %lld %s%s",
                 type == AE_IFDIR   ? 'd'
                 : type == AE_IFLNK ? 'l'
                 : type == AE_IFREG ? 'f'
                                    : 'o',
                 archive_entry_perm(ae), (long long)archive_entry_uid(ae), content,
                 archive_entry_symlink(ae) ? archive_entry_symlink(ae) : "");
}

static void tree_apply(Tree *t, const uint8_t *data, size_t size, int layer)
{
        if (size == 0)
                return; /* no layer */
        struct archive *a = archive_read_new();
        archive_read_support_format_tar(a);
        ASSERT_EQ(archive_read_open_memory(a, data, size), ARCHIVE_OK);
        struct archive_entry *ae;
        while (archive_read_next_header(a, &ae) == ARCHIVE_OK) {
                char path[512];
                const char *name = archive_entry_pathname(ae);
                while (strncmp(name, "./", 2) == 0)
                        name += 2;
                snprintf(path, sizeof(path), "%s", name);
                size_t len = strlen(path);
                while (len > 0 && path[len - 1] == '/')
                        path[--len] = '\0';
                /* the root, and aufs metadata (runtimes skip it) */
                if (len == 0 || (strncmp(path, ".wh..wh.", 8) == 0 && strcmp(path, ".wh..wh..opq") != 0))
                        continue;
                tree_parents(t, path, layer);
                char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
                if (strcmp(base, ".wh..wh..opq") == 0) {
                        base[base > path ? -1 : 0] = '\0';
                        tree_remove(t, path, false, layer);
                        continue;
                }
                if (strncmp(base, ".wh.", 4) == 0) {
                        memmove(base, base + 4, strlen(base + 4) + 1);
                        tree_remove(t, path, true, layer);
                        continue;
                }
                char desc[512];
                entry_desc(a, ae, t, desc, sizeof(desc));
                TreeNode *old = tree_find(t, path);
                if (old && !(desc[0] == 'd' && !archive_entry_hardlink(ae) && old->desc[0] == 'd'))
                        tree_remove(t, path, true, layer + 1);
                tree_set(t, path, desc, layer);
        }
        ASSERT_EQ(archive_read_free(a), ARCHIVE_OK);
}

static int cmp_tree_nodes(const void *a, const void *b)
{
        return strcmp(((const TreeNode *)a)->path, ((const TreeNode *)b)->path);
}

/* The tree as lines; empties it. */
static char *tree_listing(Tree *t)
{
        qsort(t->nodes, t->n, sizeof(TreeNode), cmp_tree_nodes);
        char *out = NULL;
        size_t outlen = 0;
        FILE *f = open_memstream(&out, &outlen);
        for (size_t i = 0; i < t->n; i++) {
                fprintf(f, "%s: %s\n", t->nodes[i].path, t->nodes[i].desc);
                free(t->nodes[i].path);
                free(t->nodes[i].desc);
        }
        fclose(f);
        t->n = 0;
        return out;
}

/* A layer file's tar bytes, decompressed. */
static void read_tar(const char *name, TestBuf *b)
{
        int fd = open_layer(name);
        struct archive *a = archive_read_new();
        archive_read_support_filter_all(a);
        archive_read_support_format_raw(a);
        ASSERT_EQ(archive_read_open_fd(a, fd, 65536), ARCHIVE_OK);
        struct archive_entry *ae;
        ASSERT_EQ(archive_read_next_header(a, &ae), ARCHIVE_OK);
        uint8_t chunk[65536];
        la_ssize_t n;
        while ((n = archive_read_data(a, chunk, sizeof(chunk))) > 0)
                test_buf_write(b, chunk, (size_t)n);
        ASSERT_EQ(archive_read_free(a), ARCHIVE_OK);
        close(fd);
}

static char *failure_context; /* printed when the trees differ */

/* The runtime's tree of the kept layer `kept` + the merged layers + the diff, and of `kept` + the squashed
 * layer (squash then diff, one tar): the same. */
static void assert_same_tree(const char *kept, const char *const *layers, const TestBuf *diff,
                             const TestBuf *squashed)
{
        Tree *t = calloc(1, sizeof(Tree));
        ASSERT_TRUE(t);
        TestBuf b = {0};
        read_tar(kept, &b);
        tree_apply(t, b.data, b.size, 0);
        int layer = 1;
        for (; *layers; layers++) {
                b.size = 0;
                read_tar(*layers, &b);
                tree_apply(t, b.data, b.size, layer++);
        }
        tree_apply(t, diff->data, diff->size, layer);
        char *chain = tree_listing(t);
        b.size = 0;
        read_tar(kept, &b);
        tree_apply(t, b.data, b.size, 0);
        tree_apply(t, squashed->data, squashed->size, 1);
        char *squash = tree_listing(t);
        if (strcmp(chain, squash) != 0) {
                fprintf(stderr, "%sthe squashed image differs; with the layers:\n%s\nsquashed:\n%s\n",
                        failure_context ? failure_context : "", chain, squash);
                abort();
        }
        free(chain);
        free(squash);
        free(b.data);
        free(t);
}

/* ---- a squash ----------------------------------------------------------------------------------------- */

typedef struct Setup {
        char root[512], baseline[512];
        SnapExcludes *ex;
} Setup;

/* A live root made by `before`, its baseline, then `change` run in it a second later. */
static void setup(Setup *s, const char *name, const char *before, const char *change, const char *exclude)
{
        snprintf(s->root, sizeof(s->root), "%s/%s-root", scratch, name);
        snprintf(s->baseline, sizeof(s->baseline), "%s/%s-baseline", scratch, name);
        sh("mkdir -p %s && cd %s && %s", s->root, s->root, before);
        NbError e = {0};
        ASSERT_OK(snap_excludes_new(&s->ex, &e));
        if (exclude)
                ASSERT_OK(snap_excludes_add(s->ex, exclude, &e));
        ASSERT_OK(snap_baseline_write(s->root, s->ex, s->baseline, NULL, &e));
        if (change) {
                sleep(1);
                sh("cd %s && %s", s->root, change);
        }
}

static void setup_done(Setup *s)
{
        snap_excludes_free(s->ex);
}

/* The changes of s recorded into q. */
static void changes(SnapSquash *q, const Setup *s)
{
        NbError e = {0};
        _cleanup_snap_baseline_ SnapBaseline *b = NULL;
        _cleanup_snap_walk_ SnapWalk *w = NULL;
        ASSERT_OK(snap_baseline_open(s->baseline, &b, &e));
        ASSERT_OK(snap_walk_new(s->root, s->ex, &w, &e));
        int r = snap_squash_changes(q, b, w, s->ex, &e);
        if (r < 0)
                fprintf(stderr, "changes: %s\n", e.msg);
        ASSERT_OK(r);
}

/* The diff pass of s appended to b (as the save writes it after the squash). */
static void diff_into(const Setup *s, TestBuf *b)
{
        NbError e = {0};
        _cleanup_snap_baseline_ SnapBaseline *base = NULL;
        _cleanup_snap_walk_ SnapWalk *w = NULL;
        ASSERT_OK(snap_baseline_open(s->baseline, &base, &e));
        ASSERT_OK(snap_walk_new(s->root, s->ex, &w, &e));
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, b, &l, &e));
        ASSERT_OK(snap_diff_layer(base, w, s->ex, l, NULL, NULL, NULL, &e));
        ASSERT_OK(snap_layer_finish(l, &e));
        snap_layer_free(l);
}

/* Both passes over the layers into l. Returns the first error (e filled), or the entries written. */
static int squash_into(SnapSquash *q, const Setup *s, const char *const *layers, SnapLayer *l, NbError *e)
{
        unsigned n = 0;
        while (layers[n])
                n++;
        int r = 0, total = 0;
        for (unsigned i = 0; r >= 0 && i < n; i++) {
                int fd = open_layer(layers[i]);
                r = snap_squash_index(q, i, fd, e);
                close(fd);
        }
        for (unsigned i = 0; r >= 0 && i < n; i++) {
                int fd = open_layer(layers[i]);
                r = snap_squash_write(q, i, fd, s->root, l, e);
                close(fd);
                total += r > 0 ? r : 0;
        }
        return r < 0 ? r : total;
}

/* ---- the tests ---------------------------------------------------------------------------------------- */

/* Three merged layers (gzip, zstd, plain) on kept layers, and a container that changed some of their paths.
 */
static void test_merge(void)
{
        static const TarEntry l0[] = {
                {'d', "./etc/"},
                {'f', "./etc/a", "a0"},
                {'f', "./etc/b", "b0"},
                {'f', "./etc/c", "c0", 0600, 1000, "user.k=v", 12345},
                {'f', "./etc/.wh.gone"},
                {'d', "./opt/"},
                {'d', "./opt/old/"},
                {'f', "./opt/old/x", "x0"},
                {'d', "./var/"},
                {'f', "./var/del", "d0"},
                {'l', "./lnk", "etc/a"},
                {'d', "./data/"},
                {'f', "./data/orig", "orig"},
                {'h', "./data/link", "./data/orig"},
                {'f', "./data/keep", "keep"},
                {'h', "./data/keep2", "./data/keep"},
                {'h', "./data/lowlink", "usr/lowfile"},
                {'f', "./data/ov", "ov"},
                {'h', "./data/ov2", "./data/ov"},
                {'f', "./data/wt", "wt"},
                {'h', "./data/wt2", "data/wt"},
                {'d', "./home/"},
                {'d', "./home/ma-user/"},
                {'d', "./home/ma-user/work/"},
                {'f', "./home/ma-user/work/nb.ipynb", "nb"},
                {'d', "./gone-dir/"},
                {'f', "./gone-dir/f", "f"},
                {'d', "./dev/"},
                {'c', "./dev/zero"},
                END,
        };
        static const TarEntry l1[] = {
                {'f', "etc/a", "a1"},           {'d', "opt/old/"},
                {'f', "opt/old/.wh..wh..opq"},  {'f', "opt/old/y", "y1"},
                {'f', "data/orig", "new-orig"}, {'d', "newdir/"},
                {'f', "newdir/n", "n1"},        END,
        };
        static const TarEntry l2[] = {
                {'f', "var/.wh.del"},
                {'d', "opt/", NULL, 0700},
                {'f', ".wh.reborn"},
                {'d', "cfg/"},
                {'f', "cfg/.wh..wh..opq"},
                {'f', "cfg/k", "k2"},
                {'f', "f2d", "file"},
                {'f', "dup", "first"},
                {'f', "dup", "second"},
                {'d', ".wh..wh.plnk/"},
                {'f', ".wh..wh.plnk/123.4", "aufs"},
                {'f', "implied/.wh..wh..opq"},
                {'f', "implied/i", "i2"},
                {'f', "data/.wh.wt"},
                END,
        };
        make_layer("m0.tar.gz", "gzip", l0);
        make_layer("m1.tar.zst", "zstd", l1);
        make_layer("m2.tar", "none", l2);
        Setup s;
        setup(&s, "merge",
              "mkdir -p etc data home/ma-user/work gone-dir cfg newdir opt/old var && echo a1 > etc/a && "
              "echo b0 > etc/b && echo c0 > etc/c && echo -n orig > data/link && echo new-orig > data/orig "
              "&& "
              "echo keep > data/keep && ln data/keep data/keep2 && echo mounted > "
              "home/ma-user/work/nb.ipynb && "
              "echo f > gone-dir/f && printf ov > data/ov && printf ov > data/ov2 && printf wt > data/wt2 "
              "&& echo k2 > cfg/k && echo file > f2d && echo n1 > newdir/n",
              "echo changed >> etc/b && echo changed > data/ov && rm -rf gone-dir && mkdir reborn && chmod "
              "700 cfg && rm f2d && "
              "mkdir f2d && echo new > newfile && echo n2 > newdir/n && echo live > "
              "home/ma-user/work/nb.ipynb",
              "/home/ma-user/work");
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(3, &q, &e));
        changes(q, &s);
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        static const char *const layers[] = {"m0.tar.gz", "m1.tar.zst", "m2.tar", NULL};
        int r = squash_into(q, &s, layers, l, &e);
        if (r < 0)
                fprintf(stderr, "squash: %s\n", e.msg);
        ASSERT_OK(r);
        const SnapLayerStats st = *snap_layer_stats(l);
        ASSERT_EQ(st.entries, (uint64_t)r);
        ASSERT_OK(snap_layer_finish(l, &e));
        size_t squash_bytes = buf.size - 1024; /* without its end blocks */
        char *got = listing(&buf, false);
        assert_listing(got,
                       /* layer 0: what no higher layer replaced, and the changes did not write */
                       "d etc/\n"
                       "f etc/c =c0 mode=600 uid=1000 x:user.k=v\n" /* metadata as the layer has it */
                       "f etc/.wh.gone\n"                           /* a whiteout of the kept layers */
                       "d var/\n"
                       "l lnk -> etc/a\n"
                       "d data/\n"
                       "f data/link =orig\n" /* its target replaced above: from the live root */
                       "f data/keep =keep\n"
                       "h data/keep2 => data/keep\n"
                       "h data/lowlink => usr/lowfile\n" /* a target in the kept layers */
                       "f data/ov2 =ov\n"                /* its target changed in the container */
                       "f data/wt2 =wt\n"                /* its target deleted by layer 2 */
                       "d home/\n"
                       "d home/ma-user/\n"
                       "d home/ma-user/work/\n"
                       "f home/ma-user/work/nb.ipynb =nb\n" /* hidden by a mount: the layer's */
                       "d dev/\n"
                       "c dev/zero 1,5\n"
                       /* layer 1: opt/old opaque, x of layer 0 gone */
                       "f etc/a =a1\n"
                       "d opt/old/\n"
                       "f opt/old/.wh..wh..opq\n"
                       "f opt/old/y =y1\n"
                       "f data/orig =new-orig\n"
                       "d newdir/\n"
                       /* layer 2 */
                       "f var/.wh.del\n"
                       "d opt/ mode=700\n"
                       "f reborn/.wh..wh..opq\n" /* whited out, then made again in the container */
                       "f cfg/.wh..wh..opq\n"    /* opaque, its entry changed in the container */
                       "f cfg/k =k2\n"
                       "f f2d/.wh..wh..opq\n" /* a file of the layers, a directory in the container */
                       "f dup =second\n"
                       "f implied/.wh..wh..opq\n"
                       "f implied/i =i2\n"
                       "f data/.wh.wt\n");
        free(got);
        got = listing(&buf, true);
        ASSERT_TRUE(strstr(got, "f etc/c =c0 mode=600 uid=1000 x:user.k=v t=12345\n") != NULL);
        free(got);
        ASSERT_EQ(st.whiteouts, 8);

        /* the diff pass follows in the same layer: every path once */
        buf.size = squash_bytes;
        diff_into(&s, &buf);
        snap_layer_free(l);
        /* the diff's tar after the squash's entries: the paths the squash left out */
        TestBuf only_diff = {.data = buf.data + squash_bytes, .size = buf.size - squash_bytes};
        char *diff = listing(&only_diff, false);
        assert_listing(diff, "d cfg/ mode=700\n"
                             "f data/ov =changed\\n\n"
                             "f etc/b =b0\\nchanged\\n\n"
                             "d f2d/\n"
                             "f .wh.gone-dir\n"
                             "f newdir/n =n2\\n\n"
                             "f newfile =new\\n\n"
                             "d reborn/\n");
        free(diff);
        /* and a runtime shows the same tree for the kept layers + the merged ones + the changes, and for the
         * kept layers + the squashed layer */
        static const TarEntry kept[] = {
                {'d', "etc/"},
                {'f', "etc/gone", "g"},
                {'f', "etc/a", "ka"},
                {'f', "etc/b", "kb"},
                {'d', "opt/"},
                {'d', "opt/old/"},
                {'f', "opt/old/kx", "kx"},
                {'d', "var/"},
                {'f', "var/del", "kd"},
                {'d', "reborn/"},
                {'f', "reborn/old", "ro"},
                {'d', "cfg/"},
                {'f', "cfg/old", "co"},
                {'d', "f2d/"},
                {'f', "f2d/old", "fo"},
                {'d', "implied/"},
                {'f', "implied/old", "io"},
                {'d', "gone-dir/"},
                {'f', "gone-dir/kept", "gk"},
                {'d', "data/"},
                {'f', "data/wt", "kwt"},
                {'d', "usr/"},
                {'f', "usr/lowfile", "low"},
                {'d', "home/"},
                {'d', "home/ma-user/"},
                {'d', "home/ma-user/work/"},
                {'f', "home/ma-user/work/kfile", "kf"},
                {'f', "dup", "kdup"},
                {'d', "newdir/"},
                {'f', "newdir/kn", "kn"},
                END,
        };
        make_layer("k.tar.gz", "gzip", kept);
        assert_same_tree("k.tar.gz", layers, &only_diff, &buf);
        free(buf.data);
        setup_done(&s);
}

static void assert_error(int r, int want, const NbError *e, const char *text)
{
        if (r != want || !strstr(e->msg, text)) {
                fprintf(stderr, "expected %d with \"%s\", got %d: %s\n", want, text, r, e->msg);
                abort();
        }
}

static void write_pattern(const char *name, size_t n)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", scratch, name);
        FILE *f = fopen(path, "we");
        ASSERT_TRUE(f);
        for (size_t i = 0; i < n; i++)
                fputc(pattern_byte(i), f);
        ASSERT_EQ(fclose(f), 0);
}

static uint64_t file_sum(const char *path)
{
        FILE *f = fopen(path, "re");
        ASSERT_TRUE(f);
        uint64_t h = 14695981039346656037ull;
        uint8_t data[65536];
        size_t n;
        while ((n = fread(data, 1, sizeof(data), f)) > 0)
                h = sum_update(h, data, n);
        fclose(f);
        return h;
}

/* Changes below paths the merged layers deleted or made opaque: markers where the kept layers' content must
 * stay hidden; big files streamed (through a bounded buffer) and materialised from the live root. */
static void test_ancestors(void)
{
        const size_t big = 3u * 1024 * 1024 + 777;
        const TarEntry l0[] = {
                {'d', "a/"},
                {'d', "a/b/"},
                {'f', "a/b/f", "f0"},
                {'d', "o/"},
                {'f', "o/keep", "k0"},
                {'d', "big/"},
                {'f', "big/lf", .big = big},
                {'h', "big/lf2", "big/lf"},
                {'f', "big/stream", .big = big + 1},
                END,
        };
        static const TarEntry l1[] = {
                {'f', ".wh.a"}, {'f', "o/.wh..wh..opq"}, {'d', "o/"}, {'f', "big/lf", "new"}, END,
        };
        make_layer("a0.tar.zst", "zstd", l0);
        make_layer("a1.tar.gz", "gzip", l1);
        write_pattern("pattern", big); /* the image's big/lf2: layer 0's big/lf */
        Setup s;
        setup(&s, "ancestors", "mkdir -p o big && printf new > big/lf && cp ../pattern big/lf2",
              "mkdir -p a/b/c && mkdir o/d", NULL);
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(2, &q, &e));
        changes(q, &s);
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        static const char *const layers[] = {"a0.tar.zst", "a1.tar.gz", NULL};
        int r = squash_into(q, &s, layers, l, &e);
        if (r < 0)
                fprintf(stderr, "squash: %s\n", e.msg);
        ASSERT_EQ(r, 6);
        ASSERT_EQ(snap_layer_stats(l)->data_bytes, big + 1 + big + 3);
        ASSERT_OK(snap_layer_finish(l, &e));
        snap_layer_free(l);
        size_t squash_bytes = buf.size - 1024; /* without its end blocks */
        char path[600], want[1024];
        snprintf(path, sizeof(path), "%s/big/lf2", s.root);
        snprintf(want, sizeof(want),
                 "d big/\n"
                 "f big/lf2 size=%zu sum=%016" PRIx64 "\n" /* its target replaced in layer 1 */
                 "f big/stream size=%zu sum=%016" PRIx64 "\n"
                 "f a/.wh..wh..opq\n" /* deleted by layer 1, made again in the container */
                 "f o/.wh..wh..opq\n" /* opaque in layer 1, its entry changed in the container */
                 "f big/lf =new\n",
                 big, file_sum(path), big + 1, pattern_sum(big + 1));
        char *got = listing(&buf, false);
        assert_listing(got, want);
        free(got);
        static const TarEntry kept[] = {{'d', "a/"},        {'d', "a/b/"}, {'f', "a/b/kf", "k"}, {'d', "o/"},
                                        {'f', "o/d", "kd"}, {'d', "big/"}, {'f', "big/k", "k"},  END};
        make_layer("ak.tar", "none", kept);
        buf.size = squash_bytes;
        diff_into(&s, &buf);
        TestBuf only_diff = {.data = buf.data + squash_bytes, .size = buf.size - squash_bytes};
        assert_same_tree("ak.tar", layers, &only_diff, &buf);
        free(buf.data);
        setup_done(&s);
}

/* Entries below a path without an entry for it (layers in the wild leave directory entries out) make it a
 * directory in that layer: above a whiteout or a file of a lower layer, it stands as an opaque directory. */
static void test_implied(void)
{
        static const TarEntry l0[] = {{'f', "q", "file"}, {'d', "w/"}, {'f', "w/old", "o"}, END};
        static const TarEntry l1[] = {{'f', ".wh.w"}, {'f', "v/.wh.gone"}, {'f', ".wh.v"}, END};
        static const TarEntry l2[] = {{'f', "w/new", "n"}, {'f', "q/c", "c"}, END};
        make_layer("i0.tar", "none", l0);
        make_layer("i1.tar", "none", l1);
        make_layer("i2.tar", "none", l2);
        Setup s;
        setup(&s, "implied", "mkdir -p w q v && echo n > w/new && echo c > q/c", NULL, NULL);
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(3, &q, &e));
        changes(q, &s);
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        static const char *const layers[] = {"i0.tar", "i1.tar", "i2.tar", NULL};
        ASSERT_EQ(squash_into(q, &s, layers, l, &e), 8);
        ASSERT_OK(snap_layer_finish(l, &e));
        snap_layer_free(l);
        char *got = listing(&buf, false);
        static const TarEntry kept[] = {{'d', "w/"}, {'f', "w/kw", "kw"}, {'d', "q/"}, {'f', "q/kq", "kq"},
                                        {'d', "v/"}, {'f', "v/kv", "kv"}, END};
        make_layer("ik.tar", "none", kept);
        TestBuf no_diff = {0};
        assert_same_tree("ik.tar", layers, &no_diff, &buf);
        assert_listing(got, "d q/\n" /* a file, then a directory by q/c of layer 2 */
                            "f q/.wh..wh..opq\n"
                            "d w/\n" /* deleted, then a directory by w/new */
                            "f w/.wh..wh..opq\n"
                            "f v/.wh.gone\n" /* as layer 1 has it */
                            "f .wh.v\n"
                            "f w/new =n\n"
                            "f q/c =c\n");
        free(got);
        free(buf.data);
        setup_done(&s);
}

/* An opaque marker on the root hides every kept layer. */
static void test_root_opaque(void)
{
        static const TarEntry l0[] = {{'d', "x/"}, {'f', "x/a", "a"}, END};
        static const TarEntry l1[] = {{'f', "./.wh..wh..opq"}, {'f', "./y", "y"}, END};
        make_layer("r0.tar", "none", l0);
        make_layer("r1.tar", "none", l1);
        Setup s;
        setup(&s, "root", "echo y > y", NULL, NULL);
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(2, &q, &e));
        changes(q, &s);
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        static const char *const layers[] = {"r0.tar", "r1.tar", NULL};
        ASSERT_EQ(squash_into(q, &s, layers, l, &e), 2);
        ASSERT_OK(snap_layer_finish(l, &e));
        snap_layer_free(l);
        char *got = listing(&buf, false);
        assert_listing(got, "f .wh..wh..opq\nf y =y\n");
        free(got);
        free(buf.data);
        setup_done(&s);
}

/* One squash of the layers named, expected to fail with `want` and a message holding `text`. */
static void squash_fails(const Setup *s, const char *const *layers, size_t entries_max, int want,
                         const char *text)
{
        unsigned n = 0;
        while (layers[n])
                n++;
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(n, &q, &e));
        if (entries_max)
                snap_squash_set_entries_max(q, entries_max);
        changes(q, s);
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        assert_error(squash_into(q, s, layers, l, &e), want, &e, text);
        snap_layer_free(l);
        free(buf.data);
}

/* Names no layer may hold, the limit of the index, hard links that cannot be materialised, misuse. */
static void test_errors(void)
{
        static const struct {
                const char *name, *link;
        } bad[] = {
                {"/etc/passwd", NULL}, {"a/../../etc/passwd", NULL}, {"..", NULL},          {"x/.wh.", NULL},
                {"x/.wh...", NULL},    {"l", "../../etc/shadow"},    {"l2", "/etc/shadow"},
        };
        Setup s;
        setup(&s, "errors", "mkdir -p m && echo t2 > m/t && echo t > m/l", NULL, "/m/l");
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                TarEntry t[] = {{'d', "x/"}, {bad[i].link ? 'h' : 'f', bad[i].name, bad[i].link}, END};
                make_layer("bad.tar", "none", t);
                static const char *const layers[] = {"bad.tar", NULL};
                squash_fails(&s, layers, 0, -EINVAL, bad[i].link ? bad[i].link : bad[i].name);
        }

        /* the index's limit */
        static const TarEntry many[] = {{'d', "p/"}, {'f', "p/1"}, {'f', "p/2"}, {'f', "p/3"}, END};
        make_layer("many.tar", "gzip", many);
        static const char *const many_layers[] = {"many.tar", NULL};
        squash_fails(&s, many_layers, 3, -E2BIG, "more than 3 paths");

        /* a hard link whose target layer 1 replaced, its path excluded (a mount) in the container */
        static const TarEntry h0[] = {{'d', "m/"}, {'f', "m/t", "t"}, {'h', "m/l", "m/t"}, END};
        static const TarEntry h1[] = {{'f', "m/t", "t2"}, END};
        make_layer("h0.tar", "none", h0);
        make_layer("h1.tar", "none", h1);
        static const char *const h_layers[] = {"h0.tar", "h1.tar", NULL};
        squash_fails(&s, h_layers, 0, -ENOENT, "/m/l, a hard link in merged layer 0");
        setup_done(&s);
        /* ... absent from the container: named */
        setup(&s, "absent", "mkdir -p m && echo t2 > m/t", NULL, NULL);
        squash_fails(&s, h_layers, 0, -ENOENT, "cannot open /m/l");
        setup_done(&s);
        /* ... a symlink there now: not followed */
        setup(&s, "symlink", "mkdir -p m && echo t2 > m/t && ln -s t m/l", NULL, NULL);
        squash_fails(&s, h_layers, 0, -ELOOP, "/m/l");
        setup_done(&s);
        /* ... below a symlinked directory: not followed either */
        setup(&s, "symdir", "mkdir -p real && echo t > real/l && ln -s real m", NULL, NULL);
        squash_fails(&s, h_layers, 0, -ENOTDIR, "/m/l");

        /* a layer that is not a tar, and one that differs between the passes */
        sh("head -c 3000 /dev/urandom > %s/garbage.tar", scratch);
        static const char *const garbage[] = {"garbage.tar", NULL};
        squash_fails(&s, garbage, 0, -EBADMSG, "cannot read merged layer 0");
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(1, &q, &e));
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        int fd = open_layer("h0.tar");
        /* misuse: out of order, or before the changes */
        assert_error(snap_squash_index(q, 1, fd, &e), -EINVAL, &e, "out of order");
        assert_error(snap_squash_write(q, 0, fd, s.root, l, &e), -EINVAL, &e, "out of order");
        ASSERT_OK(snap_squash_index(q, 0, fd, &e));
        close(fd);
        fd = open_layer("h0.tar");
        assert_error(snap_squash_write(q, 0, fd, s.root, l, &e), -EINVAL, &e, "changes not recorded");
        close(fd);
        changes(q, &s);
        fd = open_layer("many.tar");
        assert_error(snap_squash_write(q, 0, fd, s.root, l, &e), -EBADMSG, &e,
                     "not the layer that was indexed");
        close(fd);
        snap_layer_free(l);
        free(buf.data);
        assert_error(snap_squash_new(0, &q, &e), -EINVAL, &e, "cannot squash 0 layers");
        setup_done(&s);
}

static int no_cut(void *userdata, NbError *e)
{
        return 0;
}

/* A layer with a size limit cannot take a squash yet. */
static void test_split_refused(void)
{
        static const TarEntry t[] = {{'f', "s", "s"}, END};
        make_layer("split.tar", "none", t);
        Setup s;
        setup(&s, "split", "true", NULL, NULL);
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(1, &q, &e));
        changes(q, &s);
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        ASSERT_OK(snap_layer_split(l, snap_layer_split_budget(SNAP_SPLIT_BLOB_MIN), NULL, no_cut, &e));
        static const char *const layers[] = {"split.tar", NULL};
        assert_error(squash_into(q, &s, layers, l, &e), -EFBIG, &e, "cannot be split yet");
        snap_layer_free(l);
        free(buf.data);
        setup_done(&s);
}

/* ---- random squashes ---------------------------------------------------------------------------------- */

typedef struct Rng {
        uint64_t s;
} Rng;

static unsigned rnd(Rng *r, unsigned n)
{
        r->s ^= r->s << 13;
        r->s ^= r->s >> 7;
        r->s ^= r->s << 17;
        return (unsigned)(r->s % n);
}

/* A path of the test's universe: 1 to 3 components, each a, b or c. */
static void rnd_path(Rng *r, char out[8])
{
        unsigned depth = 1 + rnd(r, 3);
        size_t n = 0;
        for (unsigned i = 0; i < depth; i++) {
                if (i)
                        out[n++] = '/';
                out[n++] = "abc"[rnd(r, 3)];
        }
        out[n] = '\0';
}

/* A layer being made: its entries, and per path what this layer says there (d(irectory), n(on-directory),
 * f(regular file: a hard link target), w(hiteout), o(paque directory without an entry)). */
typedef struct Gen {
        TarEntry e[96];
        char *owned[192];
        size_t n, n_owned;
        char paths[64][8];
        char kinds[64];
        size_t n_paths;
} Gen;

static char gen_kind(const Gen *g, const char *path)
{
        for (size_t i = 0; i < g->n_paths; i++)
                if (strcmp(g->paths[i], path) == 0)
                        return g->kinds[i];
        return 0;
}

static void gen_mark(Gen *g, const char *path, char kind)
{
        for (size_t i = 0; i < g->n_paths; i++)
                if (strcmp(g->paths[i], path) == 0) {
                        g->kinds[i] = kind;
                        return;
                }
        ASSERT_INT(g->n_paths, <, ELEMENTSOF(g->paths));
        snprintf(g->paths[g->n_paths], 8, "%s", path);
        g->kinds[g->n_paths++] = kind;
}

/* A non-directory or a whiteout at an ancestor of path. */
static bool gen_nondir_above(const Gen *g, const char *path)
{
        for (size_t i = 0; i < g->n_paths; i++)
                if (strchr("nfw", g->kinds[i]) && below(path, g->paths[i]))
                        return true;
        return false;
}

static bool gen_any_below(const Gen *g, const char *path)
{
        for (size_t i = 0; i < g->n_paths; i++)
                if (below(g->paths[i], path))
                        return true;
        return false;
}

static char *gen_str(Gen *g, const char *fmt, ...) _printf_(2, 3);
static char *gen_str(Gen *g, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        char *p = NULL;
        ASSERT_TRUE(vasprintf(&p, fmt, ap) > 0);
        va_end(ap);
        ASSERT_INT(g->n_owned, <, ELEMENTSOF(g->owned));
        return g->owned[g->n_owned++] = p;
}

static void gen_add(Gen *g, Rng *r, char type, const char *path, const char *arg)
{
        ASSERT_INT(g->n, <, ELEMENTSOF(g->e) - 1);
        const char *prefix = rnd(r, 3) == 0 ? "./" : "";
        unsigned mode = type == 'd'   ? (rnd(r, 2) ? 0755 : 0700)
                        : type == 'f' ? (rnd(r, 2) ? 0644 : 0600)
                                      : 0;
        g->e[g->n++] =
                (TarEntry){type, gen_str(g, "%s%s", prefix, path), arg, mode, rnd(r, 3) == 0 ? 1000 : 0};
}

/* Directory entries for the ancestors of path this layer says nothing about, sometimes (layers in the wild
 * leave them out). */
static void gen_parents(Gen *g, Rng *r, const char *path)
{
        char p[8];
        snprintf(p, sizeof(p), "%s", path);
        for (char *slash = strchr(p, '/'); slash; slash = strchr(slash + 1, '/')) {
                *slash = '\0';
                if (!gen_kind(g, p) && rnd(r, 2)) {
                        gen_add(g, r, 'd', p, NULL);
                        gen_mark(g, p, 'd');
                }
                *slash = '/';
        }
}

/* One random entry (or none, when the one drawn would make the layer invalid). */
static void gen_entry(Gen *g, Rng *r, bool kept)
{
        char p[8];
        rnd_path(r, p);
        if (gen_kind(g, p) || gen_nondir_above(g, p))
                return;
        unsigned op = rnd(r, kept ? 2 : 7);
        /* a whiteout or an opaque marker after entries below it in one layer: runtimes disagree (docker
         * deletes them, overlay appliers keep them), and tools never write that */
        if (op >= 1 && gen_any_below(g, p))
                return;
        if (op == 4) {
                const char *target = NULL;
                for (size_t i = 0; i < g->n_paths && !target; i++)
                        if (g->kinds[i] == 'f' && rnd(r, 2))
                                target = g->paths[i];
                if (!target)
                        return;
                gen_parents(g, r, p);
                gen_add(g, r, 'h', p, gen_str(g, "%s%s", rnd(r, 2) ? "./" : "", target));
                gen_mark(g, p, 'n');
                return;
        }
        gen_parents(g, r, p);
        if (op == 0) {
                gen_add(g, r, 'd', p, NULL);
                gen_mark(g, p, 'd');
        } else if (op == 1) {
                gen_add(g, r, 'f', p, gen_str(g, "c%u", rnd(r, 1000)));
                gen_mark(g, p, 'f');
        } else if (op == 2) {
                char *slash = strrchr(p, '/');
                gen_add(g, r, 'f',
                        slash ? gen_str(g, "%.*s/.wh.%s", (int)(slash - p), p, slash + 1)
                              : gen_str(g, ".wh.%s", p),
                        NULL);
                gen_mark(g, p, 'w');
        } else if (op == 3) {
                gen_add(g, r, 'l', p, "nowhere");
                gen_mark(g, p, 'n');
        } else {
                if (rnd(r, 2)) {
                        gen_add(g, r, 'd', p, NULL);
                        gen_mark(g, p, 'd');
                } else
                        gen_mark(g, p, 'o');
                gen_add(g, r, 'f', gen_str(g, "%s/.wh..wh..opq", p), NULL);
        }
}

static void gen_done(Gen *g)
{
        for (size_t i = 0; i < g->n_owned; i++)
                free(g->owned[i]);
        *g = (Gen){0};
}

/* The image's tree (tree_listing() lines "path: desc") made real in root. */
static void materialise_tree(const char *root, const char *tree)
{
        if (getenv("NBSNAP_SQUASH_DEBUG"))
                fprintf(stderr, "%simage:\n%s", failure_context, tree);
        for (const char *line = tree; *line;) {
                const char *end = strchr(line, '\n');
                char l[512], path[600], rest[256] = "", type;
                unsigned perm;
                long long uid;
                snprintf(l, sizeof(l), "%.*s", (int)(end - line), line);
                line = end + 1;
                char *colon = strstr(l, ": ");
                ASSERT_TRUE(colon);
                snprintf(path, sizeof(path), "%s/%.*s", root, (int)(colon - l), l);
                ASSERT_TRUE(sscanf(colon + 2, "%c %o %lld %255s", &type, &perm, &uid, rest) >= 3);
                if (type == 'd')
                        ASSERT_EQ(mkdir(path, perm), 0);
                else if (type == 'l')
                        ASSERT_EQ(symlink(rest, path), 0);
                else {
                        FILE *f = fopen(path, "we");
                        ASSERT_TRUE(f);
                        fputs(rest, f);
                        ASSERT_EQ(fclose(f), 0);
                }
                ASSERT_EQ(lchown(path, (uid_t)uid, (gid_t)uid), 0);
                if (type != 'l')
                        ASSERT_EQ(chmod(path, perm), 0);
        }
}

/* A random change of the live tree at a random path, never at, above or below the excluded one. */
static void random_change(Rng *r, const char *root, const char *excluded, FILE *log)
{
        char p[8], full[600], parent[600];
        rnd_path(r, p);
        if (excluded && (below(excluded, p) || strcmp(excluded, p) == 0 || below(p, excluded)))
                return;
        snprintf(full, sizeof(full), "%s/%s", root, p);
        snprintf(parent, sizeof(parent), "%s", full);
        *strrchr(parent, '/') = '\0';
        struct stat st, pst;
        if (lstat(parent, &pst) < 0 || !S_ISDIR(pst.st_mode))
                return;
        unsigned op = rnd(r, 5);
        const char *cmd;
        if (lstat(full, &st) < 0)
                cmd = op < 3 ? "echo new > $P" : "mkdir $P";
        else if (S_ISDIR(st.st_mode))
                cmd = op == 0   ? "chmod 711 $P"
                      : op == 1 ? "rm -rf $P"
                      : op == 2 ? "mv $P $P.old && mkdir $P && echo r > $P/b && rm -rf $P.old"
                      : op == 3 ? "rm -rf $P && echo f > $P"
                                : "echo n >> $P/new";
        else
                cmd = op == 0 && S_ISREG(st.st_mode) ? "echo z >> $P"
                      : op <= 2                      ? "rm $P"
                                                     : "rm $P && mkdir $P && echo n > $P/a";
        fprintf(log, "  change: %s: %s\n", p, cmd);
        sh("P=%s; %s", full, cmd);
}

/* One random case: a kept layer, 1 to 3 merged layers, the image made real as the live root, changes,
 * maybe a mount; the squashed image must be the tree the layers give. Returns false when the squash refused
 * (a hard link to materialise from a mounted path). */
static bool random_case(uint64_t seed)
{
        Rng r = {seed * 2654435761u + 88172645463325252ull};
        char *ctx = NULL;
        size_t ctx_len = 0;
        FILE *log = open_memstream(&ctx, &ctx_len);
        fprintf(log, "seed %" PRIu64 ":\n", seed);
        unsigned n_layers = 1 + rnd(&r, 3);
        static const char *const names[] = {"rk.tar", "r0.tar", "r1.tar.gz", "r2.tar.zst", NULL};
        static const char *const filters[] = {"none", "none", "gzip", "zstd"};
        for (unsigned i = 0; i <= n_layers; i++) {
                Gen g = {0};
                unsigned entries = 1 + rnd(&r, i == 0 ? 24 : 8);
                for (unsigned k = 0; k < entries; k++)
                        gen_entry(&g, &r, i == 0);
                g.e[g.n] = (TarEntry)END;
                make_layer(names[i], filters[i], g.e);
                fprintf(log, " %s:\n", names[i]);
                for (size_t k = 0; k < g.n; k++)
                        fprintf(log, "  %c %s%s%s\n", g.e[k].type, g.e[k].path, g.e[k].arg ? " " : "",
                                g.e[k].arg ? g.e[k].arg : "");
                gen_done(&g);
        }
        /* the image, as the container starts with it */
        Tree *t = calloc(1, sizeof(Tree));
        ASSERT_TRUE(t);
        for (unsigned i = 0; i <= n_layers; i++) {
                TestBuf b = {0};
                read_tar(names[i], &b);
                tree_apply(t, b.data, b.size, (int)i);
                free(b.data);
        }
        char *image = tree_listing(t);
        free(t);
        Setup s = {0};
        snprintf(s.root, sizeof(s.root), "%s/random-root", scratch);
        snprintf(s.baseline, sizeof(s.baseline), "%s/random-baseline", scratch);
        sh("rm -rf %s && mkdir %s", s.root, s.root);
        fflush(log);
        failure_context = ctx;
        materialise_tree(s.root, image);
        NbError e = {0};
        ASSERT_OK(snap_excludes_new(&s.ex, &e));
        char excluded[8] = "";
        if (rnd(&r, 3) == 0) {
                char p[8], full[600], mount[16];
                struct stat st;
                rnd_path(&r, p);
                snprintf(full, sizeof(full), "%s/%s", s.root, p);
                if (lstat(full, &st) == 0) {
                        snprintf(excluded, sizeof(excluded), "%s", p);
                        snprintf(mount, sizeof(mount), "/%s", p);
                        ASSERT_OK(snap_excludes_add(s.ex, mount, &e));
                        fprintf(log, "  excluded: %s\n", mount);
                }
        }
        ASSERT_OK(snap_baseline_write(s.root, s.ex, s.baseline, NULL, &e));
        unsigned n_changes = rnd(&r, 5);
        for (unsigned i = 0; i < n_changes; i++)
                random_change(&r, s.root, excluded[0] ? excluded : NULL, log);
        fclose(log);
        failure_context = ctx;

        _cleanup_snap_squash_ SnapSquash *q = NULL;
        ASSERT_OK(snap_squash_new(n_layers, &q, &e));
        changes(q, &s);
        TestBuf buf = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        const char *layers[4] = {0};
        for (unsigned i = 0; i < n_layers; i++)
                layers[i] = names[i + 1];
        int rc = squash_into(q, &s, layers, l, &e);
        bool refused = rc == -ENOENT && strstr(e.msg, "hidden by a mount");
        if (rc < 0 && !refused) {
                fprintf(stderr, "%ssquash: %s\n", ctx, e.msg);
                abort();
        }
        if (!refused) {
                ASSERT_OK(snap_layer_finish(l, &e));
                size_t squash_bytes = buf.size - 1024; /* without its end blocks */
                buf.size = squash_bytes;
                diff_into(&s, &buf);
                TestBuf only_diff = {.data = buf.data + squash_bytes, .size = buf.size - squash_bytes};
                assert_same_tree(names[0], layers, &only_diff, &buf);
        }
        snap_layer_free(l);
        free(buf.data);
        free(image);
        setup_done(&s);
        failure_context = NULL;
        free(ctx);
        return !refused;
}

/* Random layers and changes against the runtime's view. NBSNAP_SQUASH_CASES=N runs N cases (200). */
static void test_random(void)
{
        const char *env = getenv("NBSNAP_SQUASH_CASES");
        unsigned long cases = env ? strtoul(env, NULL, 10) : 200;
        unsigned long done = 0;
        for (uint64_t seed = 1; seed <= cases; seed++)
                done += random_case(seed);
        ASSERT_INT(done, >, cases / 2);
}

int main(void)
{
        if (getuid() != 0) {
                fprintf(stderr, "needs root (chown of layer entries)\n");
                return TEST_SKIP;
        }
        ASSERT_TRUE(mkdtemp(scratch));
        test_merge();
        test_ancestors();
        test_root_opaque();
        test_implied();
        test_errors();
        test_split_refused();
        test_random();
        sh("rm -rf %s", scratch);
        printf("test-squash: all passed\n");
        return 0;
}
