#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fileio.h"
#include "snapshot/baseline.h"
#include "snapshot/walk.h"

#define HEADER_SIZE      16 /* magic + u32 version + u32 flags */
#define TRAILER_SIZE     32
#define BASELINE_VERSION 2 /* 2: a flags varint after rdev (SNAP_ENTRY_*); 1 is read with flags 0 */
#define TAG_RECORD       'R'
#define TAG_END          'E'

/* ---- writer --------------------------------------------------------------------------------------------
 */

typedef struct Writer {
        FILE *f;
        EVP_MD_CTX *md;
        char *prev;
        size_t prev_len, prev_allocated;
        uint64_t count;
        uint8_t version; /* 1: no flags (a container-start baseline, readable by older agents); 2: flags */
        bool failed;
} Writer;

static void w_bytes(Writer *w, const void *p, size_t n)
{
        if (n == 0 || w->failed)
                return;
        if (fwrite(p, 1, n, w->f) != n || EVP_DigestUpdate(w->md, p, n) != 1)
                w->failed = true;
}

static void w_varint(Writer *w, uint64_t v)
{
        uint8_t buf[10];
        size_t n = 0;
        do {
                buf[n] = v & 0x7f;
                v >>= 7;
                if (v)
                        buf[n] |= 0x80;
                n++;
        } while (v);
        w_bytes(w, buf, n);
}

