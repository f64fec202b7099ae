#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# A layer packed again (NB_SAVE_LAYER_AGAIN_MAX, agent/save.c): when the registry loses an upload session past
# the bytes kept in memory (replay_max), the save packs the layer again from the tree into a new session.
#  - split-hardlink: a change split into several layers (max_layer_size 2M) with a hard-linked pair, the session
#    lost at the 20th PATCH (BLOB_UPLOAD_UNKNOWN, replay_max 256 KiB): ACTIVE, and the pulled image has both
#    names of the pair as one inode with its content (the second pass must hand the links out again);
#  - tree-changed: a file that shrinks while it is read (tests/fault-preload.c, LD_PRELOAD) fails the save with
#    what happened, and is NOT packed again (only a session the registry lost is a reason to).
#
# Run: ctest -R integration/save-repack   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd
#      NBSNAP_FAULT_PRELOAD=build/tests/libfault-preload.so bash tests/integration/save-repack.sh)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbrp
: "${NBSNAP_FAULT_PRELOAD:=${NBSNAP_BINARY_DIR:-build}/tests/libfault-preload.so}"
[[ -f $NBSNAP_FAULT_PRELOAD ]] || fail "no $NBSNAP_FAULT_PRELOAD (build the tests)"
export NBSNAP_REGISTRY_LOW_SPEED_TIME=3 NBSNAP_REGISTRY_RETRY_DEADLINE=20
# an ASan build's runtime must come first in the library list; the preloaded module comes before it
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0

step "registry, proxy, base image, notebook"
notebook_setup
faultproxy_start
M=$NB_MERGED
mkdir -p "$M/opt/a" "$M/opt/z"
head -c 100000 /dev/urandom >"$M/opt/a/h1"
ln "$M/opt/a/h1" "$M/opt/a/h2"
for i in 1 2 3 4 5; do head -c 700000 /dev/urandom >"$M/opt/z/r$i"; done

LOST='{"rules": [{"id": "lost", "method": "PATCH", "nth": 20, "action": "status", "status": 404,
    "headers": {"Content-Type": "application/json"},
    "body": "{\"errors\":[{\"code\":\"BLOB_UPLOAD_UNKNOWN\",\"message\":\"blob upload unknown to registry\"}]}"}]}'

# save NAME [env...]: nbsnap save through the proxy, split at 2M, 64 KiB chunks
save() {
    local name=$1
    shift
    NBSNAP_RC=0
    env "$@" timeout "${NBSNAP_TIMEOUT:-600}" "$NBSNAP" save --root "$M" --state-dir "$STATE" \
        --registry "$PROXY_URL" --base-image nbsnap-test/base:v1 --namespace nbsnap-it --name "$name" --tag v1 \
        --chunk-size 65536 --threads 2 --max-layer-size 2M >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.err" ||
        NBSNAP_RC=$?
    note "$name: exit $NBSNAP_RC; $(grep -c 'packing the layer again' "$SCRATCH/$name.err" || true) repacks"
}

step "split-hardlink: the session lost past replay_max in a split save with a hard-linked pair"
faults "$LOST"
save split-hardlink NBSNAP_REGISTRY_REPLAY_MAX=262144
check "split-hardlink: ACTIVE (exit 0)" test "$NBSNAP_RC" -eq 0
check "split-hardlink: the layer was packed again once" \
    test "$(grep -c 'packing the layer again (1 of 2)' "$SCRATCH/split-hardlink.err")" -eq 1
check "split-hardlink: the session was lost once" \
    grep -q '"rule": "lost"' "$SCRATCH/proxy.log"
pull_image nbsnap-it/split-hardlink:v1 "$SCRATCH/pull" || fail "skopeo copy + umoci unpack failed"
R=$SCRATCH/pull/bundle/rootfs
check "split-hardlink: both names of the hard-linked pair are in the image" test -f "$R/opt/a/h1" -a -f "$R/opt/a/h2"
check "split-hardlink: ... as one inode" test "$(stat -c %i "$R/opt/a/h1" 2>/dev/null)" = "$(stat -c %i "$R/opt/a/h2" 2>/dev/null)"
check "split-hardlink: ... with its content" cmp -s "$M/opt/a/h1" "$R/opt/a/h2"
for i in 1 2 3 4 5; do
    check "split-hardlink: /opt/z/r$i is the notebook's" cmp -s "$M/opt/z/r$i" "$R/opt/z/r$i"
done
check "split-hardlink: split into several layers" \
    test "$(skopeo inspect --tls-verify=false "docker://127.0.0.1:$REGISTRY_PORT/nbsnap-it/split-hardlink:v1" |
        "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)["Layers"]))')" -gt "$(skopeo inspect \
        --tls-verify=false "docker://127.0.0.1:$REGISTRY_PORT/nbsnap-test/base:v1" |
        "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)["Layers"]) + 1)')"

step "tree-changed: a file that shrinks while it is read fails the save and is not packed again"
faults '{"rules": []}'
head -c 1500000 /dev/urandom >"$M/opt/z/shrink-me"
save tree-changed LD_PRELOAD="$NBSNAP_FAULT_PRELOAD" NBSNAP_FAULT_SHRINK=shrink-me
check "tree-changed: the save failed" test "$NBSNAP_RC" -ne 0
check "tree-changed: it says the file shrank" grep -q 'shrink-me shrank' "$SCRATCH/tree-changed.err"
check "tree-changed: not packed again" bash -c '! grep -q "packing the layer again" "$1"' _ "$SCRATCH/tree-changed.err"
check "tree-changed: no tag" bash -c '[[ $(curl -s -o /dev/null -w "%{http_code}" "$1") == 404 ]]' _ \
    "$REGISTRY_URL/v2/nbsnap-it/tree-changed/manifests/v1"
finish_checks
