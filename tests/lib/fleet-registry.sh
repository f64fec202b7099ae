# shellcheck shell=bash
# A replicated registry on loopback, the shape of a platform's: N docker-registry replicas (Debian's CNCF
# distribution 2.8) sharing ONE filesystem storage and ONE http.secret, behind Debian's nginx (round robin,
# unbuffered request and response bodies, optional request-rate limit answering 429 with Retry-After: 1).
#
#   fleet_registry_start DIR [N] [--rate R] [--burst B]
#       N replicas (default 3) on free 127.0.0.1 ports, nginx on another free port. R requests/s (all clients
#       together, one shared zone) with a burst of B (default 10, nodelay): requests past it get 429. No --rate:
#       no limit. Layout:
#         DIR/storage              the shared storage (rootdirectory of every replica)
#         DIR/http.secret          the shared secret (signs the _state of upload sessions)
#         DIR/replica-I/           config.yml, registry.log of replica I (0-based)
#         DIR/nginx/               nginx.conf, access.log, error.log, nginx.pid, tmp/ (nginx's temp paths)
#       Sets (exported where bash can): FLEET_URL (http://127.0.0.1:PORT), FLEET_HOST (127.0.0.1:PORT),
#       FLEET_PORT, FLEET_DIR, FLEET_STORAGE, FLEET_NGINX_PID, FLEET_ACCESS_LOG, and the arrays FLEET_REPLICA_PIDS,
#       FLEET_REPLICA_PORTS, FLEET_REPLICA_URLS (index I = replica I). Registers fleet_registry_stop at exit.
#   fleet_replica_kill I        SIGKILL replica I (and reap it).
#   fleet_replica_restart I     start replica I again on its port, with its config; waits until it answers.
#   fleet_registry_stop         stop nginx and every replica.
#   fleet_log_mark              the current line count of the access log (for the functions below).
#   fleet_log_since N           access log lines after line N.
#   fleet_count_429 [N]         number of 429 answers in the access log (after line N).
#   fleet_uploads_left          number of startedat/data FILES under the storage's _uploads dirs (upload sessions
#                               still open on the registry; upload purging is off).
#
# The access log (FLEET_ACCESS_LOG) has one line per request, TAB-separated, '-' for an empty value:
#   1 msec (epoch seconds.millis at the end)  2 status  3 method  4 request_uri  5 request_length (header+body
#   bytes read from the client)  6 content_length (request header)  7 bytes_sent  8 upstream_addr (the
#   replica(s) tried, ", "-separated; '-' when nginx answered itself, e.g. a 429)  9 upstream_status
#   10 request_time (s)
#
# Failover (what nginx does when a replica is gone): proxy_next_upstream error timeout http_502 passes a request
# to the next replica when the connection fails, times out or a replica answers 502, but only for idempotent
# methods (GET, HEAD, PUT, DELETE ...). A POST, LOCK or PATCH is passed on only when it could not be sent at all
# (connection refused by a dead replica); once sent to a replica that then dies, nginx does not retry it
# (non_idempotent is not set) and answers 502: the client (nbsnap) must retry it itself. A replica that failed
# once is skipped for fail_timeout (2 s), then tried again (a restarted one comes back).
#
# The replicas and nginx are background jobs of the calling shell: never use a bare `wait` after
# fleet_registry_start (it would wait for them); wait for the pids you started.

# shellcheck source=tests/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$(dirname "${BASH_SOURCE[0]}")/registry.sh"

: "${NGINX_BIN:=/usr/sbin/nginx}"

FLEET_REPLICA_PIDS=()
FLEET_REPLICA_PORTS=()
FLEET_REPLICA_URLS=()
FLEET_NGINX_PID=

fleet_registry_start() {
    local dir=${1:?fleet_registry_start DIR [N] [--rate R] [--burst B]} n=3 rate='' burst=10 i
    shift
    if [[ ${1:-} =~ ^[0-9]+$ ]]; then n=$1; shift; fi
    while (($#)); do
        case $1 in
        --rate) rate=${2:?--rate R}; shift 2 ;;
        --burst) burst=${2:?--burst B}; shift 2 ;;
        *) note "fleet_registry_start: unknown argument '$1'"; return 1 ;;
        esac
    done
    ((n >= 1)) || { note "fleet_registry_start: N must be >= 1"; return 1; }
    [[ -z $rate || $rate =~ ^[0-9]+$ ]] || { note "fleet_registry_start: --rate takes whole requests/s"; return 1; }
    [[ $burst =~ ^[0-9]+$ ]] || { note "fleet_registry_start: --burst takes a count"; return 1; }
    [[ -x $DOCKER_REGISTRY_BIN ]] || { note "fleet_registry_start: $DOCKER_REGISTRY_BIN not found (scripts/install-deps.sh)"; return 1; }
    [[ -x $NGINX_BIN ]] || { note "fleet_registry_start: $NGINX_BIN not found (scripts/install-deps.sh)"; return 1; }
    mkdir -p "$dir/storage" "$dir/nginx/tmp"
    dir=$(cd "$dir" && pwd)
    FLEET_DIR=$dir FLEET_STORAGE=$dir/storage FLEET_ACCESS_LOG=$dir/nginx/access.log
    export FLEET_DIR FLEET_STORAGE FLEET_ACCESS_LOG
    FLEET_REPLICA_PIDS=() FLEET_REPLICA_PORTS=() FLEET_REPLICA_URLS=()
    at_exit fleet_registry_stop
    "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$dir/http.secret"
    for ((i = 0; i < n; i++)); do
        _fleet_replica_first_start "$i" || return 1
    done
    _fleet_nginx_start "$rate" "$burst" || return 1
    note "fleet: $n replicas (${FLEET_REPLICA_PORTS[*]}) behind nginx at $FLEET_URL${rate:+ (limit $rate r/s, burst $burst)}; storage $FLEET_STORAGE, access log $FLEET_ACCESS_LOG"
}