static uint64_t zigzag(int64_t v)
{
        return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static int w_entry(Writer *w, const SnapEntry *en)
{
        size_t common = 0, max = en->path_len < w->prev_len ? en->path_len : w->prev_len;
        while (common < max && en->path[common] == w->prev[common])
                common++;
        uint8_t tag = TAG_RECORD;
        w_bytes(w, &tag, 1);
        w_varint(w, common);
        w_varint(w, en->path_len - common);
        w_bytes(w, en->path + common, en->path_len - common);
        w_varint(w, en->mode);
        w_varint(w, en->uid);
        w_varint(w, en->gid);
        w_varint(w, en->nlink);
        w_varint(w, en->size);
        w_varint(w, zigzag(en->mtime_sec));
        w_varint(w, en->mtime_nsec);
        w_varint(w, zigzag(en->ctime_sec));
        w_varint(w, en->ctime_nsec);
        w_varint(w, en->dev);
        w_varint(w, en->ino);
        w_varint(w, en->rdev);
        if (w->version >= 2)
                w_varint(w, en->flags & SNAP_ENTRY_FLAGS);
        if (S_ISLNK(en->mode)) {
                w_varint(w, en->link_len);
                w_bytes(w, en->link, en->link_len);
        }
        if (en->path_len + 1 > w->prev_allocated) {
                size_t n = (en->path_len + 1) * 2;
                char *p = realloc(w->prev, n);
                if (!p)
                        return -ENOMEM;
                w->prev = p, w->prev_allocated = n;
        }
        memcpy(w->prev, en->path, en->path_len + 1);
        w->prev_len = en->path_len;
        w->count++;
        return w->failed ? -EIO : 0;
}

struct SnapBaselineWriter {
        Writer w;
        char *path, *tmp;
        int fd;
        int error; /* the first write error: kept for commit, so the pass that writes the record goes on */
        struct timespec racy_after;
};

SnapBaselineWriter *snap_baseline_writer_free(SnapBaselineWriter *bw)
{
        if (!bw)
                return NULL;
        if (bw->w.f)
                fclose(bw->w.f); /* closes fd */
        else if (bw->fd >= 0)
                close(bw->fd);
        if (bw->tmp)
                unlink(bw->tmp);
        EVP_MD_CTX_free(bw->w.md);
        free(bw->w.prev);
        free(bw->path);
        free(bw->tmp);
        free(bw);
        return NULL;
}

static int writer_new(const char *path, uint8_t version, SnapBaselineWriter **ret, NbError *e)
{
        _cleanup_(snap_baseline_writer_freep) SnapBaselineWriter *bw = calloc(1, sizeof(*bw));
        if (!bw)
                return nb_error_oom(e);
        bw->fd = -1;
        if (!(bw->path = strdup(path)) || asprintf(&bw->tmp, "%s.tmp.XXXXXX", path) < 0) {
                bw->tmp = NULL;
                return nb_error_oom(e);
        }
        bw->fd = mkostemp(bw->tmp, O_CLOEXEC);
        if (bw->fd < 0) {
                int r = nb_error_set(e, -errno, "cannot create %s: %m", bw->tmp);
                free(bw->tmp);
                bw->tmp = NULL;
                return r;
        }
        bw->w.f = fdopen(bw->fd, "w");
        bw->w.md = EVP_MD_CTX_new();
        if (!bw->w.f || !bw->w.md || EVP_DigestInit_ex(bw->w.md, EVP_sha256(), NULL) != 1)
                return nb_error_oom(e);
        setvbuf(bw->w.f, NULL, _IOFBF, 1 << 20);
        bw->w.version = version;
        uint8_t header[HEADER_SIZE] = {0};
        memcpy(header, SNAP_BASELINE_MAGIC, 8);
        header[8] = version;
        w_bytes(&bw->w, header, sizeof(header));
        clock_gettime(CLOCK_REALTIME, &bw->racy_after);
        bw->racy_after.tv_nsec -= SNAP_RECORD_RACY_NSEC;
        if (bw->racy_after.tv_nsec < 0) {
                bw->racy_after.tv_sec--;
                bw->racy_after.tv_nsec += 1000000000;
        }
        *ret = TAKE_PTR(bw);
        return 0;
}

int snap_baseline_writer_new(const char *path, SnapBaselineWriter **ret, NbError *e)
{
        return writer_new(path, BASELINE_VERSION, ret, e);
}

/* A live entry the save packed (SNAP_ENTRY_SAVED) whose ctime is not clearly older than the record could
 * still change within the same clock tick
 * after its stat was taken, and its stat data would then not tell (git's "racily clean" entries). It is
 * written with a ctime of 0, which no live entry has, so the next diff against the record takes it as
 * changed and reads it again. */
static bool racy(const SnapBaselineWriter *bw, const SnapEntry *en)
{
        return en->ctime_sec > bw->racy_after.tv_sec ||
               (en->ctime_sec == bw->racy_after.tv_sec && (long)en->ctime_nsec >= bw->racy_after.tv_nsec);
}

int snap_baseline_writer_add(SnapBaselineWriter *bw, const SnapEntry *en, NbError *e)
{
        SnapEntry copy;
        (void)e;
        if (bw->error < 0)
                return 0;
        if ((en->flags & SNAP_ENTRY_SAVED) && racy(bw, en)) {
                copy = *en;
                copy.ctime_sec = 0, copy.ctime_nsec = 0;
                en = &copy;
        }
        bw->error = w_entry(&bw->w, en) < 0 ? -(errno ?: EIO) : 0;
        return 0;
}

int snap_baseline_writer_commit(SnapBaselineWriter *bw, SnapBaselineStats *ret, NbError *e)
{
        Writer *w = &bw->w;
        if (bw->error < 0)
                return nb_error_set(e, bw->error, "cannot write %s: %s", bw->tmp, strerror(-bw->error));
        uint8_t tag = TAG_END;
        w_bytes(w, &tag, 1);
        w_varint(w, w->count);
        uint8_t sum[EVP_MAX_MD_SIZE];
        unsigned sum_len = 0;
        if (EVP_DigestFinal_ex(w->md, sum, &sum_len) != 1 || sum_len != TRAILER_SIZE)
                return nb_error_set(e, -EIO, "SHA-256 failed");
        struct stat st;
        if (w->failed || fwrite(sum, 1, TRAILER_SIZE, w->f) != TRAILER_SIZE || fflush(w->f) != 0 ||
            fsync(fileno(w->f)) < 0 || fstat(fileno(w->f), &st) < 0)
                return nb_error_set(e, -errno ?: -EIO, "cannot write %s: %m", bw->tmp);
        FILE *f = TAKE_PTR(w->f);
        bw->fd = -1;
        if (fclose(f) != 0)
                return nb_error_set(e, -errno, "cannot write %s: %m", bw->tmp);
        if (rename(bw->tmp, bw->path) < 0)
                return nb_error_set(e, -errno, "cannot rename %s to %s: %m", bw->tmp, bw->path);
        free(bw->tmp);
        bw->tmp = NULL;
        (void)nb_fsync_parent(bw->path);
        if (ret)
                *ret = (SnapBaselineStats){.entries = w->count, .file_size = (uint64_t)st.st_size};
        return 0;
}

int snap_baseline_write(const char *root, const SnapExcludes *ex, const char *path, SnapBaselineStats *ret,
                        NbError *e)
{
        _cleanup_(snap_baseline_writer_freep) SnapBaselineWriter *bw = NULL;
        _cleanup_snap_walk_ SnapWalk *walk = NULL;
        /* version 1: the walk has no flags to write, and an older agent (a rollback) reads it */
        int r = writer_new(path, 1, &bw, e);
        if (r >= 0)
                r = snap_walk_new(root, ex, &walk, e);
        if (r < 0)
                return r;
        const SnapEntry *en;
        while ((r = snap_walk_next(walk, &en, e)) > 0) {
                /* the tree at container start, as it was: nothing racy in it is to be read again */
                r = w_entry(&bw->w, en) < 0 ? nb_error_set(e, -EIO, "cannot write the baseline: %m") : 0;
                if (r < 0)
                        return r;
        }
        return r < 0 ? r : snap_baseline_writer_commit(bw, ret, e);
}

/* ---- reader --------------------------------------------------------------------------------------------
 */

struct SnapBaseline {
        FILE *f;
        char *what;
        uint64_t count, seen;
        char *path, *suffix;
        size_t path_len, allocated;
        char link[SNAP_LINK_MAX + 1];
        SnapEntry entry;
        uint8_t version;
        bool done;
};

SnapBaseline *snap_baseline_free(SnapBaseline *b)
{
        if (!b)
                return NULL;
        if (b->f)
                fclose(b->f);
        free(b->what);
        free(b->path);
        free(b->suffix);
        free(b);
        return NULL;
}

static int corrupt(SnapBaseline *b, NbError *e, const char *why)
{
        return nb_error_set(e, -EBADMSG,
                            "baseline %s is corrupt (%s): record a new one with `nbsnap baseline --force` "
                            "(changes made since the container started will then be taken as the base)",
                            b->what, why);
}

/* Hashes [0, size - 32) and compares with the trailer, before any entry is trusted. */
static int verify_checksum(int fd, uint64_t size)
{
        _cleanup_free_ uint8_t *buf = malloc(1 << 20);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        int r = -ENOMEM;
        if (!buf || !md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
                goto out;
        uint64_t off = 0, end = size - TRAILER_SIZE;
        while (off < end) {
                size_t want = end - off < (1 << 20) ? (size_t)(end - off) : (1 << 20);
                ssize_t n = pread(fd, buf, want, (off_t)off);
                if (n <= 0) {
                        r = n < 0 ? -errno : -EBADMSG;
                        goto out;
                }
                EVP_DigestUpdate(md, buf, (size_t)n);
                off += (uint64_t)n;
        }
        uint8_t sum[EVP_MAX_MD_SIZE], stored[TRAILER_SIZE];
        unsigned len = 0;
        if (EVP_DigestFinal_ex(md, sum, &len) != 1 ||
            pread(fd, stored, TRAILER_SIZE, (off_t)end) != TRAILER_SIZE) {
                r = -EIO;
                goto out;
        }
        r = memcmp(sum, stored, TRAILER_SIZE) == 0 ? 0 : -EBADMSG;
out:
        EVP_MD_CTX_free(md);
        return r;
}

int snap_baseline_open_fd(int fd, const char *what, SnapBaseline **ret, NbError *e)
{
        _cleanup_close_ int owned = fd;
        SnapBaseline *b = calloc(1, sizeof(*b));
        if (!b || !(b->what = strdup(what)))
                return free(b), nb_error_oom(e);
        struct stat st;
        int r;
        if (fstat(fd, &st) < 0) {
                r = nb_error_set(e, -errno, "cannot read baseline %s: %m", what);
                goto fail;
        }
        if ((uint64_t)st.st_size < HEADER_SIZE + 2 + TRAILER_SIZE ||
            (uint64_t)st.st_size > SNAP_BASELINE_FILE_MAX) {
                r = corrupt(b, e, "impossible size");
                goto fail;
        }
        uint8_t header[HEADER_SIZE];
        if (pread(fd, header, sizeof(header), 0) != (ssize_t)sizeof(header) ||
            memcmp(header, SNAP_BASELINE_MAGIC, 8) != 0 || header[8] < 1 || header[8] > BASELINE_VERSION) {
                r = corrupt(b, e, "not an nbsnap baseline of a known version");
                goto fail;
        }
        r = verify_checksum(fd, (uint64_t)st.st_size);
        if (r < 0) {
                r = r == -EBADMSG ? corrupt(b, e, "checksum mismatch")
                                  : nb_error_set(e, r, "cannot read %s", what);
                goto fail;
        }
        b->version = header[8];
        if (lseek(fd, HEADER_SIZE, SEEK_SET) < 0 || !(b->f = fdopen(fd, "r"))) {
                r = nb_error_set(e, -errno, "cannot read baseline %s: %m", what);
                goto fail;
        }
        owned = -1;
        setvbuf(b->f, NULL, _IOFBF, 1 << 20);
        *ret = b;
        return 0;
fail:
        snap_baseline_free(b);
        return r;
}

int snap_baseline_open(const char *path, SnapBaseline **ret, NbError *e)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
                if (errno == ENOENT)
                        return nb_error_set(
                                e, -ENOENT,
                                "no baseline at %s: run `nbsnap baseline` when the container starts "
                                "(nbsnap-baseline.service does it at boot)",
                                path);
                return nb_error_set(e, -errno, "cannot open baseline %s: %m", path);
        }
        return snap_baseline_open_fd(fd, path, ret, e);
}

