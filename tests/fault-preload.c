/* fault-preload.c: an LD_PRELOAD module for integration tests that makes files look as if they shrank while
 * a save reads them: pread() of a file whose path contains $NBSNAP_FAULT_SHRINK returns 0 (end of file).
 * Without the variable it changes nothing. Built only for the tests (tests/CMakeLists.txt), never installed.
 */
/* both symbols are defined here: no redirection of pread to pread64 */
#undef _FILE_OFFSET_BITS
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int shrunk(int fd)
{
        const char *what = getenv("NBSNAP_FAULT_SHRINK");
        char link[64], path[4096];
        if (!what || !*what)
                return 0;
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof(path) - 1);
        if (n < 0)
                return 0;
        path[n] = '\0';
        return strstr(path, what) != NULL;
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset)
{
        static ssize_t (*real)(int, void *, size_t, off_t);
        if (!real)
                *(void **)&real = dlsym(RTLD_NEXT, "pread64");
        if (shrunk(fd))
                return 0;
        return real(fd, buf, count, offset);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset)
{
        return pread64(fd, buf, count, offset);
}
