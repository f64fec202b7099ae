#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# nbsnap save --incremental (issue #11, part 1, and the chain's layer budget): a chain of saves of one
# notebook. The first save is full; each next one is the last save's image plus one layer holding only what
# changed since (edits, deletions, a chmod, new hard links, type changes), with the history entry
# "nbsnap save (incremental on <last manifest digest>)"; skopeo + umoci unpack every image of the chain to the
# live tree (treecmp). A 1 MiB edit on top of a bigger save uploads about 1 MiB. A full save comes back when
# stacking would leave more than chain_waste_max percent of the chain's bytes dead, when the last save's
# manifest is deleted from the registry, when the excludes change, and when one more layer would pass
# --max-layers. The record of the last save is written atomically and a failed save leaves the last one in
# place. Bad --max-layers / --chain-waste-max values exit 2 before anything is done.
#
# Run: ctest -R integration/save-incremental   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-incremental.sh)
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
need_cmd umoci skopeo curl gzip setfattr setcap timeout "$PYTHON"
need_nbsnap
scratch_init nbinc

NS=nbsnap-inc
KiB=1024
MiB=$((1024 * 1024))

step "registry, base image, notebook, baseline"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/nbsnap-test/base/manifests/v1" >"$SCRATCH/base-manifest.json"
N_BASE=$(json_get "$SCRATCH/base-manifest.json" 'len(j["layers"])')
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"
cp "$STATE/baseline" "$SCRATCH/baseline.orig"

SAVE_ARGS=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image nbsnap-test/base:v1
    --namespace "$NS" --incremental)
IGNORE=(--ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user)
LAST_DIGEST=
LAST_LAYERS=

