/* test-oci.c: unit tests of the OCI image model (registry/oci.c, oci-build.c): media types and the Docker
 * <-> OCI mapping, parsing manifests and indexes, and building a config and manifest on a base: Docker
 * schema2 and OCI bases, a zstd layer turning a schema2 image into OCI, history with empty_layer entries,
 * dropping the top layers, several new layers, and bad bases. */
#include <cjson/cJSON.h>

#include "common/digest.h"
#include "registry/registry-internal.h"
#include "tests.h"

/* ---- manifests -------------------------------------------------------------------------------------------
 */

#define DA "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define DB "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define DC "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

static const char oci_index[] =
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":["
        "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DA "\",\"size\":500,"
        "\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}},"
        "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DB "\",\"size\":501,"
        "\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\",\"variant\":\"v8\"}},"
        "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"" DC "\",\"size\":502,"
        "\"platform\":{\"architecture\":\"unknown\",\"os\":\"unknown\"}}]}";

static const char docker_manifest[] =
        "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\","
        "\"config\":{\"mediaType\":\"application/vnd.docker.container.image.v1+json\",\"digest\":\"" DA
        "\",\"size\":1234},"
        "\"layers\":[{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"digest\":\"" DB
        "\",\"size\":99},"
        "{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"digest\":\"" DC
        "\",\"size\":5000000000}]}";

static void test_manifests(void)
{
        NbError e = {0};
        const char *mt = NULL;
        ASSERT_EQ(reg_manifest_kind(oci_index, strlen(oci_index), NULL, &mt, &e), 1);
        ASSERT_STREQ(mt, REG_MEDIA_OCI_INDEX);
        ASSERT_EQ(reg_manifest_kind(docker_manifest, strlen(docker_manifest), NULL, &mt, &e), 0);
        ASSERT_STREQ(mt, REG_MEDIA_DOCKER_MANIFEST);

        RegDescriptor d = {0};
        ASSERT_OK(reg_index_select(oci_index, strlen(oci_index), "linux", "amd64", NULL, &d, &e));
        ASSERT_STREQ(d.digest, DA);
        ASSERT_EQ(d.size, 500);
        reg_descriptor_done(&d);
        ASSERT_OK(reg_index_select(oci_index, strlen(oci_index), "linux", "arm64", NULL, &d, &e));
        ASSERT_STREQ(d.digest, DB);
        reg_descriptor_done(&d);
        ASSERT_OK(reg_index_select(oci_index, strlen(oci_index), "linux", "arm64", "v8", &d, &e));
        ASSERT_STREQ(d.digest, DB);
        reg_descriptor_done(&d);
        ASSERT_EQ(reg_index_select(oci_index, strlen(oci_index), "linux", "arm64", "v7", &d, &e), -ENOENT);
        ASSERT_EQ(reg_index_select(oci_index, strlen(oci_index), "linux", "s390x", NULL, &d, &e), -ENOENT);
        ASSERT_TRUE(strstr(e.msg, "linux/s390x") != NULL);
        ASSERT_EQ(reg_index_select(docker_manifest, strlen(docker_manifest), "linux", "amd64", NULL, &d, &e),
                  -EMEDIUMTYPE);

        RegImage img = {0};
        ASSERT_OK(reg_manifest_parse(docker_manifest, strlen(docker_manifest), NULL, &img, &e));
        ASSERT_STREQ(img.manifest_media_type, REG_MEDIA_DOCKER_MANIFEST);
        ASSERT_STREQ(img.config.digest, DA);
        ASSERT_EQ(img.config.size, 1234);
        ASSERT_EQ(img.n_layers, 2);
        ASSERT_EQ(img.layers[1].size, 5000000000LL);
        ASSERT_STREQ(img.layers[0].media_type, REG_MEDIA_DOCKER_LAYER_GZIP);
        reg_image_free(memcpy(calloc(1, sizeof(img)), &img, sizeof(img)));

        /* OCI without mediaType: told by shape, or by Content-Type */
        const char *oci = "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/"
                          "vnd.oci.image.config.v1+json\","
                          "\"digest\":\"" DA "\",\"size\":2},\"layers\":[]}";
        img = (RegImage){0};
        ASSERT_OK(reg_manifest_parse(oci, strlen(oci), NULL, &img, &e));
        ASSERT_STREQ(img.manifest_media_type, REG_MEDIA_OCI_MANIFEST);
        ASSERT_EQ(img.n_layers, 0);
        reg_image_free(memcpy(calloc(1, sizeof(img)), &img, sizeof(img)));
        ASSERT_EQ(reg_manifest_kind(oci, strlen(oci), REG_MEDIA_DOCKER_MANIFEST "; charset=utf-8", &mt, &e),
                  0);
        ASSERT_STREQ(mt, REG_MEDIA_DOCKER_MANIFEST);

        const char *bad[] = {
                "{\"schemaVersion\":1,\"name\":\"x\",\"fsLayers\":[]}",
                "{\"schemaVersion\":2,\"mediaType\":\"text/plain\"}",
                "{\"schemaVersion\":2}",
                "[]",
                "",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha256:zz\",\"size\":2},"
                "\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" DA
                "\",\"size\":-1},\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" DA
                "\",\"size\":1.5},\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" DA
                "\",\"size\":99999999999},"
                "\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" DA
                "\",\"size\":1},\"layers\":{}}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" DA "\",\"size\":1},"
                "\"layers\":[{\"mediaType\":\"x\",\"size\":1}]}",
                oci_index,
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                img = (RegImage){0};
                int r = reg_manifest_parse(bad[i], strlen(bad[i]), NULL, &img, &e);
                if (r >= 0)
                        fprintf(stderr, "accepted bad manifest %zu\n", i);
                ASSERT_INT(r, <, 0);
                reg_image_free(memcpy(calloc(1, sizeof(img)), &img, sizeof(img)));
        }
}

