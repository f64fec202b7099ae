#include <dirent.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "snapshot/walk.h"

typedef struct Frame {
        int fd;
        char *names;     /* NUL-separated names of the directory */
        size_t *offsets; /* into names, sorted by name */
        size_t n, next;
        size_t path_len; /* length of this directory's path in SnapWalk.path ("" for the root) */
} Frame;

struct SnapWalk {
        const SnapExcludes *excludes;
        Frame *frames;
        size_t depth, allocated;
        char *path; /* current entry's path */
        size_t path_allocated;
        char link[SNAP_LINK_MAX + 1];
        uint8_t dents[SNAP_DENTS_BUFFER] __attribute__((aligned(8))); /* linux_dirent64 records */
        SnapEntry entry;
        bool descend; /* the entry last returned is a directory to enter on the next call */
        const char *name;
};

static void frame_done(Frame *f)
{
        closep(&f->fd);
        free(f->names);
        free(f->offsets);
        *f = (Frame){.fd = -1};
}

SnapWalk *snap_walk_free(SnapWalk *w)
{
        if (!w)
                return NULL;
        for (size_t i = 0; i < w->depth; i++)
                frame_done(&w->frames[i]);
        free(w->frames);
        free(w->path);
        free(w);
        return NULL;
}

static int cmp_offsets(const void *a, const void *b, void *base)
{
        return strcmp((const char *)base + *(const size_t *)a, (const char *)base + *(const size_t *)b);
}

struct linux_dirent64 {
        uint64_t d_ino;
        int64_t d_off;
        unsigned short d_reclen;
        unsigned char d_type;
        char d_name[];
};

static int names_append(Frame *f, size_t *cap, size_t *ncap, size_t *used, const char *name, NbError *e,
                        const char *what)
{
        size_t len = strlen(name) + 1;
        if (f->n >= SNAP_DIR_ENTRIES_MAX)
                return nb_error_set(e, -E2BIG, "directory %s has more than %u entries", what,
                                    SNAP_DIR_ENTRIES_MAX);
        if (*used + len > *cap) {
                size_t nc = *cap ? *cap * 2 : 4096;
                while (nc < *used + len)
                        nc *= 2;
                char *p = realloc(f->names, nc);
                if (!p)
                        return nb_error_oom(e);
                f->names = p, *cap = nc;
        }
        if (f->n == *ncap) {
                size_t nc = *ncap ? *ncap * 2 : 64;
                size_t *p = reallocarray(f->offsets, nc, sizeof(size_t));
                if (!p)
                        return nb_error_oom(e);
                f->offsets = p, *ncap = nc;
        }
        memcpy(f->names + *used, name, len);
        f->offsets[f->n++] = *used;
        *used += len;
        return 0;
}

/* Reads all names of the directory fd (taken over) with getdents64 in large batches, then sorts them. */
static int frame_fill(Frame *f, int fd, uint8_t *buf, size_t buf_size, const char *what, NbError *e)
{
        f->fd = fd;
        size_t cap = 0, ncap = 0, used = 0;
        for (;;) {
                long n = syscall(SYS_getdents64, fd, buf, buf_size);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return nb_error_set(e, -errno, "cannot read directory %s: %m", what);
                if (n == 0)
                        break;
                for (long off = 0; off < n;) {
                        struct linux_dirent64 *d = (struct linux_dirent64 *)(void *)(buf + off);
                        off += d->d_reclen;
                        const char *name = d->d_name;
                        if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
                                continue;
                        int r = names_append(f, &cap, &ncap, &used, name, e, what);
                        if (r < 0)
                                return r;
                }
        }
        if (f->n > 1)
                qsort_r(f->offsets, f->n, sizeof(size_t), cmp_offsets, f->names);
        return 0;
}

static int path_reserve(SnapWalk *w, size_t need, NbError *e)
{
        if (need > SNAP_PATH_MAX)
                return nb_error_set(e, -ENAMETOOLONG, "path '%.200s...' is longer than %u bytes", w->path,
                                    SNAP_PATH_MAX);
        if (need <= w->path_allocated)
                return 0;
        size_t n = w->path_allocated ? w->path_allocated : 256;
        while (n < need)
                n *= 2;
        char *p = realloc(w->path, n);
        if (!p)
                return nb_error_oom(e);
        w->path = p, w->path_allocated = n;
        return 0;
}

