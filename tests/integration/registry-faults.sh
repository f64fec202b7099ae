#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# Registry faults, injected for real: `nbsnap save` talks to a fault proxy (tests/lib/faultproxy.py) in front of
# a real docker-registry; each case sets the proxy's rules, saves, and checks that the save either completed
# with a correct image (the tag's new layer holds the same tar a clean save produced, gzip -t clean, skopeo
# inspect; a full skopeo copy + umoci unpack for a few) or failed with a clear, bounded status_message and no
# tag (HEAD of the manifest straight at the registry: 404). The registry itself and the proxy are also
# stopped and restarted in the middle of a save. docs/RELIABILITY.md lists each fault with its case here.
#
# Run: ctest -R integration/registry-faults  (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/registry-faults.sh)
# The https-* cases run through a second proxy that speaks TLS (a test CA; the save gets it with --ca-file),
# with a plain-http receiver next to it: a redirect or a Location to http:// must be refused, and the
# receiver must get nothing.
#
# Env: NBSNAP (binary), NBSNAP_TEST_KEEP=1 keeps the scratch dir, FAULT_CASES="regex" runs only matching cases.
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$LIB/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$LIB/notebook.sh"

need_root
need_cmd umoci skopeo curl gzip timeout "$PYTHON"
need_nbsnap
scratch_init nbrf

NS=nbsnap-rf
CHUNK=65536
# Short limits so that stalls and dead ends end quickly (the library reads these when the agent sets none).
export NBSNAP_REGISTRY_LOW_SPEED_TIME=3 NBSNAP_REGISTRY_RETRY_DEADLINE=20
NBSNAP_TIMEOUT=${NBSNAP_TIMEOUT:-120}
MSG_MAX=1100 # status_message bound: RegError text (1024) plus the agent's context

step "registry, base image, notebook with a few MB of changes"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"
mkdir -p "$M/opt/rf"
head -c 3000000 /dev/urandom >"$M/opt/rf/random.bin" # incompressible: ~46 chunks of 64 KiB
for i in $(seq 1 50); do echo "file $i" >"$M/opt/rf/f$i.txt"; done
echo 'edited by the fault test' >"$M/etc/motd"

# ---- the proxy ------------------------------------------------------------------------------------------------
PROXY_PORT=$(free_port)
OTHER_PORT=$(free_port)
PROXY_URL=http://127.0.0.1:$PROXY_PORT
PROXY_LOG=$SCRATCH/proxy.log
SAVE_REGISTRY=$PROXY_URL # what save_case saves to, and its TLS options (the https cases change both)
SAVE_TLS=()
PROXY_PID=
proxy_start() {
    "$PYTHON" "$LIB/faultproxy.py" --listen "127.0.0.1:$PROXY_PORT" --other-listen "127.0.0.2:$OTHER_PORT" \
        --upstream "$REGISTRY_URL" --log "$PROXY_LOG" ${1:+--rules "$1"} 2>>"$SCRATCH/proxy.err" &
    PROXY_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null -X POST "$PROXY_URL/__nothing" 2>/dev/null && return 0
        sleep 0.05
    done
    fail "the fault proxy did not start (see $SCRATCH/proxy.err)"
}
proxy_stop() {
    [[ -n $PROXY_PID ]] || return 0
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
}
at_exit proxy_stop
proxy_start

# faults JSON: replace the proxy's rules (and counters)
faults() {
    curl -sSf -o /dev/null -X POST --data-binary "$1" "$PROXY_URL/__fault" || fail "cannot set the proxy's rules"
}

# ---- one case ---------------------------------------------------------------------------------------------------
CASE= CASE_OUT= CASE_LOG= CASE_MARK=0 CASE_SECS=0 REF_LAYER=
case_wanted() { [[ -z ${FAULT_CASES:-} || $1 =~ $FAULT_CASES ]]; }

# save_case NAME [ENV=VALUE...]: run nbsnap save through the proxy into $NS/NAME:v1, with the proxy's log of the
# run in $CASE_LOG
save_case() {
    CASE=$1
    shift
    CASE_OUT=$SCRATCH/case-$CASE
    CASE_LOG=$CASE_OUT.proxy.log
    step "fault: $CASE"
    CASE_MARK=$(wc -l <"$PROXY_LOG")
    local t0=$SECONDS
    NBSNAP_RC=0
    env "$@" timeout "$NBSNAP_TIMEOUT" "$NBSNAP" save --root "$M" --state-dir "$STATE" --registry "$SAVE_REGISTRY" \
        "${SAVE_TLS[@]}" \
        --base-image nbsnap-test/base:v1 --namespace "$NS" --name "$CASE" --tag v1 --chunk-size "$CHUNK" \
        --threads 2 --description "fault: $CASE" >"$CASE_OUT.out" 2>"$CASE_OUT.err" || NBSNAP_RC=$?
    CASE_SECS=$((SECONDS - t0))
    tail -n "+$((CASE_MARK + 1))" "$PROXY_LOG" >"$CASE_LOG"
    if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$CASE_OUT.err"; then
        soft_fail "$CASE: a sanitizer reported an error (see $CASE_OUT.err)"
    fi
    note "$CASE: exit $NBSNAP_RC after ${CASE_SECS}s; status_message: $(json_get "$CASE_OUT.out" 'j.get("status_message","")' 2>/dev/null | head -c 400)"
}

