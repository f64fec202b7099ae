#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <grp.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <systemd/sd-daemon.h>

#include "agent/api.h"
#include "agent/log.h"
#include "agent/metrics.h"
#include "agent/request.h"
#include "common/fileio.h"

#define NB_TLS_FILE_MAX    (64u * 1024) /* bytes of a PEM certificate or key */
#define NB_PATH_PARTS_MAX  6
#define NB_PEER_GROUPS_MAX 256
#define NB_API_SWEEP_USEC  (1000ull * 1000) /* how often request deadlines are looked at */

typedef struct Listener Listener;

/* One per open connection (MHD's socket context): the deadline of the request in progress. */
typedef struct Conn {
        Listener *l;
        struct Conn *prev, *next;
        int fd;
        uint64_t deadline; /* CLOCK_MONOTONIC usec; 0 while the agent works for it (a DELETE) */
} Conn;

struct Listener {
        NbApi *api;
        struct MHD_Daemon *mhd;
        sd_event_source *io, *timer, *sweep;
        Conn *conns;
        size_t n_conns;
        bool local; /* unix socket: peer credentials; else bearer token */
        char name[128];
        char *unlink_path; /* a socket file bound here, removed at exit if it is still ours */
        dev_t dev;
        ino_t ino;
};

struct NbApi {
        Manager *m;
        sd_event *event;
        const NbConfig *cfg;
        Listener *listeners[NB_API_LISTENERS_MAX];
        size_t n_listeners;
        unsigned char token_digest[32];
        bool have_token;
        gid_t group;
        bool have_group;
        char *tls_cert, *tls_key;
        unsigned connection_limit; /* per listener, from RLIMIT_NOFILE */
};

typedef struct Request {
        Listener *l;
        struct MHD_Connection *connection;
        char *body;
        size_t size;
        uint64_t dropped; /* bytes of a body over NB_REQUEST_BODY_MAX read and dropped */
        bool too_large, limited, replied, pending, ready;
        NbReply reply;
} Request;

/* ---- errors: the one table ------------------------------------------------------------------------------
 */

static const NbApiError errors[] = {
        /* ModelArts' own codes, where ModelArts has one for the condition */
        {EINVAL, 400, "ModelArts.0104", "parameter error"}, /* body, field, query parameter, framing */
        {ENXIO, 400, "ModelArts.6309", "no such notebook instance"}, /* another notebook id in the path */
        {ENOENT, 404, "ModelArts.6404", "no such image"},            /* Terraform reads it as "gone" */
        /* the rest: this project's codes, which no client can take for a ModelArts one */
        {EACCES, 401, "NBSNAP.UNAUTHORIZED", "unauthorized"},   /* TCP: no or wrong token */
        {EPERM, 403, "NBSNAP.FORBIDDEN", "forbidden"},          /* peer not allowed; the registry refused */
        {EBADRQC, 404, "NBSNAP.NOT_FOUND", "no such resource"}, /* unknown path, another project */
        {EOPNOTSUPP, 405, "NBSNAP.METHOD_NOT_ALLOWED", "method not allowed"},
        {EBUSY, 409, "NBSNAP.BUSY", "busy"},                     /* a save runs; the image is being saved */
        {E2BIG, 413, "NBSNAP.BODY_TOO_LARGE", "body too large"}, /* body over NB_REQUEST_BODY_MAX */
        {EAGAIN, 429, "NBSNAP.TOO_MANY_REQUESTS", "too many deletions or cancels running"},
        {EREMOTEIO, 502, "NBSNAP.REGISTRY_FAILED", "registry failed"},
        {ESHUTDOWN, 503, "NBSNAP.STOPPING", "stopping"},
        {ENOSPC, 507, "NBSNAP.STATE_DIR_FULL", "state dir full"},
        {EDQUOT, 507, "NBSNAP.STATE_DIR_FULL", "state dir over quota"},
        {0, 500, "NBSNAP.INTERNAL", "internal"}, /* last: everything else */
};

const NbApiError *nb_api_error_table(size_t *ret_n)
{
        *ret_n = ELEMENTSOF(errors);
        return errors;
}

const NbApiError *nb_api_error(int err)
{
        if (err < 0)
                err = -err;
        for (size_t i = 0; i + 1 < ELEMENTSOF(errors); i++)
                if (errors[i].errno_ == err)
                        return &errors[i];
        return &errors[ELEMENTSOF(errors) - 1];
}

void nb_reply_done(NbReply *r)
{
        free(r->body);
        *r = (NbReply){0};
}

void nb_reply_error(NbReply *r, int err, const char *fmt, ...)
{
        const NbApiError *row = nb_api_error(err);
        char msg[NB_ERROR_MSG_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "error_code", row->code);
        cJSON_AddStringToObject(j, "error_msg", msg);
        char *s = cJSON_Print(j);
        cJSON_Delete(j);
        nb_reply_done(r);
        r->status = s ? row->status : 500;
        r->body = s;
        r->content_type = "application/json";
}

static void reply_json(NbReply *r, unsigned status, cJSON *j)
{
        char *s = j ? cJSON_Print(j) : NULL;
        cJSON_Delete(j);
        if (!s) {
                nb_reply_error(r, ENOMEM, "out of memory");
                return;
        }
        nb_reply_done(r);
        r->status = status;
        r->body = s;
        r->content_type = "application/json";
}

