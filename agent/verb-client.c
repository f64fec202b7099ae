/* verb-client.c: nbsnap create-image, status, list, delete and cancel: requests to nbsnapd over its unix
 * socket (agent/client.c), the JSON it answers printed on stdout (list: one ListImage page,
 * --limit/--offset), and --wait's polling with a progress bar. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "agent/client.h"
#include "agent/config.h"
#include "agent/image.h"
#include "agent/json.h"
#include "agent/list.h"
#include "agent/log.h"
#include "agent/progress.h"
#include "agent/verb.h"

static const char *const usage_api =
        "Usage: nbsnap create-image [--name NAME] [--namespace NS] [--tag TAG] [--description TEXT]\n"
        "                           [--workspace-id ID] [--exclude PATH]... [--wait] [--socket PATH]\n"
        "       nbsnap status IMAGE_ID [--wait] [--socket PATH]\n"
        "       nbsnap list [--status STATUS] [--limit N] [--offset N] [--socket PATH]\n"
        "       nbsnap delete IMAGE_ID [--socket PATH]\n"
        "       nbsnap cancel IMAGE_ID [--socket PATH]\n"
        "\n"
        "Talk to nbsnapd, the agent, over its unix socket and print the JSON its API returns on stdout.\n"
        "create-image asks for a save of this instance (POST "
        "/v1/{project_id}/notebooks/{id}/create-image);\n"
        "the agent answers at once with the image object (status INIT) and saves in the background. Fields\n"
        "left out get the agent's defaults: namespace from its config, name from the base image, tag = UTC\n"
        "time YYYYMMDDHHMMSS, workspace \"0\". status shows one image, list a page of them (ListImage:\n"
        "{\"current\", \"data\", \"pages\", \"size\", \"total\"}, newest first).\n"
        "delete and cancel are the same request (DELETE /v1/{project_id}/images/{id}): a save that runs\n"
        "(INIT, CREATING) is cancelled, nothing is tagged and the image is DELETED at once; an ACTIVE "
        "image\n"
        "is deleted from the registry; a failed one only changes its status to DELETED.\n"
        "\n"
        "  --socket PATH       the agent's socket (also accepted before the command: nbsnap --socket PATH\n"
        "                      status ID); default: the first listen = unix:PATH of nbsnapd's config file\n"
        "                      (" NB_CONFIG_DEFAULT_PATH ", or $NBSNAP_CONFIG), else " NB_DEFAULT_SOCKET "\n"
        "  --exclude PATH      create-image: a container path (absolute) left out of this save besides the\n"
        "                      agent's configured excludes (repeatable, at most 64: exclude_paths)\n"
        "  --wait              follow the save (a progress bar on a terminal) until it ends; exit 0 when "
        "the\n"
        "                      image is ACTIVE, 1 when it is CREATE_FAILED, ERROR or\n"
        "                      DELETED (cancelled)\n"
        "  --status STATUS     list only images in STATUS (INIT CREATING ACTIVE CREATE_FAILED ERROR "
        "DELETED)\n"
        "  --limit N           list at most N images (1-1000, default 200)\n"
        "  --offset N          skip the first N matching images (default 0)\n"
        "  --project-id ID, --notebook-id ID\n"
        "                      the instance's ids (default: asked from the agent)\n"
        "\n"
        "Exit status: 0 success, 1 the API answered an error or the save failed, 2 usage, 3 the agent "
        "cannot\n"
        "be reached.\n"
        "\n"
        "Examples: nbsnap create-image --name my-env --tag v1 --wait; nbsnap status IMAGE_ID --wait\n";

enum {
        API_SOCKET = 0x200,
        API_WAIT,
        API_STATUS,
        API_PROJECT,
        API_NOTEBOOK,
        API_NAME,
        API_NAMESPACE,
        API_TAG,
        API_DESCRIPTION,
        API_WORKSPACE,
        API_LIMIT,
        API_OFFSET,
        API_EXCLUDE,
};

static const struct option api_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"socket", required_argument, NULL, API_SOCKET},
        {"wait", no_argument, NULL, API_WAIT},
        {"status", required_argument, NULL, API_STATUS},
        {"project-id", required_argument, NULL, API_PROJECT},
        {"notebook-id", required_argument, NULL, API_NOTEBOOK},
        {"name", required_argument, NULL, API_NAME},
        {"namespace", required_argument, NULL, API_NAMESPACE},
        {"tag", required_argument, NULL, API_TAG},
        {"description", required_argument, NULL, API_DESCRIPTION},
        {"workspace-id", required_argument, NULL, API_WORKSPACE},
        {"limit", required_argument, NULL, API_LIMIT},
        {"offset", required_argument, NULL, API_OFFSET},
        {"exclude", required_argument, NULL, API_EXCLUDE},
        {},
};

typedef struct ApiArgs {
        const char *socket, *status, *project, *notebook;
        const char *limit, *offset; /* list: checked by nb_list_query_set() */
        const char *fields[5];      /* name, namespace, tag, description, workspace_id */
        const char *excludes[NB_EXCLUDE_PATHS_MAX];
        size_t n_excludes;
        const char *id;
        bool wait;
} ApiArgs;

