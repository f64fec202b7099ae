/* api.h: nbsnapd's HTTP side: libmicrohttpd daemons in external-epoll mode, one per listening socket, each
 * driven by the sd-event loop (the MHD epoll fd as an IO source, MHD's timeout as a timer), so that the
 * handlers run on the loop with the manager. Unix sockets (socket-activated or bound here with no window of
 * wider permissions) admit root, this process's user and the configured group (SO_PEERCRED,
 * SO_PEERGROUPS); TCP listeners require the token, as "Authorization: Bearer <token>" or as ModelArts
 * clients send it, "X-Auth-Token: <token>" (compared in constant time), and speak TLS when a certificate is
 * configured. Routing, limits, ListImage's query and the error bodies live here; the answers come from
 * agent/manager.h, and one table (nb_api_error()) turns every failure into its HTTP status and error code:
 * ModelArts' own code where ModelArts has one (ModelArts.0104 parameter error, ModelArts.6309 no such
 * notebook, ModelArts.6404 no such image), else one of this project's, NBSNAP.<NAME>, which no client can
 * take for a ModelArts one. Against hostile clients: header memory per connection, a deadline per request
 * (a client sending a byte at a time is cut off), a connection limit derived from RLIMIT_NOFILE, and paths
 * taken as sent (no percent-decoding, no "." or ".." segments). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <systemd/sd-event.h>

#include "agent/config.h"
#include "agent/manager.h"

#define NB_API_CONNECTIONS_MAX 64 /* connections served at once per listener; more wait in the backlog */
#define NB_API_CONNECTIONS_MIN 4  /* ... however low RLIMIT_NOFILE is */
#define NB_API_FDS_RESERVED    48 /* fds kept for the loop, the store and a save (not for connections) */
#define NB_API_LISTEN_BACKLOG  64 /* connections the kernel queues; beyond it, connect() is refused */
#define NB_API_CONNECTION_MEMORY_MAX                                                                        \
        (16u * 1024)                 /* per connection: request line + headers (431/414 beyond) */
#define NB_API_CONNECTION_TIMEOUT 60 /* seconds of silence before a connection is closed */
#define NB_API_REQUEST_TIMEOUT    10 /* seconds for a whole request, first byte to answer (slow clients) */
#define NB_API_URL_MAX            1024
#define NB_API_LISTENERS_MAX      (NB_LISTEN_MAX + 8)
#define NB_API_HEADER_AUTH_TOKEN  "X-Auth-Token" /* ModelArts' token header, beside Authorization: Bearer */

/* An answer: status, body, and the headers some statuses need. */
typedef struct NbReply {
        unsigned status;
        char *body; /* malloc'ed */
        const char *content_type;
        const char *allow; /* 405 */
        bool challenge;    /* 401: WWW-Authenticate: Bearer */
} NbReply;

void nb_reply_done(NbReply *r);

/* The conditions the agent answers with an error, each an errno: the manager's (agent/manager.h) and the
 * API's own (-EACCES: no or wrong token, -EPERM: a peer not allowed on the socket, -EBADRQC: an unknown
 * path or another project, -ENXIO: another notebook, -EOPNOTSUPP: a method not allowed, -EINVAL: a bad
 * query parameter or request framing). */
typedef struct NbApiError {
        int errno_;        /* positive */
        unsigned status;   /* HTTP */
        const char *code;  /* "ModelArts.6404", "NBSNAP.BUSY" */
        const char *label; /* for people and tests */
} NbApiError;

/* The row for -err (or err), the internal error's (500) for anything not in the table. */
const NbApiError *nb_api_error(int err);
/* The whole table, for tests: *ret_n rows. */
const NbApiError *nb_api_error_table(size_t *ret_n);
/* {"error_code": code, "error_msg": ...} with the status of err's row. */
void nb_reply_error(NbReply *r, int err, const char *fmt, ...) _printf_(3, 4);

typedef struct NbApi NbApi;

int nb_api_new(Manager *m, sd_event *event, const NbConfig *cfg, NbApi **ret, NbError *e);
NbApi *nb_api_free(NbApi *a);
/* Takes the sockets passed by systemd (sd_listen_fds) and binds the configured listen= entries that are not
 * among them (default: unix:/run/nbsnap/nbsnap.sock). Returns the number of listeners. */
int nb_api_listen(NbApi *a, NbError *e);
