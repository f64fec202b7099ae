/* manifest.c: putting and deleting manifests. The manifest is pushed last by the caller, so a tag never
 * points at a half-uploaded image. */
#include <string.h>

#include "registry-internal.h"

int reg_manifest_put(RegClient *c, const char *repository, const char *reference, const char *media_type,
                     const void *data, size_t size, char **ret_digest, RegError *e)
{
        if (!reg_repository_valid(repository))
                return reg_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                     repository ? repository : "");
        if (!reference || (!reg_tag_valid(reference) && !reg_digest_valid(reference)))
                return reg_error_set(e, -EINVAL, "invalid tag or digest \"%s\"", reference ? reference : "");
        if (!media_type || !*media_type || strlen(media_type) > 255 || strpbrk(media_type, "\r\n"))
                return reg_error_set(e, -EINVAL, "invalid manifest media type");
        if (!data || size == 0 || size > REG_MANIFEST_MAX)
                return reg_error_set(e, -EFBIG, "the manifest must be 1 to %u bytes", REG_MANIFEST_MAX);
        char digest[REG_DIGEST_STR_MAX];
        int r = reg_digest_sha256(data, size, digest);
        if (r < 0)
                return reg_error_set(e, r, "cannot compute the manifest's digest");
        if (reg_digest_valid(reference) && reg_digest_check(reference, data, size) < 0)
                return reg_error_set(e, -EBADMSG, "the manifest does not have digest %s", reference);
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "manifests", reference, &url) < 0 ||
            reg_scope(repository, "pull,push", &scope) < 0)
                return reg_error_set(e, -ENOMEM, "out of memory");
        RegRequest rq = {.method = "PUT",
                         .url = url,
                         .scope = scope,
                         .content_type = media_type,
                         .body = data,
                         .body_size = size,
                         .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "pushing manifest %s%s%s to %s", repository,
                 reg_digest_valid(reference) ? "@" : ":", reference, c->host);
        r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return reg_error_wrap(e, r, "%s", what);
        if (resp.status != 201 && resp.status != 200)
                return reg_response_error(&resp, e, what);
        if (ret_digest && reg_strdup(digest, ret_digest) < 0)
                return -ENOMEM;
        return 0;
}

int reg_manifest_delete(RegClient *c, const char *repository, const char *digest, RegError *e)
{
        if (!reg_repository_valid(repository))
                return reg_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                     repository ? repository : "");
        if (!reg_digest_valid(digest))
                return reg_error_set(e, -EINVAL, "manifests are deleted by digest, not \"%s\"",
                                     digest ? digest : "");
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "manifests", digest, &url) < 0 ||
            reg_scope(repository, "delete", &scope) < 0)
                return reg_error_set(e, -ENOMEM, "out of memory");
        RegRequest rq = {.method = "DELETE", .url = url, .scope = scope, .retry = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "deleting manifest %s@%s from %s", repository, digest, c->host);
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return reg_error_wrap(e, r, "%s", what);
        if (resp.status != 202 && resp.status != 200 && resp.status != 204)
                return reg_response_error(&resp, e, what);
        return 0;
}
