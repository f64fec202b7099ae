#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/clock.h"
#include "agent/image.h"

static const char *const status_names[_NB_STATUS_MAX] = {
        [NB_STATUS_INIT] = "INIT",     [NB_STATUS_CREATING] = "CREATING",
        [NB_STATUS_ACTIVE] = "ACTIVE", [NB_STATUS_CREATE_FAILED] = "CREATE_FAILED",
        [NB_STATUS_ERROR] = "ERROR",   [NB_STATUS_DELETED] = "DELETED",
};

const char *nb_status_to_string(NbStatus s)
{
        return s < _NB_STATUS_MAX ? status_names[s] : "ERROR";
}

NbStatus nb_status_from_string(const char *s)
{
        for (NbStatus i = 0; i < _NB_STATUS_MAX; i++)
                if (s && strcmp(s, status_names[i]) == 0)
                        return i;
        return _NB_STATUS_MAX;
}

static void strv_free(char **v)
{
        for (char **p = v; p && *p; p++)
                free(*p);
        free(v);
}

void nb_image_done(NbImage *img)
{
        free(img->name);
        free(img->namespace);
        free(img->tag);
        free(img->description);
        free(img->workspace_id);
        free(img->arch);
        free(img->swr_path);
        free(img->service_type);
        free(img->status_message);
        free(img->manifest_digest);
        free(img->repository);
        strv_free(img->dev_services);
        strv_free(img->resource_categories);
        *img = (NbImage){0};
}

int nb_image_set(char **field, const char *value)
{
        char *copy = NULL;
        if (value && !(copy = strdup(value)))
                return -ENOMEM;
        free(*field);
        *field = copy;
        return 0;
}

int nb_image_set_status(NbImage *img, NbStatus status, const char *fmt, ...)
{
        char msg[NB_STATUS_MESSAGE_MAX];
        msg[0] = '\0';
        if (fmt) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(msg, sizeof(msg), fmt, ap);
                va_end(ap);
        }
        img->status = status;
        img->update_at = nb_now_ms();
        return nb_image_set(&img->status_message, msg);
}

static cJSON *strv_json(char *const *v)
{
        cJSON *a = cJSON_CreateArray();
        for (char *const *p = v; a && p && *p; p++)
                cJSON_AddItemToArray(a, cJSON_CreateString(*p));
        return a;
}

cJSON *nb_image_to_json(const NbImage *img)
{
        cJSON *o = cJSON_CreateObject();
        if (!o)
                return NULL;
#define S(k, v) cJSON_AddStringToObject(o, k, (v) ? (v) : "")
        S("arch", img->arch);
        cJSON_AddNumberToObject(o, "create_at", (double)img->create_at);
        S("description", img->description);
        cJSON_AddItemToObject(o, "dev_services", strv_json(img->dev_services));
        S("id", img->id);
        S("name", img->name);
        S("namespace", img->namespace);
        S("origin", "IMAGE_SAVE");
        cJSON_AddItemToObject(o, "resource_categories", strv_json(img->resource_categories));
        S("service_type", img->service_type ? img->service_type : "UNKNOWN");
        cJSON_AddNumberToObject(o, "size", (double)img->size_kb);
        S("status", nb_status_to_string(img->status));
        S("status_message", img->status_message);
        cJSON_AddItemToObject(o, "support_res_categories", strv_json(img->resource_categories));
        S("swr_path", img->swr_path);
        S("tag", img->tag);
        S("type", "DEDICATED");
        cJSON_AddNumberToObject(o, "update_at", (double)img->update_at);
        S("visibility", "PRIVATE");
        S("workspace_id", img->workspace_id ? img->workspace_id : "0");
#undef S
        return o;
}

char *nb_image_to_string(const NbImage *img, bool pretty)
{
        cJSON *o = nb_image_to_json(img);
        if (!o)
                return NULL;
        char *s = pretty ? cJSON_Print(o) : cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return s;
}

