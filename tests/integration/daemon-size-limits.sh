#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# nbsnapd and the size limits of issue #11 read from its config file:
#  - max_image_size below the change: the create-image request is answered as usual (200, INIT), the save
#    reaches CREATE_FAILED within seconds with the message of `nbsnap save --max-image-size` (both sizes, the
#    largest directories with their bytes), and the registry saw no upload session;
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
check "no upload session in the registry log" eval '! registry_log_since "$MARK" | grep -Eq "\"(POST|PUT|PATCH) /v2/[^ ]*/blobs/uploads/"'
check "no manifest nbsnap-it/too-big:v1" test "$(manifest_status nbsnap-it/too-big v1)" = 404
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

finish_checks