# _fleet_replica_first_start I: pick a free port (5 tries), write replica I's config, start it.
_fleet_replica_first_start() {
    local i=$1 rdir=$FLEET_DIR/replica-$1 port attempt
    mkdir -p "$rdir"
    for attempt in 1 2 3 4 5; do
        port=$(free_port) || { note "fleet: cannot pick a free port"; return 1; }
        registry_write_config "$rdir/config.yml" "127.0.0.1:$port" "$FLEET_STORAGE" "$(cat "$FLEET_DIR/http.secret")"
        FLEET_REPLICA_PORTS[i]=$port
        FLEET_REPLICA_URLS[i]=http://127.0.0.1:$port
        _fleet_replica_spawn "$i" && return 0
        note "fleet: replica $i: attempt $attempt on port $port failed"
    done
    note "fleet: replica $i did not come up (see $rdir/registry.log)"
    return 1
}

# _fleet_replica_spawn I: start replica I with its config (its port is in the config); 0 once it answers.
_fleet_replica_spawn() {
    local i=$1 rdir=$FLEET_DIR/replica-$1
    registry_spawn "$rdir/config.yml" "$rdir/registry.log"
    FLEET_REPLICA_PIDS[i]=$REGISTRY_SPAWNED_PID
    if registry_wait_up "${FLEET_REPLICA_URLS[i]}" "${FLEET_REPLICA_PIDS[i]}"; then
        return 0
    fi
    tail -n 5 "$rdir/registry.log" >&2
    _fleet_kill_wait "${FLEET_REPLICA_PIDS[i]}" KILL
    FLEET_REPLICA_PIDS[i]=
    return 1
}

# _fleet_nginx_conf RATE BURST: print nginx.conf for the replicas in FLEET_REPLICA_PORTS and port FLEET_PORT.
_fleet_nginx_conf() {
    local rate=$1 burst=$2 ng=$FLEET_DIR/nginx p tab=$'\t'
    cat <<EOF
# written by tests/lib/fleet-registry.sh
# root: the scratch dirs are 0700 root, a worker as nobody could not reach its temp paths
user root;
worker_processes 2;
pid $ng/nginx.pid;
error_log $ng/error.log info;
events { worker_connections 4096; }
http {
    client_body_temp_path $ng/tmp/client_body;
    proxy_temp_path $ng/tmp/proxy;
    fastcgi_temp_path $ng/tmp/fastcgi;
    uwsgi_temp_path $ng/tmp/uwsgi;
    scgi_temp_path $ng/tmp/scgi;
    log_format fleet '\$msec${tab}\$status${tab}\$request_method${tab}\$request_uri${tab}\$request_length${tab}\$content_length${tab}\$bytes_sent${tab}\$upstream_addr${tab}\$upstream_status${tab}\$request_time';
    access_log $ng/access.log fleet;
    server_tokens off;
    # the limit counts every client together: the key is the same for all (an empty key would not be counted)
    map \$host \$fleet_limit_key { default fleet; }
EOF
    # shellcheck disable=SC2016 # $fleet_limit_key is an nginx variable
    [[ -z $rate ]] || printf '    limit_req_zone $fleet_limit_key zone=fleet:1m rate=%sr/s;\n' "$rate"
    printf '    upstream fleet_replicas {\n'
    for p in "${FLEET_REPLICA_PORTS[@]}"; do
        # a replica that failed once is left out for 2 s, then tried again
        printf '        server 127.0.0.1:%s max_fails=1 fail_timeout=2s;\n' "$p"
    done
    printf '        keepalive 32;\n    }\n'
    cat <<EOF
    server {
        listen 127.0.0.1:$FLEET_PORT;
        # layers of any size, streamed both ways (no spooling of a PATCH body to disk before it is passed on)
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # Host with its port: the replicas build their Location headers from it, so they point at the balancer
        proxy_set_header Host \$http_host;
        proxy_set_header X-Forwarded-Proto \$scheme;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_redirect off;
        proxy_connect_timeout 2s;
        proxy_send_timeout 300s;
        proxy_read_timeout 300s;
        # passive failover; a POST or PATCH is passed on only if it could not be sent; one that reached a dying
        # replica is answered 502 (see the header of tests/lib/fleet-registry.sh)
        proxy_next_upstream error timeout http_502;
        location / {
EOF
    if [[ -n $rate ]]; then
        cat <<EOF
            limit_req zone=fleet burst=$burst nodelay;
            limit_req_status 429;
            error_page 429 @too_many_requests;
EOF
    fi
    cat <<'EOF'
            proxy_pass http://fleet_replicas;
        }
        location @too_many_requests {
            default_type application/json;
            add_header Retry-After 1 always;
            return 429 '{"errors":[{"code":"TOOMANYREQUESTS","message":"too many requests","detail":"fleet-registry.sh limit_req"}]}\n';
        }
    }
}
EOF
}

