# shellcheck shell=bash
# The fleet scenario of issue #12 part 2, shared by tests/integration/fleet.sh and bench/fleet: N overlay
# notebooks on one base image save at the same moment through the replicated, rate-limited registry of
# tests/lib/fleet-registry.sh, while one replica is SIGKILLed and restarted.
#
#   fleet_run_setup DIR N [--rate R --burst B]
#       starts the fleet (3 replicas) in DIR/fleet, builds and pushes the base nbsnap-test/base:v1 through the
#       balancer (DIR/base), mounts N notebooks (DIR/nb/I, tests/lib/notebook.sh), baselines each (state dir
#       DIR/nb/I/state), then writes each one's change: 1-4 MiB of random bytes (distinct per notebook) in
#       /opt/fleet/nbI/big.bin plus FLEET_SMALL_FILES small files, and a line appended to /opt/t/modify.txt.
#       Sets FLEET_RUN_DIR, FLEET_RUN_N, FLEET_BASE_DIGESTS (the base's layer digests, array).
#   fleet_run_saves [--kill-after S] [--down S2] [--freeze F] [--registry URL] [--authfile FILE]
#       all N `nbsnap save --namespace fleet --name nbI --tag v1` at once (each waits for one start file), in
#       the background; replica 1 is SIGKILLed once a quarter of the saves have opened their upload session
#       (POST answered 202 in the access log) or S seconds (default 3) after the start, whichever comes first
#       and restarted S2 (default 3) seconds later (--kill-after 0: no kill). --freeze F: the replica is frozen
#       (SIGSTOP) for F s before the SIGKILL, so that it dies with requests in flight (default 0: a plain
#       SIGKILL). --registry URL: the saves talk to URL instead of the balancer (e.g. an auth proxy in front of
#       it); --authfile FILE: passed on to `nbsnap save`. Waits for all saves. Per notebook:
#       DIR/nb/I/save.{out,err,rc}.
#       Sets FLEET_SAVE_WALL (seconds, from the start to the last save's end), FLEET_LOG_START and FLEET_LOG_END
#       (the access log's line marks around the saves), FLEET_SAVES_OK (saves that exited 0 and printed ACTIVE).
#   fleet_run_analyze OUT.json
#       runs tests/lib/fleetlog.py over the saves' part of the access log with the new blobs of every image
#       (manifest fetched through the balancer): writes its figures (see fleetlog.py) to OUT.json and prints
#       the histogram of the retry arrival times on stderr.
#
# Timeouts: each save runs under `timeout NBSNAP_TIMEOUT` (default 900 s).

# shellcheck source=tests/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=tests/lib/fleet-registry.sh
source "$(dirname "${BASH_SOURCE[0]}")/fleet-registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$(dirname "${BASH_SOURCE[0]}")/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$(dirname "${BASH_SOURCE[0]}")/notebook.sh"

