/* tests.h: assertions for the unit tests. They print the expression and both values, then abort. */
#pragma once

#include <inttypes.h>
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
