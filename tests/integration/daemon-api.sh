#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# nbsnapd's API, driven with curl and with `nbsnap create-image/status/list`, against a real registry and an
# overlay "notebook": every field of the seed's response, INIT -> CREATING (progress in status_message) ->
# ACTIVE with the image in the registry, CREATE_FAILED with a message, the defaults, list order and filter,
# every error status and ModelArts error body (400 413 404 405 409 403), DELETE (registry manifest gone;
# registry refusal when deletion is disabled), /health, /metrics, SO_PEERCRED, records surviving a restart.
#
# Run: ctest -R integration/daemon-api   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-api setpriv

step "registry, base image, notebook, baseline"
notebook_setup
# a layer that takes a while to upload (in 64 KiB PATCHes), so that a save can be seen running
make_bulk "$NB_MERGED/opt/t/bulk" 4096 2560
head -c 48M /dev/urandom >"$NB_MERGED/opt/t/bulk/incompressible.bin" # ~750 PATCHes: packing lasts seconds

step "nbsnapd on a unix socket"
daemon_start api --chunk-size 65536

api GET /health
check "GET /health is 200" test "$HTTP_CODE" = 200
check "/health says ok" test "$(jget 'j["status"]')" = ok
check "socket file is 0660" test "$(stat -c %a "$SOCK")" = 660

step "POST create-image: 200 with the image object, status INIT"
cat >"$SCRATCH/req.json" <<'EOF'
{
  "name" : "pytorch1_4",
  "namespace" : "nbsnap-it",
  "tag" : "20221223",
  "description" : "save from notebook-x21d",
  "workspace_id" : "0"
}
EOF
api POST "$CREATE" "$SCRATCH/req.json"
cp "$SCRATCH/resp.json" "$SCRATCH/init.json"
check "create-image is 200" test "$HTTP_CODE" = 200
for f in arch create_at description dev_services id name namespace origin resource_categories service_type size \
    status status_message support_res_categories swr_path tag type update_at visibility workspace_id; do
    check "response has $f" "$PYTHON" -c 'import json,sys; sys.exit(0 if sys.argv[2] in json.load(open(sys.argv[1])) else 1)' \
        "$SCRATCH/init.json" "$f"
done
ID=$(jget 'j["id"]')
check "status is INIT" test "$(jget 'j["status"]')" = INIT
check "id is a UUID" grep -Eq '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' <<<"$ID"
check "name" test "$(jget 'j["name"]')" = pytorch1_4
check "namespace" test "$(jget 'j["namespace"]')" = nbsnap-it
check "tag" test "$(jget 'j["tag"]')" = 20221223
check "description" test "$(jget 'j["description"]')" = "save from notebook-x21d"
check "workspace_id" test "$(jget 'j["workspace_id"]')" = 0
check "swr_path" test "$(jget 'j["swr_path"]')" = "$REGISTRY_HOST/nbsnap-it/pytorch1_4:20221223"
check "origin IMAGE_SAVE" test "$(jget 'j["origin"]')" = IMAGE_SAVE
check "type DEDICATED" test "$(jget 'j["type"]')" = DEDICATED
check "visibility PRIVATE" test "$(jget 'j["visibility"]')" = PRIVATE
check "arch X86_64 or AARCH64" grep -Eq '^(X86_64|AARCH64)$' <<<"$(jget 'j["arch"]')"
check "create_at is UTC ms" "$PYTHON" -c 'import json,sys,time; j=json.load(open(sys.argv[1])); sys.exit(0 if abs(j["create_at"]/1000-time.time())<60 and j["update_at"]>=j["create_at"] else 1)' "$SCRATCH/init.json"
check "dev_services is a list of strings" test "$(jget 'type(j["dev_services"]).__name__')" = list
check "record written to the state dir" test -s "$STATE/images/$ID.json"