# the status_message: bounded, and without secrets (tokens, presigned queries, credentials)
check_message() {
    check "$CASE: status_message is bounded and has no secrets" "$PYTHON" - "$CASE_OUT.out" "$MSG_MAX" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
m = j.get("status_message") or ""
bad = [s for s in ("tok-", "presigned-secret", "Authorization", "Bearer ", "_state=") if s in m]
ok = 0 < len(m) <= int(sys.argv[2]) and not bad
if not ok:
    print("  status_message (%d chars, secrets %s): %r" % (len(m), bad, m[:300]))
sys.exit(0 if ok else 1)
EOF
}

layer_of() { # layer_of NAME: the digest of the last layer of $NS/NAME:v1, straight from the registry
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "$REGISTRY_URL/v2/$NS/$1/manifests/v1" >"$SCRATCH/m-$1.json" &&
        json_get "$SCRATCH/m-$1.json" 'j["layers"][-1]["digest"]'
}

# content_of NAME LAYER: "diff_id sha256-of-the-gunzipped-blob" of $NS/NAME:v1's new layer (after layer_of NAME)
content_of() {
    local cfg tmp
    cfg=$(json_get "$SCRATCH/m-$1.json" 'j["config"]["digest"]') || return 1
    fetch_blob "$NS/$1" "$cfg" "$SCRATCH/c-$1.json" || return 1
    tmp=$SCRATCH/l-$1.gz
    fetch_blob "$NS/$1" "$2" "$tmp" || return 1
    printf '%s sha256:%s\n' "$(json_get "$SCRATCH/c-$1.json" 'j["rootfs"]["diff_ids"][-1]')" \
        "$(gzip -dc <"$tmp" | sha256sum | cut -d' ' -f1)"
    rm -f "$tmp"
}

# expect_ok [full]: the save completed and the tag points at a correct image
expect_ok() {
    check "$CASE: exit 0 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 0
    check "$CASE: status ACTIVE" eval '[[ $(json_get "$CASE_OUT.out" "j.get(\"status\")" 2>/dev/null) == ACTIVE ]]'
    local layer content=
    layer=$(layer_of "$CASE" 2>/dev/null) || layer=
    [[ -z $layer ]] || content=$(content_of "$CASE" "$layer" 2>/dev/null) || content=
    # The same tar as the clean save, the blob gunzips to it, and it is the clean save's blob byte for byte:
    # faults in the upload never change what was compressed.
    check "$CASE: the new layer holds the clean save's tar (diff_id ${content:7:12} vs ${REF_CONTENT:7:12}), and gunzips to it" \
        eval '[[ -n $content && $content == "$REF_CONTENT" && ${content% *} == "${content#* }" ]]'
    check "$CASE: the layer blob is the clean save's (${layer:0:19} vs ${REF_LAYER:0:19})" test "$layer" = "$REF_LAYER"
    check "$CASE: skopeo inspect" skopeo inspect --tls-verify=false "docker://$REGISTRY_HOST/$NS/$CASE:v1" \
        >/dev/null
    [[ -z $layer ]] || check "$CASE: the layer blob is a clean gzip stream" check_blob_gzip "$NS/$CASE" "$layer"
    if [[ ${1:-} == full ]]; then
        check "$CASE: skopeo copy + umoci unpack" pull_image "$NS/$CASE:v1" "$SCRATCH/pull-$CASE"
        check "$CASE: the unpacked image has the change" cmp -s "$M/opt/rf/random.bin" \
            "$SCRATCH/pull-$CASE/bundle/rootfs/opt/rf/random.bin"
        rm -rf "$SCRATCH/pull-$CASE"
    fi
}

# expect_fail REGEX: the save failed with a clear message matching REGEX and left no tag
expect_fail() {
    check "$CASE: exit 1 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 1
    check "$CASE: status CREATE_FAILED" \
        eval '[[ $(json_get "$CASE_OUT.out" "j.get(\"status\")" 2>/dev/null) == CREATE_FAILED ]]'
    EXPECT_RE=$1
    check "$CASE: status_message matches /$1/" \
        eval 'json_get "$CASE_OUT.out" "j.get(\"status_message\",\"\")" | grep -Eq -- "$EXPECT_RE"'
    check_message
    local code
    code=$(manifest_status "$NS/$CASE" v1)
    check "$CASE: no tag (HEAD of the manifest at the registry: $code)" test "$code" = 404
}

