/* Unit tests of common/fileio: bounded whole-file reads, atomic writes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fileio.h"
#include "common/macro.h"
#include "tests.h"

static char dir[] = "/tmp/test-fileio.XXXXXX";

static void test_read(int dfd)
{
        ASSERT_OK(nb_write_file_atomic_at(dfd, "a", "hello", 5, 0600));
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        ASSERT_OK(nb_read_file_at(dfd, "a", 5, 0, &buf, &size));
        ASSERT_EQ(size, 5);
        ASSERT_STREQ(buf, "hello"); /* NUL-terminated */
        char *p = NULL;
        ASSERT_EQ(nb_read_file_at(dfd, "a", 4, 0, &p, NULL), -EFBIG); /* the limit holds */
        ASSERT_TRUE(p == NULL);                                       /* nothing written on failure */
        ASSERT_EQ(nb_read_file_at(dfd, "missing", 4, 0, &p, NULL), -ENOENT);
        ASSERT_OK(mkdirat(dfd, "d", 0700));
        ASSERT_EQ(nb_read_file_at(dfd, "d", 4, 0, &p, NULL), -EISDIR);
        ASSERT_OK(symlinkat("a", dfd, "link"));
        ASSERT_EQ(nb_read_file_at(dfd, "link", 5, NB_READ_NOFOLLOW, &p, NULL), -ELOOP);
        _cleanup_free_ char *via = NULL;
        ASSERT_OK(nb_read_file_at(dfd, "link", 5, 0, &via, NULL));
        _cleanup_free_ char *devnull = NULL; /* a device is read to its end */
        ASSERT_OK(nb_read_file("/dev/null", 5, &devnull, &size));
        ASSERT_EQ(size, 0);
        ASSERT_EQ(nb_read_file("/dev/zero", 5000, &p, NULL), -EFBIG); /* the limit holds without a size */
        ASSERT_EQ(nb_read_file_at(dfd, "/dev/null", 5, NB_READ_REGULAR, &p, NULL), -EINVAL);
        _cleanup_free_ char *empty = NULL;
        ASSERT_OK(nb_write_file_atomic_at(dfd, "empty", "", 0, 0600));
        ASSERT_OK(nb_read_file_at(dfd, "empty", 0, 0, &empty, &size));
        ASSERT_EQ(size, 0);
}

static void test_write(int dfd)
{
        ASSERT_OK(nb_write_file_atomic_at(dfd, "b", "one", 3, 0640));
        ASSERT_OK(nb_write_file_atomic_at(dfd, "b", "second", 6, 0640)); /* replaces */
        struct stat st;
        ASSERT_OK(fstatat(dfd, "b", &st, 0));
        ASSERT_EQ(st.st_size, 6);
        ASSERT_EQ(st.st_mode & 07777, 0640 & ~0022 & 07777);
        ASSERT_EQ(faccessat(dfd, ".b.tmp", F_OK, 0), -1); /* no temporary file left */
        ASSERT_EQ(nb_write_file_atomic_at(dfd, "x/y", "z", 1, 0600), -ENAMETOOLONG); /* a name, not a path */
        /* a failed write leaves the old content and no temporary file */
        ASSERT_OK(nb_write_file_atomic_at(dfd, "c", "old", 3, 0600));
        ASSERT_OK(mkdirat(dfd, ".c.tmp", 0700)); /* the temporary file cannot be created */
        ASSERT_EQ(nb_write_file_atomic_at(dfd, "c", "new", 3, 0600), -EISDIR);
        _cleanup_free_ char *c = NULL;
        ASSERT_OK(nb_read_file_at(dfd, "c", 16, 0, &c, NULL));
        ASSERT_STREQ(c, "old");
}

int main(void)
{
        umask(0022);
        ASSERT_TRUE(mkdtemp(dir) != NULL);
        _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ASSERT_OK(dfd);
        test_read(dfd);
        test_write(dfd);
        ASSERT_OK(nb_fsync_parent("/tmp/test-fileio-nonexistent-file"));
        char cmd[64];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        ASSERT_EQ(system(cmd), 0);
        printf("test-fileio: ok\n");
        return 0;
}
