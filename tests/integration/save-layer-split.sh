#!/bin/bash
# shellcheck disable=SC2016,SC2034 # check "..." eval '...' assertions expand when they run (MARK is read there)
# nbsnap save --max-layer-size (issue #11, part 3): a change of several MB saved with a 1M cap is cut into
# several layers: each blob at most 1 MiB (manifest sizes and the blobs themselves), each a clean gzip stream
# and a valid layer on its own (layerinfo.py check), whiteouts and opaque markers only in the first, a hard-link
# pair at a boundary in one layer, a new link to a base file with its target, diff_ids and one history entry
# per layer in order; skopeo + umoci unpack it to the live tree (treecmp) and to the tree of the same change
# saved as one layer. A file bigger than the cap fails before any upload, naming the file and its size; bad
# sizes exit 2.
#
# Run: ctest -R integration/save-layer-split   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-layer-split.sh)
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
scratch_init nbls

NS=nbsnap-ls
KiB=1024
MiB=$((1024 * 1024))
CAP=$MiB

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

step "a change of about 5 MB: files, deletions, a recreated directory, hard links across the tree"
mkdir -p "$M/opt/split/a" "$M/opt/split/m" "$M/opt/split/z"
for i in 01 02 03 04 05 06; do head -c $((300 * KiB)) /dev/urandom >"$M/opt/split/a/f$i"; done
# a hard-linked pair whose names are far apart in tree order: the link must stay with its target
head -c $((400 * KiB)) /dev/urandom >"$M/opt/split/a/linked"
for i in 07 08 09 10 11 12; do head -c $((300 * KiB)) /dev/urandom >"$M/opt/split/m/f$i"; done
ln "$M/opt/split/a/linked" "$M/opt/split/z/linked-too"
# a new link to an unchanged base file: both names go in the layer, together
ln "$M/opt/t/links/base-only" "$M/opt/split/z/base-only-link"
head -c $((200 * KiB)) /dev/zero >"$M/opt/split/z/zeros" # compresses: the cut is on tar bytes, never too late
setfattr -n user.nbsnap.split -v yes "$M/opt/split/z/zeros"
# whiteouts (a file, a tree) and an opaque directory, interleaved with the files in tree order
rm "$M/opt/t/delete-file.txt"
rm -rf "$M/opt/t/delete-tree"
rm -rf "$M/opt/t/recreate"
mkdir "$M/opt/t/recreate"
head -c $((300 * KiB)) /dev/urandom >"$M/opt/t/recreate/new-big"
echo small >"$M/opt/t/recreate/new-small"
echo 'zz at the end' >"$M/zz-top-file"

SAVE_ARGS=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image nbsnap-test/base:v1
    --namespace "$NS" --name split)