# plog PYTHON-EXPR: evaluate over the case's proxy log (L: list of entries) and print the result
plog() {
    "$PYTHON" - "$CASE_LOG" "$1" <<'EOF'
import json, sys
L = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
def fired(rule): return [e for e in L if e.get("rule") == rule]
def after(e): return [x for x in L if x["seq"] > e["seq"]]
def patches(): return [e for e in L if e["method"] == "PATCH" and e.get("upstream") in (202, 204)]
def contiguous():
    """the PATCHes the registry took cover 0..N once each, in order, per session"""
    end = -1
    for e in patches():
        a, b = (int(x) for x in e["content_range"].split("-"))
        if a == 0: end = -1
        if a != end + 1: return False
        end = b
    return True
try:
    v = eval("(" + sys.argv[2] + ")")
except (IndexError, KeyError, ValueError, TypeError):
    v = False
ok = v not in (False, None, 0, "", [])
if not ok:
    print("  log check false: %s (%s)" % (sys.argv[2].strip()[:200], sys.argv[1]), file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}
pcheck() { # pcheck "what" PYTHON-EXPR
    check "$CASE: $1" plog "$2"
}

# ---- the cases -----------------------------------------------------------------------------------------------------

faults '{"rules": []}'
save_case clean
[[ $NBSNAP_RC -eq 0 ]] || fail "a save through the proxy without faults failed (see $CASE_OUT.err)"
REF_LAYER=$(layer_of clean)
REF_CONTENT=$(content_of clean "$REF_LAYER")
note "reference layer: $REF_LAYER"
expect_ok full
pcheck "no request saw a fault" 'not [e for e in L if e["rule"]]'

if case_wanted 5xx; then
    faults '{"rules": [
      {"id": "m502", "method": "GET", "path": "/manifests/", "action": "status", "status": 502,
       "headers": {"Content-Type": "text/html"}, "body": "<html><h1>502 Bad Gateway</h1></html>"},
      {"id": "h504", "method": "HEAD", "path": "/blobs/sha256:", "action": "status", "status": 504},
      {"id": "p500", "method": "POST", "path": "/blobs/uploads/$", "action": "status", "status": 500,
       "headers": {"Content-Type": "application/json"}, "body": "{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"boom\"}]}"},
      {"id": "c503", "method": "PATCH", "nth": 5, "action": "status", "status": 503},
      {"id": "u408", "method": "PUT", "path": "/blobs/uploads/", "action": "status", "status": 408},
      {"id": "mp500", "method": "PUT", "path": "/manifests/", "action": "status", "status": 500}]}'
    save_case 5xx
    expect_ok
    pcheck "each of 502 504 500 503 408 500 was answered once" \
        'all(len(fired(r)) == 1 for r in ("m502", "h504", "p500", "c503", "u408", "mp500"))'
    pcheck "the 503 chunk was asked about (GET) and resent, once" \
        'contiguous() and [e for e in after(fired("c503")[0]) if e["method"] == "GET"][0]["upstream"] == 204'
fi

if case_wanted 429; then
    faults '{"rules": [{"id": "r429", "method": "PATCH", "nth": 3, "action": "status", "status": 429,
        "headers": {"Retry-After": "2"}, "body": "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"slow down\"}]}"},
      {"id": "d429", "method": "PUT", "path": "/manifests/", "action": "status", "status": 429, "retry_after_date": 3}]}'
    save_case 429
    expect_ok
    pcheck "Retry-After: 2 was waited for (seconds)" 'after(fired("r429")[0])[0]["t"] - fired("r429")[0]["t"] >= 1.9'
    pcheck "Retry-After as an HTTP date was waited for" 'after(fired("d429")[0])[0]["t"] - fired("d429")[0]["t"] >= 1.0'
fi

if case_wanted 503-forever; then
    faults '{"rules": [{"id": "f503", "method": "PATCH", "nth": 2, "count": 0, "action": "status", "status": 503,
        "body": "<html><body>Service Unavailable</body></html>", "headers": {"Content-Type": "text/html"}}]}'
    save_case 503-forever
    expect_fail 'giving up after [0-9]+ attempts in [0-9]+ s.*HTTP 503.*HTML'
    check "$CASE: gave up within the retry deadline (${CASE_SECS}s)" test "$CASE_SECS" -le 45
    # the deadline ends it, not a count of attempts; and the backoff keeps it from hammering the registry
    pcheck "retried until the 20 s deadline" 'fired("f503")[-1]["t"] - fired("f503")[0]["t"] >= 15'
    pcheck "attempts bounded by the backoff" '3 <= len(fired("f503")) <= 40'
    pcheck "the waits are jittered (not all equal)" \
        'len({round(b["t"] - a["t"], 2) for a, b in zip(fired("f503"), fired("f503")[1:])}) > 1'