static bool all_in(const char *s, const char *extra, bool upper)
{
        for (const char *p = s; *p; p++) {
                char c = *p;
                if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (upper && c >= 'A' && c <= 'Z'))
                        continue;
                if (!strchr(extra, c))
                        return false;
        }
        return true;
}

static bool alnum(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool nb_name_valid(const char *name, NbError *e)
{
        size_t n = name ? strlen(name) : 0;
        if (n == 0 || n > NB_NAME_MAX || !all_in(name, "._-", false))
                return nb_error_set(e, -EINVAL,
                                    "image name must be 1 to %d characters of lowercase letters, digits, "
                                    "'.', '_' "
                                    "and '-'",
                                    NB_NAME_MAX),
                       false;
        /* what registries take as a path component: alphanumeric at both ends, no ".." or "._" runs */
        if (!alnum(name[0]) || !alnum(name[n - 1]) || strstr(name, "..") || strstr(name, "._") ||
            strstr(name, "_.") || strstr(name, ".-") || strstr(name, "-.") || strstr(name, "___") ||
            strstr(name, "_-") || strstr(name, "-_"))
                return nb_error_set(
                               e, -EINVAL,
                               "image name '%s' is not a valid registry repository name: it must start and "
                               "end with a letter or digit, and separators ('.', '_', '__', '-') must stand "
                               "between letters or digits",
                               name),
                       false;
        return true;
}

bool nb_tag_valid(const char *tag, NbError *e)
{
        size_t n = tag ? strlen(tag) : 0;
        if (n == 0 || n > NB_TAG_MAX || !all_in(tag, "._-", true))
                return nb_error_set(
                               e, -EINVAL,
                               "image tag must be 1 to %d characters of letters, digits, '.', '_' and '-'",
                               NB_TAG_MAX),
                       false;
        if (tag[0] == '.' || tag[0] == '-')
                return nb_error_set(e, -EINVAL, "image tag '%s' must not start with '.' or '-'", tag), false;
        return true;
}

bool nb_namespace_valid(const char *ns, NbError *e)
{
        size_t n = ns ? strlen(ns) : 0;
        if (n == 0 || n > NB_NAMESPACE_MAX || !all_in(ns, "._-", false) || !alnum(ns[0]) ||
            !alnum(ns[n - 1]) || strstr(ns, "..") || strstr(ns, "--"))
                return nb_error_set(
                               e, -EINVAL,
                               "namespace (organization) must be 1 to %d characters of lowercase letters, "
                               "digits, '.', '_' and '-', starting and ending with a letter or digit",
                               NB_NAMESPACE_MAX),
                       false;
        return true;
}

/* Counts UTF-8 code points; false on a malformed sequence. */
static bool utf8_count(const char *s, size_t *ret)
{
        size_t n = 0;
        const unsigned char *p = (const unsigned char *)s;
        while (*p) {
                unsigned len = *p < 0x80         ? 1
                               : (*p >> 5) == 6  ? 2
                               : (*p >> 4) == 14 ? 3
                               : (*p >> 3) == 30 ? 4
                                                 : 0;
                if (len == 0)
                        return false;
                for (unsigned i = 1; i < len; i++)
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                p += len;
                n++;
        }
        *ret = n;
        return true;
}

bool nb_description_valid(const char *d, NbError *e)
{
        size_t n;
        if (!d)
                return true;
        if (!utf8_count(d, &n))
                return nb_error_set(e, -EINVAL, "description is not valid UTF-8"), false;
        if (n > NB_DESCRIPTION_MAX)
                return nb_error_set(e, -EINVAL, "description has %zu characters; at most %d are allowed", n,
                                    NB_DESCRIPTION_MAX),
                       false;
        return true;
}

bool nb_workspace_id_valid(const char *id, NbError *e)
{
        size_t n = id ? strlen(id) : 0;
        if (n == 0 || n > NB_WORKSPACE_ID_MAX || !all_in(id, "-_", true))
                return nb_error_set(e, -EINVAL, "workspace_id must be 1 to %d letters, digits, '-' or '_'",
                                    NB_WORKSPACE_ID_MAX),
                       false;
        return true;
}
