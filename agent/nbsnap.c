/* nbsnap: the command line. `baseline` records the root filesystem at container start; `save` packs what
 * changed since then into one layer and pushes base layers + that layer as a new image. `create-image`,
 * `status` and `list` ask nbsnapd (the agent) over its unix socket and print the JSON its API returns. */
#include <getopt.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <locale.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "common/uuid.h"
#include "common/clock.h"
#include "agent/agent-version.h"
#include "snapshot/snapshot.h"
#include "agent/client.h"
#include "agent/config.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot.h"
#include "agent/save.h"

static const char *const usage_main =
        "Usage: nbsnap COMMAND [OPTIONS]\n"
        "\n"
        "Save a running notebook container as a container image.\n"
        "\n"
        "Commands:\n"
        "  baseline   record the root filesystem as it is now (run once, at container start)\n"
        "  save       pack what changed since the baseline into one layer and push the image\n"
        "\n"
        "Through the agent (nbsnapd, on its unix socket):\n"
        "  create-image   ask the agent to save this instance as an image (prints the image object)\n"
        "  status ID      show one image; --wait follows the save until it ends\n"
        "  list           show the images saved from this instance, newest first\n"
        "\n"
        "Options:\n"
        "  -h, --help     show this help (nbsnap COMMAND --help for a command's options)\n"
        "  --version      show the version\n";

static const char *const usage_baseline =
        "Usage: nbsnap baseline --root DIR --state-dir DIR [--force] [--exclude PATH]...\n"
        "\n"
        "Records the stat data of every entry under --root into STATE-DIR/baseline, atomically. A baseline "
        "that\n"
        "already exists is kept (a restarted container must not forget the changes made before the "
        "restart)\n"
        "unless --force is given.\n"
        "\n"
        "  --root DIR        the container's root filesystem as this process sees it (\"/\" inside it)\n"
        "  --state-dir DIR   where the agent keeps its state (created 0700 when missing)\n"
        "  --force           record a new baseline even when one exists\n"
        "  --exclude PATH    a container path whose subtree is never recorded nor saved (repeatable)\n"
        "\n"
        "Never recorded: /proc /sys /dev /run, every mount point below the root (from "
        "/proc/self/mountinfo:\n"
        "work volumes, /etc/hosts and other bind mounts, /dev/shm ...), the state dir, registry "
        "credentials.\n";

static const char *const usage_save =
        "Usage: nbsnap save --root DIR --state-dir DIR --registry URL --base-image REPO[:TAG|@DIGEST]\n"
        "                   --namespace NS --name NAME --tag TAG [--description TEXT] [--exclude PATH]...\n"
        "                   [--workspace-id ID] [--authfile FILE] [--ca-file FILE] [--threads N]\n"
        "                   [--compression gzip|zstd] [--level N]\n"
        "\n"
        "Packs what changed under --root since the baseline into one OCI layer and pushes the image\n"
        "<registry host>/NS/NAME:TAG = the base image's layers (reused, never uploaded again) + that "
        "layer.\n"
        "Prints the image object of the CreateImage API on stdout: status ACTIVE and exit 0, or status\n"
        "CREATE_FAILED with status_message and exit 1. The tag is pushed last: a failed save never leaves "
        "it\n"
        "pointing at a half-pushed image. Progress goes to stderr.\n"
        "\n"
        "  --root DIR            the container's root filesystem\n"
        "  --state-dir DIR       where the baseline is (see nbsnap baseline)\n"
        "  --registry URL        https://HOST[:PORT], or http://HOST[:PORT] for a plain-http registry\n"
        "  --base-image REF      the image the container runs: REPO[:TAG|@DIGEST] on --registry, or\n"
        "                        HOST[:PORT]/REPO... on another registry (its layers are then copied)\n"
        "  --namespace NS        organization (SWR namespace)\n"
        "  --name NAME           image name: 1-512 of [a-z0-9._-]\n"
        "  --tag TAG             image tag: 1-64 of [A-Za-z0-9._-]\n"
        "  --description TEXT    up to 512 characters; kept as the history comment of the new layer\n"
        "  --workspace-id ID     workspace (default \"0\")\n"
        "  --exclude PATH        a container path left out of the image with its subtree (repeatable),\n"
        "                        e.g. /home/ma-user/.cache/pip\n"
        "  --authfile FILE       registry credentials (docker config.json format); default:\n"
        "                        $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json\n"
        "  --ca-file FILE        extra CA bundle; /etc/containers/certs.d/HOST[:PORT]/ is read too\n"
        "  --threads N           compression threads (default: all CPUs)\n"
        "  --compression ALGO    gzip (default: every runtime pulls it) or zstd (level 3: ~16 % smaller\n"
        "                        than gzip level 1 for ~2.4x the CPU; needs containerd >= 1.5,\n"
        "                        podman/CRI-O or Docker >= 23 to pull; a Docker schema2 base is then\n"
        "                        written as an OCI image)\n"
        "  --level N             level of that compressor: gzip 0-9 (default 1: ISA-L's fastest, within a\n"
        "                        few % of gzip -6), zstd 1-19 (default 3)\n"
        "\n"
        "Never saved: /proc /sys /dev /run, every mount point below the root, the state dir, the "
        "credentials\n"
        "file, and --exclude paths. A file whose name starts with .wh. fails the save (runtimes would read "
        "it as\n"
        "a deletion); sockets are skipped with a note.\n";

