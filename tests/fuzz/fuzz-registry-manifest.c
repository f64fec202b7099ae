/* fuzz-registry-manifest.c: manifests, indexes (platform choice) and registry error bodies. */
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
        char code[64], msg[REG_MESSAGE_MAX + 1];
        reg_error_body_parse(s, size, NULL, code, sizeof(code), msg, sizeof(msg));
        if (strlen(msg) > REG_MESSAGE_MAX)
                abort();
        char small[8];
        reg_error_body_parse(s, size, "text/html", code, 3, small, sizeof(small));
        free(s);
        return 0;
}
