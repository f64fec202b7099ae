/* metrics.h: nbsnapd's counters and their Prometheus text exposition (GET /metrics): saves finished by
 * result, compressed bytes pushed, a histogram of save durations, the phase of the running save, whether
 * one runs, and the reports waiting in the outbox. The manager counts; this module only keeps and prints. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/image.h"
#include "common/error.h"

#define NB_METRICS_DURATION_BUCKETS 10 /* 5 s ... 3600 s, then +Inf */

typedef struct NbMetrics {
        uint64_t saves[_NB_STATUS_MAX];
        uint64_t bytes_pushed;
        uint64_t duration_counts[NB_METRICS_DURATION_BUCKETS + 1];
        double duration_sum;
        uint64_t duration_count;
} NbMetrics;

/* What is true now, beside the counters. */
typedef struct NbMetricsNow {
        bool saving;
        int phase;     /* NbPhase of the running save, -1 when none or not known yet */
        uint64_t sent; /* bytes the running save has pushed so far */
        size_t outbox;
} NbMetricsNow;

/* A save ended with status (ACTIVE, CREATE_FAILED or ERROR; others count as ERROR). */
void nb_metrics_count_result(NbMetrics *m, NbStatus status);
/* ... and it ran for seconds and pushed sent bytes. */
void nb_metrics_count_save(NbMetrics *m, NbStatus status, uint64_t sent, double seconds);

/* The Prometheus text format 0.0.4, malloc'ed. -ENOMEM. */
int nb_metrics_text(const NbMetrics *m, const NbMetricsNow *now, char **ret, NbError *e);

#define NB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
