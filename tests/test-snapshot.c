/* Unit tests of the snapshot library on plain directories: tree order, baseline round trip and corruption,
 * the diff's decisions, and the layer bytes read back with libarchive. (The overlayfs + registry + skopeo +
 * umoci round trip is tests/integration/save-roundtrip.sh.) */
#include <stdarg.h>
#include <inttypes.h>
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "snapshot/baseline.h"
#include "snapshot/entry.h"
#include "snapshot/excludes.h"
#include "snapshot/layer.h"
#include "snapshot/snapshot.h"
#include "snapshot/walk.h"
#include "tests.h"

static char scratch[] = "/tmp/test-snapshot.XXXXXX";

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

static void test_order(void)
{
        /* depth-first with sorted siblings: a parent's subtree before a sibling extending its name */
        const char *sorted[] = {"a", "a/b", "a/b/c", "a/x", "a b", "a-b", "a.b", "ab", "b"};
        for (size_t i = 0; i + 1 < ELEMENTSOF(sorted); i++)
                ASSERT_INT(snap_path_cmp(sorted[i], strlen(sorted[i]), sorted[i + 1], strlen(sorted[i + 1])),
                           <, 0);
        ASSERT_EQ(snap_path_cmp("a/b", 3, "a/b", 3), 0);
        ASSERT_TRUE(snap_path_within("a/b/c", 5, "a/b", 3));
        ASSERT_TRUE(snap_path_within("a/b", 3, "a/b", 3));
        ASSERT_TRUE(!snap_path_within("a/bc", 4, "a/b", 3));
}

/* The walk yields tree order, and the baseline reads back exactly what was walked. */
static void test_walk_and_baseline(const char *root, const char *state)
{
        char path[4096];
        snprintf(path, sizeof(path), "%s/baseline", state);
        NbError e = {0};
        SnapBaselineStats st;
        ASSERT_OK(snap_baseline_write(root, NULL, path, &st, &e));
        ASSERT_INT(st.entries, >, 10);

        SnapBaseline *b = NULL;
        SnapWalk *w = NULL;
        ASSERT_OK(snap_baseline_open(path, &b, &e));
        ASSERT_OK(snap_walk_new(root, NULL, &w, &e));
        const SnapEntry *be, *we;
        char prev[4096] = "";
        uint64_t n = 0;
        for (;;) {
                int rb = snap_baseline_next(b, &be, &e), rw = snap_walk_next(w, &we, &e);
                ASSERT_EQ(rb, rw);
                if (rb == 0)
                        break;
                ASSERT_STREQ(be->path, we->path);
                ASSERT_TRUE(!snap_entry_changed(be, we));
                if (n++ > 0)
                        ASSERT_INT(snap_path_cmp(prev, strlen(prev), we->path, we->path_len), <, 0);
                snprintf(prev, sizeof(prev), "%s", we->path);
        }
        ASSERT_EQ(n, st.entries);
        snap_walk_free(w);
        snap_baseline_free(b);
}

static void test_baseline_corrupt(const char *state)
{
        char path[4096], bad[4096];
        snprintf(path, sizeof(path), "%s/baseline", state);
        snprintf(bad, sizeof(bad), "%s/bad", state);
        NbError e = {0};
        SnapBaseline *b = NULL;
        /* one flipped byte in the middle */
        sh("cp %s %s && printf 'Z' | dd of=%s bs=1 seek=40 conv=notrunc status=none", path, bad, bad);
        ASSERT_EQ(snap_baseline_open(bad, &b, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "corrupt") != NULL);
        /* truncated */
        sh("head -c 100 %s > %s", path, bad);
        ASSERT_EQ(snap_baseline_open(bad, &b, &e), -EBADMSG);
        /* missing: says what to run */
        ASSERT_EQ(snap_baseline_open("/nonexistent/baseline", &b, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "nbsnap baseline") != NULL);
}

