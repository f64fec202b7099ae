#!/bin/bash
# Issue #12: the token endpoint under load when auth is on. N notebooks save at the same moment through the
# rate-limited fleet of tests/lib/fleet-run.sh (3 replicas behind nginx, 429 + Retry-After: 1), with token auth in
# front: tests/lib/faultproxy.py in bearer mode on 127.0.0.1 (every /v2/ request needs "Bearer tok-<generation>",
# else 401 with a Bearer challenge whose realm is the proxy's /__token), forwarding to nginx. Each save reads a
# docker authfile with Basic credentials for the proxy's host:port. During the saves the token expires once (a
# rule expire_token on the first PATCH of the fleet: a new generation, so every save, all of them under way then,
# must fetch new tokens in the middle of its work; a later PATCH could come after a quick save had ended). No
# replica is killed here (tests/integration/fleet.sh does that).
# Checks: every save exits 0 with ACTIVE; nginx answered 429s; every image = the base layers + exactly one own
# layer; no base layer uploaded; from the proxy's JSON log, per save (a save = the proxy connections whose
# requests name its repository fleet/nbI, in a path or a token scope; the proxy logs each request's connection):
# every save got a
# 401 invalid_token after the expiry and fetched a new token; tokens fetched <= distinct token scopes +
# 401 invalid_token answers (tokens are cached per scope: never one per request); no /v2/ request without a
# Bearer token but the first challenge; no 401 loop (one challenge, each scope's token refused once at most);
# no upload session left.
#
# Run: ctest -R integration/fleet-auth   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/fleet-auth.sh)
# Env: NBSNAP_FLEET_AUTH_N (notebooks, default 10), FLEET_RATE (default 10), FLEET_BURST (default 5), NBSNAP,
#      NBSNAP_TEST_KEEP=1 keeps the scratch dir, NBSNAP_TIMEOUT (seconds per nbsnap run).
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/fleet-run.sh
source "$LIB/fleet-run.sh"

need_root
need_cmd nginx docker-registry umoci skopeo curl setfattr getfattr setcap sha256sum timeout base64 "$PYTHON"
need_nbsnap
scratch_init nbfleetauth

N=${NBSNAP_FLEET_AUTH_N:-10}
RATE=${FLEET_RATE:-10}
BURST=${FLEET_BURST:-5}
{ [[ $N =~ ^[0-9]+$ ]] && ((N >= 2)); } || fail "NBSNAP_FLEET_AUTH_N must be a number >= 2 (got '$N')"

step "fleet: 3 replicas, $RATE r/s (burst $BURST); $N notebooks"
fleet_run_setup "$SCRATCH/run" "$N" --rate "$RATE" --burst "$BURST" || fail "setting up the fleet failed"

step "the token proxy in front of the balancer"
PROXY_PORT=$(free_port)
PROXY_URL=http://127.0.0.1:$PROXY_PORT
PROXY_LOG=$SCRATCH/proxy.log
"$PYTHON" "$LIB/faultproxy.py" --listen "127.0.0.1:$PROXY_PORT" --upstream "$FLEET_URL" --log "$PROXY_LOG" \
    2>"$SCRATCH/proxy.err" &
PROXY_PID=$!
at_exit "kill $PROXY_PID 2>/dev/null; wait $PROXY_PID 2>/dev/null"
for ((k = 0; k < 100; k++)); do
    curl -s -o /dev/null -X POST "$PROXY_URL/__nothing" 2>/dev/null && break
    sleep 0.05
done
# bearer mode; the token expires once, at the first PATCH of any save: every save holds a token then (each fetched
# one for its first request, seconds before the first PATCH) and none has ended: each gets 401 invalid_token next
curl -sSf -o /dev/null -X POST --data-binary \
    '{"bearer": true, "rules": [{"id": "exp", "method": "PATCH", "nth": 1, "action": "expire_token"}]}' \
    "$PROXY_URL/__fault" || fail "the fault proxy did not start (see $SCRATCH/proxy.err)"