static int push(SnapWalk *w, int fd, size_t path_len, NbError *e)
{
        if (w->depth >= SNAP_DEPTH_MAX) {
                close(fd);
                return nb_error_set(e, -ELOOP, "directory '%.200s' is nested deeper than %u levels", w->path,
                                    SNAP_DEPTH_MAX);
        }
        if (w->depth == w->allocated) {
                size_t na = w->allocated ? w->allocated * 2 : 32;
                Frame *f = reallocarray(w->frames, na, sizeof(Frame));
                if (!f) {
                        close(fd);
                        return nb_error_oom(e);
                }
                w->frames = f, w->allocated = na;
        }
        Frame *f = &w->frames[w->depth];
        *f = (Frame){.fd = -1, .path_len = path_len};
        int r = frame_fill(f, fd, w->dents, sizeof(w->dents), path_len ? w->path : "/", e);
        if (r < 0) {
                frame_done(f);
                return r;
        }
        w->depth++;
        return 0;
}

int snap_walk_new(const char *root, const SnapExcludes *excludes, SnapWalk **ret, NbError *e)
{
        SnapWalk *w = calloc(1, sizeof(*w));
        if (!w)
                return nb_error_oom(e);
        w->excludes = excludes;
        int r = path_reserve(w, 256, e);
        if (r < 0)
                return snap_walk_free(w), r;
        w->path[0] = '\0';
        int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
                r = nb_error_set(e, -errno, "cannot open root %s: %m", root);
                return snap_walk_free(w), r;
        }
        r = push(w, fd, 0, e);
        if (r < 0)
                return snap_walk_free(w), r;
        *ret = w;
        return 0;
}

static void fill_entry(SnapEntry *en, const struct stat *st)
{
        en->mode = st->st_mode;
        en->uid = st->st_uid;
        en->gid = st->st_gid;
        en->nlink = (uint32_t)st->st_nlink;
        en->size = (uint64_t)st->st_size;
        en->mtime_sec = st->st_mtim.tv_sec;
        en->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
        en->ctime_sec = st->st_ctim.tv_sec;
        en->ctime_nsec = (uint32_t)st->st_ctim.tv_nsec;
        en->dev = st->st_dev;
        en->ino = st->st_ino;
        en->rdev = st->st_rdev;
}

/* Enters the directory returned last. A directory that vanished or turned into something else since its
 * stat is skipped, like any entry that vanishes. */
static int descend(SnapWalk *w, NbError *e)
{
        Frame *top = &w->frames[w->depth - 1];
        int fd = openat(top->fd, w->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) {
                if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
                        return 0;
                if (errno == EMFILE || errno == ENFILE)
                        return nb_error_set(
                                e, -errno,
                                "cannot open directory /%s at depth %zu: out of file descriptors "
                                "(one is held per level): raise the open-files limit (LimitNOFILE=)",
                                w->path, w->depth);
                return nb_error_set(e, -errno, "cannot open directory /%s: %m", w->path);
        }
        return push(w, fd, w->entry.path_len, e);
}

int snap_walk_next(SnapWalk *w, const SnapEntry **ret, NbError *e)
{
        int r;
        if (w->descend) {
                w->descend = false;
                r = descend(w, e);
                if (r < 0)
                        return r;
        }
        while (w->depth > 0) {
                Frame *f = &w->frames[w->depth - 1];
                if (f->next == f->n) {
                        frame_done(f);
                        w->depth--;
                        continue;
                }
                const char *name = f->names + f->offsets[f->next++];
                size_t nlen = strlen(name), plen = f->path_len ? f->path_len + 1 + nlen : nlen;
                r = path_reserve(w, plen + 1, e);
                if (r < 0)
                        return r;
                if (f->path_len)
                        w->path[f->path_len] = '/';
                memcpy(w->path + (f->path_len ? f->path_len + 1 : 0), name, nlen + 1);
                if (snap_excludes_match(w->excludes, w->path))
                        continue;
                struct stat st;
                if (fstatat(f->fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno == ENOENT)
                                continue;
                        return nb_error_set(e, -errno, "cannot stat /%s: %m", w->path);
                }
                SnapEntry *en = &w->entry;
                *en = (SnapEntry){.path = w->path, .path_len = plen};
                fill_entry(en, &st);
                if (S_ISLNK(st.st_mode)) {
                        ssize_t n = readlinkat(f->fd, name, w->link, sizeof(w->link));
                        if (n < 0 && errno == ENOENT)
                                continue;
                        if (n < 0)
                                return nb_error_set(e, -errno, "cannot read symlink /%s: %m", w->path);
                        if ((size_t)n >= sizeof(w->link))
                                return nb_error_set(e, -ENAMETOOLONG, "symlink /%s: target over %u bytes",
                                                    w->path, SNAP_LINK_MAX);
                        w->link[n] = '\0';
                        en->link = w->link, en->link_len = (size_t)n;
                }
                w->name = name;
                w->descend = S_ISDIR(st.st_mode);
                *ret = en;
                return 1;
        }
        return 0;
}

int snap_walk_dirfd(const SnapWalk *w)
{
        return w->depth > 0 ? w->frames[w->depth - 1].fd : -1;
}

const char *snap_walk_name(const SnapWalk *w)
{
        return w->name;
}
