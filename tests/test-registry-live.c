/* test-registry-live.c: the registry library against a real registry: Debian's docker-registry (CNCF
 * distribution), started here on 127.0.0.1 with a free port, a scratch storage directory and its own config,
 * once anonymous and once with htpasswd (Basic) auth. Skips (77) when /usr/bin/docker-registry is missing.
 * Checks results with skopeo when it is installed. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <openssl/ecdsa.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/clock.h"
#include "common/digest.h"
#include "registry/registry-internal.h"
#include "tests.h"

#define REGISTRY_BIN "/usr/bin/docker-registry"
#define HTPASSWD_BIN "/usr/bin/htpasswd"

typedef struct Registry {
        bool tls;
        pid_t pid;
        int port;
        char dir[128];
        char url[64];
} Registry;

static char scratch[] = "/tmp/test-registry-live-XXXXXX";

static void write_file(const char *path, const char *content)
{
        FILE *f = fopen(path, "we");
        ASSERT_TRUE(f);
        fputs(content, f);
        ASSERT_EQ(fclose(f), 0);
}

static int free_port(void)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_TRUE(fd >= 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        ASSERT_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        socklen_t len = sizeof(a);
        ASSERT_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
        close(fd);
        return ntohs(a.sin_port);
}

static size_t discard(char *p, size_t s, size_t n, void *u)
{
        return s * n;
}

static bool registry_answers(const char *url)
{
        char u[128];
        snprintf(u, sizeof(u), "%s/v2/", url);
        CURL *c = curl_easy_init();
        curl_easy_setopt(c, CURLOPT_URL, u);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1000L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L); /* only to see that it is up */
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
        long status = 0;
        if (curl_easy_perform(c) == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        return status == 200 || status == 401;
}

/* Starts docker-registry with its own config; extra_yaml is appended (an auth: section). */
static void registry_start(Registry *r, const char *name, const char *extra_yaml)
{
        snprintf(r->dir, sizeof(r->dir), "%s/%s", scratch, name);
        ASSERT_EQ(mkdir(r->dir, 0700), 0);
        r->port = free_port();
        snprintf(r->url, sizeof(r->url), "%s://127.0.0.1:%d", r->tls ? "https" : "http", r->port);
        char config[256], yaml[2048], log[256];
        snprintf(config, sizeof(config), "%s/config.yml", r->dir);
        snprintf(log, sizeof(log), "%s/registry.log", r->dir);
        snprintf(
                yaml, sizeof(yaml),
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s/storage\n"
                "  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%d\n%s",
                r->dir, r->port, extra_yaml ? extra_yaml : "");
        write_file(config, yaml);
        r->pid = fork();
        ASSERT_TRUE(r->pid >= 0);
        if (r->pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                /* distribution reads REGISTRY_* variables as configuration */
                unsetenv("REGISTRY_AUTH_FILE");
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                execl(REGISTRY_BIN, "docker-registry", "serve", config, (char *)NULL);
                _exit(127);
        }
        for (int i = 0; i < 150; i++) {
                if (registry_answers(r->url))
                        return;
                usleep(100 * 1000);
        }
        fprintf(stderr, "registry on port %d did not start, see %s\n", r->port, log);
        abort();
}

static void registry_stop(Registry *r)
{
        if (r->pid <= 0)
                return;
        kill(r->pid, SIGTERM);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
}

static RegClient *client_for(const Registry *r, const char *authfile, size_t chunk)
{
        RegClientOptions o = {
                .url = r->url, .authfile = authfile, .chunk_size = chunk, .user_agent = "nbsnap-test"};
        RegClient *c = NULL;
        NbError e = {0};
        int rc = reg_client_new(&o, &c, &e);
        if (rc < 0)
                fprintf(stderr, "client: %s\n", e.msg);
        ASSERT_OK(rc);
        return c;
}

static void check(int rc, const NbError *e, const char *what)
{
        if (rc < 0)
                fprintf(stderr, "%s failed: %d %s\n", what, rc, e->msg);
        ASSERT_OK(rc);
}

static void digest_of(const void *data, size_t size, char d[NB_DIGEST_STR_MAX])
{
        ASSERT_OK(nb_sha256_digest(data, size, d));
}

/* ---- image building blocks -------------------------------------------------------------------------------
 */

typedef struct Blob {
        char *data;
        size_t size;
        char digest[NB_DIGEST_STR_MAX];
} Blob;

static Blob config_blob(const char *arch)
{
        Blob b = {0};
        ASSERT_TRUE(asprintf(&b.data,
                             "{\"architecture\":\"%s\",\"os\":\"linux\",\"config\":{},\"rootfs\":{\"type\":"
                             "\"layers\","
                             "\"diff_ids\":[\"sha256:"
                             "0000000000000000000000000000000000000000000000000000000000000000\"]"
                             "}}",
                             arch) > 0);
        b.size = strlen(b.data);
        digest_of(b.data, b.size, b.digest);
        return b;
}

static char *manifest_json(const char *mt, const char *config_mt, const Blob *config, const char *layer_mt,
                           const char *layer_digest, size_t layer_size)
{
        char *m = NULL;
        ASSERT_TRUE(asprintf(&m,
                             "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{\"mediaType\":\"%s\","
                             "\"digest\":"
                             "\"%s\",\"size\":%zu},\"layers\":[{\"mediaType\":\"%s\",\"digest\":\"%s\","
                             "\"size\":%zu}]}",
                             mt, config_mt, config->digest, config->size, layer_mt, layer_digest,
                             layer_size) > 0);
        return m;
}

static uint64_t progress_seen;

static void progress(void *userdata, uint64_t sent)
{
        ASSERT_INT(sent, >, progress_seen);
        progress_seen = sent;
        (*(unsigned *)userdata)++;
}

/* A few MiB of pseudo-random bytes, streamed in odd-sized writes with 64 KiB chunks. */
static void streamed_upload(RegClient *c, const char *repo, Blob *layer)
{
        layer->size = 3 * 1024 * 1024 + 12345;
        layer->data = malloc(layer->size);
        ASSERT_TRUE(layer->data);
        uint64_t x = 88172645463325252ull;
        for (size_t i = 0; i < layer->size; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                layer->data[i] = (char)x;
        }
        digest_of(layer->data, layer->size, layer->digest);

        NbError e = {0};
        RegUpload *u = NULL;
        unsigned calls = 0;
        progress_seen = 0;
        check(reg_upload_begin(c, repo, progress, &calls, &u, &e), &e, "upload begin");
        size_t off = 0, step = 1000;
        while (off < layer->size) {
                size_t n = layer->size - off < step ? layer->size - off : step;
                check(reg_upload_write(u, layer->data + off, n, &e), &e, "upload write");
                off += n;
                step = step * 3 + 17; /* 1000, 3017, ... up to several chunks per write */
        }
        check(reg_upload_commit(u, layer->digest, &e), &e, "upload commit");
        reg_upload_abort(u);
        ASSERT_EQ(progress_seen, layer->size);
        ASSERT_INT(calls, >=, layer->size / (64 * 1024));

        int64_t size = 0;
        ASSERT_EQ(reg_blob_exists(c, repo, layer->digest, &size, &e), 1);
        ASSERT_EQ(size, (int64_t)layer->size);
}

