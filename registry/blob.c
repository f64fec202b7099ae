/* blob.c: blobs: HEAD, cross-repository mount, monolithic upload from memory, streamed chunked upload
 * (POST -> PATCH chunks with Content-Range -> PUT ?digest=), streamed download with its digest checked, and
 * copy from another registry (the download fed to an upload).
 *
 * Upload sessions follow the Location of the latest response, resolved against the URL that answered; the
 * registry may move the session to another host or path, or keep its state in the query (`_state=`). */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "registry/registry-internal.h"

static const char octet_stream[] = "application/octet-stream";

static int check_names(const char *repository, const char *digest, NbError *e)
{
        if (!reg_repository_valid(repository))
                return nb_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                    repository ? repository : "");
        if (digest && !reg_digest_valid(digest))
                return nb_error_set(e, -EINVAL, "invalid digest \"%s\"", digest);
        return 0;
}

int reg_blob_exists(RegClient *c, const char *repository, const char *digest, int64_t *ret_size, NbError *e)
{
        int r = check_names(repository, digest, e);
        if (r < 0 || !digest)
                return r < 0 ? r : nb_error_set(e, -EINVAL, "no digest given");
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "blobs", digest, &url) < 0 ||
            reg_scope(repository, "pull", &scope) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "HEAD", .url = url, .scope = scope, .retry = true, .follow = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "checking blob %s in %s/%s", digest, c->host, repository);
        if (resp.status == 404)
                return 0;
        if (resp.status != 200) {
                char what[REG_URL_MAX];
                snprintf(what, sizeof(what), "checking blob %s in %s/%s", digest, c->host, repository);
                return reg_response_error(&resp, e, what);
        }
        if (ret_size)
                *ret_size = resp.content_length;
        return 1;
}

/* Ids of the upload sessions this process opened, for the session hook. */
static _Atomic uint64_t session_ids;

/* Tells the client's session hook (registry.h); 0 when there is none. */
static int session_report(RegClient *c, RegSessionEvent event, uint64_t id, const char *repository,
                          const char *url, NbError *e)
{
        if (!c->session_fn)
                return 0;
        RegSession rs = {.id = id, .registry = c->url, .repository = repository, .url = url};
        NbError he = {0};
        int r = c->session_fn(c->session_userdata, event, &rs, &he);
        if (r >= 0)
                return 0;
        if (e)
                *e = he;
        return nb_error_wrap(e, r, "the upload session on %s/%s could not be recorded", c->host, repository);
}

/* DELETE an upload session (a cleanup request: sent after a cancel too). true when nothing is left on the
 * registry (2xx, or 404: it does not know the session), which the hook is told; a failure is not an error
 * here (the session stays recorded, for the owner's next cleanup, and the registry purges it anyway). */
static bool session_cancel(RegClient *c, uint64_t id, const char *repository, const char *location,
                           const char *scope)
{
        if (!location)
                return true;
        RegRequest rq = {.method = "DELETE", .url = location, .scope = scope, .cleanup = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        NbError ignored = {0};
        bool gone = reg_request(c, &rq, &resp, &ignored) >= 0 &&
                    ((resp.status >= 200 && resp.status < 300) || resp.status == 404);
        if (gone)
                (void)session_report(c, REG_SESSION_CLOSED, id, repository, location, NULL);
        return gone;
}

/* A session was opened at location: the hook records it before any data goes; when it cannot, the session
 * is deleted at once and the hook's error returned. */
static int session_opened(RegClient *c, const char *repository, const char *location, const char *scope,
                          uint64_t *ret_id, NbError *e)
{
        uint64_t id = atomic_fetch_add(&session_ids, 1) + 1;
        int r = session_report(c, REG_SESSION_OPENED, id, repository, location, e);
        if (r < 0) {
                session_cancel(c, id, repository, location, scope);
                return r;
        }
        *ret_id = id;
        return 0;
}

int reg_session_delete(RegClient *c, const char *repository, const char *url, NbError *e)
{
        char what[REG_URL_MAX + 64], red[REG_URL_MAX], prefix[REG_URL_MAX + REG_NAME_MAX + 32];
        int r = check_names(repository, NULL, e);
        if (r < 0)
                return r;
        reg_url_redact(url ? url : "", red, sizeof(red));
        snprintf(what, sizeof(what), "deleting the upload session %s", red);
        snprintf(prefix, sizeof(prefix), "%s/v2/%s/blobs/uploads/", c->url, repository);
        bool web = url &&
                   (strncmp(url, "https://", 8) == 0 || (c->plain_http && strncmp(url, "http://", 7) == 0));
        if (!web || !strstr(red, "/blobs/uploads/") || !reg_url_path_plain(url) ||
            (reg_url_same_origin(url, c->url) && strncmp(red, prefix, strlen(prefix)) != 0))
                return nb_error_set(e, -EINVAL, "%s: not an upload session of %s/%s", what, c->host,
                                    repository);
        _cleanup_free_ char *scope = NULL;
        if (reg_scope(repository, "pull,push", &scope) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "DELETE", .url = url, .scope = scope, .cleanup = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status >= 200 && resp.status < 300)
                return 1;
        r = reg_response_error(&resp, e, what);
        return resp.status == 404 ? 0 : r;
}

static int mount_url(RegClient *c, const char *repository, const char *digest, const char *from, char **ret)
{
        _cleanup_free_ char *base = NULL, *with_mount = NULL;
        int r = reg_client_v2_url(c, repository, "blobs/uploads", NULL, &base);
        if (r >= 0)
                r = reg_url_add_query(base, "mount", digest, &with_mount);
        if (r >= 0)
                r = reg_url_add_query(with_mount, "from", from, ret);
        return r;
}

int reg_blob_mount(RegClient *c, const char *repository, const char *digest, const char *from_repository,
                   NbError *e)
{
        int r = check_names(repository, digest, e);
        if (r >= 0)
                r = check_names(from_repository, NULL, e);
        if (r < 0)
                return r;
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (mount_url(c, repository, digest, from_repository, &url) < 0 ||
            asprintf(&scope, "repository:%s:pull,push repository:%s:pull", repository, from_repository) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "POST", .url = url, .scope = scope, .retry = true, .drain = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "mounting blob %s from %s into %s/%s", digest, from_repository, c->host,
                 repository);
        r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status == 201)
                return 1;
        if (resp.status == 202) {
                /* The registry opened an upload session instead of mounting: recorded, then deleted. */
                uint64_t id = 0;
                if (!resp.location)
                        return 0;
                r = session_opened(c, repository, resp.location, scope, &id, e);
                if (r < 0)
                        return nb_error_wrap(e, r, "%s", what);
                session_cancel(c, id, repository, resp.location, scope);
                return 0;
        }
        return reg_response_error(&resp, e, what);
}

