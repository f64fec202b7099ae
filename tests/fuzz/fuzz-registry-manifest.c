/* fuzz-registry-manifest.c: manifests, indexes (platform choice), registry error bodies, and a new image
 * built on a base whose config is the input. */
#include <stdint.h>
#include <string.h>

#include "registry/registry-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one_manifest(const char *s, size_t n)
{
        NbError e = {0};
        const char *mt = NULL;
        int kind = reg_manifest_kind(s, n, REG_MEDIA_OCI_MANIFEST, &mt, &e);
        if (kind >= 0 && !mt)
                abort();
        RegImage *img = calloc(1, sizeof(*img));
        if (!img)
                return;
        if (reg_manifest_parse(s, n, NULL, img, &e) >= 0) {
                if (!img->manifest_media_type || !reg_digest_valid(img->config.digest) ||
                    img->n_layers > REG_LAYERS_MAX)
                        abort();
                for (size_t i = 0; i < img->n_layers; i++)
                        if (!reg_digest_valid(img->layers[i].digest) || img->layers[i].size < 0)
                                abort();
        }
        reg_image_free(img);
        RegDescriptor d = {0};
        if (reg_index_select(s, n, "linux", "arm64", NULL, &d, &e) >= 0) {
                if (!reg_digest_valid(d.digest))
                        abort();
                reg_descriptor_done(&d);
        }
        if (reg_index_select(s, n, "linux", "amd64", "v2", &d, &e) >= 0)
                reg_descriptor_done(&d);
}

#define FUZZ_D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define FUZZ_D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

/* The input as the config of a two-layer base: the builder fails cleanly or writes JSON with its digest. */
static void one_build(const char *s, size_t n)
{
        static const char manifest[] =
                "{\"schemaVersion\":2,\"mediaType\":\"" REG_MEDIA_DOCKER_MANIFEST
                "\",\"config\":{\"mediaType\":\"" REG_MEDIA_DOCKER_CONFIG "\",\"digest\":\"" FUZZ_D1
                "\",\"size\":1},\"layers\":[{\"mediaType\":\"" REG_MEDIA_DOCKER_LAYER_GZIP
                "\",\"digest\":\"" FUZZ_D1 "\",\"size\":1},{\"mediaType\":\"" REG_MEDIA_DOCKER_LAYER_GZIP
                "\",\"digest\":\"" FUZZ_D2 "\",\"size\":2}]}";
        NbError e = {0};
        RegImage base = {.manifest = (char *)manifest,
                         .manifest_size = sizeof(manifest) - 1,
                         .manifest_digest = (char *)FUZZ_D2,
                         .config_json = (char *)s,
                         .config_size = n};
        if (reg_manifest_parse(manifest, sizeof(manifest) - 1, NULL, &base, &e) < 0)
                abort();
        const RegLayerAdd l = {REG_MEDIA_OCI_LAYER_ZSTD, FUZZ_D2, 3, FUZZ_D1, "fuzz", "comment"};
        for (size_t keep = 0; keep <= base.n_layers; keep++) {
                RegImageBuild b = {.base = &base,
                                   .keep_layers = keep,
                                   .layers = &l,
                                   .n_layers = 1,
                                   .created = "2026-01-01T00:00:00Z",
                                   .base_name = "base"};
                RegBuilt c = {0}, m = {0};
                if (reg_image_build_config(&b, &c, &e) >= 0 &&
                    (nb_digest_check(c.digest, c.json, c.size) < 0 ||
                     reg_image_build_manifest(&b, &c, &m, &e) < 0 ||
                     nb_digest_check(m.digest, m.json, m.size) < 0))
                        abort();
                reg_built_done(&c);
                reg_built_done(&m);
        }
        reg_descriptor_done(&base.config);
        for (size_t i = 0; i < base.n_layers; i++)
                reg_descriptor_done(&base.layers[i]);
        free(base.layers);
        free(base.manifest_media_type);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size > 256 * 1024)
                return 0;
        char *s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = 0;
        one_manifest(s, size);
        one_build(s, size);
        char code[64], msg[REG_MESSAGE_MAX + 1];
        reg_error_body_parse(s, size, NULL, code, sizeof(code), msg, sizeof(msg));
        if (strlen(msg) > REG_MESSAGE_MAX)
                abort();
        char small[8];
        reg_error_body_parse(s, size, "text/html", code, 3, small, sizeof(small));
        free(s);
        return 0;
}
