/* test-registry.c: unit tests of the registry library's parsers, without network: references,
 * WWW-Authenticate, auth files, token answers, Location resolution, Retry-After, error bodies, digests,
 * client options. Manifests and indexes are test-oci.c. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "common/clock.h"
#include "common/digest.h"
#include "registry/registry-internal.h"
#include "tests.h"

static char scratch[] = "/tmp/test-registry-XXXXXX";

static void write_file(const char *path, const char *content)
{
        FILE *f = fopen(path, "we");
        ASSERT_TRUE(f);
        fputs(content, f);
        ASSERT_EQ(fclose(f), 0);
}

/* ---- references ------------------------------------------------------------------------------------------
 */

static void ref_ok(const char *s, const char *host, const char *repo, const char *tag, const char *digest)
{
        RegRef *r = NULL;
        NbError e = {0};
        int rc = reg_ref_parse(s, &r, &e);
        if (rc < 0)
                fprintf(stderr, "parse \"%s\": %s\n", s, e.msg);
        ASSERT_OK(rc);
        ASSERT_TRUE(host ? r->host && strcmp(r->host, host) == 0 : !r->host);
        ASSERT_STREQ(r->repository, repo);
        ASSERT_TRUE(tag ? r->tag && strcmp(r->tag, tag) == 0 : !r->tag);
        ASSERT_TRUE(digest ? r->digest && strcmp(r->digest, digest) == 0 : !r->digest);
        reg_ref_free(r);
}

static void ref_bad(const char *s)
{
        RegRef *r = NULL;
        NbError e = {0};
        int rc = reg_ref_parse(s, &r, &e);
        if (rc >= 0)
                fprintf(stderr, "parsed \"%s\" but should not\n", s);
        ASSERT_INT(rc, <, 0);
        ASSERT_TRUE(r == NULL);
        ASSERT_TRUE(e.msg[0] != 0);
}

#define D64 "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void test_references(void)
{
        char buf[600];
        ref_ok("ubuntu", NULL, "ubuntu", NULL, NULL);
        ref_ok("library/ubuntu:22.04", NULL, "library/ubuntu", "22.04", NULL);
        ref_ok("127.0.0.1:5000/foo/bar:tag", "127.0.0.1:5000", "foo/bar", "tag", NULL);
        ref_ok("localhost/foo", "localhost", "foo", NULL, NULL);
        ref_ok("localhost:5000/foo", "localhost:5000", "foo", NULL, NULL);
        ref_ok("localhost:5000", NULL, "localhost", "5000", NULL); /* docker reads it the same way */
        ref_ok("swr.cn-north-4.myhuaweicloud.com/ns/img@" D64, "swr.cn-north-4.myhuaweicloud.com", "ns/img",
               NULL, D64);
        ref_ok("reg.example.com/a/b:v1@" D64, "reg.example.com", "a/b", "v1", D64);
        ref_ok("[::1]:5000/foo:bar", "[::1]:5000", "foo", "bar", NULL);
        ref_ok("Reg/foo", "Reg", "foo", NULL, NULL);
        ref_ok("a__b/c-d/e--f/g.h/i_j:_Tag-1.x", NULL, "a__b/c-d/e--f/g.h/i_j", "_Tag-1.x", NULL);
        snprintf(buf, sizeof(buf), "foo:%0128d", 7);
        ref_ok(buf, NULL, "foo", buf + 4, NULL);

        ref_bad("");
        ref_bad("Foo");
        ref_bad("foo/Bar");
        ref_bad("foo/../bar");
        ref_bad("foo/..");
        ref_bad("foo..bar");
        ref_bad("foo//bar");
        ref_bad("foo/");
        ref_bad("/foo");
        ref_bad("foo:");
        ref_bad("foo@");
        ref_bad("foo:-tag");
        ref_bad("foo@sha256:abc");
        ref_bad("foo@md5:0123456789abcdef0123456789abcdef");
        ref_bad("foo@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef");
        ref_bad("a___b");
        ref_bad("-a");
        ref_bad("a.");
        ref_bad("a_");
        ref_bad("host:99999/foo");
        ref_bad("host:0/foo");
        ref_bad("exa_mple.com/foo");
        ref_bad("-bad.com/foo");
        ref_bad("[zz]:5000/foo");
        ref_bad("foo bar");
        snprintf(buf, sizeof(buf), "foo:%0129d", 7);
        ref_bad(buf);
        memset(buf, 'a', 300);
        buf[300] = 0;
        ref_bad(buf);

        ASSERT_TRUE(reg_repository_valid("a/b/c"));
        ASSERT_TRUE(!reg_repository_valid("a/B"));
        ASSERT_TRUE(!reg_repository_valid(NULL));
        ASSERT_TRUE(reg_tag_valid("latest"));
        ASSERT_TRUE(!reg_tag_valid(".x"));
        ASSERT_TRUE(!reg_tag_valid(""));
        ASSERT_TRUE(reg_digest_valid(D64));
        ASSERT_TRUE(!reg_digest_valid(D64 "0"));
        ASSERT_TRUE(!reg_digest_valid("sha256:"));
}

/* ---- WWW-Authenticate ------------------------------------------------------------------------------------
 */

static void challenge_is(const char *h, RegAuthScheme scheme, const char *realm, const char *service,
                         const char *scope, const char *error)
{
        RegChallenge c = {0};
        ASSERT_OK(reg_challenge_parse(h, &c));
        ASSERT_EQ(c.scheme, scheme);
        ASSERT_TRUE(realm ? c.realm && strcmp(c.realm, realm) == 0 : !c.realm);
        ASSERT_TRUE(service ? c.service && strcmp(c.service, service) == 0 : !c.service);
        ASSERT_TRUE(scope ? c.scope && strcmp(c.scope, scope) == 0 : !c.scope);
        ASSERT_TRUE(error ? c.error && strcmp(c.error, error) == 0 : !c.error);
        reg_challenge_done(&c);
}

static void test_challenges(void)
{
        challenge_is("Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
                     "scope=\"repository:samalba/my-app:pull,push\"",
                     REG_AUTH_BEARER, "https://auth.docker.io/token", "registry.docker.io",
                     "repository:samalba/my-app:pull,push", NULL);
        challenge_is("Basic realm=\"basic-realm\"", REG_AUTH_BASIC, "basic-realm", NULL, NULL, NULL);
        challenge_is("basic realm=foo", REG_AUTH_BASIC, "foo", NULL, NULL, NULL);
        challenge_is("Basic realm=\"x\", Bearer realm=\"https://a/t\", service=\"s\"", REG_AUTH_BEARER,
                     "https://a/t", "s", NULL, NULL);
        challenge_is("Bearer realm=\"https://a/t\", service=\"s\", Basic realm=\"x\"", REG_AUTH_BEARER,
                     "https://a/t", "s", NULL, NULL);
        challenge_is("Bearer realm=\"https://a/t\\\"q\",error=\"invalid_token\"", REG_AUTH_BEARER,
                     "https://a/t\"q", NULL, NULL, "invalid_token");
        challenge_is("BEARER  realm = \"https://x\" , SCOPE=\"repository:a:pull repository:b:pull\"",
                     REG_AUTH_BEARER, "https://x", NULL, "repository:a:pull repository:b:pull", NULL);
        challenge_is("Negotiate abc==, Basic realm=\"r\"", REG_AUTH_BASIC, "r", NULL, NULL, NULL);
        challenge_is("Bearer realm=\"https://x\",error=\"insufficient_scope\",scope=\"repository:a:push\"",
                     REG_AUTH_BEARER, "https://x", NULL, "repository:a:push", "insufficient_scope");
        challenge_is("Bearer realm=\"https://x\", realm=\"https://y\"", REG_AUTH_BEARER, "https://y", NULL,
                     NULL, NULL);
        challenge_is("Bearer realm=\"https://unterminated", REG_AUTH_BEARER, "https://unterminated", NULL,
                     NULL, NULL);

        RegChallenge c = {0};
        ASSERT_EQ(reg_challenge_parse("Negotiate", &c), -EINVAL);
        ASSERT_EQ(reg_challenge_parse("", &c), -EINVAL);
        ASSERT_EQ(reg_challenge_parse(NULL, &c), -EINVAL);
        ASSERT_EQ(reg_challenge_parse("Bearer service=\"x\"", &c), -EINVAL); /* no realm */
        ASSERT_EQ(reg_challenge_parse("realm=\"x\"", &c), -EINVAL);
        ASSERT_EQ(reg_challenge_parse(",,, ==\"", &c), -EINVAL);
}

/* ---- auth files ------------------------------------------------------------------------------------------
 */

static int creds_of(const char *json, const char *host, RegCredentials *c)
{
        NbError e = {0};
        *c = (RegCredentials){0};
        return reg_auth_config_parse(json, strlen(json), host, c, &e);
}

