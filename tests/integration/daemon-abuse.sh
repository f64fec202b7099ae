#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# nbsnapd against hostile and broken clients, each tried for real on its unix socket (python3 raw sockets
# where curl would be polite), after each of which the daemon must still answer:
#  - huge headers and URLs: refused by libmicrohttpd's per-connection memory (NB_API_CONNECTION_MEMORY_MAX,
#    431 / 414), a header below it still served;
#  - slow clients (slowloris: a header byte every 0.5 s on many connections): cut off after
#    NB_API_REQUEST_TIMEOUT (s), while a fresh client is answered at once;
#  - many connections: past NB_API_CONNECTIONS_MAX the kernel's backlog, then refusal; after they close the
#    daemon serves again at once (it used to stay deaf: libmicrohttpd's listening socket left its epoll set);
#  - out of file descriptors: nbsnapd under `prlimit --nofile=64:64` derives its connection limit from the fd
#    limit, survives 100 connections and more slow clients than it serves, and a save still works;
#  - paths: percent-encoding, "..", ".", encoded slashes, control characters -> 404, never another handler;
#  - names/tags/namespaces that would change the registry URL ("../", "?", "#", "@", "%2F", uppercase, empty)
#    -> 400 before any work (no record, nothing in the registry);
#  - truncated bodies, truncated and nested JSON, trailing bytes, NUL bytes, wrong types -> 400 or closed.
#
# Run: ctest -R integration/daemon-abuse   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-abuse prlimit

# the limits of agent/api.h, as the checks below expect them
REQUEST_TIMEOUT=10
LOWFD_CONNECTIONS=16 # (64 - NB_API_FDS_RESERVED 48) / 1 listener

RAW=$SCRATCH/rawhttp.py
cat >"$RAW" <<'PYEOF'
"""Raw HTTP clients for the nbsnapd abuse tests (unix socket).
  rawhttp.py status SOCK [--half-close] [--timeout S]  < request bytes   -> prints the HTTP status or closed/timeout
  rawhttp.py slow SOCK N SECONDS                         N clients sending a header a byte every 0.5 s;
                                                         prints JSON {"total", "closed_by_server", "max_close_s"}
  rawhttp.py flood SOCK N HOLD                           N idle connections held HOLD s; prints JSON counts
"""
import json, socket, sys, time

def connect(path, timeout=10, blocking=True):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout if blocking else 0)
    s.connect(path)
    return s

def status(path, data, half_close, timeout):
    try:
        s = connect(path, timeout)
        try:
            s.sendall(data)
        except OSError:
            pass
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while b"\r\n" not in out:
            d = s.recv(4096)
            if not d:
                break
            out += d
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error:%s" % e.__class__.__name__
    if not out:
        return "closed"
    parts = out.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 else "garbage"

