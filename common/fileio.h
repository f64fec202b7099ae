/* fileio.h: whole small files in and out. Reads are bounded (every file a user or a peer controls has a
 * named limit) and refuse what is not a regular file; writes are atomic: a temporary file in the same
 * directory, fsync'ed, renamed over the target, the directory fsync'ed, so a crash leaves the old content or
 * the new one, never half of either. */
#pragma once

#include <fcntl.h>
#include <stddef.h>
#include <sys/types.h>

enum {
        NB_READ_NOFOLLOW = 1 << 0, /* a symlink is refused (-ELOOP) */
        NB_READ_REGULAR = 1 << 1,  /* anything but a regular file is refused (-EINVAL) */
};

/* Reads the file path (relative to dir_fd, or AT_FDCWD) of at most max bytes into a NUL-terminated buffer:
 * a regular file, or (without NB_READ_REGULAR) a device or pipe read to its end, such as a config given as
 * /dev/null. -EFBIG when larger, -EISDIR for a directory. */
int nb_read_file_at(int dir_fd, const char *path, size_t max, unsigned flags, char **ret, size_t *ret_size);

static inline int nb_read_file(const char *path, size_t max, char **ret, size_t *ret_size)
{
        return nb_read_file_at(AT_FDCWD, path, max, 0, ret, ret_size);
}

/* Writes data to dir_fd/name atomically (".name.tmp", write, fsync, rename, fsync dir_fd) with mode. A
 * failed write removes the temporary file. */
int nb_write_file_atomic_at(int dir_fd, const char *name, const void *data, size_t size, mode_t mode);

/* Writes all of data to fd, retrying short writes and EINTR. */
int nb_write_all(int fd, const void *data, size_t size);

/* fsync()s the directory that holds path (after a rename into it). */
int nb_fsync_parent(const char *path);