/* POST blobs/uploads/ -> 202 + Location, recorded by the session hook (*ret_id). */
static int session_open(RegClient *c, const char *repository, const char *scope, char **ret_location,
                        uint64_t *ret_chunk_min, uint64_t *ret_id, NbError *e)
{
        _cleanup_free_ char *url = NULL;
        if (reg_client_v2_url(c, repository, "blobs/uploads", NULL, &url) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "POST", .url = url, .scope = scope, .retry = true, .drain = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "starting an upload to %s/%s", c->host, repository);
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status != 202)
                return reg_response_error(&resp, e, what);
        if (!resp.location)
                return nb_error_set(e, -EBADMSG, "%s: the registry gave no upload location", what);
        r = session_opened(c, repository, resp.location, scope, ret_id, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (ret_chunk_min)
                *ret_chunk_min = resp.chunk_min;
        *ret_location = TAKE_PTR(resp.location);
        return 0;
}

/* PUT <location>?digest=<digest> with the whole blob. 201 expected; *ret_lost says that the registry lost
 * the session (a PUT cut off after part of the body reached it leaves a session that no longer matches). */
static int session_commit(RegClient *c, const char *location, const char *scope, const char *digest,
                          const void *body, size_t size, const char *what, bool *ret_lost, NbError *e)
{
        _cleanup_free_ char *url = NULL;
        *ret_lost = false;
        if (reg_url_add_query(location, "digest", digest, &url) < 0)
                return nb_error_set(e, -EINVAL, "%s: bad upload location", what);
        RegRequest rq = {.method = "PUT",
                         .url = url,
                         .scope = scope,
                         .content_type = octet_stream,
                         .body = body ? body : "",
                         .body_size = size,
                         .retry = true,
                         .drain = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0) {
                *ret_lost = reg_errno_transient(r);
                return nb_error_wrap(e, r, "%s", what);
        }
        if (resp.status == 201 || resp.status == 204)
                return 0;
        *ret_lost = reg_code_session_lost(resp.status, resp.error_code);
        return reg_response_error(&resp, e, what);
}

int reg_blob_upload_buffer(RegClient *c, const char *repository, const char *digest, const void *data,
                           size_t size, NbError *e)
{
        int r = check_names(repository, digest, e);
        if (r < 0 || !digest)
                return r < 0 ? r : nb_error_set(e, -EINVAL, "no digest given");
        r = nb_digest_check(digest, data ? data : "", size);
        if (r < 0)
                return nb_error_set(e, r, "the data to upload does not have digest %s", digest);
        r = reg_blob_exists(c, repository, digest, NULL, e);
        if (r != 0)
                return r < 0 ? r : 0;
        _cleanup_free_ char *scope = NULL;
        if (reg_scope(repository, "pull,push", &scope) < 0)
                return -ENOMEM;
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "uploading blob %s to %s/%s", digest, c->host, repository);
        /* The whole blob is in memory: a lost session or a PUT that failed for good is tried again in a new
         * session, a bounded number of times, unless HEAD finds that the blob made it after all. */
        for (unsigned attempt = 0;; attempt++) {
                _cleanup_free_ char *location = NULL;
                bool lost;
                uint64_t id = 0;
                r = session_open(c, repository, scope, &location, NULL, &id, e);
                if (r < 0)
                        return r;
                r = session_commit(c, location, scope, digest, data, size, what, &lost, e);
                if (r >= 0) {
                        (void)session_report(c, REG_SESSION_CLOSED, id, repository, location, NULL);
                        return 0;
                }
                session_cancel(c, id, repository, location, scope);
                NbError ignored = {0};
                if (reg_blob_exists(c, repository, digest, NULL, &ignored) == 1)
                        return 0;
                if (!lost || attempt + 1 >= REG_UPLOAD_RESTARTS_MAX)
                        return r;
                reg_retry_count(REG_RETRY_OTHER); /* the registry lost the session: a new one */
        }
}

