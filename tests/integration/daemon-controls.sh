#!/bin/bash
# shellcheck disable=SC2016,SC2119 # check "..." '...' assertions expand when they run; helpers without args
# The controls users expect (issue #10, "controls"), against a real registry and an overlay "notebook":
#  - per-request excludes: CreateImage's exclude_paths leaves those paths out of that save only, on top of the
#    agent's configured excludes (--exclude): skopeo + umoci unpack the image to the live tree minus both
#    (treecmp), their entries are absent from the new layer, GET shows them, the next save without them is a
#    full one (the excludes digest of the chain differs); each bad value gets HTTP 400 ModelArts.0104 with a
#    message naming the field and the rule (over the unix socket and the TCP listener), and records nothing;
#  - no silent overwrite: a save to a namespace/name:tag the registry has fails before anything is uploaded
#    (nbsnap save: exit 1 and a message; nbsnapd: CREATE_FAILED right after INIT), and goes through with
#    nbsnap save --overwrite / allow_overwrite = true;
#  - the CLI's socket: --socket before and after the command, and from nbsnapd's config file ($NBSNAP_CONFIG);
#    a config that cannot be read is silent, a malformed one is warned about and ignored.
#
# Run: ctest -R integration/daemon-controls   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-controls

step "registry, base image, notebook, baseline"
notebook_setup
M=$NB_MERGED
mkdir -p "$M/opt/t/cache/pip" "$M/opt/t/keep" "$M/opt/t/data"
head -c 300000 /dev/urandom >"$M/opt/t/cache/pip/wheel.bin"
echo 'kept' >"$M/opt/t/keep/kept.txt"
echo 'dataset row' >"$M/opt/t/data/rows.csv"
echo 'kept too' >"$M/opt/t/data/other.txt"
mkdir -p "$M/opt/t/conf-excluded"
echo 'excluded by the agent' >"$M/opt/t/conf-excluded/secret.txt"
IGNORE=(--ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user)

TOKEN=ctl-token-$RANDOM$RANDOM
printf '%s\n' "$TOKEN" >"$SCRATCH/token"
PORT=$(free_port)
U=http://127.0.0.1:$PORT
# a configured exclude the notebook has: a request's exclude_paths come on top of it
daemon_start ctl --exclude /opt/t/conf-excluded --listen "tcp:127.0.0.1:$PORT" --token-file "$SCRATCH/token"

step "exclude_paths: the paths are left out of this save, with the configured excludes"
api POST "$CREATE" -d '{"name":"excl","tag":"v1","exclude_paths":["/opt/t/cache","/opt/t/data/rows.csv"]}'
check "create-image with exclude_paths is 200 ($(head -c 300 "$SCRATCH/resp.json"))" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
check "the INIT answer shows exclude_paths" test "$(jget '",".join(j["exclude_paths"])')" = /opt/t/cache,/opt/t/data/rows.csv
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 120 || fail "the save did not end"
check "the save is ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
check "GET shows exclude_paths" test "$(jget '",".join(j["exclude_paths"])')" = /opt/t/cache,/opt/t/data/rows.csv
check "the record keeps them" test "$(json_get "$STATE/images/$ID.json" '",".join(j["exclude_paths"])')" = /opt/t/cache,/opt/t/data/rows.csv
pull_image nbsnap-it/excl:v1 "$SCRATCH/p-excl" || fail "cannot pull/unpack nbsnap-it/excl:v1"
R=$SCRATCH/p-excl/bundle/rootfs
check "/opt/t/conf-excluded (the agent's --exclude) is not in the image" test ! -e "$R/opt/t/conf-excluded"
check "/opt/t/cache is not in the image" test ! -e "$R/opt/t/cache"
check "/opt/t/data/rows.csv is not in the image" test ! -e "$R/opt/t/data/rows.csv"
check "/opt/t/data/other.txt is" cmp "$M/opt/t/data/other.txt" "$R/opt/t/data/other.txt"
"$PYTHON" "$LIB/treecmp.py" "${IGNORE[@]}" --ignore /opt/t/conf-excluded --ignore /opt/t/cache --ignore /opt/t/data/rows.csv "$M" "$R" \
    >"$SCRATCH/treecmp-excl.txt" 2>&1 || true
