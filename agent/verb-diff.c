/* verb-diff.c: nbsnap diff, the preview of a save: what the next save would pack, one line per entry (A
 * added, C changed, D deleted, as `docker diff` prints them) in the order the save writes them, then a
 * summary (entries by kind, the file content bytes, the largest directories), or the same as one JSON
 * document.
 *
 * It runs the save's own counting pass (snap_diff_preview(): the same baseline, the same excludes and mount
 * points, the same merge-join) and writes nothing: no state dir change, no record, no temporary file.
 *
 * Which base: what the next save diffs against. When the state dir holds the last save of a chain
 * (last-save.json, chain.h) whose record can be read and whose excluded paths are the ones given now, an
 * incremental save packs what changed since that record, and so does the preview. Otherwise, or with
 * --full, the container-start baseline, which a full save diffs against. Whether the chain is still usable
 * in the end (its image still in the registry, the base image unchanged, the layer and waste limits) only
 * the registry and the save's options can say; the preview never contacts the registry, and says on stderr
 * (and in the JSON) which base it used. --config takes what nbsnapd's saves are given (job.c) from its
 * config file, so that the excluded paths, and with them the choice of base, are the daemon's. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "agent/chain.h"
#include "agent/config.h"
#include "agent/job.h"
#include "agent/json.h"
#include "agent/save.h"
#include "agent/verb.h"
#include "common/size.h"
#include "snapshot/snapshot.h"

static const char *const usage_diff =
        "Usage: nbsnap diff --root DIR --state-dir DIR [--exclude PATH]... [--authfile FILE] [--json] "
        "[--full]\n"
        "       nbsnap diff --config FILE [--exclude PATH]... [--json] [--full]\n"
        "\n"
        "Shows what the next save would pack, without packing or writing anything: one line per entry in\n"
        "the order the save writes them, A (added), C (changed: content, metadata or type; a directory\n"
        "deleted and recreated) or D (deleted: the top-most path only), then a summary: the entries by "
        "kind,\n"
        "the bytes of file content a save would pack (uncompressed) and the largest directories by those\n"
        "bytes.\n"
        "\n"
        "  --root DIR        the container's root filesystem\n"
        "  --state-dir DIR   where the baseline is (see nbsnap baseline)\n"
        "  --exclude PATH    a container path left out, with its subtree (repeatable): give the ones the\n"
        "                    save is given\n"
        "  --authfile FILE   the registry credentials nbsnap save is given (left out when inside the root)\n"
        "  --config FILE     preview what nbsnapd saves: root, state_dir, exclude=, authfile and the "
        "agent's\n"
        "                    secrets inside the root (token_file, tls_key) from its config file (e.g.\n"
        "                    " NB_CONFIG_DEFAULT_PATH "); --root and --state-dir still win\n"
        "  --json            print one JSON document instead: {\"base\", \"entries\", \"summary\"}\n"
        "  --full            compare with the container-start baseline, as a full save does\n"
        "\n"
        "Compared with: the record of the last save, when the state dir has one made with the same\n"
        "excluded paths and room for one more layer (what an incremental save packs: --incremental,\n"
        "nbsnapd's default); otherwise the container-start baseline. stderr names the one used. The\n"
        "registry is not asked whether the last save's image is still there: when it is gone, the save\n"
        "is a full one.\n"
        "\n"
        "Exit status: 0 success, 1 the tree or the state dir cannot be read, 2 usage.\n"
        "\n"
        "Examples: nbsnap diff --root / --state-dir /var/lib/nbsnap --exclude /home/ma-user/data;\n"
        "          nbsnap diff --config " NB_CONFIG_DEFAULT_PATH " --json\n";

enum {
        OPT_ROOT = 0x100,
        OPT_STATE_DIR,
        OPT_EXCLUDE,
        OPT_JSON,
        OPT_FULL,
        OPT_AUTHFILE,
        OPT_CONFIG,
        OPT_MOUNTINFO,
};

static const struct option diff_options[] = {
        {"help", no_argument, NULL, 'h'},
        {"root", required_argument, NULL, OPT_ROOT},
        {"state-dir", required_argument, NULL, OPT_STATE_DIR},
        {"exclude", required_argument, NULL, OPT_EXCLUDE},
        {"json", no_argument, NULL, OPT_JSON},
        {"full", no_argument, NULL, OPT_FULL},
        {"authfile", required_argument, NULL, OPT_AUTHFILE},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"mountinfo", required_argument, NULL, OPT_MOUNTINFO}, /* tests: another mount table */
        {},
};

