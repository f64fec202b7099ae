#!/bin/bash
# nbsnap save: whiteout and type-change edge cases, and a second-generation save (the saved image used as the
# base of the next notebook). Each generation is pulled back and compared with the live tree.
#
# Run: ctest -R integration/save-whiteout-edge   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-whiteout-edge.sh)
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
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
need_cmd umoci skopeo curl gzip setfattr setcap mkfifo mknod timeout "$PYTHON"
need_nbsnap
scratch_init nbsnap-edge
NS=nbsnap-edge

registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1

# save_and_compare GEN ROOT STATE BASE: save ROOT as $NS/edge:GEN on BASE, pull it, compare; sets LAYER_TSV
save_and_compare() {
    local gen=$1 root=$2 state=$3 base=$4 digest
    run_nbsnap "$SCRATCH/save-$gen" save --root "$root" --state-dir "$state" --registry "$REGISTRY_URL" \
        --base-image "$base" --namespace "$NS" --name edge --tag "$gen" --description "edge cases $gen"
    [[ $NBSNAP_RC -eq 0 ]] || fail "$gen: nbsnap save exited $NBSNAP_RC"
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "$REGISTRY_URL/v2/$NS/edge/manifests/$gen" >"$SCRATCH/manifest-$gen.json" || fail "$gen: GET manifest failed"
    digest=$(json_get "$SCRATCH/manifest-$gen.json" 'j["layers"][-1]["digest"]')
    fetch_blob "$NS/edge" "$digest" "$SCRATCH/layer-$gen.tgz" || fail "$gen: cannot fetch the new layer"
    check "$gen: new layer is clean gzip" check_blob_gzip "$NS/edge" "$digest"
    LAYER_TSV=$SCRATCH/layer-$gen.tsv
    layer_list "$SCRATCH/layer-$gen.tgz" "$LAYER_TSV"
    "$PYTHON" "$LIB/layerinfo.py" check "$SCRATCH/layer-$gen.tgz" >"$SCRATCH/layer-$gen.check" 2>&1 || true
    check "$gen: layer structure" eval '! grep -q "^error:" "$SCRATCH/layer-$gen.check"'
    grep '^error:' "$SCRATCH/layer-$gen.check" | head -10 >&2 || true
    pull_image "$NS/edge:$gen" "$SCRATCH/pull-$gen" || fail "$gen: cannot pull $NS/edge:$gen"
    "$PYTHON" "$LIB/treecmp.py" --ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user \
        "$root" "$SCRATCH/pull-$gen/bundle/rootfs" >"$SCRATCH/treecmp-$gen.txt" 2>&1 || true
    check "$gen: pulled image equals the live tree" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-$gen.txt"
    grep -v '^treecmp:' "$SCRATCH/treecmp-$gen.txt" | head -20 >&2 || true
}
kind_of() { layer_kind "$LAYER_TSV" "$1"; }

