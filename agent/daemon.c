#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "agent/api.h"
#include "agent/config.h"
#include "agent/daemon.h"
#include "agent/log.h"
#include "agent/manager.h"

typedef struct Daemon {
        const NbConfig *cfg;
        sd_event *event;
        Manager *m;
        NbApi *api;
        sd_event_source *wake_source, *stop_timer;
        bool stopping;
} Daemon;

static void event_unrefp(sd_event **e)
{
        sd_event_unref(*e);
}

static void notify_status(Daemon *d)
{
        char status[1200] = "STATUS=";
        manager_describe(d->m, status + strlen(status), sizeof(status) - strlen(status));
        for (char *p = status; *p; p++)
                if (*p == '\n')
                        *p = ' ';
        (void)sd_notify(false, status);
}

/* After every change the manager makes: the status line, and the end once a stop has nothing left. */
static void on_changed(void *userdata)
{
        Daemon *d = userdata;
        notify_status(d);
        if (d->stopping && !manager_saving(d->m))
                sd_event_exit(d->event, 0);
}

static int on_wake(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        Daemon *d = userdata;
        manager_dispatch(d->m);
        return 0;
}

static int on_stop_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
        Daemon *d = userdata;
        manager_abandon_save(d->m, d->cfg->stop_timeout_sec);
        return sd_event_exit(d->event, 0);
}

/* SIGTERM: cancel the save, stop the loop when it is recorded (or after stop_timeout). */
static void request_stop(Daemon *d)
{
        if (d->stopping)
                return;
        d->stopping = true;
        (void)sd_notify(false, "STOPPING=1");
        if (!manager_stop(d->m)) {
                notify_status(d);
                sd_event_exit(d->event, 0);
                return;
        }
        uint64_t usec = (uint64_t)d->cfg->stop_timeout_sec * 1000000ull;
        if (sd_event_add_time_relative(d->event, &d->stop_timer, CLOCK_MONOTONIC, usec, 0, on_stop_timeout,
                                       d) < 0)
                sd_event_exit(d->event, 0);
        notify_status(d);
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        Daemon *d = userdata;
        log_info("received %s, stopping", strsignal((int)si->ssi_signo));
        request_stop(d);
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

/* Before any thread: the workers inherit the mask, the loop takes the signals through a signalfd. */
static void block_signals(void)
{
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
}

static int daemon_setup(Daemon *d, NbError *e)
{
        int r = manager_new(d->cfg, &d->m, e);
        if (r >= 0)
                r = nb_api_new(d->m, d->event, d->cfg, &d->api, e);
        if (r >= 0)
                r = nb_api_listen(d->api, e);
        if (r >= 0)
                r = manager_start(d->m, e);
        if (r < 0)
                return r;
        manager_set_changed(d->m, on_changed, d);
        if ((r = sd_event_add_io(d->event, &d->wake_source, manager_wake_fd(d->m), EPOLLIN, on_wake, d)) < 0)
                return nb_error_set(e, r, "cannot set up the worker wake-up: %s", strerror(-r));
        if ((r = sd_event_add_signal(d->event, NULL, SIGTERM, on_signal, d)) < 0 ||
            (r = sd_event_add_signal(d->event, NULL, SIGINT, on_signal, d)) < 0 ||
            (r = sd_event_set_watchdog(d->event, true)) < 0)
                return nb_error_set(e, r, "cannot set up signals and the watchdog: %s", strerror(-r));
        return 0;
}

static int daemon_loop(Daemon *d, NbError *e)
{
        const NbConfig *c = d->cfg;
        log_info("ready: project %s, notebook %s, registry %s, base image %s", c->project_id, c->notebook_id,
                 c->registry, c->base_image);
        manager_set_ready(d->m);
        (void)sd_notify(false, "READY=1");
        notify_status(d);
        int r = sd_event_loop(d->event);
        if (r < 0)
                return nb_error_set(e, r, "event loop failed: %s", strerror(-r));
        return 0;
}

static int daemon_main(const NbConfig *cfg)
{
        NbError e = {0};
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error("cannot initialize libcurl");
                return 1;
        }
        _cleanup_(event_unrefp) sd_event *event = NULL;
        int r = sd_event_default(&event);
        if (r < 0)
                return log_error_errno(r, "cannot create the event loop: %m"), 1;
        Daemon d = {.cfg = cfg, .event = event};
        r = daemon_setup(&d, &e);
        if (r >= 0)
                r = daemon_loop(&d, &e);
        (void)sd_notify(false, "STOPPING=1");
        if (r < 0)
                log_error("%s", e.msg);
        sd_event_source_disable_unref(d.wake_source);
        sd_event_source_disable_unref(d.stop_timer);
        /* the manager first: pending deletions answer their (suspended) connections */
        manager_free(d.m);
        nb_api_free(d.api);
        /* no curl_global_cleanup(): a save worker abandoned after the stop timeout may still be in libcurl
         */
        return r < 0 ? 1 : 0;
}

int nb_daemon_run(int argc, char **argv)
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
        block_signals();
        raise_fd_limit();
        return daemon_main(&cfg);
}
