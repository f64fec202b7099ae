/* agent/request.c: the create-image body, strictly, and the defaults. */
#include "agent/image.h"
#include "agent/request.h"
#include "tests.h"

static int parse(const char *body, NbCreateRequest *r, NbError *e)
{
        *r = (NbCreateRequest){0};
        return nb_create_request_parse(body, strlen(body), r, e);
}

static void test_seed_example(void)
{
        NbCreateRequest r;
        NbError e = {0};
        ASSERT_OK(parse(
                "{ \"name\" : \"pytorch1_4\", \"namespace\" : \"atelier-auto\", \"tag\" : \"20221223\","
                " \"description\" : \"save from notebook-x21d\", \"workspace_id\" : \"0\" }",
                &r, &e));
        ASSERT_STREQ(r.name, "pytorch1_4");
        ASSERT_STREQ(r.namespace, "atelier-auto");
        ASSERT_STREQ(r.tag, "20221223");
        ASSERT_STREQ(r.description, "save from notebook-x21d");
        ASSERT_STREQ(r.workspace_id, "0");
        nb_create_request_done(&r);
}

static void test_rejects(void)
{
        static const char *const bad[] = {
                "{",
                "[]",
                "\"x\"",
                "{} {}",
                "{\"name\": 1}",
                "{\"name\": null}",
                "{\"name\": [\"a\"]}",
                "{\"name\": \"a\", \"name\": \"b\"}",
                "{\"flavor\": \"x\"}",
                "{\"name\": \"Upper\"}",
                "{\"name\": \"\"}",
                "{\"name\": \"a/b\"}",
                "{\"name\": \"-a\"}",
                "{\"tag\": \"a b\"}",
                "{\"tag\": \".a\"}",
                "{\"namespace\": \"\"}",
                "{\"workspace_id\": \"\"}",
                "{\"description\": \"\\u00ff\\u00fe\"}", /* valid JSON, valid UTF-8 once decoded: accepted
                                                            below */
        };
        for (size_t i = 0; i + 1 < ELEMENTSOF(bad); i++) {
                NbCreateRequest r;
                NbError e = {0};
                int q = parse(bad[i], &r, &e);
                if (q != -EINVAL)
                        fprintf(stderr, "accepted: %s\n", bad[i]);
                ASSERT_EQ(q, -EINVAL);
                ASSERT_TRUE(e.msg[0] != '\0');
        }
        char tag[80], desc[600], json[700];
        memset(tag, 't', 65);
        tag[65] = '\0';
        snprintf(json, sizeof(json), "{\"tag\": \"%s\"}", tag);
        NbCreateRequest r;
        NbError e = {0};
        ASSERT_EQ(parse(json, &r, &e), -EINVAL);
        tag[64] = '\0';
        snprintf(json, sizeof(json), "{\"tag\": \"%s\"}", tag);
        ASSERT_OK(parse(json, &r, &e));
        nb_create_request_done(&r);
        memset(desc, 'd', 513);
        desc[513] = '\0';
        snprintf(json, sizeof(json), "{\"description\": \"%s\"}", desc);
        ASSERT_EQ(parse(json, &r, &e), -EINVAL);
        /* 512 characters of 2 bytes each: characters count, not bytes */
        char utf[1100];
        size_t k = (size_t)snprintf(utf, sizeof(utf), "{\"description\": \"");
        for (int i = 0; i < 512; i++) {
                utf[k++] = (char)0xc3;
                utf[k++] = (char)0xa9;
        }
        snprintf(utf + k, sizeof(utf) - k, "\"}");
        ASSERT_OK(parse(utf, &r, &e));
        nb_create_request_done(&r);
}

/* The SDKs' fields are taken (strings, by their rule, within their named limits); a typo of a field is not;
 * every refusal names the field and says the rule. */