static void reply_failure(NbReply *r, int err, const NbError *e)
{
        nb_reply_error(r, err, "%s", e->msg[0] ? e->msg : strerror(err < 0 ? -err : err));
}

/* ---- responses ------------------------------------------------------------------------------------------
 */

static enum MHD_Result queue(struct MHD_Connection *c, Request *rq)
{
        NbReply *r = &rq->reply;
        char *body = NULL;
        if (asprintf(&body, "%s\n", r->body ? r->body : "") < 0)
                return MHD_NO;
        struct MHD_Response *resp =
                MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(body);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                r->content_type ? r->content_type : "application/json");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        if (r->allow)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
        if (r->challenge)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"nbsnapd\"");
        enum MHD_Result ret = MHD_queue_response(c, r->status ? r->status : 500, resp);
        MHD_destroy_response(resp);
        rq->replied = true;
        nb_reply_done(r);
        return ret;
}

/* ---- who is asking --------------------------------------------------------------------------------------
 */

static bool peer_allowed(NbApi *a, int fd)
{
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return false;
        if (cred.uid == 0 || cred.uid == geteuid())
                return true;
        if (!a->have_group)
                return false;
        if (cred.gid == a->group)
                return true;
        gid_t groups[NB_PEER_GROUPS_MAX];
        len = sizeof(groups);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
                return false;
        for (size_t i = 0; i < len / sizeof(gid_t); i++)
                if (groups[i] == a->group)
                        return true;
        return false;
}

/* Whether t (n bytes, surrounding spaces already dropped) is the token: digests of equal length compared in
 * constant time, so that neither the token nor its length leaks through the timing. */
static bool token_matches(NbApi *a, const char *t, size_t n)
{
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned dlen = 0;
        if (n == 0 || n > NB_TOKEN_MAX || EVP_Digest(t, n, d, &dlen, EVP_sha256(), NULL) != 1 || dlen != 32)
                return false;
        return CRYPTO_memcmp(d, a->token_digest, 32) == 0;
}

/* The value of a token header without its surrounding spaces: *ret_n bytes from the result. */
static const char *header_token(const char *h, size_t *ret_n)
{
        while (*h == ' ')
                h++;
        size_t n = strlen(h);
        while (n > 0 && h[n - 1] == ' ')
                n--;
        *ret_n = n;
        return h;
}

/* "Authorization: Bearer <token>" or, as ModelArts clients send their IAM token, "X-Auth-Token: <token>":
 * either one carrying the configured token lets the request in. */
static bool token_ok(NbApi *a, struct MHD_Connection *c)
{
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        size_t n;
        if (h && strncasecmp(h, "Bearer ", 7) == 0) {
                const char *t = header_token(h + 7, &n);
                if (token_matches(a, t, n))
                        return true;
        }
        h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, NB_API_HEADER_AUTH_TOKEN);
        if (!h)
                return false;
        const char *t = header_token(h, &n);
        return token_matches(a, t, n);
}

/* false with rq->reply set when the request must be refused. */
static bool check_access(Listener *l, Request *rq, struct MHD_Connection *c, const char *url)
{
        NbApi *a = l->api;
        if (l->local) {
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
                if (ci && peer_allowed(a, ci->connect_fd))
                        return true;
                nb_reply_error(&rq->reply, EPERM, "only root%s%s may use this socket",
                               a->have_group ? " and members of group " : "",
                               a->have_group && a->cfg->socket_group ? a->cfg->socket_group : "");
                return false;
        }
        if (a->have_token && token_ok(a, c))
                return true;
        if (strcmp(url, "/health") == 0) { /* probes need no token; they learn nothing but up or down */
                rq->limited = true;
                return true;
        }
        nb_reply_error(&rq->reply, EACCES,
                       "this listener requires the configured token, as \"Authorization: Bearer "
                       "<token>\" or as \"" NB_API_HEADER_AUTH_TOKEN ": <token>\"");
        rq->reply.challenge = true;
        return false;
}

/* ---- request deadlines ----------------------------------------------------------------------------------
 *
 * libmicrohttpd's own timeout (NB_API_CONNECTION_TIMEOUT) is one of silence: a client sending a byte every
 * few seconds keeps a connection, and NB_API_CONNECTIONS_MAX such clients would keep everyone else out. So a
 * request has NB_API_REQUEST_TIMEOUT from its start (the connection's, or the end of the previous answer on
 * a kept-alive connection) to its answer sent; a connection past it is shut down (MHD then reads the end of
 * the stream and closes it as usual). A DELETE waiting for the registry has no deadline meanwhile.
 */

static uint64_t loop_now(Listener *l)
{
        uint64_t now = 0;
        (void)sd_event_now(l->api->event, CLOCK_MONOTONIC, &now);
        return now;
}

static Conn *conn_of(struct MHD_Connection *c)
{
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        return ci ? ci->socket_context : NULL;
}

static void conn_arm(Conn *cn)
{
        if (cn)
                cn->deadline = loop_now(cn->l) + NB_API_REQUEST_TIMEOUT * 1000000ull;
}