static void test_auth_config(void)
{
        RegCredentials c;
        /* "user:pa:ss" */
        ASSERT_EQ(creds_of("{\"auths\":{\"reg.example.com\":{\"auth\":\"dXNlcjpwYTpzcw==\"}}}",
                           "reg.example.com", &c),
                  1);
        ASSERT_STREQ(c.username, "user");
        ASSERT_STREQ(c.password, "pa:ss");
        reg_credentials_done(&c);
        /* no padding */
        ASSERT_EQ(creds_of("{\"auths\":{\"reg.example.com\":{\"auth\":\"dXNlcjpwYTpzcw\"}}}",
                           "reg.example.com", &c),
                  1);
        ASSERT_STREQ(c.password, "pa:ss");
        reg_credentials_done(&c);
        ASSERT_EQ(creds_of("{\"auths\":{\"https://reg.example.com/v1/"
                           "\":{\"username\":\"u\",\"password\":\"p\"}}}",
                           "reg.example.com", &c),
                  1);
        ASSERT_STREQ(c.username, "u");
        ASSERT_STREQ(c.password, "p");
        reg_credentials_done(&c);
        ASSERT_EQ(creds_of("{\"auths\":{\"http://reg.example.com:5000\":{\"identitytoken\":\"tok\"}}}",
                           "reg.example.com:5000", &c),
                  1);
        ASSERT_STREQ(c.identity_token, "tok");
        ASSERT_TRUE(!c.username);
        reg_credentials_done(&c);
        ASSERT_EQ(creds_of("{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":\"YTpi\"}}}", "docker.io",
                           &c),
                  1);
        ASSERT_STREQ(c.username, "a");
        reg_credentials_done(&c);
        /* an exact key wins over a normalised one */
        ASSERT_EQ(creds_of("{\"auths\":{\"https://h\":{\"auth\":\"YTpi\"},\"h\":{\"auth\":\"Yzpk\"}}}", "h",
                           &c),
                  1);
        ASSERT_STREQ(c.username, "c");
        reg_credentials_done(&c);

        ASSERT_EQ(creds_of("{\"auths\":{\"other.example.com\":{\"auth\":\"YTpi\"}}}", "reg.example.com", &c),
                  0);
        ASSERT_EQ(creds_of("{\"auths\":{\"reg.example.com\":{}}, \"credsStore\":\"desktop\"}",
                           "reg.example.com", &c),
                  0);
        ASSERT_EQ(creds_of("{}", "h", &c), 0);
        ASSERT_EQ(creds_of("{\"auths\":[]}", "h", &c), -EINVAL);
        ASSERT_EQ(creds_of("not json", "h", &c), -EINVAL);
        ASSERT_EQ(creds_of("{\"auths\":{\"h\":{\"auth\":\"!!!!\"}}}", "h", &c), -EINVAL);
        ASSERT_EQ(creds_of("{\"auths\":{\"h\":{\"auth\":\"bm9jb2xvbg==\"}}}", "h", &c),
                  -EINVAL); /* "nocolon" */
        ASSERT_EQ(creds_of("{\"auths\":{\"h\":{\"auth\":5}}}", "h", &c), -EINVAL);
}

static void test_auth_load(void)
{
        char p1[256], p2[300], dir[256];
        snprintf(p1, sizeof(p1), "%s/auth.json", scratch);
        snprintf(dir, sizeof(dir), "%s/dockercfg", scratch);
        snprintf(p2, sizeof(p2), "%s/config.json", dir);
        ASSERT_EQ(mkdir(dir, 0700), 0);
        write_file(p1, "{\"auths\":{\"one.example.com\":{\"auth\":\"YTpi\"}}}");
        write_file(p2, "{\"auths\":{\"two.example.com\":{\"username\":\"x\",\"password\":\"y\"}}}");

        RegCredentials c = {0};
        NbError e = {0};
        char *path = NULL;
        ASSERT_EQ(reg_auth_load(p1, "one.example.com", &c, &path, &e), 1);
        ASSERT_STREQ(path, p1);
        free(path);
        reg_credentials_done(&c);
        ASSERT_EQ(reg_auth_load("/nonexistent/auth.json", "one.example.com", &c, NULL, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "/nonexistent/auth.json") != NULL);

        setenv("REGISTRY_AUTH_FILE", p1, 1);
        setenv("DOCKER_CONFIG", dir, 1);
        ASSERT_EQ(reg_auth_load(NULL, "one.example.com", &c, NULL, &e), 1);
        reg_credentials_done(&c);
        ASSERT_EQ(reg_auth_load(NULL, "two.example.com", &c, &path, &e), 1);
        ASSERT_STREQ(path, p2);
        ASSERT_STREQ(c.username, "x");
        free(path);
        reg_credentials_done(&c);
        ASSERT_EQ(reg_auth_load(NULL, "three.example.com", &c, NULL, &e), 0);
        unsetenv("REGISTRY_AUTH_FILE");
        unsetenv("DOCKER_CONFIG");
        setenv("HOME", scratch, 1);
        ASSERT_EQ(reg_auth_load(NULL, "two.example.com", &c, NULL, &e), 0);
        write_file(p1, "{\"auths\": 3}");
        ASSERT_EQ(reg_auth_load(p1, "one.example.com", &c, NULL, &e), -EINVAL);
        ASSERT_TRUE(strstr(e.msg, "auths") != NULL);
}

static void test_tokens(void)
{
        char *t = NULL;
        long exp = 0;
        NbError e = {0};
        const char *a = "{\"token\":\"abc\",\"expires_in\":300,\"issued_at\":\"2020-01-01T00:00:00Z\"}";
        ASSERT_OK(reg_token_parse(a, strlen(a), &t, &exp, &e));
        ASSERT_STREQ(t, "abc");
        ASSERT_EQ(exp, 300);
        free(t);
        const char *b = "{\"access_token\":\"xyz\"}";
        ASSERT_OK(reg_token_parse(b, strlen(b), &t, &exp, &e));
        ASSERT_STREQ(t, "xyz");
        ASSERT_EQ(exp, 60);
        free(t);
        const char *c = "{\"token\":\"\",\"access_token\":\"q\",\"expires_in\":10}";
        ASSERT_OK(reg_token_parse(c, strlen(c), &t, &exp, &e));
        ASSERT_STREQ(t, "q");
        ASSERT_EQ(exp, 60);
        free(t);
        ASSERT_EQ(reg_token_parse("{}", 2, &t, &exp, &e), -EBADMSG);
        ASSERT_EQ(reg_token_parse("<html>", 6, &t, &exp, &e), -EBADMSG);
        ASSERT_EQ(reg_token_parse("{\"token\":5}", 11, &t, &exp, &e), -EBADMSG);

        char *h = NULL;
        ASSERT_OK(reg_basic_header("user", "pass", &h));
        ASSERT_STREQ(h, "Basic dXNlcjpwYXNz");
        free(h);
        ASSERT_OK(reg_basic_header("", "", &h));
        ASSERT_STREQ(h, "Basic Og==");
        free(h);
}

/* ---- URLs --------------------------------------------------------------------------------------------- */

static void resolves(const char *base, const char *loc, const char *want)
{
        char *got = NULL;
        ASSERT_OK(reg_url_resolve(base, loc, &got));
        ASSERT_STREQ(got, want);
        free(got);
}

