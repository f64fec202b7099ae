#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "agent/image.h"
#include "agent/request.h"
#include "registry/registry.h"

void nb_create_request_done(NbCreateRequest *r)
{
        free(r->name);
        free(r->namespace);
        free(r->tag);
        free(r->description);
        free(r->workspace_id);
        free(r->swr_instance_id);
        free(r->swr_instance_domain);
        for (size_t i = 0; i < r->n_exclude_paths; i++)
                free(r->exclude_paths[i]);
        *r = (NbCreateRequest){0};
}

typedef struct RequestField {
        const char *name;
        size_t offset;
        bool (*valid)(const char *value, NbError *e);
} RequestField;

static const RequestField fields[] = {
        {"description", offsetof(NbCreateRequest, description), nb_description_valid},
        {"name", offsetof(NbCreateRequest, name), nb_name_valid},
        {"namespace", offsetof(NbCreateRequest, namespace), nb_namespace_valid},
        {"tag", offsetof(NbCreateRequest, tag), nb_tag_valid},
        {"workspace_id", offsetof(NbCreateRequest, workspace_id), nb_workspace_id_valid},
        {"swr_instance_id", offsetof(NbCreateRequest, swr_instance_id), nb_swr_instance_id_valid},
        {"swr_instance_domain", offsetof(NbCreateRequest, swr_instance_domain),
         nb_swr_instance_domain_valid},
};

/* "exclude_paths": ["/home/ma-user/.cache", ...] */
static int set_exclude_paths(NbCreateRequest *req, const cJSON *item, NbError *e)
{
        if (req->have_exclude_paths)
                return nb_error_set(e, -EINVAL, "field \"exclude_paths\" is given twice");
        if (!cJSON_IsArray(item))
                return nb_error_set(e, -EINVAL,
                                    "field \"exclude_paths\" must be an array of absolute paths");
        req->have_exclude_paths = true;
        size_t i = 0;
        for (const cJSON *x = item->child; x; x = x->next, i++) {
                char field[32];
                snprintf(field, sizeof(field), "exclude_paths[%zu]", i);
                if (i >= NB_EXCLUDE_PATHS_MAX)
                        return nb_error_set(e, -EINVAL, "field \"exclude_paths\" has more than %d paths",
                                            NB_EXCLUDE_PATHS_MAX);
                if (!cJSON_IsString(x) || !x->valuestring)
                        return nb_error_set(e, -EINVAL, "%s must be a string (an absolute path)", field);
                if (!nb_exclude_path_valid(x->valuestring, field, e))
                        return -EINVAL;
                if (!(req->exclude_paths[i] = strdup(x->valuestring)))
                        return nb_error_oom(e);
                req->n_exclude_paths = i + 1;
        }
        return 0;
}

static int set_field(NbCreateRequest *req, const cJSON *item, NbError *e)
{
        if (item->string && strcmp(item->string, "exclude_paths") == 0)
                return set_exclude_paths(req, item, e);
        const RequestField *f = NULL;
        for (size_t i = 0; i < ELEMENTSOF(fields); i++)
                if (item->string && strcmp(item->string, fields[i].name) == 0)
                        f = &fields[i];
        if (!f)
                return nb_error_set(
                        e, -EINVAL,
                        "unknown field \"%.64s\" (the body may have description, exclude_paths, name, "
                        "namespace, tag, workspace_id, swr_instance_id, swr_instance_domain)",
                        item->string ? item->string : "");
        char **slot = (char **)((char *)req + f->offset);
        if (*slot)
                return nb_error_set(e, -EINVAL, "field \"%s\" is given twice", f->name);
        if (!cJSON_IsString(item) || !item->valuestring)
                return nb_error_set(e, -EINVAL, "field \"%s\" must be a string", f->name);
        if (strlen(item->valuestring) > NB_REQUEST_BODY_MAX)
                return nb_error_set(e, -EINVAL, "field \"%s\" is too long", f->name);
        /* the description may be empty; the others, when given, must follow their rule */
        if (!(f->valid == nb_description_valid && item->valuestring[0] == '\0') &&
            !f->valid(item->valuestring, e))
                return nb_error_wrap(e, -EINVAL, "field \"%s\"", f->name);
        *slot = strdup(item->valuestring);
        return *slot ? 0 : nb_error_oom(e);
}

/* A "\u0000" escape (after an even number of backslashes): cJSON would end the C string there, so that
 * "a\u0000/../x" would be read as "a". */
static bool has_nul_escape(const char *body, size_t size)
{
        size_t backslashes = 0;
        for (size_t i = 0; i < size; i++) {
                if (body[i] != '\\') {
                        backslashes = 0;
                        continue;
                }
                if (backslashes++ % 2 == 0 && size - i >= 6 && (body[i + 1] == 'u' || body[i + 1] == 'U') &&
                    memcmp(body + i + 2, "0000", 4) == 0)
                        return true;
        }
        return false;
}

