#!/bin/bash
# shellcheck disable=SC2016  # the mutations are eval-ed later, single quotes on purpose
# Self-test of the integration harness (no nbsnap needed): registry up/down, base image pushed and pullable,
# blobs are clean gzip, overlay notebook mount/umount, treecmp on equal and on deliberately different trees.
#   sudo bash tests/lib/selftest.sh
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$LIB/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$LIB/notebook.sh"

need_root
need_cmd umoci skopeo curl setfattr getfattr setcap mkfifo mknod gzip tar "$PYTHON"
scratch_init nbsnap-selftest

step "treecmp: equal copies"
T=$SCRATCH/tc
mkdir -p "$T/a"
(
    cd "$T/a"
    mkdir -p d/e "sp ace" "$(printf 'nl\nname')" "$(printf '\xff\xfe')"
    echo hello >d/f
    echo data >"$(printf '\xff\xfe')/x"
    ln d/f d/hard
    ln -s d/f sym
    mkfifo fifo
    mknod null c 1 3
    setfattr -n user.k -v v d/f
    truncate -s 10M sparse
    printf 'end' >>sparse
    chmod 4755 d/f
    chmod 1777 d/e
    "$PYTHON" - <<'EOF'
import os
# a path of ~3950 bytes (copy_tree cannot go past PATH_MAX), made with directory fds
fd = os.open(".", os.O_RDONLY)
for i in range(39):
    n = "L%02d" % i + "x" * 96
    os.mkdir(n, dir_fd=fd)
    nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = nfd
f = os.open("deep-file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
os.write(f, b"deep")
os.close(f)
os.close(fd)
EOF
)
copy_tree() { # GNU tar copes with paths over PATH_MAX, cp -a does not
    mkdir -p "$2"
    tar -C "$1" --xattrs --xattrs-include='*' --numeric-owner -cf - . 2>"$SCRATCH/tar.err" |
        tar -C "$2" --xattrs --xattrs-include='*' --numeric-owner -xpf - 2>>"$SCRATCH/tar.err" ||
        { head -c 2000 "$SCRATCH/tar.err" >&2; fail "copy_tree $1 $2 failed"; }
}
copy_tree "$T/a" "$T/b"
"$PYTHON" "$LIB/treecmp.py" "$T/a" "$T/b" || fail "treecmp reports differences between two cp -a copies"

step "treecmp: each deliberate difference is found"
expect_diff() {
    # expect_diff "what" 'mutation run in $T/b' PATTERN
    local what=$1 mutation=$2 pattern=$3 out rc=0
    rm -rf "$T/b"
    copy_tree "$T/a" "$T/b"
    (cd "$T/b" && eval "$mutation")
    out=$("$PYTHON" "$LIB/treecmp.py" "$T/a" "$T/b" 2>&1) || rc=$?
    if [[ $rc -ne 1 ]] || ! grep -q -- "$pattern" <<<"$out"; then
        printf '%s\n' "$out" >&2
        fail "treecmp did not report '$pattern' for: $what (rc=$rc)"
    fi
    note "found: $what"
}
expect_diff "content" 'echo x >>d/f' 'sha256'
expect_diff "mode" 'chmod 0755 d/f' 'mode: A=4755 B=0755'
expect_diff "sticky" 'chmod 0777 d/e' 'mode: A=1777 B=0777'
expect_diff "uid" 'chown 1000 d/f' 'uid: A=0 B=1000'
expect_diff "gid" 'chgrp 100 d/f' 'gid: A=0 B=100'
expect_diff "mtime" 'touch -d 2001-01-01 d/f' 'mtime'
expect_diff "dir mtime" 'touch -d 2001-01-01 d' '/d: mtime'
expect_diff "xattr" 'setfattr -n user.k -v w d/f' 'xattrs'
expect_diff "xattr removed" 'setfattr -x user.k d/f' 'xattrs'
expect_diff "capability" 'setcap cap_net_raw+ep d/hard' 'security.capability'
expect_diff "symlink target" 'ln -sfn d/hard sym' 'symlink target'
expect_diff "rdev" 'rm null; mknod null c 1 5' 'rdev'
expect_diff "type" 'rm fifo; mkdir fifo' 'fifo: type'
expect_diff "missing" 'rm sym' 'only in A'
expect_diff "extra non-UTF-8" 'echo y >"$(printf "\xff\xfe")/y"' '\\xff\\xfe/y: only in B'
expect_diff "newline name" 'echo z >"$(printf "nl\nname")/z"' 'nl\\nname/z: only in B'
expect_diff "hard link broken" 'cp --remove-destination d/f d/hard.tmp; mv d/hard.tmp d/hard; touch -r d/f d/hard; chmod 4755 d/hard; setfattr -n user.k -v v d/hard' 'hard-link group'
expect_diff "sparse tail" 'printf X | dd of=sparse bs=1 seek=100 conv=notrunc status=none' 'sparse: sha256'
expect_diff "deep path" 'find . -name deep-file -execdir sh -c "echo z >>deep-file" \;' 'deep-file: sha256'

step "treecmp: --ignore"
rm -rf "$T/b"
copy_tree "$T/a" "$T/b"
echo extra >"$T/b/d/e/extra"
mkdir -p "$T/b/sp ace/inner"
"$PYTHON" "$LIB/treecmp.py" --ignore /d/e --ignore "/sp ace" "$T/a" "$T/b" || fail "treecmp --ignore did not ignore /d/e and '/sp ace'"

step "registry + base image"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
[[ $(manifest_status nbsnap-test/base v1) == 200 ]] || fail "base image manifest not found in the registry"
[[ $(manifest_status nbsnap-test/base nope) == 404 ]] || fail "HEAD of a missing tag is not 404"
pull_image nbsnap-test/base:v1 "$SCRATCH/pull"
"$PYTHON" "$LIB/treecmp.py" "$BASE_ROOTFS" "$SCRATCH/pull/bundle/rootfs" ||
    fail "pulled base image differs from DIR/base-rootfs"
mapfile -t layers < <(skopeo inspect --tls-verify=false --raw "docker://$REGISTRY_HOST/nbsnap-test/base:v1" | "$PYTHON" -c 'import json,sys; [print(l["digest"]) for l in json.load(sys.stdin)["layers"]]')
[[ ${#layers[@]} -eq 2 ]] || fail "base image has ${#layers[@]} layers, expected 2"
check_blob_gzip nbsnap-test/base "${layers[@]}" || fail "base layer blobs are not clean gzip"
base_image_push "$SCRATCH/base" nbsnap-test/base-docker:v1 v2s2
mt=$(skopeo inspect --tls-verify=false --raw "docker://$REGISTRY_HOST/nbsnap-test/base-docker:v1" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["mediaType"])')
[[ $mt == application/vnd.docker.distribution.manifest.v2+json ]] || fail "v2s2 push gave mediaType $mt"

step "overlay notebook"
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
grep -q 'notebook /etc/hosts' "$NB_MERGED/etc/hosts" || fail "/etc/hosts bind mount not visible"
[[ -e $NB_MERGED/home/ma-user/work/README-work-volume ]] || fail "work volume not visible"
echo new >"$NB_MERGED/opt/t/new-file"
[[ -e $NB_UPPER/opt/t/new-file ]] || fail "write in merged did not land in upper"
echo w >"$NB_MERGED/home/ma-user/work/w"
[[ -e $NB_WORKVOL/w && ! -e $NB_UPPER/home/ma-user/work/w ]] || fail "work volume write went to the overlay"
"$PYTHON" "$LIB/treecmp.py" --ignore /opt/t --ignore /home/ma-user/work --ignore /etc/hosts --no-dir-mtime "$BASE_ROOTFS" "$NB_MERGED" ||
    fail "merged view differs from the lower dir"
notebook_umount "$SCRATCH/nb"
[[ -z $(_mounts_below "$SCRATCH/nb") ]] || fail "mounts left below $SCRATCH/nb after notebook_umount"
registry_stop
curl -sf -o /dev/null "$REGISTRY_URL/v2/" && fail "registry still answers after registry_stop"
note "harness self-test passed"