/* ---- media types -----------------------------------------------------------------------------------------
 */

static void test_media_types(void)
{
        ASSERT_STREQ(reg_media_type_to_oci(REG_MEDIA_DOCKER_LAYER_GZIP), REG_MEDIA_OCI_LAYER_GZIP);
        ASSERT_STREQ(reg_media_type_to_oci(REG_MEDIA_DOCKER_LAYER_TAR), REG_MEDIA_OCI_LAYER_TAR);
        ASSERT_STREQ(reg_media_type_to_oci(REG_MEDIA_DOCKER_LAYER_FOREIGN_GZIP),
                     REG_MEDIA_OCI_LAYER_NONDIST_GZIP);
        ASSERT_STREQ(reg_media_type_to_oci(REG_MEDIA_DOCKER_MANIFEST), REG_MEDIA_OCI_MANIFEST);
        ASSERT_STREQ(reg_media_type_to_oci(REG_MEDIA_DOCKER_CONFIG), REG_MEDIA_OCI_CONFIG);
        ASSERT_STREQ(reg_media_type_to_oci(REG_MEDIA_DOCKER_LIST), REG_MEDIA_OCI_INDEX);
        ASSERT_STREQ(reg_media_type_to_oci(REG_MEDIA_OCI_LAYER_ZSTD), REG_MEDIA_OCI_LAYER_ZSTD);
        ASSERT_TRUE(reg_media_type_to_oci("application/vnd.docker.image.rootfs.diff.tar.lz4") == NULL);
        ASSERT_TRUE(reg_media_type_to_oci("text/plain") == NULL);
        ASSERT_TRUE(reg_media_type_to_oci(NULL) == NULL);

        ASSERT_STREQ(reg_media_type_to_docker(REG_MEDIA_OCI_LAYER_GZIP), REG_MEDIA_DOCKER_LAYER_GZIP);
        ASSERT_STREQ(reg_media_type_to_docker(REG_MEDIA_OCI_LAYER_TAR), REG_MEDIA_DOCKER_LAYER_TAR);
        ASSERT_STREQ(reg_media_type_to_docker(REG_MEDIA_OCI_LAYER_NONDIST_GZIP),
                     REG_MEDIA_DOCKER_LAYER_FOREIGN_GZIP);
        ASSERT_STREQ(reg_media_type_to_docker(REG_MEDIA_DOCKER_LAYER_GZIP), REG_MEDIA_DOCKER_LAYER_GZIP);
        ASSERT_TRUE(reg_media_type_to_docker(REG_MEDIA_OCI_LAYER_ZSTD) == NULL);
        ASSERT_TRUE(reg_media_type_to_docker(REG_MEDIA_OCI_LAYER_NONDIST_ZSTD) == NULL);
        ASSERT_TRUE(reg_media_type_to_docker(REG_MEDIA_OCI_LAYER_NONDIST_TAR) == NULL);
}