/* Diffs root against the baseline in state and returns the layer as "kind path [-> link]" lines. */
static char *diff_listing(const char *root, const char *state, const SnapExcludes *ex,
                          SnapDiffStats *ret_stats)
{
        char path[4096];
        snprintf(path, sizeof(path), "%s/baseline", state);
        NbError e = {0};
        SnapBaseline *b = NULL;
        SnapWalk *w = NULL;
        SnapLayer *l = NULL;
        TestBuf buf = {0};
        ASSERT_OK(snap_baseline_open(path, &b, &e));
        ASSERT_OK(snap_walk_new(root, ex, &w, &e));
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        int r = snap_diff_layer(b, w, ex, l, NULL, NULL, ret_stats, &e);
        if (r < 0)
                fprintf(stderr, "diff: %s\n", e.msg);
        ASSERT_OK(r);
        ASSERT_OK(snap_layer_finish(l, &e));
        snap_layer_free(l);
        snap_walk_free(w);
        snap_baseline_free(b);
        /* no padding after the end-of-archive blocks */
        ASSERT_EQ(buf.size % 512, 0);
        ASSERT_INT(buf.size, >=, 1024);

        struct archive *a = archive_read_new();
        archive_read_support_format_tar(a);
        ASSERT_EQ(archive_read_open_memory(a, buf.data, buf.size), ARCHIVE_OK);
        char *out = NULL;
        size_t outlen = 0;
        FILE *f = open_memstream(&out, &outlen);
        struct archive_entry *ae;
        while (archive_read_next_header(a, &ae) == ARCHIVE_OK) {
                const char *hl = archive_entry_hardlink(ae), *sl = archive_entry_symlink(ae);
                char xattrs[256] = "";
                if (archive_entry_xattr_reset(ae) > 0) {
                        const char *name;
                        const void *v;
                        size_t vs;
                        while (archive_entry_xattr_next(ae, &name, &v, &vs) == ARCHIVE_OK)
                                snprintf(xattrs + strlen(xattrs), sizeof(xattrs) - strlen(xattrs),
                                         " %s=%.*s", name, (int)vs, (const char *)v);
                }
                fprintf(f, "%s%s%s%s%s\n", archive_entry_pathname(ae), hl ? " => " : "", hl ? hl : "",
                        sl ? " -> " : "", sl ? sl : "");
                if (xattrs[0])
                        fprintf(f, "  xattrs:%s\n", xattrs);
                ASSERT_TRUE(archive_entry_mtime_nsec(ae) == 0);
                ASSERT_TRUE(!archive_entry_atime_is_set(ae) && !archive_entry_ctime_is_set(ae));
                ASSERT_TRUE(!archive_entry_uname(ae) || !archive_entry_uname(ae)[0]);
                ASSERT_EQ(archive_entry_sparse_count(ae), 0);
        }
        fclose(f);
        archive_read_free(a);
        free(buf.data);
        return out;
}

