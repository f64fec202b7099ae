/* agent/manager.c: the images' lifecycle. The status moves it allows; a save that fails (no registry
 * listens) going INIT -> CREATE_FAILED; one save at a time; the delete rules; the records surviving a reopen
 * of the state dir; a save a crash interrupted failed at the next start; no save while stopping. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/manager.h"
#include "agent/store.h"
#include "agent/swr.h"
#include "common/clock.h"
#include "common/fileio.h"
#include "common/uuid.h"
#include "tests.h"

#define PROJECT  "0123456789abcdef0123456789abcdef"
#define NOTEBOOK "4e0d1854-63e5-4517-b683-a0ee97a692a1"

static void test_transitions(void)
{
        static const struct {
                NbStatus from, to;
                bool ok;
        } cases[] = {
                {NB_STATUS_INIT, NB_STATUS_CREATING, true},
                {NB_STATUS_INIT, NB_STATUS_CREATE_FAILED, true},
                {NB_STATUS_INIT, NB_STATUS_ERROR, true},
                {NB_STATUS_CREATING, NB_STATUS_CREATING, true}, /* progress */
                {NB_STATUS_CREATING, NB_STATUS_ACTIVE, true},
                {NB_STATUS_CREATING, NB_STATUS_CREATE_FAILED, true},
                {NB_STATUS_ACTIVE, NB_STATUS_DELETED, true},
                {NB_STATUS_CREATE_FAILED, NB_STATUS_DELETED, true},
                {NB_STATUS_ERROR, NB_STATUS_DELETED, true},
                {NB_STATUS_INIT, NB_STATUS_INIT, false},
                {NB_STATUS_CREATING, NB_STATUS_INIT, false},
                {NB_STATUS_ACTIVE, NB_STATUS_CREATING, false},
                {NB_STATUS_ACTIVE, NB_STATUS_CREATE_FAILED, false},
                {NB_STATUS_CREATE_FAILED, NB_STATUS_ACTIVE, false},
                {NB_STATUS_CREATE_FAILED, NB_STATUS_CREATING, false},
                {NB_STATUS_ERROR, NB_STATUS_ACTIVE, false},
                {NB_STATUS_DELETED, NB_STATUS_ACTIVE, false},
                {NB_STATUS_DELETED, NB_STATUS_DELETED, false},
                {NB_STATUS_DELETED, NB_STATUS_INIT, false},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                bool ok = manager_transition_allowed(cases[i].from, cases[i].to);
                if (ok != cases[i].ok)
                        fprintf(stderr, "%s -> %s\n", nb_status_to_string(cases[i].from),
                                nb_status_to_string(cases[i].to));
                ASSERT_EQ(ok, cases[i].ok);
        }
}

static void config(NbConfig *c, const char *dir)
{
        char path[512];
        nb_config_init(c);
        snprintf(path, sizeof(path), "%s/root", dir);
        ASSERT_EQ(mkdir(path, 0755), 0);
        NbError e = {0};
        ASSERT_OK(nb_config_set(c, "root", path, &e));
        snprintf(path, sizeof(path), "%s/state", dir);
        ASSERT_OK(nb_config_set(c, "state_dir", path, &e));
        ASSERT_OK(nb_config_set(c, "registry", "http://127.0.0.1:1", &e));
        ASSERT_OK(nb_config_set(c, "base_image", "library/base:1", &e));
        ASSERT_OK(nb_config_set(c, "namespace", "atelier-auto", &e));
        ASSERT_OK(nb_config_set(c, "project_id", PROJECT, &e));
        ASSERT_OK(nb_config_set(c, "notebook_id", NOTEBOOK, &e));
}

static Manager *open_manager(const NbConfig *c)
{
        Manager *m = NULL;
        NbError e = {0};
        ASSERT_OK(manager_new(c, &m, &e));
        ASSERT_OK(manager_start(m, &e));
        manager_set_ready(m);
        return m;
}

