/* auth.c: credentials and challenges. Reads docker config.json / containers auth.json, parses
 * WWW-Authenticate challenges (RFC 7235) and the token endpoint's answer. The token round trip itself is in
 * client.c, next to the request it serves. */
#include <ctype.h>
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>

#include "registry/registry-internal.h"

/* ---- WWW-Authenticate --------------------------------------------------------------------------------- */

void reg_challenge_done(RegChallenge *c)
{
        if (!c)
                return;
        free(c->realm);
        free(c->service);
        free(c->scope);
        free(c->error);
        *c = (RegChallenge){0};
}

static bool tchar(char c)
{
        return c && (isalnum((unsigned char)c) || strchr("!#$%&'*+-.^_`|~", c));
}

static void skip_ws(const char **p)
{
        while (**p == ' ' || **p == '\t')
                (*p)++;
}

/* A quoted-string (with \-escapes) or a token, at *p; *p moves past it. */
static int read_value(const char **p, char **ret)
{
        const char *s = *p;
        size_t cap = strnlen(s, REG_HEADER_MAX) + 1, n = 0;
        _cleanup_free_ char *v = malloc(cap);
        if (!v)
                return -ENOMEM;
        if (*s == '"') {
                s++;
                while (*s && *s != '"' && n + 1 < cap) {
                        if (*s == '\\' && s[1])
                                s++;
                        v[n++] = *s++;
                }
                if (*s == '"')
                        s++;
        } else {
                while (*s && *s != ',' && *s != ' ' && *s != '\t' && n + 1 < cap)
                        v[n++] = *s++;
        }
        v[n] = 0;
        *p = s;
        *ret = TAKE_PTR(v);
        return 0;
}

static void challenge_param(RegChallenge *c, const char *name, size_t len, char **value)
{
        char **slot = NULL;
        if (len == 5 && strncasecmp(name, "realm", 5) == 0)
                slot = &c->realm;
        else if (len == 7 && strncasecmp(name, "service", 7) == 0)
                slot = &c->service;
        else if (len == 5 && strncasecmp(name, "scope", 5) == 0)
                slot = &c->scope;
        else if (len == 5 && strncasecmp(name, "error", 5) == 0)
                slot = &c->error;
        if (!slot || c->scheme == REG_AUTH_NONE)
                return;
        free(*slot);
        *slot = TAKE_PTR(*value);
}

/* Keeps the better of two challenges in best: Bearer (with a realm) over Basic. */
static void challenge_finish(RegChallenge *cur, RegChallenge *best)
{
        bool usable = cur->scheme == REG_AUTH_BASIC ||
                      (cur->scheme == REG_AUTH_BEARER && cur->realm && *cur->realm);
        if (usable && cur->scheme > best->scheme) {
                reg_challenge_done(best);
                *best = *cur;
                *cur = (RegChallenge){0};
        }
        reg_challenge_done(cur);
}

static RegAuthScheme scheme_of(const char *s, size_t n)
{
        if (n == 5 && strncasecmp(s, "basic", 5) == 0)
                return REG_AUTH_BASIC;
        if (n == 6 && strncasecmp(s, "bearer", 6) == 0)
                return REG_AUTH_BEARER;
        return REG_AUTH_NONE;
}

int reg_challenge_parse(const char *header, RegChallenge *ret)
{
        RegChallenge cur = {0}, best = {0};
        const char *p = header ? header : "";
        for (size_t guard = 0; *p && guard < REG_HEADER_MAX; guard++) {
                while (*p == ' ' || *p == '\t' || *p == ',')
                        p++;
                const char *tok = p;
                while (tchar(*p))
                        p++;
                size_t n = (size_t)(p - tok);
                if (n == 0) {
                        if (*p)
                                p++; /* not a token: skip the byte */
                        continue;
                }
                const char *q = p;
                skip_ws(&q);
                if (*q != '=') {
                        challenge_finish(&cur, &best);
                        cur.scheme = scheme_of(tok, n);
                        continue;
                }
                q++;
                skip_ws(&q);
                _cleanup_free_ char *value = NULL;
                int r = read_value(&q, &value);
                if (r < 0) {
                        reg_challenge_done(&cur);
                        reg_challenge_done(&best);
                        return r;
                }
                p = q;
                challenge_param(&cur, tok, n, &value);
        }
        challenge_finish(&cur, &best);
        if (best.scheme == REG_AUTH_NONE)
                return -EINVAL;
        *ret = best;
        return 0;
}

/* ---- credentials -------------------------------------------------------------------------------------- */

void reg_credentials_done(RegCredentials *c)
{
        if (!c)
                return;
        reg_secret_freep(&c->username);
        reg_secret_freep(&c->password);
        reg_secret_freep(&c->identity_token);
        *c = (RegCredentials){0};
}