static void upload_errors(RegClient *c, const char *repo, const Blob *layer)
{
        NbError e = {0};
        RegUpload *u = NULL;
        /* a wrong digest is refused before the registry sees the commit */
        check(reg_upload_begin(c, repo, NULL, NULL, &u, &e), &e, "upload begin");
        check(reg_upload_write(u, layer->data, 100000, &e), &e, "upload write");
        ASSERT_EQ(reg_upload_commit(u, layer->digest, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "not sha256:") != NULL);
        ASSERT_INT(reg_upload_write(u, "x", 1, &e), <, 0);
        reg_upload_abort(u);
        /* an abandoned upload is cancelled */
        check(reg_upload_begin(c, repo, NULL, NULL, &u, &e), &e, "upload begin");
        check(reg_upload_write(u, layer->data, 200000, &e), &e, "upload write");
        reg_upload_abort(u);
        reg_upload_abort(NULL);
}

/* The writer fills the next chunk while one is on the wire, and waits (memory stays bounded) only when every
 * chunk in memory is unconfirmed: with the registry frozen (SIGSTOP) and a ring of two chunks, two chunks
 * are taken, the third waits until the registry is thawed, and the blob then arrives whole. */
typedef struct OverlapWrite {
        RegUpload *u;
        const char *data;
        size_t size;
        int r;
        NbError e;
        bool done;
        pthread_mutex_t lock;
        pthread_cond_t cond;
} OverlapWrite;

static void *overlap_write(void *userdata)
{
        OverlapWrite *w = userdata;
        int r = reg_upload_write(w->u, w->data, w->size, &w->e);
        pthread_mutex_lock(&w->lock);
        w->r = r;
        w->done = true;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

/* Starts a write on a thread; true when it returned within `seconds`. */
static bool overlap_write_within(OverlapWrite *w, pthread_t *t, int seconds)
{
        w->done = false;
        ASSERT_EQ(pthread_create(t, NULL, overlap_write, w), 0);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += seconds;
        pthread_mutex_lock(&w->lock);
        while (!w->done && pthread_cond_timedwait(&w->cond, &w->lock, &until) == 0)
                ;
        bool done = w->done;
        pthread_mutex_unlock(&w->lock);
        return done;
}

static void test_upload_overlap(const Registry *r, const char *authfile, const Blob *layer)
{
        const size_t chunk = 256 * 1024;
        ASSERT_INT(layer->size, >=, 3 * chunk + 1);
        RegClientOptions o = {.url = r->url,
                              .authfile = authfile,
                              .chunk_size = chunk,
                              .replay_max = 2 * chunk,
                              .user_agent = "nbsnap-test"};
        RegClient *c = NULL;
        NbError e = {0};
        check(reg_client_new(&o, &c, &e), &e, "client");
        RegUpload *u = NULL;
        check(reg_upload_begin(c, "test/overlap", NULL, NULL, &u, &e), &e, "upload begin");

        ASSERT_EQ(kill(r->pid, SIGSTOP), 0);
        OverlapWrite w = {.u = u, .data = layer->data, .size = 2 * chunk};
        pthread_mutex_init(&w.lock, NULL);
        pthread_cond_init(&w.cond, NULL);
        pthread_t t;
        /* chunk 0 goes on the wire to the frozen registry; chunk 1 fills the other block */
        ASSERT_TRUE(overlap_write_within(&w, &t, 30));
        pthread_join(t, NULL);
        check(w.r, &w.e, "writes while a chunk is on the wire");
        /* chunk 2 needs chunk 0's block: it waits for the registry */
        w.data = layer->data + 2 * chunk;
        w.size = layer->size - 2 * chunk;
        ASSERT_TRUE(!overlap_write_within(&w, &t, 2));
        ASSERT_EQ(kill(r->pid, SIGCONT), 0);
        pthread_join(t, NULL);
        check(w.r, &w.e, "write after the registry came back");
        check(reg_upload_commit(u, layer->digest, &e), &e, "upload commit");
        reg_upload_abort(u);
        int64_t size = 0;
        ASSERT_EQ(reg_blob_exists(c, "test/overlap", layer->digest, &size, &e), 1);
        ASSERT_EQ(size, (int64_t)layer->size);
        pthread_cond_destroy(&w.cond);
        pthread_mutex_destroy(&w.lock);
        reg_client_free(c);
}

/* Files named startedat or data under dir (an upload session of distribution keeps both; a deleted one may
 * leave its hashstates directory behind). */
static size_t session_files;
static int count_session_file(const char *path, const struct stat *st, int type, struct FTW *f)
{
        const char *base = path + f->base;
        if (type == FTW_F && (strcmp(base, "startedat") == 0 || strcmp(base, "data") == 0))
                session_files++;
        return 0;
}

static size_t upload_sessions(const Registry *r, const char *repository)
{
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/storage/docker/registry/v2/repositories/%s/_uploads", r->dir,
                 repository);
        session_files = 0;
        (void)nftw(dir, count_session_file, 16, FTW_PHYS);
        return session_files;
}

static void *sigcont_later(void *userdata)
{
        sleep(2);
        ASSERT_EQ(kill(*(pid_t *)userdata, SIGCONT), 0);
        return NULL;
}

/* A cancel while a chunk is on the wire to a frozen registry: the chunk is let finish once the registry is
 * back (within the drain time), so the session's latest Location is known and its DELETE works: no session
 * is left on the registry. Cutting the PATCH instead leaves distribution with a session at an offset that no
 * Location names ("upload resumed at wrong offset"), which it refuses to delete. */
static void test_upload_cancel_drain(const Registry *r, const char *authfile, const Blob *layer)
{
        const size_t chunk = 256 * 1024;
        _Atomic bool cancel = false;
        RegClientOptions o = {.url = r->url,
                              .authfile = authfile,
                              .chunk_size = chunk,
                              .cancel = &cancel,
                              .cancel_drain_s = 30,
                              .user_agent = "nbsnap-test"};
        RegClient *c = NULL;
        NbError e = {0};
        check(reg_client_new(&o, &c, &e), &e, "client");
        RegUpload *u = NULL;
        check(reg_upload_begin(c, "test/cancel-drain", NULL, NULL, &u, &e), &e, "upload begin");
        ASSERT_EQ(upload_sessions(r, "test/cancel-drain"), 2); /* startedat and data */
        ASSERT_EQ(kill(r->pid, SIGSTOP), 0);
        check(reg_upload_write(u, layer->data, 2 * chunk, &e), &e, "write while a chunk is on the wire");
        sleep(1); /* the sender is in its PATCH to the frozen registry */
        atomic_store(&cancel, true);
        pthread_t t;
        pid_t pid = r->pid;
        ASSERT_EQ(pthread_create(&t, NULL, sigcont_later, &pid), 0);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        reg_upload_abort(u); /* the PATCH ends when the registry is back, then the DELETE */
        clock_gettime(CLOCK_MONOTONIC, &t1);
        pthread_join(t, NULL);
        ASSERT_INT(t1.tv_sec - t0.tv_sec, <, 15);
        ASSERT_EQ(upload_sessions(r, "test/cancel-drain"), 0);
        /* requests other than cleanups fail at once after the cancel */
        ASSERT_EQ(reg_blob_exists(c, "test/cancel-drain", layer->digest, NULL, &e), -ECANCELED);
        reg_client_free(c);
}

/* The session hook: what it was told, and an answer for OPENED. */
typedef struct HookLog {
        pthread_mutex_t lock;
        RegSessionEvent events[512];
        uint64_t ids[512];
        char first_url[1024];
        size_t n;
        size_t files_at_open; /* the session's files when OPENED came: it exists, nothing sent yet */
        const Registry *r;
        const char *repository;
        int fail_open; /* OPENED returns this when < 0 */
} HookLog;

