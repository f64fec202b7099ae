#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/chain.h"
#include "agent/json.h"
#include "common/fileio.h"
#include "common/macro.h"
#include "common/uuid.h"
#include "registry/registry.h"
#include "snapshot/snapshot.h"

#define CHAIN_VERSION 1

void nb_chain_done(NbChain *c)
{
        free(c->registry);
        free(c->repository);
        free(c->manifest_digest);
        free(c->base_image);
        free(c->base_digest);
        free(c->excludes);
        free(c->record);
        *c = (NbChain){0};
}

int nb_chain_path(const char *state_dir, const char *name, char **ret)
{
        return asprintf(ret, "%s/%s", state_dir, name) < 0 ? -ENOMEM : 0;
}

int nb_chain_record_name(char **ret)
{
        char id[37];
        int r = nb_uuid(id);
        if (r < 0)
                return r;
        return asprintf(ret, NB_RECORD_PREFIX "%s", id) < 0 ? -ENOMEM : 0;
}

int nb_chain_excludes_digest(const SnapExcludes *x, char ret[static NB_DIGEST_STR_MAX])
{
        _cleanup_md_ctx_ EVP_MD_CTX *md = NULL;
        int r = nb_digest_ctx_new("sha256", &md);
        if (r < 0)
                return r;
        for (size_t i = 0; i < snap_excludes_count(x); i++) {
                const char *p = snap_excludes_get(x, i);
                if (EVP_DigestUpdate(md, p, strlen(p) + 1) != 1) /* the NUL separates */
                        return -EIO;
        }
        return nb_digest_ctx_final(md, ret);
}

/* ---- last-save.json -------------------------------------------------------------------------------- */

typedef struct Field {
        const char *name;
        size_t offset;
        bool number;
} Field;

#define STRING(n)                                                                                           \
        {                                                                                                   \
#n, offsetof(NbChain, n), false                                                             \
        }
#define NUMBER(n)                                                                                           \
        {                                                                                                   \
#n, offsetof(NbChain, n), true                                                              \
        }
static const Field fields[] = {
        STRING(registry),    STRING(repository), STRING(manifest_digest), STRING(base_image),
        STRING(base_digest), STRING(excludes),   STRING(record),          NUMBER(base_layers),
        NUMBER(layers),      NUMBER(saves),      NUMBER(chain_bytes),     NUMBER(dead_bytes),
};

static bool record_name_valid(const char *s)
{
        size_t n = strlen(NB_RECORD_PREFIX);
        if (strncmp(s, NB_RECORD_PREFIX, n) != 0 || strlen(s) != n + 36)
                return false;
        return strspn(s + n, "0123456789abcdef-") == 36;
}

static int parse(const char *json, const char *what, NbChain *c, NbError *e)
{
        _cleanup_cjson_ cJSON *j = cJSON_Parse(json);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "version");
        if (!cJSON_IsObject(j) || !cJSON_IsNumber(v) || v->valuedouble != CHAIN_VERSION)
                return nb_error_set(e, -EBADMSG, "%s: not a record of a save of a known version", what);
        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, fields[i].name);
                char *base = (char *)c + fields[i].offset;
                if (fields[i].number) {
                        if (!cJSON_IsNumber(f) || f->valuedouble < 0 || f->valuedouble > 9007199254740992.0)
                                return nb_error_set(e, -EBADMSG, "%s: bad or missing \"%s\"", what,
                                                    fields[i].name);
                        *(uint64_t *)base = (uint64_t)f->valuedouble;
                } else {
                        if (!cJSON_IsString(f) || !f->valuestring[0] || strlen(f->valuestring) > 4096)
                                return nb_error_set(e, -EBADMSG, "%s: bad or missing \"%s\"", what,
                                                    fields[i].name);
                        if (!(*(char **)base = strdup(f->valuestring)))
                                return nb_error_oom(e);
                }
        }
        if (!record_name_valid(c->record) || !reg_digest_valid(c->manifest_digest) ||
            !reg_digest_valid(c->base_digest) || c->layers < c->base_layers ||
            c->dead_bytes > c->chain_bytes)
                return nb_error_set(e, -EBADMSG, "%s: inconsistent record of a save", what);
        return 0;
}

int nb_chain_load(const char *state_dir, NbChain *ret, NbError *e)
{
        _cleanup_free_ char *path = NULL, *json = NULL;
        if (nb_chain_path(state_dir, NB_LAST_SAVE_FILE, &path) < 0)
                return nb_error_oom(e);
        int r = nb_read_file_at(AT_FDCWD, path, NB_LAST_SAVE_MAX, NB_READ_NOFOLLOW | NB_READ_REGULAR, &json,
                                NULL);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return nb_error_set(e, r, "cannot read %s: %s", path, strerror(-r));
        NbChain c = {0};
        r = parse(json, path, &c, e);
        if (r < 0) {
                nb_chain_done(&c);
                return r;
        }
        *ret = c;
        return 1;
}

int nb_chain_store(const char *state_dir, const NbChain *c, NbError *e)
{
        _cleanup_cjson_ cJSON *j = cJSON_CreateObject();
        bool ok = j && cJSON_AddNumberToObject(j, "version", CHAIN_VERSION);
        for (size_t i = 0; ok && i < ELEMENTSOF(fields); i++) {
                const char *base = (const char *)c + fields[i].offset;
                ok = fields[i].number
                             ? cJSON_AddNumberToObject(j, fields[i].name, (double)*(const uint64_t *)base)
                             : cJSON_AddStringToObject(j, fields[i].name, *(char *const *)base);
        }
        _cleanup_free_ char *json = ok ? cJSON_Print(j) : NULL;
        if (!json)
                return nb_error_oom(e);
        _cleanup_close_ int dir = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0)
                return nb_error_set(e, -errno, "cannot open state dir %s: %m", state_dir);
        int r = nb_write_file_atomic_at(dir, NB_LAST_SAVE_FILE, json, strlen(json), 0600);
        if (r < 0)
                return nb_error_set(e, r, "cannot write %s/%s: %s", state_dir, NB_LAST_SAVE_FILE,
                                    strerror(-r));
        return 0;
}

size_t nb_chain_prune(const char *state_dir, const char *keep, bool temporaries)
{
        _cleanup_close_ int fd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
        if (!d)
                return 0;
        fd = -1; /* the DIR owns it */
        size_t n = 0;
        struct dirent *de;
        while ((de = readdir(d)))
                if ((record_name_valid(de->d_name) ||
                     (temporaries &&
                      strncmp(de->d_name, NB_RECORD_PREFIX, strlen(NB_RECORD_PREFIX)) == 0)) &&
                    (!keep || strcmp(de->d_name, keep) != 0) && unlinkat(dirfd(d), de->d_name, 0) == 0)
                        n++;
        closedir(d);
        return n;
}

size_t nb_chain_cleanup(const char *state_dir)
{
        NbChain c = {0};
        NbError ignored = {0};
        /* an unreadable last-save.json names no record: every record is then of no use */
        int r = nb_chain_load(state_dir, &c, &ignored);
        size_t n = nb_chain_prune(state_dir, r > 0 ? c.record : NULL, true);
        nb_chain_done(&c);
        return n;
}

bool nb_chain_wasteful(const NbChain *c, uint64_t new_dead, unsigned waste_max)
{
        uint64_t dead = c->dead_bytes + new_dead;
        if (dead == 0)
                return false;
        /* in 128 bits: the products of byte counts and percents cannot overflow */
        return (unsigned __int128)dead * 100 > (unsigned __int128)c->chain_bytes * waste_max;
}
