#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <curl/curl.h>

#include "agent/agent-version.h"
#include "agent/log.h"
#include "agent/reporter.h"

struct NbReporter {
        NbStore *store;
        char *url, *auth_header, *token_header, *ca_file;
        unsigned retry_max_ms;
        pthread_t thread;
        bool started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stop, kicked;
};

static void curl_cleanupp(CURL **c)
{
        if (*c)
                curl_easy_cleanup(*c);
}

static void slist_freep(struct curl_slist **l)
{
        curl_slist_free_all(*l);
}

static size_t discard_body(char *data, size_t size, size_t n, void *userdata)
{
        size_t *total = userdata;
        *total += size * n;
        return *total > NB_REPORT_RESPONSE_MAX ? 0 : size * n;
}

static int abort_on_stop(void *userdata, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
        NbReporter *r = userdata;
        pthread_mutex_lock(&r->lock);
        bool stop = r->stop;
        pthread_mutex_unlock(&r->lock);
        return stop ? 1 : 0;
}

/* 0 when the control plane acknowledged (2xx); negative with a message otherwise. */
static int post_one(NbReporter *r, uint64_t seq, const char *json, char *err, size_t err_size)
{
        _cleanup_(curl_cleanupp) CURL *c = curl_easy_init();
        _cleanup_(slist_freep) struct curl_slist *h = NULL;
        char seq_header[64];
        snprintf(seq_header, sizeof(seq_header), "X-Nbsnap-Sequence: %" PRIu64, seq);
        struct curl_slist *n = curl_slist_append(NULL, "Content-Type: application/json");
        if (n)
                h = n;
        if (n && !(n = curl_slist_append(h, seq_header)))
                h = NULL;
        if (n && r->auth_header && !(n = curl_slist_append(h, r->auth_header)))
                h = NULL;
        if (n && r->token_header && !(n = curl_slist_append(h, r->token_header)))
                h = NULL;
        if (!c || !n) {
                snprintf(err, err_size, "out of memory");
                return -ENOMEM;
        }
        size_t body = 0;
        char curl_err[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(c, CURLOPT_URL, r->url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(json));
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)NB_REPORT_TIMEOUT_S);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, abort_on_stop);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, r);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
        curl_easy_setopt(c, CURLOPT_USERAGENT, nbsnap_user_agent());
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        if (r->ca_file)
                curl_easy_setopt(c, CURLOPT_CAINFO, r->ca_file);
        CURLcode cc = curl_easy_perform(c);
        if (cc != CURLE_OK) {
                snprintf(err, err_size, "%s", curl_err[0] ? curl_err : curl_easy_strerror(cc));
                return -EIO;
        }
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (status < 200 || status > 299) {
                snprintf(err, err_size, "HTTP %ld", status);
                return -EPROTO;
        }
        return 0;
}

/* "Name: value", malloc'ed; NULL when out of memory. */
static char *header_new(const char *prefix, const char *value)
{
        char *h = NULL;
        return asprintf(&h, "%s%s", prefix, value) < 0 ? NULL : h;
}

/* Waits until kicked, stopped, or ms passed (ms == 0: until kicked or stopped). true when stopping. */
static bool wait_for(NbReporter *r, unsigned ms)
{
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += ms / 1000;
        until.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&r->lock);
        while (!r->stop && !r->kicked)
                if (ms == 0)
                        pthread_cond_wait(&r->cond, &r->lock);
                else if (pthread_cond_timedwait(&r->cond, &r->lock, &until) != 0)
                        break;
        bool stop = r->stop;
        r->kicked = false;
        pthread_mutex_unlock(&r->lock);
        return stop;
}

static unsigned jitter(unsigned ms)
{
        uint32_t x = 0;
        if (getrandom(&x, sizeof(x), GRND_NONBLOCK) != (ssize_t)sizeof(x))
                x = (uint32_t)time(NULL);
        return ms / 2 + (unsigned)(x % (ms / 2 + 1)); /* [ms/2, ms] */
}

