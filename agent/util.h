/* util.h: what every agent module shares: NbError (an errno plus a message a person can act on, filled from
 * the libraries' errors and wrapped with context on the way up), UUIDs and clocks. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "reg-util.h"
#include "snap-util.h"

typedef struct NbError {
        int code; /* negative errno */
        char msg[2048];
} NbError;

int nb_error_set(NbError *e, int code, const char *fmt, ...) _printf_(3, 4);
/* Copies a library's error, with a prefix naming what was being done ("cannot push the layer"). */
int nb_error_from_snap(NbError *e, const SnapError *s, int code, const char *context);
int nb_error_from_reg(NbError *e, const RegError *s, int code, const char *context);

/* Random (version 4) UUID, 36 characters + NUL. */
int nb_uuid(char ret[static 37]);
/* Milliseconds since the epoch (UTC). */
int64_t nb_now_ms(void);
/* RFC 3339 UTC with seconds ("2026-11-27T01:02:03Z"), for image configs. */
void nb_rfc3339(int64_t ms, char ret[static 32]);

/* "sha256:<64 hex>" of data. */
int nb_sha256_digest(const void *data, size_t size, char ret[static 72]);
