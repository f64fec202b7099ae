/* util.c: files, digests, URLs, Retry-After, backoff and error bodies for the registry modules. */
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "registry-internal.h"

int reg_strdup(const char *s, char **ret)
{
        if (!s) {
                *ret = NULL;
                return 0;
        }
        char *d = strdup(s);
        if (!d)
                return -ENOMEM;
        *ret = d;
        return 0;
}

int reg_read_file(const char *path, size_t max, char **ret, size_t *ret_size)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        if ((uint64_t)st.st_size > max)
                return -EFBIG;
        size_t cap = (size_t)st.st_size, len = 0;
        _cleanup_free_ char *buf = malloc(cap + 1);
        if (!buf)
                return -ENOMEM;
        while (len < cap) {
                ssize_t n = read(fd, buf + len, cap - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        buf[len] = 0;
        if (ret_size)
                *ret_size = len;
        *ret = TAKE_PTR(buf);
        return 0;
}

uint64_t reg_now_usec(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- digests ------------------------------------------------------------------------------------------ */

static const EVP_MD *digest_md(const char *digest, size_t *ret_prefix)
{
        if (strncmp(digest, "sha256:", 7) == 0) {
                *ret_prefix = 7;
                return EVP_sha256();
        }
        if (strncmp(digest, "sha512:", 7) == 0) {
                *ret_prefix = 7;
                return EVP_sha512();
        }
        return NULL;
}

int reg_digest_ctx_new(const char *digest, EVP_MD_CTX **ret)
{
        size_t prefix;
        const EVP_MD *md = digest_md(digest, &prefix);
        if (!md)
                return -EOPNOTSUPP;
        _cleanup_md_ctx_ EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (!ctx)
                return -ENOMEM;
        if (EVP_DigestInit_ex(ctx, md, NULL) != 1)
                return -EIO;
        *ret = TAKE_PTR(ctx);
        return 0;
}

int reg_digest_ctx_final(EVP_MD_CTX *ctx, const char *algorithm, char ret[REG_DIGEST_STR_MAX])
{
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        if (EVP_DigestFinal_ex(ctx, md, &n) != 1)
                return -EIO;
        size_t len = strlen(algorithm);
        if (len + 1 + 2 * n + 1 > REG_DIGEST_STR_MAX)
                return -EINVAL;
        memcpy(ret, algorithm, len);
        ret[len++] = ':';
        static const char hex[] = "0123456789abcdef";
        for (unsigned i = 0; i < n; i++) {
                ret[len++] = hex[md[i] >> 4];
                ret[len++] = hex[md[i] & 15];
        }
        ret[len] = 0;
        return 0;
}

int reg_digest_sha256(const void *data, size_t size, char ret[REG_DIGEST_STR_MAX])
{
        _cleanup_md_ctx_ EVP_MD_CTX *ctx = NULL;
        int r = reg_digest_ctx_new("sha256:", &ctx);
        if (r < 0)
                return r;
        if (EVP_DigestUpdate(ctx, data, size) != 1)
                return -EIO;
        return reg_digest_ctx_final(ctx, "sha256", ret);
}

int reg_digest_check(const char *digest, const void *data, size_t size)
{
        _cleanup_md_ctx_ EVP_MD_CTX *ctx = NULL;
        int r = reg_digest_ctx_new(digest, &ctx);
        if (r < 0)
                return r;
        if (EVP_DigestUpdate(ctx, data, size) != 1)
                return -EIO;
        char got[REG_DIGEST_STR_MAX];
        r = reg_digest_ctx_final(ctx, strncmp(digest, "sha512:", 7) == 0 ? "sha512" : "sha256", got);
        if (r < 0)
                return r;
        return strcmp(got, digest) == 0 ? 0 : -EBADMSG;
}

/* ---- URLs --------------------------------------------------------------------------------------------- */

int reg_url_resolve(const char *base, const char *location, char **ret)
{
        if (!location || !*location || strlen(location) > REG_URL_MAX || strlen(base) > REG_URL_MAX)
                return -EINVAL;
        _cleanup_curlu_ CURLU *u = curl_url();
        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK)
                return -EINVAL;
        /* A relative URL set on a handle holding one is resolved against it (RFC 3986 section 5). */
        if (curl_url_set(u, CURLUPART_URL, location, 0) != CURLUE_OK)
                return -EINVAL;
        _cleanup_curl_free_ char *s = NULL;
        if (curl_url_get(u, CURLUPART_URL, &s, 0) != CURLUE_OK)
                return -EINVAL;
        char *scheme = NULL;
        if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
                return -EINVAL;
        bool web = strcmp(scheme, "https") == 0 || strcmp(scheme, "http") == 0;
        curl_free(scheme);
        if (!web)
                return -EPROTONOSUPPORT;
        return reg_strdup(s, ret);
}

int reg_url_add_query(const char *url, const char *key, const char *value, char **ret)
{
        _cleanup_curlu_ CURLU *u = curl_url();
        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
                return -EINVAL;
        char kv[REG_URL_MAX];
        int n = snprintf(kv, sizeof(kv), "%s=%s", key, value);
        if (n < 0 || (size_t)n >= sizeof(kv))
                return -ENAMETOOLONG;
        /* With APPENDQUERY, URLENCODE encodes the value, not the first '='. */
        if (curl_url_set(u, CURLUPART_QUERY, kv, CURLU_APPENDQUERY | CURLU_URLENCODE) != CURLUE_OK)
                return -EINVAL;
        _cleanup_curl_free_ char *s = NULL;
        if (curl_url_get(u, CURLUPART_URL, &s, 0) != CURLUE_OK)
                return -EINVAL;
        return reg_strdup(s, ret);
}

const char *reg_url_redact(const char *url, char *buf, size_t size)
{
        if (size == 0)
                return "";
        size_t n = strcspn(url ? url : "", "?#");
        if (n >= size)
                n = size - 1;
        if (n)
                memcpy(buf, url, n);
        buf[n] = 0;
        return buf;
}

static int url_origin(const char *url, char **scheme, char **host, char **port)
{
        _cleanup_curlu_ CURLU *u = curl_url();
        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
                return -EINVAL;
        if (curl_url_get(u, CURLUPART_SCHEME, scheme, 0) != CURLUE_OK)
                return -EINVAL;
        if (curl_url_get(u, CURLUPART_HOST, host, 0) != CURLUE_OK)
                return -EINVAL;
        if (curl_url_get(u, CURLUPART_PORT, port, CURLU_DEFAULT_PORT) != CURLUE_OK)
                return -EINVAL;
        return 0;
}

bool reg_url_same_origin(const char *a, const char *b)
{
        _cleanup_curl_free_ char *sa = NULL, *ha = NULL, *pa = NULL, *sb = NULL, *hb = NULL, *pb = NULL;
        if (url_origin(a, &sa, &ha, &pa) < 0 || url_origin(b, &sb, &hb, &pb) < 0)
                return false;
        return strcasecmp(sa, sb) == 0 && strcasecmp(ha, hb) == 0 && strcmp(pa, pb) == 0;
}

/* ---- retries ------------------------------------------------------------------------------------------ */

long reg_env_long(const char *name, long def)
{
        const char *v = getenv(name);
        if (!v || !*v)
                return def;
        char *end;
        errno = 0;
        long n = strtol(v, &end, 10);
        if (errno || *end || n <= 0 || n > REG_ENV_LONG_MAX)
                return def;
        return n;
}

int reg_range_parse(const char *value, uint64_t *ret_size)
{
        if (!value)
                return -EBADMSG;
        const char *p = value;
        while (*p == ' ' || *p == '\t')
                p++;
        if (strncasecmp(p, "bytes=", 6) == 0)
                p += 6;
        if (p[0] != '0' || p[1] != '-')
                return -EBADMSG;
        p += 2;
        if (strcmp(p, "-1") == 0) { /* "0--1": an empty session, as some registries write it */
                *ret_size = 0;
                return 0;
        }
        if (!isdigit((unsigned char)*p))
                return -EBADMSG;
        char *end;
        errno = 0;
        unsigned long long last = strtoull(p, &end, 10);
        while (*end == ' ' || *end == '\t')
                end++;
        if (errno || *end || last >= UINT64_MAX / 2)
                return -EBADMSG;
        *ret_size = (uint64_t)last + 1;
        return 0;
}

int reg_retry_after_parse(const char *value, time_t now, unsigned *ret_ms)
{
        if (!value)
                return -EINVAL;
        while (*value == ' ' || *value == '\t')
                value++;
        uint64_t ms;
        if (isdigit((unsigned char)*value)) {
                char *end;
                errno = 0;
                unsigned long long s = strtoull(value, &end, 10);
                while (*end == ' ' || *end == '\t')
                        end++;
                if (*end)
                        return -EINVAL;
                ms = (errno == ERANGE || s > REG_RETRY_AFTER_CAP_MS / 1000) ? REG_RETRY_AFTER_CAP_MS
                                                                            : s * 1000;
        } else {
                time_t t = curl_getdate(value, NULL);
                if (t == (time_t)-1)
                        return -EINVAL;
                ms = t <= now ? 0 : (uint64_t)(t - now) * 1000;
        }
        *ret_ms = (unsigned)(ms > REG_RETRY_AFTER_CAP_MS ? REG_RETRY_AFTER_CAP_MS : ms);
        return 0;
}

unsigned reg_backoff_ms(unsigned attempt, uint64_t *state)
{
        uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        uint64_t ms = REG_BACKOFF_BASE_MS;
        for (unsigned i = 0; i < attempt && ms < REG_BACKOFF_CAP_MS; i++)
                ms *= 2;
        if (ms > REG_BACKOFF_CAP_MS)
                ms = REG_BACKOFF_CAP_MS;
        /* Full jitter over the upper half: spreads clients without making a retry instant. */
        return (unsigned)(ms / 2 + (x * 0x2545F4914F6CDD1Dull) % (ms / 2 + 1));
}

/* ---- error bodies ------------------------------------------------------------------------------------- */

/* Appends s (at most n bytes) to msg: control characters become spaces, a cut never splits a UTF-8
 * sequence, and a cut is marked with "...". */
static void msg_append(char *msg, size_t size, const char *s, size_t n)
{
        size_t len = strnlen(msg, size);
        if (size < 4 || len >= size - 1)
                return;
        size_t room = size - 1 - len, take = n;
        bool cut = n > room;
        if (cut) {
                take = room > 3 ? room - 3 : 0;
                while (take > 0 && ((unsigned char)s[take] & 0xC0) == 0x80)
                        take--;
        }
        for (size_t i = 0; i < take; i++) {
                unsigned char ch = (unsigned char)s[i];
                msg[len + i] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
        }
        msg[len + take] = 0;
        if (cut && size - 1 - (len + take) >= 3)
                memcpy(msg + len + take, "...", 4);
}

static void msg_append_str(char *msg, size_t size, const char *s)
{
        msg_append(msg, size, s, strlen(s));
}

static void error_append_one(const cJSON *err, char *msg, size_t size)
{
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(err, "code");
        const cJSON *message = cJSON_GetObjectItemCaseSensitive(err, "message");
        const cJSON *detail = cJSON_GetObjectItemCaseSensitive(err, "detail");
        if (cJSON_IsString(code)) {
                msg_append_str(msg, size, code->valuestring);
                msg_append_str(msg, size, ": ");
        }
        if (cJSON_IsString(message))
                msg_append_str(msg, size, message->valuestring);
        if (detail && !cJSON_IsNull(detail)) {
                _cleanup_free_ char *d = cJSON_IsString(detail) ? NULL : cJSON_PrintUnformatted(detail);
                const char *ds = cJSON_IsString(detail) ? detail->valuestring : d;
                if (ds && *ds) {
                        msg_append_str(msg, size, " (");
                        msg_append(msg, size, ds, strnlen(ds, 200));
                        msg_append_str(msg, size, ")");
                }
        }
}

/* {"errors":[...]} from distribution, or {"error":..,"error_description":..} from token servers, or
 * {"message":..}. Returns false when the JSON has none of these. */
static bool error_json(const cJSON *j, char *code, size_t code_size, char *msg, size_t size)
{
        const cJSON *errors = cJSON_GetObjectItemCaseSensitive(j, "errors");
        if (cJSON_IsArray(errors) && cJSON_GetArraySize(errors) > 0) {
                int i = 0;
                const cJSON *err;
                cJSON_ArrayForEach(err, errors)
                {
                        if (i == 0 && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "code")))
                                snprintf(code, code_size, "%s",
                                         cJSON_GetObjectItemCaseSensitive(err, "code")->valuestring);
                        if (i++ > 0)
                                msg_append_str(msg, size, "; ");
                        error_append_one(err, msg, size);
                        if (i >= 4)
                                break;
                }
                return true;
        }
        const char *keys[] = {"error", "error_description", "message", "details"};
        bool any = false;
        for (size_t k = 0; k < ELEMENTSOF(keys); k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
                if (!cJSON_IsString(v))
                        continue;
                if (any)
                        msg_append_str(msg, size, ": ");
                msg_append_str(msg, size, v->valuestring);
                any = true;
        }
        return any;
}