static int hook_record(void *userdata, RegSessionEvent event, const RegSession *s, NbError *e)
{
        HookLog *h = userdata;
        pthread_mutex_lock(&h->lock);
        ASSERT_TRUE(h->n < ELEMENTSOF(h->events));
        ASSERT_STREQ(s->registry, h->r->url);
        ASSERT_STREQ(s->repository, h->repository);
        ASSERT_TRUE(strstr(s->url, "/blobs/uploads/") != NULL);
        if (event == REG_SESSION_OPENED) {
                snprintf(h->first_url, sizeof(h->first_url), "%s", s->url);
                h->files_at_open = upload_sessions(h->r, h->repository);
        }
        h->events[h->n] = event;
        h->ids[h->n++] = s->id;
        pthread_mutex_unlock(&h->lock);
        if (event == REG_SESSION_OPENED && h->fail_open < 0)
                return nb_error_set(e, h->fail_open, "the test's record is full");
        return 0;
}

/* Every session reported: OPENED before any data (the registry has the session, its data file empty), MOVED
 * with each PATCH's new Location, CLOSED once committed or deleted; a hook that refuses OPENED fails the
 * upload and the session is deleted at once; a declined mount's session is reported and deleted; a session
 * deleted by reg_session_delete() from another client. */
static void test_session_hook(const Registry *r, const char *authfile, const Blob *layer)
{
        const size_t chunk = 256 * 1024;
        ASSERT_INT(layer->size, >, 2 * chunk);
        RegClientOptions o = {
                .url = r->url, .authfile = authfile, .chunk_size = chunk, .user_agent = "nbsnap-test"};
        RegClient *c = NULL;
        NbError e = {0};
        check(reg_client_new(&o, &c, &e), &e, "client");
        HookLog h = {.lock = PTHREAD_MUTEX_INITIALIZER, .r = r, .repository = "test/hook"};
        reg_client_set_session_hook(c, hook_record, &h);

        /* streamed */
        RegUpload *u = NULL;
        check(reg_upload_begin(c, "test/hook", NULL, NULL, &u, &e), &e, "upload begin");
        check(reg_upload_write(u, layer->data, layer->size, &e), &e, "upload write");
        check(reg_upload_commit(u, layer->digest, &e), &e, "upload commit");
        reg_upload_abort(u);
        ASSERT_EQ(h.events[0], REG_SESSION_OPENED);
        ASSERT_EQ(h.files_at_open, 2); /* startedat and data: the session, before the first PATCH */
        size_t moved = 0;
        for (size_t i = 1; i + 1 < h.n; i++) {
                ASSERT_EQ(h.events[i], REG_SESSION_MOVED);
                ASSERT_EQ(h.ids[i], h.ids[0]);
                moved++;
        }
        ASSERT_EQ(moved, (layer->size + chunk - 1) / chunk); /* one per PATCH */
        ASSERT_EQ(h.events[h.n - 1], REG_SESSION_CLOSED);
        ASSERT_EQ(h.ids[h.n - 1], h.ids[0]);
        ASSERT_EQ(upload_sessions(r, "test/hook"), 0);

        /* monolithic (a blob not there yet) */
        char small[64], digest[NB_DIGEST_STR_MAX];
        snprintf(small, sizeof(small), "session hook %d", (int)getpid());
        digest_of(small, strlen(small), digest);
        h.n = 0;
        check(reg_blob_upload_buffer(c, "test/hook", digest, small, strlen(small), &e), &e, "upload buffer");
        ASSERT_EQ(h.n, 2);
        ASSERT_EQ(h.events[0], REG_SESSION_OPENED);
        ASSERT_EQ(h.events[1], REG_SESSION_CLOSED);
        ASSERT_EQ(h.ids[1], h.ids[0]);

        /* a mount the registry declines (the source has no such blob): the session it opens instead */
        char other[NB_DIGEST_STR_MAX];
        digest_of("never uploaded", 14, other);
        h.n = 0;
        ASSERT_EQ(reg_blob_mount(c, "test/hook", other, "test/nothing-here", &e), 0);
        ASSERT_EQ(h.n, 2);
        ASSERT_EQ(h.events[0], REG_SESSION_OPENED);
        ASSERT_EQ(h.events[1], REG_SESSION_CLOSED);
        ASSERT_EQ(upload_sessions(r, "test/hook"), 0);

        /* a hook that cannot record the session: the upload fails with its words, the session is gone */
        h.n = 0;
        h.fail_open = -ENOSPC;
        snprintf(small, sizeof(small), "session hook refused %d", (int)getpid());
        digest_of(small, strlen(small), digest);
        ASSERT_EQ(reg_blob_upload_buffer(c, "test/hook", digest, small, strlen(small), &e), -ENOSPC);
        ASSERT_TRUE(strstr(e.msg, "could not be recorded: the test's record is full") != NULL);
        ASSERT_EQ(upload_sessions(r, "test/hook"), 0);
        ASSERT_EQ(reg_upload_begin(c, "test/hook", NULL, NULL, &u, &e), -ENOSPC);
        ASSERT_EQ(upload_sessions(r, "test/hook"), 0);
        h.fail_open = 0;

        /* a session another process would find recorded: reg_session_delete() from a second client */
        h.n = 0;
        check(reg_upload_begin(c, "test/hook", NULL, NULL, &u, &e), &e, "upload begin");
        ASSERT_EQ(upload_sessions(r, "test/hook"), 2);
        RegClient *c2 = NULL;
        check(reg_client_new(&o, &c2, &e), &e, "second client");
        ASSERT_EQ(reg_session_delete(c2, "test/hook", h.first_url, &e), 1);
        ASSERT_EQ(upload_sessions(r, "test/hook"), 0);
        ASSERT_EQ(reg_session_delete(c2, "test/hook", h.first_url, &e), 0); /* 404: not known any more */
        reg_upload_abort(u); /* its DELETE gets 404 too: closed */
        ASSERT_EQ(h.events[h.n - 1], REG_SESSION_CLOSED);
        reg_client_free(c2);
        reg_client_free(c);
}

/* A cancel reaches an upload stuck on a frozen registry that does not come back within the drain time (the
 * chunk on the wire is then cut) and the cleanup timeout, not after the 60 s low-speed limit; the requests
 * after it fail at once with -ECANCELED. */
static void test_upload_cancel(const Registry *r, const char *authfile, const Blob *layer)
{
        const size_t chunk = 256 * 1024;
        _Atomic bool cancel = false;
        RegClientOptions o = {.url = r->url,
                              .authfile = authfile,
                              .chunk_size = chunk,
                              .low_speed_time_s = 60,
                              .cancel = &cancel,
                              .cancel_drain_s = 2,
                              .user_agent = "nbsnap-test"};
        RegClient *c = NULL;
        NbError e = {0};
        check(reg_client_new(&o, &c, &e), &e, "client");
        RegUpload *u = NULL;
        check(reg_upload_begin(c, "test/cancel", NULL, NULL, &u, &e), &e, "upload begin");
        ASSERT_EQ(kill(r->pid, SIGSTOP), 0);
        check(reg_upload_write(u, layer->data, 2 * chunk, &e), &e, "write while a chunk is on the wire");
        sleep(1); /* the sender is in its PATCH to the frozen registry */
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        atomic_store(&cancel, true);
        reg_upload_abort(u); /* joins the sender (drain), then cancels the session (cleanup timeout) */
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ASSERT_EQ(kill(r->pid, SIGCONT), 0);
        ASSERT_INT(t1.tv_sec - t0.tv_sec, <, 2 + 2 + REG_CANCEL_CLEANUP_TIMEOUT_S + 3);
        ASSERT_EQ(reg_blob_exists(c, "test/cancel", layer->digest, NULL, &e), -ECANCELED);
        reg_client_free(c);
}

/* ---- downloads --------------------------------------------------------------------------------------- */

typedef struct Got {
        Blob b;
        unsigned calls;
        size_t fail_at; /* 0: never */
} Got;

