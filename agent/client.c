#include <errno.h>
#include <string.h>

#include <curl/curl.h>

#include "agent/agent-version.h"
#include "agent/client.h"

void nb_response_done(NbResponse *r)
{
        free(r->body);
        *r = (NbResponse){0};
}

static size_t on_data(char *data, size_t size, size_t n, void *userdata)
{
        NbResponse *r = userdata;
        size_t len = size * n;
        if (r->size + len > NB_CLIENT_RESPONSE_MAX)
                return 0;
        char *b = realloc(r->body, r->size + len + 1);
        if (!b)
                return 0;
        memcpy(b + r->size, data, len);
        r->size += len;
        b[r->size] = '\0';
        r->body = b;
        return len;
}

static void curl_cleanupp(CURL **c)
{
        if (*c)
                curl_easy_cleanup(*c);
}

static void slist_freep(struct curl_slist **l)
{
        curl_slist_free_all(*l);
}

int nb_client_request(const char *socket_path, const char *method, const char *path, const char *body,
                      NbResponse *ret, NbError *e)
{
        _cleanup_(curl_cleanupp) CURL *c = curl_easy_init();
        _cleanup_(slist_freep) struct curl_slist *h =
                curl_slist_append(NULL, "Content-Type: application/json");
        _cleanup_free_ char *url = NULL;
        if (!c || !h || asprintf(&url, "http://localhost%s", path) < 0)
                return nb_error_oom(e);
        NbResponse r = {0};
        char err[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, socket_path);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)NB_CLIENT_TIMEOUT_S);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
        curl_easy_setopt(c, CURLOPT_USERAGENT, nbsnap_user_agent());
        if (body) {
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
        } else if (strcmp(method, "HEAD") == 0)
                curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        CURLcode cc = curl_easy_perform(c);
        if (cc != CURLE_OK) {
                long os_errno = 0;
                curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
                nb_response_done(&r);
                /* no socket file, or nobody listening on it: curl would say "localhost port 80" */
                if (cc == CURLE_COULDNT_CONNECT &&
                    (os_errno == ENOENT || os_errno == ECONNREFUSED || os_errno == 0))
                        return nb_error_set(e, -ECONNREFUSED,
                                            "nbsnapd is not running on %s (systemctl start nbsnapd.socket)",
                                            socket_path);
                if (cc == CURLE_COULDNT_CONNECT && (os_errno == EACCES || os_errno == EPERM))
                        return nb_error_set(e, -EACCES,
                                            "permission denied on %s: only root and the members of the "
                                            "socket's group may use nbsnapd",
                                            socket_path);
                return nb_error_set(e, cc == CURLE_COULDNT_CONNECT ? -ECONNREFUSED : -EIO,
                                    "cannot reach nbsnapd on %s: %s", socket_path,
                                    err[0] ? err : curl_easy_strerror(cc));
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
        if (!r.body && !(r.body = strdup("")))
                return nb_error_oom(e);
        *ret = r;
        return 0;
}
