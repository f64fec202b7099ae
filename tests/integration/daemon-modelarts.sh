#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# nbsnapd as ModelArts' own clients use it, over the unix socket and over TCP (X-Auth-Token and Bearer), on
# a real registry behind tests/lib/faultproxy.py:
#  - every error code the agent can be made to answer here, with its HTTP status, on both listeners:
#    ModelArts.0104 (naming the field or query parameter and the rule), ModelArts.6309 (another notebook),
#    ModelArts.6404 (no such image), NBSNAP.NOT_FOUND, METHOD_NOT_ALLOWED, BODY_TOO_LARGE, BUSY (a second
#    save while one is held at its manifest PUT), UNAUTHORIZED (TCP), REGISTRY_FAILED (a DELETE the registry answers 500 until the
#    retry deadline), FORBIDDEN (a DELETE the registry refuses), TOO_MANY_REQUESTS (a fifth registry
#    deletion while four wait on the registry);
#  - the SDKs' swr_instance_id / swr_instance_domain round-trip (response, GET on both listeners, record);
#    a typo of a field ("descripton") and bad SDK values refused, naming them;
#  - ListImage over three saves: limit=1 pages, an offset inside and past the end, sort_dir, name (fuzzy and
#    exact), namespace, status, with exact current/pages/size/total; bad parameters; `nbsnap list
#    --limit/--offset`;
#  - /metrics after saves that the proxy made retry (a 429 and a 503): nbsnap_registry_retries_total by
#    reason, nbsnap_last_success_timestamp_seconds, nbsnap_layer_bytes, nbsnap_build_info, HELP/TYPE lines.
# (NBSNAP.STATE_DIR_FULL and NBSNAP.INTERNAL: daemon-crash.sh; FORBIDDEN for a peer: daemon-api.sh;
# NBSNAP.STOPPING, which only a request racing the agent's stop gets, and every row of the table:
# tests/test-api.c.)
#
# Run: ctest -R integration/daemon-modelarts
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-modelarts

step "registry behind a fault proxy, base image, notebook, baseline"
notebook_setup
faultproxy_start
TOKEN=ma-token-$RANDOM$RANDOM
printf '%s\n' "$TOKEN" >"$SCRATCH/token"
PORT=$(free_port)
U=http://127.0.0.1:$PORT
# a short retry deadline: the DELETE that the registry keeps failing gives up within seconds
export NBSNAP_REGISTRY_RETRY_DEADLINE=4
daemon_start ma --registry "$PROXY_URL" --listen "tcp:127.0.0.1:$PORT" \
    --token-file "$SCRATCH/token"

# call unix|tcp|tcp-bearer METHOD PATH [-d DATA | BODY-FILE]: $HTTP_CODE and $SCRATCH/resp.json
call() {
    local how=$1 method=$2 path=$3
    shift 3
    local -a data=()
    if [[ $# -gt 0 ]]; then
        if [[ $1 == -d ]]; then data=(--data-binary "$2"); else data=(--data-binary "@$1"); fi
        data+=(-H 'Content-Type: application/json')
    fi
    case $how in
    unix) api "$method" "$path" "$@" ; return ;;
    tcp) data+=(-H "X-Auth-Token: $TOKEN") ;;
    tcp-bearer) data+=(-H "Authorization: Bearer $TOKEN") ;;
    tcp-none) ;;
    esac
    HTTP_CODE=$(curl -s -o "$SCRATCH/resp.json" -w '%{http_code}' -X "$method" "${data[@]}" "$U$path") ||
        HTTP_CODE=000
}

# expect HOW STATUS CODE WORDS DESCRIPTION METHOD PATH [DATA...]: the status, the error_code, and WORDS
# (may be empty) in error_msg
expect() {
    local how=$1 status=$2 code=$3 words=$4 what="$1: $5" msg
    shift 5
    call "$how" "$@"
    msg=$(jget 'j.get("error_msg","")' 2>/dev/null || true)
    check "$what: HTTP $status $code (got $HTTP_CODE $(jget 'j.get("error_code","")' 2>/dev/null || true))" \
        test "$HTTP_CODE:$(jget 'j.get("error_code","")' 2>/dev/null || true)" = "$status:$code"
    [[ -z $words ]] || check "$what: error_msg says '$words' ($msg)" grep -qF -- "$words" <<<"$msg"
}

