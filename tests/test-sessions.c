/* agent/sessions.c: the record of a save's open upload sessions, and the cleanup of dead owners' records.
 * The DELETEs that succeed are proven against a real registry in tests/integration/save-sessions.sh; here
 * the registry is 127.0.0.1 on a port nothing listens on (a DELETE fails at the transport: the entry is
 * kept). */
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "agent/sessions.h"
#include "common/fileio.h"
#include "tests.h"

static char dead_registry[64]; /* http://127.0.0.1:<a port nothing listens on> */

static void pick_dead_port(void)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);
        ASSERT_TRUE(fd >= 0);
        ASSERT_OK(bind(fd, (struct sockaddr *)&a, sizeof(a)));
        ASSERT_OK(getsockname(fd, (struct sockaddr *)&a, &len));
        snprintf(dead_registry, sizeof(dead_registry), "http://127.0.0.1:%u", ntohs(a.sin_port));
        close(fd); /* bound, never listened on, closed: connections are refused */
}

static void test_parse(void)
{
        NbSessionRecord r = {0};
        NbError e = {0};
        const char ok[] =
                "{\"version\":1,\"owner\":\"12-ab\",\"program\":\"nbsnap save\",\"pid\":12,\"sessions\":["
                "{\"registry\":\"https://r.example:5000\",\"repository\":\"ns/img\",\"url\":"
                "\"https://r.example:5000/v2/ns/img/blobs/uploads/u1?_state=x\"}]}";
        ASSERT_OK(nb_session_record_parse(ok, strlen(ok), &r, &e));
        ASSERT_EQ(r.n, 1);
        ASSERT_EQ(r.pid, 12);
        ASSERT_STREQ(r.owner, "12-ab");
        ASSERT_STREQ(r.entries[0].repository, "ns/img");
        /* what it formats parses back the same */
        char *again = nb_session_record_format(&r);
        ASSERT_TRUE(again);
        NbSessionRecord r2 = {0};
        ASSERT_OK(nb_session_record_parse(again, strlen(again), &r2, &e));
        ASSERT_STREQ(r2.entries[0].url, r.entries[0].url);
        free(again);
        nb_session_record_done(&r2);
        nb_session_record_done(&r);

        static const struct {
                const char *json, *msg;
        } bad[] = {
                {"{\"version\":1,", "not JSON"},
                {"[]", "not a JSON object"},
                {"{\"version\":2,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[]}",
                 "\"version\" is not 1"},
                {"{\"version\":1,\"owner\":\"../x\",\"program\":\"p\",\"pid\":1,\"sessions\":[]}",
                 "\"owner\""},
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":-1,\"sessions\":[]}", "\"pid\""},
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":{}}",
                 "not an array"},
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[1]}",
                 "not an object"},
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[{\"registry\":"
                 "\"ftp://r\",\"repository\":\"ns/i\",\"url\":\"http://r/v2/ns/i/blobs/uploads/u\"}]}",
                 "\"registry\""},
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[{\"registry\":"
                 "\"http://r/path\",\"repository\":\"ns/i\",\"url\":\"http://r/v2/ns/i/blobs/uploads/u\"}]}",
                 "\"registry\""},
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[{\"registry\":"
                 "\"http://r\",\"repository\":\"NS/i\",\"url\":\"http://r/v2/ns/i/blobs/uploads/u\"}]}",
                 "\"repository\""},
                /* a manifest is not an upload session: never deleted from a record */
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[{\"registry\":"
                 "\"http://r\",\"repository\":\"ns/i\",\"url\":\"http://r/v2/ns/i/manifests/v1\"}]}",
                 "\"url\""},
                {"{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[{\"registry\":"
                 "\"http://r\",\"repository\":\"ns/i\",\"url\":\"http://r/v2/ns/i/manifests/x?/blobs/"
                 "uploads/\"}]}",
                 "\"url\""},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                NbError be = {0};
                NbSessionRecord x = {0};
                ASSERT_EQ(nb_session_record_parse(bad[i].json, strlen(bad[i].json), &x, &be), -EBADMSG);
                if (!strstr(be.msg, bad[i].msg)) {
                        fprintf(stderr, "case %zu: message \"%s\" lacks \"%s\"\n", i, be.msg, bad[i].msg);
                        abort();
                }
                ASSERT_EQ(x.n, 0);
        }

        /* NB_SESSIONS_MAX + 1 sessions: refused */
        size_t cap = 64 + (NB_SESSIONS_MAX + 1) * 160;
        char *big = malloc(cap);
        size_t n = (size_t)snprintf(
                big, cap, "{\"version\":1,\"owner\":\"a\",\"program\":\"p\",\"pid\":1,\"sessions\":[");
        for (int i = 0; i <= NB_SESSIONS_MAX; i++)
                n += (size_t)snprintf(
                        big + n, cap - n,
                        "%s{\"registry\":\"http://r\",\"repository\":\"ns/i\",\"url\":\"http://r/v2/"
                        "ns/i/blobs/uploads/u%d\"}",
                        i ? "," : "", i);
        n += (size_t)snprintf(big + n, cap - n, "]}");
        ASSERT_EQ(nb_session_record_parse(big, n, &r, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "NB_SESSIONS_MAX"));
        free(big);
        /* larger than NB_SESSION_RECORD_MAX: refused before parsing */
        ASSERT_EQ(nb_session_record_parse("{}", NB_SESSION_RECORD_MAX + 1, &r, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "larger than"));
}

static size_t count_files(const char *dir, const char *suffix)
{
        DIR *d = opendir(dir);
        size_t n = 0;
        for (struct dirent *de; d && (de = readdir(d));) {
                size_t l = strlen(de->d_name), k = strlen(suffix);
                n += l >= k && strcmp(de->d_name + l - k, suffix) == 0;
        }
        if (d)
                closedir(d);
        return n;
}

static RegSession session(uint64_t id, const char *url)
{
        return (RegSession){.id = id, .registry = dead_registry, .repository = "ns/img", .url = url};
}

static void read_record(const char *path, NbSessionRecord *r)
{
        char *json = NULL;
        size_t size = 0;
        NbError e = {0};
        ASSERT_OK(nb_read_file(path, NB_SESSION_RECORD_MAX, &json, &size));
        ASSERT_OK(nb_session_record_parse(json, size, r, &e));
        free(json);
}

static void test_owner(const char *state)
{
        char dir[512], url1[256], url2[256], url3[256];
        snprintf(dir, sizeof(dir), "%s/sessions", state);
        snprintf(url1, sizeof(url1), "%s/v2/ns/img/blobs/uploads/one?_state=a", dead_registry);
        snprintf(url2, sizeof(url2), "%s/v2/ns/img/blobs/uploads/one?_state=b", dead_registry);
        snprintf(url3, sizeof(url3), "%s/v2/ns/img/blobs/uploads/two?_state=a", dead_registry);
        NbSessions *s = NULL;
        NbError e = {0};
        ASSERT_OK(nb_sessions_new(state, "test", &s, &e));
        ASSERT_EQ(count_files(dir, ".lock"), 1);
        ASSERT_EQ(count_files(dir, ".json"), 0); /* nothing open: no record */
        const char *path = nb_sessions_record_path(s);
        RegSession a = session(1, url1), a2 = session(1, url2), b = session(2, url3);
        ASSERT_OK(nb_sessions_hook(s, REG_SESSION_OPENED, &a, &e));
        ASSERT_OK(nb_sessions_hook(s, REG_SESSION_OPENED, &b, &e));
        ASSERT_OK(nb_sessions_hook(s, REG_SESSION_MOVED, &a2, &e));
        NbSessionRecord r = {0};
        read_record(path, &r);
        ASSERT_EQ(r.n, 2);
        ASSERT_STREQ(r.program, "test");
        ASSERT_EQ(r.pid, getpid());
        ASSERT_STREQ(r.entries[0].url, url2); /* the latest Location */
        ASSERT_STREQ(r.entries[1].url, url3);
        ASSERT_STREQ(r.entries[0].registry, dead_registry);
        nb_session_record_done(&r);
        ASSERT_EQ(count_files(dir, ".tmp"), 0); /* written whole, renamed into place */
        ASSERT_OK(nb_sessions_hook(s, REG_SESSION_CLOSED, &b, &e));
        ASSERT_EQ(nb_sessions_open_count(s), 1);
        read_record(path, &r);
        ASSERT_EQ(r.n, 1);
        nb_session_record_done(&r);

        /* the owner runs: a cleanup touches nothing */
        NbSessionsCleanupStats st;
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){0}, &st);
        ASSERT_EQ(st.records, 0);
        ASSERT_EQ(access(path, F_OK), 0);

        /* NB_SESSIONS_MAX open: one more is refused, and not recorded */
        for (uint64_t i = 0; i < NB_SESSIONS_MAX - 1; i++) {
                RegSession x = session(100 + i, url3);
                ASSERT_OK(nb_sessions_hook(s, REG_SESSION_OPENED, &x, &e));
        }
        RegSession over = session(999, url3);
        ASSERT_EQ(nb_sessions_hook(s, REG_SESSION_OPENED, &over, &e), -ENOBUFS);
        ASSERT_TRUE(strstr(e.msg, "NB_SESSIONS_MAX"));
        for (uint64_t i = 0; i < NB_SESSIONS_MAX - 1; i++) {
                RegSession x = session(100 + i, url3);
                ASSERT_OK(nb_sessions_hook(s, REG_SESSION_CLOSED, &x, &e));
        }

        /* the owner ends with a session open: the record stays, the lock is free */
        char *kept = strdup(path);
        s = nb_sessions_free(s);
        ASSERT_EQ(access(kept, F_OK), 0);
        char lock[600];
        snprintf(lock, sizeof(lock), "%.*s.lock", (int)(strlen(kept) - 5), kept);
        int fd = open(lock, O_RDWR | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        ASSERT_OK(flock(fd, LOCK_EX | LOCK_NB));
        close(fd);

        /* a dead owner's record, the registry down: the DELETE fails, the session is kept */
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){0}, &st);
        ASSERT_EQ(st.records, 1);
        ASSERT_EQ(st.kept, 1);
        ASSERT_EQ(st.deleted + st.gone + st.dropped, 0);
        read_record(kept, &r);
        ASSERT_EQ(r.n, 1);
        ASSERT_STREQ(r.entries[0].url, url2);
        nb_session_record_done(&r);

        /* older than NB_SESSION_RECORD_TTL_S: dropped without a DELETE */
        struct timespec old[2] = {{.tv_sec = time(NULL) - NB_SESSION_RECORD_TTL_S - 60},
                                  {.tv_sec = time(NULL) - NB_SESSION_RECORD_TTL_S - 60}};
        ASSERT_OK(utimensat(AT_FDCWD, kept, old, 0));
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){0}, &st);
        ASSERT_EQ(st.dropped, 1);
        ASSERT_EQ(access(kept, F_OK), -1);
        ASSERT_EQ(count_files(dir, ".lock"), 0);
        free(kept);

        /* an owner that ends with nothing open leaves nothing */
        ASSERT_OK(nb_sessions_new(state, "test", &s, &e));
        ASSERT_OK(nb_sessions_hook(s, REG_SESSION_OPENED, &a, &e));
        ASSERT_OK(nb_sessions_hook(s, REG_SESSION_CLOSED, &a, &e));
        s = nb_sessions_free(s);
        ASSERT_EQ(count_files(dir, ".json") + count_files(dir, ".lock") + count_files(dir, ".tmp"), 0);
}

