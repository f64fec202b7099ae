/* image.c: the image record (NbImage): its one constructor, copy and free, its JSON forms (the API object,
 * and the state dir's record that adds what the agent needs to find the image again), and the seed's rules
 * for what a request may name. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent/image.h"
#include "common/clock.h"
#include "common/uuid.h"

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

/* The string fields of the record, for copying and reading it back. */
typedef struct Field {
        const char *name;
        size_t offset; /* char * in NbImage */
        size_t max;
        bool required;
} Field;

static const Field string_fields[] = {
        {"name", offsetof(NbImage, name), NB_NAME_MAX, true},
        {"namespace", offsetof(NbImage, namespace), NB_NAMESPACE_MAX, true},
        {"tag", offsetof(NbImage, tag), NB_TAG_MAX, true},
        {"description", offsetof(NbImage, description), NB_DESCRIPTION_MAX * 4, false},
        {"workspace_id", offsetof(NbImage, workspace_id), NB_WORKSPACE_ID_MAX, false},
        {"swr_instance_id", offsetof(NbImage, swr_instance_id), NB_SWR_INSTANCE_ID_MAX, false},
        {"swr_instance_domain", offsetof(NbImage, swr_instance_domain), NB_SWR_INSTANCE_DOMAIN_MAX, false},
        {"arch", offsetof(NbImage, arch), 32, false},
        {"swr_path", offsetof(NbImage, swr_path), 1024, false},
        {"service_type", offsetof(NbImage, service_type), 32, false},
        {"status_message", offsetof(NbImage, status_message), NB_STATUS_MESSAGE_MAX * 4, false},
        {"manifest_digest", offsetof(NbImage, manifest_digest), 128, false},
        {"repository", offsetof(NbImage, repository), 600, false},
};

void nb_image_done(NbImage *img)
{
        free(img->name);
        free(img->namespace);
        free(img->tag);
        free(img->description);
        free(img->workspace_id);
        free(img->swr_instance_id);
        free(img->swr_instance_domain);
        free(img->arch);
        free(img->swr_path);
        free(img->service_type);
        free(img->status_message);
        free(img->manifest_digest);
        free(img->repository);
        strv_free(img->dev_services);
        strv_free(img->resource_categories);
        strv_free(img->exclude_paths);
        *img = (NbImage){0};
}

NbImage *nb_image_free(NbImage *img)
{
        if (img) {
                nb_image_done(img);
                free(img);
        }
        return NULL;
}

static int strv_copy(char *const *v, char ***ret)
{
        size_t n = 0;
        while (v && v[n])
                n++;
        if (!v) {
                *ret = NULL;
                return 0;
        }
        char **c = calloc(n + 1, sizeof(char *));
        if (!c)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                if (!(c[i] = strdup(v[i]))) {
                        for (size_t k = 0; k < i; k++)
                                free(c[k]);
                        free(c);
                        return -ENOMEM;
                }
        *ret = c;
        return 0;
}

int nb_image_copy(const NbImage *src, NbImage *ret)
{
        NbImage c = {0};
        memcpy(c.id, src->id, sizeof(c.id));
        c.status = src->status;
        c.create_at = src->create_at;
        c.update_at = src->update_at;
        c.size_kb = src->size_kb;
        c.progress = src->progress;
        c.layer_bytes = src->layer_bytes;
        c.layer_bytes_uncompressed = src->layer_bytes_uncompressed;
        int r = 0;
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(string_fields); i++) {
                size_t off = string_fields[i].offset;
                r = nb_image_set((char **)((char *)&c + off), *(char *const *)((const char *)src + off));
        }
        if (r >= 0)
                r = strv_copy(src->dev_services, &c.dev_services);
        if (r >= 0)
                r = strv_copy(src->resource_categories, &c.resource_categories);
        if (r >= 0)
                r = strv_copy(src->exclude_paths, &c.exclude_paths);
        if (r < 0) {
                nb_image_done(&c);
                return -ENOMEM;
        }
        *ret = c;
        return 0;
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

