/* nbsnapd: the nbsnap agent. One sd-event loop owns the API sockets (libmicrohttpd in external-epoll mode),
 * the signals, the timers and the watchdog; a save runs on a worker thread calling nb_save() and posts its
 * progress back; state changes are recorded in the state dir and reported to the control plane from a
 * durable outbox. The daemon's shape is agent/daemon.c; see docs/AGENT.md. */
#include <locale.h>

#include "agent/daemon.h"
#include "agent/log.h"

int main(int argc, char **argv)
{
        setlocale(LC_ALL, "C.UTF-8");
        nb_log_init("nbsnapd");
        return nb_daemon_run(argc, argv);
}