static void write_file(const char *dir, const char *name, const char *data, size_t size)
{
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ASSERT_TRUE(dfd >= 0);
        ASSERT_OK(nb_write_file_atomic_at(dfd, name, data, size, 0600));
        close(dfd);
}

static char logged[4096];

static void on_log(void *userdata, bool warning, const char *message)
{
        (void)userdata;
        size_t n = strlen(logged);
        snprintf(logged + n, sizeof(logged) - n, "%s%s\n", warning ? "W: " : "I: ", message);
}

static void test_corrupt(const char *state)
{
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/sessions", state);
        ASSERT_TRUE(mkdir(dir, 0700) == 0 || errno == EEXIST);
        write_file(dir, "1-bad.json", "{\"version\":1, \"sessions\": [", 28);
        char *big = calloc(1, NB_SESSION_RECORD_MAX + 2);
        memset(big, ' ', NB_SESSION_RECORD_MAX + 1);
        write_file(dir, "2-big.json", big, NB_SESSION_RECORD_MAX + 1);
        free(big);
        /* a lock without a record (an owner killed with nothing open), and a live owner's */
        write_file(dir, "3-nothing.lock", "", 0);
        /* an owner killed in its first write, and one killed before its lock got its name */
        write_file(dir, "6-first.lock", "", 0);
        write_file(dir, ".6-first.json.tmp", "{", 1);
        write_file(dir, ".5-early.lock.tmp", "", 0);
        char old[600];
        snprintf(old, sizeof(old), "%s/.5-early.lock.tmp", dir);
        struct timespec then[2] = {{.tv_sec = time(NULL) - NB_SESSION_LOCK_TMP_AGE_S - 10},
                                   {.tv_sec = time(NULL) - NB_SESSION_LOCK_TMP_AGE_S - 10}};
        ASSERT_OK(utimensat(AT_FDCWD, old, then, 0));
        /* ... and one starting now (created, not yet locked): not touched */
        write_file(dir, ".7-starting.lock.tmp", "", 0);
        write_file(dir, "4-live.lock", "", 0);
        char live[600];
        snprintf(live, sizeof(live), "%s/4-live.lock", dir);
        int fd = open(live, O_RDWR | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        ASSERT_OK(flock(fd, LOCK_EX | LOCK_NB));
        const char live_json[] =
                "{\"version\":1,\"owner\":\"4-live\",\"program\":\"p\",\"pid\":1,\"sessions\":[]}";
        write_file(dir, "4-live.json", live_json, strlen(live_json));
        NbSessionsCleanupStats st;
        logged[0] = 0;
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){.log = on_log}, &st);
        ASSERT_EQ(st.records, 3); /* the two, and the first write cut short */
        ASSERT_EQ(st.dropped, 3);
        ASSERT_TRUE(strstr(logged, "W: dropping the upload session record "));
        ASSERT_TRUE(strstr(logged, "/sessions/1-bad.json: not JSON"));
        ASSERT_TRUE(strstr(logged, "/sessions/2-big.json: larger than"));
        ASSERT_EQ(count_files(dir, ".json"), 1); /* the live owner's */
        ASSERT_EQ(count_files(dir, ".lock"), 1);
        ASSERT_EQ(count_files(dir, ".tmp"), 1); /* the starting owner's */
        snprintf(old, sizeof(old), "%s/.7-starting.lock.tmp", dir);
        ASSERT_OK(unlink(old));
        close(fd);
        /* its owner gone now, the next cleanup drops the empty record */
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){0}, &st);
        ASSERT_EQ(st.records, 1);
        ASSERT_EQ(count_files(dir, ".json") + count_files(dir, ".lock"), 0);
}

