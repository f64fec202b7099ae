/* Unit tests of common/digest: the one digest formatter. */
#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/digest.h"
#include "tests.h"

int main(void)
{
        char d[NB_DIGEST_STR_MAX];
        ASSERT_OK(nb_sha256_digest("abc", 3, d));
        ASSERT_STREQ(d, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        ASSERT_OK(nb_sha256_digest("", 0, d));
        ASSERT_STREQ(d, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        ASSERT_EQ(nb_digest_check(d, "", 0), 0);
        ASSERT_EQ(nb_digest_check(d, "x", 1), -EBADMSG);
        ASSERT_EQ(nb_digest_check("md5:abc", "x", 1), -EOPNOTSUPP);

        _cleanup_md_ctx_ EVP_MD_CTX *ctx = NULL;
        ASSERT_OK(nb_digest_ctx_new("sha512:whatever", &ctx));
        ASSERT_TRUE(EVP_DigestUpdate(ctx, "abc", 3) == 1);
        ASSERT_OK(nb_digest_ctx_final(ctx, d));
        ASSERT_STREQ(d,
                     "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1"
                     "a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
        ASSERT_EQ(nb_digest_check(d, "abc", 3), 0);
        EVP_MD_CTX *bad = NULL;
        ASSERT_EQ(nb_digest_ctx_new("sha1", &bad), -EOPNOTSUPP);
        printf("test-digest: ok\n");
        return 0;
}
