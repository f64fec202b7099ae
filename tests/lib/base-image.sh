# shellcheck shell=bash
# Build a small but real two-layer base image from files on this machine (no network) and push it to the
# test registry.
#
#   base_image_build DIR REPO:TAG [FORMAT]
#       DIR/oci          OCI layout (tag "base"), built with umoci
#       DIR/bundle       the umoci bundle used to build it
#       DIR/base-rootfs  `umoci unpack` of the final image (the overlay lower dir of a "notebook")
#       pushes to $REGISTRY_HOST/REPO:TAG with skopeo; FORMAT: oci (default) or v2s2 (Docker schema2).
#       exports BASE_ROOTFS, BASE_REF (REPO:TAG), BASE_REPO, BASE_TAG, BASE_OCI (DIR/oci:base).
#   base_image_push DIR REPO:TAG [FORMAT]   push an already built DIR/oci:base under another name/format.
#   base_image_build_deep DIR REPO:TAG N [FORMAT]
#       an image of N layers (6 <= N; 40 in base-deep.sh, 130 in a second or two more): layer 1 as above, then
#       tiny layers, the top four with whiteouts, an opaque directory, hard links ... (table above the function).
#       Same DIR layout and exports as base_image_build, plus BASE_LAYERS=N.
#   base_image_build_python DIR REPO:TAG [FORMAT]
#       the same image with a working python in layer 1 as well (see _base_python): 8 MB more (3 MB gzipped),
#       nearly all of it the interpreter. Also needs chroot and /usr/bin/python3.11 (Debian 12's python3).
#
# Needs root (umoci unpack/repack keep ownership, mknod), umoci, skopeo, setfattr, setcap.
#
# What the base contains (the integration tests rely on these paths):
#   /bin -> usr/bin, /lib -> usr/lib, /lib64 -> usr/lib64 (merged-/usr symlinks), dash as /usr/bin/sh, ls, cat,
#   env, id, true, their libraries; /etc/{passwd,group,os-release,hosts,hostname,motd,environment};
#   /usr/lib/python3.11: 300+ small files; /home/ma-user (1000:100) with dotfiles;
#   /opt/t/...: the fixtures the tests change (see _base_fixtures below).
# The python variant (base_image_build_python) adds, apart from all that: /usr/local/bin/python3.11 (Debian's
#   /usr/bin/python3.11), /usr/local/bin/python3 -> python3.11, their libraries, and the part of Debian's stdlib
#   it needs to start and import pure-python packages from the user site, in /usr/local/lib/python3.11 (its own
#   prefix: the fake /usr/lib/python3.11 above is neither used nor changed).

# shellcheck source=tests/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

