/* metrics.h: nbsnapd's counters and their Prometheus text exposition (GET /metrics): saves finished by
 * result, compressed bytes pushed, a histogram of save durations, the phase of the running save, whether
 * one runs, the reports waiting in the outbox, the registry client's retries by reason (registry.h), when
 * the last save succeeded and the size of its new layers, and the build's version. The manager counts; this
 * module only keeps and prints. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/image.h"
#include "common/error.h"
#include "registry/registry.h"

#define NB_METRICS_DURATION_BUCKETS 10 /* 5 s ... 3600 s, then +Inf */

typedef struct NbMetrics {
        uint64_t saves[_NB_STATUS_MAX];
        uint64_t bytes_pushed;
        uint64_t duration_counts[NB_METRICS_DURATION_BUCKETS + 1];
        double duration_sum;
        uint64_t duration_count;
        /* the last successful save (since the agent started): when it ended, UTC ms (0: none yet), and its
         * new layers' bytes */
        int64_t last_success_ms;
        uint64_t layer_bytes, layer_bytes_uncompressed;
} NbMetrics;

/* What is true now, beside the counters. */
typedef struct NbMetricsNow {
        bool saving;
        int phase;     /* NbPhase of the running save, -1 when none or not known yet */
        uint64_t sent; /* bytes the running save has pushed so far */
        size_t outbox;
        uint64_t retries[_REG_RETRY_REASON_MAX]; /* reg_retry_counts() */
} NbMetricsNow;

/* A save ended with status (ACTIVE, CREATE_FAILED, ERROR, or DELETED when a DELETE cancelled it; others
 * count as ERROR). */
void nb_metrics_count_result(NbMetrics *m, NbStatus status);
/* ... and it ran for seconds and pushed sent bytes. */
void nb_metrics_count_save(NbMetrics *m, NbStatus status, uint64_t sent, double seconds);

/* A save succeeded at at_ms (UTC) with new layers of these sizes. */
void nb_metrics_count_success(NbMetrics *m, int64_t at_ms, uint64_t layer_bytes,
                              uint64_t layer_bytes_uncompressed);

/* The Prometheus text format 0.0.4, malloc'ed. -ENOMEM. */
int nb_metrics_text(const NbMetrics *m, const NbMetricsNow *now, char **ret, NbError *e);

#define NB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