static int got_write(void *userdata, const void *data, size_t size, NbError *e)
{
        Got *g = userdata;
        if (g->fail_at && g->b.size + size >= g->fail_at)
                return nb_error_set(e, -ENOSPC, "the test's disk is full at %zu", g->b.size);
        g->b.data = realloc(g->b.data, g->b.size + size);
        ASSERT_TRUE(g->b.data);
        memcpy(g->b.data + g->b.size, data, size);
        g->b.size += size;
        g->calls++;
        return 0;
}

static void *cancel_later(void *userdata)
{
        sleep(1);
        atomic_store((_Atomic bool *)userdata, true);
        return NULL;
}

/* A download stuck on a frozen registry ends within seconds of the cancel. */
static void blob_get_cancel(const Registry *r, const char *authfile, const Blob *layer)
{
        _Atomic bool cancel = false;
        RegClientOptions o = {.url = r->url, .authfile = authfile, .cancel = &cancel, .user_agent = "t"};
        RegClient *c = NULL;
        NbError e = {0};
        check(reg_client_new(&o, &c, &e), &e, "client");
        Got g = {0};
        pthread_t t;
        ASSERT_EQ(kill(r->pid, SIGSTOP), 0);
        ASSERT_EQ(pthread_create(&t, NULL, cancel_later, &cancel), 0);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ASSERT_EQ(reg_blob_get(c, "test/one", layer->digest, -1, got_write, &g, &e), -ECANCELED);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ASSERT_EQ(kill(r->pid, SIGCONT), 0);
        pthread_join(t, NULL);
        ASSERT_INT(t1.tv_sec - t0.tv_sec, <, 15);
        ASSERT_TRUE(strstr(e.msg, "downloading blob") != NULL);
        free(g.b.data);
        reg_client_free(c);
}

/* reg_blob_get: the bytes in order and in pieces, checked against the digest and the size. */
static void test_blob_get(const Registry *r, const char *authfile, RegClient *c, const Blob *layer)
{
        NbError e = {0};
        Got g = {0};
        check(reg_blob_get(c, "test/one", layer->digest, (int64_t)layer->size, got_write, &g, &e), &e,
              "get");
        ASSERT_EQ(g.b.size, layer->size);
        ASSERT_TRUE(memcmp(g.b.data, layer->data, layer->size) == 0);
        ASSERT_INT(g.calls, >, 1); /* streamed, not buffered whole */
        free(g.b.data);
        g = (Got){0};
        check(reg_blob_get(c, "test/one", layer->digest, -1, got_write, &g, &e), &e, "get, size unknown");
        ASSERT_EQ(g.b.size, layer->size);
        free(g.b.data);

        /* a wrong size: more bytes than said, or fewer */
        g = (Got){0};
        ASSERT_EQ(reg_blob_get(c, "test/one", layer->digest, 1000, got_write, &g, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "more than the 1000 bytes expected") != NULL);
        ASSERT_TRUE(strstr(e.msg, layer->digest) != NULL);
        free(g.b.data);
        g = (Got){0};
        ASSERT_EQ(reg_blob_get(c, "test/one", layer->digest, (int64_t)layer->size + 1, got_write, &g, &e),
                  -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "expected") != NULL);
        free(g.b.data);

        /* missing: the registry's word */
        static const char missing[] =
                "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        g = (Got){0};
        ASSERT_EQ(reg_blob_get(c, "test/one", missing, -1, got_write, &g, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "BLOB_UNKNOWN") != NULL && strstr(e.msg, missing) != NULL);
        ASSERT_EQ(g.b.size, 0);
        ASSERT_EQ(reg_blob_get(c, "test/one", "sha256:bad", -1, got_write, &g, &e), -EINVAL);

        /* the receiver fails: its error, as it said it */
        g = (Got){.fail_at = 100000};
        ASSERT_EQ(reg_blob_get(c, "test/one", layer->digest, -1, got_write, &g, &e), -ENOSPC);
        ASSERT_TRUE(strstr(e.msg, "disk is full") != NULL && strstr(e.msg, "downloading blob") != NULL);
        free(g.b.data);

        /* the registry's stored copy is corrupt (same size, one byte changed): the digest says so */
        Blob small = {.data = strdup("a blob that will rot on the registry's disk"), .size = 43};
        digest_of(small.data, small.size, small.digest);
        check(reg_blob_upload_buffer(c, "test/rot", small.digest, small.data, small.size, &e), &e, "upload");
        char data[512];
        snprintf(data, sizeof(data), "%s/storage/docker/registry/v2/blobs/sha256/%.2s/%s/data", r->dir,
                 small.digest + 7, small.digest + 7);
        int fd = open(data, O_WRONLY | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(pwrite(fd, "A", 1, 0), 1);
        close(fd);
        g = (Got){0};
        ASSERT_EQ(reg_blob_get(c, "test/rot", small.digest, (int64_t)small.size, got_write, &g, &e),
                  -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "corrupt") != NULL && strstr(e.msg, small.digest) != NULL);
        free(g.b.data);
        free(small.data);

        blob_get_cancel(r, authfile, layer);
}

static void skopeo_inspect(const Registry *r, const char *image, const char *expect)
{
        if (access("/usr/bin/skopeo", X_OK) < 0)
                return;
        char cmd[512];
        snprintf(cmd, sizeof(cmd),
                 "skopeo inspect --tls-verify=false --raw docker://127.0.0.1:%d/%s 2>&1 | grep -q '%s'",
                 r->port, image, expect);
        ASSERT_EQ(system(cmd), 0);
}

/* ---- anonymous registry ------------------------------------------------------------------------------- */

