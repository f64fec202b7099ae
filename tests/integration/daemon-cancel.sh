#!/bin/bash
# shellcheck disable=SC2016,SC2119 # check "..." '...' assertions expand when they run; helpers take no arguments here
# Cancel a running save: DELETE /v1/{project_id}/images/{id} on an image that is CREATING, for real. The
# agent pushes through tests/lib/faultproxy.py, which delays each PATCH of the saves to be cancelled (a
# local registry takes the whole change set in well under a second) and forwards everything else as it is:
#  - a save of a large change set (full: --incremental false), caught while it uploads: the DELETE answers
#    200 with the image DELETED at once (the record in the state dir says so), a new save starts at once and
#    ends ACTIVE, the cancelled tag is not in the registry (curl, skopeo), and the registry's storage holds
#    no upload session (no startedat/data file under _uploads) once the cancelled worker has ended;
#  - the same with the registry frozen (SIGSTOP) when the DELETE arrives: DELETED well within the stop
#    timeout, a new save accepted while the registry is frozen, and once the registry is back (SIGCONT) the
#    chunk that was on the wire finishes, the upload session is deleted, the new save ends ACTIVE, no tag;
#  - a cancel while the manifest PUT is on the wire (held by the proxy, which logs it when it arrives, until
#    the rules change after the DELETE answered): the PUT is let finish, so the registry tags the image after
#    the DELETE answered; the agent deletes that manifest by digest once the worker has ended, and the tag is
#    gone;
#  - NB_CANCELLED_MAX: 4 cancelled saves still ending (their chunks held by the proxy for up to 60 s, within
#    the daemon's NBSNAP_REGISTRY_CANCEL_DRAIN of 120 s, until the rules change): a 5th cancel is 429 and
#    changes nothing; accepted once one has ended; no session left, no tag;
#  - the CLI: `nbsnap cancel ID` on a running save, `nbsnap delete ID` on an ACTIVE image (the manifest is
#    deleted from the registry) and on an unknown id (exit 1, the error code and message on stderr);
#  - nbsnap_saves_total{result="DELETED"} counts the cancelled saves;
#  - DELETE of an unknown id: 404 ModelArts.6404.
#
# Run: ctest -R integration/daemon-cancel   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-cancel
: "${BULK_FILES:=32}" # of 1 MiB, incompressible: 512 PATCHes of 64 KiB
STOP_TIMEOUT=20
CANCEL_DRAIN=120 # s a cancelled save lets its request on the wire finish: longer than the proxy's holds
HOLD=60          # s the proxy holds a request at most (released earlier when the rules change)
SLOW='{"rules": [{"id": "slow", "method": "PATCH", "count": 0, "action": "delay", "seconds": 0.05}]}'
FAST='{"rules": []}'

step "registry, base image, notebook, baseline, $BULK_FILES MiB of changes"
notebook_setup
make_bulk "$NB_MERGED/opt/t/bulk" "$BULK_FILES" 1048576
faultproxy_start
NBSNAP_REGISTRY_CANCEL_DRAIN=$CANCEL_DRAIN daemon_start cancel --registry "$PROXY_URL" --chunk-size 65536 --incremental false --stop-timeout "$STOP_TIMEOUT"

# Files of upload sessions in the registry's storage: distribution keeps startedat and data per session
# (a session it deleted may leave its hashstates directory behind: files are counted, not directories).
sessions() {
    find "$REGISTRY_DIR/data/docker/registry/v2/repositories" -path '*/_uploads/*' -type f \
        \( -name startedat -o -name data \) 2>/dev/null | wc -l
}
no_sessions() { [[ $(sessions) -eq 0 ]]; }
# PATCHes the proxy delayed so far (its log: one JSON line per request)
slow_patches() { grep -c '"rule": "slow"' "$SCRATCH/proxy.log" 2>/dev/null || true; }
# uploading ID: the save is CREATING and 16 of its chunks went through (counted from MARK): it is uploading,
# with ~30 MB still to go at 20 chunks a second at most
uploading() {
    [[ $(slow_patches) -ge $((MARK + 16)) ]] || return 1
    api GET "$P/images/$1"
    jget 'j["status"] + ": " + j["status_message"]' >>"$SCRATCH/polled.txt"
    [[ "$(jget 'j["status"]')" == CREATING ]]
}
# no_tag REPO TAG: neither curl nor skopeo finds it
no_tag() {
    check "$1:$2: no manifest in the registry" test "$(manifest_status "$1" "$2")" = 404
    check "$1:$2: skopeo cannot inspect it" \
        eval '! skopeo inspect --tls-verify=false "docker://$REGISTRY_HOST/$1:$2" >/dev/null 2>&1'
}
ms() { date +%s%3N; }
# held RULE N: the proxy has logged (on arrival) at least N requests held by the delay rule RULE
held() { [[ $(grep -F '"status": "delayed"' "$SCRATCH/proxy.log" 2>/dev/null | grep -cF "\"rule\": \"$1\"") -ge $2 ]]; }

