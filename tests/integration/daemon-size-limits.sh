#!/bin/bash
# shellcheck disable=SC2016,SC2034,SC2119 # eval '...' assertions expand when they run (MARK is read there); daemon_stop takes no arguments here
# nbsnapd and the size limits of issue #11 read from its config file:
#  - max_image_size below the change: the create-image request is answered as usual (200, INIT), the save
#    reaches CREATE_FAILED within seconds with the message of `nbsnap save --max-image-size` (both sizes, the
#    largest directories with their bytes), and the registry saw no upload session;
#  - max_layer_size = 1M: a change of 3 MB is pushed as several layers of at most 1 MiB (ACTIVE); a 2 MiB
#    file then fails the save before any upload (CREATE_FAILED naming the file and its size);
#  - incremental = false makes a full save although an earlier save is recorded; by default a save builds on
#    the last one; chain_waste_max = 0 and a saved file deleted make a full save; max_layers too low for one
#    more layer makes a full save (the notes say why);
#  - a bad value (in the file or as a flag) makes nbsnapd refuse to start, naming the key.
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-size

MiB=$((1024 * 1024))

step "registry, base image, notebook, baseline"
notebook_setup
mkdir -p "$NB_MERGED/opt/big/a" "$NB_MERGED/opt/big/b"
head -c $((3 * MiB)) /dev/urandom >"$NB_MERGED/opt/big/a/three.bin"
head -c $((2 * MiB)) /dev/urandom >"$NB_MERGED/opt/big/b/two.bin"

step "max_image_size from the config file: CREATE_FAILED within seconds, nothing uploaded"
cat >"$SCRATCH/nbsnapd.conf" <<'CONF'
[nbsnapd]
max_image_size = 4M
CONF
daemon_start limits --config "$SCRATCH/nbsnapd.conf"
MARK=$(registry_log_mark)
START=$(date +%s)
api POST "$CREATE" -d '{"name":"too-big","tag":"v1"}'
check "create-image is 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
check "answered with status INIT" test "$(jget 'j["status"]')" = INIT
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 60 || fail "the save did not end"
ELAPSED=$(($(date +%s) - START))
api GET "$P/images/$ID"
check "CREATE_FAILED" test "$(jget 'j["status"]')" = CREATE_FAILED
check "within seconds ($ELAPSED s)" test "$ELAPSED" -le 10
MSG=$(jget 'j["status_message"]')
note "status_message: $MSG"
TOTAL=$((5 * MiB + $(stat -c %s "$NB_MERGED/opt/t/added/new.txt")))
check "the message gives the change's size ($TOTAL bytes)" grep -q "($TOTAL bytes)" <<<"$MSG"
check "the message gives the limit (4.0 MiB, $((4 * MiB)) bytes)" grep -q "4.0 MiB ($((4 * MiB)) bytes, max_image_size)" <<<"$MSG"
check "the message names the largest directories with their bytes" \
    grep -q "/opt/big/a 3.0 MiB ($((3 * MiB)) bytes), /opt/big/b 2.0 MiB ($((2 * MiB)) bytes)" <<<"$MSG"
check "the record says CREATE_FAILED" grep -q '"CREATE_FAILED"' "$STATE/images/$ID.json"
check "no upload session in the registry log" eval '[[ $(registry_log_since "$MARK" | grep -Ec "\"(POST|PUT|PATCH) /v2/[^ ]*/blobs/uploads/") == 0 ]]'
check "no manifest nbsnap-it/too-big:v1" test "$(manifest_status nbsnap-it/too-big v1)" = 404
daemon_stop
check "nbsnapd stops with 0" test "$DAEMON_RC" = 0

