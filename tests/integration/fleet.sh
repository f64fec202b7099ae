#!/bin/bash
# Issue #12 part 2: N notebooks save at the same moment through a replicated, rate-limited registry while one
# replica is SIGKILLed and restarted (tests/lib/fleet-run.sh; bench/fleet runs the same scenario at 50).
#   - three docker-registry replicas behind nginx with a request-rate limit answering 429 + Retry-After: 1
#     (FLEET_RATE r/s, burst FLEET_BURST: low enough that N=20 saves get 429s on 2 cores);
#   - N overlay notebooks on one base image, each with 1-4 MiB of its own random bytes plus small files, each
#     saved by `nbsnap save` (own state dir, own repository fleet/nbI) at once; replica 1 is SIGKILLed once a
#     quarter of them opened their upload session (at 3 s at the latest) and restarted 3 s later;
#   - then one more save, of 20 MiB, during which replica 1 is frozen until a request body waits unread in its
#     sockets, then SIGKILLed: a PATCH cut in the middle (nginx's 502), deterministic.
# Checks: every save exits 0 with ACTIVE; every image = the base layers + exactly one own layer; a sample of 3
# round-trips (skopeo copy + umoci unpack == the notebook's merged tree); the access log shows 429s and no upload
# of a base layer; bytes sent in POST/PATCH/PUT bodies <= 1.10 x the new blobs (resends included); the returns
# after 429s are spread (not all in one 100 ms window) and none came before its Retry-After; no upload session
# left in the storage but those that a dying replica cut (distribution refuses their DELETE: see below).
#
# Run: ctest -R integration/fleet   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/fleet.sh)
# Env: NBSNAP_FLEET_N (notebooks, default 20), FLEET_RATE (default 20), FLEET_BURST (default 10), NBSNAP (binary),
#      NBSNAP_TEST_KEEP=1 keeps the scratch dir, NBSNAP_TIMEOUT (seconds per nbsnap run).
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/fleet-run.sh
source "$LIB/fleet-run.sh"

need_root
need_cmd nginx docker-registry umoci skopeo curl setfattr getfattr setcap sha256sum timeout "$PYTHON"
need_nbsnap
scratch_init nbfleet

N=${NBSNAP_FLEET_N:-20}
RATE=${FLEET_RATE:-20}
BURST=${FLEET_BURST:-10}
SAMPLE=3
[[ $N =~ ^[0-9]+$ ]] && ((N >= SAMPLE)) || fail "NBSNAP_FLEET_N must be a number >= $SAMPLE (got '$N')"

step "fleet: 3 replicas, $RATE r/s (burst $BURST); $N notebooks"
fleet_run_setup "$SCRATCH/run" "$N" --rate "$RATE" --burst "$BURST" || fail "setting up the fleet failed"

UPLOADS_BEFORE=$(fleet_uploads_left)
step "$N saves at once; replica 1 killed once uploads are under way, back 3 s later"
fleet_run_saves --down 3 || fail "the replica could not be killed or restarted"
note "wall time of the $N saves: $FLEET_SAVE_WALL s"
check "every save exits 0 with status ACTIVE ($FLEET_SAVES_OK of $N)" test "$FLEET_SAVES_OK" -eq "$N"
note "the replica's death, as nginx logged it: $(fleet_log_since "$FLEET_LOG_START" | awk -F'\t' '$2 >= 500 { f++ } $8 ~ /, / { p++ } END { printf "%d answers >= 500, %d requests passed on to another replica", f, p }')"

step "the access log and the images"
fleet_run_analyze "$SCRATCH/figures.json"
F=$SCRATCH/figures.json
fig() { json_get "$F" "$1"; }
check "every image is the base layers + exactly one own layer, own layers distinct ($(fig 'j["images_bad"][:3]'))" \
    test "$(fig 'j["images"]')" -eq "$N" -a "$(fig 'len(j["images_bad"])')" -eq 0
check "the registry answered 429s during the saves ($(fig 'j["n429"]'))" test "$(fig 'j["n429"]')" -gt 0
check "fleet_count_429 sees them too" test "$(fleet_count_429 "$FLEET_LOG_START")" -gt 0
check "no base layer was uploaded ($(fig 'j["base_uploads"][:3]'))" test "$(fig 'len(j["base_uploads"])')" -eq 0
check "bytes sent in request bodies <= 1.10 x the new blobs ($(fig 'j["sent_bytes"]') / $(fig 'j["new_bytes"]') = $(fig 'j["ratio"]'))" \
    "$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["ratio"] <= 1.10 else 1)' "$F"
