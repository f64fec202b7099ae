#!/bin/bash
# The saved layer is read by every kind of consumer: gzip -t, a Go reader (compress/gzip + archive/tar, as
# containerd, containers/image, umoci and go-containerregistry read it: no trailing bytes, PAX, SCHILY.xattr),
# oci-image-tool's validation of the pulled layout, and umoci unpack. Also checks what only the bytes show:
# security.capability v3 stored as v2, overlay/selinux xattrs never copied, ids past ustar's octal limit,
# no GNU.sparse, whole-second mtimes, empty uname/gname, and the diff_id in the config = sha256 of the tar.
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
source "$LIB/common.sh"
source "$LIB/registry.sh"
source "$LIB/base-image.sh"
source "$LIB/notebook.sh"

need_root
need_cmd umoci skopeo curl setfattr getfattr gzip go oci-image-tool
need_nbsnap
scratch_init nbsnap-consumers

step "build the Go layer reader"
export GOCACHE=$SCRATCH/gocache GOPATH=$SCRATCH/gopath GOFLAGS=-mod=mod GOTOOLCHAIN=local
(cd "$LIB/../go" && go build -o "$SCRATCH/layercheck" .) || fail "cannot build tests/go/layercheck"

step "registry, base image, notebook"
registry_start "$SCRATCH/reg"
at_exit registry_stop
base_image_build "$SCRATCH/base" test/base:1 >/dev/null
notebook_mount "$SCRATCH/nb"
at_exit "notebook_umount '$SCRATCH/nb'"
M=$SCRATCH/nb/merged
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$SCRATCH/state"
[[ $NBSNAP_RC -eq 0 ]] || fail "baseline failed"

step "changes only the bytes can show"
mkdir -p "$M/opt/c"
echo cap >"$M/opt/c/cap-v3"
# v3 capability (rootid 1000): magic 0x03000001 (effective), permitted cap_net_raw (bit 13), rootid 1000
setfattr -n security.capability -v 0x0100000300200000000000000000000000000000e8030000 "$M/opt/c/cap-v3"
echo big >"$M/opt/c/big-ids"
chown 3000000:3000001 "$M/opt/c/big-ids"
echo x >"$M/opt/c/xattrs"
setfattr -n user.keep -v kept "$M/opt/c/xattrs"
setfattr -n user.overlay.foo -v dropped "$M/opt/c/xattrs" 2>/dev/null || true
truncate -s 64M "$M/opt/c/sparse" && printf tail >>"$M/opt/c/sparse"
touch -d '2023-05-06 07:08:09.123456789' "$M/opt/c/xattrs"
long=$(printf 'n%.0s' $(seq 1 200))
echo long >"$M/opt/c/$long"
printf 'bytes' >"$M/opt/c/$(printf 'latin1-\xe9')"

run_nbsnap "$SCRATCH/save" save --root "$M" --state-dir "$SCRATCH/state" --registry "$REGISTRY_URL" \
    --base-image test/base:1 --namespace test --name consumers --tag v1
[[ $NBSNAP_RC -eq 0 ]] || fail "save failed: $(head -c 500 "$SCRATCH/save.err")"

manifest=$SCRATCH/manifest.json
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$REGISTRY_URL/v2/test/consumers/manifests/v1" >"$manifest"
layer=$(json_get "$manifest" 'j["layers"][-1]["digest"]')
config=$(json_get "$manifest" 'j["config"]["digest"]')
fetch_blob test/consumers "$layer" "$SCRATCH/layer.tgz"
fetch_blob test/consumers "$config" "$SCRATCH/config.json"

step "gzip -t and the Go reader"
gzip -t "$SCRATCH/layer.tgz" || fail "gzip -t rejects the layer"
"$SCRATCH/layercheck" -digest "$SCRATCH/layer.tgz" >"$SCRATCH/go.list" || fail "the Go reader rejects the layer"
grep -q "diff_id $(json_get "$SCRATCH/config.json" 'j["rootfs"]["diff_ids"][-1]')" "$SCRATCH/go.list" ||
    fail "diff_id in the config is not the sha256 of the tar stream"
cat "$SCRATCH/go.list" >&2
# v2 capability: magic 0x02000001 little-endian, 20 bytes; no rootid
grep -F '"opt/c/cap-v3"' "$SCRATCH/go.list" | grep -q 'security.capability=0100000200200000000000000000000000000000 ' ||
    grep -F '"opt/c/cap-v3"' "$SCRATCH/go.list" | grep -q 'security.capability=0100000200200000000000000000000000000000$' ||
    fail "security.capability not converted to v2: $(grep -F cap-v3 "$SCRATCH/go.list")"
grep -F '"opt/c/big-ids"' "$SCRATCH/go.list" | grep -q ' 3000000:3000001 ' || fail "large uid/gid not kept"
grep -F '"opt/c/xattrs"' "$SCRATCH/go.list" | grep -q "user.keep=$(printf kept | od -An -tx1 | tr -d ' \n')" ||
    fail "user.* xattr not kept"
if grep -F '"opt/c/xattrs"' "$SCRATCH/go.list" | grep -q 'overlay'; then fail "overlay xattr copied"; fi
grep -qF "\"opt/c/$long\"" "$SCRATCH/go.list" || fail "200-byte name missing"
grep -qF '"opt/c/latin1-\xe9"' "$SCRATCH/go.list" || fail "non-UTF-8 name not kept byte-exact"
grep -F '"opt/c/sparse"' "$SCRATCH/go.list" | grep -q ' 67108868 ' || fail "sparse file not stored as plain data"

step "oci-image-tool validates the pulled layout; umoci unpacks it"
pull_image test/consumers:v1 "$SCRATCH/pull"
oci-image-tool validate --type image --ref name=img "$SCRATCH/pull/oci" >"$SCRATCH/validate.log" 2>&1 ||
    fail "oci-image-tool validate: $(cat "$SCRATCH/validate.log")"
R=$SCRATCH/pull/bundle/rootfs
cmp "$R/opt/c/sparse" "$M/opt/c/sparse" || fail "sparse file differs after unpack"
[[ $(stat -c %Y "$R/opt/c/xattrs") == $(stat -c %Y "$M/opt/c/xattrs") ]] || fail "mtime (whole seconds) not kept"
[[ -f $R/opt/c/$(printf 'latin1-\xe9') ]] || fail "non-UTF-8 name lost in unpack"
note "all consumers accept the layer"
