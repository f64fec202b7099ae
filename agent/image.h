/* image.h: the image object of the CreateImage API (shared/seed/CreateImage.rst), its JSON form, and the
 * seed's rules for what a request may name. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "common/error.h"

#define NB_NAME_MAX           512
#define NB_TAG_MAX            64
#define NB_DESCRIPTION_MAX    512 /* characters (UTF-8 code points) */
#define NB_NAMESPACE_MAX      64
#define NB_WORKSPACE_ID_MAX   64
#define NB_STATUS_MESSAGE_MAX 1024

typedef enum NbStatus {
        NB_STATUS_INIT,
        NB_STATUS_CREATING,
        NB_STATUS_ACTIVE,
        NB_STATUS_CREATE_FAILED,
        NB_STATUS_ERROR,
        NB_STATUS_DELETED,
        _NB_STATUS_MAX,
} NbStatus;

typedef struct NbImage {
        char id[37];
        char *name, *namespace, *tag, *description, *workspace_id;
        char *arch;         /* "X86_64" / "AARCH64" */
        char *swr_path;     /* "<registry host>/<namespace>/<name>:<tag>" */
        char *service_type; /* "UNKNOWN" unless configured */
        char *status_message;
        char **dev_services;        /* NULL-terminated */
        char **resource_categories; /* NULL-terminated */
        NbStatus status;
        int64_t create_at, update_at; /* UTC ms */
        int64_t size_kb;
        /* not in the API object: what the agent needs to find the image again */
        char *manifest_digest;
        char *repository;
} NbImage;

const char *nb_status_to_string(NbStatus s);
NbStatus nb_status_from_string(const char *s);

void nb_image_done(NbImage *img);
/* Sets a string field, replacing the old value. */
int nb_image_set(char **field, const char *value);
int nb_image_set_status(NbImage *img, NbStatus status, const char *fmt, ...) _printf_(3, 4);

/* The API object with every response field of the seed. */
cJSON *nb_image_to_json(const NbImage *img);
char *nb_image_to_string(const NbImage *img, bool pretty);

/* The seed's rules, plus what a registry path needs; false with a message for people in e. */
bool nb_name_valid(const char *name, NbError *e);
bool nb_tag_valid(const char *tag, NbError *e);
bool nb_namespace_valid(const char *ns, NbError *e);
bool nb_description_valid(const char *description, NbError *e);
bool nb_workspace_id_valid(const char *id, NbError *e);