void reg_error_body_parse(const char *body, size_t size, const char *content_type, char *code,
                          size_t code_size, char *msg, size_t msg_size)
{
        char scratch[REG_MESSAGE_MAX + 1];
        if (code_size)
                code[0] = 0;
        if (!msg || !msg_size) {
                /* only the code is wanted */
                msg = scratch;
                msg_size = sizeof(scratch);
        }
        msg[0] = 0;
        if (msg_size > REG_MESSAGE_MAX + 1)
                msg_size = REG_MESSAGE_MAX + 1;
        if (!body)
                size = 0;
        size_t skip = 0;
        while (skip < size && isspace((unsigned char)body[skip]))
                skip++;
        if (skip == size)
                return;
        if (body[skip] == '<' || (content_type && strcasestr(content_type, "html"))) {
                msg_append_str(msg, msg_size, "(an HTML page instead of an API answer)");
                return;
        }
        if (body[skip] == '{') {
                _cleanup_cjson_ cJSON *j = cJSON_ParseWithLength(body, size);
                if (j && error_json(j, code, code_size, msg, msg_size))
                        return;
                msg[0] = 0;
        }
        /* Plain text: its first line. */
        size_t n = 0;
        while (skip + n < size && body[skip + n] != '\n' && body[skip + n] != '\r' && body[skip + n])
                n++;
        msg_append(msg, msg_size, body + skip, n);
}