static void test_blobs_and_images(const Registry *r, const char *authfile, Blob *layer)
{
        RegClient *c = client_for(r, authfile, 64 * 1024);
        NbError e = {0};
        Blob cfg = config_blob("amd64");

        ASSERT_EQ(reg_blob_exists(c, "test/one", cfg.digest, NULL, &e), 0);
        check(reg_blob_upload_buffer(c, "test/one", cfg.digest, cfg.data, cfg.size, &e), &e,
              "upload config");
        int64_t size = -1;
        ASSERT_EQ(reg_blob_exists(c, "test/one", cfg.digest, &size, &e), 1);
        ASSERT_EQ(size, (int64_t)cfg.size);
        check(reg_blob_upload_buffer(c, "test/one", cfg.digest, cfg.data, cfg.size, &e), &e, "upload again");

        streamed_upload(c, "test/one", layer);
        upload_errors(c, "test/one", layer);
        test_upload_overlap(r, authfile, layer);
        test_upload_cancel_drain(r, authfile, layer);
        test_upload_cancel(r, authfile, layer);
        test_blob_get(r, authfile, c, layer);

        /* mount: 201 when the blob is in the source repository, 0 (session cancelled) when it is not */
        ASSERT_EQ(reg_blob_exists(c, "test/two", layer->digest, NULL, &e), 0);
        ASSERT_EQ(reg_blob_mount(c, "test/two", layer->digest, "test/one", &e), 1);
        ASSERT_EQ(reg_blob_exists(c, "test/two", layer->digest, NULL, &e), 1);
        ASSERT_EQ(reg_blob_mount(c, "test/two",
                                 "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                                 "test/one", &e),
                  0);

        /* OCI manifest, then the image back by tag and by digest */
        char *m = manifest_json(REG_MEDIA_OCI_MANIFEST, REG_MEDIA_OCI_CONFIG, &cfg, REG_MEDIA_OCI_LAYER_GZIP,
                                layer->digest, layer->size);
        char *digest = NULL;
        check(reg_manifest_put(c, "test/one", "v1", REG_MEDIA_OCI_MANIFEST, m, strlen(m), &digest, &e), &e,
              "put");
        RegImage *img = NULL;
        check(reg_image_fetch(c, "test/one", "v1", "linux", "amd64", NULL, &img, &e), &e, "fetch v1");
        ASSERT_STREQ(img->manifest_media_type, REG_MEDIA_OCI_MANIFEST);
        ASSERT_STREQ(img->manifest_digest, digest);
        ASSERT_EQ(img->manifest_size, strlen(m));
        ASSERT_STREQ(img->config_json, cfg.data);
        ASSERT_EQ(img->n_layers, 1);
        ASSERT_STREQ(img->layers[0].digest, layer->digest);
        ASSERT_EQ(img->layers[0].size, (int64_t)layer->size);
        img = reg_image_free(img);
        check(reg_image_fetch(c, "test/one", digest, NULL, NULL, NULL, &img, &e), &e, "fetch by digest");
        ASSERT_STREQ(img->manifest_digest, digest);
        img = reg_image_free(img);
        skopeo_inspect(r, "test/one:v1", REG_MEDIA_OCI_MANIFEST);
        free(m);
        free(digest);

        /* Docker schema2 in the second repository (its blobs arrived by mount and upload) */
        check(reg_blob_upload_buffer(c, "test/two", cfg.digest, cfg.data, cfg.size, &e), &e,
              "upload config 2");
        m = manifest_json(REG_MEDIA_DOCKER_MANIFEST, REG_MEDIA_DOCKER_CONFIG, &cfg,
                          REG_MEDIA_DOCKER_LAYER_GZIP, layer->digest, layer->size);
        check(reg_manifest_put(c, "test/two", "docker", REG_MEDIA_DOCKER_MANIFEST, m, strlen(m), &digest,
                               &e),
              &e, "put docker");
        check(reg_image_fetch(c, "test/two", "docker", "linux", "amd64", NULL, &img, &e), &e,
              "fetch docker");
        ASSERT_STREQ(img->manifest_media_type, REG_MEDIA_DOCKER_MANIFEST);
        ASSERT_STREQ(img->config.media_type, REG_MEDIA_DOCKER_CONFIG);
        img = reg_image_free(img);
        skopeo_inspect(r, "test/two:docker", REG_MEDIA_DOCKER_MANIFEST);

        /* delete, then it is gone */
        check(reg_manifest_delete(c, "test/two", digest, &e), &e, "delete");
        ASSERT_EQ(reg_image_fetch(c, "test/two", digest, NULL, NULL, NULL, &img, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "MANIFEST_UNKNOWN") != NULL);
        ASSERT_EQ(reg_manifest_delete(c, "test/two", digest, &e), -ENOENT);
        ASSERT_EQ(reg_image_fetch(c, "test/one", "nosuchtag", NULL, NULL, NULL, &img, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "test/one:nosuchtag") != NULL);
        /* the registry refuses a manifest whose blobs it does not have */
        Blob other = config_blob("riscv64");
        char *bad = manifest_json(REG_MEDIA_OCI_MANIFEST, REG_MEDIA_OCI_CONFIG, &other,
                                  REG_MEDIA_OCI_LAYER_GZIP, layer->digest, layer->size);
        ASSERT_INT(
                reg_manifest_put(c, "test/one", "bad", REG_MEDIA_OCI_MANIFEST, bad, strlen(bad), NULL, &e),
                <, 0);
        ASSERT_EQ(e.http_status, 400);
        ASSERT_TRUE(strstr(e.msg, "MANIFEST_BLOB_UNKNOWN") != NULL || strstr(e.msg, "BLOB_UNKNOWN") != NULL);
        free(bad);
        free(other.data);
        free(m);
        free(digest);
        free(cfg.data);
        reg_client_free(c);
}

/* An index with two platforms: the right manifest is chosen. */
static void test_index(const Registry *r, const char *authfile, const Blob *layer, const char *index_mt,
                       const char *manifest_mt, const char *tag)
{
        RegClient *c = client_for(r, authfile, 0);
        NbError e = {0};
        const char *arches[] = {"amd64", "arm64"};
        char *digests[2], *sizes[2];
        for (int i = 0; i < 2; i++) {
                Blob cfg = config_blob(arches[i]);
                check(reg_blob_upload_buffer(c, "test/multi", cfg.digest, cfg.data, cfg.size, &e), &e,
                      "config");
                ASSERT_EQ(reg_blob_mount(c, "test/multi", layer->digest, "test/one", &e), 1);
                char *m = manifest_json(manifest_mt, REG_MEDIA_OCI_CONFIG, &cfg, REG_MEDIA_OCI_LAYER_GZIP,
                                        layer->digest, layer->size);
                char d[NB_DIGEST_STR_MAX];
                digest_of(m, strlen(m), d);
                check(reg_manifest_put(c, "test/multi", d, manifest_mt, m, strlen(m), &digests[i], &e), &e,
                      "put");
                ASSERT_STREQ(digests[i], d);
                ASSERT_TRUE(asprintf(&sizes[i], "%zu", strlen(m)) > 0);
                free(m);
                free(cfg.data);
        }
        char *index = NULL;
        ASSERT_TRUE(
                asprintf(&index,
                         "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"manifests\":["
                         "{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":%s,"
                         "\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}},"
                         "{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":%s,"
                         "\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\",\"variant\":\"v8\"}}]}",
                         index_mt, manifest_mt, digests[0], sizes[0], manifest_mt, digests[1],
                         sizes[1]) > 0);
        check(reg_manifest_put(c, "test/multi", tag, index_mt, index, strlen(index), NULL, &e), &e,
              "put index");
        for (int i = 0; i < 2; i++) {
                RegImage *img = NULL;
                check(reg_image_fetch(c, "test/multi", tag, "linux", arches[i], NULL, &img, &e), &e,
                      "fetch");
                ASSERT_STREQ(img->manifest_digest, digests[i]);
                char want[64];
                snprintf(want, sizeof(want), "\"architecture\":\"%s\"", arches[i]);
                ASSERT_TRUE(strstr(img->config_json, want) != NULL);
                reg_image_free(img);
        }
        RegImage *img = NULL;
        ASSERT_EQ(reg_image_fetch(c, "test/multi", tag, "linux", "ppc64le", NULL, &img, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "linux/ppc64le") != NULL);
        for (int i = 0; i < 2; i++) {
                free(digests[i]);
                free(sizes[i]);
        }
        free(index);
        reg_client_free(c);
}

/* ---- htpasswd registry ---------------------------------------------------------------------------------
 */

static void authfile_write(const char *path, const char *host, const char *user, const char *password)
{
        char *plain = NULL, *json = NULL, enc[256];
        ASSERT_TRUE(asprintf(&plain, "%s:%s", user, password) > 0);
        EVP_EncodeBlock((unsigned char *)enc, (const unsigned char *)plain, (int)strlen(plain));
        ASSERT_TRUE(asprintf(&json, "{\"auths\":{\"https://%s/v1/\":{\"auth\":\"%s\"}}}", host, enc) > 0);
        write_file(path, json);
        free(plain);
        free(json);
}

static void test_basic_auth(const Registry *anon, const char *anon_authfile, const Registry *r,
                            const Blob *layer)
{
        char good[256], wrong[256], none[256];
        char host[64];
        snprintf(host, sizeof(host), "127.0.0.1:%d", r->port);
        snprintf(good, sizeof(good), "%s/auth-good.json", scratch);
        snprintf(wrong, sizeof(wrong), "%s/auth-wrong.json", scratch);
        snprintf(none, sizeof(none), "%s/auth-none.json", scratch);
        authfile_write(good, host, "tester", "s3cret-pw");
        authfile_write(wrong, host, "tester", "not-the-password");
        write_file(none, "{\"auths\":{}}");
        NbError e = {0};

        RegClient *c = client_for(r, none, 0);
        ASSERT_EQ(reg_blob_exists(c, "auth/one", layer->digest, NULL, &e), -EACCES);
        ASSERT_TRUE(strstr(e.msg, "requires a login") != NULL);
        reg_client_free(c);

        c = client_for(r, wrong, 0);
        uint64_t t0 = nb_now_usec();
        ASSERT_EQ(reg_blob_exists(c, "auth/one", layer->digest, NULL, &e), -EACCES);
        ASSERT_INT(nb_now_usec() - t0, <, 5 * 1000000ull); /* no retry loop */
        ASSERT_EQ(e.http_status, 401);
        ASSERT_TRUE(strstr(e.msg, "refused the credentials") != NULL);
        ASSERT_TRUE(strstr(e.msg, "tester") != NULL);
        ASSERT_TRUE(strstr(e.msg, "not-the-password") == NULL);
        reg_client_free(c);

        c = client_for(r, good, 64 * 1024);
        Blob cfg = config_blob("amd64");
        check(reg_blob_upload_buffer(c, "auth/one", cfg.digest, cfg.data, cfg.size, &e), &e, "auth upload");
        ASSERT_EQ(reg_blob_exists(c, "auth/one", cfg.digest, NULL, &e), 1);
        /* streamed copy from the other registry (several chunks) */
        RegClient *src = client_for(anon, anon_authfile, 0);
        RegDescriptor d = {.media_type = (char *)REG_MEDIA_OCI_LAYER_GZIP,
                           .digest = (char *)layer->digest,
                           .size = (int64_t)layer->size};
        check(reg_blob_copy(src, "test/one", c, "auth/one", &d, &e), &e, "copy");
        int64_t size = 0;
        ASSERT_EQ(reg_blob_exists(c, "auth/one", layer->digest, &size, &e), 1);
        ASSERT_EQ(size, (int64_t)layer->size);
        /* copy within one client and registry: mounted */
        check(reg_blob_copy(c, "auth/one", c, "auth/two", &d, &e), &e, "copy within");
        ASSERT_EQ(reg_blob_exists(c, "auth/two", layer->digest, NULL, &e), 1);
        char *m = manifest_json(REG_MEDIA_OCI_MANIFEST, REG_MEDIA_OCI_CONFIG, &cfg, REG_MEDIA_OCI_LAYER_GZIP,
                                layer->digest, layer->size);
        check(reg_manifest_put(c, "auth/one", "v1", REG_MEDIA_OCI_MANIFEST, m, strlen(m), NULL, &e), &e,
              "auth put");
        RegImage *img = NULL;
        check(reg_image_fetch(c, "auth/one", "v1", "linux", "amd64", NULL, &img, &e), &e, "auth fetch");
        ASSERT_STREQ(img->config_json, cfg.data);
        reg_image_free(img);
        reg_client_free(src);
        reg_client_free(c);
        free(m);
        free(cfg.data);
}

/* ---- Bearer: a small token server for the registry's `auth: token:` ------------------------------------
 */

/* Issues ES256 JWTs with an x5c chain that the registry trusts (rootcertbundle), the way a real token
 * service does: GET with Basic credentials, or POST grant_type=refresh_token for identity tokens. Tokens
 * can be made to expire early (while claiming expires_in 60) to exercise renewal on 401. */
typedef struct TokenServer {
        int fd;
        int port;
        pthread_t thread;
        EVP_PKEY *key;
        char *x5c;
        int issued;     /* tokens handed out */
        int lifetime_s; /* real JWT lifetime */
        char last_scope[512];
} TokenServer;

static void b64url(const unsigned char *in, size_t n, char *out, size_t size)
{
        ASSERT_TRUE(4 * ((n + 2) / 3) + 1 <= size);
        int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
        while (len > 0 && out[len - 1] == '=')
                len--;
        out[len] = 0;
        for (int i = 0; i < len; i++)
                out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
}

static void token_server_keys(TokenServer *t, const char *dir)
{
        char cmd[1024], path[300];
        snprintf(cmd, sizeof(cmd),
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "
                 "%s/key.pem "
                 "-out %s/cert.pem -days 2 -subj /CN=nbsnap-test-token >/dev/null 2>&1",
                 dir, dir);
        ASSERT_EQ(system(cmd), 0);
        snprintf(path, sizeof(path), "%s/key.pem", dir);
        FILE *f = fopen(path, "re");
        ASSERT_TRUE(f);
        t->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        snprintf(path, sizeof(path), "%s/cert.pem", dir);
        f = fopen(path, "re");
        ASSERT_TRUE(f);
        X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
        ASSERT_TRUE(t->key && x);
        unsigned char *der = NULL;
        int n = i2d_X509(x, &der);
        ASSERT_TRUE(n > 0);
        t->x5c = malloc(4 * ((size_t)n + 2) / 3 + 4);
        ASSERT_TRUE(t->x5c);
        EVP_EncodeBlock((unsigned char *)t->x5c, der, n);
        OPENSSL_free(der);
        X509_free(x);
}

/* "repository:a/b:pull,push" -> {"type":"repository","name":"a/b","actions":["pull","push"]} */
static void access_entry(const char *scope, char *out, size_t size)
{
        const char *c1 = strchr(scope, ':'), *c2 = c1 ? strrchr(scope, ':') : NULL;
        if (!c1 || c2 == c1) {
                out[0] = 0;
                return;
        }
        char actions[256] = "";
        for (const char *p = c2 + 1; *p;) {
                size_t n = strcspn(p, ",");
                size_t len = strlen(actions);
                snprintf(actions + len, sizeof(actions) - len, "%s\"%.*s\"", len ? "," : "", (int)n, p);
                p += n + (p[n] == ',');
        }
        snprintf(out, size, "{\"type\":\"%.*s\",\"name\":\"%.*s\",\"actions\":[%s]}", (int)(c1 - scope),
                 scope, (int)(c2 - c1 - 1), c1 + 1, actions);
}

static char *jwt_issue(TokenServer *t, const char *access)
{
        char header[4096], claims[4096], h64[8192], c64[8192], s64[128], signing[16384];
        time_t now = time(NULL);
        snprintf(header, sizeof(header), "{\"typ\":\"JWT\",\"alg\":\"ES256\",\"x5c\":[\"%s\"]}", t->x5c);
        snprintf(claims, sizeof(claims),
                 "{\"iss\":\"nbsnap-test-issuer\",\"sub\":\"tester\",\"aud\":\"nbsnap-test-registry\","
                 "\"exp\":%lld,"
                 "\"nbf\":%lld,\"iat\":%lld,\"jti\":\"%d-%lld\",\"access\":[%s]}",
                 (long long)now + t->lifetime_s, (long long)now - 10, (long long)now, t->issued,
                 (long long)now, access);
        b64url((unsigned char *)header, strlen(header), h64, sizeof(h64));
        b64url((unsigned char *)claims, strlen(claims), c64, sizeof(c64));
        snprintf(signing, sizeof(signing), "%s.%s", h64, c64);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        unsigned char der[128], raw[64];
        size_t der_len = sizeof(der);
        ASSERT_EQ(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, t->key), 1);
        ASSERT_EQ(EVP_DigestSign(md, der, &der_len, (unsigned char *)signing, strlen(signing)), 1);
        EVP_MD_CTX_free(md);
        const unsigned char *p = der;
        ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
        ASSERT_TRUE(sig);
        ASSERT_EQ(BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32), 32);
        ASSERT_EQ(BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32), 32);
        ECDSA_SIG_free(sig);
        b64url(raw, 64, s64, sizeof(s64));
        char *jwt = NULL;
        ASSERT_TRUE(asprintf(&jwt, "%s.%s", signing, s64) > 0);
        t->issued++;
        return jwt;
}

