#include <fcntl.h>
#include <getopt.h>
#include <ini.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "agent/agent-version.h"
#include "agent/chain.h"
#include "agent/config.h"
#include "agent/image.h"
#include "common/fileio.h"
#include "common/size.h"

typedef enum KeyType {
        KEY_STRING,
        KEY_LIST,
        KEY_UINT,
        KEY_COMPRESSION, /* gzip|zstd into a SnapCompression */
        KEY_SIZE,        /* a common/size.h size ("10G") into a uint64_t */
        KEY_BOOL,        /* true|false|yes|no|on|off|1|0 into a bool */
} KeyType;

typedef struct Key {
        const char *name; /* file spelling; the flag is the same with '-' for '_' */
        KeyType type;
        size_t offset;       /* char * / char *[] / unsigned / unsigned long / uint64_t */
        size_t count_offset; /* KEY_LIST: the size_t count */
        size_t max_items;    /* KEY_LIST */
        unsigned long max;   /* KEY_UINT */
        bool is_ulong;
        const char *arg, *help;
        uint64_t min; /* KEY_SIZE, KEY_UINT: the least value taken */
} Key;

#define STR(n, f, a, h)                                                                                     \
        {                                                                                                   \
                n, KEY_STRING, offsetof(NbConfig, f), 0, 0, 0, false, a, h                                  \
        }
