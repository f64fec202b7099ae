#include <archive.h>
#include <archive_entry.h>
#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "snapshot/layer.h"
#include "snapshot/plan.h"

#define READ_BUFFER     (SNAP_BUFFERED_MAX + 1)
#define WHITEOUT_PREFIX ".wh."
#define OPAQUE_NAME     ".wh..wh..opq"

struct SnapLayer {
        struct archive *a;
        struct archive_entry_linkresolver *links;
        snap_layer_write_fn write;
        snap_layer_note_fn note;
        void *userdata;
        uint8_t *buf;
        SnapLayerStats stats;
        int write_error; /* what the write callback returned, to report instead of libarchive's words */
        bool discard;    /* set when freed: libarchive's implicit close must not write to the callback */
        /* split layers (snap_layer_split): budget 0 writes one tar */
        uint64_t budget;
        uint64_t part_bytes;   /* snap_tar_entry_bound() of the entries of the current tar */
        uint64_t part_entries; /* entries of the current tar */
        unsigned parts;
        SnapPlan *plan;
        snap_layer_cut_fn cut;
};

static la_ssize_t on_write(struct archive *a, void *userdata, const void *data, size_t size)
{
        SnapLayer *l = userdata;
        if (l->discard)
                return (la_ssize_t)size; /* failed or being freed: nothing more goes out */
        int r = l->write(l->userdata, data, size);
        if (r < 0) {
                /* Not reported to libarchive: its fatal state leaks the client buffer on free (3.6). The
                 * callers check write_error after every call instead. */
                l->write_error = r;
                l->discard = true;
        }
        return (la_ssize_t)size;
}

static void entry_freep(struct archive_entry **e)
{
        if (*e)
                archive_entry_free(*e);
}
#define _cleanup_entry_ _cleanup_(entry_freep)

SnapLayer *snap_layer_free(SnapLayer *l)
{
        if (!l)
                return NULL;
        l->discard = true;
        if (l->a)
                archive_write_free(l->a);
        if (l->links)
                archive_entry_linkresolver_free(l->links);
        free(l->buf);
        free(l);
        return NULL;
}

static int archive_fail(SnapLayer *l, NbError *e, const char *what)
{
        if (l->write_error < 0)
                return nb_error_set(e, l->write_error, "%s: the layer could not be sent on", what);
        int err = archive_errno(l->a);
        return nb_error_set(e, err > 0 ? -err : -EIO, "%s: %s", what,
                            archive_error_string(l->a) ?: "libarchive");
}

/* A new tar on the write callback. */
static int archive_open(SnapLayer *l, NbError *e)
{
        if (!(l->a = archive_write_new()))
                return nb_error_oom(e);
        /* pax restricted: plain ustar headers unless a field needs PAX (long names, big sizes and ids,
         * xattrs) */
        if (archive_write_set_format_pax_restricted(l->a) != ARCHIVE_OK ||
            archive_write_set_format_option(l->a, "pax", "xattrheader", "SCHILY") != ARCHIVE_OK ||
            archive_write_add_filter_none(l->a) != ARCHIVE_OK ||
            archive_write_set_bytes_in_last_block(l->a, 1) != ARCHIVE_OK ||
            archive_write_open2(l->a, l, NULL, on_write, NULL, NULL) != ARCHIVE_OK)
                return archive_fail(l, e, "cannot set up the layer writer");
        return 0;
}

int snap_layer_new(snap_layer_write_fn write, snap_layer_note_fn note, void *userdata, SnapLayer **ret,
                   NbError *e)
{
        SnapLayer *l = calloc(1, sizeof(*l));
        if (!l || !(l->buf = malloc(READ_BUFFER)) || !(l->links = archive_entry_linkresolver_new())) {
                snap_layer_free(l);
                return nb_error_oom(e);
        }
        l->write = write, l->note = note, l->userdata = userdata, l->parts = 1;
        int r = archive_open(l, e);
        if (r < 0) {
                snap_layer_free(l);
                return r;
        }
        archive_entry_linkresolver_set_strategy(l->links, archive_format(l->a));
        *ret = l;
        return 0;
}

