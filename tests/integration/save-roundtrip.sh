#!/bin/bash
# shellcheck disable=SC2016,SC2034 # check "..." eval '...' assertions expand when they run (and use TAB)
# nbsnap save round trip: a base image in a private registry, an overlay "notebook" rootfs on it with a work
# volume and an /etc/hosts bind mount, `nbsnap baseline`, every kind of change, `nbsnap save`, then the image is
# pulled back (skopeo + umoci) and compared entry by entry with the live tree (treecmp.py); the manifest,
# config, layer blob, the layer's tar entries (whiteouts, opaque dirs, hard links, xattrs, no GNU sparse) and
# the JSON printed by save are checked; a second save of the same tree must give the same layer digest and
# upload no base layer; a second notebook has its state dir inside the root (it must not be saved) and is
# also saved against a Docker schema2 base.
#
# Run: ctest -R integration/save-roundtrip   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-roundtrip.sh)
# Env: NBSNAP (binary), NBSNAP_TEST_HUGE=1 adds a 9 GiB sparse file (minutes), NBSNAP_TEST_KEEP=1 keeps the
#      scratch dir, NBSNAP_TIMEOUT (seconds per nbsnap run, default 900).
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

need_root
need_cmd umoci skopeo curl gzip tar setfattr getfattr setcap mkfifo mknod truncate timeout "$PYTHON"
need_nbsnap
scratch_init nbrt # short: the pulled rootfs must hold a 4000-byte container path under PATH_MAX

NS=nbsnap-it
NAME=roundtrip
DESC='round trip: every kind of change'
WSID=ws-0123456789abcdef
EXCLUDE=/home/ma-user/.cache/pip
GiB=$((1024 * 1024 * 1024))
TAB=$'\t'

step "registry, base image, notebook"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/nbsnap-test/base/manifests/v1" >"$SCRATCH/base-manifest.json"
BASE_CONFIG_DIGEST=$(json_get "$SCRATCH/base-manifest.json" 'j["config"]["digest"]')
curl -sSf "$REGISTRY_URL/v2/nbsnap-test/base/blobs/$BASE_CONFIG_DIGEST" >"$SCRATCH/base-config.json"
mapfile -t BASE_LAYERS < <(json_get "$SCRATCH/base-manifest.json" '"\n".join(l["digest"] for l in j["layers"])')
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state

step "nbsnap baseline"
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE" --exclude "$EXCLUDE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline --root $M --state-dir $STATE exited $NBSNAP_RC"
[[ -n $(ls -A "$STATE" 2>/dev/null) ]] || fail "nbsnap baseline wrote nothing in the state dir $STATE"

