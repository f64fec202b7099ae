/* manager.h: nbsnapd's images. The records this instance saved (in memory, mirrored by agent/store.c) and
 * their lifecycle: INIT -> CREATING -> ACTIVE, or CREATE_FAILED / ERROR, and DELETED at the end; the one
 * save that may run (agent/job.c) and the registry deletions (worker threads here) that move them; crash
 * recovery (a save a crash interrupted is CREATE_FAILED at the next start); a report of every change
 * (agent/reporter.c); the counters of agent/metrics.c. Everything here runs on the event loop except the
 * workers' bodies, which wake it through manager_wake_fd().
 *
 * No HTTP here. Each verb returns 0 (a result in its ret_ parameters) or one of these errnos, with the
 * reason for people in its NbError; agent/api.c maps them to answers:
 *   -EINVAL     the request breaks a rule (body, field)
 *   -E2BIG      the request is too large
 *   -ENOENT     no such image
 *   -EBUSY      a save is running, or the image is being deleted
 *   -ESHUTDOWN  the agent is stopping
 *   -EAGAIN     too many deletions running, or NB_CANCELLED_MAX cancelled saves still ending
 *   -ENOSPC, -EDQUOT  the state dir cannot take the record (full)
 *   -EPERM      the registry refused (a deletion)
 *   -EREMOTEIO  the registry failed
 *   anything else (-ENOMEM, -EIO): an internal failure */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "agent/config.h"
#include "agent/image.h"
#include "agent/list.h"
#include "common/error.h"

#define NB_DELETES_MAX   4 /* registry deletions running at once */
#define NB_CANCELLED_MAX 4 /* cancelled saves still ending (deleting their upload sessions) at once */

typedef struct Manager Manager;

/* The lifecycle: whether a record may go from one status to the other. */
bool manager_transition_allowed(NbStatus from, NbStatus to);

int manager_new(const NbConfig *cfg, Manager **ret, NbError *e);
/* Joins the delete workers (their callbacks run) and the reporter; a save worker still running (abandoned
 * after the stop timeout) is left behind for the process exit. */
Manager *manager_free(Manager *m);
/* Loads the records, fails the saves a crash interrupted, starts the reporter. */
int manager_start(Manager *m, NbError *e);

/* An eventfd the workers write to; when it is readable, call manager_dispatch(). */
int manager_wake_fd(const Manager *m);
void manager_dispatch(Manager *m);
/* Called (on the loop) after every change of the running save or the set of images. */
typedef void (*ManagerChanged)(void *userdata);
void manager_set_changed(Manager *m, ManagerChanged changed, void *userdata);

void manager_set_ready(Manager *m);
/* No new save or deletion from now on; the running save is cancelled. Returns whether a save worker still
 * runs (the save, or saves cancelled by a DELETE that are still ending). */
bool manager_stop(Manager *m);
/* A save worker runs: the save, or a cancelled save still ending (its image already DELETED). */
bool manager_saving(const Manager *m);
/* The save workers did not stop in time: the running save's record says so, and they are left running for
 * the exit. */
void manager_abandon_save(Manager *m, unsigned waited_sec);
/* One line for people: "saving ns/name:tag (image ID): packing: 40% ..." or "idle; 3 image(s), 2 active". */
void manager_describe(Manager *m, char *buf, size_t size);

const char *manager_project_id(const Manager *m);
const char *manager_notebook_id(const Manager *m);

/* POST create-image: parses body (NB_REQUEST_BODY_MAX at most), records the image (INIT) and starts its
 * save. *ret points into the manager, valid until the next call. */
int manager_create_image(Manager *m, const char *body, size_t size, const NbImage **ret, NbError *e);
int manager_get_image(Manager *m, const char *id, const NbImage **ret, NbError *e);
/* The images q selects, in its order (agent/list.h), all of them: the caller takes its page. *ret (free it,
 * not its items) points into the manager. */
int manager_list_images(Manager *m, const NbListQuery *q, const NbImage ***ret, size_t *ret_n, NbError *e);

/* r and e as for the other verbs; img is the DELETED image when r is 0. */
typedef void (*ManagerDeleted)(void *userdata, int r, const NbImage *img, const NbError *e);
/* DELETE of an image, by status:
 *  INIT, CREATING (its save runs): the save is cancelled. The record is DELETED at once (written before it
 *    is reported; -ENOSPC/-EIO and nothing changes when it cannot be written), a new save may start at once,
 *    and the worker ends on its own: the transfer in flight is aborted (a chunk or manifest PUT on the wire
 *    finishes first, at most REG_CANCEL_DRAIN_S), the upload session is DELETEd on the registry, nothing is
 *    tagged (a manifest the save pushed before it saw the cancel is deleted). -EAGAIN when
 *    NB_CANCELLED_MAX cancelled saves are still ending.
 *  ACTIVE: the manifest is deleted from the registry on a worker, then the record is DELETED.
 *  CREATE_FAILED, ERROR: the record is DELETED (nothing of it is in the registry under its tag).
 *  DELETED: nothing changes; the image is answered again.
 * 0: done, *ret is the image (DELETED); 1: the registry is asked on a worker, done(userdata, ...) is called
 * from the loop later; negative: refused. */
int manager_delete_image(Manager *m, const char *id, ManagerDeleted done, void *userdata,
                         const NbImage **ret, NbError *e);

typedef struct ManagerHealth {
        bool ready, stopping;
        const char *image_id; /* of the running save, NULL when none */
        size_t outbox;
} ManagerHealth;
void manager_health(Manager *m, ManagerHealth *ret);
/* The Prometheus text of agent/metrics.c. */
int manager_metrics(Manager *m, char **ret, NbError *e);
