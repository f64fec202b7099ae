/* list.h: ListImage, GET /v1/{project_id}/images, as the ModelArts API reference has it: its query
 * parameters read strictly (each by its rule; an unknown or repeated one refused, naming it), which images
 * they select and in which order, and the page they answer, {"current", "data", "pages", "size", "total"}:
 * offset counts records (not pages), size is the limit, current the index of the page offset falls in
 * (offset / limit, from 0), pages the pages all the matching records fill (ceil(total / limit)). Values are
 * taken as sent: the API does not percent-decode (agent/api.h). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "agent/image.h"
#include "common/error.h"

#define NB_LIST_LIMIT_DEFAULT 200
#define NB_LIST_LIMIT_MAX     1000
#define NB_LIST_OFFSET_MAX    1000000 /* far past the records kept (NB_STORE_IMAGES_MAX): an empty page */

typedef enum NbListSortKey {
        NB_LIST_SORT_CREATE_AT,
        NB_LIST_SORT_UPDATE_AT,
        NB_LIST_SORT_NAME,
} NbListSortKey;

typedef struct NbListQuery {
        unsigned limit, offset;
        char *name;         /* NULL: any */
        bool name_fuzzy;    /* name_fuzzy_match: name is a substring (default) or the whole name */
        char *namespace;    /* NULL: any */
        char *workspace_id; /* NULL: any */
        char *service_type; /* NULL: any */
        bool only_build_in; /* type=BUILD_IN: this agent's images are all DEDICATED, so none */
        NbStatus status;    /* _NB_STATUS_MAX: any */
        NbListSortKey sort_key;
        bool ascending; /* sort_dir=ASC; DESC (newest first) by default */
        unsigned given; /* parameters seen, one bit each: a repeat is refused */
} NbListQuery;

/* The defaults: limit 200, offset 0, everything, newest first. */
void nb_list_query_init(NbListQuery *q);
void nb_list_query_done(NbListQuery *q);
/* One query parameter (value NULL when it came without '='). -EINVAL with a message naming the parameter
 * and its rule; -ENOMEM. */
int nb_list_query_set(NbListQuery *q, const char *key, const char *value, NbError *e);

bool nb_list_query_match(const NbListQuery *q, const NbImage *img);
/* The order the query asks for (ties broken by id): <0, 0, >0 as for qsort. */
int nb_list_query_compare(const NbListQuery *q, const NbImage *a, const NbImage *b);

typedef struct NbListPage {
        size_t current; /* offset / limit */
        size_t pages;   /* ceil(total / limit) */
        size_t size;    /* limit */
        size_t total;   /* records matching */
        size_t first;   /* index of the page's first record among the matching ones */
        size_t count;   /* records on this page */
} NbListPage;

void nb_list_page(const NbListQuery *q, size_t total, NbListPage *ret);
