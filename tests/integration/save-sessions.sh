#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# No upload session is left open on the registry by a save that fails, is cancelled or is killed (issue #12,
# part 4). A real docker-registry (upload purging off) behind tests/lib/faultproxy.py; what is left is read
# from its storage: the startedat/data files under _uploads (a DELETEd session may leave empty directories
# and hashstates behind: files named startedat or data are what an open session has). Each save's sessions
# are recorded in STATE/sessions/<owner>.json (agent/sessions.h) before any data is sent to them:
#  - a: PATCH answered 503 forever: the save gives up at the retry deadline and DELETEs its session (the proxy
#    lets the DELETE through): nothing in _uploads, no record left;
#  - a-down: PATCH and DELETE answered 503 forever (the registry "down" for that session): the save fails, the
#    record keeps the session's URL (the session is there in _uploads: without the record it would stay
#    until distribution's purge); the next `nbsnap save` in the same state dir deletes it before it starts;
#  - c: `nbsnap save` killed (SIGKILL) while a PATCH is held by the proxy (not forwarded): the record names
#    the session's latest Location, the session is in _uploads; `nbsnap save` again in the same state dir
#    deletes it, and ends ACTIVE with nothing left;
#  - c-stale: killed while the registry has taken a PATCH whose answer the proxy holds back: the recorded
#    Location names an offset the session has passed, and distribution refuses it (404 BLOB_UPLOAD_INVALID,
#    "upload resumed at wrong offset"): the next save says so in a warning and drops the entry; the session
#    is left to the registry's purge (the limit docs/RELIABILITY.md states);
#  - b: nbsnapd: a save cancelled by DELETE of its image while it uploads: its session is deleted, the record
#    goes;
#  - d: nbsnapd killed (SIGKILL) during a save whose PATCH is held: the record stays with the URL; nbsnapd
#    started again deletes the session at start (logged) and drops the record;
#  - a record of a live owner (flock held) is never touched; a corrupt record is dropped with a warning and
#    does not stop a save.
#
# Run: ctest -R integration/save-sessions   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbss flock
export NBSNAP_REGISTRY_LOW_SPEED_TIME=3 NBSNAP_REGISTRY_RETRY_DEADLINE=3
CHUNK=65536
HOLD=60 # s the proxy holds a stalled PATCH (the killed save never sees its end)

step "registry, proxy, base image, notebook with 3 MiB of incompressible changes"
notebook_setup
make_bulk "$NB_MERGED/opt/t/bulk" 3 1048576 # 48 PATCHes of 64 KiB
faultproxy_start
SDIR=$STATE/sessions
STORE=$REGISTRY_DIR/data/docker/registry/v2/repositories

# open sessions in the registry's storage (all, or of repository nbsnap-it/NAME)
sessions() {
    find "$STORE${1:+/nbsnap-it/$1}" -path '*/_uploads/*' -type f \( -name startedat -o -name data \) 2>/dev/null | wc -l
}
no_sessions() { [[ $(sessions "$@") -eq 0 ]]; }
records() { find "$SDIR" -maxdepth 1 -name '*.json' 2>/dev/null | wc -l; }
# the URL recorded for repository nbsnap-it/NAME (the first one), or nothing
recorded_url() {
    "$PYTHON" - "$SDIR" "nbsnap-it/$1" <<'EOF'
import glob, json, sys
for f in glob.glob(sys.argv[1] + "/*.json"):
    try:
        j = json.load(open(f))
    except ValueError:
        continue
    for s in j.get("sessions", []):
        if s["repository"] == sys.argv[2]:
            print(s["url"])
            sys.exit(0)
EOF
}
# UUID of the session a recorded URL names, and whether the registry's storage has that session
url_uuid() { sed -E 's|.*/blobs/uploads/([^?]*).*|\1|' <<<"$1"; }
has_session() { [[ -e $STORE/nbsnap-it/$1/_uploads/$2/startedat ]]; }
stalled() { grep -c '"status": "stalled"' "$SCRATCH/proxy.log" 2>/dev/null || true; }

