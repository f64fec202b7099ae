/* oci.c: the OCI image model: media types and the Docker schema2 <-> OCI mapping, descriptors, the image
 * record (RegImage), and the parsers of image manifests and indexes (Docker schema2, manifest lists, OCI).
 * Building a new config and manifest on a base image is oci-build.c. Parsers are table-driven over cJSON and
 * bounded: every size and count a registry controls has a limit. */
#include <math.h>
#include <string.h>

#include "registry/registry-internal.h"

#define REG_INDEX_ENTRIES_MAX 1024
#define REG_MEDIA_TYPE_MAX    255
#define REG_PLATFORM_STR_MAX  64

#if defined(__x86_64__)
#define REG_ARCH_DEFAULT "amd64"
#elif defined(__aarch64__)
#define REG_ARCH_DEFAULT "arm64"
#else
#define REG_ARCH_DEFAULT "amd64"
#endif

/* ---- media types ----------------------------------------------------------------------------------------
 */

/* Docker schema2 and OCI names of the same thing; NULL where a family has none. */
static const struct {
        const char *docker, *oci;
} media_types[] = {
        {REG_MEDIA_DOCKER_MANIFEST, REG_MEDIA_OCI_MANIFEST},
        {REG_MEDIA_DOCKER_LIST, REG_MEDIA_OCI_INDEX},
        {REG_MEDIA_DOCKER_CONFIG, REG_MEDIA_OCI_CONFIG},
        {REG_MEDIA_DOCKER_LAYER_TAR, REG_MEDIA_OCI_LAYER_TAR},
        {REG_MEDIA_DOCKER_LAYER_GZIP, REG_MEDIA_OCI_LAYER_GZIP},
        {REG_MEDIA_DOCKER_LAYER_FOREIGN_GZIP, REG_MEDIA_OCI_LAYER_NONDIST_GZIP},
        {NULL, REG_MEDIA_OCI_LAYER_ZSTD},
        {NULL, REG_MEDIA_OCI_LAYER_NONDIST_TAR},
        {NULL, REG_MEDIA_OCI_LAYER_NONDIST_ZSTD},
};

#define OCI_PREFIX    "application/vnd.oci.image."
#define DOCKER_PREFIX "application/vnd.docker."

static bool has_prefix(const char *s, const char *prefix)
{
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

const char *reg_media_type_to_oci(const char *media_type)
{
        if (!media_type)
                return NULL;
        if (has_prefix(media_type, OCI_PREFIX))
                return media_type; /* also OCI types this table does not know (seen in mixed manifests) */
        for (size_t i = 0; i < ELEMENTSOF(media_types); i++)
                if (media_types[i].docker && strcmp(media_type, media_types[i].docker) == 0)
                        return media_types[i].oci;
        return NULL;
}

const char *reg_media_type_to_docker(const char *media_type)
{
        if (!media_type)
                return NULL;
        if (has_prefix(media_type, DOCKER_PREFIX))
                return media_type;
        for (size_t i = 0; i < ELEMENTSOF(media_types); i++)
                if (strcmp(media_type, media_types[i].oci) == 0)
                        return media_types[i].docker;
        return NULL;
}

/* ---- descriptors and images -----------------------------------------------------------------------------
 */

void reg_descriptor_done(RegDescriptor *d)
{
        if (!d)
                return;
        free(d->media_type);
        free(d->digest);
        *d = (RegDescriptor){0};
}

RegImage *reg_image_free(RegImage *img)
{
        if (!img)
                return NULL;
        free(img->manifest_media_type);
        free(img->manifest_digest);
        free(img->manifest);
        reg_descriptor_done(&img->config);
        free(img->config_json);
        for (size_t i = 0; i < img->n_layers; i++)
                reg_descriptor_done(&img->layers[i]);
        free(img->layers);
        free(img);
        return NULL;
}

/* ---- parsing --------------------------------------------------------------------------------------------
 */

typedef enum FieldType {
        FIELD_STRING,
        FIELD_DIGEST,
        FIELD_SIZE,
} FieldType;

typedef struct Field {
        const char *name;
        FieldType type;
        bool required;
        int64_t max; /* string length or size */
        size_t offset;
} Field;

static const Field descriptor_fields[] = {
        {"mediaType", FIELD_STRING, true, REG_MEDIA_TYPE_MAX, offsetof(RegDescriptor, media_type)},
        {"digest", FIELD_DIGEST, true, NB_DIGEST_STR_MAX, offsetof(RegDescriptor, digest)},
        {"size", FIELD_SIZE, true, INT64_C(1) << 53, offsetof(RegDescriptor, size)},
};

static int field_dispatch(const cJSON *obj, const Field *f, void *out)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, f->name);
        if (!v)
                return f->required ? -EBADMSG : 0;
        if (f->type == FIELD_SIZE) {
                if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > (double)f->max ||
                    floor(v->valuedouble) != v->valuedouble)
                        return -EBADMSG;
                *(int64_t *)(void *)((char *)out + f->offset) = (int64_t)v->valuedouble;
                return 0;
        }
        if (!cJSON_IsString(v) || strlen(v->valuestring) > (size_t)f->max)
                return -EBADMSG;
        if (f->type == FIELD_DIGEST && !reg_digest_valid(v->valuestring))
                return -EBADMSG;
        char **slot = (char **)(void *)((char *)out + f->offset);
        free(*slot);
        return reg_strdup(v->valuestring, slot);
}

