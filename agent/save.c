#include <stdarg.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent/chain.h"
#include "agent/save.h"
#include "agent/sessions.h"
#include "agent/swr.h"
#include "common/clock.h"
#include "common/digest.h"
#include "common/size.h"
#include "common/sysinfo.h"
#include "registry/registry.h"
#include "snapshot/snapshot.h"

static const char *const phase_names[_NB_PHASE_MAX] = {
        [NB_PHASE_RESOLVING] = "resolving base image",      [NB_PHASE_BASE_LAYERS] = "checking base layers",
        [NB_PHASE_PACKING] = "packing and uploading layer", [NB_PHASE_CONFIG] = "uploading config",
        [NB_PHASE_MANIFEST] = "pushing manifest",
};

const char *nb_phase_to_string(NbPhase p)
{
        return p < _NB_PHASE_MAX ? phase_names[p] : "unknown";
}

typedef struct Save {
        const NbSaveOptions *o;
        NbImage *img;
        RegClient *dst, *src_owned, *src; /* src == dst unless the base lives on another registry */
        char *src_url;                    /* the base image's registry */
        RegRef *ref;
        char *dst_repo;
        RegImage *base;        /* the image the new layers go on: the base image, or the last save's image */
        RegImage *orig;        /* incremental: the configured base image (base is then the last save's) */
        const char *base_repo; /* the repository holding base's layers, on src */
        unsigned max_layers;
        size_t squash; /* top layers of base merged into the new layer (a base too deep for max_layers) */
        size_t squash_headroom; /* the layers a squash leaves free */
        RegClient *pull;        /* squash: downloads the merged layers while the new layer uploads on dst */
        NbChain chain;          /* the last save, when the state dir has one */
        bool incremental;       /* base is the last save's image, diff_base its record */
        char *root;             /* realpath of o->root */
        SnapExcludes *ex;       /* built once */
        char excludes_digest[NB_DIGEST_STR_MAX];
        char *baseline;        /* the container-start baseline */
        const char *diff_base; /* what the diff runs against: baseline, or the last save's record */
        char *chain_record;    /* the last save's record, STATE_DIR/saved-... */
        char *record_name, *record_path; /* this save's record */
        bool record_done;
        RegUpload *upload;
        NbError upload_error; /* written by the compressor's output thread, read after it was joined */
        bool upload_lost; /* the registry lost the upload session past the bytes in memory (-ESTALE from the
                             upload): the layer may be packed again; nothing else (the tree's own -ESTALE)
                             may */
        NbError compress_error; /* what snap_compressor_write() said, on the packing thread */
        SnapCompressor *compressor;
        SnapLayer *layer;
        SnapPlan *plan; /* the counting pass, kept for the hard links of a split */
        _Atomic uint64_t sent;
        bool in_content;        /* the pass that packs the changes' content runs (progress counts it) */
        uint64_t content_from;  /* the layer's data_bytes when that pass began */
        uint64_t flow_start;    /* nb_now_usec() of its first content byte, 0 before */
        uint64_t reported_usec; /* nb_now_usec() of the last report */
        uint64_t blob_sent;     /* compressed bytes of the current layer, on the output thread */
        uint64_t blob_max;      /* max_layer_size */
        bool in_skeleton;       /* writing the first layer's directories and deletions: no cut allowed */
        bool error_final; /* e holds the words the save fails with: pack_error() must not add to them */
        NbProgress progress;
        SnapCompressResult *parts; /* the new layers, bottom first: max_layers of them at most */
        size_t n_parts;
        char created[32]; /* RFC 3339, the config's and the history entry's */
        RegBuilt config;
        NbSessions *sessions; /* the record of dst's open upload sessions */
} Save;

static void warn(Save *s, const char *fmt, ...) _printf_(2, 3);

static void save_done(Save *s)
{
        /* in stream order, so no stage is freed while the one before can still feed it: the layer (writes
         * nothing more once freed), the compressor (its writer thread may be inside reg_upload_write()), the
         * upload */
        snap_layer_free(s->layer);
        snap_compressor_free(s->compressor);
        reg_upload_abort(s->upload);
        snap_plan_free(s->plan);
        reg_image_free(s->base);
        reg_image_free(s->orig);
        reg_client_free(s->pull);
        free(s->src_url);
        nb_chain_done(&s->chain);
        snap_excludes_free(s->ex);
        free(s->root);
        free(s->baseline);
        free(s->chain_record);
        if (s->record_path && !s->record_done)
                (void)unlink(s->record_path); /* the save failed: its record describes no image */
        free(s->record_name);
        free(s->record_path);
        free(s->parts);
        reg_ref_free(s->ref);
        reg_client_free(s->src_owned);
        reg_client_free(s->dst);
        free(s->dst_repo);
        reg_built_done(&s->config);
        size_t left = s->sessions ? nb_sessions_open_count(s->sessions) : 0;
        if (left > 0)
                warn(s,
                     "%zu upload session(s) on %s could not be deleted; recorded in %s, to be deleted by "
                     "the "
                     "next save or agent start",
                     left, s->o->registry_url, nb_sessions_record_path(s->sessions));
        nb_sessions_free(s->sessions);
}

static void report(Save *s, NbPhase phase)
{
        uint64_t now = nb_now_usec();
        s->progress.phase = phase;
        s->progress.sent = atomic_load(&s->sent);
        if (s->in_content) {
                s->progress.read = snap_layer_stats(s->layer)->data_bytes;
                s->progress.done = s->progress.read - s->content_from;
                if (s->flow_start > 0)
                        s->progress.flow_usec = now - s->flow_start;
        }
        s->reported_usec = now;
        if (s->o->progress)
                s->o->progress(s->o->userdata, &s->progress);
}