static int r_varint(FILE *f, uint64_t *ret)
{
        uint64_t v = 0;
        for (unsigned shift = 0; shift < 64; shift += 7) {
                int c = getc_unlocked(f);
                if (c == EOF)
                        return -EBADMSG;
                if (shift == 63 && (c & 0x7e))
                        return -EBADMSG; /* more than 64 bits */
                v |= (uint64_t)(c & 0x7f) << shift;
                if (!(c & 0x80)) {
                        *ret = v;
                        return 0;
                }
        }
        return -EBADMSG;
}

static int r_u32(FILE *f, uint32_t *ret)
{
        uint64_t v;
        if (r_varint(f, &v) < 0 || v > UINT32_MAX)
                return -EBADMSG;
        *ret = (uint32_t)v;
        return 0;
}

static int r_time(FILE *f, int64_t *sec, uint32_t *nsec)
{
        uint64_t z;
        if (r_varint(f, &z) < 0 || r_u32(f, nsec) < 0 || *nsec >= 1000000000u)
                return -EBADMSG;
        *sec = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
        return 0;
}

static int read_path(SnapBaseline *b, NbError *e)
{
        uint64_t common, suffix;
        if (r_varint(b->f, &common) < 0 || r_varint(b->f, &suffix) < 0)
                return corrupt(b, e, "truncated record");
        if (common > b->path_len || suffix == 0 || common + suffix > SNAP_PATH_MAX)
                return corrupt(b, e, "bad path length");
        size_t len = (size_t)(common + suffix);
        if (len + 1 > b->allocated) {
                size_t n = (len + 1) * 2;
                char *p = realloc(b->path, n), *q = p ? realloc(b->suffix, n) : NULL;
                if (p)
                        b->path = p;
                if (!q)
                        return nb_error_oom(e);
                b->suffix = q, b->allocated = n;
        }
        if (fread(b->suffix, 1, (size_t)suffix, b->f) != suffix)
                return corrupt(b, e, "truncated path");
        /* the first `common` bytes are shared, so comparing the rest orders the whole paths */
        if (b->seen > 0 &&
            snap_path_cmp(b->path + common, b->path_len - common, b->suffix, (size_t)suffix) >= 0)
                return corrupt(b, e, "entries out of order");
        memcpy(b->path + common, b->suffix, (size_t)suffix);
        b->path[len] = '\0';
        b->path_len = len;
        if (memchr(b->path, '\0', len) || b->path[0] == '/' || b->path[len - 1] == '/' ||
            strstr(b->path, "//"))
                return corrupt(b, e, "bad path");
        return 0;
}

