/* http.c: one request to the registry, with what every request needs: the Authorization header (only ever
 * for the registry's own origin; curl drops it on redirects to other hosts), the Bearer challenge -> token
 * round trip, token renewal on 401, retries with backoff and Retry-After, bounded bodies, and errors that
 * say what the registry said without the URL's query (presigned URLs carry credentials there). */
#include <stdatomic.h>
#include <string.h>
#include <strings.h>

#include "registry/registry-internal.h"

typedef struct Transfer {
        RegClient *c;
        const RegRequest *rq;
        RegResponse *resp;
        CURL *curl;
        size_t body_max, body_cap;
        size_t sent;
        uint64_t sunk;             /* bytes given to rq->sink */
        uint64_t cancel_seen_usec; /* a drained request: when its progress callback first saw the cancel */
        bool overflow;
        int sink_error;
} Transfer;

void reg_response_done(RegResponse *r)
{
        if (!r)
                return;
        free(r->body);
        free(r->content_type);
        free(r->location);
        free(r->docker_content_digest);
        free(r->range);
        free(r->effective_url);
        free(r->www_authenticate);
        free(r->retry_after);
        *r = (RegResponse){0};
}

static void response_donep(RegResponse *r)
{
        reg_response_done(r);
}

static size_t write_cb(char *p, size_t sz, size_t nm, void *userdata)
{
        Transfer *t = userdata;
        size_t n = sz * nm;
        long status = 0;
        curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
        if (t->rq->sink && status >= 200 && status < 300) {
                int r = t->rq->sink(t->rq->sink_userdata, p, n);
                if (r < 0) {
                        t->sink_error = r;
                        return 0;
                }
                t->sunk += n;
                return n;
        }
        RegResponse *resp = t->resp;
        size_t want = n;
        if (n > t->body_max - resp->body_size) {
                /* An error page is only shown cut short: keep its start, drop the rest. An answer we need
                 * whole (a manifest, a token) must not be larger than allowed. */
                if (status < 300) {
                        t->overflow = true;
                        return 0;
                }
                n = t->body_max - resp->body_size;
        }
        if (resp->body_size + n + 1 > t->body_cap) {
                size_t cap = t->body_cap ? t->body_cap : 4096;
                while (cap < resp->body_size + n + 1)
                        cap *= 2;
                if (cap > t->body_max + 1)
                        cap = t->body_max + 1;
                char *b = realloc(resp->body, cap);
                if (!b)
                        return 0;
                resp->body = b;
                t->body_cap = cap;
        }
        if (n)
                memcpy(resp->body + resp->body_size, p, n);
        resp->body_size += n;
        if (resp->body)
                resp->body[resp->body_size] = 0;
        return want;
}

static size_t read_cb(char *buf, size_t sz, size_t nm, void *userdata)
{
        Transfer *t = userdata;
        size_t n = sz * nm, left = t->rq->body_size - t->sent;
        if (n > left)
                n = left;
        if (n)
                memcpy(buf, (const char *)t->rq->body + t->sent, n);
        t->sent += n;
        return n;
}

static int seek_cb(void *userdata, curl_off_t offset, int origin)
{
        Transfer *t = userdata;
        if (t->rq->no_rewind || origin != SEEK_SET || offset < 0 || (size_t)offset > t->rq->body_size)
                return CURL_SEEKFUNC_CANTSEEK;
        t->sent = (size_t)offset;
        return CURL_SEEKFUNC_OK;
}

static int slist_add(struct curl_slist **l, const char *name, const char *value)
{
        char buf[REG_HEADER_MAX + 64];
        int n = snprintf(buf, sizeof(buf), "%s: %s", name, value ? value : "");
        if (n < 0 || (size_t)n >= sizeof(buf))
                return -E2BIG;
        if (!value) /* "Name:" removes a header curl would add */
                buf[strlen(name) + 1] = 0;
        struct curl_slist *x = curl_slist_append(*l, buf);
        OPENSSL_cleanse(buf, sizeof(buf));
        if (!x)
                return -ENOMEM;
        *l = x;
        return 0;
}