/* The scopes of a query or form body as JWT access entries. */
static void scopes_to_access(TokenServer *t, const char *query, char *access, size_t size)
{
        access[0] = 0;
        t->last_scope[0] = 0;
        for (const char *p = query; p && *p;) {
                size_t n = strcspn(p, "&");
                if (strncmp(p, "scope=", 6) == 0 && n > 6) {
                        char *v = curl_easy_unescape(NULL, p + 6, (int)n - 6, NULL);
                        char entry[512];
                        for (char *q = v; *q; q++)
                                *q = *q == '+' ? ' ' : *q;
                        snprintf(t->last_scope, sizeof(t->last_scope), "%s", v);
                        /* the client sends one scope per parameter */
                        access_entry(v, entry, sizeof(entry));
                        size_t len = strlen(access);
                        snprintf(access + len, size - len, "%s%s", len && *entry ? "," : "", entry);
                        curl_free(v);
                }
                p += n + (p[n] == '&');
        }
}

static void token_reply(int fd, int status, const char *body)
{
        char buf[16384];
        int n = snprintf(buf, sizeof(buf),
                         "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                         "Connection: close\r\n\r\n%s",
                         status, status == 200 ? "OK" : "Unauthorized", strlen(body), body);
        ASSERT_TRUE(n > 0 && (size_t)n < sizeof(buf));
        for (ssize_t off = 0, w; off < n; off += w)
                if ((w = write(fd, buf + off, (size_t)(n - off))) <= 0)
                        break;
}

