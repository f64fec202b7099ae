/* digest.h: content digests in the OCI form "<algorithm>:<hex>" (sha256, and sha512 where a peer uses it).
 * One formatter for the whole project: the layer's diff_id and blob digest, configs, manifests, records. */
#pragma once

#include <stddef.h>

#include "common/macro.h"

#define NB_DIGEST_STR_MAX (7 + 128 + 1) /* "sha512:" + 128 hex + NUL */

typedef struct evp_md_ctx_st EVP_MD_CTX;

/* A digest context for the algorithm of digest ("sha256:..." or "sha512:..."; the algorithm name alone is
 * fine). -EOPNOTSUPP for any other. */
int nb_digest_ctx_new(const char *digest, EVP_MD_CTX **ret);
/* Finishes ctx into "<algorithm>:<hex>" (the algorithm ctx was set up with). */
int nb_digest_ctx_final(EVP_MD_CTX *ctx, char ret[NB_DIGEST_STR_MAX]);
/* "sha256:<hex>" of data. */
int nb_sha256_digest(const void *data, size_t size, char ret[NB_DIGEST_STR_MAX]);
/* 0 when data has digest; -EBADMSG when not; -EOPNOTSUPP for an algorithm other than sha256/sha512. */
int nb_digest_check(const char *digest, const void *data, size_t size);

void nb_digest_ctx_freep(EVP_MD_CTX **p);
#define _cleanup_md_ctx_ _cleanup_(nb_digest_ctx_freep)
