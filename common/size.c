#include <errno.h>
#include <stdio.h>

#include "common/size.h"

static int suffix_shift(char c)
{
        switch (c) {
        case 'K':
        case 'k':
                return 10;
        case 'M':
        case 'm':
                return 20;
        case 'G':
        case 'g':
                return 30;
        case 'T':
        case 't':
                return 40;
        default:
                return -1;
        }
}

int nb_size_parse(const char *s, uint64_t *ret)
{
        if (!s || !*s)
                return -EINVAL;
        uint64_t v = 0;
        const char *p = s;
        for (; *p >= '0' && *p <= '9'; p++) {
                v = v * 10 + (uint64_t)(*p - '0');
                if (v > NB_SIZE_MAX)
                        return -ERANGE;
        }
        if (p == s)
                return -EINVAL; /* no digits: "", "-1", "+1", " 1", "K" */
        int shift = 0;
        if (*p) {
                shift = suffix_shift(*p);
                if (shift < 0 || p[1])
                        return -EINVAL;
        }
        if (v > NB_SIZE_MAX >> shift)
                return -ERANGE;
        *ret = v << shift;
        return 0;
}

const char *nb_size_format(uint64_t n, char buf[static NB_SIZE_STR_MAX])
{
        static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        if (n < 1024) {
                snprintf(buf, NB_SIZE_STR_MAX, "%u B", (unsigned)n);
                return buf;
        }
        double v = (double)n / 1024;
        unsigned u = 0;
        while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0]))
                v /= 1024, u++;
        snprintf(buf, NB_SIZE_STR_MAX, "%.1f %s", v, units[u]);
        return buf;
}