# cli_save OUT NAME [FLAGS...]: nbsnap save of the notebook to the proxy, full, 64 KiB chunks
cli_save() {
    local out=$1 name=$2
    shift 2
    run_nbsnap "$SCRATCH/$out" save --root "$NB_MERGED" --state-dir "$STATE" --registry "$PROXY_URL" \
        --base-image "$BASE_REF" --namespace nbsnap-it --name "$name" --tag v1 --chunk-size "$CHUNK" --threads 2 "$@"
}

step "a: PATCH answered 503 forever, the DELETE let through"
faults '{"rules": [{"id": "p503", "method": "PATCH", "count": 0, "action": "status", "status": 503}]}'
cli_save a a503
check "the save fails (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 1
check "at the retry deadline ($(json_get "$SCRATCH/a.out" 'j["status_message"]' | head -c 300))" \
    grep -q 'giving up after' <<<"$(json_get "$SCRATCH/a.out" 'j["status_message"]')"
check "the proxy saw the session DELETEd (204 from the registry)" \
    grep -q '"method": "DELETE".*"upstream": 204' "$SCRATCH/proxy.log"
check "no session left in _uploads ($(sessions a503) files)" no_sessions a503
check "no record left in $SDIR ($(records))" test "$(records)" = 0
check "no lock file left" test -z "$(find "$SDIR" -name '*.lock*')"

step "a-down: PATCH and DELETE answered 503 forever: the record keeps the session; the next save deletes it"
faults '{"rules": [{"id": "p503", "method": "PATCH", "count": 0, "action": "status", "status": 503},
    {"id": "d503", "method": "DELETE", "count": 0, "action": "status", "status": 503}]}'
cli_save a-down a503-down
check "the save fails (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 1
check "it warns that the session is recorded for later" \
    grep -q 'warning: 1 upload session(s) on .* could not be deleted; recorded in .*/sessions/' "$SCRATCH/a-down.err"
URL=$(recorded_url a503-down)
check "the record names the session's URL ($URL)" grep -q "/v2/nbsnap-it/a503-down/blobs/uploads/" <<<"$URL"
check "the session it names is open in the registry (it would stay until the purge)" \
    has_session a503-down "$(url_uuid "$URL")"
check "the record holds no credentials" eval '! grep -qiE "authorization|bearer|password|token" "$SDIR"/*.json'
faults '{"rules": []}'
cli_save a-next after-down
check "the next save is ACTIVE (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 0
check "it deleted the session the failed save left" \
    grep -q 'deleted an upload session on .*/nbsnap-it/a503-down left by a save that did not end' "$SCRATCH/a-next.err"
check "the proxy forwarded that DELETE" grep -qF "\"method\": \"DELETE\", \"path\": \"${URL#"$PROXY_URL"}\"" "$SCRATCH/proxy.log"
check "no session left in _uploads ($(sessions) files)" no_sessions
check "no record left ($(records))" test "$(records)" = 0

step "c: nbsnap save killed (SIGKILL) while a PATCH is held; nbsnap save again deletes its session"
MARK=$(stalled)
faults '{"rules": [{"id": "hold", "method": "PATCH", "nth": 12, "action": "stall", "where": "before", "seconds": '"$HOLD"'}]}'
"$NBSNAP" save --root "$NB_MERGED" --state-dir "$STATE" --registry "$PROXY_URL" --base-image "$BASE_REF" \
    --namespace nbsnap-it --name killed --tag v1 --chunk-size "$CHUNK" --threads 2 >"$SCRATCH/c.out" 2>"$SCRATCH/c.err" &