step "nbsnap save --max-layer-size 1M"
run_nbsnap "$SCRATCH/split" save "${SAVE_ARGS[@]}" --tag v1 --max-layer-size 1M
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save --max-layer-size 1M exited $NBSNAP_RC"
check "status ACTIVE" test "$(json_get "$SCRATCH/split.out" 'j["status"]')" = ACTIVE
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/$NS/split/manifests/v1" >"$SCRATCH/manifest.json" || fail "GET manifest $NS/split:v1 failed"
mapfile -t NEW < <(json_get "$SCRATCH/manifest.json" '"\n".join(l["digest"] for l in j["layers"]['"$N_BASE"':])')
mapfile -t SIZES < <(json_get "$SCRATCH/manifest.json" '"\n".join(str(l["size"]) for l in j["layers"]['"$N_BASE"':])')
N=${#NEW[@]}
note "new layers: $N, sizes ${SIZES[*]}"
check "several new layers ($N >= 4)" test "$N" -ge 4
check "base layers kept first" "$PYTHON" -c 'import json,sys; b=json.load(open(sys.argv[1]))["layers"]; n=json.load(open(sys.argv[2]))["layers"]; sys.exit(0 if [l["digest"] for l in n[:len(b)]] == [l["digest"] for l in b] else 1)' \
    "$SCRATCH/base-manifest.json" "$SCRATCH/manifest.json"
for i in "${!NEW[@]}"; do
    part=$((i + 1))
    fetch_blob "$NS/split" "${NEW[i]}" "$SCRATCH/part$part.tgz" || fail "cannot fetch layer $part"
    check "layer $part: manifest size ${SIZES[i]} <= $CAP" test "${SIZES[i]}" -le "$CAP"
    check "layer $part: the blob is ${SIZES[i]} bytes" test "$(stat -c %s "$SCRATCH/part$part.tgz")" = "${SIZES[i]}"
    check "layer $part: gzip -t" check_blob_gzip "$NS/split" "${NEW[i]}"
    check "layer $part: a valid layer on its own (layerinfo.py check)" \
        "$PYTHON" "$LIB/layerinfo.py" check "$SCRATCH/part$part.tgz" --list "$SCRATCH/part$part.list"
done

step "what went where"
markers() { awk -F'\t' '$1 == "w" || $1 == "o"' "$1" | wc -l; }
check "the first layer has the whiteouts and the opaque marker ($(markers "$SCRATCH/part1.list"))" \
    eval '[[ $(layer_kind "$SCRATCH/part1.list" opt/t/.wh.delete-file.txt) == w && $(layer_kind "$SCRATCH/part1.list" opt/t/.wh.delete-tree) == w && $(layer_kind "$SCRATCH/part1.list" opt/t/recreate/.wh..wh..opq) == o ]]'
for ((part = 2; part <= N; part++)); do
    check "layer $part: no whiteout or opaque marker" test "$(markers "$SCRATCH/part$part.list")" = 0
done
check "the first layer has every changed directory (opt/split/m, opt/t/recreate)" \
    eval '[[ $(layer_kind "$SCRATCH/part1.list" opt/split/m) == d && $(layer_kind "$SCRATCH/part1.list" opt/t/recreate) == d ]]'
# where NAME is: "PART KIND" of every entry named NAME, over all the layers
where() {
    local p
    for ((p = 1; p <= N; p++)); do
        N_=$1 awk -F'\t' -v p="$p" '$2 == ENVIRON["N_"] { print p, $1 }' "$SCRATCH/part$p.list"
    done
}
check "each path in one layer only" eval '[[ -z $(cat "$SCRATCH"/part*.list | cut -f2 | sort | uniq -d) ]]'
pair_together() { # pair_together A B: one of them carries the data, the other links to it, in the same layer
    local a b
    a=$(where "$1") b=$(where "$2")
    note "  $1: $a; $2: $b"
    [[ ${a% *} == "${b% *}" && "$(printf '%s\n%s\n' "${a#* }" "${b#* }" | sort | tr -d '\n')" == fh ]]
}
check "the hard-linked pair a/linked, z/linked-too: in one layer, data once" pair_together opt/split/a/linked opt/split/z/linked-too
check "the new link to a base file: with its target, data once" pair_together opt/t/links/base-only opt/split/z/base-only-link
check "the hard-linked pair is not in the first layer's part of the tree alone (the split really cut between them)" \
    eval '[[ $(where opt/split/a/f01 | cut -d" " -f1) != $(where opt/split/m/f12 | cut -d" " -f1) ]]'

step "config: a diff_id and a history entry per layer, in order"
CONFIG=$(json_get "$SCRATCH/manifest.json" 'j["config"]["digest"]')
fetch_blob "$NS/split" "$CONFIG" "$SCRATCH/config.json" || fail "cannot fetch the config"
for ((part = 1; part <= N; part++)); do
    echo "sha256:$(gzip -dc "$SCRATCH/part$part.tgz" | sha256sum | cut -d' ' -f1)"
done >"$SCRATCH/diff_ids"
check "diff_ids: the base's, then each layer's in order" "$PYTHON" -c '
import json, sys
c = json.load(open(sys.argv[1])); want = open(sys.argv[2]).read().split(); nb = int(sys.argv[3])
ids = c["rootfs"]["diff_ids"]
sys.exit(0 if len(ids) == nb + len(want) and ids[nb:] == want else 1)' "$SCRATCH/config.json" "$SCRATCH/diff_ids" "$N_BASE"
check "history: nbsnap save, then nbsnap save (part i of $N)" "$PYTHON" -c '
import json, sys
h = [x for x in json.load(open(sys.argv[1]))["history"] if not x.get("empty_layer")]
n = int(sys.argv[2])
want = ["nbsnap save"] + ["nbsnap save (part %d of %d)" % (i, n) for i in range(2, n + 1)]
got = [x.get("created_by") for x in h[-n:]]
print("  history: %r" % got, file=sys.stderr)
sys.exit(0 if got == want else 1)' "$SCRATCH/config.json" "$N"

step "the image unpacks to the live tree, and to the tree of the same change in one layer"
pull_image "$NS/split:v1" "$SCRATCH/p-split" || fail "cannot pull/unpack $NS/split:v1"
# /home/ma-user changed before the baseline (the work volume's mount point): not saved, by design
IGNORE=(--ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user)
"$PYTHON" "$LIB/treecmp.py" "${IGNORE[@]}" "$M" "$SCRATCH/p-split/bundle/rootfs" >"$SCRATCH/treecmp-live.txt" 2>&1 || true
check "pulled split image equals the notebook (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-live.txt"
grep -v '^treecmp:' "$SCRATCH/treecmp-live.txt" | head -20 >&2 || true
run_nbsnap "$SCRATCH/one" save "${SAVE_ARGS[@]}" --tag one
check "the same change saved with the default cap: one layer" \
    eval '[[ $NBSNAP_RC == 0 && $(curl -sSf -H "Accept: application/vnd.oci.image.manifest.v1+json" "$REGISTRY_URL/v2/$NS/split/manifests/one" | "$PYTHON" -c "import json,sys; print(len(json.load(sys.stdin)[\"layers\"]))") == $((N_BASE + 1)) ]]'
pull_image "$NS/split:one" "$SCRATCH/p-one" || fail "cannot pull/unpack $NS/split:one"
"$PYTHON" "$LIB/treecmp.py" "$SCRATCH/p-one/bundle/rootfs" "$SCRATCH/p-split/bundle/rootfs" >"$SCRATCH/treecmp-one.txt" 2>&1 || true
check "split image equals the one-layer image (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-one.txt"

step "the same split with zstd: every blob within the cap and a clean zstd frame"
if command -v zstd >/dev/null 2>&1; then
    run_nbsnap "$SCRATCH/zstd" save "${SAVE_ARGS[@]}" --tag zstd --max-layer-size 1M --compression zstd
    check "zstd split save exits 0 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 0
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$REGISTRY_URL/v2/$NS/split/manifests/zstd" >"$SCRATCH/manifest-zstd.json" ||
        soft_fail "GET manifest $NS/split:zstd failed"
    mapfile -t ZNEW < <(json_get "$SCRATCH/manifest-zstd.json" '"\n".join(l["digest"] + " " + str(l["size"]) for l in j["layers"]['"$N_BASE"':])')
    check "zstd: several new layers (${#ZNEW[@]})" test "${#ZNEW[@]}" -ge 4
    for z in "${ZNEW[@]}"; do
        fetch_blob "$NS/split" "${z% *}" "$SCRATCH/z.blob" || { soft_fail "cannot fetch ${z% *}"; continue; }
        check "zstd layer ${z:7:12}: ${z#* } <= $CAP bytes, zstd -t" eval '[[ ${z#* } -le $CAP ]] && zstd -q -t "$SCRATCH/z.blob"'
    done
else
    note "zstd(1) missing: the zstd split is not checked"
fi

step "a file bigger than the cap: fails before any upload, naming it and its size"
mkdir -p "$M/opt/huge"
head -c $((2 * MiB)) /dev/urandom >"$M/opt/huge/big.bin"
MARK=$(registry_log_mark)
run_nbsnap "$SCRATCH/big" save "${SAVE_ARGS[@]}" --tag big --max-layer-size 1M
check "the save fails (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 1
MSG=$(json_get "$SCRATCH/big.out" 'j["status_message"]')
note "status_message: $MSG"
check "status CREATE_FAILED" test "$(json_get "$SCRATCH/big.out" 'j["status"]')" = CREATE_FAILED
check "the message names the file and its size" grep -q "/opt/huge/big.bin is 2.0 MiB ($((2 * MiB)) bytes)" <<<"$MSG"
check "the message names the limit" grep -q "max_layer_size" <<<"$MSG"
check "no upload session in the registry log" eval '[[ $(registry_log_since "$MARK" | grep -Ec "\"(POST|PUT|PATCH) /v2/[^ ]*/blobs/uploads/") == 0 ]]'
check "no manifest $NS/split:big" test "$(manifest_status "$NS/split" big)" = 404
rm -rf "$M/opt/huge"

step "bad --max-layer-size values: exit 2 before anything is done"
for bad in 5Q -1 -1M garbage '' 1.5G 512K 0 99999999999T; do
    MARK=$(registry_log_mark)
    run_nbsnap "$SCRATCH/bad" save "${SAVE_ARGS[@]}" --tag bad --max-layer-size "$bad"
    check "--max-layer-size '$bad': exit 2 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 2
    check "--max-layer-size '$bad': the reason on stderr" grep -q -- "--max-layer-size" "$SCRATCH/bad.err"
    check "--max-layer-size '$bad': no request to the registry" eval '[[ -z $(registry_log_since "$MARK" | grep -E "\"(GET|HEAD|POST|PUT|PATCH) /v2/") ]]'
done

finish_checks