static void sweep_arm(Listener *l)
{
        int enabled = SD_EVENT_OFF;
        if (l->n_conns == 0 ||
            (sd_event_source_get_enabled(l->sweep, &enabled) >= 0 && enabled != SD_EVENT_OFF))
                return;
        sd_event_source_set_time(l->sweep, loop_now(l) + NB_API_SWEEP_USEC);
        sd_event_source_set_enabled(l->sweep, SD_EVENT_ONESHOT);
}

static int on_sweep(sd_event_source *s, uint64_t usec, void *userdata)
{
        Listener *l = userdata;
        uint64_t now = loop_now(l);
        size_t cut = 0;
        for (Conn *cn = l->conns; cn; cn = cn->next)
                if (cn->deadline != 0 && now >= cn->deadline && cn->fd >= 0) {
                        (void)shutdown(cn->fd, SHUT_RDWR);
                        cn->deadline = 0;
                        cut++;
                }
        if (cut > 0)
                log_info("closed %zu connection(s) on %s that took over %d s for a request", cut, l->name,
                         NB_API_REQUEST_TIMEOUT);
        sweep_arm(l);
        return 0;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
        Listener *l = cls;
        Conn *cn = *socket_context;
        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                const union MHD_ConnectionInfo *ci =
                        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
                cn = calloc(1, sizeof(*cn));
                if (!cn) /* no deadline for this one: MHD's timeout of silence still applies */
                        return;
                cn->l = l;
                cn->fd = ci ? ci->connect_fd : -1;
                conn_arm(cn);
                cn->next = l->conns;
                if (l->conns)
                        l->conns->prev = cn;
                l->conns = cn;
                l->n_conns++;
                *socket_context = cn;
                sweep_arm(l);
                return;
        }
        if (!cn)
                return;
        if (cn->prev)
                cn->prev->next = cn->next;
        else
                l->conns = cn->next;
        if (cn->next)
                cn->next->prev = cn->prev;
        l->n_conns--;
        free(cn);
        *socket_context = NULL;
}

/* ---- routing --------------------------------------------------------------------------------------------
 */

static void on_delete_done(void *userdata, NbReply *reply)
{
        Request *rq = userdata;
        rq->reply = *reply;
        *reply = (NbReply){0};
        rq->ready = true;
        conn_arm(conn_of(rq->connection));
        MHD_resume_connection(rq->connection);
        /* MHD notices a resumed connection on its next run: make that now, not at the next socket event */
        sd_event_source_set_time(rq->l->timer, 1);
        sd_event_source_set_enabled(rq->l->timer, SD_EVENT_ONESHOT);
}

static size_t split_path(const char *url, char parts[][NB_API_URL_MAX + 1], bool *ret_bad)
{
        size_t n = 0;
        const char *p = url;
        *ret_bad = false;
        if (*p != '/' || strlen(url) > NB_API_URL_MAX) {
                *ret_bad = true;
                return 0;
        }
        /* no percent-encoding (never decoded: "%2F" is not a separator, "%2e%2e" not a segment), no
         * control characters, no spaces */
        for (const char *q = url; *q; q++)
                if (*q == '%' || (unsigned char)*q <= ' ' || *q == 0x7f) {
                        *ret_bad = true;
                        return 0;
                }
        while (*p == '/') {
                p++;
                size_t len = strcspn(p, "/");
                /* "//", a trailing "/", too deep, "." or "..": paths are taken as sent, never normalised */
                if (len == 0 || n == NB_PATH_PARTS_MAX ||
                    (p[0] == '.' && (len == 1 || (len == 2 && p[1] == '.')))) {
                        *ret_bad = true;
                        return n;
                }
                memcpy(parts[n], p, len);
                parts[n++][len] = '\0';
                p += len;
        }
        return n;
}

static bool method_is(const char *method, const char *want)
{
        if (strcmp(want, "GET") == 0 && strcmp(method, "HEAD") == 0)
                return true;
        return strcmp(method, want) == 0;
}

static void method_not_allowed(NbReply *r, const char *method, const char *allow)
{
        nb_reply_error(r, EOPNOTSUPP, "method %.16s is not allowed here (allowed: %s)", method, allow);
        r->allow = allow;
}

static void handle_health(Manager *m, bool full, NbReply *r)
{
        ManagerHealth h;
        manager_health(m, &h);
        bool ok = h.ready && !h.stopping;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "status", ok ? "ok" : h.stopping ? "stopping" : "starting");
        if (full) {
                cJSON_AddStringToObject(j, "project_id", manager_project_id(m));
                cJSON_AddStringToObject(j, "notebook_id", manager_notebook_id(m));
                cJSON_AddBoolToObject(j, "saving", h.image_id != NULL);
                if (h.image_id)
                        cJSON_AddStringToObject(j, "image_id", h.image_id);
                cJSON_AddNumberToObject(j, "outbox", (double)h.outbox);
        }
        reply_json(r, ok ? 200 : 503, j);
}

static void handle_metrics(Manager *m, NbReply *r)
{
        NbError e = {0};
        char *text = NULL;
        int k = manager_metrics(m, &text, &e);
        if (k < 0) {
                reply_failure(r, k, &e);
                return;
        }
        nb_reply_done(r);
        r->status = 200;
        r->body = text;
        r->content_type = NB_METRICS_CONTENT_TYPE;
}

