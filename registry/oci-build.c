/* oci-build.c: a new image on a base image: the config (base config + diff_ids + history entries) and the
 * manifest (base layers kept + layers added, in the base's family or OCI), as JSON text with its digest.
 * Dropping the base's top layers (squash) and adding several layers (split) are the same two calls with
 * other counts. Pure functions over cJSON: no network, no state. */
#include <string.h>

#include "registry/registry-internal.h"

void reg_built_done(RegBuilt *b)
{
        if (!b)
                return;
        free(b->json);
        *b = (RegBuilt){0};
}

static int build_check(const RegImageBuild *b, NbError *e)
{
        if (!b->base || !b->base->manifest_media_type || !b->created)
                return nb_error_set(e, -EINVAL, "cannot build the image: no base image or creation time");
        if (b->keep_layers > b->base->n_layers)
                return nb_error_set(e, -EINVAL, "cannot keep %zu layers of a base image that has %zu",
                                    b->keep_layers, b->base->n_layers);
        if (b->n_layers > REG_LAYERS_MAX || b->keep_layers + b->n_layers > REG_LAYERS_MAX)
                return nb_error_set(e, -E2BIG, "cannot build an image of more than %d layers",
                                    REG_LAYERS_MAX);
        for (size_t i = 0; i < b->n_layers; i++)
                if (!reg_media_type_to_oci(b->layers[i].media_type))
                        return nb_error_set(e, -EINVAL, "cannot add layer %zu: unknown media type %s", i,
                                            b->layers[i].media_type ? b->layers[i].media_type : "(none)");
        return 0;
}

int reg_image_build_type(const RegImageBuild *b, const char **ret_type, size_t *ret_layer, NbError *e)
{
        int r = build_check(b, e);
        if (r < 0)
                return r;
        const char *base_type = b->base->manifest_media_type;
        bool need_oci = strcmp(base_type, REG_MEDIA_OCI_MANIFEST) == 0;
        for (size_t i = 0; i < b->n_layers; i++)
                need_oci = need_oci || !reg_media_type_to_docker(b->layers[i].media_type);
        if (!need_oci) {
                *ret_type = base_type;
                return 0;
        }
        for (size_t i = 0; i < b->keep_layers; i++) {
                const char *t = b->base->layers[i].media_type;
                if (reg_media_type_to_oci(t))
                        continue;
                if (ret_layer)
                        *ret_layer = i;
                return nb_error_set(e, -EOPNOTSUPP,
                                    "the image must be an OCI image, and base layer %zu has media type %s, "
                                    "which has no OCI equivalent",
                                    i, t ? t : "(none)");
        }
        *ret_type = REG_MEDIA_OCI_MANIFEST;
        return 0;
}

static int built_set(cJSON *j, const char *media_type, RegBuilt *ret, NbError *e)
{
        RegBuilt out = {.json = cJSON_PrintUnformatted(j), .media_type = media_type};
        if (!out.json)
                return nb_error_oom(e);
        out.size = strlen(out.json);
        int r = nb_sha256_digest(out.json, out.size, out.digest);
        if (r < 0) {
                free(out.json);
                return nb_error_set(e, r, "SHA-256 failed");
        }
        *ret = out;
        return 0;
}

/* ---- the config
 * -------------------------------------------------------------------------------------------
 */

static cJSON *object_member(cJSON *parent, const char *key)
{
        cJSON *o = cJSON_GetObjectItemCaseSensitive(parent, key);
        if (cJSON_IsObject(o))
                return o;
        cJSON_DeleteItemFromObjectCaseSensitive(parent, key);
        return cJSON_AddObjectToObject(parent, key);
}

static cJSON *array_member(cJSON *parent, const char *key)
{
        cJSON *a = cJSON_GetObjectItemCaseSensitive(parent, key);
        if (cJSON_IsArray(a))
                return a;
        cJSON_DeleteItemFromObjectCaseSensitive(parent, key);
        return cJSON_AddArrayToObject(parent, key);
}

/* rootfs.diff_ids, one per base layer. Only a base without layers may lack them (then they are made). */
static int config_diff_ids(cJSON *c, size_t n_base, cJSON **ret, NbError *e)
{
        cJSON *rootfs = cJSON_GetObjectItemCaseSensitive(c, "rootfs");
        cJSON *ids = cJSON_IsObject(rootfs) ? cJSON_GetObjectItemCaseSensitive(rootfs, "diff_ids") : NULL;
        if (!cJSON_IsArray(ids) && n_base > 0)
                return nb_error_set(e, -EBADMSG,
                                    "cannot build the image config: the base image's config has no "
                                    "rootfs.diff_ids (its manifest has %zu layers)",
                                    n_base);
        rootfs = object_member(c, "rootfs");
        ids = rootfs ? array_member(rootfs, "diff_ids") : NULL;
        if (!ids)
                return nb_error_oom(e);
        if ((size_t)cJSON_GetArraySize(ids) != n_base)
                return nb_error_set(e, -EBADMSG,
                                    "cannot build the image config: the base image's config has %d "
                                    "rootfs.diff_ids for %zu layers in its manifest",
                                    cJSON_GetArraySize(ids), n_base);
        *ret = ids;
        return 0;
}

