#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "snap-util.h"

int snap_error_set(SnapError *e, int code, const char *fmt, ...)
{
        if (code > 0)
                code = -code;
        if (code == 0)
                code = -EIO;
        if (e) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
                va_end(ap);
                e->code = code;
        }
        return code;
}

unsigned snap_cpus(unsigned max)
{
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        if (n < 1)
                return 1;
        return (unsigned long)n > max ? max : (unsigned)n;
}

void snap_digest_final(EVP_MD_CTX *ctx, char out[72])
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned len = 0;
        EVP_DigestFinal_ex(ctx, md, &len);
        int o = snprintf(out, 72, "sha256:");
        for (unsigned i = 0; i < len && o + 2 < 72; i++)
                o += snprintf(out + o, 72 - (size_t)o, "%02x", md[i]);
}
