/* config.h: nbsnapd's configuration: an INI file (NB_CONFIG_DEFAULT_PATH, read with libinih) and command
 * line flags of the same names (a key "state_dir" is the flag "--state-dir"; flags win over the file). One
 * table lists every key with its type and limit; the file reader, the flag parser, --help and the fuzzer all
 * go through it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/build-paths.h" /* generated: NBSNAP_CONFIG_PATH */
#include "agent/save.h"
#include "common/error.h"

#define NB_CONFIG_DEFAULT_PATH NBSNAP_CONFIG_PATH /* from the build: CMAKE_INSTALL_FULL_SYSCONFDIR */
#define NB_DEFAULT_SOCKET      "/run/nbsnap/nbsnap.sock"
#define NB_DEFAULT_STATE_DIR   "/var/lib/nbsnap"
#define NB_CONFIG_FILE_MAX     (256u * 1024) /* bytes of the config file */
#define NB_CONFIG_VALUE_MAX    4096          /* bytes of one value */
#define NB_LISTEN_MAX          8             /* listen= entries */
#define NB_ID_MAX              128           /* project_id, notebook_id */
#define NB_TOKEN_MAX           4096          /* bytes of the bearer token file */
#define NB_EXCLUDES_CONFIG_MAX 256           /* exclude= entries */

typedef struct NbConfig {
        char *config; /* the file read, if any */
        char *listen[NB_LISTEN_MAX];
        size_t n_listen;
        char *root, *state_dir;
        char *registry, *base_image, *namespace, *authfile, *ca_file;
        char *project_id, *notebook_id;
        char *token_file, *report_url;
        char *tls_cert, *tls_key;
        char *socket_group;
        char *exclude[NB_EXCLUDES_CONFIG_MAX];
        size_t n_exclude;
        unsigned threads, level, stop_timeout_sec, report_retry_max_sec;
        unsigned long chunk_size;
        uint64_t max_image_size;  /* bytes of changed files a save may pack, 0: no limit */
        uint64_t max_layer_size;  /* bytes of one pushed layer blob (NB_LAYER_SIZE_DEFAULT) */
        bool incremental;         /* build on the last save (default true) */
        bool allow_overwrite;     /* a save may replace a tag that exists in the registry (default false) */
        unsigned max_layers;      /* NB_LAYERS_MIN..NB_LAYERS_MAX (NB_LAYERS_DEFAULT) */
        unsigned chain_waste_max; /* percent (NB_CHAIN_WASTE_DEFAULT) */
        bool level_set;
        SnapCompression compression; /* of the layer a save makes; 0: gzip */
} NbConfig;

/* Defaults; config_done() frees what config_parse_*() set. */
void nb_config_init(NbConfig *c);
void nb_config_done(NbConfig *c);

/* Sets one key (written with '_' or '-'); a list key appends. */
int nb_config_set(NbConfig *c, const char *key, const char *value, NbError *e);
/* "key = value" lines, [nbsnapd] or no section; errors name the line. */
int nb_config_parse_string(NbConfig *c, const char *text, NbError *e);
int nb_config_parse_file(NbConfig *c, const char *path, NbError *e);

/* The config file read when none is given: $NBSNAP_CONFIG when set and not empty, else
 * NB_CONFIG_DEFAULT_PATH. nbsnapd reads it, and nbsnap reads it to find the socket. */
const char *nb_config_default_path(void);

/* The unix socket nbsnapd serves on, as its config file at path says: 1 and the path of the first
 * listen = unix:PATH entry, 0 when the file has none (the daemon then takes its socket from systemd or
 * binds NB_DEFAULT_SOCKET), negative when the file cannot be read (-ENOENT, -EACCES, ...) or is not a valid
 * config (e says why and where). */
int nb_config_socket(const char *path, char **ret, NbError *e);

/* Parses argv: --config FILE first, then every other key as --key VALUE. Returns 1 to run, 0 after
 * --help/--version (printed), negative on a usage error (printed to stderr). */
int nb_config_parse_argv(NbConfig *c, int argc, char **argv);

/* What a daemon needs before it can serve: required keys, well-formed listen entries and URLs. */
int nb_config_check(const NbConfig *c, NbError *e);

/* Reads the bearer token file: one line, trailing whitespace dropped, at most NB_TOKEN_MAX bytes. */
int nb_token_read(const char *path, char **ret, NbError *e);

/* Prints the keys and their meaning (nbsnapd --help). */
void nb_config_help(void);