fi

if case_wanted reset-patch; then
    faults '{"rules": [{"id": "rst", "method": "PATCH", "nth": 4, "action": "reset", "after_bytes": 30000}]}'
    save_case reset-patch
    expect_ok full
    pcheck "after the reset the client asked where the upload stands and resent from there" \
        'fired("rst")[0]["status"] == "reset" and after(fired("rst")[0])[0]["method"] == "GET" and contiguous()'
fi

if case_wanted reset-patch-partial; then
    # part of the chunk reached the registry: distribution's session no longer matches its _state and is
    # cancelled; the layer is still all in memory, so a new session sends it again
    faults '{"rules": [{"id": "rstp", "method": "PATCH", "nth": 4, "action": "reset", "after_bytes": 40000,
        "forward_bytes": 20000}]}'
    save_case reset-patch-partial
    expect_ok
    pcheck "a new session was opened" 'len([e for e in L if e["method"] == "POST" and "mount=" not in e["path"] and e["status"] == 202]) >= 2 and contiguous()'
fi

if case_wanted reset-patch-too-late; then
    faults '{"rules": [{"id": "rstl", "method": "PATCH", "nth": 20, "action": "reset", "after_bytes": 40000,
        "forward_bytes": 20000}]}'
    save_case reset-patch-too-late NBSNAP_REGISTRY_REPLAY_MAX=262144
    # byte 0 is no longer in memory: the layer is packed again from the tree, into a new session
    expect_ok full
    check "$CASE: the save says it packed the layer again" \
        grep -Eq 'packing the layer again \(1 of [0-9]+\): .*lost the upload session.*(BLOB_UPLOAD_INVALID|BLOB_UPLOAD_UNKNOWN)' "$CASE_OUT.err"
fi

if case_wanted stall-patch; then
    faults '{"rules": [{"id": "stall", "method": "PATCH", "nth": 6, "action": "stall", "seconds": 20, "where": "before"}]}'
    save_case stall-patch
    expect_ok
    # curl averages speed over ~5 s, so a stall is noticed 5 s + the low-speed time after the last byte
    check "$CASE: the stalled chunk was abandoned after the low-speed time (${CASE_SECS}s)" test "$CASE_SECS" -le 20
    pcheck "resent after the stall" 'contiguous()'
fi

if case_wanted stall-download; then
    faults '{"rules": [{"id": "stallb", "method": "GET", "path": "/blobs/sha256:", "action": "stall", "seconds": 15,
        "where": "body"}]}'
    save_case stall-download
    expect_ok
    check "$CASE: the stalled download was abandoned after the low-speed time (${CASE_SECS}s)" test "$CASE_SECS" -le 14
fi

if case_wanted token-expiry; then
    faults '{"bearer": true, "rules": [{"id": "exp", "method": "PATCH", "nth": 10, "action": "expire_token"}]}'
    save_case token-expiry
    expect_ok
    pcheck "one 401 on the upload, a token fetched, the same chunk resent with the new token" \
        'len([e for e in L if e["status"] == 401 and e["method"] == "PATCH"]) == 1 and
         after(fired("exp")[0])[0]["path"].startswith("/__token") and
         after(fired("exp")[0])[1]["content_range"] == fired("exp")[0]["content_range"] and
         after(fired("exp")[0])[1]["token"] == 2'
    pcheck "only that chunk was resent: no session status asked, none cancelled, each byte forwarded once" \
        'contiguous() and not [e for e in L if e["method"] == "DELETE" or (e["method"] == "GET" and "/blobs/uploads/" in e["path"])]'
fi

if case_wanted token-expiry-first; then
    # the token of a client's first request is refused as expired (it can expire while that request waits out
    # 429s): the 401 to the challenge-less first attempt must not count as the refusal
    faults '{"bearer": true, "rules": [{"id": "exp1", "path": "^/v2/.", "nth": 1, "action": "expire_token"}]}'
    save_case token-expiry-first
    expect_ok
    pcheck "challenged, a token, refused as expired, a new token, the same request sent again with it" \
        'L[0]["status"] == 401 and L[0]["auth"] is None and L[1]["path"].startswith("/__token") and
         L[2]["rule"] == "exp1" and (L[2]["method"], L[2]["path"]) == (L[0]["method"], L[0]["path"]) and
         L[3]["path"].startswith("/__token") and (L[4]["method"], L[4]["path"]) == (L[0]["method"], L[0]["path"]) and
         L[4]["token"] == L[2]["token"] + 1 and L[4]["status"] != 401'
    pcheck "no other 401" 'len([e for e in L if e["status"] == 401]) == 2'
