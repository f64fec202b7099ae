#include <dirent.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "agent/json.h"
#include "agent/sessions.h"
#include "agent/swr.h"
#include "common/fileio.h"

#define OWNER_MAX   64 /* an owner name: "<pid>-<16 hex>" */
#define PROGRAM_MAX 64
#define NAME_MAX_   (OWNER_MAX + 16)

/* ---- the record file ---------------------------------------------------------------------------------- */

static bool owner_valid(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n >= OWNER_MAX || s[0] == '.')
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                      (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_' || s[i] == '.'))
                        return false;
        return true;
}

/* "http://" or "https://", then at least one more character, no control characters or spaces. */
static const char *web_rest(const char *s)
{
        const char *rest = strncmp(s, "https://", 8) == 0  ? s + 8
                           : strncmp(s, "http://", 7) == 0 ? s + 7
                                                           : NULL;
        if (!rest || !*rest)
                return NULL;
        for (const char *p = s; *p; p++)
                if ((unsigned char)*p <= ' ' || *p == 0x7f)
                        return NULL;
        return rest;
}

static bool registry_valid(const char *s)
{
        const char *rest = web_rest(s);
        return rest && !strpbrk(rest, "/?#@\\");
}

static bool session_url_valid(const char *s)
{
        const char *rest = web_rest(s);
        if (!rest || !strchr(rest, '/'))
                return false;
        size_t path_len = strcspn(rest, "?#");
        const char *hit = strstr(rest, "/blobs/uploads/");
        return hit && (size_t)(hit - rest) < path_len;
}

/* A string member, 1..max bytes. NULL when it is missing, not a string, empty or too long. */
static const char *str_member(const cJSON *o, const char *name, size_t max)
{
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, name);
        if (!cJSON_IsString(j) || !j->valuestring || !*j->valuestring || strlen(j->valuestring) > max)
                return NULL;
        return j->valuestring;
}

static int entry_parse(const cJSON *j, size_t i, NbSessionEntry *ret, NbError *e)
{
        if (!cJSON_IsObject(j))
                return nb_error_set(e, -EBADMSG, "session %zu is not an object", i);
        const char *registry = str_member(j, "registry", NB_SESSION_URL_MAX);
        const char *repository = str_member(j, "repository", NB_SESSION_URL_MAX);
        const char *url = str_member(j, "url", NB_SESSION_URL_MAX);
        if (!registry || !registry_valid(registry))
                return nb_error_set(e, -EBADMSG, "session %zu: \"registry\" is not an http(s)://host[:port]",
                                    i);
        if (!repository || !reg_repository_valid(repository))
                return nb_error_set(e, -EBADMSG, "session %zu: \"repository\" is not a repository name", i);
        if (!url || !session_url_valid(url))
                return nb_error_set(e, -EBADMSG,
                                    "session %zu: \"url\" is not an http(s) URL of an upload session "
                                    "(/blobs/uploads/)",
                                    i);
        if (!(ret->registry = strdup(registry)) || !(ret->repository = strdup(repository)) ||
            !(ret->url = strdup(url)))
                return nb_error_oom(e);
        return 0;
}

void nb_session_record_done(NbSessionRecord *r)
{
        if (!r)
                return;
        for (size_t i = 0; i < r->n; i++) {
                free(r->entries[i].registry);
                free(r->entries[i].repository);
                free(r->entries[i].url);
        }
        free(r->entries);
        free(r->owner);
        free(r->program);
        *r = (NbSessionRecord){0};
}