# ---------------------------------------------------------------------------------------------------------------
step "changes in the notebook"
T=$M/opt/t
# added files
mkdir -p "$T/added" "$M/usr/local/bin"
echo 'a new file' >"$T/added/new.txt"
printf '#!/bin/sh\necho newtool\n' >"$M/usr/local/bin/newtool"
chmod 0755 "$M/usr/local/bin/newtool"
echo '# notes' >"$M/home/ma-user/notes.md"
chown 1000:100 "$M/home/ma-user/notes.md"
mkdir -p "$M/home/ma-user/.local/lib/python3.11/site-packages/demo_pkg"
echo 'VERSION = "1.0"' >"$M/home/ma-user/.local/lib/python3.11/site-packages/demo_pkg/__init__.py"
chown -R 1000:100 "$M/home/ma-user/.local"
# modified contents
echo 'appended line' >>"$T/modify.txt"
printf 'PATCHED' | dd of="$T/modify.bin" bs=1 seek=1000 conv=notrunc status=none
echo 'edited motd' >"$M/etc/motd"
echo 'notebook version' >"$T/layer2-modified"
# metadata only
chmod 0600 "$T/chmod-me"
chown 1000:100 "$T/chown-me"
touch -d '2025-05-05 05:05:05' "$T/touch-me"
chown 3000000:3000001 "$T/added/new.txt" # ids above the ustar octal limit (PAX uid/gid)
touch -d '2100-01-01 00:00:00' "$T/added/new.txt"
# deletions
rm "$T/delete-file.txt"
rm -rf "$T/delete-tree"
rm "$T/names/with space" "$T/names/$(printf 'bad\xff\xfe')" "$T/names/$(printf 'x%.0s' $(seq 1 250)).txt"
# deleted and recreated directory (opaque)
rm -rf "$T/recreate"
mkdir "$T/recreate"
echo new1 >"$T/recreate/new1"
echo 'same name, new file' >"$T/recreate/same-name"
# type replacements
rm "$T/file-to-dir" && mkdir "$T/file-to-dir" && echo child >"$T/file-to-dir/child"
rm -rf "$T/dir-to-file" && echo 'now a file' >"$T/dir-to-file"
rm "$T/file-to-symlink" && ln -s modify.txt "$T/file-to-symlink"
rm -rf "$T/dir-to-symlink" && ln -s /etc "$T/dir-to-symlink"
rm "$T/symlink-to-file" && echo 'was a symlink' >"$T/symlink-to-file"
# symlinks
ln -s ../modify.txt "$T/links/new-sym"
ln -s /nonexistent/target "$T/links/new-dangling"
ln -sfn b "$T/links/retarget"
# hard links: a new pair; a new link to a base file; a base pair split by a chmod plus a new link to one of it
echo 'new pair data' >"$T/links/new-a"
ln "$T/links/new-a" "$T/links/new-b"
ln "$T/links/base-only" "$T/links/base-only-link"
chmod 0600 "$T/links/a"
ln "$T/links/b" "$T/links/c"
# xattrs
setfattr -n user.nbsnap.new -v 'new value' "$T/added/new.txt"
setfattr -n user.nbsnap.change -v after "$T/xattr/change-me"
setfattr -x user.nbsnap.remove "$T/xattr/change-me"
mkdir -p "$T/caps"
cp /usr/bin/true "$T/caps/raw"
setcap cap_net_raw+ep "$T/caps/raw"
setcap cap_net_raw+ep "$T/xattr/cap-bin"
# special modes
cp /usr/bin/true "$T/added/suid"
chmod 4755 "$T/added/suid"
mkdir "$T/added/sgid-dir" "$T/added/sticky-dir"
chmod 2775 "$T/added/sgid-dir"
chmod 1777 "$T/added/sticky-dir"
chmod u-s "$T/special/setuid-bin"
# fifo, devices, empty file and dir
mkfifo "$T/added/fifo"
mknod "$T/added/null" c 1 3
mknod "$T/added/loop1" b 7 1
: >"$T/added/empty-file"
mkdir "$T/added/empty-dir"
# names
echo s >"$T/added/with space"
echo n >"$T/added/$(printf 'new\nline')"
echo u >"$T/added/日本語-ü"
mkdir "$T/added/$(printf 'dir\xff\xfe')"
echo b >"$T/added/$(printf 'dir\xff\xfe')/$(printf 'file\xfd')"
NAME255=$(printf 'n%.0s' $(seq 1 255))
echo 255 >"$T/added/$NAME255"
mkdir -p "$T/long/$(printf 'a%.0s' $(seq 1 60))/$(printf 'b%.0s' $(seq 1 60))"
LONG100=/opt/t/long/$(printf 'a%.0s' $(seq 1 60))/$(printf 'b%.0s' $(seq 1 60))/file-past-100-bytes.txt
echo long >"$M$LONG100"
# a container path over 4000 bytes (made with directory fds: the host path is longer than PATH_MAX may allow)
DEEP_REL=$("$PYTHON" - "$M" <<'EOF'
import os, sys
root = sys.argv[1]
fd = os.open(root + "/opt/t", os.O_RDONLY | os.O_DIRECTORY)
rel = "/opt/t"
os.mkdir("deep", dir_fd=fd)
nfd = os.open("deep", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd); os.close(fd); fd = nfd
rel += "/deep"
i = 0
while len(rel) + len("/deep-file") <= 4000:
    n = ("d%02d" % i).ljust(99, "y")
    os.mkdir(n, dir_fd=fd)
    nfd = os.open(n, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd); os.close(fd); fd = nfd
    rel += "/" + n
    i += 1
f = os.open("deep-file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
os.write(f, b"at the bottom\n"); os.close(f); os.close(fd)
print(rel + "/deep-file")
EOF
)
note "deep path: ${#DEEP_REL} bytes"
# sparse file: 1 GiB with a few bytes of data
truncate -s 1G "$T/added/sparse-1g"
printf 'start' | dd of="$T/added/sparse-1g" bs=1 conv=notrunc status=none
printf 'middle' | dd of="$T/added/sparse-1g" bs=1 seek=$((GiB / 2)) conv=notrunc status=none
printf 'end' | dd of="$T/added/sparse-1g" bs=1 seek=$((GiB - 3)) conv=notrunc status=none
if [[ ${NBSNAP_TEST_HUGE:-0} == 1 ]]; then
    truncate -s 9G "$T/added/huge-9g"
    printf 'END' | dd of="$T/added/huge-9g" bs=1 seek=$((9 * GiB - 3)) conv=notrunc status=none
fi
# a unix socket: cannot be archived, must be skipped
(cd "$T/added" && "$PYTHON" -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind("sock")')
[[ -S $T/added/sock ]] || fail "could not create the unix socket fixture"
# work volume, /etc/hosts bind mount, excluded cache: never in the image
echo 'written in the work volume' >"$M/home/ma-user/work/new-in-work"
mkdir -p "$M/home/ma-user/work/new-dir"
echo '10.1.1.1 written-through-merged' >>"$M/etc/hosts"
mkdir -p "$M$EXCLUDE/http/cache"
echo 'pip cache' >"$M$EXCLUDE/http/cache/blob"
mkdir -p "$M/home/ma-user/.cache/other"
echo 'not excluded' >"$M/home/ma-user/.cache/other/keep"
chown -R 1000:100 "$M/home/ma-user/.cache"

# ---------------------------------------------------------------------------------------------------------------
step "nbsnap save"
SAVE_ARGS=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image nbsnap-test/base:v1
    --namespace "$NS" --name "$NAME" --description "$DESC" --exclude "$EXCLUDE" --workspace-id "$WSID")
MARK=$(registry_log_mark)
run_nbsnap "$SCRATCH/save1" save "${SAVE_ARGS[@]}" --tag v1
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save exited $NBSNAP_RC (stderr: $SCRATCH/save1.err)"
registry_blob_writes_since "$MARK" >"$SCRATCH/save1.uploads"

step "JSON printed by save"
check_json() {
    # check_json FILE STATUS TAG
    EXPECT_NAME=$NAME EXPECT_NS=$NS EXPECT_TAG=$3 EXPECT_DESC=$DESC EXPECT_WS=$WSID EXPECT_STATUS=$2 \
        EXPECT_SWR="$REGISTRY_HOST/$NS/$NAME:$3" "$PYTHON" - "$1" <<'EOF'
import json, os, re, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as ex:
    print("stdout is not one JSON object: %s: %r" % (ex, open(sys.argv[1], errors="replace").read()[:500]))
    sys.exit(1)
E = os.environ
errs = []
fields = ["arch", "create_at", "description", "dev_services", "id", "name", "namespace", "origin",
          "resource_categories", "service_type", "status", "status_message", "swr_path", "tag", "type",
          "update_at", "visibility", "workspace_id", "size"]
for f in fields:
    if f not in j:
        errs.append("field %s is missing" % f)
exact = {"name": E["EXPECT_NAME"], "namespace": E["EXPECT_NS"], "tag": E["EXPECT_TAG"],
         "description": E["EXPECT_DESC"], "workspace_id": E["EXPECT_WS"], "status": E["EXPECT_STATUS"],
         "origin": "IMAGE_SAVE", "type": "DEDICATED", "visibility": "PRIVATE", "swr_path": E["EXPECT_SWR"]}
for k, v in exact.items():
    if k in j and j[k] != v:
        errs.append("%s: expected %r, got %r" % (k, v, j[k]))
if "id" in j and not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", str(j["id"])):
    errs.append("id is not a lowercase UUID: %r" % j.get("id"))
if "size" in j and (not isinstance(j["size"], int) or isinstance(j["size"], bool) or j["size"] <= 0):
    errs.append("size must be a positive integer (KB), got %r" % j.get("size"))
if "arch" in j and not (isinstance(j["arch"], str) and j["arch"]):
    errs.append("arch must be a non-empty string, got %r" % j.get("arch"))
for f in ("create_at", "update_at"):
    if f in j and (j[f] is None or j[f] == "" or j[f] == 0):
        errs.append("%s is empty: %r" % (f, j[f]))
for f in ("dev_services", "resource_categories"):
    if f in j and not isinstance(j[f], list):
        errs.append("%s should be a list, got %r" % (f, j[f]))
for e in errs:
    print(e)
print("json: %s" % json.dumps(j, ensure_ascii=False)[:1500], file=sys.stderr)
sys.exit(1 if errs else 0)
EOF
}
check "save JSON has every field with the right values (status ACTIVE)" check_json "$SCRATCH/save1.out" ACTIVE v1
SIZE_KB=$(json_get "$SCRATCH/save1.out" 'j.get("size")' 2>/dev/null || echo '?')

step "manifest and config"
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/$NS/$NAME/manifests/v1" >"$SCRATCH/manifest1.json" || fail "GET manifest $NS/$NAME:v1 failed"
check "skopeo inspect sees the new image" skopeo inspect --tls-verify=false "docker://$REGISTRY_HOST/$NS/$NAME:v1" >/dev/null
check_manifest() { # check_manifest BASE_MANIFEST NEW_MANIFEST
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1])); n = json.load(open(sys.argv[2]))
errs = []
bl, nl = b["layers"], n["layers"]
if len(nl) != len(bl) + 1:
    errs.append("layers: expected %d (base %d + 1), got %d" % (len(bl) + 1, len(bl), len(nl)))