static void credentials_donep(RegCredentials *c)
{
        reg_credentials_done(c);
}

/* Decodes standard base64 (padding optional) into a NUL-terminated string. */
static int base64_decode(const char *in, char **ret, size_t *ret_len)
{
        size_t n = strnlen(in, 2 * REG_CREDENTIAL_MAX + 1);
        if (n > 2 * REG_CREDENTIAL_MAX)
                return -E2BIG;
        _cleanup_secret_ char *padded = calloc(n + 4, 1);
        _cleanup_free_ char *out = calloc(n + 4, 1);
        if (!padded || !out)
                return -ENOMEM;
        memcpy(padded, in, n);
        while (n % 4)
                padded[n++] = '=';
        int len = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)padded, (int)n);
        if (len < 0)
                return -EINVAL;
        /* EVP_DecodeBlock counts the bytes the padding stands for. */
        for (size_t i = n; i > 0 && padded[i - 1] == '=' && len > 0; i--)
                len--;
        out[len] = 0;
        *ret_len = (size_t)len;
        *ret = TAKE_PTR(out);
        return 0;
}

static int entry_auth_field(const char *auth, RegCredentials *c)
{
        _cleanup_secret_ char *dec = NULL;
        size_t len;
        int r = base64_decode(auth, &dec, &len);
        if (r < 0)
                return r;
        if (strlen(dec) != len)
                return -EINVAL; /* embedded NUL */
        char *colon = strchr(dec, ':');
        if (!colon)
                return -EINVAL;
        *colon = 0;
        c->username = strdup(dec);
        c->password = strdup(colon + 1);
        if (!c->username || !c->password)
                return -ENOMEM;
        return 0;
}

static int entry_string(const cJSON *entry, const char *name, char **ret)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(entry, name);
        if (!v || cJSON_IsNull(v))
                return 0;
        if (!cJSON_IsString(v) || strlen(v->valuestring) > REG_CREDENTIAL_MAX)
                return -EINVAL;
        if (!*v->valuestring)
                return 0;
        return reg_strdup(v->valuestring, ret);
}

/* One "auths" entry. 1 when it holds credentials, 0 when empty (credential helpers), -EINVAL when bad. */
static int entry_parse(const cJSON *entry, RegCredentials *ret)
{
        if (!cJSON_IsObject(entry))
                return -EINVAL;
        _cleanup_(credentials_donep) RegCredentials c = {0};
        _cleanup_free_ char *auth = NULL;
        int r = entry_string(entry, "auth", &auth);
        if (r >= 0 && auth)
                r = entry_auth_field(auth, &c);
        if (r >= 0 && !c.username)
                r = entry_string(entry, "username", &c.username);
        if (r >= 0 && !c.password)
                r = entry_string(entry, "password", &c.password);
        if (r >= 0)
                r = entry_string(entry, "identitytoken", &c.identity_token);
        if (auth)
                OPENSSL_cleanse(auth, strlen(auth));
        if (r < 0)
                return r;
        if (!c.identity_token && !(c.username && c.password))
                return 0;
        *ret = c;
        c = (RegCredentials){0};
        return 1;
}

static bool is_docker_hub(const char *h, size_t n)
{
        static const char *const names[] = {"docker.io", "index.docker.io", "registry-1.docker.io"};
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strlen(names[i]) == n && strncasecmp(h, names[i], n) == 0)
                        return true;
        return false;
}

/* docker's convertToHostname: "https://host:port/v1/" -> "host:port". */
static bool key_matches(const char *key, const char *host)
{
        if (strncasecmp(key, "https://", 8) == 0)
                key += 8;
        else if (strncasecmp(key, "http://", 7) == 0)
                key += 7;
        size_t n = strcspn(key, "/");
        size_t hn = strlen(host);
        if (n == hn && strncasecmp(key, host, n) == 0)
                return true;
        return is_docker_hub(key, n) && is_docker_hub(host, hn);
}

int reg_auth_config_parse(const char *json, size_t size, const char *host, RegCredentials *ret, NbError *e)
{
        _cleanup_cjson_ cJSON *j = cJSON_ParseWithLength(json, size);
        if (!cJSON_IsObject(j))
                return nb_error_set(e, -EINVAL, "not a JSON object");
        const cJSON *auths = cJSON_GetObjectItemCaseSensitive(j, "auths");
        if (!auths || cJSON_IsNull(auths))
                return 0;
        if (!cJSON_IsObject(auths))
                return nb_error_set(e, -EINVAL, "\"auths\" is not an object");
        /* An exact key wins over a normalised one ("https://host/v1/"). */
        const cJSON *entry = cJSON_GetObjectItemCaseSensitive(auths, host), *it;
        cJSON_ArrayForEach(it, auths)
        {
                if (entry)
                        break;
                if (it->string && key_matches(it->string, host))
                        entry = it;
        }
        if (!entry)
                return 0;
        int r = entry_parse(entry, ret);
        if (r < 0)
                return nb_error_set(
                        e, r, "the entry for %s is malformed (\"auth\" must be base64 of user:password)",
                        host);
        return r;
}

