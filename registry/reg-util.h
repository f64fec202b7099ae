/* reg-util.h: the small helpers every registry module uses: cleanup attributes for owned resources,
 * ownership moves, and RegError, the error that carries text a person can act on up to the agent. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))

static inline void reg_freep(void *p)
{
        free(*(void **)p);
}
static inline void reg_closep(int *fd)
{
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}
#define _cleanup_free_ _cleanup_(reg_freep)
#define _cleanup_close_ _cleanup_(reg_closep)

#define TAKE_PTR(p)                                                                                             \
        ({                                                                                                      \
                __typeof__(p) _p = (p);                                                                         \
                (p) = NULL;                                                                                     \
                _p;                                                                                             \
        })
#define TAKE_FD(fd)                                                                                             \
        ({                                                                                                      \
                int _fd = (fd);                                                                                 \
                (fd) = -1;                                                                                      \
                _fd;                                                                                            \
        })
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

/* An error with a message for people. code is a negative errno. */
typedef struct RegError {
        int code;        /* negative errno */
        int http_status; /* the registry's HTTP status when the error came from a response, else 0 */
        char msg[1024];  /* e.g. "registry refused the push: DENIED: requested access to the resource is denied" */
} RegError;

/* Fills e (when not NULL) and returns code (negative errno), so callers can `return reg_error_set(...)`. */
int reg_error_set(RegError *e, int code, const char *fmt, ...) _printf_(3, 4);
