/* registry.h: a client for the Docker Registry HTTP API v2 / OCI distribution-spec, on libcurl.
 *
 * One RegClient talks to one registry (scheme + host[:port]). It resolves images (OCI index / Docker
 * manifest list -> the platform asked for; Docker schema2 or OCI manifest), fetches configs and blobs,
 * checks blobs with HEAD, mounts blobs across repositories, uploads blobs (from memory, or streamed in
 * chunked PATCHes) and puts manifests. Auth: anonymous, Basic, and the Bearer challenge flow, with tokens
 * cached per scope and renewed on 401. Credentials come from the containers convention (authfile,
 * $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json,
 * ~/.docker/config.json). TLS is verified; a CA file can be given and /etc/containers/certs.d/<host>/ is
 * honoured. The OCI image model is here too: media types of both families and the mapping between them,
 * descriptors, and building a new image's config and manifest on a base image (layers kept, dropped, added).
 *
 * Every function returns 0 (or a documented positive value) on success and a negative errno on failure, with
 * NbError filled with a message a person can act on. Nothing here logs or prints.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/digest.h"
#include "common/error.h"

/* Named limits: what a server controls is bounded. */
#define REG_MANIFEST_MAX             (4u * 1024 * 1024) /* manifests and indexes; registries must accept 4 MB */
#define REG_CONFIG_MAX               (8u * 1024 * 1024) /* image config blob */
#define REG_TOKEN_MAX                (64u * 1024)       /* token endpoint answer */
#define REG_ERROR_BODY_MAX           (64u * 1024) /* error bodies read; shown to people cut to 512 bytes */
#define REG_LAYERS_MAX               1024         /* layers in a manifest */
#define REG_CHUNK_DEFAULT            (8u * 1024 * 1024)
#define REG_REPLAY_DEFAULT           (24u * 1024 * 1024) /* upload bytes kept to resend (at least 2 chunks) */
#define REG_RETRY_DEADLINE_S         120 /* retries of one failing step end this long after it failed */
#define REG_CANCEL_DRAIN_S           20 /* after a cancel, an upload request on the wire may finish for this long */
#define REG_CANCEL_CLEANUP_TIMEOUT_S 10 /* a cleanup DELETE sent after a cancel takes at most this long */

/* ---- references ----------------------------------------------------------------------------------------
 */

/* A parsed image reference "[host[:port]/]path[:tag][@digest]" (docker reference grammar). */
typedef struct RegRef {
        char *host;       /* "127.0.0.1:5000"; NULL when the reference named no host */
        char *repository; /* "library/ubuntu", lowercase path components */
        char *tag;        /* NULL when absent */
        char *digest;     /* "sha256:<64 hex>"; NULL when absent */
} RegRef;

/* Parses s. A first component is a host when it contains '.' or ':' or is "localhost". Rejects anything
 * outside the grammar (uppercase in the path, "..", empty components, bad digests, tags over 128). */
int reg_ref_parse(const char *s, RegRef **ret, NbError *e);
RegRef *reg_ref_free(RegRef *r);

/* Checks one repository path component, a tag or a digest by the distribution-spec grammar. */
bool reg_repository_valid(const char *repo);
bool reg_tag_valid(const char *tag);
bool reg_digest_valid(const char *digest);

/* ---- client --------------------------------------------------------------------------------------------
 */