/* ---- streamed upload ------------------------------------------------------------------------------------
 *
 * Bytes live in a ring of n_blocks blocks of one chunk each: byte p is in blocks[(p / cap) % n_blocks] while
 * kept_from <= p < written. A block is reused only once the registry confirmed every byte in it, so only
 * confirmed bytes are ever dropped from memory, and the ring holds the last n_blocks chunks: enough to
 * resend from wherever the registry says it is, or (while kept_from is 0) to send everything again in a new
 * session.
 *
 * The writer (the caller of reg_upload_write()) fills blocks; a sender thread PATCHes each full block while
 * the writer fills the next ones (double buffering), so producing the bytes and putting them on the wire
 * overlap. The writer waits only when every block holds bytes the registry has not confirmed. The tail (the
 * last, partial block) and the commit are sent by reg_upload_commit() after the sender has ended. Between
 * the two threads, under `lock`: ready (full blocks the writer handed over), offset (written by the sender,
 * read by the writer), kept_from (written by the writer, read by the sender), the sender's result and the
 * closing/stop requests. Everything else belongs to one thread at a time.
 */

typedef enum Outcome {
        OUTCOME_FATAL,  /* nothing to try: report the error */
        OUTCOME_RETRY,  /* back off, ask the registry where it is, resend from there */
        OUTCOME_RESYNC, /* the registry disagrees about the offset (416, Range): ask it, no backoff */
        OUTCOME_LOST,   /* the registry lost the session: a new one, from byte 0 */
} Outcome;

struct RegUpload {
        RegClient *c;
        char *repository;
        char *scope;
        char *location;
        uint64_t session_id; /* for the session hook */
        uint8_t **blocks;
        size_t n_blocks, cap;   /* cap: the chunk size, and the size of one block */
        uint64_t kept_from;     /* first byte still in memory */
        uint64_t written;       /* bytes given by the caller */
        uint64_t offset;        /* bytes the registry has confirmed */
        uint64_t confirmed_max; /* the most the registry ever confirmed (the offset can go back) */
        unsigned recoveries;    /* failure streaks since confirmed_max last grew */
        unsigned restarts;
        RegRetry retry; /* failures since the last chunk that went through */
        char retry_after[64];
        RegRetryReason retry_reason; /* of the last OUTCOME_RETRY */
        char lost_code[64];
        EVP_MD_CTX *md; /* sha256 of everything written */
        reg_progress_fn progress;
        void *userdata;
        bool failed, committed;

        pthread_mutex_t lock;
        pthread_cond_t cond;
        pthread_t sender;
        bool have_sender;
        uint64_t ready;   /* bytes in full blocks handed to the sender */
        bool closing;     /* no more full blocks: the sender ends once it has sent them */
        bool stop;        /* abort: the sender ends after the request it is in */
        bool sender_done; /* the sender ended (sender_r says how) */
        int sender_r;
        NbError sender_error;
};

static void upload_ring_free(RegUpload *u)
{
        for (size_t i = 0; u->blocks && i < u->n_blocks; i++)
                free(u->blocks[i]);
        free(u->blocks);
        u->blocks = NULL;
        u->n_blocks = 0;
}

static void upload_sender_join(RegUpload *u, bool stop)
{
        if (!u->have_sender)
                return;
        pthread_mutex_lock(&u->lock);
        if (stop)
                u->stop = true;
        else
                u->closing = true;
        pthread_cond_broadcast(&u->cond);
        pthread_mutex_unlock(&u->lock);
        pthread_join(u->sender, NULL);
        u->have_sender = false;
}

RegUpload *reg_upload_abort(RegUpload *u)
{
        if (!u)
                return NULL;
        upload_sender_join(u, true);
        pthread_cond_destroy(&u->cond);
        pthread_mutex_destroy(&u->lock);
        if (!u->committed)
                session_cancel(u->c, u->session_id, u->repository, u->location, u->scope);
        free(u->repository);
        free(u->scope);
        free(u->location);
        upload_ring_free(u);
        EVP_MD_CTX_free(u->md);
        free(u);
        return NULL;
}

static void reg_upload_abortp(RegUpload **u)
{
        reg_upload_abort(*u);
}

static void *upload_sender_main(void *userdata);

