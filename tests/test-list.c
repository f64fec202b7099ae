/* test-list.c: ListImage's query (agent/list.c): every parameter's rule and limits, refusals naming the
 * parameter, the selection and order, and the page arithmetic (current, pages, size, total). */
#include "agent/list.h"
#include "tests.h"

static void check_refused(const char *key, const char *value, const char *says)
{
        NbListQuery q;
        NbError e = {0};
        nb_list_query_init(&q);
        int r = nb_list_query_set(&q, key, value, &e);
        if (r != -EINVAL || !strstr(e.msg, says))
                fprintf(stderr, "%s=%s: %d \"%s\" (expected -EINVAL saying \"%s\")\n", key,
                        value ? value : "(none)", r, e.msg, says);
        ASSERT_EQ(r, -EINVAL);
        ASSERT_TRUE(strstr(e.msg, says) != NULL);
        nb_list_query_done(&q);
}

static void test_refused(void)
{
        check_refused("limit", "0", "\"limit\" must be a whole number from 1 to 1000");
        check_refused("limit", "1001", "\"limit\"");
        check_refused("limit", "-1", "\"limit\"");
        check_refused("limit", "abc", "\"limit\"");
        check_refused("limit", "", "\"limit\"");
        check_refused("limit", NULL, "\"limit\"");
        check_refused("limit", " 5", "\"limit\"");
        check_refused("limit", "5x", "\"limit\"");
        check_refused("limit", "99999999999", "\"limit\"");
        check_refused("offset", "-1", "\"offset\" must be a whole number from 0");
        check_refused("offset", "1000001", "\"offset\"");
        check_refused("offset", "+1", "\"offset\"");
        check_refused("sort_dir", "UP", "\"sort_dir\" must be ASC or DESC");
        check_refused("sort_dir", "asc", "\"sort_dir\"");
        check_refused("sort_key", "size", "\"sort_key\" must be one of create_at");
        check_refused("status", "FINISHED", "\"status\" must be one of INIT");
        check_refused("name", "Upper", "query parameter \"name\": must be 1 to 512");
        check_refused("name", "a/b", "\"name\"");
        check_refused("namespace", "-x", "query parameter \"namespace\"");
        check_refused("workspace_id", "a b", "query parameter \"workspace_id\"");
        check_refused("name_fuzzy_match", "yes", "\"name_fuzzy_match\" must be true or false");
        check_refused("type", "PUBLIC", "\"type\" must be DEDICATED or BUILD_IN");
        check_refused("service_type", "GAME", "\"service_type\" must be one of COMMON");
        check_refused("descripton", "x", "unknown query parameter \"descripton\"");
        check_refused("Limit", "5", "unknown query parameter \"Limit\"");

        /* a repeat */
        NbListQuery q;
        NbError e = {0};
        nb_list_query_init(&q);
        ASSERT_OK(nb_list_query_set(&q, "limit", "5", &e));
        ASSERT_EQ(nb_list_query_set(&q, "limit", "5", &e), -EINVAL);
        ASSERT_TRUE(strstr(e.msg, "\"limit\" is given twice") != NULL);
        nb_list_query_done(&q);
}

static void test_accepted(void)
{
        NbListQuery q;
        NbError e = {0};
        nb_list_query_init(&q);
        ASSERT_EQ(q.limit, NB_LIST_LIMIT_DEFAULT);
        ASSERT_EQ(q.offset, 0);
        ASSERT_TRUE(!q.ascending && q.name_fuzzy && q.status == _NB_STATUS_MAX);
        ASSERT_OK(nb_list_query_set(&q, "limit", "1", &e));
        ASSERT_OK(nb_list_query_set(&q, "offset", "1000000", &e));
        ASSERT_OK(nb_list_query_set(&q, "sort_dir", "ASC", &e));
        ASSERT_OK(nb_list_query_set(&q, "sort_key", "update_at", &e));
        ASSERT_OK(nb_list_query_set(&q, "name", "torch_", &e)); /* a part of a name */
        ASSERT_OK(nb_list_query_set(&q, "name_fuzzy_match", "FALSE", &e));
        ASSERT_OK(nb_list_query_set(&q, "namespace", "atelier-auto", &e));
        ASSERT_OK(nb_list_query_set(&q, "workspace_id", "0", &e));
        ASSERT_OK(nb_list_query_set(&q, "status", "ACTIVE", &e));
        ASSERT_OK(nb_list_query_set(&q, "type", "DEDICATED", &e));
        ASSERT_OK(nb_list_query_set(&q, "service_type", "UNKNOWN", &e));
        ASSERT_EQ(q.limit, 1);
        ASSERT_EQ(q.offset, 1000000);
        ASSERT_TRUE(q.ascending && !q.name_fuzzy && q.sort_key == NB_LIST_SORT_UPDATE_AT);
        ASSERT_STREQ(q.name, "torch_");
        nb_list_query_done(&q);
        nb_list_query_init(&q);
        ASSERT_OK(nb_list_query_set(&q, "limit", "1000", &e));
        ASSERT_EQ(q.limit, NB_LIST_LIMIT_MAX);
        nb_list_query_done(&q);
}