typedef struct RegClientOptions {
        const char *url;      /* "https://swr.example.com" or "http://127.0.0.1:5000"; http only when said */
        const char *authfile; /* NULL: $REGISTRY_AUTH_FILE, then $DOCKER_CONFIG/config.json, ~/.docker/... */
        const char *ca_file;  /* extra CA bundle, or NULL */
        const char
                *certs_dir; /* NULL: /etc/containers/certs.d; <certs_dir>/<host[:port]>/ *.crt are trusted */
        const char *user_agent;
        long connect_timeout_s; /* 0: 30 */
        long low_speed_time_s;  /* abort a transfer below 1 KB/s for this long;
                                   0: $NBSNAP_REGISTRY_LOW_SPEED_TIME, else 60 */
        size_t chunk_size;      /* PATCH chunk for streamed uploads; 0: REG_CHUNK_DEFAULT */
        long retry_deadline_s;  /* a failing step is retried for at most this long after its first failure;
                                   0: $NBSNAP_REGISTRY_RETRY_DEADLINE, else REG_RETRY_DEADLINE_S */
        size_t replay_max;      /* bytes of a streamed upload kept in memory to resend after a lost session;
                                   0: $NBSNAP_REGISTRY_REPLAY_MAX, else REG_REPLAY_DEFAULT */
        const _Atomic bool *cancel; /* NULL, or set from another thread: the transfer in flight is aborted
                                       within about a second, waits between retries end, and requests fail
                                       with -ECANCELED from then on. Two exceptions keep the registry clean:
                                       a request that writes to an upload session (POST, PATCH, PUT) or a
                                       manifest PUT already on the wire is let finish, for at most
                                       cancel_drain_s (cutting a PATCH after the registry stored its body
                                       leaves the session at an offset no Location names: distribution then
                                       refuses to DELETE it); and the cleanup request (DELETE of an upload
                                       session) is still sent, with a whole-request timeout of
                                       REG_CANCEL_CLEANUP_TIMEOUT_S */
        long cancel_drain_s;        /* 0: REG_CANCEL_DRAIN_S */
} RegClientOptions;

typedef struct RegClient RegClient;

int reg_client_new(const RegClientOptions *o, RegClient **ret, NbError *e);
RegClient *reg_client_free(RegClient *c);

/* ---- upload sessions ------------------------------------------------------------------------------------
 *
 * Every upload session the client opens on the registry (POST blobs/uploads/: streamed uploads, monolithic
 * blob PUTs, and the session distribution opens when it declines a cross-repository mount) is reported to
 * the client's session hook, so that its owner can record it and DELETE it after a crash:
 *  - REG_SESSION_OPENED right after the POST answered, before any byte of data is sent to it; a hook that
 *    fails (returns < 0) fails the upload with the hook's error, and the session is DELETEd at once;
 *  - REG_SESSION_MOVED whenever the session's Location changes (distribution signs the session's offset
 *    into the `_state` query of each PATCH answer: only the latest Location can delete it); a hook that
 * fails fails the upload (which then DELETEs the session with the latest Location);
 *  - REG_SESSION_CLOSED once nothing is left on the registry: committed (PUT ?digest= answered 201, or the
 *    blob found by HEAD after a lost answer), or DELETEd (2xx, or 404: the registry no longer knows it). A
 *    DELETE that failed (registry unreachable, 5xx, timeout) reports nothing: the session stays recorded.
 * Sessions are told apart by id (unique in the process). The hook is called on the thread that uses the
 * client, which for a streamed upload is the upload's sender thread too: it must be thread-safe. The
 * library only calls it; what a record is, and where it lives, is the caller's. */
typedef enum RegSessionEvent {
        REG_SESSION_OPENED,
        REG_SESSION_MOVED,
        REG_SESSION_CLOSED,
} RegSessionEvent;

typedef struct RegSession {
        uint64_t id;
        const char *registry;   /* the client's URL: "https://host[:port]" */
        const char *repository; /* "namespace/name" */
        const char *url;        /* the session's latest Location, absolute */
} RegSession;

typedef int (*reg_session_fn)(void *userdata, RegSessionEvent event, const RegSession *session, NbError *e);

/* Sets (fn NULL: clears) the client's session hook. reg_client_clone() copies it. */
void reg_client_set_session_hook(RegClient *c, reg_session_fn fn, void *userdata);