/* The ring: max(2 chunks, replay_max) rounded up to whole chunks. Blocks are allocated as they fill. */
static int upload_ring_new(RegUpload *u, size_t replay_max, NbError *e)
{
        size_t n = replay_max / u->cap + (replay_max % u->cap != 0);
        u->n_blocks = n < 2 ? 2 : n;
        u->blocks = calloc(u->n_blocks, sizeof(*u->blocks));
        if (!u->blocks)
                return nb_error_oom(e);
        return 0;
}

int reg_upload_begin(RegClient *c, const char *repository, reg_progress_fn progress, void *userdata,
                     RegUpload **ret, NbError *e)
{
        int r = check_names(repository, NULL, e);
        if (r < 0)
                return r;
        _cleanup_(reg_upload_abortp) RegUpload *u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        *u = (RegUpload){.c = c, .progress = progress, .userdata = userdata, .committed = true};
        pthread_mutex_init(&u->lock, NULL);
        pthread_cond_init(&u->cond, NULL);
        if (reg_strdup(repository, &u->repository) < 0 ||
            reg_scope(repository, "pull,push", &u->scope) < 0 || nb_digest_ctx_new("sha256:", &u->md) < 0)
                return nb_error_oom(e);
        uint64_t chunk_min = 0;
        r = session_open(c, repository, u->scope, &u->location, &chunk_min, &u->session_id, e);
        if (r < 0)
                return r;
        u->committed = false;
        if (chunk_min > REG_CHUNK_MAX_BYTES)
                return nb_error_set(e, -EFBIG, "registry %s asks for upload chunks of at least %llu bytes",
                                    c->host, (unsigned long long)chunk_min);
        u->cap = c->chunk_size > chunk_min ? c->chunk_size : (size_t)chunk_min;
        r = upload_ring_new(u, c->replay_max, e);
        if (r < 0)
                return r;
        /* Without a thread (none could be made) every full block is sent by the writer, in turn. */
        u->have_sender = pthread_create(&u->sender, NULL, upload_sender_main, u) == 0;
        *ret = TAKE_PTR(u);
        return 0;
}

/* The registry confirmed bytes up to v (or, after a new session, nothing): a waiting writer may go on. */
static void upload_set_offset(RegUpload *u, uint64_t v)
{
        pthread_mutex_lock(&u->lock);
        u->offset = v;
        pthread_cond_broadcast(&u->cond);
        pthread_mutex_unlock(&u->lock);
}

/* Moves the offset back to `to` (a resync, or 0 for a new session) if the bytes from there are still in
 * memory, in one step with the check: the writer frees blocks below the offset, so the offset must never
 * claim bytes that are gone. Returns false (the offset unchanged) when they are gone. */
static bool upload_rewind(RegUpload *u, uint64_t to, uint64_t *ret_kept_from, uint64_t *ret_ready)
{
        pthread_mutex_lock(&u->lock);
        *ret_kept_from = u->kept_from;
        *ret_ready = u->ready;
        bool ok = to >= u->kept_from && to <= u->ready;
        if (ok) {
                u->offset = to;
                pthread_cond_broadcast(&u->cond);
        }
        pthread_mutex_unlock(&u->lock);
        return ok;
}

static bool upload_stopping(RegUpload *u)
{
        pthread_mutex_lock(&u->lock);
        bool stop = u->stop;
        pthread_mutex_unlock(&u->lock);
        return stop;
}

static uint8_t *upload_at(RegUpload *u, uint64_t pos)
{
        return u->blocks[(pos / u->cap) % u->n_blocks] + pos % u->cap;
}

/* What a failed PATCH means for the upload. */
static Outcome patch_outcome(RegUpload *u, int r, const RegResponse *resp)
{
        if (r < 0) {
                u->retry_reason = reg_retry_reason_errno(r);
                return reg_errno_transient(r) ? OUTCOME_RETRY : OUTCOME_FATAL;
        }
        if (reg_code_session_lost(resp->status, resp->error_code)) {
                snprintf(u->lost_code, sizeof(u->lost_code), "%s", resp->error_code);
                return OUTCOME_LOST;
        }
        if (resp->status == 416)
                return OUTCOME_RESYNC;
        if (reg_status_transient(resp->status, resp->error_code)) {
                snprintf(u->retry_after, sizeof(u->retry_after), "%s",
                         resp->retry_after ? resp->retry_after : "");
                u->retry_reason = reg_retry_reason_status(resp->status);
                return OUTCOME_RETRY;
        }
        return OUTCOME_FATAL;
}

/* The registry gave the session a new Location (*location, taken): the hook records it before anything else
 * is sent, since only the latest Location can delete the session. */
static int upload_moved(RegUpload *u, char **location, NbError *e)
{
        if (!*location)
                return 0;
        bool same = u->location && strcmp(u->location, *location) == 0;
        free(u->location);
        u->location = TAKE_PTR(*location);
        if (same)
                return 0;
        return session_report(u->c, REG_SESSION_MOVED, u->session_id, u->repository, u->location, e);
}

/* A chunk was accepted: the registry's Range must say it has everything up to end; when it does not, the
 * registry is asked where it stands (the session moves to the answer's Location either way). */
