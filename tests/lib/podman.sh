# shellcheck shell=bash
# Run images from the test registry under a real runtime: Debian's podman with runc, as root, isolated from the
# host's podman: its own storage (--root), run root, libpod tmp dir, network config dir and config files, all
# under DIR (removed at exit with $SCRATCH), no network.
#
#   podman_need                  exit 77 (skip) when podman or runc is not installed (see scripts/install-deps.sh)
#   podman_init DIR REF          set up the isolated podman in DIR and check that it runs a container of REF
#                                (`true` in it); fails the test, with podman's reason, when it cannot
#   podman_pull REF              pull REF over plain http (--tls-verify=false); REF is REPO:TAG on $REGISTRY_HOST
#                                or a full 127.0.0.1:PORT/REPO:TAG
#   podman_image_run REF USER CMD...
#                                run CMD as USER (uid:gid) in a new container of REF, removed afterwards; REF is
#                                pulled first when it is not in the storage yet (podman_pull it again after pushing
#                                the tag again). CMD is the container's command, given to the image's entrypoint as
#                                `podman run` does. CMD's stdout and stderr go to this stdout and stderr, and its
#                                exit status is returned; 124 is a timeout, 125-127 podman's or the runtime's failures
#                                (the reason is on stderr).
#                                PODMAN_RUN_OPTS (array) adds run options, e.g. (--env HOME=/home/ma-user).
#   podman_cmd ARGS...           podman ARGS with the isolation flags (for anything else)
#
# Flags and why: --runtime runc (the runtime install-deps installs; crun, podman's other choice, has been seen to
# fail on hosts with hybrid cgroup v1/v2), --cgroup-manager cgroupfs (no systemd needed), --events-backend file
# (no journald), --network none, and explicit --ulimit nofile and nproc: podman's defaults (nofile 1048576, nproc
# 32768) can exceed the hard limits here, and runc then fails with "error setting rlimits for ready process:
# operation not permitted" (seen: podman itself ran with an nproc hard limit of 32768, below the shell's 96362, so
# even the shell's hard limit failed). PODMAN_NOFILE and PODMAN_NPROC default to the hard limits (ulimit -Hn,
# ulimit -Hu), at most 4096. PODMAN_RUN_TIMEOUT (seconds, default 120) bounds each pull and run.

# shellcheck source=tests/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PODMAN_DIR=
PODMAN_RUN_OPTS=()
_PODMAN=()
_PODMAN_RUN_LIMITS=()

podman_need() {
    need_cmd podman runc
}

# _podman_limit HARD: the smaller of HARD ("unlimited" or a number) and 4096
_podman_limit() {
    if [[ $1 == unlimited || $1 -gt 4096 ]]; then echo 4096; else echo "$1"; fi
}

podman_init() {
    local dir=$1 ref=$2 nofile nproc
    mkdir -p "$dir"
    PODMAN_DIR=$(cd "$dir" && pwd)
    mkdir -p "$PODMAN_DIR"/{root,runroot,tmp,networks}
    # The host's containers.conf, storage.conf, registries.conf and policy.json are not read.
    printf '[engine]\nimage_copy_tmp_dir = "%s/tmp"\n' "$PODMAN_DIR" >"$PODMAN_DIR/containers.conf" # not /var/tmp
    cat >"$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/root"
runroot = "$PODMAN_DIR/runroot"
EOF
    printf 'unqualified-search-registries = []\nshort-name-mode = "enforcing"\n' >"$PODMAN_DIR/registries.conf"
    printf '{ "default": [ { "type": "insecureAcceptAnything" } ] }\n' >"$PODMAN_DIR/policy.json"
    nofile=${PODMAN_NOFILE:-$(_podman_limit "$(ulimit -Hn)")}
    nproc=${PODMAN_NPROC:-$(_podman_limit "$(ulimit -Hu)")}
    # env, not exported variables: the host's podman (and other tests) must not see them
    _PODMAN=(env CONTAINERS_CONF="$PODMAN_DIR/containers.conf" CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
        CONTAINERS_REGISTRIES_CONF="$PODMAN_DIR/registries.conf"
        podman --root "$PODMAN_DIR/root" --runroot "$PODMAN_DIR/runroot" --tmpdir "$PODMAN_DIR/tmp"
        --network-config-dir "$PODMAN_DIR/networks" --storage-driver overlay
        --runtime runc --cgroup-manager cgroupfs --events-backend file)
    _PODMAN_RUN_LIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
    at_exit podman_cleanup
    note "podman $(podman_cmd version --format '{{.Client.Version}}' 2>/dev/null), runc, storage in $PODMAN_DIR," \
        "ulimits nofile=$nofile nproc=$nproc"
    podman_pull "$ref" || fail "podman cannot pull $ref from the test registry (see above)"
    local out rc=0
    out=$(podman_image_run "$ref" 0:0 true 2>&1) || rc=$?
    [[ $rc -eq 0 ]] || fail "podman cannot run a container on this machine (exit $rc): $out"
}

podman_cmd() {
    "${_PODMAN[@]}" "$@"
}

_podman_ref() {
    case $1 in
    127.0.0.1:* | localhost:*) echo "$1" ;;
    *) echo "${REGISTRY_HOST:?registry not started}/$1" ;;
    esac
}

podman_pull() {
    local ref
    ref=$(_podman_ref "$1")
    [[ -n $PODMAN_DIR ]] || { note "podman_pull: podman_init was not called"; return 1; }
    timeout "${PODMAN_RUN_TIMEOUT:-120}" "${_PODMAN[@]}" pull --quiet --tls-verify=false \
        --signature-policy "$PODMAN_DIR/policy.json" "$ref" >/dev/null ||
        { note "podman_pull: podman pull $ref failed"; return 1; }
}

podman_image_run() {
    local ref=$1 user=$2 rc=0
    shift 2
    ref=$(_podman_ref "$ref")
    if ! podman_cmd image exists "$ref"; then
        podman_pull "$ref" || return 125
    fi
    timeout "${PODMAN_RUN_TIMEOUT:-120}" "${_PODMAN[@]}" run --rm --pull never --network none \
        "${_PODMAN_RUN_LIMITS[@]}" --user "$user" "${PODMAN_RUN_OPTS[@]}" "$ref" "$@" || rc=$?
    if [[ $rc -ge 124 && $rc -le 127 ]]; then
        note "podman_image_run: podman run $ref $* exited $rc (124: timeout; 125-127: podman, the runtime or the command)"
    fi
    return $rc
}

# podman_cleanup: remove every container and image of the isolated storage (unmounting its layers), so that
# the scratch dir can be removed.
podman_cleanup() {
    [[ -n $PODMAN_DIR && -d $PODMAN_DIR/root ]] || return 0
    podman_cmd rm --all --force >/dev/null 2>&1 || true
    podman_cmd system reset --force >/dev/null 2>&1 ||
        note "podman_cleanup: podman system reset failed (storage in $PODMAN_DIR)"
    local m
    while IFS= read -r m; do
        [[ -n $m ]] || continue
        umount -l "$m" 2>/dev/null || note "podman_cleanup: umount -l $m failed"
    done < <(_mounts_below "$PODMAN_DIR" | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-)
    return 0
}