static bool has_line(const char *listing, const char *line)
{
        size_t n = strlen(line);
        for (const char *p = listing; (p = strstr(p, line)); p++)
                if ((p == listing || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
                        return true;
        return false;
}

#define ASSERT_LISTED(listing, line)                                                                        \
        do {                                                                                                \
                if (!has_line(listing, line)) {                                                             \
                        fprintf(stderr, "%s:%d: '%s' not in layer:\n%s", __FILE__, __LINE__, line,          \
                                listing);                                                                   \
                        abort();                                                                            \
                }                                                                                           \
        } while (0)
#define ASSERT_NOT_LISTED(listing, line)                                                                    \
        do {                                                                                                \
                if (has_line(listing, line)) {                                                              \
                        fprintf(stderr, "%s:%d: '%s' must not be in layer:\n%s", __FILE__, __LINE__, line,  \
                                listing);                                                                   \
                        abort();                                                                            \
                }                                                                                           \
        } while (0)

static void test_diff(const char *root, const char *state)
{
        SnapDiffStats st;
        /* nothing changed: an empty layer */
        char *l0 = diff_listing(root, state, NULL, &st);
        ASSERT_STREQ(l0, "");
        ASSERT_EQ(st.added + st.modified + st.deleted + st.recreated, 0);
        free(l0);

        sleep(1); /* whole-second mtimes must differ from the baseline's for touch to be seen reliably */
        sh("cd %s && echo new > added && echo changed >> etc/conf && chmod 600 etc/mode && touch -d @1000 "
           "etc/touched"
           " && rm -rf deldir && rm etc/delfile && mv redir redir.old && mkdir redir && rm -rf redir.old && "
           "echo n > redir/n"
           " && rm file2dir && mkdir file2dir && echo c > file2dir/c && rm -rf dir2file && echo f > dir2file"
           " && ln base/orig base/newlink && ln -sfn elsewhere link && setfattr -n user.k -v v1 xattr"
           " && mkdir -p excluded/sub && echo x > excluded/sub/x && echo s > .wh-not-a-whiteout"
           " && mkfifo fifo && mknod chr c 1 3 && rmdir gone-but-excluded",
           root);
        NbError e = {0};
        SnapExcludes *ex = NULL;
        ASSERT_OK(snap_excludes_new(&ex, &e));
        ASSERT_OK(snap_excludes_add(ex, "/excluded", &e));
        ASSERT_OK(snap_excludes_add(ex, "/gone-but-excluded", &e));
        char *l = diff_listing(root, state, ex, &st);
        ASSERT_LISTED(l, "added");
        ASSERT_LISTED(l, "etc/conf");
        ASSERT_LISTED(l, "etc/mode");
        ASSERT_LISTED(l, "etc/touched");
        ASSERT_NOT_LISTED(l, "etc/same");
        /* top-most whiteout only */
        ASSERT_LISTED(l, ".wh.deldir");
        ASSERT_NOT_LISTED(l, "deldir/.wh.sub");
        ASSERT_NOT_LISTED(l, "deldir/sub/.wh.f");
        ASSERT_LISTED(l, "etc/.wh.delfile");
        /* recreated directory (a new inode; created before the old one is gone so the number cannot be
         * reused): opaque, new content, no whiteouts for the old. With a reused inode number it is taken as
         * modified and its old children get whiteouts one by one: the same tree after extraction. */
        ASSERT_LISTED(l, "redir/");
        ASSERT_LISTED(l, "redir/.wh..wh..opq");
        ASSERT_LISTED(l, "redir/n");
        ASSERT_NOT_LISTED(l, "redir/.wh.old");
        /* type changes replace, no whiteouts below an old directory */
        ASSERT_LISTED(l, "file2dir/");
        ASSERT_LISTED(l, "file2dir/c");
        ASSERT_LISTED(l, "dir2file");
        ASSERT_NOT_LISTED(l, "dir2file/.wh.inner");
        /* a new link to a base file: both names, the second a hard link */
        ASSERT_LISTED(l, "base/newlink"); /* first in tree order: carries the data */
        ASSERT_LISTED(l, "base/orig => base/newlink");
        ASSERT_LISTED(l, "link -> elsewhere");
        ASSERT_LISTED(l, "  xattrs: user.k=v1");
        ASSERT_LISTED(l, "fifo");
        ASSERT_LISTED(l, "chr");
        ASSERT_LISTED(l, ".wh-not-a-whiteout");
        /* excluded: not saved, and an excluded path that vanished is not whited out */
        ASSERT_NOT_LISTED(l, "excluded/");
        ASSERT_NOT_LISTED(l, "excluded/sub/x");
        ASSERT_NOT_LISTED(l, ".wh.gone-but-excluded");
        ASSERT_EQ(st.deleted, 2);
        ASSERT_EQ(st.recreated, 1);
        free(l);

        /* determinism: the same tree gives the same bytes (compared through the listing and the sizes) */
        char *l2 = diff_listing(root, state, ex, NULL);
        char *l3 = diff_listing(root, state, ex, NULL);
        ASSERT_STREQ(l2, l3);
        free(l2);
        free(l3);

        /* a user file named .wh.* fails the save with a clear message */
        sh("cd %s && echo evil > .wh.evil", root);
        char path[4096];
        snprintf(path, sizeof(path), "%s/baseline", state);
        SnapBaseline *b = NULL;
        SnapWalk *w = NULL;
        SnapLayer *ly = NULL;
        TestBuf buf = {0};
        ASSERT_OK(snap_baseline_open(path, &b, &e));
        ASSERT_OK(snap_walk_new(root, ex, &w, &e));
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &ly, &e));
        ASSERT_EQ(snap_diff_layer(b, w, ex, ly, NULL, NULL, NULL, &e), -EINVAL);
        ASSERT_TRUE(strstr(e.msg, ".wh.evil") && strstr(e.msg, "deletion marker"));
        snap_layer_free(ly);
        snap_walk_free(w);
        snap_baseline_free(b);
        free(buf.data);
        sh("rm %s/.wh.evil", root);
        snap_excludes_free(ex);
}