#define LIST(n, f, a, h)                                                                                    \
        {                                                                                                   \
                n, KEY_LIST, offsetof(NbConfig, f), offsetof(NbConfig, n_##f),                              \
                        ELEMENTSOF(((NbConfig *)0)->f), 0, false, a, h                                      \
        }
#define UINT(n, f, m, a, h)                                                                                 \
        {                                                                                                   \
                n, KEY_UINT, offsetof(NbConfig, f), 0, 0, m, false, a, h                                    \
        }

static const Key keys[] = {
        LIST("listen", listen, "unix:PATH|tcp:HOST:PORT",
             "where the API listens (repeatable; default unix:" NB_DEFAULT_SOCKET ")"),
        STR("root", root, "DIR", "the container's root filesystem (default /)"),
        STR("state_dir", state_dir, "DIR",
            "baseline, image records, outbox (default " NB_DEFAULT_STATE_DIR ")"),
        STR("registry", registry, "URL", "https://HOST[:PORT] (http:// for a plain-http registry)"),
        STR("base_image", base_image, "REF", "the image this container runs: REPO[:TAG|@DIGEST]"),
        STR("project_id", project_id, "ID", "this instance's project id (API paths)"),
        STR("notebook_id", notebook_id, "ID", "this instance's notebook id (API paths)"),
        STR("namespace", namespace, "NS", "organization used when a request names none"),
        STR("authfile", authfile, "FILE", "registry credentials (docker config.json format)"),
        STR("ca_file", ca_file, "FILE", "extra CA bundle for the registry"),
        STR("token_file", token_file, "FILE", "bearer token: required on tcp listeners, sent to report_url"),
        STR("report_url", report_url, "URL", "the control plane's endpoint for image state changes"),
        STR("tls_cert", tls_cert, "FILE", "PEM certificate: tcp listeners speak TLS"),
        STR("tls_key", tls_key, "FILE", "PEM private key for tls_cert"),
        STR("socket_group", socket_group, "GROUP", "group allowed on the unix socket besides root"),
        LIST("exclude", exclude, "PATH", "a container path never saved (repeatable)"),
        UINT("threads", threads, 256, "N", "compression threads (0: all CPUs)"),
        {"compression", KEY_COMPRESSION, offsetof(NbConfig, compression), 0, 0, 0, false, "gzip|zstd",
         "the new layer's compression (default gzip; zstd needs a runtime that pulls zstd layers)"},
        UINT("level", level, SNAP_ZSTD_LEVEL_MAX, "N",
             "level of that compressor: gzip 1-9 (default 1), zstd 1-19 (default 3); 0: the default"),
        UINT("stop_timeout", stop_timeout_sec, 3600, "SEC",
             "on SIGTERM, how long a cancelled save may take to stop (default 30)"),
        UINT("report_retry_max", report_retry_max_sec, 86400, "SEC",
             "longest wait between two report attempts (default 300)"),
        {"chunk_size", KEY_UINT, offsetof(NbConfig, chunk_size), 0, 0, 1ul << 30, true, "BYTES",
         "registry upload PATCH size (0: default 8 MiB; kept within 64 KiB and 512 MiB)"},
        {"max_image_size", KEY_SIZE, offsetof(NbConfig, max_image_size), 0, 0, 0, false, "SIZE",
         "refuse a save whose changed files exceed SIZE (K, M, G, T: powers of 1024; default 0: no limit)"},
        {"max_layer_size", KEY_SIZE, offsetof(NbConfig, max_layer_size), 0, 0, 0, false, "SIZE",
         "no pushed layer blob is larger: bigger changes are split into layers (default 10G, at least 1M)",
         NB_LAYER_SIZE_MIN},
        {"incremental", KEY_BOOL, offsetof(NbConfig, incremental), 0, 0, 0, false, "BOOL",
         "build on the last save's image: one layer of what changed since (default true)"},
        {"allow_overwrite", KEY_BOOL, offsetof(NbConfig, allow_overwrite), 0, 0, 0, false, "BOOL",
         "replace a tag the registry already has (default false)"},
        {"max_layers", KEY_UINT, offsetof(NbConfig, max_layers), 0, 0, NB_LAYERS_MAX, false, "N",
         "the saved image never has more layers (2-1000, default 125)", NB_LAYERS_MIN},
        UINT("chain_waste_max", chain_waste_max, NB_CHAIN_WASTE_MAX, "PERCENT",
             "a full save when the chain's dead bytes would pass this share of its layers (default 25)"),
};

void nb_config_init(NbConfig *c)
{
        *c = (NbConfig){.stop_timeout_sec = 30,
                        .report_retry_max_sec = 300,
                        .max_layer_size = NB_LAYER_SIZE_DEFAULT,
                        .incremental = true,
                        .max_layers = NB_LAYERS_DEFAULT,
                        .chain_waste_max = NB_CHAIN_WASTE_DEFAULT};
}

void nb_config_done(NbConfig *c)
{
        for (const Key *k = keys; k < keys + ELEMENTSOF(keys); k++) {
                char *base = (char *)c + k->offset;
                if (k->type == KEY_STRING)
                        free(*(char **)base);
                else if (k->type == KEY_LIST)
                        for (size_t i = 0; i < *(size_t *)((char *)c + k->count_offset); i++)
                                free(((char **)base)[i]);
        }
        free(c->config);
        *c = (NbConfig){0};
}

static const Key *key_find(const char *name)
{
        char norm[64];
        size_t n = strlen(name);
        if (n == 0 || n >= sizeof(norm))
                return NULL;
        for (size_t i = 0; i <= n; i++)
                norm[i] = name[i] == '-' ? '_' : name[i];
        for (const Key *k = keys; k < keys + ELEMENTSOF(keys); k++)
                if (strcmp(k->name, norm) == 0)
                        return k;
        return NULL;
}

static int parse_ulong(const char *s, unsigned long max, unsigned long *ret)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || s[0] == '+' || s[0] == ' ' || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

int nb_config_set(NbConfig *c, const char *key, const char *value, NbError *e)
{
        const Key *k = key_find(key);
        if (!k)
                return nb_error_set(e, -ENOENT, "unknown key '%.64s'", key);
        if (strlen(value) > NB_CONFIG_VALUE_MAX)
                return nb_error_set(e, -E2BIG, "%s: value over %d bytes", k->name, NB_CONFIG_VALUE_MAX);
        char *base = (char *)c + k->offset;
        if (k->type == KEY_COMPRESSION) {
                if (snap_compression_from_string(value, (SnapCompression *)base) < 0)
                        return nb_error_set(e, -EINVAL, "%s takes gzip or zstd, not '%.64s'", k->name,
                                            value);
                return 0;
        }
        if (k->type == KEY_SIZE) {
                uint64_t v;
                int r = nb_size_parse(value, &v);
                if (r < 0)
                        return nb_error_set(e, -EINVAL,
                                            "%s takes a size (a number of bytes, or with K, M, G or T), "
                                            "not '%.64s'%s",
                                            k->name, value, r == -ERANGE ? " (too large)" : "");
                if (v < k->min)
                        return nb_error_set(e, -EINVAL, "%s must be at least %" PRIu64 " bytes, not '%.64s'",
                                            k->name, k->min, value);
                *(uint64_t *)base = v;
                return 0;
        }
        if (k->type == KEY_BOOL) {
                static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                            "off", "0"};
                for (size_t i = 0; i < ELEMENTSOF(yes); i++) /* as systemd reads booleans: any case */
                        if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
                                *(bool *)base = strcasecmp(value, yes[i]) == 0;
                                return 0;
                        }
                return nb_error_set(e, -EINVAL, "%s takes true or false, not '%.64s'", k->name, value);
        }
        if (k->type == KEY_UINT) {
                unsigned long v;
                if (parse_ulong(value, k->max, &v) < 0 || v < k->min)
                        return nb_error_set(e, -EINVAL,
                                            "%s takes a number from %" PRIu64 " to %lu, not '%.64s'",
                                            k->name, k->min, k->max, value);
                if (k->is_ulong)
                        *(unsigned long *)base = v;
                else
                        *(unsigned *)base = (unsigned)v;
                if (base == (char *)&c->level)
                        c->level_set = v > 0; /* 0: the engine's default */
                return 0;
        }
        char *copy = strdup(value);
        if (!copy)
                return nb_error_oom(e);
        if (k->type == KEY_STRING) {
                free(*(char **)base);
                *(char **)base = copy;
                return 0;
        }
        size_t *n = (size_t *)((char *)c + k->count_offset);
        char **list = (char **)base;
        if (*n >= k->max_items) {
                free(copy);
                return nb_error_set(e, -E2BIG, "at most %zu %s entries", k->max_items, k->name);
        }
        list[(*n)++] = copy;
        return 0;
}