static int build_headers(const RegRequest *rq, const char *authz, struct curl_slist **ret)
{
        _cleanup_slist_ struct curl_slist *h = NULL;
        int r = slist_add(&h, "Expect", NULL);
        if (r >= 0 && rq->accept)
                r = slist_add(&h, "Accept", rq->accept);
        if (r >= 0)
                r = slist_add(&h, "Content-Type", rq->content_type);
        if (r >= 0 && rq->content_range)
                r = slist_add(&h, "Content-Range", rq->content_range);
        if (r >= 0 && authz)
                r = slist_add(&h, "Authorization", authz);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(h);
        return 0;
}

static void setup_method(CURL *curl, const RegRequest *rq, Transfer *t)
{
        bool upload = rq->body || strcmp(rq->method, "PUT") == 0 || strcmp(rq->method, "PATCH") == 0;
        if (strcmp(rq->method, "HEAD") == 0)
                curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
        else if (strcmp(rq->method, "GET") == 0)
                curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
        else if (strcmp(rq->method, "POST") == 0) {
                curl_easy_setopt(curl, CURLOPT_POST, 1L);
                curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_size);
        } else {
                if (upload) {
                        curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
                        curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->body_size);
                }
                curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, rq->method);
        }
        curl_easy_setopt(curl, CURLOPT_READFUNCTION, read_cb);
        curl_easy_setopt(curl, CURLOPT_READDATA, t);
        curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, seek_cb);
        curl_easy_setopt(curl, CURLOPT_SEEKDATA, t);
}

static bool cancelled(const RegClient *c)
{
        return c->cancel && atomic_load(c->cancel);
}

/* Called by curl about once a second even when nothing moves: a cancel aborts the transfer, but for a
 * cleanup request (it has its own timeout) and a drained one, which is aborted only once it has had
 * cancel_drain_s since the cancel was seen. */
static int progress_cb(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
        Transfer *t = userdata;
        (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
        if (!cancelled(t->c) || t->rq->cleanup)
                return 0;
        if (!t->rq->drain)
                return 1;
        uint64_t now = nb_now_usec();
        if (t->cancel_seen_usec == 0)
                t->cancel_seen_usec = now;
        return now - t->cancel_seen_usec >= (uint64_t)t->c->cancel_drain_s * 1000000u ? 1 : 0;
}

static void setup_common(RegClient *c, const RegRequest *rq, Transfer *t, char *errbuf)
{
        CURL *curl = c->curl;
        curl_easy_reset(curl);
        curl_easy_setopt(curl, CURLOPT_URL, rq->url);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, c->user_agent);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, c->connect_timeout_s);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, REG_LOW_SPEED_BPS);
        curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, c->low_speed_time_s);
        /* A small exchange has a whole-request timeout too (a server that trickles above the low-speed
         * limit); chunks and streamed bodies have only the low-speed limit, their size sets their time. */
        if (rq->cleanup)
                curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)REG_CANCEL_CLEANUP_TIMEOUT_S);
        else if (!rq->sink && rq->body_size <= REG_SMALL_BODY_MAX && strcmp(rq->method, "PATCH") != 0)
                curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)REG_REQUEST_TIMEOUT_S);
        /* http only when the registry URL says so; never https -> http on a redirect. */
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, c->plain_http ? "http,https" : "https");
        curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, c->plain_http ? "http,https" : "https");
        curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, rq->follow ? 1L : 0L);
        curl_easy_setopt(curl, CURLOPT_MAXREDIRS, (long)REG_REDIRECTS_MAX);
        curl_easy_setopt(curl, CURLOPT_UNRESTRICTED_AUTH, 0L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
        if (c->ca_bundle) {
                struct curl_blob blob = {
                        .data = c->ca_bundle, .len = c->ca_bundle_size, .flags = CURL_BLOB_NOCOPY};
                curl_easy_setopt(curl, CURLOPT_CAINFO_BLOB, &blob);
        }
        if (c->client_cert) {
                curl_easy_setopt(curl, CURLOPT_SSLCERT, c->client_cert);
                curl_easy_setopt(curl, CURLOPT_SSLKEY, c->client_key);
        }
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, t);
        if (c->cancel) {
                curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
                curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, progress_cb);
                curl_easy_setopt(curl, CURLOPT_XFERINFODATA, t);
        }
        setup_method(curl, rq, t);
}

