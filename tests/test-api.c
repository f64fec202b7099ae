/* agent/api.c: the one table from conditions (errnos of the manager and of the API) to HTTP status and
 * ModelArts error code, and the error bodies built from it. */
#include <errno.h>

#include <cjson/cJSON.h>

#include "agent/api.h"
#include "tests.h"

static void expect(int err, unsigned status, const char *code)
{
        const NbApiError *row = nb_api_error(-err);
        ASSERT_EQ(row->status, status);
        ASSERT_STREQ(row->code, code);
        ASSERT_TRUE(nb_api_error(err) == row); /* the sign does not matter */
}

/* Every condition the daemon answers today, with the status and code it answers (docs/AGENT.md, and the
 * integration tests tests/integration/daemon-*.sh). */
static void test_conditions(void)
{
        expect(EINVAL, 400, "ModelArts.6101");
        expect(EACCES, 401, "ModelArts.6201");
        expect(EPERM, 403, "ModelArts.6203");
        expect(ENOENT, 404, "ModelArts.6404");
        expect(EOPNOTSUPP, 405, "ModelArts.6405");
        expect(EBUSY, 409, "ModelArts.6409");
        expect(E2BIG, 413, "ModelArts.6413");
        expect(EREMOTEIO, 502, "ModelArts.6502");
        expect(ESHUTDOWN, 503, "ModelArts.6503");
        expect(EAGAIN, 503, "ModelArts.6503");
        expect(ENOSPC, 507, "ModelArts.6507");
        expect(EDQUOT, 507, "ModelArts.6507");
        /* everything else is an internal failure */
        expect(ENOMEM, 500, "ModelArts.6500");
        expect(EIO, 500, "ModelArts.6500");
        expect(EROFS, 500, "ModelArts.6500");
        expect(0, 500, "ModelArts.6500");
}

/* One code per status and one status per code; each errno once; the catch-all last. */
static void test_table_unique(void)
{
        size_t n = 0;
        const NbApiError *t = nb_api_error_table(&n);
        ASSERT_TRUE(n > 1);
        ASSERT_EQ(t[n - 1].errno_, 0);
        ASSERT_EQ(t[n - 1].status, 500);
        for (size_t i = 0; i < n; i++) {
                ASSERT_TRUE(strncmp(t[i].code, "ModelArts.", 10) == 0);
                ASSERT_TRUE(t[i].status >= 400 && t[i].status < 600);
                ASSERT_TRUE(t[i].label && t[i].label[0]);
                for (size_t j = i + 1; j < n; j++) {
                        ASSERT_TRUE(t[i].errno_ != t[j].errno_);
                        ASSERT_EQ(t[i].status == t[j].status, strcmp(t[i].code, t[j].code) == 0);
                }
        }
}

static void test_reply_body(void)
{
        NbReply r = {0};
        nb_reply_error(&r, -EBUSY, "image %s is still being saved", "x");
        ASSERT_EQ(r.status, 409);
        ASSERT_STREQ(r.content_type, "application/json");
        cJSON *j = cJSON_Parse(r.body);
        ASSERT_TRUE(j);
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "error_code")),
                     "ModelArts.6409");
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "error_msg")),
                     "image x is still being saved");
        cJSON_Delete(j);
        nb_reply_done(&r);
        ASSERT_TRUE(r.body == NULL);
}

int main(void)
{
        test_conditions();
        test_table_unique();
        test_reply_body();
        return 0;
}