typedef struct IniState {
        NbConfig *c;
        NbError *e;
        int r;
} IniState;

static int on_ini_line(void *user, const char *section, const char *name, const char *value)
{
        IniState *s = user;
        if (s->r < 0)
                return 0;
        if (section[0] && strcmp(section, "nbsnapd") != 0) {
                s->r = nb_error_set(s->e, -EINVAL,
                                    "unknown section [%.64s] (keys go in [nbsnapd] or before any "
                                    "section)",
                                    section);
                return 0;
        }
        if (!value) /* a key without "=" */
                s->r = nb_error_set(s->e, -EINVAL, "key '%.64s' has no value", name);
        else
                s->r = nb_config_set(s->c, name, value, s->e);
        return s->r < 0 ? 0 : 1;
}

int nb_config_parse_string(NbConfig *c, const char *text, NbError *e)
{
        IniState s = {.c = c, .e = e};
        int line = ini_parse_string(text, on_ini_line, &s);
        if (s.r < 0) {
                char msg[sizeof(e->msg)];
                snprintf(msg, sizeof(msg), "%s", e->msg);
                return nb_error_set(e, s.r, "line %d: %s", line, msg);
        }
        if (line != 0)
                return nb_error_set(e, -EINVAL, "line %d: not a 'key = value' line nor a [section]", line);
        return 0;
}