static int auth_try_file(const char *path, const char *host, bool must_exist, RegCredentials *ret,
                         NbError *e)
{
        _cleanup_secret_ char *buf = NULL;
        size_t size;
        int r = nb_read_file_at(AT_FDCWD, path, REG_AUTHFILE_MAX, NB_READ_REGULAR, &buf, &size);
        if (r == -ENOENT && !must_exist)
                return 0;
        if (r < 0)
                return nb_error_set(e, r, "cannot read auth file %s: %s", path, strerror(-r));
        NbError sub = {0};
        r = reg_auth_config_parse(buf, size, host, ret, &sub);
        if (r < 0)
                return nb_error_set(e, r, "auth file %s: %s", path, sub.msg);
        return r;
}

int reg_auth_load(const char *authfile, const char *host, RegCredentials *ret, char **ret_path, NbError *e)
{
        char paths[3][REG_PATH_MAX];
        size_t n = 0;
        if (authfile) {
                int r = auth_try_file(authfile, host, true, ret, e);
                if (r > 0 && ret_path && reg_strdup(authfile, ret_path) < 0)
                        r = -ENOMEM;
                return r;
        }
        const char *env = getenv("REGISTRY_AUTH_FILE"), *dc = getenv("DOCKER_CONFIG"),
                   *home = getenv("HOME");
        if (env && *env)
                snprintf(paths[n++], REG_PATH_MAX, "%s", env);
        if (dc && *dc)
                snprintf(paths[n++], REG_PATH_MAX, "%s/config.json", dc);
        else if (home && *home)
                snprintf(paths[n++], REG_PATH_MAX, "%s/.docker/config.json", home);
        for (size_t i = 0; i < n; i++) {
                int r = auth_try_file(paths[i], host, false, ret, e);
                if (r < 0)
                        return r;
                if (r > 0) {
                        if (ret_path && reg_strdup(paths[i], ret_path) < 0) {
                                reg_credentials_done(ret);
                                return -ENOMEM;
                        }
                        return 1;
                }
        }
        return 0;
}

/* ---- tokens ------------------------------------------------------------------------------------------- */

int reg_token_parse(const char *body, size_t size, char **ret_token, long *ret_expires_in, NbError *e)
{
        _cleanup_cjson_ cJSON *j = cJSON_ParseWithLength(body, size);
        if (!cJSON_IsObject(j))
                return nb_error_set(e, -EBADMSG, "the token endpoint did not answer with a JSON object");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "token");
        if (!cJSON_IsString(t) || !*t->valuestring)
                t = cJSON_GetObjectItemCaseSensitive(j, "access_token");
        if (!cJSON_IsString(t) || !*t->valuestring)
                return nb_error_set(e, -EBADMSG, "the token endpoint's answer has no token");
        if (strlen(t->valuestring) > REG_TOKEN_MAX)
                return nb_error_set(e, -EBADMSG, "the token endpoint's token is too long");
        long expires = REG_TOKEN_EXPIRY_MIN_S;
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "expires_in");
        if (cJSON_IsNumber(x) && x->valuedouble > REG_TOKEN_EXPIRY_MIN_S && x->valuedouble < 365.0 * 86400)
                expires = (long)x->valuedouble;
        char *tok = strdup(t->valuestring);
        if (!tok)
                return -ENOMEM;
        OPENSSL_cleanse(t->valuestring, strlen(t->valuestring));
        *ret_token = tok;
        *ret_expires_in = expires;
        return 0;
}

int reg_basic_header(const char *username, const char *password, char **ret)
{
        size_t ul = strlen(username), pl = strlen(password);
        if (ul > REG_CREDENTIAL_MAX || pl > REG_CREDENTIAL_MAX)
                return -E2BIG;
        _cleanup_secret_ char *plain = calloc(ul + pl + 2, 1);
        size_t enc_len = 4 * ((ul + pl + 1 + 2) / 3);
        _cleanup_secret_ char *hdr = calloc(sizeof("Basic ") + enc_len + 1, 1);
        if (!plain || !hdr)
                return -ENOMEM;
        memcpy(plain, username, ul);
        plain[ul] = ':';
        memcpy(plain + ul + 1, password, pl + 1);
        memcpy(hdr, "Basic ", 6);
        EVP_EncodeBlock((unsigned char *)hdr + 6, (const unsigned char *)plain, (int)(ul + pl + 1));
        *ret = TAKE_PTR(hdr);
        return 0;
}
