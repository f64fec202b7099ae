/* log.h: nbsnapd's logging: to the journal with structured fields (IMAGE_ID=, PHASE=) when stderr is
 * connected to it (systemd sets $JOURNAL_STREAM), else one line per message on stderr. Only the daemon's
 * top-level code logs; the save engine reports through callbacks. */
#pragma once

#include <syslog.h>

#include "common/error.h"

void nb_log_init(const char *identifier);
/* image_id and phase may be NULL. Returns -abs(error) when error != 0, else 0, so that callers can
 * `return nb_log_errno(...)`. %m in fmt is the error's text. */
int nb_log_full(int priority, int error, const char *image_id, const char *phase, const char *fmt, ...)
        _printf_(5, 6);

#define log_info(...)             nb_log_full(LOG_INFO, 0, NULL, NULL, __VA_ARGS__)
#define log_notice(...)           nb_log_full(LOG_NOTICE, 0, NULL, NULL, __VA_ARGS__)
#define log_warning(...)          nb_log_full(LOG_WARNING, 0, NULL, NULL, __VA_ARGS__)
#define log_error(...)            nb_log_full(LOG_ERR, 0, NULL, NULL, __VA_ARGS__)
#define log_debug(...)            nb_log_full(LOG_DEBUG, 0, NULL, NULL, __VA_ARGS__)
#define log_error_errno(r, ...)   nb_log_full(LOG_ERR, (r), NULL, NULL, __VA_ARGS__)
#define log_warning_errno(r, ...) nb_log_full(LOG_WARNING, (r), NULL, NULL, __VA_ARGS__)
#define log_image(p, id, ph, ...) nb_log_full((p), 0, (id), (ph), __VA_ARGS__)