_base_copy_bin() {
    # _base_copy_bin ROOTFS /path/of/host/binary [name-in-/usr/bin]
    local rootfs=$1 bin=$2 name=${3:-}
    [[ -n $name ]] || name=${bin##*/}
    cp -L --preserve=mode "$bin" "$rootfs/usr/bin/$name"
    _base_copy_libs "$rootfs" "$bin"
}

_base_copy_libs() {
    # _base_copy_libs ROOTFS /path/of/host/binary: the shared libraries it needs, at their host paths
    local rootfs=$1 bin=$2 lib
    while read -r lib; do
        [[ -n $lib ]] || continue
        mkdir -p "$rootfs$(dirname "$lib")"
        [[ -e $rootfs$lib ]] || cp -L --preserve=mode "$lib" "$rootfs$lib"
    done < <(ldd "$bin" 2>/dev/null | sed -nE 's@.*=> (/[^ ]+) .*@\1@p; s@^[[:space:]]*(/[^ ]+) \(.*@\1@p')
}

_base_userland() {
    local rootfs=$1 d
    mkdir -p "$rootfs"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,var/lib,var/log,var/tmp,root,home,opt,srv,proc,sys,dev,run}
    ln -sfn usr/bin "$rootfs/bin"
    ln -sfn usr/sbin "$rootfs/sbin"
    ln -sfn usr/lib "$rootfs/lib"
    ln -sfn usr/lib64 "$rootfs/lib64"
    mkdir -p "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
    chmod 0700 "$rootfs/root"
    _base_copy_bin "$rootfs" /bin/dash sh
    _base_copy_bin "$rootfs" /bin/dash dash
    for d in ls cat env id true; do
        _base_copy_bin "$rootfs" "/usr/bin/$d"
    done
    cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
ma-user:x:1000:100::/home/ma-user:/bin/sh
EOF
    cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
users:x:100:ma-user
nogroup:x:65534:
EOF
    cat >"$rootfs/etc/os-release" <<'EOF'
PRETTY_NAME="nbsnap test base (Debian GNU/Linux 12-like)"
NAME="nbsnap-test"
VERSION_ID="12"
ID=debian
EOF
    printf '127.0.0.1\tlocalhost\n# base image /etc/hosts\n' >"$rootfs/etc/hosts"
    echo base-host >"$rootfs/etc/hostname"
    echo 'Welcome to the nbsnap test base image.' >"$rootfs/etc/motd"
    echo 'PATH="/usr/local/bin:/usr/bin:/bin"' >"$rootfs/etc/environment"
    chmod 0644 "$rootfs"/etc/*

    # A python3-like stdlib tree: 20 packages x 16 files.
    local py=$rootfs/usr/lib/python3.11 p m
    for p in $(seq -w 1 20); do
        mkdir -p "$py/pkg$p/__pycache__"
        echo "# package $p" >"$py/pkg$p/__init__.py"
        for m in $(seq -w 1 15); do
            printf 'def f%s():\n    return %s\n' "$m" "$p$m" >"$py/pkg$p/mod$m.py"
        done
        head -c 100 /dev/zero | tr '\0' 'c' >"$py/pkg$p/__pycache__/__init__.cpython-311.pyc"
    done
    echo 'import os' >"$py/site.py"
    mkdir -p "$py/site-packages"

    mkdir -p "$rootfs/home/ma-user"
    printf 'export PS1="$ "\n' >"$rootfs/home/ma-user/.bashrc"
    printf '. ~/.bashrc\n' >"$rootfs/home/ma-user/.profile"
    chown -R 1000:100 "$rootfs/home/ma-user"
    chmod 0750 "$rootfs/home/ma-user"
}

# A real python under its own prefix, /usr/local (python finds its stdlib from its executable's path:
# /usr/local/lib/python3.11/os.py). Python 3.11 has the modules it starts with frozen in (site, os, codecs, io,
# abc, stat, posixpath ...); what it still reads from the disk to start and import a pure-python package from
# the user site (`python3.11 -X importtime -c 'import site'`, `-v` in a chroot) is the landmark os.py and the
# encodings package with its aliases and the UTF-8 codec (LANG=C.UTF-8; the C locale is coerced to UTF-8).
# lib-dynload is empty: every C module these need is built in.
_BASE_PYTHON=/usr/bin/python3.11
_BASE_PYTHON_STDLIB=(os.py encodings/__init__.py encodings/aliases.py encodings/utf_8.py)

_base_python() {
    local rootfs=$1 stdlib=/usr/lib/python3.11 f
    local prefix=$rootfs/usr/local
    [[ -x $_BASE_PYTHON ]] || { note "base_image_build_python: $_BASE_PYTHON missing (apt-get install python3)"; return 1; }
    mkdir -p "$prefix/bin" "$prefix/lib/python3.11/lib-dynload" "$prefix/lib/python3.11/encodings"
    cp -L --preserve=mode "$_BASE_PYTHON" "$prefix/bin/python3.11"
    ln -sfn python3.11 "$prefix/bin/python3"
    _base_copy_libs "$rootfs" "$_BASE_PYTHON"
    for f in "${_BASE_PYTHON_STDLIB[@]}"; do
        cp --preserve=mode "$stdlib/$f" "$prefix/lib/python3.11/$f" || { note "base_image_build_python: no $stdlib/$f"; return 1; }
    done
    # it must start from that alone (-B: no __pycache__ written into the image)
    chroot "$rootfs" /usr/local/bin/python3 -B -c 'import site, sys; assert sys.prefix == "/usr/local", sys.prefix' ||
        { note "base_image_build_python: the python copied into $rootfs does not start"; return 1; }
}

# The fixtures the tests change, all under /opt/t (layer 1).
_base_fixtures() {
    local t=$1/opt/t
    mkdir -p "$t"
    # contents to modify
    echo 'original content' >"$t/modify.txt"
    head -c 65536 /dev/urandom >"$t/modify.bin"
    # metadata-only changes
    echo chmod >"$t/chmod-me"
    echo chown >"$t/chown-me"
    echo touch >"$t/touch-me"
    chmod 0644 "$t/chmod-me" "$t/chown-me" "$t/touch-me"
    # deletions
    echo 'delete me' >"$t/delete-file.txt"
    mkdir -p "$t/delete-tree/a/b/c" "$t/delete-tree/empty"
    echo 1 >"$t/delete-tree/one"
    echo 2 >"$t/delete-tree/a/two"
    echo 3 >"$t/delete-tree/a/b/three"
    echo 4 >"$t/delete-tree/a/b/c/four"
    ln -s ../one "$t/delete-tree/a/link-to-one"
    # deleted and recreated (opaque)
    mkdir -p "$t/recreate/sub"
    echo old1 >"$t/recreate/old1"
    echo old2 >"$t/recreate/sub/old2"
    echo keep-name >"$t/recreate/same-name"
    # type replacements
    echo 'i am a file' >"$t/file-to-dir"
    mkdir -p "$t/dir-to-file/child/grandchild"
    echo c >"$t/dir-to-file/child/grandchild/c"
    echo 'i am a file' >"$t/file-to-symlink"
    mkdir -p "$t/dir-to-symlink/x"
    echo x >"$t/dir-to-symlink/x/y"
    ln -s modify.txt "$t/symlink-to-file"
    # links
    mkdir -p "$t/links"
    echo 'hard link data' >"$t/links/a"
    ln "$t/links/a" "$t/links/b"
    echo 'base only, linked later' >"$t/links/base-only"
    ln -s a "$t/links/retarget"
    ln -s /etc/passwd "$t/links/abs"
    ln -s does-not-exist "$t/links/dangling"
    # xattrs
    mkdir -p "$t/xattr"
    echo x >"$t/xattr/file"
    setfattr -n user.nbsnap.test -v base-value "$t/xattr/file"
    setfattr -n user.nbsnap.bin -v 0x00ff10 "$t/xattr/file"
    mkdir -p "$t/xattr/dir"
    setfattr -n user.nbsnap.dir -v dir-value "$t/xattr/dir"
    echo change-xattr >"$t/xattr/change-me"
    setfattr -n user.nbsnap.change -v before "$t/xattr/change-me"
    setfattr -n user.nbsnap.remove -v gone-later "$t/xattr/change-me"
    cp /usr/bin/true "$t/xattr/cap-bin"
    setcap cap_net_bind_service+ep "$t/xattr/cap-bin"
    # special modes and files
    mkdir -p "$t/special"
    cp /usr/bin/true "$t/special/setuid-bin"
    chmod 4755 "$t/special/setuid-bin"
    mkdir -p "$t/special/setgid-dir" "$t/special/sticky-dir"
    chmod 2775 "$t/special/setgid-dir"
    chmod 1777 "$t/special/sticky-dir"
    mkfifo "$t/special/fifo"
    mknod "$t/special/null" c 1 3
    mknod "$t/special/loop0" b 7 0
    # odd names in the base, deleted by the tests (whiteouts for them)
    mkdir -p "$t/names"
    echo a >"$t/names/with space"
    echo b >"$t/names/$(printf 'bad\xff\xfe')"
    echo c >"$t/names/$(printf 'x%.0s' $(seq 1 250)).txt"
    echo d >"$t/names/keep"
    # ownership
    mkdir -p "$t/owned"
    echo o >"$t/owned/by-ma-user"
    chown -R 1000:100 "$t/owned"
    # layer-2 targets
    echo 'layer 1 only' >"$t/layer1-removed"
    echo 'layer 1 version' >"$t/layer2-modified"
    # fixed mtimes on the fixtures, so that the tests can tell a "touch" apart
    find "$t" -xdev ! -type l -exec touch -h -d '2024-01-02 03:04:05' {} +
}

# _base_layer1 DIR WHO: DIR (absolute) gets DIR/oci (tag "base") holding layer 1 (userland [+ python] + fixtures),
# built from the umoci bundle DIR/bundle (left there, refreshed: the next repack diffs against layer 1).
# WHO names the caller in the notes.
_base_layer1() {
    local dir=$1 who=$2
    local oci=$dir/oci:base bundle=$dir/bundle
    rm -rf "${dir:?}/oci" "$bundle" "$dir/base-bundle" "$dir/base-rootfs"
    umoci init --layout "$dir/oci" || { note "$who: umoci init failed"; return 1; }
    umoci new --image "$oci" || { note "$who: umoci new failed"; return 1; }
    umoci unpack --image "$oci" "$bundle" >/dev/null || { note "$who: umoci unpack (empty) failed"; return 1; }
    _base_userland "$bundle/rootfs"
    if [[ ${_BASE_WITH_PYTHON:-0} == 1 ]]; then
        _base_python "$bundle/rootfs" || return 1
    fi
    _base_fixtures "$bundle/rootfs"
    umoci repack --refresh-bundle --history.created_by 'base-image.sh: layer 1 (userland + fixtures)' \
        --image "$oci" "$bundle" || { note "$who: umoci repack (layer 1) failed"; return 1; }
}

# _base_finish DIR REF FORMAT WHO: the image config, DIR/base-rootfs (`umoci unpack` of the final image: the
# overlay lower dir), the BASE_* exports, the push.
_base_finish() {
    local dir=$1 ref=$2 format=$3 who=$4
    local oci=$dir/oci:base
    umoci config --image "$oci" \
        --config.env 'PATH=/usr/local/bin:/usr/bin:/bin' --config.env 'LANG=C.UTF-8' --config.env 'NBSNAP_TEST=1' \
        --config.entrypoint /usr/bin/env --config.cmd /bin/sh --config.cmd -l \
        --config.workingdir /home/ma-user --config.user 1000:100 \
        --config.label org.opencontainers.image.title=nbsnap-test-base --config.label 'com.example.spaces=a b c' \
        --config.exposedports 8888/tcp --config.exposedports 22/tcp \
        --config.volume /data \
        --history.created_by 'base-image.sh: config' ||
        { note "$who: umoci config failed"; return 1; }

    # The overlay lower dir: the final image as umoci unpacks it.
    rm -rf "$dir/base-bundle" "$dir/base-rootfs"
    umoci unpack --image "$oci" "$dir/base-bundle" >/dev/null || { note "$who: umoci unpack (final) failed"; return 1; }
    mv "$dir/base-bundle/rootfs" "$dir/base-rootfs"
    BASE_ROOTFS=$dir/base-rootfs
    BASE_OCI=$oci
    export BASE_ROOTFS BASE_OCI
    base_image_push "$dir" "$ref" "$format"
}

base_image_build() {
    local dir=$1 ref=$2 format=${3:-oci}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local oci=$dir/oci:base bundle=$dir/bundle
    _base_layer1 "$dir" base_image_build || return 1

    # Layer 2: a deletion (whiteout in the base), a modification, additions.
    local r=$bundle/rootfs
    rm -f "$r/opt/t/layer1-removed"
    echo 'layer 2 version' >"$r/opt/t/layer2-modified"
    mkdir -p "$r/usr/lib/python3.11/site-packages/layer2pkg"
    echo 'VERSION = "2"' >"$r/usr/lib/python3.11/site-packages/layer2pkg/__init__.py"
    echo 'added in layer 2' >"$r/etc/layer2-file"
    umoci repack --refresh-bundle --history.created_by 'base-image.sh: layer 2 (changes)' \
        --image "$oci" "$bundle" || { note "base_image_build: umoci repack (layer 2) failed"; return 1; }

    _base_finish "$dir" "$ref" "$format" base_image_build
}

base_image_build_python() {
    local _BASE_WITH_PYTHON=1
    base_image_build "$@"
}

base_image_push() {
    local dir=$1 ref=$2 format=${3:-oci} fmtarg=()
    case $format in
    oci) fmtarg=(--format oci) ;;
    v2s2) fmtarg=(--format v2s2) ;;
    *) note "base_image_push: unknown format $format"; return 1 ;;
    esac
    skopeo copy --quiet --dest-tls-verify=false "${fmtarg[@]}" "oci:$dir/oci:base" \
        "docker://${REGISTRY_HOST:?registry not started}/$ref" ||
        { note "base_image_push: skopeo copy to $REGISTRY_HOST/$ref failed"; return 1; }
    BASE_REF=$ref
    BASE_REPO=${ref%:*}
    BASE_TAG=${ref##*:}
    export BASE_REF BASE_REPO BASE_TAG
}

# base_image_build_deep DIR REPO:TAG N [FORMAT]: a DEEP base image, N layers (N >= 6), for the squash of a base's
# top layers: docker refuses images of more than 125 layers, so nbsnap merges the top layers of such a base with
# the container's changes. Everything base_image_build's layer 1 has is there (layer 1 is the same), and:
#
#   layer 1       userland + fixtures (as base_image_build; no layer 2 of base_image_build)
#   layer 2       /opt/deep/layer002.txt ("layer 2"), /opt/deep/gone.txt ("gone"),
#                 /opt/deep/opaque/{old1,old2,sub/old3} ("old1", ...), /opt/deep/modified.txt ("low")
#   layer i       3 <= i <= N-4: /opt/deep/layerNNN.txt ("layer i"; NNN = i on 3 digits), nothing else
#   layer N-3     OPAQUE: /opt/deep/opaque/ (dir), /opt/deep/opaque/.wh..wh..opq, /opt/deep/opaque/new ("new")
#   layer N-2     WHITEOUT: /opt/deep/.wh.gone.txt (gone.txt deleted)
#   layer N-1     /opt/deep/modified.txt ("top"), /home/ma-user/work/ (1000:100, 0755) and
#                 /home/ma-user/work/from-base.txt ("from the base image", 1000:100): under the work volume's
#                 mount point, hidden in a notebook by the volume
#   layer N       /opt/deep/hl/a and /opt/deep/hl/b: one hard-linked file ("hard link"; the tar has a then b as a
#                 link to a), /opt/deep/link -> modified.txt (symlink), /opt/deep/xattr.txt ("xattr") with
#                 user.nbsnap.deep=yes
#   (then the config of base_image_build: an empty_layer history entry, no layer)
# The layers umoci repacks also have the entries of the changed parent directories (opt/deep in N-2 and N,
# home/ma-user in N-1); the raw-added ones (3 .. N-3) have no parent entries, only what is listed.
#
# Final tree (what a runtime shows), for those paths:
#   /opt/deep/layer002.txt .. layerNNN.txt (NNN = N-4)   present
#   /opt/deep/gone.txt                                    absent
#   /opt/deep/opaque/                                     only "new" (old1, old2, sub/ gone)
#   /opt/deep/modified.txt                                "top"
#   /home/ma-user/work/from-base.txt                      "from the base image"
#   /opt/deep/hl/a, /opt/deep/hl/b                        one inode, 2 links, "hard link"
#   /opt/deep/link                                        symlink to modified.txt
#   /opt/deep/xattr.txt                                   "xattr", user.nbsnap.deep=yes
# (file contents above are without their trailing newline; every file has one.)
#
# How: layers 1, 2, N-2, N-1, N are `umoci repack` of a bundle (umoci's own diff: its whiteouts, hard links,
# xattrs). The filler layers (3..N-4) are one-file tars added with `umoci raw add-layer`: 20 ms each where a
# repack --refresh-bundle takes 0.3 s (its diff walks the whole rootfs). Layer N-3 is also a tar of ours added
# with `umoci raw add-layer`, because umoci never writes an opaque marker: for a directory removed and recreated
# it writes a whiteout per old entry (.wh.old1, .wh.sub) next to the new ones. And `umoci repack` bases its new
# layer on the manifest the bundle was unpacked from (umoci.json from_descriptor_path), which would drop the
# raw-added layers: so the image is unpacked again into a fresh bundle after layer N-3, before the repacks of
# N-2 .. N.
base_image_build_deep() {
    local dir=$1 ref=$2 n=${3:-} format=${4:-oci} i
    if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 6)); then
        note "base_image_build_deep: N must be a number >= 6, not '$n'"
        return 1
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local oci=$dir/oci:base bundle=$dir/bundle tars=$dir/deep-tars
    _base_layer1 "$dir" base_image_build_deep || return 1

    local d=$bundle/rootfs/opt/deep
    mkdir -p "$d/opaque/sub"
    echo 'layer 2' >"$d/layer002.txt"
    echo gone >"$d/gone.txt"
    echo old1 >"$d/opaque/old1"
    echo old2 >"$d/opaque/old2"
    echo old3 >"$d/opaque/sub/old3"
    echo low >"$d/modified.txt"
    umoci repack --history.created_by 'base-image.sh: deep layer 2' --image "$oci" "$bundle" ||
        { note "base_image_build_deep: umoci repack (layer 2) failed"; return 1; }

    # the tars of the layers 3 .. N-3, in one python run
    rm -rf "$tars"
    mkdir -p "$tars"
    "$PYTHON" - "$tars" "$n" <<'PY' || { note "base_image_build_deep: cannot write the layer tars"; return 1; }
import io, sys, tarfile, time
out, n = sys.argv[1], int(sys.argv[2])
now = int(time.time())

def entry(t, name, kind=tarfile.REGTYPE, data=b"", mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.size = kind, mode, now, len(data)
    t.addfile(ti, io.BytesIO(data) if data else None)

for i in range(3, n - 3):
    with tarfile.open("%s/layer%03d.tar" % (out, i), "w", format=tarfile.PAX_FORMAT) as t:
        entry(t, "opt/deep/layer%03d.txt" % i, data=b"layer %d\n" % i)
with tarfile.open("%s/opaque.tar" % out, "w", format=tarfile.PAX_FORMAT) as t:
    entry(t, "opt/deep/opaque", tarfile.DIRTYPE, mode=0o755)
    entry(t, "opt/deep/opaque/.wh..wh..opq", mode=0)  # like umoci's whiteouts: empty, mode 0
    entry(t, "opt/deep/opaque/new", data=b"new\n")
PY
    for ((i = 3; i <= n - 4; i++)); do
        umoci raw add-layer --history.created_by "base-image.sh: deep layer $i (filler)" \
            --image "$oci" "$(printf '%s/layer%03d.tar' "$tars" "$i")" >/dev/null ||
            { note "base_image_build_deep: umoci raw add-layer (layer $i) failed"; return 1; }
    done
    umoci raw add-layer --history.created_by "base-image.sh: deep layer $((n - 3)) (opaque /opt/deep/opaque)" \
        --image "$oci" "$tars/opaque.tar" >/dev/null ||
        { note "base_image_build_deep: umoci raw add-layer (layer $((n - 3)), opaque) failed"; return 1; }
    rm -rf "$tars" "$bundle"
    umoci unpack --image "$oci" "$bundle" >/dev/null ||
        { note "base_image_build_deep: umoci unpack (layers 1..$((n - 3))) failed"; return 1; }

    d=$bundle/rootfs/opt/deep
    rm "$d/gone.txt"
    umoci repack --refresh-bundle --history.created_by "base-image.sh: deep layer $((n - 2)) (whiteout gone.txt)" \
        --image "$oci" "$bundle" || { note "base_image_build_deep: umoci repack (layer $((n - 2))) failed"; return 1; }

    echo top >"$d/modified.txt"
    local w=$bundle/rootfs/home/ma-user/work
    mkdir -p "$w"
    echo 'from the base image' >"$w/from-base.txt"
    chown -R 1000:100 "$w"
    chmod 0755 "$w"
    umoci repack --refresh-bundle --history.created_by "base-image.sh: deep layer $((n - 1)) (modified.txt, work file)" \
        --image "$oci" "$bundle" || { note "base_image_build_deep: umoci repack (layer $((n - 1))) failed"; return 1; }

    mkdir -p "$d/hl"
    echo 'hard link' >"$d/hl/a"
    ln "$d/hl/a" "$d/hl/b"
    ln -s modified.txt "$d/link"
    echo xattr >"$d/xattr.txt"
    setfattr -n user.nbsnap.deep -v yes "$d/xattr.txt"
    umoci repack --history.created_by "base-image.sh: deep layer $n (hard links, symlink, xattr)" \
        --image "$oci" "$bundle" || { note "base_image_build_deep: umoci repack (layer $n) failed"; return 1; }

    _base_finish "$dir" "$ref" "$format" base_image_build_deep || return 1
    BASE_LAYERS=$n
    export BASE_LAYERS
}
