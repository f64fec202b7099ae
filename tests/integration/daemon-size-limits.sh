#!/bin/bash
# shellcheck disable=SC2016,SC2034,SC2119 # eval '...' assertions expand when they run (MARK is read there); daemon_stop takes no arguments here
# nbsnapd and the size limits of issue #11 read from its config file:
#  - max_image_size below the change: the create-image request is answered as usual (200, INIT), the save
#    reaches CREATE_FAILED within seconds with the message of `nbsnap save --max-image-size` (both sizes, the
#    largest directories with their bytes), and the registry saw no upload session;
#  - max_layer_size = 1M: a change of 3 MB is pushed as several layers of at most 1 MiB (ACTIVE); a 2 MiB
#    file then fails the save before any upload (CREATE_FAILED naming the file and its size);
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

finish_checks