: "${FLEET_SMALL_FILES:=20}"
FLEET_BASE_REF=nbsnap-test/base:v1
FLEET_OCI_ACCEPT=(-H 'Accept: application/vnd.oci.image.manifest.v1+json'
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json')

fleet_run_setup() {
    local dir=${1:?fleet_run_setup DIR N [--rate R --burst B]} n=${2:?N} i size nb k
    shift 2
    mkdir -p "$dir/nb"
    FLEET_RUN_DIR=$(cd "$dir" && pwd) FLEET_RUN_N=$n
    fleet_registry_start "$FLEET_RUN_DIR/fleet" 3 "$@" || return 1
    # the helpers of common.sh and base-image.sh talk to REGISTRY_*: point them at the balancer
    export REGISTRY_HOST=$FLEET_HOST REGISTRY_URL=$FLEET_URL
    # skopeo does not wait out a 429 (a burst of its own requests can hit the limit): push again, a few times
    local pushed=0 attempt
    base_image_build "$FLEET_RUN_DIR/base" "$FLEET_BASE_REF" >"$FLEET_RUN_DIR/base.log" 2>&1 && pushed=1
    for ((attempt = 1; !pushed && attempt <= 5; attempt++)); do
        [[ -n ${BASE_OCI:-} ]] || break # the build itself failed
        sleep 2
        base_image_push "$FLEET_RUN_DIR/base" "$FLEET_BASE_REF" >>"$FLEET_RUN_DIR/base.log" 2>&1 && pushed=1
    done
    ((pushed)) || { tail -n 20 "$FLEET_RUN_DIR/base.log" >&2; note "fleet_run_setup: base_image_build through $FLEET_HOST failed"; return 1; }
    curl -sSf --retry 20 "${FLEET_OCI_ACCEPT[@]}" "$FLEET_URL/v2/nbsnap-test/base/manifests/v1" >"$FLEET_RUN_DIR/base.manifest" ||
        { note "fleet_run_setup: cannot GET the base manifest"; return 1; }
    mapfile -t FLEET_BASE_DIGESTS < <(json_get "$FLEET_RUN_DIR/base.manifest" '"\n".join(l["digest"] for l in j["layers"])')
    ((${#FLEET_BASE_DIGESTS[@]} >= 1)) || { note "fleet_run_setup: the base has no layers"; return 1; }
    for ((i = 0; i < n; i++)); do
        nb=$FLEET_RUN_DIR/nb/$i
        notebook_mount "$nb" "$BASE_ROOTFS" >/dev/null || return 1
        timeout "${NBSNAP_TIMEOUT:-900}" "${NBSNAP:?}" baseline --root "$nb/merged" --state-dir "$nb/state" \
            >"$nb/baseline.out" 2>"$nb/baseline.err" ||
            { cat "$nb/baseline.err" >&2; note "fleet_run_setup: nbsnap baseline of notebook $i failed"; return 1; }
        # 1-4 MiB of new bytes, a different size and different bytes per notebook: every layer is its own blob
        size=$((1024 * 1024 + (i * 7919 * 1021) % (3 * 1024 * 1024)))
        mkdir -p "$nb/merged/opt/fleet/nb$i"
        head -c "$size" /dev/urandom >"$nb/merged/opt/fleet/nb$i/big.bin"
        for ((k = 0; k < FLEET_SMALL_FILES; k++)); do
            printf 'notebook %d small file %d\n' "$i" "$k" >"$nb/merged/opt/fleet/nb$i/small-$k.txt"
        done
        echo "changed by notebook $i" >>"$nb/merged/opt/t/modify.txt"
    done
    note "fleet: $n notebooks on $FLEET_BASE_REF (${#FLEET_BASE_DIGESTS[@]} base layers), each with 1-4 MiB of new files"
}

fleet_run_saves() {
    local kill_after=3 down=3 freeze=0 i nb pids=() t0 t1 go=$FLEET_RUN_DIR/go killer='' registry=$FLEET_URL auth=()
    while (($#)); do
        case $1 in
        --kill-after) kill_after=${2:?}; shift 2 ;;
        --down) down=${2:?}; shift 2 ;;
        --freeze) freeze=${2:?}; shift 2 ;;
        --registry) registry=${2:?}; shift 2 ;;
        --authfile) auth=(--authfile "${2:?}"); shift 2 ;;
        *) note "fleet_run_saves: unknown argument '$1'"; return 1 ;;
        esac
    done
    rm -f "$go"
    FLEET_LOG_START=$(fleet_log_mark)
    for ((i = 0; i < FLEET_RUN_N; i++)); do
        nb=$FLEET_RUN_DIR/nb/$i
        (
            while [[ ! -e $go ]]; do sleep 0.01; done
            rc=0
            timeout "${NBSNAP_TIMEOUT:-900}" "$NBSNAP" save --root "$nb/merged" --state-dir "$nb/state" \
                --registry "$registry" "${auth[@]}" --base-image "$FLEET_BASE_REF" --namespace fleet --name "nb$i" --tag v1 \
                >"$nb/save.out" 2>"$nb/save.err" || rc=$?
            echo "$rc" >"$nb/save.rc"
        ) &
        pids+=($!)
    done
    sleep 0.5 # every waiter is looking at the start file
    t0=$(date +%s.%N)
    : >"$go"
    if [[ $kill_after != 0 ]]; then
        # the kill comes once uploads are under way (upload sessions opened: POST 202), or at S s at the latest
        local deadline k0=$FLEET_LOG_START want=$(((FLEET_RUN_N + 3) / 4))
        deadline=$(awk -v a="$t0" -v s="$kill_after" 'BEGIN { printf "%.0f", (a + s) * 100 }')
        while (($(date +%s%2N) < deadline)); do
            (($(fleet_log_since "$k0" | awk -F'\t' '$3 == "POST" && $2 == 202' | wc -l) >= want)) && break
            sleep 0.02
        done
        # --freeze: frozen first, so that requests are in flight on it when it dies: nginx passes on what it
        # can, and answers 502 for a PATCH or POST that the replica had begun to read
        if [[ $freeze != 0 ]]; then
            note "fleet: SIGSTOP replica 1 for $freeze s ($(fleet_log_mark) requests so far)"
            kill -STOP "${FLEET_REPLICA_PIDS[1]}" || killer=failed
            sleep "$freeze"
        fi
        note "fleet: SIGKILL replica 1 ($(fleet_log_mark) requests so far)"
        fleet_replica_kill 1 || killer=failed
        sleep "$down"
        fleet_replica_restart 1 || killer=failed
        note "fleet: replica 1 restarted"
    fi
    wait "${pids[@]}" || true # not a bare wait: the replicas and nginx are children of this shell too
    t1=$(date +%s.%N)
    FLEET_SAVE_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    FLEET_LOG_END=$(fleet_log_mark)
    FLEET_SAVES_OK=0
    for ((i = 0; i < FLEET_RUN_N; i++)); do
        nb=$FLEET_RUN_DIR/nb/$i
        if [[ $(cat "$nb/save.rc" 2>/dev/null) == 0 ]] &&
            json_get "$nb/save.out" 'j["status"] == "ACTIVE" or sys.exit(1)' >/dev/null 2>&1; then
            FLEET_SAVES_OK=$((FLEET_SAVES_OK + 1))
        else
            note "fleet: save of notebook $i failed (rc $(cat "$nb/save.rc" 2>/dev/null)): $(tail -n 3 "$nb/save.err" | tr '\n' ' ')"
        fi
    done
    note "fleet: $FLEET_SAVES_OK of $FLEET_RUN_N saves ACTIVE in $FLEET_SAVE_WALL s"
    [[ -z $killer ]] || { note "fleet_run_saves: killing or restarting replica 1 failed"; return 1; }
}

