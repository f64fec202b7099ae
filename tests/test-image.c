/* test-image.c: the image record's one owner (agent/image.c): nb_image_new() fills what the CLI and the
 * daemon both need, nb_image_copy() is deep, nb_image_free() takes NULL, and the record JSON reads back to
 * the same image. */
#include <unistd.h>

#include "agent/image.h"
#include "tests.h"

static void check_same(const NbImage *a, const NbImage *b)
{
        ASSERT_STREQ(a->id, b->id);
        ASSERT_STREQ(a->name, b->name);
        ASSERT_STREQ(a->namespace, b->namespace);
        ASSERT_STREQ(a->tag, b->tag);
        ASSERT_STREQ(a->description, b->description);
        ASSERT_STREQ(a->workspace_id, b->workspace_id);
        ASSERT_STREQ(a->service_type, b->service_type);
        ASSERT_EQ(a->status, b->status);
        ASSERT_EQ(a->create_at, b->create_at);
        ASSERT_EQ(a->update_at, b->update_at);
        ASSERT_EQ(a->size_kb, b->size_kb);
        for (size_t i = 0; a->dev_services[i] || b->dev_services[i]; i++)
                ASSERT_STREQ(a->dev_services[i], b->dev_services[i]);
        for (size_t i = 0; a->resource_categories[i] || b->resource_categories[i]; i++)
                ASSERT_STREQ(a->resource_categories[i], b->resource_categories[i]);
}

static void test_new(void)
{
        const NbImageNames names = {"ns1", "img", "v1", NULL, NULL};
        _cleanup_nb_image_ NbImage *img = NULL, *other = NULL;
        ASSERT_OK(nb_image_new(&names, 1700000000123, &img));
        ASSERT_TRUE(nb_image_id_valid(img->id));
        ASSERT_STREQ(img->namespace, "ns1");
        ASSERT_STREQ(img->name, "img");
        ASSERT_STREQ(img->tag, "v1");
        ASSERT_STREQ(img->description, "");
        ASSERT_STREQ(img->workspace_id, "0");
        ASSERT_STREQ(img->service_type, "UNKNOWN");
        ASSERT_EQ(img->status, NB_STATUS_INIT);
        ASSERT_EQ(img->create_at, 1700000000123);
        ASSERT_EQ(img->update_at, 1700000000123);
        ASSERT_STREQ(img->dev_services[0], "NOTEBOOK");
        ASSERT_STREQ(img->dev_services[1], "SSH");
        ASSERT_TRUE(img->dev_services[2] == NULL);
        ASSERT_STREQ(img->resource_categories[0], "CPU");
        bool gpu = access("/dev/nvidiactl", F_OK) == 0;
        ASSERT_TRUE(gpu ? img->resource_categories[1] && strcmp(img->resource_categories[1], "GPU") == 0
                        : img->resource_categories[1] == NULL);
        ASSERT_TRUE(img->swr_path == NULL && img->repository == NULL && img->manifest_digest == NULL);
        /* each image its own id */
        ASSERT_OK(nb_image_new(&names, 1, &other));
        ASSERT_TRUE(strcmp(img->id, other->id) != 0);
        ASSERT_TRUE(nb_image_free(NULL) == NULL);
}

static void test_copy_and_json(void)
{
        const NbImageNames names = {"ns1", "img", "v1", "my \"env\" ü", "ws-1"};
        _cleanup_nb_image_ NbImage *img = NULL;
        ASSERT_OK(nb_image_new(&names, 1700000000123, &img));
        ASSERT_OK(nb_image_set(&img->swr_path, "127.0.0.1:5000/ns1/img:v1"));
        ASSERT_OK(nb_image_set(&img->repository, "ns1/img"));
        ASSERT_OK(nb_image_set(&img->manifest_digest,
                               "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"));
        ASSERT_OK(nb_image_set(&img->arch, "X86_64"));
        ASSERT_OK(nb_image_set_status(img, NB_STATUS_ACTIVE, "saved as %s", img->swr_path));
        img->size_kb = 12345;
        char cache[] = "/home/ma-user/.cache", data[] = "/data/set";
        char *const excl[] = {cache, data};
        ASSERT_OK(nb_image_set_exclude_paths(img, excl, 2));

        NbImage copy = {0};
        ASSERT_OK(nb_image_copy(img, &copy));
        check_same(img, &copy);
        ASSERT_TRUE(copy.name != img->name && copy.dev_services != img->dev_services);
        ASSERT_STREQ(copy.manifest_digest, img->manifest_digest);
        ASSERT_TRUE(copy.exclude_paths != img->exclude_paths);
        ASSERT_STREQ(copy.exclude_paths[1], "/data/set");
        nb_image_done(&copy);

        cJSON *j = nb_image_record_json(img);
        ASSERT_TRUE(j);
        char *text = cJSON_Print(j);
        cJSON_Delete(j);
        j = cJSON_Parse(text);
        free(text);
        NbImage back = {0};
        NbError e = {0};
        ASSERT_OK(nb_image_from_json(j, &back, &e));
        cJSON_Delete(j);
        check_same(img, &back);
        ASSERT_STREQ(back.swr_path, img->swr_path);
        ASSERT_STREQ(back.repository, img->repository);
        ASSERT_STREQ(back.manifest_digest, img->manifest_digest);
        ASSERT_STREQ(back.arch, "X86_64");
        ASSERT_STREQ(back.status_message, img->status_message);
        ASSERT_STREQ(back.exclude_paths[0], "/home/ma-user/.cache");
        ASSERT_STREQ(back.exclude_paths[1], "/data/set");
        ASSERT_TRUE(back.exclude_paths[2] == NULL);
        nb_image_done(&back);

        /* the API object has no record fields, and no SDK fields the request did not give */
        j = nb_image_to_json(img);
        ASSERT_TRUE(cJSON_GetObjectItem(j, "manifest_digest") == NULL);
        ASSERT_TRUE(cJSON_GetObjectItem(j, "swr_instance_id") == NULL);
        ASSERT_TRUE(cJSON_GetObjectItem(j, "swr_instance_domain") == NULL);
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(j, "status")), "ACTIVE");
        cJSON_Delete(j);

        /* the API object shows exclude_paths, always a list */
        j = nb_image_to_json(img);
        ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(j, "exclude_paths")), 2);
        cJSON_Delete(j);
        ASSERT_OK(nb_image_set_exclude_paths(img, NULL, 0));
        j = nb_image_to_json(img);
        ASSERT_TRUE(cJSON_IsArray(cJSON_GetObjectItem(j, "exclude_paths")));
        ASSERT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(j, "exclude_paths")), 0);
        cJSON_Delete(j);

        /* a record whose exclude_paths break the request's rules is refused */
        j = cJSON_Parse("{\"id\":\"0f8e4a2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b\",\"name\":\"a\",\"namespace\":"
                        "\"b\",\"tag\":\"c\",\"status\":\"INIT\",\"exclude_paths\":[\"rel\"]}");
        ASSERT_EQ(nb_image_from_json(j, &back, &e), -EBADMSG);
        cJSON_Delete(j);

        /* a record without a valid id is refused with a message */
        j = cJSON_Parse("{\"id\":\"not-a-uuid\",\"name\":\"a\",\"namespace\":\"b\",\"tag\":\"c\",\"status\":"
                        "\"INIT\"}");
        ASSERT_EQ(nb_image_from_json(j, &back, &e), -EBADMSG);
        ASSERT_TRUE(strstr(e.msg, "valid id") != NULL);
        cJSON_Delete(j);
}

