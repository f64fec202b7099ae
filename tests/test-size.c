/* Unit tests of common/size: the size parser of --max-image-size, --max-layer-size and their config keys,
 * and the formatter of the messages. */
#include <errno.h>

#include "common/macro.h"
#include "common/size.h"
#include "tests.h"

static void test_parse_good(void)
{
        static const struct {
                const char *s;
                uint64_t v;
        } good[] = {
                {"0", 0},
                {"1", 1},
                {"1048576", 1048576},
                {"1K", 1024},
                {"1k", 1024},
                {"3M", 3ull << 20},
                {"10G", 10ull << 30},
                {"10g", 10ull << 30},
                {"2T", 2ull << 40},
                {"0G", 0},
                {"007M", 7ull << 20},
                {"1048576T", 1ull << 60}, /* exactly NB_SIZE_MAX */
        };
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                uint64_t v = 12345;
                ASSERT_EQ(nb_size_parse(good[i].s, &v), 0);
                ASSERT_EQ(v, good[i].v);
        }
}

static void test_parse_bad(void)
{
        static const char *const invalid[] = {
                "",  "5Q",  "-1",  "-1G",  "+1",  " 1",  "1 ",  "1.5G",
                "G", "1GB", "1KK", "0x10", "1e6", "ten", "1\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(invalid); i++) {
                uint64_t v = 777;
                ASSERT_EQ(nb_size_parse(invalid[i], &v), -EINVAL);
                ASSERT_EQ(v, 777); /* untouched on failure */
        }
        ASSERT_EQ(nb_size_parse(NULL, &(uint64_t){0}), -EINVAL);
        static const char *const range[] = {
                "1048577T",
                "1152921504606846977",  /* NB_SIZE_MAX + 1 */
                "99999999999999999999", /* over UINT64_MAX */
                "999999999999999999999999999999",
        };
        for (size_t i = 0; i < ELEMENTSOF(range); i++) {
                uint64_t v = 777;
                ASSERT_EQ(nb_size_parse(range[i], &v), -ERANGE);
                ASSERT_EQ(v, 777);
        }
}

static void test_format(void)
{
        char buf[NB_SIZE_STR_MAX];
        ASSERT_STREQ(nb_size_format(0, buf), "0 B");
        ASSERT_STREQ(nb_size_format(1023, buf), "1023 B");
        ASSERT_STREQ(nb_size_format(1024, buf), "1.0 KiB");
        ASSERT_STREQ(nb_size_format(1536, buf), "1.5 KiB");
        ASSERT_STREQ(nb_size_format(10ull << 30, buf), "10.0 GiB");
        ASSERT_STREQ(nb_size_format(NB_SIZE_MAX, buf), "1.0 EiB");
        ASSERT_STREQ(nb_size_format(UINT64_MAX, buf), "16.0 EiB");
}

int main(void)
{
        test_parse_good();
        test_parse_bad();
        test_format();
        return 0;
}