grep -v '^treecmp:' "$SCRATCH/treecmp-excl.txt" | head -20 >&2 || true
check "everything else is byte-exact (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-excl.txt"
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/nbsnap-it/excl/manifests/v1" >"$SCRATCH/excl.manifest"
top=$(json_get "$SCRATCH/excl.manifest" 'j["layers"][-1]["digest"]')
fetch_blob nbsnap-it/excl "$top" "$SCRATCH/excl-top.tgz" || fail "cannot fetch the new layer"
layer_list "$SCRATCH/excl-top.tgz" "$SCRATCH/excl-top.list"
check "the new layer has /opt/t/keep/kept.txt" test -n "$(layer_entries "$SCRATCH/excl-top.list" opt/t/keep/kept.txt)"
check "the new layer has nothing below opt/t/cache" test -z "$(layer_below "$SCRATCH/excl-top.list" opt/t/cache)"
check "the new layer has no opt/t/data/rows.csv" test -z "$(layer_entries "$SCRATCH/excl-top.list" opt/t/data/rows.csv)"
check "the new layer has nothing below opt/t/conf-excluded" test -z "$(layer_below "$SCRATCH/excl-top.list" opt/t/conf-excluded)"

step "the next save without them is a full one, and has them"
api POST "$CREATE" -d '{"name":"excl","tag":"v2"}'
ID2=$(jget 'j["id"]')
check "no exclude_paths: an empty list" test "$(jget 'len(j["exclude_paths"])')" = 0
wait_image "$ID2" ACTIVE CREATE_FAILED --timeout 120 || fail "the second save did not end"
check "the second save is ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
check "it was a full save: the excludes changed" grep -q 'full save: the excluded paths' "$SCRATCH/ctl.log"
pull_image nbsnap-it/excl:v2 "$SCRATCH/p-excl2" || fail "cannot pull/unpack nbsnap-it/excl:v2"
check "v2 has /opt/t/cache" cmp "$M/opt/t/cache/pip/wheel.bin" "$SCRATCH/p-excl2/bundle/rootfs/opt/t/cache/pip/wheel.bin"

step "bad exclude_paths: HTTP 400 ModelArts.0104 naming the field and the rule, nothing recorded"
N_BEFORE=$(find "$STATE/images" -mindepth 1 | wc -l)
bad() { # bad DESCRIPTION JSON-VALUE EXPECTED-TEXT [tcp]: over the unix socket, or the TCP listener with the token
    local body="{\"name\":\"bad\",\"tag\":\"v1\",\"exclude_paths\":$2}" what=$1 msg
    if [[ ${4:-} == tcp ]]; then
        what="tcp: $1"
        HTTP_CODE=$(curl -s -o "$SCRATCH/resp.json" -w '%{http_code}' -X POST -H "X-Auth-Token: $TOKEN" \
            -H 'Content-Type: application/json' --data-binary "$body" "$U$CREATE") || HTTP_CODE=000
    else
        api POST "$CREATE" -d "$body"
    fi
    msg=$(jget 'j.get("error_msg","")' 2>/dev/null || true)
    check "$what: HTTP 400 (got $HTTP_CODE)" test "$HTTP_CODE" = 400
    check "$what: error_code ModelArts.0104 ($(jget 'j.get("error_code","")' 2>/dev/null || true))" \
        test "$(jget 'j.get("error_code","")' 2>/dev/null || true)" = ModelArts.0104
    check "$what: the message names the field and the rule ($msg)" grep -qF -- "$3" <<<"$msg"
}
LONG=/$(printf 'p%.0s' $(seq 4095))
MANY=$("$PYTHON" -c 'import json; print(json.dumps(["/p%d" % i for i in range(65)]))')
bad "a relative path" '["opt/t/cache"]' 'exclude_paths[0]: "opt/t/cache" is not an absolute path'
bad "a .. component" '["/opt/../etc"]' "exclude_paths[0]: \"/opt/../etc\" has a '..' component"
bad "a . component" '["/opt/t", "/opt/./t"]' "exclude_paths[1]: \"/opt/./t\" has a '.' component"
bad "an empty string" '[""]' 'exclude_paths[0]: "" is not an absolute path'
bad "the root" '["/"]' 'exclude_paths[0]: "/" names the whole root'
bad "a number" '[5]' 'exclude_paths[0] must be a string'
bad "null in the list" '[null]' 'exclude_paths[0] must be a string'
bad "not an array" '"/opt/t/cache"' 'field "exclude_paths" must be an array'
bad "null" 'null' 'field "exclude_paths" must be an array'
bad "a path over 4095 bytes" "[\"$LONG\"]" 'exclude_paths[0]: the path is 4096 bytes; at most 4095'
bad "65 paths" "$MANY" 'field "exclude_paths" has more than 64 paths'
bad "a control character" '["/opt/t\ncache"]' 'contains a control character'
bad "a relative path" '["opt/t/cache"]' 'exclude_paths[0]: "opt/t/cache" is not an absolute path' tcp
bad "a .. component" '["/opt/../etc"]' "exclude_paths[0]: \"/opt/../etc\" has a '..' component" tcp
bad "not an array" '"/opt/t/cache"' 'field "exclude_paths" must be an array' tcp
bad "65 paths" "$MANY" 'field "exclude_paths" has more than 64 paths' tcp
api POST "$CREATE" -d '{"name":"bad","exclude_paths":["/a"],"exclude_paths":["/b"]}'
check "exclude_paths twice: 400" test "$HTTP_CODE:$(jget 'j.get("error_msg","")')" = '400:field "exclude_paths" is given twice'
check "nothing was recorded" test "$(find "$STATE/images" -mindepth 1 | wc -l)" = "$N_BEFORE"
api POST "$CREATE" -d "{\"name\":\"edge\",\"tag\":\"v1\",\"exclude_paths\":[\"${LONG:0:4095}\"]}"
check "a path of exactly 4095 bytes is taken (HTTP $HTTP_CODE)" test "$HTTP_CODE" = 200
wait_image "$(jget 'j["id"]')" ACTIVE CREATE_FAILED --timeout 120 || fail "the save did not end"
MAX64=$("$PYTHON" -c 'import json; print(json.dumps(["/opt/t/x%d" % i for i in range(64)]))')
api POST "$CREATE" -d "{\"name\":\"edge\",\"tag\":\"v2\",\"exclude_paths\":$MAX64}"
check "64 paths are taken (HTTP $HTTP_CODE)" test "$HTTP_CODE" = 200
wait_image "$(jget 'j["id"]')" ACTIVE CREATE_FAILED --timeout 120 || fail "the save did not end"

