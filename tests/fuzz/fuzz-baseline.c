/* Fuzzes the baseline reader. The input's last 32 bytes are replaced by the SHA-256 of the rest, so the
 * fuzzer reaches the record parser instead of stopping at the checksum. */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "snapshot/baseline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > (1u << 20))
                return 0;
        uint8_t *copy = malloc(size + 1);
        if (!copy)
                return 0;
        memcpy(copy, data, size);
        if (size >= 32) {
                unsigned len = 0;
                EVP_Digest(copy, size - 32, copy + size - 32, &len, EVP_sha256(), NULL);
        }
        int fd = memfd_create("baseline", MFD_CLOEXEC);
        if (fd < 0 || write(fd, copy, size) != (ssize_t)size) {
                if (fd >= 0)
                        close(fd);
                free(copy);
                return 0;
        }
        free(copy);
        SnapBaseline *b = NULL;
        NbError e = {0};
        if (snap_baseline_open_fd(fd, "fuzz", &b, &e) < 0)
                return 0;
        const SnapEntry *en;
        while (snap_baseline_next(b, &en, &e) > 0)
                if (en->path_len != strlen(en->path))
                        abort();
        snap_baseline_free(b);
        return 0;
}