static int descriptor_parse(const cJSON *j, int64_t size_max, RegDescriptor *ret)
{
        if (!cJSON_IsObject(j))
                return -EBADMSG;
        _cleanup_(reg_descriptor_donep) RegDescriptor d = {0};
        for (size_t i = 0; i < ELEMENTSOF(descriptor_fields); i++) {
                int r = field_dispatch(j, &descriptor_fields[i], &d);
                if (r < 0)
                        return r;
        }
        if (d.size > size_max)
                return -EFBIG;
        *ret = d;
        d = (RegDescriptor){0};
        return 0;
}

static const char *media_type_canonical(const char *mt)
{
        static const char *const known[] = {REG_MEDIA_OCI_MANIFEST, REG_MEDIA_DOCKER_MANIFEST,
                                            REG_MEDIA_OCI_INDEX, REG_MEDIA_DOCKER_LIST};
        if (!mt)
                return NULL;
        size_t n = strcspn(mt, "; \t");
        for (size_t i = 0; i < ELEMENTSOF(known); i++)
                if (strlen(known[i]) == n && strncmp(mt, known[i], n) == 0)
                        return known[i];
        return NULL;
}

static bool media_type_is_index(const char *mt)
{
        return strcmp(mt, REG_MEDIA_OCI_INDEX) == 0 || strcmp(mt, REG_MEDIA_DOCKER_LIST) == 0;
}

static int manifest_kind_json(const cJSON *j, const char *content_type, const char **ret_media_type,
                              NbError *e)
{
        if (!cJSON_IsObject(j))
                return nb_error_set(e, -EBADMSG, "the manifest is not a JSON object");
        const cJSON *sv = cJSON_GetObjectItemCaseSensitive(j, "schemaVersion");
        if (!cJSON_IsNumber(sv) || sv->valuedouble != 2)
                return nb_error_set(e, -EMEDIUMTYPE,
                                    "unsupported manifest schema version (only 2 is supported)");
        const cJSON *mtj = cJSON_GetObjectItemCaseSensitive(j, "mediaType");
        const char *mt = media_type_canonical(cJSON_IsString(mtj) ? mtj->valuestring : content_type);
        if (!mt && cJSON_IsString(mtj))
                return nb_error_set(e, -EMEDIUMTYPE, "unsupported manifest media type");
        /* OCI allows mediaType to be absent: tell by the shape. */
        if (!mt && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "manifests")))
                mt = REG_MEDIA_OCI_INDEX;
        else if (!mt && cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "config")))
                mt = REG_MEDIA_OCI_MANIFEST;
        if (!mt)
                return nb_error_set(e, -EMEDIUMTYPE, "unknown kind of manifest");
        *ret_media_type = mt;
        return media_type_is_index(mt);
}

int reg_manifest_kind(const char *body, size_t size, const char *content_type, const char **ret_media_type,
                      NbError *e)
{
        _cleanup_cjson_ cJSON *j = cJSON_ParseWithLength(body, size);
        return manifest_kind_json(j, content_type, ret_media_type, e);
}

