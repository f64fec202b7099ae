#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# The layer budget on a deep base (issue #11, part 2): a base of 40 layers built with umoci
# (base_image_build_deep: its top layers hold an opaque directory, a whiteout, a file under the work volume's
# mount point, hard links, a symlink, an xattr), saved with --max-layers 36: the top 15 base layers are
# streamed from the registry and merged with the container's changes into the new layer; the 35 below are
# kept by digest and never uploaded again (registry log); 10 layers stay free for incremental saves. The image unpacks (skopeo + umoci) to exactly the
# tree of the same changes saved on the whole base (no squash), and to the live tree but for the paths a mount
# hides, which keep the base's content. The container's changes: a file of a merged layer edited, a hard
# link's target deleted (its other name keeps the content), a whited-out path made again, an opaque directory
# recreated, a file of a kept layer deleted, a new file. An incremental save then builds on the squashed image.
# podman runs it when it is installed.
#
# Run: ctest -R integration/save-squash   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-squash.sh)
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
need_cmd umoci skopeo curl gzip setfattr setcap timeout "$PYTHON"
need_nbsnap
scratch_init nbsq

NS=nbsnap-sq
N=40
MAXL=36
HEADROOM=10 # NB_SQUASH_HEADROOM: layers left free for the incremental saves that follow
KEPT=$((MAXL - 1 - HEADROOM))
SQUASH=$((N - KEPT))

step "registry, a base of $N layers, notebook, baseline"
registry_start "$SCRATCH/registry"
base_image_build_deep "$SCRATCH/base" nbsnap-test/deep:v1 "$N"
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$REGISTRY_URL/v2/nbsnap-test/deep/manifests/v1" >"$SCRATCH/base-manifest.json"
check "the base has $N layers" test "$(json_get "$SCRATCH/base-manifest.json" 'len(j["layers"])')" = "$N"
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"
check "the work volume hides the base's file under it" test ! -e "$M/home/ma-user/work/from-base.txt"

step "the container's changes"
echo "edited in the container" >"$M/opt/deep/modified.txt" # a file of a merged layer
rm "$M/opt/deep/hl/a"                                      # a hard link's target (b keeps the content)
echo "made again" >"$M/opt/deep/gone.txt"                  # whited out in a merged layer
rm -r "$M/opt/deep/opaque"                                 # opaque in a merged layer: recreated
mkdir "$M/opt/deep/opaque"
echo fresh >"$M/opt/deep/opaque/fresh"
rm "$M/opt/deep/layer010.txt" # a file of a kept layer
mkdir -p "$M/opt/new"
head -c 300000 /dev/urandom >"$M/opt/new/data.bin"
sleep 0.2 # a change within 100 ms of a save is read again by the next one (the incremental step below)

SAVE_ARGS=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image nbsnap-test/deep:v1
    --namespace "$NS" --name deep)

step "the same changes on the whole base, for reference (no squash: $((N + 1)) layers)"
run_nbsnap "$SCRATCH/ref" save "${SAVE_ARGS[@]}" --tag ref --max-layers 125
[[ $NBSNAP_RC -eq 0 ]] || fail "the reference save exited $NBSNAP_RC"
pull_image "$NS/deep:ref" "$SCRATCH/p-ref" || fail "cannot pull/unpack $NS/deep:ref"

step "--max-layers $MAXL: the top $SQUASH base layers squashed with the changes"
MARK=$(registry_log_mark)
run_nbsnap "$SCRATCH/sq" save "${SAVE_ARGS[@]}" --tag sq --max-layers "$MAXL" --incremental
[[ $NBSNAP_RC -eq 0 ]] || fail "the squashed save exited $NBSNAP_RC"
check "status ACTIVE" test "$(json_get "$SCRATCH/sq.out" 'j["status"]')" = ACTIVE
check "the note says which layers are merged" grep -q "its top $SQUASH are merged with the changes into the new layer, the $KEPT below are kept ($HEADROOM layers left for the next saves)" "$SCRATCH/sq.err"
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$REGISTRY_URL/v2/$NS/deep/manifests/sq" >"$SCRATCH/sq-manifest.json" || fail "GET manifest $NS/deep:sq"
check "$((KEPT + 1)) layers" test "$(json_get "$SCRATCH/sq-manifest.json" 'len(j["layers"])')" = "$((KEPT + 1))"
check "the bottom $KEPT are the base's, by digest" "$PYTHON" -c 'import json,sys
b = json.load(open(sys.argv[1]))["layers"]; n = json.load(open(sys.argv[2]))["layers"]; k = int(sys.argv[3])
sys.exit(0 if [l["digest"] for l in n[:k]] == [l["digest"] for l in b[:k]] else 1)' \
    "$SCRATCH/base-manifest.json" "$SCRATCH/sq-manifest.json" "$KEPT"
