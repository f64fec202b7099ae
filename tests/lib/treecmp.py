#!/usr/bin/env python3
"""Compare two directory trees entry by entry (stdlib only).

usage: treecmp.py [options] TREE_A TREE_B

Compared for every path (paths are bytes: non-UTF-8 names and newlines are fine; walked with directory file
descriptors, so paths longer than PATH_MAX are fine too):
  - presence and file type (reg, dir, symlink, fifo, chr, blk, sock)
  - mode including setuid/setgid/sticky, uid, gid
  - regular files: size and SHA-256 of the content; symlinks: target; devices: rdev (major, minor)
  - xattrs: user.* (except user.overlay.*) and security.capability (trusted.*, security.selinux and the other
    security.* / system.* attributes are not compared)
  - hard-link groups: the set of paths sharing an inode within each tree must be the same in both trees
  - mtime in whole seconds (tar stores whole seconds) for non-directories; for directories too unless
    --no-dir-mtime (a directory's mtime is only reproducible when the extractor restores it after writing the
    children; umoci does, so it is compared by default); the mtime of the tree roots is never compared.

Options:
  --ignore PATH      container path (e.g. /home/ma-user/work) to leave out in both trees, with its subtree;
                     repeatable. Check such paths separately (e.g. that they are absent from an image).
  --ignore-mtime PATH  do not compare the mtime of this one path (e.g. a directory changed before the baseline
                     by the container runtime, like the parent of a mount point); repeatable
  --no-dir-mtime     do not compare directory mtimes
  --no-mtime         do not compare any mtime
  --max-diffs N      stop printing after N differences (default 200; all are still counted)
  --quiet            print only the summary line

Prints each difference as `PATH: what: A=... B=...` and exits 1 if there is any, 0 if the trees are equal,
2 on usage or I/O errors.
"""

import argparse
import hashlib
import os
import stat
import sys

XATTR_KEEP_PREFIXES = (b"user.",)
XATTR_KEEP_EXACT = (b"security.capability",)
XATTR_DROP_PREFIXES = (b"user.overlay.", b"trusted.", b"security.selinux")


def esc(b):
    """Printable rendering of a bytes path: printable ASCII as is, the rest as \\xNN (newline as \\n)."""
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif c == 0x0A:
            out.append("\\n")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    s = "".join(out)
    if len(s) > 400:
        s = s[:180] + "...(%d bytes)..." % len(b) + s[-180:]
    return s


def ftype(m):
    if stat.S_ISREG(m):
        return "reg"
    if stat.S_ISDIR(m):
        return "dir"
    if stat.S_ISLNK(m):
        return "symlink"
    if stat.S_ISFIFO(m):
        return "fifo"
    if stat.S_ISCHR(m):
        return "chr"
    if stat.S_ISBLK(m):
        return "blk"
    if stat.S_ISSOCK(m):
        return "sock"
    return "unknown"


def keep_xattr(name):
    if any(name.startswith(p) for p in XATTR_DROP_PREFIXES):
        return False
    return name in XATTR_KEEP_EXACT or any(name.startswith(p) for p in XATTR_KEEP_PREFIXES)


class Entry:
    __slots__ = ("type", "mode", "uid", "gid", "size", "sha256", "target", "rdev", "xattrs", "mtime", "ino")