uint64_t snap_layer_split_budget(uint64_t max)
{
        assert(max >= SNAP_SPLIT_BLOB_MIN);
        return max - max / 256 - SNAP_SPLIT_SLACK - SNAP_TAR_END;
}

int snap_layer_split(SnapLayer *l, uint64_t budget, SnapPlan *plan, snap_layer_cut_fn cut, NbError *e)
{
        if (l->stats.entries > 0 || budget == 0 || !cut)
                return nb_error_set(e, -EINVAL, "cannot split a layer already written to");
        l->budget = budget, l->plan = plan, l->cut = cut;
        snap_plan_links_reset(plan); /* a layer packed again writes every name again */
        return 0;
}

unsigned snap_layer_parts(const SnapLayer *l)
{
        return l->parts;
}

bool snap_layer_is_split(const SnapLayer *l)
{
        return l->budget != 0;
}

/* Ends the current tar and starts the next one (snap_layer_split). */
static int cut(SnapLayer *l, NbError *e)
{
        if (archive_write_close(l->a) != ARCHIVE_OK || l->write_error < 0)
                return archive_fail(l, e, "cannot finish the layer");
        archive_write_free(l->a);
        l->a = NULL;
        int r = l->cut(l->userdata, e);
        if (r < 0)
                return r;
        l->part_bytes = 0, l->part_entries = 0;
        l->parts++;
        return archive_open(l, e);
}

/* Room for `need` more tar bytes in the current tar: cuts it when they would not fit there. */
static int make_room(SnapLayer *l, uint64_t need, const char *path, uint64_t size, NbError *e)
{
        if (l->part_bytes + need <= l->budget)
                return 0;
        if (l->part_entries == 0)
                return nb_error_set(
                        e, -EFBIG,
                        "cannot save /%s: %" PRIu64 " bytes of data take %" PRIu64
                        " bytes of tar with their headers, more than one layer may hold (%" PRIu64 ")",
                        path, size, need, l->budget);
        return cut(l, e);
}

static bool xattr_kept(const char *name)
{
        if (strncmp(name, "user.", 5) == 0)
                return strncmp(name, "user.overlay.", 13) != 0;
        return strcmp(name, "security.capability") == 0 || strcmp(name, "system.posix_acl_access") == 0 ||
               strcmp(name, "system.posix_acl_default") == 0;
}

/* A v3 capability (namespaced, with a root uid) becomes v2: the image must not depend on the user namespace
 * of the machine that saved it. */
static size_t capability_v2(uint8_t *value, size_t size)
{
        struct vfs_ns_cap_data v3;
        if (size != sizeof(v3))
                return size;
        memcpy(&v3, value, sizeof(v3));
        uint32_t magic = v3.magic_etc;
        if ((magic & VFS_CAP_REVISION_MASK) != VFS_CAP_REVISION_3)
                return size;
        struct vfs_cap_data v2;
        v2.magic_etc = VFS_CAP_REVISION_2 | (magic & VFS_CAP_FLAGS_EFFECTIVE);
        memcpy(v2.data, v3.data, sizeof(v2.data));
        memcpy(value, &v2, sizeof(v2));
        return sizeof(v2);
}