WRITES=$(registry_blob_writes_since "$MARK")
check "two blobs were uploaded: the new layer and the config ($(wc -w <<<"$WRITES"))" test "$(wc -w <<<"$WRITES")" = 2
check "no kept base layer was uploaded again" "$PYTHON" -c 'import json,sys
kept = {l["digest"] for l in json.load(open(sys.argv[1]))["layers"][:int(sys.argv[2])]}
sys.exit(1 if kept & set(sys.argv[3].split()) else 0)' "$SCRATCH/base-manifest.json" "$KEPT" "$WRITES"
check "the merged layers were downloaded (GET of each blob)" eval '[[ $(registry_log_since "$MARK" | grep -Ec "\"GET /v2/nbsnap-test/deep/blobs/sha256:") -ge $SQUASH ]]'
CONFIG=$(json_get "$SCRATCH/sq-manifest.json" 'j["config"]["digest"]')
fetch_blob "$NS/deep" "$CONFIG" "$SCRATCH/sq-config.json" || fail "cannot fetch the config"
check "config: $((KEPT + 1)) diff_ids, a history entry per layer, the last one says squashed" "$PYTHON" -c 'import json,sys
c = json.load(open(sys.argv[1])); n = int(sys.argv[2])
h = [x for x in c["history"] if not x.get("empty_layer")]
print("  last history entry: %r" % h[-1].get("created_by"), file=sys.stderr)
sys.exit(0 if len(c["rootfs"]["diff_ids"]) == n and len(h) == n and
         h[-1].get("created_by") == "nbsnap save (with the base'"'"'s top %s layers squashed)" % sys.argv[3] else 1)' \
    "$SCRATCH/sq-config.json" "$((KEPT + 1))" "$SQUASH"
TOP=$(json_get "$SCRATCH/sq-manifest.json" 'j["layers"][-1]["digest"]')
fetch_blob "$NS/deep" "$TOP" "$SCRATCH/sq-top.tgz" || fail "cannot fetch the new layer"
# The squash writes the merged layers bottom first, then the changes: a directory entry of a higher layer (or a
# directory the container changed) can follow entries below it. Every applier creates a missing parent and then
# takes the directory entry's metadata (docker, containerd, umoci; podman below), and the trees compare equal;
# every other rule of layerinfo.py must hold.
"$PYTHON" "$LIB/layerinfo.py" check "$SCRATCH/sq-top.tgz" --list "$SCRATCH/sq-top.list" >"$SCRATCH/sq-top.check" 2>&1 || true
grep -v '^layerinfo:' "$SCRATCH/sq-top.check" | grep -v 'comes after its child' | head -20 >&2 || true
check "the new layer breaks no layer rule but the order of directory entries (layerinfo.py check)" \
    eval '[[ -z $(grep "^error:" "$SCRATCH/sq-top.check" | grep -v "comes after its child") ]]'
check "a path the merged layers whited out and the container made again: the file, no whiteout" \
    eval '[[ $(layer_kind "$SCRATCH/sq-top.list" opt/deep/gone.txt) == f && -z $(layer_kind "$SCRATCH/sq-top.list" opt/deep/.wh.gone.txt) ]]'
check "the opaque marker of the recreated directory" eval '[[ $(layer_kind "$SCRATCH/sq-top.list" opt/deep/opaque/.wh..wh..opq) == o ]]'
check "the base's file under the work volume's mount point, from the merged layers" eval '[[ $(layer_kind "$SCRATCH/sq-top.list" home/ma-user/work/from-base.txt) == f ]]'
check "the whiteout of the kept layer's file" eval '[[ $(layer_kind "$SCRATCH/sq-top.list" opt/deep/.wh.layer010.txt) == w ]]'

