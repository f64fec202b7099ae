# shellcheck shell=bash
# Helpers shared by the nbsnapd integration tests (tests/integration/daemon-*.sh). Named .bash so that the
# ctest glob (integration/*.sh) does not run it as a test. It sources tests/lib/common.sh, registry.sh,
# base-image.sh and notebook.sh itself (LIB is that folder), so a test starts with:
#     set -euo pipefail
#     source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"
#     daemon_test_init nbd-NAME [TOOL...]
#
#   P, CREATE                           /v1/proj-1 and its create-image path for nb-1 (the ids of daemon_args)
#   daemon_test_init NAME [TOOL...]     the checks of a test that saves: root, umoci skopeo curl setfattr setcap
#                                       timeout TOOL... python3, nbsnap, nbsnapd (skip, 77, otherwise); then
#                                       $SCRATCH (NAME.XXXXXX, removed at exit)
#   need_nbsnapd                        $NBSNAPD must be the daemon binary (skip otherwise)
#   notebook_setup                      notebook_start + notebook_baseline
#   notebook_start                      registry + base image + overlay notebook: exports REGISTRY_URL, BASE_REF,
#                                       NB_MERGED & co. (tests/lib/registry.sh, base-image.sh, notebook.sh)
#   notebook_baseline [STATE-DIR]       `nbsnap baseline` of $NB_MERGED into STATE-DIR (default $SCRATCH/state,
#                                       exported as STATE), then something to save: /opt/t/added/new.txt
#   faultproxy_start [ARGS...]          tests/lib/faultproxy.py on 127.0.0.1:$PROXY_PORT (a free port unless set)
#                                       in front of $REGISTRY_URL, log $SCRATCH/proxy.log, ARGS added; waits
#                                       for it; exports PROXY_PORT, PROXY_URL, PROXY_PID
#   faults JSON                         sets the proxy's rules (fails the test when it cannot)
#   wait_for DESCRIPTION TIMEOUT CMD... polls CMD every 50 ms until it succeeds (1 and a note after TIMEOUT s)
#   tmpfs_state DIR SPARE_KB            a state dir on a tmpfs of its own: $STATE/baseline plus SPARE_KB
#   fill_up DIR                         writes DIR/fill until the file system is full (fails if it is not)
#   no_half_written DIR                 no temporary file in the state dir DIR, every record and report whole JSON
#   daemon_args NAME                    prints the flags of an agent on $SCRATCH/NAME.sock (config-less)
#   daemon_start NAME [FLAGS...]        starts nbsnapd (log: $SCRATCH/NAME.log), waits for /health;
#                                       exports SOCK, DAEMON_PID
#   daemon_stop [SIGNAL]                stops it (default TERM) and waits; DAEMON_RC gets the exit status
#   api METHOD PATH [BODY-FILE|-d DATA] curl over $SOCK: the body goes to $SCRATCH/resp.json, the HTTP status
#                                       to $HTTP_CODE
#   jget EXPR [FILE]                    a value of $SCRATCH/resp.json (or FILE) by a python expression on j
#   wait_image ID STATUS... [--timeout S]  polls until the image has one of the statuses
#   make_bulk DIR COUNT SIZE            COUNT files of SIZE random bytes under DIR (a save that takes a while
#                                       and reports progress: the walk reports every 4096 entries)
#   notify_listen FILE                  a datagram NOTIFY_SOCKET (python3) writing messages to FILE, one per
#                                       line prefixed by a monotonic timestamp; exports NOTIFY_SOCKET_PATH
#   receiver_start, receiver_stop, reports, wait_reports: a control-plane stand-in (see below)

LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$LIB/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$LIB/notebook.sh"

# shellcheck disable=SC2034 # used by the tests that source this
P=/v1/proj-1 CREATE=$P/notebooks/nb-1/create-image

daemon_test_init() {
    local name=$1
    shift
    need_root
    need_cmd umoci skopeo curl setfattr setcap timeout "$@" "$PYTHON"
    need_nbsnap
    need_nbsnapd
    scratch_init "$name"
}

need_nbsnapd() {
    if [[ -z ${NBSNAPD:-} && -n ${NBSNAP_BINARY_DIR:-} && -x ${NBSNAP_BINARY_DIR}/agent/nbsnapd ]]; then
        NBSNAPD=${NBSNAP_BINARY_DIR}/agent/nbsnapd
    fi
    if [[ -z ${NBSNAPD:-} || ! -x $NBSNAPD ]]; then
        note "SKIP: NBSNAPD is not set to the nbsnapd binary"
        exit 77
    fi
    export NBSNAPD
}

notebook_setup() {
    notebook_start
    notebook_baseline
}