step "SDK fields recorded; a save the registry answers 429 and 503 once"
faults '{"rules": [
  {"method": "HEAD", "path": "/blobs/", "action": "status", "status": 429, "headers": {"Retry-After": "0"}},
  {"method": "PUT", "path": "/manifests/", "action": "status", "status": 503}]}'
SWR_ID=1b2c3d4e-5f60-4718-9a0b-c1d2e3f40516
SWR_DOMAIN=swr-ee.cn-north-4.example.com
call unix POST "$CREATE" -d "{\"name\": \"sdk-img\", \"tag\": \"v1\", \"swr_instance_id\": \"$SWR_ID\",
    \"swr_instance_domain\": \"$SWR_DOMAIN\"}"
check "create-image with the SDK fields: 200" test "$HTTP_CODE" = 200
ID_A=$(jget 'j["id"]')
check "the answer has swr_instance_id" test "$(jget 'j["swr_instance_id"]')" = "$SWR_ID"
check "the answer has swr_instance_domain" test "$(jget 'j["swr_instance_domain"]')" = "$SWR_DOMAIN"
wait_image "$ID_A" ACTIVE CREATE_FAILED ERROR --timeout 120 || fail "the first save did not end"
check "the save went through its retries: ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
check "the proxy answered a 429" grep -q '"status": 429' "$SCRATCH/proxy.log"
check "the proxy answered a 503" grep -q '"status": 503' "$SCRATCH/proxy.log"
for how in unix tcp tcp-bearer; do
    call "$how" GET "$P/images/$ID_A"
    check "$how: GET shows the SDK fields" test "$HTTP_CODE $(jget 'j["swr_instance_id"] + " " + j["swr_instance_domain"]')" = "200 $SWR_ID $SWR_DOMAIN"
done
check "the record has them" test "$(json_get "$STATE/images/$ID_A.json" 'j["swr_instance_id"] + " " + j["swr_instance_domain"]')" = "$SWR_ID $SWR_DOMAIN"

step "/metrics after the save"
for how in unix tcp; do
    call "$how" GET /metrics
    cp "$SCRATCH/resp.json" "$SCRATCH/metrics-$how.txt"
    check "$how: /metrics is 200" test "$HTTP_CODE" = 200
done
M=$SCRATCH/metrics-tcp.txt
for family in nbsnap_registry_retries_total:counter nbsnap_last_success_timestamp_seconds:gauge \
    nbsnap_layer_bytes:gauge nbsnap_build_info:gauge; do
    check "HELP and TYPE of ${family%%:*}" bash -c 'grep -q "^# HELP $1 ." "$3" && grep -qx "# TYPE $1 $2" "$3"' _ \
        "${family%%:*}" "${family##*:}" "$M"
done
metric() { sed -n "s/^$1 //p" "$M"; }
check "a 429 retry counted ($(metric 'nbsnap_registry_retries_total{reason="http_429"}'))" \
    test "$(metric 'nbsnap_registry_retries_total{reason="http_429"}')" -ge 1
check "a 5xx retry counted ($(metric 'nbsnap_registry_retries_total{reason="http_5xx"}'))" \
    test "$(metric 'nbsnap_registry_retries_total{reason="http_5xx"}')" -ge 1
for reason in timeout connect other; do
    check "reason $reason is there" grep -Eq "^nbsnap_registry_retries_total\{reason=\"$reason\"\} [0-9]+$" "$M"