for i, (x, y) in enumerate(zip(bl, nl)):
    if x["digest"] != y["digest"] or x["size"] != y["size"]:
        errs.append("layer %d changed: base %s/%d, new %s/%d" % (i, x["digest"], x["size"], y["digest"], y["size"]))
    if x.get("mediaType") != y.get("mediaType"):
        errs.append("layer %d mediaType: base %r, new %r" % (i, x.get("mediaType"), y.get("mediaType")))
if n.get("schemaVersion") != 2:
    errs.append("schemaVersion %r" % n.get("schemaVersion"))
if not n.get("mediaType"):
    errs.append("manifest mediaType is not set")
elif n.get("mediaType") != b.get("mediaType", "application/vnd.oci.image.manifest.v1+json"):
    errs.append("manifest mediaType %r differs from the base's %r" % (n.get("mediaType"), b.get("mediaType")))
fam_oci = "oci" in (b.get("mediaType") or "application/vnd.oci") or "oci" in b["config"]["mediaType"]
want_layer = "application/vnd.oci.image.layer.v1.tar+gzip" if fam_oci else "application/vnd.docker.image.rootfs.diff.tar.gzip"
want_cfg = "application/vnd.oci.image.config.v1+json" if fam_oci else "application/vnd.docker.container.image.v1+json"
if nl and nl[-1].get("mediaType") != want_layer:
    errs.append("new layer mediaType %r, expected %r" % (nl[-1].get("mediaType"), want_layer))
