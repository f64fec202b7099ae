#!/bin/bash
# shellcheck disable=SC2016
# nbsnapd under systemd's protocols, without systemd as PID 1:
#  - socket activation with systemd-socket-activate (the first connection starts it; it serves the passed
#    socket and does not bind its configured path again);
#  - sd_notify on a NOTIFY_SOCKET this test owns (python3 datagram listener): READY=1, STATUS= lines that
#    follow the save (phase and percent), WATCHDOG=1 that keeps beating during a long save (WATCHDOG_USEC
#    set here), STOPPING=1;
#  - SIGTERM during a save: the save is cancelled, recorded CREATE_FAILED (never lost), the agent exits 0
#    well within the unit's TimeoutStopSec.
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-sd systemd-socket-activate

step "registry, base image, notebook, baseline"
notebook_setup
make_bulk "$NB_MERGED/opt/t/bulk" 10240 2560 # a save of several seconds (64 KiB PATCHes)

step "socket activation"
notify_listen "$SCRATCH/notify.log"
mapfile -t ARGS < <(daemon_args act)
SOCK=$SCRATCH/act.sock
WATCHDOG_USEC=1000000 NOTIFY_SOCKET=$NOTIFY_SOCKET_PATH systemd-socket-activate -l "$SOCK" \
    -E NOTIFY_SOCKET -E WATCHDOG_USEC -- "$NBSNAPD" "${ARGS[@]}" --chunk-size 65536 --incremental false \
    >>"$SCRATCH/act.log" 2>&1 & # both saves pack the bulk: the second must still be running when SIGTERM comes
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID 2>/dev/null || true"
for ((i = 0; i < 100; i++)); do [[ -S $SOCK ]] && break; sleep 0.05; done
ino_before=$(stat -c %i "$SOCK")
api GET /health # the first connection starts nbsnapd on the passed socket
check "first request through the activated socket: 200" test "$HTTP_CODE" = 200
check "nbsnapd runs in the activated process" grep -q nbsnapd "/proc/$DAEMON_PID/cmdline"
check "it serves the passed socket (not a new one on the same path)" test "$(stat -c %i "$SOCK")" = "$ino_before"
check "log names the passed fd" grep -q 'listening on passed fd 3' "$SCRATCH/act.log"
for ((i = 0; i < 50; i++)); do grep -q 'READY=1' "$SCRATCH/notify.log" && break; sleep 0.1; done
check "READY=1" grep -q ' READY=1$' "$SCRATCH/notify.log"
check "STATUS= idle at start" grep -q ' STATUS=idle' "$SCRATCH/notify.log"

step "a long save: STATUS follows it, the watchdog keeps beating"
t0=$("$PYTHON" -c 'import time; print("%.3f" % time.monotonic())')
api POST "$CREATE" -d '{"name":"watched","tag":"v1"}'
ID=$(jget 'j["id"]')
seen_creating=0
for ((i = 0; i < 600; i++)); do
    api GET "$P/images/$ID"
    st=$(jget 'j["status"]')
    [[ $st == CREATING ]] && seen_creating=1
    [[ $st == ACTIVE || $st == CREATE_FAILED ]] && break
    sleep 0.1
done
t1=$("$PYTHON" -c 'import time; print("%.3f" % time.monotonic())')
check "the save was seen CREATING" test "$seen_creating" = 1
check "the save ends ACTIVE" test "$st" = ACTIVE
dur=$("$PYTHON" -c "print(int($t1 - $t0))")
note "save took ${dur}s"
check "the save took a while (${dur}s >= 2)" test "$dur" -ge 2
check "STATUS= names the save with a percent" grep -Eq " STATUS=saving nbsnap-it/watched:v1 \\(image $ID\\): .*[0-9]+%" "$SCRATCH/notify.log"
check "STATUS= shows the packing phase" grep -q " STATUS=saving .*packing and uploading layer" "$SCRATCH/notify.log"
check "STATUS= back to idle after the save" bash -c 'tail -n 20 "$1" | grep -q " STATUS=idle"' _ "$SCRATCH/notify.log"
gaps=$("$PYTHON" - "$SCRATCH/notify.log" "$t0" "$t1" <<'EOF'
import sys
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
ts = [float(l.split()[0]) for l in open(sys.argv[1]) if l.rstrip().endswith("WATCHDOG=1")]
inside = [t for t in ts if t0 <= t <= t1]
pts = [t0] + inside + [t1]
print("%d %.3f" % (len(inside), max(b - a for a, b in zip(pts, pts[1:]))))
EOF
)
read -r n_beats max_gap <<<"$gaps"
check "WATCHDOG=1 during the save ($n_beats beats)" test "$n_beats" -ge 2
check "no gap over WATCHDOG_USEC=1s between beats (max ${max_gap}s)" "$PYTHON" -c "import sys; sys.exit(0 if $max_gap < 1.0 else 1)"

step "SIGTERM during a save"
api POST "$CREATE" -d '{"name":"watched","tag":"v2"}'
ID2=$(jget 'j["id"]')
for ((i = 0; i < 600; i++)); do
    api GET "$P/images/$ID2"
    [[ $(jget 'j["status"]') == CREATING && $(jget 'j["status_message"]') == packing* ]] && break
    sleep 0.05
done
check "second save CREATING" test "$(jget 'j["status"]')" = CREATING
ts=$(date +%s.%N)
daemon_stop TERM
te=$(date +%s.%N)
secs=$("$PYTHON" -c "print(round($te - $ts, 1))")
check "exit status 0 after SIGTERM (got $DAEMON_RC)" test "$DAEMON_RC" = 0
check "stopped within 30 s (${secs}s), far inside TimeoutStopSec" "$PYTHON" -c "import sys; sys.exit(0 if $secs < 30 else 1)"
check "STOPPING=1" grep -q ' STOPPING=1$' "$SCRATCH/notify.log"
check "the record says CREATE_FAILED" grep -q '"CREATE_FAILED"' "$STATE/images/$ID2.json"
check "with the reason" grep -q 'cancelled (the agent is stopping); save again' "$STATE/images/$ID2.json"
check "the tag was not pushed" test "$(manifest_status nbsnap-it/watched v2)" = 404

step "started again by hand: the record is there"
daemon_start act
api GET "$P/images/$ID2"
check "CREATE_FAILED after the restart" test "$(jget 'j["status"]')" = CREATE_FAILED
api GET "$P/images/$ID"
check "the first save still ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
daemon_stop

finish_checks
