/* request.h: the body of POST /v1/{project_id}/notebooks/{id}/create-image (shared/seed/CreateImage.rst,
 * Table 2, plus the official SDKs' swr_instance_id and swr_instance_domain and the extension exclude_paths,
 * an array of paths), read strictly: a JSON object of strings, no unknown or repeated field, each by the
 * seed's rules, within named limits; every refusal names the field and the rule ("field \"tag\": image
 * tag must be ..."); then the agent's defaults for what it leaves out. Used by the daemon and its fuzzer.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "agent/image.h"
#include "common/error.h"

#define NB_REQUEST_BODY_MAX (64u * 1024) /* bytes; larger bodies get 413 */
/* A body over NB_REQUEST_BODY_MAX but within this is read to its end and dropped before the 413: answering
 * before the client has sent it all closes the connection under its feet (a reset, no answer). A larger one
 * is answered at once (curl asks with Expect: 100-continue above 1 MiB, so it sends nothing then). */
#define NB_REQUEST_DISCARD_MAX (1024u * 1024)
#define NB_REQUEST_FIELDS_MAX  16 /* members of the object looked at before giving up */

typedef struct NbCreateRequest {
        char *name, *namespace, *tag, *description, *workspace_id; /* NULL when left out */
        char *swr_instance_id, *swr_instance_domain; /* the SDKs' SWR enterprise instance: recorded only */
        /* exclude_paths: an array of at most NB_EXCLUDE_PATHS_MAX absolute container paths (image.h,
         * nb_exclude_path_valid()) left out of this save besides the configured excludes */
        char *exclude_paths[NB_EXCLUDE_PATHS_MAX];
        size_t n_exclude_paths;
        bool have_exclude_paths;
        bool tag_defaulted; /* the tag is the time of the request, not the caller's */
} NbCreateRequest;

void nb_create_request_done(NbCreateRequest *r);

/* 0 and the fields, or -EINVAL (400: not JSON, not an object, wrong type, unknown field, a rule broken) and
 * -E2BIG (413) with a message for people in e. An empty body is an empty object. */
int nb_create_request_parse(const char *body, size_t size, NbCreateRequest *ret, NbError *e);

/* Fills what the request left out: namespace from the config (error when neither), name from the base
 * image's repository (its last path component), tag = the UTC time YYYYMMDDHHMMSS of now_ms, workspace
 * "0", description "". Then checks namespace/name together (repository names are at most 255). */
int nb_create_request_defaults(NbCreateRequest *r, const char *config_namespace, const char *base_image,
                               int64_t now_ms, NbError *e);

/* Two saves in the same second would get the same default tag, and the second would take the tag from the
 * first image. When the tag was defaulted and taken() says an image of this agent has it (in this namespace
 * and name), "-2", "-3", ... is appended until one is free (at most NB_TAG_SUFFIX_MAX tries: then -EEXIST).
 * A tag the caller chose is left as it is. */
#define NB_TAG_SUFFIX_MAX 1000
typedef bool (*nb_tag_taken_fn)(void *userdata, const char *namespace, const char *name, const char *tag);
int nb_create_request_unique_tag(NbCreateRequest *r, nb_tag_taken_fn taken, void *userdata, NbError *e);