if n["config"].get("mediaType") != want_cfg:
    errs.append("config mediaType %r, expected %r" % (n["config"].get("mediaType"), want_cfg))
for e in errs:
    print(e)
sys.exit(1 if errs else 0)
EOF
}
check "manifest: base layers first and unchanged, one new layer, same format family" check_manifest "$SCRATCH/base-manifest.json" "$SCRATCH/manifest1.json"
NEW_LAYER=$(json_get "$SCRATCH/manifest1.json" 'j["layers"][-1]["digest"]')
NEW_LAYER_SIZE=$(json_get "$SCRATCH/manifest1.json" 'j["layers"][-1]["size"]')
CONFIG_DIGEST=$(json_get "$SCRATCH/manifest1.json" 'j["config"]["digest"]')
fetch_blob "$NS/$NAME" "$CONFIG_DIGEST" "$SCRATCH/config1.json" || fail "cannot fetch the config blob $CONFIG_DIGEST"
fetch_blob "$NS/$NAME" "$NEW_LAYER" "$SCRATCH/layer1.tgz" || fail "cannot fetch the new layer blob $NEW_LAYER"
check "new layer blob size matches the manifest ($NEW_LAYER_SIZE)" test "$(stat -c %s "$SCRATCH/layer1.tgz")" = "$NEW_LAYER_SIZE"
check "new layer blob passes gzip -t (no trailing garbage)" check_blob_gzip "$NS/$NAME" "$NEW_LAYER"
DIFF_ID="sha256:$(gzip -dc "$SCRATCH/layer1.tgz" | sha256sum | cut -d' ' -f1)" # sha256 of the uncompressed tar
check_config() {
    EXPECT_DIFF_ID=$DIFF_ID EXPECT_DESC=$DESC "$PYTHON" - "$SCRATCH/base-config.json" "$1" <<'EOF'
import json, os, sys
b = json.load(open(sys.argv[1])); n = json.load(open(sys.argv[2]))
errs = []
bc, nc = b.get("config", {}), n.get("config", {})
for k in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal"):
    if bc.get(k) != nc.get(k):
        errs.append("config.%s: base %r, new %r" % (k, bc.get(k), nc.get(k)))
for k in ("architecture", "os"):
    if b.get(k) != n.get(k):
        errs.append("%s: base %r, new %r" % (k, b.get(k), n.get(k)))
bd, nd = b["rootfs"]["diff_ids"], n.get("rootfs", {}).get("diff_ids", [])
if n.get("rootfs", {}).get("type") != "layers":
    errs.append("rootfs.type %r" % n.get("rootfs", {}).get("type"))
if nd[:-1] != bd or len(nd) != len(bd) + 1:
    errs.append("rootfs.diff_ids: expected base %r + 1, got %r" % (bd, nd))
elif nd[-1] != os.environ["EXPECT_DIFF_ID"]:
    errs.append("new diff_id %s != sha256 of the uncompressed layer %s" % (nd[-1], os.environ["EXPECT_DIFF_ID"]))
bh, nh = b.get("history", []), n.get("history", [])
if len(nh) != len(bh) + 1 or nh[:-1] != bh:
    errs.append("history: expected the base's %d entries + 1, got %d (%r)" % (len(bh), len(nh), nh[-2:]))
if nh:
    last = nh[-1]
    if last.get("created_by") != "nbsnap save":
        errs.append("last history created_by %r, expected 'nbsnap save'" % last.get("created_by"))
    if last.get("comment") != os.environ["EXPECT_DESC"]:
        errs.append("last history comment %r, expected the description %r" % (last.get("comment"), os.environ["EXPECT_DESC"]))
    if last.get("empty_layer"):
        errs.append("last history entry is marked empty_layer")
if not n.get("created"):
    errs.append("config has no created time")
for e in errs:
    print(e)
sys.exit(1 if errs else 0)
EOF
}
check "config keeps Env/Cmd/Entrypoint/WorkingDir/User/Labels/ExposedPorts/Volumes; diff_ids +1; history +1 'nbsnap save' + description" \
    check_config "$SCRATCH/config1.json"