typedef struct DiffArgs {
        const char *root, *state_dir, *mountinfo, *authfile, *config;
        /* --exclude, then (--config) the config's exclude= and the agent's secrets inside the root */
        const char *excludes[NB_EXCLUDES_MAX + NB_EXCLUDES_CONFIG_MAX + 2];
        size_t n_excludes;
        char *secrets[2];    /* owned */
        unsigned max_layers; /* of the save: --config's max_layers, else NB_LAYERS_DEFAULT */
        bool json, full;
        bool no_incremental; /* --config says incremental = false */
} DiffArgs;

/* What the preview compares with. */
typedef struct DiffBase {
        bool last_save;                  /* the record of the last save, else the container-start baseline */
        char *path;                      /* the file */
        char *manifest_digest;           /* the last save's image */
        char why[NB_ERROR_MSG_MAX + 64]; /* last_save false: why not the last save (empty: no chain) */
} DiffBase;

typedef struct Preview {
        bool json;
        uint64_t n[_SNAP_CHANGE_MAX];
        bool first; /* JSON: no entry printed yet */
} Preview;

static const char change_letter[_SNAP_CHANGE_MAX] = {
        [SNAP_CHANGE_ADDED] = 'A',
        [SNAP_CHANGE_CHANGED] = 'C',
        [SNAP_CHANGE_DELETED] = 'D',
};