notebook_start() {
    registry_start "$SCRATCH/registry"
    base_image_build "$SCRATCH/base" nbsnap-test/base:v1
    notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
}

# shellcheck disable=SC2120 # the argument is optional
notebook_baseline() {
    STATE=${1:-$SCRATCH/state}
    export STATE
    run_nbsnap "$SCRATCH/baseline" baseline --root "$NB_MERGED" --state-dir "$STATE"
    [[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"
    # something to save
    mkdir -p "$NB_MERGED/opt/t/added"
    echo 'a new file' >"$NB_MERGED/opt/t/added/new.txt"
}

faultproxy_start() {
    local i
    PROXY_PORT=${PROXY_PORT:-$(free_port)}
    PROXY_URL=http://127.0.0.1:$PROXY_PORT
    "$PYTHON" "$LIB/faultproxy.py" --listen "127.0.0.1:$PROXY_PORT" --upstream "$REGISTRY_URL" \
        --log "$SCRATCH/proxy.log" "$@" 2>>"$SCRATCH/proxy.err" &
    PROXY_PID=$!
    export PROXY_PORT PROXY_URL PROXY_PID
    at_exit "kill $PROXY_PID 2>/dev/null || true"
    for ((i = 0; i < 100; i++)); do curl -s -o /dev/null -X POST "$PROXY_URL/__nothing" 2>/dev/null && break; sleep 0.05; done
}

faults() {
    curl -sSf -o /dev/null -X POST --data-binary "$1" "$PROXY_URL/__fault" || fail "cannot set the proxy's rules"
}

wait_for() {
    local what=$1 timeout=$2 i
    shift 2
    for ((i = 0; i < timeout * 20; i++)); do
        "$@" && return 0
        sleep 0.05
    done
    note "timed out waiting for: $what"
    return 1
}

tmpfs_state() {
    local dir=$1 spare_kb=$2 base_kb
    base_kb=$(du -sk "$STATE/baseline" | cut -f1)
    mkdir -p "$dir"
    mount -t tmpfs -o "size=$((base_kb + spare_kb))k,mode=0700" tmpfs "$dir"
    at_exit "umount -l $(printf '%q' "$dir") 2>/dev/null || true"
    cp "$STATE/baseline" "$dir/baseline"
}

fill_up() {
    dd if=/dev/zero of="$1/fill" bs=4k 2>/dev/null || true
    [[ $(df --output=avail "$1" | tail -1) -eq 0 ]]
}

no_half_written() {
    [[ -z $(find "$1" -name '*.tmp*') ]] &&
        "$PYTHON" -c 'import glob,json,sys
for f in glob.glob(sys.argv[1] + "/images/*.json") + glob.glob(sys.argv[1] + "/outbox/*.json"):
    json.load(open(f))' "$1"
}

daemon_args() {
    local name=$1
    printf '%s\n' --config /dev/null --listen "unix:$SCRATCH/$name.sock" --root "$NB_MERGED" \
        --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image "$BASE_REF" --project-id proj-1 \
        --notebook-id nb-1 --namespace nbsnap-it
}

_daemon_wait_health() {
    local i
    for ((i = 0; i < 200; i++)); do
        if curl -sf -o /dev/null --unix-socket "$SOCK" http://localhost/health 2>/dev/null; then
            return 0
        fi
        kill -0 "$DAEMON_PID" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

daemon_start() {
    local name=$1
    shift
    local -a args
    mapfile -t args < <(daemon_args "$name")
    SOCK=$SCRATCH/$name.sock
    "$NBSNAPD" "${args[@]}" "$@" >>"$SCRATCH/$name.log" 2>&1 &
    DAEMON_PID=$!
    export SOCK DAEMON_PID
    at_exit "kill -9 $DAEMON_PID 2>/dev/null || true"
    if ! _daemon_wait_health; then
        note "nbsnapd did not come up; log:"
        cat "$SCRATCH/$name.log" >&2
        fail "nbsnapd $name did not answer /health"
    fi
}

daemon_stop() {
    local sig=${1:-TERM}
    DAEMON_RC=0
    kill "-$sig" "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || DAEMON_RC=$?
}

api() {
    local method=$1 path=$2
    shift 2
    local -a data=()
    if [[ $# -gt 0 ]]; then
        if [[ $1 == -d ]]; then data=(--data-binary "$2"); else data=(--data-binary "@$1"); fi
        data+=(-H 'Content-Type: application/json')
    fi
    HTTP_CODE=$(curl -s -o "$SCRATCH/resp.json" -w '%{http_code}' --unix-socket "$SOCK" -X "$method" \
        "${data[@]}" "http://localhost$path") || HTTP_CODE=000
}

jget() {
    json_get "${2:-$SCRATCH/resp.json}" "$1"
}

wait_image() {
    local id=$1 timeout=300 i st
    shift
    local -a want=()
    while [[ $# -gt 0 ]]; do
        if [[ $1 == --timeout ]]; then timeout=$2; shift 2; else want+=("$1"); shift; fi
    done
    for ((i = 0; i < timeout * 10; i++)); do
        api GET "/v1/proj-1/images/$id"
        if [[ $HTTP_CODE == 200 ]]; then
            st=$(jget 'j["status"]')
            for w in "${want[@]}"; do [[ $st == "$w" ]] && return 0; done
        fi
        sleep 0.1
    done
    note "image $id did not reach ${want[*]} in ${timeout}s (last: HTTP $HTTP_CODE $(head -c 600 "$SCRATCH/resp.json"))"
    return 1
}

notify_listen() {
    local out=$1
    NOTIFY_SOCKET_PATH=$SCRATCH/notify.sock
    "$PYTHON" - "$NOTIFY_SOCKET_PATH" "$out" <<'EOF' &
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s.bind(path)
with open(out, "a", buffering=1) as f:
    while True:
        data = s.recv(65536).decode("utf-8", "replace")
        for line in data.split("\n"):
            if line:
                f.write("%.3f %s\n" % (time.monotonic(), line))
EOF
    NOTIFY_PID=$!
    at_exit "kill $NOTIFY_PID 2>/dev/null || true"
    local i
    for ((i = 0; i < 100; i++)); do [[ -S $NOTIFY_SOCKET_PATH ]] && break; sleep 0.05; done
    export NOTIFY_SOCKET_PATH NOTIFY_PID
}

make_bulk() {
    "$PYTHON" - "$@" <<'EOF'
import os, sys
d, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    sub = os.path.join(d, "d%03d" % (i // 256))
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "f%05d.bin" % i), "wb") as f:
        f.write(os.urandom(size))
EOF
}

# receiver_start NAME FAILS: a control-plane stand-in on 127.0.0.1 (python3 http.server). Its first FAILS
# POSTs get 500; later ones 200. Every attempt goes to $SCRATCH/NAME.attempts (one line each), every accepted
# report to $SCRATCH/NAME.jsonl as {"auth": ..., "xauth": ..., "seq": ..., "body": <the image object>}. Exports
# RECEIVER_URL, RECEIVER_PID. The port is kept in RECEIVER_PORT so that it can be restarted on it.
receiver_start() {
    local name=$1 fails=$2 port=${RECEIVER_PORT:-} i
    [[ -n $port ]] || port=$(free_port)
    "$PYTHON" - "$port" "$fails" "$SCRATCH/$name" <<'EOF' >>"$SCRATCH/$name.log" 2>&1 &
import http.server, json, sys
port, fails, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
state = {"n": 0}
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        state["n"] += 1
        with open(out + ".attempts", "a") as f:
            f.write("%d\n" % state["n"])
        if state["n"] <= fails:
            self.send_response(500); self.end_headers(); self.wfile.write(b"try later"); return
        rec = {"auth": self.headers.get("Authorization"), "xauth": self.headers.get("X-Auth-Token"),
               "seq": self.headers.get("X-Nbsnap-Sequence"),
               "path": self.path, "body": json.loads(body)}
        with open(out + ".jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
    RECEIVER_PID=$!
    RECEIVER_PORT=$port
    RECEIVER_URL=http://127.0.0.1:$port/v1/nbsnap/report
    export RECEIVER_PID RECEIVER_PORT RECEIVER_URL
    at_exit "kill $RECEIVER_PID 2>/dev/null || true"
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && return 0
        sleep 0.05
    done
    fail "receiver did not start"
}

receiver_stop() {
    kill "$RECEIVER_PID" 2>/dev/null || true
    wait "$RECEIVER_PID" 2>/dev/null || true
}

# reports NAME ID: the statuses the receiver accepted for image ID, in arrival order, comma-separated
reports() {
    "$PYTHON" - "$SCRATCH/$1.jsonl" "$2" <<'EOF'
import json, sys
out = []
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r["body"]["id"] == sys.argv[2]:
            out.append(r["body"]["status"])
except FileNotFoundError:
    pass
print(",".join(out))
EOF
}

# wait_reports NAME ID STATUSES [TIMEOUT]: until reports NAME ID ends with STATUS (the last of STATUSES)
wait_reports() {
    local name=$1 id=$2 want=$3 timeout=${4:-60} i got
    for ((i = 0; i < timeout * 10; i++)); do
        got=$(reports "$name" "$id")
        [[ ,$got == *",${want##*,}" ]] && return 0
        sleep 0.1
    done
    note "reports for $id: '$got', expected '$want'"
    return 1
}