/* DELETE of an upload session recorded earlier (by a process that died). url must be an http(s) URL of an
 * upload session ("/blobs/uploads/" in its path, and under /v2/<repository>/blobs/uploads/ when it is on the
 * client's own registry, the only origin credentials go to): anything else is -EINVAL and nothing is sent.
 * Sent once, without retries, with REG_CANCEL_CLEANUP_TIMEOUT_S. Returns 1 when the registry deleted it
 * (2xx), 0 when it answered 404 (it no longer knows the session, or, distribution's BLOB_UPLOAD_INVALID,
 * the session's offset moved past the one this Location names, which no client can delete: the registry's
 * purge will), with e holding the registry's words; -errno with e otherwise. */
int reg_session_delete(RegClient *c, const char *repository, const char *url, NbError *e);
/* "host[:port]" of the registry, as used in image names (swr_path). */
const char *reg_client_host(RegClient *c);

/* ---- the OCI image model (oci.c, oci-build.c) ----------------------------------------------------------
 */

/* Media types of both families. Docker schema2 has no zstd layer and no nondistributable tar. */
#define REG_MEDIA_OCI_INDEX                 "application/vnd.oci.image.index.v1+json"
#define REG_MEDIA_OCI_MANIFEST              "application/vnd.oci.image.manifest.v1+json"
#define REG_MEDIA_OCI_CONFIG                "application/vnd.oci.image.config.v1+json"
#define REG_MEDIA_OCI_LAYER_TAR             "application/vnd.oci.image.layer.v1.tar"
#define REG_MEDIA_OCI_LAYER_GZIP            "application/vnd.oci.image.layer.v1.tar+gzip"
#define REG_MEDIA_OCI_LAYER_ZSTD            "application/vnd.oci.image.layer.v1.tar+zstd"
#define REG_MEDIA_OCI_LAYER_NONDIST_TAR     "application/vnd.oci.image.layer.nondistributable.v1.tar"
#define REG_MEDIA_OCI_LAYER_NONDIST_GZIP    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
#define REG_MEDIA_OCI_LAYER_NONDIST_ZSTD    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
#define REG_MEDIA_DOCKER_LIST               "application/vnd.docker.distribution.manifest.list.v2+json"
#define REG_MEDIA_DOCKER_MANIFEST           "application/vnd.docker.distribution.manifest.v2+json"
#define REG_MEDIA_DOCKER_CONFIG             "application/vnd.docker.container.image.v1+json"
#define REG_MEDIA_DOCKER_LAYER_TAR          "application/vnd.docker.image.rootfs.diff.tar"
#define REG_MEDIA_DOCKER_LAYER_GZIP         "application/vnd.docker.image.rootfs.diff.tar.gzip"
#define REG_MEDIA_DOCKER_LAYER_FOREIGN_GZIP "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

/* The same media type in the other family (containers/image's manifest conversion): a type already in the
 * family asked for comes back as it is; NULL when the family has no equivalent (zstd layers in Docker
 * schema2) or the type is unknown. */
const char *reg_media_type_to_oci(const char *media_type);
const char *reg_media_type_to_docker(const char *media_type);

typedef struct RegDescriptor {
        char *media_type;
        char *digest;
        int64_t size;
} RegDescriptor;

void reg_descriptor_done(RegDescriptor *d);

typedef struct RegImage {
        char *manifest_media_type; /* REG_MEDIA_OCI_MANIFEST or REG_MEDIA_DOCKER_MANIFEST */
        char *manifest_digest;     /* digest of the platform manifest (not of the index) */
        char *manifest;            /* raw manifest bytes, NUL-terminated */
        size_t manifest_size;
        RegDescriptor config;
        char *config_json; /* raw config bytes, NUL-terminated, digest verified */
        size_t config_size;
        RegDescriptor *layers;
        size_t n_layers;
} RegImage;

RegImage *reg_image_free(RegImage *img);