static const char *const api_field_names[] = {"name", "namespace", "tag", "description", "workspace_id"};

/* cmd: 'c' create-image, 's' status, 'l' list, 'd' delete or cancel. Returns 1 to run, 0 after --help,
 * negative on a usage error. */
static int parse_api_args(int argc, char **argv, char cmd, ApiArgs *a)
{
        int c;
        a->socket = arg_socket;
        while ((c = getopt_long(argc, argv, "h", api_options, NULL)) >= 0) {
                bool ok = true;
                switch (c) {
                case 'h':
                        fputs(usage_api, stdout);
                        return 0;
                case API_SOCKET:
                        a->socket = optarg;
                        break;
                case API_WAIT:
                        a->wait = true;
                        ok = cmd == 'c' || cmd == 's';
                        break;
                case API_STATUS:
                        a->status = optarg;
                        ok = cmd == 'l';
                        break;
                case API_LIMIT:
                        a->limit = optarg;
                        ok = cmd == 'l';
                        break;
                case API_OFFSET:
                        a->offset = optarg;
                        ok = cmd == 'l';
                        break;
                case API_PROJECT:
                        a->project = optarg;
                        break;
                case API_NOTEBOOK:
                        a->notebook = optarg;
                        break;
                case API_NAME:
                case API_NAMESPACE:
                case API_TAG:
                case API_DESCRIPTION:
                case API_WORKSPACE:
                        a->fields[c - API_NAME] = optarg;
                        ok = cmd == 'c';
                        break;
                case API_EXCLUDE:
                        ok = cmd == 'c';
                        if (ok && a->n_excludes >= NB_EXCLUDE_PATHS_MAX) {
                                fprintf(stderr, "nbsnap create-image: at most %d --exclude paths\n",
                                        NB_EXCLUDE_PATHS_MAX);
                                return -E2BIG;
                        }
                        if (ok)
                                a->excludes[a->n_excludes++] = optarg;
                        break;
                default:
                        ok = false;
                        break;
                }
                if (!ok) {
                        fprintf(stderr, "Try 'nbsnap %s --help'.\n", argv[0]);
                        return -EINVAL;
                }
        }
        bool one = cmd == 's' || cmd == 'd';
        if (one && optind < argc)
                a->id = argv[optind++];
        if (one && !a->id) {
                fprintf(stderr, "nbsnap %s: an image id is required\n", argv[0]);
                return -EINVAL;
        }
        if (optind < argc) {
                fprintf(stderr, "nbsnap: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

/* No --socket: the socket nbsnapd's config file names, else the default. The CLI runs where the config may
 * be missing or unreadable to its user: that is said at debug level only (NBSNAP_LOG_LEVEL=debug); a file
 * that is there but is not a valid config gets a warning (the daemon would refuse it too). */
static const char *default_socket(char **buf)
{
        const char *path = nb_config_default_path();
        NbError e = {0};
        int r = nb_config_socket(path, buf, &e);
        if (r > 0) {
                log_debug("socket %s, from the config file %s", *buf, path);
                return *buf;
        }
        if (r == 0)
                log_debug("the config file %s names no unix socket: using %s", path, NB_DEFAULT_SOCKET);
        else if (r == -ENOENT || r == -EACCES || r == -EPERM || r == -EISDIR || r == -ENOTDIR)
                log_debug("%s: using %s", e.msg, NB_DEFAULT_SOCKET);
        else
                log_warning("%s; using the socket %s, ignoring the file", e.msg, NB_DEFAULT_SOCKET);
        return NB_DEFAULT_SOCKET;
}

/* A URL path component: nothing that would change the path or the query. */
static bool path_component_ok(const char *s)
{
        size_t n = strlen(s);
        return n > 0 && n <= NB_ID_MAX && !strpbrk(s, "/?#% \t\r\n") && strcmp(s, ".") != 0 &&
               strcmp(s, "..") != 0;
}

/* The project and notebook ids: given, or asked from the agent (GET /health). */
static int api_ids(ApiArgs *a, char **ret_project, char **ret_notebook)
{
        if (a->project && a->notebook) {
                *ret_project = strdup(a->project);
                *ret_notebook = strdup(a->notebook);
        } else {
                NbResponse r = {0};
                NbError e = {0};
                if (nb_client_request(a->socket, "GET", "/health", NULL, &r, &e) < 0) {
                        fprintf(stderr, "nbsnap: %s\n", e.msg);
                        return 3;
                }
                _cleanup_cjson_ cJSON *j = cJSON_Parse(r.body);
                const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "project_id");
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "notebook_id");
                if (!cJSON_IsString(p) || !cJSON_IsString(n)) {
                        fprintf(stderr, "nbsnap: the agent on %s did not say its ids (HTTP %ld): %s\n",
                                a->socket, r.status, r.body);
                        nb_response_done(&r);
                        return 1;
                }
                *ret_project = strdup(a->project ? a->project : p->valuestring);
                *ret_notebook = strdup(a->notebook ? a->notebook : n->valuestring);
                nb_response_done(&r);
        }
        if (!*ret_project || !*ret_notebook || !path_component_ok(*ret_project) ||
            !path_component_ok(*ret_notebook)) {
                fprintf(stderr, "nbsnap: bad project or notebook id\n");
                return 2;
        }
        return 0;
}

static int print_response(const NbResponse *r)
{
        fputs(r->body, stdout);
        if (r->size == 0 || r->body[r->size - 1] != '\n')
                fputc('\n', stdout);
        if (fflush(stdout) != 0)
                return 1;
        return r->status >= 200 && r->status < 300 ? 0 : 1;
}

/* "packing and uploading layer: 45% (...)" -> 45 */
static int message_percent(const char *msg)
{
        for (const char *p = msg ? strchr(msg, '%') : NULL; p; p = strchr(p + 1, '%')) {
                const char *d = p;
                while (d > msg && d[-1] >= '0' && d[-1] <= '9')
                        d--;
                if (d < p && p - d <= 3)
                        return (int)strtol(d, NULL, 10);
        }
        return -1;
}

/* The bar, the percent, the rate and the time left of the image's `progress` (the percent of status_message
 * from an agent without it), then status_message. */
static void draw_bar(const char *status, const cJSON *progress, const char *msg)
{
        const cJSON *pc = cJSON_GetObjectItemCaseSensitive(progress, "percent");
        const cJSON *bps = cJSON_GetObjectItemCaseSensitive(progress, "bytes_per_second");
        const cJSON *eta = cJSON_GetObjectItemCaseSensitive(progress, "eta_seconds");
        int pct = cJSON_IsNumber(pc) && pc->valuedouble >= 0 && pc->valuedouble <= 100
                          ? (int)pc->valuedouble
                          : message_percent(msg);
        char rate_s[32], eta_s[32];
        nb_progress_rate_format(cJSON_IsNumber(bps) ? bps->valuedouble : 0, rate_s);
        nb_progress_eta_format(cJSON_IsNumber(eta) && eta->valuedouble < (double)NB_ETA_MAX_SEC
                                       ? (int64_t)eta->valuedouble
                                       : -1,
                               eta_s);
        char bar[31];
        int fill = pct < 0 ? 0 : pct * 30 / 100;
        for (int i = 0; i < 30; i++)
                bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        char line[256];
        snprintf(line, sizeof(line), "%-8s [%s] %3d%% %11s %-10s %s", status, bar, pct < 0 ? 0 : pct, rate_s,
                 eta_s, msg ? msg : "");
        fprintf(stderr, "\r\033[K%.*s", 150, line);
}

#define NB_WAIT_POLL_US         500000
#define NB_WAIT_UNREACHABLE_MAX 60 /* polls in a row without an answer before giving up */

/* Follows GET /v1/{p}/images/{id} until the image leaves INIT/CREATING; prints it. */
static int wait_for_image(const ApiArgs *a, const char *project, const char *id)
{
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "/v1/%s/images/%s", project, id) < 0)
                return 1;
        bool tty = isatty(STDERR_FILENO);
        unsigned unreachable = 0;
        for (;;) {
                NbResponse r = {0};
                NbError e = {0};
                if (nb_client_request(a->socket, "GET", path, NULL, &r, &e) < 0) {
                        if (++unreachable >= NB_WAIT_UNREACHABLE_MAX) {
                                if (tty)
                                        fputs("\r\033[K", stderr);
                                fprintf(stderr, "nbsnap: %s\n", e.msg);
                                return 3;
                        }
                        usleep(NB_WAIT_POLL_US);
                        continue;
                }
                unreachable = 0;
                _cleanup_cjson_ cJSON *j = cJSON_Parse(r.body);
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
                const cJSON *msg = cJSON_GetObjectItemCaseSensitive(j, "status_message");
                NbStatus s = cJSON_IsString(st) ? nb_status_from_string(st->valuestring) : _NB_STATUS_MAX;
                if (r.status != 200 || s == _NB_STATUS_MAX ||
                    (s != NB_STATUS_INIT && s != NB_STATUS_CREATING)) {
                        if (tty)
                                fputs("\r\033[K", stderr);
                        int rc = print_response(&r);
                        nb_response_done(&r);
                        return rc == 0 && s == NB_STATUS_ACTIVE ? 0 : 1;
                }
                if (tty)
                        draw_bar(st->valuestring, cJSON_GetObjectItemCaseSensitive(j, "progress"),
                                 cJSON_IsString(msg) ? msg->valuestring : "");
                nb_response_done(&r);
                usleep(NB_WAIT_POLL_US);
        }
}

