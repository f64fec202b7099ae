/* verb-save.c: nbsnap baseline and nbsnap save, run in this process: their options (shared, one parser),
 * their help, the progress line on stderr. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/chain.h"
#include "agent/progress.h"
#include "agent/save.h"
#include "agent/verb.h"
#include "common/clock.h"
#include "common/size.h"
#include "common/uuid.h"
#include "snapshot/snapshot.h"

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
        "credentials.\n"
        "\n"
        "Example: nbsnap baseline --root / --state-dir /var/lib/nbsnap\n";

static const char *const usage_save =
        "Usage: nbsnap save --root DIR --state-dir DIR --registry URL --base-image REPO[:TAG|@DIGEST]\n"
        "                   --namespace NS --name NAME --tag TAG [--description TEXT] [--exclude PATH]...\n"
        "                   [--workspace-id ID] [--authfile FILE] [--ca-file FILE] [--threads N]\n"
        "                   [--compression gzip|zstd] [--level N] [--max-image-size SIZE]\n"
        "                   [--max-layer-size SIZE] [--incremental] [--max-layers N]\n"
        "                   [--chain-waste-max PERCENT] [--overwrite]\n"
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
        "  --chunk-size BYTES    registry upload PATCH size (default 8 MiB; kept within 64 KiB-512 MiB)\n"
        "  --compression ALGO    gzip (default: every runtime pulls it) or zstd (level 3: ~16 % smaller\n"
        "                        than gzip level 1 for ~2.4x the CPU; needs containerd >= 1.5,\n"
        "                        podman/CRI-O or Docker >= 23 to pull; a Docker schema2 base is then\n"
        "                        written as an OCI image)\n"
        "  --level N             level of that compressor: gzip 0-9 (default 1: ISA-L's fastest, within a\n"
        "                        few % of gzip -6), zstd 1-19 (default 3)\n"
        "  --max-image-size SIZE fail, before anything is uploaded, when the files that changed come to\n"
        "                        more than SIZE bytes (uncompressed; K, M, G, T are powers of 1024;\n"
        "                        default 0: no limit); the message names the largest directories\n"
        "  --max-layer-size SIZE no layer blob pushed is larger (default 10G, at least 1M): a bigger\n"
        "                        change is cut into several layers; a file that cannot fit in one\n"
        "                        fails the save before anything is uploaded\n"
        "  --incremental         build on this notebook's last save when its image is still in the\n"
        "                        registry: one layer of what changed since then (STATE-DIR/last-save.json\n"
        "                        says which); otherwise, or when a rule below says so, a full save\n"
        "  --max-layers N        the image never has more layers (2-1000, default 125: docker's limit); a\n"
        "                        chain that would exceed it is saved in full on the base image\n"
        "  --chain-waste-max PERCENT\n"
        "                        a full save instead of an incremental one when the files deleted or\n"
        "                        replaced since the chain began would exceed PERCENT of the bytes in its\n"
        "                        layers (0-100, default 25)\n"
        "  --overwrite           replace NS/NAME:TAG when the registry already has it; without it such a\n"
        "                        save fails before anything is uploaded (so does one whose registry\n"
        "                        cannot say whether the tag exists)\n"
        "\n"
        "Never saved: /proc /sys /dev /run, every mount point below the root, the state dir, the "
        "credentials\n"
        "file, and --exclude paths. A file whose name starts with .wh. fails the save (runtimes would read "
        "it as\n"
        "a deletion); sockets are skipped with a note.\n"
        "\n"
        "Example: nbsnap save --root / --state-dir /var/lib/nbsnap --registry https://swr.example.com \\\n"
        "             --base-image team/pytorch:1.8 --namespace team --name my-env --tag v1\n";

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
        OPT_MAX_IMAGE_SIZE,
        OPT_MAX_LAYER_SIZE,
        OPT_INCREMENTAL,
        OPT_MAX_LAYERS,
        OPT_CHAIN_WASTE_MAX,
        OPT_OVERWRITE,
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
        {"max-image-size", required_argument, NULL, OPT_MAX_IMAGE_SIZE},
        {"max-layer-size", required_argument, NULL, OPT_MAX_LAYER_SIZE},
        {"incremental", no_argument, NULL, OPT_INCREMENTAL},
        {"max-layers", required_argument, NULL, OPT_MAX_LAYERS},
        {"chain-waste-max", required_argument, NULL, OPT_CHAIN_WASTE_MAX},
        {"overwrite", no_argument, NULL, OPT_OVERWRITE},
        {"mountinfo", required_argument, NULL, OPT_MOUNTINFO}, /* tests: another mount table */
        {},
};

typedef struct Args {
        NbSaveOptions save;
        bool force;
        const char *excludes[NB_EXCLUDES_MAX];
} Args;