static int record_parse(const cJSON *root, NbSessionRecord *r, NbError *e)
{
        if (!cJSON_IsObject(root))
                return nb_error_set(e, -EBADMSG, "not a JSON object");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "version");
        if (!cJSON_IsNumber(v) || v->valuedouble != 1)
                return nb_error_set(e, -EBADMSG, "\"version\" is not 1");
        const char *owner = str_member(root, "owner", OWNER_MAX);
        if (!owner || !owner_valid(owner))
                return nb_error_set(e, -EBADMSG, "\"owner\" is missing or not a name");
        const char *program = str_member(root, "program", PROGRAM_MAX);
        const cJSON *pid = cJSON_GetObjectItemCaseSensitive(root, "pid");
        if (!program || !cJSON_IsNumber(pid) || pid->valuedouble < 0 || pid->valuedouble > INT32_MAX)
                return nb_error_set(e, -EBADMSG, "\"program\" or \"pid\" is missing or invalid");
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "sessions");
        if (!cJSON_IsArray(list))
                return nb_error_set(e, -EBADMSG, "\"sessions\" is not an array");
        int n = cJSON_GetArraySize(list);
        if (n > NB_SESSIONS_MAX)
                return nb_error_set(e, -EBADMSG, "%d sessions, more than NB_SESSIONS_MAX (%d)", n,
                                    NB_SESSIONS_MAX);
        if (!(r->owner = strdup(owner)) || !(r->program = strdup(program)) ||
            (n > 0 && !(r->entries = calloc((size_t)n, sizeof(*r->entries)))))
                return nb_error_oom(e);
        r->pid = (int64_t)pid->valuedouble;
        const cJSON *j;
        cJSON_ArrayForEach(j, list)
        {
                int k = entry_parse(j, r->n, &r->entries[r->n], e);
                r->n++; /* a half-filled entry is freed with the rest */
                if (k < 0)
                        return k;
        }
        return 0;
}

int nb_session_record_parse(const char *json, size_t size, NbSessionRecord *ret, NbError *e)
{
        if (!json || size > NB_SESSION_RECORD_MAX)
                return nb_error_set(e, -EBADMSG, "the record is larger than %u bytes",
                                    NB_SESSION_RECORD_MAX);
        _cleanup_cjson_ cJSON *root = cJSON_ParseWithLength(json, size);
        if (!root)
                return nb_error_set(e, -EBADMSG, "not JSON");
        NbSessionRecord r = {0};
        int k = record_parse(root, &r, e);
        if (k < 0) {
                nb_session_record_done(&r);
                return k;
        }
        *ret = r;
        return 0;
}

char *nb_session_record_format(const NbSessionRecord *r)
{
        _cleanup_cjson_ cJSON *root = cJSON_CreateObject();
        cJSON *list = cJSON_CreateArray();
        if (!root || !list || !cJSON_AddItemToObject(root, "version", cJSON_CreateNumber(1)) ||
            !cJSON_AddStringToObject(root, "owner", r->owner) ||
            !cJSON_AddStringToObject(root, "program", r->program) ||
            !cJSON_AddNumberToObject(root, "pid", (double)r->pid) ||
            !cJSON_AddItemToObject(root, "sessions", list)) {
                cJSON_Delete(cJSON_IsArray(list) && !cJSON_GetObjectItem(root, "sessions") ? list : NULL);
                return NULL;
        }
        for (size_t i = 0; i < r->n; i++) {
                cJSON *o = cJSON_CreateObject();
                if (!o || !cJSON_AddItemToArray(list, o) ||
                    !cJSON_AddStringToObject(o, "registry", r->entries[i].registry) ||
                    !cJSON_AddStringToObject(o, "repository", r->entries[i].repository) ||
                    !cJSON_AddStringToObject(o, "url", r->entries[i].url))
                        return NULL;
        }
        return cJSON_PrintUnformatted(root);
}

/* ---- one owner ---------------------------------------------------------------------------------------- */

typedef struct Open {
        uint64_t id;
        NbSessionEntry entry;
} Open;

struct NbSessions {
        pthread_mutex_t lock;
        int dir_fd, lock_fd;
        char owner[OWNER_MAX], program[PROGRAM_MAX];
        char json_name[NAME_MAX_], lock_name[NAME_MAX_], tmp_name[NAME_MAX_ + 8];
        char *path;
        Open open[NB_SESSIONS_MAX];
        size_t n;
};

static void entry_done(NbSessionEntry *x)
{
        free(x->registry);
        free(x->repository);
        free(x->url);
        *x = (NbSessionEntry){0};
}

