/* reference.c: the docker reference grammar (distribution/reference, OCI distribution-spec names).
 *
 *   reference      := name [ ":" tag ] [ "@" digest ]
 *   name           := [domain "/"] path-component ["/" path-component]*
 *   domain         := host [":" port]    host := domain-name | "[" IPv6 "]"
 *   path-component := [a-z0-9]+ (separator [a-z0-9]+)*    separator := [_.] | "__" | "-"+
 *   tag            := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
 *   digest         := "sha256:" 64 lowercase hex | "sha512:" 128 lowercase hex
 */
#include <string.h>

#include "registry/registry-internal.h"

static bool lower_alnum(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool alnum(char c)
{
        return lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static bool hex_lower(char c)
{
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static bool component_valid(const char *s, size_t n)
{
        if (n == 0 || !lower_alnum(s[0]))
                return false;
        size_t i = 0;
        while (i < n) {
                if (lower_alnum(s[i])) {
                        i++;
                        continue;
                }
                size_t j = i + 1;
                if (s[i] == '_' && j < n && s[j] == '_')
                        j++;
                else if (s[i] == '-')
                        while (j < n && s[j] == '-')
                                j++;
                else if (s[i] != '.' && s[i] != '_')
                        return false;
                if (j >= n || !lower_alnum(s[j]))
                        return false;
                i = j;
        }
        return true;
}

static bool repository_valid_n(const char *repo, size_t n)
{
        if (n == 0 || n > REG_NAME_MAX)
                return false;
        size_t start = 0;
        for (size_t i = 0; i <= n; i++) {
                if (i < n && repo[i] != '/')
                        continue;
                if (!component_valid(repo + start, i - start))
                        return false;
                start = i + 1;
        }
        return true;
}

bool reg_repository_valid(const char *repo)
{
        return repo && repository_valid_n(repo, strnlen(repo, REG_NAME_MAX + 1));
}

bool reg_tag_valid(const char *tag)
{
        if (!tag || !(alnum(tag[0]) || tag[0] == '_'))
                return false;
        size_t i = 1;
        for (; tag[i]; i++) {
                if (i >= REG_TAG_MAX)
                        return false;
                if (!(alnum(tag[i]) || tag[i] == '_' || tag[i] == '.' || tag[i] == '-'))
                        return false;
        }
        return true;
}

bool reg_digest_valid(const char *digest)
{
        if (!digest)
                return false;
        size_t want;
        if (strncmp(digest, "sha256:", 7) == 0)
                want = 64;
        else if (strncmp(digest, "sha512:", 7) == 0)
                want = 128;
        else
                return false;
        const char *h = digest + 7;
        size_t i = 0;
        for (; h[i] && i <= want; i++)
                if (!hex_lower(h[i]))
                        return false;
        return i == want;
}

static bool port_valid(const char *s, size_t n)
{
        if (n == 0 || n > 5)
                return false;
        unsigned v = 0;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return false;
                v = v * 10 + (unsigned)(s[i] - '0');
        }
        return v > 0 && v <= 65535;
}

static bool domain_name_valid(const char *s, size_t n)
{
        size_t start = 0;
        for (size_t i = 0; i <= n; i++) {
                if (i < n && s[i] != '.') {
                        if (!alnum(s[i]) && s[i] != '-')
                                return false;
                        continue;
                }
                /* a label: alphanumeric at both ends */
                if (i == start || !alnum(s[start]) || !alnum(s[i - 1]))
                        return false;
                start = i + 1;
        }
        return true;
}

bool reg_host_valid(const char *host, size_t len)
{
        if (len == 0 || len > REG_NAME_MAX)
                return false;
        size_t hlen = len;
        if (host[0] == '[') {
                const char *close = memchr(host, ']', len);
                if (!close || close == host + 1)
                        return false;
                for (const char *p = host + 1; p < close; p++)
                        if (!hex_lower((char)(*p | 0x20)) && *p != ':' && *p != '.')
                                return false;
                hlen = (size_t)(close - host) + 1;
        } else {
                const char *colon = memchr(host, ':', len);
                if (colon)
                        hlen = (size_t)(colon - host);
                if (!domain_name_valid(host, hlen))
                        return false;
        }
        if (hlen == len)
                return true;
        return host[hlen] == ':' && port_valid(host + hlen + 1, len - hlen - 1);
}

/* The first component names a host when it has '.' or ':', is "localhost", or has uppercase letters (which
 * a path component cannot have): docker's splitDockerDomain. */
static bool first_is_host(const char *s, size_t n)
{
        if (n == 9 && strncmp(s, "localhost", 9) == 0)
                return true;
        for (size_t i = 0; i < n; i++)
                if (s[i] == '.' || s[i] == ':' || s[i] == '[' || (s[i] >= 'A' && s[i] <= 'Z'))
                        return true;
        return false;
}

RegRef *reg_ref_free(RegRef *r)
{
        if (!r)
                return NULL;
        free(r->host);
        free(r->repository);
        free(r->tag);
        free(r->digest);
        free(r);
        return NULL;
}

static void reg_ref_freep(RegRef **r)
{
        reg_ref_free(*r);
}

static int ref_set_host(RegRef *ref, const char *name, size_t *name_len, const char *s, NbError *e)
{
        const char *slash = memchr(name, '/', *name_len);
        if (!slash || !first_is_host(name, (size_t)(slash - name)))
                return 0;
        size_t hlen = (size_t)(slash - name);
        if (!reg_host_valid(name, hlen))
                return nb_error_set(e, -EINVAL, "invalid registry host in image reference \"%s\"", s);
        ref->host = strndup(name, hlen);
        if (!ref->host)
                return -ENOMEM;
        return (int)hlen + 1;
}

static int ref_split_tag(RegRef *ref, const char *name, size_t *name_len, const char *s, NbError *e)
{
        const char *colon = memrchr(name, ':', *name_len);
        const char *slash = memrchr(name, '/', *name_len);
        if (!colon || (slash && colon < slash))
                return 0;
        ref->tag = strndup(colon + 1, *name_len - (size_t)(colon - name) - 1);
        if (!ref->tag)
                return -ENOMEM;
        if (!reg_tag_valid(ref->tag))
                return nb_error_set(e, -EINVAL, "invalid tag in image reference \"%s\"", s);
        *name_len = (size_t)(colon - name);
        return 0;
}

int reg_ref_parse(const char *s, RegRef **ret, NbError *e)
{
        if (!s || !*s)
                return nb_error_set(e, -EINVAL, "empty image reference");
        size_t len = strnlen(s, REG_REFERENCE_MAX + 1);
        if (len > REG_REFERENCE_MAX)
                return nb_error_set(e, -ENAMETOOLONG, "image reference is longer than %d bytes",
                                    REG_REFERENCE_MAX);
        _cleanup_(reg_ref_freep) RegRef *ref = calloc(1, sizeof(*ref));
        if (!ref)
                return -ENOMEM;
        size_t name_len = len;
        const char *at = memchr(s, '@', len);
        if (at) {
                ref->digest = strdup(at + 1);
                if (!ref->digest)
                        return -ENOMEM;
                if (!reg_digest_valid(ref->digest))
                        return nb_error_set(e, -EINVAL, "invalid digest in image reference \"%s\"", s);
                name_len = (size_t)(at - s);
        }
        int r = ref_split_tag(ref, s, &name_len, s, e);
        if (r < 0)
                return r;
        r = ref_set_host(ref, s, &name_len, s, e);
        if (r < 0)
                return r;
        const char *repo = s + r;
        size_t repo_len = name_len - (size_t)r;
        if (name_len > REG_NAME_MAX || !repository_valid_n(repo, repo_len))
                return nb_error_set(e, -EINVAL,
                                    "invalid repository name in image reference \"%s\" (lowercase letters, "
                                    "digits and single separators only)",
                                    s);
        ref->repository = strndup(repo, repo_len);
        if (!ref->repository)
                return -ENOMEM;
        *ret = TAKE_PTR(ref);
        return 0;
}
