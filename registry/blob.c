/* blob.c: blobs: HEAD, cross-repository mount, monolithic upload from memory, streamed chunked upload
 * (POST -> PATCH chunks with Content-Range -> PUT ?digest=), and copy from another registry.
 *
 * Upload sessions follow the Location of the latest response, resolved against the URL that answered; the
 * registry may move the session to another host or path, or keep its state in the query (`_state=`). */
#include <string.h>

#include "registry-internal.h"

static const char octet_stream[] = "application/octet-stream";

static int check_names(const char *repository, const char *digest, RegError *e)
{
        if (!reg_repository_valid(repository))
                return reg_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                     repository ? repository : "");
        if (digest && !reg_digest_valid(digest))
                return reg_error_set(e, -EINVAL, "invalid digest \"%s\"", digest);
        return 0;
}

int reg_blob_exists(RegClient *c, const char *repository, const char *digest, int64_t *ret_size, RegError *e)
{
        int r = check_names(repository, digest, e);
        if (r < 0 || !digest)
                return r < 0 ? r : reg_error_set(e, -EINVAL, "no digest given");
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "blobs", digest, &url) < 0 ||
            reg_scope(repository, "pull", &scope) < 0)
                return reg_error_set(e, -ENOMEM, "out of memory");
        RegRequest rq = {.method = "HEAD", .url = url, .scope = scope, .retry = true, .follow = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return reg_error_wrap(e, r, "checking blob %s in %s/%s", digest, c->host, repository);
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

/* DELETE an upload session; errors are ignored (the registry expires sessions anyway). */
static void session_cancel(RegClient *c, const char *location, const char *scope)
{
        if (!location)
                return;
        RegRequest rq = {.method = "DELETE", .url = location, .scope = scope};
        RegResponse resp = {0};
        RegError ignored = {0};
        if (reg_request(c, &rq, &resp, &ignored) >= 0)
                reg_response_done(&resp);
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
                   RegError *e)
{
        int r = check_names(repository, digest, e);
        if (r >= 0)
                r = check_names(from_repository, NULL, e);
        if (r < 0)
                return r;
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (mount_url(c, repository, digest, from_repository, &url) < 0 ||
            asprintf(&scope, "repository:%s:pull,push repository:%s:pull", repository, from_repository) < 0)
                return reg_error_set(e, -ENOMEM, "out of memory");
        RegRequest rq = {.method = "POST", .url = url, .scope = scope, .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "mounting blob %s from %s into %s/%s", digest, from_repository, c->host,
                 repository);
        r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return reg_error_wrap(e, r, "%s", what);
        if (resp.status == 201)
                return 1;
        if (resp.status == 202) {
                /* The registry opened an upload session instead of mounting. */
                session_cancel(c, resp.location, scope);
                return 0;
        }
        return reg_response_error(&resp, e, what);
}

/* POST blobs/uploads/ -> 202 + Location. */
static int session_open(RegClient *c, const char *repository, const char *scope, char **ret_location,
                        uint64_t *ret_chunk_min, RegError *e)
{
        _cleanup_free_ char *url = NULL;
        if (reg_client_v2_url(c, repository, "blobs/uploads", NULL, &url) < 0)
                return reg_error_set(e, -ENOMEM, "out of memory");
        RegRequest rq = {.method = "POST", .url = url, .scope = scope, .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "starting an upload to %s/%s", c->host, repository);
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return reg_error_wrap(e, r, "%s", what);
        if (resp.status != 202)
                return reg_response_error(&resp, e, what);
        if (!resp.location)
                return reg_error_set(e, -EBADMSG, "%s: the registry gave no upload location", what);
        if (ret_chunk_min)
                *ret_chunk_min = resp.chunk_min;
        *ret_location = TAKE_PTR(resp.location);
        return 0;
}

/* PUT <location>?digest=<digest> with body (may be empty). 201 expected. */
static int session_commit(RegClient *c, const char *location, const char *scope, const char *digest,
                          const void *body, size_t size, const char *what, RegError *e)
{
        _cleanup_free_ char *url = NULL;
        if (reg_url_add_query(location, "digest", digest, &url) < 0)
                return reg_error_set(e, -EINVAL, "%s: bad upload location", what);
        RegRequest rq = {.method = "PUT",
                         .url = url,
                         .scope = scope,
                         .content_type = octet_stream,
                         .body = body ? body : "",
                         .body_size = size,
                         .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return reg_error_wrap(e, r, "%s", what);
        if (resp.status != 201 && resp.status != 204)
                return reg_response_error(&resp, e, what);
        return 0;
}

int reg_blob_upload_buffer(RegClient *c, const char *repository, const char *digest, const void *data,
                           size_t size, RegError *e)
{
        int r = check_names(repository, digest, e);
        if (r < 0 || !digest)
                return r < 0 ? r : reg_error_set(e, -EINVAL, "no digest given");
        r = reg_digest_check(digest, data ? data : "", size);
        if (r < 0)
                return reg_error_set(e, r, "the data to upload does not have digest %s", digest);
        r = reg_blob_exists(c, repository, digest, NULL, e);
        if (r != 0)
                return r < 0 ? r : 0;
        _cleanup_free_ char *scope = NULL, *location = NULL;
        if (reg_scope(repository, "pull,push", &scope) < 0)
                return -ENOMEM;
        r = session_open(c, repository, scope, &location, NULL, e);
        if (r < 0)
                return r;
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "uploading blob %s to %s/%s", digest, c->host, repository);
        r = session_commit(c, location, scope, digest, data, size, what, e);
        if (r < 0)
                session_cancel(c, location, scope);
        return r;
}

/* ---- streamed upload ------------------------------------------------------------------------------------
 */

struct RegUpload {
        RegClient *c;
        char *repository;
        char *scope;
        char *location;
        uint8_t *buf;
        size_t len, cap;
        uint64_t offset; /* bytes the registry has */
        EVP_MD_CTX *md;  /* sha256 of everything written */
        reg_progress_fn progress;
        void *userdata;
        bool failed, committed;
};

RegUpload *reg_upload_abort(RegUpload *u)
{
        if (!u)
                return NULL;
        if (!u->committed)
                session_cancel(u->c, u->location, u->scope);
        free(u->repository);
        free(u->scope);
        free(u->location);
        free(u->buf);
        EVP_MD_CTX_free(u->md);
        free(u);
        return NULL;
}

static void reg_upload_abortp(RegUpload **u)
{
        reg_upload_abort(*u);
}

int reg_upload_begin(RegClient *c, const char *repository, reg_progress_fn progress, void *userdata,
                     RegUpload **ret, RegError *e)
{
        int r = check_names(repository, NULL, e);
        if (r < 0)
                return r;
        _cleanup_(reg_upload_abortp) RegUpload *u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        *u = (RegUpload){.c = c, .progress = progress, .userdata = userdata, .committed = true};
        if (reg_strdup(repository, &u->repository) < 0 ||
            reg_scope(repository, "pull,push", &u->scope) < 0 || reg_digest_ctx_new("sha256:", &u->md) < 0)
                return reg_error_set(e, -ENOMEM, "out of memory");
        uint64_t chunk_min = 0;
        r = session_open(c, repository, u->scope, &u->location, &chunk_min, e);
        if (r < 0)
                return r;
        u->committed = false;
        if (chunk_min > REG_CHUNK_MAX_BYTES)
                return reg_error_set(e, -EFBIG, "registry %s asks for upload chunks of at least %llu bytes",
                                     c->host, (unsigned long long)chunk_min);
        u->cap = c->chunk_size > chunk_min ? c->chunk_size : (size_t)chunk_min;
        u->buf = malloc(u->cap);
        if (!u->buf)
                return reg_error_set(e, -ENOMEM, "out of memory for a %zu byte upload chunk", u->cap);
        *ret = TAKE_PTR(u);
        return 0;
}

/* The registry's "Range: 0-<last>" must agree with what was sent. */
static int range_check(const RegResponse *resp, uint64_t want_end)
{
        if (!resp->range)
                return 0;
        const char *p = resp->range;
        if (strncmp(p, "bytes=", 6) == 0)
                p += 6;
        char *end;
        unsigned long long first = strtoull(p, &end, 10);
        if (end == p || *end != '-' || first != 0)
                return -EBADMSG;
        unsigned long long last = strtoull(end + 1, &end, 10);
        return *end == 0 && last + 1 == want_end ? 0 : -EBADMSG;
}

/* PATCH one chunk at u->offset; the session moves to the Location of the answer. */
static int send_chunk(RegUpload *u, const void *data, size_t len, RegError *e)
{
        char range[64], what[REG_URL_MAX];
        snprintf(range, sizeof(range), "%llu-%llu", (unsigned long long)u->offset,
                 (unsigned long long)(u->offset + len - 1));
        snprintf(what, sizeof(what), "uploading bytes %s of a blob to %s/%s", range, u->c->host,
                 u->repository);
        RegRequest rq = {.method = "PATCH",
                         .url = u->location,
                         .scope = u->scope,
                         .content_type = octet_stream,
                         .content_range = range,
                         .body = data,
                         .body_size = len,
                         .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        int r = reg_request(u->c, &rq, &resp, e);
        if (r < 0)
                return reg_error_wrap(e, r, "%s", what);
        if (resp.status != 202 && resp.status != 204)
                return reg_response_error(&resp, e, what);
        if (range_check(&resp, u->offset + len) < 0)
                return reg_error_set(e, -EBADMSG, "%s: the registry reports range %s", what, resp.range);
        if (resp.location) {
                free(u->location);
                u->location = TAKE_PTR(resp.location);
        }
        u->offset += len;
        if (u->progress)
                u->progress(u->userdata, u->offset);
        return 0;
}

int reg_upload_write(RegUpload *u, const void *data, size_t size, RegError *e)
{
        if (u->failed || u->committed)
                return reg_error_set(e, -EINVAL, "the upload to %s/%s has already failed or ended",
                                     u->c->host, u->repository);
        if (EVP_DigestUpdate(u->md, data, size) != 1)
                return reg_error_set(e, -EIO, "cannot digest upload data");
        const uint8_t *p = data;
        while (size > 0) {
                int r = 0;
                if (u->len == 0 && size >= u->cap) {
                        /* A whole chunk in the caller's memory: send it from there. */
                        r = send_chunk(u, p, u->cap, e);
                        p += u->cap;
                        size -= u->cap;
                } else {
                        size_t n = u->cap - u->len < size ? u->cap - u->len : size;
                        memcpy(u->buf + u->len, p, n);
                        u->len += n;
                        p += n;
                        size -= n;
                        if (u->len == u->cap) {
                                r = send_chunk(u, u->buf, u->len, e);
                                u->len = 0;
                        }
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
        RegError ignored = {0};
        return reg_blob_exists(u->c, u->repository, digest, &size, &ignored) == 1 &&
               (size < 0 || (uint64_t)size == u->offset);
}

int reg_upload_commit(RegUpload *u, const char *digest, RegError *e)
{
        int r = check_names(u->repository, digest, e);
        if (r < 0 || !digest)
                return r < 0 ? r : reg_error_set(e, -EINVAL, "no digest given");
        if (u->failed || u->committed)
                return reg_error_set(e, -EINVAL, "the upload to %s/%s has already failed or ended",
                                     u->c->host, u->repository);
        char got[REG_DIGEST_STR_MAX];
        if (reg_digest_ctx_final(u->md, "sha256", got) < 0)
                return reg_error_set(e, -EIO, "cannot digest upload data");
        u->failed = true; /* until it succeeds: no more writes */
        if (strncmp(digest, "sha256:", 7) == 0 && strcmp(got, digest) != 0)
                return reg_error_set(e, -EBADMSG, "the uploaded bytes have digest %s, not %s", got, digest);
        if (u->len > 0) {
                r = send_chunk(u, u->buf, u->len, e);
                if (r < 0)
                        return r;
                u->len = 0;
        }
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "committing blob %s to %s/%s", digest, u->c->host, u->repository);
        r = session_commit(u->c, u->location, u->scope, digest, NULL, 0, what, e);
        if (r < 0 && !committed_anyway(u, digest))
                return r;
        u->committed = true;
        u->failed = false;
        return 0;
}

/* ---- copy -----------------------------------------------------------------------------------------------
 */

typedef struct CopyCtx {
        RegUpload *u;
        uint64_t size, max;
        RegError err;
} CopyCtx;

static int copy_sink(void *userdata, const void *data, size_t size)
{
        CopyCtx *x = userdata;
        if (size > x->max - x->size)
                return reg_error_set(&x->err, -EFBIG, "the source blob is larger than its descriptor says");
        x->size += size;
        return reg_upload_write(x->u, data, size, &x->err);
}

static int copy_stream(RegClient *src, const char *src_repository, RegUpload *u, const RegDescriptor *blob,
                       RegError *e)
{
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(src, src_repository, "blobs", blob->digest, &url) < 0 ||
            reg_scope(src_repository, "pull", &scope) < 0)
                return reg_error_set(e, -ENOMEM, "out of memory");
        CopyCtx x = {.u = u, .max = (uint64_t)blob->size};
        RegRequest rq = {.method = "GET",
                         .url = url,
                         .scope = scope,
                         .sink = copy_sink,
                         .sink_userdata = &x,
                         .retry = true,
                         .follow = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "copying blob %s from %s/%s", blob->digest, src->host, src_repository);
        int r = reg_request(src, &rq, &resp, e);
        if (r < 0 && x.err.code < 0) {
                if (e)
                        *e = x.err;
                return reg_error_wrap(e, r, "%s", what);
        }
        if (r < 0)
                return reg_error_wrap(e, r, "%s", what);
        if (resp.status != 200)
                return reg_response_error(&resp, e, what);
        if (x.size != (uint64_t)blob->size)
                return reg_error_set(e, -EBADMSG, "%s: got %llu bytes, expected %lld", what,
                                     (unsigned long long)x.size, (long long)blob->size);
        return 0;
}

int reg_blob_copy(RegClient *src, const char *src_repository, RegClient *dst, const char *dst_repository,
                  const RegDescriptor *blob, RegError *e)
{
        if (!blob || blob->size < 0)
                return reg_error_set(e, -EINVAL, "no blob given");
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
        r = copy_stream(src, src_repository, u, blob, e);
        if (r < 0)
                return r;
        return reg_upload_commit(u, blob->digest, e);
}