done
check "last success is now ($(metric nbsnap_last_success_timestamp_seconds))" "$PYTHON" -c \
    'import sys,time; t=float(sys.argv[1]); sys.exit(0 if abs(time.time()-t) < 120 else 1)' \
    "$(metric nbsnap_last_success_timestamp_seconds)"
LB_C=$(metric 'nbsnap_layer_bytes{kind="compressed"}')
LB_U=$(metric 'nbsnap_layer_bytes{kind="uncompressed"}')
check "layer bytes: compressed $LB_C > 0, uncompressed $LB_U a whole tar (>= 1536, multiple of 512)" \
    bash -c '(($1 > 0 && $2 >= 1536 && $2 % 512 == 0))' _ "$LB_C" "$LB_U"
LAYER=$(skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/nbsnap-it/sdk-img:v1" |
    "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["layers"][-1]["size"])')
check "compressed layer bytes are the pushed top layer's size ($LAYER)" test "$LB_C" = "$LAYER"
VERSION=$("$NBSNAP" --version | awk '{print $2}')
check "build info names version $VERSION" grep -qx "nbsnap_build_info{version=\"$VERSION\"} 1" "$M"

step "a second save held at its manifest PUT: BUSY on both listeners"
faults '{"rules": [{"method": "PUT", "path": "/manifests/", "action": "delay", "seconds": 4}]}'
call tcp POST "$CREATE" -d '{"name": "busy-img", "tag": "v1"}'
check "tcp: create-image with X-Auth-Token: 200" test "$HTTP_CODE" = 200
ID_B=$(jget 'j["id"]')
expect unix 409 NBSNAP.BUSY "already running" "a second save" POST "$CREATE" -d '{"name": "x", "tag": "v9"}'
expect tcp 409 NBSNAP.BUSY "already running" "a second save" POST "$CREATE" -d '{"name": "x", "tag": "v9"}'
wait_image "$ID_B" ACTIVE CREATE_FAILED ERROR --timeout 120 || fail "the second save did not end"
check "the held save ends ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
faults '{"rules": []}'
call tcp-bearer POST "$CREATE" -d '{"name": "third-img", "tag": "v1"}'
check "tcp: create-image with Bearer: 200" test "$HTTP_CODE" = 200
ID_C=$(jget 'j["id"]')
wait_image "$ID_C" ACTIVE CREATE_FAILED ERROR --timeout 120 || fail "the third save did not end"
check "the third save ends ACTIVE" test "$(jget 'j["status"]')" = ACTIVE

step "ListImage paging over three images, on both listeners"
# page HOW QUERY: "current pages size total id,id,..." of GET $P/images?QUERY
page() {
    call "$1" GET "$P/images?$2"
    [[ $HTTP_CODE == 200 ]] || { echo "HTTP $HTTP_CODE"; return; }
    jget '"%d %d %d %d %s" % (j["current"], j["pages"], j["size"], j["total"], ",".join(i["id"] for i in j["data"]))'
}
for how in unix tcp; do
    check "$how: default page" test "$(page "$how" '')" = "0 1 200 3 $ID_C,$ID_B,$ID_A"
    check "$how: limit=1" test "$(page "$how" limit=1)" = "0 3 1 3 $ID_C"
    check "$how: limit=1&offset=1" test "$(page "$how" 'limit=1&offset=1')" = "1 3 1 3 $ID_B"
    check "$how: limit=1&offset=2" test "$(page "$how" 'offset=2&limit=1')" = "2 3 1 3 $ID_A"
    check "$how: limit=1&offset=3 (past the end)" test "$(page "$how" 'limit=1&offset=3')" = "3 3 1 3 "
    check "$how: limit=2&offset=2" test "$(page "$how" 'limit=2&offset=2')" = "1 2 2 3 $ID_A"
    check "$how: limit=2&sort_dir=ASC" test "$(page "$how" 'limit=2&sort_dir=ASC')" = "0 2 2 3 $ID_A,$ID_B"
    check "$how: sort_dir=DESC" test "$(page "$how" 'sort_dir=DESC')" = "0 1 200 3 $ID_C,$ID_B,$ID_A"
    check "$how: sort_key=name&sort_dir=ASC" test "$(page "$how" 'sort_key=name&sort_dir=ASC')" = "0 1 200 3 $ID_B,$ID_A,$ID_C"
    check "$how: name=img (a part of each)" test "$(page "$how" 'name=img')" = "0 1 200 3 $ID_C,$ID_B,$ID_A"
    check "$how: name=sdk" test "$(page "$how" 'name=sdk')" = "0 1 200 1 $ID_A"
    check "$how: name=sdk&name_fuzzy_match=false" test "$(page "$how" 'name=sdk&name_fuzzy_match=false')" = "0 0 200 0 "
    check "$how: name=sdk-img&name_fuzzy_match=false" test "$(page "$how" 'name=sdk-img&name_fuzzy_match=false')" = "0 1 200 1 $ID_A"
    check "$how: namespace=nbsnap-it&status=ACTIVE&limit=1000" test "$(page "$how" 'namespace=nbsnap-it&status=ACTIVE&limit=1000')" = "0 1 1000 3 $ID_C,$ID_B,$ID_A"
    check "$how: namespace=other" test "$(page "$how" 'namespace=other')" = "0 0 200 0 "
    check "$how: status=DELETED" test "$(page "$how" 'status=DELETED')" = "0 0 200 0 "
    check "$how: type=DEDICATED&workspace_id=0&service_type=UNKNOWN&sort_key=create_at" \
        test "$(page "$how" 'type=DEDICATED&workspace_id=0&service_type=UNKNOWN&sort_key=create_at')" = "0 1 200 3 $ID_C,$ID_B,$ID_A"
    check "$how: type=BUILD_IN" test "$(page "$how" 'type=BUILD_IN')" = "0 0 200 0 "
done

step "ListImage: bad parameters are 400 ModelArts.0104 naming them"
for how in unix tcp; do
    for q in limit=0 limit=1001 limit=-1 limit=abc limit= offset=-1 offset=x offset=1000001; do
        expect "$how" 400 ModelArts.0104 "query parameter \"${q%%=*}\" must be" "$q" GET "$P/images?$q"
    done
    expect "$how" 400 ModelArts.0104 'query parameter "sort_dir" must be ASC or DESC' "sort_dir=UP" GET "$P/images?sort_dir=UP"
    expect "$how" 400 ModelArts.0104 'query parameter "status" must be one of' "status=BOGUS" GET "$P/images?status=BOGUS"
    expect "$how" 400 ModelArts.0104 'query parameter "name"' "name=Upper" GET "$P/images?name=Upper"
    expect "$how" 400 ModelArts.0104 'unknown query parameter "color"' "an unknown parameter" GET "$P/images?color=red"
    expect "$how" 400 ModelArts.0104 'query parameter "limit" is given twice' "limit twice" GET "$P/images?limit=1&limit=2"
done

step "nbsnap list --limit --offset"
run_nbsnap "$SCRATCH/cli-page" list --limit 1 --offset 1 --socket "$SOCK"
check "nbsnap list --limit 1 --offset 1 exits 0" test "$NBSNAP_RC" = 0
check "and prints the page" test "$(json_get "$SCRATCH/cli-page.out" '"%d %d %d %d %s" % (j["current"], j["pages"], j["size"], j["total"], j["data"][0]["id"])')" = "1 3 1 3 $ID_B"
run_nbsnap "$SCRATCH/cli-all" list --socket "$SOCK"
check "nbsnap list: the whole list" test "$(json_get "$SCRATCH/cli-all.out" 'len(j["data"])')" = 3
run_nbsnap "$SCRATCH/cli-bad" list --limit 1001 --socket "$SOCK"
check "nbsnap list --limit 1001 exits 2" test "$NBSNAP_RC" = 2
check "and names the rule" grep -q 'from 1 to 1000' "$SCRATCH/cli-bad.err"
run_nbsnap "$SCRATCH/cli-bad2" list --offset -1 --socket "$SOCK"
check "nbsnap list --offset -1 exits 2" test "$NBSNAP_RC" = 2
check "and names the rule ($(cat "$SCRATCH/cli-bad2.err"))" grep -qF 'offset" must be a whole number from 0 to 1000000' "$SCRATCH/cli-bad2.err"

step "create-image: parameter errors name the field and the rule"
for how in unix tcp; do
    expect "$how" 400 ModelArts.0104 'unknown field "descripton"' "a typo of description" POST "$CREATE" -d '{"descripton": "x"}'
    expect "$how" 400 ModelArts.0104 'field "tag": image tag must be 1 to 64' "a bad tag" POST "$CREATE" -d '{"tag": "a b"}'
    expect "$how" 400 ModelArts.0104 'field "name"' "a bad name" POST "$CREATE" -d '{"name": "Bad"}'
    expect "$how" 400 ModelArts.0104 'field "swr_instance_id" must be a string' "a number for swr_instance_id" \
        POST "$CREATE" -d '{"swr_instance_id": 5}'
    expect "$how" 400 ModelArts.0104 'field "swr_instance_id": swr_instance_id must be 1 to 64' "a bad swr_instance_id" \
        POST "$CREATE" -d '{"swr_instance_id": "a b"}'
    expect "$how" 400 ModelArts.0104 "$(printf 'swr_instance_id must be 1 to 64')" "swr_instance_id of 65" \
        POST "$CREATE" -d "{\"swr_instance_id\": \"$(printf 'i%.0s' $(seq 65))\"}"
    expect "$how" 400 ModelArts.0104 'field "swr_instance_domain": swr_instance_domain must be a host name' \
        "a bad swr_instance_domain" POST "$CREATE" -d '{"swr_instance_domain": "a/b"}'
    expect "$how" 400 ModelArts.0104 "the request body is not valid JSON" "malformed JSON" POST "$CREATE" -d '{"name":'
done
call unix GET "$P/images"
check "nothing was recorded by the refused requests" test "$(jget 'j["total"]')" = 3

step "the other codes, on both listeners"
"$PYTHON" -c 'import json; print(json.dumps({"description": "x" * 70000}))' >"$SCRATCH/big.json"
for how in unix tcp; do
    expect "$how" 400 ModelArts.6309 "notebook id nb-2 is not this instance" "another notebook" \
        POST /v1/proj-1/notebooks/nb-2/create-image -d '{}'
    expect "$how" 404 ModelArts.6404 "not found" "an unknown image" GET "$P/images/00000000-0000-4000-8000-000000000000"
    expect "$how" 404 ModelArts.6404 "not found" "DELETE of an unknown image" DELETE "$P/images/00000000-0000-4000-8000-000000000000"
    expect "$how" 404 NBSNAP.NOT_FOUND "no such resource" "an unknown path" GET "$P/imagez"
    expect "$how" 404 NBSNAP.NOT_FOUND "project_id other is not" "another project" GET /v1/other/images
    expect "$how" 405 NBSNAP.METHOD_NOT_ALLOWED "not allowed" "PUT an image" PUT "$P/images/$ID_A" -d '{}'
    expect "$how" 413 NBSNAP.BODY_TOO_LARGE "over 65536 bytes" "a body over 64 KiB" POST "$CREATE" "$SCRATCH/big.json"
done
expect tcp-none 401 NBSNAP.UNAUTHORIZED "X-Auth-Token" "no token" GET "$P/images"
HTTP_CODE=$(curl -s -o "$SCRATCH/resp.json" -w '%{http_code}' -H "X-Auth-Token: not-$TOKEN" "$U$P/images") || true
check "tcp: a wrong X-Auth-Token: 401 NBSNAP.UNAUTHORIZED" test "$HTTP_CODE:$(jget 'j["error_code"]')" = 401:NBSNAP.UNAUTHORIZED

step "DELETE: the registry fails (502 NBSNAP.REGISTRY_FAILED) or refuses (403 NBSNAP.FORBIDDEN)"
faults '{"rules": [{"method": "DELETE", "path": "/manifests/", "action": "status", "status": 500, "count": 0}]}'
for how in unix tcp; do
    expect "$how" 502 NBSNAP.REGISTRY_FAILED "cannot delete the image" "the registry answers 500" DELETE "$P/images/$ID_C"
done
call unix GET "$P/images/$ID_C"
check "the image stays ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
faults '{"rules": [{"method": "DELETE", "path": "/manifests/", "action": "status", "status": 405, "count": 0,
  "headers": {"Content-Type": "application/json"},
  "body": "{\"errors\": [{\"code\": \"UNSUPPORTED\", \"message\": \"The operation is unsupported.\"}]}"}]}'
