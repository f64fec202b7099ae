#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# nbsnapd's state dir failing in the middle of a save, for real (the state dir is a small tmpfs of its own;
# uploads are slowed by tests/lib/faultproxy.py so that the save is caught while packing):
#  - the tmpfs is remounted read-only: the save's next record cannot be written, so the save is stopped
#    before its tag is pushed: CREATE_FAILED "the save was stopped because the state dir DIR cannot be
#    written: ... Read-only file system; ...", no tag in the registry, a bounded number of log lines, the
#    daemon keeps serving; the reports queued before (the control plane was down) are delivered once each,
#    not again and again although they cannot be removed from the read-only outbox. Writable again and
#    restarted: every record and report is whole JSON, no temporary file, the image is CREATE_FAILED on
#    disk and that is reported last;
#  - the tmpfs fills up and the store's reserve is gone: the same, with "No space left on device"; then a
#    new save works once there is room.
#
# Run: ctest -R integration/daemon-statedir   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-sd mount

step "registry, base image, notebook, baseline; a state dir on a tmpfs of its own"
notebook_setup
make_bulk "$NB_MERGED/opt/t/bulk" 600 4096 # ~2.4 MB incompressible: ~38 PATCHes of 64 KiB
SD=$SCRATCH/sd
tmpfs_state "$SD" 2048

faultproxy_start
SLOW='{"rules": [{"id": "slow", "method": "PATCH", "count": 0, "action": "delay", "seconds": 0.25}]}'

printf 'sd-token-%s\n' "$RANDOM$RANDOM" >"$SCRATCH/token"
receiver_start cp 0
FLAGS=(--registry "$PROXY_URL" --report-url "$RECEIVER_URL" --token-file "$SCRATCH/token" --report-retry-max 1
    --chunk-size 65536 --state-dir "$SD")

status_is() { # status_is ID REGEX: the image's "STATUS: status_message" matches REGEX
    HTTP_CODE=$(curl -s -m 10 -o "$SCRATCH/resp.json" -w '%{http_code}' --unix-socket "$SOCK" \
        "http://localhost$P/images/$1") || return 1
    [[ "$(jget 'j["status"] + ": " + j["status_message"]')" =~ $2 ]]
}
log_lines() { grep -c -- "$1" "$SCRATCH/sd.log" || true; }
health() { curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" http://localhost/health; }
# dup_seqs NAME: every report the receiver got more than once carries the same sequence number each time
same_seq_when_resent() {
    "$PYTHON" - "$SCRATCH/$1.jsonl" <<'EOF'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r["body"]["id"], r["body"]["status"], r["body"]["update_at"])
    if seen.setdefault(key, r["seq"]) != r["seq"]:
        sys.exit(1)
EOF
}

# after_restart NAME ID: the state dir writable again and the daemon restarted: records whole, CREATE_FAILED
after_restart() {
    local name=$1 id=$2
    daemon_start sd "${FLAGS[@]}"
    check "$name: after the restart, every record and report is whole JSON, no temporary file" no_half_written "$SD"
    api GET "$P/images/$id"
    check "$name: after the restart, CREATE_FAILED ($(jget 'j["status_message"]'))" \
        test "$(jget 'j["status"]')" = CREATE_FAILED
    check "$name: the record on disk says CREATE_FAILED" \
        test "$(json_get "$SD/images/$id.json" 'j["status"]')" = CREATE_FAILED
    wait_reports cp "$id" CREATE_FAILED 60 || true
    check "$name: CREATE_FAILED reported last ($(reports cp "$id"))" \
        eval '[[ $(reports cp "$id") =~ ^INIT,CREATING(,INIT,CREATING)?,CREATE_FAILED$ ]]'
    check "$name: a report sent again after the restart keeps its sequence number" same_seq_when_resent cp
    check "$name: the tag is still not in the registry" test "$(manifest_status "nbsnap-it/$name" v1)" = 404
}

step "the state dir turns read-only during a save"
daemon_start sd "${FLAGS[@]}"
receiver_stop # the control plane is down: INIT and CREATING wait in the outbox
faults "$SLOW"
api POST "$CREATE" -d '{"name":"ro","tag":"v1"}'
check "create-image 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_for "packing" 60 status_is "$ID" '^CREATING: packing' || soft_fail "ro: the save was never seen packing"
check "ro: INIT and CREATING wait in the outbox" test "$(find "$SD/outbox" -name '*.json' | wc -l)" = 2
mount -o remount,ro "$SD"
MARK=$(wc -l <"$SCRATCH/sd.log")
receiver_start cp 0
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 120 || true
MSG=$(jget 'j["status_message"]')
check "ro: the save ends CREATE_FAILED ($(jget 'j["status"]'): $MSG)" test "$(jget 'j["status"]')" = CREATE_FAILED
check "ro: saying the state dir cannot be written" \
    grep -Eq "^the save was stopped because the state dir $SD cannot be written: cannot write the record of image $ID: Read-only file system; make room there or make it writable, then save again$" <<<"$MSG"
