#!/bin/bash
# shellcheck disable=SC2016 # check "..." '...' assertions expand when they run
# Progress that means something (issue #10): a save through nbsnapd dominated by one large file of random data
# (one entry: a count of entries would sit still while it streams). Polled every 100 ms over the API, the
# image's percent is computed in bytes: it passes 25, 50 and 75 while the save is CREATING, never goes back,
# is never 100 before the image is ACTIVE, and moves at least every 2 s while bytes flow (the save reports
# every NB_PROGRESS_REPORT_USEC, 250 ms); the `progress` object has the byte counts, a rate and a time left
# that agree with what was polled, and status_message shows the percent, MB/s and ETA. `nbsnap status --wait`
# on a terminal (script(1)) draws the percent, MB/s and ETA too.
#
# Run: ctest -R integration/daemon-progress   (or: sudo NBSNAP=build/agent/nbsnap NBSNAPD=build/agent/nbsnapd bash ...)
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

daemon_test_init nbd-progress script

BIG_MB=${NBSNAP_PROGRESS_MB:-400}

step "registry, base image, notebook, baseline, one ${BIG_MB} MiB file of random data"
notebook_setup
head -c "${BIG_MB}M" /dev/urandom >"$NB_MERGED/opt/t/big.bin"
TOTAL=$((BIG_MB * 1024 * 1024 + $(stat -c %s "$NB_MERGED/opt/t/added/new.txt")))

step "nbsnapd; a save polled every 100 ms until it ends"
# small PATCHes and one compression thread: the upload takes some seconds on any machine
daemon_start progress --chunk-size 1048576 --threads 1
api POST "$CREATE" -d '{"name":"progress","tag":"v1"}'
check "create-image is 200" test "$HTTP_CODE" = 200
ID=$(jget 'j["id"]')
script -qfec "$(printf '%q ' "$NBSNAP" status "$ID" --wait --socket "$SOCK")" /dev/null >"$SCRATCH/tty.txt" 2>&1 &
TTY_PID=$!
at_exit "kill $TTY_PID 2>/dev/null || true"
"$PYTHON" - "$SOCK" "$P/images/$ID" "$SCRATCH/polls.jsonl" <<'EOF'
import http.client, json, socket, sys, time
class Conn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.unix_path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.unix_path)
out = open(sys.argv[3], "w")
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    c = Conn(sys.argv[1])
    c.request("GET", sys.argv[2])
    j = json.loads(c.getresponse().read())
    c.close()
    out.write(json.dumps({"t": time.monotonic(), "image": j}) + "\n")
    out.flush()
    if j.get("status") not in ("INIT", "CREATING"):
        break
    time.sleep(0.1)
EOF
wait "$TTY_PID" || true
api GET "$P/images/$ID"
check "the save is ACTIVE" test "$(jget 'j["status"]')" = ACTIVE
check "an ACTIVE image has no progress object" test "$(jget '"progress" in j')" = false

DIGEST=$(json_get "$STATE/last-save.json" 'j["manifest_digest"]')
printf '[nbsnapd]\nroot = %s\nstate_dir = %s\n' "$NB_MERGED" "$STATE" >"$SCRATCH/nbsnapd.conf"
run_nbsnap "$SCRATCH/diff" diff --config "$SCRATCH/nbsnapd.conf"
check "nbsnap diff --config after the daemon's save: nothing to pack since it" \
    eval '[[ $(head -1 "$SCRATCH/diff.out") == "0 entries: 0 added, 0 changed, 0 deleted" ]] && grep -qF "compared with the record of the last save ($DIGEST" "$SCRATCH/diff.err"'

step "what was polled"
check "percent passes 25, 50 and 75 while CREATING, monotonic, never 100; bytes move every <= 2 s (plus the longest gap between two polls); rate and ETA sane" \
    "$PYTHON" - "$SCRATCH/polls.jsonl" "$TOTAL" <<'EOF'
import json, re, sys
total = int(sys.argv[2])
polls = [json.loads(l) for l in open(sys.argv[1])]
creating = [p for p in polls if p["image"]["status"] == "CREATING" and "progress" in p["image"]]
errs = []
pcts = [p["image"]["progress"]["percent"] for p in creating]
print("  %d polls, %d CREATING with progress; percents seen: %s" % (len(polls), len(creating), sorted(set(pcts))))
for lo, hi in ((25, 50), (50, 75), (75, 96)):
    if not any(lo <= x < hi for x in pcts):
        errs.append("no percent in [%d, %d) while CREATING" % (lo, hi))