static int cmp_names(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the kept xattrs of the inode behind fd (O_PATH is enough), in name order. */
static int add_xattrs(struct archive_entry *ae, int fd, const char *path, NbError *e)
{
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        _cleanup_free_ char *list = malloc(SNAP_XATTR_LIST_MAX);
        _cleanup_free_ uint8_t *value = malloc(SNAP_XATTR_SIZE_MAX);
        if (!list || !value)
                return nb_error_oom(e);
        ssize_t n = listxattr(proc, list, SNAP_XATTR_LIST_MAX);
        if (n < 0) {
                if (errno == ENOTSUP || errno == ENOENT)
                        return 0;
                return nb_error_set(e, -errno, "cannot list the extended attributes of /%s: %m", path);
        }
        const char *names[1024];
        size_t count = 0;
        for (char *p = list; p < list + n; p += strlen(p) + 1)
                if (xattr_kept(p) && count < ELEMENTSOF(names))
                        names[count++] = p;
        qsort(names, count, sizeof(char *), cmp_names);
        for (size_t i = 0; i < count; i++) {
                ssize_t v = getxattr(proc, names[i], value, SNAP_XATTR_SIZE_MAX);
                if (v < 0 && errno == ENODATA)
                        continue;
                if (v < 0)
                        return nb_error_set(e, -errno, "cannot read extended attribute %s of /%s: %m",
                                            names[i], path);
                size_t size = (size_t)v;
                if (strcmp(names[i], "security.capability") == 0)
                        size = capability_v2(value, size);
                archive_entry_xattr_add_entry(ae, names[i], value, size);
        }
        return 0;
}

static int open_entry(int dirfd, const char *name, const SnapEntry *en, const char *path, NbError *e)
{
        int flags = S_ISREG(en->mode) ? O_RDONLY | O_NONBLOCK | O_NOATIME : O_PATH;
        int fd = openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == EPERM && (flags & O_NOATIME))
                fd = openat(dirfd, name, (flags & ~O_NOATIME) | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ELOOP && S_ISREG(en->mode))
                errno = ESTALE; /* became a symlink */
        if (fd < 0)
                return nb_error_set(e, -errno,
                                    "cannot open /%s: %m (if it changed while saving, save again)", path);
        return fd;
}

static void fill_header(struct archive_entry *ae, const SnapEntry *en, const struct stat *st)
{
        archive_entry_copy_pathname(ae, en->path);
        archive_entry_set_mode(ae, st->st_mode);
        archive_entry_set_uid(ae, st->st_uid);
        archive_entry_set_gid(ae, st->st_gid);
        archive_entry_set_mtime(ae, st->st_mtim.tv_sec, 0);
        archive_entry_set_nlink(ae, (unsigned)st->st_nlink);
        archive_entry_set_dev(ae, st->st_dev);
        archive_entry_set_ino64(ae, (la_int64_t)st->st_ino);
        if (S_ISREG(st->st_mode))
                archive_entry_set_size(ae, st->st_size);
        else
                archive_entry_set_size(ae, 0);
        if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode))
                archive_entry_set_rdev(ae, st->st_rdev);
}

/* The target as it is now (the link may have been replaced since the walk read it). */
static int set_symlink(struct archive_entry *ae, int fd, const char *path, NbError *e)
{
        char target[SNAP_LINK_MAX + 1];
        ssize_t n = readlinkat(fd, "", target, sizeof(target));
        if (n < 0)
                return nb_error_set(e, -errno, "cannot read symlink /%s: %m", path);
        if ((size_t)n >= sizeof(target))
                return nb_error_set(e, -ENAMETOOLONG, "symlink /%s: target over %u bytes", path,
                                    SNAP_LINK_MAX);
        target[n] = '\0';
        archive_entry_copy_symlink(ae, target);
        return 0;
}

static int write_zeros(SnapLayer *l, uint64_t n, const char *path, NbError *e)
{
        static const uint8_t zeros[64 * 1024];
        while (n > 0) {
                size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
                if (archive_write_data(l->a, zeros, k) != (la_ssize_t)k || l->write_error < 0)
                        return archive_fail(l, e, path);
                n -= k;
        }
        return 0;
}