int nb_image_set_exclude_paths(NbImage *img, char *const *paths, size_t n)
{
        char **v = NULL;
        if (n > 0) {
                if (!(v = calloc(n + 1, sizeof(char *))))
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++)
                        if (!(v[i] = strdup(paths[i]))) {
                                strv_free(v);
                                return -ENOMEM;
                        }
        }
        strv_free(img->exclude_paths);
        img->exclude_paths = v;
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

static int strv_new(char ***ret, const char *const *items)
{
        size_t n = 0;
        while (items[n])
                n++;
        char **v = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; v && i < n; i++)
                if (!(v[i] = strdup(items[i]))) {
                        strv_free(v);
                        return -ENOMEM;
                }
        if (!v)
                return -ENOMEM;
        *ret = v;
        return 0;
}

int nb_image_new(const NbImageNames *names, int64_t now, NbImage **ret)
{
        static const char *const dev_services[] = {"NOTEBOOK", "SSH", NULL};
        const char *categories[] = {"CPU", access("/dev/nvidiactl", F_OK) == 0 ? "GPU" : NULL, NULL};
        _cleanup_nb_image_ NbImage *img = calloc(1, sizeof(*img));
        if (!img)
                return -ENOMEM;
        int r = nb_uuid(img->id);
        if (r < 0)
                return r;
        const struct {
                char **field;
                const char *value;
        } set[] = {
                {&img->name, names->name},
                {&img->namespace, names->namespace},
                {&img->tag, names->tag},
                {&img->description, names->description ? names->description : ""},
                {&img->workspace_id, names->workspace_id ? names->workspace_id : "0"},
                {&img->service_type, "UNKNOWN"},
                {&img->swr_instance_id, names->swr_instance_id},
                {&img->swr_instance_domain, names->swr_instance_domain},
        };
        for (size_t i = 0; i < ELEMENTSOF(set); i++)
                if (nb_image_set(set[i].field, set[i].value) < 0)
                        return -ENOMEM;
        if (strv_new(&img->dev_services, dev_services) < 0 ||
            strv_new(&img->resource_categories, categories) < 0)
                return -ENOMEM;
        img->status = NB_STATUS_INIT;
        img->create_at = img->update_at = now;
        *ret = TAKE_PTR(img);
        return 0;
}

static cJSON *strv_json(char *const *v)
{
        cJSON *a = cJSON_CreateArray();
        for (char *const *p = v; a && p && *p; p++)
                cJSON_AddItemToArray(a, cJSON_CreateString(*p));
        return a;
}