/* A layer put on top of a base image's kept layers. */
typedef struct RegLayerAdd {
        const char *media_type; /* either family's name: written in the new manifest's family */
        const char *digest;     /* of the blob */
        int64_t size;           /* of the blob */
        const char *diff_id;    /* sha256 of the uncompressed tar */
        const char *created_by; /* its history entry's; NULL or "": none */
        const char *comment;    /* NULL or "": none */
} RegLayerAdd;

/* A new image on a base: the bottom keep_layers layers of the base, then the added layers. The base config
 * is kept whole (Env, Cmd, Entrypoint, WorkingDir, User, Labels, ExposedPorts, Volumes, architecture ...)
 * but for "created", rootfs.diff_ids and history: the dropped layers' diff_ids and history entries go (the
 * top ones without "empty_layer": true; empty_layer entries record config changes the config still holds,
 * so they stay), and each added layer appends its diff_id and one history entry. The manifest is the base's
 * (base layer descriptors kept as they are: urls, annotations) in the base's family, or OCI when an added
 * layer's type has no Docker schema2 equivalent (zstd): then the config and base layers keep their bytes
 * and digests and only their media types change, as `skopeo copy --dest-compress-format zstd` does. */
typedef struct RegImageBuild {
        const RegImage *base;
        size_t keep_layers;        /* base->n_layers: all; fewer drops the top ones (squash) */
        const RegLayerAdd *layers; /* added, bottom first */
        size_t n_layers;
        const char *created;   /* RFC 3339: the config's "created" and the new history entries' */
        const char *base_name; /* the name the base was resolved by: an OCI manifest gets the
                                  org.opencontainers.image.base.{name,digest} annotations; NULL: none */
} RegImageBuild;

/* A JSON document built here: its bytes, digest and media type. */
typedef struct RegBuilt {
        char *json; /* NUL-terminated */
        size_t size;
        char digest[NB_DIGEST_STR_MAX];
        const char *media_type; /* a REG_MEDIA_* constant or the base's string; not owned */
} RegBuilt;

void reg_built_done(RegBuilt *b);

/* The new manifest's media type, reading only the added layers' media types (known before their bytes):
 * the base's, or REG_MEDIA_OCI_MANIFEST when an added layer has no Docker type. -EOPNOTSUPP when the image
 * must become OCI and a kept base layer has no OCI type (its index in *ret_layer when not NULL); -EINVAL for
 * an added layer of unknown type or a keep_layers above the base's. */
int reg_image_build_type(const RegImageBuild *b, const char **ret_type, size_t *ret_layer, NbError *e);
/* The new config. -EBADMSG when the base config is not an object, has no rootfs.diff_ids (a base without
 * layers may have none) or a count of them other than the manifest's layers, or when layers are dropped and
 * its history's layer entries do not match the layers one to one. */
int reg_image_build_config(const RegImageBuild *b, RegBuilt *ret, NbError *e);
/* The new manifest, referencing config (as reg_image_build_config() built it). */
int reg_image_build_manifest(const RegImageBuild *b, const RegBuilt *config, RegBuilt *ret, NbError *e);

/* ---- fetching images (image.c) -------------------------------------------------------------------------
 */

/* Fetches repository:reference (a tag or a digest). An index / manifest list is resolved to the entry for
 * os/arch(/variant; NULL matches any). Verifies the digests of what it fetched by digest. */
int reg_image_fetch(RegClient *c, const char *repository, const char *reference, const char *os,
                    const char *arch, const char *variant, RegImage **ret, NbError *e);

/* ---- blobs ---------------------------------------------------------------------------------------------
 */

/* HEAD the blob. Returns 1 when present (size in *ret_size when not NULL), 0 when absent. */
int reg_blob_exists(RegClient *c, const char *repository, const char *digest, int64_t *ret_size, NbError *e);