/* The value of one response header of the last response (after redirects), bounded. */
static int header_get(CURL *curl, const char *name, char **ret)
{
        struct curl_header *h = NULL;
        if (curl_easy_header(curl, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h || !h->value)
                return 0;
        return reg_strdup(strnlen(h->value, REG_HEADER_MAX + 1) > REG_HEADER_MAX ? "" : h->value, ret);
}

/* All WWW-Authenticate headers as one list of challenges. */
static int header_challenges(CURL *curl, char **ret)
{
        char buf[REG_HEADER_MAX];
        size_t len = 0;
        struct curl_header *h = NULL;
        buf[0] = 0;
        for (size_t i = 0; i < REG_CHALLENGE_MAX; i++) {
                if (curl_easy_header(curl, "WWW-Authenticate", i, CURLH_HEADER, -1, &h) != CURLHE_OK)
                        break;
                int n = snprintf(buf + len, sizeof(buf) - len, "%s%s", len ? ", " : "", h->value);
                if (n < 0 || (size_t)n >= sizeof(buf) - len)
                        break;
                len += (size_t)n;
                if (i + 1 >= h->amount)
                        break;
        }
        return len ? reg_strdup(buf, ret) : 0;
}

static int collect_headers(CURL *curl, RegResponse *r)
{
        char *eff = NULL;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r->status);
        curl_easy_getinfo(curl, CURLINFO_EFFECTIVE_URL, &eff);
        curl_off_t cl = -1;
        curl_easy_getinfo(curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        r->content_length = cl;
        _cleanup_free_ char *loc = NULL, *chunk_min = NULL;
        if (reg_strdup(eff, &r->effective_url) < 0 ||
            header_get(curl, "Content-Type", &r->content_type) < 0 ||
            header_get(curl, "Location", &loc) < 0 ||
            header_get(curl, "Docker-Content-Digest", &r->docker_content_digest) < 0 ||
            header_get(curl, "Range", &r->range) < 0 ||
            header_get(curl, "Retry-After", &r->retry_after) < 0 ||
            header_get(curl, "OCI-Chunk-Min-Length", &chunk_min) < 0 ||
            header_challenges(curl, &r->www_authenticate) < 0)
                return -ENOMEM;
        if (loc && *loc && eff && reg_url_resolve(eff, loc, &r->location) == -ENOMEM)
                return -ENOMEM;
        if (chunk_min) {
                char *end;
                unsigned long long v = strtoull(chunk_min, &end, 10);
                if (end != chunk_min && *end == 0)
                        r->chunk_min = v;
        }
        if (r->status >= 400)
                reg_error_body_parse(r->body, r->body_size, r->content_type, r->error_code,
                                     sizeof(r->error_code), NULL, 0);
        return 0;
}

/* One HTTP exchange. Returns -errno for local failures; a transport failure is in *ret_cc. */
static int perform(RegClient *c, const RegRequest *rq, const char *authz, RegResponse *resp,
                   CURLcode *ret_cc, char *errbuf, uint64_t *ret_sunk)
{
        Transfer t = {.c = c, .rq = rq, .resp = resp, .curl = c->curl};
        t.body_max = rq->body_max ? rq->body_max : REG_ERROR_BODY_MAX;
        _cleanup_slist_ struct curl_slist *headers = NULL;
        int r = build_headers(rq, authz, &headers);
        if (r < 0)
                return r;
        errbuf[0] = 0;
        if (cancelled(c) && !rq->cleanup)
                return -ECANCELED;
        setup_common(c, rq, &t, errbuf);
        curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
        CURLcode cc = curl_easy_perform(c->curl);
        *ret_sunk = t.sunk;
        if (t.sink_error < 0)
                return t.sink_error;
        if (t.overflow)
                return -EFBIG;
        if (cc == CURLE_WRITE_ERROR)
                return -ENOMEM;
        if (cc == CURLE_ABORTED_BY_CALLBACK)
                return -ECANCELED;
        *ret_cc = cc;
        if (cc != CURLE_OK)
                return 0;
        return collect_headers(c->curl, resp);
}

static bool curl_retryable(CURLcode cc)
{
        switch (cc) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_CONNECT:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
                return true;
        default:
                return false;
        }
}

