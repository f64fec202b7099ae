#!/bin/bash
# Limits and resource faults of the save engine, each tried for real: a tree deeper than 1000 levels and a
# directory of 200 k entries are saved whole; a tree deeper than SNAP_DEPTH_MAX, running out of file
# descriptors, a full state dir (ENOSPC) and a read-only one fail clearly, leave no temporary file, and keep
# the previous baseline intact.
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
source "$LIB/common.sh"
source "$LIB/registry.sh"
source "$LIB/base-image.sh"
source "$LIB/notebook.sh"

need_root
need_cmd umoci skopeo curl
need_nbsnap
scratch_init nbsnap-limits

registry_start "$SCRATCH/reg"
at_exit registry_stop
base_image_build "$SCRATCH/base" test/base:1 >/dev/null
notebook_mount "$SCRATCH/nb"
at_exit "notebook_umount '$SCRATCH/nb'"
M=$SCRATCH/nb/merged
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$SCRATCH/state"
[[ $NBSNAP_RC -eq 0 ]] || fail "baseline failed"

step "deep (1200 levels) and wide (200 k entries) trees are saved whole"
"$PYTHON" - "$M/opt" <<'PY'
import os, sys
top = sys.argv[1]
fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
for i in range(1200):
    os.mkdir("d", dir_fd=fd)
    nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = nfd
with open(os.open("deepest", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
    f.write("bottom\n")
os.close(fd)
wide = os.path.join(top, "wide")
os.mkdir(wide)
for i in range(200000):
    os.close(os.open(os.path.join(wide, "f%06d" % i), os.O_WRONLY | os.O_CREAT, 0o644))
PY
run_nbsnap "$SCRATCH/save" save --root "$M" --state-dir "$SCRATCH/state" --registry "$REGISTRY_URL" \
    --base-image test/base:1 --namespace test --name limits --tag v1
[[ $NBSNAP_RC -eq 0 ]] || fail "save of deep + wide trees failed: $(tail -3 "$SCRATCH/save.err")"
manifest=$SCRATCH/manifest.json
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$REGISTRY_URL/v2/test/limits/manifests/v1" >"$manifest"
fetch_blob test/limits "$(json_get "$manifest" 'j["layers"][-1]["digest"]')" "$SCRATCH/layer.tgz"
deep=$(printf 'd/%.0s' $(seq 1 1200))
tar -tzf "$SCRATCH/layer.tgz" >"$SCRATCH/layer.list"
grep -qxF "opt/${deep}deepest" "$SCRATCH/layer.list" || fail "deepest file missing from the layer"
[[ $(grep -c '^opt/wide/f' "$SCRATCH/layer.list") -eq 200000 ]] || fail "wide directory incomplete"

step "deeper than the depth limit: a clear error"
mkdir -p "$SCRATCH/toodeep"
"$PYTHON" - "$SCRATCH/toodeep" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
for i in range(4200):
    os.mkdir("d", dir_fd=fd)
    nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    fd = nfd
PY
run_nbsnap "$SCRATCH/deep" baseline --root "$SCRATCH/toodeep" --state-dir "$SCRATCH/state-deep"
[[ $NBSNAP_RC -ne 0 ]] || fail "a 4200-level tree was accepted"
grep -q "nested deeper than 4096 levels" "$SCRATCH/deep.err" || fail "unclear depth error: $(cat "$SCRATCH/deep.err")"
[[ -z $(ls "$SCRATCH/state-deep") ]] || fail "left files in the state dir: $(ls "$SCRATCH/state-deep")"

step "out of file descriptors: a clear error"
run_nbsnap "$SCRATCH/fds" baseline --root "$M" --state-dir "$SCRATCH/state-fds" &&
    (ulimit -n 64 && "$NBSNAP" baseline --root "$M" --state-dir "$SCRATCH/state-fds2" \
        >"$SCRATCH/fds2.out" 2>"$SCRATCH/fds2.err") && fail "baseline with 64 fds and a 1200-level tree succeeded"
grep -q "out of file descriptors" "$SCRATCH/fds2.err" || fail "unclear fd error: $(cat "$SCRATCH/fds2.err")"

step "state dir full (ENOSPC): clear failure, old baseline kept, no temporary file"
mkdir -p "$SCRATCH/full"
mount -t tmpfs -o size=64k tmpfs "$SCRATCH/full"
at_exit "umount -l '$SCRATCH/full'"
mkdir -p "$SCRATCH/small-root/a"
echo x >"$SCRATCH/small-root/a/x"
"$NBSNAP" baseline --root "$SCRATCH/small-root" --state-dir "$SCRATCH/full/state" 2>/dev/null ||
    fail "baseline of a tiny tree in a 64k tmpfs failed"
before=$(sha256sum <"$SCRATCH/full/state/baseline")
if "$NBSNAP" baseline --force --root "$M" --state-dir "$SCRATCH/full/state" >"$SCRATCH/enospc.out" 2>"$SCRATCH/enospc.err"; then
    fail "baseline into a full state dir succeeded"
fi
grep -qiE "no space left|cannot write" "$SCRATCH/enospc.err" || fail "unclear ENOSPC error: $(cat "$SCRATCH/enospc.err")"
[[ $(sha256sum <"$SCRATCH/full/state/baseline") == "$before" ]] || fail "the old baseline was damaged"
[[ $(ls "$SCRATCH/full/state") == baseline ]] || fail "temporary files left: $(ls "$SCRATCH/full/state")"

step "read-only state dir: clear failure"
mount -o remount,ro "$SCRATCH/full"
if "$NBSNAP" baseline --force --root "$SCRATCH/small-root" --state-dir "$SCRATCH/full/state" 2>"$SCRATCH/ro.err"; then
    fail "baseline into a read-only state dir succeeded"
fi
grep -qi "read-only" "$SCRATCH/ro.err" || fail "unclear read-only error: $(cat "$SCRATCH/ro.err")"
note "limits hold"