static int read_data(SnapLayer *l, int fd, uint64_t off, uint64_t n, const char *path, NbError *e)
{
        while (n > 0) {
                size_t want = n < READ_BUFFER ? (size_t)n : READ_BUFFER;
                ssize_t k = pread(fd, l->buf, want, (off_t)off);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return nb_error_set(e, -errno, "cannot read /%s: %m", path);
                if (k == 0)
                        return nb_error_set(e, -ESTALE,
                                            "/%s shrank while it was being saved; save again when it is not "
                                            "being written",
                                            path);
                if (archive_write_data(l->a, l->buf, (size_t)k) != k || l->write_error < 0)
                        return archive_fail(l, e, path);
                off += (uint64_t)k, n -= (uint64_t)k;
                l->stats.data_bytes += (uint64_t)k;
        }
        return 0;
}

/* Copies exactly `size` bytes of content: never a padded or cut file (one that shrank fails). Holes of
 * sparse files are written as zeros without reading them (OCI: no GNU.sparse entries), up to SNAP_HOLES_MAX.
 */
static int copy_data(SnapLayer *l, int fd, uint64_t size, uint64_t allocated, const char *path, NbError *e)
{
        if (allocated >= size) /* not sparse: one sequential read */
                return read_data(l, fd, 0, size, path, e);
        if (size - allocated > SNAP_HOLES_MAX)
                return nb_error_set(e, -EFBIG,
                                    "/%s is a sparse file with %" PRIu64
                                    " GiB of holes; images store holes as "
                                    "data and at most %llu GiB are allowed: --exclude it or shrink it",
                                    path, (size - allocated) >> 30, SNAP_HOLES_MAX >> 30);
        uint64_t off = 0;
        while (off < size) {
                off_t data = lseek(fd, (off_t)off, SEEK_DATA);
                if (data < 0 && errno == ENXIO)
                        data = (off_t)size; /* a hole up to the end */
                else if (data < 0)
                        return read_data(l, fd, off, size - off, path, e); /* no SEEK_DATA here */
                uint64_t d = (uint64_t)data < size ? (uint64_t)data : size;
                int r = write_zeros(l, d - off, path, e);
                if (r < 0 || d == size)
                        return r;
                off_t hole = lseek(fd, data, SEEK_HOLE);
                uint64_t h = hole < 0 || (uint64_t)hole > size ? size : (uint64_t)hole;
                r = read_data(l, fd, d, h - d, path, e);
                if (r < 0)
                        return r;
                off = h;
        }
        return 0;
}

static int write_entry(SnapLayer *l, struct archive_entry *ae, const char *path, NbError *e)
{
        int r = archive_write_header(l->a, ae);
        /* ARCHIVE_WARN: a name that is not UTF-8, whose bytes libarchive keeps (hdrcharset=BINARY) */
        if ((r != ARCHIVE_OK && r != ARCHIVE_WARN) || l->write_error < 0)
                return archive_fail(l, e, path);
        l->stats.entries++;
        return 0;
}

/* Content writes move mtime (to the nanosecond) or size. Neither ctime nor the inode number is compared:
 * when the file is renamed over or unlinked while we hold it open, ctime moves and overlayfs reports another
 * inode number for the same open file, and the content we read is intact. */