/* Killed between the record's unlink and the rename of its new version: the whole .tmp is the record. */
static void test_tmp_fallback(const char *state)
{
        char dir[512], json[1024];
        snprintf(dir, sizeof(dir), "%s/sessions", state);
        snprintf(json, sizeof(json),
                 "{\"version\":1,\"owner\":\"8-renaming\",\"program\":\"p\",\"pid\":8,\"sessions\":[{"
                 "\"registry\":\"%s\",\"repository\":\"ns/img\",\"url\":\"%s/v2/ns/img/blobs/uploads/"
                 "r?_state=z\"}]}",
                 dead_registry, dead_registry);
        write_file(dir, "8-renaming.lock", "", 0);
        write_file(dir, ".8-renaming.json.tmp", json, strlen(json));
        NbSessionsCleanupStats st;
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){0}, &st);
        ASSERT_EQ(st.records, 1);
        ASSERT_EQ(st.kept, 1); /* the registry is down: kept, now under the record's name */
        char path[600];
        snprintf(path, sizeof(path), "%s/8-renaming.json", dir);
        NbSessionRecord r = {0};
        read_record(path, &r);
        ASSERT_EQ(r.n, 1);
        nb_session_record_done(&r);
        ASSERT_EQ(count_files(dir, ".tmp"), 0);
        unlink(path);
        snprintf(path, sizeof(path), "%s/8-renaming.lock", dir);
        unlink(path);
}

