/* save.h: one save, start to end: validate, resolve the base image, ensure its layers are in the target
 * repository (HEAD, cross-repository mount, copy), pack what changed since the baseline into one layer while
 * it uploads (diff -> tar -> parallel gzip, or zstd when asked -> chunked PATCH; several layers when the
 * change is bigger than max_layer_size), push the config, push the
 * manifest last (so the tag never points at a half-pushed image), and fill the image object. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/image.h"
#include "common/error.h"
#include "snapshot/snapshot.h"

/* Layers of a pushed image (max_layers): docker refuses images deeper than 125 ("max depth exceeded"),
 * overlay stops at 128. */
#define NB_LAYERS_DEFAULT  125
#define NB_LAYERS_MIN      2 /* a base layer and the new one */
#define NB_LAYERS_MAX      1000
#define NB_SQUASH_HEADROOM 10 /* layers a squash leaves free for the incremental saves after it */
/* times a layer is packed again after the registry lost its upload session past the bytes kept in memory */
#define NB_SAVE_LAYER_AGAIN_MAX 2
#define NB_EXCLUDES_MAX         1024
/* One pushed layer blob at most (SWR takes 10 GB): bigger changes are split into several layers. */
#define NB_LAYER_SIZE_DEFAULT (10ull << 30)
#define NB_LAYER_SIZE_MIN     SNAP_SPLIT_BLOB_MIN /* room for headers and the compression slack */

/* Paths never saved, besides mount points (read from /proc/self/mountinfo), the state dir and credentials.
 */
#define NB_DEFAULT_EXCLUDES                                                                                 \
        {                                                                                                   \
                "/proc", "/sys", "/dev", "/run", NULL                                                       \
        }

typedef enum NbPhase {
        NB_PHASE_RESOLVING,   /* base image manifest and config */
        NB_PHASE_BASE_LAYERS, /* HEAD / mount / copy of base layers */
        NB_PHASE_PACKING,     /* walk, diff, tar, gzip, upload of the new layer */
        NB_PHASE_CONFIG,
        NB_PHASE_MANIFEST,
        _NB_PHASE_MAX,
} NbPhase;

const char *nb_phase_to_string(NbPhase p);

/* While content bytes flow into the layer, a save reports its progress at least this often (besides every
 * few thousand entries walked and at each phase change). */
#define NB_PROGRESS_REPORT_USEC (250ull * 1000)

/* What a save reports (agent/progress.h turns it into a percent, a rate and a time left). */
typedef struct NbProgress {
        NbPhase phase;
        uint64_t entries;   /* entries walked */
        uint64_t read;      /* file bytes read into the layer (a squash's merged layers included) */
        uint64_t sent;      /* compressed bytes uploaded */
        uint64_t done;      /* content bytes of the changes packed so far (read, less a squash's) */
        uint64_t total;     /* content bytes of the changes the counting pass found (SnapPlanStats.bytes) */
        uint64_t flow_usec; /* time since the first content byte was packed, to the last one of packing */
} NbProgress;

typedef struct NbSaveOptions {
        const char *root;
        const char *state_dir;
        const char *registry_url;
        const char *base_image; /* REPO[:TAG|@DIGEST], optionally with a host */
        const char *namespace, *name, *tag, *description, *workspace_id;
        const char *authfile;
        const char *ca_file;
        const char *const *excludes; /* container paths */
        size_t n_excludes;
        const char *mountinfo; /* NULL: /proc/self/mountinfo */
        unsigned threads;      /* 0: all CPUs */
        /* The new layer's compression (snapshot.h: its names, levels and checks). gzip is the default: every
         * runtime reads it. zstd (application/vnd.oci.image.layer.v1.tar+zstd) needs containerd >= 1.5,
         * podman/CRI-O, or Docker >= 23 to pull, and an OCI manifest: a Docker schema2 base is written out
         * as an OCI image (see save.c). */
        SnapCompression compression;
        int level;         /* of that compressor (gzip 0-9, zstd 1-19), -1: its default */
        size_t chunk_size; /* upload PATCH size, 0: default */
        /* Refuse the save, before any upload, when the files that changed come to more than this many
         * bytes (uncompressed, snap_diff_plan()); 0: no limit. */
        uint64_t max_image_size;
        /* No layer blob pushed is bigger than this: a bigger change is cut into several layers
         * (snapshot.h, split layers); a single file that cannot fit fails before any upload. 0:
         * NB_LAYER_SIZE_DEFAULT; else at least NB_LAYER_SIZE_MIN. */
        uint64_t max_layer_size;
        /* Build on the last save's image when the state dir has one that is still in the registry (chain.h):
         * one layer of what changed since it. Otherwise, or when the rules below say so, a full save. */
        bool incremental;
        /* The pushed image never has more layers: 0: NB_LAYERS_DEFAULT; else NB_LAYERS_MIN..NB_LAYERS_MAX. A
         * chain that would exceed it is saved in full on the base image. */
        unsigned max_layers;
        /* Percent: an incremental save that would leave more than this share of the chain's own bytes
         * dead (deleted or replaced by later layers) is a full save instead. -1: NB_CHAIN_WASTE_DEFAULT. */
        int chain_waste_max;
        /* Push even when namespace/name:tag already exists in the registry. false: the save asks the
         * registry first (HEAD of the manifest) and fails before anything is uploaded when the tag exists,
         * or when the registry cannot say. overwrite_how says how the caller allows it ("give --overwrite")
         * in those messages. */
        bool overwrite;
        const char *overwrite_how;
        const _Atomic bool *cancel; /* set from another thread: the save stops soon with -ECANCELED */
        void (*progress)(void *userdata, const NbProgress *p);
        void (*note)(void *userdata, const char *message);
        /* What went wrong and was survived (an upload session left by an earlier save that cannot be
         * deleted yet); NULL: told through note. */
        void (*warning)(void *userdata, const char *message);
        void *userdata;
        /* Who runs the save, for the record of its upload sessions (sessions.h): "nbsnap save", "nbsnapd".
         */
        const char *program;
} NbSaveOptions;

/* Checks every option that can be checked without touching the registry or the tree. */
int nb_save_validate(const NbSaveOptions *o, NbError *e);

/* Runs the save. img must come with id, create_at and the request fields set; on return its status is ACTIVE
 * (0) or CREATE_FAILED (negative errno, status_message and e say why). */
int nb_save(const NbSaveOptions *o, NbImage *img, NbError *e);

/* Checks a --max-layers / max_layers value: 0 (the default) or NB_LAYERS_MIN..NB_LAYERS_MAX. */
int nb_max_layers_check(unsigned long v, NbError *e);

/* Baseline file inside the state dir. */
int nb_baseline_path(const char *state_dir, char **ret);
/* The exclusion set a save or a baseline uses: defaults, mount points, state dir, credentials, user paths.
 */
struct SnapExcludes;
int nb_excludes_build(const char *root, const char *state_dir, const char *authfile,
                      const char *const *paths, size_t n_paths, const char *mountinfo,
                      struct SnapExcludes **ret, NbError *e);
