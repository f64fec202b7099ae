/* Unit tests of agent/chain: last-save.json written atomically and read back, refused when it is corrupt or
 * inconsistent, records pruned, the dead-bytes rule, and the digest of the excluded paths. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/chain.h"
#include "common/macro.h"
#include "snapshot/snapshot.h"
#include "tests.h"

static char scratch[] = "/tmp/test-chain.XXXXXX";

static void write_text(const char *name, const char *text)
{
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", scratch, name);
        FILE *f = fopen(path, "w");
        ASSERT_TRUE(f);
        fputs(text, f);
        fclose(f);
}

static NbChain sample(void)
{
        return (NbChain){
                .registry = (char *)"127.0.0.1:5000",
                .repository = (char *)"ns/name",
                .manifest_digest =
                        (char *)"sha256:1111111111111111111111111111111111111111111111111111111111111111",
                .base_image = (char *)"base/img:v1",
                .base_digest =
                        (char *)"sha256:2222222222222222222222222222222222222222222222222222222222222222",
                .excludes =
                        (char *)"sha256:3333333333333333333333333333333333333333333333333333333333333333",
                .record = (char *)"saved-0f0e0d0c-0b0a-4908-8706-050403020100",
                .base_layers = 2,
                .layers = 4,
                .saves = 2,
                .chain_bytes = 9007199254740000ull, /* near 2^53: kept exact through JSON */
                .dead_bytes = 1000,
        };
}

static void test_round_trip(void)
{
        NbError e = {0};
        NbChain c = {0};
        ASSERT_EQ(nb_chain_load(scratch, &c, &e), 0); /* none yet */
        NbChain s = sample();
        ASSERT_OK(nb_chain_store(scratch, &s, &e));
        ASSERT_EQ(nb_chain_load(scratch, &c, &e), 1);
        ASSERT_STREQ(c.registry, s.registry);
        ASSERT_STREQ(c.repository, s.repository);
        ASSERT_STREQ(c.manifest_digest, s.manifest_digest);
        ASSERT_STREQ(c.base_image, s.base_image);
        ASSERT_STREQ(c.base_digest, s.base_digest);
        ASSERT_STREQ(c.excludes, s.excludes);
        ASSERT_STREQ(c.record, s.record);
        ASSERT_EQ(c.base_layers, 2u);
        ASSERT_EQ(c.layers, 4u);
        ASSERT_EQ(c.saves, 2u);
        ASSERT_EQ(c.chain_bytes, s.chain_bytes);
        ASSERT_EQ(c.dead_bytes, 1000u);
        nb_chain_done(&c);
        char path[256];
        snprintf(path, sizeof(path), "%s/" NB_LAST_SAVE_FILE, scratch);
        struct stat st;
        ASSERT_OK(stat(path, &st));
        ASSERT_EQ(st.st_mode & 0777, 0600u);
}

static void test_bad(void)
{
        static const char *const bad[] = {
                "",
                "not json",
                "[]",
                "{\"version\": 2}",
                /* a record name that could point anywhere */
                "{\"version\":1,\"registry\":\"r\",\"repository\":\"n/n\",\"manifest_digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\",\"base_image\":\"b\","
                "\"base_digest\":\"sha256:"
                "2222222222222222222222222222222222222222222222222222222222222222\","
                "\"excludes\":\"x\",\"record\":\"../baseline\",\"base_layers\":1,\"layers\":2,\"saves\":1,"
                "\"chain_bytes\":1,\"dead_bytes\":0}",
                /* fewer layers than its base */
                "{\"version\":1,\"registry\":\"r\",\"repository\":\"n/n\",\"manifest_digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\",\"base_image\":\"b\","
                "\"base_digest\":\"sha256:"
                "2222222222222222222222222222222222222222222222222222222222222222\","
                "\"excludes\":\"x\",\"record\":\"saved-0f0e0d0c-0b0a-4908-8706-050403020100\",\"base_"
                "layers\":3,"
                "\"layers\":2,\"saves\":1,\"chain_bytes\":1,\"dead_bytes\":0}",
                /* a negative count */
                "{\"version\":1,\"registry\":\"r\",\"repository\":\"n/n\",\"manifest_digest\":\"sha256:"
                "1111111111111111111111111111111111111111111111111111111111111111\",\"base_image\":\"b\","
                "\"base_digest\":\"sha256:"
                "2222222222222222222222222222222222222222222222222222222222222222\","
                "\"excludes\":\"x\",\"record\":\"saved-0f0e0d0c-0b0a-4908-8706-050403020100\",\"base_"
                "layers\":1,"
                "\"layers\":2,\"saves\":1,\"chain_bytes\":-1,\"dead_bytes\":0}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                write_text(NB_LAST_SAVE_FILE, bad[i]);
                NbError e = {0};
                NbChain c = {0};
                ASSERT_EQ(nb_chain_load(scratch, &c, &e), -EBADMSG);
                ASSERT_TRUE(strstr(e.msg, NB_LAST_SAVE_FILE) != NULL);
                nb_chain_done(&c);
        }
}

