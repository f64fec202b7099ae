/* daemon.h: nbsnapd's shape: parse the configuration, build the manager (agent/manager.h) and the API
 * (agent/api.h) on one sd-event loop, wake the manager when its workers post, sd_notify READY=1 and a
 * STATUS= line on every change, the watchdog, and on SIGTERM/SIGINT STOPPING=1: the running save is
 * cancelled and the loop ends when it is recorded, or after stop_timeout. Models: systemd src/oom/oomd.c,
 * dbus-broker src/launch/main.c. */
#pragma once

/* The whole daemon: returns the exit status (0, 1 on a failure, 2 on a bad configuration). */
int nb_daemon_run(int argc, char **argv);