static void handle_create(Manager *m, Request *rq, NbReply *r)
{
        NbError e = {0};
        const NbImage *img = NULL;
        if (rq->too_large) {
                nb_reply_error(r, E2BIG, "the request body is over %u bytes", NB_REQUEST_BODY_MAX);
                return;
        }
        int k = manager_create_image(m, rq->body ? rq->body : "", rq->size, &img, &e);
        if (k < 0)
                reply_failure(r, k, &e);
        else
                reply_json(r, 200, nb_image_to_json(img));
}

static void handle_get(Manager *m, const char *id, NbReply *r)
{
        NbError e = {0};
        const NbImage *img = NULL;
        int k = manager_get_image(m, id, &img, &e);
        if (k < 0)
                reply_failure(r, k, &e);
        else
                reply_json(r, 200, nb_image_to_json(img));
}

typedef struct ListArgs {
        NbListQuery q;
        NbError e;
        int r;
} ListArgs;

/* Each parameter once (a repeat is refused), each known: the first bad one ends the walk. */
static enum MHD_Result list_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
        ListArgs *la = cls;
        la->r = nb_list_query_set(&la->q, key, value, &la->e);
        return la->r < 0 ? MHD_NO : MHD_YES;
}

/* ListImage: {"current", "data", "pages", "size", "total"} (agent/list.h). */
static void handle_list(Manager *m, struct MHD_Connection *c, NbReply *r)
{
        ListArgs la = {0};
        nb_list_query_init(&la.q);
        MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, list_arg, &la);
        _cleanup_free_ const NbImage **v = NULL;
        size_t n = 0;
        if (la.r >= 0)
                la.r = manager_list_images(m, &la.q, &v, &n, &la.e);
        if (la.r < 0) {
                nb_list_query_done(&la.q);
                reply_failure(r, la.r, &la.e);
                return;
        }
        NbListPage page;
        nb_list_page(&la.q, n, &page);
        nb_list_query_done(&la.q);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "current", (double)page.current);
        cJSON *a = cJSON_AddArrayToObject(j, "data");
        for (size_t i = 0; a && i < page.count; i++)
                cJSON_AddItemToArray(a, nb_image_to_json(v[page.first + i]));
        cJSON_AddNumberToObject(j, "pages", (double)page.pages);
        cJSON_AddNumberToObject(j, "size", (double)page.size);
        cJSON_AddNumberToObject(j, "total", (double)page.total);
        reply_json(r, 200, j);
}

static void on_deleted(void *userdata, int k, const NbImage *img, const NbError *e)
{
        NbReply reply = {0};
        if (k < 0)
                reply_failure(&reply, k, e);
        else
                reply_json(&reply, 200, nb_image_to_json(img));
        on_delete_done(userdata, &reply);
}

static void handle_delete(Manager *m, Request *rq, const char *id, NbReply *r)
{
        NbError e = {0};
        const NbImage *img = NULL;
        int k = manager_delete_image(m, id, on_deleted, rq, &img, &e);
        if (k < 0)
                reply_failure(r, k, &e);
        else if (k > 0)
                rq->pending = true;
        else
                reply_json(r, 200, nb_image_to_json(img));
}

static void route(Listener *l, Request *rq, struct MHD_Connection *c, const char *url, const char *method)
{
        Manager *m = l->api->m;
        char parts[NB_PATH_PARTS_MAX][NB_API_URL_MAX + 1];
        bool bad;
        size_t n = split_path(url, parts, &bad);
        NbReply *r = &rq->reply;
        if (!bad && n == 1 && (strcmp(parts[0], "health") == 0 || strcmp(parts[0], "metrics") == 0)) {
                if (!method_is(method, "GET"))
                        method_not_allowed(r, method, "GET, HEAD");
                else if (parts[0][0] == 'h')
                        handle_health(m, !rq->limited, r);
                else
                        handle_metrics(m, r);
                return;
        }
        bool create = n == 5 && strcmp(parts[2], "notebooks") == 0 && strcmp(parts[4], "create-image") == 0;
        bool list = n == 3 && strcmp(parts[2], "images") == 0;
        bool one = n == 4 && strcmp(parts[2], "images") == 0;
        if (bad || n < 3 || strcmp(parts[0], "v1") != 0 || !(create || list || one)) {
                nb_reply_error(r, EBADRQC, "no such resource: %.256s", url);
                return;
        }
        if ((create && !method_is(method, "POST")) || (list && !method_is(method, "GET")) ||
            (one && !method_is(method, "GET") && !method_is(method, "DELETE"))) {
                method_not_allowed(r, method, create ? "POST" : list ? "GET, HEAD" : "GET, HEAD, DELETE");
                return;
        }
        if (strcmp(parts[1], manager_project_id(m)) != 0) {
                nb_reply_error(r, EBADRQC, "project_id %.128s is not this instance's project (%s)", parts[1],
                               manager_project_id(m));
                return;
        }
        if (create && strcmp(parts[3], manager_notebook_id(m)) != 0) {
                nb_reply_error(r, ENXIO, "notebook id %.128s is not this instance (%s)", parts[3],
                               manager_notebook_id(m));
                return;
        }
        if (create)
                handle_create(m, rq, r);
        else if (list)
                handle_list(m, c, r);
        else if (method_is(method, "GET"))
                handle_get(m, parts[3], r);
        else
                handle_delete(m, rq, parts[3], r);
}