/* Cross-repository mount (POST /v2/<repository>/blobs/uploads/?mount=<digest>&from=<from>). Returns 1 when
 * mounted (201), 0 when the registry declined (it opened an upload session instead, which is cancelled). */
int reg_blob_mount(RegClient *c, const char *repository, const char *digest, const char *from_repository,
                   NbError *e);

/* Uploads a blob held in memory (monolithic: POST then PUT ?digest=). Skips the upload when HEAD finds it.
 */
int reg_blob_upload_buffer(RegClient *c, const char *repository, const char *digest, const void *data,
                           size_t size, NbError *e);

/* Receives a downloaded blob's bytes, in order. Returns 0, or a negative errno (e filled, when the receiver
 * can say why) to stop the download. */
typedef int (*reg_write_fn)(void *userdata, const void *data, size_t size, NbError *e);

/* Streams a blob to write: GET /v2/<repository>/blobs/<digest> with the client's auth, following redirects
 * (registries send blob GETs to their storage; Authorization only ever goes to the registry itself), in
 * curl's buffers: memory does not grow with the blob. The bytes are checked at the end against the digest's
 * SHA-256 (or SHA-512) and, when expected_size >= 0, against that size (more bytes fail at once): -EBADMSG
 * when they differ, and the caller must discard what it was given. -ENOENT when the repository has no such
 * blob (BLOB_UNKNOWN). A write failure comes back as it is, with its message. Failures before the first byte
 * are retried; a transfer cut off after bytes were handed over is not resumed: it fails. The client's cancel
 * flag aborts it within about a second (-ECANCELED). */
int reg_blob_get(RegClient *c, const char *repository, const char *digest, int64_t expected_size,
                 reg_write_fn write, void *userdata, NbError *e);

/* Copies a blob from another client's repository (reg_blob_get() -> streamed upload), for base images that
 * live on another registry. */
int reg_blob_copy(RegClient *src, const char *src_repository, RegClient *dst, const char *dst_repository,
                  const RegDescriptor *blob, NbError *e);

/* Streamed upload of a blob whose digest is known only at the end. Bytes written are sent in PATCH chunks of
 * the client's chunk size (Content-Range, honouring OCI-Chunk-Min-Length) by a thread of the upload's own,
 * while reg_upload_write() goes on filling the next chunk; it blocks only when every chunk in memory is
 * still unconfirmed by the registry. Until reg_upload_commit() or reg_upload_abort() returns, the client
 * belongs to that thread (use another client meanwhile), and the progress callback is called on it. The last
 * max(2 chunks, replay_max) bytes stay in memory (the whole blob while it is that small), so that:
 *  - a chunk that failed (reset, timeout, 408/429/5xx, 416, a Range that disagrees) is resent from the
 *    registry's offset, read with GET <location> (Range: 0-N), when those bytes are still in memory;
 *  - a session the registry lost (BLOB_UPLOAD_UNKNOWN / BLOB_UPLOAD_INVALID, e.g. after a registry restart)
 *    is replaced by a new one and the blob sent again from byte 0, when byte 0 is still in memory; a larger
 *    blob fails with -ESTALE and a message that says so, as does a registry that went back to an offset
 *    whose bytes are no longer in memory: the caller may produce the bytes again and send them in a new
 *    upload (nbsnap save does, NB_SAVE_LAYER_AGAIN_MAX times).
 * Recoveries back off with jitter (Retry-After honoured) and end at the client's retry deadline. */
typedef struct RegUpload RegUpload;
typedef void (*reg_progress_fn)(void *userdata, uint64_t bytes_sent);

int reg_upload_begin(RegClient *c, const char *repository, reg_progress_fn progress, void *userdata,
                     RegUpload **ret, NbError *e);
int reg_upload_write(RegUpload *u, const void *data, size_t size, NbError *e);
/* Sends what is buffered and commits with PUT ?digest=. If the PUT fails after the registry committed (the
 * answer was lost or timed out), the digest is checked with HEAD before reporting an error. DIGEST_INVALID
 * is never answered by sending the same bytes again: -EBADMSG. */