static void test_sdk_fields(void)
{
        NbCreateRequest r;
        NbError e = {0};
        ASSERT_OK(parse("{\"swr_instance_id\": \"a1b2c3d4-e5f6-7890-abcd-ef0123456789\", "
                        "\"swr_instance_domain\": \"swr-ee.cn-north-4.example.com\"}",
                        &r, &e));
        ASSERT_STREQ(r.swr_instance_id, "a1b2c3d4-e5f6-7890-abcd-ef0123456789");
        ASSERT_STREQ(r.swr_instance_domain, "swr-ee.cn-north-4.example.com");
        nb_create_request_done(&r);

        static const struct {
                const char *body, *words[2];
        } bad[] = {
                {"{\"descripton\": \"x\"}", {"unknown field \"descripton\"", "description"}},
                {"{\"swr_instance_id\": 7}", {"\"swr_instance_id\"", "must be a string"}},
                {"{\"swr_instance_id\": \"\"}", {"\"swr_instance_id\"", "1 to 64"}},
                {"{\"swr_instance_id\": \"a b\"}", {"\"swr_instance_id\"", "letters, digits"}},
                {"{\"swr_instance_domain\": \"-x.com\"}", {"\"swr_instance_domain\"", "host name"}},
                {"{\"swr_instance_domain\": \"a/b\"}", {"\"swr_instance_domain\"", "host name"}},
                {"{\"swr_instance_domain\": null}", {"\"swr_instance_domain\"", "must be a string"}},
                {"{\"tag\": \"a b\"}", {"field \"tag\"", "1 to 64 characters"}},
                {"{\"name\": \"Upper\"}", {"field \"name\"", "lowercase"}},
                {"{\"namespace\": \"-x\"}", {"field \"namespace\"", "starting and ending"}},
                {"{\"workspace_id\": \"a b\"}", {"field \"workspace_id\"", "letters, digits"}},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                nb_error_clear(&e);
                ASSERT_EQ(parse(bad[i].body, &r, &e), -EINVAL);
                for (size_t w = 0; w < 2; w++)
                        if (!strstr(e.msg, bad[i].words[w])) {
                                fprintf(stderr, "%s: \"%s\" does not say \"%s\"\n", bad[i].body, e.msg,
                                        bad[i].words[w]);
                                ASSERT_TRUE(false);
                        }
        }
        /* the limits, by name */
        char v[NB_SWR_INSTANCE_DOMAIN_MAX + 2], json[NB_SWR_INSTANCE_DOMAIN_MAX + 64];
        memset(v, 'a', sizeof(v) - 1);
        v[NB_SWR_INSTANCE_ID_MAX] = '\0';
        snprintf(json, sizeof(json), "{\"swr_instance_id\": \"%s\"}", v);
        ASSERT_OK(parse(json, &r, &e));
        nb_create_request_done(&r);
        v[NB_SWR_INSTANCE_ID_MAX] = 'a';
        v[NB_SWR_INSTANCE_ID_MAX + 1] = '\0';
        snprintf(json, sizeof(json), "{\"swr_instance_id\": \"%s\"}", v);
        ASSERT_EQ(parse(json, &r, &e), -EINVAL);
        memset(v, 'a', sizeof(v) - 1);
        v[NB_SWR_INSTANCE_DOMAIN_MAX] = '\0';
        snprintf(json, sizeof(json), "{\"swr_instance_domain\": \"%s\"}", v);
        ASSERT_OK(parse(json, &r, &e));
        nb_create_request_done(&r);
        v[NB_SWR_INSTANCE_DOMAIN_MAX] = 'a';
        v[NB_SWR_INSTANCE_DOMAIN_MAX + 1] = '\0';
        snprintf(json, sizeof(json), "{\"swr_instance_domain\": \"%s\"}", v);
        ASSERT_EQ(parse(json, &r, &e), -EINVAL);
}

static void test_limits(void)
{
        size_t n = NB_REQUEST_BODY_MAX + 1;
        char *big = malloc(n);
        ASSERT_TRUE(big != NULL);
        memset(big, ' ', n);
        NbCreateRequest r = {0};
        NbError e = {0};
        ASSERT_EQ(nb_create_request_parse(big, n, &r, &e), -E2BIG);
        ASSERT_OK(nb_create_request_parse(big, n - 1, &r, &e)); /* whitespace only: an empty object */
        ASSERT_TRUE(r.name == NULL);
        free(big);
        ASSERT_EQ(nb_create_request_parse("{\"name\":\"a\0\"}", 13, &r, &e), -EINVAL);
}