int nb_create_request_parse(const char *body, size_t size, NbCreateRequest *ret, NbError *e)
{
        if (size > NB_REQUEST_BODY_MAX)
                return nb_error_set(e, -E2BIG, "the request body is over %u bytes", NB_REQUEST_BODY_MAX);
        size_t start = 0;
        while (start < size && strchr(" \t\r\n", body[start]))
                start++;
        NbCreateRequest req = {0};
        if (start == size) {
                *ret = req;
                return 0;
        }
        if (memchr(body, '\0', size) || has_nul_escape(body, size))
                return nb_error_set(e, -EINVAL, "the request body contains a NUL byte (or \\u0000)");
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(body, size, &end, false);
        if (!j) {
                size_t at = end && end >= body && end <= body + size ? (size_t)(end - body) : 0;
                return nb_error_set(e, -EINVAL, "the request body is not valid JSON (at byte %zu)", at);
        }
        while (end && end < body + size && strchr(" \t\r\n", *end))
                end++;
        int r = 0;
        if (end && end != body + size)
                r = nb_error_set(e, -EINVAL, "the request body has data after the JSON object");
        else if (!cJSON_IsObject(j))
                r = nb_error_set(e, -EINVAL, "the request body must be a JSON object");
        size_t n = 0;
        for (const cJSON *item = j->child; r >= 0 && item; item = item->next) {
                if (++n > NB_REQUEST_FIELDS_MAX)
                        r = nb_error_set(e, -EINVAL, "the request body has too many fields");
                else
                        r = set_field(&req, item, e);
        }
        cJSON_Delete(j);
        if (r < 0) {
                nb_create_request_done(&req);
                return r;
        }
        *ret = req;
        return 0;
}

/* "registry.example.com/team/pytorch:1.4" -> "pytorch" */
static int base_name(const char *base_image, char **ret, NbError *e)
{
        RegRef *ref = NULL;
        int r = reg_ref_parse(base_image, &ref, e);
        if (r < 0)
                return nb_error_wrap(e, r, "the configured base image");
        const char *slash = strrchr(ref->repository, '/');
        char *n = strdup(slash ? slash + 1 : ref->repository);
        reg_ref_free(ref);
        if (!n)
                return nb_error_oom(e);
        *ret = n;
        return 0;
}

int nb_create_request_defaults(NbCreateRequest *r, const char *config_namespace, const char *base_image,
                               int64_t now_ms, NbError *e)
{
        if (!r->namespace) {
                if (!config_namespace)
                        return nb_error_set(e, -EINVAL,
                                            "namespace is required: the request names none and no default "
                                            "namespace is configured");
                if (!(r->namespace = strdup(config_namespace)))
                        return nb_error_oom(e);
        }
        if (!r->name) {
                int q = base_name(base_image, &r->name, e);
                if (q < 0)
                        return q;
                if (!nb_name_valid(r->name, e))
                        return e->code;
        }
        if (!r->tag) {
                char tag[32];
                time_t t = (time_t)(now_ms / 1000);
                struct tm tm;
                gmtime_r(&t, &tm);
                strftime(tag, sizeof(tag), "%Y%m%d%H%M%S", &tm);
                if (!(r->tag = strdup(tag)))
                        return nb_error_oom(e);
                r->tag_defaulted = true;
        }
        if (!r->workspace_id && !(r->workspace_id = strdup("0")))
                return nb_error_oom(e);
        if (!r->description && !(r->description = strdup("")))
                return nb_error_oom(e);
        size_t len = strlen(r->namespace) + 1 + strlen(r->name);
        if (len > 255)
                return nb_error_set(
                        e, -EINVAL,
                        "namespace/name is %zu characters; registries take repository names of at "
                        "most 255",
                        len);
        return 0;
}

int nb_create_request_unique_tag(NbCreateRequest *r, nb_tag_taken_fn taken, void *userdata, NbError *e)
{
        if (!r->tag_defaulted || !taken(userdata, r->namespace, r->name, r->tag))
                return 0;
        char tag[NB_TAG_MAX + 1];
        for (unsigned i = 2; i <= NB_TAG_SUFFIX_MAX; i++) {
                int n = snprintf(tag, sizeof(tag), "%s-%u", r->tag, i);
                if (n < 0 || (size_t)n >= sizeof(tag))
                        break;
                if (taken(userdata, r->namespace, r->name, tag))
                        continue;
                char *t = strdup(tag);
                if (!t)
                        return nb_error_oom(e);
                free(r->tag);
                r->tag = t;
                return 0;
        }
        return nb_error_set(e, -EEXIST, "no free default tag after %s: give the save a tag", r->tag);
}
