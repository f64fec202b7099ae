#!/usr/bin/env python3
"""Inspect an image layer blob (tar, tar+gzip or tar+zstd-less: gzip or plain) with the stdlib.

usage:
  layerinfo.py list BLOB     one line per entry, tab-separated:
                             KIND  NAME  LINKNAME  SIZE  MODE  UID:GID  MTIME  PAXKEYS  UNAME:GNAME
                             KIND: f file, d dir, l symlink, h hard link, c char dev, b block dev, p fifo,
                                   w whiteout (.wh.NAME; NAME is the whole entry name), o opaque marker,
                                   S GNU sparse, ? other
                             NAME/LINKNAME: normalised (no leading ./ or /, no trailing /), escaped like
                             treecmp.py (printable ASCII as is, \\n, \\\\, other bytes \\xNN)
                             PAXKEYS: comma-separated pax header keys other than path/linkpath/size/uid/gid/
                             mtime/uname/gname (e.g. SCHILY.xattr.user.x); '-' when none
  layerinfo.py check BLOB [--list OUT]
                             (--list OUT also writes the listing to OUT, in the same single pass)
                             structural rules of an OCI layer; prints each violation, exit 1 if any:
                             no duplicate names; a directory entry before its children when both are present;
                             a hard link's target is an earlier entry of the same tar; no GNU sparse entries or
                             GNU.sparse pax keys; no overlay/selinux xattrs; whiteouts are empty regular files
                             and nothing else in the layer lies below a whited-out path; no device/fifo/file
                             below a non-directory entry of the same layer.
                             Warnings (not failures): non-empty uname/gname, fractional mtimes.
"""

import subprocess
import sys
import tarfile

BASIC_PAX = {"path", "linkpath", "size", "uid", "gid", "mtime", "uname", "gname", "atime", "ctime", "hdrcharset"}


def esc(b):
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif c == 0x0A:
            out.append("\\n")
        elif c == 0x09:
            out.append("\\t")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return "".join(out)


def norm(name):
    b = name.encode("utf-8", "surrogateescape")
    while b.startswith(b"./"):
        b = b[2:]
    b = b.lstrip(b"/")
    b = b.rstrip(b"/")
    return b"" if b == b"." else b


def kind(m, base):
    if base == b".wh..wh..opq":
        return "o"
    if base.startswith(b".wh."):
        return "w"
    if m.type == tarfile.GNUTYPE_SPARSE or m.sparse is not None:
        return "S"
    if m.isreg():
        return "f"
    if m.isdir():
        return "d"
    if m.issym():
        return "l"
    if m.islnk():
        return "h"
    if m.ischr():
        return "c"
    if m.isblk():
        return "b"
    if m.isfifo():
        return "p"
    return "?"