static bool same_content_stat(const struct stat *a, const struct stat *b)
{
        return a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
               a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static int changed_error(const char *path, const struct stat *before, const struct stat *after, NbError *e)
{
        return nb_error_set(
                e, -EBUSY,
                "/%s kept changing while it was being saved (%" PRIu64 " bytes, then %" PRIu64
                "; mtime %lld.%09ld, then %lld.%09ld); stop the program writing it (or --exclude it) "
                "and save again",
                path, (uint64_t)before->st_size, (uint64_t)after->st_size, (long long)before->st_mtim.tv_sec,
                before->st_mtim.tv_nsec, (long long)after->st_mtim.tv_sec, after->st_mtim.tv_nsec);
}

/* A small file is read whole into memory, with the stat taken before and after: when the notebook writes it
 * meanwhile, it is read again (up to SNAP_READ_RETRIES times), so the header always matches a state the file
 * really had. *st is updated to the state read. */
static int read_small(SnapLayer *l, int fd, struct stat *st, const char *path, NbError *e)
{
        for (unsigned attempt = 0; attempt <= SNAP_READ_RETRIES; attempt++) {
                size_t got = 0, want = (size_t)st->st_size + 1; /* one more byte tells growth */
                while (got < want) {
                        ssize_t k = pread(fd, l->buf + got, want - got, (off_t)got);
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k < 0)
                                return nb_error_set(e, -errno, "cannot read /%s: %m", path);
                        if (k == 0)
                                break;
                        got += (size_t)k;
                }
                struct stat after;
                if (fstat(fd, &after) < 0)
                        return nb_error_set(e, -errno, "cannot stat /%s: %m", path);
                if (got == (size_t)st->st_size && same_content_stat(st, &after))
                        return 0;
                if ((uint64_t)after.st_size > SNAP_BUFFERED_MAX) /* grew past what is buffered */
                        return changed_error(path, st, &after, e);
                if (attempt == SNAP_READ_RETRIES)
                        return changed_error(path, st, &after, e);
                *st = after;
        }
        return -EBUSY; /* not reached */
}

static int write_regular(SnapLayer *l, struct archive_entry *ae, int fd, struct stat *st, const char *path,
                         NbError *e)
{
        int r;
        if ((uint64_t)st->st_size <= SNAP_BUFFERED_MAX) {
                r = read_small(l, fd, st, path, e);
                if (r < 0)
                        return r;
                archive_entry_set_size(ae, st->st_size);
                archive_entry_set_mtime(ae, st->st_mtim.tv_sec, 0);
                r = write_entry(l, ae, path, e);
                if (r < 0)
                        return r;
                if (st->st_size > 0 && archive_write_data(l->a, l->buf, (size_t)st->st_size) != st->st_size)
                        return archive_fail(l, e, path);
                if (l->write_error < 0)
                        return archive_fail(l, e, path);
                l->stats.data_bytes += (uint64_t)st->st_size;
                return 0;
        }
        /* a big file streams: it cannot be taken back from the stream, so a change while reading fails */
        r = write_entry(l, ae, path, e);
        if (r >= 0)
                r = copy_data(l, fd, (uint64_t)st->st_size, (uint64_t)st->st_blocks * 512, path, e);
        struct stat after;
        if (r >= 0 && fstat(fd, &after) < 0)
                r = nb_error_set(e, -errno, "cannot stat /%s: %m", path);
        if (r >= 0 && !same_content_stat(st, &after))
                r = changed_error(path, st, &after, e);
        return r;
}

static uint64_t xattr_bytes(struct archive_entry *ae)
{
        uint64_t n = 0;
        const char *name;
        const void *value;
        size_t size;
        archive_entry_xattr_reset(ae);
        while (archive_entry_xattr_next(ae, &name, &value, &size) == ARCHIVE_OK)
                n += strlen(name) + size + 32;
        return n;
}

/* Another name of a hard-linked entry just written: a link entry to it, with its metadata. */
static int write_link(SnapLayer *l, struct archive_entry *ae, const char *name, const char *target,
                      NbError *e)
{
        _cleanup_entry_ struct archive_entry *link = archive_entry_clone(ae);
        if (!link)
                return nb_error_oom(e);
        archive_entry_copy_pathname(link, name);
        archive_entry_copy_hardlink(link, target);
        archive_entry_set_size(link, 0);
        return write_entry(l, link, name, e);
}

/* An entry of a split layer: in the current tar when it fits, else at the start of the next. A hard-linked
 * entry comes with every name the plan counted (snapshot.h); a later name, met by the walk, was written
 * then. */
