#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# Images saved by nbsnap run under podman (Debian's podman 4 with runc, as root, with storage of its own: see
# tests/lib/podman.sh). A base image with a real python (base_image_build_python), an overlay notebook on it,
# `nbsnap baseline`; then in the notebook, as ma-user (1000:100), a `pip install --user` of a small pure-python
# package laid out as pip does it (the package, its __pycache__, a .dist-info with INSTALLER, METADATA, RECORD
# ...), a base file edited and one deleted. Each saved image is pulled by podman and run as 1000:100 with
# HOME=/home/ma-user: python3 imports the package from the user site and prints its VALUE, the edit is seen, the
# deleted file is gone (no whiteout shows), base files are still there. Cases: one layer; a change of several MB
# saved with --max-layer-size 1M (at least 2 new layers); an incremental save on the last save (an edit and a
# deletion since). A new case: save it, then call podman_check_image REF
# (and check what only that case has).
#
# Run: ctest -R integration/save-podman   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-podman.sh)
# Needs podman and runc (skipped when missing: scripts/install-deps.sh installs them); fails, with podman's
# reason, when podman is installed but cannot run a container here.
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$LIB/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$LIB/notebook.sh"
# shellcheck source=tests/lib/podman.sh
source "$LIB/podman.sh"

need_root
need_cmd umoci skopeo curl setfattr setcap chroot timeout cmp /usr/bin/python3.11 "$PYTHON"
podman_need
need_nbsnap
scratch_init nbpod

NS=nbsnap-podman
KiB=1024
PKG=snapdemo
PKG_VALUE='saved by nbsnap, run by podman'
SITE=/home/ma-user/.local/lib/python3.11/site-packages
EDITED=/opt/t/modify.txt
EDIT_TEXT='edited in the notebook'
DELETED=/opt/t/delete-file.txt
PODMAN_RUN_OPTS=(--env HOME=/home/ma-user)

