/* manifest.c: putting and deleting manifests. The manifest is pushed last by the caller, so a tag never
 * points at a half-uploaded image. */
#include <string.h>

#include "registry/registry-internal.h"

int reg_manifest_blobs_missing(RegClient *c, const char *repository, const void *manifest, size_t size,
                               char **ret_first_missing, NbError *e)
{
        RegImage img = {0};
        int r = reg_manifest_parse(manifest, size, NULL, &img, e);
        int missing = 0;
        _cleanup_free_ char *first = NULL;
        for (size_t i = 0; r >= 0 && i <= img.n_layers; i++) {
                const char *digest = i == 0 ? img.config.digest : img.layers[i - 1].digest;
                r = reg_blob_exists(c, repository, digest, NULL, e);
                if (r == 0 && missing++ == 0 && reg_strdup(digest, &first) < 0)
                        r = nb_error_oom(e);
        }
        reg_descriptor_done(&img.config);
        for (size_t i = 0; i < img.n_layers; i++)
                reg_descriptor_done(&img.layers[i]);
        free(img.layers);
        free(img.manifest_media_type);
        if (r < 0)
                return r;
        if (ret_first_missing)
                *ret_first_missing = TAKE_PTR(first);
        return missing;
}

static int manifest_check(const char *repository, const char *reference, const char *media_type,
                          const void *data, size_t size, NbError *e)
{
        if (!reg_repository_valid(repository))
                return nb_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                    repository ? repository : "");
        if (!reference || (!reg_tag_valid(reference) && !reg_digest_valid(reference)))
                return nb_error_set(e, -EINVAL, "invalid tag or digest \"%s\"", reference ? reference : "");
        if (!media_type || !*media_type || strlen(media_type) > 255 || strpbrk(media_type, "\r\n"))
                return nb_error_set(e, -EINVAL, "invalid manifest media type");
        if (!data || size == 0 || size > REG_MANIFEST_MAX)
                return nb_error_set(e, -EFBIG, "the manifest must be 1 to %u bytes", REG_MANIFEST_MAX);
        if (reg_digest_valid(reference) && nb_digest_check(reference, data, size) < 0)
                return nb_error_set(e, -EBADMSG, "the manifest does not have digest %s", reference);
        return 0;
}

/* MANIFEST_BLOB_UNKNOWN: 0 when every blob is there (try the PUT again), -ENOLINK naming one that is not. */
static int manifest_blob_unknown(RegClient *c, const char *repository, const void *data, size_t size,
                                 const char *what, NbError *e)
{
        _cleanup_free_ char *missing = NULL;
        int r = reg_manifest_blobs_missing(c, repository, data, size, &missing, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s: checking its blobs after MANIFEST_BLOB_UNKNOWN", what);
        if (r == 0)
                return 0;
        return nb_error_set_http(
                e, -ENOLINK, 400,
                "%s: HTTP 400 MANIFEST_BLOB_UNKNOWN: the registry does not have blob %s (%d of the "
                "manifest's blobs missing)",
                what, missing, r);
}

int reg_manifest_put(RegClient *c, const char *repository, const char *reference, const char *media_type,
                     const void *data, size_t size, char **ret_digest, NbError *e)
{
        int r = manifest_check(repository, reference, media_type, data, size, e);
        if (r < 0)
                return r;
        char digest[NB_DIGEST_STR_MAX];
        r = nb_sha256_digest(data, size, digest);
        if (r < 0)
                return nb_error_set(e, r, "cannot compute the manifest's digest");
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "manifests", reference, &url) < 0 ||
            reg_scope(repository, "pull,push", &scope) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "PUT",
                         .url = url,
                         .scope = scope,
                         .content_type = media_type,
                         .body = data,
                         .body_size = size,
                         .retry = true,
                         .drain = true};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "pushing manifest %s%s%s to %s", repository,
                 reg_digest_valid(reference) ? "@" : ":", reference, c->host);
        RegRetry rt = {0};
        for (unsigned attempt = 0;; attempt++) {
                _cleanup_(reg_response_done) RegResponse resp = {0};
                r = reg_request(c, &rq, &resp, e);
                if (r < 0)
                        return nb_error_wrap(e, r, "%s", what);
                if (resp.status == 201 || resp.status == 200)
                        break;
                r = reg_response_error(&resp, e, what);
                if (r != -ENOLINK)
                        return r;
                /* every blob there: the registry's storage lags behind; wait and put again, bounded */
                r = manifest_blob_unknown(c, repository, data, size, what, e);
                if (r < 0)
                        return r;
                if (attempt + 1 >= REG_MANIFEST_BLOB_RETRIES ||
                    reg_retry_wait(c, &rt, REG_RETRY_OTHER, NULL) < 0)
                        return nb_error_set(
                                e, -ENOLINK,
                                "%s: the registry still answers MANIFEST_BLOB_UNKNOWN although it "
                                "has every blob, after %u attempts",
                                what, attempt + 1);
        }
        if (ret_digest && reg_strdup(digest, ret_digest) < 0)
                return -ENOMEM;
        return 0;
}

int reg_manifest_delete(RegClient *c, const char *repository, const char *digest, NbError *e)
{
        if (!reg_repository_valid(repository))
                return nb_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                    repository ? repository : "");
        if (!reg_digest_valid(digest))
                return nb_error_set(e, -EINVAL, "manifests are deleted by digest, not \"%s\"",
                                    digest ? digest : "");
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "manifests", digest, &url) < 0 ||
            reg_scope(repository, "delete", &scope) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "DELETE", .url = url, .scope = scope, .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "deleting manifest %s@%s from %s", repository, digest, c->host);
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status != 202 && resp.status != 200 && resp.status != 204)
                return reg_response_error(&resp, e, what);
        return 0;
}