static int add_split(SnapLayer *l, struct archive_entry *ae, int fd, struct stat *st, const SnapEntry *en,
                     NbError *e)
{
        char *const *names = NULL;
        size_t n = 0;
        if (!S_ISDIR(st->st_mode) && st->st_nlink > 1) {
                int t = snap_plan_take_links(l->plan, en->dev, en->ino, &names, &n);
                if (t == 0)
                        return 0;
                if (t < 0)
                        n = 0; /* one name among the changes, or linked since the count: a file of its own */
        }
        bool reg = S_ISREG(st->st_mode);
        uint64_t size = reg ? (uint64_t)st->st_size : 0, xattrs = xattr_bytes(ae);
        const char *target = archive_entry_symlink(ae);
        uint64_t need = snap_tar_entry_bound(en->path_len, target ? strlen(target) : 0, xattrs, size);
        for (size_t i = 0; i < n; i++)
                if (strcmp(names[i], en->path) != 0)
                        need += snap_tar_entry_bound(strlen(names[i]), en->path_len, xattrs, 0);
        int r = make_room(l, need, en->path, size, e);
        if (r < 0)
                return r;
        r = reg ? write_regular(l, ae, fd, st, en->path, e) : write_entry(l, ae, en->path, e);
        for (size_t i = 0; r >= 0 && i < n; i++)
                if (strcmp(names[i], en->path) != 0)
                        r = write_link(l, ae, names[i], en->path, e);
        if (r < 0)
                return r;
        /* a small file read again (the notebook wrote it meanwhile) is written with its new size */
        if (reg)
                need = need - snap_tar_pad(size) + snap_tar_pad((uint64_t)st->st_size);
        l->part_bytes += need;
        l->part_entries++;
        return 1;
}

int snap_layer_add(SnapLayer *l, const SnapEntry *en, int dirfd, const char *name, NbError *e)
{
        if (S_ISSOCK(en->mode)) {
                l->stats.skipped++;
                if (l->note)
                        l->note(l->userdata, en->path,
                                "socket skipped: sockets cannot be stored in an image");
                return 0;
        }
        if (strncmp(name, WHITEOUT_PREFIX, strlen(WHITEOUT_PREFIX)) == 0)
                return nb_error_set(e, -EINVAL,
                                    "/%s: a name starting with \".wh.\" cannot be saved: container runtimes "
                                    "read it as a deletion marker; rename it, delete it or --exclude it",
                                    en->path);
        _cleanup_close_ int fd = open_entry(dirfd, name, en, en->path, e);
        if (fd == -ENOENT) {
                l->stats.skipped++;
                if (l->note)
                        l->note(l->userdata, en->path, "deleted while the save was running: not saved");
                return 0;
        }
        if (fd < 0)
                return fd;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return nb_error_set(e, -errno, "cannot stat /%s: %m", en->path);
        /* Replaced since the walk by an entry of the same type (an atomic rename by an editor or pip): the
         * new one is saved, with its own stat. Another type cannot stand where the walk saw this one. */
        if ((st.st_mode ^ en->mode) & S_IFMT)
                return nb_error_set(
                        e, -ESTALE,
                        "/%s turned into another kind of file while it was being saved; save again",
                        en->path);
        _cleanup_entry_ struct archive_entry *ae = archive_entry_new();
        if (!ae)
                return nb_error_oom(e);
        fill_header(ae, en, &st);
        int r = S_ISLNK(st.st_mode) ? set_symlink(ae, fd, en->path, e) : 0;
        if (r >= 0)
                r = add_xattrs(ae, fd, en->path, e);
        if (r < 0)
                return r;
        if (l->budget)
                return add_split(l, ae, fd, &st, en, e);
        struct archive_entry *spare = NULL;
        if (!S_ISDIR(st.st_mode))
                archive_entry_linkify(l->links, &ae, &spare);
        if (spare) /* LIKE_TAR strategy: never a deferred entry */
                archive_entry_free(spare);
        if (!ae)
                return 1;
        if (S_ISREG(st.st_mode) && !archive_entry_hardlink(ae))
                r = write_regular(l, ae, fd, &st, en->path, e);
        else
                r = write_entry(l, ae, en->path, e);
        return r < 0 ? r : 1;
}