/* An extension of the API object: the numbers status_message shows, for programs. */
static bool progress_json(cJSON *o, const NbImageProgress *p)
{
        cJSON *j = cJSON_AddObjectToObject(o, "progress");
        return j && cJSON_AddNumberToObject(j, "percent", p->percent) &&
               cJSON_AddNumberToObject(j, "bytes_done", (double)p->bytes_done) &&
               cJSON_AddNumberToObject(j, "bytes_total", (double)p->bytes_total) &&
               (p->bytes_per_second > 0 ? cJSON_AddNumberToObject(j, "bytes_per_second",
                                                                  (double)(uint64_t)p->bytes_per_second)
                                        : cJSON_AddNullToObject(j, "bytes_per_second")) &&
               (p->eta_seconds >= 0 ? cJSON_AddNumberToObject(j, "eta_seconds", (double)p->eta_seconds)
                                    : cJSON_AddNullToObject(j, "eta_seconds"));
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
        cJSON_AddItemToObject(o, "exclude_paths", strv_json(img->exclude_paths));
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
        if (img->swr_instance_domain)
                S("swr_instance_domain", img->swr_instance_domain);
        if (img->swr_instance_id)
                S("swr_instance_id", img->swr_instance_id);
        S("swr_path", img->swr_path);
        S("tag", img->tag);
        S("type", "DEDICATED");
        cJSON_AddNumberToObject(o, "update_at", (double)img->update_at);
        S("visibility", "PRIVATE");
        S("workspace_id", img->workspace_id ? img->workspace_id : "0");
#undef S
        if (img->progress.set && (img->status == NB_STATUS_INIT || img->status == NB_STATUS_CREATING) &&
            !progress_json(o, &img->progress)) {
                cJSON_Delete(o);
                return NULL;
        }
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

/* ---- the record -----------------------------------------------------------------------------------------
 */

bool nb_image_id_valid(const char *id)
{
        if (strlen(id) != 36)
                return false;
        for (size_t i = 0; i < 36; i++) {
                char c = id[i];
                bool dash = i == 8 || i == 13 || i == 18 || i == 23;
                if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
                        return false;
        }
        return true;
}

cJSON *nb_image_record_json(const NbImage *img)
{
        cJSON *j = nb_image_to_json(img);
        if (!j)
                return NULL;
        cJSON_DeleteItemFromObjectCaseSensitive(j, "progress"); /* of the running process only */
        if (!cJSON_AddStringToObject(j, "manifest_digest",
                                     img->manifest_digest ? img->manifest_digest : "") ||
            !cJSON_AddStringToObject(j, "repository", img->repository ? img->repository : "")) {
                cJSON_Delete(j);
                return NULL;
        }
        return j;
}

static int strv_from_json(const cJSON *a, char ***ret)
{
        if (!a) {
                *ret = NULL;
                return 0;
        }
        int n = cJSON_GetArraySize(a);
        if (!cJSON_IsArray(a) || n > 16)
                return -EBADMSG;
        char **v = calloc((size_t)n + 1, sizeof(char *));
        if (!v)
                return -ENOMEM;
        int i = 0;
        for (const cJSON *x = a->child; x; x = x->next, i++)
                if (!cJSON_IsString(x) || strlen(x->valuestring) > 32 || !(v[i] = strdup(x->valuestring))) {
                        for (int k = 0; k < i; k++)
                                free(v[k]);
                        free(v);
                        return -EBADMSG;
                }
        *ret = v;
        return 0;
}

/* The record's exclude_paths, by the request's rules (an edited record must not widen them). */
static int exclude_paths_from_json(const cJSON *a, NbImage *img)
{
        if (!a)
                return 0;
        int n = cJSON_GetArraySize(a);
        if (!cJSON_IsArray(a) || n > NB_EXCLUDE_PATHS_MAX)
                return -EBADMSG;
        char *v[NB_EXCLUDE_PATHS_MAX];
        size_t k = 0;
        for (const cJSON *x = a->child; x; x = x->next) {
                NbError ignored = {0};
                if (!cJSON_IsString(x) || !nb_exclude_path_valid(x->valuestring, "exclude_paths", &ignored))
                        return -EBADMSG;
                v[k++] = x->valuestring;
        }
        return nb_image_set_exclude_paths(img, v, k) < 0 ? -ENOMEM : 0;
}

static int number_field(const cJSON *j, const char *name, int64_t *ret)
{
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, name);
        if (!x) {
                *ret = 0;
                return 0;
        }
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 9.0e15)
                return -EBADMSG;
        *ret = (int64_t)x->valuedouble;
        return 0;
}

