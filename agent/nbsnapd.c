/* nbsnapd: the nbsnap agent. One sd-event loop owns the API sockets (libmicrohttpd in external-epoll mode),
 * the signals, the timers and the watchdog; a save runs on a worker thread calling nb_save() and posts its
 * progress back; state changes are recorded in the state dir and reported to the control plane from a
 * durable outbox. See docs/AGENT.md. */
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "agent/api.h"
#include "agent/config.h"
#include "agent/manager.h"
#include "agent/log.h"

static void event_unrefp(sd_event **e)
{
        sd_event_unref(*e);
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        Manager *m = userdata;
        log_info("received %s, stopping", strsignal((int)si->ssi_signo));
        manager_request_stop(m);
        return 0;
}

/* Deep trees keep one directory fd per level open. */
static void raise_fd_limit(void)
{
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
}

static int run(int argc, char **argv)
{
        _cleanup_(nb_config_done) NbConfig cfg;
        nb_config_init(&cfg);
        int r = nb_config_parse_argv(&cfg, argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        NbError e = {0};
        if (nb_config_check(&cfg, &e) < 0) {
                log_error("%s", e.msg);
                return 2;
        }
        /* before any thread: the workers inherit the mask, the loop takes the signals through a signalfd */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        raise_fd_limit();
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error("cannot initialize libcurl");
                return 1;
        }
        _cleanup_(event_unrefp) sd_event *event = NULL;
        r = sd_event_default(&event);
        if (r < 0)
                return log_error_errno(r, "cannot create the event loop: %m"), 1;
        Manager *m = NULL;
        NbApi *api = NULL;
        r = manager_new(&cfg, event, &m, &e);
        if (r >= 0)
                r = nb_api_new(m, event, &cfg, &api, &e);
        if (r >= 0)
                r = nb_api_listen(api, &e);
        if (r >= 0)
                r = manager_start(m, &e);
        if (r >= 0 && ((r = sd_event_add_signal(event, NULL, SIGTERM, on_signal, m)) < 0 ||
                       (r = sd_event_add_signal(event, NULL, SIGINT, on_signal, m)) < 0 ||
                       (r = sd_event_set_watchdog(event, true)) < 0))
                nb_error_set(&e, r, "cannot set up signals and the watchdog: %s", strerror(-r));
        if (r >= 0) {
                log_info("ready: project %s, notebook %s, registry %s, base image %s", cfg.project_id,
                         cfg.notebook_id, cfg.registry, cfg.base_image);
                manager_set_ready(m);
                r = sd_event_loop(event);
                if (r < 0)
                        nb_error_set(&e, r, "event loop failed: %s", strerror(-r));
        }
        (void)sd_notify(false, "STOPPING=1");
        if (r < 0)
                log_error("%s", e.msg);
        /* the manager first: pending deletions answer their (suspended) connections */
        manager_free(m);
        nb_api_free(api);
        /* no curl_global_cleanup(): a save worker abandoned after the stop timeout may still be in libcurl
         */
        return r < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
        setlocale(LC_ALL, "C.UTF-8");
        nb_log_init("nbsnapd");
        return run(argc, argv);
}
