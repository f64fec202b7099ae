# shellcheck shell=bash
# Common helpers for nbsnap integration tests and the demo.
# Source this file first; it installs an EXIT trap that runs the registered cleanups (see at_exit) in reverse
# order of registration, even when the script fails under `set -e`.
#
#   need_root / need_cmd TOOL...      exit 77 (skip) when not root / a tool is missing
#   scratch_init [NAME]               make $SCRATCH under ${TMPDIR:-/tmp}, removed at exit (NBSNAP_TEST_KEEP=1 keeps it)
#   at_exit 'shell code'              register a cleanup
#   fail "msg" / note "msg" / step "msg"
#   pull_image REF OUTDIR             skopeo copy docker://REF -> OUTDIR/oci:img, umoci unpack -> OUTDIR/bundle
#   check_blob_gzip REPO DIGEST...    GET each blob from $REGISTRY_URL and run gzip -t on it

if [[ -n ${_NBSNAP_COMMON_SH:-} ]]; then return 0; fi
_NBSNAP_COMMON_SH=1

NBSNAP_TESTLIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export NBSNAP_TESTLIB_DIR
: "${PYTHON:=python3}"
if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3; fi
export PYTHON

_NBSNAP_CLEANUPS=()
_NBSNAP_FAILED=0

at_exit() {
    _NBSNAP_CLEANUPS+=("$*")
}