check "the proxy demands a token" test "$(curl -s -o /dev/null -w '%{http_code}' "$PROXY_URL/v2/")" = 401
AUTHFILE=$SCRATCH/auth.json
printf '{"auths": {"127.0.0.1:%s": {"auth": "%s"}}}\n' "$PROXY_PORT" "$(printf 'fleet:fleet-secret' | base64 -w0)" \
    >"$AUTHFILE"
PROXY_MARK=$(wc -l <"$PROXY_LOG")

UPLOADS_BEFORE=$(fleet_uploads_left)
step "$N saves at once through the token proxy"
fleet_run_saves --kill-after 0 --registry "$PROXY_URL" --authfile "$AUTHFILE" || fail "fleet_run_saves failed"
note "wall time of the $N saves: $FLEET_SAVE_WALL s"
check "every save exits 0 with status ACTIVE ($FLEET_SAVES_OK of $N)" test "$FLEET_SAVES_OK" -eq "$N"

step "the access log and the images"
fleet_run_analyze "$SCRATCH/figures.json"
F=$SCRATCH/figures.json
fig() { json_get "$F" "$1"; }
check "every image is the base layers + exactly one own layer, own layers distinct ($(fig 'j["images_bad"][:3]'))" \
    test "$(fig 'j["images"]')" -eq "$N" -a "$(fig 'len(j["images_bad"])')" -eq 0
check "no base layer was uploaded ($(fig 'j["base_uploads"][:3]'))" test "$(fig 'len(j["base_uploads"])')" -eq 0
check "the rate limit answered 429s during the saves ($(fig 'j["n429"]'), $RATE r/s, burst $BURST): tokens were held across Retry-After waits" \
    test "$(fig 'j["n429"]')" -gt 0
check "no upload session left by the saves ($(fleet_uploads_left) in the storage, $UPLOADS_BEFORE before)" \
    test "$(fleet_uploads_left)" -le "$UPLOADS_BEFORE"

step "the proxy's log: tokens per save"
tail -n "+$((PROXY_MARK + 1))" "$PROXY_LOG" >"$SCRATCH/saves-proxy.log"
# A save is known by its connections: each proxy connection whose requests name fleet/nbI (a path or a token
# scope) belongs to save I; the other requests of that connection (the /v2/ ping, the base's manifest) too.
"$PYTHON" - "$SCRATCH/saves-proxy.log" "$N" "$SCRATCH/tokens.json" <<'EOF' || fail "the proxy log analysis failed"
import collections, json, re, statistics, sys, urllib.parse
log, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(log)]
def repos(e):
    u = urllib.parse.urlsplit(e["path"])
    if u.path.startswith("/__token"):
        scopes = [s for k, v in urllib.parse.parse_qsl(u.query) if k == "scope" for s in v.split(" ")]
        return {s.split(":")[1] for s in scopes if s.count(":") >= 2}
    m = re.match(r"/v2/(.+?)/(blobs|manifests|tags)/", u.path)
    return {m.group(1)} if m else set()
owner = {}
for e in rows:
    for r in repos(e):
        m = re.fullmatch(r"fleet/nb(\d+)", r)
        if m:
            if owner.setdefault(e["conn"], int(m.group(1))) != int(m.group(1)):
                sys.exit("connection %d carries requests of two saves" % e["conn"])
per = collections.defaultdict(list)
for e in rows:
    per[owner.get(e["conn"])].append(e)
saves = {}
for i in range(n):
    L = per.get(i, [])
    tokens = [e for e in L if e["path"].startswith("/__token")]
    scopes = {tuple(sorted(v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(e["path"]).query) if k == "scope"))
              for e in tokens}
    v2 = [e for e in L if e["path"].startswith("/v2/")]
    n401 = [e for e in v2 if e["status"] == 401]
    invalid = [e for e in n401 if e["token"] is not None]  # a stale token: answered error="invalid_token"
    saves[i] = {"requests": len(L), "v2": len(v2), "tokens": len(tokens), "scopes": len(scopes),
                "basic": sum(1 for e in tokens if e["auth"] == "Basic"), "n401": len(n401),
                "invalid_token": len(invalid), "no_bearer": sum(1 for e in v2 if e["auth"] != "Bearer"),
                "no_bearer_paths": [e["path"][:60] for e in v2 if e["auth"] != "Bearer"][:3],
                "connections": len({e["conn"] for e in L}),
                "token_after_invalid": bool(invalid) and any(e["seq"] > invalid[0]["seq"] for e in tokens)}
