#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"

static int negative(int code)
{
        if (code > 0)
                return -code;
        return code == 0 ? -EIO : code;
}

static int error_vset(NbError *e, int code, int http_status, const char *fmt, va_list ap)
{
        code = negative(code);
        if (e) {
                vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
                e->code = code;
                e->http_status = http_status;
        }
        return code;
}

int nb_error_set(NbError *e, int code, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        code = error_vset(e, code, 0, fmt, ap);
        va_end(ap);
        return code;
}

int nb_error_set_http(NbError *e, int code, int http_status, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        code = error_vset(e, code, http_status, fmt, ap);
        va_end(ap);
        return code;
}

int nb_error_wrap(NbError *e, int code, const char *fmt, ...)
{
        if (code == 0 && e && e->code < 0)
                code = e->code;
        code = negative(code);
        if (!e)
                return code;

        char prefix[sizeof(e->msg)];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(prefix, sizeof(prefix), fmt, ap);
        va_end(ap);

        char old[sizeof(e->msg)];
        if (e->code < 0 && e->msg[0])
                memcpy(old, e->msg, sizeof(old));
        else
                snprintf(old, sizeof(old), "%s", strerror(-code));
        old[sizeof(old) - 1] = 0;
        /* prefix, ": ", old, cut to fit (snprintf with two full buffers would warn of truncation) */
        size_t n = prefix[0] ? strnlen(prefix, sizeof(e->msg) - 1) : 0;
        memcpy(e->msg, prefix, n);
        if (n > 0 && n + 2 < sizeof(e->msg)) {
                memcpy(e->msg + n, ": ", 2);
                n += 2;
        }
        size_t m = strnlen(old, sizeof(e->msg) - 1 - n);
        memcpy(e->msg + n, old, m);
        e->msg[n + m] = 0;
        e->code = code;
        return code;
}

int nb_error_oom(NbError *e)
{
        return nb_error_set(e, -ENOMEM, "out of memory");
}

void nb_error_clear(NbError *e)
{
        if (e) {
                e->code = 0;
                e->http_status = 0;
                e->msg[0] = 0;
        }
}