/* The Content-Length announced: 0 when none, UINT64_MAX when it is not a number. */
static uint64_t content_length(struct MHD_Connection *c)
{
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (!cl)
                return 0;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        return errno != 0 || end == cl ? UINT64_MAX : (uint64_t)v;
}

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
        unsigned *n = cls;
        if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
                n[0]++;
        else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
                n[1]++;
        return MHD_YES;
}

/* Two Content-Lengths, or one with Transfer-Encoding: a proxy in front may frame the body otherwise than
 * libmicrohttpd (which takes one of them), so the request is refused (RFC 9112 6.3). */
static bool framing_ambiguous(struct MHD_Connection *c)
{
        unsigned n[2] = {0, 0};
        MHD_get_connection_values(c, MHD_HEADER_KIND, count_framing, n);
        return n[0] > 1 || n[1] > 1 || (n[0] > 0 && n[1] > 0);
}

static void body_append(Request *rq, const char *data, size_t size)
{
        if (rq->too_large || rq->size + size > NB_REQUEST_BODY_MAX) {
                rq->too_large = true; /* keep reading and dropping; 413 at the end */
                rq->dropped += size;
                return;
        }
        char *b = realloc(rq->body, rq->size + size + 1);
        if (!b) {
                rq->too_large = true;
                return;
        }
        memcpy(b + rq->size, data, size);
        rq->size += size;
        b[rq->size] = '\0';
        rq->body = b;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
        Listener *l = cls;
        Request *rq = *con_cls;
        if (!rq) {
                rq = calloc(1, sizeof(*rq));
                if (!rq)
                        return MHD_NO;
                rq->l = l;
                rq->connection = c;
                *con_cls = rq;
                /* before any body is read: who is asking, and how much they announce */
                if (!check_access(l, rq, c, url))
                        return queue(c, rq);
                if (framing_ambiguous(c)) {
                        nb_reply_error(
                                &rq->reply, EINVAL,
                                "the request has more than one Content-Length or Transfer-Encoding, or "
                                "both");
                        return queue(c, rq);
                }
                uint64_t announced = content_length(c);
                if (announced > NB_REQUEST_DISCARD_MAX) {
                        nb_reply_error(&rq->reply, E2BIG, "the request body is over %u bytes",
                                       NB_REQUEST_BODY_MAX);
                        return queue(c, rq);
                }
                rq->too_large = announced > NB_REQUEST_BODY_MAX; /* read to the end, dropped: 413 then */
                return MHD_YES;
        }
        if (rq->replied) {
                *upload_data_size = 0;
                return MHD_YES;
        }
        if (*upload_data_size > 0) {
                body_append(rq, upload_data, *upload_data_size);
                *upload_data_size = 0;
                if (rq->dropped > NB_REQUEST_DISCARD_MAX) { /* a chunked body without end: answered now */
                        nb_reply_error(&rq->reply, E2BIG, "the request body is over %u bytes",
                                       NB_REQUEST_BODY_MAX);
                        return queue(c, rq);
                }
                return MHD_YES;
        }
        if (rq->pending) {
                if (!rq->ready)
                        return MHD_YES;
                rq->pending = false;
                return queue(c, rq);
        }
        route(l, rq, c, url, method);
        if (rq->pending) {
                Conn *cn = conn_of(c);
                if (cn)
                        cn->deadline = 0;
                MHD_suspend_connection(c);
                return MHD_YES;
        }
        return queue(c, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        Request *rq = *con_cls;
        conn_arm(conn_of(c)); /* the next request on this connection starts now */
        if (!rq)
                return;
        nb_reply_done(&rq->reply);
        free(rq->body);
        free(rq);
        *con_cls = NULL;
}

/* Paths are matched as sent: libmicrohttpd's percent-decoding would turn "%2F" into a separator. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
        return strlen(s);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
        char msg[512];
        vsnprintf(msg, sizeof(msg), fmt, ap);
        size_t n = strlen(msg);
        while (n > 0 && msg[n - 1] == '\n')
                msg[--n] = '\0';
        log_debug("http: %s", msg);
}

/* ---- the loop -------------------------------------------------------------------------------------------
 */

static void listener_rearm(Listener *l)
{
        MHD_UNSIGNED_LONG_LONG ms = 0;
        if (MHD_get_timeout(l->mhd, &ms) != MHD_YES) {
                sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
                return;
        }
        uint64_t now = 0;
        sd_event_now(l->api->event, CLOCK_MONOTONIC, &now);
        sd_event_source_set_time(l->timer, now + (uint64_t)ms * 1000ull);
        sd_event_source_set_enabled(l->timer, SD_EVENT_ONESHOT);
}

static unsigned current_connections(Listener *l)
{
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(l->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        return di ? di->num_connections : 0;
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        Listener *l = userdata;
        unsigned before = current_connections(l);
        MHD_run(l->mhd);
        /* At the connection limit, libmicrohttpd takes its listening socket out of its epoll set, and puts
         * it back at the start of a run, not when a connection closes: after a run that closed connections,
         * one more, or the clients waiting in the backlog would wait for an event that cannot come. */
        if (current_connections(l) < before)
                MHD_run(l->mhd);
        listener_rearm(l);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        return on_io(NULL, -1, 0, userdata);
}

static void listener_free(Listener *l)
{
        if (!l)
                return;
        sd_event_source_disable_unref(l->io);
        sd_event_source_disable_unref(l->timer);
        sd_event_source_disable_unref(l->sweep);
        if (l->mhd)
                MHD_stop_daemon(l->mhd); /* closes the connections: on_connection frees their Conn */
        struct stat st;
        if (l->unlink_path && lstat(l->unlink_path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
                (void)unlink(l->unlink_path);
        free(l->unlink_path);
        free(l);
}

/* Takes fd (closed on failure). */
static int listener_add(NbApi *a, int fd, bool local, const char *name, NbError *e)
{
        if (a->n_listeners >= NB_API_LISTENERS_MAX) {
                close(fd);
                return nb_error_set(e, -E2BIG, "too many listeners (at most %d)", NB_API_LISTENERS_MAX);
        }
        Listener *l = calloc(1, sizeof(*l));
        if (!l) {
                close(fd);
                return nb_error_oom(e);
        }
        l->api = a;
        l->local = local;
        snprintf(l->name, sizeof(l->name), "%s", name);
        bool tls = !local && a->tls_cert;
        struct MHD_OptionItem opts[] = {
                {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, NULL}, /* first: it logs the others */
                {MHD_OPTION_LISTEN_SOCKET, fd, NULL},
                {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, l},
                {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, l},
                {MHD_OPTION_CONNECTION_LIMIT, a->connection_limit, NULL},
                {MHD_OPTION_CONNECTION_TIMEOUT, NB_API_CONNECTION_TIMEOUT, NULL},
                {MHD_OPTION_CONNECTION_MEMORY_LIMIT, NB_API_CONNECTION_MEMORY_MAX, NULL},
                {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)no_unescape, NULL},
                {tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, tls ? a->tls_key : NULL},
                {tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, tls ? a->tls_cert : NULL},
                {MHD_OPTION_END, 0, NULL},
        };
        unsigned flags =
                MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | (tls ? MHD_USE_TLS : 0);
        l->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, l, MHD_OPTION_ARRAY, opts,
                                  MHD_OPTION_END);
        if (!l->mhd) {
                close(fd);
                free(l);
                return nb_error_set(e, -EIO, "cannot start the HTTP server on %s%s", name,
                                    tls ? " (TLS: check tls_cert and tls_key)" : "");
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(l->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        int r = di ? sd_event_add_io(a->event, &l->io, di->epoll_fd, EPOLLIN, on_io, l) : -EIO;
        /* accuracy 1 us: sd-event's default (250 ms) would hold every MHD timeout back that long */
        if (r >= 0)
                r = sd_event_add_time(a->event, &l->timer, CLOCK_MONOTONIC, UINT64_MAX, 1, on_timer, l);
        if (r >= 0)
                r = sd_event_add_time(a->event, &l->sweep, CLOCK_MONOTONIC, UINT64_MAX, 0, on_sweep, l);
        if (r < 0) {
                listener_free(l);
                return nb_error_set(e, r, "cannot add the HTTP server on %s to the event loop", name);
        }
        sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
        sd_event_source_set_enabled(l->sweep, SD_EVENT_OFF);
        a->listeners[a->n_listeners++] = l;
        log_info("listening on %s%s", name, local ? "" : tls ? " (TLS, token)" : " (token)");
        return 0;
}

/* ---- binding --------------------------------------------------------------------------------------------
 */

/* A socket file left by an agent that died is replaced; one that still answers is not. */
static int clear_stale_socket(const char *path, NbError *e)
{
        struct stat st;
        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : nb_error_set(e, -errno, "cannot check %s: %m", path);
        if (!S_ISSOCK(st.st_mode))
                return nb_error_set(e, -EEXIST, "%s exists and is not a socket", path);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, path, strlen(path) + 1);
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return nb_error_set(e, -errno, "socket: %m");
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
                return nb_error_set(e, -EADDRINUSE, "%s is in use by a running agent", path);
        if (unlink(path) < 0 && errno != ENOENT)
                return nb_error_set(e, -errno, "cannot remove the stale socket %s: %m", path);
        return 0;
}

static int bind_unix(NbApi *a, const char *path, NbError *e)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sa.sun_path))
                return nb_error_set(e, -ENAMETOOLONG, "socket path %s is too long", path);
        memcpy(sa.sun_path, path, strlen(path) + 1);
        _cleanup_free_ char *dir = strdup(path);
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash && slash != dir) {
                *slash = '\0';
                if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                        return nb_error_set(e, -errno, "cannot create %s: %m", dir);
        }
        int r = clear_stale_socket(path, e);
        if (r < 0)
                return r;
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return nb_error_set(e, -errno, "socket: %m");
        /* created 0600: permissions only ever widen to 0660 after the group is set */
        mode_t old = umask(0177);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old);
        if (r < 0)
                return nb_error_set(e, -errno, "cannot bind %s: %m", path);
        /* without socket_group (or when it does not exist) the file keeps the daemon's own group: root's */
        if ((a->have_group && chown(path, (uid_t)-1, a->group) < 0) || chmod(path, 0660) < 0 ||
            listen(fd, NB_API_LISTEN_BACKLOG) < 0) {
                r = nb_error_set(e, -errno, "cannot set up %s: %m", path);
                (void)unlink(path);
                return r;
        }
        struct stat st;
        if (stat(path, &st) < 0)
                return nb_error_set(e, -errno, "%s: %m", path);
        char name[128];
        snprintf(name, sizeof(name), "unix:%.100s", path);
        r = listener_add(a, TAKE_FD(fd), true, name, e);
        if (r < 0) {
                (void)unlink(path);
                return r;
        }
        Listener *l = a->listeners[a->n_listeners - 1];
        l->unlink_path = strdup(path);
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        return 0;
}