step "while it saves"
# Catch the save in its packing phase, then freeze the registry (SIGSTOP) so the save stays CREATING for as
# long as the checks below take, however fast this machine packs.
wait_image "$ID" CREATING ACTIVE --timeout 60 || fail "the save did not start"
seen_progress=0
for ((i = 0; i < 600; i++)); do
    api GET "$P/images/$ID"
    st=$(jget 'j["status"]')
    msg=$(jget 'j["status_message"]')
    if [[ $st == CREATING && $msg == packing*%* ]]; then seen_progress=1; break; fi
    [[ $st == CREATING ]] || break
    sleep 0.05
done
kill -STOP "$REGISTRY_PID"
at_exit "kill -CONT $REGISTRY_PID 2>/dev/null || true"
check "CREATING shows packing progress with a percent ($msg)" test "$seen_progress" = 1
check "progress tells bytes" grep -q 'MB' <<<"$msg"
api POST "$CREATE" -d '{"name":"second","tag":"t2"}'
check "a second save is 409" test "$HTTP_CODE" = 409
check "409 is NBSNAP.BUSY" test "$(jget 'j["error_code"]')" = NBSNAP.BUSY
check "409 says why" grep -q 'already running' <<<"$(jget 'j["error_msg"]')"
# (a DELETE now would cancel the save: daemon-cancel.sh)
api GET /metrics
check "metrics during the save show the phase" grep -q 'nbsnap_save_in_progress 1' "$SCRATCH/resp.json"
kill -CONT "$REGISTRY_PID"
wait_image "$ID" ACTIVE CREATE_FAILED ERROR --timeout 600 || fail "the save did not end"
api GET "$P/images/$ID"
cp "$SCRATCH/resp.json" "$SCRATCH/active.json"
check "the save is ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
check "size in KB > 10000" "$PYTHON" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["size"] > 10000 else 1)' "$SCRATCH/active.json"
check "the manifest is in the registry" test "$(manifest_status nbsnap-it/pytorch1_4 20221223)" = 200
check "record says ACTIVE" grep -q '"ACTIVE"' "$STATE/images/$ID.json"
rm -rf "$NB_MERGED/opt/t/bulk"

step "defaults"
api POST "$CREATE" -d '{}'
check "empty object is 200" test "$HTTP_CODE" = 200
ID2=$(jget 'j["id"]')
TAG2=$(jget 'j["tag"]')
check "default name: the base image's repository name" test "$(jget 'j["name"]')" = base
check "default tag: UTC YYYYMMDDHHMMSS" grep -Eq '^20[0-9]{12}$' <<<"$(jget 'j["tag"]')"
check "default tag is now" "$PYTHON" -c 'import json,sys,datetime; t=json.load(open(sys.argv[1]))["tag"]; d=datetime.datetime.strptime(t,"%Y%m%d%H%M%S").replace(tzinfo=datetime.timezone.utc); sys.exit(0 if abs(d.timestamp()-datetime.datetime.now(datetime.timezone.utc).timestamp())<120 else 1)' "$SCRATCH/resp.json"
check "default workspace_id 0" test "$(jget 'j["workspace_id"]')" = 0
check "default namespace from config" test "$(jget 'j["namespace"]')" = nbsnap-it
check "default description empty" test "$(jget 'j["description"]')" = ""
wait_image "$ID2" ACTIVE CREATE_FAILED --timeout 300 || fail "default save did not end"
check "default save ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
# The save below gets a default tag too, in UTC seconds. A save of this small tree takes well under a second,
# so without this wait both could get the same tag: the second push would move base:TAG to its own manifest
# (its config's "created" second may differ), and the DELETE of the first image further down would remove
# only the first manifest, leaving the tag in place (the flake "the manifest is gone from the registry").
for ((i = 0; i < 30 && $(date -u +%Y%m%d%H%M%S) <= TAG2; i++)); do sleep 0.1; done
api POST "$CREATE"
check "no body at all is 200 too" test "$HTTP_CODE" = 200
ID3=$(jget 'j["id"]')
check "its default tag is a new one ($(jget 'j["tag"]') after $TAG2)" test "$(jget 'j["tag"]')" != "$TAG2"
wait_image "$ID3" ACTIVE CREATE_FAILED --timeout 300 || fail "save without body did not end"