static void test_defaults(void)
{
        NbCreateRequest r = {0};
        NbError e = {0};
        ASSERT_OK(nb_create_request_parse("", 0, &r, &e));
        ASSERT_EQ(nb_create_request_defaults(&r, NULL, "team/pytorch:1.4", 0, &e), -EINVAL);
        ASSERT_OK(nb_create_request_defaults(&r, "atelier-auto", "swr.example.com:5000/team/sub/pytorch:1.4",
                                             1671786468811, &e));
        ASSERT_STREQ(r.namespace, "atelier-auto");
        ASSERT_STREQ(r.name, "pytorch");
        ASSERT_STREQ(r.tag, "20221223090748"); /* 1671786468 s = 2022-12-23 09:07:48 UTC */
        ASSERT_STREQ(r.workspace_id, "0");
        ASSERT_STREQ(r.description, "");
        nb_create_request_done(&r);
        ASSERT_OK(parse("{\"name\":\"mine\",\"tag\":\"v1\"}", &r, &e));
        ASSERT_OK(nb_create_request_defaults(
                &r, "ns",
                "library/ubuntu@sha256:"
                "0000000000000000000000000000000000000000000000000000000000000000",
                0, &e));
        ASSERT_STREQ(r.name, "mine");
        ASSERT_STREQ(r.tag, "v1");
        nb_create_request_done(&r);
}

/* taken(): the tags in a NULL-terminated list, for namespace "ns" and name "pytorch" only. */
static bool tag_in_list(void *userdata, const char *namespace, const char *name, const char *tag)
{
        if (strcmp(namespace, "ns") != 0 || strcmp(name, "pytorch") != 0)
                return false;
        for (const char *const *t = userdata; *t; t++)
                if (strcmp(*t, tag) == 0)
                        return true;
        return false;
}

static void test_unique_tag(void)
{
        NbCreateRequest r = {0};
        NbError e = {0};
        const char *none[] = {NULL};
        const char *one[] = {"20221223090748", NULL};
        const char *two[] = {"20221223090748", "20221223090748-2", "other", NULL};

        /* a defaulted tag nobody has is kept; one taken gets -2, then -3 */
        ASSERT_OK(nb_create_request_parse("", 0, &r, &e));
        ASSERT_OK(nb_create_request_defaults(&r, "ns", "team/pytorch:1", 1671786468811, &e));
        ASSERT_TRUE(r.tag_defaulted);
        ASSERT_OK(nb_create_request_unique_tag(&r, tag_in_list, (void *)none, &e));
        ASSERT_STREQ(r.tag, "20221223090748");
        ASSERT_OK(nb_create_request_unique_tag(&r, tag_in_list, (void *)one, &e));
        ASSERT_STREQ(r.tag, "20221223090748-2");
        nb_create_request_done(&r);
        ASSERT_OK(nb_create_request_parse("", 0, &r, &e));
        ASSERT_OK(nb_create_request_defaults(&r, "ns", "team/pytorch:1", 1671786468811, &e));
        ASSERT_OK(nb_create_request_unique_tag(&r, tag_in_list, (void *)two, &e));
        ASSERT_STREQ(r.tag, "20221223090748-3");
        nb_create_request_done(&r);
        /* another name: not a clash */
        ASSERT_OK(parse("{\"name\":\"mine\"}", &r, &e));
        ASSERT_OK(nb_create_request_defaults(&r, "ns", "team/pytorch:1", 1671786468811, &e));
        ASSERT_OK(nb_create_request_unique_tag(&r, tag_in_list, (void *)one, &e));
        ASSERT_STREQ(r.tag, "20221223090748");
        nb_create_request_done(&r);
        /* a tag the caller chose is never changed, even when taken (a re-save to the same tag is wanted) */
        ASSERT_OK(parse("{\"tag\":\"20221223090748\"}", &r, &e));
        ASSERT_OK(nb_create_request_defaults(&r, "ns", "team/pytorch:1", 1671786468811, &e));
        ASSERT_TRUE(!r.tag_defaulted);
        ASSERT_OK(nb_create_request_unique_tag(&r, tag_in_list, (void *)one, &e));
        ASSERT_STREQ(r.tag, "20221223090748");
        nb_create_request_done(&r);
}

/* exclude_paths: an array of at most NB_EXCLUDE_PATHS_MAX absolute paths of at most NB_EXCLUDE_PATH_MAX
 * bytes; each bad value is refused with a message naming the entry and the rule. */
