#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include "agent/log.h"

static const char *log_identifier = "nbsnapd";
static bool to_journal;
static int max_priority = LOG_INFO;

/* The journal when stderr is the stream systemd connected (same device and inode as $JOURNAL_STREAM). */
static bool stderr_is_journal(void)
{
        const char *js = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void nb_log_init(const char *identifier)
{
        if (identifier)
                log_identifier = identifier;
        to_journal = stderr_is_journal();
        const char *lvl = getenv("NBSNAP_LOG_LEVEL");
        if (lvl && strcmp(lvl, "debug") == 0)
                max_priority = LOG_DEBUG;
}

int nb_log_full(int priority, int error, const char *image_id, const char *phase, const char *fmt, ...)
{
        int ret = error < 0 ? error : -error;
        if (priority > max_priority)
                return ret;
        int saved = errno;
        char msg[2048];
        va_list ap;
        va_start(ap, fmt);
        errno = error < 0 ? -error : error;
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (to_journal) {
                char f[6][2200];
                struct iovec iov[6];
                size_t n = 0;
                snprintf(f[n++], sizeof(f[0]), "MESSAGE=%s", msg);
                snprintf(f[n++], sizeof(f[0]), "PRIORITY=%d", priority);
                snprintf(f[n++], sizeof(f[0]), "SYSLOG_IDENTIFIER=%s", log_identifier);
                if (image_id)
                        snprintf(f[n++], sizeof(f[0]), "IMAGE_ID=%s", image_id);
                if (phase)
                        snprintf(f[n++], sizeof(f[0]), "PHASE=%s", phase);
                if (error)
                        snprintf(f[n++], sizeof(f[0]), "ERRNO=%d", error < 0 ? -error : error);
                for (size_t i = 0; i < n; i++)
                        iov[i] = (struct iovec){.iov_base = f[i], .iov_len = strlen(f[i])};
                sd_journal_sendv(iov, (int)n);
        } else {
                char prefix[80] = "";
                if (image_id)
                        snprintf(prefix, sizeof(prefix), "image %.36s: ", image_id);
                fprintf(stderr, "%s: %s%s\n", log_identifier, prefix, msg);
        }
        errno = saved;
        return ret;
}