step "errors: 400 413 404 405"
# expect CODE DESCRIPTION METHOD PATH [-d DATA]: HTTP CODE with the error_code ModelArts.0104 (400),
# NBSNAP.BODY_TOO_LARGE (413), NBSNAP.NOT_FOUND (404) or NBSNAP.METHOD_NOT_ALLOWED (405); ERROR_CODE= and
# SAYS= in the environment override the code and ask for words in error_msg
expect() {
    local code=$1 what=$2 want
    shift 2
    case $code in
    400) want=ModelArts.0104 ;; 413) want=NBSNAP.BODY_TOO_LARGE ;; 404) want=NBSNAP.NOT_FOUND ;;
    405) want=NBSNAP.METHOD_NOT_ALLOWED ;; *) want=unknown ;;
    esac
    want=${ERROR_CODE:-$want}
    api "$@"
    check "$what: HTTP $code (got $HTTP_CODE)" test "$HTTP_CODE" = "$code"
    check "$what: error_code $want" test "$(jget 'j.get("error_code","")' 2>/dev/null)" = "$want"
    check "$what: error_msg" test -n "$(jget 'j.get("error_msg","")' 2>/dev/null)"
    if [[ -n ${SAYS:-} ]]; then
        check "$what: error_msg says '$SAYS' ($(jget 'j.get("error_msg","")' 2>/dev/null))" \
            grep -qF -- "$SAYS" <<<"$(jget 'j.get("error_msg","")' 2>/dev/null)"
    fi
}
expect 400 "malformed JSON" POST "$CREATE" -d '{"name": "x",'
expect 400 "not an object" POST "$CREATE" -d '["name"]'
expect 400 "trailing data" POST "$CREATE" -d '{} {}'
expect 400 "wrong type" POST "$CREATE" -d '{"name": 12}'
expect 400 "null field" POST "$CREATE" -d '{"tag": null}'
SAYS='unknown field "flavor"' expect 400 "unknown field" POST "$CREATE" -d '{"name": "ok", "flavor": "x"}'
expect 400 "repeated field" POST "$CREATE" -d '{"name": "ok", "name": "ok2"}'
SAYS='field "name": image name must be 1 to 512' expect 400 "uppercase name" POST "$CREATE" -d '{"name": "Bad"}'
expect 400 "name with a slash" POST "$CREATE" -d '{"name": "a/b"}'
expect 400 "empty name" POST "$CREATE" -d '{"name": ""}'
expect 400 "tag with a space" POST "$CREATE" -d '{"tag": "a b"}'
SAYS='field "tag": image tag must be 1 to 64' expect 400 "tag of 65 characters" POST "$CREATE" -d "{\"tag\": \"$(printf 't%.0s' $(seq 65))\"}"
expect 400 "description of 513 characters" POST "$CREATE" -d "{\"description\": \"$(printf 'd%.0s' $(seq 513))\"}"
expect 400 "bad namespace" POST "$CREATE" -d '{"namespace": "-x-"}'
expect 400 "bad workspace_id" POST "$CREATE" -d '{"workspace_id": "a b"}'
"$PYTHON" -c 'import json; print(json.dumps({"description": "x" * 70000}))' >"$SCRATCH/big.json"
expect 413 "body over 64 KiB" POST "$CREATE" "$SCRATCH/big.json"
HTTP_CODE=$(curl -s -o "$SCRATCH/resp.json" -w '%{http_code}' --unix-socket "$SOCK" -H 'Transfer-Encoding: chunked' \
    -H 'Content-Type: application/json' --data-binary "@$SCRATCH/big.json" "http://localhost$CREATE")
