/* snap-util.h: the small helpers every snapshot module uses: cleanup attributes for owned resources,
 * ownership moves, and SnapError, the error that carries text a person can act on up to the agent. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef NB_UTIL_MACROS
#define NB_UTIL_MACROS
/* shared by snap-util.h and reg-util.h: the agent includes both */
#define _cleanup_(f)   __attribute__((cleanup(f)))
#define _unused_       __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))

#endif

static inline void snap_freep(void *p)
{
        free(*(void **)p);
}
static inline void snap_closep(int *fd)
{
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}
#ifndef _cleanup_free_
#define _cleanup_free_  _cleanup_(snap_freep)
#define _cleanup_close_ _cleanup_(snap_closep)

#endif
#ifndef TAKE_PTR
#define TAKE_PTR(p)                                                                                         \
        ({                                                                                                  \
                __typeof__(p) _p = (p);                                                                     \
                (p) = NULL;                                                                                 \
                _p;                                                                                         \
        })
#define TAKE_FD(fd)                                                                                         \
        ({                                                                                                  \
                int _fd = (fd);                                                                             \
                (fd) = -1;                                                                                  \
                _fd;                                                                                        \
        })
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#endif

/* An error with a message for people. code is a negative errno. */
typedef struct SnapError {
        int code;
        char msg[1024];
} SnapError;

/* Fills e (when not NULL) and returns code (negative errno), so callers can `return snap_error_set(...)`. */
int snap_error_set(SnapError *e, int code, const char *fmt, ...) _printf_(3, 4);

/* The compressors' shared bits. The online CPU count, at least 1, at most max. */
unsigned snap_cpus(unsigned max);
/* Finishes an EVP digest into "sha256:<hex>" (the OCI digest form); out has room for 72 bytes. */
typedef struct evp_md_ctx_st EVP_MD_CTX;
void snap_digest_final(EVP_MD_CTX *ctx, char out[72]);
