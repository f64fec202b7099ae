/* retry.c: when to try again: Retry-After, backoff with jitter (a per-client generator seeded by
 * getrandom()), environment overrides of the retry settings, the Range header of an upload session, and the
 * process-wide count of retries by reason. */
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "registry/registry-internal.h"

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

uint64_t reg_rand_seed(void)
{
        uint64_t seed = 0;
        /* getrandom() of 8 bytes does not block once the pool is up, and is not cut short by a signal. */
        if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
                seed = nb_now_usec() ^ ((uint64_t)getpid() << 32);
        return seed ? seed : 0x9E3779B97F4A7C15ull; /* xorshift must not start at 0 */
}

/* xorshift64*: a fast generator for spreading waits, not for secrets. */
static uint64_t rand_next(uint64_t *state)
{
        uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        return x * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, n]. The modulo bias is below 2^-40 for the n used here. */
static uint64_t rand_upto(uint64_t *state, uint64_t n)
{
        return (rand_next(state) >> 11) % (n + 1);
}

unsigned reg_backoff_ms(unsigned attempt, uint64_t *state)
{
        uint64_t ms = REG_BACKOFF_BASE_MS;
        for (unsigned i = 0; i < attempt && ms < REG_BACKOFF_CAP_MS; i++)
                ms *= 2;
        if (ms > REG_BACKOFF_CAP_MS)
                ms = REG_BACKOFF_CAP_MS;
        /* Full jitter ("Exponential Backoff And Jitter", AWS architecture blog): anywhere in [0, ms], so
         * clients that failed together do not come back together; on average half the ceiling. */
        return (unsigned)rand_upto(state, ms);
}

unsigned reg_retry_after_jitter_ms(unsigned ms, uint64_t *state)
{
        /* Never earlier than the server asked: a fleet told "1 s" comes back over [1 s, 1.5 s]. */
        return ms + (unsigned)rand_upto(state, (uint64_t)ms * REG_RETRY_AFTER_JITTER / 100);
}

/* ---- retry counters ------------------------------------------------------------------------------------
 */

static _Atomic uint64_t retry_counts[_REG_RETRY_REASON_MAX];

static const char *const retry_reasons[_REG_RETRY_REASON_MAX] = {
        [REG_RETRY_HTTP_429] = "http_429", [REG_RETRY_HTTP_5XX] = "http_5xx",
        [REG_RETRY_TIMEOUT] = "timeout",   [REG_RETRY_CONNECT] = "connect",
        [REG_RETRY_OTHER] = "other",
};

const char *reg_retry_reason_to_string(RegRetryReason reason)
{
        return reason < _REG_RETRY_REASON_MAX ? retry_reasons[reason] : "unknown";
}

void reg_retry_count(RegRetryReason reason)
{
        atomic_fetch_add(&retry_counts[reason < _REG_RETRY_REASON_MAX ? reason : REG_RETRY_OTHER], 1);
}

void reg_retry_counts(uint64_t ret[static _REG_RETRY_REASON_MAX])
{
        for (size_t i = 0; i < _REG_RETRY_REASON_MAX; i++)
                ret[i] = atomic_load(&retry_counts[i]);
}

RegRetryReason reg_retry_reason_status(long status)
{
        if (status == 429)
                return REG_RETRY_HTTP_429;
        if (status == 408)
                return REG_RETRY_TIMEOUT;
        return status >= 500 && status <= 599 ? REG_RETRY_HTTP_5XX : REG_RETRY_OTHER;
}

RegRetryReason reg_retry_reason_errno(int r)
{
        switch (r) {
        case -ETIMEDOUT:
                return REG_RETRY_TIMEOUT;
        case -ECONNREFUSED:
        case -EHOSTUNREACH:
        case -EPROTO: /* the TLS handshake */
                return REG_RETRY_CONNECT;
        default:
                return REG_RETRY_OTHER;
        }
}