check "ro: the tag was never pushed" test "$(manifest_status nbsnap-it/ro v1)" = 404
wait_for "two POSTs to the control plane" 30 eval '[[ $(wc -l <"$SCRATCH/cp.attempts") -ge 2 ]]' || true
sleep 3 # a resending loop would show here
POSTS=$(wc -l <"$SCRATCH/cp.attempts")
if ((POSTS > 4)); then
    receiver_stop
    fail "ro: the reporter sends the reports it cannot remove from the read-only outbox again and again ($POSTS POSTs)"
fi
check "ro: the queued reports were delivered once each ($(reports cp "$ID"))" test "$(reports cp "$ID")" = INIT,CREATING
check "ro: the daemon keeps serving" test "$(health)" = 200
tail -n "+$((MARK + 1))" "$SCRATCH/sd.log" >"$SCRATCH/ro.log"
check "ro: one 'stopping the save' line" test "$(grep -c 'stopping the save, its end could not be recorded: ' "$SCRATCH/ro.log")" = 1
check "ro: a bounded number of error lines ($(wc -l <"$SCRATCH/ro.log") lines since the remount)" \
    test "$(wc -l <"$SCRATCH/ro.log")" -le 12
check "ro: the record on disk is the last one written (CREATING)" \
    test "$(json_get "$SD/images/$ID.json" 'j["status"]')" = CREATING
check "ro: nothing half-written" no_half_written "$SD"
api POST "$CREATE" -d '{"name":"ro","tag":"v2"}'
check "ro: a new save is refused meanwhile: 500 (got $HTTP_CODE)" test "$HTTP_CODE" = 500
daemon_stop TERM
check "ro: the daemon stops with 0 (got $DAEMON_RC)" test "$DAEMON_RC" = 0
mount -o remount,rw "$SD"
after_restart ro "$ID"

step "the state dir fills up during a save, its reserve gone"
faults "$SLOW"
api POST "$CREATE" -d '{"name":"full","tag":"v1"}'
check "create-image 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_for "packing" 60 status_is "$ID" '^CREATING: packing' || soft_fail "full: the save was never seen packing"
wait_reports cp "$ID" CREATING 30 || true
MARK=$(wc -l <"$SCRATCH/sd.log")
ATTEMPTS=$(wc -l <"$SCRATCH/cp.attempts")
rm -f "$SD/.reserve" # spent by an earlier write, as far as this save is concerned
check "full: the tmpfs is filled up" fill_up "$SD"
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 120 || true
MSG=$(jget 'j["status_message"]')
check "full: the save ends CREATE_FAILED ($(jget 'j["status"]'): $MSG)" test "$(jget 'j["status"]')" = CREATE_FAILED
check "full: saying the state dir cannot be written" \
    grep -Eq "^the save was stopped because the state dir $SD cannot be written: .*No space left on device; make room there" <<<"$MSG"
check "full: the tag was never pushed" test "$(manifest_status nbsnap-it/full v1)" = 404
sleep 2
check "full: the daemon keeps serving" test "$(health)" = 200
tail -n "+$((MARK + 1))" "$SCRATCH/sd.log" >"$SCRATCH/full.log"
check "full: one 'stopping the save' line" test "$(grep -c 'stopping the save, its end could not be recorded: ' "$SCRATCH/full.log")" = 1
check "full: a bounded number of log lines ($(wc -l <"$SCRATCH/full.log"))" test "$(wc -l <"$SCRATCH/full.log")" -le 12
# The save's upload session record (STATE_DIR/sessions) goes when the save ends: that room may let the stop's
# CREATE_FAILED be recorded and queued, once; nothing else can be, and nothing is sent again and again.
check "full: at most the CREATE_FAILED report since ($ATTEMPTS POSTs before, $(wc -l <"$SCRATCH/cp.attempts") now: $(reports cp "$ID"))" \
    eval '[[ $(wc -l <"$SCRATCH/cp.attempts") -le $((ATTEMPTS + 1)) && $(reports cp "$ID") =~ ^INIT,CREATING(,CREATE_FAILED)?$ ]]'
check "full: nothing half-written" no_half_written "$SD"
daemon_stop TERM
check "full: the daemon stops with 0 (got $DAEMON_RC)" test "$DAEMON_RC" = 0
rm -f "$SD/fill"
after_restart full "$ID"

step "room again: a new save works"
faults '{"rules": []}'
api POST "$CREATE" -d '{"name":"after","tag":"v1"}'
check "create-image 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 300 || true
check "ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
check "the tag is in the registry" test "$(manifest_status nbsnap-it/after v1)" = 200
check "the reserve is back" test -s "$SD/.reserve"
daemon_stop TERM
check "exit 0" test "$DAEMON_RC" = 0
if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$SCRATCH/sd.log"; then
    soft_fail "a sanitizer reported an error (see $SCRATCH/sd.log)"
fi

finish_checks