_nbsnap_run_cleanups() {
    local rc=$? i
    set +e
    trap - EXIT
    for ((i = ${#_NBSNAP_CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${_NBSNAP_CLEANUPS[i]}"
    done
    _NBSNAP_CLEANUPS=()
    exit "$rc"
}
trap _nbsnap_run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

note() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
step() { printf '\n==== %s\n' "$*" >&2; }

# fail "message": print it and exit 1 (the EXIT trap cleans up).
fail() {
    printf '%s: FAIL: %s\n' "${0##*/}" "$*" >&2
    _NBSNAP_FAILED=1
    exit 1
}

# check "description" CMD...: run CMD; on failure record a failure and continue (soft assertion).
# Call finish_checks at the end to exit 1 if any check failed.
_NBSNAP_SOFT_FAILS=()
check() {
    local what=$1
    shift
    if "$@"; then
        printf 'ok   - %s\n' "$what" >&2
    else
        printf 'FAIL - %s\n' "$what" >&2
        _NBSNAP_SOFT_FAILS+=("$what")
    fi
}
soft_fail() {
    printf 'FAIL - %s\n' "$*" >&2
    _NBSNAP_SOFT_FAILS+=("$*")
}
finish_checks() {
    if ((${#_NBSNAP_SOFT_FAILS[@]})); then
        printf '\n%s: %d check(s) failed:\n' "${0##*/}" "${#_NBSNAP_SOFT_FAILS[@]}" >&2
        printf '  - %s\n' "${_NBSNAP_SOFT_FAILS[@]}" >&2
        exit 1
    fi
    printf '\n%s: all checks passed\n' "${0##*/}" >&2
}

need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        note "SKIP: must run as root (mount, mknod, chown, umoci unpack)"
        exit 77
    fi
}

need_cmd() {
    local c missing=()
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if ((${#missing[@]})); then
        note "SKIP: missing tool(s): ${missing[*]} (see scripts/install-deps.sh)"
        exit 77
    fi
}

# need_nbsnap: $NBSNAP must be an executable whose `save --help` works; else skip (77).
need_nbsnap() {
    if [[ -z ${NBSNAP:-} ]]; then
        if [[ -n ${NBSNAP_BINARY_DIR:-} && -x ${NBSNAP_BINARY_DIR}/agent/nbsnap ]]; then
            NBSNAP=${NBSNAP_BINARY_DIR}/agent/nbsnap
        else
            note "SKIP: NBSNAP is not set (path of the nbsnap binary)"
            exit 77
        fi
    fi
    if [[ ! -x $NBSNAP ]]; then
        note "SKIP: NBSNAP=$NBSNAP is not executable"
        exit 77
    fi
    if ! "$NBSNAP" save --help >/dev/null 2>&1; then
        note "SKIP: '$NBSNAP save --help' does not work yet"
        exit 77
    fi
    export NBSNAP
}

# Refuse to delete a directory that still has something mounted below it.
_mounts_below() {
    local dir
    dir=$(realpath -m "$1")
    awk -v d="$dir" '{ p = $5; gsub(/\\040/, " ", p); if (p == d || index(p, d "/") == 1) print p }' /proc/self/mountinfo
}

safe_rm_tree() {
    local dir=$1 m
    [[ -e $dir ]] || return 0
    m=$(_mounts_below "$dir")
    if [[ -n $m ]]; then
        note "not removing $dir: still mounted below it: $m"
        return 1
    fi
    rm -rf --one-file-system -- "$dir"
}

scratch_init() {
    local name=${1:-nbsnap-it}
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/${name}.XXXXXX")
    export SCRATCH
    at_exit _scratch_cleanup
}

_scratch_cleanup() {
    if [[ ${NBSNAP_TEST_KEEP:-0} == 1 ]]; then
        note "keeping scratch dir $SCRATCH (NBSNAP_TEST_KEEP=1)"
        return 0
    fi
    safe_rm_tree "$SCRATCH"
}

# pull_image REF OUTDIR: REF is registry-relative (REPO:TAG) or a full host/repo:tag.
pull_image() {
    local ref=$1 out=$2
    case $ref in
    127.0.0.1:* | localhost:*) ;;
    *) ref="${REGISTRY_HOST:?registry not started}/$ref" ;;
    esac
    mkdir -p "$out"
    rm -rf "${out:?}/oci" "${out:?}/bundle"
    skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$out/oci:img" ||
        { note "pull_image: skopeo copy docker://$ref failed"; return 1; }
    umoci unpack --image "$out/oci:img" "$out/bundle" >"$out/umoci-unpack.log" 2>&1 ||
        { note "pull_image: umoci unpack of $ref failed:"; cat "$out/umoci-unpack.log" >&2; return 1; }
}

# fetch_blob REPO DIGEST OUTFILE
fetch_blob() {
    local repo=$1 digest=$2 out=$3
    curl -sSf -L -o "$out" "${REGISTRY_URL:?registry not started}/v2/$repo/blobs/$digest" ||
        { note "fetch_blob: GET $repo blob $digest failed"; return 1; }
    local got
    got="sha256:$(sha256sum <"$out" | cut -d' ' -f1)"
    [[ $got == "$digest" ]] || { note "fetch_blob: $repo blob $digest has digest $got"; return 1; }
}

# check_blob_gzip REPO DIGEST...: each blob must be a clean gzip stream (no trailing garbage: gzip -t warns
# with exit 2 and Go's gzip reader fails on it).
check_blob_gzip() {
    local repo=$1 d rc=0 tmp
    shift
    tmp=$(mktemp "${TMPDIR:-/tmp}/nbsnap-blob.XXXXXX")
    for d in "$@"; do
        if ! fetch_blob "$repo" "$d" "$tmp"; then rc=1; continue; fi
        if ! gzip -t <"$tmp" 2>"$tmp.err"; then
            note "check_blob_gzip: blob $d of $repo: gzip -t failed: $(cat "$tmp.err")"
            rc=1
        elif [[ -s $tmp.err ]]; then
            note "check_blob_gzip: blob $d of $repo: gzip -t warned: $(cat "$tmp.err")"
            rc=1
        fi
    done
    rm -f "$tmp" "$tmp.err"
    return $rc
}

# manifest_status REPO REF: print the HTTP status of HEAD /v2/REPO/manifests/REF (accepting OCI and Docker).
manifest_status() {
    curl -s -o /dev/null -w '%{http_code}' -I \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
        "${REGISTRY_URL:?registry not started}/v2/$1/manifests/$2"
}

# json_get FILE EXPR: print a value from a JSON file (python expression on `j`).
json_get() {
    "$PYTHON" -c 'import json,sys; j=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print(v if isinstance(v,str) else json.dumps(v))' "$1" "$2"
}

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# run_nbsnap OUTPREFIX ARGS...: run "$NBSNAP" ARGS under a timeout (NBSNAP_TIMEOUT, default 900 s);
# stdout -> OUTPREFIX.out, stderr -> OUTPREFIX.err; the exit status goes to NBSNAP_RC (never fails itself).
run_nbsnap() {
    local out=$1
    shift
    NBSNAP_RC=0
    note "running: nbsnap $*"
    timeout "${NBSNAP_TIMEOUT:-900}" "${NBSNAP:?}" "$@" >"$out.out" 2>"$out.err" || NBSNAP_RC=$?
    if [[ $NBSNAP_RC -ne 0 ]]; then
        note "nbsnap $1 exited $NBSNAP_RC; stderr (last 20 lines of $out.err):"
        tail -n 20 "$out.err" >&2
        note "stdout: $(head -c 2000 "$out.out")"
    fi
    return 0
}

# layer_list BLOB OUT: write the layerinfo.py listing of BLOB to OUT (see layerinfo.py for the format).
layer_list() {
    "$PYTHON" "$NBSNAP_TESTLIB_DIR/layerinfo.py" list "$1" >"$2"
}

# layer_entries LISTING NAME: print the listing lines whose name field is exactly NAME (escaped like layerinfo.py).
layer_entries() {
    N=$2 awk -F'\t' '$2 == ENVIRON["N"]' "$1"
}

# layer_kind LISTING NAME: print the kind letter(s) of NAME's entries (empty if absent).
layer_kind() {
    N=$2 awk -F'\t' '$2 == ENVIRON["N"] { printf "%s", $1 }' "$1"
}

# layer_below LISTING PREFIX: print the entries at PREFIX or below it.
layer_below() {
    N=$2 awk -F'\t' '$2 == ENVIRON["N"] || index($2, ENVIRON["N"] "/") == 1' "$1"
}
