/* agent/config.c: the INI reader, the flags over it, the checks. */
#include "agent/config.h"
#include "tests.h"

static void test_file(void)
{
        NbConfig c;
        NbError e = {0};
        nb_config_init(&c);
        ASSERT_OK(nb_config_parse_string(&c,
                                         "; comment\n"
                                         "[nbsnapd]\n"
                                         "registry = http://127.0.0.1:5000\n"
                                         "base-image = team/base:v1\n"
                                         "project_id = p1\n"
                                         "notebook_id = n1\n"
                                         "listen = unix:/run/x.sock\n"
                                         "listen = tcp:127.0.0.1:8443\n"
                                         "token_file = /etc/token\n"
                                         "threads = 4\n"
                                         "chunk_size = 1048576\n"
                                         "max_image_size = 20G\n"
                                         "exclude = /a\n",
                                         &e));
        ASSERT_STREQ(c.registry, "http://127.0.0.1:5000");
        ASSERT_STREQ(c.base_image, "team/base:v1");
        ASSERT_EQ(c.n_listen, 2);
        ASSERT_STREQ(c.listen[1], "tcp:127.0.0.1:8443");
        ASSERT_EQ(c.threads, 4);
        ASSERT_EQ(c.chunk_size, 1048576);
        ASSERT_EQ(c.max_image_size, 20ull << 30);
        ASSERT_EQ(c.n_exclude, 1);
        ASSERT_EQ(c.stop_timeout_sec, 30);
        ASSERT_OK(nb_config_check(&c, &e));
        nb_config_done(&c);
}

static void test_errors(void)
{
        static const char *const bad[] = {
                "bogus = 1\n",
                "[other]\nroot = /\n",
                "threads = -1\n",
                "threads = 257\n",
                "level = x\n",
                "just words\n",
                "[nbsnapd\n",
                "max_image_size = 5Q\n",
                "max_image_size = -1\n",
                "max-image-size = garbage\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                NbConfig c;
                NbError e = {0};
                nb_config_init(&c);
                ASSERT_TRUE(nb_config_parse_string(&c, bad[i], &e) < 0);
                ASSERT_TRUE(strstr(e.msg, "line ") != NULL);
                nb_config_done(&c);
        }
}

/* A bad size names its key and says what a size is. */
static void test_size_keys(void)
{
        NbConfig c;
        NbError e = {0};
        nb_config_init(&c);
        ASSERT_EQ(c.max_image_size, 0);
        ASSERT_TRUE(nb_config_set(&c, "max-image-size", "5Q", &e) < 0);
        ASSERT_TRUE(strstr(e.msg, "max_image_size takes a size") != NULL);
        ASSERT_TRUE(nb_config_set(&c, "max_image_size", "2000000T", &e) < 0);
        ASSERT_TRUE(strstr(e.msg, "too large") != NULL);
        ASSERT_OK(nb_config_set(&c, "max_image_size", "512K", &e));
        ASSERT_EQ(c.max_image_size, 512 * 1024);
        ASSERT_EQ(c.max_layer_size, 10ull << 30); /* the default: SWR's cap */
        ASSERT_OK(nb_config_set(&c, "max-layer-size", "1M", &e));
        ASSERT_EQ(c.max_layer_size, 1 << 20);
        static const char *const bad_layer[] = {"5Q", "-1", "0", "1048575", "512K", ""};
        for (size_t i = 0; i < ELEMENTSOF(bad_layer); i++) {
                ASSERT_TRUE(nb_config_set(&c, "max_layer_size", bad_layer[i], &e) < 0);
                ASSERT_TRUE(strstr(e.msg, "max_layer_size") != NULL);
                ASSERT_EQ(c.max_layer_size, 1 << 20); /* unchanged */
        }
        nb_config_done(&c);
}

/* The chain keys: incremental (a boolean, on by default), max_layers (2..1000, 125), chain_waste_max
 * (0..100, 25); a bad value names its key and changes nothing. */