static void test_urls(void)
{
        const char *base = "http://127.0.0.1:5000/v2/foo/blobs/uploads/";
        resolves(base, "https://other.example.com/upload/abc?_state=x",
                 "https://other.example.com/upload/abc?_state=x");
        resolves(base, "/v2/foo/blobs/uploads/uuid?_state=abc%3D",
                 "http://127.0.0.1:5000/v2/foo/blobs/uploads/uuid?_state=abc%3D");
        resolves(base, "uuid?_state=x", "http://127.0.0.1:5000/v2/foo/blobs/uploads/uuid?_state=x");
        resolves(base, "//other:8080/x", "http://other:8080/x");
        resolves("http://h/v2/foo/blobs/uploads/u1?_state=a", "u2?_state=b",
                 "http://h/v2/foo/blobs/uploads/u2?_state=b");
        resolves("http://h/v2/foo/blobs/uploads/u1?_state=a", "?_state=c",
                 "http://h/v2/foo/blobs/uploads/u1?_state=c");
        resolves("https://h/v2/a/blobs/uploads/u1", "../../b/blobs/uploads/u2",
                 "https://h/v2/a/b/blobs/uploads/u2");
        /* base64 state survives untouched */
        resolves(base, "/up?_state=a+b/c%2Bd==&x=1", "http://127.0.0.1:5000/up?_state=a+b/c%2Bd==&x=1");
        char *got = NULL;
        ASSERT_EQ(reg_url_resolve(base, "ftp://x/y", &got), -EPROTONOSUPPORT);
        ASSERT_EQ(reg_url_resolve(base, "", &got), -EINVAL);

        ASSERT_OK(reg_url_add_query("http://h/u?_state=a", "digest", D64, &got));
        ASSERT_STREQ(got, "http://h/"
                          "u?_state=a&digest=sha256%"
                          "3a0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
        free(got);
        ASSERT_OK(reg_url_add_query("http://h/u", "digest", "sha256:ab", &got));
        ASSERT_STREQ(got, "http://h/u?digest=sha256%3aab");
        free(got);
        ASSERT_OK(reg_url_add_query("http://h/v2/a/blobs/uploads/", "from", "x/y", &got));
        ASSERT_STREQ(got, "http://h/v2/a/blobs/uploads/?from=x%2fy");
        free(got);

        char buf[64];
        ASSERT_STREQ(reg_url_redact("https://s3/x?X-Amz-Signature=secret", buf, sizeof(buf)),
                     "https://s3/x");
        ASSERT_STREQ(reg_url_redact("https://s3/x#frag", buf, sizeof(buf)), "https://s3/x");
        ASSERT_TRUE(reg_url_same_origin("https://h/a", "https://H:443/b"));
        ASSERT_TRUE(!reg_url_same_origin("https://h/a", "http://h/a"));
        ASSERT_TRUE(!reg_url_same_origin("https://h:5000/a", "https://h/a"));
        ASSERT_TRUE(!reg_url_same_origin("https://h/a", "https://other/a"));
}

/* ---- Retry-After and backoff -----------------------------------------------------------------------------
 */

static void test_retry_after(void)
{
        unsigned ms = 0;
        time_t now = time(NULL);
        ASSERT_OK(reg_retry_after_parse("5", now, &ms));
        ASSERT_EQ(ms, 5000);
        ASSERT_OK(reg_retry_after_parse("  0 ", now, &ms));
        ASSERT_EQ(ms, 0);
        ASSERT_OK(reg_retry_after_parse("100000000000000000000000", now, &ms));
        ASSERT_EQ(ms, REG_RETRY_AFTER_CAP_MS);
        ASSERT_OK(reg_retry_after_parse("3600", now, &ms));
        ASSERT_EQ(ms, REG_RETRY_AFTER_CAP_MS);
        char date[64];
        time_t later = now + 4;
        struct tm tm;
        gmtime_r(&later, &tm);
        strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        ASSERT_OK(reg_retry_after_parse(date, now, &ms));
        ASSERT_EQ(ms, 4000);
        ASSERT_OK(reg_retry_after_parse("Wed, 21 Oct 2015 07:28:00 GMT", now, &ms));
        ASSERT_EQ(ms, 0);
        ASSERT_INT(reg_retry_after_parse("soon", now, &ms), <, 0);
        ASSERT_INT(reg_retry_after_parse("5s", now, &ms), <, 0);
        ASSERT_INT(reg_retry_after_parse(NULL, now, &ms), <, 0);
}

/* The backoff is full jitter: every wait in [0, ceiling], the ceiling doubling from REG_BACKOFF_BASE_MS up
 * to REG_BACKOFF_CAP_MS, and the draws spread over the whole range (a fleet does not come back in one wave).
 * A Retry-After is never cut short and spread over REG_RETRY_AFTER_JITTER % more. */
static void test_backoff_jitter(void)
{
        enum { DRAWS = 4000 };
        uint64_t st = 42; /* a fixed seed: the same draws every run */
        for (unsigned a = 0; a < 12; a++) {
                uint64_t ceiling = (uint64_t)REG_BACKOFF_BASE_MS << (a < 8 ? a : 8);
                if (ceiling > REG_BACKOFF_CAP_MS)
                        ceiling = REG_BACKOFF_CAP_MS;
                unsigned lo = UINT_MAX, hi = 0;
                uint64_t sum = 0;
                for (unsigned i = 0; i < DRAWS; i++) {
                        unsigned b = reg_backoff_ms(a, &st);
                        ASSERT_INT(b, <=, ceiling);
                        lo = b < lo ? b : lo;
                        hi = b > hi ? b : hi;
                        sum += b;
                }
                ASSERT_INT(lo, <=, ceiling / 20);
                ASSERT_INT(hi, >=, ceiling - ceiling / 20);
                ASSERT_INT(sum / DRAWS, >=,
                           ceiling * 45 / 100); /* uniform: the mean near half the ceiling */
                ASSERT_INT(sum / DRAWS, <=, ceiling * 55 / 100);
        }
        /* a 1 s Retry-After: [1 s, 1.5 s], spread over it */
        unsigned lo = UINT_MAX, hi = 0;
        for (unsigned i = 0; i < DRAWS; i++) {
                unsigned w = reg_retry_after_jitter_ms(1000, &st);
                ASSERT_INT(w, >=, 1000);
                ASSERT_INT(w, <=, 1000 + 1000 * REG_RETRY_AFTER_JITTER / 100);
                lo = w < lo ? w : lo;
                hi = w > hi ? w : hi;
        }
        ASSERT_INT(lo, <=, 1020);
        ASSERT_INT(hi, >=, 1000 + 1000 * REG_RETRY_AFTER_JITTER / 100 - 20);
        ASSERT_EQ(reg_retry_after_jitter_ms(0, &st), 0);
        /* two clients draw apart: seeds from getrandom(), never 0 */
        uint64_t s1 = reg_rand_seed(), s2 = reg_rand_seed();
        ASSERT_TRUE(s1 != 0 && s2 != 0 && s1 != s2);
        /* a client's generator is seeded that way */
        RegClientOptions o = {.url = "http://127.0.0.1:9", .authfile = "/dev/null"};
        RegClient *c1 = NULL, *c2 = NULL;
        NbError e = {0};
        char auth[256];
        snprintf(auth, sizeof(auth), "%s/jitter-auth.json", scratch);
        write_file(auth, "{}");
        o.authfile = auth;
        ASSERT_OK(reg_client_new(&o, &c1, &e));
        ASSERT_OK(reg_client_new(&o, &c2, &e));
        ASSERT_TRUE(c1->rand_state != 0 && c1->rand_state != c2->rand_state);
        reg_client_free(c1);
        reg_client_free(c2);
}

/* ---- upload Range, environment knobs, what is transient ------------------------------------------------
 */

static void range_is(const char *v, int rc, uint64_t size)
{
        uint64_t got = 12345;
        ASSERT_EQ(reg_range_parse(v, &got), rc);
        if (rc == 0)
                ASSERT_EQ(got, size);
        else
                ASSERT_EQ(got, 12345); /* untouched on failure */
}

static void test_ranges(void)
{
        range_is("0-99", 0, 100);
        range_is("bytes=0-65535", 0, 65536);
        range_is("BYTES=0-1", 0, 2);
        range_is("  0-4294967296 ", 0, 4294967297ull);
        range_is("0-0", 0, 1); /* distribution also says this for an empty session: callers decide */
        range_is("0--1", 0, 0);
        range_is("1-99", -EBADMSG, 0);
        range_is("0-", -EBADMSG, 0);
        range_is("0-x", -EBADMSG, 0);
        range_is("0-99x", -EBADMSG, 0);
        range_is("0-+9", -EBADMSG, 0);
        range_is("0--2", -EBADMSG, 0);
        range_is("0-99999999999999999999999", -EBADMSG, 0);
        range_is("", -EBADMSG, 0);
        range_is(NULL, -EBADMSG, 0);
        range_is("-5", -EBADMSG, 0);

        ASSERT_OK(setenv("NBSNAP_TEST_KNOB", "42", 1));
        ASSERT_EQ(reg_env_long("NBSNAP_TEST_KNOB", 7), 42);
        const char *bad[] = {"", "0", "-3", "4x", "99999999999999999999", "1099511627777"};
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                ASSERT_OK(setenv("NBSNAP_TEST_KNOB", bad[i], 1));
                ASSERT_EQ(reg_env_long("NBSNAP_TEST_KNOB", 7), 7);
        }
        ASSERT_OK(unsetenv("NBSNAP_TEST_KNOB"));
        ASSERT_EQ(reg_env_long("NBSNAP_TEST_KNOB", 7), 7);

        ASSERT_TRUE(reg_status_transient(503, ""));
        ASSERT_TRUE(reg_status_transient(429, "TOOMANYREQUESTS"));
        ASSERT_TRUE(reg_status_transient(408, ""));
        ASSERT_TRUE(!reg_status_transient(503, "DENIED"));
        ASSERT_TRUE(!reg_status_transient(400, ""));
        ASSERT_TRUE(!reg_status_transient(416, ""));
        ASSERT_TRUE(reg_code_session_lost(404, "BLOB_UPLOAD_UNKNOWN"));
        ASSERT_TRUE(reg_code_session_lost(404, "BLOB_UPLOAD_INVALID"));
        ASSERT_TRUE(!reg_code_session_lost(404, "NAME_UNKNOWN"));
        ASSERT_TRUE(!reg_code_session_lost(400, "BLOB_UPLOAD_INVALID"));
        ASSERT_TRUE(reg_errno_transient(-ECONNRESET) && reg_errno_transient(-ETIMEDOUT));
        ASSERT_TRUE(!reg_errno_transient(-EACCES) && !reg_errno_transient(-ENOMEM));
}

