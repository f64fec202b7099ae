#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# Self-test of base_image_build_deep (tests/lib/base-image.sh), the deep base image of the squash tests: built with
# N=40, it has 40 layers in the registry (skopeo inspect; a distinct digest each; a history entry each), pulled back
# and unpacked with umoci it shows the documented tree (gone.txt absent, opaque/ holding only "new", modified.txt
# "top", the file under the work volume's mount point, one inode for the hard-link pair, the symlink, the xattr),
# the same tree as the BASE_ROOTFS it left (treecmp), and its top four layers hold what the table in
# base-image.sh says: the opaque marker in layer N-3, the whiteout of gone.txt in N-2, modified.txt and the work
# file in N-1, the hard links, symlink and xattr in N (layerinfo.py list; each a valid layer: layerinfo.py check).
# The same image pushed as Docker schema2 has 40 layers too. No nbsnap binary needed.
#
# Run: ctest -R integration/base-deep   (or: sudo bash tests/integration/base-deep.sh)
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$LIB/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"

need_root
need_cmd umoci skopeo curl setfattr getfattr setcap "$PYTHON"
scratch_init nbdeep

N=40
REPO=nbsnap-test/deep
ACCEPT=(-H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')

step "registry, base_image_build_deep N=$N"
registry_start "$SCRATCH/registry"
T0=$(date +%s%N)
base_image_build_deep "$SCRATCH/base" "$REPO:v1" "$N" || fail "base_image_build_deep failed"
note "base_image_build_deep N=$N (build + push): $((($(date +%s%N) - T0) / 1000000)) ms"
check "exports: BASE_LAYERS=$N, BASE_REF, BASE_REPO, BASE_TAG, BASE_OCI, BASE_ROOTFS" \
    eval '[[ $BASE_LAYERS == "$N" && $BASE_REF == "$REPO:v1" && $BASE_REPO == "$REPO" && $BASE_TAG == v1 &&
        $BASE_OCI == "$SCRATCH/base/oci:base" && -d $BASE_ROOTFS/opt/deep ]]'
check "a bad N is refused" eval '! (base_image_build_deep "$SCRATCH/bad" "$REPO:bad" 5 2>/dev/null)'

step "the registry's image: $N layers, distinct, one history entry each"
skopeo inspect --tls-verify=false "docker://$REGISTRY_HOST/$REPO:v1" >"$SCRATCH/inspect.json" || fail "skopeo inspect failed"
check "skopeo inspect: $N layers" test "$(json_get "$SCRATCH/inspect.json" 'len(j["Layers"])')" = "$N"
curl -sSf "${ACCEPT[@]}" "$REGISTRY_URL/v2/$REPO/manifests/v1" >"$SCRATCH/manifest.json" || fail "GET manifest failed"
check "manifest: $N distinct layer digests" test "$(json_get "$SCRATCH/manifest.json" 'len(set(l["digest"] for l in j["layers"]))')" = "$N"
fetch_blob "$REPO" "$(json_get "$SCRATCH/manifest.json" 'j["config"]["digest"]')" "$SCRATCH/config.json" || fail "cannot fetch the config"
check "config: $N diff_ids, $N non-empty history entries" \
    test "$(json_get "$SCRATCH/config.json" '"%d %d" % (len(j["rootfs"]["diff_ids"]), len([h for h in j["history"] if not h.get("empty_layer")]))')" = "$N $N"

step "pulled back and unpacked: the documented tree"
pull_image "$REPO:v1" "$SCRATCH/pull" || fail "cannot pull/unpack $REPO:v1"
R=$SCRATCH/pull/bundle/rootfs
D=$R/opt/deep
content() { [[ -f $1 && ! -L $1 && $(cat "$1") == "$2" ]]; }
check "layer 1 is there (/usr/bin/sh, /opt/t/modify.txt, /home/ma-user/.profile)" \
    eval '[[ -x $R/usr/bin/sh && -f $R/opt/t/modify.txt && -f $R/home/ma-user/.profile ]]'
missing=()
for ((i = 2; i <= N - 4; i++)); do
    f=$(printf '%s/layer%03d.txt' "$D" "$i")
    content "$f" "layer $i" || missing+=("${f#"$R"}")
