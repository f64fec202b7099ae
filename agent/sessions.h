/* sessions.h: the upload sessions a save has open on the registry, recorded in the state dir so that none
 * outlives the save. A save (`nbsnap save`, or one of nbsnapd's) is one owner: it holds an flock on
 * STATE_DIR/sessions/<owner>.lock for as long as it runs, and STATE_DIR/sessions/<owner>.json lists the
 * sessions it has open (registry URL, repository, latest Location; no credentials). The registry client's
 * session hook (registry.h) keeps the file true: a session is written there (fsync'ed) before any data is
 * sent to it, its Location rewritten on every move (renamed into place: a killed process leaves the last
 * one), and it goes when committed or DELETEd. When the save ends with every session gone, both files go;
 * when a DELETE failed (registry down), the record stays.
 *
 * A record whose lock can be taken belongs to a process that died (or ended with sessions it could not
 * delete): nb_sessions_cleanup() DELETEs those sessions, with the caller's credentials, and drops what the
 * registry no longer has. A live owner's record is never touched. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "registry/registry.h"

#define NB_SESSIONS_DIR           "sessions"
#define NB_SESSION_LOCK_TMP_AGE_S 60 /* a starting owner's .lock.tmp younger than this is not cleaned up */
#define NB_SESSIONS_MAX           64 /* sessions one record holds; opening one more fails the upload */
#define NB_SESSION_RECORD_MAX     (256u * 1024) /* bytes of one record file: larger is refused as corrupt */
#define NB_SESSION_URL_MAX        8192          /* a session's Location (or a registry URL) in a record */
#define NB_SESSION_RECORDS_MAX                                                                              \
        256 /* dead owners' records one cleanup handles; the others wait for the next */
#define NB_SESSION_RECORD_TTL_S                                                                             \
        (7 * 24 * 3600) /* an older record is dropped without a DELETE: distribution has purged it by then  \
                         */

/* ---- the record file ---------------------------------------------------------------------------------- */

typedef struct NbSessionEntry {
        char *registry;   /* "https://host[:port]" */
        char *repository; /* "namespace/name" */
        char *url;        /* the session's latest Location */
} NbSessionEntry;

typedef struct NbSessionRecord {
        char *owner;   /* the file's name without ".json" */
        char *program; /* "nbsnap save", "nbsnapd" */
        int64_t pid;
        NbSessionEntry *entries;
        size_t n;
} NbSessionRecord;

/* Parses a record: {"version": 1, "owner": "...", "program": "...", "pid": N, "sessions": [{"registry",
 * "repository", "url"}...]}. Every field is checked (registry an http(s) scheme://host[:port], repository by
 * the distribution grammar, url an http(s) URL with /blobs/uploads/ in it, at most NB_SESSIONS_MAX
 * sessions, strings bounded): -EBADMSG with a message naming what is wrong. */
int nb_session_record_parse(const char *json, size_t size, NbSessionRecord *ret, NbError *e);
void nb_session_record_done(NbSessionRecord *r);
/* The record as JSON (what nb_session_record_parse() reads). NULL on ENOMEM. */
char *nb_session_record_format(const NbSessionRecord *r);

/* ---- one owner ---------------------------------------------------------------------------------------- */

typedef struct NbSessions NbSessions;

/* Becomes a new owner in STATE_DIR/sessions (created 0700): a new <owner>.lock, flock'ed. program is what
 * the record says ran the save. */
int nb_sessions_new(const char *state_dir, const char *program, NbSessions **ret, NbError *e);
/* Ends the owner: with no session left open, its record and lock go; else the record stays for a cleanup
 * (the lock is released: the owner is dead from now on). NULL in, NULL out. */
NbSessions *nb_sessions_free(NbSessions *s);
/* The hook to give reg_client_set_session_hook() with the NbSessions as userdata. Thread-safe. OPENED
 * returns the write's error (the upload then fails and deletes the session at once: no session is opened
 * that the record does not name). OPENED
 * past NB_SESSIONS_MAX is -ENOBUFS. A MOVED that cannot be written is not an error: the record keeps the
 * Location before (a later cleanup then gets 404 for it), and whether a save may go on with a state dir it
 * cannot write is decided elsewhere (nbsnapd stops it). */
int nb_sessions_hook(void *userdata, RegSessionEvent event, const RegSession *session, NbError *e);
/* Sessions the owner has open now. */
size_t nb_sessions_open_count(NbSessions *s);
/* STATE_DIR/sessions/<owner>.json (it exists only while a session is open or was left open). */
const char *nb_sessions_record_path(const NbSessions *s);

/* ---- cleanup of dead owners' records ------------------------------------------------------------------ */

typedef struct NbSessionsCleanupOptions {
        const char *authfile; /* as the saves use; NULL: the default lookup */
        const char *ca_file;
        /* Told what was done (warning false) and what failed and is kept (warning true), one line each. */
        void (*log)(void *userdata, bool warning, const char *message);
        void *userdata;
        /* NULL, or set from another thread (a stopping daemon): the cleanup ends after the DELETE on the
         * wire (at most REG_CANCEL_CLEANUP_TIMEOUT_S), keeping the rest for the next one */
        const _Atomic bool *cancel;
} NbSessionsCleanupOptions;

typedef struct NbSessionsCleanupStats {
        size_t records; /* dead owners' records looked at */
        size_t deleted; /* sessions the registry deleted */
        size_t gone;    /* sessions the registry answered 404 for (dropped) */
        size_t kept;    /* sessions kept for the next cleanup (the DELETE failed) */
        size_t dropped; /* records dropped unread: corrupt, or older than NB_SESSION_RECORD_TTL_S */
        size_t left;    /* records over NB_SESSION_RECORDS_MAX, left for the next cleanup */
} NbSessionsCleanupStats;

/* DELETEs the sessions recorded by owners that are gone (their lock can be taken) in STATE_DIR/sessions,
 * at most NB_SESSION_RECORDS_MAX records. A session whose DELETE answers 2xx or 404 leaves the record; one
 * that fails stays (and after the first transport failure, the other sessions on that registry are not
 * tried this time); a record left empty goes. A corrupt or oversized record is dropped with a warning (it
 * names nothing that could be deleted). Never fails: what went wrong is logged and counted. */
void nb_sessions_cleanup(const char *state_dir, const NbSessionsCleanupOptions *o,
                         NbSessionsCleanupStats *ret);