def read_entry(dfd, name, st, errors):
    e = Entry()
    e.type = ftype(st.st_mode)
    e.mode = stat.S_IMODE(st.st_mode)
    e.uid, e.gid = st.st_uid, st.st_gid
    e.size = st.st_size if e.type in ("reg", "symlink") else None
    e.mtime = int(st.st_mtime_ns // 1_000_000_000)
    e.ino = (st.st_dev, st.st_ino)
    e.sha256 = e.target = e.rdev = None
    if e.type == "reg":
        h = hashlib.sha256()
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            try:
                while True:
                    buf = os.read(fd, 1 << 20)
                    if not buf:
                        break
                    h.update(buf)
            finally:
                os.close(fd)
            e.sha256 = h.hexdigest()
        except OSError as ex:
            errors.append("cannot read %s: %s" % (esc(name), ex))
            e.sha256 = "<unreadable>"
    elif e.type == "symlink":
        e.target = os.readlink(name, dir_fd=dfd)
    elif e.type in ("chr", "blk"):
        e.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    # xattrs through /proc/self/fd/N/NAME: short path whatever the depth; l*xattr on the last component.
    proc = b"/proc/self/fd/%d/" % dfd + name
    xa = {}
    if e.type != "sock":
        try:
            for k in os.listxattr(proc, follow_symlinks=False):
                kb = os.fsencode(k)
                if keep_xattr(kb):
                    try:
                        xa[kb] = os.getxattr(proc, k, follow_symlinks=False)
                    except OSError as ex:
                        xa[kb] = ("<error %s>" % ex.strerror).encode()
        except OSError as ex:
            if ex.errno not in (95,):  # EOPNOTSUPP
                errors.append("listxattr %s: %s" % (esc(name), ex))
    e.xattrs = xa
    return e


def walk(root, ignore, errors):
    """Return {relpath(bytes, '/'-prefixed): Entry} for everything under root (root itself is b'/')."""
    entries = {}
    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = os.fstat(rootfd)
        # the root: read through its parent-less fd
        e = Entry()
        e.type, e.mode, e.uid, e.gid = "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        e.size = e.sha256 = e.target = e.rdev = None
        e.mtime = None  # never compared
        e.ino = (st.st_dev, st.st_ino)
        e.xattrs = {}
        entries[b"/"] = e
        _walk_dir(rootfd, b"", ignore, entries, errors)
    finally:
        os.close(rootfd)
    return entries


def _walk_dir(dfd, prefix, ignore, entries, errors):
    try:
        names = sorted(os.fsencode(n) for n in os.listdir(dfd))
    except OSError as ex:
        errors.append("cannot list %s: %s" % (esc(prefix or b"/"), ex))
        return
    for name in names:
        path = prefix + b"/" + name
        if path in ignore:
            continue
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError as ex:
            errors.append("cannot stat %s: %s" % (esc(path), ex))
            continue
        entries[path] = read_entry(dfd, name, st, errors)
        if stat.S_ISDIR(st.st_mode):
            try:
                cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            except OSError as ex:
                errors.append("cannot open dir %s: %s" % (esc(path), ex))
                continue
            try:
                _walk_dir(cfd, path, ignore, entries, errors)
            finally:
                os.close(cfd)


def link_groups(entries):
    by_ino = {}
    for p, e in entries.items():
        if e.type != "dir":
            by_ino.setdefault(e.ino, []).append(p)
    groups = {}
    for paths in by_ino.values():
        g = tuple(sorted(paths))
        for p in paths:
            groups[p] = g
    return groups


def fmt_xattrs(x):
    return "{" + ", ".join("%s=%r" % (k.decode("ascii", "replace"), v) for k, v in sorted(x.items())) + "}"


def compare(a, b, opts):
    diffs = []

    def d(path, what, va, vb):
        diffs.append("%s: %s: A=%s B=%s" % (esc(path), what, va, vb))

    for p in sorted(set(a) | set(b)):
        ea, eb = a.get(p), b.get(p)
        if ea is None:
            d(p, "only in B", "-", eb.type)
            continue
        if eb is None:
            d(p, "only in A", ea.type, "-")
            continue
        if ea.type != eb.type:
            d(p, "type", ea.type, eb.type)
            continue
        if ea.mode != eb.mode:
            d(p, "mode", "%04o" % ea.mode, "%04o" % eb.mode)
        if ea.uid != eb.uid:
            d(p, "uid", ea.uid, eb.uid)
        if ea.gid != eb.gid:
            d(p, "gid", ea.gid, eb.gid)
        if ea.size != eb.size:
            d(p, "size", ea.size, eb.size)
        if ea.sha256 != eb.sha256:
            d(p, "sha256", ea.sha256, eb.sha256)
        if ea.target != eb.target:
            d(p, "symlink target", esc(ea.target or b""), esc(eb.target or b""))
        if ea.rdev != eb.rdev:
            d(p, "rdev", ea.rdev, eb.rdev)
        if ea.xattrs != eb.xattrs:
            d(p, "xattrs", fmt_xattrs(ea.xattrs), fmt_xattrs(eb.xattrs))
        if not opts.no_mtime and p not in opts.ignore_mtime_set and ea.mtime is not None and eb.mtime is not None and ea.mtime != eb.mtime:
            if ea.type != "dir" or not opts.no_dir_mtime:
                d(p, "mtime (s)", ea.mtime, eb.mtime)

    ga, gb = link_groups(a), link_groups(b)
    seen = set()
    for p in sorted(set(ga) & set(gb)):
        if ga[p] != gb[p] and (ga[p], gb[p]) not in seen:
            seen.add((ga[p], gb[p]))
            d(p, "hard-link group", "[" + ", ".join(esc(x) for x in ga[p]) + "]",
              "[" + ", ".join(esc(x) for x in gb[p]) + "]")
    return diffs


def main():
    ap = argparse.ArgumentParser(description="compare two trees entry by entry")
    ap.add_argument("tree_a")
    ap.add_argument("tree_b")
    ap.add_argument("--ignore", action="append", default=[])
    ap.add_argument("--ignore-mtime", action="append", default=[])
    ap.add_argument("--no-dir-mtime", action="store_true")
    ap.add_argument("--no-mtime", action="store_true")
    ap.add_argument("--max-diffs", type=int, default=200)
    ap.add_argument("--quiet", action="store_true")
    opts = ap.parse_args()
    ignore = set()
    for p in opts.ignore:
        pb = os.fsencode(p)
        if not pb.startswith(b"/"):
            pb = b"/" + pb
        ignore.add(pb.rstrip(b"/") or b"/")
    opts.ignore_mtime_set = {(b"/" + os.fsencode(p).lstrip(b"/")).rstrip(b"/") or b"/" for p in opts.ignore_mtime}
    errors = []
    try:
        a = walk(os.fsencode(opts.tree_a), ignore, errors)
        b = walk(os.fsencode(opts.tree_b), ignore, errors)
    except OSError as ex:
        print("treecmp: %s" % ex, file=sys.stderr)
        return 2
    for e in errors:
        print("treecmp: error: %s" % e, file=sys.stderr)
    diffs = compare(a, b, opts)
    if not opts.quiet:
        for line in diffs[: opts.max_diffs]:
            sys.stdout.buffer.write(line.encode("utf-8", "backslashreplace") + b"\n")
        if len(diffs) > opts.max_diffs:
            print("... %d more differences" % (len(diffs) - opts.max_diffs))
    print("treecmp: %d entries in A, %d in B, %d difference(s)%s" % (
        len(a), len(b), len(diffs), "" if not errors else ", %d error(s)" % len(errors)), file=sys.stderr)
    if errors:
        return 2
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