static void test_excludes_mountinfo(const char *state)
{
        char mi[4096];
        snprintf(mi, sizeof(mi), "%s/mountinfo", state);
        FILE *f = fopen(mi, "we");
        ASSERT_TRUE(f);
        fputs("22 1 0:21 / / rw - overlay overlay rw\n"
              "23 22 0:22 / /r rw - overlay overlay rw\n"
              "24 23 8:1 /vol /r/home/ma-user/work rw - ext4 /dev/sda1 rw\n"
              "25 23 8:1 /hosts /r/etc/hosts rw - ext4 /dev/sda1 rw\n"
              "26 23 0:5 / /r/dev/shm rw - tmpfs tmpfs rw\n"
              "27 23 0:5 / /r/with\\040space rw - tmpfs tmpfs rw\n"
              "28 1 0:5 / /rother rw - tmpfs tmpfs rw\n",
              f);
        fclose(f);
        NbError e = {0};
        SnapExcludes *x = NULL;
        ASSERT_OK(snap_excludes_new(&x, &e));
        ASSERT_EQ(snap_excludes_add_mounts(x, "/r", mi, &e), 4);
        ASSERT_TRUE(snap_excludes_match(x, "home/ma-user/work"));
        ASSERT_TRUE(snap_excludes_match(x, "etc/hosts"));
        ASSERT_TRUE(snap_excludes_match(x, "dev/shm"));
        ASSERT_TRUE(snap_excludes_match(x, "with space"));
        ASSERT_TRUE(!snap_excludes_match(x, "rother"));
        ASSERT_TRUE(snap_excludes_covers(x, "home/ma-user/work/a/b", 21));
        ASSERT_TRUE(!snap_excludes_covers(x, "home/ma-user/workx", 18));
        ASSERT_EQ(snap_excludes_add(x, "relative", &e), -EINVAL);
        ASSERT_EQ(snap_excludes_add(x, "/a/../b", &e), -EINVAL);
        ASSERT_EQ(snap_excludes_add(x, "/", &e), -EINVAL);
        ASSERT_OK(snap_excludes_add(x, "//home/ma-user/.cache/pip/", &e));
        ASSERT_TRUE(snap_excludes_match(x, "home/ma-user/.cache/pip"));
        snap_excludes_free(x);
}

/* The counting pass of root against the baseline (or record) at base_path. */
static SnapPlan *plan_against(const char *root, const char *base_path)
{
        NbError e = {0};
        _cleanup_snap_baseline_ SnapBaseline *b = NULL;
        _cleanup_snap_walk_ SnapWalk *w = NULL;
        SnapPlan *plan = NULL;
        ASSERT_OK(snap_baseline_open(base_path, &b, &e));
        ASSERT_OK(snap_walk_new(root, NULL, &w, &e));
        ASSERT_OK(snap_diff_plan(b, w, NULL, &plan, &e));
        return plan;
}

/* A root made by `before`, its baseline, then `change` run in it a second later: the counting pass of what
 * changed. root and state are filled with the paths used (scratch/NAME-root, scratch/NAME-state). */
static SnapPlan *plan_change(const char *name, const char *before, const char *change, char root[512],
                             char state[512])
{
        char path[600];
        snprintf(root, 512, "%s/%s-root", scratch, name);
        snprintf(state, 512, "%s/%s-state", scratch, name);
        sh("mkdir -p %s %s && cd %s && %s", root, state, root, before);
        snprintf(path, sizeof(path), "%s/baseline", state);
        NbError e = {0};
        SnapBaselineStats bst;
        ASSERT_OK(snap_baseline_write(root, NULL, path, &bst, &e));
        sleep(1);
        sh("cd %s && %s", root, change);
        return plan_against(root, path);
}

/* A diff pass against base_path that writes the layer to memory (dropped) and the record of the save to
 * rec_path. */
static void record_pass(const char *root, const char *base_path, const char *rec_path)
{
        NbError e = {0};
        _cleanup_snap_baseline_ SnapBaseline *b = NULL;
        _cleanup_snap_walk_ SnapWalk *w = NULL;
        _cleanup_snap_layer_ SnapLayer *l = NULL;
        _cleanup_snap_baseline_writer_ SnapBaselineWriter *rec = NULL;
        TestBuf buf = {0};
        ASSERT_OK(snap_baseline_open(base_path, &b, &e));
        ASSERT_OK(snap_walk_new(root, NULL, &w, &e));
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &buf, &l, &e));
        ASSERT_OK(snap_baseline_writer_new(rec_path, &rec, &e));
        ASSERT_OK(snap_diff_layer_part(b, w, NULL, l, SNAP_DIFF_ALL, rec, NULL, NULL, NULL, &e));
        ASSERT_OK(snap_baseline_writer_commit(rec, NULL, &e));
        ASSERT_OK(snap_layer_finish(l, &e));
        free(buf.data);
}