if any(b < a for a, b in zip(pcts, pcts[1:])):
    errs.append("the percent went back: %s" % pcts)
if any(x >= 100 for x in pcts):
    errs.append("100 before ACTIVE")
# the bytes: the total the plan counted; done never above it
for p in creating:
    g = p["image"]["progress"]
    if g["bytes_total"] != total:
        errs.append("bytes_total %s, want %d" % (g["bytes_total"], total)); break
    if not 0 <= g["bytes_done"] <= total:
        errs.append("bytes_done %s out of range" % g["bytes_done"]); break
# while bytes flow (0 < done < total) the value changes at least every 2 s
flow = [p for p in creating if 0 < p["image"]["progress"]["bytes_done"] < total]
if len(flow) < 5:
    errs.append("only %d polls while bytes flowed" % len(flow))
last_t, last_v, worst = None, None, 0.0
for p in flow:
    v = p["image"]["progress"]["bytes_done"]
    if v != last_v:
        if last_t is not None:
            worst = max(worst, p["t"] - last_t)
        last_t, last_v = p["t"], v
# a change is seen at the poll after it: allow the longest gap between two consecutive polls on top of 2 s
gap = max((b["t"] - a["t"] for a, b in zip(polls, polls[1:])), default=0.0)
print("  longest time between two changes of bytes_done while bytes flowed: %.2f s (longest gap between "
      "two polls: %.2f s)" % (worst, gap))
if worst > 2.0 + gap:
    errs.append("bytes_done stood still for %.2f s while bytes flowed (allowed: 2 s + %.2f s between polls)"
                % (worst, gap))
# rate and ETA: present once bytes flowed a while, sane, and in agreement with what was polled
rated = [p for p in flow if p["image"]["progress"]["bytes_per_second"] is not None]
if len(rated) < 3:
    errs.append("a rate in only %d polls" % len(rated))
t0 = flow[0]["t"] if flow else 0
for p in rated:
    g = p["image"]["progress"]
    rate, eta = g["bytes_per_second"], g["eta_seconds"]
    if not 1e5 <= rate <= 1e10:
        errs.append("rate %s B/s is not sane" % rate); break
    if eta is None or eta < 0:
        errs.append("no time left with a rate: %s" % g); break
    want = (total - g["bytes_done"]) / rate
    if not want - 1 <= eta <= want + 1:
        errs.append("eta %s s, the bytes left at that rate say %.1f s" % (eta, want)); break
    # the rate is the bytes since the first one over the time since: not faster than what the polls saw
    # since the first poll with bytes (which came after the first byte)
    seen = g["bytes_done"] / max(p["t"] - t0 + 1.0, 0.1)
    if rate < seen / 4:
        errs.append("rate %.0f B/s, far below the %.0f B/s the polls saw" % (rate, seen)); break
msg = [p["image"]["status_message"] for p in rated]
pat = re.compile(r"^packing and uploading layer: (\d+)% \([0-9.]+ of [0-9.]+ MB packed, [0-9.]+ MB/s, ETA \d+(s|m\d\ds|h\d\dm); ")
for p, m in zip(rated, msg):
    mm = pat.match(m)
    if not mm or int(mm.group(1)) != p["image"]["progress"]["percent"]:
        errs.append("status_message does not show the percent, MB/s and ETA: %r" % m); break
print("  e.g. %r" % (msg[len(msg) // 2] if msg else None))
for e in errs:
    print("  " + e)
sys.exit(1 if errs else 0)
EOF

check "nbsnap status --wait on a terminal draws the percent, MB/s and ETA" \
    grep -Eq 'CREATING +\[[#.]+\] +[0-9]+% +[0-9.]+ MB/s ETA [0-9]+(s|m[0-9]{2}s|h[0-9]{2}m)' "$SCRATCH/tty.txt"
check "nbsnap status --wait ends with the ACTIVE image" grep -Eq '"status":[[:space:]]*"ACTIVE"' "$SCRATCH/tty.txt"

daemon_stop
finish_checks