/* ---- building
 * ---------------------------------------------------------------------------------------------
 */

#define L1          "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define L2          "sha256:2222222222222222222222222222222222222222222222222222222222222222"
#define L3          "sha256:3333333333333333333333333333333333333333333333333333333333333333"
#define I1          "sha256:a111111111111111111111111111111111111111111111111111111111111111"
#define I2          "sha256:a222222222222222222222222222222222222222222222222222222222222222"
#define I3          "sha256:a333333333333333333333333333333333333333333333333333333333333333"
#define N1          "sha256:e111111111111111111111111111111111111111111111111111111111111111"
#define N2          "sha256:e222222222222222222222222222222222222222222222222222222222222222"
#define M1          "sha256:f111111111111111111111111111111111111111111111111111111111111111"
#define M2          "sha256:f222222222222222222222222222222222222222222222222222222222222222"
#define BASE_DIGEST "sha256:0000000000000000000000000000000000000000000000000000000000000000"
#define CREATED     "2026-12-03T09:00:00Z"

#define DOCKER_LAYER(d, size)                                                                               \
        "{\"mediaType\":\"" REG_MEDIA_DOCKER_LAYER_GZIP "\",\"digest\":\"" d "\",\"size\":" #size "}"
#define OCI_LAYER(d, size)                                                                                  \
        "{\"mediaType\":\"" REG_MEDIA_OCI_LAYER_GZIP "\",\"digest\":\"" d "\",\"size\":" #size "}"

static const char docker_base[] =
        "{\"schemaVersion\":2,\"mediaType\":\"" REG_MEDIA_DOCKER_MANIFEST
        "\",\"config\":{\"mediaType\":\"" REG_MEDIA_DOCKER_CONFIG "\",\"digest\":\"" DA
        "\",\"size\":10},\"layers\":[" DOCKER_LAYER(L1, 100) "," DOCKER_LAYER(L2, 200) "]}";

static const char docker_base_foreign[] =
        "{\"schemaVersion\":2,\"mediaType\":\"" REG_MEDIA_DOCKER_MANIFEST
        "\",\"config\":{\"mediaType\":\"" REG_MEDIA_DOCKER_CONFIG "\",\"digest\":\"" DA
        "\",\"size\":10},\"layers\":[{\"mediaType\":\"" REG_MEDIA_DOCKER_LAYER_FOREIGN_GZIP
        "\",\"digest\":\"" L1
        "\",\"size\":100,\"urls\":[\"https://example.com/l1\"]}," DOCKER_LAYER(L2, 200) "]}";

static const char docker_base_lz4[] =
        "{\"schemaVersion\":2,\"mediaType\":\"" REG_MEDIA_DOCKER_MANIFEST
        "\",\"config\":{\"mediaType\":\"" REG_MEDIA_DOCKER_CONFIG "\",\"digest\":\"" DA
        "\",\"size\":10},\"layers\":[" DOCKER_LAYER(
                L1,
                100) ",{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.lz4\",\"digest\":\"" L2
                     "\",\"size\":200}]}";

static const char oci_base3[] =
        "{\"schemaVersion\":2,\"mediaType\":\"" REG_MEDIA_OCI_MANIFEST
        "\",\"config\":{\"mediaType\":\"" REG_MEDIA_OCI_CONFIG "\",\"digest\":\"" DA
        "\",\"size\":10},\"layers\":[" OCI_LAYER(L1, 100) "," OCI_LAYER(L2, 200) "," OCI_LAYER(
                L3, 300) "],\"annotations\":{\"org.opencontainers.image.base.name\":\"older\"},"
                         "\"subject\":{\"mediaType\":\"" REG_MEDIA_OCI_MANIFEST "\",\"digest\":\"" DB
                         "\",\"size\":1}}";

static const char config2[] =
        "{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2020-01-01T00:00:00Z\","
        "\"config\":{\"Env\":[\"PATH=/usr/bin\"],\"Cmd\":[\"/bin/sh\"],\"User\":\"ma-user\"},"
        "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" I1 "\",\"" I2 "\"]},"
        "\"history\":[{\"created_by\":\"ADD rootfs\"},{\"created_by\":\"ENV PATH\",\"empty_layer\":true},"
        "{\"created_by\":\"RUN apt-get install\"},{\"created_by\":\"CMD sh\",\"empty_layer\":true}]}";

