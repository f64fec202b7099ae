/* tests.h: assertions for the unit tests. They print the expression and both values, then abort. */
#pragma once

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_SKIP 77

#define ASSERT_TRUE(expr)                                                                                   \
        do {                                                                                                \
                if (!(expr)) {                                                                              \
                        fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #expr);        \
                        abort();                                                                            \
                }                                                                                           \
        } while (0)

#define ASSERT_INT(a, op, b)                                                                                \
        do {                                                                                                \
                long long _a = (long long)(a), _b = (long long)(b);                                         \
                if (!(_a op _b)) {                                                                          \
                        fprintf(stderr, "%s:%d: assertion failed: %s %s %s (%lld %s %lld)\n", __FILE__,     \
                                __LINE__, #a, #op, #b, _a, #op, _b);                                        \
                        abort();                                                                            \
                }                                                                                           \
        } while (0)
#define ASSERT_EQ(a, b) ASSERT_INT(a, ==, b)
#define ASSERT_OK(expr) ASSERT_INT(expr, >=, 0)

#define ASSERT_STREQ(a, b)                                                                                  \
        do {                                                                                                \
                const char *_a = (a), *_b = (b);                                                            \
                if (!_a || !_b || strcmp(_a, _b) != 0) {                                                    \
                        fprintf(stderr, "%s:%d: assertion failed: %s == %s (\"%s\" vs \"%s\")\n", __FILE__, \
                                __LINE__, #a, #b, _a ? _a : "(null)", _b ? _b : "(null)");                  \
                        abort();                                                                            \
                }                                                                                           \
        } while (0)

/* A growing in-memory buffer, and a write callback that appends to it (a layer's, snap_layer_new()). */
typedef struct TestBuf {
        uint8_t *data;
        size_t size, allocated;
} TestBuf;

static inline int test_buf_write(void *userdata, const void *data, size_t size)
{
        TestBuf *b = userdata;
        if (b->size + size > b->allocated) {
                b->allocated = (b->size + size) * 2;
                b->data = realloc(b->data, b->allocated);
                ASSERT_TRUE(b->data);
        }
        memcpy(b->data + b->size, data, size);
        b->size += size;
        return 0;
}
