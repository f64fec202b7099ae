#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# nbsnapd never shows a secret: the registry password (a docker authfile, sent as Basic to the token endpoint
# of tests/lib/faultproxy.py in Bearer mode), the registry's bearer tokens, the control-plane token, the TLS
# key, and a presigned query string (a blob GET redirected with X-Amz-Signature=..., after a cross-repository
# mount the proxy turns into a plain upload session) never appear in the daemon's log (stderr at debug level,
# and the journal, caught on a stand-in journald socket), in any status_message, in the reports' bodies, in
# the state dir, or in the pushed image (config and layer bytes). The authfile, the token file, the TLS key
# and the state dir all live INSIDE the notebook root and --exclude points elsewhere: none is in the image.
#
# Run: ctest -R integration/daemon-secrets   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-secrets openssl base64

step "registry, base image, notebook; the state dir inside the notebook root"
notebook_start
M=$NB_MERGED
notebook_baseline "$M/var/lib/nbsnap"
mkdir -p "$M/opt/elsewhere"
echo 'excluded by --exclude' >"$M/opt/elsewhere/x.txt"

step "secrets, all inside the notebook root"
PROXY_PORT=$(free_port)
OTHER_PORT=$(free_port)
PROXY_URL=http://127.0.0.1:$PROXY_PORT
REG_USER=nbsnap-user
PASSWORD=pw-$RANDOM$RANDOM-$RANDOM-secret
AUTH_B64=$(printf '%s:%s' "$REG_USER" "$PASSWORD" | base64 -w0)
API_TOKEN=api-token-$RANDOM$RANDOM-$RANDOM
mkdir -p "$M/root/.config/nbsnap" "$M/etc/nbsnap"
AUTHFILE=$M/root/.config/nbsnap/auth.json
printf '{"auths": {"127.0.0.1:%s": {"auth": "%s"}}}\n' "$PROXY_PORT" "$AUTH_B64" >"$AUTHFILE"
printf '%s\n' "$API_TOKEN" >"$M/etc/nbsnap/token"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext 'subjectAltName=IP:127.0.0.1' \
    -keyout "$M/etc/nbsnap/tls.key" -out "$SCRATCH/tls.crt" >/dev/null 2>&1 || fail "openssl req failed"
chmod 0600 "$AUTHFILE" "$M/etc/nbsnap/token" "$M/etc/nbsnap/tls.key"
KEY_LINE=$(sed -n 5p "$M/etc/nbsnap/tls.key") # 64 characters of the private key
SECRETS=("$PASSWORD" "$AUTH_B64" "$API_TOKEN" "$KEY_LINE" presigned-secret X-Amz-Signature)

faultproxy_start --other-listen "127.0.0.2:$OTHER_PORT"
# Bearer mode (the token endpoint gets the authfile's Basic credentials); base layers are copied, not
# mounted, and their GETs are redirected to "storage" with a presigned query
faults '{"bearer": true, "rules": [
    {"id": "m202", "method": "POST", "path": "mount=", "count": 0, "action": "mount202"},
    {"id": "red", "listener": "main", "method": "GET", "path": "/blobs/sha256:", "count": 0, "action": "redirect"}]}'

receiver_start cp 0
TCP_PORT=$(free_port)
FLAGS=(--registry "$PROXY_URL" --authfile "$AUTHFILE" --token-file "$M/etc/nbsnap/token" --exclude /opt/elsewhere
    --report-url "$RECEIVER_URL" --listen "tcp:127.0.0.1:$TCP_PORT"
    --tls-cert "$SCRATCH/tls.crt" --tls-key "$M/etc/nbsnap/tls.key")

# save NAME: one save; every answer seen while it runs is appended to $SCRATCH/statuses.jsonl
save() {
    local name=$1 i
    api POST "$CREATE" -d "{\"name\":\"$name\",\"tag\":\"v1\",\"description\":\"secrets test\"}"
    check "$name: create-image 200" test "$HTTP_CODE" = 200
    ID=$(jget 'j["id"]')
    for ((i = 0; i < 3000; i++)); do
        api GET "$P/images/$ID"
        cat "$SCRATCH/resp.json" >>"$SCRATCH/statuses.jsonl"
        [[ $(jget 'j["status"]') == CREATING || $(jget 'j["status"]') == INIT ]] || break
        sleep 0.1
    done
    check "$name: ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
    # a wrong token on TCP: 401, and the token compared is not echoed
    curl -s -o "$SCRATCH/tcp-401.json" --cacert "$SCRATCH/tls.crt" -H "Authorization: Bearer x$API_TOKEN" \
        "https://127.0.0.1:$TCP_PORT/v1/proj-1/images" || true
    cat "$SCRATCH/tcp-401.json" >>"$SCRATCH/statuses.jsonl"
    api GET "$P/images"
    cat "$SCRATCH/resp.json" >>"$SCRATCH/statuses.jsonl"
    api GET /metrics
    cat "$SCRATCH/resp.json" >>"$SCRATCH/statuses.jsonl"
    wait_reports cp "$ID" ACTIVE 60 || true
}

# absent WHAT FILE...: none of the secrets in FILE (binary-safe, fixed strings)
absent() {
    local what=$1 s f
    shift
    for s in "${SECRETS[@]}"; do
        for f in "$@"; do
            if grep -raqF -- "$s" "$f"; then
                soft_fail "$what: a secret (${s:0:6}...) is in $f"
                return 0
            fi
        done
    done
    printf 'ok   - %s: no secret\n' "$what" >&2
}

step "save 1: logs to stderr, at debug level"
NBSNAP_LOG_LEVEL=debug daemon_start secrets "${FLAGS[@]}"
save secret-a
ID_A=$ID
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0
check "the log is at debug level" grep -q 'http\|debug\|listening' "$SCRATCH/secrets.log"
absent "daemon log (stderr, debug)" "$SCRATCH/secrets.log"