static int bind_tcp(NbApi *a, const char *spec, NbError *e)
{
        char host[256], port[16];
        const char *colon = strrchr(spec, ':');
        size_t hl = (size_t)(colon - spec);
        if (!colon || hl == 0 || hl >= sizeof(host) || strlen(colon + 1) == 0 ||
            strlen(colon + 1) >= sizeof(port))
                return nb_error_set(e, -EINVAL, "listen=tcp:%s: expected HOST:PORT", spec);
        memcpy(host, spec, hl);
        host[hl] = '\0';
        if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') { /* [::1] */
                memmove(host, host + 1, hl - 2);
                host[hl - 2] = '\0';
        }
        snprintf(port, sizeof(port), "%s", colon + 1);
        struct addrinfo hints = {.ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_NUMERICSERV | AI_PASSIVE},
                        *res = NULL;
        int g = getaddrinfo(host, port, &hints, &res);
        if (g != 0)
                return nb_error_set(e, -EINVAL, "listen=tcp:%s: %s", spec, gai_strerror(g));
        int fd = -1, err = 0;
        for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
                int one = 1;
                if (fd >= 0 &&
                    (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
                     bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, NB_API_LISTEN_BACKLOG) < 0)) {
                        err = errno;
                        close(fd);
                        fd = -1;
                }
        }
        freeaddrinfo(res);
        if (fd < 0) {
                errno = err ? err : EADDRNOTAVAIL;
                return nb_error_set(e, -errno, "cannot listen on tcp:%s: %m", spec);
        }
        char name[300];
        snprintf(name, sizeof(name), "tcp:%s", spec);
        return listener_add(a, fd, false, name, e);
}