/* A stopping daemon's cleanup ends early and keeps what it did not get to. */
static void test_cleanup_cancel(const char *state)
{
        char dir[512], json[1024];
        snprintf(dir, sizeof(dir), "%s/sessions", state);
        snprintf(json, sizeof(json),
                 "{\"version\":1,\"owner\":\"9-dead\",\"program\":\"p\",\"pid\":9,\"sessions\":[{"
                 "\"registry\":\"%s\",\"repository\":\"ns/img\",\"url\":\"%s/v2/ns/img/blobs/uploads/"
                 "c?_state=z\"}]}",
                 dead_registry, dead_registry);
        write_file(dir, "9-dead.lock", "", 0);
        write_file(dir, "9-dead.json", json, strlen(json));
        _Atomic bool stop = true;
        NbSessionsCleanupStats st;
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){.cancel = &stop}, &st);
        ASSERT_EQ(st.records + st.deleted + st.kept + st.dropped, 0);
        ASSERT_EQ(count_files(dir, ".json"), 1);
        stop = false;
        nb_sessions_cleanup(state, &(NbSessionsCleanupOptions){.cancel = &stop}, &st);
        ASSERT_EQ(st.records, 1);
        ASSERT_EQ(st.kept, 1); /* the registry is down */
        char path[600];
        snprintf(path, sizeof(path), "%s/9-dead.json", dir);
        ASSERT_OK(unlink(path));
        snprintf(path, sizeof(path), "%s/9-dead.lock", dir);
        ASSERT_OK(unlink(path));
}