/* The flags and ctime the record holds for path; false when it holds no such entry. */
static bool record_get(const char *rec_path, const char *path, uint32_t *flags, int64_t *ctime_sec)
{
        NbError e = {0};
        _cleanup_snap_baseline_ SnapBaseline *b = NULL;
        const SnapEntry *en;
        ASSERT_OK(snap_baseline_open(rec_path, &b, &e));
        int r;
        while ((r = snap_baseline_next(b, &en, &e)) > 0)
                if (strcmp(en->path, path) == 0) {
                        *flags = en->flags, *ctime_sec = en->ctime_sec;
                        return true;
                }
        ASSERT_OK(r);
        return false;
}

/* The record of a save (snapshot.h): every live entry, the packed ones marked and, when changed within a
 * second of the record, made to come back; the next diff against it finds only what changed since; the
 * counting pass sums the bytes of marked files that the changes delete or replace (dead_bytes). */
static void test_record(void)
{
        char root[600], state[600], base[700], rec1[700], rec2[700];
        snprintf(root, sizeof(root), "%s/rec-root", scratch);
        snprintf(state, sizeof(state), "%s/rec-state", scratch);
        snprintf(base, sizeof(base), "%s/baseline", state);
        snprintf(rec1, sizeof(rec1), "%s/rec1", state);
        snprintf(rec2, sizeof(rec2), "%s/rec2", state);
        sh("mkdir -p %s %s && cd %s && mkdir -p d && head -c 100 /dev/zero > a && head -c 200 /dev/zero > "
           "d/b",
           root, state, root);
        NbError e = {0};
        ASSERT_OK(snap_baseline_write(root, NULL, base, NULL, &e));
        sleep(1);
        sh("cd %s && head -c 300 /dev/zero > n && echo more >> a", root);
        record_pass(root, base, rec1);

        uint32_t flags;
        int64_t ctime_sec;
        ASSERT_TRUE(record_get(rec1, "a", &flags, &ctime_sec));
        ASSERT_EQ(flags, SNAP_ENTRY_SAVED);
        ASSERT_EQ(ctime_sec, 0); /* changed just now: racy, read again next time */
        ASSERT_TRUE(record_get(rec1, "n", &flags, &ctime_sec));
        ASSERT_EQ(flags, SNAP_ENTRY_SAVED);
        ASSERT_TRUE(record_get(rec1, "d/b", &flags, &ctime_sec));
        ASSERT_EQ(flags, 0u); /* unchanged: as the baseline had it */
        ASSERT_INT(ctime_sec, >, 0);

        /* the racy entries come back, and replacing them leaves their bytes dead */
        _cleanup_snap_plan_ SnapPlan *p1 = plan_against(root, rec1);
        ASSERT_EQ(snap_plan_stats(p1)->entries, 2u);
        ASSERT_EQ(snap_plan_stats(p1)->dead_bytes, 405u);

        sleep(1);
        record_pass(root, rec1, rec2);
        ASSERT_TRUE(record_get(rec2, "n", &flags, &ctime_sec));
        ASSERT_EQ(flags, SNAP_ENTRY_SAVED);
        ASSERT_INT(ctime_sec, >, 0); /* not racy any more: kept as it is */
        _cleanup_snap_plan_ SnapPlan *p2 = plan_against(root, rec2);
        ASSERT_EQ(snap_plan_stats(p2)->entries, 0u);
        ASSERT_EQ(snap_plan_stats(p2)->deleted, 0u);

        /* deleting a saved file and a tree of base files: only the saved bytes are dead */
        sh("cd %s && rm n && rm -r d && head -c 50 /dev/zero > z", root);
        _cleanup_snap_plan_ SnapPlan *p3 = plan_against(root, rec2);
        ASSERT_EQ(snap_plan_stats(p3)->deleted, 2u);
        ASSERT_EQ(snap_plan_stats(p3)->dead_bytes, 300u);
        ASSERT_EQ(snap_plan_stats(p3)->bytes, 50u);

        /* a record of the same tree without the marks (the container-start baseline) counts nothing dead */
        _cleanup_snap_plan_ SnapPlan *p4 = plan_against(root, base);
        ASSERT_EQ(snap_plan_stats(p4)->dead_bytes, 0u);
}