static int curl_errno(CURLcode cc)
{
        switch (cc) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                return -EHOSTUNREACH;
        case CURLE_COULDNT_CONNECT:
                return -ECONNREFUSED;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_TOO_MANY_REDIRECTS:
                return -ELOOP;
        case CURLE_UNSUPPORTED_PROTOCOL:
                return -EPROTONOSUPPORT;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CACERT_BADFILE:
                return -EPROTO;
        default:
                return -ECONNRESET;
        }
}

static bool status_retryable(long status)
{
        return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
               status == 504;
}

/* Codes that no retry can change. */
static bool code_final(const char *code)
{
        static const char *const codes[] = {"DENIED",           "NAME_INVALID", "DIGEST_INVALID",
                                            "MANIFEST_INVALID", "UNAUTHORIZED", "NAME_UNKNOWN",
                                            "BLOB_UNKNOWN",     "UNSUPPORTED"};
        for (size_t i = 0; i < ELEMENTSOF(codes); i++)
                if (strcmp(code, codes[i]) == 0)
                        return true;
        return false;
}

bool reg_status_transient(long status, const char *code)
{
        return status_retryable(status) && !code_final(code ? code : "");
}

bool reg_errno_transient(int r)
{
        return r == -ECONNRESET || r == -ECONNREFUSED || r == -ETIMEDOUT || r == -EHOSTUNREACH;
}

bool reg_code_session_lost(long status, const char *code)
{
        return status == 404 &&
               (strcmp(code, "BLOB_UPLOAD_UNKNOWN") == 0 || strcmp(code, "BLOB_UPLOAD_INVALID") == 0);
}

/* Sleeps ms in slices of at most 100 ms, ending early (-ECANCELED) on a cancel. */
static int sleep_ms(RegClient *c, unsigned ms)
{
        while (ms > 0) {
                if (cancelled(c))
                        return -ECANCELED;
                unsigned slice = ms < 100 ? ms : 100;
                struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
                ms -= slice;
        }
        return cancelled(c) ? -ECANCELED : 0;
}

int reg_retry_wait(RegClient *c, RegRetry *rt, RegRetryReason reason, const char *retry_after)
{
        uint64_t now = nb_now_usec();
        if (rt->first_failure_usec == 0)
                rt->first_failure_usec = now;
        unsigned attempt = rt->attempt++;
        uint64_t deadline = rt->first_failure_usec + (uint64_t)c->retry_deadline_s * 1000000u;
        if (rt->attempt >= REG_RETRY_ATTEMPTS_MAX || now >= deadline)
                return -ETIMEDOUT;
        uint64_t left_ms = (deadline - now) / 1000u;
        unsigned ms;
        /* "Retry-After: 0" is no advice: answered at once, a server that says it every time would be
         * hammered until the deadline. Under the first backoff's ceiling the backoff decides. */
        if (reg_retry_after_parse(retry_after, time(NULL), &ms) == 0 && ms >= REG_BACKOFF_BASE_MS) {
                if (ms >= left_ms) /* the server's own wait reaches past the deadline: no use waiting */
                        return -ETIMEDOUT;
                ms = reg_retry_after_jitter_ms(ms, &c->rand_state);
        } else
                ms = reg_backoff_ms(attempt, &c->rand_state);
        /* The last wait ends at the deadline: one more attempt then, none after it. */
        if (ms > left_ms)
                ms = (unsigned)left_ms;
        int r = sleep_ms(c, ms);
        if (r >= 0)
                reg_retry_count(reason);
        return r;
}

long reg_retry_elapsed_s(const RegRetry *rt)
{
        if (rt->first_failure_usec == 0)
                return 0;
        return (long)((nb_now_usec() - rt->first_failure_usec + 500000u) / 1000000u);
}

/* A URL curl refused by its scheme (CURLOPT_PROTOCOLS_STR, CURLOPT_REDIR_PROTOCOLS_STR): an https registry
 * sent us, by a redirect or a Location, to plain http (or elsewhere). Named, without its query, so that the
 * user sees which hop was refused; nothing was sent to it. */
