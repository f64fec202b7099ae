#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "agent/agent-version.h"
#include "agent/metrics.h"
#include "agent/save.h"
#include "common/macro.h"

static const double duration_buckets[NB_METRICS_DURATION_BUCKETS] = {5,   15,  30,   60,   120,
                                                                     300, 600, 1200, 1800, 3600};

void nb_metrics_count_result(NbMetrics *m, NbStatus status)
{
        m->saves[status < _NB_STATUS_MAX ? status : NB_STATUS_ERROR]++;
}

void nb_metrics_count_save(NbMetrics *m, NbStatus status, uint64_t sent, double secs)
{
        nb_metrics_count_result(m, status);
        m->bytes_pushed += sent;
        size_t b = 0;
        while (b < ELEMENTSOF(duration_buckets) && secs > duration_buckets[b])
                b++;
        m->duration_counts[b]++;
        m->duration_sum += secs;
        m->duration_count++;
}

void nb_metrics_count_success(NbMetrics *m, int64_t at_ms, uint64_t layer_bytes,
                              uint64_t layer_bytes_uncompressed)
{
        m->last_success_ms = at_ms;
        m->layer_bytes = layer_bytes;
        m->layer_bytes_uncompressed = layer_bytes_uncompressed;
}

typedef struct Buf {
        char *data;
        size_t len, cap;
        bool failed;
} Buf;

static void buf_printf(Buf *b, const char *fmt, ...) _printf_(2, 3);
static void buf_printf(Buf *b, const char *fmt, ...)
{
        for (int attempt = 0; attempt < 2 && !b->failed; attempt++) {
                va_list ap;
                va_start(ap, fmt);
                int n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
                va_end(ap);
                if (n < 0) {
                        b->failed = true;
                        return;
                }
                if (b->data && b->len + (size_t)n < b->cap) {
                        b->len += (size_t)n;
                        return;
                }
                size_t cap = (b->cap + (size_t)n + 1) * 2;
                char *d = realloc(b->data, cap);
                if (!d) {
                        b->failed = true;
                        return;
                }
                b->data = d;
                b->cap = cap;
        }
}

static void print_counters(Buf *b, const NbMetrics *m, const NbMetricsNow *now)
{
        buf_printf(b, "# HELP nbsnap_saves_total Saves finished, by result (DELETED: cancelled).\n"
                      "# TYPE nbsnap_saves_total counter\n");
        static const NbStatus results[] = {NB_STATUS_ACTIVE, NB_STATUS_CREATE_FAILED, NB_STATUS_ERROR,
                                           NB_STATUS_DELETED};
        for (size_t i = 0; i < ELEMENTSOF(results); i++)
                buf_printf(b, "nbsnap_saves_total{result=\"%s\"} %" PRIu64 "\n",
                           nb_status_to_string(results[i]), m->saves[results[i]]);
        buf_printf(b,
                   "# HELP nbsnap_bytes_pushed_total Compressed layer bytes uploaded to the registry.\n"
                   "# TYPE nbsnap_bytes_pushed_total counter\nnbsnap_bytes_pushed_total %" PRIu64 "\n",
                   m->bytes_pushed + (now->saving ? now->sent : 0));
        buf_printf(b, "# HELP nbsnap_save_duration_seconds Duration of finished saves.\n"
                      "# TYPE nbsnap_save_duration_seconds histogram\n");
        uint64_t cum = 0;
        for (size_t i = 0; i < ELEMENTSOF(duration_buckets); i++) {
                cum += m->duration_counts[i];
                buf_printf(b, "nbsnap_save_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                           duration_buckets[i], cum);
        }
        cum += m->duration_counts[ELEMENTSOF(duration_buckets)];
        buf_printf(b, "nbsnap_save_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
        buf_printf(b,
                   "nbsnap_save_duration_seconds_sum %.3f\nnbsnap_save_duration_seconds_count %" PRIu64 "\n",
                   m->duration_sum, m->duration_count);
}

static void print_gauges(Buf *b, const NbMetricsNow *now)
{
        int current = now->saving ? now->phase : -1;
        buf_printf(b, "# HELP nbsnap_save_phase The phase of the running save (1), idle when none.\n"
                      "# TYPE nbsnap_save_phase gauge\n");
        buf_printf(b, "nbsnap_save_phase{phase=\"idle\"} %d\n", now->saving ? 0 : 1);
        for (int p = 0; p < _NB_PHASE_MAX; p++)
                buf_printf(b, "nbsnap_save_phase{phase=\"%s\"} %d\n", nb_phase_to_string((NbPhase)p),
                           current == p ? 1 : 0);
        buf_printf(
                b,
                "# HELP nbsnap_save_in_progress 1 while a save runs.\n# TYPE nbsnap_save_in_progress gauge\n"
                "nbsnap_save_in_progress %d\n",
                now->saving ? 1 : 0);
        buf_printf(b,
                   "# HELP nbsnap_outbox_reports Reports not yet acknowledged by the control plane.\n"
                   "# TYPE nbsnap_outbox_reports gauge\nnbsnap_outbox_reports %zu\n",
                   now->outbox);
}

static void print_registry(Buf *b, const NbMetricsNow *now)
{
        buf_printf(b, "# HELP nbsnap_registry_retries_total Registry requests tried again, by reason.\n"
                      "# TYPE nbsnap_registry_retries_total counter\n");
        for (int i = 0; i < _REG_RETRY_REASON_MAX; i++)
                buf_printf(b, "nbsnap_registry_retries_total{reason=\"%s\"} %" PRIu64 "\n",
                           reg_retry_reason_to_string((RegRetryReason)i), now->retries[i]);
}

static void print_last_save(Buf *b, const NbMetrics *m)
{
        buf_printf(b,
                   "# HELP nbsnap_last_success_timestamp_seconds When the last successful save ended (Unix "
                   "time; 0: none since the agent started).\n"
                   "# TYPE nbsnap_last_success_timestamp_seconds gauge\n"
                   "nbsnap_last_success_timestamp_seconds %.3f\n",
                   (double)m->last_success_ms / 1000.0);
        buf_printf(b,
                   "# HELP nbsnap_layer_bytes Bytes of the new layers of the last successful save.\n"
                   "# TYPE nbsnap_layer_bytes gauge\n"
                   "nbsnap_layer_bytes{kind=\"compressed\"} %" PRIu64 "\n"
                   "nbsnap_layer_bytes{kind=\"uncompressed\"} %" PRIu64 "\n",
                   m->layer_bytes, m->layer_bytes_uncompressed);
        buf_printf(b,
                   "# HELP nbsnap_build_info The agent's version.\n# TYPE nbsnap_build_info gauge\n"
                   "nbsnap_build_info{version=\"%s\"} 1\n",
                   nbsnap_version());
}

int nb_metrics_text(const NbMetrics *m, const NbMetricsNow *now, char **ret, NbError *e)
{
        Buf b = {0};
        print_counters(&b, m, now);
        print_gauges(&b, now);
        print_registry(&b, now);
        print_last_save(&b, m);
        if (b.failed) {
                free(b.data);
                return nb_error_oom(e);
        }
        *ret = b.data;
        return 0;
}