static void token_handle(TokenServer *t, int fd)
{
        char req[16384];
        size_t len = 0;
        ssize_t r;
        while (len + 1 < sizeof(req) && (r = read(fd, req + len, sizeof(req) - 1 - len)) > 0) {
                len += (size_t)r;
                req[len] = 0;
                char *end = strstr(req, "\r\n\r\n");
                const char *cl = strcasestr(req, "\r\nContent-Length:");
                if (end && (!cl || cl > end || strlen(end + 4) >= strtoul(cl + 17, NULL, 10)))
                        break;
        }
        req[len] = 0;
        char access[4096];
        bool post = strncmp(req, "POST ", 5) == 0;
        const char *body = strstr(req, "\r\n\r\n");
        const char *query = post ? (body ? body + 4 : "") : strchr(req, '?');
        char q[8192];
        snprintf(q, sizeof(q), "%.*s", (int)strcspn(query ? query + !post : "", " \r\n"),
                 query ? query + !post : "");
        scopes_to_access(t, q, access, sizeof(access));
        bool ok = post ? strstr(q, "grant_type=refresh_token") && strstr(q, "refresh_token=refresh-me") &&
                                  strstr(q, "service=nbsnap-test-registry")
                       : strcasestr(req, "\r\nAuthorization: Basic dGVzdGVyOnMzY3JldC1wdw==\r\n") != NULL;
        if (!ok) {
                token_reply(fd, 401,
                            "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"bad credentials\"}]}");
                return;
        }
        char *jwt = jwt_issue(t, access), *answer = NULL;
        ASSERT_TRUE(asprintf(&answer, "{\"%s\":\"%s\",\"expires_in\":60}", post ? "access_token" : "token",
                             jwt) > 0);
        token_reply(fd, 200, answer);
        free(answer);
        free(jwt);
}