static bool exists(const char *name)
{
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", scratch, name);
        return access(path, F_OK) == 0;
}

static void test_prune(void)
{
        const char *keep = "saved-00000000-0000-4000-8000-000000000001";
        const char *old = "saved-00000000-0000-4000-8000-000000000002";
        const char *tmp = "saved-00000000-0000-4000-8000-000000000003.tmp.abcdef";
        write_text(keep, "");
        write_text(old, "");
        write_text(tmp, "");
        write_text("saved-notes", ""); /* not a record's name */
        write_text("baseline", "");
        /* after a save: another save may be writing its record, its temporary file stays */
        ASSERT_EQ(nb_chain_prune(scratch, keep, false), 1u);
        ASSERT_TRUE(exists(keep) && exists("baseline") && exists(tmp) && exists("saved-notes"));
        ASSERT_TRUE(!exists(old));
        /* at start, after a crash: the temporary files go too */
        ASSERT_EQ(nb_chain_prune(scratch, keep, true), 2u);
        ASSERT_TRUE(exists(keep) && exists("baseline") && !exists(tmp) && !exists("saved-notes"));
        char *name = NULL;
        ASSERT_OK(nb_chain_record_name(&name));
        ASSERT_EQ(strlen(name), strlen(NB_RECORD_PREFIX) + 36);
        free(name);
}

static void test_wasteful(void)
{
        NbChain c = {.chain_bytes = 1000, .dead_bytes = 100};
        ASSERT_TRUE(!nb_chain_wasteful(&c, 150, 25)); /* 250 of 1000: not over 25 % */
        ASSERT_TRUE(nb_chain_wasteful(&c, 151, 25));
        ASSERT_TRUE(!nb_chain_wasteful(&c, 900, 100));
        ASSERT_TRUE(nb_chain_wasteful(&c, 1, 0)); /* 0: any dead byte */
        NbChain z = {0};
        ASSERT_TRUE(!nb_chain_wasteful(&z, 0, 0)); /* nothing dead, nothing in the chain */
        NbChain big = {.chain_bytes = UINT64_MAX / 2, .dead_bytes = UINT64_MAX / 4};
        ASSERT_TRUE(!nb_chain_wasteful(&big, 0, 50)); /* no overflow */
        ASSERT_TRUE(nb_chain_wasteful(&big, 1, 50));
}

static void test_excludes_digest(void)
{
        NbError e = {0};
        _cleanup_snap_excludes_ SnapExcludes *a = NULL, *b = NULL;
        ASSERT_OK(snap_excludes_new(&a, &e));
        ASSERT_OK(snap_excludes_new(&b, &e));
        ASSERT_OK(snap_excludes_add(a, "/x/y", &e));
        ASSERT_OK(snap_excludes_add(b, "/x", &e));
        char da[NB_DIGEST_STR_MAX], db[NB_DIGEST_STR_MAX];
        ASSERT_OK(nb_chain_excludes_digest(a, da));
        ASSERT_OK(nb_chain_excludes_digest(b, db));
        ASSERT_TRUE(strcmp(da, db) != 0);
        ASSERT_OK(snap_excludes_add(b, "/y", &e));
        ASSERT_OK(nb_chain_excludes_digest(b, db));
        ASSERT_TRUE(strcmp(da, db) != 0); /* "x\0y\0" is not "x/y\0" */
}

int main(void)
{
        ASSERT_TRUE(mkdtemp(scratch));
        test_round_trip();
        test_bad();
        test_prune();
        test_wasteful();
        test_excludes_digest();
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", scratch);
        ASSERT_OK(system(cmd));
        printf("test-chain: all passed\n");
        return 0;
}
