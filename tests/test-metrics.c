/* test-metrics.c: the Prometheus text of agent/metrics.c: every family with its HELP and TYPE lines, the
 * counters as counted, the registry's retries by reason, the last success and its layer bytes, the build. */
#include "agent/agent-version.h"
#include "agent/metrics.h"
#include "tests.h"

static void has_line(const char *text, const char *line)
{
        size_t n = strlen(line);
        for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
                if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
                        return;
        fprintf(stderr, "no line \"%s\" in:\n%s\n", line, text);
        ASSERT_TRUE(false);
}

static void test_text(void)
{
        NbMetrics m = {0};
        NbMetricsNow now = {.phase = -1, .outbox = 2};
        now.retries[REG_RETRY_HTTP_429] = 3;
        now.retries[REG_RETRY_HTTP_5XX] = 1;
        char *text = NULL;
        NbError e = {0};

        /* before any save */
        ASSERT_OK(nb_metrics_text(&m, &now, &text, &e));
        has_line(text, "nbsnap_last_success_timestamp_seconds 0.000");
        has_line(text, "nbsnap_layer_bytes{kind=\"compressed\"} 0");
        free(text);

        nb_metrics_count_save(&m, NB_STATUS_ACTIVE, 4096, 12.5);
        nb_metrics_count_success(&m, 1700000000123, 4096, 10240);
        nb_metrics_count_save(&m, NB_STATUS_CREATE_FAILED, 0, 1);
        ASSERT_OK(nb_metrics_text(&m, &now, &text, &e));
        static const char *const families[][2] = {
                {"nbsnap_saves_total", "counter"},
                {"nbsnap_bytes_pushed_total", "counter"},
                {"nbsnap_save_duration_seconds", "histogram"},
                {"nbsnap_save_phase", "gauge"},
                {"nbsnap_save_in_progress", "gauge"},
                {"nbsnap_outbox_reports", "gauge"},
                {"nbsnap_registry_retries_total", "counter"},
                {"nbsnap_last_success_timestamp_seconds", "gauge"},
                {"nbsnap_layer_bytes", "gauge"},
                {"nbsnap_build_info", "gauge"},
        };
        for (size_t i = 0; i < ELEMENTSOF(families); i++) {
                char type[128];
                snprintf(type, sizeof(type), "# TYPE %s %s", families[i][0], families[i][1]);
                has_line(text, type);
                char help[128];
                snprintf(help, sizeof(help), "# HELP %s ", families[i][0]);
                ASSERT_TRUE(strstr(text, help) != NULL);
        }
        has_line(text, "nbsnap_saves_total{result=\"ACTIVE\"} 1");
        has_line(text, "nbsnap_saves_total{result=\"CREATE_FAILED\"} 1");
        has_line(text, "nbsnap_registry_retries_total{reason=\"http_429\"} 3");
        has_line(text, "nbsnap_registry_retries_total{reason=\"http_5xx\"} 1");
        has_line(text, "nbsnap_registry_retries_total{reason=\"timeout\"} 0");
        has_line(text, "nbsnap_registry_retries_total{reason=\"connect\"} 0");
        has_line(text, "nbsnap_registry_retries_total{reason=\"other\"} 0");
        has_line(text, "nbsnap_last_success_timestamp_seconds 1700000000.123");
        has_line(text, "nbsnap_layer_bytes{kind=\"compressed\"} 4096");
        has_line(text, "nbsnap_layer_bytes{kind=\"uncompressed\"} 10240");
        char build[128];
        snprintf(build, sizeof(build), "nbsnap_build_info{version=\"%s\"} 1", nbsnap_version());
        has_line(text, build);
        has_line(text, "nbsnap_outbox_reports 2");
        free(text);
}

int main(void)
{
        test_text();
        printf("test-metrics: all passed\n");
        return 0;
}