static void *token_server_run(void *userdata)
{
        TokenServer *t = userdata;
        for (;;) {
                int fd = accept4(t->fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                        return NULL;
                token_handle(t, fd);
                close(fd);
        }
}

static void token_server_start(TokenServer *t, const char *dir)
{
        token_server_keys(t, dir);
        t->lifetime_s = 300;
        t->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        ASSERT_EQ(bind(t->fd, (struct sockaddr *)&a, sizeof(a)), 0);
        socklen_t alen = sizeof(a);
        ASSERT_EQ(getsockname(t->fd, (struct sockaddr *)&a, &alen), 0);
        t->port = ntohs(a.sin_port);
        ASSERT_EQ(listen(t->fd, 16), 0);
        ASSERT_EQ(pthread_create(&t->thread, NULL, token_server_run, t), 0);
}

static void token_server_stop(TokenServer *t)
{
        shutdown(t->fd, SHUT_RDWR);
        pthread_join(t->thread, NULL);
        close(t->fd);
        EVP_PKEY_free(t->key);
        free(t->x5c);
}

static void test_bearer(const Registry *r, TokenServer *t, const Blob *layer)
{
        char good[256], wrong[256], idtok[256], none[256], host[64];
        snprintf(host, sizeof(host), "127.0.0.1:%d", r->port);
        snprintf(good, sizeof(good), "%s/bearer-good.json", scratch);
        snprintf(wrong, sizeof(wrong), "%s/bearer-wrong.json", scratch);
        snprintf(idtok, sizeof(idtok), "%s/bearer-idtoken.json", scratch);
        snprintf(none, sizeof(none), "%s/bearer-none.json", scratch);
        authfile_write(good, host, "tester", "s3cret-pw");
        authfile_write(wrong, host, "tester", "nope");
        char json[256];
        snprintf(json, sizeof(json),
                 "{\"auths\":{\"%s\":{\"auth\":\"Og==\",\"identitytoken\":\"refresh-me\"}}}", host);
        write_file(idtok, json);
        write_file(none, "{}");
        NbError e = {0};

        RegClient *c = client_for(r, wrong, 0);
        ASSERT_EQ(reg_blob_exists(c, "tok/one", layer->digest, NULL, &e), -EACCES);
        ASSERT_TRUE(strstr(e.msg, "token server") != NULL);
        ASSERT_TRUE(strstr(e.msg, "bad credentials") != NULL);
        ASSERT_TRUE(strstr(e.msg, "nope") == NULL);
        reg_client_free(c);

        c = client_for(r, good, 64 * 1024);
        int before = t->issued;
        Blob cfg = config_blob("amd64");
        check(reg_blob_upload_buffer(c, "tok/one", cfg.digest, cfg.data, cfg.size, &e), &e, "bearer upload");
        ASSERT_EQ(reg_blob_exists(c, "tok/one", cfg.digest, NULL, &e), 1);
        int after_upload = t->issued;
        ASSERT_INT(after_upload - before, <=, 3); /* pull, then pull,push: cached per scope */
        ASSERT_EQ(reg_blob_exists(c, "tok/one", cfg.digest, NULL, &e), 1);
        ASSERT_EQ(t->issued, after_upload);
        /* a streamed upload with a token the registry stops accepting midway: renewed on 401, the chunk
         * resent (a fresh client, so its first pull,push token is the short-lived one) */
        t->lifetime_s = -58; /* distribution allows 60 s of leeway: valid for 2 s more */
        RegClient *c2 = client_for(r, good, 64 * 1024);
        RegUpload *u = NULL;
        check(reg_upload_begin(c2, "tok/one", NULL, NULL, &u, &e), &e, "bearer begin");
        check(reg_upload_write(u, layer->data, layer->size / 2, &e), &e, "bearer write 1");
        int before_renewal = t->issued;
        sleep(3);
        check(reg_upload_write(u, layer->data + layer->size / 2, layer->size - layer->size / 2, &e), &e,
              "bearer write 2");
        check(reg_upload_commit(u, layer->digest, &e), &e, "bearer commit");
        ASSERT_INT(t->issued, >, before_renewal);
        reg_upload_abort(u);
        reg_client_free(c2);
        t->lifetime_s = 300;
        /* mount asks for two repositories in one token */
        ASSERT_EQ(reg_blob_mount(c, "tok/two", layer->digest, "tok/one", &e), 1);
        char *m = manifest_json(REG_MEDIA_OCI_MANIFEST, REG_MEDIA_OCI_CONFIG, &cfg, REG_MEDIA_OCI_LAYER_GZIP,
                                layer->digest, layer->size);
        check(reg_blob_upload_buffer(c, "tok/two", cfg.digest, cfg.data, cfg.size, &e), &e,
              "bearer upload 2");
        char *digest = NULL;
        check(reg_manifest_put(c, "tok/two", "v1", REG_MEDIA_OCI_MANIFEST, m, strlen(m), &digest, &e), &e,
              "put");
        reg_client_free(c);

        /* identity token: OAuth2 refresh-token grant */
        c = client_for(r, idtok, 0);
        RegImage *img = NULL;
        check(reg_image_fetch(c, "tok/two", "v1", "linux", "amd64", NULL, &img, &e), &e, "idtoken fetch");
        ASSERT_STREQ(img->manifest_digest, digest);
        reg_image_free(img);
        check(reg_manifest_delete(c, "tok/two", digest, &e), &e, "bearer delete");
        reg_client_free(c);

        /* anonymous: the token server refuses, the message says so */
        c = client_for(r, none, 0);
        ASSERT_EQ(reg_image_fetch(c, "tok/one", "v1", NULL, NULL, NULL, &img, &e), -EACCES);
        ASSERT_TRUE(strstr(e.msg, "anonymous access") != NULL);
        reg_client_free(c);
        free(m);
        free(digest);
        free(cfg.data);
}

/* ---- TLS: trust from certs.d/<host:port>/ *.crt or a CA file, and nothing else -------------------------
 */

static void test_tls(const Blob *layer)
{
        char dir[256], cmd[1024], yaml[1024], certs[300], hostdir[400], crt[300], empty[300];
        snprintf(dir, sizeof(dir), "%s/tls", scratch);
        ASSERT_EQ(mkdir(dir, 0700), 0);
        snprintf(cmd, sizeof(cmd),
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "
                 "%s/tls.key "
                 "-out %s/tls.crt -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 "
                 ">/dev/null 2>&1",
                 dir, dir);
        ASSERT_EQ(system(cmd), 0);
        snprintf(yaml, sizeof(yaml), "  tls:\n    certificate: %s/tls.crt\n    key: %s/tls.key\n", dir, dir);
        Registry r = {.tls = true};
        registry_start(&r, "tls-registry", yaml);
        snprintf(crt, sizeof(crt), "%s/tls.crt", dir);
        snprintf(certs, sizeof(certs), "%s/certs.d", dir);
        snprintf(hostdir, sizeof(hostdir), "%s/127.0.0.1:%d", certs, r.port);
        snprintf(empty, sizeof(empty), "%s/empty.json", scratch);
        ASSERT_EQ(mkdir(certs, 0700), 0);
        NbError e = {0};
        RegClient *c = NULL;

        /* not trusted: refused, with curl's reason */
        RegClientOptions o = {.url = r.url, .authfile = empty, .certs_dir = certs};
        ASSERT_OK(reg_client_new(&o, &c, &e));
        ASSERT_EQ(reg_blob_exists(c, "tls/one", layer->digest, NULL, &e), -EPROTO);
        ASSERT_TRUE(strstr(e.msg, "certificate") != NULL);
        c = reg_client_free(c);

        /* certs.d/<host:port>/ca.crt */
        ASSERT_EQ(mkdir(hostdir, 0700), 0);
        snprintf(cmd, sizeof(cmd), "cp %s %s/ca.crt", crt, hostdir);
        ASSERT_EQ(system(cmd), 0);
        ASSERT_OK(reg_client_new(&o, &c, &e));
        ASSERT_EQ(reg_blob_exists(c, "tls/one", layer->digest, NULL, &e), 0);
        Blob cfg = config_blob("amd64");
        check(reg_blob_upload_buffer(c, "tls/one", cfg.digest, cfg.data, cfg.size, &e), &e, "tls upload");
        c = reg_client_free(c);

        /* a CA file */
        RegClientOptions o2 = {.url = r.url, .authfile = empty, .certs_dir = scratch, .ca_file = crt};
        ASSERT_OK(reg_client_new(&o2, &c, &e));
        ASSERT_EQ(reg_blob_exists(c, "tls/one", cfg.digest, NULL, &e), 1);
        c = reg_client_free(c);
        free(cfg.data);
        registry_stop(&r);
}

int main(void)
{
        if (access(REGISTRY_BIN, X_OK) < 0) {
                fprintf(stderr, "%s missing, skipping\n", REGISTRY_BIN);
                return TEST_SKIP;
        }
        ASSERT_TRUE(mkdtemp(scratch) != NULL);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        /* never the user's own credentials */
        char empty[256];
        snprintf(empty, sizeof(empty), "%s/empty.json", scratch);
        write_file(empty, "{}");

        Registry anon = {0};
        registry_start(&anon, "anon", NULL);
        Blob layer = {0};
        test_blobs_and_images(&anon, empty, &layer);
        test_session_hook(&anon, empty, &layer);
        test_index(&anon, empty, &layer, REG_MEDIA_OCI_INDEX, REG_MEDIA_OCI_MANIFEST, "multi");
        test_index(&anon, empty, &layer, REG_MEDIA_DOCKER_LIST, REG_MEDIA_DOCKER_MANIFEST, "multi-docker");

        if (access(HTPASSWD_BIN, X_OK) == 0) {
                char cmd[512], yaml[512];
                snprintf(cmd, sizeof(cmd), "%s -Bbn tester s3cret-pw > %s/htpasswd", HTPASSWD_BIN, scratch);
                ASSERT_EQ(system(cmd), 0);
                snprintf(yaml, sizeof(yaml),
                         "auth:\n  htpasswd:\n    realm: basic-realm\n    path: %s/htpasswd\n", scratch);
                Registry auth = {0};
                registry_start(&auth, "auth", yaml);
                test_basic_auth(&anon, empty, &auth, &layer);
                registry_stop(&auth);
        } else
                fprintf(stderr, "%s missing (apache2-utils), Basic auth not tested\n", HTPASSWD_BIN);

        if (access("/usr/bin/openssl", X_OK) == 0)
                test_tls(&layer);
        if (access("/usr/bin/openssl", X_OK) == 0) {
                TokenServer ts = {0};
                char dir[256], yaml[1024];
                snprintf(dir, sizeof(dir), "%s/token", scratch);
                ASSERT_EQ(mkdir(dir, 0700), 0);
                token_server_start(&ts, dir);
                snprintf(yaml, sizeof(yaml),
                         "auth:\n  token:\n    realm: http://127.0.0.1:%d/token\n    service: "
                         "nbsnap-test-registry\n"
                         "    issuer: nbsnap-test-issuer\n    rootcertbundle: %s/cert.pem\n",
                         ts.port, dir);
                Registry bearer = {0};
                registry_start(&bearer, "bearer", yaml);
                test_bearer(&bearer, &ts, &layer);
                registry_stop(&bearer);
                token_server_stop(&ts);
        } else
                fprintf(stderr, "openssl missing, Bearer flow not tested\n");

        registry_stop(&anon);
        free(layer.data);
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", scratch);
        if (getenv("NBSNAP_TEST_KEEP"))
                fprintf(stderr, "kept %s\n", scratch);
        else if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", scratch);
        printf("test-registry-live: all passed\n");
        return 0;
}