/* A hard-linked file the chain packed, deleted with all its names: its bytes are dead once, not per name. */
static void test_record_links(void)
{
        char root[600], state[600], base[700], rec1[700], rec2[700];
        snprintf(root, sizeof(root), "%s/recl-root", scratch);
        snprintf(state, sizeof(state), "%s/recl-state", scratch);
        snprintf(base, sizeof(base), "%s/baseline", state);
        snprintf(rec1, sizeof(rec1), "%s/rec1", state);
        snprintf(rec2, sizeof(rec2), "%s/rec2", state);
        sh("mkdir -p %s %s", root, state);
        NbError e = {0};
        ASSERT_OK(snap_baseline_write(root, NULL, base, NULL, &e));
        /* the container-start baseline is written as version 1 (no flags): an older agent reads it */
        _cleanup_fclose_ FILE *f = fopen(base, "r");
        ASSERT_TRUE(f);
        char header[9];
        ASSERT_EQ(fread(header, 1, sizeof(header), f), sizeof(header));
        ASSERT_EQ(header[8], 1);
        sleep(1);
        sh("cd %s && head -c 1000 /dev/zero > h && ln h h2", root);
        record_pass(root, base, rec1);
        sleep(1);
        record_pass(root, rec1, rec2); /* not racy any more */
        sh("cd %s && rm h h2", root);
        _cleanup_snap_plan_ SnapPlan *p = plan_against(root, rec2);
        ASSERT_EQ(snap_plan_stats(p)->deleted, 2u);
        ASSERT_EQ(snap_plan_stats(p)->dead_bytes, 1000u);
}

/* The counting pass: bytes of what changed (a hard-linked inode once), the largest file, and each file's
 * bytes gathered in one directory at most SNAP_PLAN_DIR_DEPTH levels down, even when the walk leaves a
 * directory and comes back to it (a/0, then a/b/..., then a/z). */
static void test_plan(void)
{
        char root[512], state[512];
        SnapPlan *plan = plan_change("plan", "mkdir -p a p && echo gone > a/gone",
                                     "mkdir -p a/b/c/d && head -c 5000 /dev/zero > a/b/c/d/big && head -c "
                                     "1000 /dev/zero > a/b/c/x && "
                                     "head -c 100 /dev/zero > a/0 && head -c 50 /dev/zero > a/z && head -c "
                                     "700 /dev/zero > top && "
                                     "head -c 2000 /dev/zero > p/l1 && ln p/l1 p/l2 && rm a/gone",
                                     root, state);
        const SnapPlanStats *st = snap_plan_stats(plan);
        ASSERT_EQ(st->bytes, 5000 + 1000 + 100 + 50 + 700 + 2000);
        ASSERT_EQ(st->files, 6);
        ASSERT_EQ(st->deleted, 1);
        ASSERT_STREQ(st->largest, "a/b/c/d/big");
        ASSERT_EQ(st->largest_size, 5000);
        ASSERT_EQ(st->n_top, 4);
        static const struct {
                const char *path;
                uint64_t bytes;
        } want[] = {{"a/b/c", 6000}, {"p", 2000}, {"", 700}, {"a", 150}};
        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                ASSERT_STREQ(st->top[i].path, want[i].path);
                ASSERT_EQ(st->top[i].bytes, want[i].bytes);
        }
        snap_plan_free(plan);
}

/* The preview (nbsnap diff): each change with its kind, in tree order, and the plan's numbers beside them.
 */
static int preview_line(void *userdata, const SnapChange *c, NbError *e)
{
        (void)e;
        char line[600];
        snprintf(line, sizeof(line), "%c %s %s %" PRIu64 "\n", "ACD"[c->kind], c -> path,
                 S_ISDIR(c->mode)   ? "dir"
                 : S_ISREG(c->mode) ? "file"
                                    : "other",
                 c->size);
        return test_buf_write(userdata, line, strlen(line));
}

static int preview_stop(void *userdata, const SnapChange *c, NbError *e)
{
        (void)userdata, (void)c;
        return nb_error_set(e, -EINTR, "stopped by the callback");
}

