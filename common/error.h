/* error.h: the one error type of nbsnap. Functions return an int (a negative errno on failure) and, where a
 * person must see why, fill an NbError on the way: the libraries say what failed ("cannot read /x:
 * Permission denied", "registry refused the push: DENIED: ..."), callers wrap it with what they were doing
 * ("cannot pack the layer: ..."), the agent shows the result in status_message. Modelled on crun's
 * src/libcrun/error.h (crun_make_error, crun_error_wrap).
 *
 * Messages speak in one voice: lower case, "cannot <verb> <object>: <reason>".
 */
#pragma once

#include <stdbool.h>

#include "common/macro.h"

#define NB_ERROR_MSG_MAX 2048

typedef struct NbError {
        int code;        /* negative errno; 0 while no error is held */
        int http_status; /* the registry's HTTP status when the error came from a response, else 0 */
        char msg[NB_ERROR_MSG_MAX];
} NbError;

/* Fills e (when not NULL) with code and a message, clears http_status, and returns code as a negative errno
 * (0 and positive codes are made negative; 0 becomes -EIO), so callers can `return nb_error_set(...)`. */
int nb_error_set(NbError *e, int code, const char *fmt, ...) _printf_(3, 4);

/* As nb_error_set(), with the HTTP status of the response that caused it. */
int nb_error_set_http(NbError *e, int code, int http_status, const char *fmt, ...) _printf_(4, 5);

/* Puts context before the message e already holds: "cannot push the manifest: <old message>". When e holds
 * no error yet, the context and strerror(code). code 0 keeps e's code. Keeps http_status. Returns the code.
 */
int nb_error_wrap(NbError *e, int code, const char *fmt, ...) _printf_(3, 4);

/* "out of memory", -ENOMEM: the most common failure gets one spelling. */
int nb_error_oom(NbError *e);

/* Empties e (code 0, no message). */
void nb_error_clear(NbError *e);

static inline bool nb_error_isset(const NbError *e)
{
        return e && e->code < 0;
}