step "save 2: logs to the journal (a stand-in journald socket)"
JOURNAL_SOCK=/run/systemd/journal/socket
if [[ -e $JOURNAL_SOCK || -e /run/systemd/journal/stdout ]]; then
    note "a journald runs here: the journal check is skipped (its socket is not ours to replace)"
    NBSNAP_LOG_LEVEL=debug daemon_start secrets2 "${FLAGS[@]}"
else
    made=()
    [[ -d /run/systemd ]] || made+=(/run/systemd)
    made+=(/run/systemd/journal)
    mkdir -p /run/systemd/journal
    at_exit "rm -f $JOURNAL_SOCK; rmdir $(printf '%q ' "${made[@]}" | rev | cut -c2- | rev | tr ' ' '\n' | tac | tr '\n' ' ') 2>/dev/null || true"
    "$PYTHON" - "$JOURNAL_SOCK" "$SCRATCH/journal.txt" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(1 << 20) + b"\n--\n")
PY
    JOURNAL_PID=$!
    at_exit "kill $JOURNAL_PID 2>/dev/null || true"
    for ((i = 0; i < 100; i++)); do [[ -S $JOURNAL_SOCK ]] && break; sleep 0.05; done
    : >"$SCRATCH/secrets2.log"
    JOURNAL_STREAM=$(stat -c '%d:%i' "$SCRATCH/secrets2.log") NBSNAP_LOG_LEVEL=debug daemon_start secrets2 "${FLAGS[@]}"
fi
save secret-b
ID_B=$ID
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0
if [[ -s $SCRATCH/journal.txt ]]; then
    check "the journal got the save, with IMAGE_ID= fields" grep -aq "IMAGE_ID=$ID_B" "$SCRATCH/journal.txt"
    absent "journal" "$SCRATCH/journal.txt"
fi
absent "daemon log of save 2" "$SCRATCH/secrets2.log"

step "the registry side: credentials used, presigned redirect followed"
check "the token endpoint got Basic credentials" "$PYTHON" -c 'import json,sys; sys.exit(0 if any(e["path"].startswith("/__token") and e["auth"] == "Basic" for e in map(json.loads, open(sys.argv[1]))) else 1)' "$SCRATCH/proxy.log"
check "registry requests carried Bearer tokens" "$PYTHON" -c 'import json,sys; sys.exit(0 if any(e["path"].startswith("/v2/") and e["auth"] == "Bearer" and e["status"] in (200, 201, 202) for e in map(json.loads, open(sys.argv[1]))) else 1)' "$SCRATCH/proxy.log"
check "blob GETs were redirected with a presigned query and followed" "$PYTHON" -c 'import json,sys; l=list(map(json.loads, open(sys.argv[1]))); sys.exit(0 if any(e["status"] == 307 for e in l) and any(e["listener"] == "other" and e["method"] == "GET" for e in l) else 1)' "$SCRATCH/proxy.log"

step "no secret anywhere the agent writes"
absent "every status_message and API answer ($(wc -l <"$SCRATCH/statuses.jsonl") lines)" "$SCRATCH/statuses.jsonl"
"$PYTHON" -c 'import json,sys; [print(json.dumps(json.loads(l)["body"])) for l in open(sys.argv[1])]' "$SCRATCH/cp.jsonl" >"$SCRATCH/report-bodies.jsonl"
check "the control plane got both saves' reports ($(reports cp "$ID_A"); $(reports cp "$ID_B"))" \
    test "$(reports cp "$ID_A"),$(reports cp "$ID_B")" = INIT,CREATING,ACTIVE,INIT,CREATING,ACTIVE
absent "report bodies" "$SCRATCH/report-bodies.jsonl"
absent "state dir" "$STATE"

step "the pushed images: no secret, no credential file, no state dir"
for name in secret-a secret-b; do
    curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        -o "$SCRATCH/$name.manifest" "$REGISTRY_URL/v2/nbsnap-it/$name/manifests/v1" || fail "no manifest for $name"
    cfg=$(json_get "$SCRATCH/$name.manifest" 'j["config"]["digest"]')
    layer=$(json_get "$SCRATCH/$name.manifest" 'j["layers"][-1]["digest"]')
    fetch_blob "nbsnap-it/$name" "$cfg" "$SCRATCH/$name.config"
    fetch_blob "nbsnap-it/$name" "$layer" "$SCRATCH/$name.layer.gz"
    gzip -dc "$SCRATCH/$name.layer.gz" >"$SCRATCH/$name.layer.tar"
    layer_list "$SCRATCH/$name.layer.gz" "$SCRATCH/$name.list"
    if [[ $name == secret-a ]]; then
        check "$name: the new layer has the change" test -n "$(layer_entries "$SCRATCH/$name.list" opt/t/added/new.txt)"
    else # nbsnapd saves incrementally by default: the second save's layer has what changed since the first
        check "$name: an incremental save on secret-a" grep -q 'nbsnap save (incremental on sha256:' "$SCRATCH/$name.config"
    fi
    check "$name: --exclude elsewhere is honoured" test -z "$(layer_below "$SCRATCH/$name.list" opt/elsewhere)"
    for p in root/.config/nbsnap/auth.json etc/nbsnap/token etc/nbsnap/tls.key var/lib/nbsnap; do
        check "$name: $p is not in the image" test -z "$(layer_below "$SCRATCH/$name.list" "$p")"
    done
    absent "$name: image config" "$SCRATCH/$name.config"
    absent "$name: new layer bytes" "$SCRATCH/$name.layer.tar"
done

finish_checks