/* Retries end at the deadline, counted from the first failure, and never sleep past it. */
/* Each failure's reason, and the counters' names (the agent's metrics labels). */
static void test_retry_reasons(void)
{
        ASSERT_EQ(reg_retry_reason_status(429), REG_RETRY_HTTP_429);
        ASSERT_EQ(reg_retry_reason_status(500), REG_RETRY_HTTP_5XX);
        ASSERT_EQ(reg_retry_reason_status(503), REG_RETRY_HTTP_5XX);
        ASSERT_EQ(reg_retry_reason_status(504), REG_RETRY_HTTP_5XX);
        ASSERT_EQ(reg_retry_reason_status(408), REG_RETRY_TIMEOUT);
        ASSERT_EQ(reg_retry_reason_status(416), REG_RETRY_OTHER);
        ASSERT_EQ(reg_retry_reason_errno(-ETIMEDOUT), REG_RETRY_TIMEOUT);
        ASSERT_EQ(reg_retry_reason_errno(-ECONNREFUSED), REG_RETRY_CONNECT);
        ASSERT_EQ(reg_retry_reason_errno(-EHOSTUNREACH), REG_RETRY_CONNECT);
        ASSERT_EQ(reg_retry_reason_errno(-ECONNRESET), REG_RETRY_OTHER);
        ASSERT_STREQ(reg_retry_reason_to_string(REG_RETRY_HTTP_429), "http_429");
        ASSERT_STREQ(reg_retry_reason_to_string(REG_RETRY_HTTP_5XX), "http_5xx");
        ASSERT_STREQ(reg_retry_reason_to_string(REG_RETRY_TIMEOUT), "timeout");
        ASSERT_STREQ(reg_retry_reason_to_string(REG_RETRY_CONNECT), "connect");
        ASSERT_STREQ(reg_retry_reason_to_string(REG_RETRY_OTHER), "other");
        ASSERT_STREQ(reg_retry_reason_to_string(_REG_RETRY_REASON_MAX), "unknown");
}

static void test_retry_deadline(void)
{
        RegClientOptions o = {.url = "http://127.0.0.1:9", .authfile = "/dev/null", .retry_deadline_s = 1};
        RegClient *c = NULL;
        NbError e = {0};
        char auth[256];
        snprintf(auth, sizeof(auth), "%s/empty-auth.json", scratch);
        write_file(auth, "{}");
        o.authfile = auth;
        ASSERT_OK(reg_client_new(&o, &c, &e));
        RegRetry rt = {0};
        uint64_t t0 = nb_now_usec();
        ASSERT_EQ(reg_retry_wait(c, &rt, REG_RETRY_OTHER, "5"),
                  -ETIMEDOUT); /* Retry-After past the deadline */
        ASSERT_INT(nb_now_usec() - t0, <, 100000);
        rt = (RegRetry){0};
        ASSERT_EQ(reg_retry_wait(c, &rt, REG_RETRY_OTHER, "0"), 0);
        ASSERT_EQ(rt.attempt, 1);
        ASSERT_TRUE(rt.first_failure_usec != 0);
        /* "now" every time: the backoff applies (no hammering), and the deadline, not a count, ends it */
        unsigned n = 1;
        while (reg_retry_wait(c, &rt, REG_RETRY_OTHER, "0") == 0)
                n++;
        uint64_t took = nb_now_usec() - rt.first_failure_usec;
        ASSERT_INT(took, >=, 1000000 - 1000);
        ASSERT_INT(took, <, 1500000);
        ASSERT_INT(n, >=, 2);
        ASSERT_INT(n, <, REG_RETRY_ATTEMPTS_MAX);
        ASSERT_EQ(reg_retry_elapsed_s(&rt), 1);
        /* the attempt cap is a safety net only */
        rt = (RegRetry){.attempt = REG_RETRY_ATTEMPTS_MAX - 1};
        ASSERT_EQ(reg_retry_wait(c, &rt, REG_RETRY_OTHER, NULL), -ETIMEDOUT);
        /* a Retry-After inside the deadline is waited for, at least as long as asked */
        reg_client_free(c);
        o.retry_deadline_s = 5;
        ASSERT_OK(reg_client_new(&o, &c, &e));
        rt = (RegRetry){0};
        t0 = nb_now_usec();
        ASSERT_EQ(reg_retry_wait(c, &rt, REG_RETRY_OTHER, "1"), 0);
        ASSERT_INT(nb_now_usec() - t0, >=, 1000000);
        ASSERT_INT(nb_now_usec() - t0, <, 1000000 + 10000 * REG_RETRY_AFTER_JITTER + 200000);
        /* ... and once the server's wait alone reaches past what is left, none */
        rt.first_failure_usec = nb_now_usec() - 4500000;
        t0 = nb_now_usec();
        ASSERT_EQ(reg_retry_wait(c, &rt, REG_RETRY_OTHER, "1"), -ETIMEDOUT);
        ASSERT_INT(nb_now_usec() - t0, <, 100000);
        reg_client_free(c);

        /* the environment sets what the options leave at 0 */
        ASSERT_OK(setenv("NBSNAP_REGISTRY_RETRY_DEADLINE", "7", 1));
        ASSERT_OK(setenv("NBSNAP_REGISTRY_LOW_SPEED_TIME", "3", 1));
        ASSERT_OK(setenv("NBSNAP_REGISTRY_REPLAY_MAX", "1000", 1));
        o.retry_deadline_s = 0;
        ASSERT_OK(reg_client_new(&o, &c, &e));
        ASSERT_EQ(c->retry_deadline_s, 7);
        ASSERT_EQ(c->low_speed_time_s, 3);
        ASSERT_EQ(c->replay_max, 1000);
        reg_client_free(c);
        o.retry_deadline_s = 9;
        ASSERT_OK(reg_client_new(&o, &c, &e));
        ASSERT_EQ(c->retry_deadline_s, 9);
        reg_client_free(c);
        unsetenv("NBSNAP_REGISTRY_RETRY_DEADLINE");
        unsetenv("NBSNAP_REGISTRY_LOW_SPEED_TIME");
        unsetenv("NBSNAP_REGISTRY_REPLAY_MAX");
}

/* ---- error bodies ----------------------------------------------------------------------------------------
 */

static void body_is(const char *body, const char *ct, const char *code, const char *msg)
{
        char c[64], m[REG_MESSAGE_MAX + 1];
        reg_error_body_parse(body, body ? strlen(body) : 0, ct, c, sizeof(c), m, sizeof(m));
        ASSERT_STREQ(c, code);
        ASSERT_STREQ(m, msg);
}