enum {
        OPT_ROOT = 0x100,
        OPT_STATE_DIR,
        OPT_FORCE,
        OPT_EXCLUDE,
        OPT_REGISTRY,
        OPT_BASE_IMAGE,
        OPT_NAMESPACE,
        OPT_NAME,
        OPT_TAG,
        OPT_DESCRIPTION,
        OPT_WORKSPACE_ID,
        OPT_AUTHFILE,
        OPT_CA_FILE,
        OPT_THREADS,
        OPT_LEVEL,
        OPT_COMPRESSION,
        OPT_CHUNK_SIZE,
        OPT_MOUNTINFO,
        OPT_VERSION,
};

static const struct option long_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {"root", required_argument, NULL, OPT_ROOT},
        {"state-dir", required_argument, NULL, OPT_STATE_DIR},
        {"force", no_argument, NULL, OPT_FORCE},
        {"exclude", required_argument, NULL, OPT_EXCLUDE},
        {"registry", required_argument, NULL, OPT_REGISTRY},
        {"base-image", required_argument, NULL, OPT_BASE_IMAGE},
        {"namespace", required_argument, NULL, OPT_NAMESPACE},
        {"name", required_argument, NULL, OPT_NAME},
        {"tag", required_argument, NULL, OPT_TAG},
        {"description", required_argument, NULL, OPT_DESCRIPTION},
        {"workspace-id", required_argument, NULL, OPT_WORKSPACE_ID},
        {"authfile", required_argument, NULL, OPT_AUTHFILE},
        {"ca-file", required_argument, NULL, OPT_CA_FILE},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"level", required_argument, NULL, OPT_LEVEL},
        {"compression", required_argument, NULL, OPT_COMPRESSION},
        {"chunk-size", required_argument, NULL, OPT_CHUNK_SIZE},
        {"mountinfo", required_argument, NULL, OPT_MOUNTINFO}, /* tests: another mount table */
        {},
};

typedef struct Args {
        NbSaveOptions save;
        bool force;
        const char *excludes[NB_EXCLUDES_MAX];
} Args;

static int parse_uint(const char *s, const char *flag, unsigned long max, unsigned long *ret)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || v > max || s[0] == '-') {
                fprintf(stderr, "nbsnap: %s takes a number from 0 to %lu, not '%s'\n", flag, max, s);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_level(const char *s, int *ret)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || v > 1000) {
                fprintf(stderr, "nbsnap: --level takes a number (gzip 0-%d, zstd 1-%d), not '%s'\n",
                        SNAP_GZIP_LEVEL_MAX, SNAP_ZSTD_LEVEL_MAX, s);
                return -EINVAL;
        }
        *ret = (int)v;
        return 0;
}

