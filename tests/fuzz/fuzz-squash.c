/* Fuzzes the squash's reading of a layer (names cleaned and classified, the index, the winners written): the
 * input is one layer (a tar, plain or compressed), indexed and written as the only merged layer over an
 * empty live root with no changes. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "snapshot/snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[] = "/tmp/fuzz-squash-XXXXXX";
static char baseline[sizeof(root) + 16];

static void cleanup(void)
{
        unlink(baseline);
        rmdir(root);
}

static bool setup(void)
{
        static int ready = 0;
        if (ready)
                return ready > 0;
        NbError e = {0};
        ready = -1;
        if (!mkdtemp(root))
                return false;
        snprintf(baseline, sizeof(baseline), "%s.baseline", root);
        atexit(cleanup);
        if (snap_baseline_write(root, NULL, baseline, NULL, &e) < 0)
                return false;
        ready = 1;
        return true;
}

static int discard(void *userdata, const void *data, size_t size)
{
        (void)userdata, (void)data, (void)size;
        return 0;
}

static void squash(int fd)
{
        NbError e = {0};
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        _cleanup_snap_baseline_ SnapBaseline *b = NULL;
        _cleanup_snap_walk_ SnapWalk *w = NULL;
        _cleanup_snap_layer_ SnapLayer *l = NULL;
        if (snap_squash_new(1, &q, &e) < 0 || snap_baseline_open(baseline, &b, &e) < 0 ||
            snap_walk_new(root, NULL, &w, &e) < 0 || snap_squash_changes(q, b, w, NULL, &e) < 0 ||
            snap_layer_new(discard, NULL, NULL, &l, &e) < 0)
                abort();
        if (snap_squash_index(q, 0, fd, &e) < 0 || lseek(fd, 0, SEEK_SET) < 0)
                return;
        if (snap_squash_write(q, 0, fd, root, l, &e) >= 0)
                snap_layer_finish(l, &e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > (1u << 20) || !setup())
                return 0;
        int fd = memfd_create("layer", MFD_CLOEXEC);
        if (fd < 0)
                return 0;
        if (write(fd, data, size) == (ssize_t)size && lseek(fd, 0, SEEK_SET) == 0)
                squash(fd);
        close(fd);
        return 0;
}
