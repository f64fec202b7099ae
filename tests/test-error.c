/* Unit tests of common/error: one error type, set, wrap, oom, clear. */
#include <errno.h>
#include <string.h>

#include "common/error.h"
#include "tests.h"

static void test_set(void)
{
        NbError e = {0};
        ASSERT_EQ(nb_error_set(&e, EACCES, "cannot open %s", "/x"), -EACCES); /* positive made negative */
        ASSERT_EQ(e.code, -EACCES);
        ASSERT_STREQ(e.msg, "cannot open /x");
        ASSERT_EQ(nb_error_set(&e, 0, "no code"), -EIO);
        ASSERT_EQ(nb_error_set(NULL, -ENOENT, "nowhere to write"), -ENOENT);
        ASSERT_EQ(nb_error_set_http(&e, -EACCES, 403, "denied"), -EACCES);
        ASSERT_EQ(e.http_status, 403);
        ASSERT_EQ(nb_error_set(&e, -EIO, "a new error"), -EIO);
        ASSERT_EQ(e.http_status, 0); /* a new error does not keep an older one's status */
        ASSERT_EQ(nb_error_oom(&e), -ENOMEM);
        ASSERT_STREQ(e.msg, "out of memory");
        ASSERT_TRUE(nb_error_isset(&e));
        nb_error_clear(&e);
        ASSERT_TRUE(!nb_error_isset(&e));
        ASSERT_STREQ(e.msg, "");
}

static void test_wrap(void)
{
        NbError e = {0};
        nb_error_set_http(&e, -EACCES, 401, "registry said DENIED");
        ASSERT_EQ(nb_error_wrap(&e, 0, "cannot push the manifest"), -EACCES); /* 0 keeps the code */
        ASSERT_STREQ(e.msg, "cannot push the manifest: registry said DENIED");
        ASSERT_EQ(e.http_status, 401);
        ASSERT_EQ(nb_error_wrap(&e, -EIO, "cannot save %d", 1), -EIO);
        ASSERT_STREQ(e.msg, "cannot save 1: cannot push the manifest: registry said DENIED");

        /* nothing held yet: the context and the errno's text */
        NbError f = {0};
        ASSERT_EQ(nb_error_wrap(&f, -ENOENT, "cannot read x"), -ENOENT);
        ASSERT_STREQ(f.msg, "cannot read x: No such file or directory");
        ASSERT_EQ(nb_error_wrap(NULL, -ENOENT, "ignored"), -ENOENT);

        /* a message at the limit is cut, never overrun */
        char long_msg[NB_ERROR_MSG_MAX * 2];
        memset(long_msg, 'a', sizeof(long_msg) - 1);
        long_msg[sizeof(long_msg) - 1] = 0;
        nb_error_set(&e, -EIO, "%s", long_msg);
        ASSERT_EQ(strlen(e.msg), NB_ERROR_MSG_MAX - 1);
        nb_error_wrap(&e, 0, "%s", long_msg);
        ASSERT_EQ(strlen(e.msg), NB_ERROR_MSG_MAX - 1);
        nb_error_set(&e, -EIO, "inner");
        nb_error_wrap(&e, 0, "%s", long_msg);
        ASSERT_EQ(strlen(e.msg), NB_ERROR_MSG_MAX - 1);
}

int main(void)
{
        test_set();
        test_wrap();
        printf("test-error: ok\n");
        return 0;
}
