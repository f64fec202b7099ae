#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "agent/json.h"
#include "agent/store.h"
#include "common/fileio.h"

#define RESERVE_NAME ".reserve"

struct NbStore {
        pthread_mutex_t lock; /* guards the writes, the reserve and next_seq */
        int dir_fd, images_fd, outbox_fd;
        char *path;
        uint64_t next_seq;
        bool have_reserve;
        size_t stale_removed;
        /* Reports up to this one were acknowledged but could not be removed (state dir read-only): they are
         * no longer offered, else the reporter would send the same one again and again. They stay on disk
         * and are sent again after a restart (at least once). */
        _Atomic uint64_t acked_upto;
        bool unremoved;
};

static int mkdir_at(int dfd, const char *name, int *ret_fd)
{
        if (mkdirat(dfd, name, 0700) < 0 && errno != EEXIST)
                return -errno;
        int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

static bool seq_name(const char *name, uint64_t *ret)
{
        size_t n = strlen(name);
        if (n != 20 + 5 || strcmp(name + 20, ".json") != 0)
                return false;
        uint64_t v = 0;
        for (size_t i = 0; i < 20; i++) {
                if (name[i] < '0' || name[i] > '9')
                        return false;
                v = v * 10 + (uint64_t)(name[i] - '0');
        }
        *ret = v;
        return true;
}

/* ".<name>.tmp" files a crash left between write and rename: never a record, always safe to remove. */
static size_t remove_stale_tmp(int dfd)
{
        size_t n = 0;
        DIR *d = fdopendir(dup(dfd));
        if (d) /* a dup shares the offset: start from the top, whoever read it before */
                rewinddir(d);
        for (struct dirent *de; d && (de = readdir(d));) {
                size_t len = strlen(de->d_name);
                if (de->d_name[0] == '.' && len > 5 && strcmp(de->d_name + len - 4, ".tmp") == 0 &&
                    unlinkat(dfd, de->d_name, 0) == 0)
                        n++;
        }
        if (d)
                closedir(d);
        if (n > 0)
                (void)fsync(dfd);
        return n;
}

/* The reserve: NB_STORE_RESERVE_BYTES allocated to a file while there is room, released when a write
 * finds the disk full, so that a running save can still record how it ended. */
static int reserve_create(NbStore *s)
{
        if (s->have_reserve)
                return 0;
        _cleanup_close_ int fd =
                openat(s->dir_fd, RESERVE_NAME, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        int r = posix_fallocate(fd, 0, NB_STORE_RESERVE_BYTES);
        if (r == 0 && fsync(fd) < 0)
                r = errno;
        if (r != 0) {
                (void)unlinkat(s->dir_fd, RESERVE_NAME, 0);
                return -r;
        }
        (void)fsync(s->dir_fd);
        s->have_reserve = true;
        return 0;
}

static bool reserve_release(NbStore *s)
{
        if (!s->have_reserve)
                return false;
        s->have_reserve = false;
        return unlinkat(s->dir_fd, RESERVE_NAME, 0) == 0;
}

int nb_store_open(const char *state_dir, NbStore **ret, NbError *e)
{
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return nb_error_set(e, -errno, "cannot create state dir %s: %m", state_dir);
        _cleanup_close_ int dfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return nb_error_set(e, -errno, "cannot open state dir %s: %m", state_dir);
        NbStore *s = calloc(1, sizeof(*s));
        if (!s || !(s->path = strdup(state_dir))) {
                free(s);
                return nb_error_oom(e);
        }
        pthread_mutex_init(&s->lock, NULL);
        s->images_fd = s->outbox_fd = -1;
        s->dir_fd = TAKE_FD(dfd);
        int r = mkdir_at(s->dir_fd, "images", &s->images_fd);
        if (r >= 0)
                r = mkdir_at(s->dir_fd, "outbox", &s->outbox_fd);
        if (r < 0) {
                nb_store_free(s);
                errno = -r;
                return nb_error_set(e, r, "cannot create %s/images and %s/outbox: %m", state_dir, state_dir);
        }
        s->stale_removed = remove_stale_tmp(s->images_fd) + remove_stale_tmp(s->outbox_fd);
        (void)reserve_create(s); /* best effort here: nb_store_room() tells */
        /* sequence numbers go on from the highest one left */
        s->next_seq = 1;
        DIR *d = fdopendir(dup(s->outbox_fd));
        if (d)
                rewinddir(d);
        for (struct dirent *de; d && (de = readdir(d));) {
                uint64_t seq;
                if (seq_name(de->d_name, &seq) && seq >= s->next_seq)
                        s->next_seq = seq + 1;
        }
        if (d)
                closedir(d);
        *ret = s;
        return 0;
}

NbStore *nb_store_free(NbStore *s)
{
        if (!s)
                return NULL;
        if (s->images_fd >= 0)
                close(s->images_fd);
        if (s->outbox_fd >= 0)
                close(s->outbox_fd);
        if (s->dir_fd >= 0)
                close(s->dir_fd);
        pthread_mutex_destroy(&s->lock);
        free(s->path);
        free(s);
        return NULL;
}

/* A full disk releases the reserve and tries once more. Called with the lock held. */
static int store_write(NbStore *s, int dfd, const char *name, const char *data, size_t size)
{
        int r = nb_write_file_atomic_at(dfd, name, data, size, 0600);
        if ((r == -ENOSPC || r == -EDQUOT) && reserve_release(s))
                r = nb_write_file_atomic_at(dfd, name, data, size, 0600);
        return r;
}

size_t nb_store_stale_removed(const NbStore *s)
{
        return s->stale_removed;
}

int nb_store_room(NbStore *s, NbError *e)
{
        struct statvfs v;
        pthread_mutex_lock(&s->lock);
        int r = fstatvfs(s->dir_fd, &v) < 0 ? -errno : 0;
        if (r >= 0 && (v.f_flag & ST_RDONLY))
                r = -EROFS;
        if (r >= 0)
                r = reserve_create(s);
        if (r >= 0 && fstatvfs(s->dir_fd, &v) < 0)
                r = -errno;
        uint64_t avail = (uint64_t)v.f_bavail * v.f_frsize;
        if (r >= 0 && (avail < NB_STORE_ROOM_MIN || (v.f_files > 0 && v.f_favail < NB_STORE_ROOM_INODES)))
                r = -ENOSPC;
        pthread_mutex_unlock(&s->lock);
        if (r == -ENOSPC || r == -EDQUOT)
                return nb_error_set(
                        e, r,
                        "the state dir %s is full: a save needs %u KB free there besides a "
                        "reserve of %u KB (to record how it ends); free some space and save again",
                        s->path, NB_STORE_ROOM_MIN / 1024, NB_STORE_RESERVE_BYTES / 1024);
        if (r < 0) {
                errno = -r;
                return nb_error_set(
                        e, r, "the state dir %s cannot be written (%m); a save cannot be recorded", s->path);
        }
        return 0;
}

static int read_small(int dfd, const char *name, char **ret)
{
        return nb_read_file_at(dfd, name, NB_STORE_RECORD_MAX, NB_READ_NOFOLLOW | NB_READ_REGULAR, ret,
                               NULL);
}

int nb_store_put_image(NbStore *s, const NbImage *img, NbError *e)
{
        char name[64];
        if (!nb_image_id_valid(img->id))
                return nb_error_set(e, -EINVAL, "image id '%s' is not a UUID", img->id);
        snprintf(name, sizeof(name), "%s.json", img->id);
        _cleanup_cjson_ cJSON *j = nb_image_record_json(img);
        _cleanup_free_ char *text = j ? cJSON_Print(j) : NULL;
        if (!text)
                return nb_error_oom(e);
        pthread_mutex_lock(&s->lock);
        int r = store_write(s, s->images_fd, name, text, strlen(text));
        pthread_mutex_unlock(&s->lock);
        if (r < 0) {
                errno = -r;
                return nb_error_set(e, r, "cannot write the record of image %s: %m", img->id);
        }
        return 0;
}

int nb_store_remove_image(NbStore *s, const char *id)
{
        char name[64];
        if (!nb_image_id_valid(id))
                return -EINVAL;
        snprintf(name, sizeof(name), "%s.json", id);
        if (unlinkat(s->images_fd, name, 0) < 0 && errno != ENOENT)
                return -errno;
        return fsync(s->images_fd) < 0 ? -errno : 0;
}

static int load_one(NbStore *s, const char *name, NbImage **ret)
{
        _cleanup_free_ char *text = NULL;
        int r = read_small(s->images_fd, name, &text);
        if (r < 0)
                return r;
        _cleanup_cjson_ cJSON *j = cJSON_Parse(text);
        NbImage *img = calloc(1, sizeof(*img));
        if (!img)
                return -ENOMEM;
        NbError e = {0};
        r = j ? nb_image_from_json(j, img, &e) : -EBADMSG;
        if (r < 0 || strlen(name) != 36 + 5 || strncmp(name, img->id, 36) != 0) {
                nb_image_free(img);
                return r < 0 ? r : -EBADMSG;
        }
        *ret = img;
        return 0;
}

int nb_store_load_images(NbStore *s, NbImage ***ret, size_t *ret_n, size_t *ret_bad, NbError *e)
{
        DIR *d = fdopendir(dup(s->images_fd));
        if (!d)
                return nb_error_set(e, -errno, "cannot list the image records: %m");
        rewinddir(d);
        NbImage **v = NULL;
        size_t n = 0, bad = 0;
        int r = 0;
        for (struct dirent *de; (de = readdir(d));) {
                size_t len = strlen(de->d_name);
                if (de->d_name[0] == '.' || len < 5 || strcmp(de->d_name + len - 5, ".json") != 0)
                        continue;
                NbImage *img = NULL;
                if (load_one(s, de->d_name, &img) < 0) {
                        bad++;
                        continue;
                }
                NbImage **nv = n < NB_STORE_IMAGES_MAX * 2 ? realloc(v, (n + 1) * sizeof(*v)) : NULL;
                if (!nv) {
                        nb_image_free(img);
                        r = nb_error_set(e, -ENOMEM, "too many image records (or out of memory)");
                        break;
                }
                v = nv;
                v[n++] = img;
        }
        closedir(d);
        if (r < 0) {
                for (size_t i = 0; i < n; i++)
                        nb_image_free(v[i]);
                free(v);
                return r;
        }
        *ret = v;
        *ret_n = n;
        *ret_bad = bad;
        return 0;
}

int nb_outbox_push(NbStore *s, const char *json, uint64_t *ret_seq, NbError *e)
{
        pthread_mutex_lock(&s->lock);
        char name[32];
        uint64_t seq = s->next_seq;
        int r = 0;
        if (nb_outbox_count(s) >= NB_OUTBOX_MAX)
                r = nb_error_set(e, -ENOSPC, "the outbox holds %d unacknowledged reports already",
                                 NB_OUTBOX_MAX);
        if (r >= 0) {
                snprintf(name, sizeof(name), "%020" PRIu64 ".json", seq);
                r = store_write(s, s->outbox_fd, name, json, strlen(json));
                if (r < 0) {
                        errno = -r;
                        r = nb_error_set(e, r, "cannot write report %s to the outbox: %m", name);
                } else
                        s->next_seq++;
        }
        pthread_mutex_unlock(&s->lock);
        if (r >= 0 && ret_seq)
                *ret_seq = seq;
        return r;
}

static int outbox_scan(NbStore *s, uint64_t *ret_min, size_t *ret_count)
{
        DIR *d = fdopendir(dup(s->outbox_fd));
        if (!d)
                return -errno;
        rewinddir(d);
        uint64_t min = UINT64_MAX;
        size_t count = 0;
        uint64_t acked = atomic_load(&s->acked_upto);
        for (struct dirent *de; (de = readdir(d));) {
                uint64_t seq;
                if (!seq_name(de->d_name, &seq) || seq <= acked)
                        continue;
                count++;
                if (seq < min)
                        min = seq;
        }
        closedir(d);
        *ret_min = min;
        *ret_count = count;
        return 0;
}

size_t nb_outbox_count(NbStore *s)
{
        uint64_t min;
        size_t count = 0;
        return outbox_scan(s, &min, &count) < 0 ? 0 : count;
}

int nb_outbox_peek(NbStore *s, uint64_t *ret_seq, char **ret_json, NbError *e)
{
        uint64_t min;
        size_t count;
        int r = outbox_scan(s, &min, &count);
        if (r < 0) {
                errno = -r;
                return nb_error_set(e, r, "cannot list the outbox: %m");
        }
        if (count == 0)
                return 0;
        char name[32];
        snprintf(name, sizeof(name), "%020" PRIu64 ".json", min);
        r = read_small(s->outbox_fd, name, ret_json);
        if (r < 0) {
                errno = -r;
                return nb_error_set(e, r, "cannot read report %s: %m", name);
        }
        *ret_seq = min;
        return 1;
}

static int outbox_unlink(NbStore *s, uint64_t seq)
{
        char name[32];
        snprintf(name, sizeof(name), "%020" PRIu64 ".json", seq);
        return unlinkat(s->outbox_fd, name, 0) < 0 && errno != ENOENT ? -errno : 0;
}

/* Acknowledged reports that could not be removed before: removed now if the state dir lets us. */
static void outbox_unlink_acked(NbStore *s)
{
        DIR *d = fdopendir(dup(s->outbox_fd));
        if (!d)
                return;
        rewinddir(d);
        uint64_t acked = atomic_load(&s->acked_upto);
        bool left = false;
        for (struct dirent *de; (de = readdir(d));) {
                uint64_t seq;
                if (seq_name(de->d_name, &seq) && seq <= acked && outbox_unlink(s, seq) < 0)
                        left = true;
        }
        closedir(d);
        s->unremoved = left;
}

int nb_outbox_ack(NbStore *s, uint64_t seq)
{
        pthread_mutex_lock(&s->lock);
        int r = outbox_unlink(s, seq);
        if (r < 0) {
                if (seq > atomic_load(&s->acked_upto))
                        atomic_store(&s->acked_upto, seq);
                s->unremoved = true;
        } else if (s->unremoved)
                outbox_unlink_acked(s);
        if (r >= 0 && fsync(s->outbox_fd) < 0)
                r = -errno;
        pthread_mutex_unlock(&s->lock);
        return r;
}