check "chunked body over 64 KiB: 413 (got $HTTP_CODE)" test "$HTTP_CODE" = 413
expect 404 "other project" POST /v1/other/notebooks/nb-1/create-image -d '{}'
ERROR_CODE=ModelArts.6309 SAYS='notebook id nb-2 is not this instance' expect 400 "other notebook" \
    POST /v1/proj-1/notebooks/nb-2/create-image -d '{}'
expect 404 "other project's images" GET /v1/other/images
ERROR_CODE=ModelArts.6404 expect 404 "unknown image" GET "$P/images/00000000-0000-4000-8000-000000000000"
ERROR_CODE=ModelArts.6404 expect 404 "DELETE of an unknown image" DELETE "$P/images/00000000-0000-4000-8000-000000000000"
expect 404 "unknown path" GET /v2/proj-1/images
expect 404 "unknown path below v1" GET "$P/imagez"
expect 404 "trailing slash" GET "$P/images/"
expect 404 "root" GET /
expect 405 "GET create-image" GET "$CREATE"
expect 405 "POST images" POST "$P/images" -d '{}'
expect 405 "PUT an image" PUT "$P/images/$ID" -d '{}'
expect 405 "POST health" POST /health -d '{}'
allow=$(curl -s -o /dev/null -D - --unix-socket "$SOCK" -X PUT "http://localhost$P/images/$ID" | tr -d '\r' | sed -n 's/^Allow: //Ip')
check "405 says Allow ($allow)" grep -q DELETE <<<"$allow"
SAYS='"status" must be one of' expect 400 "list with a bad status" GET "$P/images?status=BOGUS"

step "list: newest first, status filter"
api GET "$P/images"
check "list is 200" test "$HTTP_CODE" = 200
check "list has the 3 images" test "$(jget 'j["total"]')" = 3
check "newest first" test "$(jget '",".join(i["id"] for i in j["data"])')" = "$ID3,$ID2,$ID"
check "ListImage's page fields (current 0, pages 1, size 200)" test "$(jget '"%d %d %d" % (j["current"], j["pages"], j["size"])')" = "0 1 200"
check "list items are full image objects" "$PYTHON" -c 'import json,sys; l=json.load(open(sys.argv[1]))["data"]; a=json.load(open(sys.argv[2])); sys.exit(0 if all(sorted(i)==sorted(a) for i in l) else 1)' "$SCRATCH/resp.json" "$SCRATCH/active.json"
api GET "$P/images?status=ACTIVE"
check "?status=ACTIVE" test "$(jget 'len(j["data"])')" = 3
api GET "$P/images?status=DELETED"
check "?status=DELETED is empty" test "$(jget 'len(j["data"])')" = 0