other = per.get(None, [])
tok = [s["tokens"] for s in saves.values()]
res = {"saves": saves, "unattributed": len(other), "unattributed_sample": [(e["method"], e["path"][:60], e["status"]) for e in other[:5]],
       "requests": len(rows), "token_requests": sum(1 for e in rows if e["path"].startswith("/__token")),
       "v2_requests": sum(1 for e in rows if e["path"].startswith("/v2/")),
       "expired": sum(1 for e in rows if e["action"] == "expire_token"),
       "tokens_min": min(tok), "tokens_median": statistics.median(tok), "tokens_max": max(tok),
       "n429": sum(1 for e in rows if e["status"] == 429)}
json.dump(res, open(out, "w"), indent=1)
for i, s in sorted(saves.items()):
    print("save %d: %d requests (%d /v2/) on %d connection(s), %d tokens for %d scopes, %d x 401 (%d invalid_token), %d without Bearer"
          % (i, s["requests"], s["v2"], s["connections"], s["tokens"], s["scopes"], s["n401"], s["invalid_token"], s["no_bearer"]), file=sys.stderr)
EOF
T=$SCRATCH/tokens.json
tj() { json_get "$T" "$1"; }
note "tokens per save: min $(tj 'j["tokens_min"]'), median $(tj 'j["tokens_median"]'), max $(tj 'j["tokens_max"]');\
 $(tj 'j["token_requests"]') token requests for $(tj 'j["v2_requests"]') /v2/ requests ($(tj 'j["n429"]') of them answered 429);\
 requests on no save's connection: $(tj 'j["unattributed"]') $(tj 'j["unattributed_sample"]')"
# save_all EXPR: true when EXPR holds for every save `s`; save_bad EXPR: the first saves for which it does not
save_all() {
    "$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1]))
sys.exit(0 if all(eval(sys.argv[2]) for s in j["saves"].values()) else 1)' "$T" "$1"
}
save_bad() {
    "$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1]))
keys = ("tokens", "scopes", "n401", "invalid_token", "no_bearer", "no_bearer_paths")
print([(i, {k: s[k] for k in keys}) for i, s in j["saves"].items() if not eval(sys.argv[2])][:3])' "$T" "$1"
}
save_check() { check "$1 $(save_bad "$2")" save_all "$2"; }
check "the token expired once during the saves" test "$(tj 'j["expired"]')" -eq 1
save_check "every save's requests are in the proxy's log" 's["v2"] > 0'
save_check "every save sent its Basic credentials to the token endpoint" 's["tokens"] > 0 and s["basic"] == s["tokens"]'
save_check "every save got a 401 invalid_token after the expiry and fetched a new token" 's["invalid_token"] >= 1 and s["token_after_invalid"]'
save_check "tokens per save <= its distinct token scopes + its 401 invalid_token answers (cached per scope)" \
    's["tokens"] <= s["scopes"] + s["invalid_token"]'
save_check "no /v2/ request without a Bearer token but the first challenge" 's["no_bearer"] <= 1'
# each cached token is refused once at most (the token expired once): 401s <= the challenge + one per scope
save_check "no 401 loop: one challenge, each token scope refused once at most (401s <= 1 + scopes)" \
    's["n401"] - s["invalid_token"] <= 1 and s["invalid_token"] <= s["scopes"]'
note "401s per save: max $(tj 'max(s["n401"] for s in j["saves"].values())') (of them invalid_token: max $(tj 'max(s["invalid_token"] for s in j["saves"].values())'))"
check "no request outside the saves' connections" test "$(tj 'j["unattributed"]')" -eq 0

finish_checks
