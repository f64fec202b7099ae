#!/bin/bash
# shellcheck disable=SC2016
# nbsnapd's control-plane listener: a TCP listener is refused without a token file; with one, every request
# needs the token, as "Authorization: Bearer <token>" or as "X-Auth-Token: <token>" (the header ModelArts
# clients send), 401 NBSNAP.UNAUTHORIZED with WWW-Authenticate otherwise (/health answers without it but
# says nothing about the instance); with tls_cert/tls_key it speaks TLS (libmicrohttpd + GnuTLS) and plain
# HTTP to that port fails. The unix socket works alongside. No registry needed: no save is run here.
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

need_cmd curl openssl timeout "$PYTHON"
need_nbsnapd
scratch_init nbd-tcp
NB_MERGED=$SCRATCH/root STATE=$SCRATCH/state REGISTRY_URL=http://127.0.0.1:9 BASE_REF=team/base:v1
mkdir -p "$NB_MERGED"
TOKEN=cp-token-$RANDOM$RANDOM
printf '%s\n' "$TOKEN" >"$SCRATCH/token"

step "a tcp listener without a token is refused"
PORT=$(free_port)
mapfile -t ARGS < <(daemon_args tcp)
rc=0
timeout 10 "$NBSNAPD" "${ARGS[@]}" --listen "tcp:127.0.0.1:$PORT" >"$SCRATCH/notoken.log" 2>&1 || rc=$?
check "nbsnapd exits 2 (got $rc)" test "$rc" = 2
check "and says why" grep -q 'needs token_file' "$SCRATCH/notoken.log"

step "bearer token"
daemon_start tcp --listen "tcp:127.0.0.1:$PORT" --token-file "$SCRATCH/token"
U=http://127.0.0.1:$PORT
tcp() { # tcp OUT URL [curl args]: prints the HTTP status
    local out=$1 url=$2
    shift 2
    curl -s -o "$out" -w '%{http_code}' "$@" "$url" || true
}
check "no token: 401" test "$(tcp "$SCRATCH/r1" "$U/v1/proj-1/images")" = 401
check "401 is NBSNAP.UNAUTHORIZED" test "$(json_get "$SCRATCH/r1" 'j["error_code"]')" = NBSNAP.UNAUTHORIZED
check "401 names both headers" grep -q 'X-Auth-Token' <<<"$(json_get "$SCRATCH/r1" 'j["error_msg"]')"
check "401 has WWW-Authenticate: Bearer" grep -qi '^WWW-Authenticate: Bearer' <(curl -s -D - -o /dev/null "$U/v1/proj-1/images")
check "wrong token: 401" test "$(tcp "$SCRATCH/r2" "$U/v1/proj-1/images" -H "Authorization: Bearer x$TOKEN")" = 401
check "token prefix: 401" test "$(tcp "$SCRATCH/r2" "$U/v1/proj-1/images" -H "Authorization: Bearer ${TOKEN:0:5}")" = 401
check "Basic: 401" test "$(tcp "$SCRATCH/r2" "$U/v1/proj-1/images" -u "a:$TOKEN")" = 401
check "right token: 200" test "$(tcp "$SCRATCH/r3" "$U/v1/proj-1/images" -H "Authorization: Bearer $TOKEN")" = 200
check "list is empty" test "$(json_get "$SCRATCH/r3" 'j["total"]')" = 0
check "X-Auth-Token: 200" test "$(tcp "$SCRATCH/x1" "$U/v1/proj-1/images" -H "X-Auth-Token: $TOKEN")" = 200
check "X-Auth-Token with spaces around it: 200" test "$(tcp "$SCRATCH/x1" "$U/v1/proj-1/images" -H "X-Auth-Token:   $TOKEN  ")" = 200
check "x-auth-token (header names are case-insensitive): 200" test "$(tcp "$SCRATCH/x1" "$U/v1/proj-1/images" -H "x-auth-token: $TOKEN")" = 200
check "wrong X-Auth-Token: 401" test "$(tcp "$SCRATCH/x2" "$U/v1/proj-1/images" -H "X-Auth-Token: x$TOKEN")" = 401
check "wrong X-Auth-Token: NBSNAP.UNAUTHORIZED" test "$(json_get "$SCRATCH/x2" 'j["error_code"]')" = NBSNAP.UNAUTHORIZED
check "X-Auth-Token prefix: 401" test "$(tcp "$SCRATCH/x2" "$U/v1/proj-1/images" -H "X-Auth-Token: ${TOKEN:0:5}")" = 401
check "empty X-Auth-Token: 401" test "$(tcp "$SCRATCH/x2" "$U/v1/proj-1/images" -H "X-Auth-Token;")" = 401
check "X-Auth-Token carrying 'Bearer <token>': 401" test "$(tcp "$SCRATCH/x2" "$U/v1/proj-1/images" -H "X-Auth-Token: Bearer $TOKEN")" = 401
check "a wrong bearer beside the right X-Auth-Token: 200" test "$(tcp "$SCRATCH/x3" "$U/v1/proj-1/images" -H "Authorization: Bearer nope" -H "X-Auth-Token: $TOKEN")" = 200
check "the right bearer beside a wrong X-Auth-Token: 200" test "$(tcp "$SCRATCH/x3" "$U/v1/proj-1/images" -H "Authorization: Bearer $TOKEN" -H "X-Auth-Token: nope")" = 200
check "X-Auth-Token, POST with a bad body: 400 ModelArts.0104" test "$(tcp "$SCRATCH/x4" "$U/v1/proj-1/notebooks/nb-1/create-image" -H "X-Auth-Token: $TOKEN" -d '{"x":1}'; json_get "$SCRATCH/x4" 'j["error_code"]')" = 400ModelArts.0104
check "/health with X-Auth-Token names the instance" test "$(tcp "$SCRATCH/x5" "$U/health" -H "X-Auth-Token: $TOKEN"; json_get "$SCRATCH/x5" 'j["project_id"]')" = 200proj-1
check "right token, POST with a bad body: 400" test "$(tcp "$SCRATCH/r4" "$U/v1/proj-1/notebooks/nb-1/create-image" -H "Authorization: Bearer $TOKEN" -d '{"x":1}')" = 400
check "no token, POST: 401 before the body is looked at" test "$(tcp "$SCRATCH/r4" "$U/v1/proj-1/notebooks/nb-1/create-image" -d '{"x":1}')" = 401
check "/health without a token: 200" test "$(tcp "$SCRATCH/r5" "$U/health")" = 200
check "/health without a token tells nothing about the instance" bash -c '! grep -q proj-1 "$1"' _ "$SCRATCH/r5"
check "/health with the token names the instance" test "$(tcp "$SCRATCH/r6" "$U/health" -H "Authorization: Bearer $TOKEN"; json_get "$SCRATCH/r6" 'j["project_id"]')" = 200proj-1
api GET /v1/proj-1/images
check "the unix socket needs no token" test "$HTTP_CODE" = 200
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0