fi

if case_wanted 401-no-challenge; then
    faults '{"rules": [{"id": "nc", "method": "PATCH", "nth": 3, "count": 0, "action": "status", "status": 401,
        "headers": {"Content-Type": "application/json"},
        "body": "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}"}]}'
    save_case 401-no-challenge
    expect_fail 'without an authentication challenge'
    pcheck "no loop: one 401" 'len(fired("nc")) == 1'
fi

if case_wanted denied; then
    faults '{"rules": [{"id": "den", "method": "PUT", "path": "/manifests/", "count": 0, "action": "status",
        "status": 403, "headers": {"Content-Type": "application/json"},
        "body": "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"requested access to the resource is denied\"}]}"}]}'
    save_case denied
    expect_fail 'DENIED: requested access to the resource is denied'
    pcheck "no retry of DENIED" 'len(fired("den")) == 1'
fi

if case_wanted 416; then
    faults '{"rules": [{"id": "r416", "method": "PATCH", "nth": 5, "action": "status", "status": 416,
        "headers": {"Content-Type": "application/json"},
        "body": "{\"errors\":[{\"code\":\"BLOB_UPLOAD_INVALID\",\"message\":\"out of order\"}]}"}]}'
    save_case 416
    expect_ok
    pcheck "after 416: GET of the session, then the chunk again" \
        'after(fired("r416")[0])[0]["method"] == "GET" and contiguous()'
fi

if case_wanted range-behind; then
    # the registry acknowledged chunk 5 but lost it (the proxy eats it), then refuses chunk 6: the client must
    # go back to where the registry is (a chunk behind) from memory
    faults '{"rules": [{"id": "eat", "method": "PATCH", "nth": 5, "action": "swallow"},
        {"id": "r416b", "method": "PATCH", "nth": 6, "action": "status", "status": 416}]}'
    save_case range-behind
    expect_ok full
    pcheck "the chunk the registry lost was sent again" \
        'len([e for e in L if e["method"] == "PATCH" and e["content_range"] == fired("eat")[0]["content_range"]]) == 2 and contiguous()'
fi

if case_wanted upload-unknown; then
    faults '{"rules": [{"id": "unk", "method": "PATCH", "nth": 7, "action": "status", "status": 404,
        "headers": {"Content-Type": "application/json"},
        "body": "{\"errors\":[{\"code\":\"BLOB_UPLOAD_UNKNOWN\",\"message\":\"blob upload unknown to registry\"}]}"}]}'
    save_case upload-unknown
    expect_ok
    pcheck "a new session, sent from byte 0" 'after(fired("unk")[0])[0]["method"] in ("DELETE", "POST") and contiguous()'
fi

if case_wanted upload-unknown-too-late; then
    faults '{"rules": [{"id": "unk2", "method": "PATCH", "nth": 20, "action": "status", "status": 404,
        "headers": {"Content-Type": "application/json"},
        "body": "{\"errors\":[{\"code\":\"BLOB_UPLOAD_UNKNOWN\",\"message\":\"blob upload unknown to registry\"}]}"}]}'
    save_case upload-unknown-too-late NBSNAP_REGISTRY_REPLAY_MAX=262144
    expect_ok full
    check "$CASE: the save says it packed the layer again" \
        grep -Eq 'packing the layer again \(1 of [0-9]+\): .*lost the upload session \(BLOB_UPLOAD_UNKNOWN\)' "$CASE_OUT.err"
fi

if case_wanted upload-unknown-every-pack; then
    # every pass loses its session past replay_max (the 20th PATCH of each pass): packed again
    # NB_SAVE_LAYER_AGAIN_MAX (2) times, then the save fails
    U='"action": "status", "status": 404, "headers": {"Content-Type": "application/json"}, "body": "{\"errors\":[{\"code\":\"BLOB_UPLOAD_UNKNOWN\",\"message\":\"blob upload unknown to registry\"}]}"'
    faults "{\"rules\": [{\"id\": \"unk3\", \"method\": \"PATCH\", \"nth\": 20, $U}, {\"id\": \"unk4\", \"method\": \"PATCH\", \"nth\": 39, $U}, {\"id\": \"unk5\", \"method\": \"PATCH\", \"nth\": 58, $U}]}"
    save_case upload-unknown-every-pack NBSNAP_REGISTRY_REPLAY_MAX=262144
    expect_fail 'lost the upload session \(BLOB_UPLOAD_UNKNOWN\).*cannot be sent again: save again'
    check "$CASE: the layer was packed again twice (NB_SAVE_LAYER_AGAIN_MAX), not more" \
        test "$(grep -c 'packing the layer again ([12] of 2)' "$CASE_OUT.err")" -eq 2
    pcheck "three upload sessions opened, one per pass" \
        'len([x for x in L if x["method"] == "POST" and x["path"].split("?")[0].endswith("/blobs/uploads/") and "mount=" not in x["path"]]) == 3'
    pcheck "each pass lost its session once" 'len(fired("unk3")) == 1 and len(fired("unk4")) == 1 and len(fired("unk5")) == 1'
