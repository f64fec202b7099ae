#include <string.h>
#include <sys/stat.h>

#include "snapshot/entry.h"

static inline unsigned char order_byte(unsigned char c)
{
        /* '/' sorts below every byte a name can hold (NUL cannot appear), so a parent's whole subtree comes
         * before a sibling whose name extends the parent's ("a/x" < "a-b"), as in a sorted depth-first walk.
         */
        return c == '/' ? 0 : c;
}

int snap_path_cmp(const char *a, size_t a_len, const char *b, size_t b_len)
{
        size_t n = a_len < b_len ? a_len : b_len;
        for (size_t i = 0; i < n; i++) {
                unsigned char x = order_byte((unsigned char)a[i]), y = order_byte((unsigned char)b[i]);
                if (x != y)
                        return x < y ? -1 : 1;
        }
        return a_len < b_len ? -1 : a_len > b_len ? 1 : 0;
}

bool snap_path_within(const char *path, size_t path_len, const char *prefix, size_t prefix_len)
{
        if (path_len < prefix_len || memcmp(path, prefix, prefix_len) != 0)
                return false;
        return path_len == prefix_len || path[prefix_len] == '/';
}

const char *snap_path_basename(const char *path)
{
        const char *s = strrchr(path, '/');
        return s ? s + 1 : path;
}

bool snap_entry_changed(const SnapEntry *a, const SnapEntry *b)
{
        if (a->mode != b->mode || a->uid != b->uid || a->gid != b->gid || a->nlink != b->nlink)
                return true;
        if (a->mtime_sec != b->mtime_sec || a->mtime_nsec != b->mtime_nsec)
                return true;
        if (a->ctime_sec != b->ctime_sec || a->ctime_nsec != b->ctime_nsec)
                return true;
        if (a->ino != b->ino)
                return true;
        if (S_ISDIR(a->mode))
                return false; /* a directory's size says nothing the other fields don't */
        if (a->size != b->size || a->rdev != b->rdev)
                return true;
        if (S_ISLNK(a->mode))
                return a->link_len != b->link_len || memcmp(a->link, b->link, a->link_len) != 0;
        return false;
}