int nb_image_from_json(const cJSON *j, NbImage *ret, NbError *e)
{
        NbImage img = {0};
        int r = 0;
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "id");
        if (!cJSON_IsObject(j) || !cJSON_IsString(x) || !nb_image_id_valid(x->valuestring))
                return nb_error_set(e, -EBADMSG, "image record without a valid id");
        memcpy(img.id, x->valuestring, 37);
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(string_fields); i++) {
                const Field *f = &string_fields[i];
                x = cJSON_GetObjectItemCaseSensitive(j, f->name);
                if (!x && !f->required)
                        continue;
                if (!cJSON_IsString(x) || strlen(x->valuestring) > f->max)
                        r = nb_error_set(e, -EBADMSG, "image record %s: bad field %s", img.id, f->name);
                else if (x->valuestring[0] || f->required)
                        r = nb_image_set((char **)((char *)&img + f->offset), x->valuestring);
        }
        x = cJSON_GetObjectItemCaseSensitive(j, "status");
        if (r >= 0 &&
            (!cJSON_IsString(x) || (img.status = nb_status_from_string(x->valuestring)) == _NB_STATUS_MAX))
                r = nb_error_set(e, -EBADMSG, "image record %s: bad status", img.id);
        if (r >= 0 &&
            (number_field(j, "create_at", &img.create_at) < 0 ||
             number_field(j, "update_at", &img.update_at) < 0 || number_field(j, "size", &img.size_kb) < 0 ||
             strv_from_json(cJSON_GetObjectItemCaseSensitive(j, "dev_services"), &img.dev_services) < 0 ||
             strv_from_json(cJSON_GetObjectItemCaseSensitive(j, "resource_categories"),
                            &img.resource_categories) < 0 ||
             exclude_paths_from_json(cJSON_GetObjectItemCaseSensitive(j, "exclude_paths"), &img) < 0))
                r = nb_error_set(e, -EBADMSG, "image record %s: bad number or list", img.id);
        if (r < 0) {
                nb_image_done(&img);
                return r;
        }
        *ret = img;
        return 0;
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

bool nb_swr_instance_id_valid(const char *id, NbError *e)
{
        size_t n = id ? strlen(id) : 0;
        if (n == 0 || n > NB_SWR_INSTANCE_ID_MAX || !all_in(id, "-_", true))
                return nb_error_set(e, -EINVAL,
                                    "swr_instance_id must be 1 to %d letters, digits, '-' or '_'",
                                    NB_SWR_INSTANCE_ID_MAX),
                       false;
        return true;
}

bool nb_swr_instance_domain_valid(const char *domain, NbError *e)
{
        size_t n = domain ? strlen(domain) : 0;
        if (n == 0 || n > NB_SWR_INSTANCE_DOMAIN_MAX || !all_in(domain, ".-:", true) || !alnum(domain[0]) ||
            !alnum(domain[n - 1]) || strstr(domain, ".."))
                return nb_error_set(
                               e, -EINVAL,
                               "swr_instance_domain must be a host name of 1 to %d letters, digits, '.', "
                               "'-' and ':' (a port), starting and ending with a letter or digit",
                               NB_SWR_INSTANCE_DOMAIN_MAX),
                       false;
        return true;
}

bool nb_exclude_path_valid(const char *path, const char *field, NbError *e)
{
        size_t n = strlen(path);
        if (n == 0 || path[0] != '/')
                return nb_error_set(e, -EINVAL,
                                    "%s: \"%.64s\" is not an absolute path: exclude paths are container "
                                    "paths starting with '/'",
                                    field, path),
                       false;
        if (n > NB_EXCLUDE_PATH_MAX)
                return nb_error_set(e, -EINVAL, "%s: the path is %zu bytes; at most %d are allowed", field,
                                    n, NB_EXCLUDE_PATH_MAX),
                       false;
        for (const char *p = path; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                        return nb_error_set(e, -EINVAL, "%s: \"%.64s\" contains a control character", field,
                                            path),
                               false;
        bool component = false;
        for (const char *p = path; *p;) {
                while (*p == '/')
                        p++;
                size_t len = strcspn(p, "/");
                if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
                        return nb_error_set(e, -EINVAL,
                                            "%s: \"%.64s\" has a '%.*s' component: exclude paths must be "
                                            "plain absolute paths",
                                            field, path, (int)len, p),
                               false;
                component = component || len > 0;
                p += len;
        }
        if (!component)
                return nb_error_set(e, -EINVAL, "%s: \"%s\" names the whole root, which cannot be excluded",
                                    field, path),
                       false;
        return true;
}
