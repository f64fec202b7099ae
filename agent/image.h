/* image.h: the image object of the CreateImage API (shared/seed/CreateImage.rst): its one owner. The CLI and
 * the daemon make it with nb_image_new(), copy it with nb_image_copy() and free it with nb_image_free(); its
 * JSON forms are the API object and the state dir's record (the API object plus what the agent needs to find
 * the image again), read back with nb_image_from_json(). Also the seed's rules for what a request may name.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "common/error.h"

#define NB_NAME_MAX           512
#define NB_TAG_MAX            64
#define NB_DESCRIPTION_MAX    512 /* characters (UTF-8 code points) */
#define NB_NAMESPACE_MAX      64
#define NB_WORKSPACE_ID_MAX   64
#define NB_STATUS_MESSAGE_MAX 1024
/* The SDKs' SWR enterprise instance fields: recorded on the image, not used for the push (that goes to the
 * configured registry). An instance id is a UUID-like token; a domain a DNS name (RFC 1035: 253). */
#define NB_SWR_INSTANCE_ID_MAX     64
#define NB_SWR_INSTANCE_DOMAIN_MAX 253
/* exclude_paths of one request: absolute container paths left out of that save only */
#define NB_EXCLUDE_PATHS_MAX 64
#define NB_EXCLUDE_PATH_MAX  4095 /* bytes of one path: PATH_MAX less its NUL */

typedef enum NbStatus {
        NB_STATUS_INIT,
        NB_STATUS_CREATING,
        NB_STATUS_ACTIVE,
        NB_STATUS_CREATE_FAILED,
        NB_STATUS_ERROR,
        NB_STATUS_DELETED,
        _NB_STATUS_MAX,
} NbStatus;

/* A running save's progress (agent/progress.h): the API object shows it as `progress` while the image is
 * INIT or CREATING; never recorded. */
typedef struct NbImageProgress {
        bool set;
        unsigned percent;
        uint64_t bytes_done, bytes_total; /* content bytes packed, and to pack */
        double bytes_per_second;          /* 0: not known yet */
        int64_t eta_seconds;              /* -1: not known */
} NbImageProgress;

typedef struct NbImage {
        char id[37];
        char *name, *namespace, *tag, *description, *workspace_id;
        char *swr_instance_id, *swr_instance_domain; /* NULL when the request named none */
        char *arch;                                  /* "X86_64" / "AARCH64" */
        char *swr_path;                              /* "<registry host>/<namespace>/<name>:<tag>" */
        char *service_type;                          /* "UNKNOWN" unless configured */
        char *status_message;
        char **dev_services;        /* NULL-terminated */
        char **resource_categories; /* NULL-terminated */
        char **exclude_paths;       /* the request's exclude_paths, NULL-terminated; NULL: none */
        NbStatus status;
        int64_t create_at, update_at; /* UTC ms */
        int64_t size_kb;
        NbImageProgress progress;
        /* not in the API object: what the agent needs to find the image again */
        char *manifest_digest;
        char *repository;
        /* not recorded either: the new layers of the save that made it (compressed blob bytes, uncompressed
         * tar bytes), for the metrics; 0 when unknown */
        uint64_t layer_bytes, layer_bytes_uncompressed;
} NbImage;

const char *nb_status_to_string(NbStatus s);
NbStatus nb_status_from_string(const char *s);

/* What a save request names. */
typedef struct NbImageNames {
        const char *namespace, *name, *tag;
        const char *description;                           /* NULL: "" */
        const char *workspace_id;                          /* NULL: "0" */
        const char *swr_instance_id, *swr_instance_domain; /* NULL: none */
} NbImageNames;

/* A new image in INIT: a fresh id, the names, service type UNKNOWN, dev services NOTEBOOK and SSH, resource
 * categories CPU (and GPU when /dev/nvidiactl exists), created and updated at now (UTC ms). swr_path,
 * repository and arch are the caller's to set. Names are not checked here (nb_save_validate() does). */
int nb_image_new(const NbImageNames *names, int64_t now, NbImage **ret);
/* A deep copy into *ret (an NbImage the caller owns; nb_image_done() it). */
int nb_image_copy(const NbImage *src, NbImage *ret);
/* Frees the fields of an NbImage the caller holds by value. */
void nb_image_done(NbImage *img);
/* Frees an image from nb_image_new() or nb_store_load_images(); NULL is fine. Returns NULL. */
NbImage *nb_image_free(NbImage *img);
/* Sets a string field, replacing the old value. */
int nb_image_set(char **field, const char *value);
/* Sets exclude_paths to a copy of the n paths (n 0: none), replacing the old ones. */
int nb_image_set_exclude_paths(NbImage *img, char *const *paths, size_t n);
int nb_image_set_status(NbImage *img, NbStatus status, const char *fmt, ...) _printf_(3, 4);

/* The API object with every response field of the seed, and swr_instance_id / swr_instance_domain when the
 * request gave them. */
cJSON *nb_image_to_json(const NbImage *img);
char *nb_image_to_string(const NbImage *img, bool pretty);

/* The record form (API object + manifest_digest + repository) and back. */
cJSON *nb_image_record_json(const NbImage *img);
int nb_image_from_json(const cJSON *j, NbImage *ret, NbError *e);
/* An image id: 36 characters, lowercase hex in 8-4-4-4-12 groups (a UUID). */
bool nb_image_id_valid(const char *id);

/* The seed's rules, plus what a registry path needs; false with a message for people in e. */
bool nb_name_valid(const char *name, NbError *e);
bool nb_tag_valid(const char *tag, NbError *e);
bool nb_namespace_valid(const char *ns, NbError *e);
bool nb_description_valid(const char *description, NbError *e);
bool nb_workspace_id_valid(const char *id, NbError *e);
bool nb_swr_instance_id_valid(const char *id, NbError *e);
bool nb_swr_instance_domain_valid(const char *domain, NbError *e);
/* One of exclude_paths: absolute, 1 to NB_EXCLUDE_PATH_MAX bytes, below the root (not "/"), no "." or ".."
 * component, no control character. field names it in the message ("exclude_paths[2]"). */
bool nb_exclude_path_valid(const char *path, const char *field, NbError *e);

static inline void nb_image_freep(NbImage **img)
{
        nb_image_free(*img);
}
#define _cleanup_nb_image_ _cleanup_(nb_image_freep)