step "cancel of a save while it uploads"
faults "$SLOW"
MARK=$(slow_patches)
api POST "$CREATE" -d '{"name":"cancel-one","tag":"v1"}'
check "create-image 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_for "the save uploading" 120 uploading "$ID" || fail "never saw the save uploading (seen: $(sort -u "$SCRATCH/polled.txt" | tail -5))"
T0=$(ms)
api DELETE "$P/images/$ID"
T1=$(ms)
check "DELETE of a CREATING image: 200 (got $HTTP_CODE $(jget 'j.get("error_msg", "")'))" test "$HTTP_CODE" = 200
check "the answer says DELETED" test "$(jget 'j["status"]')" = DELETED
MSG=$(jget 'j["status_message"]')
check "saying it was cancelled while packing ($MSG)" \
    grep -Eq '^cancelled during the save \(it was CREATING: packing.*\); nothing was tagged$' <<<"$MSG"
check "answered at once ($((T1 - T0)) ms)" test $((T1 - T0)) -lt 5000
faults "$FAST"
check "the record in the state dir says DELETED" test "$(json_get "$STATE/images/$ID.json" 'j["status"]')" = DELETED
api GET "$P/images/$ID"
check "GET says DELETED" test "$(jget 'j["status"]')" = DELETED
api POST "$CREATE" -d '{"name":"cancel-after","tag":"v1"}'
check "a new save starts at once: 200 (got $HTTP_CODE $(jget 'j.get("error_msg", "")'))" test "$HTTP_CODE" = 200
ID_AFTER=$(jget 'j["id"]')
wait_image "$ID_AFTER" ACTIVE CREATE_FAILED --timeout 300 || fail "the save after the cancel did not end"
check "the save after the cancel is ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
no_tag nbsnap-it/cancel-one v1
wait_for "the cancelled save's upload session deleted" 60 no_sessions ||
    note "sessions left: $(find "$REGISTRY_DIR/data/docker/registry/v2/repositories" -path '*/_uploads/*' -type f)"
check "no upload session left in the registry ($(sessions) files)" no_sessions
wait_for "the cancelled worker's end logged" 30 grep -q "the cancelled save has ended" "$SCRATCH/cancel.log" || true
check "the cancelled worker's end is logged" grep -q "the cancelled save has ended" "$SCRATCH/cancel.log"
check "no 'wrong offset' in the registry's log" eval '! grep -q "wrong offest" "$REGISTRY_DIR/registry.log"'

step "cancel while the registry is frozen (SIGSTOP)"
faults "$SLOW"
MARK=$(slow_patches)
api POST "$CREATE" -d '{"name":"cancel-frozen","tag":"v1"}'
ID_FROZEN=$(jget 'j["id"]')
: >"$SCRATCH/polled.txt"
wait_for "the save uploading" 120 uploading "$ID_FROZEN" || fail "never saw the save uploading (seen: $(sort -u "$SCRATCH/polled.txt" | tail -5))"
kill -STOP "$REGISTRY_PID"
at_exit "kill -CONT $REGISTRY_PID 2>/dev/null || true"
T0=$(ms)
HTTP_CODE=$(curl -s -m "$STOP_TIMEOUT" -o "$SCRATCH/resp.json" -w '%{http_code}' --unix-socket "$SOCK" -X DELETE \
    "http://localhost$P/images/$ID_FROZEN") || HTTP_CODE=000
T1=$(ms)
check "frozen: DELETE 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
check "frozen: DELETED" test "$(jget 'j["status"]')" = DELETED
check "frozen: answered within the stop timeout, at once in fact ($((T1 - T0)) ms)" test $((T1 - T0)) -lt 5000
check "frozen: the record says DELETED" test "$(json_get "$STATE/images/$ID_FROZEN.json" 'j["status"]')" = DELETED
faults "$FAST"
api POST "$CREATE" -d '{"name":"frozen-after","tag":"v1"}'
check "frozen: a new save is accepted while the registry is frozen (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID_FROZEN_AFTER=$(jget 'j["id"]')
api GET /health
check "frozen: the agent keeps serving" test "$HTTP_CODE" = 200
check "frozen: the session is still there while the registry is frozen ($(sessions) files)" test "$(sessions)" -gt 0
sleep 3
kill -CONT "$REGISTRY_PID"
wait_for "the cancelled save's upload session deleted after SIGCONT" 60 no_sessions ||
    note "sessions left: $(find "$REGISTRY_DIR/data/docker/registry/v2/repositories" -path '*/_uploads/*' -type f)"
