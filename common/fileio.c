#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fileio.h"
#include "common/macro.h"

int nb_read_file_at(int dir_fd, const char *path, size_t max, unsigned flags, char **ret, size_t *ret_size)
{
        _cleanup_close_ int fd = openat(
                dir_fd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | (flags & NB_READ_NOFOLLOW ? O_NOFOLLOW : 0));
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return -EISDIR;
        if ((flags & NB_READ_REGULAR) && !S_ISREG(st.st_mode))
                return -EINVAL;
        if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max)
                return -EFBIG;
        /* Read to the end, whatever fstat() said: a file may grow meanwhile, and a device or pipe (a config
         * given as /dev/null or <(...)) has no size. One byte more than max tells that it is too big. */
        size_t cap = (S_ISREG(st.st_mode) ? (size_t)st.st_size : 4096) + 2, len = 0;
        if (cap > max + 2)
                cap = max + 2;
        _cleanup_free_ char *buf = malloc(cap);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                if (len + 1 == cap) {
                        if (len > max)
                                return -EFBIG;
                        size_t ncap = cap * 2 > max + 2 ? max + 2 : cap * 2;
                        char *p = realloc(buf, ncap);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                        cap = ncap;
                }
                ssize_t n = read(fd, buf + len, cap - 1 - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if (len > max)
                return -EFBIG;
        buf[len] = 0;
        if (ret_size)
                *ret_size = len;
        *ret = TAKE_PTR(buf);
        return 0;
}

int nb_write_all(int fd, const void *data, size_t size)
{
        const char *p = data;
        for (size_t done = 0; done < size;) {
                ssize_t n = write(fd, p + done, size - done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -EIO;
                done += (size_t)n;
        }
        return 0;
}

int nb_write_file_atomic_at(int dir_fd, const char *name, const void *data, size_t size, mode_t mode)
{
        char tmp[256];
        if (strchr(name, '/') || snprintf(tmp, sizeof(tmp), ".%s.tmp", name) >= (int)sizeof(tmp))
                return -ENAMETOOLONG;
        _cleanup_close_ int fd =
                openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return -errno;
        int r = nb_write_all(fd, data, size);
        if (r == 0 && (fsync(fd) < 0 || renameat(dir_fd, tmp, dir_fd, name) < 0))
                r = -errno;
        if (r < 0) {
                (void)unlinkat(dir_fd, tmp, 0);
                return r;
        }
        return fsync(dir_fd) < 0 ? -errno : 0;
}

int nb_fsync_parent(const char *path)
{
        _cleanup_free_ char *copy = strdup(path);
        if (!copy)
                return -ENOMEM;
        _cleanup_close_ int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) < 0)
                return -errno;
        return 0;
}
