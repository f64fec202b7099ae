#include <stdio.h>
#include <string.h>

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