/* The event loop's part: dispatch whenever a worker posts, until the save has ended. */
static void wait_save(Manager *m)
{
        int64_t deadline = nb_now_ms() + 120 * 1000;
        while (manager_saving(m)) {
                ASSERT_TRUE(nb_now_ms() < deadline);
                struct pollfd p = {.fd = manager_wake_fd(m), .events = POLLIN};
                if (poll(&p, 1, 100) > 0)
                        manager_dispatch(m);
        }
}

static NbStatus status_of(Manager *m, const char *id)
{
        const NbImage *img = NULL;
        NbError e = {0};
        ASSERT_OK(manager_get_image(m, id, &img, &e));
        return img->status;
}

static void test_save_fails(Manager *m, char id[static 37])
{
        const NbImage *img = NULL, *other = NULL;
        NbError e = {0};
        ASSERT_EQ(manager_create_image(m, "{\"bogus\": 1}", 12, &img, &e), -EINVAL);
        ASSERT_OK(manager_create_image(m, "{\"name\":\"first\",\"tag\":\"v1\"}", 27, &img, &e));
        ASSERT_EQ(img->status, NB_STATUS_INIT);
        ASSERT_STREQ(img->swr_path, "127.0.0.1:1/atelier-auto/first:v1");
        char arch[NB_ARCH_MAX];
        ASSERT_STREQ(img->arch, nb_machine_arch_modelarts(arch));
        memcpy(id, img->id, 37);
        ASSERT_TRUE(manager_saving(m));
        /* one save at a time */
        ASSERT_EQ(manager_create_image(m, "{}", 2, &other, &e), -EBUSY);
        wait_save(m);
        ASSERT_EQ(status_of(m, id), NB_STATUS_CREATE_FAILED);
}

static void test_queries(Manager *m, const char *id)
{
        const NbImage *img = NULL;
        const NbImage **v = NULL;
        size_t n = 0;
        NbError e = {0};
        ASSERT_EQ(manager_get_image(m, "00000000-0000-4000-8000-000000000000", &img, &e), -ENOENT);
        NbListQuery q;
        nb_list_query_init(&q);
        ASSERT_EQ(nb_list_query_set(&q, "status", "FINISHED", &e), -EINVAL);
        nb_list_query_done(&q);
        ASSERT_OK(nb_list_query_set(&q, "status", "CREATE_FAILED", &e));
        ASSERT_OK(manager_list_images(m, &q, &v, &n, &e));
        ASSERT_EQ(n, 1);
        ASSERT_STREQ(v[0]->id, id);
        free(v);
        nb_list_query_done(&q);
        ASSERT_OK(nb_list_query_set(&q, "status", "ACTIVE", &e));
        ASSERT_OK(manager_list_images(m, &q, &v, &n, &e));
        ASSERT_EQ(n, 0);
        free(v);
        nb_list_query_done(&q);
}

/* Nothing was pushed: the record alone becomes DELETED; deleting it again answers it as it is. */
static void test_delete(Manager *m, const char *id)
{
        const NbImage *img = NULL;
        NbError e = {0};
        ASSERT_EQ(manager_delete_image(m, "00000000-0000-4000-8000-000000000000", NULL, NULL, &img, &e),
                  -ENOENT);
        ASSERT_EQ(manager_delete_image(m, id, NULL, NULL, &img, &e), 0);
        ASSERT_EQ(img->status, NB_STATUS_DELETED);
        int64_t when = img->update_at;
        ASSERT_EQ(manager_delete_image(m, id, NULL, NULL, &img, &e), 0);
        ASSERT_EQ(img->status, NB_STATUS_DELETED);
        ASSERT_EQ(img->update_at, when);
}

/* DELETE of the running save cancels it: the record is DELETED at once, on disk too, and a new save may
 * start at once, while the cancelled worker still ends. (The save cannot fail before the DELETE: the
 * registry's port refuses, and the first retry waits at least one backoff.) */
