/* manager.h: nbsnapd's manager: the images this instance saved (in memory, mirrored by the state store), the
 * one save that may run (a worker thread calling nb_save, which posts its progress back to the event loop
 * through an eventfd), registry deletions (worker threads too), crash recovery, the reporter, metrics and
 * sd_notify. Everything here runs on the sd-event loop except the workers' bodies. The HTTP side (api.c)
 * turns requests into the calls below and their NbReply into responses. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <systemd/sd-event.h>

#include "agent/config.h"

#define NB_ERROR_BAD_REQUEST                                                                                \
        "ModelArts.6101" /* 400: malformed body, wrong type, unknown field, broken rule */
#define NB_ERROR_UNAUTHORIZED "ModelArts.6201" /* 401: no or wrong bearer token */
#define NB_ERROR_FORBIDDEN    "ModelArts.6203" /* 403: peer not allowed, registry refused */
#define NB_ERROR_NOT_FOUND    "ModelArts.6404" /* 404: unknown path, project, notebook or image */
#define NB_ERROR_METHOD       "ModelArts.6405" /* 405 */
#define NB_ERROR_CONFLICT     "ModelArts.6409" /* 409: a save is running; image still being saved */
#define NB_ERROR_TOO_LARGE    "ModelArts.6413" /* 413: body over NB_REQUEST_BODY_MAX */
#define NB_ERROR_INTERNAL     "ModelArts.6500" /* 500 */
#define NB_ERROR_BAD_GATEWAY  "ModelArts.6502" /* 502: the registry failed */
#define NB_ERROR_UNAVAILABLE  "ModelArts.6503" /* 503: stopping */
#define NB_ERROR_STORAGE      "ModelArts.6507" /* 507: the state dir cannot take the record (full) */

typedef struct NbReply {
        unsigned status;
        char *body; /* malloc'ed */
        const char *content_type;
        const char *allow; /* 405 */
        bool challenge;    /* 401: WWW-Authenticate: Bearer */
} NbReply;

void nb_reply_done(NbReply *r);
/* {"error_code": code, "error_msg": ...} */
void nb_reply_error(NbReply *r, unsigned status, const char *code, const char *fmt, ...) _printf_(4, 5);

typedef struct Manager Manager;
typedef void (*NbReplyDone)(void *userdata, NbReply *reply); /* reply is moved to the callee */

int manager_new(const NbConfig *cfg, sd_event *event, Manager **ret, NbError *e);
/* Joins the delete workers (their callbacks run) and the reporter; a save worker still running (stop
 * timeout passed) is left behind for the process exit. */
Manager *manager_free(Manager *m);
/* Loads the records, fails the saves a crash interrupted, starts the reporter. */
int manager_start(Manager *m, NbError *e);
void manager_set_ready(Manager *m);
/* SIGTERM: cancel the save, stop the loop when it is recorded (or after stop_timeout). */
void manager_request_stop(Manager *m);

const char *manager_project_id(const Manager *m);
const char *manager_notebook_id(const Manager *m);

void manager_create_image(Manager *m, const char *body, size_t size, bool too_large, NbReply *ret);
void manager_get_image(Manager *m, const char *id, NbReply *ret);
void manager_list_images(Manager *m, const char *status, NbReply *ret);
/* 0: ret is the answer; 1: pending, done(userdata, reply) is called from the loop later. */
int manager_delete_image(Manager *m, const char *id, NbReplyDone done, void *userdata, NbReply *ret);
void manager_health(Manager *m, bool full, NbReply *ret);
void manager_metrics(Manager *m, NbReply *ret);