int reg_upload_commit(RegUpload *u, const char *digest, NbError *e);
/* Cancels an unfinished upload (DELETE on the session, errors ignored) and frees it; NULL is fine. After
 * reg_upload_commit() succeeded it only frees: call it in every case to release the upload. After the
 * client's cancel flag was set, a chunk on the wire is first let finish (at most the client's drain time),
 * so that the DELETE goes to the session's latest Location: this may take that long when the registry does
 * not answer. */
RegUpload *reg_upload_abort(RegUpload *u);

/* ---- manifests -----------------------------------------------------------------------------------------
 */

/* PUT /v2/<repository>/manifests/<reference>. *ret_digest (when not NULL) gets "sha256:..." of data.
 * MANIFEST_BLOB_UNKNOWN: every blob the manifest references is checked with HEAD; when all are there (a
 * registry whose storage lags) the PUT is tried again, at most REG_MANIFEST_BLOB_RETRIES times; when one is
 * missing, -ENOLINK and a message naming it: push that blob again and call again. */
int reg_manifest_put(RegClient *c, const char *repository, const char *reference, const char *media_type,
                     const void *data, size_t size, char **ret_digest, NbError *e);
/* HEADs the config and every layer of an image manifest in repository. Returns the number of blobs missing
 * (0: all there); *ret_first_missing (when not NULL) gets the digest of the first one missing. */
int reg_manifest_blobs_missing(RegClient *c, const char *repository, const void *manifest, size_t size,
                               char **ret_first_missing, NbError *e);
/* HEAD /v2/<repository>/manifests/<reference> (a tag or a digest), every manifest type accepted. Returns 1
 * when the registry has it (*ret_digest, when not NULL, gets its Docker-Content-Digest or NULL when the
 * registry sent none), 0 on 404 (no such tag or repository), negative with the registry's words otherwise
 * (401/403 after authentication: -EACCES). */
int reg_manifest_exists(RegClient *c, const char *repository, const char *reference, char **ret_digest,
                        NbError *e);
/* DELETE /v2/<repository>/manifests/<digest>. -EPERM with the registry's words when deletion is disabled. */
int reg_manifest_delete(RegClient *c, const char *repository, const char *digest, NbError *e);

/* ---- retry counters (retry.c)
 * -----------------------------------------------------------------------------
 */

/* Why a step was tried again. */
typedef enum RegRetryReason {
        REG_RETRY_HTTP_429, /* 429 Too Many Requests */
        REG_RETRY_HTTP_5XX, /* 500, 502, 503, 504 */
        REG_RETRY_TIMEOUT,  /* 408, or a transfer that timed out */
        REG_RETRY_CONNECT,  /* the host could not be resolved or reached, or the TLS handshake failed */
        REG_RETRY_OTHER, /* a reset connection, a lost or disagreeing upload session, a lagging registry */
        _REG_RETRY_REASON_MAX,
} RegRetryReason;

/* "http_429", "http_5xx", "timeout", "connect", "other" ("unknown" out of range). */
const char *reg_retry_reason_to_string(RegRetryReason reason);
/* The retries every client of this process has made since it started, by reason: process-wide atomic
 * counters, counted as each retry starts (nothing is logged). Callers export them as they see fit. */
void reg_retry_counts(uint64_t ret[static _REG_RETRY_REASON_MAX]);

/* ---- cleanup helpers -------------------------------------------------------------------------------------
 */

static inline void reg_image_freep(RegImage **img)
{
        reg_image_free(*img);
}
static inline void reg_descriptor_donep(RegDescriptor *d)
{
        reg_descriptor_done(d);
}
static inline void reg_built_donep(RegBuilt *b)
{
        reg_built_done(b);
}
#define _cleanup_reg_image_ _cleanup_(reg_image_freep)