/* Returns 1 to run, 0 after --help, -EINVAL on a usage error (said on stderr). */
static int parse_diff_args(int argc, char **argv, DiffArgs *a)
{
        int c;
        while ((c = getopt_long(argc, argv, "h", diff_options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        fputs(usage_diff, stdout);
                        return 0;
                case OPT_ROOT:
                        a->root = optarg;
                        break;
                case OPT_STATE_DIR:
                        a->state_dir = optarg;
                        break;
                case OPT_EXCLUDE:
                        if (a->n_excludes >= NB_EXCLUDES_MAX) {
                                fprintf(stderr, "nbsnap diff: at most %d --exclude paths\n",
                                        NB_EXCLUDES_MAX);
                                return -E2BIG;
                        }
                        a->excludes[a->n_excludes++] = optarg;
                        break;
                case OPT_JSON:
                        a->json = true;
                        break;
                case OPT_FULL:
                        a->full = true;
                        break;
                case OPT_AUTHFILE:
                        a->authfile = optarg;
                        break;
                case OPT_CONFIG:
                        a->config = optarg;
                        break;
                case OPT_MOUNTINFO:
                        a->mountinfo = optarg;
                        break;
                default:
                        fprintf(stderr, "Try 'nbsnap diff --help'.\n");
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "nbsnap diff: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if ((!a->root || !a->state_dir) && !a->config) {
                fprintf(stderr, "nbsnap diff: --root and --state-dir are required (or --config)\n");
                return -EINVAL;
        }
        /* the rules of the save's excludes, checked before anything is read */
        _cleanup_snap_excludes_ SnapExcludes *x = NULL;
        NbError e = {0};
        int r = snap_excludes_new(&x, &e);
        for (size_t i = 0; r >= 0 && i < a->n_excludes; i++)
                r = snap_excludes_add(x, a->excludes[i], &e);
        if (r < 0) {
                fprintf(stderr, "nbsnap diff: --exclude: %s\n", e.msg);
                return -EINVAL;
        }
        return 1;
}

/* What a save of nbsnapd would be given (job.c): its root, state dir, authfile and excludes, the agent's
 * secrets inside the root among them. cfg must outlive a. */
static int apply_config(DiffArgs *a, NbConfig *cfg)
{
        NbError e = {0};
        if (nb_config_parse_file(cfg, a->config, &e) < 0) {
                fprintf(stderr, "nbsnap diff: --config: %s\n", e.msg);
                return -EINVAL;
        }
        if (!a->root)
                a->root = cfg->root ? cfg->root : "/";
        if (!a->state_dir)
                a->state_dir = cfg->state_dir ? cfg->state_dir : NB_DEFAULT_STATE_DIR;
        if (!a->authfile)
                a->authfile = cfg->authfile;
        a->max_layers = cfg->max_layers ? cfg->max_layers : NB_LAYERS_DEFAULT;
        a->no_incremental = !cfg->incremental;
        for (size_t i = 0; i < cfg->n_exclude; i++)
                a->excludes[a->n_excludes++] = cfg->exclude[i];
        const char *secrets[] = {cfg->token_file, cfg->tls_key};
        for (size_t i = 0; i < ELEMENTSOF(secrets); i++)
                if ((a->secrets[i] = job_container_path(a->root, secrets[i])))
                        a->excludes[a->n_excludes++] = a->secrets[i];
        return 0;
}

static void diff_args_done(DiffArgs *a)
{
        for (size_t i = 0; i < ELEMENTSOF(a->secrets); i++)
                free(a->secrets[i]);
}

static void diff_base_done(DiffBase *b)
{
        free(b->path);
        free(b->manifest_digest);
}

/* The last save's record when the next save would build on it (see the top of this file), else the
 * container-start baseline. */
static int diff_base_pick(const DiffArgs *a, const SnapExcludes *ex, DiffBase *ret)
{
        NbChain c = {0};
        NbError e = {0};
        int r = a->full ? 0 : nb_chain_load(a->state_dir, &c, &e);
        char digest[NB_DIGEST_STR_MAX];
        unsigned max_layers = a->max_layers ? a->max_layers : NB_LAYERS_DEFAULT;
        if (r < 0)
                snprintf(ret->why, sizeof(ret->why), "%s", e.msg);
        else if (r > 0 && a->no_incremental)
                snprintf(ret->why, sizeof(ret->why), "the config says incremental = false");
        else if (r > 0 && c.layers + 1 > max_layers)
                snprintf(ret->why, sizeof(ret->why),
                         "the last save's image has %" PRIu64
                         " layers: one more would exceed %u (max_layers)",
                         c.layers, max_layers);
        else if (r > 0 && nb_chain_excludes_digest(ex, digest) < 0)
                r = -ENOMEM;
        else if (r > 0 && strcmp(c.excludes, digest) != 0)
                snprintf(ret->why, sizeof(ret->why),
                         "the excluded paths (or the mount points) differ from the last save's");
        else if (r > 0 && nb_chain_path(a->state_dir, c.record, &ret->path) < 0)
                r = -ENOMEM;
        else if (r > 0) {
                SnapBaseline *rec = NULL; /* checksum, version and limits */
                if (snap_baseline_open(ret->path, &rec, &e) < 0) {
                        snprintf(ret->why, sizeof(ret->why),
                                 "the record of the last save cannot be used: %s", e.msg);
                        ret->path = mfree(ret->path);
                } else {
                        ret->last_save = true;
                        ret->manifest_digest = TAKE_PTR(c.manifest_digest);
                }
                snap_baseline_free(rec);
        }
        nb_chain_done(&c);
        if (r == -ENOMEM)
                return r;
        return ret->last_save ? 0 : nb_baseline_path(a->state_dir, &ret->path);
}

/* A path on one line: '\\' and control bytes as C escapes (a newline in a name cannot fake an entry). */
static void print_path(const char *p)
{
        fputc('/', stdout);
        for (; *p; p++) {
                unsigned char ch = (unsigned char)*p;
                if (ch == '\\')
                        fputs("\\\\", stdout);
                else if (ch == '\n')
                        fputs("\\n", stdout);
                else if (ch == '\t')
                        fputs("\\t", stdout);
                else if (ch < 0x20 || ch == 0x7f)
                        printf("\\%03o", ch);
                else
                        fputc(ch, stdout);
        }
}

static const char *mode_type(uint32_t mode)
{
        return S_ISREG(mode)    ? "file"
               : S_ISDIR(mode)  ? "directory"
               : S_ISLNK(mode)  ? "symlink"
               : S_ISFIFO(mode) ? "fifo"
               : S_ISCHR(mode)  ? "char-device"
               : S_ISBLK(mode)  ? "block-device"
               : S_ISSOCK(mode) ? "socket"
                                : "other";
}

/* One entry: a line, or one element of the JSON array (printed as it comes: memory stays flat). */
static int on_change(void *userdata, const SnapChange *c, NbError *e)
{
        Preview *pv = userdata;
        pv->n[c->kind]++;
        if (!pv->json) {
                printf("%c ", change_letter[c->kind]);
                print_path(c->path);
                fputc('\n', stdout);
                return 0;
        }
        _cleanup_free_ char *path = NULL, *json = NULL;
        _cleanup_cjson_ cJSON *o = cJSON_CreateObject();
        char kind[2] = {change_letter[c->kind], '\0'};
        if (!o || asprintf(&path, "/%s", c->path) < 0 || !cJSON_AddStringToObject(o, "kind", kind) ||
            !cJSON_AddStringToObject(o, "path", path) ||
            !cJSON_AddStringToObject(o, "type", mode_type(c->mode)) ||
            !cJSON_AddNumberToObject(o, "size", (double)c->size) || !(json = cJSON_PrintUnformatted(o)))
                return nb_error_oom(e);
        printf("%s\n    %s", pv->first ? "" : ",", json);
        pv->first = false;
        return 0;
}

static cJSON *base_json(const DiffBase *b)
{
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddStringToObject(o, "kind", b->last_save ? "last-save" : "baseline") ||
            !cJSON_AddStringToObject(o, "path", b->path) ||
            (b->last_save && !cJSON_AddStringToObject(o, "manifest_digest", b->manifest_digest)) ||
            (!b->last_save && b->why[0] && !cJSON_AddStringToObject(o, "reason", b->why))) {
                cJSON_Delete(o);
                return NULL;
        }
        return o;
}

static cJSON *summary_json(const Preview *pv, const SnapPlanStats *st)
{
        _cleanup_cjson_ cJSON *o = cJSON_CreateObject();
        bool ok = o && cJSON_AddNumberToObject(o, "entries", (double)(pv->n[0] + pv->n[1] + pv->n[2])) &&
                  cJSON_AddNumberToObject(o, "added", (double)pv->n[SNAP_CHANGE_ADDED]) &&
                  cJSON_AddNumberToObject(o, "changed", (double)pv->n[SNAP_CHANGE_CHANGED]) &&
                  cJSON_AddNumberToObject(o, "deleted", (double)pv->n[SNAP_CHANGE_DELETED]) &&
                  cJSON_AddNumberToObject(o, "bytes", (double)st->bytes) &&
                  cJSON_AddNumberToObject(o, "files", (double)st->files);
        cJSON *dirs = ok ? cJSON_AddArrayToObject(o, "largest_directories") : NULL;
        for (size_t i = 0; dirs && i < st->n_top; i++) {
                cJSON *d = cJSON_CreateObject();
                _cleanup_free_ char *path = NULL;
                if (!d || !cJSON_AddItemToArray(dirs, d) || asprintf(&path, "/%s", st->top[i].path) < 0 ||
                    !cJSON_AddStringToObject(d, "path", path) ||
                    !cJSON_AddNumberToObject(d, "bytes", (double)st->top[i].bytes))
                        return NULL;
        }
        return dirs ? TAKE_PTR(o) : NULL;
}

static void print_summary(const Preview *pv, const SnapPlanStats *st)
{
        char h[NB_SIZE_STR_MAX];
        printf("%" PRIu64 " entries: %" PRIu64 " added, %" PRIu64 " changed, %" PRIu64 " deleted\n",
               pv->n[0] + pv->n[1] + pv->n[2], pv->n[SNAP_CHANGE_ADDED], pv->n[SNAP_CHANGE_CHANGED],
               pv->n[SNAP_CHANGE_DELETED]);
        printf("%" PRIu64 " bytes (%s) of file content to pack, in %" PRIu64 " files\n", st->bytes,
               nb_size_format(st->bytes, h), st->files);
        if (st->n_top > 0)
                printf("largest directories:\n");
        for (size_t i = 0; i < st->n_top; i++) {
                printf("  %" PRIu64 " (%s) ", st->top[i].bytes, nb_size_format(st->top[i].bytes, h));
                print_path(st->top[i].path);
                fputc('\n', stdout);
        }
}

static int run_preview(const DiffArgs *a, const char *root, SnapExcludes *ex, const DiffBase *b)
{
        _cleanup_snap_baseline_ SnapBaseline *base = NULL;
        _cleanup_snap_walk_ SnapWalk *walk = NULL;
        _cleanup_snap_plan_ SnapPlan *plan = NULL;
        Preview pv = {.json = a->json, .first = true};
        NbError e = {0};
        int r = snap_baseline_open(b->path, &base, &e);
        if (r >= 0)
                r = snap_walk_new(root, ex, &walk, &e);
        if (r < 0) {
                fprintf(stderr, "nbsnap diff: %s\n", e.msg);
                return 1;
        }
        _cleanup_free_ char *base_text = NULL;
        if (a->json) {
                _cleanup_cjson_ cJSON *bj = base_json(b);
                if (!bj || !(base_text = cJSON_PrintUnformatted(bj)))
                        return 1;
                printf("{\n  \"base\": %s,\n  \"entries\": [", base_text);
        }
        r = snap_diff_preview(base, walk, ex, on_change, &pv, &plan, &e);
        if (r < 0) {
                fflush(stdout);
                fprintf(stderr, "nbsnap diff: %s\n", e.msg);
                return 1;
        }
        if (a->json) {
                _cleanup_cjson_ cJSON *sj = summary_json(&pv, snap_plan_stats(plan));
                _cleanup_free_ char *summary = sj ? cJSON_PrintUnformatted(sj) : NULL;
                if (!summary)
                        return 1;
                printf("%s],\n  \"summary\": %s\n}\n", pv.first ? "" : "\n  ", summary);
        } else
                print_summary(&pv, snap_plan_stats(plan));
        if (fflush(stdout) != 0) {
                fprintf(stderr, "nbsnap diff: cannot write the output: %m\n");
                return 1;
        }
        return 0;
}

int verb_diff(int argc, char **argv)
{
        _cleanup_(diff_args_done) DiffArgs a = {0};
        _cleanup_(nb_config_done) NbConfig cfg;
        nb_config_init(&cfg);
        int r = parse_diff_args(argc, argv, &a);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        if (a.config && apply_config(&a, &cfg) < 0)
                return 2;
        _cleanup_free_ char *root = realpath(a.root, NULL);
        struct stat st;
        if (!root || stat(root, &st) < 0 || !S_ISDIR(st.st_mode)) {
                fprintf(stderr, "nbsnap diff: root %s is not a directory\n", a.root);
                return 1;
        }
        if (stat(a.state_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
                fprintf(stderr, "nbsnap diff: state dir %s is not a directory (nbsnap baseline makes it)\n",
                        a.state_dir);
                return 1;
        }
        NbError e = {0};
        _cleanup_snap_excludes_ SnapExcludes *ex = NULL;
        r = nb_excludes_build(root, a.state_dir, a.authfile, a.excludes, a.n_excludes, a.mountinfo, &ex, &e);
        if (r < 0) {
                fprintf(stderr, "nbsnap diff: %s\n", e.msg);
                return 1;
        }
        _cleanup_(diff_base_done) DiffBase b = {0};
        if (diff_base_pick(&a, ex, &b) < 0) {
                fprintf(stderr, "nbsnap diff: out of memory\n");
                return 1;
        }
        if (b.last_save)
                fprintf(stderr,
                        "nbsnap diff: compared with the record of the last save (%s, %s): what an "
                        "incremental save packs\n",
                        b.manifest_digest, b.path);
        else
                fprintf(stderr,
                        "nbsnap diff: compared with the container-start baseline (%s): what a full save "
                        "packs%s%s\n",
                        b.path, b.why[0] ? "; not the last save: " : "", b.why);
        return run_preview(&a, root, ex, &b);
}