step "generation 1: edge cases on the test base"
notebook_mount "$SCRATCH/nb1" "$BASE_ROOTFS"
M=$NB_MERGED
T=$M/opt/t
run_nbsnap "$SCRATCH/baseline1" baseline --root "$M" --state-dir "$SCRATCH/state1"
[[ $NBSNAP_RC -eq 0 ]] || fail "baseline (gen 1) exited $NBSNAP_RC"
mv "$T/delete-tree" "$T/renamed-tree"                        # rename: whiteout old name + new tree
cp -a "$T/modify.txt" "$T/modify.txt.tmp" && rm "$T/modify.txt" && mv "$T/modify.txt.tmp" "$T/modify.txt" # same content, new inode
rm "$T/links/b"                                              # one name of a base hard-link pair
rm -rf "$T/special"                                          # a dir with fifo, devices, setuid, sticky
rm -rf "$T/recreate" && mv "$T/dir-to-file" "$T/recreate" # another dir moved into a deleted dir's place
chmod 0700 "$T/names" && rm "$T/names/keep"                  # dir metadata change + a child deleted
rm -rf "$T/xattr" && mkdir "$T/xattr"                        # emptied by recreation: opaque, no children
rm "$T/layer2-modified"                                      # a file that a base layer modified
rm "$M/etc/layer2-file"                                      # a file that the second base layer added
check "baseline-to-save changes done" true
save_and_compare gen1 "$M" "$SCRATCH/state1" nbsnap-test/base:v1
check "gen1: rename -> whiteout for the old name" eval '[[ $(kind_of opt/t/.wh.delete-tree) == w && $(kind_of opt/t/renamed-tree) == d ]]'
check "gen1: no entries below the renamed-away path" eval '[[ -z $(layer_below "$LAYER_TSV" opt/t/delete-tree) ]]'
check "gen1: removed name of a hard-link pair -> whiteout, the other name untouched" eval '[[ $(kind_of opt/t/links/.wh.b) == w && -z $(kind_of opt/t/links/a) ]]'
check "gen1: removed dir with special files -> one whiteout" eval '[[ $(kind_of opt/t/.wh.special) == w && -z $(layer_below "$LAYER_TSV" opt/t/special) ]]'
check "gen1: dir moved into a deleted dir's place -> opaque" eval '[[ $(kind_of opt/t/recreate/.wh..wh..opq) == o ]]'
check "gen1: moved-away dir -> whiteout" eval '[[ $(kind_of opt/t/.wh.dir-to-file) == w ]]'
check "gen1: emptied-by-recreation dir -> opaque, no children" eval '[[ $(kind_of opt/t/xattr) == d && $(kind_of opt/t/xattr/.wh..wh..opq) == o && $(layer_below "$LAYER_TSV" opt/t/xattr | wc -l) -eq 2 ]]'
check "gen1: chmod dir + deleted child" eval '[[ $(kind_of opt/t/names) == d && $(kind_of opt/t/names/.wh.keep) == w ]]'
check "gen1: deleted files from the second base layer -> whiteouts" eval '[[ $(kind_of opt/t/.wh.layer2-modified) == w && $(kind_of etc/.wh.layer2-file) == w ]]'

step "generation 2: the saved image is the base of the next notebook"
GEN1_ROOTFS=$SCRATCH/pull-gen1/bundle/rootfs
notebook_mount "$SCRATCH/nb2" "$GEN1_ROOTFS"
M2=$NB_MERGED
run_nbsnap "$SCRATCH/baseline2" baseline --root "$M2" --state-dir "$SCRATCH/state2"
[[ $NBSNAP_RC -eq 0 ]] || fail "baseline (gen 2) exited $NBSNAP_RC"
rm -rf "$M2/opt/t/renamed-tree"                              # delete what gen 1 added
echo 'gen 2' >"$M2/opt/t/special"                            # re-add a path gen 1 whited out, as a file
mkdir "$M2/opt/t/delete-tree" && echo back >"$M2/opt/t/delete-tree/one" # re-add a path gen 1 deleted, as a dir
echo 'gen 2 file' >"$M2/opt/t/xattr/new"
save_and_compare gen2 "$M2" "$SCRATCH/state2" "$NS/edge:gen1"
check "gen2: manifest = gen1's layers + 1" "$PYTHON" -c '
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
sys.exit(0 if [l["digest"] for l in b["layers"][:-1]] == [l["digest"] for l in a["layers"]] else 1)' \
    "$SCRATCH/manifest-gen1.json" "$SCRATCH/manifest-gen2.json"
check "gen2: deleted gen-1 tree -> one whiteout" eval '[[ $(kind_of opt/t/.wh.renamed-tree) == w && -z $(layer_below "$LAYER_TSV" opt/t/renamed-tree) ]]'
check "gen2: re-added paths are plain entries" eval '[[ $(kind_of opt/t/special) == f && $(kind_of opt/t/delete-tree) == d && $(kind_of opt/t/delete-tree/one) == f ]]'

finish_checks
