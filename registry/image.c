/* image.c: resolving an image: manifest (or index -> the platform's manifest), then the config blob, each
 * checked against the digest it was fetched by. The parsers of what is fetched live in oci.c. */
#include <string.h>

#include "registry/registry-internal.h"

static const char accept_all[] = REG_MEDIA_OCI_MANIFEST ", " REG_MEDIA_DOCKER_MANIFEST
                                                        ", " REG_MEDIA_OCI_INDEX ", " REG_MEDIA_DOCKER_LIST;

/* ---- fetching -------------------------------------------------------------------------------------------
 */

typedef struct Fetched {
        char *body;
        size_t size;
        char *content_type;
        char digest[NB_DIGEST_STR_MAX];
} Fetched;

static void fetched_done(Fetched *f)
{
        free(f->body);
        free(f->content_type);
        *f = (Fetched){0};
}

int reg_manifest_exists(RegClient *c, const char *repository, const char *reference, char **ret_digest,
                        NbError *e)
{
        if (!reg_repository_valid(repository))
                return nb_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                    repository ? repository : "");
        if (!reference || (!reg_tag_valid(reference) && !reg_digest_valid(reference)))
                return nb_error_set(e, -EINVAL, "invalid tag or digest \"%s\"", reference ? reference : "");
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "manifests", reference, &url) < 0 ||
            reg_scope(repository, "pull", &scope) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "HEAD",
                         .url = url,
                         .scope = scope,
                         .accept = accept_all,
                         .retry = true,
                         .follow = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "checking manifest %s%s%s in %s", repository,
                 reg_digest_valid(reference) ? "@" : ":", reference, c->host);
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status == 404)
                return 0;
        if (resp.status != 200)
                return reg_response_error(&resp, e, what);
        if (ret_digest)
                *ret_digest = TAKE_PTR(resp.docker_content_digest);
        return 1;
}

/* GET manifests/<reference>; checks the body against the digest asked for, or the one the registry said. */
static int manifest_get(RegClient *c, const char *repository, const char *reference, Fetched *ret,
                        NbError *e)
{
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "manifests", reference, &url) < 0 ||
            reg_scope(repository, "pull", &scope) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "GET",
                         .url = url,
                         .scope = scope,
                         .accept = accept_all,
                         .body_max = REG_MANIFEST_MAX,
                         .retry = true,
                         .follow = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        int r = reg_request(c, &rq, &resp, e);
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "fetching manifest %s%s%s from %s", repository,
                 reg_digest_valid(reference) ? "@" : ":", reference, c->host);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status != 200)
                return reg_response_error(&resp, e, what);
        const char *want = reg_digest_valid(reference) ? reference : resp.docker_content_digest;
        if (want && reg_digest_valid(want) &&
            nb_digest_check(want, resp.body ? resp.body : "", resp.body_size) < 0)
                return nb_error_set(e, -EBADMSG, "%s: the manifest does not match digest %s", what, want);
        r = nb_sha256_digest(resp.body ? resp.body : "", resp.body_size, ret->digest);
        if (r < 0)
                return nb_error_set(e, r, "%s: cannot compute its digest", what);
        if (!resp.body && !(resp.body = strdup("")))
                return -ENOMEM;
        ret->body = TAKE_PTR(resp.body);
        ret->size = resp.body_size;
        ret->content_type = TAKE_PTR(resp.content_type);
        return 0;
}

static int config_get(RegClient *c, const char *repository, RegImage *img, NbError *e)
{
        _cleanup_free_ char *url = NULL, *scope = NULL;
        if (reg_client_v2_url(c, repository, "blobs", img->config.digest, &url) < 0 ||
            reg_scope(repository, "pull", &scope) < 0)
                return nb_error_oom(e);
        RegRequest rq = {.method = "GET",
                         .url = url,
                         .scope = scope,
                         .body_max = REG_CONFIG_MAX,
                         .retry = true,
                         .follow = true};
        _cleanup_(reg_response_done) RegResponse resp = {0};
        char what[REG_URL_MAX];
        snprintf(what, sizeof(what), "fetching image config %s of %s from %s", img->config.digest,
                 repository, c->host);
        int r = reg_request(c, &rq, &resp, e);
        if (r < 0)
                return nb_error_wrap(e, r, "%s", what);
        if (resp.status != 200)
                return reg_response_error(&resp, e, what);
        if ((int64_t)resp.body_size != img->config.size ||
            nb_digest_check(img->config.digest, resp.body ? resp.body : "", resp.body_size) < 0)
                return nb_error_set(e, -EBADMSG, "%s: the blob does not match its size and digest", what);
        if (!resp.body && !(resp.body = strdup("")))
                return -ENOMEM;
        img->config_json = TAKE_PTR(resp.body);
        img->config_size = resp.body_size;
        return 0;
}

/* The manifest for the platform: the index (if any) resolved, then the manifest fetched by digest. */
static int manifest_resolve(RegClient *c, const char *repository, const char *reference, const char *os,
                            const char *arch, const char *variant, Fetched *ret, NbError *e)
{
        int r = manifest_get(c, repository, reference, ret, e);
        if (r < 0)
                return r;
        const char *mt;
        r = reg_manifest_kind(ret->body, ret->size, ret->content_type, &mt, e);
        if (r <= 0)
                return r;
        _cleanup_(reg_descriptor_donep) RegDescriptor d = {0};
        r = reg_index_select(ret->body, ret->size, os, arch, variant, &d, e);
        if (r < 0)
                return r;
        fetched_done(ret);
        r = manifest_get(c, repository, d.digest, ret, e);
        if (r < 0)
                return r;
        r = reg_manifest_kind(ret->body, ret->size, ret->content_type, &mt, e);
        if (r == 1)
                return nb_error_set(e, -EMEDIUMTYPE, "the index of %s:%s points to another index",
                                    repository, reference);
        return r;
}

int reg_image_fetch(RegClient *c, const char *repository, const char *reference, const char *os,
                    const char *arch, const char *variant, RegImage **ret, NbError *e)
{
        if (!reg_repository_valid(repository))
                return nb_error_set(e, -EINVAL, "invalid repository name \"%s\"",
                                    repository ? repository : "");
        if (!reference || (!reg_tag_valid(reference) && !reg_digest_valid(reference)))
                return nb_error_set(e, -EINVAL, "invalid tag or digest \"%s\"", reference ? reference : "");
        _cleanup_(fetched_done) Fetched f = {0};
        int r = manifest_resolve(c, repository, reference, os, arch, variant, &f, e);
        if (r < 0)
                return r;
        _cleanup_reg_image_ RegImage *img = calloc(1, sizeof(*img));
        if (!img)
                return -ENOMEM;
        r = reg_manifest_parse(f.body, f.size, f.content_type, img, e);
        if (r < 0)
                return r;
        if (reg_strdup(f.digest, &img->manifest_digest) < 0)
                return -ENOMEM;
        img->manifest = TAKE_PTR(f.body);
        img->manifest_size = f.size;
        r = config_get(c, repository, img, e);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(img);
        return 0;
}