step "nbsnap create-image --exclude sends exclude_paths"
run_nbsnap "$SCRATCH/cli-excl" create-image --socket "$SOCK" --name excl --tag v3 --exclude /opt/t/cache --exclude /opt/t/keep --wait
check "create-image --exclude --wait exits 0" test "$NBSNAP_RC" = 0
check "the image shows both paths" test "$(json_get "$SCRATCH/cli-excl.out" '",".join(j["exclude_paths"])')" = /opt/t/cache,/opt/t/keep
pull_image nbsnap-it/excl:v3 "$SCRATCH/p-excl3" || fail "cannot pull/unpack nbsnap-it/excl:v3"
check "v3 has neither path" test ! -e "$SCRATCH/p-excl3/bundle/rootfs/opt/t/cache" -a ! -e "$SCRATCH/p-excl3/bundle/rootfs/opt/t/keep"
run_nbsnap "$SCRATCH/cli-excl-bad" create-image --socket "$SOCK" --name excl --tag v4 --exclude rel/path
check "a relative --exclude: exit 1" test "$NBSNAP_RC" = 1
check "and the 400 body names the rule" grep -q 'is not an absolute path' "$SCRATCH/cli-excl-bad.out"
mapfile -t EXCL65 < <(for i in $(seq 65); do printf -- '--exclude\n/opt/p%d\n' "$i"; done)
run_nbsnap "$SCRATCH/cli-excl-65" create-image --socket "$SOCK" --name excl --tag v5 "${EXCL65[@]}"
check "65 --exclude: exit 2 before any request" test "$NBSNAP_RC" = 2
check "and says the limit" grep -q 'at most 64 --exclude paths' "$SCRATCH/cli-excl-65.err"

step "the daemon refuses an existing tag: CREATE_FAILED right after INIT, nothing uploaded"
DIGEST_V1=$(curl -sSf -o /dev/null -D - -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/nbsnap-it/excl/manifests/v1" | tr -d '\r' | sed -n 's/^Docker-Content-Digest: //Ip')
echo 'changed before the refused save' >"$M/opt/t/keep/changed.txt"
mark=$(registry_log_mark)
api POST "$CREATE" -d '{"name":"excl","tag":"v1"}'
check "the request itself is taken (200)" test "$HTTP_CODE" = 200
RID=$(jget 'j["id"]')
wait_image "$RID" ACTIVE CREATE_FAILED --timeout 60 || fail "the refused save did not end"
msg=$(jget 'j["status_message"]')
check "CREATE_FAILED" test "$(jget 'j["status"]')" = CREATE_FAILED
check "the message says the tag exists and how to allow it ($msg)" \
    grep -q "nbsnap-it/excl:v1 already exists in $REGISTRY_HOST as sha256:.*allow_overwrite = true" <<<"$msg"
check "no blob was uploaded" test -z "$(registry_blob_writes_since "$mark")"
check "no upload session was opened" test -z "$(registry_log_since "$mark" | grep -E '"POST /v2/[^ ]*/blobs/uploads/')"
check "the tag still points at the first image" test "$(curl -sSf -o /dev/null -D - -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/nbsnap-it/excl/manifests/v1" | tr -d '\r' | sed -n 's/^Docker-Content-Digest: //Ip')" = "$DIGEST_V1"
check "the record went INIT -> CREATE_FAILED" grep -q "image $RID: save failed: nbsnap-it/excl:v1 already exists" "$SCRATCH/ctl.log"
daemon_stop
check "the agent stops with 0" test "$DAEMON_RC" = 0

