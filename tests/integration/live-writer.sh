#!/bin/bash
# The notebook keeps running during the save. A writer rewrites small files in place, replaces files by
# atomic rename, and creates and deletes temporary files while `nbsnap save` runs; every file carries its own
# checksum, so a torn, cut or padded copy in the image is caught. The save must succeed with every saved file
# self-consistent (small files are re-read, replaced files saved as their new version, vanished files skipped
# with a note). A big file appended to while it is being read must fail the save with its path named, and
# leave the tag unpushed: bytes already streamed cannot be taken back, and a silently cut file is worse.
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
source "$LIB/common.sh"
source "$LIB/registry.sh"
source "$LIB/base-image.sh"
source "$LIB/notebook.sh"

need_root
need_cmd umoci skopeo curl
need_nbsnap
scratch_init nbsnap-live

registry_start "$SCRATCH/reg"
at_exit registry_stop
base_image_build "$SCRATCH/base" test/base:1 >/dev/null
notebook_mount "$SCRATCH/nb"
at_exit "notebook_umount '$SCRATCH/nb'"
M=$SCRATCH/nb/merged
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$SCRATCH/state"
[[ $NBSNAP_RC -eq 0 ]] || fail "baseline failed"

cat >"$SCRATCH/writer.py" <<'PY'
import hashlib, os, random, sys, time

# writer.py DIR SECONDS MODE: keeps changing files under DIR until SECONDS pass or DIR/stop exists.
# Every file is "payload\n<sha256 of payload>\n", whatever its size.
d, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rnd = random.Random(7)

def body(n):
    payload = os.urandom(n // 2).hex().encode()[:n]
    return payload + b"\n" + hashlib.sha256(payload).hexdigest().encode() + b"\n"

def inplace(path, n):
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        data = body(n)
        f.seek(0)
        f.write(data[: len(data) // 2]); f.flush()
        f.write(data[len(data) // 2 :]); f.truncate(); f.flush()

def replace(path, n):
    tmp = path + ".tmp%d" % rnd.randrange(1 << 30)
    with open(tmp, "wb") as f:
        f.write(body(n))
    os.rename(tmp, path)

os.makedirs(d, exist_ok=True)
if mode == "setup":
    for i in range(200):
        inplace(os.path.join(d, "small%03d" % i), rnd.randrange(10, 200000))
    for i in range(6):
        replace(os.path.join(d, "big%d" % i), rnd.randrange(2, 6) << 20)
    sys.exit(0)
end = time.time() + seconds
while time.time() < end and not os.path.exists(os.path.join(d, "stop")):
    i = rnd.randrange(200)
    inplace(os.path.join(d, "small%03d" % i), rnd.randrange(10, 200000))
    if rnd.random() < 0.2:
        replace(os.path.join(d, "big%d" % rnd.randrange(6)), rnd.randrange(2, 6) << 20)
    t = os.path.join(d, "tmp%d" % rnd.randrange(50))
    if os.path.exists(t):
        os.unlink(t)
    else:
        with open(t, "wb") as f:
            f.write(body(rnd.randrange(10, 5000)))
PY

step "save while a writer rewrites, replaces, creates and deletes files"
"$PYTHON" "$SCRATCH/writer.py" "$M/home/ma-user/busy" 0 setup
"$PYTHON" "$SCRATCH/writer.py" "$M/home/ma-user/busy" 120 run &
writer=$!
at_exit "kill $writer 2>/dev/null || true"
ok=0
for attempt in 1 2 3; do
    run_nbsnap "$SCRATCH/save$attempt" save --root "$M" --state-dir "$SCRATCH/state" \
        --registry "$REGISTRY_URL" --base-image test/base:1 --namespace test --name live --tag v1 --chunk-size 65536
    if [[ $NBSNAP_RC -eq 0 ]]; then ok=1; break; fi
    # a failure is allowed only with a clear message naming the file
    grep -qE 'kept changing|turned into another kind' "$SCRATCH/save$attempt.err" ||
        fail "the save failed without naming a changing file: $(tail -3 "$SCRATCH/save$attempt.err")"
done
touch "$M/home/ma-user/busy/stop"
wait "$writer" || true
[[ $ok == 1 ]] || fail "three saves in a row failed under a small-file writer (re-reads should absorb it)"

step "every saved file is one the writer wrote whole"
pull_image test/live:v1 "$SCRATCH/pull"
"$PYTHON" - "$SCRATCH/pull/bundle/rootfs/home/ma-user/busy" <<'PY' || fail "a saved file is torn, cut or padded"
import hashlib, os, sys
d = sys.argv[1]
n = bad = 0
for name in sorted(os.listdir(d)):
    p = os.path.join(d, name)
    # bigN.tmpNNN is replace()'s file in flight: created empty, written, renamed. The walk may meet it at
    # any point of that (empty, or part-written), and an image of that moment rightly holds it as it was;
    # only the names the writer promises whole (small*, big*, tmp*) are checked.
    if not os.path.isfile(p) or ".tmp" in name:
        continue
    data = open(p, "rb").read()
    payload, _, rest = data.rpartition(b"\n")[0].rpartition(b"\n")
    n += 1
    if hashlib.sha256(payload).hexdigest().encode() != rest or not data.endswith(b"\n"):
        bad += 1
        print("inconsistent:", name, len(data), file=sys.stderr)
print("checked %d files, %d inconsistent" % (n, bad), file=sys.stderr)
sys.exit(1 if bad or n < 200 else 0)
PY

step "a big file appended to during its read fails the save, naming it; no tag"
dd if=/dev/urandom of="$M/home/ma-user/growing.log" bs=1M count=200 status=none
( while [[ ! -e $SCRATCH/stop-append ]]; do head -c 65536 /dev/urandom >>"$M/home/ma-user/growing.log"; sleep 0.01; done ) &
appender=$!
at_exit "touch '$SCRATCH/stop-append'; kill $appender 2>/dev/null || true"
run_nbsnap "$SCRATCH/grow" save --root "$M" --state-dir "$SCRATCH/state" --registry "$REGISTRY_URL" \
    --base-image test/base:1 --namespace test --name live --tag grow --threads 1 --chunk-size 65536
touch "$SCRATCH/stop-append"
wait "$appender" || true
[[ $NBSNAP_RC -ne 0 ]] || fail "a file appended to during the save was saved as if it had not changed"
grep -q 'home/ma-user/growing.log' "$SCRATCH/grow.err" || fail "the failure does not name the file: $(tail -2 "$SCRATCH/grow.err")"
grep -q '"status".*"CREATE_FAILED"' "$SCRATCH/grow.out" || fail "stdout is not a CREATE_FAILED image object"
[[ $(manifest_status test/live grow) == 404 ]] || fail "the tag was pushed after a failed save"
note "live writers: consistent image, or a clear failure"