step "the squashed image unpacks to the reference tree and to the live one"
pull_image "$NS/deep:sq" "$SCRATCH/p-sq" || fail "cannot pull/unpack $NS/deep:sq"
"$PYTHON" "$LIB/treecmp.py" "$SCRATCH/p-ref/bundle/rootfs" "$SCRATCH/p-sq/bundle/rootfs" >"$SCRATCH/treecmp-ref.txt" 2>&1 || true
grep -v '^treecmp:' "$SCRATCH/treecmp-ref.txt" | head -20 >&2 || true
check "squashed = the same changes on the whole base (treecmp, nothing ignored)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-ref.txt"
"$PYTHON" "$LIB/treecmp.py" --ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user \
    "$M" "$SCRATCH/p-sq/bundle/rootfs" >"$SCRATCH/treecmp-live.txt" 2>&1 || true
grep -v '^treecmp:' "$SCRATCH/treecmp-live.txt" | head -20 >&2 || true
check "squashed = the live tree, but for what mounts hide (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-live.txt"
R=$SCRATCH/p-sq/bundle/rootfs
check "a mount-hidden path keeps the base's content (/home/ma-user/work/from-base.txt)" \
    eval '[[ $(cat "$R/home/ma-user/work/from-base.txt") == "from the base image" && ! -e $R/home/ma-user/work/README-work-volume ]]'
check "/etc/hosts keeps the base's content" cmp -s "$R/etc/hosts" "$BASE_ROOTFS/etc/hosts"
check "the hard link's other name keeps the content" eval '[[ $(cat "$R/opt/deep/hl/b") == "hard link" && ! -e $R/opt/deep/hl/a ]]'
check "the recreated directory holds only what the container put there" eval '[[ $(ls "$R/opt/deep/opaque") == fresh ]]'
check "the edit, the file made again, the deletion in a kept layer" \
    eval '[[ $(cat "$R/opt/deep/modified.txt") == "edited in the container" && $(cat "$R/opt/deep/gone.txt") == "made again" && ! -e $R/opt/deep/layer010.txt ]]'

step "an incremental save on the squashed image"
echo "after the squash" >"$M/opt/new/after.txt"
run_nbsnap "$SCRATCH/inc" save "${SAVE_ARGS[@]}" --tag inc --max-layers "$MAXL" --incremental
[[ $NBSNAP_RC -eq 0 ]] || fail "the incremental save exited $NBSNAP_RC"
SQ_DIGEST=sha256:$(curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$REGISTRY_URL/v2/$NS/deep/manifests/sq" | sha256sum | cut -d' ' -f1)
check "incremental on the squashed image" grep -q "; incremental on $SQ_DIGEST)" <<<"$(json_get "$SCRATCH/inc.out" 'j["status_message"]')"
pull_image "$NS/deep:inc" "$SCRATCH/p-inc" || fail "cannot pull/unpack $NS/deep:inc"
"$PYTHON" "$LIB/treecmp.py" --ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user \
    "$M" "$SCRATCH/p-inc/bundle/rootfs" >"$SCRATCH/treecmp-inc.txt" 2>&1 || true
check "it unpacks to the live tree" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-inc.txt"

step "a real runtime: podman runs the squashed image"
if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then
    podman_init "$SCRATCH/podman" "$NS/deep:sq"
    podman_pull "$NS/deep:sq" || soft_fail "podman cannot pull $NS/deep:sq"
    OUT=$(podman_image_run "$NS/deep:sq" 0:0 sh -c 'cat /opt/deep/modified.txt /opt/deep/hl/b /home/ma-user/work/from-base.txt; ls /opt/deep/opaque') || OUT="(failed: $OUT)"
    note "podman: $OUT"
    check "podman: the edit, the link's content, the base's hidden file, the recreated directory" \
        test "$OUT" = $'edited in the container\nhard link\nfrom the base image\nfresh'
else
    note "podman or runc missing: not run under podman"
fi

finish_checks