static void *reporter_thread(void *userdata)
{
        NbReporter *r = userdata;
        unsigned backoff = 0;
        uint64_t failing_seq = 0;
        for (;;) {
                pthread_mutex_lock(&r->lock);
                bool stop = r->stop;
                r->kicked = false;
                pthread_mutex_unlock(&r->lock);
                if (stop)
                        break;
                NbError e = {0};
                uint64_t seq = 0;
                _cleanup_free_ char *json = NULL;
                int q = nb_outbox_peek(r->store, &seq, &json, &e);
                if (q < 0)
                        log_error("reporter: %s", e.msg);
                if (q <= 0) {
                        if (wait_for(r, q < 0 ? 5000 : 0))
                                break;
                        continue;
                }
                char err[CURL_ERROR_SIZE + 64];
                if (post_one(r, seq, json, err, sizeof(err)) >= 0) {
                        if (failing_seq == seq)
                                log_info("reporter: report %" PRIu64 " accepted after retries", seq);
                        (void)nb_outbox_ack(r->store, seq);
                        backoff = 0;
                        continue;
                }
                backoff = backoff == 0                    ? NB_REPORT_BACKOFF_MS
                          : backoff * 2 > r->retry_max_ms ? r->retry_max_ms
                                                          : backoff * 2;
                if (failing_seq != seq)
                        log_warning("reporter: report %" PRIu64
                                    " not accepted by the control plane (%s); retrying "
                                    "with backoff",
                                    seq, err);
                failing_seq = seq;
                /* a kick does not cut the backoff short for the same report: the control plane is failing */
                struct timespec t0, t1;
                clock_gettime(CLOCK_MONOTONIC, &t0);
                unsigned wait = jitter(backoff);
                for (;;) {
                        clock_gettime(CLOCK_MONOTONIC, &t1);
                        long done = (t1.tv_sec - t0.tv_sec) * 1000L + (t1.tv_nsec - t0.tv_nsec) / 1000000L;
                        if (done >= (long)wait)
                                break;
                        if (wait_for(r, wait - (unsigned)done))
                                goto out;
                }
        }
out:
        return NULL;
}

int nb_reporter_new(NbStore *store, const char *url, const char *token, const char *ca_file,
                    unsigned retry_max_sec, NbReporter **ret, NbError *e)
{
        NbReporter *r = calloc(1, sizeof(*r));
        if (!r)
                return nb_error_oom(e);
        pthread_mutex_init(&r->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&r->cond, &ca);
        pthread_condattr_destroy(&ca);
        r->store = store;
        r->retry_max_ms = retry_max_sec ? retry_max_sec * 1000 : NB_REPORT_BACKOFF_MS;
        if (r->retry_max_ms < NB_REPORT_BACKOFF_MS)
                r->retry_max_ms = NB_REPORT_BACKOFF_MS;
        if (!(r->url = strdup(url)) || (ca_file && !(r->ca_file = strdup(ca_file))) ||
            (token && (!(r->auth_header = header_new("Authorization: Bearer ", token)) ||
                       !(r->token_header = header_new("X-Auth-Token: ", token))))) {
                nb_reporter_free(r);
                return nb_error_oom(e);
        }
        int q = pthread_create(&r->thread, NULL, reporter_thread, r);
        if (q != 0) {
                nb_reporter_free(r);
                return nb_error_set(e, -q, "cannot start the reporter: %s", strerror(q));
        }
        r->started = true;
        *ret = r;
        return 0;
}

void nb_reporter_kick(NbReporter *r)
{
        if (!r)
                return;
        pthread_mutex_lock(&r->lock);
        r->kicked = true;
        pthread_cond_signal(&r->cond);
        pthread_mutex_unlock(&r->lock);
}

NbReporter *nb_reporter_free(NbReporter *r)
{
        if (!r)
                return NULL;
        if (r->started) {
                pthread_mutex_lock(&r->lock);
                r->stop = true;
                pthread_cond_signal(&r->cond);
                pthread_mutex_unlock(&r->lock);
                pthread_join(r->thread, NULL);
        }
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        if (r->auth_header)
                explicit_bzero(r->auth_header, strlen(r->auth_header));
        free(r->auth_header);
        if (r->token_header)
                explicit_bzero(r->token_header, strlen(r->token_header));
        free(r->token_header);
        free(r->url);
        free(r->ca_file);
        free(r);
        return NULL;
}