static int patch_accepted(RegUpload *u, RegResponse *resp, uint64_t end, Outcome *ret, NbError *e)
{
        uint64_t have = end;
        int r = upload_moved(u, &resp->location, e);
        if (r < 0) {
                *ret = OUTCOME_FATAL;
                return r;
        }
        *ret = OUTCOME_RESYNC;
        if (resp->range && reg_range_parse(resp->range, &have) < 0)
                return nb_error_set(e, -EBADMSG, "the registry answered a chunk with Range \"%.64s\"",
                                    resp->range);
        if (have != end)
                return nb_error_set(e, -EBADMSG,
                                    "the registry has %llu bytes after a chunk that ends at %llu",
                                    (unsigned long long)have, (unsigned long long)end);
        upload_set_offset(u, end);
        u->retry = (RegRetry){0};
        if (end > u->confirmed_max) { /* new bytes: the failures before them were survived */
                u->confirmed_max = end;
                u->recoveries = 0;
        }
        if (u->progress)
                u->progress(u->userdata, u->offset);
        return 0;
}

/* PATCH [u->offset, end) from memory. 0 when the registry took it; else -errno, *ret says what to do. */
static int send_chunk(RegUpload *u, uint64_t end, Outcome *ret, NbError *e)
{
        char range[64], what[REG_URL_MAX];
        snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)u->offset,
                 (unsigned long long)(end - 1));
        snprintf(what, sizeof(what), "uploading bytes %s of a blob to %s/%s", range, u->c->host,
                 u->repository);
        /* Not retried blindly: whether the registry kept any of it is asked before sending again. */
        RegRequest rq = {.method = "PATCH",
                         .url = u->location,
                         .scope = u->scope,
                         .content_type = octet_stream,
                         .content_range = range,
                         .body = upload_at(u, u->offset),
                         .body_size = (size_t)(end - u->offset),
                         .no_rewind = true,
                         .drain = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        int r = reg_request(u->c, &rq, &resp, e);
        if (r < 0) {
                *ret = patch_outcome(u, r, NULL);
                return nb_error_wrap(e, r, "%s", what);
        }
        if (resp.status == 202 || resp.status == 204) {
                r = patch_accepted(u, &resp, end, ret, e);
                return r < 0 ? nb_error_wrap(e, r, "%s", what) : 0;
        }
        *ret = patch_outcome(u, 0, &resp);
        return reg_response_error(&resp, e, what);
}

/* A new session, when byte 0 is still in memory. */
static int upload_restart(RegUpload *u, int r, NbError *e)
{
        uint64_t kept_from, ready;
        if (!upload_rewind(u, 0, &kept_from, &ready))
                return nb_error_set(e, -ESTALE,
                                    "the registry %s lost the upload session (%s) after %llu bytes; only "
                                    "the last %llu bytes "
                                    "are kept in memory, so the blob cannot be sent again: save again",
                                    u->c->host, u->lost_code[0] ? u->lost_code : "upload unknown",
                                    (unsigned long long)u->offset, (unsigned long long)(ready - kept_from));
        if (++u->restarts > REG_UPLOAD_RESTARTS_MAX)
                return nb_error_wrap(e, r, "the registry %s lost the upload session %u times, giving up",
                                     u->c->host, u->restarts - 1);
        _cleanup_free_ char *old = TAKE_PTR(u->location);
        session_cancel(u->c, u->session_id, u->repository, old, u->scope);
        r = session_open(u->c, u->repository, u->scope, &u->location, NULL, &u->session_id, e);
        if (r < 0)
                return r;
        u->lost_code[0] = 0;
        return 0;
}

/* GET <location>: where the registry is (204, Range: 0-N); the upload goes on from there. */
static int upload_resync(RegUpload *u, NbError *e)
{
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "asking %s where the upload to %s stands", u->c->host, u->repository);
        RegRequest rq = {.method = "GET", .url = u->location, .scope = u->scope, .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        int r = reg_request(u->c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status == 404) {
                snprintf(u->lost_code, sizeof(u->lost_code), "%s",
                         resp.error_code[0] ? resp.error_code : "HTTP 404");
                return upload_restart(u, -ENOENT, e);
        }
        if (resp.status != 204 && resp.status != 200)
                return reg_response_error(&resp, e, what);
        uint64_t have = 0;
        if (resp.range && reg_range_parse(resp.range, &have) < 0)
                return nb_error_set(e, -EBADMSG, "%s: it answered Range \"%.64s\"", what, resp.range);
        if (have == 1 && u->offset == 0)
                have = 0; /* distribution writes "0-0" for an empty session */
        uint64_t kept_from, ready;
        if (!upload_rewind(u, have, &kept_from, &ready)) {
                if (have > ready)
                        return nb_error_set(e, -EBADMSG, "%s: it has %llu bytes, more than the %llu sent",
                                            what, (unsigned long long)have, (unsigned long long)ready);
                return nb_error_set(e, -ESTALE,
                                    "%s: it has %llu bytes; the bytes from there on are no longer in memory "
                                    "(kept from %llu): save again",
                                    what, (unsigned long long)have, (unsigned long long)kept_from);
        }
        return upload_moved(u, &resp.location, e);
}