static const char config3[] =
        "{\"architecture\":\"arm64\",\"os\":\"linux\",\"config\":{\"WorkingDir\":\"/home/ma-user\"},"
        "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" I1 "\",\"" I2 "\",\"" I3 "\"]},"
        "\"history\":[{\"created_by\":\"l1\"},{\"created_by\":\"e1\",\"empty_layer\":true},"
        "{\"created_by\":\"l2\"},{\"created_by\":\"e2\",\"empty_layer\":true},{\"created_by\":\"l3\"},"
        "{\"created_by\":\"e3\",\"empty_layer\":true}]}";

static RegImage *base_new(const char *manifest, const char *config)
{
        RegImage *img = calloc(1, sizeof(*img));
        NbError e = {0};
        ASSERT_TRUE(img);
        ASSERT_OK(reg_manifest_parse(manifest, strlen(manifest), NULL, img, &e));
        ASSERT_TRUE((img->manifest = strdup(manifest)) && (img->config_json = strdup(config)) &&
                    (img->manifest_digest = strdup(BASE_DIGEST)));
        img->manifest_size = strlen(manifest);
        img->config_size = strlen(config);
        return img;
}

static const RegLayerAdd gzip_layer = {REG_MEDIA_OCI_LAYER_GZIP, N1, 4096, M1, "nbsnap save", "my env"};
static const RegLayerAdd zstd_layer = {REG_MEDIA_OCI_LAYER_ZSTD, N1, 4000, M1, "nbsnap save", NULL};

/* Builds config and manifest; returns them parsed (the texts checked against their digests). */
static void build(const RegImageBuild *b, cJSON **ret_config, cJSON **ret_manifest, const char **ret_type)
{
        NbError e = {0};
        RegBuilt c = {0}, m = {0};
        int r = reg_image_build_config(b, &c, &e);
        if (r < 0)
                fprintf(stderr, "build config: %s\n", e.msg);
        ASSERT_OK(r);
        ASSERT_OK(reg_image_build_manifest(b, &c, &m, &e));
        ASSERT_EQ(nb_digest_check(c.digest, c.json, c.size), 0);
        ASSERT_EQ(nb_digest_check(m.digest, m.json, m.size), 0);
        ASSERT_EQ(strlen(m.json), m.size);
        *ret_config = cJSON_Parse(c.json);
        *ret_manifest = cJSON_Parse(m.json);
        ASSERT_TRUE(*ret_config && *ret_manifest);
        /* the manifest references the config as built */
        const cJSON *cd = cJSON_GetObjectItem(*ret_manifest, "config");
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(cd, "digest")), c.digest);
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(cd, "size")), c.size);
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(cd, "mediaType")), c.media_type);
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(*ret_manifest, "mediaType")), m.media_type);
        *ret_type = m.media_type;
        reg_built_done(&c);
        reg_built_done(&m);
}

static const char *str_at(const cJSON *j, const char *key, int i, const char *member)
{
        const cJSON *a = cJSON_GetObjectItem(j, key);
        const cJSON *x = i >= 0 ? cJSON_GetArrayItem(a, i) : a;
        return cJSON_GetStringValue(member ? cJSON_GetObjectItem(x, member) : x);
}

static void check_diff_ids(const cJSON *config, const char *const *want, int n)
{
        const cJSON *ids = cJSON_GetObjectItem(cJSON_GetObjectItem(config, "rootfs"), "diff_ids");
        ASSERT_EQ(cJSON_GetArraySize(ids), n);
        for (int i = 0; i < n; i++)
                ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetArrayItem(ids, i)), want[i]);
}

static void check_history(const cJSON *config, const char *const *created_by, int n)
{
        const cJSON *h = cJSON_GetObjectItem(config, "history");
        ASSERT_EQ(cJSON_GetArraySize(h), n);
        for (int i = 0; i < n; i++)
                ASSERT_STREQ(str_at(config, "history", i, "created_by"), created_by[i]);
}

