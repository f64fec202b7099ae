#include <string.h>

#include <openssl/evp.h>

#include "common/digest.h"

static const EVP_MD *digest_md(const char *digest)
{
        if (strncmp(digest, "sha256", 6) == 0 && (digest[6] == ':' || digest[6] == 0))
                return EVP_sha256();
        if (strncmp(digest, "sha512", 6) == 0 && (digest[6] == ':' || digest[6] == 0))
                return EVP_sha512();
        return NULL;
}

void nb_digest_ctx_freep(EVP_MD_CTX **p)
{
        EVP_MD_CTX_free(*p);
}

int nb_digest_ctx_new(const char *digest, EVP_MD_CTX **ret)
{
        const EVP_MD *md = digest_md(digest);
        if (!md)
                return -EOPNOTSUPP;
        _cleanup_md_ctx_ EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (!ctx)
                return -ENOMEM;
        if (EVP_DigestInit_ex(ctx, md, NULL) != 1)
                return -EIO;
        *ret = TAKE_PTR(ctx);
        return 0;
}

int nb_digest_ctx_final(EVP_MD_CTX *ctx, char ret[NB_DIGEST_STR_MAX])
{
        const EVP_MD *md = EVP_MD_CTX_get0_md(ctx);
        const char *algorithm = md && EVP_MD_get_type(md) == NID_sha512 ? "sha512" : "sha256";
        unsigned char bin[EVP_MAX_MD_SIZE];
        unsigned n = 0;
        if (EVP_DigestFinal_ex(ctx, bin, &n) != 1)
                return -EIO;
        static const char hex[] = "0123456789abcdef";
        size_t len = strlen(algorithm);
        memcpy(ret, algorithm, len);
        ret[len++] = ':';
        for (unsigned i = 0; i < n && len + 2 < NB_DIGEST_STR_MAX; i++) {
                ret[len++] = hex[bin[i] >> 4];
                ret[len++] = hex[bin[i] & 15];
        }
        ret[len] = 0;
        return 0;
}

int nb_sha256_digest(const void *data, size_t size, char ret[NB_DIGEST_STR_MAX])
{
        _cleanup_md_ctx_ EVP_MD_CTX *ctx = NULL;
        int r = nb_digest_ctx_new("sha256", &ctx);
        if (r < 0)
                return r;
        if (EVP_DigestUpdate(ctx, data, size) != 1)
                return -EIO;
        return nb_digest_ctx_final(ctx, ret);
}

int nb_digest_check(const char *digest, const void *data, size_t size)
{
        _cleanup_md_ctx_ EVP_MD_CTX *ctx = NULL;
        int r = nb_digest_ctx_new(digest, &ctx);
        if (r < 0)
                return r;
        if (EVP_DigestUpdate(ctx, data, size) != 1)
                return -EIO;
        char got[NB_DIGEST_STR_MAX];
        r = nb_digest_ctx_final(ctx, got);
        if (r < 0)
                return r;
        return strcmp(got, digest) == 0 ? 0 : -EBADMSG;
}