static int sessions_dir_open(const char *state_dir, bool create, int *ret_fd)
{
        _cleanup_close_ int sfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (sfd < 0)
                return -errno;
        if (create && mkdirat(sfd, NB_SESSIONS_DIR, 0700) < 0 && errno != EEXIST)
                return -errno;
        int fd = openat(sfd, NB_SESSIONS_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

/* The owner's lock file. The lock is held on a read-only descriptor: an fd open for writing would keep the
 * state dir's file system from being remounted read-only. */
static int lock_create(NbSessions *s, const char *tmp)
{
        _cleanup_close_ int wfd =
                openat(s->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (wfd < 0)
                return -errno;
        s->lock_fd = openat(s->dir_fd, tmp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0 ||
            renameat(s->dir_fd, tmp, s->dir_fd, s->lock_name) < 0)
                return -errno;
        return 0;
}

int nb_sessions_new(const char *state_dir, const char *program, NbSessions **ret, NbError *e)
{
        uint64_t rnd = 0;
        if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
                return nb_error_set(e, -EIO, "cannot name the upload session record: no random bytes");
        NbSessions *s = calloc(1, sizeof(*s));
        if (!s)
                return nb_error_oom(e);
        pthread_mutex_init(&s->lock, NULL);
        s->dir_fd = s->lock_fd = -1;
        snprintf(s->owner, sizeof(s->owner), "%ld-%016" PRIx64, (long)getpid(), rnd);
        snprintf(s->program, sizeof(s->program), "%s", program ? program : "nbsnap");
        snprintf(s->json_name, sizeof(s->json_name), "%s.json", s->owner);
        snprintf(s->lock_name, sizeof(s->lock_name), "%s.lock", s->owner);
        snprintf(s->tmp_name, sizeof(s->tmp_name), ".%s.json.tmp", s->owner);
        int r = sessions_dir_open(state_dir, true, &s->dir_fd);
        if (r >= 0 && asprintf(&s->path, "%s/%s/%s", state_dir, NB_SESSIONS_DIR, s->json_name) < 0)
                r = -ENOMEM;
        if (r >= 0) {
                /* Locked under a temporary name (cleaners skip those), then renamed into place: a cleaner
                 * never sees the owner's lock file unlocked. */
                char tmp[NAME_MAX_ + 8];
                snprintf(tmp, sizeof(tmp), ".%s.tmp", s->lock_name);
                r = lock_create(s, tmp);
                if (r < 0)
                        (void)unlinkat(s->dir_fd, tmp, 0);
        }
        if (r < 0) {
                nb_sessions_free(s);
                return nb_error_set(e, r, "cannot set up the upload session record in %s/%s: %s", state_dir,
                                    NB_SESSIONS_DIR, strerror(-r));
        }
        *ret = s;
        return 0;
}

/* Renames a new version of the record into place (with no session left too: the file goes when the owner
 * ends). durable: fsync'ed (file and directory) first, as
 * fileio.h's atomic write; else only renamed, which a killed process cannot tear either (only a machine
 * crash could lose it: the record then names an earlier Location). Called with the lock held. */
static int record_write(NbSessions *s, bool durable)
{
        NbSessionEntry entries[NB_SESSIONS_MAX];
        for (size_t i = 0; i < s->n; i++)
                entries[i] = s->open[i].entry;
        NbSessionRecord rec = {
                .owner = s->owner, .program = s->program, .pid = getpid(), .entries = entries, .n = s->n};
        _cleanup_free_ char *json = nb_session_record_format(&rec);
        if (!json)
                return -ENOMEM;
        if (durable)
                return nb_write_file_atomic_at(s->dir_fd, s->json_name, json, strlen(json), 0600);
        _cleanup_close_ int fd =
                openat(s->dir_fd, s->tmp_name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        /* The old record is unlinked before the rename: renaming over an existing file makes ext4 write the
         * new one's data out first (auto_da_alloc), about 2 ms per chunk here. A kill between the two
         * leaves the temporary file, whole: the cleanup reads it when the record is missing. */
        int r = nb_write_all(fd, json, strlen(json));
        bool unlinked = false;
        if (r >= 0) {
                unlinked = unlinkat(s->dir_fd, s->json_name, 0) == 0;
                if (!unlinked && errno != ENOENT)
                        r = -errno;
        }
        if (r >= 0 && renameat(s->dir_fd, s->tmp_name, s->dir_fd, s->json_name) < 0)
                r = -errno;
        /* once the record is unlinked, the temporary file is the only copy: it stays for the cleanup */
        if (r < 0 && !unlinked)
                (void)unlinkat(s->dir_fd, s->tmp_name, 0);
        return r;
}

static Open *open_find(NbSessions *s, uint64_t id)
{
        for (size_t i = 0; i < s->n; i++)
                if (s->open[i].id == id)
                        return &s->open[i];
        return NULL;
}

static int hook_opened(NbSessions *s, const RegSession *rs, NbError *e)
{
        if (s->n >= NB_SESSIONS_MAX)
                return nb_error_set(e, -ENOBUFS,
                                    "%u upload sessions are open already (NB_SESSIONS_MAX), none more is "
                                    "opened",
                                    NB_SESSIONS_MAX);
        Open *o = &s->open[s->n];
        *o = (Open){.id = rs->id};
        if (!(o->entry.registry = strdup(rs->registry)) || !(o->entry.repository = strdup(rs->repository)) ||
            !(o->entry.url = strdup(rs->url))) {
                entry_done(&o->entry);
                return nb_error_oom(e);
        }
        s->n++;
        int r = record_write(s, true);
        if (r < 0) {
                entry_done(&s->open[--s->n].entry);
                return nb_error_set(e, r, "cannot record the upload session in %s: %s", s->path,
                                    strerror(-r));
        }
        return 0;
}

static int hook_moved(NbSessions *s, const RegSession *rs, NbError *e)
{
        Open *o = open_find(s, rs->id);
        char *url = strdup(rs->url);
        if (!url)
                return nb_error_oom(e);
        if (!o) {
                free(url);
                return 0; /* not one of ours (opened before the hook was set) */
        }
        free(o->entry.url);
        o->entry.url = url;
        /* Not fatal: the record keeps the Location before (the next write brings it up to date), and a
         * state dir that can no longer be written stops the save where that is decided (nbsnapd's
         * manager), not here. The upload's own DELETE uses the latest Location in any case. */
        (void)record_write(s, false);
        (void)e;
        return 0;
}

static void hook_closed(NbSessions *s, const RegSession *rs)
{
        Open *o = open_find(s, rs->id);
        if (!o)
                return;
        entry_done(&o->entry);
        *o = s->open[--s->n];
        s->open[s->n] = (Open){0};
        (void)record_write(s, false); /* a stale entry is harmless: its DELETE answers 404 */
}

int nb_sessions_hook(void *userdata, RegSessionEvent event, const RegSession *session, NbError *e)
{
        NbSessions *s = userdata;
        int r = 0;
        pthread_mutex_lock(&s->lock);
        if (event == REG_SESSION_OPENED)
                r = hook_opened(s, session, e);
        else if (event == REG_SESSION_MOVED)
                r = hook_moved(s, session, e);
        else
                hook_closed(s, session);
        pthread_mutex_unlock(&s->lock);
        return r;
}

size_t nb_sessions_open_count(NbSessions *s)
{
        pthread_mutex_lock(&s->lock);
        size_t n = s->n;
        pthread_mutex_unlock(&s->lock);
        return n;
}

const char *nb_sessions_record_path(const NbSessions *s)
{
        return s->path;
}

NbSessions *nb_sessions_free(NbSessions *s)
{
        if (!s)
                return NULL;
        if (s->dir_fd >= 0 && s->lock_fd >= 0) {
                if (s->n == 0) {
                        /* the record first: a cleaner that finds a lock without a record removes it */
                        (void)unlinkat(s->dir_fd, s->json_name, 0);
                        (void)unlinkat(s->dir_fd, s->tmp_name, 0);
                        (void)unlinkat(s->dir_fd, s->lock_name, 0);
                } else
                        (void)record_write(s, true);
        }
        for (size_t i = 0; i < s->n; i++)
                entry_done(&s->open[i].entry);
        if (s->lock_fd >= 0)
                close(s->lock_fd);
        if (s->dir_fd >= 0)
                close(s->dir_fd);
        pthread_mutex_destroy(&s->lock);
        free(s->path);
        free(s);
        return NULL;
}

/* ---- cleanup ------------------------------------------------------------------------------------------ */

typedef struct Cleanup {
        const char *state_dir;
        const NbSessionsCleanupOptions *o;
        NbSessionsCleanupStats *st;
        int dir_fd;
        RegClient *client; /* for client_url */
        char *client_url;
        char *down[NB_SESSIONS_MAX]; /* registries that failed at the transport level this time */
        size_t n_down;
        char (*done)[OWNER_MAX]; /* owners handled in this run (a rewritten record may be listed again) */
        size_t n_done;
} Cleanup;

static void cleanup_log(Cleanup *c, bool warning, const char *fmt, ...) _printf_(3, 4);
static void cleanup_log(Cleanup *c, bool warning, const char *fmt, ...)
{
        if (!c->o->log)
                return;
        char buf[NB_ERROR_MSG_MAX + 512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        c->o->log(c->o->userdata, warning, buf);
}

static bool registry_down(Cleanup *c, const char *url)
{
        for (size_t i = 0; i < c->n_down; i++)
                if (strcmp(c->down[i], url) == 0)
                        return true;
        return false;
}

static RegClient *cleanup_client(Cleanup *c, const char *url, NbError *e)
{
        if (c->client && strcmp(c->client_url, url) == 0)
                return c->client;
        c->client = reg_client_free(c->client);
        free(c->client_url);
        c->client_url = strdup(url);
        RegClientOptions co = nb_reg_client_options(url, c->o->authfile, c->o->ca_file);
        co.connect_timeout_s = REG_CANCEL_CLEANUP_TIMEOUT_S;
        co.cancel = c->o->cancel;
        if (!c->client_url || reg_client_new(&co, &c->client, e) < 0)
                return NULL;
        return c->client;
}

/* 1: the session is gone from the registry (or cannot be deleted by anyone: dropped); 0: kept. */
static bool cleanup_cancelled(const Cleanup *c)
{
        return c->o && c->o->cancel && atomic_load(c->o->cancel);
}

static int cleanup_entry(Cleanup *c, const char *file, const NbSessionEntry *x)
{
        char where[NB_SESSION_URL_MAX + 64];
        snprintf(where, sizeof(where), "%s/%s", x->registry, x->repository);
        if (registry_down(c, x->registry)) {
                c->st->kept++;
                return 0;
        }
        NbError e = {0};
        RegClient *client = cleanup_client(c, x->registry, &e);
        int r = client ? reg_session_delete(client, x->repository, x->url, &e) : e.code ? e.code : -ENOMEM;
        if (r > 0) {
                c->st->deleted++;
                cleanup_log(c, false, "deleted an upload session on %s left by a save that did not end (%s)",
                            where, file);
                return 1;
        }
        if (r == 0) {
                c->st->gone++;
                cleanup_log(c, strstr(e.msg, "BLOB_UPLOAD_INVALID") != NULL,
                            "an upload session on %s left by a save that did not end is not known to the "
                            "registry "
                            "any more, dropping it from %s (%s)",
                            where, file, e.msg);
                return 1;
        }
        if (r == -EINVAL && client) {
                c->st->gone++;
                cleanup_log(c, true, "dropping an entry of %s that names no upload session: %s", file,
                            e.msg);
                return 1;
        }
        c->st->kept++;
        if (e.http_status == 0 && c->n_down < ELEMENTSOF(c->down) &&
            (c->down[c->n_down] = strdup(x->registry)))
                c->n_down++;
        cleanup_log(
                c, true,
                "cannot delete an upload session on %s left by a save that did not end, keeping it in %s "
                "for the next try: %s",
                where, file, e.msg);
        return 0;
}

static void drop_owner_files(int dfd, const char *owner)
{
        char name[NAME_MAX_ + 8];
        snprintf(name, sizeof(name), "%s.json", owner);
        (void)unlinkat(dfd, name, 0);
        snprintf(name, sizeof(name), ".%s.json.tmp", owner);
        (void)unlinkat(dfd, name, 0);
        snprintf(name, sizeof(name), "%s.lock", owner);
        (void)unlinkat(dfd, name, 0);
}

/* Reads a dead owner's record (its lock held): -errno with e when it is unreadable or too old. */
static int record_read(Cleanup *c, const char *json_name, NbSessionRecord *ret, NbError *e)
{
        struct stat st;
        if (fstatat(c->dir_fd, json_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return nb_error_set(e, -EBADMSG, "not a regular file");
        if (st.st_mtime + NB_SESSION_RECORD_TTL_S < time(NULL))
                return nb_error_set(e, -ESTALE,
                                    "older than %d days: the registry purged its sessions by now",
                                    NB_SESSION_RECORD_TTL_S / 86400);
        _cleanup_free_ char *json = NULL;
        size_t size = 0;
        int r = nb_read_file_at(c->dir_fd, json_name, NB_SESSION_RECORD_MAX,
                                NB_READ_NOFOLLOW | NB_READ_REGULAR, &json, &size);
        if (r == -EFBIG)
                return nb_error_set(e, -EBADMSG, "larger than %u bytes", NB_SESSION_RECORD_MAX);
        if (r < 0)
                return r == -ENOENT ? r : nb_error_set(e, r, "%s", strerror(-r));
        return nb_session_record_parse(json, size, ret, e);
}

static void cleanup_record(Cleanup *c, const char *owner)
{
        for (size_t i = 0; i < c->n_done; i++)
                if (strcmp(c->done[i], owner) == 0)
                        return;
        if (c->done && c->n_done < NB_SESSION_RECORDS_MAX * 2)
                snprintf(c->done[c->n_done++], OWNER_MAX, "%s", owner);
        char json_name[NAME_MAX_], lock_name[NAME_MAX_], path[PATH_MAX];
        snprintf(json_name, sizeof(json_name), "%s.json", owner);
        snprintf(lock_name, sizeof(lock_name), "%s.lock", owner);
        snprintf(path, sizeof(path), "%s/" NB_SESSIONS_DIR "/%s", c->state_dir, json_name);
        _cleanup_close_ int lfd =
                openat(c->dir_fd, lock_name, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) < 0)
                return; /* its owner runs (or the directory is not ours to write): not touched */
        NbError e = {0};
        NbSessionRecord rec = {0};
        char tmp_name[NAME_MAX_ + 8];
        snprintf(tmp_name, sizeof(tmp_name), ".%s.tmp", json_name);
        int r = record_read(c, json_name, &rec, &e);
        if (r == -ENOENT) /* killed between the record's unlink and the rename of its new version */
                r = record_read(c, tmp_name, &rec, &e);
        if (r == -ENOENT) { /* an owner that died with no session open, or a cleaner that finished */
                drop_owner_files(c->dir_fd, owner);
                return;
        }
        c->st->records++;
        if (r == -ENOMEM || r == -EMFILE || r == -ENFILE || r == -EIO || r == -EINTR) {
                /* not the record's fault: kept for the next cleanup */
                c->st->kept++;
                cleanup_log(c, true, "cannot read the upload session record %s, keeping it: %s", path,
                            e.msg);
                return;
        }
        if (r < 0) {
                c->st->dropped++;
                cleanup_log(c, true, "dropping the upload session record %s: %s", path, e.msg);
                drop_owner_files(c->dir_fd, owner);
                return;
        }
        size_t kept = 0;
        for (size_t i = 0; i < rec.n; i++) {
                if (cleanup_cancelled(c)) {
                        rec.entries[kept++] = rec.entries[i]; /* for the next cleanup */
                        continue;
                }
                if (cleanup_entry(c, path, &rec.entries[i]) > 0) {
                        free(rec.entries[i].registry);
                        free(rec.entries[i].repository);
                        free(rec.entries[i].url);
                } else
                        rec.entries[kept++] = rec.entries[i];
        }
        rec.n = kept;
        if (kept == 0)
                drop_owner_files(c->dir_fd, owner);
        else {
                _cleanup_free_ char *json = nb_session_record_format(&rec);
                r = json ? nb_write_file_atomic_at(c->dir_fd, json_name, json, strlen(json), 0600) : -ENOMEM;
                if (r >= 0)
                        (void)unlinkat(c->dir_fd, tmp_name, 0);
                if (r < 0)
                        cleanup_log(c, true, "cannot rewrite %s, ignoring: %s", path, strerror(-r));
        }
        nb_session_record_done(&rec);
}

/* The owner of NAME.json or NAME.lock (not a temporary file): 1 with ret filled. */
static int owner_of(const char *name, const char *suffix, char ret[static OWNER_MAX])
{
        size_t n = strlen(name), k = strlen(suffix);
        if (n <= k || n - k >= OWNER_MAX || strcmp(name + n - k, suffix) != 0)
                return 0;
        memcpy(ret, name, n - k);
        ret[n - k] = 0;
        return owner_valid(ret);
}

void nb_sessions_cleanup(const char *state_dir, const NbSessionsCleanupOptions *o,
                         NbSessionsCleanupStats *ret)
{
        NbSessionsCleanupStats st = {0};
        Cleanup c = {.state_dir = state_dir, .o = o, .st = &st, .dir_fd = -1};
        if (sessions_dir_open(state_dir, false, &c.dir_fd) < 0) {
                if (ret)
                        *ret = st;
                return; /* no record was ever written here */
        }
        c.done = calloc(NB_SESSION_RECORDS_MAX * 2, sizeof(*c.done));
        DIR *d = fdopendir(dup(c.dir_fd));
        for (struct dirent *de; d && (de = readdir(d));) {
                char owner[OWNER_MAX], json[NAME_MAX_];
                if (cleanup_cancelled(&c))
                        break;
                if (owner_of(de->d_name, ".json", owner)) {
                        if (st.records >= NB_SESSION_RECORDS_MAX) {
                                st.left++;
                                continue;
                        }
                        cleanup_record(&c, owner);
                } else if (owner_of(de->d_name, ".lock", owner)) {
                        /* a lock without a record: an owner that died with no session open, or between
                         * its record's unlink and the rename of the new version (read from the .tmp) */
                        snprintf(json, sizeof(json), "%s.json", owner);
                        if (faccessat(c.dir_fd, json, F_OK, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
                                cleanup_record(&c, owner);
                } else if (de->d_name[0] == '.' && owner_of(de->d_name + 1, ".lock.tmp", owner)) {
                        /* an owner that died before its lock got its name */
                        /* only an old one: a starting owner creates it, then locks it (not atomic) */
                        _cleanup_close_ int lfd =
                                openat(c.dir_fd, de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                        struct stat sb;
                        if (lfd >= 0 && fstat(lfd, &sb) == 0 &&
                            time(NULL) - sb.st_mtime > NB_SESSION_LOCK_TMP_AGE_S &&
                            flock(lfd, LOCK_EX | LOCK_NB) == 0)
                                (void)unlinkat(c.dir_fd, de->d_name, 0);
                }
        }
        if (d)
                closedir(d);
        if (st.left > 0)
                cleanup_log(
                        &c, true,
                        "%zu more upload session records than NB_SESSION_RECORDS_MAX (%d) in %s/%s: left "
                        "for the next cleanup",
                        st.left, NB_SESSION_RECORDS_MAX, state_dir, NB_SESSIONS_DIR);
        reg_client_free(c.client);
        free(c.client_url);
        free(c.done);
        for (size_t i = 0; i < c.n_down; i++)
                free(c.down[i]);
        close(c.dir_fd);
        if (ret)
                *ret = st;
}