static int cmd_create_image(const ApiArgs *a, const char *project, const char *notebook)
{
        _cleanup_cjson_ cJSON *body = cJSON_CreateObject();
        for (size_t i = 0; body && i < ELEMENTSOF(api_field_names); i++)
                if (a->fields[i] && !cJSON_AddStringToObject(body, api_field_names[i], a->fields[i]))
                        return 1;
        if (body && a->n_excludes > 0) {
                cJSON *x = cJSON_AddArrayToObject(body, "exclude_paths");
                for (size_t i = 0; x && i < a->n_excludes; i++)
                        if (!cJSON_AddItemToArray(x, cJSON_CreateString(a->excludes[i])))
                                return 1;
                if (!x)
                        return 1;
        }
        _cleanup_free_ char *json = body ? cJSON_PrintUnformatted(body) : NULL, *path = NULL;
        if (!json || asprintf(&path, "/v1/%s/notebooks/%s/create-image", project, notebook) < 0)
                return 1;
        NbResponse r = {0};
        NbError e = {0};
        if (nb_client_request(a->socket, "POST", path, json, &r, &e) < 0) {
                fprintf(stderr, "nbsnap: %s\n", e.msg);
                return 3;
        }
        _cleanup_cjson_ cJSON *j = cJSON_Parse(r.body);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        if (!a->wait || r.status != 200 || !cJSON_IsString(id) || !path_component_ok(id->valuestring)) {
                int rc = print_response(&r);
                nb_response_done(&r);
                return rc;
        }
        nb_response_done(&r);
        return wait_for_image(a, project, id->valuestring);
}