static void check_layers(const cJSON *manifest, const char *const *digests, const char *const *types, int n)
{
        const cJSON *l = cJSON_GetObjectItem(manifest, "layers");
        ASSERT_EQ(cJSON_GetArraySize(l), n);
        for (int i = 0; i < n; i++) {
                ASSERT_STREQ(str_at(manifest, "layers", i, "digest"), digests[i]);
                ASSERT_STREQ(str_at(manifest, "layers", i, "mediaType"), types[i]);
        }
}

static void test_docker_gzip(void)
{
        RegImage *base = base_new(docker_base, config2);
        RegImageBuild b = {.base = base,
                           .keep_layers = 2,
                           .layers = &gzip_layer,
                           .n_layers = 1,
                           .created = CREATED,
                           .base_name = "127.0.0.1:5000/base:1"};
        cJSON *c, *m;
        const char *type;
        build(&b, &c, &m, &type);
        ASSERT_STREQ(type, REG_MEDIA_DOCKER_MANIFEST);
        ASSERT_STREQ(str_at(m, "config", -1, "mediaType"), REG_MEDIA_DOCKER_CONFIG);
        check_layers(m, (const char *const[]){L1, L2, N1},
                     (const char *const[]){REG_MEDIA_DOCKER_LAYER_GZIP, REG_MEDIA_DOCKER_LAYER_GZIP,
                                           REG_MEDIA_DOCKER_LAYER_GZIP},
                     3);
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(
                          cJSON_GetArrayItem(cJSON_GetObjectItem(m, "layers"), 2), "size")),
                  4096);
        ASSERT_TRUE(cJSON_GetObjectItem(m, "annotations") == NULL); /* Docker schema2 has none */
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(m, "schemaVersion")), 2);
        /* the config kept whole, created replaced, one diff_id and one history entry more */
        ASSERT_STREQ(str_at(c, "created", -1, NULL), CREATED);
        ASSERT_STREQ(str_at(c, "architecture", -1, NULL), "amd64");
        ASSERT_STREQ(str_at(cJSON_GetObjectItem(c, "config"), "User", -1, NULL), "ma-user");
        ASSERT_STREQ(str_at(cJSON_GetObjectItem(c, "config"), "Env", 0, NULL), "PATH=/usr/bin");
        check_diff_ids(c, (const char *const[]){I1, I2, M1}, 3);
        check_history(c,
                      (const char *const[]){"ADD rootfs", "ENV PATH", "RUN apt-get install", "CMD sh",
                                            "nbsnap save"},
                      5);
        ASSERT_STREQ(str_at(c, "history", 4, "created"), CREATED);
        ASSERT_STREQ(str_at(c, "history", 4, "comment"), "my env");
        ASSERT_TRUE(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "history"), 4),
                                        "empty_layer") == NULL);
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);
}

static void test_docker_zstd(void)
{
        RegImage *base = base_new(docker_base_foreign, config2);
        RegImageBuild b = {.base = base,
                           .keep_layers = 2,
                           .layers = &zstd_layer,
                           .n_layers = 1,
                           .created = CREATED,
                           .base_name = "127.0.0.1:5000/base:1"};
        const char *type = NULL;
        NbError e = {0};
        ASSERT_OK(reg_image_build_type(&b, &type, NULL, &e));
        ASSERT_STREQ(type, REG_MEDIA_OCI_MANIFEST);
        cJSON *c, *m;
        build(&b, &c, &m, &type);
        ASSERT_STREQ(type, REG_MEDIA_OCI_MANIFEST);
        ASSERT_STREQ(str_at(m, "config", -1, "mediaType"), REG_MEDIA_OCI_CONFIG);
        check_layers(m, (const char *const[]){L1, L2, N1},
                     (const char *const[]){REG_MEDIA_OCI_LAYER_NONDIST_GZIP, REG_MEDIA_OCI_LAYER_GZIP,
                                           REG_MEDIA_OCI_LAYER_ZSTD},
                     3);
        /* a base layer descriptor keeps its other members */
        ASSERT_STREQ(str_at(cJSON_GetArrayItem(cJSON_GetObjectItem(m, "layers"), 0), "urls", 0, NULL),
                     "https://example.com/l1");
        ASSERT_STREQ(str_at(m, "annotations", -1, "org.opencontainers.image.base.digest"), BASE_DIGEST);
        ASSERT_STREQ(str_at(m, "annotations", -1, "org.opencontainers.image.base.name"),
                     "127.0.0.1:5000/base:1");
        /* no comment given: none written */
        ASSERT_TRUE(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "history"), 4),
                                        "comment") == NULL);
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);

        /* a base layer with no OCI type: the image cannot become OCI; the layer is named */
        base = base_new(docker_base_lz4, config2);
        b.base = base;
        size_t bad = 99;
        ASSERT_EQ(reg_image_build_type(&b, &type, &bad, &e), -EOPNOTSUPP);
        ASSERT_EQ(bad, 1);
        ASSERT_TRUE(strstr(e.msg, "base layer 1") && strstr(e.msg, "tar.lz4"));
        RegBuilt out = {0};
        ASSERT_EQ(reg_image_build_config(&b, &out, &e), -EOPNOTSUPP);
        /* with gzip it stays schema2 and the odd layer is kept as it is */
        b.layers = &gzip_layer;
        ASSERT_OK(reg_image_build_type(&b, &type, &bad, &e));
        ASSERT_STREQ(type, REG_MEDIA_DOCKER_MANIFEST);
        reg_image_free(base);
}