static bool history_empty_layer(const cJSON *h)
{
        return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(h, "empty_layer"));
}

/* Removes the history entries of the top drop layers: the last drop entries that are not empty_layer. A
 * base without history has none to remove; one whose layer entries are not one per layer cannot tell
 * which entries are the dropped layers'. */
static int history_drop(cJSON *history, size_t n_base, size_t drop, NbError *e)
{
        int n = cJSON_GetArraySize(history);
        if (drop == 0 || n == 0)
                return 0;
        size_t layer_entries = 0;
        const cJSON *h;
        cJSON_ArrayForEach(h, history)
        {
                layer_entries += !history_empty_layer(h);
        }
        if (layer_entries != n_base)
                return nb_error_set(e, -EBADMSG,
                                    "cannot drop the top %zu layers: the base image's history has %zu "
                                    "entries for layers, and its manifest %zu layers",
                                    drop, layer_entries, n_base);
        for (int i = n - 1; i >= 0 && drop > 0; i--)
                if (!history_empty_layer(cJSON_GetArrayItem(history, i))) {
                        cJSON_DeleteItemFromArray(history, i);
                        drop--;
                }
        return 0;
}

static cJSON *history_entry(const char *created, const RegLayerAdd *l)
{
        const struct {
                const char *key, *value;
        } fields[] = {
                {"created", created},
                {"created_by", l->created_by},
                {"comment", l->comment},
        };
        cJSON *h = cJSON_CreateObject();
        for (size_t i = 0; h && i < ELEMENTSOF(fields); i++)
                if (fields[i].value && fields[i].value[0] &&
                    !cJSON_AddStringToObject(h, fields[i].key, fields[i].value)) {
                        cJSON_Delete(h);
                        return NULL;
                }
        return h;
}

static int config_add_layers(const RegImageBuild *b, cJSON *ids, cJSON *history, NbError *e)
{
        for (size_t i = 0; i < b->n_layers; i++) {
                const RegLayerAdd *l = &b->layers[i];
                if (!l->diff_id || !reg_digest_valid(l->diff_id))
                        return nb_error_set(e, -EINVAL, "cannot add layer %zu: invalid diff_id %s", i,
                                            l->diff_id ? l->diff_id : "(none)");
                cJSON *h = history_entry(b->created, l), *id = cJSON_CreateString(l->diff_id);
                if (!h || !id || !cJSON_AddItemToArray(history, h)) {
                        cJSON_Delete(h);
                        cJSON_Delete(id);
                        return nb_error_oom(e);
                }
                if (!cJSON_AddItemToArray(ids, id)) {
                        cJSON_Delete(id);
                        return nb_error_oom(e);
                }
        }
        return 0;
}

/* The steps keep the base config's key order: "created" moves to the end, missing members are appended
 * (the bytes of a save are the same as before this module). */
static int config_edit(const RegImageBuild *b, cJSON *c, NbError *e)
{
        size_t n_base = b->base->n_layers, drop = n_base - b->keep_layers;
        cJSON *ids = NULL;
        int r = config_diff_ids(c, n_base, &ids, e);
        if (r < 0)
                return r;
        cJSON *rootfs = cJSON_GetObjectItemCaseSensitive(c, "rootfs");
        cJSON *history = array_member(c, "history");
        cJSON_DeleteItemFromObjectCaseSensitive(c, "created");
        if (!history || !cJSON_AddStringToObject(c, "created", b->created))
                return nb_error_oom(e);
        if (!cJSON_GetObjectItemCaseSensitive(rootfs, "type") &&
            !cJSON_AddStringToObject(rootfs, "type", "layers"))
                return nb_error_oom(e);
        r = history_drop(history, n_base, drop, e);
        if (r < 0)
                return r;
        for (size_t i = 0; i < drop; i++)
                cJSON_DeleteItemFromArray(ids, (int)(n_base - 1 - i));
        return config_add_layers(b, ids, history, e);
}

int reg_image_build_config(const RegImageBuild *b, RegBuilt *ret, NbError *e)
{
        const char *type;
        int r = reg_image_build_type(b, &type, NULL, e); /* checks b */
        if (r < 0)
                return r;
        bool to_oci = strcmp(type, b->base->manifest_media_type) != 0;
        _cleanup_cjson_ cJSON *c =
                b->base->config_json ? cJSON_ParseWithLength(b->base->config_json, b->base->config_size)
                                     : NULL;
        if (!cJSON_IsObject(c))
                return nb_error_set(e, -EBADMSG, "the base image's config is not a JSON object");
        r = config_edit(b, c, e);
        if (r < 0)
                return r;
        return built_set(c, to_oci ? REG_MEDIA_OCI_CONFIG : b->base->config.media_type, ret, e);
}

/* ---- the manifest
 * -----------------------------------------------------------------------------------------
 */