def members(path):
    """Stream the entries; gzip is inflated by gzip(1) (Python's stream mode skips data 10 KB at a time, far
    too slow for multi-GB layers)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    proc = None
    if magic == b"\x1f\x8b":
        proc = subprocess.Popen(["gzip", "-dc", path], stdout=subprocess.PIPE)
        fileobj = proc.stdout
    else:
        fileobj = open(path, "rb")
    try:
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=1 << 20, encoding="utf-8",
                          errors="surrogateescape") as tf:
            for m in tf:
                yield m
        if proc is not None:
            fileobj.read()  # drain, so that gzip's status reflects the whole stream
    finally:
        fileobj.close()
        if proc is not None and proc.wait() != 0:
            raise OSError("gzip -dc %s failed with status %d" % (path, proc.returncode))


def list_line(m):
    n = norm(m.name)
    base = n.rsplit(b"/", 1)[-1]
    link = norm(m.linkname) if m.islnk() else m.linkname.encode("utf-8", "surrogateescape")
    keys = sorted(k for k in m.pax_headers if k not in BASIC_PAX)
    line = "\t".join([
        kind(m, base), esc(n), esc(link) if m.linkname else "-", str(m.size), "%04o" % m.mode,
        "%d:%d" % (m.uid, m.gid), repr(m.mtime), ",".join(keys) or "-", "%s:%s" % (m.uname, m.gname)])
    return line.encode("utf-8", "backslashreplace") + b"\n"


def cmd_list(path):
    out = sys.stdout.buffer
    for m in members(path):
        out.write(list_line(m))
    return 0


def cmd_check(path, list_out=None):
    errs, warns = [], []
    lst = open(list_out, "wb") if list_out else None
    seen = {}
    whiteouts = []
    nondirs = set()
    order = []
    for i, m in enumerate(members(path)):
        if lst:
            lst.write(list_line(m))
        n = norm(m.name)
        base = n.rsplit(b"/", 1)[-1]
        parent = n.rsplit(b"/", 1)[0] if b"/" in n else b""
        k = kind(m, base)
        order.append((n, k))
        if n in seen:
            errs.append("duplicate entry %s (entries %d and %d)" % (esc(n), seen[n][0], i))
        if parent and parent in seen and seen[parent][1] != "d":
            errs.append("%s is below %s, which is a %s entry in this layer" % (esc(n), esc(parent), seen[parent][1]))
        seen[n] = (i, k)
        if k == "S" or any(key.startswith("GNU.sparse") for key in m.pax_headers) or b"GNUSparseFile" in n:
            errs.append("GNU sparse entry %s" % esc(n))
        for key in m.pax_headers:
            if key.startswith(("SCHILY.xattr.trusted.", "SCHILY.xattr.user.overlay.", "SCHILY.xattr.security.selinux")):
                errs.append("%s carries xattr %s" % (esc(n), key))
            if key.startswith("LIBARCHIVE.xattr."):
                warns.append("%s carries %s (Go readers only read SCHILY.xattr.*)" % (esc(n), key))
        if k in ("w", "o"):
            if not m.isreg() or m.size != 0:
                errs.append("whiteout %s is not an empty regular file (type %r size %d)" % (esc(n), m.type, m.size))
            if k == "w":
                whiteouts.append((parent + b"/" if parent else b"") + base[4:])
        if k == "h":
            t = norm(m.linkname)
            if t not in seen or seen[t][0] >= i:
                errs.append("hard link %s -> %s: target is not an earlier entry of this layer" % (esc(n), esc(t)))
        if k != "d":
            nondirs.add(n)
        if m.uname or m.gname:
            warns.append("%s has uname/gname %r/%r (expected empty)" % (esc(n), m.uname, m.gname))
        if "mtime" in m.pax_headers and "." in m.pax_headers["mtime"]:
            warns.append("%s has a fractional mtime %s" % (esc(n), m.pax_headers["mtime"]))
    # parents before children
    for n, (i, k) in seen.items():
        p = n
        while b"/" in p:
            p = p.rsplit(b"/", 1)[0]
            if p in seen and seen[p][0] > i:
                errs.append("parent %s comes after its child %s" % (esc(p), esc(n)))
    for w in whiteouts:
        for n, _ in order:
            if n.startswith(w + b"/"):
                errs.append("%s lies below the whited-out path %s" % (esc(n), esc(w)))
    if lst:
        lst.close()
    for w in warns[:50]:
        print("warning: " + w)
    for e in errs:
        print("error: " + e)
    print("layerinfo: %d entries, %d error(s), %d warning(s)" % (len(order), len(errs), len(warns)), file=sys.stderr)
    return 1 if errs else 0


def main():
    a = sys.argv[1:]
    if not (len(a) == 2 and a[0] in ("list", "check") or len(a) == 4 and a[0] == "check" and a[2] == "--list"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return cmd_list(a[1]) if a[0] == "list" else cmd_check(a[1], a[3] if len(a) == 4 else None)
    except (tarfile.TarError, OSError, EOFError) as ex:
        print("layerinfo: cannot read %s: %s" % (a[1], ex), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