static void test_chain_keys(void)
{
        NbConfig c;
        NbError e = {0};
        nb_config_init(&c);
        ASSERT_TRUE(c.incremental);
        ASSERT_EQ(c.max_layers, 125u);
        ASSERT_EQ(c.chain_waste_max, 25u);
        ASSERT_OK(nb_config_set(&c, "incremental", "false", &e));
        ASSERT_TRUE(!c.incremental);
        ASSERT_OK(nb_config_set(&c, "incremental", "yes", &e));
        ASSERT_TRUE(c.incremental);
        ASSERT_OK(nb_config_set(&c, "incremental", "OFF", &e));
        ASSERT_TRUE(!c.incremental);
        ASSERT_OK(nb_config_set(&c, "incremental", "True", &e));
        ASSERT_TRUE(c.incremental);
        ASSERT_OK(nb_config_set(&c, "max-layers", "2", &e));
        ASSERT_EQ(c.max_layers, 2u);
        ASSERT_OK(nb_config_set(&c, "max_layers", "1000", &e));
        ASSERT_OK(nb_config_set(&c, "chain_waste_max", "0", &e));
        ASSERT_EQ(c.chain_waste_max, 0u);
        static const struct {
                const char *key, *value;
        } bad[] = {
                {"incremental", "maybe"},   {"incremental", ""},       {"incremental", "TRUE "},
                {"incremental", "truee"},   {"max_layers", "0"},       {"max_layers", "1"},
                {"max_layers", "ten"},      {"max_layers", "1001"},    {"max_layers", "-5"},
                {"chain_waste_max", "101"}, {"chain_waste_max", "-1"}, {"chain_waste_max", "x"},
                {"chain_waste_max", "25%"},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                ASSERT_TRUE(nb_config_set(&c, bad[i].key, bad[i].value, &e) < 0);
                ASSERT_TRUE(strstr(e.msg, bad[i].key) != NULL);
        }
        ASSERT_TRUE(c.incremental);
        ASSERT_EQ(c.max_layers, 1000u);
        ASSERT_EQ(c.chain_waste_max, 0u);
        nb_config_done(&c);
}

static void test_check(void)
{
        NbConfig c;
        NbError e = {0};
        nb_config_init(&c);
        ASSERT_TRUE(nb_config_check(&c, &e) < 0); /* registry missing */
        ASSERT_OK(nb_config_parse_string(
                &c, "registry=http://r\nbase_image=b\nproject_id=p\nnotebook_id=n\n", &e));
        ASSERT_OK(nb_config_check(&c, &e));
        ASSERT_OK(nb_config_set(&c, "listen", "tcp:127.0.0.1:1", &e));
        ASSERT_EQ(nb_config_check(&c, &e), -EPERM); /* a tcp listener without a token */
        ASSERT_OK(nb_config_set(&c, "token-file", "/x", &e));
        ASSERT_OK(nb_config_check(&c, &e));
        ASSERT_OK(nb_config_set(&c, "listen", "udp:1", &e));
        ASSERT_EQ(nb_config_check(&c, &e), -EINVAL);
        nb_config_done(&c);
        nb_config_init(&c);
        ASSERT_OK(nb_config_parse_string(&c, "registry=ftp://r\nbase_image=b\nproject_id=p\nnotebook_id=n\n",
                                         &e));
        ASSERT_EQ(nb_config_check(&c, &e), -EINVAL);
        ASSERT_OK(nb_config_set(&c, "registry", "http://r", &e));
        ASSERT_OK(nb_config_set(&c, "project_id", "a/b", &e));
        ASSERT_EQ(nb_config_check(&c, &e), -EINVAL);
        nb_config_done(&c);
}