static void test_cancel(Manager *m, const NbConfig *c)
{
        const NbImage *img = NULL, *next = NULL;
        NbError e = {0};
        ASSERT_OK(manager_create_image(m, "{\"name\":\"cancelled\",\"tag\":\"v1\"}", 31, &img, &e));
        char id[37];
        memcpy(id, img->id, sizeof(id));
        ASSERT_EQ(manager_delete_image(m, id, NULL, NULL, &img, &e), 0);
        ASSERT_EQ(img->status, NB_STATUS_DELETED);
        ASSERT_TRUE(strncmp(img->status_message, "cancelled during the save (it was INIT", 38) == 0);
        ASSERT_TRUE(strstr(img->status_message, "nothing was tagged") != NULL);
        char path[600];
        _cleanup_free_ char *json = NULL;
        size_t size = 0;
        snprintf(path, sizeof(path), "%s/images/%s.json", c->state_dir, id);
        ASSERT_OK(nb_read_file(path, 1 << 20, &json, &size));
        ASSERT_TRUE(strstr(json, "\"DELETED\"") != NULL);
        /* deleting it again answers it as it is */
        ASSERT_EQ(manager_delete_image(m, id, NULL, NULL, &next, &e), 0);
        ASSERT_TRUE(next == img);
        /* the slot is free at once */
        ASSERT_OK(manager_create_image(m, "{\"name\":\"after\",\"tag\":\"v1\"}", 27, &next, &e));
        char after[37];
        memcpy(after, next->id, sizeof(after));
        wait_save(m); /* the new save and the cancelled worker */
        ASSERT_EQ(status_of(m, id), NB_STATUS_DELETED);
        ASSERT_EQ(status_of(m, after), NB_STATUS_CREATE_FAILED);
        ASSERT_TRUE(!manager_saving(m));
}

/* A record a crash left CREATING, written behind the manager's back. */
static void put_interrupted(const NbConfig *c, char id[static 37])
{
        NbStore *s = NULL;
        NbError e = {0};
        NbImage img = {.status = NB_STATUS_CREATING, .create_at = nb_now_ms(), .update_at = nb_now_ms()};
        ASSERT_OK(nb_uuid(img.id));
        ASSERT_OK(nb_image_set(&img.name, "second"));
        ASSERT_OK(nb_image_set(&img.namespace, "atelier-auto"));
        ASSERT_OK(nb_image_set(&img.tag, "v2"));
        ASSERT_OK(nb_image_set(&img.status_message, "packing: 40%"));
        ASSERT_OK(nb_store_open(c->state_dir, &s, &e));
        ASSERT_OK(nb_store_put_image(s, &img, &e));
        nb_store_free(s);
        memcpy(id, img.id, 37);
        nb_image_done(&img);
}

static void test_reopen(const NbConfig *c, const char *deleted_id)
{
        char crashed[37];
        put_interrupted(c, crashed);
        Manager *m = open_manager(c);
        ASSERT_EQ(status_of(m, deleted_id), NB_STATUS_DELETED);
        ASSERT_EQ(status_of(m, crashed), NB_STATUS_CREATE_FAILED);
        const NbImage *img = NULL;
        NbError e = {0};
        ASSERT_OK(manager_get_image(m, crashed, &img, &e));
        ASSERT_TRUE(strstr(img->status_message, "the agent stopped during the save") != NULL);
        manager_free(m);
        /* the recovery itself was recorded */
        m = open_manager(c);
        ASSERT_EQ(status_of(m, crashed), NB_STATUS_CREATE_FAILED);
        ASSERT_EQ(status_of(m, deleted_id), NB_STATUS_DELETED);
        /* stopping: no new save */
        ASSERT_TRUE(!manager_stop(m));
        ASSERT_EQ(manager_create_image(m, "{}", 2, &img, &e), -ESHUTDOWN);
        manager_free(m);
}

int main(void)
{
        char dir[] = "/tmp/test-manager-XXXXXX";
        ASSERT_TRUE(mkdtemp(dir));
        /* no registry listens on port 1: the save fails at once instead of retrying for minutes */
        setenv("NBSNAP_REGISTRY_RETRY_DEADLINE", "1", 1);
        test_transitions();
        NbConfig c;
        config(&c, dir);
        Manager *m = open_manager(&c);
        char id[37];
        test_save_fails(m, id);
        test_queries(m, id);
        test_delete(m, id);
        test_cancel(m, &c);
        manager_free(m);
        test_reopen(&c, id);
        nb_config_done(&c);
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        ASSERT_EQ(system(cmd), 0);
        return 0;
}
