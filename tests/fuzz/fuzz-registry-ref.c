/* fuzz-registry-ref.c: the docker reference grammar and the name validators. */
#include <stdint.h>
#include <string.h>

#include "registry/registry-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > 4096)
                return 0;
        char *s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = 0;
        RegRef *r = NULL;
        NbError e = {0};
        if (reg_ref_parse(s, &r, &e) >= 0) {
                /* what parses is valid piece by piece */
                if (!reg_repository_valid(r->repository) || (r->tag && !reg_tag_valid(r->tag)) ||
                    (r->digest && !reg_digest_valid(r->digest)) ||
                    (r->host && !reg_host_valid(r->host, strlen(r->host))))
                        abort();
                reg_ref_free(r);
        } else if (strnlen(e.msg, sizeof(e.msg)) == 0 || r) {
                abort();
        }
        (void)reg_repository_valid(s);
        (void)reg_tag_valid(s);
        (void)reg_digest_valid(s);
        (void)reg_host_valid(s, strlen(s));
        free(s);
        return 0;
}