fi

if case_wanted commit-timeout; then
    # the registry commits the layer, the answer never comes: the client times out, and HEAD finds the blob
    faults '{"rules": [{"id": "cto", "method": "PUT", "path": "/blobs/uploads/.*digest=", "action": "stall",
        "seconds": 15, "where": "after"}]}'
    save_case commit-timeout
    expect_ok
    pcheck "the commit reached the registry once; its blob was found by HEAD" \
        'fired("cto")[0]["upstream"] == 201 and [e for e in after(fired("cto")[0]) if e["method"] == "HEAD" and e["status"] == 200]'
fi

if case_wanted commit-lost; then
    faults '{"rules": [{"id": "cl", "method": "PUT", "path": "/blobs/uploads/.*digest=", "action": "drop"}]}'
    save_case commit-lost
    expect_ok
fi

if case_wanted digest-invalid; then
    # a byte changed on the way: the real registry answers DIGEST_INVALID to the commit
    faults '{"rules": [{"id": "bit", "method": "PATCH", "nth": 3, "action": "corrupt"}]}'
    save_case digest-invalid
    expect_fail 'DIGEST_INVALID'
    pcheck "the same bytes were not sent again after DIGEST_INVALID" \
        'len([e for e in L if e["method"] == "PUT" and "/blobs/uploads/" in e["path"] and "digest=" in e["path"]]) == 1'
fi

if case_wanted manifest-blob-unknown-lag; then
    faults '{"rules": [{"id": "mbu", "method": "PUT", "path": "/manifests/", "action": "status", "status": 400,
        "headers": {"Content-Type": "application/json"},
        "body": "{\"errors\":[{\"code\":\"MANIFEST_BLOB_UNKNOWN\",\"message\":\"blob unknown to registry\"}]}"}]}'
    save_case manifest-blob-unknown-lag
    expect_ok
    pcheck "blobs re-checked with HEAD, then the manifest put again" \
        'len([e for e in after(fired("mbu")[0]) if e["method"] == "HEAD"]) >= 2 and after(fired("mbu")[0])[-1]["method"] == "PUT"'
fi

if case_wanted manifest-blob-unknown-missing; then
    # the config's commit is acknowledged but never reaches the registry: the registry's own
    # MANIFEST_BLOB_UNKNOWN, and HEAD says which blob is missing
    faults '{"rules": [{"id": "eatcfg", "method": "PUT", "path": "/blobs/uploads/.*digest=", "nth": 2, "action": "swallow"}]}'
    save_case manifest-blob-unknown-missing
    expect_fail 'MANIFEST_BLOB_UNKNOWN.*does not have blob sha256:'
    pcheck "bounded: one manifest PUT" 'len([e for e in L if e["method"] == "PUT" and "/manifests/" in e["path"]]) == 1'
fi

if case_wanted mount-202; then
    faults '{"rules": [{"id": "m202", "method": "POST", "path": "mount=", "count": 0, "action": "mount202"}]}'
    save_case mount-202
    expect_ok full
    pcheck "the sessions opened instead of mounts were cancelled (DELETE)" \
        'fired("m202") and len([e for e in L if e["method"] == "DELETE" and e["status"] == 204]) >= len(fired("m202"))'
fi

for form in path relative other; do
    case_wanted "location-$form" || continue
    faults '{"bearer": true, "rules": [{"id": "loc", "path": "/blobs/uploads/", "count": 0, "action": "location", "form": "'$form'"}]}'
    save_case "location-$form"
    expect_ok
    pcheck "$form Locations were followed" 'fired("loc")'
    if [[ $form == other ]]; then
        pcheck "the session moved to the other host, and no Authorization went there" \
            '[e for e in L if e["listener"] == "other"] and not [e for e in L if e["listener"] == "other" and e["auth"]]'
    fi
done

if case_wanted redirect; then
    faults '{"bearer": true, "rules": [{"id": "red", "listener": "main", "method": "GET", "path": "/blobs/sha256:", "count": 0, "action": "redirect"}]}'
    save_case redirect
    expect_ok
    pcheck "blob GETs went to the storage host without Authorization" \
        'fired("red") and [e for e in L if e["listener"] == "other" and e["method"] == "GET"] and not [e for e in L if e["listener"] == "other" and e["auth"]]'
fi

