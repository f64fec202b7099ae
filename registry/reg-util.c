#include <stdio.h>
#include <string.h>

#include "reg-util.h"

int reg_error_set(RegError *e, int code, const char *fmt, ...)
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

int reg_error_wrap(RegError *e, int code, const char *fmt, ...)
{
        if (code > 0)
                code = -code;
        if (code == 0)
                code = -EIO;
        if (!e)
                return code;
        char old[sizeof(e->msg)], prefix[sizeof(e->msg)];
        memcpy(old, e->msg, sizeof(old));
        old[sizeof(old) - 1] = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(prefix, sizeof(prefix), fmt, ap);
        va_end(ap);
        size_t n = strnlen(prefix, sizeof(e->msg) - 1);
        memcpy(e->msg, prefix, n);
        e->msg[n] = 0;
        if (old[0] && e->code < 0 && n + 3 < sizeof(e->msg)) {
                memcpy(e->msg + n, ": ", 2);
                size_t m = strnlen(old, sizeof(e->msg) - n - 3);
                memcpy(e->msg + n + 2, old, m);
                e->msg[n + 2 + m] = 0;
        }
        e->code = code;
        return code;
}
