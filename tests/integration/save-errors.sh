#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# nbsnap save with bad input: each case must exit non-zero, print a CREATE_FAILED JSON object with a
# status_message on stdout, leave the root (and the state dir) unchanged and push no tag.
# A valid save at the end makes sure the cases did not pass only because save never works.
#
# Run: ctest -R integration/save-errors   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-errors.sh)
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$LIB/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"

need_root
need_cmd umoci skopeo curl setfattr setcap mkfifo mknod timeout "$PYTHON"
need_nbsnap
scratch_init nbsnap-err

NS=nbsnap-err
step "registry, base image, root, baseline"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
ROOT=$SCRATCH/root
STATE=$SCRATCH/state
cp -a "$BASE_ROOTFS" "$ROOT"
run_nbsnap "$SCRATCH/baseline" baseline --root "$ROOT" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline --root $ROOT --state-dir $STATE exited $NBSNAP_RC"
echo 'a change to save' >"$ROOT/opt/t/changed.txt"
cp -a "$ROOT" "$SCRATCH/root-ref"

state_sum() {
    (cd "$STATE" && find . -type f -print0 | sort -z | xargs -0r sha256sum)
}
state_sum >"$SCRATCH/state.sum"

# expect_failure CASE REPO TAG ARGS...: run save with ARGS (the common arguments are not added), then check.
expect_failure() {
    local case=$1 repo=$2 tag=$3 out
    shift 3
    out=$SCRATCH/case-${case// /-}
    step "bad input: $case"
    run_nbsnap "$out" save "$@"
    if [[ $NBSNAP_RC -eq 0 ]]; then
        soft_fail "$case: nbsnap save exited 0 (expected a failure); stdout: $(head -c 300 "$out.out")"
    elif [[ $NBSNAP_RC -eq 124 ]]; then
        soft_fail "$case: nbsnap save did not finish within ${NBSNAP_TIMEOUT:-900} s"
    else
        note "$case: exit $NBSNAP_RC; stderr: $(head -c 400 "$out.err" | tr '\n' ' ')"
    fi
    check "$case: stdout is a CREATE_FAILED JSON with a status_message" "$PYTHON" - "$out.out" <<'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as ex:
    print("  stdout is not one JSON object (%s): %r" % (ex, open(sys.argv[1], errors="replace").read()[:300]))
    sys.exit(1)
ok = j.get("status") == "CREATE_FAILED" and isinstance(j.get("status_message"), str) and j["status_message"].strip()
if not ok:
    print("  status %r, status_message %r" % (j.get("status"), j.get("status_message")))
else:
    print("  status_message: %s" % j["status_message"], file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
    local code
    code=$(manifest_status "$repo" "$tag")
    # 404 normally; a name the registry itself rejects (e.g. 513 chars) may give another error status
    check "$case: no manifest ${repo:0:60}:${tag:0:60} in the registry (HEAD -> $code, expected 404 or an error)" \
        eval '[[ $code != 2* ]]'
    "$PYTHON" "$LIB/treecmp.py" --quiet "$SCRATCH/root-ref" "$ROOT" 2>"$out.treecmp" >/dev/null || true
    check "$case: the root is unchanged" grep -q ' 0 difference(s)' "$out.treecmp"
    check "$case: the state dir is unchanged" eval 'state_sum | cmp -s - "$SCRATCH/state.sum"'
}

# args NAME TAG [ROOT [STATE [REGISTRY [BASE]]]]: set ARGS to the save arguments for $NS/NAME:TAG
args() {
    ARGS=(--root "${3:-$ROOT}" --state-dir "${4:-$STATE}" --registry "${5:-$REGISTRY_URL}"
        --base-image "${6:-nbsnap-test/base:v1}" --namespace "$NS" --name "$1" --tag "$2" --description "errors test")
}

L513=$(printf 'n%.0s' $(seq 1 513))
T65=$(printf 't%.0s' $(seq 1 65))
D513=$(printf 'd%.0s' $(seq 1 513))

args BadName v1
expect_failure "uppercase name" "$NS/BadName" v1 "${ARGS[@]}"
args "$L513" v1
expect_failure "513-char name" "$NS/$L513" v1 "${ARGS[@]}"
args good "$T65"
expect_failure "65-char tag" "$NS/good" "$T65" "${ARGS[@]}"
args good a/b
expect_failure "tag with slash" "$NS/good" a/b "${ARGS[@]}"
args good v1
ARGS[-1]=$D513 # the --description value
expect_failure "513-char description" "$NS/good" v1 "${ARGS[@]}"
args good v2 "$ROOT" "$STATE" "$REGISTRY_URL" nbsnap-test/does-not-exist:v1
expect_failure "unknown base image" "$NS/good" v2 "${ARGS[@]}"
CLOSED=$(free_port)
args good v3 "$ROOT" "$STATE" "http://127.0.0.1:$CLOSED"
NBSNAP_TIMEOUT=${NBSNAP_TIMEOUT:-300} expect_failure "registry unreachable (closed port $CLOSED)" "$NS/good" v3 "${ARGS[@]}"
echo 'not a directory' >"$SCRATCH/afile"
args good v4 "$SCRATCH/afile"
expect_failure "root is a regular file" "$NS/good" v4 "${ARGS[@]}"
args good v5 "$SCRATCH/no-such-root"
expect_failure "root does not exist" "$NS/good" v5 "${ARGS[@]}"
mkdir -p "$SCRATCH/empty-state"
args good v6 "$ROOT" "$SCRATCH/empty-state"
expect_failure "missing baseline (empty state dir)" "$NS/good" v6 "${ARGS[@]}"

# a user file named .wh.* would delete files when the layer is extracted: the save must refuse it
echo evil >"$ROOT/opt/t/.wh.evil"
cp -a "$ROOT/opt/t/.wh.evil" "$SCRATCH/root-ref/opt/t/.wh.evil"
args good v7
expect_failure "user file named .wh.evil" "$NS/good" v7 "${ARGS[@]}"
check ".wh.evil: the message names the file" eval 'grep -q "\.wh\.evil" "$SCRATCH/case-user-file-named-.wh.evil.out" "$SCRATCH/case-user-file-named-.wh.evil.err"'
rm -f "$ROOT/opt/t/.wh.evil" "$SCRATCH/root-ref/opt/t/.wh.evil"

step "nothing was tagged"
TAGS=$(curl -s "$REGISTRY_URL/v2/$NS/good/tags/list" || true)
check "no tags in $NS/good (tags/list: ${TAGS:0:200})" eval '! grep -q "\"tags\":\[\"" <<<"$TAGS"'

step "positive control: a valid save works"
args good v-ok
run_nbsnap "$SCRATCH/valid" save "${ARGS[@]}"
check "valid save exits 0" test "$NBSNAP_RC" = 0
check "valid save: JSON status ACTIVE" eval '[[ $(json_get "$SCRATCH/valid.out" "j.get(\"status\")" 2>/dev/null) == ACTIVE ]]'
check "valid save: manifest $NS/good:v-ok exists" test "$(manifest_status "$NS/good" v-ok)" = 200

finish_checks