/* ---- entries copied from another layer (squash.c) ----------------------------------------------------- */

/* The header of an entry of another layer, as this layer writes its own: type and mode, owner, whole-second
 * mtime, size, link targets, device numbers and the kept xattrs (capabilities as v2); nothing else (no
 * atime/ctime, user names, dev/ino/nlink, sparse map: the data is read whole). with_link: keep its hard link
 * target. */
static bool has_xattr(struct archive_entry *ae, const char *name)
{
        const char *n;
        const void *v;
        size_t size;
        archive_entry_xattr_reset(ae);
        while (archive_entry_xattr_next(ae, &n, &v, &size) == ARCHIVE_OK)
                if (strcmp(n, name) == 0)
                        return true;
        return false;
}

static int copy_header(struct archive_entry *src, bool with_link, struct archive_entry **ret, NbError *e)
{
        _cleanup_entry_ struct archive_entry *ae = archive_entry_new();
        _cleanup_free_ uint8_t *value = malloc(SNAP_XATTR_SIZE_MAX);
        if (!ae || !value)
                return nb_error_oom(e);
        const char *hl = with_link ? archive_entry_hardlink(src) : NULL, *sl = archive_entry_symlink(src);
        unsigned type = archive_entry_filetype(src);
        archive_entry_copy_pathname(ae, archive_entry_pathname(src));
        archive_entry_set_mode(ae, archive_entry_mode(src));
        archive_entry_set_uid(ae, archive_entry_uid(src));
        archive_entry_set_gid(ae, archive_entry_gid(src));
        archive_entry_set_mtime(ae, archive_entry_mtime(src), 0);
        archive_entry_set_size(ae, type == AE_IFREG && !hl ? archive_entry_size(src) : 0);
        if (hl)
                archive_entry_copy_hardlink(ae, hl);
        else if (type == AE_IFLNK && sl)
                archive_entry_copy_symlink(ae, sl);
        if (type == AE_IFCHR || type == AE_IFBLK)
                archive_entry_set_rdev(ae, archive_entry_rdev(src));
        const char *name;
        const void *v;
        size_t size;
        archive_entry_xattr_reset(src);
        while (archive_entry_xattr_next(src, &name, &v, &size) == ARCHIVE_OK) {
                /* a pax header may carry one attribute twice (LIBARCHIVE.xattr and SCHILY.xattr) */
                if (!xattr_kept(name) || size > SNAP_XATTR_SIZE_MAX || has_xattr(ae, name))
                        continue;
                memcpy(value, v, size);
                if (strcmp(name, "security.capability") == 0)
                        size = capability_v2(value, size);
                archive_entry_xattr_add_entry(ae, name, value, size);
        }
        *ret = TAKE_PTR(ae);
        return 0;
}

static int copy_refused(SnapLayer *l, const char *path, NbError *e)
{
        if (snap_layer_is_split(l))
                return nb_error_set(e, -EFBIG,
                                    "cannot write /%s: a squash cannot be split yet (the layer has a size "
                                    "limit)",
                                    path);
        return 0;
}

/* Streams exactly size bytes of the current entry of src. */
static int copy_stream(SnapLayer *l, struct archive *src, uint64_t size, const char *path, NbError *e)
{
        uint64_t left = size;
        for (;;) {
                la_ssize_t k = archive_read_data(src, l->buf, READ_BUFFER);
                if (k < 0)
                        return nb_error_set(e, archive_errno(src) > 0 ? -archive_errno(src) : -EIO,
                                            "cannot read /%s from its layer: %s", path,
                                            archive_error_string(src) ?: "libarchive");
                if (k == 0)
                        break;
                if ((uint64_t)k > left)
                        return nb_error_set(e, -EBADMSG, "/%s in its layer has more data than its size",
                                            path);
                if (archive_write_data(l->a, l->buf, (size_t)k) != k || l->write_error < 0)
                        return archive_fail(l, e, path);
                left -= (uint64_t)k;
                l->stats.data_bytes += (uint64_t)k;
        }
        if (left > 0)
                return nb_error_set(e, -EBADMSG,
                                    "/%s in its layer is cut short (%" PRIu64 " of %" PRIu64 " bytes)", path,
                                    size - left, size);
        return 0;
}