if case_wanted error-bodies; then
    for kind in html json empty; do
        case $kind in
        html) body='"body": "<html><body>'"$(printf 'x%.0s' $(seq 1 200))"'</body></html>", "body_size": 1000000, "headers": {"Content-Type": "text/html"}' ;;
        json) body='"body": "{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"'"$(printf 'y%.0s' $(seq 1 3000))"'\"}]}", "headers": {"Content-Type": "application/json"}' ;;
        empty) body='"body": ""' ;;
        esac
        # 400: not retried, so each case is quick (503-forever shows an HTML body after retries)
        faults '{"rules": [{"id": "eb", "method": "PUT", "path": "/manifests/", "count": 0, "action": "status", "status": 400, '"$body"'}]}'
        save_case "error-body-$kind"
        expect_fail 'HTTP 400'
        pcheck "one answer read (the body is cut, the answer still shown)" 'len(fired("eb")) == 1'
    done
fi

# ---- the registry and the proxy stopped and restarted in the middle of an upload ---------------------------------
wait_for_patches() { # wait_for_patches N: until the proxy has logged N PATCHes since CASE_MARK (max 20 s)
    local i
    for ((i = 0; i < 400; i++)); do
        (($(tail -n "+$((CASE_MARK + 1))" "$PROXY_LOG" | grep -c '"method": "PATCH"') >= $1)) && return 0
        sleep 0.05
    done
    return 1
}

# bg_save_case NAME: save_case in the background (the caller waits with bg_wait)
BG_PID=
bg_save_case() {
    CASE_MARK=$(wc -l <"$PROXY_LOG")
    (save_case "$@"; echo "$NBSNAP_RC $CASE_SECS" >"$SCRATCH/case-$1.rc") &
    BG_PID=$!
}
bg_wait() {
    wait "$BG_PID" || true
    read -r NBSNAP_RC CASE_SECS <"$SCRATCH/case-$CASE.rc"
    CASE_OUT=$SCRATCH/case-$CASE
    CASE_LOG=$CASE_OUT.proxy.log
}

# registry_restart: the same binary, config, port and storage (registry_start's environment rules)
registry_restart() {
    local -a unset_env=()
    local v
    for v in $(compgen -e); do
        [[ $v == REGISTRY_* ]] && unset_env+=(-u "$v")
    done
    env "${unset_env[@]}" "$DOCKER_REGISTRY_BIN" serve "$REGISTRY_DIR/config.yml" >>"$REGISTRY_DIR/registry.log" 2>&1 &
    REGISTRY_PID=$!
}

if case_wanted registry-restart; then
    # every chunk takes 0.15 s through the proxy; the registry is killed after 5 chunks and started again on the
    # same port and storage 2 s later. The upload session dies with it (its _state secret is per process).
    faults '{"rules": [{"id": "slow", "method": "PATCH", "count": 0, "action": "delay", "seconds": 0.15}]}'
    CASE=registry-restart
    bg_save_case registry-restart
    if wait_for_patches 5; then
        kill -9 "$REGISTRY_PID"
        wait "$REGISTRY_PID" 2>/dev/null || true
        sleep 2
        registry_restart
    else
        soft_fail "registry-restart: the upload did not start"
    fi
    bg_wait
    check "registry-restart: the save ended (exit $NBSNAP_RC after ${CASE_SECS:-?}s), not hung" test "$NBSNAP_RC" -ne 124
    if [[ $NBSNAP_RC -eq 0 ]]; then expect_ok full; else expect_fail 'upload|registry'; fi
fi

if case_wanted proxy-restart; then
    # the front end goes away: new connections are refused for 2 s
    echo '{"rules": [{"id": "slow", "method": "PATCH", "count": 0, "action": "delay", "seconds": 0.15}]}' >"$SCRATCH/slow.json"
    faults "$(cat "$SCRATCH/slow.json")"
    CASE=proxy-restart
    bg_save_case proxy-restart
    if wait_for_patches 5; then
        proxy_stop
        sleep 2
        proxy_start "$SCRATCH/slow.json"
    else
        soft_fail "proxy-restart: the upload did not start"
    fi
    bg_wait
    check "proxy-restart: the save ended (exit $NBSNAP_RC), not hung" test "$NBSNAP_RC" -ne 124
    expect_ok
    pcheck "after the restart the client asked where the upload stood and went on from there" \
        '[e for e in L if e["method"] == "GET" and "/blobs/uploads/" in e["path"] and e["status"] == 204] and contiguous()'
fi