static int read_record(SnapBaseline *b, NbError *e)
{
        int r = read_path(b, e);
        if (r < 0)
                return r;
        SnapEntry *en = &b->entry;
        *en = (SnapEntry){.path = b->path, .path_len = b->path_len};
        if (r_u32(b->f, &en->mode) < 0 || r_u32(b->f, &en->uid) < 0 || r_u32(b->f, &en->gid) < 0 ||
            r_u32(b->f, &en->nlink) < 0 || r_varint(b->f, &en->size) < 0 ||
            r_time(b->f, &en->mtime_sec, &en->mtime_nsec) < 0 ||
            r_time(b->f, &en->ctime_sec, &en->ctime_nsec) < 0 || r_varint(b->f, &en->dev) < 0 ||
            r_varint(b->f, &en->ino) < 0 || r_varint(b->f, &en->rdev) < 0 ||
            (b->version >= 2 && r_u32(b->f, &en->flags) < 0))
                return corrupt(b, e, "truncated record");
        if (en->flags & ~SNAP_ENTRY_FLAGS)
                return corrupt(b, e, "unknown entry flags");
        if (S_ISLNK(en->mode)) {
                uint64_t n;
                if (r_varint(b->f, &n) < 0 || n > SNAP_LINK_MAX || fread(b->link, 1, (size_t)n, b->f) != n)
                        return corrupt(b, e, "bad symlink target");
                b->link[n] = '\0';
                en->link = b->link, en->link_len = (size_t)n;
        }
        b->seen++;
        return 1;
}

int snap_baseline_next(SnapBaseline *b, const SnapEntry **ret, NbError *e)
{
        if (b->done)
                return 0;
        int tag = getc_unlocked(b->f);
        if (tag == TAG_RECORD) {
                int r = read_record(b, e);
                if (r > 0)
                        *ret = &b->entry;
                return r;
        }
        uint64_t count;
        if (tag != TAG_END || r_varint(b->f, &count) < 0)
                return corrupt(b, e, "bad record tag");
        if (count != b->seen)
                return corrupt(b, e, "entry count mismatch");
        b->done = true;
        b->count = count;
        return 0;
}

uint64_t snap_baseline_count(const SnapBaseline *b)
{
        return b->seen;
}