static int upload_recover(RegUpload *u, Outcome o, int r, NbError *e)
{
        /* A streak of failures on one chunk is bounded by the retry deadline (u->retry). What the deadline
         * cannot see is a registry that accepts a chunk and then goes back (each accept starts a new
         * streak): streaks are counted until new bytes are confirmed. */
        if (u->retry.attempt == 0 && ++u->recoveries > REG_UPLOAD_RECOVERIES_MAX)
                return nb_error_wrap(e, r, "giving up on the upload after %u failed chunks without progress",
                                     u->recoveries - 1);
        if (o != OUTCOME_RESYNC || u->retry.attempt > 0) {
                /* Repeated disagreement counts as failures too: it must not loop. */
                RegRetryReason why = o == OUTCOME_RETRY ? u->retry_reason : REG_RETRY_OTHER;
                int k = reg_retry_wait(u->c, &u->retry, why, u->retry_after[0] ? u->retry_after : NULL);
                if (k == -ECANCELED)
                        return nb_error_wrap(e, k, "cancelled while waiting to retry");
                if (k < 0)
                        return nb_error_wrap(
                                e, r, "giving up after %u attempts in %ld s (retry deadline %ld s)",
                                u->retry.attempt, reg_retry_elapsed_s(&u->retry), u->c->retry_deadline_s);
        } else {
                u->retry.attempt++; /* resent at once from where the registry is: a retry all the same */
                reg_retry_count(REG_RETRY_OTHER);
        }
        u->retry_after[0] = 0;
        return o == OUTCOME_LOST ? upload_restart(u, r, e) : upload_resync(u, e);
}