static int protocol_refused(RegClient *c, const RegRequest *rq, NbError *e)
{
        char from[REG_URL_MAX], to[REG_URL_MAX];
        char *eff = NULL;
        long status = 0;
        curl_easy_getinfo(c->curl, CURLINFO_EFFECTIVE_URL, &eff);
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
        reg_url_redact(rq->url, from, sizeof(from));
        reg_url_redact(eff ? eff : rq->url, to, sizeof(to));
        if (eff && strcmp(eff, rq->url) != 0)
                return nb_error_set(
                        e, -EPROTONOSUPPORT,
                        "refused a redirect (HTTP %ld) of %s %s to %s: the registry %s is https, "
                        "and nothing is sent to another protocol (no https -> http downgrade)",
                        status, rq->method, from, to, c->host);
        return nb_error_set(e, -EPROTONOSUPPORT,
                            "refused to send %s to %s: the registry %s is https, and nothing is sent to "
                            "another protocol (no https -> http downgrade)",
                            rq->method, to, c->host);
}

static int transport_error(RegClient *c, const RegRequest *rq, CURLcode cc, const char *errbuf,
                           unsigned attempts, NbError *e)
{
        char url[REG_URL_MAX];
        char detail[CURL_ERROR_SIZE];
        char tries[64] = "";
        if (cc == CURLE_UNSUPPORTED_PROTOCOL && !c->plain_http)
                return protocol_refused(c, rq, e);
        /* curl's text can quote a URL: keep nothing after a '?'. */
        reg_url_redact(*errbuf ? errbuf : curl_easy_strerror(cc), detail, sizeof(detail));
        if (attempts > 1)
                snprintf(tries, sizeof(tries), " (%u attempts)", attempts);
        return nb_error_set(e, curl_errno(cc), "%s %s failed: %s%s", rq->method,
                            reg_url_redact(rq->url, url, sizeof(url)), detail, tries);
}

/* ---- tokens --------------------------------------------------------------------------------------------
 */

static RegToken *token_find(RegClient *c, const char *key)
{
        uint64_t now = nb_now_usec();
        for (size_t i = 0; i < c->n_tokens; i++)
                if (strcmp(c->tokens[i].scope, key) == 0)
                        return c->tokens[i].expires_usec > now ? &c->tokens[i] : NULL;
        return NULL;
}

static void token_drop(RegClient *c, const char *key)
{
        for (size_t i = 0; i < c->n_tokens; i++)
                if (strcmp(c->tokens[i].scope, key) == 0) {
                        free(c->tokens[i].scope);
                        reg_secret_freep(&c->tokens[i].token);
                        c->tokens[i] = c->tokens[--c->n_tokens];
                        c->tokens[c->n_tokens] = (RegToken){0};
                        return;
                }
}

/* Takes token; a full cache drops the entry that expires first. */
static int token_store(RegClient *c, const char *key, char **token, long expires_in)
{
        token_drop(c, key);
        if (c->n_tokens == REG_TOKENS_MAX) {
                size_t oldest = 0;
                for (size_t i = 1; i < c->n_tokens; i++)
                        if (c->tokens[i].expires_usec < c->tokens[oldest].expires_usec)
                                oldest = i;
                token_drop(c, c->tokens[oldest].scope);
        }
        char *k = strdup(key);
        if (!k)
                return -ENOMEM;
        /* Renew a little early: a token must not expire between the lookup and the server's check. */
        long margin = expires_in / 10 < 10 ? expires_in / 10 : 10;
        c->tokens[c->n_tokens++] = (RegToken){
                .scope = k,
                .token = TAKE_PTR(*token),
                .expires_usec = nb_now_usec() + (uint64_t)(expires_in - margin) * 1000000u,
        };
        return 0;
}