step "nbsnap create-image / status / list"
run_nbsnap "$SCRATCH/cli-create" create-image --socket "$SOCK" --name cli-img --tag v1 --description "from the CLI"
check "nbsnap create-image exits 0" test "$NBSNAP_RC" = 0
CLI_ID=$(json_get "$SCRATCH/cli-create.out" 'j["id"]')
check "nbsnap create-image prints INIT" test "$(json_get "$SCRATCH/cli-create.out" 'j["status"]')" = INIT
run_nbsnap "$SCRATCH/cli-wait" status "$CLI_ID" --wait --socket "$SOCK"
check "nbsnap status --wait exits 0 on ACTIVE" test "$NBSNAP_RC" = 0
check "nbsnap status --wait prints ACTIVE" test "$(json_get "$SCRATCH/cli-wait.out" 'j["status"]')" = ACTIVE
run_nbsnap "$SCRATCH/cli-status" status "$CLI_ID" --socket "$SOCK"
check "nbsnap status exits 0" test "$NBSNAP_RC" = 0
check "nbsnap status prints the image" test "$(json_get "$SCRATCH/cli-status.out" 'j["swr_path"]')" = "$REGISTRY_HOST/nbsnap-it/cli-img:v1"
run_nbsnap "$SCRATCH/cli-list" list --socket "$SOCK"
check "nbsnap list exits 0" test "$NBSNAP_RC" = 0
check "nbsnap list shows 4 images, newest first" test "$(json_get "$SCRATCH/cli-list.out" 'str(j["total"]) + j["data"][0]["id"]')" = "4$CLI_ID"
run_nbsnap "$SCRATCH/cli-list2" list --status DELETED --socket "$SOCK"
check "nbsnap list --status" test "$(json_get "$SCRATCH/cli-list2.out" 'j["total"]')" = 0
run_nbsnap "$SCRATCH/cli-create2" create-image --socket "$SOCK" --name cli-img --tag v2 --wait
check "nbsnap create-image --wait exits 0" test "$NBSNAP_RC" = 0
check "create-image --wait prints ACTIVE" test "$(json_get "$SCRATCH/cli-create2.out" 'j["status"]')" = ACTIVE
run_nbsnap "$SCRATCH/cli-bad" create-image --socket "$SOCK" --name BAD
check "nbsnap create-image with a bad name exits 1" test "$NBSNAP_RC" = 1
check "and prints the 400 body" grep -q 'ModelArts' "$SCRATCH/cli-bad.out"
run_nbsnap "$SCRATCH/cli-nosock" list --socket "$SCRATCH/none.sock"
check "nbsnap list without an agent exits 3" test "$NBSNAP_RC" = 3
run_nbsnap "$SCRATCH/cli-404" status 00000000-0000-4000-8000-000000000000 --socket "$SOCK"
check "nbsnap status of an unknown image exits 1" test "$NBSNAP_RC" = 1

