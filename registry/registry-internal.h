/* registry-internal.h: what the registry modules share among themselves, and what the unit tests and fuzz
 * targets reach: the parsers (WWW-Authenticate, auth files, token answers, manifests, indexes, error bodies,
 * Retry-After), URL resolution, digests, and the request helper that carries auth, redirects and retries.
 * Nothing here is part of the library's interface; registry.h is.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/clock.h"
#include "common/digest.h"
#include "common/fileio.h"
#include "registry/registry.h"

/* Named limits for what servers, files and callers control. */
/* Retries of a failing step end at the client's retry deadline, not at a count. This cap is only a safety
 * net (a deadline set to days, a server answering "Retry-After: 0" for ever): a 429 storm answered with
 * Retry-After: 1 fills the default 120 s with about 90 attempts, a backoff at the cap with about 60. */
#define REG_RETRY_ATTEMPTS_MAX    1000
#define REG_BACKOFF_BASE_MS       250u   /* ceiling of the first backoff; doubles per attempt */
#define REG_BACKOFF_CAP_MS        4000u  /* ceiling of one backoff (full jitter: the wait is in [0, this]) */
#define REG_RETRY_AFTER_CAP_MS    10000u /* a server's Retry-After is honoured up to this */
#define REG_RETRY_AFTER_JITTER    50     /* a Retry-After of T is waited as T plus up to this % of T */
#define REG_MESSAGE_MAX           512    /* registry text shown to people */
#define REG_HEADER_MAX            8192   /* one response header value kept */
#define REG_URL_MAX               8192   /* URLs built or resolved */
#define REG_TOKENS_MAX            16     /* cached tokens (one per scope) */
#define REG_AUTH_REFUSED_MAX      1      /* tokens a request has refused and fetches again */
#define REG_TOKEN_EXPIRY_MIN_S    60     /* expires_in default and floor */
#define REG_AUTHFILE_MAX          (4u * 1024 * 1024) /* auth.json / config.json */
#define REG_CREDENTIAL_MAX        8192               /* one username, password or token */
#define REG_REDIRECTS_MAX         5
#define REG_PATH_MAX              4096 /* file paths we build */
#define REG_NAME_MAX              255  /* repository name with host, docker's limit */
#define REG_TAG_MAX               128
#define REG_REFERENCE_MAX         1024                 /* a whole reference string */
#define REG_CHALLENGE_MAX         8                    /* challenges in WWW-Authenticate headers */
#define REG_CHUNK_MIN_BYTES       (64u * 1024)         /* smallest PATCH chunk we use */
#define REG_CHUNK_MAX_BYTES       (512u * 1024 * 1024) /* largest chunk, also caps OCI-Chunk-Min-Length */
#define REG_CA_BUNDLE_MAX         (16u * 1024 * 1024)  /* system CA bundle plus extra certificates */
#define REG_CERT_FILES_MAX        64                   /* files looked at in one certs.d/<host>/ */
#define REG_REQUEST_TIMEOUT_S     120 /* whole-request timeout of small requests (not chunks, not streams) */
#define REG_SMALL_BODY_MAX        REG_MANIFEST_MAX /* a request body up to this size is "small" */
#define REG_LOW_SPEED_BPS         1024L      /* below this for low_speed_time_s: the transfer is stuck */
#define REG_UPLOAD_RECOVERIES_MAX 64         /* failure streaks of one upload without new bytes confirmed */
#define REG_UPLOAD_RESTARTS_MAX   3          /* new sessions after the registry lost one, per upload */
#define REG_MANIFEST_BLOB_RETRIES 3          /* manifest PUTs again after MANIFEST_BLOB_UNKNOWN */
#define REG_ENV_LONG_MAX          (1L << 40) /* environment overrides are read up to this */

/* Cleanup helpers for the third-party handles. */
static inline void reg_curl_slist_freep(struct curl_slist **p)
{
        curl_slist_free_all(*p);
}
static inline void reg_cjson_deletep(cJSON **p)
{
        cJSON_Delete(*p);
}
static inline void reg_curlu_freep(CURLU **p)
{
        curl_url_cleanup(*p);
}
static inline void reg_curl_freep(char **p)
{
        curl_free(*p);
}
/* Secrets are wiped before they are freed. */
static inline void reg_secret_freep(char **p)
{
        if (*p) {
                OPENSSL_cleanse(*p, strlen(*p));
                free(*p);
        }
}
#define _cleanup_slist_     _cleanup_(reg_curl_slist_freep)
#define _cleanup_cjson_     _cleanup_(reg_cjson_deletep)
#define _cleanup_curlu_     _cleanup_(reg_curlu_freep)
#define _cleanup_curl_free_ _cleanup_(reg_curl_freep)
#define _cleanup_secret_    _cleanup_(reg_secret_freep)

