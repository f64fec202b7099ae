/* list.c: ListImage's query parameters, its selection, order and page (list.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/list.h"

void nb_list_query_init(NbListQuery *q)
{
        *q = (NbListQuery){
                .limit = NB_LIST_LIMIT_DEFAULT,
                .name_fuzzy = true,
                .status = _NB_STATUS_MAX,
                .sort_key = NB_LIST_SORT_CREATE_AT,
        };
}

void nb_list_query_done(NbListQuery *q)
{
        free(q->name);
        free(q->namespace);
        free(q->workspace_id);
        free(q->service_type);
        nb_list_query_init(q);
}

/* A decimal number of at most 7 digits, nothing else (no sign, no space). */
static bool parse_count(const char *v, unsigned *ret)
{
        size_t n = v ? strlen(v) : 0;
        if (n == 0 || n > 7 || strspn(v, "0123456789") != n)
                return false;
        *ret = (unsigned)strtoul(v, NULL, 10);
        return true;
}

static int set_limit(NbListQuery *q, const char *v, NbError *e)
{
        unsigned n;
        if (!parse_count(v, &n) || n < 1 || n > NB_LIST_LIMIT_MAX)
                return nb_error_set(e, -EINVAL,
                                    "query parameter \"limit\" must be a whole number from 1 to %d (default "
                                    "%d)",
                                    NB_LIST_LIMIT_MAX, NB_LIST_LIMIT_DEFAULT);
        q->limit = n;
        return 0;
}

static int set_offset(NbListQuery *q, const char *v, NbError *e)
{
        unsigned n;
        if (!parse_count(v, &n) || n > NB_LIST_OFFSET_MAX)
                return nb_error_set(e, -EINVAL,
                                    "query parameter \"offset\" must be a whole number from 0 to %d "
                                    "(records to skip; default 0)",
                                    NB_LIST_OFFSET_MAX);
        q->offset = n;
        return 0;
}

static int set_string(char **slot, const char *key, const char *v, bool (*valid)(const char *, NbError *),
                      NbError *e)
{
        if (!valid(v ? v : "", e))
                return nb_error_wrap(e, -EINVAL, "query parameter \"%s\"", key);
        return (*slot = strdup(v)) ? 0 : nb_error_oom(e);
}

/* The reference's rule for the name asked for: up to NB_NAME_MAX of [a-z0-9._-]. No rule on where the
 * separators stand: with name_fuzzy_match (the default) it is a part of a name. */