static void test_delete_refuses(void)
{
        /* nothing is sent for what is not an upload session of the repository */
        RegClient *c = NULL;
        NbError e = {0};
        RegClientOptions o = {.url = dead_registry, .connect_timeout_s = 1};
        ASSERT_OK(reg_client_new(&o, &c, &e));
        char url[256];
        snprintf(url, sizeof(url), "%s/v2/ns/img/manifests/v1", dead_registry);
        ASSERT_EQ(reg_session_delete(c, "ns/img", url, &e), -EINVAL);
        snprintf(url, sizeof(url), "%s/v2/other/repo/blobs/uploads/x", dead_registry);
        ASSERT_EQ(reg_session_delete(c, "ns/img", url, &e), -EINVAL);
        ASSERT_EQ(reg_session_delete(c, "ns/img", "file:///etc/passwd", &e), -EINVAL);
        /* dot segments (libcurl would remove them: DELETE /v2/ns/img/manifests/v1) and encoded ones */
        static const char *const sneaky[] = {
                "/v2/ns/img/blobs/uploads/../../manifests/v1",
                "/v2/ns/img/blobs/uploads/x/../../../../other/repo/manifests/v1",
                "/v2/ns/img/blobs/uploads/./x",
                "/v2/ns/img/blobs/uploads/%2e%2E/%2e%2e/manifests/v1",
                "/v2/ns/img/blobs/uploads/x%2F..%2Fy",
                "/v2/ns/img/blobs/uploads/x\\..\\y",
        };
        for (size_t i = 0; i < sizeof(sneaky) / sizeof(sneaky[0]); i++) {
                snprintf(url, sizeof(url), "%s%s", dead_registry, sneaky[i]);
                ASSERT_EQ(reg_session_delete(c, "ns/img", url, &e), -EINVAL);
        }
        /* one that is: sent, and the transport failure comes back (kept by the caller) */
        snprintf(url, sizeof(url), "%s/v2/ns/img/blobs/uploads/x?_state=y", dead_registry);
        int r = reg_session_delete(c, "ns/img", url, &e);
        ASSERT_TRUE(r < 0 && r != -EINVAL);
        ASSERT_EQ(e.http_status, 0);
        reg_client_free(c);
}

int main(void)
{
        char state[] = "/tmp/test-sessions.XXXXXX";
        ASSERT_TRUE(mkdtemp(state));
        pick_dead_port();
        test_parse();
        test_owner(state);
        test_corrupt(state);
        test_tmp_fallback(state);
        test_cleanup_cancel(state);
        test_delete_refuses();
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state);
        ASSERT_EQ(system(cmd), 0);
        return 0;
}
