/* reporter.h: sends the outbox to the control plane. One thread takes the oldest report, POSTs it (the image
 * object as JSON, the token as Authorization: Bearer and as X-Auth-Token, X-Nbsnap-Sequence: <seq> so that a
 * receiver can drop a repeat after a restart) and removes it only when the answer is 2xx; otherwise it
 * waits (exponential backoff with jitter, capped) and sends the same report again. Reports go out one at a
 * time, in order; what was not acknowledged when the agent stopped is sent after the next start. */
#pragma once

#include "agent/store.h"

#define NB_REPORT_TIMEOUT_S    30
#define NB_REPORT_BACKOFF_MS   500 /* first wait after a failure; doubles up to the configured maximum */
#define NB_REPORT_RESPONSE_MAX (64u * 1024)

typedef struct NbReporter NbReporter;

/* Starts the thread. token may be NULL (no Authorization or X-Auth-Token header). */
int nb_reporter_new(NbStore *store, const char *url, const char *token, const char *ca_file,
                    unsigned retry_max_sec, NbReporter **ret, NbError *e);
/* A report was queued: send now (also cuts a backoff wait short). */
void nb_reporter_kick(NbReporter *r);
/* Stops (an attempt in flight is aborted) and joins. What is left stays in the outbox. */
NbReporter *nb_reporter_free(NbReporter *r);
