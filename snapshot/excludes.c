#include <libmount.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot/entry.h"
#include "snapshot/excludes.h"

struct SnapExcludes {
        char **paths; /* relative, kept sorted by strcmp, unique */
        size_t n, allocated;
};

int snap_excludes_new(SnapExcludes **ret, NbError *e)
{
        SnapExcludes *x = calloc(1, sizeof(*x));
        if (!x)
                return nb_error_oom(e);
        *ret = x;
        return 0;
}

SnapExcludes *snap_excludes_free(SnapExcludes *x)
{
        if (!x)
                return NULL;
        for (size_t i = 0; i < x->n; i++)
                free(x->paths[i]);
        free(x->paths);
        free(x);
        return NULL;
}

static bool find(const SnapExcludes *x, const char *path, size_t *ret_pos)
{
        size_t lo = 0, hi = x->n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(x->paths[mid], path);
                if (c == 0) {
                        *ret_pos = mid;
                        return true;
                }
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *ret_pos = lo;
        return false;
}

/* Inserts a normalised relative path, keeping the array sorted. "" (the root itself) is refused. */
static int insert(SnapExcludes *x, const char *rel, NbError *e)
{
        size_t pos;
        if (rel[0] == '\0')
                return nb_error_set(e, -EINVAL, "refusing to exclude the whole root");
        if (find(x, rel, &pos))
                return 0;
        if (x->n >= SNAP_EXCLUDES_MAX)
                return nb_error_set(e, -E2BIG, "too many excluded paths (limit %u)", SNAP_EXCLUDES_MAX);
        if (x->n == x->allocated) {
                size_t na = x->allocated ? x->allocated * 2 : 16;
                char **np = reallocarray(x->paths, na, sizeof(char *));
                if (!np)
                        return nb_error_oom(e);
                x->paths = np;
                x->allocated = na;
        }
        char *copy = strdup(rel);
        if (!copy)
                return nb_error_oom(e);
        memmove(x->paths + pos + 1, x->paths + pos, (x->n - pos) * sizeof(char *));
        x->paths[pos] = copy;
        x->n++;
        return 1;
}

/* "/a//b/./c/" -> "a/b/c". Refuses ".." so an exclude can never name something outside the root. */
static int normalise(const char *in, char **ret, NbError *e)
{
        size_t len = strlen(in);
        if (len == 0 || in[0] != '/')
                return nb_error_set(e, -EINVAL,
                                    "exclude path '%s' must be absolute (as seen in the container)", in);
        if (len >= SNAP_PATH_MAX)
                return nb_error_set(e, -ENAMETOOLONG, "exclude path is longer than %u bytes", SNAP_PATH_MAX);
        _cleanup_free_ char *out = malloc(len + 1);
        if (!out)
                return nb_error_oom(e);
        size_t o = 0;
        for (const char *p = in; *p;) {
                while (*p == '/')
                        p++;
                const char *end = strchrnul(p, '/');
                size_t n = (size_t)(end - p);
                if (n == 2 && p[0] == '.' && p[1] == '.')
                        return nb_error_set(e, -EINVAL, "exclude path '%s' must not contain '..'", in);
                if (n > 0 && !(n == 1 && p[0] == '.')) {
                        if (o > 0)
                                out[o++] = '/';
                        memcpy(out + o, p, n);
                        o += n;
                }
                p = end;
        }
        out[o] = '\0';
        *ret = TAKE_PTR(out);
        return 0;
}

int snap_excludes_add(SnapExcludes *x, const char *container_path, NbError *e)
{
        _cleanup_free_ char *rel = NULL;
        int r = normalise(container_path, &rel, e);
        if (r < 0)
                return r;
        if (rel[0] == '\0')
                return nb_error_set(e, -EINVAL, "exclude path '%s' names the whole root", container_path);
        return insert(x, rel, e);
}

/* host path inside root -> relative path; NULL when outside or equal. */
static const char *relative_to(const char *root, const char *path)
{
        size_t n = strlen(root);
        if (n == 1 && root[0] == '/')
                return path[0] == '/' && path[1] ? path + 1 : NULL;
        if (strncmp(path, root, n) != 0 || path[n] != '/' || path[n + 1] == '\0')
                return NULL;
        return path + n + 1;
}

int snap_excludes_add_mounts(SnapExcludes *x, const char *root, const char *mountinfo, NbError *e)
{
        struct libmnt_table *tb = mnt_new_table_from_file(mountinfo ? mountinfo : "/proc/self/mountinfo");
        if (!tb)
                return nb_error_set(e, -errno ?: -EIO, "cannot read the mount table %s",
                                    mountinfo ? mountinfo : "/proc/self/mountinfo");
        struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
        if (!it) {
                mnt_unref_table(tb);
                return nb_error_oom(e);
        }
        struct libmnt_fs *fs;
        int added = 0, r = 0;
        while (mnt_table_next_fs(tb, it, &fs) == 0) {
                const char *target = mnt_fs_get_target(fs);
                const char *rel = target ? relative_to(root, target) : NULL;
                if (!rel)
                        continue;
                _cleanup_free_ char *norm = NULL;
                _cleanup_free_ char *abs = NULL;
                if (asprintf(&abs, "/%s", rel) < 0) {
                        r = nb_error_oom(e);
                        break;
                }
                r = normalise(abs, &norm, e);
                if (r < 0)
                        break;
                r = insert(x, norm, e);
                if (r < 0)
                        break;
                added += r;
        }
        mnt_free_iter(it);
        mnt_unref_table(tb);
        return r < 0 ? r : added;
}

int snap_excludes_add_host_path(SnapExcludes *x, const char *root, const char *host_path, NbError *e)
{
        char resolved[PATH_MAX];
        if (!realpath(host_path, resolved)) {
                /* not there yet: resolve its parent, keep its name */
                _cleanup_free_ char *copy = strdup(host_path);
                if (!copy)
                        return nb_error_oom(e);
                char *slash = strrchr(copy, '/');
                if (!slash)
                        return 0;
                *slash = '\0';
                char parent[PATH_MAX];
                if (!realpath(copy[0] ? copy : "/", parent))
                        return 0;
                if ((size_t)snprintf(resolved, sizeof(resolved), "%s/%s", strcmp(parent, "/") ? parent : "",
                                     slash + 1) >= sizeof(resolved))
                        return 0;
        }
        const char *rel = relative_to(root, resolved);
        if (!rel)
                return 0;
        _cleanup_free_ char *abs = NULL, *norm = NULL;
        if (asprintf(&abs, "/%s", rel) < 0)
                return nb_error_oom(e);
        int r = normalise(abs, &norm, e);
        if (r < 0)
                return r;
        r = insert(x, norm, e);
        return r < 0 ? r : 1;
}

bool snap_excludes_match(const SnapExcludes *x, const char *path)
{
        size_t pos;
        return x && x->n > 0 && find(x, path, &pos);
}

bool snap_excludes_covers(const SnapExcludes *x, const char *path, size_t path_len)
{
        if (!x || x->n == 0)
                return false;
        for (size_t i = 0; i < x->n; i++)
                if (snap_path_within(path, path_len, x->paths[i], strlen(x->paths[i])))
                        return true;
        return false;
}

size_t snap_excludes_count(const SnapExcludes *x)
{
        return x ? x->n : 0;
}

const char *snap_excludes_get(const SnapExcludes *x, size_t i)
{
        return x && i < x->n ? x->paths[i] : NULL;
}