static void check_page(unsigned limit, unsigned offset, size_t total, size_t current, size_t pages,
                       size_t first, size_t count)
{
        NbListQuery q;
        nb_list_query_init(&q);
        q.limit = limit;
        q.offset = offset;
        NbListPage p;
        nb_list_page(&q, total, &p);
        ASSERT_EQ(p.current, current);
        ASSERT_EQ(p.pages, pages);
        ASSERT_EQ(p.size, limit);
        ASSERT_EQ(p.total, total);
        ASSERT_EQ(p.first, first);
        ASSERT_EQ(p.count, count);
}

static void test_page(void)
{
        /* limit, offset, total -> current, pages, first, count */
        check_page(200, 0, 0, 0, 0, 0, 0);
        check_page(200, 0, 3, 0, 1, 0, 3);
        check_page(1, 0, 3, 0, 3, 0, 1);
        check_page(1, 1, 3, 1, 3, 1, 1);
        check_page(1, 2, 3, 2, 3, 2, 1);
        check_page(1, 3, 3, 3, 3, 3, 0); /* past the end: an empty page */
        check_page(2, 0, 5, 0, 3, 0, 2);
        check_page(2, 4, 5, 2, 3, 4, 1);
        check_page(2, 3, 5, 1, 3, 3, 2); /* an offset inside a page: current is the page it falls in */
        check_page(1000, 1000000, 5, 1000, 1, 5, 0);
}

static NbImage *image(const char *id, const char *name, int64_t create_at, NbStatus status)
{
        NbImage *img = calloc(1, sizeof(*img));
        ASSERT_TRUE(img != NULL);
        snprintf(img->id, sizeof(img->id), "%s", id);
        ASSERT_OK(nb_image_set(&img->name, name));
        ASSERT_OK(nb_image_set(&img->namespace, "ns"));
        ASSERT_OK(nb_image_set(&img->workspace_id, "0"));
        ASSERT_OK(nb_image_set(&img->service_type, "UNKNOWN"));
        img->create_at = create_at;
        img->update_at = 100 - create_at;
        img->status = status;
        return img;
}

static void test_match_and_order(void)
{
        _cleanup_nb_image_ NbImage *a = image("a", "pytorch", 1, NB_STATUS_ACTIVE);
        _cleanup_nb_image_ NbImage *b = image("b", "torch", 2, NB_STATUS_CREATE_FAILED);
        NbListQuery q;
        NbError e = {0};
        nb_list_query_init(&q);
        ASSERT_TRUE(nb_list_query_match(&q, a) && nb_list_query_match(&q, b));
        ASSERT_TRUE(nb_list_query_compare(&q, b, a) < 0); /* newest first */
        ASSERT_OK(nb_list_query_set(&q, "sort_dir", "ASC", &e));
        ASSERT_TRUE(nb_list_query_compare(&q, a, b) < 0);
        ASSERT_OK(nb_list_query_set(&q, "sort_key", "update_at", &e));
        ASSERT_TRUE(nb_list_query_compare(&q, b, a) < 0);
        ASSERT_OK(nb_list_query_set(&q, "name", "torch", &e));
        ASSERT_TRUE(nb_list_query_match(&q, a) && nb_list_query_match(&q, b)); /* fuzzy: a part */
        ASSERT_OK(nb_list_query_set(&q, "name_fuzzy_match", "false", &e));
        ASSERT_TRUE(!nb_list_query_match(&q, a) && nb_list_query_match(&q, b));
        nb_list_query_done(&q);
        ASSERT_OK(nb_list_query_set(&q, "status", "ACTIVE", &e));
        ASSERT_TRUE(nb_list_query_match(&q, a) && !nb_list_query_match(&q, b));
        nb_list_query_done(&q);
        ASSERT_OK(nb_list_query_set(&q, "namespace", "other", &e));
        ASSERT_TRUE(!nb_list_query_match(&q, a));
        nb_list_query_done(&q);
        ASSERT_OK(nb_list_query_set(&q, "type", "BUILD_IN", &e));
        ASSERT_TRUE(!nb_list_query_match(&q, a));
        nb_list_query_done(&q);
        ASSERT_OK(nb_list_query_set(&q, "service_type", "TRAIN", &e));
        ASSERT_TRUE(!nb_list_query_match(&q, a));
        nb_list_query_done(&q);
        ASSERT_OK(nb_list_query_set(&q, "workspace_id", "ws-2", &e));
        ASSERT_TRUE(!nb_list_query_match(&q, a));
        nb_list_query_done(&q);
}

int main(void)
{
        test_refused();
        test_accepted();
        test_page();
        test_match_and_order();
        printf("test-list: all passed\n");
        return 0;
}