# _fleet_nginx_start RATE BURST: nginx in the foreground of a background job (its master is FLEET_NGINX_PID).
_fleet_nginx_start() {
    local rate=$1 burst=$2 ng=$FLEET_DIR/nginx attempt i
    for attempt in 1 2 3 4 5; do
        FLEET_PORT=$(free_port) || { note "fleet: cannot pick a free port"; return 1; }
        _fleet_nginx_conf "$rate" "$burst" >"$ng/nginx.conf"
        "$NGINX_BIN" -t -q -c "$ng/nginx.conf" -p "$ng/" -e "$ng/error.log" ||
            { note "fleet: nginx -t rejects $ng/nginx.conf:"; tail -n 5 "$ng/error.log" >&2; return 1; }
        "$NGINX_BIN" -c "$ng/nginx.conf" -p "$ng/" -e "$ng/error.log" -g 'daemon off;' >>"$ng/nginx.out" 2>&1 &
        FLEET_NGINX_PID=$!
        for ((i = 0; i < 100; i++)); do
            if curl -sf -o /dev/null "http://127.0.0.1:$FLEET_PORT/v2/"; then
                FLEET_URL=http://127.0.0.1:$FLEET_PORT FLEET_HOST=127.0.0.1:$FLEET_PORT
                export FLEET_URL FLEET_HOST FLEET_PORT FLEET_NGINX_PID
                return 0
            fi
            kill -0 "$FLEET_NGINX_PID" 2>/dev/null || break
            sleep 0.1
        done
        note "fleet: nginx attempt $attempt on port $FLEET_PORT failed; error log tail:"
        tail -n 5 "$ng/error.log" >&2
        _fleet_kill_wait "$FLEET_NGINX_PID" TERM
        FLEET_NGINX_PID=
    done
    note "fleet: nginx did not come up (see $ng/error.log)"
    return 1
}

# _fleet_kill_wait PID SIGNAL: send SIGNAL, then KILL after 5 s, and reap.
_fleet_kill_wait() {
    local pid=$1 sig=$2 i
    [[ -n $pid ]] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

fleet_replica_kill() {
    local i=${1:?fleet_replica_kill I}
    [[ -n ${FLEET_REPLICA_PIDS[i]:-} ]] || { note "fleet_replica_kill: replica $i is not running"; return 1; }
    _fleet_kill_wait "${FLEET_REPLICA_PIDS[i]}" KILL
    FLEET_REPLICA_PIDS[i]=
}

fleet_replica_restart() {
    local i=${1:?fleet_replica_restart I} attempt
    [[ -n ${FLEET_REPLICA_PORTS[i]:-} ]] || { note "fleet_replica_restart: no replica $i"; return 1; }
    [[ -z ${FLEET_REPLICA_PIDS[i]:-} ]] || fleet_replica_kill "$i"
    # the port may still be held a moment (a connection of the killed process): try a few times
    for attempt in 1 2 3 4 5; do
        _fleet_replica_spawn "$i" && return 0
        note "fleet_replica_restart: replica $i on port ${FLEET_REPLICA_PORTS[i]}: attempt $attempt failed"
        sleep 0.5
    done
    return 1
}

fleet_registry_stop() {
    local i
    if [[ -n ${FLEET_NGINX_PID:-} ]]; then
        _fleet_kill_wait "$FLEET_NGINX_PID" TERM
        FLEET_NGINX_PID=
    fi
    for i in "${!FLEET_REPLICA_PIDS[@]}"; do
        [[ -n ${FLEET_REPLICA_PIDS[i]} ]] || continue
        _fleet_kill_wait "${FLEET_REPLICA_PIDS[i]}" TERM
        FLEET_REPLICA_PIDS[i]=
    done
    return 0
}

fleet_log_mark() {
    if [[ -f ${FLEET_ACCESS_LOG:?fleet not started} ]]; then wc -l <"$FLEET_ACCESS_LOG"; else echo 0; fi
}

fleet_log_since() {
    tail -n "+$((${1:-0} + 1))" "${FLEET_ACCESS_LOG:?fleet not started}"
}

fleet_count_429() {
    fleet_log_since "${1:-0}" | awk -F'\t' '$2 == 429 { n++ } END { print n + 0 }'
}

fleet_uploads_left() {
    find "${FLEET_STORAGE:?fleet not started}" -path '*/_uploads/*' -type f \( -name startedat -o -name data \) 2>/dev/null |
        wc -l
}