int nb_config_parse_file(NbConfig *c, const char *path, NbError *e)
{
        _cleanup_free_ char *text = NULL;
        size_t got = 0;
        int r = nb_read_file(path, NB_CONFIG_FILE_MAX, &text, &got);
        if (r == -EISDIR)
                return nb_error_set(e, r, "config %s is a directory", path);
        if (r == -EFBIG)
                return nb_error_set(e, r, "config %s is over %u bytes", path, NB_CONFIG_FILE_MAX);
        if (r < 0)
                return nb_error_set(e, r, "cannot read config %s: %s", path, strerror(-r));
        if (memchr(text, '\0', got))
                return nb_error_set(e, -EINVAL, "config %s contains a NUL byte", path);
        r = nb_config_parse_string(c, text, e);
        return r < 0 ? nb_error_wrap(e, r, "config %s", path) : 0;
}

#define NB_HELP_WIDTH     80 /* columns of nbsnapd --help */
#define NB_HELP_LEFT_COLS 29 /* "  --key ARG" column, with its space */

/* One row of --help: the flag and its argument in the left column (on a line of its own when longer), the
 * help wrapped at word boundaries within NB_HELP_WIDTH. */
static void help_row(const char *left, const char *help)
{
        int col = printf("  %s", left);
        if (col >= NB_HELP_LEFT_COLS) {
                putchar('\n');
                col = 0;
        }
        const char *p = help;
        while (*p) {
                size_t room = NB_HELP_WIDTH - NB_HELP_LEFT_COLS, n = strlen(p);
                if (n > room) {
                        n = room;
                        while (n > 0 && p[n] != ' ')
                                n--;
                        if (n == 0) /* one word longer than the room */
                                n = strcspn(p, " ");
                }
                printf("%*s%.*s\n", NB_HELP_LEFT_COLS - col, "", (int)n, p);
                col = 0;
                p += n;
                while (*p == ' ')
                        p++;
        }
}

const char *nb_config_default_path(void)
{
        const char *p = secure_getenv("NBSNAP_CONFIG");
        return p && p[0] ? p : NB_CONFIG_DEFAULT_PATH;
}

int nb_config_socket(const char *path, char **ret, NbError *e)
{
        _cleanup_(nb_config_done) NbConfig c;
        nb_config_init(&c);
        int r = nb_config_parse_file(&c, path, e);
        if (r < 0)
                return r;
        for (size_t i = 0; i < c.n_listen; i++)
                if (strncmp(c.listen[i], "unix:", 5) == 0 && c.listen[i][5] == '/') {
                        char *s = strdup(c.listen[i] + 5);
                        if (!s)
                                return nb_error_oom(e);
                        *ret = s;
                        return 1;
                }
        return 0;
}

void nb_config_help(void)
{
        printf("Usage: nbsnapd [--config FILE] [--KEY VALUE]...\n"
               "\n"
               "The nbsnap agent: serves the CreateImage API on a unix socket (socket-activated\n"
               "or bound here) and optionally on TCP, and saves this container as an image on\n"
               "request. Every key of the config file (INI, section [nbsnapd]; "
               "default\n" NB_CONFIG_DEFAULT_PATH
               ", or $NBSNAP_CONFIG) can be given as a flag\n(nbsnapd.conf(5)):\n"
               "\n");
        help_row("--config FILE", "read FILE instead of " NB_CONFIG_DEFAULT_PATH);
        for (const Key *k = keys; k < keys + ELEMENTSOF(keys); k++) {
                char flag[96];
                size_t i = 0;
                for (; k->name[i] && i < 63; i++)
                        flag[i] = k->name[i] == '_' ? '-' : k->name[i];
                flag[i] = '\0';
                char left[160];
                snprintf(left, sizeof(left), "--%s %s", flag, k->arg);
                help_row(left, k->help);
        }
        help_row("-h, --help", "show this help");
        help_row("--version", "show the version");
        printf("\n"
               "Environment:\n"
               "  NBSNAP_LOG_LEVEL=debug     log debug messages too (default: info and above)\n"
               "\n"
               "Examples:\n"
               "  nbsnapd --config " NB_CONFIG_DEFAULT_PATH "\n"
               "  NBSNAP_LOG_LEVEL=debug nbsnapd --config /dev/null --listen unix:/tmp/nb.sock \\\n"
               "      --registry https://swr.example.com --base-image team/pytorch:1.8 \\\n"
               "      --project-id p1 --notebook-id nb1\n");
}