step "allow_overwrite = true: the daemon replaces the tag"
printf '[nbsnapd]\nallow_overwrite = true\nlisten = unix:%s/ctl.sock\n' "$SCRATCH" >"$SCRATCH/ctl.conf"
mapfile -t ARGS < <(daemon_args ctl)
ARGS=("${ARGS[@]/#\/dev\/null/$SCRATCH/ctl.conf}")
SOCK=$SCRATCH/ctl.sock
"$NBSNAPD" "${ARGS[@]}" >>"$SCRATCH/ctl2.log" 2>&1 &
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID 2>/dev/null || true"
wait_for "nbsnapd with allow_overwrite" 10 curl -sf -o /dev/null --unix-socket "$SOCK" http://localhost/health || fail "nbsnapd did not start"
api POST "$CREATE" -d '{"name":"excl","tag":"v1"}'
OID=$(jget 'j["id"]')
wait_image "$OID" ACTIVE CREATE_FAILED --timeout 120 || fail "the overwriting save did not end"
check "the save is ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
NEW=$(jget 'j["status_message"]')
check "the tag points at the new image" test "$(manifest_status nbsnap-it/excl v1)" = 200
pull_image nbsnap-it/excl:v1 "$SCRATCH/p-over" || fail "cannot pull nbsnap-it/excl:v1"
check "the new image has the change" test -e "$SCRATCH/p-over/bundle/rootfs/opt/t/keep/changed.txt"
note "$NEW"

step "the CLI's socket: before the command, after it, from the config file"
run_nbsnap "$SCRATCH/sock-before" --socket "$SOCK" status "$OID"
check "nbsnap --socket S status ID" test "$NBSNAP_RC:$(json_get "$SCRATCH/sock-before.out" 'j["id"]')" = "0:$OID"
run_nbsnap "$SCRATCH/sock-before-eq" --socket="$SOCK" list
check "nbsnap --socket=S list" test "$NBSNAP_RC" = 0
run_nbsnap "$SCRATCH/sock-after" status "$OID" --socket "$SOCK"
check "nbsnap status ID --socket S" test "$NBSNAP_RC:$(json_get "$SCRATCH/sock-after.out" 'j["id"]')" = "0:$OID"
run_nbsnap "$SCRATCH/sock-both" --socket "$SCRATCH/none.sock" status "$OID" --socket "$SOCK"
check "the --socket after the command wins" test "$NBSNAP_RC" = 0
run_nbsnap "$SCRATCH/sock-none" --socket "$SCRATCH/none.sock" status "$OID"
check "a --socket before the command is used (exit 3 on a missing agent)" test "$NBSNAP_RC" = 3
check "and named in the error" grep -q "none.sock" "$SCRATCH/sock-none.err"
run_nbsnap "$SCRATCH/sock-noarg" --socket
check "--socket without a path: exit 2" test "$NBSNAP_RC" = 2
run_nbsnap "$SCRATCH/sock-save" --socket "$SOCK" save --root /
check "--socket with a local command: exit 2" test "$NBSNAP_RC" = 2
check "and says what --socket is for ($(cat "$SCRATCH/sock-save.err"))" \
    grep -qF -- '--socket is for the commands that talk to nbsnapd; save runs here' "$SCRATCH/sock-save.err"
run_nbsnap "$SCRATCH/sock-diff" --socket "$SOCK" diff --root "$M" --state-dir "$STATE"
check "--socket with diff (it runs here too): exit 2" test "$NBSNAP_RC" = 2
check "and says what --socket is for ($(cat "$SCRATCH/sock-diff.err"))" \
    grep -qF -- '--socket is for the commands that talk to nbsnapd; diff runs here' "$SCRATCH/sock-diff.err"