wait_image "$ID_FROZEN_AFTER" ACTIVE CREATE_FAILED --timeout 300 || fail "the save after the frozen cancel did not end"
check "frozen: the next save is ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
wait_for "no session" 30 no_sessions || true
check "frozen: no upload session left after SIGCONT ($(sessions) files)" no_sessions
no_tag nbsnap-it/cancel-frozen v1
api GET "$P/images/$ID_FROZEN"
check "frozen: still DELETED" test "$(jget 'j["status"]')" = DELETED
check "no 'wrong offset' in the registry's log" eval '! grep -q "wrong offest" "$REGISTRY_DIR/registry.log"'

step "cancel while the manifest PUT is on the wire"
# The PUT is held by the proxy (logged when it arrives) until the rules change after the DELETE, then forwarded:
# it is let finish (the drain), so the registry tags the image after the DELETE answered; the agent then
# deletes that manifest by digest, and the tag goes with it.
faults '{"rules": [{"id": "hold-manifest", "method": "PUT", "path": "/manifests/", "action": "delay",
    "seconds": '"$HOLD"', "log": "arrival", "release": true}]}'
api POST "$CREATE" -d '{"name":"cancel-manifest","tag":"v1"}'
ID_MANIFEST=$(jget 'j["id"]')
in_manifest() {
    api GET "$P/images/$1"
    [[ "$(jget 'j["status"] + ": " + j["status_message"]')" == "CREATING: pushing manifest"* ]]
}
wait_for "the manifest phase" 60 in_manifest "$ID_MANIFEST" || fail "never saw the save pushing its manifest"
wait_for "the manifest PUT held by the proxy" 60 held hold-manifest 1 || fail "the manifest PUT never reached the proxy"
api DELETE "$P/images/$ID_MANIFEST"
check "manifest: DELETE 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
check "manifest: DELETED" test "$(jget 'j["status"]')" = DELETED
check "manifest: cancelled in the manifest phase ($(jget 'j["status_message"]'))" \
    grep -Eq '^cancelled during the save \(it was CREATING: pushing manifest.*\); nothing was tagged$' <<<"$(jget 'j["status_message"]')"
faults "$FAST"
wait_for "the pushed manifest deleted" 60 grep -q "which the cancelled save pushed" "$SCRATCH/cancel.log" || true
check "manifest: the agent deleted the manifest the drained PUT pushed" \
    grep -Eq "deleted nbsnap-it/cancel-manifest@sha256:[0-9a-f]{64}, which the cancelled save pushed" "$SCRATCH/cancel.log"
no_tag nbsnap-it/cancel-manifest v1

step "NB_CANCELLED_MAX (4) cancelled saves still ending"
# Each save's chunks are held by the proxy (up to $HOLD s, logged when they arrive): a cancelled save lets its
# chunk on the wire finish (for up to $CANCEL_DRAIN s), so it is still ending while the next ones start and
# are cancelled. Changing the rules afterwards releases the held chunks.
faults '{"rules": [{"id": "hold", "method": "PATCH", "count": 0, "action": "delay", "seconds": '"$HOLD"',
    "log": "arrival", "release": true}]}'
HOLD_MARK=$(grep -F '"status": "delayed"' "$SCRATCH/proxy.log" | grep -cF '"rule": "hold"' || true)
packing() {
    api GET "$P/images/$1"
    [[ "$(jget 'j["status"] + ": " + j["status_message"]')" == "CREATING: packing"* ]]
}
HELD=()
for i in 1 2 3 4 5; do
    api POST "$CREATE" -d "{\"name\":\"held-$i\",\"tag\":\"v1\"}"
    check "held-$i: create-image 200 (got $HTTP_CODE $(jget 'j.get("error_msg", "")'))" test "$HTTP_CODE" = 200
    HELD+=("$(jget 'j["id"]')")
    wait_for "held-$i packing" 60 packing "${HELD[-1]}" || fail "held-$i never packed"
    wait_for "held-$i's first chunk held by the proxy" 60 held hold $((HOLD_MARK + i)) ||
        fail "held-$i's first chunk never reached the proxy"
    api DELETE "$P/images/${HELD[-1]}"
    if [[ $i -le 4 ]]; then
        check "held-$i: DELETE 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
    fi
done
check "the 5th cancel while 4 are still ending: 429 (got $HTTP_CODE)" test "$HTTP_CODE" = 429
check "429 is NBSNAP.TOO_MANY_REQUESTS" test "$(jget 'j["error_code"]')" = NBSNAP.TOO_MANY_REQUESTS
check "saying why ($(jget 'j["error_msg"]'))" \
    grep -q '^4 cancelled saves are still ending (deleting their upload sessions on the registry); try again later$' <<<"$(jget 'j["error_msg"]')"