def slow(path, n, seconds):
    socks, t0 = [], time.time()
    for _ in range(n):
        s = connect(path, 5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        s.settimeout(0)
        socks.append(s)
    closed = {}
    while time.time() - t0 < seconds and len(closed) < n:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                s.send(b"a")
                d = s.recv(4096)
                if d == b"":
                    closed[i] = time.time() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed[i] = time.time() - t0
        time.sleep(0.5)
    for s in socks:
        s.close()
    print(json.dumps({"total": n, "closed_by_server": len(closed),
                      "max_close_s": round(max(closed.values()), 1) if closed else None}))

def flood(path, n, hold):
    socks, refused = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            socks.append(s)
        except BlockingIOError:
            refused += 1  # the backlog is full: the kernel refuses (EAGAIN)
            s.close()
        except OSError:
            refused += 1
            s.close()
    time.sleep(hold)
    for s in socks:
        s.close()
    print(json.dumps({"opened": len(socks), "refused": refused}))

if __name__ == "__main__":
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "status":
        rest = sys.argv[3:]
        t = float(rest[rest.index("--timeout") + 1]) if "--timeout" in rest else 10
        print(status(path, sys.stdin.buffer.read(), "--half-close" in rest, t))
    elif cmd == "slow":
        slow(path, int(sys.argv[3]), float(sys.argv[4]))
    elif cmd == "flood":
        flood(path, int(sys.argv[3]), float(sys.argv[4]))
PYEOF

# raw REQUEST-PRINTF-FORMAT [rawhttp.py status options]: prints the HTTP status nbsnapd answered
raw() {
    local fmt=$1
    shift
    # shellcheck disable=SC2059 # the request is the format: \r\n expand
    printf "$fmt" | "$PYTHON" "$RAW" status "$SOCK" "$@"
}

alive() {
    kill -0 "$DAEMON_PID" 2>/dev/null &&
        [[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" http://localhost/health) == 200 ]]
}

step "registry, base image, notebook, baseline"
notebook_setup
daemon_start abuse

step "huge headers and URLs (NB_API_CONNECTION_MEMORY_MAX)"
big=$(head -c 65536 /dev/zero | tr '\0' a)
check "a 64 KiB header: 431 ($(raw "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: $big\r\n\r\n"))" \
    test "$(raw "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: $big\r\n\r\n")" = 431
many=$(for ((i = 0; i < 3000; i++)); do printf 'X-H%d: v\\r\\n' "$i"; done)
check "3000 small headers: 431" test "$(raw "GET /health HTTP/1.1\r\nHost: x\r\n$many\r\n")" = 431
check "a 40 KB URL: 414" test "$(raw "GET /health?x=${big:0:40000} HTTP/1.1\r\nHost: x\r\n\r\n")" = 414
check "a 4 KB header is still served: 200" test "$(raw "GET /health HTTP/1.1\r\nHost: x\r\nX-Ok: ${big:0:4096}\r\n\r\n")" = 200
check "a huge header on a POST: 431, no record" test "$(raw "POST $CREATE HTTP/1.1\r\nHost: x\r\nX-Big: $big\r\nContent-Length: 2\r\n\r\n{}")" = 431
check "the daemon still answers" alive

step "slowloris: 24 clients sending a header byte every 0.5 s"
"$PYTHON" "$RAW" slow "$SOCK" 24 $((REQUEST_TIMEOUT + 8)) >"$SCRATCH/slow.json" &
SLOW_PID=$!
sleep 2
worst=0
for ((i = 0; i < 5; i++)); do
    t=$(curl -s -m 5 -o /dev/null -w '%{http_code} %{time_total}' --unix-socket "$SOCK" http://localhost/health || true)
    [[ ${t%% *} == 200 ]] || worst=fail
    [[ $worst == fail ]] || worst=$("$PYTHON" -c 'import sys; print(max(float(sys.argv[1]), float(sys.argv[2])))' "$worst" "${t##* }")
    sleep 0.5
done
check "meanwhile a fresh client gets /health at once (slowest: ${worst}s)" \
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.argv[1] != "fail" and float(sys.argv[1]) < 1.0 else 1)' "$worst"
wait "$SLOW_PID"
check "every slow client was cut off ($(cat "$SCRATCH/slow.json"))" test "$(json_get "$SCRATCH/slow.json" 'j["closed_by_server"]')" = 24
check "within NB_API_REQUEST_TIMEOUT + 2 s" "$PYTHON" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["max_close_s"] <= float(sys.argv[2]) + 2 else 1)' "$SCRATCH/slow.json" "$REQUEST_TIMEOUT"
check "the log says so, once per sweep" grep -q "connection(s) on unix:.* that took over $REQUEST_TIMEOUT s for a request" "$SCRATCH/abuse.log"
check "the daemon still answers" alive

step "many connections (NB_API_CONNECTIONS_MAX, then the backlog)"
for round in 1 2 3; do
    "$PYTHON" "$RAW" flood "$SOCK" 200 1 >"$SCRATCH/flood$round.json"
    note "flood $round: $(cat "$SCRATCH/flood$round.json")"
    t=$(curl -s -m 5 -o /dev/null -w '%{http_code} %{time_total}' --unix-socket "$SOCK" http://localhost/health || true)
    check "after 200 connections closed (round $round), /health at once ($t)" \
        "$PYTHON" -c 'import sys; c, t = sys.argv[1].split(); sys.exit(0 if c == "200" and float(t) < 1 else 1)' "$t"
done
check "some were refused by the kernel beyond the backlog, none crashed it" \
    "$PYTHON" -c 'import json,sys; sys.exit(0 if any(json.load(open(f))["refused"] > 0 for f in sys.argv[1:]) else 1)' "$SCRATCH"/flood*.json
check "the daemon still answers" alive

step "paths: percent-encoding, dot segments, encoded slashes -> 404, never another handler"
for path in '/v1/%2e%2e/images' '/v1/proj-1%2Fimages' '/v1/proj-1/images%2F' '/%68ealth' '/health%00' \
    "/v1/proj-1/notebooks/nb-1/../images" '/v1/proj-1/./images' '/v1/proj-1/images/..' '/v1/proj-1/images/.' \
    '/v1/proj-1/notebooks/nb-1/create-image/..' '/v1/proj-1/notebooks/nb-1%2Fcreate-image' \
    '/v1/proj-1/notebooks/%6eb-1/create-image' '/v1/../v1/proj-1/images' '/v1/proj-1/images/%2e%2e%2f%2e%2e' \
    '/v1//proj-1/images' '/v1/proj-1/images/a%20b'; do
    for method in GET POST; do
        body=()
        [[ $method == POST ]] && body=(-H 'Content-Type: application/json' -d '{}')
        code=$(curl -s --path-as-is -o "$SCRATCH/resp.json" -w '%{http_code}' --unix-socket "$SOCK" -X "$method" \
            "${body[@]}" "http://localhost$path" 2>/dev/null || true)
        check "$method $path: 404 (got $code)" test "$code" = 404
    done
done
check "a control character in the path: 400 or 404" grep -Eq '^(400|404)$' <<<"$(raw "GET /health\001 HTTP/1.1\r\nHost: x\r\n\r\n")"
check "a space in the path: 400 or 404" grep -Eq '^(400|404)$' <<<"$(raw "GET /v1/proj-1/images x HTTP/1.1\r\nHost: x\r\n\r\n")"
api GET "$P/images"
check "nothing was created by those POSTs" test "$(jget 'j["total"]')" = 0

step "names, tags, namespaces that would change the registry URL -> 400 before any work"
reg_mark=$(registry_log_mark)
n=0
for field in name tag namespace; do
    for v in '../x' 'x/../y' '..' 'a?b' 'a#b' 'a@b' 'a%2Fb' 'a/b' 'UPPER' '' ' ' 'a b' 'a:b' 'a\\b' '.' '-x' \
        'a\u0000b' 'a\nb' 'é'; do
        [[ $field == tag && $v == UPPER ]] && continue # tags may have uppercase letters
        api POST "$CREATE" -d "{\"$field\": \"$v\"}"
        check "$field \"$v\": 400 (got $HTTP_CODE)" test "$HTTP_CODE" = 400
        check "$field \"$v\": ModelArts.0104" test "$(jget 'j.get("error_code")' 2>/dev/null)" = ModelArts.0104
        n=$((n + 1))
    done
done
note "$n bad names tried"
api GET "$P/images"
check "no image was recorded" test "$(jget 'j["total"]')" = 0
check "no record in the state dir" test -z "$(ls -A "$STATE/images")"
check "the registry saw no request at all" test -z "$(registry_log_since "$reg_mark" | grep -E '"(GET|HEAD|POST|PUT|PATCH) /v2/' || true)"
check "only the base repository exists" test "$(curl -s "$REGISTRY_URL/v2/_catalog" | "$PYTHON" -c 'import json,sys; print(",".join(json.load(sys.stdin)["repositories"]))')" = nbsnap-test/base

step "truncated, malformed and oversized bodies"
expect400() { # expect400 DESCRIPTION BODY...
    local what=$1
    shift
    api POST "$CREATE" -d "$1"
    check "$what: 400 (got $HTTP_CODE)" test "$HTTP_CODE" = 400
}
expect400 "truncated JSON" '{"name": "ab'
expect400 "truncated after a comma" '{"name": "ab",'
expect400 "just a brace" '{'
expect400 "trailing bytes" '{"name": "ok"}garbage'
expect400 "two objects" '{"name": "ok"}{"tag": "x"}'
expect400 "array" '[{"name": "ok"}]'
expect400 "number" '42'
expect400 "string" '"name"'
expect400 "wrong type: list" '{"name": ["x"]}'
expect400 "wrong type: object" '{"tag": {}}'
expect400 "wrong type: bool" '{"description": true}'
expect400 "wrong type: number" '{"workspace_id": 0}'
expect400 "unknown field" '{"name": "ok", "registry": "evil.example.com"}'
expect400 "unknown field only" '{"project_id": "other"}'
expect400 "repeated field" '{"tag": "a", "tag": "b"}'
expect400 "invalid UTF-8 in description" "$(printf '{"description": "\xff\xfe"}')"
expect400 "17 fields" "{$(for i in $(seq 17); do printf '"f%d": "x",' "$i"; done)\"g\": \"x\"}"
deep=$("$PYTHON" -c 'print("[" * 20000 + "]" * 20000)')
expect400 "nested 20000 deep" "$deep"
printf '{"name": "ok"}\0' >"$SCRATCH/nul.json"
api POST "$CREATE" "$SCRATCH/nul.json"
check "a NUL byte after the object: 400 (got $HTTP_CODE)" test "$HTTP_CODE" = 400
code=$(raw "POST $CREATE HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\": \"trunc" --half-close --timeout 15)
check "a body shorter than its Content-Length, then EOF: closed without a record (got $code)" grep -Eq '^(closed|400)$' <<<"$code"
code=$(raw "POST $CREATE HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"nam" --half-close --timeout 15)
check "a chunked body cut in the middle: closed without a record (got $code)" grep -Eq '^(closed|400)$' <<<"$code"
code=$(raw "POST $CREATE HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{" --timeout 5)
check "Content-Length of 10 GB: 413 before the body (got $code)" test "$code" = 413
code=$(raw "POST $CREATE HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}" --timeout 5)
check "Content-Length -1: refused (got $code)" grep -Eq '^(400|413|closed)$' <<<"$code"
code=$(raw "POST $CREATE HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}" --timeout 5)
check "two Content-Lengths: 400 (got $code)" test "$code" = 400
code=$(raw "POST $CREATE HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" --timeout 5)
check "Content-Length and Transfer-Encoding: 400 (got $code)" test "$code" = 400
api GET "$P/images"
check "no image was recorded by any of them" test "$(jget 'j["total"]')" = 0
check "the daemon still answers" alive

step "a save after all that works"
api POST "$CREATE" -d '{"name":"after-abuse","tag":"v1"}'
check "create-image 200" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 300 || true
check "ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0

step "out of file descriptors: nbsnapd under prlimit --nofile=64:64"
REAL_NBSNAPD=$NBSNAPD
cat >"$SCRATCH/nbsnapd-lowfd" <<WRAP
#!/bin/sh
exec prlimit --nofile=64:64 -- "$REAL_NBSNAPD" "\$@"
WRAP
chmod +x "$SCRATCH/nbsnapd-lowfd"
NBSNAPD=$SCRATCH/nbsnapd-lowfd daemon_start lowfd
check "the fd limit is 64" grep -q 'Max open files *64 *64' "/proc/$DAEMON_PID/limits"
check "it says how many connections it serves ($(grep -o 'RLIMIT_NOFILE.*' "$SCRATCH/lowfd.log" | head -1))" \
    grep -q "RLIMIT_NOFILE is 64: at most $LOWFD_CONNECTIONS connection(s) per listener" "$SCRATCH/lowfd.log"
"$PYTHON" "$RAW" flood "$SOCK" 100 3 >"$SCRATCH/lowfd-flood.json" &
FLOOD_PID=$!
sleep 1.5
fds=$(find "/proc/$DAEMON_PID/fd" -mindepth 1 | wc -l)
check "100 connections: the daemon holds $fds fds, under its limit" test "$fds" -lt 64
wait "$FLOOD_PID"
note "flood: $(cat "$SCRATCH/lowfd-flood.json")"
check "it did not crash" kill -0 "$DAEMON_PID"
t=$(curl -s -m 5 -o /dev/null -w '%{http_code} %{time_total}' --unix-socket "$SOCK" http://localhost/health || true)
check "after they closed, /health at once ($t)" "$PYTHON" -c 'import sys; c, t = sys.argv[1].split(); sys.exit(0 if c == "200" and float(t) < 1 else 1)' "$t"
"$PYTHON" "$RAW" slow "$SOCK" $((LOWFD_CONNECTIONS + 4)) $((REQUEST_TIMEOUT + 8)) >"$SCRATCH/lowfd-slow.json" &
SLOW_PID=$!
sleep 1
t=$(curl -s -m $((REQUEST_TIMEOUT + 8)) -o /dev/null -w '%{http_code} %{time_total}' --unix-socket "$SOCK" http://localhost/health || true)
check "more slow clients than it serves: a fresh client still gets /health within NB_API_REQUEST_TIMEOUT ($t)" \
    "$PYTHON" -c 'import sys; c, t = sys.argv[1].split(); sys.exit(0 if c == "200" and float(t) <= float(sys.argv[2]) + 2 else 1)' "$t" "$REQUEST_TIMEOUT"
wait "$SLOW_PID"
note "slow: $(cat "$SCRATCH/lowfd-slow.json")"
make_bulk "$NB_MERGED/opt/t/lowfd" 600 4096
api POST "$CREATE" -d '{"name":"lowfd","tag":"v1"}'
check "a save under the fd limit: create-image 200" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
wait_image "$ID" ACTIVE CREATE_FAILED --timeout 300 || true
check "and it is ACTIVE ($(jget 'j["status_message"]'))" test "$(jget 'j["status"]')" = ACTIVE
check "the tag is in the registry" test "$(manifest_status nbsnap-it/lowfd v1)" = 200
daemon_stop
check "exit 0" test "$DAEMON_RC" = 0
NBSNAPD=$REAL_NBSNAPD

finish_checks
