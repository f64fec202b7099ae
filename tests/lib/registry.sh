# shellcheck shell=bash
# A private CNCF distribution registry (Debian's docker-registry, 2.8) on 127.0.0.1 only.
#
#   registry_start DIR   config in DIR/config.yml, storage in DIR/data, log in DIR/registry.log;
#                        exports REGISTRY_PORT, REGISTRY_HOST (127.0.0.1:PORT), REGISTRY_URL (http://127.0.0.1:PORT),
#                        REGISTRY_DIR, REGISTRY_PID; registers registry_stop as an exit cleanup.
#   registry_stop        stops the registry started by registry_start (by its pid).
#   registry_log_mark    prints the current line count of the registry log (for registry_log_since).
#   registry_log_since N prints the log lines after line N.
#   registry_write_config, registry_spawn, registry_wait_up: the parts of registry_start, also used by
#                        fleet-registry.sh (replicas behind nginx).

# shellcheck source=tests/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${DOCKER_REGISTRY_BIN:=/usr/bin/docker-registry}"

registry_start() {
    local dir=$1 port attempt
    [[ -x $DOCKER_REGISTRY_BIN ]] || { note "registry_start: $DOCKER_REGISTRY_BIN not found (apt-get install docker-registry)"; return 1; }
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    for attempt in 1 2 3 4 5; do
        port=$(free_port) || { note "registry_start: cannot pick a free port"; return 1; }
        registry_write_config "$dir/config.yml" "127.0.0.1:$port" "$dir/data"
        registry_spawn "$dir/config.yml" "$dir/registry.log"
        REGISTRY_PID=$REGISTRY_SPAWNED_PID
        if registry_wait_up "http://127.0.0.1:$port" "$REGISTRY_PID"; then
            export REGISTRY_PORT=$port REGISTRY_HOST="127.0.0.1:$port" REGISTRY_URL="http://127.0.0.1:$port"
            export REGISTRY_DIR=$dir REGISTRY_PID
            at_exit registry_stop
            note "registry up at $REGISTRY_URL (pid $REGISTRY_PID, data $dir/data, log $dir/registry.log)"
            return 0
        fi
        note "registry_start: attempt $attempt on port $port failed; log tail:"
        tail -n 5 "$dir/registry.log" >&2
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
        REGISTRY_PID=
    done
    note "registry_start: registry did not come up (see $dir/registry.log)"
    return 1
}

# registry_write_config FILE ADDR ROOTDIR [SECRET]: the config of one registry listening on ADDR (host:port) with
# its filesystem storage in ROOTDIR, deletes enabled, upload purging off (tests count what is left in _uploads).
# SECRET sets http.secret: replicas that share a storage need the same one, since it signs the _state of an
# upload session that another replica may continue (without it each process picks a random one).
registry_write_config() {
    local file=$1 addr=$2 root=$3 secret=${4:-}
    cat >"$file" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $root
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $addr
${secret:+  secret: $secret
}  headers:
    X-Content-Type-Options: [nosniff]
EOF
}

# registry_spawn CONFIG LOG: start `docker-registry serve CONFIG` in the background, output appended to LOG;
# sets REGISTRY_SPAWNED_PID (the registry itself: env execs it).
registry_spawn() {
    local config=$1 log=$2 v
    # The registry overrides its config from REGISTRY_* environment variables (REGISTRY_HTTP_ADDR would
    # change the listen address): start it with none of them.
    local -a unset_env=()
    for v in $(compgen -e); do
        [[ $v == REGISTRY_* ]] && unset_env+=(-u "$v")
    done
    env "${unset_env[@]}" "$DOCKER_REGISTRY_BIN" serve "$config" >>"$log" 2>&1 &
    REGISTRY_SPAWNED_PID=$!
}

# registry_wait_up URL PID: 0 once GET URL/v2/ succeeds; 1 if PID exits first or after 10 s.
registry_wait_up() {
    local url=$1 pid=$2 i
    for ((i = 0; i < 100; i++)); do
        curl -sf -o /dev/null "$url/v2/" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

registry_stop() {
    [[ -n ${REGISTRY_PID:-} ]] || return 0
    if kill -0 "$REGISTRY_PID" 2>/dev/null; then
        kill "$REGISTRY_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            kill -0 "$REGISTRY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
    fi
    REGISTRY_PID=
    return 0
}

registry_log_mark() {
    wc -l <"${REGISTRY_DIR:?}/registry.log"
}

registry_log_since() {
    tail -n "+$(($1 + 1))" "${REGISTRY_DIR:?}/registry.log"
}

# registry_blob_writes_since N: print the digests of blobs committed since log line N (PUT ...?digest= and
# monolithic POST ...?digest=), one per line.
registry_blob_writes_since() {
    registry_log_since "$1" |
        grep -E '"(PUT|POST) /v2/[^ ]*/blobs/uploads/[^ ]*digest=' |
        sed -E 's/%3[Aa]/:/g; s/.*[?&]digest=(sha256:[0-9a-f]{64}).*/\1/' | sort -u
}