api GET "$P/images/${HELD[4]}"
check "the refused cancel changed nothing: held-5 is CREATING" test "$(jget 'j["status"]')" = CREATING
# the held chunks go now; held-5 (not cancelled) goes on slowly, so it is still CREATING when a slot is free
faults "$SLOW"
cancel_again() {
    api DELETE "$P/images/${HELD[4]}"
    [[ $HTTP_CODE == 200 ]]
}
wait_for "a cancelled save ended: the 5th cancel accepted" 60 cancel_again
check "held-5: cancelled once the others ended ($HTTP_CODE)" test "$(jget 'j["status"]')" = DELETED
check "held-5: cancelled during the save ($(jget 'j["status_message"]'))" \
    grep -q '^cancelled during the save (it was CREATING' <<<"$(jget 'j["status_message"]')"
faults "$FAST"
wait_for "no session" 60 no_sessions || true
check "held: no upload session left ($(sessions) files)" no_sessions
for i in 1 2 3 4 5; do no_tag "nbsnap-it/held-$i" v1; done

step "the CLI: nbsnap cancel, nbsnap delete"
faults "$SLOW"
MARK=$(slow_patches)
api POST "$CREATE" -d '{"name":"cli-cancel","tag":"v1"}'
ID_CLI=$(jget 'j["id"]')
: >"$SCRATCH/polled.txt"
wait_for "the save uploading" 120 uploading "$ID_CLI" || fail "never saw the save uploading"
run_nbsnap "$SCRATCH/cli-cancel" cancel --socket "$SOCK" "$ID_CLI"
check "nbsnap cancel exits 0" test "$NBSNAP_RC" = 0
check "nbsnap cancel prints the image, DELETED" test "$(json_get "$SCRATCH/cli-cancel.out" 'j["status"]')" = DELETED
check "nbsnap cancel: the id" test "$(json_get "$SCRATCH/cli-cancel.out" 'j["id"]')" = "$ID_CLI"
faults "$FAST"
run_nbsnap "$SCRATCH/cli-cancel-again" cancel --socket "$SOCK" "$ID_CLI"
check "nbsnap cancel of a DELETED image exits 0" test "$NBSNAP_RC" = 0
wait_for "no session" 60 no_sessions || true
check "cli: no upload session left ($(sessions) files)" no_sessions
no_tag nbsnap-it/cli-cancel v1
check "the ACTIVE image's tag is there" test "$(manifest_status nbsnap-it/cancel-after v1)" = 200
run_nbsnap "$SCRATCH/cli-delete" delete --socket "$SOCK" "$ID_AFTER"
check "nbsnap delete of an ACTIVE image exits 0" test "$NBSNAP_RC" = 0
check "nbsnap delete prints it DELETED" test "$(json_get "$SCRATCH/cli-delete.out" 'j["status"]')" = DELETED
check "the deleted image's manifest is gone from the registry" test "$(manifest_status nbsnap-it/cancel-after v1)" = 404
run_nbsnap "$SCRATCH/cli-unknown" delete --socket "$SOCK" 00000000-0000-4000-8000-000000000000
check "nbsnap delete of an unknown id exits 1 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 1
check "with the error code and message on stderr ($(cat "$SCRATCH/cli-unknown.err"))" \
    grep -Eq '^nbsnap delete: ModelArts\.6404: image 00000000-0000-4000-8000-000000000000 not found$' "$SCRATCH/cli-unknown.err"
check "and the answer on stdout" test "$(json_get "$SCRATCH/cli-unknown.out" 'j["error_code"]')" = ModelArts.6404
run_nbsnap "$SCRATCH/cli-noid" cancel --socket "$SOCK"
check "nbsnap cancel without an id: usage, exit 2 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 2
check "saying an id is required" grep -q 'nbsnap cancel: an image id is required' "$SCRATCH/cli-noid.err"

step "metrics"
api GET /metrics
check "the cancelled saves are counted (9)" grep -Eq '^nbsnap_saves_total\{result="DELETED"\} 9$' "$SCRATCH/resp.json"

step "DELETE of an unknown id"
api DELETE "$P/images/00000000-0000-4000-8000-000000000000"
check "404 (got $HTTP_CODE)" test "$HTTP_CODE" = 404
check "ModelArts.6404" test "$(jget 'j["error_code"]')" = ModelArts.6404
check "naming the id" grep -q '00000000-0000-4000-8000-000000000000 not found' <<<"$(jget 'j["error_msg"]')"

step "the agent stops cleanly"
daemon_stop
check "nbsnapd exits 0 (got $DAEMON_RC)" test "$DAEMON_RC" = 0
check "nothing half-written in the state dir" no_half_written "$STATE"
finish_checks