static int layers_parse(const cJSON *layers, RegImage *img, NbError *e)
{
        int n = cJSON_GetArraySize(layers);
        if (!cJSON_IsArray(layers) || n > REG_LAYERS_MAX)
                return nb_error_set(e, -EBADMSG, "the manifest's layers are not an array of at most %d",
                                    REG_LAYERS_MAX);
        img->layers = calloc((size_t)n + 1, sizeof(RegDescriptor));
        if (!img->layers)
                return -ENOMEM;
        const cJSON *l;
        cJSON_ArrayForEach(l, layers)
        {
                int r = descriptor_parse(l, INT64_C(1) << 53, &img->layers[img->n_layers]);
                if (r < 0)
                        return nb_error_set(e, -EBADMSG,
                                            "layer %zu of the manifest is not a valid descriptor",
                                            img->n_layers);
                img->n_layers++;
        }
        return 0;
}

int reg_manifest_parse(const char *body, size_t size, const char *content_type, RegImage *img, NbError *e)
{
        _cleanup_cjson_ cJSON *j = cJSON_ParseWithLength(body, size);
        const char *mt;
        int r = manifest_kind_json(j, content_type, &mt, e);
        if (r < 0)
                return r;
        if (r == 1)
                return nb_error_set(e, -EMEDIUMTYPE, "expected an image manifest, got an index");
        r = descriptor_parse(cJSON_GetObjectItemCaseSensitive(j, "config"), REG_CONFIG_MAX, &img->config);
        if (r < 0)
                return nb_error_set(e, -EBADMSG, "the manifest's config is not a valid descriptor%s",
                                    r == -EFBIG ? " (too large)" : "");
        r = layers_parse(cJSON_GetObjectItemCaseSensitive(j, "layers"), img, e);
        if (r < 0)
                return r;
        return reg_strdup(mt, &img->manifest_media_type);
}

static bool platform_str(const cJSON *platform, const char *name, const char **ret)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(platform, name);
        *ret = cJSON_IsString(v) && strlen(v->valuestring) <= REG_PLATFORM_STR_MAX ? v->valuestring : NULL;
        return *ret != NULL;
}

/* arm64 without a variant is arm64/v8 (containerd's normalisation). */
static bool variant_matches(const char *arch, const char *want, const char *have)
{
        if (!want)
                return true;
        if (have && strcmp(want, have) == 0)
                return true;
        return strcmp(arch, "arm64") == 0 && strcmp(want, "v8") == 0 && (!have || !*have);
}

static bool entry_matches(const cJSON *m, const char *os, const char *arch, const char *variant)
{
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(m, "platform");
        const char *pos, *parch, *pvar;
        if (!cJSON_IsObject(p) || !platform_str(p, "os", &pos) || !platform_str(p, "architecture", &parch))
                return false;
        platform_str(p, "variant", &pvar);
        return strcmp(pos, os) == 0 && strcmp(parch, arch) == 0 && variant_matches(arch, variant, pvar);
}

int reg_index_select(const char *body, size_t size, const char *os, const char *arch, const char *variant,
                     RegDescriptor *ret, NbError *e)
{
        os = os ? os : "linux";
        arch = arch ? arch : REG_ARCH_DEFAULT;
        _cleanup_cjson_ cJSON *j = cJSON_ParseWithLength(body, size);
        const char *mt;
        int r = manifest_kind_json(j, NULL, &mt, e);
        if (r < 0)
                return r;
        if (r == 0)
                return nb_error_set(e, -EMEDIUMTYPE, "expected an index, got an image manifest");
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "manifests"), *m;
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) > REG_INDEX_ENTRIES_MAX)
                return nb_error_set(e, -EBADMSG, "the index's manifests are not an array of at most %d",
                                    REG_INDEX_ENTRIES_MAX);
        cJSON_ArrayForEach(m, list)
        {
                if (!entry_matches(m, os, arch, variant))
                        continue;
                RegDescriptor d = {0};
                r = descriptor_parse(m, REG_MANIFEST_MAX, &d);
                if (r < 0)
                        return nb_error_set(e, -EBADMSG,
                                            "the index entry for %s/%s is not a valid descriptor", os, arch);
                const char *emt = media_type_canonical(d.media_type);
                if (!emt || media_type_is_index(emt)) {
                        reg_descriptor_done(&d);
                        return nb_error_set(e, -EMEDIUMTYPE,
                                            "the index entry for %s/%s is not an image manifest", os, arch);
                }
                *ret = d;
                return 0;
        }
        return nb_error_set(e, -ENOENT, "the image has no manifest for %s/%s%s%s", os, arch,
                            variant ? "/" : "", variant ? variant : "");
}