SAVE_PID=$!
at_exit "kill -9 $SAVE_PID 2>/dev/null || true"
wait_for "the 12th PATCH held by the proxy" 60 eval '[[ $(stalled) -gt $MARK ]]' || fail "the PATCH was never held"
URL=$(recorded_url killed)
kill -9 "$SAVE_PID"
wait "$SAVE_PID" 2>/dev/null || true
check "the record names the killed save's session ($URL)" grep -q "/v2/nbsnap-it/killed/blobs/uploads/.*_state=" <<<"$URL"
check "it is the Location the held PATCH was sent to (the latest one)" \
    grep -qF "\"path\": \"${URL#"$PROXY_URL"}\"" <(grep '"status": "stalled"' "$SCRATCH/proxy.log" | tail -1)
check "its session is open in the registry" has_session killed "$(url_uuid "$URL")"
check "the killed owner's lock is free" flock -n "$(ls "$SDIR"/*.lock)" true
cli_save c-again killed
check "nbsnap save again is ACTIVE (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 0
check "it deleted the killed save's session first" \
    grep -q 'deleted an upload session on .*/nbsnap-it/killed left by a save that did not end' "$SCRATCH/c-again.err"
check "no session left in _uploads ($(sessions) files)" no_sessions
check "no record left ($(records))" test "$(records)" = 0
check "no 'wrong offset' in the registry's log" eval '! grep -q "wrong offest" "$REGISTRY_DIR/registry.log"'

step "a live owner's record is not touched; a corrupt record is dropped and does not stop a save"
mkdir -p "$SDIR"
cat >"$SDIR/4242-live.json" <<EOF
{"version":1,"owner":"4242-live","program":"test","pid":4242,"sessions":[{"registry":"$REGISTRY_URL",
 "repository":"nbsnap-it/live","url":"$REGISTRY_URL/v2/nbsnap-it/live/blobs/uploads/0123?_state=x"}]}
EOF
: >"$SDIR/4242-live.lock"
exec {LIVE_FD}<"$SDIR/4242-live.lock"
flock -n "$LIVE_FD" || fail "cannot lock the live owner's lock"
printf '{"version":1, "owner": "7-corrupt", "sessions": [' >"$SDIR/7-corrupt.json"
cli_save live after-corrupt
check "the save is ACTIVE (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 0
check "the corrupt record is dropped with a warning" \
    grep -q 'warning: dropping the upload session record .*/sessions/7-corrupt.json: not JSON' "$SCRATCH/live.err"
check "it is gone" test ! -e "$SDIR/7-corrupt.json"
check "the live owner's record is kept" test -s "$SDIR/4242-live.json"
check "and nothing was sent for it" eval '! grep -q "nbsnap-it/live/blobs/uploads/0123" "$SCRATCH/proxy.log" "$REGISTRY_DIR/registry.log"'
exec {LIVE_FD}<&-
rm -f "$SDIR/4242-live.json" "$SDIR/4242-live.lock"

step "b: nbsnapd: a save cancelled while it uploads"
faults '{"rules": [{"id": "slow", "method": "PATCH", "count": 0, "action": "delay", "seconds": 0.05}]}'
daemon_start sess --registry "$PROXY_URL" --chunk-size "$CHUNK" --incremental false
api POST "$CREATE" -d '{"name":"cancelled","tag":"v1"}'
check "create-image 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
recorded_moved() { URL=$(recorded_url cancelled) && grep -q '_state=' <<<"$URL" && [[ $(grep -c '"rule": "slow"' "$SCRATCH/proxy.log") -ge 8 ]]; }
wait_for "the save uploading, its session recorded" 120 recorded_moved || fail "never saw the session recorded"
check "the recorded session is open in the registry" has_session cancelled "$(url_uuid "$URL")"
api DELETE "$P/images/$ID"
check "DELETE 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
faults '{"rules": []}'
wait_for "the cancelled save's session deleted" 60 no_sessions cancelled || true
check "no session of the cancelled save in _uploads ($(sessions cancelled) files)" no_sessions cancelled
wait_for "its record gone" 30 eval '[[ $(records) -eq 0 ]]' || true
check "no record left ($(records))" test "$(records)" = 0