/* Sends [u->offset, upto) from memory, recovering from what can be recovered. */
static int upload_send(RegUpload *u, uint64_t upto, NbError *e)
{
        while (u->offset < upto) {
                if (upload_stopping(u))
                        return nb_error_set(e, -ECANCELED, "the upload to %s/%s was cancelled", u->c->host,
                                            u->repository);
                uint64_t block_end = (u->offset / u->cap + 1) * u->cap;
                Outcome o = OUTCOME_FATAL;
                int r = send_chunk(u, upto < block_end ? upto : block_end, &o, e);
                if (r >= 0)
                        continue;
                if (o == OUTCOME_FATAL)
                        return r;
                r = upload_recover(u, o, r, e);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The sender thread: PATCHes full blocks as the writer hands them over, until closing (all handed-over
 * blocks sent), stop, or a failure it could not recover from. */
static void *upload_sender_main(void *userdata)
{
        RegUpload *u = userdata;
        NbError e = {0};
        int r = 0;
        pthread_mutex_lock(&u->lock);
        for (;;) {
                while (!u->stop && !u->closing && u->ready <= u->offset)
                        pthread_cond_wait(&u->cond, &u->lock);
                uint64_t upto = u->ready;
                if (u->stop || upto <= u->offset)
                        break;
                pthread_mutex_unlock(&u->lock);
                r = upload_send(u, upto, &e);
                pthread_mutex_lock(&u->lock);
                if (r < 0)
                        break;
        }
        u->sender_done = true;
        u->sender_r = r;
        if (r < 0)
                u->sender_error = e;
        pthread_cond_broadcast(&u->cond);
        pthread_mutex_unlock(&u->lock);
        return NULL;
}

/* The sender's failure, as the writer reports it. Called with the lock held. */
static int upload_sender_failed(RegUpload *u, NbError *e)
{
        if (e)
                *e = u->sender_error;
        return u->sender_r;
}

/* A block is full: hand it to the sender, or send it now when there is none. */
static int upload_hand_over(RegUpload *u, NbError *e)
{
        int r = 0;
        pthread_mutex_lock(&u->lock);
        u->ready = u->written;
        if (u->sender_done && u->sender_r < 0)
                r = upload_sender_failed(u, e);
        pthread_cond_broadcast(&u->cond);
        pthread_mutex_unlock(&u->lock);
        if (r >= 0 && !u->have_sender)
                r = upload_send(u, u->written, e);
        return r;
}

/* The block that byte u->written goes to; a new block takes the slot of the oldest one once the registry
 * confirmed it (the writer waits for that here). */
static int upload_block(RegUpload *u, uint8_t **ret, NbError *e)
{
        uint64_t index = u->written / u->cap;
        uint8_t **slot = &u->blocks[index % u->n_blocks];
        if (u->written % u->cap == 0 && index >= u->n_blocks) {
                uint64_t from = (index - u->n_blocks + 1) * u->cap;
                int r = 0;
                pthread_mutex_lock(&u->lock);
                while (u->have_sender && u->offset < from && !u->sender_done)
                        pthread_cond_wait(&u->cond, &u->lock);
                if (u->offset >= from)
                        u->kept_from = from;
                else
                        r = u->sender_r < 0 ? upload_sender_failed(u, e)
                                            : nb_error_set(e, -EIO, "the upload's sender ended early");
                pthread_mutex_unlock(&u->lock);
                if (r < 0)
                        return r;
        }
        if (!*slot && !(*slot = malloc(u->cap)))
                return nb_error_set(e, -ENOMEM, "out of memory for a %zu byte upload chunk", u->cap);
        *ret = *slot;
        return 0;
}

int reg_upload_write(RegUpload *u, const void *data, size_t size, NbError *e)
{
        if (u->failed || u->committed)
                return nb_error_set(e, -EINVAL, "the upload to %s/%s has already failed or ended",
                                    u->c->host, u->repository);
        if (EVP_DigestUpdate(u->md, data, size) != 1)
                return nb_error_set(e, -EIO, "cannot digest upload data");
        const uint8_t *p = data;
        while (size > 0) {
                uint8_t *block = NULL;
                int r = upload_block(u, &block, e);
                size_t at = (size_t)(u->written % u->cap), n = u->cap - at < size ? u->cap - at : size;
                if (r >= 0) {
                        memcpy(block + at, p, n);
                        u->written += n;
                        p += n;
                        size -= n;
                        if (u->written % u->cap == 0)
                                r = upload_hand_over(u, e);
                }
                if (r < 0) {
                        u->failed = true;
                        return r;
                }
        }
        return 0;
}

/* The commit's answer was lost or odd: the blob may still be there. */
static bool committed_anyway(RegUpload *u, const char *digest)
{
        int64_t size = -1;
        NbError ignored = {0};
        return reg_blob_exists(u->c, u->repository, digest, &size, &ignored) == 1 &&
               (size < 0 || (uint64_t)size == u->written);
}

/* PUT ?digest= once the registry has every byte. 1: done; 0: the session was lost, send again; <0: error. */
static int upload_put(RegUpload *u, const char *digest, NbError *e)
{
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "committing blob %s to %s/%s", digest, u->c->host, u->repository);
        _cleanup_free_ char *url = NULL;
        if (reg_url_add_query(u->location, "digest", digest, &url) < 0)
                return nb_error_set(e, -EINVAL, "%s: bad upload location", what);
        RegRequest rq = {.method = "PUT",
                         .url = url,
                         .scope = u->scope,
                         .content_type = octet_stream,
                         .body = "",
                         .retry = true,
                         .drain = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        int r = reg_request(u->c, &rq, &resp, e);
        if (r >= 0 && (resp.status == 201 || resp.status == 204))
                return 1;
        /* A PUT that timed out (or whose answer was lost) after the registry committed: a retried PUT then
         * finds no session. HEAD says whether the blob made it. */
        if (committed_anyway(u, digest))
                return 1;
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (strcmp(resp.error_code, "DIGEST_INVALID") == 0) {
                reg_response_error(&resp, e, what);
                return nb_error_wrap(e, -EBADMSG,
                                     "the registry received other bytes than were sent (they are "
                                     "not sent again)");
        }
        if (reg_code_session_lost(resp.status, resp.error_code)) {
                snprintf(u->lost_code, sizeof(u->lost_code), "%s", resp.error_code);
                reg_response_error(&resp, e, what);
                return 0;
        }
        return reg_response_error(&resp, e, what);
}

int reg_upload_commit(RegUpload *u, const char *digest, NbError *e)
{
        int r = check_names(u->repository, digest, e);
        if (r < 0 || !digest)
                return r < 0 ? r : nb_error_set(e, -EINVAL, "no digest given");
        if (u->failed || u->committed)
                return nb_error_set(e, -EINVAL, "the upload to %s/%s has already failed or ended",
                                    u->c->host, u->repository);
        char got[NB_DIGEST_STR_MAX];
        if (nb_digest_ctx_final(u->md, got) < 0)
                return nb_error_set(e, -EIO, "cannot digest upload data");
        u->failed = true; /* until it succeeds: no more writes */
        if (strncmp(digest, "sha256:", 7) == 0 && strcmp(got, digest) != 0)
                return nb_error_set(e, -EBADMSG, "the uploaded bytes have digest %s, not %s", got, digest);
        /* The sender sends the full blocks it has and ends; the tail and the commit go from here. */
        upload_sender_join(u, false);
        pthread_mutex_lock(&u->lock);
        u->ready = u->written;
        r = u->sender_r < 0 ? upload_sender_failed(u, e) : 0;
        pthread_mutex_unlock(&u->lock);
        if (r < 0)
                return r;
        for (;;) {
                r = upload_send(u, u->written, e);
                if (r >= 0)
                        r = upload_put(u, digest, e);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
                r = upload_restart(u, -ENOENT, e);
                if (r < 0)
                        return r;
        }
        u->committed = true;
        u->failed = false;
        (void)session_report(u->c, REG_SESSION_CLOSED, u->session_id, u->repository, u->location, NULL);
        upload_ring_free(u); /* nothing will be sent again: the memory goes now, not at reg_upload_abort() */
        return 0;
}

/* ---- download -------------------------------------------------------------------------------------------
 */

typedef struct GetCtx {
        reg_write_fn write;
        void *userdata;
        EVP_MD_CTX *md;
        uint64_t size;
        int64_t expected; /* -1: not known */
        NbError err;      /* why the stream was stopped on our side (write, size) */
} GetCtx;

static int get_sink(void *userdata, const void *data, size_t size)
{
        GetCtx *x = userdata;
        if (x->expected >= 0 && size > (uint64_t)x->expected - x->size)
                return nb_error_set(&x->err, -EBADMSG, "the registry sent more than the %lld bytes expected",
                                    (long long)x->expected);
        if (EVP_DigestUpdate(x->md, data, size) != 1)
                return nb_error_set(&x->err, -EIO, "cannot digest the blob");
        x->size += size;
        int r = x->write(x->userdata, data, size, &x->err);
        if (r < 0 && x->err.code >= 0)
                nb_error_set(&x->err, r, "the receiver of the blob failed: %s", strerror(-r));
        return r < 0 ? x->err.code : 0;
}

/* The bytes got, checked against what was asked for. */
static int get_check(GetCtx *x, const char *digest, const char *what, NbError *e)
{
        char got[NB_DIGEST_STR_MAX];
        if (x->expected >= 0 && x->size != (uint64_t)x->expected)
                return nb_error_set(e, -EBADMSG, "%s: got %llu bytes, expected %lld", what,
                                    (unsigned long long)x->size, (long long)x->expected);
        if (nb_digest_ctx_final(x->md, got) < 0)
                return nb_error_set(e, -EIO, "%s: cannot digest the blob", what);
        if (strcmp(got, digest) != 0)
                return nb_error_set(e, -EBADMSG,
                                    "%s: the %llu bytes received have digest %s: the registry's copy is "
                                    "corrupt or was replaced; what was received must be discarded",
                                    what, (unsigned long long)x->size, got);
        return 0;
}

int reg_blob_get(RegClient *c, const char *repository, const char *digest, int64_t expected_size,
                 reg_write_fn write, void *userdata, NbError *e)
{
        int r = check_names(repository, digest, e);
        if (r < 0 || !digest || !write)
                return r < 0 ? r : nb_error_set(e, -EINVAL, "no digest or receiver given");
        _cleanup_md_ctx_ EVP_MD_CTX *md = NULL;
        if (nb_digest_ctx_new(digest, &md) < 0)
                return nb_error_set(e, -EOPNOTSUPP, "cannot verify digest %s: unsupported algorithm",
                                    digest);
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "blobs", digest, &url) < 0 ||
            reg_scope(repository, "pull", &scope) < 0)
                return nb_error_oom(e);
        GetCtx x = {.write = write, .userdata = userdata, .md = md, .expected = expected_size};
        /* Retried only while nothing was handed to write (http.c): bytes once given are not taken back. */
        RegRequest rq = {.method = "GET",
                         .url = url,
                         .scope = scope,
                         .sink = get_sink,
                         .sink_userdata = &x,
                         .retry = true,
                         .follow = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "downloading blob %s from %s/%s", digest, c->host, repository);
        r = reg_request(c, &rq, &resp, e);
        if (r < 0 && x.err.code < 0) {
                if (e)
                        *e = x.err;
                return nb_error_wrap(e, r, "%s", what);
        }
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status != 200)
                return reg_response_error(&resp, e, what);
        return get_check(&x, digest, what, e);
}