skopeo inspect --tls-verify=false --config "docker://$REGISTRY_HOST/$NS/$NAME:v1" >"$SCRATCH/config1-skopeo.json" ||
    soft_fail "skopeo inspect --config of $NS/$NAME:v1 failed"

step "layer tar entries"
tar --warning=no-unknown-keyword -tzvf "$SCRATCH/layer1.tgz" >"$SCRATCH/layer1.tar-tv.txt" 2>"$SCRATCH/layer1.tar-tv.err" ||
    soft_fail "GNU tar cannot list the new layer: $(head -c 500 "$SCRATCH/layer1.tar-tv.err")"
check "tar -tzvf shows no GNU sparse entries" bash -c "! grep -q GNUSparseFile '$SCRATCH/layer1.tar-tv.txt'"
# one pass: the structural check, and the listing the checks below read
"$PYTHON" "$LIB/layerinfo.py" check "$SCRATCH/layer1.tgz" --list "$SCRATCH/layer1.tsv" >"$SCRATCH/layer1.check" 2>&1 || true
[[ -s $SCRATCH/layer1.tsv ]] || fail "layerinfo.py cannot read the new layer: $(tail -n 3 "$SCRATCH/layer1.check")"
note "new layer: $(wc -l <"$SCRATCH/layer1.tsv") entries, $NEW_LAYER_SIZE bytes compressed; listing in $SCRATCH/layer1.tsv"
check "layer structure (no duplicates, parents first, link targets earlier, no GNU.sparse, no overlay xattrs, nothing below whiteouts)" \
    bash -c "! grep -q '^error:' '$SCRATCH/layer1.check'"