/* ---- small helpers (util.c) ------------------------------------------------------------------------- */

/* strdup() that returns -ENOMEM through r; NULL in, NULL out. */
int reg_strdup(const char *s, char **ret);

/* Resolves a Location header against the URL of the request that got it (RFC 3986 reference resolution:
 * absolute, other host, path-only, bare relative, query-only). */
int reg_url_resolve(const char *base, const char *location, char **ret);
/* Appends key=value (value URL-encoded) to url's query, with '?' or '&' as needed. */
int reg_url_add_query(const char *url, const char *key, const char *value, char **ret);
/* scheme://host[:port]/path of url without the query and fragment, for messages (presigned URLs carry
 * credentials in their query). Writes into buf. */
const char *reg_url_redact(const char *url, char *buf, size_t size);
/* true when a and b have the same scheme, host and port. */
bool reg_url_same_origin(const char *a, const char *b);
/* false when the path of url has a "." or ".." segment, a backslash, or %2e, %2f or %5c in it (libcurl
 * removes dot segments before sending, and a server may decode the others): a path that is not what it reads
 * as. */
bool reg_url_path_plain(const char *url);

/* "Range: 0-N" of an upload session (also "bytes=0-N"): the number of bytes the registry has (N + 1).
 * distribution answers "0-0" for an empty session too: callers that can tell treat 1 as 0. -EBADMSG for
 * anything else (a start other than 0, garbage, N < -1). */
int reg_range_parse(const char *value, uint64_t *ret_size);
/* A positive integer from the environment variable name, at most REG_ENV_LONG_MAX; def otherwise. */
long reg_env_long(const char *name, long def);

/* Retry-After: delta-seconds or an HTTP date, relative to now. Capped at REG_RETRY_AFTER_CAP_MS. */
int reg_retry_after_parse(const char *value, time_t now, unsigned *ret_ms);
/* A seed for a client's generator (RegClient.rand_state), from getrandom(); never 0. */
uint64_t reg_rand_seed(void);
/* The backoff before retry number attempt+1 (attempt from 0): full jitter, uniform in [0, min(cap,
 * base * 2^attempt)]. Advances *state. */
unsigned reg_backoff_ms(unsigned attempt, uint64_t *state);
/* A server's Retry-After of ms, plus a random 0..REG_RETRY_AFTER_JITTER percent of it. Advances *state. */
unsigned reg_retry_after_jitter_ms(unsigned ms, uint64_t *state);

/* Distribution error bodies: {"errors":[{"code":"DENIED","message":"...","detail":...}]}. Fills code with
 * the first error code ("" if none) and msg with "CODE: message (detail); ..." or a short note for HTML /
 * text / empty bodies, cut to fit (at most REG_MESSAGE_MAX). Never fails. */
void reg_error_body_parse(const char *body, size_t size, const char *content_type, char *code,
                          size_t code_size, char *msg, size_t msg_size);

/* ---- references (reference.c) ----------------------------------------------------------------------- */

bool reg_host_valid(const char *host, size_t len);

/* ---- auth (auth.c) ------------------------------------------------------------------------------------ */

typedef enum RegAuthScheme {
        REG_AUTH_NONE = 0,
        REG_AUTH_BASIC,
        REG_AUTH_BEARER,
} RegAuthScheme;

typedef struct RegChallenge {
        RegAuthScheme scheme;
        char *realm;
        char *service;
        char *scope;
        char *error; /* "invalid_token", "insufficient_scope", ... */
} RegChallenge;

/* Parses one WWW-Authenticate header value (one or several challenges). Bearer is preferred over Basic;
 * unknown schemes are skipped. -EINVAL when no Basic or Bearer challenge is found. */
int reg_challenge_parse(const char *header, RegChallenge *ret);
void reg_challenge_done(RegChallenge *c);

