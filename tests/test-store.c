/* agent/store.c: image records and the outbox, on disk. */
#include <fcntl.h>
#include <sys/stat.h>

#include "agent/store.h"
#include "common/uuid.h"
#include "tests.h"

static void make_image(NbImage *img, const char *name)
{
        *img = (NbImage){
                .status = NB_STATUS_CREATING, .create_at = 1671786468811, .update_at = 1671786468812};
        ASSERT_OK(nb_uuid(img->id));
        ASSERT_OK(nb_image_set(&img->name, name));
        ASSERT_OK(nb_image_set(&img->namespace, "atelier-auto"));
        ASSERT_OK(nb_image_set(&img->tag, "20221223"));
        ASSERT_OK(nb_image_set(&img->description, "d\xc3\xa9sc \"quoted\""));
        ASSERT_OK(nb_image_set(&img->status_message, "packing: 45%"));
        ASSERT_OK(nb_image_set(&img->manifest_digest, "sha256:abc"));
        ASSERT_OK(nb_image_set(&img->repository, "atelier-auto/x"));
        img->dev_services = calloc(3, sizeof(char *));
        img->dev_services[0] = strdup("NOTEBOOK");
        img->dev_services[1] = strdup("SSH");
        img->size_kb = 1234;
}

static void test_images(const char *dir)
{
        NbStore *s = NULL;
        NbError e = {0};
        ASSERT_OK(nb_store_open(dir, &s, &e));
        NbImage a, b;
        make_image(&a, "first");
        make_image(&b, "second");
        ASSERT_OK(nb_store_put_image(s, &a, &e));
        ASSERT_OK(nb_store_put_image(s, &b, &e));
        b.status = NB_STATUS_ACTIVE;
        ASSERT_OK(nb_store_put_image(s, &b, &e)); /* replaced */
        char junk[512];
        snprintf(junk, sizeof(junk), "%s/images/00000000-0000-4000-8000-000000000000.json", dir);
        int fd = open(junk, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(write(fd, "{\"id\":", 6), 6);
        close(fd);
        NbImage **v = NULL;
        size_t n = 0, bad = 0;
        ASSERT_OK(nb_store_load_images(s, &v, &n, &bad, &e));
        ASSERT_EQ(n, 2);
        ASSERT_EQ(bad, 1);
        for (size_t i = 0; i < n; i++) {
                const NbImage *want = strcmp(v[i]->id, a.id) == 0 ? &a : &b;
                ASSERT_STREQ(v[i]->name, want->name);
                ASSERT_STREQ(v[i]->description, want->description);
                ASSERT_STREQ(v[i]->manifest_digest, "sha256:abc");
                ASSERT_STREQ(v[i]->repository, "atelier-auto/x");
                ASSERT_STREQ(v[i]->dev_services[1], "SSH");
                ASSERT_EQ(v[i]->status, want->status);
                ASSERT_EQ(v[i]->create_at, 1671786468811);
                ASSERT_EQ(v[i]->size_kb, 1234);
                NbImage copy;
                ASSERT_OK(nb_image_copy(v[i], &copy));
                ASSERT_STREQ(copy.status_message, "packing: 45%");
                nb_image_done(&copy);
                nb_image_free(v[i]);
        }
        free(v);
        ASSERT_OK(nb_store_remove_image(s, a.id));
        ASSERT_OK(nb_store_load_images(s, &v, &n, &bad, &e));
        ASSERT_EQ(n, 1);
        nb_image_free(v[0]);
        free(v);
        nb_image_done(&a);
        nb_image_done(&b);
        nb_store_free(s);
}

static void test_outbox(const char *dir)
{
        NbStore *s = NULL;
        NbError e = {0};
        ASSERT_OK(nb_store_open(dir, &s, &e));
        uint64_t seq = 0, got = 0;
        char *json = NULL;
        ASSERT_EQ(nb_outbox_peek(s, &got, &json, &e), 0);
        ASSERT_OK(nb_outbox_push(s, "{\"n\":1}", &seq, &e));
        ASSERT_EQ(seq, 1);
        ASSERT_OK(nb_outbox_push(s, "{\"n\":2}", &seq, &e));
        ASSERT_OK(nb_outbox_push(s, "{\"n\":3}", &seq, &e));
        ASSERT_EQ(nb_outbox_count(s), 3);
        ASSERT_EQ(nb_outbox_peek(s, &got, &json, &e), 1);
        ASSERT_EQ(got, 1);
        ASSERT_STREQ(json, "{\"n\":1}");
        free(json);
        ASSERT_OK(nb_outbox_ack(s, got));
        nb_store_free(s);
        /* reopened: order and numbering go on */
        ASSERT_OK(nb_store_open(dir, &s, &e));
        ASSERT_OK(nb_outbox_push(s, "{\"n\":4}", &seq, &e));
        ASSERT_EQ(seq, 4);
        for (int want = 2; want <= 4; want++) {
                ASSERT_EQ(nb_outbox_peek(s, &got, &json, &e), 1);
                ASSERT_EQ(got, (uint64_t)want);
                char w[16];
                snprintf(w, sizeof(w), "{\"n\":%d}", want);
                ASSERT_STREQ(json, w);
                free(json);
                ASSERT_OK(nb_outbox_ack(s, got));
        }
        ASSERT_EQ(nb_outbox_peek(s, &got, &json, &e), 0);
        nb_store_free(s);
}

static void test_image_json(void)
{
        static const char *const bad[] = {
                "{}",
                "{\"id\":\"x\"}",
                "{\"id\":\"130c8f81-16d7-452f-b4f4-50a7ac27f985\"}",
                "{\"id\":\"130c8f81-16d7-452f-b4f4-50a7ac27f985\",\"name\":\"a\",\"namespace\":\"b\","
                "\"tag\":\"c\","
                "\"status\":\"WEIRD\"}",
                "{\"id\":\"130c8f81-16d7-452f-b4f4-50a7ac27f985\",\"name\":\"a\",\"namespace\":\"b\","
                "\"tag\":\"c\","
                "\"status\":\"ACTIVE\",\"create_at\":-1}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                cJSON *j = cJSON_Parse(bad[i]);
                NbImage img;
                NbError e = {0};
                ASSERT_TRUE(nb_image_from_json(j, &img, &e) < 0);
                cJSON_Delete(j);
        }
}

int main(void)
{
        char dir[] = "/tmp/test-store.XXXXXX";
        ASSERT_TRUE(mkdtemp(dir) != NULL);
        char sub[64];
        snprintf(sub, sizeof(sub), "%s/state", dir);
        test_images(sub);
        test_outbox(sub);
        test_image_json();
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : 1;
}