static void note(Save *s, const char *fmt, ...) _printf_(2, 3);
static void note(Save *s, const char *fmt, ...)
{
        if (!s->o->note)
                return;
        char buf[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        s->o->note(s->o->userdata, buf);
}

static void warn(Save *s, const char *fmt, ...)
{
        void (*fn)(void *, const char *) = s->o->warning ? s->o->warning : s->o->note;
        if (!fn)
                return;
        char buf[NB_ERROR_MSG_MAX + 512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        fn(s->o->userdata, buf);
}

static void sessions_cleanup_log(void *userdata, bool warning, const char *message)
{
        Save *s = userdata;
        if (warning)
                warn(s, "%s", message);
        else
                note(s, "%s", message);
}

/* Upload sessions left by saves that died are deleted first; then this save's own are recorded as the
 * registry opens them (sessions.h). */
static int sessions_setup(Save *s, NbError *e)
{
        const NbSaveOptions *o = s->o;
        NbSessionsCleanupOptions co = {
                .authfile = o->authfile, .ca_file = o->ca_file, .log = sessions_cleanup_log, .userdata = s};
        nb_sessions_cleanup(o->state_dir, &co, NULL);
        int r = nb_sessions_new(o->state_dir, o->program, &s->sessions, e);
        if (r < 0)
                return r;
        reg_client_set_session_hook(s->dst, nb_sessions_hook, s->sessions);
        return 0;
}

int nb_baseline_path(const char *state_dir, char **ret)
{
        return asprintf(ret, "%s/baseline", state_dir) < 0 ? -ENOMEM : 0;
}

/* The credential files the registry client may read (the containers convention), so they are never saved. */
static int exclude_credentials(SnapExcludes *x, const char *root, const char *authfile, NbError *se)
{
        const char *env = getenv("REGISTRY_AUTH_FILE"), *dc = getenv("DOCKER_CONFIG"),
                   *home = getenv("HOME");
        char buf[3][PATH_MAX];
        const char *c[4] = {authfile, env, NULL, NULL};
        if (dc && snprintf(buf[0], PATH_MAX, "%s/config.json", dc) < PATH_MAX)
                c[2] = buf[0];
        if (home && snprintf(buf[1], PATH_MAX, "%s/.docker/config.json", home) < PATH_MAX)
                c[3] = buf[1];
        for (size_t i = 0; i < ELEMENTSOF(c); i++) {
                if (!c[i] || !c[i][0])
                        continue;
                int r = snap_excludes_add_host_path(x, root, c[i], se);
                if (r < 0)
                        return r;
        }
        return 0;
}

int nb_excludes_build(const char *root, const char *state_dir, const char *authfile,
                      const char *const *paths, size_t n_paths, const char *mountinfo, SnapExcludes **ret,
                      NbError *e)
{
        SnapExcludes *x = NULL;
        static const char *const defaults[] = NB_DEFAULT_EXCLUDES;
        int r = snap_excludes_new(&x, e);
        for (size_t i = 0; r >= 0 && defaults[i]; i++)
                r = snap_excludes_add(x, defaults[i], e);
        if (n_paths > NB_EXCLUDES_MAX)
                r = nb_error_set(e, -E2BIG, "too many --exclude paths (at most %d)", NB_EXCLUDES_MAX);
        for (size_t i = 0; r >= 0 && i < n_paths; i++)
                r = snap_excludes_add(x, paths[i], e);
        if (r >= 0)
                r = snap_excludes_add_mounts(x, root, mountinfo, e);
        if (r >= 0 && state_dir)
                r = snap_excludes_add_host_path(x, root, state_dir, e);
        if (r >= 0)
                r = exclude_credentials(x, root, authfile, e);
        if (r < 0) {
                snap_excludes_free(x);
                return nb_error_wrap(e, r, "cannot set up the excluded paths");
        }
        *ret = x;
        return 0;
}

int nb_save_validate(const NbSaveOptions *o, NbError *e)
{
        static const struct {
                size_t offset;
                const char *flag;
        } required[] = {
                {offsetof(NbSaveOptions, root), "--root"},
                {offsetof(NbSaveOptions, state_dir), "--state-dir"},
                {offsetof(NbSaveOptions, registry_url), "--registry"},
                {offsetof(NbSaveOptions, base_image), "--base-image"},
                {offsetof(NbSaveOptions, namespace), "--namespace"},
                {offsetof(NbSaveOptions, name), "--name"},
                {offsetof(NbSaveOptions, tag), "--tag"},
        };
        for (size_t i = 0; i < ELEMENTSOF(required); i++) {
                const char *v = *(const char *const *)((const char *)o + required[i].offset);
                if (!v || !v[0])
                        return nb_error_set(e, -EINVAL, "%s is required", required[i].flag);
        }
        if (!nb_namespace_valid(o->namespace, e) || !nb_name_valid(o->name, e) || !nb_tag_valid(o->tag, e) ||
            !nb_description_valid(o->description, e) ||
            (o->workspace_id && !nb_workspace_id_valid(o->workspace_id, e)))
                return e->code;
        if (strlen(o->namespace) + 1 + strlen(o->name) > 255)
                return nb_error_set(
                        e, -EINVAL,
                        "namespace/name is %zu characters; registries take repository names of at "
                        "most 255",
                        strlen(o->namespace) + 1 + strlen(o->name));
        if (o->max_layer_size != 0 && o->max_layer_size < NB_LAYER_SIZE_MIN)
                return nb_error_set(e, -EINVAL, "--max-layer-size must be at least %u bytes (1M)",
                                    NB_LAYER_SIZE_MIN);
        if (nb_max_layers_check(o->max_layers, e) < 0)
                return e->code;
        if (o->chain_waste_max > NB_CHAIN_WASTE_MAX || o->chain_waste_max < -1)
                return nb_error_set(e, -EINVAL, "chain_waste_max takes a percent from 0 to %d, not %d",
                                    NB_CHAIN_WASTE_MAX, o->chain_waste_max);
        if (o->compression >= _SNAP_COMPRESSION_MAX)
                return nb_error_set(e, -EINVAL, "--compression takes gzip or zstd");
        if (snap_compression_level_check(o->compression, o->level, e) < 0)
                return e->code;
        if (strncmp(o->registry_url, "https://", 8) != 0 && strncmp(o->registry_url, "http://", 7) != 0)
                return nb_error_set(e, -EINVAL,
                                    "--registry must be a URL: https://HOST[:PORT] or http://HOST[:PORT]");
        struct stat st;
        if (stat(o->root, &st) < 0)
                return nb_error_set(e, -errno, "root %s: %m", o->root);
        if (!S_ISDIR(st.st_mode))
                return nb_error_set(e, -ENOTDIR, "root %s is not a directory", o->root);
        return 0;
}

static int set_arch(NbImage *img, const char *config_json)
{
        cJSON *c = cJSON_Parse(config_json);
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(c, "architecture");
        char up[NB_ARCH_MAX];
        nb_arch_to_modelarts(cJSON_IsString(a) ? a->valuestring : nb_machine_arch(), up);
        cJSON_Delete(c);
        return nb_image_set(&img->arch, up);
}

static int connect_registries(Save *s, NbError *e)
{
        const NbSaveOptions *o = s->o;
        RegClientOptions co = nb_reg_client_options(o->registry_url, o->authfile, o->ca_file);
        co.chunk_size = o->chunk_size;
        co.cancel = o->cancel;
        int r = reg_client_new(&co, &s->dst, e);
        if (r < 0)
                return nb_error_wrap(e, r, "cannot use registry");
        r = reg_ref_parse(o->base_image, &s->ref, e);
        if (r < 0)
                return nb_error_wrap(e, r, "bad --base-image");
        s->src = s->dst;
        if (s->ref->host && strcmp(s->ref->host, reg_client_host(s->dst)) != 0) {
                /* the base lives elsewhere: same scheme as given for the target when it is plain http */
                _cleanup_free_ char *url = NULL;
                bool http = strncmp(o->registry_url, "http://", 7) == 0;
                if (asprintf(&url, "%s://%s", http ? "http" : "https", s->ref->host) < 0)
                        return nb_error_oom(e);
                co.url = url;
                r = reg_client_new(&co, &s->src_owned, e);
                if (r < 0)
                        return nb_error_wrap(e, r, "cannot use the base image's registry");
                s->src = s->src_owned;
                s->src_url = TAKE_PTR(url);
        } else if (!(s->src_url = strdup(o->registry_url)))
                return nb_error_oom(e);
        if (asprintf(&s->dst_repo, "%s/%s", o->namespace, o->name) < 0)
                return nb_error_oom(e);
        return sessions_setup(s, e);
}

/* No silent overwrite: unless the caller allows it, a tag that already exists in the registry fails the
 * save before anything is uploaded. A registry that cannot say (refused: 401/403, or unreachable after the
 * retries) fails it too: the push would need the same access and the same registry. */
static int check_tag_free(Save *s, NbError *e)
{
        const NbSaveOptions *o = s->o;
        if (o->overwrite)
                return 0;
        const char *how = o->overwrite_how ? o->overwrite_how : "give --overwrite";
        _cleanup_free_ char *digest = NULL;
        int r = reg_manifest_exists(s->dst, s->dst_repo, o->tag, &digest, e);
        if (r < 0)
                return nb_error_wrap(
                        e, r,
                        "cannot check whether %s/%s:%s already exists in %s, and a save does not "
                        "replace a tag unchecked (%s to push without the check)",
                        o->namespace, o->name, o->tag, reg_client_host(s->dst), how);
        if (r > 0)
                return nb_error_set(e, -EEXIST,
                                    "%s/%s:%s already exists in %s%s%.71s; save under another tag, or %s to "
                                    "replace it",
                                    o->namespace, o->name, o->tag, reg_client_host(s->dst),
                                    digest ? " as " : "", digest ? digest : "", how);
        return 0;
}

static int resolve_base(Save *s, NbError *e)
{
        report(s, NB_PHASE_RESOLVING);
        const char *reference = s->ref->digest ? s->ref->digest : s->ref->tag ? s->ref->tag : "latest";
        int r = reg_image_fetch(s->src, s->ref->repository, reference, "linux", nb_machine_arch(), NULL,
                                &s->base, e);
        if (r < 0)
                return nb_error_wrap(e, r, "cannot resolve the base image");
        s->base_repo = s->ref->repository;
        return set_arch(s->img, s->base->config_json);
}

/* A base with max_layers layers or more: its top layers are merged with the changes into the new layer
 * (snapshot.h, squash), as many as leave NB_SQUASH_HEADROOM layers free (at most half the budget) for the
 * incremental saves that follow: without it every later save would squash again. */
static void plan_squash(Save *s)
{
        size_t n = s->base->n_layers, max = s->max_layers;
        s->squash_headroom = (max - 2) / 2 < NB_SQUASH_HEADROOM ? (max - 2) / 2 : NB_SQUASH_HEADROOM;
        s->squash = n + 1 > max ? n - (max - 1 - s->squash_headroom) : 0;
}

/* Layers of base the new image keeps. */
static size_t kept(const Save *s)
{
        return s->base->n_layers - s->squash;
}

/* ---- the chain: an incremental save builds on the last save's image (chain.h) ---------------------- */

static void full_save(Save *s, const char *fmt, ...) _printf_(2, 3);
static void full_save(Save *s, const char *fmt, ...)
{
        char why[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        note(s, "full save: %s", why);
}

/* Whether the last save can be built on; a note says why not. Errors are those of the registry alone. */
static int chain_usable(Save *s, RegImage **ret, NbError *e)
{
        const NbChain *c = &s->chain;
        NbError ignored = {0};
        int r = nb_chain_load(s->o->state_dir, &s->chain, &ignored);
        if (r < 0) {
                full_save(s, "%s", ignored.msg);
                return 0;
        }
        if (r == 0) {
                full_save(s, "no earlier save in %s", s->o->state_dir);
                return 0;
        }
        if (strcmp(c->registry, reg_client_host(s->dst)) != 0) {
                full_save(s, "the last save went to another registry (%s)", c->registry);
                return 0;
        }
        if (strcmp(c->base_image, s->o->base_image) != 0 ||
            strcmp(c->base_digest, s->base->manifest_digest) != 0) {
                full_save(s, "the last save was made on another base image (%s, %.19s)", c->base_image,
                          c->base_digest);
                return 0;
        }
        if (strcmp(c->excludes, s->excludes_digest) != 0) {
                full_save(s, "the excluded paths (or the mount points) changed since the last save");
                return 0;
        }
        if (c->layers + 1 > s->max_layers) {
                full_save(s,
                          "the last save's image has %" PRIu64
                          " layers: one more would exceed %u (max_layers)",
                          c->layers, s->max_layers);
                return 0;
        }
        if (nb_chain_path(s->o->state_dir, c->record, &s->chain_record) < 0)
                return nb_error_oom(e);
        SnapBaseline *rec = NULL; /* its checksum, version and limits, before anything is built on it */
        r = snap_baseline_open(s->chain_record, &rec, &ignored);
        snap_baseline_free(rec);
        if (r < 0) {
                full_save(s, "the record of the last save cannot be used: %s", ignored.msg);
                return 0;
        }
        /* its manifest, by digest: a deleted image (or one the registry lost) cannot be built on */
        r = reg_image_fetch(s->dst, c->repository, c->manifest_digest, "linux", nb_machine_arch(), NULL, ret,
                            &ignored);
        if (r == -ENOENT) {
                full_save(s, "the last save's image %s@%.19s is no longer in the registry", c->repository,
                          c->manifest_digest);
                return 0;
        }
        if (r == -EACCES) { /* pull access to the old repository gone: the new one may still be pushed */
                full_save(s, "the last save's image %s@%.19s cannot be read: %s", c->repository,
                          c->manifest_digest, ignored.msg);
                return 0;
        }
        if (r < 0) {
                *e = ignored;
                return nb_error_wrap(e, r, "cannot read the last save's image %s@%.19s", c->repository,
                                     c->manifest_digest);
        }
        /* the base layers the chain kept: all of them, or the bottom ones when its first save squashed */
        const RegImage *p = *ret;
        bool on_base = p->n_layers == c->layers && c->base_layers <= s->base->n_layers;
        for (size_t i = 0; on_base && i < c->base_layers; i++)
                on_base = strcmp(p->layers[i].digest, s->base->layers[i].digest) == 0;
        if (!on_base) {
                full_save(s, "the last save's image %.19s is not built on the base image's layers",
                          c->manifest_digest);
                *ret = reg_image_free(*ret);
                return 0;
        }
        return 1;
}

/* Decides between an incremental save and a full one, before the counting pass. */
static int chain_decide(Save *s, NbError *e)
{
        s->diff_base = s->baseline;
        if (!s->o->incremental)
                return 0;
        RegImage *parent = NULL;
        int r = chain_usable(s, &parent, e);
        if (r <= 0)
                return r;
        s->orig = s->base;
        s->base = parent;
        plan_squash(s); /* none: the chain has room for one more layer */
        s->base_repo = s->chain.repository;
        s->src = s->dst; /* the chain's layers are all on the target registry */
        s->diff_base = s->chain_record;
        s->incremental = true;
        return 0;
}

/* Back to a full save on the base image, after the counting pass found stacking wasteful. */
static void chain_abandon(Save *s)
{
        reg_image_free(s->base);
        s->base = TAKE_PTR(s->orig);
        plan_squash(s);
        s->base_repo = s->ref->repository;
        s->src = s->src_owned ? s->src_owned : s->dst;
        s->diff_base = s->baseline;
        s->incremental = false;
}

/* After the manifest is pushed: what this save made, for the next one. A failure here fails nothing (the
 * image is pushed; the next save is then full, or builds on an earlier save that is still there). */
static void chain_store(Save *s)
{
        if (!s->record_done || !s->record_name)
                return;
        const SnapPlanStats *st = snap_plan_stats(s->plan);
        NbChain c = {
                .registry = (char *)reg_client_host(s->dst),
                .repository = s->dst_repo,
                .manifest_digest = s->img->manifest_digest,
                .base_image = (char *)s->o->base_image,
                .base_digest = (s->incremental ? s->orig : s->base)->manifest_digest,
                .excludes = s->excludes_digest,
                .record = s->record_name,
                .base_layers = s->incremental ? s->chain.base_layers : kept(s),
                .layers = kept(s) + s->n_parts,
                .saves = s->incremental ? s->chain.saves + 1 : 1,
                .chain_bytes = (s->incremental ? s->chain.chain_bytes : 0) + st->bytes,
                .dead_bytes = s->incremental ? s->chain.dead_bytes + st->dead_bytes : 0,
        };
        NbError e = {0};
        if (nb_chain_store(s->o->state_dir, &c, &e) < 0) {
                note(s, "the next save will be a full one: %s", e.msg);
                return;
        }
        nb_chain_prune(s->o->state_dir, s->record_name, false);
}

/* The new image as the OCI model builds it: the base's layers kept, the packed layers on top (their digests,
 * sizes and diff_ids are known once they are packed; before that, one layer without them). One history entry
 * per layer: "nbsnap save", then "nbsnap save (part 2 of 3)" and so on, the description on the first. */
typedef struct Build {
        RegLayerAdd layers[NB_LAYERS_MAX];
        char created_by[NB_LAYERS_MAX][128]; /* "nbsnap save (incremental on sha256:<64 hex>)" */
        char base_name[1024];
        RegImageBuild b;
} Build;

static void image_build(const Save *s, Build *ret)
{
        size_t n = s->n_parts ? s->n_parts : 1;
        for (size_t i = 0; i < n; i++) {
                const SnapCompressResult *p = &s->parts[i];
                if (i == 0 && s->incremental)
                        snprintf(ret->created_by[i], sizeof(ret->created_by[i]),
                                 "nbsnap save (incremental on %s)", s->base->manifest_digest);
                else if (i == 0 && s->squash)
                        snprintf(ret->created_by[i], sizeof(ret->created_by[i]),
                                 "nbsnap save (with the base's top %zu layers squashed)", s->squash);
                else if (i == 0)
                        snprintf(ret->created_by[i], sizeof(ret->created_by[i]), "nbsnap save");
                else
                        snprintf(ret->created_by[i], sizeof(ret->created_by[i]),
                                 "nbsnap save (part %zu of %zu)", i + 1, n);
                ret->layers[i] = (RegLayerAdd){
                        .media_type = s->o->compression == SNAP_COMPRESSION_ZSTD ? REG_MEDIA_OCI_LAYER_ZSTD
                                                                                 : REG_MEDIA_OCI_LAYER_GZIP,
                        .digest = p->digest,
                        .size = (int64_t)p->size_out,
                        .diff_id = p->diff_id,
                        .created_by = ret->created_by[i],
                        .comment = i == 0 ? s->o->description : NULL,
                };
        }
        /* the image this one is built on: the last save's, by digest, for an incremental save */
        if (s->incremental)
                snprintf(ret->base_name, sizeof(ret->base_name), "%s/%s@%s", reg_client_host(s->dst),
                         s->base_repo, s->base->manifest_digest);
        ret->b = (RegImageBuild){.base = s->base,
                                 .keep_layers = kept(s),
                                 .layers = ret->layers,
                                 .n_layers = n,
                                 .created = s->created,
                                 .base_name = s->incremental ? ret->base_name : s->o->base_image};
}

/* Docker schema2 has no zstd layer type: a zstd layer on a schema2 base makes the new image an OCI image
 * (config and base layers keep their bytes and digests, only the media types change), as containers/image
 * does for `skopeo copy --dest-compress-format zstd` / `podman push --compression-format zstd` and BuildKit
 * does for compression=zstd (it forces OCI media types). Any runtime that can pull zstd layers reads OCI
 * manifests. Decided here, before any layer is touched, so a base that cannot be converted fails at once. */
static int plan_manifest(Save *s, NbError *e)
{
        _cleanup_free_ Build *b = calloc(1, sizeof(Build));
        if (!b)
                return nb_error_oom(e);
        image_build(s, b);
        const char *type;
        size_t bad = 0;
        NbError ignored = {0};
        int r = reg_image_build_type(&b->b, &type, &bad, &ignored);
        if (r == -EOPNOTSUPP) {
                const char *t = s->base->layers[bad].media_type;
                return nb_error_set(e, -EOPNOTSUPP,
                                    "--compression zstd needs an OCI manifest, and base layer %zu has "
                                    "media type %s, which has no OCI equivalent: save with "
                                    "--compression gzip",
                                    bad, t ? t : "(none)");
        }
        if (r < 0) {
                *e = ignored;
                return r;
        }
        if (strcmp(type, s->base->manifest_media_type) != 0)
                note(s, "the base image is a Docker schema2 image, which cannot carry zstd layers: the new "
                        "image is an OCI image");
        return 0;
}

/* Each base layer must be in the target repository: already there, mounted from the base repository, or
 * copied (another registry, or a registry that declines mounts). Never uploaded from here. */
static int ensure_base_layers(Save *s, NbError *e)
{
        report(s, NB_PHASE_BASE_LAYERS);
        bool same_registry = s->src == s->dst;
        for (size_t i = 0; i < kept(s); i++) {
                const RegDescriptor *l = &s->base->layers[i];
                if (same_registry && strcmp(s->base_repo, s->dst_repo) == 0)
                        continue; /* the manifest we resolved references them in this repository */
                int r = reg_blob_exists(s->dst, s->dst_repo, l->digest, NULL, e);
                if (r == 0 && same_registry) {
                        r = reg_blob_mount(s->dst, s->dst_repo, l->digest, s->base_repo, e);
                        if (r > 0)
                                note(s, "base layer %.19s mounted from %s", l->digest, s->base_repo);
                }
                if (r == 0) {
                        note(s, "base layer %.19s copied into %s", l->digest, s->dst_repo);
                        r = reg_blob_copy(s->src, s->base_repo, s->dst, s->dst_repo, l, e);
                }
                if (r < 0)
                        return nb_error_wrap(e, r, "cannot make the base layers available");
        }
        return 0;
}

static int on_compressed_output(void *userdata, const void *data, size_t size)
{
        Save *s = userdata;
        /* the split's bound (snapshot.h) keeps every blob within the limit; this makes sure of it */
        if (s->blob_sent + size > s->blob_max) {
                char h[NB_SIZE_STR_MAX];
                return nb_error_set(&s->upload_error, -EFBIG,
                                    "layer %zu grew past the layer size limit of %s (%" PRIu64
                                    " bytes, max_layer_size) compressed; nothing was tagged",
                                    s->n_parts + 1, nb_size_format(s->blob_max, h), s->blob_max);
        }
        s->blob_sent += size;
        int r = reg_upload_write(s->upload, data, size, &s->upload_error);
        if (r < 0)
                return r;
        atomic_fetch_add(&s->sent, size);
        return 0;
}

static bool cancelled(const Save *s)
{
        return s->o->cancel && atomic_load(s->o->cancel);
}

static int on_tar_output(void *userdata, const void *data, size_t size)
{
        Save *s = userdata;
        if (cancelled(s))
                return -ECANCELED;
        /* a big file is one entry: the bytes, not the walk, must move the progress while it streams */
        if (s->in_content) {
                uint64_t now = nb_now_usec();
                if (s->flow_start == 0 && snap_layer_stats(s->layer)->data_bytes > s->content_from)
                        s->flow_start = now;
                if (now - s->reported_usec >= NB_PROGRESS_REPORT_USEC)
                        report(s, NB_PHASE_PACKING);
        }
        return snap_compressor_write(s->compressor, data, size, &s->compress_error);
}

static void on_layer_note(void *userdata, const char *path, const char *message)
{
        note(userdata, "/%s: %s", path, message);
}

static void on_diff_progress(void *userdata, const SnapDiffStats *st)
{
        Save *s = userdata;
        s->progress.entries = st->live;
        report(s, NB_PHASE_PACKING);
}

/* After a failure in the pipeline, the registry's words are the ones that say what to do. */
static int pack_error(Save *s, NbError *e, int r)
{
        if (cancelled(s))
                return nb_error_set(e, -ECANCELED,
                                    "the save was cancelled (the agent is stopping); save again");
        if (nb_error_isset(&s->upload_error)) {
                *e = s->upload_error;
                s->upload_lost = e->code == -ESTALE;
                return nb_error_wrap(e, 0, "cannot upload the layer");
        }
        if (nb_error_isset(&s->compress_error)) {
                *e = s->compress_error;
                return nb_error_wrap(e, 0, "cannot compress the layer");
        }
        return nb_error_wrap(e, r, "cannot pack the layer");
}

static int compressor_new(Save *s, NbError *se)
{
        SnapCompressorOptions co = {.format = s->o->compression,
                                    .threads = s->o->threads,
                                    .level = s->o->level,
                                    .output = on_compressed_output,
                                    .userdata = s};
        return snap_compressor_new(&co, &s->compressor, se);
}

/* The directories of the plan as "/a/b 1.2 GiB (1288490188 bytes), ..." into buf. */
static void format_top_dirs(const SnapPlanStats *st, char *buf, size_t size)
{
        size_t used = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < st->n_top && used < size; i++) {
                char h[NB_SIZE_STR_MAX];
                int n = snprintf(buf + used, size - used, "%s/%.200s %s (%" PRIu64 " bytes)", i ? ", " : "",
                                 st->top[i].path, nb_size_format(st->top[i].bytes, h), st->top[i].bytes);
                if (n < 0)
                        break;
                used += (size_t)n;
        }
}

/* The limits that depend on what changed, checked on the counting pass: nothing is uploaded before they
 * pass. */
static int check_layer_size(Save *s, const SnapPlanStats *st, NbError *e)
{
        uint64_t budget = snap_layer_split_budget(s->blob_max);
        char h[NB_SIZE_STR_MAX], limit[NB_SIZE_STR_MAX];
        if (st->largest && st->largest_tar > budget)
                return nb_error_set(
                        e, -EFBIG,
                        "cannot save: /%.512s is %s (%" PRIu64
                        " bytes), which does not fit in one layer of at most %s (%" PRIu64
                        " bytes, max_layer_size) with its tar headers and the room compression may "
                        "need; delete or --exclude it, or raise the limit",
                        st->largest, nb_size_format(st->largest_size, h), st->largest_size,
                        nb_size_format(s->blob_max, limit), s->blob_max);
        if (st->tar_bytes <= budget)
                return 0;
        if (st->skeleton_tar > budget)
                return nb_error_set(
                        e, -EFBIG,
                        "cannot save: the changed directories and the deletions, which must all go in "
                        "the first layer, take about %" PRIu64
                        " bytes, more than fits in one layer of at most %s (max_layer_size)",
                        st->skeleton_tar, nb_size_format(s->blob_max, limit));
        uint64_t least = (st->tar_bytes + budget - 1) / budget;
        if (s->squash)
                return nb_error_set(
                        e, -EFBIG,
                        "cannot save: the base image's top %zu layers must be squashed into the new "
                        "layer (max_layers %u), and the changes need to be split into layers of at "
                        "most %s (max_layer_size); a squashed layer cannot be split yet: raise "
                        "max_layer_size or max_layers",
                        s->squash, s->max_layers, nb_size_format(s->blob_max, limit));
        if (kept(s) + least > s->max_layers)
                return nb_error_set(
                        e, -E2BIG,
                        "cannot save: the changes need at least %" PRIu64
                        " layers of at most %s (max_layer_size) on the base image's %zu, and the "
                        "image may have at most %u (max_layers)",
                        least, nb_size_format(s->blob_max, limit), kept(s), s->max_layers);
        note(s, "the changes take up to %s of tar: they are split into layers of at most %s",
             nb_size_format(st->tar_bytes, h), nb_size_format(s->blob_max, limit));
        return 0;
}

static int check_plan(Save *s, const SnapPlanStats *st, NbError *e)
{
        const NbSaveOptions *o = s->o;
        if (o->max_image_size == 0 || st->bytes <= o->max_image_size)
                return check_layer_size(s, st, e);
        char dirs[1280], have[NB_SIZE_STR_MAX], limit[NB_SIZE_STR_MAX];
        format_top_dirs(st, dirs, sizeof(dirs));
        return nb_error_set(e, -EFBIG,
                            "cannot save: the files that changed come to %s (%" PRIu64
                            " bytes), over the image size limit of %s (%" PRIu64
                            " bytes, max_image_size); largest directories: %s; delete or --exclude what "
                            "need not be saved, or raise the limit",
                            nb_size_format(st->bytes, have), st->bytes,
                            nb_size_format(o->max_image_size, limit), o->max_image_size,
                            dirs[0] ? dirs : "(none)");
}

/* The tree, its excludes and the baseline, set up once for the counting pass and the write pass. */
static int tree_setup(Save *s, NbError *e)
{
        const NbSaveOptions *o = s->o;
        int r = nb_baseline_path(o->state_dir, &s->baseline);
        if (r < 0 || !(s->root = realpath(o->root, NULL)))
                return nb_error_set(e, r < 0 ? r : -errno, "root %s: %m", o->root);
        r = nb_excludes_build(s->root, o->state_dir, o->authfile, o->excludes, o->n_excludes, o->mountinfo,
                              &s->ex, e);
        if (r >= 0 && nb_chain_excludes_digest(s->ex, s->excludes_digest) < 0)
                r = nb_error_oom(e);
        if (r >= 0 &&
            access(s->baseline, F_OK) < 0) { /* every save needs it: snap_baseline_open() says so */
                SnapBaseline *b = NULL;
                r = snap_baseline_open(s->baseline, &b, e);
                snap_baseline_free(b);
        }
        return r;
}

/* One counting pass against s->diff_base. */
static int count_changes(Save *s, NbError *e)
{
        _cleanup_snap_baseline_ SnapBaseline *base = NULL;
        _cleanup_snap_walk_ SnapWalk *walk = NULL;
        s->plan = snap_plan_free(s->plan);
        int r = snap_baseline_open(s->diff_base, &base, e);
        if (r >= 0)
                r = snap_walk_new(s->root, s->ex, &walk, e);
        return r < 0 ? r : snap_diff_plan(base, walk, s->ex, &s->plan, e);
}

/* The counting pass (walk and merge-join, stat data only), before any blob is uploaded or mounted. An
 * incremental save whose changes would leave too much of the chain dead becomes a full one here. */
static int plan_changes(Save *s, NbError *e)
{
        int r = count_changes(s, e);
        if (r < 0)
                return r;
        const SnapPlanStats *st = snap_plan_stats(s->plan);
        unsigned waste =
                s->o->chain_waste_max < 0 ? NB_CHAIN_WASTE_DEFAULT : (unsigned)s->o->chain_waste_max;
        /* the layers the changes need: one, or more when they are split (max_layer_size) */
        uint64_t budget = snap_layer_split_budget(s->blob_max),
                 parts = st->tar_bytes > budget ? (st->tar_bytes + budget - 1) / budget + 1 : 1;
        bool wasteful = s->incremental && nb_chain_wasteful(&s->chain, st->dead_bytes, waste),
             too_deep = s->incremental && kept(s) + parts > s->max_layers;
        if (wasteful || too_deep) {
                char dead[NB_SIZE_STR_MAX], all[NB_SIZE_STR_MAX];
                if (wasteful)
                        full_save(s,
                                  "stacking would leave %s of the %s in the chain's layers dead (deleted or "
                                  "replaced), over %u%% (chain_waste_max)",
                                  nb_size_format(s->chain.dead_bytes + st->dead_bytes, dead),
                                  nb_size_format(s->chain.chain_bytes, all), waste);
                else
                        full_save(s,
                                  "the changes need up to %" PRIu64
                                  " layers (max_layer_size), and the chain's %zu and those would pass %u "
                                  "(max_layers)",
                                  parts, kept(s), s->max_layers);
                chain_abandon(s);
                r = count_changes(s, e);
                if (r < 0)
                        return r;
                st = snap_plan_stats(s->plan);
        }
        if (s->incremental)
                note(s,
                     "incremental save on %s (save %" PRIu64 " of the chain): only what changed since then",
                     s->base->manifest_digest, s->chain.saves + 1);
        s->progress.total = st->bytes;
        char h[NB_SIZE_STR_MAX];
        note(s, "changes: %" PRIu64 " entries, %" PRIu64 " files of %s, %" PRIu64 " deleted", st->entries,
             st->files, nb_size_format(st->bytes, h), st->deleted);
        return check_plan(s, st, e);
}

/* A layer of the save: its upload session and compressor, ended by part_end(). */
static int part_begin(Save *s, NbError *e)
{
        s->error_final = true; /* until the session is open */
        if (kept(s) + s->n_parts + 1 > s->max_layers)
                return nb_error_set(
                        e, -E2BIG,
                        "cannot split the changes into more layers: the base image has %zu and the "
                        "image may have at most %u (max_layers); raise max_layer_size or save less",
                        kept(s), s->max_layers);
        int r = reg_upload_begin(s->dst, s->dst_repo, NULL, NULL, &s->upload, e);
        if (r < 0)
                return nb_error_wrap(e, r, "cannot start the layer upload");
        s->error_final = false;
        s->blob_sent = 0;
        return compressor_new(s, e);
}

/* Ends the compressed stream of the current layer and commits its blob. */
static int part_end(Save *s, NbError *e)
{
        SnapCompressResult *res = &s->parts[s->n_parts];
        int r = snap_compressor_finish(s->compressor, res, e);
        if (r < 0) {
                r = pack_error(s, e, r);
                s->error_final = true;
                return r;
        }
        s->compressor = snap_compressor_free(s->compressor);
        r = reg_upload_commit(s->upload, res->digest, e);
        s->error_final = r < 0;
        s->upload_lost = r == -ESTALE;
        if (r < 0)
                return nb_error_wrap(e, r, "cannot commit the layer");
        s->upload = reg_upload_abort(s->upload); /* committed: frees, cancels nothing */
        s->n_parts++;
        return 0;
}

/* The layer writer finished a tar: commit it, start the next. */
static int on_layer_cut(void *userdata, NbError *e)
{
        Save *s = userdata;
        s->error_final = s->in_skeleton;
        if (s->in_skeleton)
                return nb_error_set(e, -EFBIG,
                                    "cannot split the changes: the changed directories and the deletions, "
                                    "which must all go in the first layer, take more than max_layer_size");
        int r = part_end(s, e);
        return r < 0 ? r : part_begin(s, e);
}

/* One pass of the diff over a fresh baseline reader and walk. */
static int diff_pass(Save *s, SnapDiffPart part, SnapBaselineWriter *record, SnapDiffStats *st, NbError *e)
{
        _cleanup_snap_baseline_ SnapBaseline *base = NULL;
        _cleanup_snap_walk_ SnapWalk *walk = NULL;
        int r = snap_baseline_open(s->diff_base, &base, e);
        if (r >= 0)
                r = snap_walk_new(s->root, s->ex, &walk, e);
        if (r < 0)
                return r;
        /* the skeleton pass is short (no content): progress counts the content pass's walk and bytes alone
         */
        if (part != SNAP_DIFF_SKELETON) {
                s->in_content = true;
                s->content_from = snap_layer_stats(s->layer)->data_bytes;
        }
        r = snap_diff_layer_part(base, walk, s->ex, s->layer, part, record,
                                 part == SNAP_DIFF_SKELETON ? NULL : on_diff_progress, s, st, e);
        if (s->in_content) {
                report(s, NB_PHASE_PACKING); /* the last bytes; the flow ends here */
                s->in_content = false;
        }
        return r;
}

/* This save's record (snapshot.h): written by the pass that meets every entry, committed with it. When
 * nothing changed the tree is the one the diff's baseline describes, and the record is that file. A record
 * that cannot be written fails nothing: the next save is then a full one (or builds on an earlier one). */
static void record_failed(Save *s, const NbError *e)
{
        note(s, "the next save cannot build on this one: %s", e->msg);
        if (s->record_path)
                (void)unlink(s->record_path);
        s->record_path = mfree(s->record_path);
        s->record_name = mfree(s->record_name);
}

/* The record is about as big as the baseline it is diffed against. It must never take the room the image
 * records and reports need (the store keeps a reserve for those, nbsnapd's state dir may be small): without
 * NB_RECORD_ROOM_MIN to spare besides it, there is no record. */
static int record_room(Save *s, NbError *e)
{
        struct stat st;
        struct statvfs vfs;
        if (stat(s->diff_base, &st) < 0 || statvfs(s->o->state_dir, &vfs) < 0)
                return nb_error_set(e, -errno, "cannot size the record of the save: %m");
        /* the tree the diff's baseline describes, plus what the changes add (a record entry takes well under
         * 64 bytes and its path's new part) */
        uint64_t need = (uint64_t)st.st_size + (uint64_t)st.st_size / 2 +
                        snap_plan_stats(s->plan)->entries * 64 + NB_RECORD_ROOM_MIN,
                 have = (uint64_t)vfs.f_bavail * vfs.f_frsize;
        if (have < need) {
                char h[NB_SIZE_STR_MAX], n[NB_SIZE_STR_MAX];
                return nb_error_set(e, -ENOSPC,
                                    "the state dir %s has %s free, and the record of this save needs about "
                                    "%s besides the room kept for the image records",
                                    s->o->state_dir, nb_size_format(have, h), nb_size_format(need, n));
        }
        return 0;
}

static int record_begin(Save *s, bool unchanged, SnapBaselineWriter **ret, NbError *e)
{
        if (!s->o->incremental)
                return 0; /* nothing would build on it */
        if (snap_plan_stats(s->plan)->tar_bytes > snap_layer_split_budget(s->blob_max)) {
                /* The first layer of a split is written by a pass of its own (directories, deletions),
                 * before the pass that would write the record: what changes between the two would be
                 * recorded as saved and never be saved. The next save is a full one. */
                note(s, "the next save cannot build on this one: a save split into layers is not recorded");
                return 0;
        }
        if (nb_chain_record_name(&s->record_name) < 0 ||
            nb_chain_path(s->o->state_dir, s->record_name, &s->record_path) < 0)
                return nb_error_oom(e);
        NbError re = {0};
        int r = unchanged ? 0 : record_room(s, &re);
        if (r < 0) {
                s->record_path = mfree(s->record_path);
                record_failed(s, &re);
                return 0;
        }
        if (unchanged)
                /* a second name for a file never written again (both are replaced by rename, never edited)
                 */
                r = link(s->diff_base, s->record_path) < 0
                            ? nb_error_set(&re, -errno, "cannot link %s: %m", s->record_path)
                            : 0;
        else
                r = snap_baseline_writer_new(s->record_path, ret, &re);
        if (r < 0) {
                if (!unchanged)
                        s->record_path = mfree(s->record_path); /* nothing of it exists */
                record_failed(s, &re);
        }
        return 0;
}

static void record_commit(Save *s, SnapBaselineWriter *record)
{
        NbError re = {0};
        if (record && snap_baseline_writer_commit(record, NULL, &re) < 0)
                record_failed(s, &re);
}

/* ---- the squash of a deep base's top layers (snapshot.h) --------------------------------------------- */

typedef struct Download {
        Save *s;
        const RegDescriptor *blob;
        int fd; /* the writing end of a socket pair (send() with MSG_NOSIGNAL: a reader gone is EPIPE) */
        NbError error;
        int r;
} Download;

static int download_write(void *userdata, const void *data, size_t size, NbError *e)
{
        Download *d = userdata;
        const uint8_t *p = data;
        while (size > 0) {
                ssize_t n = send(d->fd, p, size, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return nb_error_set(e, -errno, "cannot hand the layer on: %m");
                p += n, size -= (size_t)n;
        }
        return 0;
}

static void *download_thread(void *userdata)
{
        Download *d = userdata;
        d->r = reg_blob_get(d->s->pull, d->s->base_repo, d->blob->digest, d->blob->size, download_write, d,
                            &d->error);
        close(TAKE_FD(d->fd)); /* the reader sees the end */
        return NULL;
}

/* Streams the i-th merged layer (0: the bottom one) from the registry into pass 1 or 2 of the squash. */
static int squash_pass(Save *s, SnapSquash *q, size_t i, bool write, NbError *e)
{
        const RegDescriptor *blob = &s->base->layers[kept(s) + i];
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return nb_error_set(e, -errno, "cannot set up the download of a base layer: %m");
        Download d = {.s = s, .blob = blob, .fd = sv[1]};
        pthread_t t;
        int r = -pthread_create(&t, NULL, download_thread, &d);
        if (r < 0) {
                close(sv[0]), close(sv[1]);
                return nb_error_set(e, r, "cannot start the download of a base layer: %s", strerror(-r));
        }
        r = write ? snap_squash_write(q, (unsigned)i, sv[0], s->root, s->layer, e)
                  : snap_squash_index(q, (unsigned)i, sv[0], e);
        close(sv[0]); /* a reader that stopped early ends the download (EPIPE) */
        pthread_join(t, NULL);
        if (d.r < 0 && (r >= 0 || d.r != -EPIPE)) { /* the registry's words over a truncated stream's */
                *e = d.error;
                return nb_error_wrap(e, d.r, "cannot download base layer %.19s", blob->digest);
        }
        return r < 0 ? nb_error_wrap(e, r, "cannot squash base layer %.19s", blob->digest) : 0;
}

/* The base's top layers, merged, written into the new layer before the changes (snapshot.h, squash): pass 1
 * reads their headers, pass 2 their entries; each downloads the layers again (memory does not grow with
 * them, the state dir holds none of them). A client of its own downloads, while the new layer uploads. */
static int squash_layers(Save *s, NbError *e)
{
        _cleanup_snap_squash_ SnapSquash *q = NULL;
        _cleanup_snap_baseline_ SnapBaseline *base = NULL;
        _cleanup_snap_walk_ SnapWalk *walk = NULL;
        int r = 0;
        note(s,
             "the base image has %zu layers, and the image may have at most %u (max_layers): its top %zu "
             "are "
             "merged with the changes into the new layer, the %zu below are kept (%zu layers left for the "
             "next "
             "saves)",
             s->base->n_layers, s->max_layers, s->squash, kept(s), s->squash_headroom);
        if (!s->pull) {
                RegClientOptions co = nb_reg_client_options(s->src_url, s->o->authfile, s->o->ca_file);
                co.cancel = s->o->cancel;
                r = reg_client_new(&co, &s->pull, e);
                if (r < 0)
                        return nb_error_wrap(e, r, "cannot use the base image's registry");
        }
        r = snap_squash_new((unsigned)s->squash, &q, e);
        if (r >= 0)
                r = snap_baseline_open(s->diff_base, &base, e);
        if (r >= 0)
                r = snap_walk_new(s->root, s->ex, &walk, e);
        if (r >= 0)
                r = snap_squash_changes(q, base, walk, s->ex, e);
        for (size_t i = 0; r >= 0 && i < s->squash; i++)
                r = squash_pass(s, q, i, false, e);
        for (size_t i = 0; r >= 0 && i < s->squash; i++)
                r = squash_pass(s, q, i, true, e);
        if (r >= 0)
                note(s, "the base image's top %zu layers merged into the new layer", s->squash);
        return r;
}

/* The changes as one layer, or as several (snapshot.h, split layers) when they do not fit in one. */
static int pack_layers(Save *s, SnapDiffStats *st, NbError *e)
{
        _cleanup_snap_baseline_writer_ SnapBaselineWriter *record = NULL;
        uint64_t budget = snap_layer_split_budget(s->blob_max);
        bool split = snap_plan_stats(s->plan)->tar_bytes > budget;
        /* Nothing changed at the counting pass (a re-save of an unchanged notebook): the layer is the empty
         * tar, and a second walk of the whole tree would only find that again. */
        const SnapPlanStats *ps = snap_plan_stats(s->plan);
        bool unchanged = ps->entries == 0 && ps->deleted == 0 && !s->squash;
        int r = record_begin(s, unchanged, &record, e);
        if (r >= 0)
                r = part_begin(s, e);
        if (r >= 0)
                r = snap_layer_new(on_tar_output, on_layer_note, s, &s->layer, e);
        if (r >= 0 && split)
                r = snap_layer_split(s->layer, budget, s->plan, on_layer_cut, e);
        if (r >= 0 && split) {
                s->in_skeleton = true;
                r = diff_pass(s, SNAP_DIFF_SKELETON, NULL, NULL, e);
                s->in_skeleton = false;
        }
        if (r >= 0 && s->squash)
                r = squash_layers(s, e);
        if (r >= 0 && !unchanged)
                r = diff_pass(s, split ? SNAP_DIFF_CONTENT : SNAP_DIFF_ALL, record, st, e);
        if (r >= 0)
                record_commit(s, record);
        if (r >= 0)
                r = snap_layer_finish(s->layer, e);
        if (r >= 0)
                r = part_end(s, e);
        return r < 0 && !s->error_final ? pack_error(s, e, r) : r;
}

/* Before packing again: the stages of the failed pass go (in stream order, see save_done()), and so do its
 * record and the layers it committed (blobs no manifest names: the registry's garbage collection takes
 * them). */
static void pack_reset(Save *s)
{
        s->layer = snap_layer_free(s->layer);
        s->compressor = snap_compressor_free(s->compressor);
        s->upload = reg_upload_abort(s->upload);
        if (s->record_path && !s->record_done)
                (void)unlink(s->record_path);
        s->record_name = mfree(s->record_name);
        s->record_path = mfree(s->record_path);
        s->upload_error = (NbError){0};
        s->upload_lost = false;
        s->compress_error = (NbError){0};
        s->n_parts = 0;
        s->blob_sent = 0;
        /* s->sent stays: it counts the bytes sent to the registry (the pushed-bytes counter of /metrics must
         * not go back), those of the failed pass included */
        s->in_content = s->in_skeleton = s->error_final = false;
        s->flow_start = 0;
}

static int pack_and_upload(Save *s, NbError *e)
{
        const NbSaveOptions *o = s->o;
        SnapDiffStats st = {0};
        report(s, NB_PHASE_PACKING);
        int r = pack_layers(s, &st, e);
        /* The registry lost the upload session (a replica that died in the middle of a chunk leaves one that
         * distribution refuses) past the bytes kept in memory: the layer is packed again from the tree, into
         * a new session. */
        for (unsigned again = 1;
             r < 0 && s->upload_lost && again <= NB_SAVE_LAYER_AGAIN_MAX && !cancelled(s); again++) {
                note(s, "packing the layer again (%u of %u): %s", again, NB_SAVE_LAYER_AGAIN_MAX, e->msg);
                pack_reset(s);
                *e = (NbError){0};
                st = (SnapDiffStats){0};
                r = pack_layers(s, &st, e);
        }
        if (r < 0)
                return r;
        uint64_t tar = 0, compressed = 0;
        for (size_t i = 0; i < s->n_parts; i++) {
                tar += s->parts[i].size_in, compressed += s->parts[i].size_out;
                if (s->n_parts > 1)
                        note(s, "layer %zu of %zu: %.19s, %" PRIu64 " bytes of tar, %" PRIu64 " compressed",
                             i + 1, s->n_parts, s->parts[i].digest, s->parts[i].size_in,
                             s->parts[i].size_out);
        }
        note(s,
             "layer %.19s: %" PRIu64 " added, %" PRIu64 " modified, %" PRIu64 " recreated, %" PRIu64
             " deleted, %" PRIu64 " unchanged; %" PRIu64 " bytes of tar, %" PRIu64 " compressed (%s)",
             s->parts[0].digest, st.added, st.modified, st.recreated, st.deleted, st.same, tar, compressed,
             snap_compression_to_string(o->compression));
        return 0;
}

static int upload_config(Save *s, NbError *e)
{
        int r = reg_blob_upload_buffer(s->dst, s->dst_repo, s->config.digest, s->config.json, s->config.size,
                                       e);
        return r < 0 ? nb_error_wrap(e, r, "cannot upload the image config") : 0;
}

/* The base config, kept whole, with the new diff_id and one history entry appended (reg_image_build_config).
 */
static int push_config(Save *s, NbError *e)
{
        report(s, NB_PHASE_CONFIG);
        nb_rfc3339(nb_now_ms(), s->created);
        _cleanup_free_ Build *b = calloc(1, sizeof(Build));
        if (!b)
                return nb_error_oom(e);
        image_build(s, b);
        int r = reg_image_build_config(&b->b, &s->config, e);
        return r < 0 ? r : upload_config(s, e);
}

/* The base manifest with our config and one more layer, in the base's media-type family (or OCI, as
 * plan_manifest() said). */
static int build_manifest(Save *s, RegBuilt *ret, NbError *e)
{
        _cleanup_free_ Build *b = calloc(1, sizeof(Build));
        if (!b)
                return nb_error_oom(e);
        image_build(s, b);
        return reg_image_build_manifest(&b->b, &s->config, ret, e);
}

static int push_manifest(Save *s, NbError *e)
{
        report(s, NB_PHASE_MANIFEST);
        /* The last moment to stop without a tag: the caller may have cancelled while recording this phase
         * (a state dir that cannot be written). */
        if (cancelled(s))
                return nb_error_set(e, -ECANCELED,
                                    "the save was cancelled before the manifest was pushed; save again");
        _cleanup_free_ char *digest = NULL;
        _cleanup_(reg_built_donep) RegBuilt m = {0};
        int r = build_manifest(s, &m, e);
        if (r < 0)
                return r;
        r = reg_manifest_put(s->dst, s->dst_repo, s->o->tag, m.media_type, m.json, m.size, &digest, e);
        if (r < 0)
                return nb_error_wrap(e, r, "cannot push the manifest");
        uint64_t total = s->config.size;
        s->img->layer_bytes = s->img->layer_bytes_uncompressed = 0;
        for (size_t i = 0; i < s->n_parts; i++) {
                total += s->parts[i].size_out;
                s->img->layer_bytes += s->parts[i].size_out;
                s->img->layer_bytes_uncompressed += s->parts[i].size_in;
        }
        for (size_t i = 0; i < kept(s); i++)
                total += (uint64_t)s->base->layers[i].size;
        s->img->size_kb = (int64_t)((total + 1023) / 1024);
        return nb_image_set(&s->img->manifest_digest, digest);
}

static int fill_request_fields(Save *s)
{
        const NbSaveOptions *o = s->o;
        NbImage *img = s->img;
        _cleanup_free_ char *swr = NULL;
        if (nb_swr_path(reg_client_host(s->dst), o->namespace, o->name, o->tag, &swr) < 0)
                return -ENOMEM;
        if (nb_image_set(&img->swr_path, swr) < 0 || nb_image_set(&img->repository, s->dst_repo) < 0)
                return -ENOMEM;
        return 0;
}

int nb_max_layers_check(unsigned long v, NbError *e)
{
        if (v != 0 && (v < NB_LAYERS_MIN || v > NB_LAYERS_MAX))
                return nb_error_set(e, -EINVAL,
                                    "max_layers takes a number from %d to %d (default %d), not %lu",
                                    NB_LAYERS_MIN, NB_LAYERS_MAX, NB_LAYERS_DEFAULT, v);
        return 0;
}

int nb_save(const NbSaveOptions *o, NbImage *img, NbError *e)
{
        Save s = {.o = o,
                  .img = img,
                  .blob_max = o->max_layer_size ? o->max_layer_size : NB_LAYER_SIZE_DEFAULT,
                  .max_layers = o->max_layers ? o->max_layers : NB_LAYERS_DEFAULT};
        int r = nb_save_validate(o, e);
        if (r >= 0 && !(s.parts = calloc(s.max_layers, sizeof(*s.parts))))
                r = nb_error_oom(e);
        if (r >= 0)
                r = connect_registries(&s, e);
        if (r >= 0)
                r = fill_request_fields(&s) < 0 ? nb_error_oom(e) : 0;
        if (r >= 0)
                r = check_tag_free(&s, e);
        if (r >= 0)
                r = nb_image_set_status(img, NB_STATUS_CREATING, "%s",
                                        nb_phase_to_string(NB_PHASE_RESOLVING));
        if (r >= 0)
                r = resolve_base(&s, e);
        if (r >= 0)
                plan_squash(&s);
        if (r >= 0)
                r = tree_setup(&s, e);
        if (r >= 0)
                r = chain_decide(&s, e);
        if (r >= 0)
                r = plan_changes(&s, e);
        if (r >= 0)
                r = plan_manifest(&s, e);
        if (r >= 0)
                r = ensure_base_layers(&s, e);
        if (r >= 0)
                r = pack_and_upload(&s, e);
        if (r >= 0)
                r = push_config(&s, e);
        if (r >= 0 && cancelled(&s))
                r = nb_error_set(e, -ECANCELED,
                                 "the save was cancelled (the agent is stopping); save again");
        if (r >= 0)
                r = push_manifest(&s, e);
        /* A save cancelled while its manifest PUT was on the wire: the manager deletes that manifest, and a
         * new save may already use the state dir; this one's record goes and the chain is left as it was. */
        if (r >= 0 && !cancelled(&s)) {
                s.record_done = true;
                chain_store(&s);
        }
        char kind[160];
        if (s.incremental)
                snprintf(kind, sizeof(kind), "incremental on %s", s.base->manifest_digest);
        else
                snprintf(kind, sizeof(kind), "full save");
        save_done(&s);
        if (r < 0) {
                nb_image_set_status(img, NB_STATUS_CREATE_FAILED, "%s", e->msg);
                return r;
        }
        return nb_image_set_status(img, NB_STATUS_ACTIVE, "saved as %s (%s; %s)", img->swr_path,
                                   img->manifest_digest ? img->manifest_digest : "", kind);
}