step "/metrics"
api GET /metrics
check "/metrics is 200" test "$HTTP_CODE" = 200
check "saves by result" grep -Eq '^nbsnap_saves_total\{result="ACTIVE"\} 5$' "$SCRATCH/resp.json"
check "bytes pushed" grep -Eq '^nbsnap_bytes_pushed_total [1-9][0-9]{6,}$' "$SCRATCH/resp.json"
check "duration histogram" grep -Eq '^nbsnap_save_duration_seconds_count 5$' "$SCRATCH/resp.json"
check "histogram +Inf bucket" grep -q 'nbsnap_save_duration_seconds_bucket{le="+Inf"} 5' "$SCRATCH/resp.json"
check "current phase idle" grep -q 'nbsnap_save_phase{phase="idle"} 1' "$SCRATCH/resp.json"
check "metrics content type" grep -qi 'text/plain; version=0.0.4' <(curl -s -D - -o /dev/null --unix-socket "$SOCK" http://localhost/metrics)

step "peer credentials"
chmod 0711 "$SCRATCH"
chmod 0666 "$SOCK" # only for this check: the daemon must refuse by SO_PEERCRED, not just by file mode
code=$(setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -w '\n%{http_code}' \
    --unix-socket "$SOCK" http://localhost/health || true)
printf '%s\n' "$code" | head -n -1 >"$SCRATCH/peer.json"
code=$(tail -n 1 <<<"$code")
check "a user outside root and the group gets 403 (got $code)" test "$code" = 403
check "403 is NBSNAP.FORBIDDEN" test "$(json_get "$SCRATCH/peer.json" 'j["error_code"]')" = NBSNAP.FORBIDDEN
chmod 0660 "$SOCK"
chmod 0700 "$SCRATCH"

step "CREATE_FAILED: an agent whose base image does not exist"
API_PID=$DAEMON_PID
daemon_start failing --base-image nbsnap-test/missing:v1 --state-dir "$SCRATCH/state-failing"
api POST "$CREATE" -d '{"name":"never"}'
FID=$(jget 'j["id"]')
run_nbsnap "$SCRATCH/cli-fail" status "$FID" --wait --socket "$SOCK"
check "nbsnap status --wait exits 1 on CREATE_FAILED" test "$NBSNAP_RC" = 1
check "status CREATE_FAILED" test "$(json_get "$SCRATCH/cli-fail.out" 'j["status"]')" = CREATE_FAILED
check "status_message says why" grep -qi 'missing' <<<"$(json_get "$SCRATCH/cli-fail.out" 'j["status_message"]')"
api DELETE "$P/images/$FID"
check "DELETE of a failed image: 200 DELETED" test "$HTTP_CODE:$(jget 'j["status"]')" = 200:DELETED
daemon_stop
check "the second agent stops with 0" test "$DAEMON_RC" = 0
SOCK=$SCRATCH/api.sock DAEMON_PID=$API_PID

step "DELETE"
api DELETE "$P/images/$ID2"
check "DELETE is 200 ($(head -c 300 "$SCRATCH/resp.json"))" test "$HTTP_CODE" = 200
check "DELETE answers DELETED" test "$(jget 'j["status"]')" = DELETED
DTAG=$(jget 'j["tag"]')
DDIGEST=$(json_get "$STATE/images/$ID2.json" 'j["manifest_digest"]')
check "the manifest is gone from the registry (by digest $DDIGEST)" test "$(manifest_status nbsnap-it/base "$DDIGEST")" = 404
check "the manifest is gone from the registry (by tag $DTAG)" test "$(manifest_status nbsnap-it/base "$DTAG")" = 404
api GET "$P/images/$ID2"
check "GET shows DELETED" test "$(jget 'j["status"]')" = DELETED
api DELETE "$P/images/$ID2"
check "DELETE again is 200" test "$HTTP_CODE" = 200
api GET "$P/images?status=DELETED"
check "?status=DELETED lists it" test "$(jget 'j["data"][0]["id"]')" = "$ID2"

step "DELETE refused by the registry (deletion disabled)"
port=$REGISTRY_PORT
registry_stop
sed -i '/^  delete:/,/^  [a-z]/ s/enabled: true/enabled: false/' "$REGISTRY_DIR/config.yml"
env -u REGISTRY_HTTP_ADDR "$DOCKER_REGISTRY_BIN" serve "$REGISTRY_DIR/config.yml" >>"$REGISTRY_DIR/registry.log" 2>&1 &
REGISTRY_PID=$!
for ((i = 0; i < 100; i++)); do curl -sf -o /dev/null "http://127.0.0.1:$port/v2/" && break; sleep 0.1; done
api DELETE "$P/images/$ID3"
check "registry refusal: 403 ($(head -c 300 "$SCRATCH/resp.json"))" test "$HTTP_CODE" = 403
check "registry refusal: NBSNAP.FORBIDDEN" test "$(jget 'j["error_code"]')" = NBSNAP.FORBIDDEN
check "refusal carries the registry's words" grep -qi 'unsupported\|disabled\|405' <<<"$(jget 'j["error_msg"]')"
api GET "$P/images/$ID3"
check "refused image stays ACTIVE" test "$(jget 'j["status"]')" = ACTIVE

step "records survive a restart"
daemon_stop
check "nbsnapd exits 0 on SIGTERM" test "$DAEMON_RC" = 0
check "socket file removed on exit" test ! -e "$SOCK"
daemon_start api
api GET "$P/images"
check "5 images after the restart" test "$(jget 'j["total"]')" = 5
api GET "$P/images/$ID"
check "ACTIVE image unchanged" test "$(jget 'j["status"]'):$(jget 'j["swr_path"]')" = "ACTIVE:$(json_get "$SCRATCH/active.json" 'j["swr_path"]')"
api GET "$P/images/$ID2"
check "DELETED image unchanged" test "$(jget 'j["status"]')" = DELETED
daemon_stop KILL
check "socket file left by kill -9" test -S "$SOCK"
daemon_start api
check "a stale socket file is replaced" test "$(stat -c %a "$SOCK")" = 660
daemon_stop

finish_checks
