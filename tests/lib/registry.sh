# shellcheck shell=bash
# A private CNCF distribution registry (Debian's docker-registry, 2.8) on 127.0.0.1 only.
#
#   registry_start DIR   config in DIR/config.yml, storage in DIR/data, log in DIR/registry.log;
#                        exports REGISTRY_PORT, REGISTRY_HOST (127.0.0.1:PORT), REGISTRY_URL (http://127.0.0.1:PORT),
#                        REGISTRY_DIR, REGISTRY_PID; registers registry_stop as an exit cleanup.
#   registry_stop        stops the registry started by registry_start (by its pid).
#   registry_log_mark    prints the current line count of the registry log (for registry_log_since).
#   registry_log_since N prints the log lines after line N.

# shellcheck source=tests/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${DOCKER_REGISTRY_BIN:=/usr/bin/docker-registry}"

registry_start() {
    local dir=$1 port attempt i
    [[ -x $DOCKER_REGISTRY_BIN ]] || { note "registry_start: $DOCKER_REGISTRY_BIN not found (apt-get install docker-registry)"; return 1; }
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    for attempt in 1 2 3 4 5; do
        port=$(free_port) || { note "registry_start: cannot pick a free port"; return 1; }
        cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  headers:
    X-Content-Type-Options: [nosniff]
EOF
        # The registry overrides its config from REGISTRY_* environment variables (REGISTRY_HTTP_ADDR would
        # change the listen address): start it with none of them.
        local -a unset_env=()
        local v
        for v in $(compgen -e); do
            [[ $v == REGISTRY_* ]] && unset_env+=(-u "$v")
        done
        env "${unset_env[@]}" "$DOCKER_REGISTRY_BIN" serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 &
        REGISTRY_PID=$!
        for ((i = 0; i < 100; i++)); do
            if curl -sf -o /dev/null "http://127.0.0.1:$port/v2/"; then
                export REGISTRY_PORT=$port REGISTRY_HOST="127.0.0.1:$port" REGISTRY_URL="http://127.0.0.1:$port"
                export REGISTRY_DIR=$dir REGISTRY_PID
                at_exit registry_stop
                note "registry up at $REGISTRY_URL (pid $REGISTRY_PID, data $dir/data, log $dir/registry.log)"
                return 0
            fi
            if ! kill -0 "$REGISTRY_PID" 2>/dev/null; then break; fi
            sleep 0.1
        done
        note "registry_start: attempt $attempt on port $port failed; log tail:"
        tail -n 5 "$dir/registry.log" >&2
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
        REGISTRY_PID=
    done
    note "registry_start: registry did not come up (see $dir/registry.log)"
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