# ---- https: never downgraded to http, no Authorization to another host ------------------------------------------
HTTPS_CASES=(https-clean https-redirect-http https-location-http https-redirect-other)
https_wanted=
for c in "${HTTPS_CASES[@]}"; do case_wanted "$c" && https_wanted=1; done
if [[ -n $https_wanted ]]; then
    step "https: a TLS proxy (test CA) with a plain-http receiver next to it"
    TLS_DIR=$SCRATCH/tls
    mkdir -p "$TLS_DIR"
    # one certificate for both TLS listeners: the registry (127.0.0.1) and "storage" (127.0.0.2)
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=nbsnap-test-ca \
        -addext 'subjectAltName=IP:127.0.0.1,IP:127.0.0.2' -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" \
        >/dev/null 2>&1 || fail "openssl req failed"
    TLS_PORT=$(free_port)
    TLS_OTHER_PORT=$(free_port)
    PLAIN_PORT=$(free_port)
    PLAIN_URL=http://127.0.0.3:$PLAIN_PORT
    "$PYTHON" "$LIB/faultproxy.py" --listen "127.0.0.1:$TLS_PORT" --other-listen "127.0.0.2:$TLS_OTHER_PORT" \
        --plain-listen "127.0.0.3:$PLAIN_PORT" --tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem" \
        --upstream "$REGISTRY_URL" --log "$PROXY_LOG" 2>>"$SCRATCH/proxy-tls.err" &
    TLS_PROXY_PID=$!
    at_exit "kill $TLS_PROXY_PID 2>/dev/null || true"
    TLS_URL=https://127.0.0.1:$TLS_PORT
    tls_faults() {
        curl -sSf --cacert "$TLS_DIR/cert.pem" -o /dev/null -X POST --data-binary "$1" "$TLS_URL/__fault" ||
            fail "cannot set the TLS proxy's rules"
    }
    for ((i = 0; i < 100; i++)); do
        curl -s --cacert "$TLS_DIR/cert.pem" -o /dev/null -X POST "$TLS_URL/__nothing" 2>/dev/null && break
        sleep 0.05
    done
    # the receiver answers (so that "it got no request" below means something): the registry's /v2/ through it
    check "the plain-http receiver answers and logs" eval \
        '[[ $(curl -s -o /dev/null -w "%{http_code}" "$PLAIN_URL/v2/") == 200 ]] && grep -q "\"listener\": \"plain\"" "$PROXY_LOG"'
    SAVE_REGISTRY=$TLS_URL
    SAVE_TLS=(--ca-file "$TLS_DIR/cert.pem")

fi
if case_wanted https-clean; then
    tls_faults '{"rules": []}'
    save_case https-clean
    expect_ok
    pcheck "it went through the TLS proxy" '[e for e in L if e["listener"] == "main" and e["method"] == "PATCH"]'
fi

if case_wanted https-redirect-http; then
    # blob GET/HEAD answered with 307 to the plain-http receiver (a downgrade): refused, never fetched
    tls_faults '{"rules": [{"id": "down", "listener": "main", "path": "/blobs/sha256:", "count": 0,
        "action": "redirect", "to": "plain"}]}'
    save_case https-redirect-http
    expect_fail 'refused a redirect \(HTTP 307\) of (GET|HEAD) https://127\.0\.0\.1:[0-9]+/v2/[^ ]*/blobs/sha256:[0-9a-f]{64} to http://127\.0\.0\.3:[0-9]+/v2/[^ ?]*/blobs/sha256:[0-9a-f]{64}: .*no https -> http downgrade'
    pcheck "the 307 to http was given once (not retried)" 'len(fired("down")) == 1'
    pcheck "the plain-http receiver got no request" 'not [e for e in L if e["listener"] == "plain"]'
fi
if case_wanted https-location-http; then
    # an upload step (POST of a session) whose Location is on plain http: the PATCH is never sent there
    tls_faults '{"rules": [{"id": "loc", "listener": "main", "method": "POST", "path": "/blobs/uploads/$",
        "count": 0, "action": "location", "form": "plain"}]}'
    save_case https-location-http
    expect_fail 'refused to send (PATCH|PUT) to http://127\.0\.0\.3:[0-9]+/v2/[^ ]*: .*no https -> http downgrade'
    pcheck "the session's Location was on plain http" 'fired("loc")'
    pcheck "the plain-http receiver got no request" 'not [e for e in L if e["listener"] == "plain"]'
fi
if case_wanted https-redirect-other; then
    # a 307 to storage on another host over https (bearer auth on the registry): followed, no Authorization there
    tls_faults '{"bearer": true, "rules": [{"id": "red", "listener": "main", "method": "GET", "path": "/blobs/sha256:",
        "count": 0, "action": "redirect", "to": "other"}]}'
    save_case https-redirect-other
    expect_ok
    pcheck "blob GETs went to the other host (https) without Authorization; the registry got tokens" \
        'fired("red") and [e for e in L if e["listener"] == "other" and e["method"] == "GET"] and
         not [e for e in L if e["listener"] == "other" and e["auth"]] and
         [e for e in L if e["listener"] == "main" and e["auth"] == "Bearer"]'
fi
SAVE_REGISTRY=$PROXY_URL
SAVE_TLS=()

finish_checks
