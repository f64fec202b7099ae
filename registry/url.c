/* url.c: URLs the registry client builds and is given: Location resolution (RFC 3986), queries, the
 * redacted form for messages, same-origin checks; and strdup with an errno. */
#include <ctype.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "registry/registry-internal.h"

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

bool reg_url_path_plain(const char *url)
{
        const char *p = url ? strstr(url, "://") : NULL;
        if (!p)
                return false;
        p = strchr(p + 3, '/');
        if (!p)
                return true;
        size_t n = strcspn(p, "?#");
        for (size_t i = 0; i < n; i++) {
                if (p[i] == '\\')
                        return false;
                /* %2e ('.'), %2f ('/'), %5c ('\\'): what a server may decode into a segment */
                if (p[i] == '%' && i + 3 <= n &&
                    (strncasecmp(p + i, "%2e", 3) == 0 || strncasecmp(p + i, "%2f", 3) == 0 ||
                     strncasecmp(p + i, "%5c", 3) == 0))
                        return false;
                if (p[i] != '/')
                        continue;
                size_t len = strcspn(p + i + 1, "/?#");
                if ((len == 1 && p[i + 1] == '.') || (len == 2 && p[i + 1] == '.' && p[i + 2] == '.'))
                        return false;
        }
        return true;
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