/* ---- setup ----------------------------------------------------------------------------------------------
 */

static int read_pem(const char *path, char **ret, NbError *e)
{
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        int r = nb_read_file_at(AT_FDCWD, path, NB_TLS_FILE_MAX, NB_READ_REGULAR, &buf, &size);
        if (r == -EFBIG || r == -EINVAL || r == -EISDIR || (r >= 0 && size == 0))
                return nb_error_set(e, r < 0 ? r : -EINVAL, "%s must be a PEM file of at most %u bytes",
                                    path, NB_TLS_FILE_MAX);
        if (r < 0)
                return nb_error_set(e, r, "cannot read %s: %s", path, strerror(-r));
        *ret = TAKE_PTR(buf);
        return 0;
}

static int resolve_group(const char *name, gid_t *ret, NbError *e)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(name, &end, 10);
        if (!errno && end != name && !*end && v < (unsigned long)UINT32_MAX) {
                *ret = (gid_t)v;
                return 0;
        }
        struct group grp, *res = NULL;
        char buf[16384];
        int r = getgrnam_r(name, &grp, buf, sizeof(buf), &res);
        if (r != 0 || !res)
                return nb_error_set(e, r ? -r : -ENOENT, "socket_group %s: no such group", name);
        *ret = res->gr_gid;
        return 0;
}

int nb_api_new(Manager *m, sd_event *event, const NbConfig *cfg, NbApi **ret, NbError *e)
{
        NbApi *a = calloc(1, sizeof(*a));
        if (!a)
                return nb_error_oom(e);
        a->m = m;
        a->event = event;
        a->cfg = cfg;
        int r = 0;
        if (cfg->socket_group) {
                r = resolve_group(cfg->socket_group, &a->group, e);
                a->have_group = r >= 0;
                if (r == -ENOENT) { /* e.g. installed without its sysusers.d entry applied */
                        log_warning("socket_group %s: no such group; the unix socket is root-only (create "
                                    "the group: systemd-sysusers, or groupadd --system %s), ignoring",
                                    cfg->socket_group, cfg->socket_group);
                        r = 0;
                }
        }
        if (r >= 0 && cfg->token_file) {
                _cleanup_free_ char *token = NULL;
                unsigned dlen = 0;
                r = nb_token_read(cfg->token_file, &token, e);
                if (r >= 0 &&
                    (EVP_Digest(token, strlen(token), a->token_digest, &dlen, EVP_sha256(), NULL) != 1 ||
                     dlen != 32))
                        r = nb_error_set(e, -EIO, "cannot hash the token");
                if (token)
                        explicit_bzero(token, strlen(token));
                a->have_token = r >= 0;
        }
        if (r >= 0 && cfg->tls_cert) {
                if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
                        r = nb_error_set(e, -EOPNOTSUPP, "this libmicrohttpd has no TLS support");
                if (r >= 0)
                        r = read_pem(cfg->tls_cert, &a->tls_cert, e);
                if (r >= 0)
                        r = read_pem(cfg->tls_key, &a->tls_key, e);
        }
        if (r < 0) {
                nb_api_free(a);
                return r;
        }
        *ret = a;
        return 0;
}