step "max_layer_size from the config file: several layers, each at most 1 MiB"
rm -rf "$NB_MERGED/opt/big"
mkdir -p "$NB_MERGED/opt/split"
for i in 01 02 03 04 05 06 07 08 09 10; do head -c $((300 * 1024)) /dev/urandom >"$NB_MERGED/opt/split/f$i"; done
cat >"$SCRATCH/split.conf" <<'CONF'
[nbsnapd]
max_image_size = 100M
max_layer_size = 1M
CONF
daemon_start split --config "$SCRATCH/split.conf"
api POST "$CREATE" -d '{"name":"split","tag":"v1"}'
check "create-image is 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 300 || fail "the split save did not end"
api GET "$P/images/$ID"
check "ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/nbsnap-it/split/manifests/v1" >"$SCRATCH/split-manifest.json" || fail "GET the split manifest failed"
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/${BASE_REF%:*}/manifests/${BASE_REF##*:}" >"$SCRATCH/base-manifest.json" || fail "GET the base manifest failed"
N_BASE=$(json_get "$SCRATCH/base-manifest.json" 'len(j["layers"])')
mapfile -t SIZES < <(json_get "$SCRATCH/split-manifest.json" '"\n".join(str(l["size"]) for l in j["layers"]['"$N_BASE"':])')
note "new layer sizes: ${SIZES[*]}"
check "at least 3 new layers (${SIZES[*]})" test "${#SIZES[@]}" -ge 3
check "each new layer at most 1048576 bytes" "$PYTHON" -c 'import sys; sys.exit(0 if all(int(x) <= 1048576 for x in sys.argv[1:]) else 1)' "${SIZES[@]}"

step "max_layer_size from the config file: a file bigger than a layer fails before any upload"
head -c $((2 * MiB)) /dev/urandom >"$NB_MERGED/opt/split/huge.bin"
MARK=$(registry_log_mark)
api POST "$CREATE" -d '{"name":"split","tag":"v2"}'
check "create-image is 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
check "answered with status INIT" test "$(jget 'j["status"]')" = INIT
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 60 || fail "the save did not end"
api GET "$P/images/$ID"
check "CREATE_FAILED" test "$(jget 'j["status"]')" = CREATE_FAILED
MSG=$(jget 'j["status_message"]')
note "status_message: $MSG"
check "the message names the file and its size" grep -q "/opt/split/huge.bin is 2.0 MiB ($((2 * MiB)) bytes)" <<<"$MSG"
check "the message names the limit" grep -q "1.0 MiB (1048576 bytes, max_layer_size)" <<<"$MSG"
check "no upload session in the registry log" eval '[[ $(registry_log_since "$MARK" | grep -Ec "\"(POST|PUT|PATCH) /v2/[^ ]*/blobs/uploads/") == 0 ]]'
daemon_stop
check "nbsnapd stops with 0" test "$DAEMON_RC" = 0
rm "$NB_MERGED/opt/split/huge.bin"

# chain_save NAME CONF TAG: a save with nbsnapd on CONF; prints its final status_message
chain_save() {
    local name=$1 conf=$2 tag=$3
    sleep 0.2 # a file changed within 100 ms of a save is packed again by the next: keep the chain exact
    daemon_start "$name" --config "$conf"
    api POST "$CREATE" -d "{\"name\":\"chain\",\"tag\":\"$tag\"}"
    [[ $HTTP_CODE == 200 ]] || fail "$name: create-image answered $HTTP_CODE"
    local id
    id=$(jget 'j["id"]')
    wait_image "$id" ACTIVE CREATE_FAILED --timeout 300 || fail "$name: the save did not end"
    api GET "$P/images/$id"
    [[ $(jget 'j["status"]') == ACTIVE ]] || fail "$name: $(jget 'j["status_message"]')"
    daemon_stop
    grep -h "full save:" "$SCRATCH/$name.log" >&2 || true
    jget 'j["status_message"]'
}

step "incremental, chain_waste_max and max_layers from the config file"
printf '[nbsnapd]\n' >"$SCRATCH/default.conf"
MSG=$(chain_save inc-start "$SCRATCH/default.conf" v0) # the chain's start (the files split:v1 packed were
# written just before it: those are read again, and stacking on them would waste them: a full save)
check "the default is incremental: the save says which kind it is ($MSG)" grep -Eq "; (full save|incremental on sha256:.*)\)$" <<<"$MSG"
printf '[nbsnapd]\nincremental = false\n' >"$SCRATCH/off.conf"
echo zero >"$NB_MERGED/opt/split/new-0"
MSG=$(chain_save inc-off "$SCRATCH/off.conf" v1)
check "incremental = false: a full save ($MSG)" grep -q "; full save)$" <<<"$MSG"
printf '[nbsnapd]\nchain_waste_max = 0\n' >"$SCRATCH/waste0.conf"
echo one >"$NB_MERGED/opt/split/new-1"
MSG=$(chain_save inc-on "$SCRATCH/waste0.conf" v2)
V0=$(curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/nbsnap-it/chain/manifests/v0" | sha256sum | cut -d' ' -f1)
check "incremental again: on v0, the last save made with incremental on ($MSG)" grep -q "; incremental on sha256:$V0)$" <<<"$MSG"
rm "$NB_MERGED/opt/split/f01"
MSG=$(chain_save waste0 "$SCRATCH/waste0.conf" v3)
check "chain_waste_max = 0 and a saved file deleted: a full save ($MSG)" grep -q "; full save)$" <<<"$MSG"
check "its note says why" grep -q "full save: stacking would leave .*chain_waste_max" "$SCRATCH/waste0.log"
printf '[nbsnapd]\nmax_layers = %d\n' "$((N_BASE + 1))" >"$SCRATCH/maxl.conf"
echo two >"$NB_MERGED/opt/split/new-2"
MSG=$(chain_save maxl "$SCRATCH/maxl.conf" v4)
check "max_layers = $((N_BASE + 1)): one more layer would pass it, a full save ($MSG)" grep -q "; full save)$" <<<"$MSG"
check "its note names max_layers" grep -q "full save: .*max_layers" "$SCRATCH/maxl.log"

# refuses NAME KEY [FLAGS...]: nbsnapd with FLAGS (after the usual ones) must exit non-zero at once, naming KEY
refuses() {
    local name=$1 key=$2 rc=0
    shift 2
    local -a args
    mapfile -t args < <(daemon_args "$name")
    timeout 20 "$NBSNAPD" "${args[@]}" "$@" >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.err" || rc=$?
    note "$name: exit $rc: $(head -c 300 "$SCRATCH/$name.err")"
    check "$name: nbsnapd refuses to start (exit $rc)" eval '[[ $rc -ne 0 && $rc -ne 124 ]]'
    check "$name: the error names $key" grep -q "$key" "$SCRATCH/$name.err"
    check "$name: nothing listens on its socket" test ! -S "$SCRATCH/$name.sock"
}

step "bad values: nbsnapd refuses to start and names the key"
i=0
for bad in garbage -1 5Q 1.5G 99999999999T; do
    i=$((i + 1))
    printf '[nbsnapd]\nmax_image_size = %s\n' "$bad" >"$SCRATCH/bad$i.conf"
    refuses "bad-file-$i" max_image_size --config "$SCRATCH/bad$i.conf"
    refuses "bad-flag-$i" max-image-size --max-image-size "$bad"
done
for bad in 5Q -1 garbage 512K 0; do
    i=$((i + 1))
    printf '[nbsnapd]\nmax_layer_size = %s\n' "$bad" >"$SCRATCH/bad$i.conf"
    refuses "bad-file-$i" max_layer_size --config "$SCRATCH/bad$i.conf"
    refuses "bad-flag-$i" max-layer-size --max-layer-size "$bad"
done

for bad in 0 1 ten 1001 -5; do
    i=$((i + 1))
    printf '[nbsnapd]\nmax_layers = %s\n' "$bad" >"$SCRATCH/bad$i.conf"
    refuses "bad-file-$i" max_layers --config "$SCRATCH/bad$i.conf"
    refuses "bad-flag-$i" max.layers --max-layers "$bad"
done
for bad in 101 -1 x 25%; do
    i=$((i + 1))
    printf '[nbsnapd]\nchain_waste_max = %s\n' "$bad" >"$SCRATCH/bad$i.conf"
    refuses "bad-file-$i" chain_waste_max --config "$SCRATCH/bad$i.conf"
    refuses "bad-flag-$i" chain.waste.max --chain-waste-max "$bad"
done
for bad in maybe 2 ''; do
    i=$((i + 1))
    printf '[nbsnapd]\nincremental = %s\n' "$bad" >"$SCRATCH/bad$i.conf"
    refuses "bad-file-$i" incremental --config "$SCRATCH/bad$i.conf"
done

finish_checks