/* Returns 1 when the command should run, 0 after --help, negative on a usage error. */
static int parse_args(int argc, char **argv, const char *usage, Args *a)
{
        NbSaveOptions *o = &a->save;
        unsigned long v;
        int c;
        o->level = -1;
        while ((c = getopt_long(argc, argv, "h", long_options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        fputs(usage, stdout);
                        return 0;
                case OPT_ROOT:
                        o->root = optarg;
                        break;
                case OPT_STATE_DIR:
                        o->state_dir = optarg;
                        break;
                case OPT_FORCE:
                        a->force = true;
                        break;
                case OPT_EXCLUDE:
                        if (o->n_excludes >= NB_EXCLUDES_MAX) {
                                fprintf(stderr, "nbsnap: at most %d --exclude paths\n", NB_EXCLUDES_MAX);
                                return -E2BIG;
                        }
                        a->excludes[o->n_excludes++] = optarg;
                        break;
                case OPT_REGISTRY:
                        o->registry_url = optarg;
                        break;
                case OPT_BASE_IMAGE:
                        o->base_image = optarg;
                        break;
                case OPT_NAMESPACE:
                        o->namespace = optarg;
                        break;
                case OPT_NAME:
                        o->name = optarg;
                        break;
                case OPT_TAG:
                        o->tag = optarg;
                        break;
                case OPT_DESCRIPTION:
                        o->description = optarg;
                        break;
                case OPT_WORKSPACE_ID:
                        o->workspace_id = optarg;
                        break;
                case OPT_AUTHFILE:
                        o->authfile = optarg;
                        break;
                case OPT_CA_FILE:
                        o->ca_file = optarg;
                        break;
                case OPT_MOUNTINFO:
                        o->mountinfo = optarg;
                        break;
                case OPT_THREADS:
                        if (parse_uint(optarg, "--threads", 256, &v) < 0)
                                return -EINVAL;
                        o->threads = (unsigned)v;
                        break;
                case OPT_LEVEL: /* checked against the compressor below, whichever flag comes first */
                        if (parse_level(optarg, &o->level) < 0)
                                return -EINVAL;
                        break;
                case OPT_COMPRESSION:
                        if (snap_compression_from_string(optarg, &o->compression) < 0) {
                                fprintf(stderr, "nbsnap: --compression takes gzip or zstd, not '%s'\n",
                                        optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_CHUNK_SIZE:
                        if (parse_uint(optarg, "--chunk-size", 1ul << 30, &v) < 0)
                                return -EINVAL;
                        o->chunk_size = v;
                        break;
                default:
                        fprintf(stderr, "Try 'nbsnap %s --help'.\n", argv[0]);
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "nbsnap: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        NbError e = {0};
        if (snap_compression_level_check(o->compression, o->level, &e) < 0) {
                fprintf(stderr, "nbsnap: --level: %s\n", e.msg);
                return -EINVAL;
        }
        o->excludes = a->excludes;
        return 1;
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

static int mkdir_state(const char *dir)
{
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                fprintf(stderr, "nbsnap: cannot create state dir %s: %m\n", dir);
                return -errno;
        }
        return 0;
}

static int cmd_baseline(int argc, char **argv)
{
        Args a = {0};
        int r = parse_args(argc, argv, usage_baseline, &a);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        const NbSaveOptions *o = &a.save;
        if (!o->root || !o->state_dir) {
                fprintf(stderr, "nbsnap baseline: --root and --state-dir are required\n");
                return 2;
        }
        _cleanup_free_ char *root = realpath(o->root, NULL), *path = NULL;
        struct stat st;
        if (!root || stat(root, &st) < 0 || !S_ISDIR(st.st_mode)) {
                fprintf(stderr, "nbsnap baseline: root %s is not a directory\n", o->root);
                return 1;
        }
        if (mkdir_state(o->state_dir) < 0 || nb_baseline_path(o->state_dir, &path) < 0)
                return 1;
        if (!a.force && access(path, F_OK) == 0) {
                fprintf(stderr, "nbsnap: baseline %s exists and is kept (--force records a new one)\n",
                        path);
                return 0;
        }
        NbError e = {0};
        SnapExcludes *ex = NULL;
        r = nb_excludes_build(root, o->state_dir, NULL, o->excludes, o->n_excludes, o->mountinfo, &ex, &e);
        if (r < 0) {
                fprintf(stderr, "nbsnap baseline: %s\n", e.msg);
                return 1;
        }
        NbError se = {0};
        SnapBaselineStats stats;
        r = snap_baseline_write(root, ex, path, &stats, &se);
        snap_excludes_free(ex);
        if (r < 0) {
                fprintf(stderr, "nbsnap baseline: %s\n", se.msg);
                return 1;
        }
        fprintf(stderr, "nbsnap: baseline of %" PRIu64 " entries recorded in %s (%" PRIu64 " bytes)\n",
                stats.entries, path, stats.file_size);
        return 0;
}

/* Progress on stderr: one rewritten line on a terminal, plain lines (phase changes, every 5 s) otherwise. */
typedef struct Progress {
        pthread_mutex_t lock;
        bool tty;
        NbPhase last_phase;
        time_t last_line;
} Progress;

static void on_progress(void *userdata, const NbProgress *p)
{
        Progress *pr = userdata;
        pthread_mutex_lock(&pr->lock);
        time_t now = time(NULL);
        if (pr->tty) {
                fprintf(stderr, "\r\033[K%-28s %10" PRIu64 " entries %9.1f MB read %9.1f MB sent",
                        nb_phase_to_string(p->phase), p->entries, p->read / 1e6, p->sent / 1e6);
        } else if (p->phase != pr->last_phase || now - pr->last_line >= 5) {
                fprintf(stderr, "nbsnap: %s: %" PRIu64 " entries, %.1f MB read, %.1f MB sent\n",
                        nb_phase_to_string(p->phase), p->entries, p->read / 1e6, p->sent / 1e6);
                pr->last_line = now;
        }
        pr->last_phase = p->phase;
        pthread_mutex_unlock(&pr->lock);
}

static void on_note(void *userdata, const char *message)
{
        Progress *pr = userdata;
        pthread_mutex_lock(&pr->lock);
        fprintf(stderr, "%snbsnap: %s\n", pr->tty ? "\r\033[K" : "", message);
        pthread_mutex_unlock(&pr->lock);
}

static int print_image(const NbImage *img)
{
        _cleanup_free_ char *json = nb_image_to_string(img, true);
        if (!json)
                return -ENOMEM;
        printf("%s\n", json);
        return fflush(stdout) == 0 ? 0 : -errno;
}

static int cmd_save(int argc, char **argv)
{
        Args a = {0};
        int r = parse_args(argc, argv, usage_save, &a);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        Progress pr = {.lock = PTHREAD_MUTEX_INITIALIZER, .tty = isatty(STDERR_FILENO), .last_phase = -1};
        a.save.progress = on_progress;
        a.save.note = on_note;
        a.save.userdata = &pr;
        NbImage img = {.status = NB_STATUS_INIT};
        NbError e = {0};
        img.create_at = img.update_at = nb_now_ms();
        static const char *const dev_services[] = {"NOTEBOOK", "SSH", NULL};
        static const char *const categories[] = {"CPU", NULL};
        if (nb_uuid(img.id) < 0 || nb_image_set(&img.name, a.save.name) < 0 ||
            nb_image_set(&img.namespace, a.save.namespace) < 0 || nb_image_set(&img.tag, a.save.tag) < 0 ||
            nb_image_set(&img.description, a.save.description ? a.save.description : "") < 0 ||
            nb_image_set(&img.workspace_id, a.save.workspace_id ? a.save.workspace_id : "0") < 0 ||
            nb_image_set(&img.service_type, "UNKNOWN") < 0 || nb_image_set(&img.arch, "") < 0) {
                fprintf(stderr, "nbsnap: out of memory\n");
                return 1;
        }
        img.dev_services = calloc(3, sizeof(char *));
        img.resource_categories = calloc(2, sizeof(char *));
        for (size_t i = 0; img.dev_services && dev_services[i]; i++)
                img.dev_services[i] = strdup(dev_services[i]);
        for (size_t i = 0; img.resource_categories && categories[i]; i++)
                img.resource_categories[i] = strdup(categories[i]);
        r = nb_save(&a.save, &img, &e);
        if (pr.tty)
                fputs("\r\033[K", stderr);
        if (r < 0)
                fprintf(stderr, "nbsnap: save failed: %s\n", e.msg);
        else
                fprintf(stderr, "nbsnap: saved %s (%s)\n", img.swr_path, img.manifest_digest);
        int w = print_image(&img);
        nb_image_done(&img);
        return r < 0 || w < 0 ? 1 : 0;
}

/* ---- through the agent
 * ------------------------------------------------------------------------------------ */

static const char *const usage_api =
        "Usage: nbsnap create-image [--name NAME] [--namespace NS] [--tag TAG] [--description TEXT]\n"
        "                           [--workspace-id ID] [--wait] [--socket PATH]\n"
        "       nbsnap status IMAGE_ID [--wait] [--socket PATH]\n"
        "       nbsnap list [--status STATUS] [--socket PATH]\n"
        "\n"
        "Talk to nbsnapd, the agent, over its unix socket and print the JSON its API returns on stdout.\n"
        "create-image asks for a save of this instance (POST "
        "/v1/{project_id}/notebooks/{id}/create-image);\n"
        "the agent answers at once with the image object (status INIT) and saves in the background. Fields\n"
        "left out get the agent's defaults: namespace from its config, name from the base image, tag = UTC\n"
        "time YYYYMMDDHHMMSS, workspace \"0\". status shows one image, list all of them (newest first).\n"
        "\n"
        "  --socket PATH       the agent's socket (default " NB_DEFAULT_SOCKET ")\n"
        "  --wait              follow the save (a progress bar on a terminal) until it ends; exit 0 when "
        "the\n"
        "                      image is ACTIVE, 1 when it is CREATE_FAILED or ERROR\n"
        "  --status STATUS     list only images in STATUS (INIT CREATING ACTIVE CREATE_FAILED ERROR "
        "DELETED)\n"
        "  --project-id ID, --notebook-id ID\n"
        "                      the instance's ids (default: asked from the agent)\n"
        "\n"
        "Exit status: 0 success, 1 the API answered an error or the save failed, 2 usage, 3 the agent "
        "cannot\n"
        "be reached.\n";

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
        {},
};

typedef struct ApiArgs {
        const char *socket, *status, *project, *notebook;
        const char *fields[5]; /* name, namespace, tag, description, workspace_id */
        const char *id;
        bool wait;
} ApiArgs;

static const char *const api_field_names[] = {"name", "namespace", "tag", "description", "workspace_id"};

/* cmd: 'c' create-image, 's' status, 'l' list. Returns 1 to run, 0 after --help, negative on a usage error.
 */
static int parse_api_args(int argc, char **argv, char cmd, ApiArgs *a)
{
        int c;
        a->socket = NB_DEFAULT_SOCKET;
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
                        ok = cmd != 'l';
                        break;
                case API_STATUS:
                        a->status = optarg;
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
                default:
                        ok = false;
                        break;
                }
                if (!ok) {
                        fprintf(stderr, "Try 'nbsnap %s --help'.\n", argv[0]);
                        return -EINVAL;
                }
        }
        if (cmd == 's' && optind < argc)
                a->id = argv[optind++];
        if (cmd == 's' && !a->id) {
                fprintf(stderr, "nbsnap status: an image id is required\n");
                return -EINVAL;
        }
        if (optind < argc) {
                fprintf(stderr, "nbsnap: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

static void cjson_deletep(cJSON **j)
{
        cJSON_Delete(*j);
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
                _cleanup_(cjson_deletep) cJSON *j = cJSON_Parse(r.body);
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

static void draw_bar(const char *status, const char *msg)
{
        int pct = message_percent(msg);
        char bar[31];
        int fill = pct < 0 ? 0 : pct * 30 / 100;
        for (int i = 0; i < 30; i++)
                bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        char line[160];
        snprintf(line, sizeof(line), "%-8s [%s] %3d%% %s", status, bar, pct < 0 ? 0 : pct, msg ? msg : "");
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
                _cleanup_(cjson_deletep) cJSON *j = cJSON_Parse(r.body);
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
                        draw_bar(st->valuestring, cJSON_IsString(msg) ? msg->valuestring : "");
                nb_response_done(&r);
                usleep(NB_WAIT_POLL_US);
        }
}

static int cmd_create_image(const ApiArgs *a, const char *project, const char *notebook)
{
        _cleanup_(cjson_deletep) cJSON *body = cJSON_CreateObject();
        for (size_t i = 0; body && i < ELEMENTSOF(api_field_names); i++)
                if (a->fields[i] && !cJSON_AddStringToObject(body, api_field_names[i], a->fields[i]))
                        return 1;
        _cleanup_free_ char *json = body ? cJSON_PrintUnformatted(body) : NULL, *path = NULL;
        if (!json || asprintf(&path, "/v1/%s/notebooks/%s/create-image", project, notebook) < 0)
                return 1;
        NbResponse r = {0};
        NbError e = {0};
        if (nb_client_request(a->socket, "POST", path, json, &r, &e) < 0) {
                fprintf(stderr, "nbsnap: %s\n", e.msg);
                return 3;
        }
        _cleanup_(cjson_deletep) cJSON *j = cJSON_Parse(r.body);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        if (!a->wait || r.status != 200 || !cJSON_IsString(id) || !path_component_ok(id->valuestring)) {
                int rc = print_response(&r);
                nb_response_done(&r);
                return rc;
        }
        nb_response_done(&r);
        return wait_for_image(a, project, id->valuestring);
}

static int cmd_api(int argc, char **argv, char cmd)
{
        ApiArgs a = {0};
        int r = parse_api_args(argc, argv, cmd, &a);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        if (a.status && nb_status_from_string(a.status) == _NB_STATUS_MAX) {
                fprintf(stderr, "nbsnap list: --status takes one of INIT CREATING ACTIVE CREATE_FAILED "
                                "ERROR DELETED\n");
                return 2;
        }
        if (a.id && !path_component_ok(a.id)) {
                fprintf(stderr, "nbsnap status: '%s' is not an image id\n", a.id);
                return 2;
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        _cleanup_free_ char *project = NULL, *notebook = NULL;
        r = api_ids(&a, &project, &notebook);
        if (r != 0)
                return r;
        if (cmd == 'c')
                return cmd_create_image(&a, project, notebook);
        if (cmd == 's' && a.wait)
                return wait_for_image(&a, project, a.id);
        _cleanup_free_ char *path = NULL;
        if (cmd == 's' ? asprintf(&path, "/v1/%s/images/%s", project, a.id) < 0
                       : asprintf(&path, "/v1/%s/images%s%s", project, a.status ? "?status=" : "",
                                  a.status ? a.status : "") < 0)
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

int main(int argc, char **argv)
{
        setlocale(LC_ALL, "C.UTF-8");
        raise_fd_limit();
        if (argc < 2) {
                fputs(usage_main, stderr);
                return 2;
        }
        const char *cmd = argv[1];
        if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
                fputs(usage_main, stdout);
                return 0;
        }
        if (strcmp(cmd, "--version") == 0) {
                printf("nbsnap %s (gzip: %s, zstd: %s)\n", nbsnap_version(),
                       snap_compression_engine(SNAP_COMPRESSION_GZIP),
                       snap_compression_engine(SNAP_COMPRESSION_ZSTD));
                return 0;
        }
        if (strcmp(cmd, "baseline") == 0)
                return cmd_baseline(argc - 1, argv + 1);
        if (strcmp(cmd, "save") == 0)
                return cmd_save(argc - 1, argv + 1);
        if (strcmp(cmd, "create-image") == 0)
                return cmd_api(argc - 1, argv + 1, 'c');
        if (strcmp(cmd, "status") == 0)
                return cmd_api(argc - 1, argv + 1, 's');
        if (strcmp(cmd, "list") == 0)
                return cmd_api(argc - 1, argv + 1, 'l');
        fprintf(stderr, "nbsnap: unknown command '%s'\n%s", cmd, usage_main);
        return 2;
}