/* The --limit, --offset and --status values, checked here as the agent would (agent/list.h), so that a bad
 * one is a usage error. */
static int list_args_check(const ApiArgs *a)
{
        const char *const keys[] = {"limit", "offset", "status"};
        const char *const values[] = {a->limit, a->offset, a->status};
        NbListQuery q;
        nb_list_query_init(&q);
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                NbError e = {0};
                if (values[i] && nb_list_query_set(&q, keys[i], values[i], &e) < 0) {
                        nb_list_query_done(&q);
                        fprintf(stderr, "nbsnap list: --%s: %s\n", keys[i], e.msg);
                        return -EINVAL;
                }
        }
        nb_list_query_done(&q);
        return 0;
}

/* "/v1/{project}/images[?status=S&limit=N&offset=N]" */
static int list_path(const ApiArgs *a, const char *project, char **ret)
{
        const char *const keys[] = {"status", "limit", "offset"};
        const char *const values[] = {a->status, a->limit, a->offset};
        char query[256] = "";
        size_t len = 0;
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                if (!values[i])
                        continue;
                int n = snprintf(query + len, sizeof(query) - len, "%c%s=%s", len ? '&' : '?', keys[i],
                                 values[i]);
                if (n < 0 || (size_t)n >= sizeof(query) - len)
                        return -EINVAL;
                len += (size_t)n;
        }
        return asprintf(ret, "/v1/%s/images%s", project, query) < 0 ? -ENOMEM : 0;
}