static void test_oci_base(void)
{
        RegImage *base = base_new(oci_base3, config3);
        RegImageBuild b = {.base = base,
                           .keep_layers = 3,
                           .layers = &gzip_layer,
                           .n_layers = 1,
                           .created = CREATED,
                           .base_name = "base:3"};
        cJSON *c, *m;
        const char *type;
        build(&b, &c, &m, &type);
        ASSERT_STREQ(type, REG_MEDIA_OCI_MANIFEST);
        ASSERT_STREQ(str_at(m, "config", -1, "mediaType"), REG_MEDIA_OCI_CONFIG);
        check_layers(m, (const char *const[]){L1, L2, L3, N1},
                     (const char *const[]){REG_MEDIA_OCI_LAYER_GZIP, REG_MEDIA_OCI_LAYER_GZIP,
                                           REG_MEDIA_OCI_LAYER_GZIP, REG_MEDIA_OCI_LAYER_GZIP},
                     4);
        /* the base's annotations and subject are its own, not the new image's */
        ASSERT_STREQ(str_at(m, "annotations", -1, "org.opencontainers.image.base.name"), "base:3");
        ASSERT_TRUE(cJSON_GetObjectItem(m, "subject") == NULL);
        check_diff_ids(c, (const char *const[]){I1, I2, I3, M1}, 4);
        /* a config without "created" gets one */
        ASSERT_STREQ(str_at(c, "created", -1, NULL), CREATED);
        cJSON_Delete(c);
        cJSON_Delete(m);

        /* no base_name: no annotations */
        b.base_name = NULL;
        build(&b, &c, &m, &type);
        ASSERT_TRUE(cJSON_GetObjectItem(m, "annotations") == NULL);
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);
}

/* Squash: the top layers go with their diff_ids and their layer history entries; empty_layer entries stay
 * (the config still holds what they did) and the correspondence stays one to one. */
static void test_drop_top_layers(void)
{
        RegImage *base = base_new(oci_base3, config3);
        RegImageBuild b = {
                .base = base, .keep_layers = 1, .layers = &gzip_layer, .n_layers = 1, .created = CREATED};
        cJSON *c, *m;
        const char *type;
        build(&b, &c, &m, &type);
        check_layers(m, (const char *const[]){L1, N1},
                     (const char *const[]){REG_MEDIA_OCI_LAYER_GZIP, REG_MEDIA_OCI_LAYER_GZIP}, 2);
        check_diff_ids(c, (const char *const[]){I1, M1}, 2);
        check_history(c, (const char *const[]){"l1", "e1", "e2", "e3", "nbsnap save"}, 5);
        cJSON_Delete(c);
        cJSON_Delete(m);

        /* all dropped */
        b.keep_layers = 0;
        build(&b, &c, &m, &type);
        check_layers(m, (const char *const[]){N1}, (const char *const[]){REG_MEDIA_OCI_LAYER_GZIP}, 1);
        check_diff_ids(c, (const char *const[]){M1}, 1);
        check_history(c, (const char *const[]){"e1", "e2", "e3", "nbsnap save"}, 4);
        cJSON_Delete(c);
        cJSON_Delete(m);

        /* Docker base: drop one of two */
        reg_image_free(base);
        base = base_new(docker_base, config2);
        b = (RegImageBuild){
                .base = base, .keep_layers = 1, .layers = &gzip_layer, .n_layers = 1, .created = CREATED};
        build(&b, &c, &m, &type);
        ASSERT_STREQ(type, REG_MEDIA_DOCKER_MANIFEST);
        check_layers(m, (const char *const[]){L1, N1},
                     (const char *const[]){REG_MEDIA_DOCKER_LAYER_GZIP, REG_MEDIA_DOCKER_LAYER_GZIP}, 2);
        check_diff_ids(c, (const char *const[]){I1, M1}, 2);
        check_history(c, (const char *const[]){"ADD rootfs", "ENV PATH", "CMD sh", "nbsnap save"}, 4);
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);

        /* a base without history: nothing to drop there */
        const char *nohist = "{\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" I1 "\",\"" I2 "\"]}}";
        base = base_new(docker_base, nohist);
        b.base = base;
        build(&b, &c, &m, &type);
        check_diff_ids(c, (const char *const[]){I1, M1}, 2);
        check_history(c, (const char *const[]){"nbsnap save"}, 1);
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);
}