NBSNAP_CONFIG=$SCRATCH/ctl.conf run_nbsnap "$SCRATCH/sock-conf" status "$OID"
check "the socket from the config file (\$NBSNAP_CONFIG)" test "$NBSNAP_RC:$(json_get "$SCRATCH/sock-conf.out" 'j["id"]')" = "0:$OID"
check "with nothing said about it" test ! -s "$SCRATCH/sock-conf.err"
printf 'this is not a config\n' >"$SCRATCH/bad.conf"
NBSNAP_CONFIG=$SCRATCH/bad.conf run_nbsnap "$SCRATCH/sock-badconf" status "$OID"
BADCONF_RC=$NBSNAP_RC
check "and a warning naming the file" grep -q "bad.conf: line 1: .*using the socket /run/nbsnap/nbsnap.sock, ignoring the file" "$SCRATCH/sock-badconf.err"
NBSNAP_CONFIG=$SCRATCH/missing.conf run_nbsnap "$SCRATCH/sock-noconf" status "$OID"
# the default socket is used: the exit and the exact message only on a host with no agent of its own there
if [[ ! -e /run/nbsnap/nbsnap.sock ]]; then
    check "a malformed config: the default socket (exit 3 here)" test "$BADCONF_RC" = 3
    check "a missing config: the default socket, no warning" test "$NBSNAP_RC" = 3 -a \
        "$(cat "$SCRATCH/sock-noconf.err")" = "nbsnap: nbsnapd is not running on /run/nbsnap/nbsnap.sock (systemctl start nbsnapd.socket)"
else
    note "/run/nbsnap/nbsnap.sock exists (an agent on this host): the default socket's exit and message not checked"
fi
NBSNAP_LOG_LEVEL=debug NBSNAP_CONFIG=$SCRATCH/missing.conf run_nbsnap "$SCRATCH/sock-noconf-dbg" status "$OID"
check "a missing config is said at debug level" grep -q "missing.conf: No such file or directory: using /run/nbsnap/nbsnap.sock" "$SCRATCH/sock-noconf-dbg.err"
NBSNAP_CONFIG=$SCRATCH/ctl.conf run_nbsnap "$SCRATCH/sock-conf-flag" status "$OID" --socket "$SCRATCH/none.sock"
check "--socket wins over the config file" test "$NBSNAP_RC" = 3
daemon_stop

step "nbsnap save: an existing tag is refused before any upload, --overwrite replaces it"
SAVE_ARGS=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image "$BASE_REF" --namespace nbsnap-it --name excl)
echo 'changed again' >"$M/opt/t/keep/changed2.txt"
mark=$(registry_log_mark)
run_nbsnap "$SCRATCH/save-exists" save "${SAVE_ARGS[@]}" --tag v2
check "nbsnap save to an existing tag exits 1" test "$NBSNAP_RC" = 1
check "and says so" grep -q "save failed: nbsnap-it/excl:v2 already exists in $REGISTRY_HOST as sha256:[0-9a-f]*; save under another tag, or give --overwrite to replace it" "$SCRATCH/save-exists.err"
check "the image printed is CREATE_FAILED" test "$(json_get "$SCRATCH/save-exists.out" 'j["status"]')" = CREATE_FAILED
check "no blob was uploaded" test -z "$(registry_blob_writes_since "$mark")"
check "no upload session was opened" test -z "$(registry_log_since "$mark" | grep -E '"POST /v2/[^ ]*/blobs/uploads/')"
run_nbsnap "$SCRATCH/save-over" save "${SAVE_ARGS[@]}" --tag v2 --overwrite
check "nbsnap save --overwrite exits 0" test "$NBSNAP_RC" = 0
pull_image nbsnap-it/excl:v2 "$SCRATCH/p-over2" || fail "cannot pull nbsnap-it/excl:v2"
check "the tag now has the change" test -e "$SCRATCH/p-over2/bundle/rootfs/opt/t/keep/changed2.txt"
run_nbsnap "$SCRATCH/save-new" save "${SAVE_ARGS[@]}" --tag v9
check "nbsnap save to a new tag needs no --overwrite" test "$NBSNAP_RC" = 0

step "a registry that cannot say whether the tag exists: the save stops and says why"
faultproxy_start
faults '{"rules": [{"id": "deny", "method": "HEAD", "path": "/manifests/v10", "action": "status", "status": 403, "count": 0, "body": "{\"errors\": [{\"code\": \"DENIED\", \"message\": \"requested access to the resource is denied\"}]}", "headers": {"Content-Type": "application/json"}}]}'
run_nbsnap "$SCRATCH/save-403" save "${SAVE_ARGS[@]/$REGISTRY_URL/$PROXY_URL}" --tag v10
check "exit 1" test "$NBSNAP_RC" = 1
check "the message says the check failed and how to skip it" grep -q "cannot check whether nbsnap-it/excl:v10 already exists in .*(give --overwrite to push without the check): checking manifest nbsnap-it/excl:v10 in .*: HTTP 403" "$SCRATCH/save-403.err"

finish_checks
