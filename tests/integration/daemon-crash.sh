#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# nbsnapd killed (kill -9) at each phase of a save, and its state dir full or read-only, for real:
#  - kill -9 while walking (a tree of WALK_FILES unchanged files: nothing read or sent yet), while packing and
#    uploading (a PATCH held by tests/lib/faultproxy.py), and between the last blob and the manifest (the
#    manifest PUT held): after a restart the image is CREATE_FAILED ("the agent stopped during the save (it
#    was CREATING at <time>: <phase> ...); save again"), reported to the control plane, no temporary file in
#    the state dir, the tag absent from the registry, no save left running (no stale lock: a new save works);
#  - a temporary record a crash left between write and rename is removed at the next start;
#  - state dir full (a tmpfs filled up): create-image gets 507 NBSNAP.STATE_DIR_FULL saying the state dir is full,
#    nothing is written, no retry; a state dir that fills up during a save: the save's end is still recorded
#    and reported (the store's reserve), then new saves get 507 until there is room again;
#  - state dir read-only: create-image gets 500 saying so, nothing changes, the daemon keeps serving.
#
# Run: ctest -R integration/daemon-crash   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-crash mount
: "${WALK_FILES:=60000}"

step "registry, base image, notebook with $WALK_FILES unchanged files, baseline"
notebook_start
"$PYTHON" - "$NB_MERGED/opt/big" "$WALK_FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 500))
    if i % 500 == 0:
        os.makedirs(d)
    os.close(os.open(os.path.join(d, "f%06d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
PY
notebook_baseline
make_bulk "$NB_MERGED/opt/t/bulk" 1200 4096 # ~5 MB incompressible: ~75 PATCHes of 64 KiB

faultproxy_start

printf 'crash-token-%s\n' "$RANDOM$RANDOM" >"$SCRATCH/token"
receiver_start cp 0
FLAGS=(--registry "$PROXY_URL" --report-url "$RECEIVER_URL" --token-file "$SCRATCH/token" --report-retry-max 1
    --chunk-size 65536)
daemon_start crash "${FLAGS[@]}"

# status_is ID REGEX: the image's "STATUS: status_message" matches REGEX
status_is() {
    HTTP_CODE=$(curl -s -m 10 -o "$SCRATCH/resp.json" -w '%{http_code}' --unix-socket "$SOCK" \
        "http://localhost$P/images/$1") || return 1
    jget 'j["status"] + ": " + j["status_message"]' >>"$SCRATCH/polled.txt"
    [[ "$(jget 'j["status"] + ": " + j["status_message"]')" =~ $2 ]]
}
proxy_held() { # proxy_held METHOD PATH-REGEX: a request the proxy holds (a "stall" rule fired)
    "$PYTHON" -c 'import json,re,sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e["method"] == sys.argv[2] and re.search(sys.argv[3], e["path"]) and e["status"] == "stalled":
        sys.exit(0)
sys.exit(1)' "$SCRATCH/proxy.log" "$1" "$2"
}

# crash_after NAME PHASE-WORD: kill -9 the save of crash-NAME:v1 ($ID); restart and check the aftermath
crash_after() {
    local name=$1 phase=$2 id=$ID msg
    api GET "$P/images/$id"
    note "killed at: $(jget 'j["status"] + ": " + j["status_message"]')"
    daemon_stop KILL
    check "$name: the record says CREATING after kill -9" grep -q '"CREATING"' "$STATE/images/$id.json"
    faults '{"rules": []}'
    daemon_start crash "${FLAGS[@]}"
    api GET "$P/images/$id"
    msg=$(jget 'j["status_message"]')
    check "$name: after the restart, CREATE_FAILED" test "$(jget 'j["status"]')" = CREATE_FAILED
    check "$name: with a clear message naming the phase ($msg)" \
        grep -Eq "^the agent stopped during the save \(it was CREATING at [0-9T:.Z-]+: $phase.*\); save again$" <<<"$msg"
    check "$name: the record says CREATE_FAILED" grep -q '"CREATE_FAILED"' "$STATE/images/$id.json"
    wait_reports cp "$id" CREATE_FAILED 60 || true
    check "$name: reported INIT,CREATING,CREATE_FAILED ($(reports cp "$id"))" test "$(reports cp "$id")" = INIT,CREATING,CREATE_FAILED
    check "$name: no temporary file in the state dir" test -z "$(find "$STATE" -name '*.tmp*')"
    check "$name: the tag is not in the registry" test "$(manifest_status "nbsnap-it/crash-$name" v1)" = 404
    api GET /health
    check "$name: no save running after the restart" test "$(jget 'j["saving"]')" = false
}

# throttle PID: the process gets ~5% of a CPU (SIGSTOP/SIGCONT), so that a walk of a second takes many
throttle_start() {
    "$PYTHON" - "$1" <<'PY' &
import os, signal, sys, time
pid = int(sys.argv[1])
def done(*_):
    os.kill(pid, signal.SIGCONT)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
try:
    while True:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.095)
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
except ProcessLookupError:
    pass
PY
    THROTTLE_PID=$!
    at_exit "kill $THROTTLE_PID 2>/dev/null || true; kill -CONT $1 2>/dev/null || true"
}
throttle_stop() {
    kill "$THROTTLE_PID" 2>/dev/null || true
    wait "$THROTTLE_PID" 2>/dev/null || true
}

step "kill -9 while walking (the daemon throttled to ~5% of a CPU)"
faults '{"rules": []}'
api POST "$CREATE" -d '{"name":"crash-walk","tag":"v1"}'
ID=$(jget 'j["id"]')
throttle_start "$DAEMON_PID"
wait_for "the walk" 120 status_is "$ID" '^CREATING: packing[^:]*: [0-9]+% \(0\.0 of [0-9.]+ MB packed, [^;]*; [1-9][0-9]*(/~[0-9]+)? entries walked, 0\.0 MB sent\)' ||
    soft_fail "walk: never seen walking with nothing read yet (seen: $(sort -u "$SCRATCH/polled.txt" | head -c 2000))"
throttle_stop
crash_after walk packing

step "kill -9 while packing and uploading (a PATCH held by the proxy)"
faults '{"rules": [{"id": "hold", "method": "PATCH", "nth": 6, "action": "stall", "seconds": 120, "where": "before"}]}'
api POST "$CREATE" -d '{"name":"crash-upload","tag":"v1"}'
ID=$(jget 'j["id"]')
wait_for "a held PATCH" 180 proxy_held PATCH '/blobs/uploads/' || soft_fail "upload: the proxy never held a PATCH"
check "upload: chunks of the layer were uploaded when killed" "$PYTHON" -c 'import json,sys
n = sum(1 for e in map(json.loads, open(sys.argv[1])) if e["method"] == "PATCH" and "/crash-upload/" in e["path"] and e["status"] == 202)
sys.exit(0 if n >= 5 else 1)' "$SCRATCH/proxy.log"
crash_after upload packing

step "kill -9 between the last blob and the manifest (the manifest PUT held)"
faults '{"rules": [{"id": "hold", "method": "PUT", "path": "/manifests/", "action": "stall", "seconds": 120, "where": "before"}]}'
api POST "$CREATE" -d '{"name":"crash-manifest","tag":"v1"}'
ID=$(jget 'j["id"]')
wait_for "the held manifest PUT" 300 proxy_held PUT '/manifests/' || soft_fail "manifest: the proxy never held the manifest PUT"
wait_for "the manifest phase" 10 status_is "$ID" '^CREATING: pushing manifest' || true
crash_after manifest 'pushing manifest'

step "a temporary record left by a crash is removed at the next start"
daemon_stop KILL
printf '{"half": ' >"$STATE/images/.00000000-0000-4000-8000-000000000000.json.tmp"
printf '{"half": ' >"$STATE/outbox/.00000000000000000099.json.tmp"
daemon_start crash "${FLAGS[@]}"
check "both removed" test -z "$(find "$STATE" -name '*.tmp*')"
check "the log says so" grep -q 'removed 2 temporary file(s) a crash left in the state dir' "$SCRATCH/crash.log"

step "a new save works after the crashes"
api POST "$CREATE" -d '{"name":"after-crash","tag":"v1"}'
check "create-image 200" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 600 || true
check "ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
check "the tag is in the registry" test "$(manifest_status nbsnap-it/after-crash v1)" = 200
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0

step "state dir full before the request"
FULL=$SCRATCH/state-full
tmpfs_state "$FULL" 2048
daemon_start full "${FLAGS[@]}" --state-dir "$FULL"
check "the store keeps a reserve" test -s "$FULL/.reserve"
check "the tmpfs is filled up" fill_up "$FULL"
api POST "$CREATE" -d '{"name":"full","tag":"v1"}'
check "create-image: 507 (got $HTTP_CODE)" test "$HTTP_CODE" = 507
check "NBSNAP.STATE_DIR_FULL" test "$(jget 'j["error_code"]')" = NBSNAP.STATE_DIR_FULL
check "saying the state dir is full ($(jget 'j["error_msg"]'))" grep -q "state dir $FULL is full" <<<"$(jget 'j["error_msg"]')"
check "nothing recorded" test -z "$(find "$FULL/images" "$FULL/outbox" -mindepth 1)"
check "nothing half-written" no_half_written "$FULL"
api GET "$P/images"
check "no image listed" test "$(jget 'j["total"]')" = 0
sleep 2
check "refused once, no retry loop" test "$(grep -c 'refusing a save' "$SCRATCH/full.log")" = 1
check "the daemon keeps serving" test "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" http://localhost/health)" = 200

step "state dir filling up during a save"
rm -f "$FULL/fill"
faults '{"rules": [{"id": "slow", "method": "PATCH", "nth": 3, "action": "delay", "seconds": 4}]}'
api POST "$CREATE" -d '{"name":"filling","tag":"v1"}'
check "with room again: create-image 200" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_for "CREATING" 60 status_is "$ID" '^CREATING: packing' || true
check "the tmpfs is filled up during the save" fill_up "$FULL"
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 300 || true
check "the save ends ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
check "its end is recorded on the full disk" test "$(json_get "$FULL/images/$ID.json" 'j["status"]')" = ACTIVE
wait_reports cp "$ID" ACTIVE 60 || true
check "and reported ($(reports cp "$ID"))" test "$(reports cp "$ID")" = INIT,CREATING,ACTIVE
check "nothing half-written" no_half_written "$FULL"
check "the reserve was spent" test ! -e "$FULL/.reserve"
api POST "$CREATE" -d '{"name":"full","tag":"v2"}'
check "then a new save: 507 (got $HTTP_CODE)" test "$HTTP_CODE" = 507
rm -f "$FULL/fill"
api POST "$CREATE" -d '{"name":"full","tag":"v3"}'
check "room again: 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
check "the reserve is back" test -s "$FULL/.reserve"
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 300 || true
check "and the save is ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0

step "state dir read-only"
RO=$SCRATCH/state-ro
tmpfs_state "$RO" 1024
mkdir -p "$RO/images" "$RO/outbox"
mount -o remount,ro "$RO"
daemon_start ro "${FLAGS[@]}" --state-dir "$RO"
check "it starts, and warns that saves are refused" grep -q "state dir $RO cannot be written (Read-only file system).*saves are refused" "$SCRATCH/ro.log"
api POST "$CREATE" -d '{"name":"ro","tag":"v1"}'
check "create-image: 500 (got $HTTP_CODE)" test "$HTTP_CODE" = 500
check "NBSNAP.INTERNAL" test "$(jget 'j["error_code"]')" = NBSNAP.INTERNAL
check "saying it is read-only ($(jget 'j["error_msg"]'))" grep -q "state dir $RO cannot be written (Read-only file system)" <<<"$(jget 'j["error_msg"]')"
check "nothing recorded" test -z "$(find "$RO/images" "$RO/outbox" -mindepth 1)"
api GET "$P/images"
check "no image listed" test "$(jget 'j["total"]')" = 0
sleep 2
check "refused once, no retry loop" test "$(grep -c 'refusing a save' "$SCRATCH/ro.log")" = 1
check "the daemon keeps serving" test "$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" http://localhost/health)" = 200
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0

finish_checks
