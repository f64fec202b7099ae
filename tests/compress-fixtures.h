/* compress-fixtures.h: what the compressor tests share: a growing in-memory sink for the output callback
 * (that can be told to fail after N bytes), the input mix (text-like runs and noise), and a one-shot
 * SHA-256 computed independently of the code under test. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/digest.h"
#include "snapshot/snapshot.h"
#include "tests.h"

#define MIB (1024u * 1024)

typedef struct Sink {
        uint8_t *data;
        size_t size, cap;
        size_t fail_after; /* fail once this many bytes were accepted; 0: never */
        int fail_code;
        bool failed;
        unsigned calls_after_failure; /* the callback must not be called again after it failed */
        unsigned stall_every;         /* test-pgzip's slow consumer: yield or sleep on 1 call in this many */
        uint64_t stall_rng;
} Sink;

/* Appends, or fails as the sink was told to. For output callbacks, directly or after a test's own
 * stalls. */
static inline int sink_append(Sink *s, const void *data, size_t size)
{
        if (s->failed)
                s->calls_after_failure++;
        if (s->fail_after && s->size + size > s->fail_after) {
                s->failed = true;
                return s->fail_code;
        }
        if (s->size + size > s->cap) {
                size_t cap = s->cap ? s->cap : 64 * 1024;
                while (cap < s->size + size)
                        cap *= 2;
                s->data = realloc(s->data, cap);
                ASSERT_TRUE(s->data);
                s->cap = cap;
        }
        memcpy(s->data + s->size, data, size);
        s->size += size;
        return 0;
}

static inline int sink_write(void *userdata, const void *data, size_t size)
{
        return sink_append(userdata, data, size);
}

/* Half text-like (compressible, repeats at long distances), half xorshift noise, in 64 KiB runs. */
static inline uint8_t *make_mix(size_t n)
{
        static const char words[] = "layer diff tar whiteout opaque registry manifest config blob digest ";
        uint8_t *p = malloc(n ? n : 1);
        uint64_t x = 0x9e3779b97f4a7c15ull;
        ASSERT_TRUE(p);
        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = (i >> 16) & 1 ? (uint8_t)x
                                     : (uint8_t)words[(i * 7 + (i >> 12)) % (sizeof(words) - 1)];
        }
        return p;
}

/* "sha256:<hex>" with a one-shot EVP_Digest(), not the streaming contexts the compressors use. */
static inline void sha256_string(const void *data, size_t n, char out[NB_DIGEST_STR_MAX])
{
        static const char hex[] = "0123456789abcdef";
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned len = 0;
        ASSERT_TRUE(EVP_Digest(data, n, md, &len, EVP_sha256(), NULL));
        memcpy(out, "sha256:", 7);
        for (unsigned i = 0; i < len; i++) {
                out[7 + 2 * i] = hex[md[i] >> 4];
                out[8 + 2 * i] = hex[md[i] & 15];
        }
        out[7 + 2 * len] = 0;
}

/* The result a compressor gave for input data of n bytes and the output the sink holds: sizes, and both
 * digests against the one-shot SHA-256. */
static inline void check_result(const SnapCompressResult *res, const void *data, size_t n, const Sink *sink)
{
        char want[NB_DIGEST_STR_MAX];
        ASSERT_EQ(res->size_in, n);
        ASSERT_EQ(res->size_out, sink->size);
        sha256_string(data, n, want);
        ASSERT_STREQ(res->diff_id, want);
        sha256_string(sink->data, sink->size, want);
        ASSERT_STREQ(res->digest, want);
}