/* A running save's progress: in the API object while INIT or CREATING, never in the record. */
static void test_progress(void)
{
        const NbImageNames names = {"ns1", "img", "v1", NULL, NULL};
        _cleanup_nb_image_ NbImage *img = NULL;
        ASSERT_OK(nb_image_new(&names, 1, &img));
        cJSON *j = nb_image_to_json(img);
        ASSERT_TRUE(cJSON_GetObjectItem(j, "progress") == NULL); /* none posted yet */
        cJSON_Delete(j);

        ASSERT_OK(nb_image_set_status(img, NB_STATUS_CREATING, "packing"));
        img->progress = (NbImageProgress){.set = true,
                                          .percent = 42,
                                          .bytes_done = 1000,
                                          .bytes_total = 3000,
                                          .bytes_per_second = 250.7,
                                          .eta_seconds = 8};
        j = nb_image_to_json(img);
        const cJSON *p = cJSON_GetObjectItem(j, "progress");
        ASSERT_TRUE(cJSON_IsObject(p));
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(p, "percent")), 42);
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(p, "bytes_done")), 1000);
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(p, "bytes_total")), 3000);
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(p, "bytes_per_second")), 250); /* whole bytes */
        ASSERT_EQ(cJSON_GetNumberValue(cJSON_GetObjectItem(p, "eta_seconds")), 8);
        cJSON_Delete(j);

        /* not known yet: null */
        img->progress.bytes_per_second = 0, img->progress.eta_seconds = -1;
        j = nb_image_to_json(img);
        p = cJSON_GetObjectItem(j, "progress");
        ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(p, "bytes_per_second")));
        ASSERT_TRUE(cJSON_IsNull(cJSON_GetObjectItem(p, "eta_seconds")));
        cJSON_Delete(j);

        /* never recorded */
        j = nb_image_record_json(img);
        ASSERT_TRUE(cJSON_GetObjectItem(j, "progress") == NULL);
        cJSON_Delete(j);

        /* gone once the save ended */
        ASSERT_OK(nb_image_set_status(img, NB_STATUS_ACTIVE, "saved"));
        j = nb_image_to_json(img);
        ASSERT_TRUE(cJSON_GetObjectItem(j, "progress") == NULL);
        cJSON_Delete(j);
}

/* The SDKs' SWR instance fields: on the image, in its API object, and read back from its record. */
static void test_swr_instance(void)
{
        const NbImageNames names = {.namespace = "ns1",
                                    .name = "img",
                                    .tag = "v1",
                                    .swr_instance_id = "inst-1",
                                    .swr_instance_domain = "swr-ee.example.com"};
        _cleanup_nb_image_ NbImage *img = NULL;
        ASSERT_OK(nb_image_new(&names, 1, &img));
        ASSERT_STREQ(img->swr_instance_id, "inst-1");
        ASSERT_STREQ(img->swr_instance_domain, "swr-ee.example.com");
        NbImage copy = {0};
        ASSERT_OK(nb_image_copy(img, &copy));
        ASSERT_STREQ(copy.swr_instance_id, "inst-1");
        nb_image_done(&copy);
        cJSON *j = nb_image_to_json(img);
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(j, "swr_instance_id")), "inst-1");
        ASSERT_STREQ(cJSON_GetStringValue(cJSON_GetObjectItem(j, "swr_instance_domain")),
                     "swr-ee.example.com");
        cJSON_Delete(j);
        j = nb_image_record_json(img);
        NbImage back = {0};
        NbError e = {0};
        ASSERT_OK(nb_image_from_json(j, &back, &e));
        cJSON_Delete(j);
        ASSERT_STREQ(back.swr_instance_id, "inst-1");
        ASSERT_STREQ(back.swr_instance_domain, "swr-ee.example.com");
        nb_image_done(&back);
}

int main(void)
{
        test_new();
        test_copy_and_json();
        test_progress();
        test_swr_instance();
        printf("test-image: all passed\n");
        return 0;
}