grep '^error:' "$SCRATCH/layer1.check" | head -20 >&2 || true
grep '^warning:' "$SCRATCH/layer1.check" | head -5 >&2 || true
L=$SCRATCH/layer1.tsv
expect_kind() {
    # expect_kind NAME KINDS: the layer has exactly one entry NAME, of kind KINDS (one of the letters)
    local got
    got=$(layer_kind "$L" "$1")
    if [[ ${#got} -eq 1 && $2 == *"$got"* ]]; then return 0; fi
    printf '  %s: expected one entry of kind [%s], got [%s]\n' "$1" "$2" "$got" >&2
    return 1
}
all_kind() { # all_kind KINDS NAME...
    local n
    for n in "${@:2}"; do expect_kind "$n" "$1" || return 1; done
}
expect_absent() {
    local got
    got=$(layer_below "$L" "$1")
    [[ -z $got ]] && return 0
    printf '  expected nothing at or below %s in the layer, got:\n%s\n' "$1" "$(head -n 5 <<<"$got")" >&2
    return 1
}
check "deleted tree: exactly one whiteout opt/t/.wh.delete-tree, nothing below it" \
    eval 'expect_kind opt/t/.wh.delete-tree w && expect_absent opt/t/delete-tree && [[ $(grep -c delete-tree "$L") -eq 1 ]]'
check "deleted file: whiteout opt/t/.wh.delete-file.txt" expect_kind opt/t/.wh.delete-file.txt w
check "deleted base file with a space: whiteout" expect_kind 'opt/t/names/.wh.with space' w
check "deleted base file with a non-UTF-8 name: whiteout" expect_kind 'opt/t/names/.wh.bad\xff\xfe' w
check "deleted base file with a 254-byte name: whiteout (258-byte tar name)" expect_kind "opt/t/names/.wh.$(printf 'x%.0s' $(seq 1 250)).txt" w
check "recreated dir: opt/t/recreate dir + opaque marker + new children" \
    eval 'expect_kind opt/t/recreate d && expect_kind opt/t/recreate/.wh..wh..opq o && expect_kind opt/t/recreate/new1 f && expect_kind opt/t/recreate/same-name f'
check "recreated dir: no whiteouts for its old children" eval '! grep -qE "^w${TAB}opt/t/recreate/" "$L"'
check "file replaced by a dir: dir entry + child" eval 'expect_kind opt/t/file-to-dir d && expect_kind opt/t/file-to-dir/child f'
check "dir replaced by a file: one file entry, no whiteouts, nothing below it" \
    eval 'expect_kind opt/t/dir-to-file f && ! grep -q wh.dir-to-file "$L" && [[ $(layer_below "$L" opt/t/dir-to-file | wc -l) -eq 1 ]]'
check "dir replaced by a symlink: one symlink entry, nothing below it" \
    eval 'expect_kind opt/t/dir-to-symlink l && ! grep -q wh.dir-to-symlink "$L" && [[ $(layer_below "$L" opt/t/dir-to-symlink | wc -l) -eq 1 ]]'
check "file replaced by a symlink / symlink by a file" eval 'expect_kind opt/t/file-to-symlink l && expect_kind opt/t/symlink-to-file f'
count_kinds() { # count_kinds KINDS NAME... : number of entries among NAMEs whose kind is in KINDS
    local n=0 name k
    for name in "${@:2}"; do
        k=$(layer_kind "$L" "$name")
        [[ -n $k && $1 == *"$k"* ]] && n=$((n + ${#k}))
    done
    echo "$n"
}
check "new hard-link pair: one file + one link entry" \
    eval '[[ $(count_kinds fh opt/t/links/new-a opt/t/links/new-b) -eq 2 && $(count_kinds h opt/t/links/new-a opt/t/links/new-b) -eq 1 ]]'
check "new link to a base file: both names in the layer, one as a hard link" \
    eval '[[ $(count_kinds fh opt/t/links/base-only opt/t/links/base-only-link) -eq 2 && $(count_kinds h opt/t/links/base-only opt/t/links/base-only-link) -eq 1 ]]'
check "base pair split by chmod: a is a file; new link c to b: b and c linked" \
    eval 'expect_kind opt/t/links/a f && [[ $(count_kinds fh opt/t/links/b opt/t/links/c) -eq 2 && $(count_kinds h opt/t/links/b opt/t/links/c) -eq 1 ]]'
check "xattr user.nbsnap.new stored as SCHILY.xattr" eval 'layer_entries "$L" opt/t/added/new.txt | grep -q SCHILY.xattr.user.nbsnap.new'
check "security.capability stored (new file and changed base file)" \
    eval 'layer_entries "$L" opt/t/caps/raw | grep -q SCHILY.xattr.security.capability && layer_entries "$L" opt/t/xattr/cap-bin | grep -q SCHILY.xattr.security.capability'
check "metadata-only changes are in the layer (chmod, chown, touch, xattr change, setuid removed)" \
    all_kind f opt/t/chmod-me opt/t/chown-me opt/t/touch-me opt/t/xattr/change-me opt/t/special/setuid-bin
check "sparse 1 GiB file is one plain file entry of 1073741824 bytes" \
    eval '[[ $(layer_entries "$L" opt/t/added/sparse-1g | cut -f1,4) == "f${TAB}1073741824" ]]'
if [[ ${NBSNAP_TEST_HUGE:-0} == 1 ]]; then
    check "huge 9 GiB file is one plain file entry of $((9 * GiB)) bytes" \
        eval '[[ $(layer_entries "$L" opt/t/added/huge-9g | cut -f1,4) == "f${TAB}$((9 * GiB))" ]]'
fi
check "socket skipped" expect_absent opt/t/added/sock
check "work volume mount point not saved" expect_absent home/ma-user/work
check "/etc/hosts (file bind mount) not saved" expect_absent etc/hosts
check "excluded $EXCLUDE not saved" expect_absent "${EXCLUDE#/}"
check "non-excluded sibling of the excluded path saved" expect_kind home/ma-user/.cache/other/keep f
check "unchanged base files are not in the layer (it is a diff)" \
    eval 'expect_absent usr/lib/python3.11/pkg01 && expect_absent opt/t/links/abs && expect_absent usr/bin/ls'
check "names: space" expect_kind 'opt/t/added/with space' f
check "names: newline" expect_kind 'opt/t/added/new\nline' f
check "names: UTF-8" expect_kind 'opt/t/added/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e-\xc3\xbc' f
check "names: non-UTF-8 dir and file" eval "expect_kind 'opt/t/added/dir\\xff\\xfe' d && expect_kind 'opt/t/added/dir\\xff\\xfe/file\\xfd' f"
check "names: 255 bytes" expect_kind "opt/t/added/$NAME255" f
check "path over 100 bytes" expect_kind "${LONG100#/}" f
check "path over 4000 bytes (${#DEEP_REL})" expect_kind "${DEEP_REL#/}" f
check "fifo and device nodes in the layer" eval 'expect_kind opt/t/added/fifo p && expect_kind opt/t/added/null c && expect_kind opt/t/added/loop1 b'
check "empty file and empty dir in the layer" eval 'expect_kind opt/t/added/empty-file f && expect_kind opt/t/added/empty-dir d'

step "pull the image back and compare with the notebook"
pull_image "$NS/$NAME:v1" "$SCRATCH/p1" || fail "cannot pull/unpack $NS/$NAME:v1 (skopeo + umoci)"
R=$SCRATCH/p1/bundle/rootfs
IGNORE=(--ignore /home/ma-user/work --ignore /etc/hosts --ignore "$EXCLUDE" --ignore /opt/t/added/sock)
"$PYTHON" "$LIB/treecmp.py" "${IGNORE[@]}" "$M" "$R" >"$SCRATCH/treecmp1.txt" 2>&1 || true
check "pulled rootfs equals the notebook's merged tree (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp1.txt"
grep -v '^treecmp:' "$SCRATCH/treecmp1.txt" | head -40 >&2 || true
check "work volume content absent from the image" bash -c "[[ ! -e '$R/home/ma-user/work' ]]"
check "/etc/hosts in the image is the base's" cmp -s "$R/etc/hosts" "$BASE_ROOTFS/etc/hosts"
check "excluded $EXCLUDE absent from the image" bash -c "[[ ! -e '$R$EXCLUDE' ]]"
check "socket absent from the image" bash -c "[[ ! -e '$R/opt/t/added/sock' ]]"
check "deleted base paths absent from the image" bash -c "[[ ! -e '$R/opt/t/delete-tree' && ! -e '$R/opt/t/delete-file.txt' && ! -e '$R/opt/t/recreate/old1' && ! -e '$R/opt/t/recreate/sub' ]]"
check "setcap survives: getcap shows cap_net_raw" bash -c "getcap '$R/opt/t/caps/raw' | grep -q cap_net_raw"

step "determinism: save the same tree again"
MARK=$(registry_log_mark)
run_nbsnap "$SCRATCH/save2" save "${SAVE_ARGS[@]}" --tag v1-again
if [[ $NBSNAP_RC -ne 0 ]]; then
    soft_fail "second nbsnap save (same tree) exited $NBSNAP_RC"
else
    registry_blob_writes_since "$MARK" >"$SCRATCH/save2.uploads"
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "$REGISTRY_URL/v2/$NS/$NAME/manifests/v1-again" >"$SCRATCH/manifest2.json" || soft_fail "GET manifest v1-again failed"
    LAYER2=$(json_get "$SCRATCH/manifest2.json" 'j["layers"][-1]["digest"]' 2>/dev/null || echo none)
    # Same tree, same tar (diff_id) and same gzip bytes (blob digest): a re-save is recognised as unchanged
    # and the registry dedups it. (ISA-L 2.30 made the bytes depend on the worker; see snapshot/pgzip.c.)
    fetch_blob "$NS/$NAME" "$LAYER2" "$SCRATCH/layer2.tgz" || soft_fail "cannot fetch the second layer $LAYER2"
    DIFF_ID2="sha256:$(gzip -dc "$SCRATCH/layer2.tgz" | sha256sum | cut -d' ' -f1)"
    check "same tree, same tar (diff_id $DIFF_ID vs $DIFF_ID2)" test "$DIFF_ID" = "$DIFF_ID2"
    check "same tree, same layer digest ($NEW_LAYER vs $LAYER2)" test "$NEW_LAYER" = "$LAYER2"
    check "second save: JSON ok" check_json "$SCRATCH/save2.out" ACTIVE v1-again
    # not required: a streamed upload only knows the layer digest at the end, so it cannot HEAD it first
    if grep -qx "$NEW_LAYER" "$SCRATCH/save2.uploads"; then
        note "info: the second save uploaded the (identical) new layer again (streamed upload)"
    fi
fi
no_base_uploads() {
    local d bad=0
    for d in "${BASE_LAYERS[@]}"; do
        if grep -qx "$d" "$1"; then
            printf '  base layer %s was uploaded (see %s)\n' "$d" "$1" >&2
            bad=1
        fi
    done
    return $bad
}
check "first save uploaded no base layer (HEAD/mount instead)" no_base_uploads "$SCRATCH/save1.uploads"
[[ -f $SCRATCH/save2.uploads ]] && check "second save uploaded no base layer" no_base_uploads "$SCRATCH/save2.uploads"

# ---------------------------------------------------------------------------------------------------------------
step "second notebook: state dir inside the root; Docker schema2 base"
base_image_push "$SCRATCH/base" nbsnap-test/base-docker:v1 v2s2
notebook_mount "$SCRATCH/nb2" "$BASE_ROOTFS"
M2=$NB_MERGED
STATE2=/var/lib/nbsnap-state
run_nbsnap "$SCRATCH/baseline2" baseline --root "$M2" --state-dir "$M2$STATE2"
if [[ $NBSNAP_RC -ne 0 ]]; then
    soft_fail "nbsnap baseline with the state dir inside the root ($M2$STATE2) exited $NBSNAP_RC"
else
    echo 'second notebook' >"$M2/opt/t/second.txt"
    rm -rf "$M2/opt/t/recreate"
    for fmt in oci docker; do
        base=nbsnap-test/base:v1
        [[ $fmt == docker ]] && base=nbsnap-test/base-docker:v1
        run_nbsnap "$SCRATCH/save-$fmt" save --root "$M2" --state-dir "$M2$STATE2" --registry "$REGISTRY_URL" \
            --base-image "$base" --namespace "$NS" --name "state-inside-$fmt" --tag v1 --description "state inside ($fmt base)"
        if [[ $NBSNAP_RC -ne 0 ]]; then
            soft_fail "save with the state dir inside the root, $fmt base: exit $NBSNAP_RC"
            continue
        fi
        curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            "$REGISTRY_URL/v2/${base%:*}/manifests/v1" >"$SCRATCH/base-manifest-$fmt.json" || fail "GET manifest of $base failed"
        curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            "$REGISTRY_URL/v2/$NS/state-inside-$fmt/manifests/v1" >"$SCRATCH/manifest-$fmt.json" || { soft_fail "GET manifest state-inside-$fmt failed"; continue; }
        check "$fmt base: manifest in the base's format family, base layers first, one new layer" \
            check_manifest "$SCRATCH/base-manifest-$fmt.json" "$SCRATCH/manifest-$fmt.json"
        check "$fmt base: JSON status ACTIVE" eval "[[ \$(json_get '$SCRATCH/save-$fmt.out' 'j.get(\"status\")') == ACTIVE ]]"
        pull_image "$NS/state-inside-$fmt:v1" "$SCRATCH/p-$fmt" || { soft_fail "cannot pull $NS/state-inside-$fmt:v1"; continue; }
        R2=$SCRATCH/p-$fmt/bundle/rootfs
        check "$fmt base: state dir inside the root is not in the image" bash -c "[[ ! -e '$R2$STATE2' ]]"
        # /home/ma-user and /var/lib changed before or by the baseline (mount point, state dir): not saved, by design
        "$PYTHON" "$LIB/treecmp.py" --ignore /home/ma-user/work --ignore /etc/hosts --ignore "$STATE2" \
            --ignore-mtime /home/ma-user --ignore-mtime /var/lib "$M2" "$R2" >"$SCRATCH/treecmp-$fmt.txt" 2>&1 || true
        check "$fmt base: pulled rootfs equals the second notebook (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-$fmt.txt"
        grep -v '^treecmp:' "$SCRATCH/treecmp-$fmt.txt" | head -20 >&2 || true
    done
fi

step "summary"
note "new layer $NEW_LAYER ($NEW_LAYER_SIZE bytes), JSON size ${SIZE_KB} KB; scratch $SCRATCH"
finish_checks