typedef struct RegCredentials {
        char *username;
        char *password;
        char *identity_token; /* OAuth2 refresh token (docker's "identitytoken") */
} RegCredentials;

void reg_credentials_done(RegCredentials *c);
/* Finds host's entry in the "auths" object of a docker config.json / containers auth.json. Returns 1 and
 * fills ret when found, 0 when the file has no entry for host, -EINVAL (with e) for a malformed file. */
int reg_auth_config_parse(const char *json, size_t size, const char *host, RegCredentials *ret, NbError *e);
/* Looks for host's credentials: authfile when given (it must exist), else $REGISTRY_AUTH_FILE,
 * $DOCKER_CONFIG/config.json, ~/.docker/config.json. Returns 1 when found (ret, and the file in *ret_path),
 * 0 when none. */
int reg_auth_load(const char *authfile, const char *host, RegCredentials *ret, char **ret_path, NbError *e);
/* The token endpoint's answer: "token" or "access_token", "expires_in" (default and floor 60 s). */
int reg_token_parse(const char *body, size_t size, char **ret_token, long *ret_expires_in, NbError *e);
/* "Basic base64(user:pass)" header value. */
int reg_basic_header(const char *username, const char *password, char **ret);

/* ---- client (client.c) -------------------------------------------------------------------------------- */

typedef struct RegToken {
        char *scope; /* cache key: the scope the request asked for */
        char *token;
        uint64_t expires_usec;
} RegToken;

struct RegClient {
        char *url;  /* "https://host[:port]", no trailing slash */
        char *host; /* "host[:port]" */
        bool plain_http;
        CURL *curl;
        char *user_agent;
        long connect_timeout_s;
        long low_speed_time_s;
        long retry_deadline_s;
        long cancel_drain_s;
        size_t chunk_size;
        size_t replay_max;
        const _Atomic bool *cancel;
        /* the options, kept to make a second client for the same registry */
        char *opt_authfile, *opt_ca_file, *opt_certs_dir;
        char *ca_bundle; /* system bundle plus extra CAs, or NULL for curl's defaults */
        size_t ca_bundle_size;
        char *client_cert, *client_key;
        RegCredentials creds;
        bool have_creds;
        char *authfile_path; /* where creds came from, for messages */
        RegAuthScheme auth;  /* learned from the registry's first challenge */
        char *realm, *service;
        RegToken tokens[REG_TOKENS_MAX];
        size_t n_tokens;
        uint64_t rand_state;
        reg_session_fn session_fn; /* reg_client_set_session_hook() */
        void *session_userdata;
};

/* Streams a 2xx response body elsewhere (blob copy). Returns 0 or -errno (ends the transfer). */
typedef int (*reg_sink_fn)(void *userdata, const void *data, size_t size);

typedef struct RegRequest {
        const char *method; /* GET HEAD POST PUT PATCH DELETE */
        const char *url;    /* absolute */
        const char *scope;  /* "repository:x:pull,push", for tokens; NULL: none */
        const char *accept;
        const char *content_type;
        const char *content_range;
        const void *body; /* sent from memory, so it can be resent */
        size_t body_size;
        size_t body_max; /* response body kept at most; 0: REG_ERROR_BODY_MAX */
        reg_sink_fn sink;
        void *sink_userdata;
        bool retry;     /* safe to resend on connection errors and 408/429/5xx */
        bool follow;    /* follow redirects (GET/HEAD of blobs and manifests) */
        bool no_rewind; /* curl must not send the body again by itself (it does on a reused connection that
                           died): whether the registry kept any of it is asked first (upload chunks) */
        bool drain;     /* a cancel does not cut it once sent: it may finish for the client's cancel_drain_s
                           (writes to an upload session and manifest PUTs: see RegClientOptions.cancel) */
        bool cleanup;   /* sent even after a cancel, with REG_CANCEL_CLEANUP_TIMEOUT_S and no retries */
} RegRequest;