static void test_several_layers(void)
{
        RegImage *base = base_new(docker_base, config2);
        const RegLayerAdd two[] = {
                {REG_MEDIA_OCI_LAYER_GZIP, N1, 10, M1, "nbsnap save (1/2)", NULL},
                {REG_MEDIA_DOCKER_LAYER_GZIP, N2, 20, M2, "nbsnap save (2/2)", "part two"},
        };
        RegImageBuild b = {.base = base, .keep_layers = 1, .layers = two, .n_layers = 2, .created = CREATED};
        cJSON *c, *m;
        const char *type;
        build(&b, &c, &m, &type);
        ASSERT_STREQ(type, REG_MEDIA_DOCKER_MANIFEST);
        check_layers(m, (const char *const[]){L1, N1, N2},
                     (const char *const[]){REG_MEDIA_DOCKER_LAYER_GZIP, REG_MEDIA_DOCKER_LAYER_GZIP,
                                           REG_MEDIA_DOCKER_LAYER_GZIP},
                     3);
        check_diff_ids(c, (const char *const[]){I1, M1, M2}, 3);
        check_history(c,
                      (const char *const[]){"ADD rootfs", "ENV PATH", "CMD sh", "nbsnap save (1/2)",
                                            "nbsnap save (2/2)"},
                      5);
        ASSERT_STREQ(str_at(c, "history", 4, "comment"), "part two");
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);
}

static void build_fails(const char *manifest, const char *config, size_t keep, const RegLayerAdd *l, int err,
                        const char *words)
{
        RegImage *base = base_new(manifest, config);
        RegImageBuild b = {
                .base = base, .keep_layers = keep, .layers = l, .n_layers = 1, .created = CREATED};
        NbError e = {0};
        RegBuilt out = {0};
        int r = reg_image_build_config(&b, &out, &e);
        if (r != err || !strstr(e.msg, words))
                fprintf(stderr, "expected %d \"%s\", got %d \"%s\"\n", err, words, r, e.msg);
        ASSERT_EQ(r, err);
        ASSERT_TRUE(strstr(e.msg, words) != NULL);
        ASSERT_TRUE(out.json == NULL);
        reg_image_free(base);
}