step "TLS"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext 'subjectAltName=IP:127.0.0.1' \
    -keyout "$SCRATCH/tls.key" -out "$SCRATCH/tls.crt" >/dev/null 2>&1 || fail "openssl req failed"
PORT=$(free_port)
U=https://127.0.0.1:$PORT
daemon_start tls --listen "tcp:127.0.0.1:$PORT" --token-file "$SCRATCH/token" \
    --tls-cert "$SCRATCH/tls.crt" --tls-key "$SCRATCH/tls.key"
check "https with the token: 200" test "$(tcp "$SCRATCH/t1" "$U/v1/proj-1/images" --cacert "$SCRATCH/tls.crt" -H "Authorization: Bearer $TOKEN")" = 200
check "https without the token: 401" test "$(tcp "$SCRATCH/t2" "$U/v1/proj-1/images" --cacert "$SCRATCH/tls.crt")" = 401
check "https with X-Auth-Token: 200" test "$(tcp "$SCRATCH/t4" "$U/v1/proj-1/images" --cacert "$SCRATCH/tls.crt" -H "X-Auth-Token: $TOKEN")" = 200
check "https, unknown CA: refused by the client" test "$(tcp "$SCRATCH/t3" "$U/health")" = 000
check "plain http to the TLS port fails" bash -c '[[ $(curl -s -o /dev/null -w "%{http_code}" --max-time 5 "http://127.0.0.1:$1/health") != 200 ]]' _ "$PORT"
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0

step "TLS key missing"
rc=0
timeout 10 "$NBSNAPD" "${ARGS[@]}" --listen "tcp:127.0.0.1:$PORT" --token-file "$SCRATCH/token" \
    --tls-cert "$SCRATCH/tls.crt" >"$SCRATCH/nokey.log" 2>&1 || rc=$?
check "tls_cert without tls_key: exit 2 (got $rc)" test "$rc" = 2

finish_checks