step "d: nbsnapd killed (SIGKILL) during a save; started again, it deletes the session"
MARK=$(stalled)
faults '{"rules": [{"id": "hold", "method": "PATCH", "nth": 12, "action": "stall", "where": "before", "seconds": '"$HOLD"'}]}'
api POST "$CREATE" -d '{"name":"daemon-killed","tag":"v1"}'
check "create-image 200 (got $HTTP_CODE)" test "$HTTP_CODE" = 200
wait_for "the 12th PATCH held by the proxy" 120 eval '[[ $(stalled) -gt $MARK ]]' || fail "the PATCH was never held"
URL=$(recorded_url daemon-killed)
daemon_stop KILL
check "the record names the session ($URL)" grep -q "/v2/nbsnap-it/daemon-killed/blobs/uploads/.*_state=" <<<"$URL"
check "its session is open in the registry" has_session daemon-killed "$(url_uuid "$URL")"
faults '{"rules": []}'
daemon_start sess2 --registry "$PROXY_URL" --chunk-size "$CHUNK" --incremental false
wait_for "the session deleted by the restarted agent" 60 no_sessions daemon-killed || true
check "no session left in _uploads ($(sessions) files)" no_sessions
wait_for "the deletion logged" 30 grep -q 'deleted an upload session on .*/nbsnap-it/daemon-killed left by a save that did not end' "$SCRATCH/sess2.log" || true
check "the restarted agent logged the deletion" \
    grep -q 'deleted an upload session on .*/nbsnap-it/daemon-killed left by a save that did not end' "$SCRATCH/sess2.log"
check "no record left ($(records))" test "$(records)" = 0
daemon_stop
check "nbsnapd exits 0 (got $DAEMON_RC)" test "$DAEMON_RC" = 0
check "no 'wrong offset' in the registry's log" eval '! grep -q "wrong offest" "$REGISTRY_DIR/registry.log"'

step "c-stale: killed after the registry took a PATCH whose answer was held back (the limit)"
MARK=$(stalled)
faults '{"rules": [{"id": "hold", "method": "PATCH", "nth": 12, "action": "stall", "where": "after", "seconds": '"$HOLD"'}]}'
"$NBSNAP" save --root "$NB_MERGED" --state-dir "$STATE" --registry "$PROXY_URL" --base-image "$BASE_REF" \
    --namespace nbsnap-it --name stale --tag v1 --chunk-size "$CHUNK" --threads 2 >"$SCRATCH/s.out" 2>"$SCRATCH/s.err" &
SAVE_PID=$!
at_exit "kill -9 $SAVE_PID 2>/dev/null || true"
wait_for "the 12th PATCH forwarded, its answer held" 60 eval '[[ $(stalled) -gt $MARK ]]' || fail "the PATCH was never held"
URL=$(recorded_url stale)
kill -9 "$SAVE_PID"
wait "$SAVE_PID" 2>/dev/null || true
faults '{"rules": []}'
check "the record names the session ($URL)" grep -q "/v2/nbsnap-it/stale/blobs/uploads/" <<<"$URL"
cli_save s-again after-stale
check "the next save is ACTIVE (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 0
check "it warns that the registry refused the stale Location, and drops it" \
    grep -q 'warning: an upload session on .*/nbsnap-it/stale left by a save that did not end is not known to the registry any more, dropping it .*BLOB_UPLOAD_INVALID' "$SCRATCH/s-again.err"
check "no record left ($(records))" test "$(records)" = 0
note "c-stale: sessions left in _uploads for the registry's purge: $(sessions stale) file(s) (distribution cannot delete a session at an offset no Location names)"
check "no other session left ($(($(sessions) - $(sessions stale))) files)" test "$(sessions)" = "$(sessions stale)"
finish_checks