static void test_bad_bases(void)
{
        const RegLayerAdd bad_diff_id = {REG_MEDIA_OCI_LAYER_GZIP, N1, 1, "sha256:nope", "x", NULL};
        const RegLayerAdd bad_type = {"application/x-tar", N1, 1, M1, "x", NULL};
        build_fails(docker_base, "{\"architecture\":\"amd64\"}", 2, &gzip_layer, -EBADMSG,
                    "no rootfs.diff_ids");
        build_fails(docker_base, "{\"rootfs\":{\"type\":\"layers\"}}", 2, &gzip_layer, -EBADMSG,
                    "no rootfs.diff_ids");
        build_fails(docker_base, "{\"rootfs\":{\"diff_ids\":[\"" I1 "\"]}}", 2, &gzip_layer, -EBADMSG,
                    "has 1 rootfs.diff_ids for 2 layers");
        build_fails(docker_base, "[1,2]", 2, &gzip_layer, -EBADMSG, "not a JSON object");
        build_fails(docker_base, "{", 2, &gzip_layer, -EBADMSG, "not a JSON object");
        /* history entries for layers that are not one per layer: fine to append to, not to drop from */
        const char *odd =
                "{\"rootfs\":{\"diff_ids\":[\"" I1 "\",\"" I2 "\"]},\"history\":[{\"created_by\":\"a\"}]}";
        build_fails(docker_base, odd, 1, &gzip_layer, -EBADMSG, "history has 1 entries for layers");
        build_fails(docker_base, config2, 3, &gzip_layer, -EINVAL, "cannot keep 3 layers");
        build_fails(docker_base, config2, 2, &bad_diff_id, -EINVAL, "invalid diff_id");
        build_fails(docker_base, config2, 2, &bad_type, -EINVAL, "unknown media type");

        RegImage *base = base_new(docker_base, odd);
        RegImageBuild b = {
                .base = base, .keep_layers = 2, .layers = &gzip_layer, .n_layers = 1, .created = CREATED};
        cJSON *c, *m;
        const char *type;
        build(&b, &c, &m, &type);
        check_history(c, (const char *const[]){"a", "nbsnap save"}, 2);
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);

        /* a base without layers may lack rootfs: it is made */
        const char *empty = "{\"schemaVersion\":2,\"mediaType\":\"" REG_MEDIA_OCI_MANIFEST
                            "\",\"config\":{\"mediaType\":\"" REG_MEDIA_OCI_CONFIG "\",\"digest\":\"" DA
                            "\",\"size\":2},\"layers\":[]}";
        base = base_new(empty, "{}");
        b = (RegImageBuild){
                .base = base, .keep_layers = 0, .layers = &gzip_layer, .n_layers = 1, .created = CREATED};
        build(&b, &c, &m, &type);
        check_diff_ids(c, (const char *const[]){M1}, 1);
        ASSERT_STREQ(str_at(c, "rootfs", -1, "type"), "layers");
        cJSON_Delete(c);
        cJSON_Delete(m);
        reg_image_free(base);
}

/* The exact bytes of a save on a Docker schema2 base: key order kept, "created" moved last, the new layer
 * and history entry last (what agent/save.c produced before this module). */
static void test_bytes(void)
{
        const char *cfg = "{\"created\":\"x\",\"architecture\":\"amd64\",\"rootfs\":{\"type\":\"layers\","
                          "\"diff_ids\":[\"" I1 "\",\"" I2 "\"]},\"config\":{}}";
        RegImage *base = base_new(docker_base, cfg);
        RegImageBuild b = {
                .base = base, .keep_layers = 2, .layers = &gzip_layer, .n_layers = 1, .created = CREATED};
        NbError e = {0};
        RegBuilt c = {0}, m = {0};
        ASSERT_OK(reg_image_build_config(&b, &c, &e));
        ASSERT_STREQ(c.json,
                     "{\"architecture\":\"amd64\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" I1
                     "\",\"" I2 "\",\"" M1 "\"]},\"config\":{},\"history\":[{\"created\":\"" CREATED
                     "\",\"created_by\":\"nbsnap save\",\"comment\":\"my env\"}],\"created\":\"" CREATED
                     "\"}");
        ASSERT_OK(reg_image_build_manifest(&b, &c, &m, &e));
        char want[2048];
        snprintf(
                want, sizeof(want),
                "{\"schemaVersion\":2,\"layers\":[" DOCKER_LAYER(L1, 100) "," DOCKER_LAYER(
                        L2,
                        200) "," DOCKER_LAYER(N1,
                                              4096) "],\"mediaType\":\"" REG_MEDIA_DOCKER_MANIFEST
                                                    "\",\"config\":{\"mediaType\":\"" REG_MEDIA_DOCKER_CONFIG
                                                    "\",\"digest\":\"%s\",\"size\":%zu}}",
                c.digest, c.size);
        ASSERT_STREQ(m.json, want);
        reg_built_done(&c);
        reg_built_done(&m);
        reg_image_free(base);
}

int main(void)
{
        test_media_types();
        test_manifests();
        test_docker_gzip();
        test_docker_zstd();
        test_oci_base();
        test_drop_top_layers();
        test_several_layers();
        test_bad_bases();
        test_bytes();
        printf("test-oci: all passed\n");
        return 0;
}