static void test_flags(void)
{
        char path[] = "/tmp/test-config.XXXXXX";
        int fd = mkstemp(path);
        ASSERT_TRUE(fd >= 0);
        const char *text = "registry = http://file\nlisten = unix:/file.sock\nproject_id = file\n";
        ASSERT_EQ(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        char a0[] = "nbsnapd", a1[] = "--config", a3[] = "--registry", a4[] = "http://flag",
             a5[] = "--listen", a6[] = "unix:/a.sock", a7[] = "--listen", a8[] = "tcp:127.0.0.1:9",
             a9[] = "--state-dir", a10[] = "/s";
        char *argv[] = {a0, a1, path, a3, a4, a5, a6, a7, a8, a9, a10, NULL};
        NbConfig c;
        nb_config_init(&c);
        ASSERT_EQ(nb_config_parse_argv(&c, ELEMENTSOF(argv) - 1, argv), 1);
        ASSERT_STREQ(c.registry, "http://flag"); /* flags win */
        ASSERT_STREQ(c.project_id, "file");
        ASSERT_EQ(c.n_listen, 2); /* the flags' list replaces the file's */
        ASSERT_STREQ(c.listen[0], "unix:/a.sock");
        ASSERT_STREQ(c.state_dir, "/s");
        ASSERT_STREQ(c.config, path);
        nb_config_done(&c);
        char b2[] = "/nonexistent/nbsnapd.conf";
        char *bad[] = {a0, a1, b2, NULL};
        nb_config_init(&c);
        ASSERT_TRUE(nb_config_parse_argv(&c, 3, bad) < 0);
        nb_config_done(&c);
        unlink(path);
}

/* allow_overwrite: a boolean, false by default. */
static void test_allow_overwrite(void)
{
        NbConfig c;
        NbError e = {0};
        nb_config_init(&c);
        ASSERT_TRUE(!c.allow_overwrite);
        ASSERT_OK(nb_config_parse_string(&c, "[nbsnapd]\nallow_overwrite = true\n", &e));
        ASSERT_TRUE(c.allow_overwrite);
        ASSERT_OK(nb_config_set(&c, "allow-overwrite", "no", &e));
        ASSERT_TRUE(!c.allow_overwrite);
        ASSERT_TRUE(nb_config_set(&c, "allow_overwrite", "sometimes", &e) < 0);
        ASSERT_TRUE(strstr(e.msg, "allow_overwrite takes true or false") != NULL);
        ASSERT_TRUE(!c.allow_overwrite);
        nb_config_done(&c);
}

/* The CLI's socket from nbsnapd's config: the first listen = unix:PATH; none; a file that is not there or
 * not a config. $NBSNAP_CONFIG names the default file. */
static void test_socket(void)
{
        char path[] = "/tmp/test-config-socket.XXXXXX";
        int fd = mkstemp(path);
        ASSERT_TRUE(fd >= 0);
        static const char text[] = "# the API\n[nbsnapd]\nlisten = tcp:127.0.0.1:8443\n"
                                   "listen = unix:/run/x/agent.sock\nlisten = unix:/run/y.sock\n";
        ASSERT_EQ(write(fd, text, sizeof(text) - 1), (ssize_t)(sizeof(text) - 1));
        close(fd);
        char *sock = NULL;
        NbError e = {0};
        ASSERT_EQ(nb_config_socket(path, &sock, &e), 1);
        ASSERT_STREQ(sock, "/run/x/agent.sock");
        free(sock);

        ASSERT_TRUE(truncate(path, 0) == 0);
        ASSERT_EQ(nb_config_socket(path, &sock, &e), 0);
        FILE *f = fopen(path, "w");
        ASSERT_TRUE(f);
        fputs("listen = unix:/a.sock\nbogus line\n", f);
        fclose(f);
        ASSERT_EQ(nb_config_socket(path, &sock, &e), -EINVAL);
        ASSERT_TRUE(strstr(e.msg, "line 2") != NULL);
        unlink(path);
        ASSERT_EQ(nb_config_socket(path, &sock, &e), -ENOENT);

        ASSERT_OK(setenv("NBSNAP_CONFIG", "/etc/other.conf", 1));
        ASSERT_STREQ(nb_config_default_path(), "/etc/other.conf");
        ASSERT_OK(setenv("NBSNAP_CONFIG", "", 1));
        ASSERT_STREQ(nb_config_default_path(), NB_CONFIG_DEFAULT_PATH);
        ASSERT_OK(unsetenv("NBSNAP_CONFIG"));
        ASSERT_STREQ(nb_config_default_path(), NB_CONFIG_DEFAULT_PATH);
}

int main(void)
{
        test_allow_overwrite();
        test_socket();
        test_file();
        test_errors();
        test_size_keys();
        test_chain_keys();
        test_check();
        test_flags();
        return 0;
}