/* realm?service=..&scope=..(one per space-separated scope) */
static int token_url(RegClient *c, const char *scope, char **ret)
{
        _cleanup_free_ char *url = NULL;
        int r = reg_strdup(c->realm, &url);
        if (r >= 0 && c->service) {
                _cleanup_free_ char *u = TAKE_PTR(url);
                r = reg_url_add_query(u, "service", c->service, &url);
        }
        for (const char *p = scope ? scope : ""; r >= 0 && *p;) {
                size_t n = strcspn(p, " ");
                if (n > 0 && n < REG_URL_MAX) {
                        char one[REG_URL_MAX];
                        snprintf(one, sizeof(one), "%.*s", (int)n, p);
                        _cleanup_free_ char *u = TAKE_PTR(url);
                        r = reg_url_add_query(u, "scope", one, &url);
                }
                p += n;
                p += strspn(p, " ");
        }
        if (r < 0)
                return r;
        *ret = TAKE_PTR(url);
        return 0;
}

/* OAuth2 refresh-token grant body, for identity tokens (docker's "identitytoken"). */
static int token_form(RegClient *c, const char *scope, char **ret)
{
        _cleanup_curl_free_ char *rt = curl_easy_escape(NULL, c->creds.identity_token, 0);
        _cleanup_curl_free_ char *svc = curl_easy_escape(NULL, c->service ? c->service : "", 0);
        _cleanup_curl_free_ char *sc = curl_easy_escape(NULL, scope ? scope : "", 0);
        if (!rt || !svc || !sc)
                return -ENOMEM;
        char *body = NULL;
        int n = asprintf(&body,
                         "grant_type=refresh_token&client_id=nbsnap&refresh_token=%s&service=%s&scope=%s",
                         rt, svc, sc);
        OPENSSL_cleanse(rt, strlen(rt));
        if (n < 0)
                return -ENOMEM;
        *ret = body;
        return 0;
}

static int request_retrying(RegClient *c, const RegRequest *rq, const char *authz, RegResponse *ret,
                            NbError *e);

static int token_answer_error(RegClient *c, const RegResponse *resp, const char *scope, NbError *e)
{
        char msg[REG_MESSAGE_MAX + 1], code[64], realm[REG_URL_MAX];
        reg_error_body_parse(resp->body, resp->body_size, resp->content_type, code, sizeof(code), msg,
                             sizeof(msg));
        int r = nb_error_set(e, resp->status == 401 || resp->status == 403 ? -EACCES : -EIO,
                             "the token server %s refused %s for %s: HTTP %ld%s%s%s",
                             reg_url_redact(c->realm, realm, sizeof(realm)),
                             c->have_creds ? "the credentials" : "anonymous access",
                             scope ? scope : "the registry", resp->status, *msg ? " (" : "", msg,
                             *msg ? ")" : "");
        if (e)
                e->http_status = (int)resp->status;
        return r;
}

/* cleanup: for a cleanup request (RegRequest.cleanup), so sent after a cancel too. */
static int token_fetch(RegClient *c, const char *scope, const char *key, bool cleanup, NbError *e)
{
        _cleanup_free_ char *url = NULL;
        _cleanup_secret_ char *form = NULL, *basic = NULL, *token = NULL;
        bool refresh = c->have_creds && c->creds.identity_token;
        int r = refresh ? reg_strdup(c->realm, &url) : token_url(c, scope, &url);
        if (r >= 0 && refresh)
                r = token_form(c, scope, &form);
        if (r >= 0 && !refresh && c->have_creds && c->creds.username && c->creds.password)
                r = reg_basic_header(c->creds.username, c->creds.password, &basic);
        if (r < 0)
                return nb_error_set(e, r, "cannot build the token request");
        RegRequest rq = {
                .method = refresh ? "POST" : "GET",
                .url = url,
                .content_type = refresh ? "application/x-www-form-urlencoded" : NULL,
                .body = form,
                .body_size = form ? strlen(form) : 0,
                .body_max = REG_TOKEN_MAX,
                .retry = !cleanup,
                .follow = true,
                .cleanup = cleanup,
        };
        _cleanup_(response_donep) RegResponse resp = {0};
        r = request_retrying(c, &rq, basic, &resp, e);
        if (r < 0)
                return r;
        if (resp.status != 200)
                return token_answer_error(c, &resp, scope, e);
        long expires_in;
        r = reg_token_parse(resp.body, resp.body_size, &token, &expires_in, e);
        if (resp.body)
                OPENSSL_cleanse(resp.body, resp.body_size);
        if (r < 0)
                return r;
        return token_store(c, key, &token, expires_in);
}

