/* agent/api.c: the one table from conditions (errnos of the manager and of the API) to HTTP status and
 * error code, and the error bodies built from it. */
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

/* Every condition the daemon answers, with the status and code it answers (docs/AGENT.md, and the
 * integration tests tests/integration/daemon-*.sh): ModelArts' codes where ModelArts has one, the project's
 * own NBSNAP.<NAME> for the rest. */
static void test_conditions(void)
{
        expect(EINVAL, 400, "ModelArts.0104");
        expect(ENXIO, 400, "ModelArts.6309");
        expect(ENOENT, 404, "ModelArts.6404");
        expect(EACCES, 401, "NBSNAP.UNAUTHORIZED");
        expect(EPERM, 403, "NBSNAP.FORBIDDEN");
        expect(EBADRQC, 404, "NBSNAP.NOT_FOUND");
        expect(EOPNOTSUPP, 405, "NBSNAP.METHOD_NOT_ALLOWED");
        expect(EBUSY, 409, "NBSNAP.BUSY");
        expect(E2BIG, 413, "NBSNAP.BODY_TOO_LARGE");
        expect(EAGAIN, 429, "NBSNAP.TOO_MANY_REQUESTS");
        expect(EREMOTEIO, 502, "NBSNAP.REGISTRY_FAILED");
        expect(ESHUTDOWN, 503, "NBSNAP.STOPPING");
        expect(ENOSPC, 507, "NBSNAP.STATE_DIR_FULL");
        expect(EDQUOT, 507, "NBSNAP.STATE_DIR_FULL");
        /* everything else is an internal failure */
        expect(ENOMEM, 500, "NBSNAP.INTERNAL");
        expect(EIO, 500, "NBSNAP.INTERNAL");
        expect(EROFS, 500, "NBSNAP.INTERNAL");
        expect(0, 500, "NBSNAP.INTERNAL");
}

/* A ModelArts code is one ModelArts has (an invented ModelArts.NNNN means something else to clients that
 * switch on it); the project's own are NBSNAP.<UPPER_CASE>. */
static bool code_known(const char *code)
{
        static const char *const modelarts[] = {"ModelArts.0104", "ModelArts.6309", "ModelArts.6404"};
        for (size_t i = 0; i < ELEMENTSOF(modelarts); i++)
                if (strcmp(code, modelarts[i]) == 0)
                        return true;
        return strncmp(code, "NBSNAP.", 7) == 0 && code[7] &&
               strspn(code + 7, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") == strlen(code + 7);
}

/* Each code has one status; each errno is there once; the catch-all is last. */
static void test_table_unique(void)
{
        size_t n = 0;
        const NbApiError *t = nb_api_error_table(&n);
        ASSERT_TRUE(n > 1);
        ASSERT_EQ(t[n - 1].errno_, 0);
        ASSERT_EQ(t[n - 1].status, 500);
        for (size_t i = 0; i < n; i++) {
                ASSERT_TRUE(code_known(t[i].code));
                ASSERT_TRUE(t[i].status >= 400 && t[i].status < 600);
                ASSERT_TRUE(t[i].label && t[i].label[0]);
                for (size_t j = i + 1; j < n; j++) {
                        ASSERT_TRUE(t[i].errno_ != t[j].errno_);
                        if (strcmp(t[i].code, t[j].code) == 0)
                                ASSERT_EQ(t[i].status, t[j].status);
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
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "error_code")), "NBSNAP.BUSY");
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