static void test_error_bodies(void)
{
        body_is("{\"errors\":[{\"code\":\"DENIED\",\"message\":\"requested access to the resource is "
                "denied\"}]}",
                "application/json", "DENIED", "DENIED: requested access to the resource is denied");
        body_is("{\"errors\":[{\"code\":\"MANIFEST_INVALID\",\"message\":\"manifest "
                "invalid\",\"detail\":{\"a\":1}},"
                "{\"code\":\"BLOB_UNKNOWN\",\"message\":\"blob unknown\",\"detail\":\"sha256:x\"}]}",
                NULL, "MANIFEST_INVALID",
                "MANIFEST_INVALID: manifest invalid ({\"a\":1}); BLOB_UNKNOWN: blob unknown (sha256:x)");
        body_is("{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication "
                "required\",\"detail\":null}]}",
                NULL, "UNAUTHORIZED", "UNAUTHORIZED: authentication required");
        body_is("{\"error\":\"invalid_grant\",\"error_description\":\"bad token\"}", NULL, "",
                "invalid_grant: bad token");
        body_is("<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html", "",
                "(an HTML page instead of an API answer)");
        body_is("  \n<!DOCTYPE html>", NULL, "", "(an HTML page instead of an API answer)");
        body_is("", NULL, "", "");
        body_is(NULL, NULL, "", "");
        body_is("   \n ", NULL, "", "");
        body_is("Not Found\nmore lines", "text/plain", "", "Not Found");
        body_is("bad\tbyte", NULL, "", "bad byte");
        body_is("{\"other\":1}", NULL, "", "{\"other\":1}");
        body_is("{broken", NULL, "", "{broken");

        /* huge: cut to REG_MESSAGE_MAX, marked, at a UTF-8 boundary */
        size_t n = 100000;
        char *big = malloc(n + 64);
        ASSERT_TRUE(big);
        int off = snprintf(big, 64, "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"");
        for (size_t i = (size_t)off; i + 1 < n; i += 2)
                memcpy(big + i, "\xc3\xa9", 2); /* é */
        size_t end = (size_t)off + ((n - (size_t)off) / 2) * 2;
        memcpy(big + end, "\"}]}", 5);
        char c[64], m[REG_MESSAGE_MAX + 1];
        reg_error_body_parse(big, strlen(big), NULL, c, sizeof(c), m, sizeof(m));
        ASSERT_STREQ(c, "DENIED");
        ASSERT_INT(strlen(m), <=, REG_MESSAGE_MAX);
        ASSERT_INT(strlen(m), >=, REG_MESSAGE_MAX - 4);
        ASSERT_TRUE(strcmp(m + strlen(m) - 3, "...") == 0);
        ASSERT_TRUE(((unsigned char)m[strlen(m) - 4] & 0xC0) == 0x80); /* the last é is whole */
        /* a huge plain body, with a small buffer */
        memset(big, 'x', n);
        big[n] = 0;
        char small[16];
        reg_error_body_parse(big, n, NULL, c, sizeof(c), small, sizeof(small));
        ASSERT_STREQ(small, "xxxxxxxxxxxx...");
        free(big);
}

#define DA "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

static void test_digests(void)
{
        char d[NB_DIGEST_STR_MAX];
        ASSERT_OK(nb_sha256_digest("", 0, d));
        ASSERT_STREQ(d, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        ASSERT_OK(nb_digest_check(d, "", 0));
        ASSERT_EQ(nb_digest_check(d, "x", 1), -EBADMSG);
        ASSERT_EQ(nb_digest_check("md5:00", "", 0), -EOPNOTSUPP);
        ASSERT_OK(nb_digest_check(
                "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5"
                "d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
                "", 0));
}

/* ---- client options --------------------------------------------------------------------------------------
 */

static int client_with(const char *url, const char *certs_dir, const char *ca_file, RegClient **c,
                       NbError *e)
{
        /* a short retry deadline: the refused connections below give up within about 2 s */
        RegClientOptions o = {.url = url,
                              .certs_dir = certs_dir,
                              .ca_file = ca_file,
                              .authfile = NULL,
                              .retry_deadline_s = 2};
        *c = NULL;
        return reg_client_new(&o, c, e);
}

static void test_client_options(void)
{
        RegClient *c = NULL;
        NbError e = {0};
        char certs[256], hostdir[300], p[400];
        snprintf(certs, sizeof(certs), "%s/certs.d", scratch);
        ASSERT_EQ(mkdir(certs, 0700), 0);
        setenv("HOME", scratch, 1);

        ASSERT_OK(client_with("http://127.0.0.1:5000", certs, NULL, &c, &e));
        ASSERT_STREQ(reg_client_host(c), "127.0.0.1:5000");
        c = reg_client_free(c);
        ASSERT_OK(client_with("https://reg.example.com/", certs, NULL, &c, &e));
        ASSERT_STREQ(reg_client_host(c), "reg.example.com");
        c = reg_client_free(c);
        ASSERT_EQ(client_with("ftp://reg.example.com", certs, NULL, &c, &e), -EINVAL);
        ASSERT_EQ(client_with("https://reg.example.com/v2/", certs, NULL, &c, &e), -EINVAL);
        ASSERT_EQ(client_with("https://u:p@reg.example.com", certs, NULL, &c, &e), -EINVAL);
        ASSERT_EQ(client_with("reg example", certs, NULL, &c, &e), -EINVAL);
        ASSERT_EQ(client_with("https://reg.example.com", certs, "/nonexistent/ca.pem", &c, &e), -ENOENT);

        /* certs.d/<host>/: a .cert needs its .key */
        snprintf(hostdir, sizeof(hostdir), "%s/reg.example.com:5000", certs);
        ASSERT_EQ(mkdir(hostdir, 0700), 0);
        snprintf(p, sizeof(p), "%s/ca.crt", hostdir);
        write_file(p, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
        ASSERT_OK(client_with("https://reg.example.com:5000", certs, NULL, &c, &e));
        ASSERT_TRUE(c->ca_bundle && strstr(c->ca_bundle, "BEGIN CERTIFICATE"));
        c = reg_client_free(c);
        snprintf(p, sizeof(p), "%s/client.cert", hostdir);
        write_file(p, "x");
        ASSERT_EQ(client_with("https://reg.example.com:5000", certs, NULL, &c, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "client.cert") != NULL);
        snprintf(p, sizeof(p), "%s/client.key", hostdir);
        write_file(p, "x");
        ASSERT_OK(client_with("https://reg.example.com:5000", certs, NULL, &c, &e));
        ASSERT_TRUE(c->client_cert && strstr(c->client_cert, "client.cert"));
        ASSERT_TRUE(c->client_key && strstr(c->client_key, "client.key"));
        c = reg_client_free(c);
        snprintf(p, sizeof(p), "%s/lonely.key", hostdir);
        write_file(p, "x");
        ASSERT_EQ(client_with("https://reg.example.com:5000", certs, NULL, &c, &e), -ENOENT);

        /* bad arguments are refused before any network */
        ASSERT_OK(client_with("http://127.0.0.1:9", certs, NULL, &c, &e));
        ASSERT_EQ(reg_blob_exists(c, "Bad", D64, NULL, &e), -EINVAL);
        ASSERT_EQ(reg_manifest_delete(c, "ok", "latest", &e), -EINVAL);
        ASSERT_EQ(reg_blob_upload_buffer(c, "ok", D64, "x", 1, &e), -EBADMSG);
        ASSERT_EQ(reg_manifest_put(c, "ok", DA, REG_MEDIA_OCI_MANIFEST, "{}", 2, NULL, &e), -EBADMSG);
        /* nothing listens on port 9: a connection error names the request, after retries */
        ASSERT_EQ(reg_blob_exists(c, "ok", D64, NULL, &e), -ECONNREFUSED);
        ASSERT_TRUE(strstr(e.msg, "HEAD http://127.0.0.1:9/v2/ok/blobs/") != NULL);
        reg_client_free(c);
}

/* ---- the request helper against scripted loopback servers ------------------------------------------------
 */

#define MOCK_MAX 32

/* A one-request-per-connection HTTP server on one loopback address that answers from a script and keeps
 * what it was sent. */
typedef struct Mock {
        int fd, port;
        pthread_t thread;
        char replies[MOCK_MAX][1024];
        const char *bodies[MOCK_MAX];
        size_t n_replies;
        char requests[MOCK_MAX][4096];
        uint64_t times[MOCK_MAX]; /* when each request was accepted, monotonic usec */
        size_t n_requests;
} Mock;

static void *mock_run(void *userdata)
{
        Mock *m = userdata;
        for (;;) {
                int fd = accept4(m->fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                        return NULL;
                size_t slot = m->n_requests < MOCK_MAX ? m->n_requests : MOCK_MAX - 1;
                m->times[slot] = nb_now_usec();
                char *req = m->requests[slot];
                size_t len = 0;
                ssize_t r;
                while (len + 1 < 4096 && (r = read(fd, req + len, 4095 - len)) > 0) {
                        len += (size_t)r;
                        req[len] = 0;
                        char *end = strstr(req, "\r\n\r\n");
                        const char *cl = strcasestr(req, "\r\nContent-Length:");
                        if (end && (!cl || cl > end || strlen(end + 4) >= strtoul(cl + 17, NULL, 10)))
                                break;
                }
                bool scripted = m->n_requests < m->n_replies;
                const char *reply = scripted ? m->replies[m->n_requests] : "HTTP/1.1 500 No script\r\n";
                const char *body = scripted && m->bodies[m->n_requests] ? m->bodies[m->n_requests] : "";
                m->n_requests++;
                char out[2048];
                int n = snprintf(out, sizeof(out), "%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                                 reply, strlen(body), body);
                if (write(fd, out, (size_t)n) < 0)
                        perror("mock write");
                close(fd);
        }
}

static void mock_start(Mock *m, const char *addr)
{
        memset(m, 0, sizeof(*m));
        m->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET};
        ASSERT_EQ(inet_pton(AF_INET, addr, &a.sin_addr), 1);
        ASSERT_EQ(bind(m->fd, (struct sockaddr *)&a, sizeof(a)), 0);
        socklen_t len = sizeof(a);
        ASSERT_EQ(getsockname(m->fd, (struct sockaddr *)&a, &len), 0);
        m->port = ntohs(a.sin_port);
        ASSERT_EQ(listen(m->fd, 8), 0);
}

static void mock_go(Mock *m)
{
        ASSERT_EQ(pthread_create(&m->thread, NULL, mock_run, m), 0);
}

static void mock_stop(Mock *m)
{
        shutdown(m->fd, SHUT_RDWR);
        pthread_join(m->thread, NULL);
        close(m->fd);
}

static RegClient *mock_client(const Mock *m, bool with_creds)
{
        char url[64], auth[256], json[256];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", m->port);
        snprintf(auth, sizeof(auth), "%s/mock-auth.json", scratch);
        /* user:pass */
        snprintf(json, sizeof(json), "{\"auths\":{\"127.0.0.1:%d\":{\"auth\":\"dXNlcjpwYXNz\"}}}", m->port);
        write_file(auth, with_creds ? json : "{}");
        RegClientOptions o = {.url = url, .authfile = auth};
        RegClient *c = NULL;
        NbError e = {0};
        ASSERT_OK(reg_client_new(&o, &c, &e));
        return c;
}

static int mock_get(RegClient *c, const Mock *m, const char *path, bool retry, RegResponse *resp, NbError *e)
{
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", m->port, path);
        RegRequest rq = {
                .method = "GET", .url = url, .scope = "repository:r:pull", .retry = retry, .follow = true};
        *resp = (RegResponse){0};
        return reg_request(c, &rq, resp, e);
}

/* reg_manifest_exists(): HEAD of the manifest by tag, every manifest type accepted; 200 is 1 with the
 * registry's digest, 404 is 0, 403 is -EACCES naming the request; a bad tag is refused before any network.
 */
static void test_manifest_exists(void)
{
        Mock m;
        mock_start(&m, "127.0.0.1");
        snprintf(m.replies[0], 1024, "HTTP/1.1 200 OK\r\nDocker-Content-Digest: %s\r\n", DA);
        snprintf(m.replies[1], 1024, "HTTP/1.1 404 Not Found\r\n");
        snprintf(m.replies[2], 1024, "HTTP/1.1 403 Forbidden\r\n");
        m.n_replies = 3;
        mock_go(&m);
        RegClient *c = mock_client(&m, false);
        NbError e = {0};
        char *digest = NULL;
        ASSERT_EQ(reg_manifest_exists(c, "ns/img", "v1", &digest, &e), 1);
        ASSERT_STREQ(digest, DA);
        free(digest);
        ASSERT_EQ(reg_manifest_exists(c, "ns/img", "v2", NULL, &e), 0);
        ASSERT_EQ(reg_manifest_exists(c, "ns/img", "v3", NULL, &e), -EACCES);
        ASSERT_TRUE(strstr(e.msg, "checking manifest ns/img:v3 in 127.0.0.1:") != NULL);
        ASSERT_TRUE(strstr(e.msg, "HTTP 403") != NULL);
        ASSERT_EQ(reg_manifest_exists(c, "ns/img", "bad tag", NULL, &e), -EINVAL);
        reg_client_free(c);
        mock_stop(&m);
        ASSERT_EQ(m.n_requests, 3);
        ASSERT_TRUE(strstr(m.requests[0], "HEAD /v2/ns/img/manifests/v1 HTTP/1.1\r\n") != NULL);
        ASSERT_TRUE(strcasestr(m.requests[0], REG_MEDIA_OCI_MANIFEST) != NULL);
        ASSERT_TRUE(strcasestr(m.requests[0], REG_MEDIA_DOCKER_MANIFEST) != NULL);
        ASSERT_TRUE(strcasestr(m.requests[0], REG_MEDIA_OCI_INDEX) != NULL);
        ASSERT_TRUE(strcasestr(m.requests[0], REG_MEDIA_DOCKER_LIST) != NULL);
}

/* A redirect to storage on another host gets no Authorization; the registry does. */
static void test_redirect_drops_auth(void)
{
        Mock a, b;
        mock_start(&a, "127.0.0.1");
        mock_start(&b, "127.0.0.2");
        snprintf(a.replies[0], 1024,
                 "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\n"
                 "");
        snprintf(a.replies[1], 1024,
                 "HTTP/1.1 307 Temporary Redirect\r\nLocation: "
                 "http://127.0.0.2:%d/storage/blob?X-Amz-Signature=topsecret"
                 "\r\n",
                 b.port);
        snprintf(b.replies[0], 1024, "HTTP/1.1 200 OK\r\n");
        b.bodies[0] = "hello";
        a.n_replies = 2;
        b.n_replies = 1;
        mock_go(&a);
        mock_go(&b);
        RegClient *c = mock_client(&a, true);
        RegResponse resp;
        NbError e = {0};
        ASSERT_OK(mock_get(c, &a, "/v2/r/blobs/" D64, true, &resp, &e));
        ASSERT_EQ(resp.status, 200);
        ASSERT_STREQ(resp.body, "hello");
        reg_response_done(&resp);
        mock_stop(&a);
        mock_stop(&b);
        ASSERT_EQ(a.n_requests, 2);
        ASSERT_EQ(b.n_requests, 1);
        ASSERT_TRUE(strcasestr(a.requests[0], "Authorization:") == NULL);
        ASSERT_TRUE(strcasestr(a.requests[1], "Authorization: Basic dXNlcjpwYXNz\r\n") != NULL);
        ASSERT_TRUE(strcasestr(b.requests[0], "Authorization") == NULL);
        ASSERT_TRUE(strstr(b.requests[0], "GET /storage/blob?X-Amz-Signature=topsecret ") != NULL);
        reg_client_free(c);
}

static int blob_collect(void *userdata, const void *data, size_t size, NbError *e)
{
        (void)e;
        char *b = userdata;
        ASSERT_INT(strlen(b) + size, <, 64);
        strncat(b, data, size);
        return 0;
}

/* reg_blob_get() follows the registry's redirect to storage (no Authorization there) and checks the
 * digest of what the storage sent. */
static void test_blob_get_redirect(void)
{
        static const char hello[] =
                "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        Mock a, b;
        mock_start(&a, "127.0.0.1");
        mock_start(&b, "127.0.0.2");
        for (int i = 0; i < 2; i++)
                snprintf(a.replies[i], 1024,
                         "HTTP/1.1 307 Temporary Redirect\r\nLocation: "
                         "http://127.0.0.2:%d/storage/blob?X-Amz-Signature=topsecret\r\n",
                         b.port);
        snprintf(b.replies[0], 1024, "HTTP/1.1 200 OK\r\n");
        b.bodies[0] = "hello";
        snprintf(b.replies[1], 1024, "HTTP/1.1 200 OK\r\n");
        b.bodies[1] = "hellO";
        a.n_replies = b.n_replies = 2;
        mock_go(&a);
        mock_go(&b);
        RegClient *c = mock_client(&a, true);
        c->auth = REG_AUTH_BASIC; /* as learned from an earlier challenge */
        NbError e = {0};
        char got[64] = "";
        ASSERT_OK(reg_blob_get(c, "r", hello, 5, blob_collect, got, &e));
        ASSERT_STREQ(got, "hello");
        got[0] = '\0';
        ASSERT_EQ(reg_blob_get(c, "r", hello, 5, blob_collect, got, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "corrupt") != NULL && strstr(e.msg, "topsecret") == NULL);
        mock_stop(&a);
        mock_stop(&b);
        ASSERT_TRUE(strcasestr(a.requests[0], "Authorization: Basic dXNlcjpwYXNz\r\n") != NULL);
        ASSERT_TRUE(strcasestr(b.requests[0], "Authorization") == NULL);
        ASSERT_TRUE(strstr(b.requests[0], "GET /storage/blob?X-Amz-Signature=topsecret ") != NULL);
        reg_client_free(c);
}

static void test_retries(void)
{
        Mock a;
        mock_start(&a, "127.0.0.1");
        snprintf(a.replies[0], 1024, "HTTP/1.1 503 Busy\r\nRetry-After: 0\r\n");
        snprintf(a.replies[1], 1024, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n");
        snprintf(a.replies[2], 1024, "HTTP/1.1 200 OK\r\n");
        /* not retried: DENIED, whatever the status; 401 without a challenge */
        snprintf(a.replies[3], 1024, "HTTP/1.1 503 Busy\r\nContent-Type: application/json\r\n");
        a.bodies[3] = "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"no\"}]}";
        snprintf(a.replies[4], 1024, "HTTP/1.1 503 Busy\r\n");
        snprintf(a.replies[5], 1024, "HTTP/1.1 403 Forbidden\r\n");
        a.bodies[5] = "<html><title>Forbidden</title></html>";
        snprintf(a.replies[6], 1024, "HTTP/1.1 401 Unauthorized\r\n");
        a.n_replies = 7;
        mock_go(&a);
        RegClient *c = mock_client(&a, false);
        RegResponse resp;
        NbError e = {0};
        uint64_t before[_REG_RETRY_REASON_MAX], after[_REG_RETRY_REASON_MAX];
        reg_retry_counts(before);
        ASSERT_OK(mock_get(c, &a, "/v2/r/manifests/x", true, &resp, &e));
        ASSERT_EQ(resp.status, 200);
        reg_response_done(&resp);
        ASSERT_EQ(a.n_requests, 3);
        /* both retries counted, as 5xx, and nothing else */
        reg_retry_counts(after);
        for (size_t i = 0; i < _REG_RETRY_REASON_MAX; i++)
                ASSERT_EQ(after[i] - before[i], i == REG_RETRY_HTTP_5XX ? 2u : 0u);
        ASSERT_OK(mock_get(c, &a, "/v2/r/manifests/x", true, &resp, &e)); /* DENIED: not retried */
        ASSERT_EQ(resp.status, 503);
        ASSERT_STREQ(resp.error_code, "DENIED");
        reg_response_done(&resp);
        ASSERT_OK(mock_get(c, &a, "/v2/r/manifests/x", false, &resp, &e)); /* retry off: the 503 as it is */
        ASSERT_EQ(resp.status, 503);
        reg_response_done(&resp);
        ASSERT_OK(mock_get(c, &a, "/v2/r/manifests/x", true, &resp, &e));
        ASSERT_EQ(resp.status, 403);
        ASSERT_EQ(reg_response_error(&resp, &e, "fetching x"), -EACCES);
        ASSERT_STREQ(e.msg, "fetching x: HTTP 403: (an HTML page instead of an API answer)");
        reg_response_done(&resp);
        ASSERT_EQ(mock_get(c, &a, "/v2/r/manifests/x", true, &resp, &e), -EACCES);
        ASSERT_TRUE(strstr(e.msg, "without an authentication challenge") != NULL);
        ASSERT_EQ(a.n_requests, 7);
        reg_retry_counts(before); /* what is not retried is not counted */
        ASSERT_EQ(before[REG_RETRY_HTTP_5XX], after[REG_RETRY_HTTP_5XX]);
        mock_stop(&a);
        reg_client_free(c);
}

#define REPLY_429 "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"

/* Gaps between the requests first..last-1 of a mock: each at least Retry-After: 1 and at most its jitter,
 * and not all the same (the jitter spreads them). */
static void gaps_spread(const Mock *m, size_t first, size_t last, size_t step)
{
        uint64_t lo = UINT64_MAX, hi = 0;
        for (size_t i = first + step; i <= last; i += step) {
                uint64_t gap = m->times[i] - m->times[i - step];
                ASSERT_INT(gap, >=, 1000000 - 5000);
                ASSERT_INT(gap, <, 1000000 + 10000 * REG_RETRY_AFTER_JITTER + 400000);
                lo = gap < lo ? gap : lo;
                hi = gap > hi ? gap : hi;
        }
        ASSERT_INT(hi - lo, >=, 20000);
}

/* A rate limit that lasts: twelve 429s with Retry-After: 1, then 200. Eight attempts used to end this; the
 * deadline (120 s by default) does now, and each retry comes a jittered 1-1.5 s after the 429. */
static void test_retry_storm(void)
{
        enum { STORM = 12 };
        Mock a;
        mock_start(&a, "127.0.0.1");
        for (size_t i = 0; i < STORM; i++)
                snprintf(a.replies[i], 1024, REPLY_429);
        snprintf(a.replies[STORM], 1024, "HTTP/1.1 200 OK\r\n");
        a.n_replies = STORM + 1;
        mock_go(&a);
        RegClient *c = mock_client(&a, false);
        RegResponse resp;
        NbError e = {0};
        uint64_t before[_REG_RETRY_REASON_MAX], after[_REG_RETRY_REASON_MAX];
        reg_retry_counts(before);
        ASSERT_OK(mock_get(c, &a, "/v2/r/manifests/x", true, &resp, &e));
        ASSERT_EQ(resp.status, 200);
        reg_response_done(&resp);
        reg_retry_counts(after);
        ASSERT_EQ(after[REG_RETRY_HTTP_429] - before[REG_RETRY_HTTP_429], STORM);
        mock_stop(&a);
        ASSERT_EQ(a.n_requests, STORM + 1);
        gaps_spread(&a, 0, STORM, 1);
        reg_client_free(c);
}

/* An endless 5xx (the mock's "500 No script") ends at the deadline, after as many attempts as fit in it. */
static void test_retry_endless(void)
{
        Mock a;
        mock_start(&a, "127.0.0.1");
        a.n_replies = 0;
        mock_go(&a);
        ASSERT_OK(setenv("NBSNAP_REGISTRY_RETRY_DEADLINE", "2", 1));
        RegClient *c = mock_client(&a, false);
        unsetenv("NBSNAP_REGISTRY_RETRY_DEADLINE");
        RegResponse resp;
        NbError e = {0};
        uint64_t t0 = nb_now_usec();
        ASSERT_OK(mock_get(c, &a, "/v2/r/manifests/x", true, &resp, &e));
        ASSERT_EQ(resp.status, 500); /* the last answer, as it is: callers report it */
        ASSERT_INT(resp.attempts, >=, 3);
        ASSERT_INT(resp.retried_s, >=, 1);
        /* ... with the attempts and the time spent */
        ASSERT_INT(reg_response_error(&resp, &e, "GET manifest"), ==, -EIO);
        char want[96];
        snprintf(want, sizeof(want), "(giving up after %u attempts in ", resp.attempts);
        if (!strstr(e.msg, want) || !strstr(e.msg, "GET manifest: HTTP 500"))
                fprintf(stderr, "message: %s\n", e.msg);
        ASSERT_OK(strstr(e.msg, want) && strstr(e.msg, "GET manifest: HTTP 500") ? 0 : -1);
        reg_response_done(&resp);
        ASSERT_INT(nb_now_usec() - t0, >=, 2000000 - 5000);
        ASSERT_INT(nb_now_usec() - t0, <, 3000000);
        mock_stop(&a);
        ASSERT_INT(a.n_requests, >=, 3);
        reg_client_free(c);
}

/* A 401 from another host (a session's Location there, a recorded session URL) is not a realm to send the
 * password to: no token request, nothing sent to the client's own registry, the 401 comes back as an error.
 */
static void test_foreign_401(void)
{
        Mock a, b;
        mock_start(&a, "127.0.0.1");
        mock_start(&b, "127.0.0.2");
        snprintf(b.replies[0], 1024,
                 "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.2:%d/token\","
                 "service=\"evil\"\r\n",
                 b.port);
        snprintf(b.replies[1], 1024, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
        a.n_replies = 0;
        b.n_replies = 2;
        mock_go(&a);
        mock_go(&b);
        RegClient *c = mock_client(&a, true);
        NbError e = {0};
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.2:%d/v2/r/blobs/uploads/u?_state=s", b.port);
        int r = reg_session_delete(c, "r", url, &e);
        ASSERT_INT(r, <, 0);
        ASSERT_EQ(e.http_status, 401);
        mock_stop(&a);
        mock_stop(&b);
        ASSERT_EQ(a.n_requests, 0);
        ASSERT_EQ(b.n_requests, 1); /* the DELETE; no GET /token with the password */
        reg_client_free(c);
}

/* An upload session that moves to another host: no Authorization there, the Location of the latest
 * response used, the digest appended to its query. */
static void test_upload_locations(void)
{
        Mock a, b;
        mock_start(&a, "127.0.0.1");
        mock_start(&b, "127.0.0.2");
        snprintf(a.replies[0], 1024,
                 "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\n"
                 "");
        snprintf(a.replies[1], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: http://127.0.0.2:%d/up/1?_state=a\r\n"
                 "OCI-Chunk-Min-Length: 100\r\n",
                 b.port);
        snprintf(b.replies[0], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: 2?_state=b\r\nRange: 0-99\r\n"
                 "");
        snprintf(b.replies[1], 1024, "HTTP/1.1 201 Created\r\n");
        a.n_replies = 2;
        b.n_replies = 2;
        mock_go(&a);
        mock_go(&b);
        RegClient *c = mock_client(&a, true);
        NbError e = {0};
        RegUpload *u = NULL;
        char data[100], digest[NB_DIGEST_STR_MAX];
        memset(data, 'z', sizeof(data));
        ASSERT_OK(nb_sha256_digest(data, sizeof(data), digest));
        ASSERT_OK(reg_upload_begin(c, "r", NULL, NULL, &u, &e));
        ASSERT_OK(reg_upload_write(u, data, sizeof(data), &e));
        int r = reg_upload_commit(u, digest, &e);
        if (r < 0)
                fprintf(stderr, "commit: %s\n", e.msg);
        ASSERT_OK(r);
        reg_upload_abort(u);
        mock_stop(&a);
        mock_stop(&b);
        ASSERT_EQ(a.n_requests, 2);
        ASSERT_EQ(b.n_requests, 2);
        ASSERT_TRUE(strstr(a.requests[1], "POST /v2/r/blobs/uploads/ ") != NULL);
        ASSERT_TRUE(strstr(b.requests[0], "PATCH /up/1?_state=a ") != NULL);
        ASSERT_TRUE(strcasestr(b.requests[0], "\r\nContent-Range: 0-99\r\n") != NULL);
        ASSERT_TRUE(strcasestr(b.requests[0], "\r\nContent-Type: application/octet-stream\r\n") != NULL);
        char want[200];
        snprintf(want, sizeof(want), "PUT /up/2?_state=b&digest=sha256%%3a%s ", digest + 7);
        ASSERT_TRUE(strstr(b.requests[1], want) != NULL);
        ASSERT_TRUE(strcasestr(b.requests[0], "Authorization") == NULL);
        ASSERT_TRUE(strcasestr(b.requests[1], "Authorization") == NULL);
        reg_client_free(c);
}

/* One 100-byte upload against a script: begin, write, commit. Returns what commit returned. */
static int scripted_upload(Mock *a, NbError *e)
{
        RegClient *c = mock_client(a, false);
        RegUpload *u = NULL;
        char data[100], digest[NB_DIGEST_STR_MAX];
        memset(data, 'q', sizeof(data));
        ASSERT_OK(nb_sha256_digest(data, sizeof(data), digest));
        ASSERT_OK(reg_upload_begin(c, "r", NULL, NULL, &u, e));
        ASSERT_OK(reg_upload_write(u, data, sizeof(data), e));
        int r = reg_upload_commit(u, digest, e);
        reg_upload_abort(u);
        reg_client_free(c);
        return r;
}

#define UPLOAD_JSON_404  "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
#define UPLOAD_LOST_BODY "{\"errors\":[{\"code\":\"BLOB_UPLOAD_UNKNOWN\",\"message\":\"unknown\"}]}"

/* 416: the client asks where the session stands (GET, 204, Range "0-0" = empty for distribution) and sends
 * the chunk again from there. */
static void test_upload_resync(void)
{
        Mock a;
        mock_start(&a, "127.0.0.1");
        snprintf(a.replies[0], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: /v2/r/blobs/uploads/u1?_state=a\r\n");
        snprintf(a.replies[1], 1024, "HTTP/1.1 416 Requested Range Not Satisfiable\r\n");
        snprintf(a.replies[2], 1024,
                 "HTTP/1.1 204 No Content\r\nRange: 0-0\r\nLocation: /v2/r/blobs/uploads/u1?_state=b\r\n");
        snprintf(a.replies[3], 1024,
                 "HTTP/1.1 202 Accepted\r\nRange: 0-99\r\nLocation: /v2/r/blobs/uploads/u1?_state=c\r\n");
        snprintf(a.replies[4], 1024, "HTTP/1.1 201 Created\r\n");
        a.n_replies = 5;
        mock_go(&a);
        NbError e = {0};
        int r = scripted_upload(&a, &e);
        if (r < 0)
                fprintf(stderr, "resync: %s\n", e.msg);
        ASSERT_OK(r);
        mock_stop(&a);
        ASSERT_EQ(a.n_requests, 5);
        ASSERT_TRUE(strstr(a.requests[1], "PATCH /v2/r/blobs/uploads/u1?_state=a ") != NULL);
        ASSERT_TRUE(strstr(a.requests[2], "GET /v2/r/blobs/uploads/u1?_state=a ") != NULL);
        ASSERT_TRUE(strstr(a.requests[3], "PATCH /v2/r/blobs/uploads/u1?_state=b ") != NULL);
        ASSERT_TRUE(strcasestr(a.requests[3], "\r\nContent-Range: 0-99\r\n") != NULL);
        ASSERT_TRUE(strstr(a.requests[4], "PUT /v2/r/blobs/uploads/u1?_state=c&digest=") != NULL);
}

/* BLOB_UPLOAD_UNKNOWN: the old session is cancelled, a new one opened, the blob sent again from byte 0. */
static void test_upload_session_lost(void)
{
        Mock a;
        mock_start(&a, "127.0.0.1");
        snprintf(a.replies[0], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: /v2/r/blobs/uploads/u1?_state=a\r\n");
        snprintf(a.replies[1], 1024, UPLOAD_JSON_404);
        a.bodies[1] = UPLOAD_LOST_BODY;
        snprintf(a.replies[2], 1024, UPLOAD_JSON_404); /* the DELETE */
        a.bodies[2] = UPLOAD_LOST_BODY;
        snprintf(a.replies[3], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: /v2/r/blobs/uploads/u2?_state=x\r\n");
        snprintf(a.replies[4], 1024,
                 "HTTP/1.1 202 Accepted\r\nRange: 0-99\r\nLocation: /v2/r/blobs/uploads/u2?_state=y\r\n");
        snprintf(a.replies[5], 1024, "HTTP/1.1 201 Created\r\n");
        a.n_replies = 6;
        mock_go(&a);
        NbError e = {0};
        int r = scripted_upload(&a, &e);
        if (r < 0)
                fprintf(stderr, "session lost: %s\n", e.msg);
        ASSERT_OK(r);
        mock_stop(&a);
        ASSERT_EQ(a.n_requests, 6);
        ASSERT_TRUE(strstr(a.requests[2], "DELETE /v2/r/blobs/uploads/u1?_state=a ") != NULL);
        ASSERT_TRUE(strstr(a.requests[3], "POST /v2/r/blobs/uploads/ ") != NULL);
        ASSERT_TRUE(strstr(a.requests[4], "PATCH /v2/r/blobs/uploads/u2?_state=x ") != NULL);
        ASSERT_TRUE(strcasestr(a.requests[4], "\r\nContent-Range: 0-99\r\n") != NULL);
}

/* The issue #12 failure: a chunk answered 429 (Retry-After: 1) more than eight times in a row. Each time the
 * client waits, asks where the session stands and sends the chunk again; it goes through once the limit
 * lifts. */
static void test_upload_storm(void)
{
        enum { STORM = 10 };
        Mock a;
        mock_start(&a, "127.0.0.1");
        size_t n = 0;
        snprintf(a.replies[n++], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: /v2/r/blobs/uploads/u1?_state=a\r\n");
        for (size_t i = 0; i < STORM; i++) {
                snprintf(a.replies[n++], 1024, REPLY_429); /* the PATCH */
                snprintf(a.replies[n++], 1024,
                         "HTTP/1.1 204 No Content\r\nRange: 0-0\r\nLocation: "
                         "/v2/r/blobs/uploads/u1?_state=a\r\n");
        }
        snprintf(a.replies[n++], 1024,
                 "HTTP/1.1 202 Accepted\r\nRange: 0-99\r\nLocation: /v2/r/blobs/uploads/u1?_state=b\r\n");
        snprintf(a.replies[n++], 1024, "HTTP/1.1 201 Created\r\n");
        ASSERT_INT(n, <=, MOCK_MAX);
        a.n_replies = n;
        mock_go(&a);
        NbError e = {0};
        int r = scripted_upload(&a, &e);
        if (r < 0)
                fprintf(stderr, "upload storm: %s\n", e.msg);
        ASSERT_OK(r);
        mock_stop(&a);
        ASSERT_EQ(a.n_requests, n);
        ASSERT_TRUE(strstr(a.requests[n - 2], "PATCH /v2/r/blobs/uploads/u1?_state=a ") != NULL);
        ASSERT_TRUE(strstr(a.requests[n - 1], "PUT /v2/r/blobs/uploads/u1?_state=b&digest=") != NULL);
        gaps_spread(&a, 1, 1 + 2 * STORM, 2); /* PATCH to PATCH */
}

/* A Retry-After past the retry deadline: the upload gives up at once, saying why, and the commit's
 * DIGEST_INVALID is reported without sending anything again. */
static void test_upload_gives_up(void)
{
        Mock a;
        mock_start(&a, "127.0.0.1");
        snprintf(a.replies[0], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: /v2/r/blobs/uploads/u1?_state=a\r\n");
        snprintf(a.replies[1], 1024, "HTTP/1.1 503 Busy\r\nRetry-After: 3600\r\n");
        snprintf(a.replies[2], 1024, "HTTP/1.1 204 No Content\r\n"); /* the DELETE */
        a.n_replies = 3;
        mock_go(&a);
        NbError e = {0};
        ASSERT_OK(setenv("NBSNAP_REGISTRY_RETRY_DEADLINE", "5", 1));
        uint64_t t0 = nb_now_usec();
        ASSERT_EQ(scripted_upload(&a, &e), -EIO);
        ASSERT_INT(nb_now_usec() - t0, <, 3000000);
        ASSERT_TRUE(strstr(e.msg, "giving up after 1 attempts in 0 s (retry deadline 5 s)") != NULL);
        ASSERT_TRUE(strstr(e.msg, "HTTP 503") != NULL);
        mock_stop(&a);
        ASSERT_EQ(a.n_requests, 3);

        mock_start(&a, "127.0.0.1");
        snprintf(a.replies[0], 1024,
                 "HTTP/1.1 202 Accepted\r\nLocation: /v2/r/blobs/uploads/u1?_state=a\r\n");
        snprintf(a.replies[1], 1024,
                 "HTTP/1.1 202 Accepted\r\nRange: 0-99\r\nLocation: /v2/r/blobs/uploads/u1?_state=b\r\n");
        snprintf(a.replies[2], 1024, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n");
        a.bodies[2] = "{\"errors\":[{\"code\":\"DIGEST_INVALID\",\"message\":\"digest did not match\"}]}";
        snprintf(a.replies[3], 1024, "HTTP/1.1 404 Not Found\r\n");  /* HEAD: not committed */
        snprintf(a.replies[4], 1024, "HTTP/1.1 204 No Content\r\n"); /* the DELETE */
        a.n_replies = 5;
        mock_go(&a);
        ASSERT_EQ(scripted_upload(&a, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "not sent again") != NULL);
        ASSERT_TRUE(strstr(e.msg, "DIGEST_INVALID: digest did not match") != NULL);
        mock_stop(&a);
        ASSERT_EQ(a.n_requests, 5);
        ASSERT_TRUE(strstr(a.requests[3], "HEAD /v2/r/blobs/sha256:") != NULL);
        unsetenv("NBSNAP_REGISTRY_RETRY_DEADLINE");
}

int main(void)
{
        ASSERT_TRUE(mkdtemp(scratch) != NULL);
        test_references();
        test_challenges();
        test_auth_config();
        test_auth_load();
        test_tokens();
        test_urls();
        test_retry_after();
        test_backoff_jitter();
        test_ranges();
        test_retry_reasons();
        test_retry_deadline();
        test_error_bodies();
        test_digests();
        test_client_options();
        test_redirect_drops_auth();
        test_manifest_exists();
        test_blob_get_redirect();
        test_retries();
        test_retry_storm();
        test_retry_endless();
        test_upload_locations();
        test_foreign_401();
        test_upload_resync();
        test_upload_session_lost();
        test_upload_storm();
        test_upload_gives_up();
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", scratch);
        if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", scratch);
        printf("test-registry: all passed\n");
        return 0;
}