typedef struct RegResponse {
        long status;
        char *body; /* NUL-terminated */
        size_t body_size;
        char *content_type;
        char *location; /* resolved against the URL that answered */
        char *docker_content_digest;
        char *range;
        char *effective_url;
        char *www_authenticate; /* all challenges, joined with ", " */
        char *retry_after;
        int64_t content_length; /* -1 when unknown */
        uint64_t chunk_min;     /* OCI-Chunk-Min-Length, 0 when absent */
        char error_code[64];    /* first distribution error code of the body, "" if none */
        unsigned attempts;      /* requests sent for this answer: > 1 when transient answers were retried */
        long retried_s;         /* seconds from the first failing answer to this one (with attempts > 1) */
} RegResponse;

void reg_response_done(RegResponse *r);

/* The retries of one failing step: attempts and when it first failed. Zero-initialised per step. */
typedef struct RegRetry {
        unsigned attempt;
        uint64_t first_failure_usec; /* monotonic; 0 before the first failure */
} RegRetry;
/* After a failure for reason: sleeps, then returns 0 for one more attempt (the retry is counted under
 * reason, reg_retry_counts()). The wait is the server's Retry-After (capped at REG_RETRY_AFTER_CAP_MS) plus
 * jitter, or, without one (or with one under REG_BACKOFF_BASE_MS), the full-jitter backoff; it is cut at the
 * client's retry deadline, counted from rt's first failure. Returns -ETIMEDOUT without sleeping when the
 * deadline has passed, when the server's Retry-After alone reaches past it, or after
 * REG_RETRY_ATTEMPTS_MAX attempts; -ECANCELED on a cancel. */
int reg_retry_wait(RegClient *c, RegRetry *rt, RegRetryReason reason, const char *retry_after);
/* Whole seconds since rt's first failure (0 before one): for "giving up after N attempts in S s". */
long reg_retry_elapsed_s(const RegRetry *rt);
/* The reason of a retry after a failing status (408, 429, 5xx) or a transport errno (as reg_request returns
 * them: -ETIMEDOUT, -ECONNREFUSED, -EHOSTUNREACH, -ECONNRESET ...). */
RegRetryReason reg_retry_reason_status(long status);
RegRetryReason reg_retry_reason_errno(int r);
/* Counts one retry (reg_retry_wait() does). */
void reg_retry_count(RegRetryReason reason);
/* Transport errors (as reg_request returns them) that another attempt may cure. */
bool reg_errno_transient(int r);
/* A failing status that another attempt may cure: 408, 429, 500, 502, 503, 504 without a final error code.
 */
bool reg_status_transient(long status, const char *code);
/* distribution error codes that say an upload session is gone: BLOB_UPLOAD_UNKNOWN, BLOB_UPLOAD_INVALID. */
bool reg_code_session_lost(long status, const char *code);
/* Sends rq with auth, redirects and retries. Returns 0 with *ret filled for any final HTTP status but 401
 * (auth failures become errors here); -errno with e for transport errors and auth failures. */
int reg_request(RegClient *c, const RegRequest *rq, RegResponse *ret, NbError *e);
/* Fills e for an unexpected answer: "<what>: HTTP 403 (DENIED: ...)" and returns the errno for it. */
int reg_response_error(const RegResponse *r, NbError *e, const char *what);
static inline void reg_client_freep(RegClient **c)
{
        reg_client_free(*c);
}

/* A second client for the same registry and options (blob copy within one registry). */
int reg_client_clone(RegClient *c, RegClient **ret, NbError *e);
/* "<client url>/v2/<repository>/<kind>/<ref>". */
int reg_client_v2_url(RegClient *c, const char *repository, const char *kind, const char *ref, char **ret);
/* "repository:<repository>:<actions>" */
int reg_scope(const char *repository, const char *actions, char **ret);

/* ---- manifests and indexes (oci.c) ---------------------------------------------------------------------
 */

/* Tells an index from a manifest: 1 for an index / manifest list, 0 for an image manifest, -EMEDIUMTYPE
 * for anything else (schema1, unknown). The media type is taken from the JSON, else the Content-Type. */
int reg_manifest_kind(const char *body, size_t size, const char *content_type, const char **ret_media_type,
                      NbError *e);
/* Parses an image manifest into img's manifest_media_type, config and layers. */
int reg_manifest_parse(const char *body, size_t size, const char *content_type, RegImage *img, NbError *e);
/* Chooses the manifest for os/arch/variant from an index or manifest list. */
int reg_index_select(const char *body, size_t size, const char *os, const char *arch, const char *variant,
                     RegDescriptor *ret, NbError *e);