RETURNS=$(fig 'j["returns"]')
check "clients came back after their 429s ($RETURNS returns)" test "$RETURNS" -gt 0
if ((RETURNS >= 10)); then
    check "the returns are spread: over more than one 100 ms window, at most half in one ($(fig 'j["arrival_buckets_used"]') windows, max share $(fig 'j["arrival_buckets_max_share"]'))" \
        "$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["arrival_buckets_used"] > 1 and j["arrival_buckets_max_share"] <= 0.5 else 1)' "$F"
    check "the delays after a 429 are spread over >= 3 buckets of 100 ms ($(fig 'list(j["delay_buckets"])'))" \
        test "$(fig 'len(j["delay_buckets"])')" -ge 3
    # 10 ms for the log's rounding (msec and request_time are both in whole milliseconds)
    check "no client came back before the Retry-After: 1 was over (shortest delay $(fig 'j["delay_ms_min"]') ms)" \
        test "$(fig 'j["delay_ms_min"]')" -ge 990
fi
# skopeo's push of the base may have left a session of its own (it does not wait out a 429): the saves' count
note "upload sessions in the storage: $(fleet_uploads_left) (before the saves: $UPLOADS_BEFORE)"
# A PATCH cut by the dying replica (nginx's 502) can leave bytes on the shared storage that the session's signed
# _state does not count: distribution then answers GET, PATCH and DELETE of that session "upload resumed at wrong
# offset" (404 BLOB_UPLOAD_INVALID). nbsnap opens a new session and its DELETE of the old one is refused: only
# the registry's upload purging removes it. Such sessions are allowed here, and only those.
json_get "$F" '"\n".join(j["cut_sessions"])' >"$SCRATCH/cut-sessions"
find "$FLEET_STORAGE/docker/registry/v2/repositories/fleet" -mindepth 3 -maxdepth 3 -path '*/_uploads/*' -type d \
    -printf '%f\n' 2>/dev/null | sort >"$SCRATCH/left-sessions" || true
note "upload sessions left in fleet/*: $(wc -l <"$SCRATCH/left-sessions"), sessions cut by the dying replica: $(grep -c . "$SCRATCH/cut-sessions" || true)"
check "no upload session left by the saves, but those cut by the dying replica ($(grep -vxFf "$SCRATCH/cut-sessions" "$SCRATCH/left-sessions" | head -3 | tr '\n' ' '))" \
    test -z "$(grep -vxFf "$SCRATCH/cut-sessions" "$SCRATCH/left-sessions" || true)"
check "no upload session left elsewhere by the saves" \
    test "$(($(fleet_uploads_left) - $(find "$FLEET_STORAGE/docker/registry/v2/repositories/fleet" -path '*/_uploads/*' -type f \( -name startedat -o -name data \) 2>/dev/null | wc -l)))" -le "$UPLOADS_BEFORE"

step "a sample of $SAMPLE images round-trips to its notebook's tree"
IGNORE=(--ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user)
for ((s = 0; s < SAMPLE; s++)); do
    i=$((s * (N - 1) / (SAMPLE - 1)))
    nb=$FLEET_RUN_DIR/nb/$i
    if ! pull_image "fleet/nb$i:v1" "$SCRATCH/pull$i"; then
        soft_fail "skopeo copy + umoci unpack of fleet/nb$i:v1"
        continue
    fi
    "$PYTHON" "$LIB/treecmp.py" "${IGNORE[@]}" "$nb/merged" "$SCRATCH/pull$i/bundle/rootfs" >"$SCRATCH/treecmp$i.txt" 2>&1 || true
    grep -v '^treecmp:' "$SCRATCH/treecmp$i.txt" | head -10 >&2 || true
    check "fleet/nb$i:v1 unpacks to notebook $i's merged tree (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp$i.txt"
done