int snap_layer_copy(SnapLayer *l, struct archive *src, struct archive_entry *ae, NbError *e)
{
        const char *path = archive_entry_pathname(ae);
        int r = copy_refused(l, path, e);
        _cleanup_entry_ struct archive_entry *out = NULL;
        if (r >= 0)
                r = copy_header(ae, true, &out, e);
        if (r >= 0)
                r = write_entry(l, out, path, e);
        if (r >= 0 && archive_entry_filetype(out) == AE_IFREG && !archive_entry_hardlink(out))
                r = copy_stream(l, src, (uint64_t)archive_entry_size(out), path, e);
        return r;
}

int snap_layer_add_fd(SnapLayer *l, const char *path, int fd, NbError *e)
{
        int r = copy_refused(l, path, e);
        if (r < 0)
                return r;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return nb_error_set(e, -errno, "cannot stat /%s: %m", path);
        if (!S_ISREG(st.st_mode))
                return nb_error_set(e, -EBADF, "/%s is not a regular file", path);
        _cleanup_entry_ struct archive_entry *ae = archive_entry_new();
        if (!ae)
                return nb_error_oom(e);
        const SnapEntry en = {.path = path, .path_len = strlen(path)};
        fill_header(ae, &en, &st);
        r = add_xattrs(ae, fd, path, e);
        return r < 0 ? r : write_regular(l, ae, fd, &st, path, e);
}

static int write_marker(SnapLayer *l, const char *dir, size_t dir_len, const char *name, NbError *e)
{
        _cleanup_free_ char *p = NULL;
        if (asprintf(&p, "%.*s%s%s", (int)dir_len, dir, dir_len ? "/" : "", name) < 0)
                return nb_error_oom(e);
        _cleanup_entry_ struct archive_entry *ae = archive_entry_new();
        if (!ae)
                return nb_error_oom(e);
        archive_entry_copy_pathname(ae, p);
        archive_entry_set_mode(ae, S_IFREG | 0644);
        archive_entry_set_size(ae, 0);
        archive_entry_set_mtime(ae, 0, 0);
        uint64_t need = snap_tar_entry_bound(strlen(p), 0, 0, 0);
        int r = l->budget ? make_room(l, need, p, 0, e) : 0;
        if (r >= 0)
                r = write_entry(l, ae, p, e);
        if (r < 0)
                return r;
        l->stats.whiteouts++;
        l->part_bytes += need;
        l->part_entries++;
        return 0;
}

int snap_layer_whiteout(SnapLayer *l, const char *path, NbError *e)
{
        const char *base = snap_path_basename(path);
        _cleanup_free_ char *name = NULL;
        if (asprintf(&name, WHITEOUT_PREFIX "%s", base) < 0)
                return nb_error_oom(e);
        size_t dir_len = base > path ? (size_t)(base - path - 1) : 0;
        return write_marker(l, path, dir_len, name, e);
}

int snap_layer_opaque(SnapLayer *l, const char *dir, NbError *e)
{
        return write_marker(l, dir, strlen(dir), OPAQUE_NAME, e);
}

int snap_layer_finish(SnapLayer *l, NbError *e)
{
        if (archive_write_close(l->a) != ARCHIVE_OK || l->write_error < 0)
                return archive_fail(l, e, "cannot finish the layer");
        return 0;
}

const SnapLayerStats *snap_layer_stats(const SnapLayer *l)
{
        return &l->stats;
}