static void test_exclude_paths(void)
{
        NbCreateRequest r;
        NbError e = {0};
        ASSERT_OK(parse("{\"exclude_paths\": [\"/home/ma-user/.cache\", \"/data//x/\"]}", &r, &e));
        ASSERT_EQ(r.n_exclude_paths, 2u);
        ASSERT_STREQ(r.exclude_paths[0], "/home/ma-user/.cache");
        ASSERT_STREQ(r.exclude_paths[1], "/data//x/");
        nb_create_request_done(&r);
        ASSERT_OK(parse("{\"exclude_paths\": []}", &r, &e));
        ASSERT_EQ(r.n_exclude_paths, 0u);
        nb_create_request_done(&r);

        static const struct {
                const char *body, *msg;
        } bad[] = {
                {"{\"exclude_paths\": [\"a/b\"]}", "exclude_paths[0]: \"a/b\" is not an absolute path"},
                {"{\"exclude_paths\": [\"/a\", \"\"]}", "exclude_paths[1]: \"\" is not an absolute path"},
                {"{\"exclude_paths\": [\"/a/../b\"]}", "has a '..' component"},
                {"{\"exclude_paths\": [\"/..\"]}", "has a '..' component"},
                {"{\"exclude_paths\": [\"/a/./b\"]}", "has a '.' component"},
                {"{\"exclude_paths\": [\"/a/.\"]}", "has a '.' component"},
                {"{\"exclude_paths\": [\"/\"]}", "names the whole root"},
                {"{\"exclude_paths\": [\"//\"]}", "names the whole root"},
                {"{\"exclude_paths\": [\"/a\\tb\"]}", "contains a control character"},
                {"{\"exclude_paths\": [1]}", "exclude_paths[0] must be a string"},
                {"{\"exclude_paths\": [[\"/a\"]]}", "exclude_paths[0] must be a string"},
                {"{\"exclude_paths\": \"/a\"}", "\"exclude_paths\" must be an array"},
                {"{\"exclude_paths\": {}}", "\"exclude_paths\" must be an array"},
                {"{\"exclude_paths\": null}", "\"exclude_paths\" must be an array"},
                {"{\"exclude_paths\": [], \"exclude_paths\": []}", "\"exclude_paths\" is given twice"},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                ASSERT_EQ(parse(bad[i].body, &r, &e), -EINVAL);
                if (!strstr(e.msg, bad[i].msg))
                        fprintf(stderr, "%s: %s\n", bad[i].body, e.msg);
                ASSERT_TRUE(strstr(e.msg, bad[i].msg) != NULL);
        }

        /* the limits, at and over */
        char *json = malloc(NB_EXCLUDE_PATH_MAX + 64);
        ASSERT_TRUE(json);
        int k = snprintf(json, 64, "{\"exclude_paths\": [\"/");
        memset(json + k, 'p', NB_EXCLUDE_PATH_MAX - 1);
        memcpy(json + k + NB_EXCLUDE_PATH_MAX - 1, "\"]}", 4);
        ASSERT_OK(parse(json, &r, &e));
        ASSERT_EQ(strlen(r.exclude_paths[0]), (size_t)NB_EXCLUDE_PATH_MAX);
        nb_create_request_done(&r);
        json[k + NB_EXCLUDE_PATH_MAX - 1] = 'p';
        memcpy(json + k + NB_EXCLUDE_PATH_MAX, "\"]}", 4);
        ASSERT_EQ(parse(json, &r, &e), -EINVAL);
        ASSERT_TRUE(strstr(e.msg, "at most 4095") != NULL);
        free(json);

        char many[2048];
        size_t n = (size_t)snprintf(many, sizeof(many), "{\"exclude_paths\": [");
        for (int i = 0; i < NB_EXCLUDE_PATHS_MAX; i++)
                n += (size_t)snprintf(many + n, sizeof(many) - n, "%s\"/p%d\"", i ? "," : "", i);
        snprintf(many + n, sizeof(many) - n, "]}");
        ASSERT_OK(parse(many, &r, &e));
        ASSERT_EQ(r.n_exclude_paths, (size_t)NB_EXCLUDE_PATHS_MAX);
        nb_create_request_done(&r);
        snprintf(many + n, sizeof(many) - n, ",\"/one-more\"]}");
        ASSERT_EQ(parse(many, &r, &e), -EINVAL);
        ASSERT_TRUE(strstr(e.msg, "more than 64 paths") != NULL);
}

int main(void)
{
        test_seed_example();
        test_exclude_paths();
        test_rejects();
        test_sdk_fields();
        test_limits();
        test_defaults();
        test_unique_tag();
        return 0;
}
