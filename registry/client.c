/* client.c: RegClient: the registry's URL, the curl handle, TLS trust (CA file, certs.d/<host>/ *.crt,
 * client *.cert + *.key pairs as containers/image reads them) and the credentials found for the host. */
#include <dirent.h>
#include <pthread.h>
#include <string.h>

#include "registry/registry-internal.h"

#define REG_CERTS_DIR_DEFAULT  "/etc/containers/certs.d"
#define REG_SYSTEM_CA_FALLBACK "/etc/ssl/certs/ca-certificates.crt"
#define REG_CONNECT_TIMEOUT_S  30
#define REG_LOW_SPEED_TIME_S   60

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init(void)
{
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void token_clear(RegToken *t)
{
        free(t->scope);
        reg_secret_freep(&t->token);
        *t = (RegToken){0};
}

RegClient *reg_client_free(RegClient *c)
{
        if (!c)
                return NULL;
        if (c->curl)
                curl_easy_cleanup(c->curl);
        free(c->url);
        free(c->host);
        free(c->user_agent);
        free(c->opt_authfile);
        free(c->opt_ca_file);
        free(c->opt_certs_dir);
        free(c->ca_bundle);
        free(c->client_cert);
        free(c->client_key);
        reg_credentials_done(&c->creds);
        free(c->authfile_path);
        free(c->realm);
        free(c->service);
        for (size_t i = 0; i < c->n_tokens; i++)
                token_clear(&c->tokens[i]);
        free(c);
        return NULL;
}

const char *reg_client_host(RegClient *c)
{
        return c->host;
}

/* "scheme://host[:port]" with nothing else: no user, path, query or fragment. */
static int client_parse_url(RegClient *c, const char *url, NbError *e)
{
        _cleanup_curlu_ CURLU *u = curl_url();
        _cleanup_curl_free_ char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *query = NULL,
                                 *user = NULL;
        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
                return nb_error_set(e, -EINVAL, "invalid registry URL \"%s\"", url);
        if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0)
                return nb_error_set(e, -EINVAL, "registry URL \"%s\" must start with https:// or http://",
                                    url);
        (void)curl_url_get(u, CURLUPART_PORT, &port, 0);
        (void)curl_url_get(u, CURLUPART_PATH, &path, 0);
        (void)curl_url_get(u, CURLUPART_QUERY, &query, 0);
        (void)curl_url_get(u, CURLUPART_USER, &user, 0);
        if ((path && strcmp(path, "/") != 0 && *path) || query || user)
                return nb_error_set(e, -EINVAL, "registry URL \"%s\" must be scheme://host[:port] only",
                                    url);
        char buf[REG_NAME_MAX + 1];
        int n = snprintf(buf, sizeof(buf), "%s%s%s", host, port ? ":" : "", port ? port : "");
        if (n < 0 || (size_t)n >= sizeof(buf) || !reg_host_valid(buf, (size_t)n))
                return nb_error_set(e, -EINVAL, "invalid registry host in \"%s\"", url);
        c->plain_http = strcmp(scheme, "http") == 0;
        if (reg_strdup(buf, &c->host) < 0 || asprintf(&c->url, "%s://%s", scheme, buf) < 0) {
                c->url = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* Appends a file to the CA bundle being built. */
static int bundle_append(RegClient *c, const char *path, NbError *e)
{
        _cleanup_free_ char *data = NULL;
        size_t size;
        int r = nb_read_file_at(AT_FDCWD, path, REG_CA_BUNDLE_MAX, NB_READ_REGULAR, &data, &size);
        if (r < 0)
                return nb_error_set(e, r, "cannot read CA certificates %s: %s", path, strerror(-r));
        if (c->ca_bundle_size + size + 2 > REG_CA_BUNDLE_MAX)
                return nb_error_set(e, -EFBIG, "CA certificates exceed %u bytes at %s", REG_CA_BUNDLE_MAX,
                                    path);
        char *n = realloc(c->ca_bundle, c->ca_bundle_size + size + 2);
        if (!n)
                return -ENOMEM;
        c->ca_bundle = n;
        memcpy(n + c->ca_bundle_size, data, size);
        c->ca_bundle_size += size;
        n[c->ca_bundle_size++] = '\n';
        n[c->ca_bundle_size] = 0;
        return 0;
}

static bool has_suffix(const char *s, const char *suffix)
{
        size_t a = strlen(s), b = strlen(suffix);
        return a > b && strcmp(s + a - b, suffix) == 0;
}

static int names_cmp(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One entry of certs.d/<host>/: *.crt are CAs; *.cert needs its *.key and the other way round. */
static int certs_dir_entry(RegClient *c, const char *dir, const char *name, NbError *e)
{
        char path[REG_PATH_MAX], other[REG_PATH_MAX];
        size_t base = strlen(name);
        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
                return nb_error_set(e, -ENAMETOOLONG, "path too long in %s", dir);
        if (has_suffix(name, ".crt"))
                return bundle_append(c, path, e);
        bool cert = has_suffix(name, ".cert"), key = has_suffix(name, ".key");
        if (!cert && !key)
                return 0;
        base -= cert ? 5 : 4;
        if (snprintf(other, sizeof(other), "%s/%.*s%s", dir, (int)base, name, cert ? ".key" : ".cert") >=
            (int)sizeof(other))
                return nb_error_set(e, -ENAMETOOLONG, "path too long in %s", dir);
        if (access(other, R_OK) < 0)
                return nb_error_set(e, -ENOENT, "%s has no matching %s", path, cert ? ".key" : ".cert");
        if (!cert || c->client_cert)
                return 0;
        if (reg_strdup(path, &c->client_cert) < 0 || reg_strdup(other, &c->client_key) < 0)
                return -ENOMEM;
        return 0;
}

static void names_free(char **names, size_t n)
{
        for (size_t i = 0; i < n; i++)
                free(names[i]);
}

static int certs_dir_load(RegClient *c, const char *certs_dir, NbError *e)
{
        char dir[REG_PATH_MAX];
        if (snprintf(dir, sizeof(dir), "%s/%s", certs_dir, c->host) >= (int)sizeof(dir))
                return nb_error_set(e, -ENAMETOOLONG, "certificates directory path too long");
        DIR *d = opendir(dir);
        if (!d && (errno == ENOENT || errno == ENOTDIR))
                return 0;
        if (!d)
                return nb_error_set(e, -errno, "cannot open %s: %m", dir);
        char *names[REG_CERT_FILES_MAX];
        size_t n = 0;
        struct dirent *de;
        while ((de = readdir(d)) && n < REG_CERT_FILES_MAX)
                if (de->d_name[0] != '.' && (names[n] = strdup(de->d_name)))
                        n++;
        closedir(d);
        qsort(names, n, sizeof(names[0]), names_cmp);
        int r = 0;
        for (size_t i = 0; i < n && r >= 0; i++)
                r = certs_dir_entry(c, dir, names[i], e);
        names_free(names, n);
        return r;
}

/* Extra CAs are added to the system's, never in place of them. */
static int client_load_tls(RegClient *c, const RegClientOptions *o, NbError *e)
{
        if (o->ca_file) {
                int r = bundle_append(c, o->ca_file, e);
                if (r < 0)
                        return r;
        }
        int r = certs_dir_load(c, o->certs_dir ? o->certs_dir : REG_CERTS_DIR_DEFAULT, e);
        if (r < 0 || !c->ca_bundle)
                return r;
        _cleanup_free_ char *extra = TAKE_PTR(c->ca_bundle);
        size_t extra_size = c->ca_bundle_size;
        c->ca_bundle_size = 0;
        char *system = NULL;
        if (curl_easy_getinfo(c->curl, CURLINFO_CAINFO, &system) != CURLE_OK || !system)
                system = (char *)REG_SYSTEM_CA_FALLBACK;
        if (access(system, R_OK) == 0) {
                r = bundle_append(c, system, e);
                if (r < 0)
                        return r;
        }
        if (c->ca_bundle_size + extra_size + 1 > REG_CA_BUNDLE_MAX)
                return nb_error_set(e, -EFBIG, "CA certificates exceed %u bytes", REG_CA_BUNDLE_MAX);
        char *n = realloc(c->ca_bundle, c->ca_bundle_size + extra_size + 1);
        if (!n)
                return -ENOMEM;
        memcpy(n + c->ca_bundle_size, extra, extra_size + 1);
        c->ca_bundle = n;
        c->ca_bundle_size += extra_size;
        return 0;
}

static int client_copy_options(RegClient *c, const RegClientOptions *o)
{
        c->connect_timeout_s = o->connect_timeout_s > 0 ? o->connect_timeout_s : REG_CONNECT_TIMEOUT_S;
        /* Options win; else the environment (operators and tests tune a running agent with it). */
        c->low_speed_time_s = o->low_speed_time_s > 0
                                      ? o->low_speed_time_s
                                      : reg_env_long("NBSNAP_REGISTRY_LOW_SPEED_TIME", REG_LOW_SPEED_TIME_S);
        c->retry_deadline_s = o->retry_deadline_s > 0
                                      ? o->retry_deadline_s
                                      : reg_env_long("NBSNAP_REGISTRY_RETRY_DEADLINE", REG_RETRY_DEADLINE_S);
        c->replay_max = o->replay_max
                                ? o->replay_max
                                : (size_t)reg_env_long("NBSNAP_REGISTRY_REPLAY_MAX", REG_REPLAY_DEFAULT);
        c->cancel = o->cancel;
        c->cancel_drain_s = o->cancel_drain_s > 0
                                    ? o->cancel_drain_s
                                    : reg_env_long("NBSNAP_REGISTRY_CANCEL_DRAIN", REG_CANCEL_DRAIN_S);
        c->chunk_size = o->chunk_size ? o->chunk_size : REG_CHUNK_DEFAULT;
        if (c->chunk_size < REG_CHUNK_MIN_BYTES)
                c->chunk_size = REG_CHUNK_MIN_BYTES;
        if (c->chunk_size > REG_CHUNK_MAX_BYTES)
                c->chunk_size = REG_CHUNK_MAX_BYTES;
        if (reg_strdup(o->user_agent ? o->user_agent : "nbsnap", &c->user_agent) < 0 ||
            reg_strdup(o->authfile, &c->opt_authfile) < 0 || reg_strdup(o->ca_file, &c->opt_ca_file) < 0 ||
            reg_strdup(o->certs_dir, &c->opt_certs_dir) < 0)
                return -ENOMEM;
        return 0;
}

int reg_client_new(const RegClientOptions *o, RegClient **ret, NbError *e)
{
        if (!o || !o->url)
                return nb_error_set(e, -EINVAL, "no registry URL given");
        pthread_once(&curl_once, curl_init);
        if (curl_init_result != CURLE_OK)
                return nb_error_set(e, -EIO, "cannot initialise libcurl");
        _cleanup_(reg_client_freep) RegClient *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        int r = client_parse_url(c, o->url, e);
        if (r < 0)
                return r;
        if (client_copy_options(c, o) < 0)
                return nb_error_oom(e);
        c->curl = curl_easy_init();
        if (!c->curl)
                return nb_error_set(e, -ENOMEM, "cannot create a curl handle");
        if (!c->plain_http) {
                r = client_load_tls(c, o, e);
                if (r < 0)
                        return r;
        }
        r = reg_auth_load(o->authfile, c->host, &c->creds, &c->authfile_path, e);
        if (r < 0)
                return r;
        c->have_creds = r > 0;
        c->rand_state = reg_rand_seed(); /* per client: clones and threads draw apart */
        *ret = TAKE_PTR(c);
        return 0;
}

int reg_client_clone(RegClient *c, RegClient **ret, NbError *e)
{
        RegClientOptions o = {
                .url = c->url,
                .authfile = c->opt_authfile,
                .ca_file = c->opt_ca_file,
                .certs_dir = c->opt_certs_dir,
                .user_agent = c->user_agent,
                .connect_timeout_s = c->connect_timeout_s,
                .low_speed_time_s = c->low_speed_time_s,
                .chunk_size = c->chunk_size,
                .retry_deadline_s = c->retry_deadline_s,
                .replay_max = c->replay_max,
                .cancel = c->cancel,
                .cancel_drain_s = c->cancel_drain_s,
        };
        int r = reg_client_new(&o, ret, e);
        if (r >= 0)
                reg_client_set_session_hook(*ret, c->session_fn, c->session_userdata);
        return r;
}

void reg_client_set_session_hook(RegClient *c, reg_session_fn fn, void *userdata)
{
        c->session_fn = fn;
        c->session_userdata = fn ? userdata : NULL;
}

int reg_client_v2_url(RegClient *c, const char *repository, const char *kind, const char *ref, char **ret)
{
        char buf[REG_URL_MAX];
        int n = snprintf(buf, sizeof(buf), "%s/v2/%s/%s/%s", c->url, repository, kind, ref ? ref : "");
        if (n < 0 || (size_t)n >= sizeof(buf))
                return -ENAMETOOLONG;
        return reg_strdup(buf, ret);
}

int reg_scope(const char *repository, const char *actions, char **ret)
{
        char buf[REG_URL_MAX];
        int n = snprintf(buf, sizeof(buf), "repository:%s:%s", repository, actions);
        if (n < 0 || (size_t)n >= sizeof(buf))
                return -ENAMETOOLONG;
        return reg_strdup(buf, ret);
}