/* ---- auth ----------------------------------------------------------------------------------------------
 */

static int auth_header(RegClient *c, const RegRequest *rq, char **ret, NbError *e)
{
        *ret = NULL;
        if (!reg_url_same_origin(rq->url, c->url))
                return 0;
        if (c->auth == REG_AUTH_BASIC && c->have_creds && c->creds.username && c->creds.password)
                return reg_basic_header(c->creds.username, c->creds.password, ret);
        if (c->auth != REG_AUTH_BEARER)
                return 0;
        const char *key = rq->scope ? rq->scope : "";
        RegToken *t = token_find(c, key);
        if (!t) {
                int r = token_fetch(c, rq->scope, key, rq->cleanup, e);
                if (r < 0)
                        return r;
                t = token_find(c, key);
        }
        if (!t || asprintf(ret, "Bearer %s", t->token) < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

static int no_credentials(RegClient *c, const RegRequest *rq, NbError *e)
{
        return nb_error_set(
                e, -EACCES,
                "registry %s requires a login for %s %s, and no credentials for it were found (in %s)",
                c->host, rq->method, rq->scope ? rq->scope : "",
                c->authfile_path ? c->authfile_path
                : c->opt_authfile
                        ? c->opt_authfile
                        : "$REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json");
}

/* A 401: learn the scheme, get a token when it is Bearer. 0 means: send again. */
static int handle_401(RegClient *c, const RegRequest *rq, const RegResponse *resp, bool sent_auth,
                      NbError *e)
{
        RegChallenge ch = {0};
        if (reg_challenge_parse(resp->www_authenticate, &ch) < 0)
                return reg_response_error(resp, e,
                                          "the registry answered 401 without an authentication challenge");
        if (ch.scheme == REG_AUTH_BASIC) {
                reg_challenge_done(&ch);
                if (!c->have_creds || !c->creds.username || !c->creds.password)
                        return no_credentials(c, rq, e);
                c->auth = REG_AUTH_BASIC;
                return 0;
        }
        bool http_realm = strncasecmp(ch.realm, "http://", 7) == 0;
        if ((!http_realm || !c->plain_http) && strncasecmp(ch.realm, "https://", 8) != 0) {
                char realm[REG_URL_MAX];
                reg_url_redact(ch.realm, realm, sizeof(realm));
                reg_challenge_done(&ch);
                return nb_error_set(e, -EPROTO, "registry %s sent a token realm that is not https: %s",
                                    c->host, realm);
        }
        free(c->realm);
        free(c->service);
        c->realm = TAKE_PTR(ch.realm);
        c->service = TAKE_PTR(ch.service);
        c->auth = REG_AUTH_BEARER;
        const char *key = rq->scope ? rq->scope : "";
        if (sent_auth)
                token_drop(c, key);
        int r = token_fetch(c, ch.scope ? ch.scope : rq->scope, key, rq->cleanup, e);
        reg_challenge_done(&ch);
        return r;
}

/* A 401 to a request that already carried what the last challenge asked for. */
static int auth_refused(RegClient *c, const RegRequest *rq, const RegResponse *resp, NbError *e)
{
        char what[REG_URL_MAX + 256];
        if (c->auth == REG_AUTH_BASIC)
                snprintf(what, sizeof(what), "registry %s refused the credentials from %s for user \"%s\"",
                         c->host, c->authfile_path ? c->authfile_path : "the auth file",
                         c->creds.username ? c->creds.username : "");
        else
                snprintf(what, sizeof(what), "registry %s refused the token it asked for (%s%s)", c->host,
                         rq->scope ? "scope " : "no scope", rq->scope ? rq->scope : "");
        return reg_response_error(resp, e, what);
}

/* ---- the loop ------------------------------------------------------------------------------------------
 */

/* Transport retries and 408/429/5xx retries, no auth handling. */
static int request_retrying(RegClient *c, const RegRequest *rq, const char *authz, RegResponse *ret,
                            NbError *e)
{
        char errbuf[CURL_ERROR_SIZE];
        RegRetry rt = {0};
        for (unsigned tries = 1;; tries++) {
                _cleanup_(response_donep) RegResponse resp = {0};
                CURLcode cc = CURLE_OK;
                uint64_t sunk = 0;
                int r = perform(c, rq, authz, &resp, &cc, errbuf, &sunk);
                if (r < 0)
                        return nb_error_set(e, r, "%s: %s", rq->method,
                                            r == -EFBIG ? "the answer is larger than allowed"
                                                        : strerror(-r));
                bool again = rq->retry && sunk == 0;
                if (cc != CURLE_OK) {
                        if (!again || !curl_retryable(cc) ||
                            reg_retry_wait(c, &rt, reg_retry_reason_errno(curl_errno(cc)), NULL) < 0)
                                return transport_error(c, rq, cc, errbuf, tries, e);
                        continue;
                }
                /* After the last attempt the failing answer is returned as it is: callers report it,
                 * with the attempts and the time spent (reg_response_error()). */
                if (again && reg_status_transient(resp.status, resp.error_code) &&
                    reg_retry_wait(c, &rt, reg_retry_reason_status(resp.status), resp.retry_after) == 0)
                        continue;
                resp.attempts = tries;
                resp.retried_s = reg_retry_elapsed_s(&rt);
                *ret = resp;
                resp = (RegResponse){0};
                return 0;
        }
}

/* A request meets at most: the challenge to a request sent without credentials (a client's first request),
 * and REG_AUTH_REFUSED_MAX tokens refused (expired or revoked, e.g. while the request waited out 429s: the
 * token is dropped and fetched again). Refused Basic credentials, a second challenge or one refusal more are
 * final. */
int reg_request(RegClient *c, const RegRequest *rq, RegResponse *ret, NbError *e)
{
        unsigned refused = 0;
        bool challenged = false;
        for (;;) {
                _cleanup_secret_ char *authz = NULL;
                int r = auth_header(c, rq, &authz, e);
                if (r < 0)
                        return r;
                _cleanup_(response_donep) RegResponse resp = {0};
                r = request_retrying(c, rq, authz, &resp, e);
                if (r < 0)
                        return r;
                /* Credentials go to the registry's origin only: a 401 from another host (a session's
                 * Location there, a recorded URL) is an answer, not a realm to send the password to. */
                if (resp.status != 401 || !reg_url_same_origin(rq->url, c->url)) {
                        *ret = resp;
                        resp = (RegResponse){0};
                        return 0;
                }
                if (authz ? c->auth == REG_AUTH_BASIC || refused++ == REG_AUTH_REFUSED_MAX : challenged)
                        return auth_refused(c, rq, &resp, e);
                challenged = challenged || !authz;
                r = handle_401(c, rq, &resp, authz != NULL, e);
                if (r < 0)
                        return r;
        }
}

static int status_errno(long status, const char *code)
{
        if (strcmp(code, "UNSUPPORTED") == 0 || status == 405)
                return -EPERM;
        if (strcmp(code, "MANIFEST_BLOB_UNKNOWN") == 0)
                return -ENOLINK;
        switch (status) {
        case 400:
                return strcmp(code, "DIGEST_INVALID") == 0 ? -EBADMSG : -EINVAL;
        case 401:
        case 403:
                return -EACCES;
        case 404:
                return -ENOENT;
        case 409:
                return -EBUSY;
        case 413:
                return -EFBIG;
        case 408:
        case 504:
                return -ETIMEDOUT;
        case 416:
                return -ERANGE;
        case 429:
                return -EAGAIN;
        default:
                return -EIO;
        }
}

int reg_response_error(const RegResponse *r, NbError *e, const char *what)
{
        char msg[REG_MESSAGE_MAX + 1], code[64];
        reg_error_body_parse(r->body, r->body_size, r->content_type, code, sizeof(code), msg, sizeof(msg));
        char tries[96] = "";
        if (r->attempts > 1)
                snprintf(tries, sizeof(tries), " (giving up after %u attempts in %ld s)", r->attempts,
                         r->retried_s);
        int err = nb_error_set(e, status_errno(r->status, code), "%s: HTTP %ld%s%s%s", what, r->status,
                               *msg ? ": " : "", msg, tries);
        if (e)
                e->http_status = (int)r->status;
        return err;
}