for how in unix tcp; do
    expect "$how" 403 NBSNAP.FORBIDDEN "refused to delete" "the registry refuses" DELETE "$P/images/$ID_C"
done

step "more registry deletions at once than NB_DELETES_MAX (4): 429 NBSNAP.TOO_MANY_REQUESTS"
faults '{"rules": []}'
MORE=()
for n in d e; do
    call unix POST "$CREATE" -d "{\"name\": \"more-$n\", \"tag\": \"v1\"}"
    MORE+=("$(jget 'j["id"]')")
    wait_image "${MORE[-1]}" ACTIVE CREATE_FAILED ERROR --timeout 120 || fail "save more-$n did not end"
done
# the proxy holds each manifest DELETE up to 20 s (logging it when it arrives), until the rules change
faults '{"rules": [{"id": "hold-delete", "method": "DELETE", "path": "/manifests/", "action": "delay", "seconds": 20,
    "count": 0, "log": "arrival", "release": true}]}'
HOLD_MARK=$(grep -F '"status": "delayed"' "$SCRATCH/proxy.log" | grep -cF '"rule": "hold-delete"' || true)
PIDS=()
for id in "$ID_A" "$ID_B" "${MORE[@]}"; do
    curl -s -o "$SCRATCH/del-$id.json" -w '%{http_code}' --unix-socket "$SOCK" -X DELETE \
        "http://localhost$P/images/$id" >"$SCRATCH/del-$id.code" &
    PIDS+=($!)