done
check "layer002.txt .. layer$(printf %03d $((N - 4))).txt present, each 'layer i' (missing/wrong: ${missing[*]:-none})" test ${#missing[@]} = 0
check "no layer$(printf %03d $((N - 3))).txt (the fillers end at N-4)" test ! -e "$(printf '%s/layer%03d.txt' "$D" $((N - 3)))"
check "/opt/deep/gone.txt absent" test ! -e "$D/gone.txt" -a ! -L "$D/gone.txt"
check "/opt/deep/opaque holds only 'new' ($(cd "$D/opaque" && echo *))" \
    eval '[[ $(cd "$D/opaque" && find . -mindepth 1 | sort | tr "\n" " ") == "./new " ]] && content "$D/opaque/new" new'
check "/opt/deep/modified.txt says 'top'" content "$D/modified.txt" top
check "/home/ma-user/work/from-base.txt, 1000:100" \
    eval 'content "$R/home/ma-user/work/from-base.txt" "from the base image" && [[ $(stat -c %u:%g "$R/home/ma-user/work/from-base.txt" "$R/home/ma-user/work" | sort -u) == 1000:100 ]]'
check "/opt/deep/hl/a and b: one inode, 2 links, 'hard link'" \
    eval '[[ $(stat -c %i "$D/hl/a") == $(stat -c %i "$D/hl/b") && $(stat -c %h "$D/hl/a") == 2 ]] && content "$D/hl/b" "hard link"'
check "/opt/deep/link -> modified.txt" eval '[[ -L $D/link && $(readlink "$D/link") == modified.txt ]]'
check "/opt/deep/xattr.txt has user.nbsnap.deep=yes" \
    eval '[[ $(getfattr --only-values -n user.nbsnap.deep "$D/xattr.txt" 2>/dev/null) == yes ]] && content "$D/xattr.txt" xattr'
"$PYTHON" "$LIB/treecmp.py" "$BASE_ROOTFS" "$R" >"$SCRATCH/treecmp.txt" 2>&1 || true
check "BASE_ROOTFS equals the pulled image (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp.txt"
grep -v '^treecmp:' "$SCRATCH/treecmp.txt" | head -20 >&2 || true

step "the top four layers' tars"
mapfile -t LAYERS < <(json_get "$SCRATCH/manifest.json" '"\n".join(l["digest"] for l in j["layers"])')
# listing of layer I (1-based) in $SCRATCH/layerI.list; each must also be a valid layer on its own
for i in 3 $((N - 4)) $((N - 3)) $((N - 2)) $((N - 1)) "$N"; do
    fetch_blob "$REPO" "${LAYERS[i - 1]}" "$SCRATCH/layer$i.tgz" || fail "cannot fetch layer $i"
    check "layer $i: a valid layer (layerinfo.py check)" \
        "$PYTHON" "$LIB/layerinfo.py" check "$SCRATCH/layer$i.tgz" --list "$SCRATCH/layer$i.list"
done
kinds() { # kinds LISTING: "KIND NAME" of every entry, sorted, on one line
    cut -f1,2 "$1" | tr '\t' ' ' | sort | tr '\n' ';'
}
check "fillers: layer 3 holds only layer003.txt ($(kinds "$SCRATCH/layer3.list"))" \
    test "$(kinds "$SCRATCH/layer3.list")" = 'f opt/deep/layer003.txt;'
check "fillers: layer $((N - 4)) holds only layer$(printf %03d $((N - 4))).txt" \
    test "$(kinds "$SCRATCH/layer$((N - 4)).list")" = "f opt/deep/layer$(printf %03d $((N - 4))).txt;"
L=$SCRATCH/layer$((N - 3)).list
check "layer N-3: the opaque marker opt/deep/opaque/.wh..wh..opq, the dir and 'new', nothing else ($(kinds "$L"))" \
    test "$(kinds "$L")" = 'd opt/deep/opaque;f opt/deep/opaque/new;o opt/deep/opaque/.wh..wh..opq;'
L=$SCRATCH/layer$((N - 2)).list
check "layer N-2: the whiteout opt/deep/.wh.gone.txt, no other marker ($(kinds "$L"))" \
    eval '[[ $(layer_kind "$L" opt/deep/.wh.gone.txt) == w && $(awk -F"\t" "\$1 == \"w\" || \$1 == \"o\"" "$L" | wc -l) == 1 ]]'
L=$SCRATCH/layer$((N - 1)).list
check "layer N-1: modified.txt and home/ma-user/work/from-base.txt, no marker ($(kinds "$L"))" \
    eval '[[ $(layer_kind "$L" opt/deep/modified.txt) == f && $(layer_kind "$L" home/ma-user/work/from-base.txt) == f &&
        $(layer_kind "$L" home/ma-user/work) == d && -z $(awk -F"\t" "\$1 == \"w\" || \$1 == \"o\"" "$L") ]]'
L=$SCRATCH/layer$N.list
check "layer N: hl/a a file, hl/b a hard link to it, the symlink, the xattr file with its pax key ($(kinds "$L"))" \
    eval '[[ $(layer_kind "$L" opt/deep/hl/a) == f && $(layer_entries "$L" opt/deep/hl/b | cut -f1,3) == "h	opt/deep/hl/a" &&
        $(layer_entries "$L" opt/deep/link | cut -f1,3) == "l	modified.txt" &&
        $(layer_entries "$L" opt/deep/xattr.txt | cut -f1,8) == "f	SCHILY.xattr.user.nbsnap.deep" ]]'
check "only layer N-3 has an opaque marker, only layer N-2 a whiteout (of the six listed)" \
    eval '[[ $(cat "$SCRATCH"/layer*.list | awk -F"\t" "\$1 == \"w\" || \$1 == \"o\" { print \$1, \$2 }" | sort | tr "\n" ";") == "o opt/deep/opaque/.wh..wh..opq;w opt/deep/.wh.gone.txt;" ]]'

step "the same image as Docker schema2"
base_image_push "$SCRATCH/base" "$REPO:v2s2" v2s2 || fail "base_image_push v2s2 failed"
curl -sSf "${ACCEPT[@]}" "$REGISTRY_URL/v2/$REPO/manifests/v2s2" >"$SCRATCH/manifest-v2s2.json" || fail "GET v2s2 manifest failed"
check "v2s2: a Docker schema2 manifest of $N layers" \
    test "$(json_get "$SCRATCH/manifest-v2s2.json" 'j["mediaType"] + " " + str(len(j["layers"]))')" = "application/vnd.docker.distribution.manifest.v2+json $N"

finish_checks
