#!/bin/bash
# shellcheck disable=SC2016
# nbsnapd reporting back and surviving crashes:
#  - every state change goes to the control plane (a python3 http.server that answers 500 to its first 3
#    POSTs): the image object as JSON, "Authorization: Bearer <token>", retried until accepted, in order,
#    nothing lost (INIT, CREATING, ACTIVE), sequence numbers increasing;
#  - the outbox is durable: with the receiver down, a save's reports wait; after a restart of the agent
#    (and of the receiver) they are sent, in order;
#  - kill -9 during CREATING: after a restart the image is CREATE_FAILED ("the agent stopped during the save
#    (...); save again") and that is reported after INIT and CREATING.
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-rep

step "registry, base image, notebook, baseline"
notebook_setup
TOKEN=tok-$RANDOM$RANDOM-secret
printf '%s\n' "$TOKEN" >"$SCRATCH/token"
chmod 0600 "$SCRATCH/token"

step "reports retried until accepted, in order"
receiver_start cp 3
REPORT_FLAGS=(--report-url "$RECEIVER_URL" --token-file "$SCRATCH/token" --report-retry-max 1)
daemon_start rep "${REPORT_FLAGS[@]}"
api POST "$CREATE" -d '{"name":"reported","tag":"v1"}'
check "create-image 200" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 300 || fail "save did not end"
check "save ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
wait_reports cp "$ID" ACTIVE 60 || true
check "reports: INIT,CREATING,ACTIVE in order, none lost or repeated ($(reports cp "$ID"))" \
    test "$(reports cp "$ID")" = INIT,CREATING,ACTIVE
check "the receiver failed 3 times first" test "$(wc -l <"$SCRATCH/cp.attempts")" -ge 6
check "reports carry the bearer token" "$PYTHON" -c 'import json,sys; sys.exit(0 if all(json.loads(l)["auth"] == "Bearer " + sys.argv[2] for l in open(sys.argv[1])) else 1)' "$SCRATCH/cp.jsonl" "$TOKEN"
check "reports carry the token as X-Auth-Token too" "$PYTHON" -c 'import json,sys; sys.exit(0 if all(json.loads(l)["xauth"] == sys.argv[2] for l in open(sys.argv[1])) else 1)' "$SCRATCH/cp.jsonl" "$TOKEN"
check "sequence numbers increase" "$PYTHON" -c 'import json,sys; s=[int(json.loads(l)["seq"]) for l in open(sys.argv[1])]; sys.exit(0 if s == sorted(s) and len(set(s)) == len(s) else 1)' "$SCRATCH/cp.jsonl"
check "the report is the image object" "$PYTHON" -c 'import json,sys; r=[json.loads(l)["body"] for l in open(sys.argv[1])][-1]; sys.exit(0 if r["swr_path"].endswith("/nbsnap-it/reported:v1") and "status_message" in r and "create_at" in r else 1)' "$SCRATCH/cp.jsonl"
check "the outbox is empty" test -z "$(ls -A "$STATE/outbox")"
check "the token is not in the log" bash -c '! grep -q "$1" "$2"' _ "$TOKEN" "$SCRATCH/rep.log"

step "durable outbox: receiver down, agent restarted"
receiver_stop
api POST "$CREATE" -d '{"name":"reported","tag":"v2"}'
ID2=$(jget 'j["id"]')
wait_image "$ID2" ACTIVE CREATE_FAILED --timeout 300 || fail "save 2 did not end"
check "three reports wait in the outbox" test "$(find "$STATE/outbox" -name '*.json' ! -name '.*' | wc -l)" = 3
daemon_stop
check "agent stops with 0" test "$DAEMON_RC" = 0
check "the outbox survived the stop" test "$(find "$STATE/outbox" -name '*.json' ! -name '.*' | wc -l)" = 3
receiver_start cp 1
daemon_start rep "${REPORT_FLAGS[@]}"
wait_reports cp "$ID2" ACTIVE 60 || true
check "after the restart: INIT,CREATING,ACTIVE of the second save ($(reports cp "$ID2"))" \
    test "$(reports cp "$ID2")" = INIT,CREATING,ACTIVE
check "the first save's reports were not sent again" test "$(reports cp "$ID")" = INIT,CREATING,ACTIVE
check "the outbox is empty again" test -z "$(ls -A "$STATE/outbox")"

step "kill -9 during a save"
make_bulk "$NB_MERGED/opt/t/bulk" 4096 2560
daemon_stop
daemon_start rep "${REPORT_FLAGS[@]}" --chunk-size 65536
api POST "$CREATE" -d '{"name":"killed","tag":"v1"}'
ID3=$(jget 'j["id"]')
for ((i = 0; i < 600; i++)); do
    api GET "$P/images/$ID3"
    [[ $(jget 'j["status"]') == CREATING && $(jget 'j["status_message"]') == packing* ]] && break
    sleep 0.05
done
check "the save is CREATING when killed" test "$(jget 'j["status"]')" = CREATING
wait_reports cp "$ID3" CREATING 30 || true
daemon_stop KILL
check "the record says CREATING after kill -9" grep -q '"CREATING"' "$STATE/images/$ID3.json"
daemon_start rep "${REPORT_FLAGS[@]}"
api GET "$P/images/$ID3"
check "after the restart: CREATE_FAILED" test "$(jget 'j["status"]')" = CREATE_FAILED
msg=$(jget 'j["status_message"]')
check "with a clear message ($msg)" grep -q '^the agent stopped during the save (.*); save again$' <<<"$msg"
check "the record says CREATE_FAILED" grep -q '"CREATE_FAILED"' "$STATE/images/$ID3.json"
wait_reports cp "$ID3" CREATE_FAILED 60 || true
check "reported: INIT,CREATING,CREATE_FAILED ($(reports cp "$ID3"))" test "$(reports cp "$ID3")" = INIT,CREATING,CREATE_FAILED
api POST "$CREATE" -d '{"name":"after-crash","tag":"v1"}'
check "a new save is accepted after the crash" test "$HTTP_CODE" = 200
ID4=$(jget 'j["id"]')
wait_image "$ID4" ACTIVE CREATE_FAILED --timeout 600 || fail "save 4 did not end"
check "and succeeds" test "$(jget 'j["status"]')" = ACTIVE
daemon_stop
check "agent stops with 0" test "$DAEMON_RC" = 0

finish_checks
