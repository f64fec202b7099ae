#!/bin/bash
# shellcheck disable=SC2016,SC2034 # check "..." eval '...' assertions expand when they run (MARK is read there)
# nbsnap save --max-image-size (issue #11, part 4): a change bigger than the limit fails within seconds of the
# walk and before any upload (the registry log shows no upload session, no tag), with a message that gives
# both sizes and the five largest directories of the change with their bytes; a limit above the change saves;
# bad sizes exit 2 with the reason before anything is done.
#
# Run: ctest -R integration/save-size-guard   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-size-guard.sh)
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
need_cmd umoci skopeo curl setfattr setcap timeout "$PYTHON"
need_nbsnap
scratch_init nbsg

NS=nbsnap-sg
MiB=$((1024 * 1024))

step "registry, base image, notebook, baseline"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"

step "a change of 21 MiB in six directories"
# /opt/sg/dN holds N MiB; d6's last MiB lies deeper (/opt/sg/d6/sub/deep.bin) and counts for d6; d1's MiB is a
# hard-linked pair, counted once (twice, d1 would tie with d2 and come before it); a deletion counts nothing.
for n in 2 3 4 5 6; do
    mkdir -p "$M/opt/sg/d$n"
    head -c $(((n == 6 ? 5 : n) * MiB)) /dev/urandom >"$M/opt/sg/d$n/data.bin"
done
mkdir -p "$M/opt/sg/d1" "$M/opt/sg/d6/sub"
head -c $MiB /dev/urandom >"$M/opt/sg/d6/sub/deep.bin"
head -c $MiB /dev/urandom >"$M/opt/sg/d1/linked"
ln "$M/opt/sg/d1/linked" "$M/opt/sg/d1/linked-too"
rm "$M/opt/t/delete-file.txt"
TOTAL=$((21 * MiB))

save_args() { # save_args TAG: ARGS for a save to $NS/guard:TAG
    ARGS=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image nbsnap-test/base:v1
        --namespace "$NS" --name guard --tag "$1")
}

# uploads_since MARK: the number of upload requests (POST .../blobs/uploads/, mounts included, PATCH, PUT)
# logged since MARK. grep -c reads the whole log: grep -q would stop early and, under pipefail, the writer's
# SIGPIPE would make the pipeline fail whatever it found.
uploads_since() {
    registry_log_since "$1" | grep -Ec '"(POST|PUT|PATCH) /v2/[^ ]*/blobs/uploads/' || true
}

step "--max-image-size below the change: fails before any upload"
save_args too-big
MARK=$(registry_log_mark)
START=$(date +%s.%N)
run_nbsnap "$SCRATCH/guard" save "${ARGS[@]}" --max-image-size 8M
ELAPSED=$("$PYTHON" -c 'import sys, time; print("%.1f" % (time.time() - float(sys.argv[1])))' "$START")
check "the save fails (exit 1, got $NBSNAP_RC)" test "$NBSNAP_RC" = 1
check "it fails within seconds ($ELAPSED s)" "$PYTHON" -c 'import sys; sys.exit(0 if float(sys.argv[1]) < 10 else 1)' "$ELAPSED"
check "status CREATE_FAILED" test "$(json_get "$SCRATCH/guard.out" 'j["status"]')" = CREATE_FAILED
MSG=$(json_get "$SCRATCH/guard.out" 'j["status_message"]')
note "status_message: $MSG"
check "the message gives the change's size ($TOTAL bytes)" grep -q "($TOTAL bytes)" <<<"$MSG"
check "the message gives the limit ($((8 * MiB)) bytes)" grep -q "8.0 MiB ($((8 * MiB)) bytes" <<<"$MSG"
# the five largest directories, largest first, each with its bytes; d1 is the sixth
check_top5() {
    "$PYTHON" - "$1" "$MiB" <<'PY'
import re, sys
msg, mib = sys.argv[1], int(sys.argv[2])
want = [("/opt/sg/d%d" % n, n * mib) for n in (6, 5, 4, 3, 2)]
pos = []
for path, b in want:
    m = re.search(re.escape(path) + r" [0-9.]+ MiB \(%d bytes\)" % b, msg)
    if not m:
        print("  missing: %s with %d bytes" % (path, b))
        sys.exit(1)
    pos.append(m.start())
if "/opt/sg/d1 " in msg:
    print("  /opt/sg/d1 (the sixth) is reported")
    sys.exit(1)
if pos != sorted(pos):
    print("  not largest first: %r" % pos)
    sys.exit(1)
PY
}
check "the message names the five largest directories with their bytes, largest first" check_top5 "$MSG"
check "the message says what to do" grep -q 'exclude' <<<"$MSG"
check "stderr says why" grep -q 'image size limit' "$SCRATCH/guard.err"
check "no upload session in the registry log" eval '[[ $(uploads_since "$MARK") == 0 ]]'
check "no manifest $NS/guard:too-big" eval '[[ $(manifest_status "$NS/guard" too-big) == 404 ]]'

step "bad --max-image-size values: exit 2 before anything is done"
for bad in garbage -1 -5M 5Q 1.5G '' 99999999999T; do
    save_args bad
    MARK=$(registry_log_mark)
    run_nbsnap "$SCRATCH/bad" save "${ARGS[@]}" --max-image-size "$bad"
    check "--max-image-size '$bad': exit 2 (got $NBSNAP_RC)" test "$NBSNAP_RC" = 2
    check "--max-image-size '$bad': the reason on stderr" grep -q -- "--max-image-size takes a size" "$SCRATCH/bad.err"
    check "--max-image-size '$bad': nothing on stdout" test ! -s "$SCRATCH/bad.out"
    check "--max-image-size '$bad': no request to the registry" eval '[[ -z $(registry_log_since "$MARK" | grep -E "\"(GET|HEAD|POST|PUT|PATCH) /v2/") ]]'
done

step "positive control: a limit above the change saves"
save_args fits
MARK=$(registry_log_mark)
run_nbsnap "$SCRATCH/fits" save "${ARGS[@]}" --max-image-size 22M
check "the save succeeds (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 0
check "status ACTIVE" test "$(json_get "$SCRATCH/fits.out" 'j["status"]')" = ACTIVE
check "this save did open upload sessions (the log check above can see them)" eval '[[ $(uploads_since "$MARK") -gt 0 ]]'
check "manifest $NS/guard:fits exists" test "$(manifest_status "$NS/guard" fits)" = 200

step "an unchanged notebook: one empty layer, found by the counting pass alone"
run_nbsnap "$SCRATCH/rebase" baseline --root "$M" --state-dir "$STATE" --force
check "a new baseline of the changed tree (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 0
save_args same
run_nbsnap "$SCRATCH/same" save "${ARGS[@]}" --max-image-size 1K
check "the save succeeds under a 1K limit, nothing changed (exit $NBSNAP_RC)" test "$NBSNAP_RC" = 0
check "stderr says no entry changed" grep -q 'changes: 0 entries' "$SCRATCH/same.err"
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/$NS/guard/manifests/same" >"$SCRATCH/same.manifest" || fail "GET manifest $NS/guard:same"
LAYER=$(json_get "$SCRATCH/same.manifest" 'j["layers"][-1]["digest"]')
fetch_blob "$NS/guard" "$LAYER" "$SCRATCH/same.tgz" || fail "cannot fetch $LAYER"
check "the layer is a clean gzip stream" gzip -t "$SCRATCH/same.tgz"
check "the layer is a tar with no entry" eval '[[ -z $(gzip -dc "$SCRATCH/same.tgz" | tar -t) ]]'

finish_checks