static bool query_name_valid(const char *v, NbError *e)
{
        size_t n = strlen(v);
        if (n == 0 || n > NB_NAME_MAX || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789._-") != n)
                return nb_error_set(e, -EINVAL,
                                    "must be 1 to %d characters of lowercase letters, digits, '.', '_' and "
                                    "'-'",
                                    NB_NAME_MAX),
                       false;
        return true;
}

static int set_name(NbListQuery *q, const char *v, NbError *e)
{
        return set_string(&q->name, "name", v, query_name_valid, e);
}

static int set_namespace(NbListQuery *q, const char *v, NbError *e)
{
        return set_string(&q->namespace, "namespace", v, nb_namespace_valid, e);
}

static int set_workspace_id(NbListQuery *q, const char *v, NbError *e)
{
        return set_string(&q->workspace_id, "workspace_id", v, nb_workspace_id_valid, e);
}

static int set_name_fuzzy_match(NbListQuery *q, const char *v, NbError *e)
{
        if (v && strcasecmp(v, "true") == 0)
                q->name_fuzzy = true;
        else if (v && strcasecmp(v, "false") == 0)
                q->name_fuzzy = false;
        else
                return nb_error_set(e, -EINVAL,
                                    "query parameter \"name_fuzzy_match\" must be true or false (default "
                                    "true)");
        return 0;
}

/* Each an enum: the value must be one of words; *ret its index. */
static int set_word(const char *key, const char *v, const char *const *words, const char *rule, int *ret,
                    NbError *e)
{
        for (int i = 0; words[i]; i++)
                if (v && strcmp(v, words[i]) == 0) {
                        *ret = i;
                        return 0;
                }
        return nb_error_set(e, -EINVAL, "query parameter \"%s\" must be %s", key, rule);
}

static int set_sort_dir(NbListQuery *q, const char *v, NbError *e)
{
        static const char *const words[] = {"DESC", "ASC", NULL};
        int i = 0;
        int r = set_word("sort_dir", v, words, "ASC or DESC (default DESC)", &i, e);
        if (r >= 0)
                q->ascending = i == 1;
        return r;
}

static int set_sort_key(NbListQuery *q, const char *v, NbError *e)
{
        static const char *const words[] = {"create_at", "update_at", "name", NULL};
        int i = 0;
        int r = set_word("sort_key", v, words, "one of create_at (default), update_at, name", &i, e);
        if (r >= 0)
                q->sort_key = (NbListSortKey)i;
        return r;
}

static int set_status(NbListQuery *q, const char *v, NbError *e)
{
        q->status = nb_status_from_string(v);
        if (q->status == _NB_STATUS_MAX)
                return nb_error_set(e, -EINVAL,
                                    "query parameter \"status\" must be one of INIT, CREATING, ACTIVE, "
                                    "CREATE_FAILED, ERROR, DELETED");
        return 0;
}

static int set_type(NbListQuery *q, const char *v, NbError *e)
{
        static const char *const words[] = {"DEDICATED", "BUILD_IN", NULL};
        int i = 0;
        int r = set_word("type", v, words, "DEDICATED or BUILD_IN", &i, e);
        if (r >= 0)
                q->only_build_in = i == 1;
        return r;
}

static int set_service_type(NbListQuery *q, const char *v, NbError *e)
{
        static const char *const words[] = {"COMMON", "INFERENCE", "TRAIN", "DEV", "UNKNOWN", NULL};
        int i = 0;
        int r = set_word("service_type", v, words, "one of COMMON, INFERENCE, TRAIN, DEV, UNKNOWN", &i, e);
        if (r >= 0 && !(q->service_type = strdup(v)))
                return nb_error_oom(e);
        return r;
}

typedef struct ListParam {
        const char *name;
        int (*set)(NbListQuery *q, const char *value, NbError *e);
} ListParam;

static const ListParam params[] = {
        {"limit", set_limit},
        {"offset", set_offset},
        {"name", set_name},
        {"name_fuzzy_match", set_name_fuzzy_match},
        {"namespace", set_namespace},
        {"service_type", set_service_type},
        {"sort_dir", set_sort_dir},
        {"sort_key", set_sort_key},
        {"status", set_status},
        {"type", set_type},
        {"workspace_id", set_workspace_id},
};

int nb_list_query_set(NbListQuery *q, const char *key, const char *value, NbError *e)
{
        for (size_t i = 0; i < ELEMENTSOF(params); i++) {
                if (strcmp(key, params[i].name) != 0)
                        continue;
                if (q->given & (1u << i))
                        return nb_error_set(e, -EINVAL, "query parameter \"%s\" is given twice", key);
                q->given |= 1u << i;
                return params[i].set(q, value, e);
        }
        return nb_error_set(e, -EINVAL,
                            "unknown query parameter \"%.64s\" (ListImage takes limit, offset, name, "
                            "name_fuzzy_match, namespace, service_type, sort_dir, sort_key, status, type, "
                            "workspace_id)",
                            key);
}

static bool str_eq(const char *want, const char *have)
{
        return !want || (have && strcmp(want, have) == 0);
}

bool nb_list_query_match(const NbListQuery *q, const NbImage *img)
{
        if (q->only_build_in)
                return false;
        if (q->status != _NB_STATUS_MAX && img->status != q->status)
                return false;
        if (q->name &&
            !(q->name_fuzzy ? img->name && strstr(img->name, q->name) : str_eq(q->name, img->name)))
                return false;
        return str_eq(q->namespace, img->namespace) &&
               str_eq(q->workspace_id, img->workspace_id ? img->workspace_id : "0") &&
               str_eq(q->service_type, img->service_type ? img->service_type : "UNKNOWN");
}

static int cmp_i64(int64_t a, int64_t b)
{
        return a < b ? -1 : a > b;
}

int nb_list_query_compare(const NbListQuery *q, const NbImage *a, const NbImage *b)
{
        int c = q->sort_key == NB_LIST_SORT_UPDATE_AT ? cmp_i64(a->update_at, b->update_at)
                : q->sort_key == NB_LIST_SORT_NAME ? strcmp(a->name ? a->name : "", b->name ? b->name : "")
                                                   : cmp_i64(a->create_at, b->create_at);
        if (c == 0)
                c = strcmp(a->id, b->id);
        return q->ascending ? c : -c;
}

void nb_list_page(const NbListQuery *q, size_t total, NbListPage *ret)
{
        size_t limit = q->limit ? q->limit : NB_LIST_LIMIT_DEFAULT;
        size_t first = q->offset < total ? q->offset : total;
        size_t left = total - first;
        *ret = (NbListPage){
                .current = q->offset / limit,
                .pages = (total + limit - 1) / limit,
                .size = limit,
                .total = total,
                .first = first,
                .count = left < limit ? left : limit,
        };
}