done
# the four reach the agent at once (a local socket): each holds a slot once its DELETE is held by the proxy
held_deletes() { [[ $(grep -F '"status": "delayed"' "$SCRATCH/proxy.log" | grep -cF '"rule": "hold-delete"') -ge $((HOLD_MARK + 4)) ]]; }
wait_for "the four deletions held by the proxy" 15 held_deletes || fail "the four deletions never reached the registry"
for how in unix tcp; do
    expect "$how" 429 NBSNAP.TOO_MANY_REQUESTS "too many deletions running" "a fifth deletion" DELETE "$P/images/$ID_C"
done
faults '{"rules": []}' # the held DELETEs go on to the registry now
for pid in "${PIDS[@]}"; do wait "$pid" || true; done
for id in "$ID_A" "$ID_B" "${MORE[@]}"; do
    check "the deletion of $id that waited: 200 DELETED" test "$(cat "$SCRATCH/del-$id.code"):$(json_get "$SCRATCH/del-$id.json" 'j["status"]')" = 200:DELETED
done
call tcp DELETE "$P/images/$ID_C"
check "then DELETE goes through: 200 DELETED" test "$HTTP_CODE:$(jget 'j["status"]')" = 200:DELETED
call unix GET /metrics
check "the DELETE's 5xx retries are counted too" test "$(sed -n 's/^nbsnap_registry_retries_total{reason="http_5xx"} //p' "$SCRATCH/resp.json")" -gt \
    "$(metric 'nbsnap_registry_retries_total{reason="http_5xx"}')"

daemon_stop
check "nbsnapd exits 0" test "$DAEMON_RC" = 0
finish_checks