static int parse_uint(const char *s, const char *flag, unsigned long min, unsigned long max,
                      unsigned long *ret)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || v < min || v > max || s[0] == '-') {
                fprintf(stderr, "nbsnap: %s takes a number from %lu to %lu, not '%s'\n", flag, min, max, s);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_size(const char *s, const char *flag, uint64_t *ret)
{
        int r = nb_size_parse(s, ret);
        if (r < 0)
                fprintf(stderr,
                        "nbsnap: %s takes a size (a number of bytes, or with K, M, G or T), not '%s'%s\n",
                        flag, s, r == -ERANGE ? " (too large)" : "");
        return r;
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
        o->chain_waste_max = -1;
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
                        if (parse_uint(optarg, "--threads", 0, 256, &v) < 0)
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
                case OPT_MAX_IMAGE_SIZE:
                        if (parse_size(optarg, "--max-image-size", &o->max_image_size) < 0)
                                return -EINVAL;
                        break;
                case OPT_MAX_LAYER_SIZE:
                        if (parse_size(optarg, "--max-layer-size", &o->max_layer_size) < 0)
                                return -EINVAL;
                        if (o->max_layer_size < NB_LAYER_SIZE_MIN) {
                                fprintf(stderr, "nbsnap: --max-layer-size must be at least 1M, not '%s'\n",
                                        optarg);
                                return -EINVAL;
                        }
                        break;
                case OPT_INCREMENTAL:
                        o->incremental = true;
                        break;
                case OPT_OVERWRITE:
                        o->overwrite = true;
                        break;
                case OPT_MAX_LAYERS:
                        if (parse_uint(optarg, "--max-layers", NB_LAYERS_MIN, NB_LAYERS_MAX, &v) < 0)
                                return -EINVAL;
                        o->max_layers = (unsigned)v;
                        break;
                case OPT_CHAIN_WASTE_MAX:
                        if (parse_uint(optarg, "--chain-waste-max", 0, NB_CHAIN_WASTE_MAX, &v) < 0)
                                return -EINVAL;
                        o->chain_waste_max = (int)v;
                        break;
                case OPT_CHUNK_SIZE:
                        if (parse_uint(optarg, "--chunk-size", 0, 1ul << 30, &v) < 0)
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

static int mkdir_state(const char *dir)
{
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                fprintf(stderr, "nbsnap: cannot create state dir %s: %m\n", dir);
                return -errno;
        }
        return 0;
}

int verb_baseline(int argc, char **argv)
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

/* Progress on stderr: one rewritten line on a terminal, plain lines (phase changes, every 5 s) otherwise;
 * the percent, rate and time left of agent/progress.h. */
typedef struct Progress {
        pthread_mutex_t lock;
        bool tty;
        NbPhase last_phase;
        time_t last_line;
        unsigned shown_percent; /* never goes back */
} Progress;

static void on_progress(void *userdata, const NbProgress *p)
{
        Progress *pr = userdata;
        pthread_mutex_lock(&pr->lock);
        time_t now = time(NULL);
        NbProgressView v;
        nb_progress_view(p, 0, pr->shown_percent, &v);
        pr->shown_percent = v.percent;
        char rate[32], eta[32];
        nb_progress_rate_format(v.rate, rate);
        nb_progress_eta_format(v.eta_sec, eta);
        uint64_t done = p->done < p->total ? p->done : p->total;
        if (pr->tty) {
                fprintf(stderr, "\r\033[K%-28s %3u%% %9.1f of %.1f MB %11s %-10s %9.1f MB sent",
                        nb_phase_to_string(p->phase), v.percent, done / 1e6, p->total / 1e6, rate, eta,
                        p->sent / 1e6);
        } else if (p->phase != pr->last_phase || now - pr->last_line >= 5) {
                fprintf(stderr,
                        "nbsnap: %s: %u%%, %.1f of %.1f MB packed, %s, %s, %" PRIu64
                        " entries, %.1f MB sent\n",
                        nb_phase_to_string(p->phase), v.percent, done / 1e6, p->total / 1e6, rate, eta,
                        p->entries, p->sent / 1e6);
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

static void on_warning(void *userdata, const char *message)
{
        Progress *pr = userdata;
        pthread_mutex_lock(&pr->lock);
        fprintf(stderr, "%snbsnap: warning: %s\n", pr->tty ? "\r\033[K" : "", message);
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

int verb_save(int argc, char **argv)
{
        Args a = {0};
        int r = parse_args(argc, argv, usage_save, &a);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        Progress pr = {.lock = PTHREAD_MUTEX_INITIALIZER, .tty = isatty(STDERR_FILENO), .last_phase = -1};
        a.save.overwrite_how = "give --overwrite";
        a.save.progress = on_progress;
        a.save.note = on_note;
        a.save.warning = on_warning;
        a.save.program = "nbsnap save";
        a.save.userdata = &pr;
        const NbImageNames names = {a.save.namespace, a.save.name, a.save.tag, a.save.description,
                                    a.save.workspace_id};
        _cleanup_nb_image_ NbImage *img = NULL;
        NbError e = {0};
        if (nb_image_new(&names, nb_now_ms(), &img) < 0) {
                fprintf(stderr, "nbsnap: out of memory\n");
                return 1;
        }
        r = nb_save(&a.save, img, &e);
        if (pr.tty)
                fputs("\r\033[K", stderr);
        if (r < 0)
                fprintf(stderr, "nbsnap: save failed: %s\n", e.msg);
        else
                fprintf(stderr, "nbsnap: saved %s (%s)\n", img->swr_path, img->manifest_digest);
        int w = print_image(img);
        return r < 0 || w < 0 ? 1 : 0;
}
