#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "util.h"

int nb_error_set(NbError *e, int code, const char *fmt, ...)
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

static int from_lib(NbError *e, int lib_code, const char *lib_msg, int code, const char *context)
{
        if (code == 0)
                code = lib_code;
        if (!lib_msg || !lib_msg[0])
                return nb_error_set(e, code, "%s: %s", context, strerror(-code > 0 ? -code : EIO));
        if (!context)
                return nb_error_set(e, code, "%s", lib_msg);
        return nb_error_set(e, code, "%s: %s", context, lib_msg);
}

int nb_error_from_snap(NbError *e, const SnapError *s, int code, const char *context)
{
        return from_lib(e, s->code, s->msg, code, context);
}

int nb_error_from_reg(NbError *e, const RegError *s, int code, const char *context)
{
        return from_lib(e, s->code, s->msg, code, context);
}

int nb_uuid(char ret[static 37])
{
        uint8_t b[16];
        if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
                return -errno ?: -EIO;
        b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
        b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
        snprintf(ret, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                 b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
        return 0;
}

int64_t nb_now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void nb_rfc3339(int64_t ms, char ret[static 32])
{
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(ret, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

#include <openssl/evp.h>

int nb_sha256_digest(const void *data, size_t size, char ret[static 72])
{
        uint8_t md[EVP_MAX_MD_SIZE];
        unsigned len = 0;
        if (EVP_Digest(data, size, md, &len, EVP_sha256(), NULL) != 1 || len != 32)
                return -EIO;
        memcpy(ret, "sha256:", 7);
        for (unsigned i = 0; i < len; i++)
                snprintf(ret + 7 + 2 * i, 3, "%02x", md[i]);
        return 0;
}