static void test_preview(void)
{
        char root[512], state[512], base_path[600];
        /* redo is recreated with a new inode (the new one exists before the old one goes) */
        SnapPlan *plan =
                plan_change("preview",
                            "mkdir -p keep gone/sub redo && echo k > keep/k && echo g > gone/sub/g && "
                            "echo r > redo/old && echo t > t2d",
                            "echo new > keep/n && ln keep/n keep/n2 && chmod 600 keep/k && rm -r gone "
                            "&& mkdir redo.new && echo x > redo.new/new && rm -r redo && "
                            "mv redo.new redo && rm t2d && mkdir t2d",
                            root, state);
        snap_plan_free(plan);
        snprintf(base_path, sizeof(base_path), "%s/baseline", state);
        NbError e = {0};
        _cleanup_snap_baseline_ SnapBaseline *b = NULL;
        _cleanup_snap_walk_ SnapWalk *w = NULL;
        TestBuf out = {0};
        ASSERT_OK(snap_baseline_open(base_path, &b, &e));
        ASSERT_OK(snap_walk_new(root, NULL, &w, &e));
        ASSERT_OK(snap_diff_preview(b, w, NULL, preview_line, &out, &plan, &e));
        test_buf_write(&out, "", 1);
        ASSERT_STREQ((const char *)out.data, "D gone dir 0\n"
                                             "C keep dir 0\n"
                                             "C keep/k file 2\n"
                                             "A keep/n file 4\n"
                                             "A keep/n2 file 4\n"
                                             "C redo dir 0\n"
                                             "A redo/new file 2\n"
                                             "C t2d dir 0\n");
        /* the plan of the same pass: the hard-linked file once */
        const SnapPlanStats *st = snap_plan_stats(plan);
        ASSERT_EQ(st->bytes, 2 + 4 + 2);
        ASSERT_EQ(st->files, 3);
        ASSERT_EQ(st->deleted, 2); /* the whiteout and the opaque marker */
        snap_plan_free(plan);
        free(out.data);

        /* the callback's error stops the pass, and no plan is handed out */
        snap_baseline_free(b), b = NULL;
        snap_walk_free(w), w = NULL;
        ASSERT_OK(snap_baseline_open(base_path, &b, &e));
        ASSERT_OK(snap_walk_new(root, NULL, &w, &e));
        plan = NULL;
        ASSERT_EQ(snap_diff_preview(b, w, NULL, preview_stop, NULL, &plan, &e), -EINTR);
        ASSERT_TRUE(plan == NULL);
        ASSERT_TRUE(strstr(e.msg, "stopped by the callback") != NULL);
}

/* Split layers: the parts of one stream, cut where the cut callback was called. */
typedef struct Parts {
        TestBuf buf;
        size_t cuts[16];
        size_t n_cuts;
} Parts;

static int parts_cut(void *userdata, NbError *e)
{
        Parts *p = userdata;
        (void)e;
        ASSERT_INT(p->n_cuts, <, ELEMENTSOF(p->cuts));
        p->cuts[p->n_cuts++] = p->buf.size;
        return 0;
}

/* "part kind path" lines of one tar of the stream; kind: d, f, h (a link to an entry of the same tar), w. */
static void list_part(FILE *f, unsigned part, const uint8_t *data, size_t size, uint64_t budget)
{
        ASSERT_INT(size, <=, budget + 1024);
        struct archive *a = archive_read_new();
        archive_read_support_format_tar(a);
        ASSERT_EQ(archive_read_open_memory(a, data, size), ARCHIVE_OK);
        struct archive_entry *ae;
        char seen[4096] = "\n";
        while (archive_read_next_header(a, &ae) == ARCHIVE_OK) {
                const char *name = archive_entry_pathname(ae), *hl = archive_entry_hardlink(ae);
                const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
                char kind = strncmp(base, ".wh.", 4) == 0            ? 'w'
                            : hl                                     ? 'h'
                            : archive_entry_filetype(ae) == AE_IFDIR ? 'd'
                                                                     : 'f';
                if (hl) { /* the target is an earlier entry of this tar */
                        char key[512];
                        snprintf(key, sizeof(key), "\n%s\n", hl);
                        ASSERT_TRUE(strstr(seen, key) != NULL);
                }
                snprintf(seen + strlen(seen), sizeof(seen) - strlen(seen), "%s\n", name);
                fprintf(f, "%u %c %s\n", part, kind, name);
        }
        ASSERT_EQ(archive_read_free(a), ARCHIVE_OK);
}