/* DELETE /v1/{p}/images/{id}: the answer on stdout; an error answer's code and message on stderr too. */
static int cmd_delete(const ApiArgs *a, const char *verb, const char *project)
{
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "/v1/%s/images/%s", project, a->id) < 0)
                return 1;
        NbResponse r = {0};
        NbError e = {0};
        if (nb_client_request(a->socket, "DELETE", path, NULL, &r, &e) < 0) {
                fprintf(stderr, "nbsnap: %s\n", e.msg);
                return 3;
        }
        int rc = print_response(&r);
        if (r.status < 200 || r.status >= 300) {
                _cleanup_cjson_ cJSON *j = cJSON_Parse(r.body);
                const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "error_code");
                const cJSON *msg = cJSON_GetObjectItemCaseSensitive(j, "error_msg");
                fprintf(stderr, "nbsnap %s: %s: %s\n", verb,
                        cJSON_IsString(code) ? code->valuestring : "error",
                        cJSON_IsString(msg) ? msg->valuestring : "the agent answered an error");
        }
        nb_response_done(&r);
        return rc;
}

int verb_api(int argc, char **argv, char cmd)
{
        ApiArgs a = {0};
        int r = parse_api_args(argc, argv, cmd, &a);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        if (cmd == 'l' && list_args_check(&a) < 0)
                return 2;
        if (a.id && !path_component_ok(a.id)) {
                fprintf(stderr, "nbsnap %s: '%s' is not an image id\n", argv[0], a.id);
                return 2;
        }
        _cleanup_free_ char *socket_buf = NULL;
        if (a.socket && !a.socket[0]) {
                fprintf(stderr, "nbsnap: --socket needs a path\n");
                return 2;
        }
        if (!a.socket)
                a.socket = default_socket(&socket_buf);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        _cleanup_free_ char *project = NULL, *notebook = NULL;
        r = api_ids(&a, &project, &notebook);
        if (r != 0)
                return r;
        if (cmd == 'c')
                return cmd_create_image(&a, project, notebook);
        if (cmd == 'd')
                return cmd_delete(&a, argv[0], project);
        if (cmd == 's' && a.wait)
                return wait_for_image(&a, project, a.id);
        _cleanup_free_ char *path = NULL;
        if (cmd == 's' ? asprintf(&path, "/v1/%s/images/%s", project, a.id) < 0
                       : list_path(&a, project, &path) < 0)
                return 1;
        NbResponse resp = {0};
        NbError e = {0};
        if (nb_client_request(a.socket, "GET", path, NULL, &resp, &e) < 0) {
                fprintf(stderr, "nbsnap: %s\n", e.msg);
                return 3;
        }
        int rc = print_response(&resp);
        nb_response_done(&resp);
        return rc;
}