# ---------------------------------------------------------------------------------------------------------------
step "a PATCH cut in the middle by a dying replica: the upload goes on on another replica"
# One more notebook with 20 MiB of new bytes, sent in 1 MiB chunks. Replica 1 is frozen once the save's PATCHes
# are under way; once body bytes of a request wait unread in one of its sockets (the Recv-Q of a connection to
# its port; 10 s at most), it is SIGKILLed: nginx cannot pass a PATCH on once sent and answers 502. Whether the replica had written any of it decides what nbsnap meets next: the session as it was
# (GET 204 + Range, the chunk sent again) or a session refused for a wrong offset: the layer is packed again
# into a new session (its first bytes are no longer in memory).
sleep 2 # the limit's bucket refills
nb=$FLEET_RUN_DIR/nb/cut
notebook_mount "$nb" "$BASE_ROOTFS" >/dev/null
run_nbsnap "$nb/baseline" baseline --root "$nb/merged" --state-dir "$nb/state"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline of the extra notebook exited $NBSNAP_RC"
mkdir -p "$nb/merged/opt/fleet/cut"
head -c $((20 * 1024 * 1024)) /dev/urandom >"$nb/merged/opt/fleet/cut/big.bin"
MARK_CUT=$(fleet_log_mark)
R1_PORT=${FLEET_REPLICA_PORTS[1]}
# replay_max 2 MiB: byte 0 is long gone from memory when the chunk is cut; a session the registry then refuses
# is replaced by packing the layer again (NB_SAVE_LAYER_AGAIN_MAX)
( export NBSNAP_REGISTRY_REPLAY_MAX=2097152
  run_nbsnap "$nb/save" save --root "$nb/merged" --state-dir "$nb/state" --registry "$FLEET_URL" \
    --base-image "$FLEET_BASE_REF" --namespace fleet --name cut --tag v1 --chunk-size 1048576
  echo "$NBSNAP_RC" >"$nb/save.rc" ) &
SAVE_PID=$!
for ((k = 0; k < 400; k++)); do # 20 s at most: the upload is under way
    (($(fleet_log_since "$MARK_CUT" | awk -F'\t' '$3 == "PATCH"' | wc -l) >= 2)) && break
    sleep 0.05
done
kill -STOP "${FLEET_REPLICA_PIDS[1]}"
queued=0
for ((k = 0; k < 200; k++)); do # 10 s at most
    queued=$(ss -Htn state established "( sport = :$R1_PORT )" 2>/dev/null | awk '$1 > q { q = $1 } END { print q + 0 }')
    ((queued >= 65536)) && break
    sleep 0.05
done
note "bytes of a request body waiting unread on the frozen replica 1: $queued"
fleet_replica_kill 1
wait "$SAVE_PID" || true
fleet_replica_restart 1 || fail "replica 1 did not come back"
check "the save with a PATCH cut by the dying replica ends ACTIVE" test "$(cat "$nb/save.rc")" = 0
fleet_log_since "$MARK_CUT" >"$SCRATCH/cut-access.log"
if grep -q 'packing the layer again' "$nb/save.err"; then
    note "the registry refused the cut session: the layer was packed again ($(grep -m1 'packing the layer again' "$nb/save.err" | cut -c1-200))"
else
    note "the registry kept the cut session: the upload went on from its offset"
fi
check "nginx answered 502 to a PATCH of that save (cut in the middle)" \
    test "$(awk -F'\t' '$3 == "PATCH" && $2 == 502' "$SCRATCH/cut-access.log" | wc -l)" -ge 1
awk -F'\t' '$3 != "HEAD" || $2 >= 500 { print $2, $3, substr($4, 1, 60), $8 }' "$SCRATCH/cut-access.log" | grep -v ' 202 PATCH' | head -20 >&2 || true
awk -F'\t' '$3 == "PATCH" && $2 >= 500 { if (match($4, /uploads\/[0-9a-f-]+/)) print substr($4, RSTART + 8, RLENGTH - 8) }' \
    "$SCRATCH/cut-access.log" | sort -u >"$SCRATCH/cut-sessions2"
find "$FLEET_STORAGE/docker/registry/v2/repositories/fleet/cut" -mindepth 2 -maxdepth 2 -path '*/_uploads/*' -type d \
    -printf '%f\n' 2>/dev/null | sort >"$SCRATCH/left-sessions2" || true
note "upload sessions left in fleet/cut: $(wc -l <"$SCRATCH/left-sessions2"), cut by the dying replica: $(wc -l <"$SCRATCH/cut-sessions2")"
check "no upload session left by that save, but the one the dying replica cut" \
    test -z "$(grep -vxFf "$SCRATCH/cut-sessions2" "$SCRATCH/left-sessions2" || true)"
if pull_image fleet/cut:v1 "$SCRATCH/pullcut"; then
    "$PYTHON" "$LIB/treecmp.py" "${IGNORE[@]}" "$nb/merged" "$SCRATCH/pullcut/bundle/rootfs" >"$SCRATCH/treecmpcut.txt" 2>&1 || true
    check "fleet/cut:v1 unpacks to its notebook's merged tree (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmpcut.txt"
else
    soft_fail "skopeo copy + umoci unpack of fleet/cut:v1"
fi

finish_checks