NbApi *nb_api_free(NbApi *a)
{
        if (!a)
                return NULL;
        for (size_t i = 0; i < a->n_listeners; i++)
                listener_free(a->listeners[i]);
        if (a->tls_key)
                explicit_bzero(a->tls_key, strlen(a->tls_key));
        free(a->tls_key);
        free(a->tls_cert);
        explicit_bzero(a->token_digest, sizeof(a->token_digest));
        free(a);
        return NULL;
}

/* Is the configured listen entry one of the sockets systemd passed? */
static bool passed_already(const char *spec, const int *fds, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                if (strncmp(spec, "unix:", 5) == 0 &&
                    sd_is_socket_unix(fds[i], SOCK_STREAM, 1, spec + 5, 0) > 0)
                        return true;
                const char *colon = strrchr(spec, ':');
                if (strncmp(spec, "tcp:", 4) == 0 && colon &&
                    sd_is_socket_inet(fds[i], AF_UNSPEC, SOCK_STREAM, 1,
                                      (uint16_t)strtoul(colon + 1, NULL, 10)) > 0)
                        return true;
        }
        return false;
}

/* Connections per listener: what RLIMIT_NOFILE leaves after NB_API_FDS_RESERVED, shared by the listeners,
 * within [NB_API_CONNECTIONS_MIN, NB_API_CONNECTIONS_MAX]. Past it libmicrohttpd stops accepting until a
 * connection ends (the kernel queues NB_API_LISTEN_BACKLOG more); the save keeps the fds it needs. */
static void set_connection_limit(NbApi *a, size_t n_listeners)
{
        struct rlimit rl;
        unsigned long per = NB_API_CONNECTIONS_MAX;
        if (n_listeners == 0)
                n_listeners = 1;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
                per = rl.rlim_cur > NB_API_FDS_RESERVED ? (rl.rlim_cur - NB_API_FDS_RESERVED) / n_listeners
                                                        : 0;
        if (per > NB_API_CONNECTIONS_MAX)
                per = NB_API_CONNECTIONS_MAX;
        if (per < NB_API_CONNECTIONS_MIN)
                per = NB_API_CONNECTIONS_MIN;
        a->connection_limit = (unsigned)per;
        if (per < NB_API_CONNECTIONS_MAX)
                log_warning(
                        "RLIMIT_NOFILE is %llu: at most %lu connection(s) per listener (%d fds are kept for "
                        "the agent and a save)",
                        (unsigned long long)rl.rlim_cur, per, NB_API_FDS_RESERVED);
}

int nb_api_listen(NbApi *a, NbError *e)
{
        char **names = NULL;
        int n = sd_listen_fds_with_names(true, &names);
        if (n < 0)
                return nb_error_set(e, n, "cannot take the sockets passed by systemd: %s", strerror(-n));
        int fds[NB_API_LISTENERS_MAX];
        size_t n_fds = 0;
        int r = 0;
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                if (r < 0 || n_fds >= NB_API_LISTENERS_MAX ||
                    sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
                        if (r >= 0)
                                r = nb_error_set(e, -EBADF,
                                                 "passed fd %d (%s) is not a listening stream socket", fd,
                                                 names && names[i] ? names[i] : "?");
                        close(fd);
                        continue;
                }
                fds[n_fds++] = fd;
        }
        for (int i = 0; names && i < n; i++)
                free(names[i]);
        free(names);
        const NbConfig *c = a->cfg;
        size_t planned = n_fds + (c->n_listen == 0 && n_fds == 0);
        for (size_t i = 0; i < c->n_listen; i++)
                planned += !passed_already(c->listen[i], fds, n_fds);
        set_connection_limit(a, planned);
        for (size_t i = 0; i < n_fds; i++) {
                bool local = sd_is_socket(fds[i], AF_UNIX, SOCK_STREAM, 1) > 0;
                char name[64];
                snprintf(name, sizeof(name), "passed fd %d (%s)", fds[i], local ? "unix" : "tcp");
                if (r >= 0 && !local && !a->have_token)
                        r = nb_error_set(e, -EPERM, "%s: a tcp listener needs token_file", name);
                if (r < 0) {
                        close(fds[i]);
                        continue;
                }
                r = listener_add(a, fds[i], local, name, e);
        }
        if (r < 0)
                return r;
        if (c->n_listen == 0 && n_fds == 0)
                r = bind_unix(a, NB_DEFAULT_SOCKET, e);
        for (size_t i = 0; r >= 0 && i < c->n_listen; i++) {
                if (passed_already(c->listen[i], fds, n_fds))
                        continue;
                if (strncmp(c->listen[i], "unix:", 5) == 0)
                        r = bind_unix(a, c->listen[i] + 5, e);
                else if (!a->have_token)
                        r = nb_error_set(e, -EPERM, "listen=%s: a tcp listener needs token_file",
                                         c->listen[i]);
                else
                        r = bind_tcp(a, c->listen[i] + 4, e);
        }
        return r < 0 ? r : (int)a->n_listeners;
}