# save NAME TAG [ARGS...]: nbsnap save --incremental; sets LAYERS (count), TOP (top layer listing),
# CREATED_BY (the top layer's history entry), DIGEST, TOP_SIZE (compressed bytes of the top layer).
save() {
    local name=$1 tag=$2
    shift 2
    # A file changed less than 100 ms before a save is recorded so that the next save reads it again
    # (snapshot.h, the record of a save): the tests' changes are made just before each save, so wait.
    sleep 0.2
    run_nbsnap "$SCRATCH/$name-$tag" save "${SAVE_ARGS[@]}" --name "$name" --tag "$tag" "$@"
    [[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save $name:$tag exited $NBSNAP_RC"
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "$REGISTRY_URL/v2/$NS/$name/manifests/$tag" >"$SCRATCH/$name-$tag.manifest" || fail "GET manifest $NS/$name:$tag"
    DIGEST=sha256:$(sha256sum <"$SCRATCH/$name-$tag.manifest" | cut -d' ' -f1)
    LAYERS=$(json_get "$SCRATCH/$name-$tag.manifest" 'len(j["layers"])')
    TOP_SIZE=$(json_get "$SCRATCH/$name-$tag.manifest" 'j["layers"][-1]["size"]')
    local top config
    top=$(json_get "$SCRATCH/$name-$tag.manifest" 'j["layers"][-1]["digest"]')
    fetch_blob "$NS/$name" "$top" "$SCRATCH/$name-$tag.top.tgz" || fail "cannot fetch the top layer"
    TOP=$SCRATCH/$name-$tag.top.list
    "$PYTHON" "$LIB/layerinfo.py" check "$SCRATCH/$name-$tag.top.tgz" --list "$TOP" ||
        soft_fail "$name:$tag: the top layer breaks a layer rule"
    config=$(json_get "$SCRATCH/$name-$tag.manifest" 'j["config"]["digest"]')
    fetch_blob "$NS/$name" "$config" "$SCRATCH/$name-$tag.config" || fail "cannot fetch the config"
    CREATED_BY=$(json_get "$SCRATCH/$name-$tag.config" '[h for h in j["history"] if not h.get("empty_layer")][-1]["created_by"]')
    note "$name:$tag: $LAYERS layers, top $TOP_SIZE bytes, created_by '$CREATED_BY'"
    grep -E "full save|incremental save" "$SCRATCH/$name-$tag.err" >&2 || true
}

# same_tree NAME TAG: the image unpacks to the live tree
same_tree() {
    pull_image "$NS/$1:$2" "$SCRATCH/p-$1-$2" || { soft_fail "cannot pull/unpack $NS/$1:$2"; return 1; }
    "$PYTHON" "$LIB/treecmp.py" "${IGNORE[@]}" "$M" "$SCRATCH/p-$1-$2/bundle/rootfs" >"$SCRATCH/treecmp-$1-$2.txt" 2>&1 || true
    grep -v '^treecmp:' "$SCRATCH/treecmp-$1-$2.txt" | head -20 >&2 || true
    grep -q ' 0 difference(s)' "$SCRATCH/treecmp-$1-$2.txt"
}

# incremental_on: the last save's image plus one layer, said so in the history
incremental_on() {
    [[ $CREATED_BY == "nbsnap save (incremental on $LAST_DIGEST)" && $LAYERS == $((LAST_LAYERS + 1)) ]]
}
full() {
    [[ $CREATED_BY == "nbsnap save" && $LAYERS == $((N_BASE + 1)) ]]
}
chained() { LAST_DIGEST=$DIGEST LAST_LAYERS=$LAYERS; }
top_names() { cut -f2 "$TOP" | sort | tr '\n' ' '; }

step "save 1: no earlier save, so a full one, recorded in the state dir"
mkdir -p "$M/opt/app/pkg" "$M/opt/app/kind"
head -c $((3 * MiB)) /dev/urandom >"$M/opt/app/pkg/weights.bin"
for i in 1 2 3 4 5; do echo "module $i" >"$M/opt/app/pkg/mod$i.py"; done
echo "was a file" >"$M/opt/app/kind/f2d"
mkdir "$M/opt/app/kind/d2f"
echo inside >"$M/opt/app/kind/d2f/child"
ln -s target "$M/opt/app/kind/l2f"
save chain v1
check "save 1 is full (created_by '$CREATED_BY', $LAYERS layers)" full
check "the note says why" grep -q "full save: no earlier save" "$SCRATCH/chain-v1.err"
check "status_message says full save" eval '[[ $(json_get "$SCRATCH/chain-v1.out" "j[\"status_message\"]") == *"; full save)" ]]'
check "last-save.json names the image and a record" eval '[[ $(json_get "$STATE/last-save.json" "j[\"manifest_digest\"]") == "$DIGEST" && -f $STATE/$(json_get "$STATE/last-save.json" "j[\"record\"]") ]]'
check "the container-start baseline is untouched" cmp -s "$STATE/baseline" "$SCRATCH/baseline.orig"
check "save 1 unpacks to the live tree" same_tree chain v1
chained

step "save 2: edits, a deletion, a chmod, new hard links, type changes"
echo "module 1, edited" >"$M/opt/app/pkg/mod1.py"
rm "$M/opt/app/pkg/mod2.py"
chmod 0600 "$M/opt/app/pkg/mod3.py"
ln "$M/opt/app/pkg/mod4.py" "$M/opt/app/pkg/mod4-link.py"
ln "$M/opt/t/links/base-only" "$M/opt/app/base-link" # a new name for an unchanged base file
rm "$M/opt/app/kind/f2d" && mkdir "$M/opt/app/kind/f2d" && echo new >"$M/opt/app/kind/f2d/x"
rm -r "$M/opt/app/kind/d2f" && echo "now a file" >"$M/opt/app/kind/d2f"
rm "$M/opt/app/kind/l2f" && echo "a file" >"$M/opt/app/kind/l2f"
rm "$M/opt/t/delete-file.txt" # a base file
save chain v2
check "save 2 is incremental on save 1 ($LAYERS layers, '$CREATED_BY')" incremental_on
check "status_message says so" eval '[[ $(json_get "$SCRATCH/chain-v2.out" "j[\"status_message\"]") == *"; incremental on $LAST_DIGEST)" ]]'
check "the new layer holds only what changed ($(top_names))" eval '[[ $(top_names) != *weights.bin* && $(top_names) != *mod5.py* ]]'
check "the edit, the chmod, the hard links, the type changes and the whiteouts are in it" eval '
    [[ $(layer_kind "$TOP" opt/app/pkg/mod1.py) == f && $(layer_kind "$TOP" opt/app/pkg/.wh.mod2.py) == w &&
       -n $(layer_entries "$TOP" opt/app/pkg/mod3.py) && $(layer_kind "$TOP" opt/app/kind/f2d) == d &&
       $(layer_kind "$TOP" opt/app/kind/d2f) == f && $(layer_kind "$TOP" opt/app/kind/l2f) == f &&
       $(layer_kind "$TOP" opt/t/.wh.delete-file.txt) == w &&
       $(layer_kind "$TOP" opt/app/pkg/mod4-link.py)$(layer_kind "$TOP" opt/app/pkg/mod4.py) == fh ]]'
check "save 2 unpacks to the live tree" same_tree chain v2
chained

step "save 3: a 1 MiB edit uploads about 1 MiB"
head -c $MiB /dev/urandom >"$M/opt/app/pkg/edit.bin"
save chain v3
check "save 3 is incremental on save 2" incremental_on
check "its layer is small: $TOP_SIZE bytes (< 1.2 MiB; the chain holds $((3 * MiB)) more)" test "$TOP_SIZE" -lt $((MiB + MiB / 5))
check "save 3 unpacks to the live tree" same_tree chain v3
chained

step "save 4: into another repository, deleting a directory saved earlier"
rm -r "$M/opt/app/kind"
save other v4
check "save 4 is incremental on save 3, from another repository" incremental_on
check "the chain's layers were mounted, not uploaded" eval '[[ $(grep -c "mounted from $NS/chain" "$SCRATCH/other-v4.err") -ge 1 ]]'
check "one whiteout for the directory" eval '[[ $(layer_kind "$TOP" opt/app/.wh.kind) == w && $(wc -l <"$TOP") -le 3 ]]'
check "save 4 unpacks to the live tree" same_tree other v4
chained

step "a save that fails leaves the last save's record in place"
cp "$STATE/last-save.json" "$SCRATCH/last-save.before"
echo x >"$M/opt/app/fail-me"
run_nbsnap "$SCRATCH/fail" save "${SAVE_ARGS[@]}" --name chain --tag bad --max-image-size 1
check "the save fails" test "$NBSNAP_RC" = 1
check "last-save.json unchanged" cmp -s "$STATE/last-save.json" "$SCRATCH/last-save.before"
check "one record in the state dir" test "$(find "$STATE" -maxdepth 1 -name 'saved-*' | wc -l)" = 1
rm "$M/opt/app/fail-me"

step "a save split into layers is not recorded: the next one builds on the save before"
cp "$STATE/last-save.json" "$SCRATCH/last-save.before"
mkdir -p "$M/opt/split"
for i in 1 2 3 4; do head -c $((700 * KiB)) /dev/urandom >"$M/opt/split/f$i"; done
save chain split --max-layer-size 1M
check "split into layers ($((LAYERS - LAST_LAYERS)) new) and said not recorded" \
    eval '[[ $LAYERS -gt $((LAST_LAYERS + 1)) ]] && grep -q "the next save cannot build on this one: a save split into layers is not recorded" "$SCRATCH/chain-split.err"'
check "last-save.json unchanged" cmp -s "$STATE/last-save.json" "$SCRATCH/last-save.before"
check "the split image unpacks to the live tree" same_tree chain split
rm -r "$M/opt/split"

step "dead bytes: replacing the 3 MiB file saved in the chain would leave it dead: a full save"
head -c $((3 * MiB)) /dev/urandom >"$M/opt/app/pkg/weights.bin"
save chain v5
check "save 5 is full ('$CREATED_BY', $LAYERS layers)" full
check "the note gives the dead bytes and chain_waste_max" grep -q "full save: stacking would leave .* dead .*chain_waste_max" "$SCRATCH/chain-v5.err"
check "save 5 unpacks to the live tree" same_tree chain v5
chained
echo "small edit" >"$M/opt/app/pkg/mod5.py"
save chain v6 --chain-waste-max 100
check "save 6 is incremental on save 5 again" incremental_on
chained

step "a corrupt record of the last save: a full save"
REC=$STATE/$(json_get "$STATE/last-save.json" 'j["record"]')
cp "$REC" "$SCRATCH/record.good"
printf 'Z' | dd of="$REC" bs=1 seek=40 conv=notrunc status=none
echo "after corruption" >"$M/opt/app/pkg/mod5.py"
save chain corrupt
check "a full save ('$CREATED_BY')" full
check "the note says the record cannot be used" grep -q "full save: the record of the last save cannot be used: .*corrupt" "$SCRATCH/chain-corrupt.err"
check "it unpacks to the live tree" same_tree chain corrupt
chained

step "the last save's manifest deleted from the registry: a full save"
curl -sSf -X DELETE "$REGISTRY_URL/v2/$NS/chain/manifests/$LAST_DIGEST" || fail "cannot delete the manifest"
echo "after delete" >"$M/opt/app/pkg/mod5.py"
save chain v7
check "save 7 is full ('$CREATED_BY')" full
check "the note says the image is gone" grep -q "full save: the last save's image .* is no longer in the registry" "$SCRATCH/chain-v7.err"
check "save 7 unpacks to the live tree" same_tree chain v7
chained

step "the layer budget: a chain that would pass --max-layers is saved in full"
MAXL=$((N_BASE + 2))
echo one >"$M/opt/app/budget"
save chain v8 --max-layers "$MAXL"
check "save 8 is incremental ($LAYERS layers = max $MAXL)" eval 'incremental_on && [[ $LAYERS == "$MAXL" ]]'
chained
echo two >"$M/opt/app/budget"
save chain v9 --max-layers "$MAXL"
check "save 9 is full: one more would pass $MAXL ('$CREATED_BY', $LAYERS layers)" full
check "the note names max_layers" grep -q "full save: .*max_layers" "$SCRATCH/chain-v9.err"
check "save 9 unpacks to the live tree" same_tree chain v9
chained

step "other excludes: a full save"
echo three >"$M/opt/app/budget"
save chain v10 --exclude /opt/app/pkg/edit.bin
check "save 10 is full ('$CREATED_BY')" full
check "the note says the excluded paths changed" grep -q "full save: the excluded paths" "$SCRATCH/chain-v10.err"

step "without --incremental: a full save, and it starts a new chain"
save chain v11 --exclude /opt/app/pkg/edit.bin # still with --incremental from SAVE_ARGS: builds on v10
check "save 11 is incremental on save 10" eval 'LAST_DIGEST=sha256:$(sha256sum <"$SCRATCH/chain-v10.manifest" | cut -d" " -f1) LAST_LAYERS=$((N_BASE + 1)); incremental_on'
run_nbsnap "$SCRATCH/plain" save --root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" \
    --base-image nbsnap-test/base:v1 --namespace "$NS" --name chain --tag plain
check "a save without --incremental is full" eval '[[ $NBSNAP_RC == 0 && $(json_get "$SCRATCH/plain.out" "j[\"status_message\"]") == *"; full save)" ]]'

step "bad --max-layers and --chain-waste-max values: exit 2 before anything is done"
for bad in "--max-layers 0" "--max-layers 1" "--max-layers ten" "--max-layers 1001" "--max-layers -5" \
    "--chain-waste-max 101" "--chain-waste-max -1" "--chain-waste-max x"; do
    MARK=$(registry_log_mark)
    # shellcheck disable=SC2086 # the flag and its value
    run_nbsnap "$SCRATCH/bad" save "${SAVE_ARGS[@]}" --name chain --tag bad $bad
    check "$bad: exit 2 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 2
    check "$bad: the reason on stderr" grep -q -- "${bad% *}" "$SCRATCH/bad.err"
    check "$bad: no request to the registry" eval '[[ -z $(registry_log_since "$MARK" | grep -E "\"(GET|HEAD|POST|PUT|PATCH) /v2/") ]]'
done

finish_checks