enum { OPT_CONFIG = 0x100, OPT_VERSION, OPT_KEY };

/* Two passes: --config first (the file), then the flags over it. */
int nb_config_parse_argv(NbConfig *c, int argc, char **argv)
{
        struct option opts[ELEMENTSOF(keys) + 4];
        char names[ELEMENTSOF(keys)][64];
        size_t n = 0;
        opts[n++] = (struct option){"help", no_argument, NULL, 'h'};
        opts[n++] = (struct option){"version", no_argument, NULL, OPT_VERSION};
        opts[n++] = (struct option){"config", required_argument, NULL, OPT_CONFIG};
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                size_t j = 0;
                for (; keys[i].name[j] && j < 63; j++)
                        names[i][j] = keys[i].name[j] == '_' ? '-' : keys[i].name[j];
                names[i][j] = '\0';
                opts[n++] = (struct option){names[i], required_argument, NULL, OPT_KEY + (int)i};
        }
        opts[n] = (struct option){0};

        const char *config = NULL;
        bool explicit = false;
        int o;
        opterr = 1;
        optind = 1;
        while ((o = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                if (o == 'h') {
                        nb_config_help();
                        return 0;
                }
                if (o == OPT_VERSION) {
                        printf("nbsnapd %s\n", nbsnap_version());
                        return 0;
                }
                if (o == OPT_CONFIG) {
                        config = optarg;
                        explicit = true;
                }
                if (o == '?')
                        return -EINVAL;
        }
        if (optind < argc) {
                fprintf(stderr, "nbsnapd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        NbError e = {0};
        if (!config) { /* $NBSNAP_CONFIG names a file that must be there, as --config does */
                config = nb_config_default_path();
                explicit = strcmp(config, NB_CONFIG_DEFAULT_PATH) != 0;
        }
        if (explicit || access(config, F_OK) == 0) {
                if (nb_config_parse_file(c, config, &e) < 0) {
                        fprintf(stderr, "nbsnapd: %s\n", e.msg);
                        return -EINVAL;
                }
                c->config = strdup(config);
        }
        /* the first flag of a list replaces the file's entries: flags win over the file */
        bool listen_flag = false, exclude_flag = false;
        optind = 1;
        while ((o = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                if (o < OPT_KEY)
                        continue;
                const Key *k = &keys[o - OPT_KEY];
                bool *seen = k->offset == offsetof(NbConfig, listen)    ? &listen_flag
                             : k->offset == offsetof(NbConfig, exclude) ? &exclude_flag
                                                                        : NULL;
                if (seen && !*seen) {
                        size_t *cnt = (size_t *)((char *)c + k->count_offset);
                        char **list = (char **)((char *)c + k->offset);
                        for (size_t i = 0; i < *cnt; i++)
                                free(list[i]);
                        *cnt = 0;
                        *seen = true;
                }
                if (nb_config_set(c, k->name, optarg, &e) < 0) {
                        fprintf(stderr, "nbsnapd: --%s: %s\n", names[o - OPT_KEY], e.msg);
                        return -EINVAL;
                }
        }
        return 1;
}

static bool url_ok(const char *u)
{
        return u && (strncmp(u, "https://", 8) == 0 || strncmp(u, "http://", 7) == 0) &&
               !strpbrk(u, " \r\n\t");
}

int nb_config_check(const NbConfig *c, NbError *e)
{
        static const struct {
                size_t offset;
                const char *key;
        } required[] = {
                {offsetof(NbConfig, registry), "registry"},
                {offsetof(NbConfig, base_image), "base_image"},
                {offsetof(NbConfig, project_id), "project_id"},
                {offsetof(NbConfig, notebook_id), "notebook_id"},
        };
        for (size_t i = 0; i < ELEMENTSOF(required); i++) {
                const char *v = *(char *const *)((const char *)c + required[i].offset);
                if (!v || !v[0])
                        return nb_error_set(e, -EINVAL,
                                            "%s is not configured (--%s or %s= in the config file)",
                                            required[i].key, required[i].key, required[i].key);
        }
        if (!url_ok(c->registry))
                return nb_error_set(e, -EINVAL,
                                    "registry must be https://HOST[:PORT] or http://HOST[:PORT]");
        if (c->report_url && !url_ok(c->report_url))
                return nb_error_set(e, -EINVAL, "report_url must be an http:// or https:// URL");
        const char *ids[] = {c->project_id, c->notebook_id};
        for (size_t i = 0; i < ELEMENTSOF(ids); i++)
                if (strlen(ids[i]) > NB_ID_MAX || strchr(ids[i], '/') || strcmp(ids[i], ".") == 0 ||
                    strcmp(ids[i], "..") == 0)
                        return nb_error_set(
                                e, -EINVAL,
                                "project_id and notebook_id must be at most %d bytes without '/'",
                                NB_ID_MAX);
        if (c->namespace && !nb_namespace_valid(c->namespace, e))
                return e->code;
        if (c->level_set && snap_compression_level_check(c->compression, (int)c->level, e) < 0) {
                char msg[sizeof(e->msg)];
                snprintf(msg, sizeof(msg), "%s", e->msg);
                return nb_error_set(e, -EINVAL, "level = %u with compression = %s: %s", c->level,
                                    snap_compression_to_string(c->compression), msg);
        }
        if (!!c->tls_cert != !!c->tls_key)
                return nb_error_set(e, -EINVAL, "tls_cert and tls_key go together");
        for (size_t i = 0; i < c->n_listen; i++) {
                const char *l = c->listen[i];
                if (strncmp(l, "unix:", 5) == 0 && l[5] == '/')
                        continue;
                if (strncmp(l, "tcp:", 4) == 0 && strrchr(l + 4, ':')) {
                        if (!c->token_file)
                                return nb_error_set(
                                        e, -EPERM,
                                        "listen=%s: a tcp listener needs token_file (the API would "
                                        "be open to anyone who can reach the port)",
                                        l);
                        continue;
                }
                return nb_error_set(e, -EINVAL, "listen=%s: expected unix:/PATH or tcp:HOST:PORT", l);
        }
        return 0;
}

int nb_token_read(const char *path, char **ret, NbError *e)
{
        _cleanup_free_ char *buf = NULL;
        size_t got = 0;
        /* a token file ends with a newline or two: room for them */
        int r = nb_read_file(path, NB_TOKEN_MAX + 2, &buf, &got);
        if (r == -EFBIG)
                return nb_error_set(e, r, "token file %s is over %d bytes", path, NB_TOKEN_MAX);
        if (r < 0)
                return nb_error_set(e, r, "cannot read token file %s: %s", path, strerror(-r));
        while (got > 0 && strchr(" \t\r\n", buf[got - 1]))
                got--;
        buf[got] = '\0';
        if (got == 0 || strlen(buf) != got || strpbrk(buf, "\r\n"))
                return nb_error_set(e, -EINVAL, "token file %s must hold one non-empty line", path);
        if (got > NB_TOKEN_MAX) {
                explicit_bzero(buf, got);
                return nb_error_set(e, -EFBIG, "token file %s is over %d bytes", path, NB_TOKEN_MAX);
        }
        *ret = TAKE_PTR(buf);
        return 0;
}