static cJSON *descriptor_json(const char *media_type, const char *digest, int64_t size)
{
        cJSON *d = cJSON_CreateObject();
        if (d && (!cJSON_AddStringToObject(d, "mediaType", media_type) ||
                  !cJSON_AddStringToObject(d, "digest", digest) ||
                  !cJSON_AddNumberToObject(d, "size", (double)size))) {
                cJSON_Delete(d);
                return NULL;
        }
        return d;
}

/* Base layers of a Docker schema2 manifest written as OCI: their media types (reg_image_build_type() checked
 * that each has one). */
static int layers_to_oci(cJSON *layers, NbError *e)
{
        cJSON *l;
        cJSON_ArrayForEach(l, layers)
        {
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(l, "mediaType");
                const char *oci = cJSON_IsString(t) ? reg_media_type_to_oci(t->valuestring) : NULL;
                if (!oci)
                        return nb_error_set(e, -EOPNOTSUPP, "a base layer has no OCI media type");
                if (!cJSON_ReplaceItemInObjectCaseSensitive(l, "mediaType", cJSON_CreateString(oci)))
                        return nb_error_oom(e);
        }
        return 0;
}

static int manifest_add_layers(const RegImageBuild *b, bool oci, cJSON *layers, NbError *e)
{
        for (size_t i = 0; i < b->n_layers; i++) {
                const RegLayerAdd *l = &b->layers[i];
                const char *t =
                        oci ? reg_media_type_to_oci(l->media_type) : reg_media_type_to_docker(l->media_type);
                if (!l->digest || !reg_digest_valid(l->digest) || l->size < 0)
                        return nb_error_set(e, -EINVAL, "cannot add layer %zu: invalid digest or size", i);
                cJSON *d = descriptor_json(t, l->digest, l->size);
                if (!d || !cJSON_AddItemToArray(layers, d)) {
                        cJSON_Delete(d);
                        return nb_error_oom(e);
                }
        }
        return 0;
}

static int manifest_annotate(const RegImageBuild *b, cJSON *m, NbError *e)
{
        if (!b->base_name || !b->base->manifest_digest)
                return 0;
        cJSON *a = cJSON_AddObjectToObject(m, "annotations");
        if (!a ||
            !cJSON_AddStringToObject(a, "org.opencontainers.image.base.digest", b->base->manifest_digest) ||
            !cJSON_AddStringToObject(a, "org.opencontainers.image.base.name", b->base_name))
                return nb_error_oom(e);
        return 0;
}

static int manifest_edit(const RegImageBuild *b, const char *type, const RegBuilt *config, cJSON *m,
                         NbError *e)
{
        bool oci = strcmp(type, REG_MEDIA_OCI_MANIFEST) == 0;
        bool to_oci = strcmp(type, b->base->manifest_media_type) != 0;
        cJSON *layers = cJSON_GetObjectItemCaseSensitive(m, "layers");
        if (!cJSON_IsArray(layers))
                return nb_error_set(e, -EBADMSG, "the base image's manifest has no layer list");
        if ((size_t)cJSON_GetArraySize(layers) != b->base->n_layers)
                return nb_error_set(e, -EBADMSG, "the base image's manifest does not match its layers");
        static const char *const replaced[] = {"mediaType", "config", "annotations", "subject"};
        for (size_t i = 0; i < ELEMENTSOF(replaced); i++)
                cJSON_DeleteItemFromObjectCaseSensitive(m, replaced[i]);
        for (size_t i = b->keep_layers; i < b->base->n_layers; i++)
                cJSON_DeleteItemFromArray(layers, (int)b->keep_layers);
        if (to_oci && layers_to_oci(layers, e) < 0)
                return e->code;
        if (!cJSON_AddStringToObject(m, "mediaType", type))
                return nb_error_oom(e);
        cJSON *cd = descriptor_json(config->media_type, config->digest, (int64_t)config->size);
        if (!cd || !cJSON_AddItemToObject(m, "config", cd)) {
                cJSON_Delete(cd);
                return nb_error_oom(e);
        }
        int r = manifest_add_layers(b, oci, layers, e);
        if (r < 0)
                return r;
        return oci ? manifest_annotate(b, m, e) : 0;
}

int reg_image_build_manifest(const RegImageBuild *b, const RegBuilt *config, RegBuilt *ret, NbError *e)
{
        const char *type;
        int r = reg_image_build_type(b, &type, NULL, e);
        if (r < 0)
                return r;
        if (!config || !config->json || !config->media_type)
                return nb_error_set(e, -EINVAL, "cannot build the manifest without its config");
        _cleanup_cjson_ cJSON *m =
                b->base->manifest ? cJSON_ParseWithLength(b->base->manifest, b->base->manifest_size) : NULL;
        if (!cJSON_IsObject(m))
                return nb_error_set(e, -EBADMSG, "the base image's manifest has no layer list");
        r = manifest_edit(b, type, config, m, e);
        if (r < 0)
                return r;
        return built_set(m, type, ret, e);
}