fleet_run_analyze() {
    local out=${1:?fleet_run_analyze OUT.json} i nb
    : >"$FLEET_RUN_DIR/images.tsv"
    for ((i = 0; i < FLEET_RUN_N; i++)); do
        nb=$FLEET_RUN_DIR/nb/$i
        # --retry: the limit answers these GETs 429 too (curl waits for its Retry-After)
        curl -sSf --retry 20 "${FLEET_OCI_ACCEPT[@]}" "$FLEET_URL/v2/fleet/nb$i/manifests/v1" >"$nb/manifest.json" 2>/dev/null ||
            { note "fleet: no manifest for fleet/nb$i:v1"; continue; }
        printf 'fleet/nb%d\t%s\n' "$i" "$nb/manifest.json" >>"$FLEET_RUN_DIR/images.tsv"
    done
    printf '%s\n' "${FLEET_BASE_DIGESTS[@]}" >"$FLEET_RUN_DIR/base-digests.txt"
    fleet_log_since "$FLEET_LOG_START" | head -n "$((FLEET_LOG_END - FLEET_LOG_START))" >"$FLEET_RUN_DIR/saves-access.log"
    "$PYTHON" "$NBSNAP_TESTLIB_DIR/fleetlog.py" --log "$FLEET_RUN_DIR/saves-access.log" \
        --base "$FLEET_RUN_DIR/base-digests.txt" --base-repo "${FLEET_BASE_REF%%:*}" --images "$FLEET_RUN_DIR/images.tsv" --json "$out"
}