# pip_user_install ROOT NAME VERSION VALUE: NAME-VERSION installed under ROOT$SITE as `pip install --user` of a
# pure-python wheel leaves it: NAME/__init__.py, NAME/__pycache__/__init__.cpython-311.pyc, NAME-VERSION.dist-info/
# {INSTALLER,METADATA,RECORD,REQUESTED,WHEEL,top_level.txt} (RECORD sorted, urlsafe-base64 sha256 without
# padding, the .pyc and RECORD itself without hash), directories 0755 and files 0644 (umask 022), owned 1000:100.
pip_user_install() {
    local root=$1 name=$2 version=$3 value=$4
    (umask 022 && /usr/bin/python3.11 - "$root$SITE" "$name" "$version" "$value" <<'EOF'
import base64, hashlib, os, py_compile, sys
site, name, version, value = sys.argv[1:]
info = "%s-%s.dist-info" % (name, version)
os.makedirs(os.path.join(site, name), exist_ok=True)
os.makedirs(os.path.join(site, info), exist_ok=True)
files = {
    name + "/__init__.py": '"""A package pip-installed in a notebook."""\nVALUE = %r\n' % value,
    info + "/INSTALLER": "pip\n",
    info + "/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: nbsnap podman test\n" % (name, version),
    info + "/REQUESTED": "",
    info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: bdist_wheel (0.38.4)\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    info + "/top_level.txt": name + "\n",
}
rows = []
for rel, text in files.items():
    data = text.encode()
    with open(os.path.join(site, rel), "wb") as f:
        f.write(data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rows.append("%s,sha256=%s,%d" % (rel, digest, len(data)))
py_compile.compile(os.path.join(site, name, "__init__.py"), doraise=True)
rows.append(name + "/__pycache__/__init__.cpython-311.pyc,,")
rows.append(info + "/RECORD,,")
with open(os.path.join(site, info, "RECORD"), "w") as f:
    f.write("".join(r + "\n" for r in sorted(rows)))
EOF
    ) || fail "pip_user_install $name: cannot write the package under $root$SITE"
    chown -R 1000:100 "$root/home/ma-user/.local"
}

# in_podman REF CMD...: CMD's output in a container of REF, as ma-user (stderr to the log)
in_podman() {
    local ref=$1
    shift
    podman_image_run "$ref" 1000:100 "$@"
}

# podman_check_image REF: what the notebook changed, as a container of REF run by podman sees it
podman_check_image() {
    local ref=$1 out rc
    # pulled afresh: the tag may have been pushed again since an earlier case
    podman_pull "$ref" || { soft_fail "$ref: podman cannot pull it"; return 0; }
    check "$ref: runs as uid 1000 gid 100 with HOME=/home/ma-user" \
        eval '[[ $(in_podman "$ref" sh -c "id -u; id -g; echo \$HOME" | tr "\n" " ") == "1000 100 /home/ma-user " ]]'
    out=$(in_podman "$ref" python3 -c "import $PKG; print($PKG.VALUE); print($PKG.__file__)") || out="(exit $?) $out"
    note "python3 in $ref: $out"
    check "$ref: python3 imports $PKG from the user site and prints its VALUE" \
        test "$out" = "$PKG_VALUE"$'\n'"$SITE/$PKG/__init__.py"
    check "$ref: the dist-info is there, RECORD as written" \
        eval 'in_podman "$ref" cat "$SITE/$PKG-1.0.dist-info/RECORD" | cmp -s - "$M$SITE/$PKG-1.0.dist-info/RECORD"'
    check "$ref: the package's files are ma-user's" \
        eval '[[ $(in_podman "$ref" ls -ln "$SITE/$PKG/__init__.py" | awk "{ print \$3, \$4 }") == "1000 100" ]]'
    check "$ref: the edit is seen ($EDITED)" eval '[[ $(in_podman "$ref" cat "$EDITED") == "$EDIT_TEXT" ]]'
    rc=0
    out=$(in_podman "$ref" ls "$DELETED" 2>&1) || rc=$?
    check "$ref: the deleted $DELETED is gone (ls exits $rc: $out)" eval '[[ $rc -ne 0 && $rc -lt 125 ]]'
    out=$(in_podman "$ref" ls -a "${DELETED%/*}") || out="(ls failed: $?)"
    check "$ref: ${DELETED%/*} lists neither the deleted file nor a whiteout" \
        eval '[[ $out == *modify.bin* && $out != *"${DELETED##*/}"* && $out != *.wh.* ]]'
    check "$ref: base files unchanged (/etc/motd)" eval '[[ $(in_podman "$ref" cat /etc/motd) == "$(cat "$BASE_ROOTFS/etc/motd")" ]]'
}

# save_tag TAG ARGS...: nbsnap save of the notebook as $NS/$NAME:TAG (must succeed); sets NEW_LAYERS, the number
# of layers on top of the base's
save_tag() {
    local tag=$1
    shift
    run_nbsnap "$SCRATCH/save-$tag" save "${SAVE_ARGS[@]}" --tag "$tag" "$@"
    [[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save --tag $tag $* exited $NBSNAP_RC"
    check "save $tag: status ACTIVE" test "$(json_get "$SCRATCH/save-$tag.out" 'j["status"]')" = ACTIVE
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "$REGISTRY_URL/v2/$NS/$NAME/manifests/$tag" >"$SCRATCH/manifest-$tag.json" || fail "GET manifest $NS/$NAME:$tag failed"
    NEW_LAYERS=$(($(json_get "$SCRATCH/manifest-$tag.json" 'len(j["layers"])') - N_BASE))
    note "$NS/$NAME:$tag: $NEW_LAYERS new layer(s)"
}

step "registry, base image with python, podman"
registry_start "$SCRATCH/registry"
base_image_build_python "$SCRATCH/base" nbsnap-test/base-py:v1
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$REGISTRY_URL/v2/nbsnap-test/base-py/manifests/v1" \
    >"$SCRATCH/base-manifest.json" || fail "GET the base manifest failed"
N_BASE=$(json_get "$SCRATCH/base-manifest.json" 'len(j["layers"])')
podman_init "$SCRATCH/podman" nbsnap-test/base-py:v1

step "the base under podman: python3 runs, $PKG is not there, $DELETED is"
check "base: python3 runs as ma-user with the user site" \
    eval '[[ $(in_podman nbsnap-test/base-py:v1 python3 -c "import site; print(site.USER_SITE)") == "$SITE" ]]'
rc=0
in_podman nbsnap-test/base-py:v1 python3 -c "import $PKG" 2>/dev/null || rc=$?
check "base: import $PKG fails with ImportError (exit $rc)" test "$rc" = 1
check "base: $DELETED is there" eval 'in_podman nbsnap-test/base-py:v1 cat "$DELETED" >/dev/null'

step "notebook, baseline, the user's changes"
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"
pip_user_install "$M" "$PKG" 1.0 "$PKG_VALUE"
echo "$EDIT_TEXT" >"$M$EDITED"
rm "$M$DELETED"
NAME=podman
SAVE_ARGS=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image nbsnap-test/base-py:v1
    --namespace "$NS" --name "$NAME")

step "case: one layer"
save_tag one
check "one: one new layer ($NEW_LAYERS)" test "$NEW_LAYERS" = 1
podman_check_image "$NS/$NAME:one"

step "case: several MB with --max-layer-size 1M (several layers)"
mkdir -p "$M$SITE/$PKG/data"
for i in 1 2 3 4 5 6; do head -c $((900 * KiB)) /dev/urandom >"$M$SITE/$PKG/data/blob$i.bin"; done
chown -R 1000:100 "$M$SITE/$PKG/data"
save_tag split --max-layer-size 1M
check "split: at least 2 new layers ($NEW_LAYERS)" test "$NEW_LAYERS" -ge 2
podman_check_image "$NS/$NAME:split"
check "split: the last data file, from a later layer, is read back whole" \
    eval 'in_podman "$NS/$NAME:split" cat "$SITE/$PKG/data/blob6.bin" | cmp -s - "$M$SITE/$PKG/data/blob6.bin"'

step "case: an incremental save on the last save (one layer of what changed since)"
save_tag chain1 --incremental # the chain's first save: full
sleep 0.2                     # a file changed within 100 ms of a save is packed again by the next one
"$PYTHON" - "$M$SITE/$PKG/__init__.py" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
open(p, "w").write(s + "SECOND = 'from the incremental layer'\n")
PY
rm "$M$SITE/$PKG/data/blob1.bin"
save_tag chain2 --incremental
check "chain2: on chain1, one layer more ($NEW_LAYERS new)" \
    eval '[[ $NEW_LAYERS == $(($(json_get "$SCRATCH/manifest-chain1.json" "len(j[\"layers\"])") - N_BASE + 1)) ]]'
check "chain2: said incremental" grep -q "incremental on sha256:" "$SCRATCH/save-chain2.out"
podman_check_image "$NS/$NAME:chain2"
check "chain2: python3 sees the edit made since chain1" \
    eval '[[ $(in_podman "$NS/$NAME:chain2" python3 -c "import $PKG; print($PKG.SECOND)") == "from the incremental layer" ]]'
rc=0
in_podman "$NS/$NAME:chain2" ls "$SITE/$PKG/data/blob1.bin" >/dev/null 2>&1 || rc=$?
check "chain2: the file deleted since chain1 is gone (ls exits $rc)" eval '[[ $rc -ne 0 && $rc -lt 125 ]]'

note "took ${SECONDS}s"
finish_checks