__attribute__((noinline)) static char *split_listing(const char *root, const char *state, uint64_t budget,
                                                     SnapPlan *plan, size_t *ret_parts)
{
        char path[600];
        snprintf(path, sizeof(path), "%s/baseline", state);
        NbError e = {0};
        Parts parts = {0};
        SnapLayer *l = NULL;
        ASSERT_OK(snap_layer_new(test_buf_write, NULL, &parts.buf, &l, &e));
        ASSERT_OK(snap_layer_split(l, budget, plan, parts_cut, &e));
        /* the cut callback gets the stream's userdata in a save; here the TestBuf is first in Parts */
        for (SnapDiffPart part = SNAP_DIFF_SKELETON; part <= SNAP_DIFF_CONTENT; part++) {
                SnapBaseline *b = NULL;
                SnapWalk *w = NULL;
                ASSERT_OK(snap_baseline_open(path, &b, &e));
                ASSERT_OK(snap_walk_new(root, NULL, &w, &e));
                int r = snap_diff_layer_part(b, w, NULL, l, part, NULL, NULL, NULL, NULL, &e);
                if (r < 0)
                        fprintf(stderr, "split: %s\n", e.msg);
                ASSERT_OK(r);
                snap_walk_free(w);
                snap_baseline_free(b);
        }
        ASSERT_OK(snap_layer_finish(l, &e));
        ASSERT_EQ(snap_layer_parts(l), parts.n_cuts + 1);
        snap_layer_free(l);
        char *out = NULL;
        size_t outlen = 0, start = 0;
        FILE *f = open_memstream(&out, &outlen);
        for (size_t i = 0; i <= parts.n_cuts; i++) {
                size_t end = i < parts.n_cuts ? parts.cuts[i] : parts.buf.size;
                list_part(f, (unsigned)i + 1, parts.buf.data + start, end - start, budget);
                start = end;
        }
        fclose(f);
        free(parts.buf.data);
        *ret_parts = parts.n_cuts + 1;
        return out;
}

/* A change cut into tars of at most budget + the end blocks: the directories and the whiteouts in the first,
 * then the files in tree order, a hard-linked pair whose names lie far apart in one tar, data once. */
static void test_split(void)
{
        char root[512], state[512];
        SnapPlan *plan = plan_change(
                "split", "mkdir -p a z && echo gone > z/gone",
                "for i in 1 2 3 4 5 6; do head -c 6000 /dev/urandom > a/f$i; done && "
                "head -c 3000 /dev/urandom > a/linked && mkdir m && "
                "for i in 7 8 9; do head -c 6000 /dev/urandom > m/f$i; done && ln a/linked z/linked-too && "
                "rm z/gone",
                root, state);
        const SnapPlanStats *st = snap_plan_stats(plan);
        ASSERT_STREQ(st->largest, "a/f1");
        ASSERT_INT(st->skeleton_tar, >, 0);
        ASSERT_INT(st->tar_bytes, >, 9 * 6000 + 3000);
        size_t n = 0;
        char *listing = split_listing(root, state, 24 * 1024, plan, &n);
        ASSERT_INT(n, >=, 4);
        ASSERT_TRUE(has_line(listing, "1 d a/"));
        ASSERT_TRUE(has_line(listing, "1 d m/"));
        ASSERT_TRUE(has_line(listing, "1 d z/"));
        ASSERT_TRUE(has_line(listing, "1 w z/.wh.gone"));
        /* the pair: the first name with the data, the other right after it, in its tar */
        const char *data = strstr(listing, " f a/linked\n");
        ASSERT_TRUE(data != NULL && data > listing);
        size_t at = (size_t)(data - listing);
        char want[64];
        snprintf(want, sizeof(want), "%c h z/linked-too", listing[at - 1]);
        ASSERT_TRUE(has_line(listing, want));
        ASSERT_TRUE(strstr(listing, " f z/linked-too") == NULL);
        for (const char *p = listing; (p = strstr(p, " w ")); p++)
                ASSERT_EQ(listing[(size_t)(p - listing) - 1], '1'); /* whiteouts in the first tar only */
        free(listing);
        snap_plan_free(plan);
}

int main(void)
{
        if (getuid() != 0) {
                fprintf(stderr, "needs root (device nodes, chown)\n");
                return TEST_SKIP;
        }
        ASSERT_TRUE(mkdtemp(scratch));
        char root[256], state[256];
        snprintf(root, sizeof(root), "%s/root", scratch);
        snprintf(state, sizeof(state), "%s/state", scratch);
        sh("mkdir -p %s %s && cd %s && mkdir -p etc deldir/sub redir/old dir2file/inner base && echo c > "
           "etc/conf"
           " && echo m > etc/mode && echo t > etc/touched && echo s > etc/same && echo d > etc/delfile"
           " && echo f > deldir/sub/f && echo o > redir/old/o && echo x > file2dir && echo i > "
           "dir2file/inner/i"
           " && echo o > base/orig && ln -s target link && echo x > xattr && mkdir -p 'sp ace' && echo 1 > "
           "'sp ace/f'"
           " && mkdir gone-but-excluded",
           root, state, root);
        test_order();
        test_walk_and_baseline(root, state);
        test_baseline_corrupt(state);
        test_diff(root, state);
        test_excludes_mountinfo(state);
        test_plan();
        test_preview();
        test_record();
        test_record_links();
        test_split();
        sh("rm -rf %s", scratch);
        printf("test-snapshot: all passed\n");
        return 0;
}