/* ---- copy -----------------------------------------------------------------------------------------------
 */

static int copy_write(void *userdata, const void *data, size_t size, NbError *e)
{
        return reg_upload_write(userdata, data, size, e);
}

int reg_blob_copy(RegClient *src, const char *src_repository, RegClient *dst, const char *dst_repository,
                  const RegDescriptor *blob, NbError *e)
{
        if (!blob || blob->size < 0)
                return nb_error_set(e, -EINVAL, "no blob given");
        int r = check_names(src_repository, blob->digest, e);
        if (r >= 0)
                r = check_names(dst_repository, blob->digest, e);
        if (r < 0)
                return r;
        r = reg_blob_exists(dst, dst_repository, blob->digest, NULL, e);
        if (r != 0)
                return r < 0 ? r : 0;
        _cleanup_(reg_client_freep) RegClient *reader = NULL;
        if (src == dst || strcmp(src->url, dst->url) == 0) {
                r = reg_blob_mount(dst, dst_repository, blob->digest, src_repository, e);
                if (r != 0)
                        return r < 0 ? r : 0;
        }
        if (src == dst) {
                /* The GET's callback drives the upload: they need two curl handles. */
                r = reg_client_clone(src, &reader, e);
                if (r < 0)
                        return r;
                src = reader;
        }
        _cleanup_(reg_upload_abortp) RegUpload *u = NULL;
        r = reg_upload_begin(dst, dst_repository, NULL, NULL, &u, e);
        if (r < 0)
                return r;
        r = reg_blob_get(src, src_repository, blob->digest, blob->size, copy_write, u, e);
        if (r < 0)
                return nb_error_wrap(e, r, "copying to %s/%s", dst->host, dst_repository);
        return reg_upload_commit(u, blob->digest, e);
}
